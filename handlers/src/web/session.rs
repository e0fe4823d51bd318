//! The dashboard's session cookie, its CSRF checks, and who a client is for login throttling.
//!
//! The cookie is HttpOnly, SameSite=Strict and expires with the session; it is Secure when the
//! request came over HTTPS (directly or, per `X-Forwarded-Proto`, through a proxy). A session's
//! writes must carry its CSRF token (`X-CSRF-Token`, or `?csrf=` on the SSE stream, which
//! `EventSource` opens without headers) and, when the browser says where they come from, come
//! from this host.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::header::{COOKIE, HOST, ORIGIN};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};

use agentpool_core::access::{self, Session};

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

pub const COOKIE_NAME: &str = "agentpool_session";

/// The header a page's scripts send the CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

fn cookie_value(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|line| line.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value)
}

/// The live session the request's cookie names, if any.
pub async fn current(state: &AppState, headers: &HeaderMap) -> ApiResult<Option<Session>> {
    match cookie_value(headers) {
        None => Ok(None),
        Some(cookie) => Ok(access::session(&state.pool, &state.session_key, cookie).await?),
    }
}

fn forbidden(code: &'static str, message: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, code, message)
}

/// `Origin`, when the browser sends it, must name this host: another site's page cannot write
/// with our cookie (SameSite=Strict already keeps it from being sent; this does not rely on it).
pub fn check_origin(headers: &HeaderMap) -> ApiResult<()> {
    let Some(origin) = headers.get(ORIGIN) else {
        return Ok(());
    };
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, host)| host.trim_end_matches('/'));
    let ours = |name: &str| headers.get(name).and_then(|h| h.to_str().ok());
    let same = origin_host.is_some_and(|host| {
        Some(host) == ours(HOST.as_str()) || Some(host) == ours("x-forwarded-host")
    });
    if same {
        Ok(())
    } else {
        Err(forbidden(
            "cross_origin",
            "this request comes from another site's page",
        ))
    }
}

/// A write by a session: from this host, with the session's CSRF token.
pub fn check_write(
    state: &AppState,
    session: &Session,
    headers: &HeaderMap,
    uri: &Uri,
    token_in_query: bool,
) -> ApiResult<()> {
    check_origin(headers)?;
    let from_header = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
    let from_query = token_in_query.then(|| csrf_query(uri)).flatten();
    match from_header.map(str::to_string).or(from_query) {
        Some(token) if session.csrf_matches(&state.session_key, &token) => Ok(()),
        _ => Err(forbidden(
            "csrf_failed",
            "missing or wrong CSRF token: reload the dashboard",
        )),
    }
}

#[derive(serde::Deserialize)]
struct CsrfParam {
    csrf: Option<String>,
}

fn csrf_query(uri: &Uri) -> Option<String> {
    axum::extract::Query::<CsrfParam>::try_from_uri(uri)
        .ok()
        .and_then(|q| q.0.csrf)
}

/// Whether the client reached us over HTTPS, directly or through a proxy that says so.
fn over_https(headers: &HeaderMap, uri: &Uri) -> bool {
    let forwarded = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"));
    forwarded || uri.scheme_str() == Some("https")
}

fn cookie_header(value: &str, max_age: Duration, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let header = format!(
        "{COOKIE_NAME}={value}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict{secure}",
        max_age.as_secs()
    );
    // The value is hex and a dot, the rest is ours: always a valid header.
    HeaderValue::from_str(&header).unwrap_or_else(|_| HeaderValue::from_static(""))
}

pub fn set_cookie(value: &str, ttl: Duration, headers: &HeaderMap, uri: &Uri) -> HeaderValue {
    cookie_header(value, ttl, over_https(headers, uri))
}

pub fn clear_cookie(headers: &HeaderMap, uri: &Uri) -> HeaderValue {
    cookie_header("", Duration::ZERO, over_https(headers, uri))
}

