//! Clients of the outside world: HTTP to SaaS APIs, compute providers, tools, agent runtimes.
//! Depends on the vocabulary only: a client reports what happened (a result, a failed attempt in
//! [`crate::calls`]); the pipeline that called it decides what to record, count or retry.

pub mod notion;
pub mod outbound;
pub mod providers;
pub mod runtime;
pub mod tools;
