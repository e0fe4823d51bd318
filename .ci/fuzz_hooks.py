"""Schemathesis hooks for `.ci/fuzz`.

The pool throttles wrong API keys per client, and a right key from a client that is waiting out
its wrong ones gets 429 too. The fuzzer sends wrong keys on purpose (`ignored_auth`), so from one
address it would soon see nothing but 429s. Each case therefore comes from its own address, told
through `X-Forwarded-For`, which the fuzz target trusts from loopback as a pool behind a proxy
does: the wrong keys still get their 401, and the rest of the run still reaches the handlers.
"""

import itertools

import schemathesis

_clients = itertools.count(1)


@schemathesis.hook
def before_call(context, case, kwargs):
    n = next(_clients)
    headers = case.headers or {}
    headers["X-Forwarded-For"] = f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"
    case.headers = headers