fn too_many(wait: Duration) -> ApiError {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_wrong_keys",
        format!("too many wrong keys from this client; try again in {seconds} s"),
    )
    .retry_after(u32::try_from(seconds).unwrap_or(u32::MAX))
}

/// A right API key from `client`: refused (429) while the client waits out its wrong keys, since
/// a guess made then must not learn that it was right; else its wrong keys are forgotten.
pub async fn let_right_key_in(state: &AppState, client: &str) -> ApiResult<()> {
    match access::right_key(&state.pool, &state.records, client).await? {
        None => Ok(()),
        Some(wait) => Err(too_many(wait)),
    }
}

/// A wrong API key from `client`, counted as a wrong login is: the answer is 401, or 429 while the
/// client must wait.
pub async fn count_wrong_key(state: &AppState, client: &str) -> ApiResult<ApiError> {
    Ok(
        match access::wrong_key(&state.pool, &state.records, client).await? {
            Some(wait) => too_many(wait),
            None => ApiError::unauthorized("invalid API key"),
        },
    )
}

/// Who is trying keys, for the growing delay: the connection's peer, unless it is one of
/// `TRUSTED_PROXIES`; then the nearest address in `CLIENT_IP_HEADER` (default
/// `x-forwarded-for`, read from its end) that is not a trusted proxy itself. What comes before it
/// is the client's to forge, and is not read.
pub fn client_id(
    state: &AppState,
    headers: &HeaderMap,
    peer: Option<&ConnectInfo<SocketAddr>>,
) -> String {
    let Some(ConnectInfo(peer)) = peer else {
        return "unknown".to_string();
    };
    let trusted = state.pool.settings.dashboard.trusted_proxies();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let mut client = peer.ip();
    if !is_trusted(&client) {
        return client.to_string();
    }
    let header = state
        .pool
        .settings
        .dashboard
        .client_ip_header
        .as_deref()
        .unwrap_or("x-forwarded-for");
    let forwarded: Vec<&str> = headers
        .get_all(header)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect();
    for entry in forwarded.iter().rev() {
        // Something that is no address ends what can be believed.
        let Some(ip) = forwarded_ip(entry) else {
            break;
        };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client.to_string()
}

/// An address as proxies write it: `203.0.113.1`, `203.0.113.1:5678`, `2001:db8::1` or
/// `[2001:db8::1]:443`.
fn forwarded_ip(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let h = headers(&[("cookie", "a=1; agentpool_session=abc.def; b=2")]);
        assert_eq!(cookie_value(&h), Some("abc.def"));
        assert_eq!(cookie_value(&headers(&[("cookie", "a=1")])), None);
    }

    #[test]
    fn only_this_host_may_write() {
        let h = headers(&[
            ("host", "pool.example:8080"),
            ("origin", "https://pool.example:8080"),
        ]);
        assert!(check_origin(&h).is_ok());
        let h = headers(&[("host", "pool.example"), ("origin", "https://evil.example")]);
        assert!(check_origin(&h).is_err());
        let h = headers(&[("host", "pool.example"), ("origin", "null")]);
        assert!(check_origin(&h).is_err());
        assert!(check_origin(&headers(&[("host", "pool.example")])).is_ok());
    }

    #[test]
    fn cookies_are_secure_over_https_only() {
        let uri: Uri = "/admin".parse().unwrap();
        let plain = set_cookie("v", Duration::from_secs(60), &HeaderMap::new(), &uri);
        let plain = plain.to_str().unwrap();
        assert!(plain.contains("HttpOnly") && plain.contains("SameSite=Strict"));
        assert!(plain.contains("Max-Age=60") && !plain.contains("Secure"));
        let proxied = headers(&[("x-forwarded-proto", "https")]);
        let secure = set_cookie("v", Duration::from_secs(60), &proxied, &uri);
        assert!(secure.to_str().unwrap().ends_with("; Secure"));
    }
}
