//! The pages, rendered on the server from templates built into the binary. Every value put into
//! a template is escaped unless it is markup made here (from escaped values).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::extract::rejection::FormRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, RETRY_AFTER, SET_COOKIE};
use axum::http::{Extensions, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Form;
use chrono::{DateTime, Utc};
use serde::Deserialize;

use agentpool_core::access::{self, Login, Session};
use agentpool_core::domain::{Instance, InstanceStatus};
use agentpool_core::{overview, tick};

use super::session;
use crate::error::ApiResult;
use crate::state::AppState;

const LAYOUT: &str = include_str!("assets/layout.html");
const LOGIN: &str = include_str!("assets/login.html");
const PUBLIC: &str = include_str!("assets/public.html");
const DASHBOARD: &str = include_str!("assets/admin.html");
const LITE: &str = include_str!("assets/lite.html");

/// Instances on one page of the dashboard's table (its script pages on with the same size).
const DASHBOARD_PAGE: u32 = 25;
/// Agents the public page lists.
const PUBLIC_AGENTS: u32 = 200;

/// Text for HTML: element content and quoted attribute values alike.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A value for a template's `{{name}}`.
enum Fill<'a> {
    /// Escaped on the way in.
    Text(&'a str),
    /// Markup made here from escaped values.
    Markup(String),
}

/// Fills each `{{name}}` of `template` in one pass: a value is never scanned for placeholders
/// itself, so text that looks like one (an agent named `{{csrf}}`) stays text.
fn render(template: &str, fills: &[(&str, Fill<'_>)]) -> String {
    let mut page = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        page.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let filled = after.find("}}").and_then(|end| {
            let name = &after[..end];
            let (_, fill) = fills.iter().find(|(n, _)| *n == name)?;
            Some((end, fill))
        });
        match filled {
            Some((end, fill)) => {
                match fill {
                    Fill::Text(text) => page.push_str(&escape(text)),
                    Fill::Markup(markup) => page.push_str(markup),
                }
                rest = &after[end + 2..];
            }
            None => {
                page.push_str("{{");
                rest = after;
            }
        }
    }
    page.push_str(rest);
    page
}

/// A whole page: the layout around `body`, with the page's scripts.
fn page(
    state: &AppState,
    status: StatusCode,
    title: &str,
    class: &str,
    csrf: Option<&str>,
    scripts: &[&str],
    body: String,
) -> Response {
    let meta = csrf
        .map(|token| format!("<meta name=\"csrf-token\" content=\"{}\">\n", escape(token)))
        .unwrap_or_default();
    let scripts: String = scripts
        .iter()
        .map(|name| format!("<script src=\"/assets/{name}\" defer></script>\n"))
        .collect();
    let html = render(
        LAYOUT,
        &[
            ("meta", Fill::Markup(meta)),
            ("title", Fill::Text(title)),
            ("scripts", Fill::Markup(scripts)),
            ("page", Fill::Text(class)),
            (
                "environment",
                Fill::Text(&state.pool.settings.pool.pool_environment),
            ),
            ("body", Fill::Markup(body)),
        ],
    );
    (
        status,
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            // Pages carry live data and a CSRF token: never from a cache.
            (CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

/// The environment badge (seed 002): dev, staging and production have their own colours.
fn badge(state: &AppState) -> String {
    let environment = &state.pool.settings.pool.pool_environment;
    let class = match environment.as_str() {
        "dev" | "staging" | "production" => environment.as_str(),
        _ => "other",
    };
    format!(
        "<span class=\"badge env-{class}\" id=\"env-badge\">{}</span>",
        escape(environment)
    )
}

fn counts_markup(counts: &BTreeMap<InstanceStatus, i64>, only: &[InstanceStatus]) -> String {
    let statuses: &[InstanceStatus] = if only.is_empty() {
        &InstanceStatus::ALL
    } else {
        only
    };
    statuses
        .iter()
        .map(|status| {
            format!(
                "<li class=\"count-{status}\"><span class=\"n\">{}</span><span>{status}</span></li>",
                counts.get(status).copied().unwrap_or(0)
            )
        })
        .collect()
}

fn hidden_if(hide: bool) -> Fill<'static> {
    Fill::Markup(if hide {
        " hidden".into()
    } else {
        String::new()
    })
}

/// `GET /`: the pool's counts and its live agents, names and status only.
pub async fn public(State(state): State<AppState>) -> ApiResult<Response> {
    let counts = overview::counts(&state.pool).await?;
    // Only the agents in use are read, so that they are found wherever they are in the table.
    let listed =
        overview::public_page(&state.pool, None, PUBLIC_AGENTS, Some(&overview::LIVE)).await?;
    let live: Vec<String> = listed
        .items
        .iter()
        .filter_map(|agent| {
            let name = agent.agent_name.as_deref()?;
            Some(format!(
                "<li><span class=\"agent-name\">{}</span><span class=\"status status-{status}\">{status}</span></li>",
                escape(name),
                status = agent.status
            ))
        })
        .collect();
    let body = render(
        PUBLIC,
        &[
            ("badge", Fill::Markup(badge(&state))),
            ("counts", Fill::Markup(counts_markup(&counts, &[]))),
            ("no_agents_hidden", hidden_if(!live.is_empty())),
            ("agents", Fill::Markup(live.concat())),
        ],
    );
    Ok(page(
        &state,
        StatusCode::OK,
        "agentpool",
        "public",
        None,
        &["public.js"],
        body,
    ))
}

/// Where a login may send the browser on: the page that asked for it, and nowhere else.
fn next_page(next: Option<&str>) -> &'static str {
    match next {
        Some("/admin/lite") => "/admin/lite",
        _ => "/admin",
    }
}

fn login_page(state: &AppState, status: StatusCode, next: &str, error: Option<&str>) -> Response {
    let error = error
        .map(|message| {
            format!(
                "<p class=\"message error\" id=\"login-error\" role=\"alert\">{}</p>",
                escape(message)
            )
        })
        .unwrap_or_default();
    let body = render(
        LOGIN,
        &[
            ("badge", Fill::Markup(badge(state))),
            ("error", Fill::Markup(error)),
            ("next", Fill::Text(next)),
        ],
    );
    page(state, status, "agentpool login", "login", None, &[], body)
}

fn age(now: DateTime<Utc>, then: DateTime<Utc>) -> String {
    let seconds = (now - then).num_seconds().max(0);
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// A link if `href` is an http(s) URL; plain text otherwise (never a `javascript:` link).
fn link(href: Option<&str>, text: &str) -> String {
    match href {
        Some(url) if url.starts_with("https://") || url.starts_with("http://") => format!(
            "<a href=\"{}\" rel=\"noopener noreferrer\" target=\"_blank\">{}</a>",
            escape(url),
            escape(text)
        ),
        _ => escape(text),
    }
}

/// One row of the instance table, as the dashboard's script also draws it.
fn instance_row(now: DateTime<Utc>, i: &Instance) -> String {
    let mut actions = String::new();
    if i.status == InstanceStatus::Claimed {
        actions
            .push_str("<button type=\"button\" class=\"small secondary recycle\">Recycle</button>");
    }
    if i.status != InstanceStatus::Destroying {
        actions.push_str("<button type=\"button\" class=\"small danger kill\">Kill</button>");
    }
    if i.status == InstanceStatus::Crashed {
        actions
            .push_str("<button type=\"button\" class=\"small secondary dismiss\">Dismiss</button>");
    }
    let invite = match i.invite_url.as_deref() {
        Some(url) => link(Some(url), "invite"),
        None => "—".into(),
    };
    format!(
        "<tr data-id=\"{id}\"><td data-label=\"Age\">{age}</td>\
         <td data-label=\"Agent\"><span class=\"agent-name\">{agent}</span></td>\
         <td data-label=\"Status\"><span class=\"status status-{status}\">{status}</span></td>\
         <td data-label=\"Instance\">{instance}</td><td data-label=\"Invite\">{invite}</td>\
         <td class=\"actions\">{actions}</td></tr>",
        id = escape(&i.id),
        age = age(now, i.created_at),
        agent = escape(i.agent_name.as_deref().unwrap_or("—")),
        status = i.status,
        instance = link(i.url.as_deref(), &i.name),
    )
}

/// `GET /admin`: the dashboard, or the login form.
pub async fn dashboard(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    let Some(session) = session::current(&state, &headers).await? else {
        return Ok(login_page(&state, StatusCode::OK, "/admin", None));
    };
    let counts = overview::counts(&state.pool).await?;
    let listed = overview::operator_page(&state.pool, None, DASHBOARD_PAGE, None).await?;
    let size = overview::size(&state.pool).await?;
    let target = tick::latest_sample(&state.pool).await?;
    let sizing = serde_json::to_string_pretty(&size.sizing).unwrap_or_default();
    let abandoned = tick::abandoned(&state.pool).await?;
    let now = Utc::now();
    let rows: String = listed.items.iter().map(|i| instance_row(now, i)).collect();
    let abandoned_rows: String = abandoned
        .iter()
        .map(|a| {
            format!(
                "<tr><td>{age}</td><td>{tool}</td><td><code>{resource}</code></td><td>{name}</td></tr>",
                age = escape(&age(now, a.abandoned_at)),
                tool = escape(&a.tool_id),
                resource = escape(&a.resource_id),
                name = escape(&a.instance_name),
            )
        })
        .collect();
    let csrf = session.csrf_token(&state.session_key);
    let number = |n: u32| Fill::Markup(n.to_string());
    let source = match size.source {
        "operator" => format!(
            "Set by {}.",
            size.updated_by.as_deref().unwrap_or("operator")
        ),
        _ => "Using the environment defaults.".into(),
    };
    let body = render(
        DASHBOARD,
        &[
            ("badge", Fill::Markup(badge(&state))),
            ("csrf", Fill::Text(&csrf)),
            ("counts", Fill::Markup(counts_markup(&counts, &[]))),
            ("rows", Fill::Markup(rows)),
            ("no_instances_hidden", hidden_if(!listed.items.is_empty())),
            ("abandoned_rows", Fill::Markup(abandoned_rows)),
            ("abandoned_hidden", hidden_if(abandoned.is_empty())),
            (
                "next_disabled",
                Fill::Markup(if listed.next.is_some() {
                    String::new()
                } else {
                    " disabled".into()
                }),
            ),
            ("cap", number(size.max_total_cap)),
            ("min_idle", number(size.size.min_idle)),
            ("max_total", number(size.size.max_total)),
            ("default_min_idle", number(size.defaults.min_idle)),
            ("default_max_total", number(size.defaults.max_total)),
            ("size_source", Fill::Text(&source)),
            ("sizing", Fill::Text(&sizing)),
            (
                "target",
                Fill::Text(&target.as_ref().map_or("—".into(), |t| t.target.to_string())),
            ),
            (
                "target_reason",
                Fill::Text(
                    target
                        .as_ref()
                        .map_or("(no full tick yet)", |t| t.reason.as_str()),
                ),
            ),
        ],
    );
    Ok(page(
        &state,
        StatusCode::OK,
        "agentpool dashboard",
        "dashboard",
        Some(&csrf),
        &["common.js", "admin.js"],
        body,
    ))
}

/// `GET /admin/lite`: claiming from a phone, and the counts at a glance.
pub async fn lite(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    let Some(session) = session::current(&state, &headers).await? else {
        return Ok(login_page(&state, StatusCode::OK, "/admin/lite", None));
    };
    let counts = overview::counts(&state.pool).await?;
    let csrf = session.csrf_token(&state.session_key);
    let shown = [
        InstanceStatus::Idle,
        InstanceStatus::Starting,
        InstanceStatus::Claimed,
    ];
    let body = render(
        LITE,
        &[
            ("badge", Fill::Markup(badge(&state))),
            ("csrf", Fill::Text(&csrf)),
            ("counts", Fill::Markup(counts_markup(&counts, &shown))),
        ],
    );
    Ok(page(
        &state,
        StatusCode::OK,
        "agentpool",
        "lite",
        Some(&csrf),
        &["common.js", "lite.js"],
        body,
    ))
}

#[derive(Deserialize)]
pub struct LoginForm {
    key: String,
    next: Option<String>,
}

fn redirect(to: &str, cookie: HeaderValue) -> Response {
    (
        StatusCode::SEE_OTHER,
        [
            (LOCATION, HeaderValue::from_static(next_page(Some(to)))),
            (SET_COOKIE, cookie),
        ],
    )
        .into_response()
}

fn whole_seconds(wait: std::time::Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

/// `POST /admin/login`: the API key for a session cookie. A wrong key says so; the next try must
/// then wait a delay that grows with the wrong keys in a row (per client, across replicas).
pub async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    extensions: Extensions,
    form: Result<Form<LoginForm>, FormRejection>,
) -> ApiResult<Response> {
    let Ok(Form(form)) = form else {
        return Ok(login_page(
            &state,
            StatusCode::BAD_REQUEST,
            "/admin",
            Some("Enter the API key."),
        ));
    };
    let next = next_page(form.next.as_deref());
    if session::check_origin(&headers).is_err() {
        return Ok(login_page(
            &state,
            StatusCode::FORBIDDEN,
            next,
            Some("This login came from another site's page."),
        ));
    }
    let client = session::client_id(
        &state,
        &headers,
        extensions.get::<ConnectInfo<SocketAddr>>(),
    );
    let login = access::login(
        &state.pool,
        &state.records,
        &state.session_key,
        &state.api_key,
        &client,
        form.key.trim(),
    )
    .await?;
    match login {
        Login::Blocked { wait } => {
            let seconds = whole_seconds(wait);
            let mut response = login_page(
                &state,
                StatusCode::TOO_MANY_REQUESTS,
                next,
                Some(&format!("Too many wrong keys. Try again in {seconds} s.")),
            );
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(seconds));
            Ok(response)
        }
        Login::Wrong { wait } => {
            tracing::warn!(client, "dashboard login with a wrong key");
            let mut message = "Wrong key: that is not this pool's POOL_API_KEY.".to_string();
            if !wait.is_zero() {
                message.push_str(&format!(
                    " Wait {} s before the next try.",
                    whole_seconds(wait)
                ));
            }
            Ok(login_page(
                &state,
                StatusCode::UNAUTHORIZED,
                next,
                Some(&message),
            ))
        }
        Login::Opened { cookie } => {
            tracing::info!(client, "dashboard login");
            let ttl = state.pool.settings.dashboard.admin_session_ttl();
            Ok(redirect(
                next,
                session::set_cookie(&cookie, ttl, &headers, &uri),
            ))
        }
    }
}

#[derive(Deserialize)]
pub struct LogoutForm {
    csrf: Option<String>,
}

/// `POST /admin/logout`: ends the session on every replica (its row goes) and clears the cookie.
pub async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    form: Result<Form<LogoutForm>, FormRejection>,
) -> ApiResult<Response> {
    let token = form.ok().and_then(|Form(f)| f.csrf);
    if let Some(session) = session::current(&state, &headers).await? {
        check_logout(&state, &session, &headers, token.as_deref())?;
        access::logout(&state.pool, &session).await?;
        tracing::info!("dashboard logout");
    }
    Ok(redirect("/admin", session::clear_cookie(&headers, &uri)))
}

/// A logout is a write like any other: another site's page must not end a session either.
fn check_logout(
    state: &AppState,
    session: &Session,
    headers: &HeaderMap,
    token: Option<&str>,
) -> ApiResult<()> {
    session::check_origin(headers)?;
    match token {
        Some(token) if session.csrf_matches(&state.session_key, token) => Ok(()),
        _ => Err(crate::error::ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf_failed",
            "missing or wrong CSRF token: reload the dashboard",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_leaves_no_markup() {
        assert_eq!(
            escape("<script>alert(\"1\")</script> & 'x'"),
            "&lt;script&gt;alert(&quot;1&quot;)&lt;/script&gt; &amp; &#39;x&#39;"
        );
    }

    #[test]
    fn templates_escape_text_and_keep_markup() {
        let out = render(
            "<p>{{a}}</p>{{b}}",
            &[
                ("a", Fill::Text("<b>")),
                ("b", Fill::Markup("<i>ok</i>".into())),
            ],
        );
        assert_eq!(out, "<p>&lt;b&gt;</p><i>ok</i>");
        let out = render(
            "{{a}}{{b}}",
            &[("a", Fill::Text("{{b}}")), ("b", Fill::Text("secret"))],
        );
        assert_eq!(out, "{{b}}secret");
    }

    #[test]
    fn only_http_urls_become_links() {
        assert!(link(Some("javascript:alert(1)"), "x").starts_with('x'));
        assert!(link(Some("https://a.example/?q=\"x\""), "x").contains("&quot;x&quot;"));
    }

    #[test]
    fn logins_lead_back_to_our_pages_only() {
        assert_eq!(next_page(Some("/admin/lite")), "/admin/lite");
        assert_eq!(next_page(Some("https://evil.example/")), "/admin");
        assert_eq!(next_page(None), "/admin");
    }
}
