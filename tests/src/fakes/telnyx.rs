//! A stateful fake of the part of Telnyx's v2 API that buys, tags and releases phone numbers
//! (`/v2/available_phone_numbers`, `/v2/number_orders`, `/v2/phone_numbers`,
//! `/v2/messaging_profiles`), for the per-agent phone number provisioning's tests.
//!
//! A pool of US numbers (`+15550100001`, `+15550100002`, ...) is for sale. A number is
//! available, ours (ordered through the API or [`TelnyxFake::order_behind_our_back`]), or taken
//! by someone else. Searches list available numbers only; ordering one that is not available is
//! a 422 (`10015`, "Number unavailable"), as when a concurrent buyer got it first, and
//! [`TelnyxConfig::steal_next`] / [`TelnyxFake::steal_next`] make the next orders meet exactly
//! that. Releasing a number puts it back on sale.
//!
//! As on Telnyx, the `id` of an order's `phone_numbers[]` entry is the order line's, not the
//! phone number's: `/v2/phone_numbers/{id}` takes the phone number's id (from its listing or a
//! PATCH answer), and PATCH also takes the number itself (`+15550100001`, or `%2B...`). For
//! [`TelnyxConfig::fresh_order_404_ms`] after its order, a number answers GET and PATCH with 404,
//! as Telnyx does while an order settles. Error codes other than `10005` (not found), `10009`
//! (authentication) and `10015` (unavailable) are the fake's own.
//!
//! Orders are kept with their `customer_reference` and listed by `GET /v2/number_orders`.
//!
//! Ops for faults and stats: `GET /v2/available_phone_numbers`, `POST /v2/number_orders`,
//! `GET /v2/number_orders`,
//! `GET /v2/phone_numbers`, `GET /v2/phone_numbers/{id}`, `PATCH /v2/phone_numbers/{id}`,
//! `DELETE /v2/phone_numbers/{id}`, `GET /v2/messaging_profiles`,
//! `POST /v2/messaging_profiles`.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::Rng;
use serde::Serialize;
use serde_json::{json, Value};

use super::faults::{
    bearer_in, new_id, now, shifted_by, unpoisoned, Controls, Fake, Fault, Faults, Server,
};
use super::rest::{json_body, opt_str, Params};

/// Features every number in the pool has.
const FEATURES: [&str; 3] = ["sms", "mms", "voice"];

#[derive(Debug, Clone)]
pub struct TelnyxConfig {
    /// The one API key accepted as Bearer; any other (or none) is answered 401.
    pub api_key: String,
    /// The messaging profile that exists from the start.
    pub messaging_profile_id: String,
    pub messaging_profile_name: String,
    /// Numbers for sale: `+15550100001` up to this many (at most 9999).
    pub available: u32,
    /// The next this many orders find their first number just taken by someone else.
    pub steal_next: u32,
    /// How long after its order a number answers GET and PATCH with 404.
    pub fresh_order_404_ms: u64,
    /// Largest `page[size]` of `GET /v2/phone_numbers`.
    pub page_size: usize,
    /// 0 = any free port.
    pub port: u16,
}

impl Default for TelnyxConfig {
    fn default() -> Self {
        Self {
            api_key: "fake-telnyx-api-key".into(),
            messaging_profile_id: new_id(),
            messaging_profile_name: "agentpool".into(),
            available: 50,
            steal_next: 0,
            fresh_order_404_ms: 0,
            page_size: 250,
            port: 0,
        }
    }
}

/// A number we own, as the fake holds it.
#[derive(Debug, Clone, Serialize)]
pub struct NumberView {
    /// The phone number's id (not its order line's).
    pub id: String,
    /// E.164, `+15550100001`.
    pub phone_number: String,
    pub tags: Vec<String>,
    pub messaging_profile_id: Option<String>,
    pub created_at: String,
}

impl NumberView {
    fn json(&self, status: &str) -> Value {
        json!({
            "id": self.id,
            "record_type": "phone_number",
            "phone_number": self.phone_number,
            "status": status,
            "tags": self.tags,
            "messaging_profile_id": self.messaging_profile_id,
            "connection_id": null,
            "phone_number_type": "local",
            "purchased_at": self.created_at,
            "created_at": self.created_at,
            "updated_at": self.created_at,
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Held {
    Available,
    Ours,
    Elsewhere,
}

struct PoolNumber {
    phone_number: String,
    held: Held,
}

struct Owned {
    seq: u64,
    view: NumberView,
    ordered: Instant,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProfileView {
    pub id: String,
    pub name: String,
    pub created_at: String,
}

impl ProfileView {
    fn json(&self) -> Value {
        json!({
            "id": self.id,
            "record_type": "messaging_profile",
            "name": self.name,
            "enabled": true,
            "created_at": self.created_at,
            "updated_at": self.created_at,
        })
    }
}

struct World {
    next_seq: u64,
    pool: Vec<PoolNumber>,
    /// Oldest first.
    owned: Vec<Owned>,
    profiles: Vec<ProfileView>,
    /// Every order that went through, oldest first, as `GET /v2/number_orders` lists it. Orders
    /// stay when their numbers are released, as on Telnyx.
    orders: Vec<Value>,
    steal_next: u32,
    /// See [`TelnyxFake::outbid_next`].
    outbid_next: Option<String>,
}

impl World {
    fn held(&self, phone_number: &str) -> Option<Held> {
        self.pool
            .iter()
            .find(|n| n.phone_number == phone_number)
            .map(|n| n.held)
    }

    fn set_held(&mut self, phone_number: &str, held: Held) {
        if let Some(number) = self
            .pool
            .iter_mut()
            .find(|n| n.phone_number == phone_number)
        {
            number.held = held;
        }
    }

    /// Makes an available number ours.
    fn take(
        &mut self,
        phone_number: &str,
        tags: Vec<String>,
        messaging_profile_id: Option<String>,
    ) -> NumberView {
        self.set_held(phone_number, Held::Ours);
        self.next_seq += 1;
        let view = NumberView {
            id: numeric_id(),
            phone_number: phone_number.to_string(),
            tags,
            messaging_profile_id,
            created_at: now(),
        };
        self.owned.push(Owned {
            seq: self.next_seq,
            view: view.clone(),
            ordered: Instant::now(),
        });
        view
    }
}

impl World {
    /// Buys available `numbers` in one order and keeps the order.
    fn order(
        &mut self,
        numbers: &[String],
        tags: &[String],
        profile: Option<String>,
        reference: Option<&str>,
    ) -> Value {
        let lines: Vec<Value> = numbers
            .iter()
            .map(|n| {
                self.take(n, tags.to_vec(), profile.clone());
                json!({
                    // The order line's id: not the phone number's.
                    "id": numeric_id(),
                    "record_type": "number_order_phone_number",
                    "phone_number": n,
                    "status": "success",
                    "regulatory_requirements": [],
                    "requirements_met": true,
                })
            })
            .collect();
        let created_at = now();
        let order = json!({
            "id": new_id(),
            "record_type": "number_order",
            "status": "success",
            "phone_numbers_count": lines.len(),
            "phone_numbers": lines,
            "messaging_profile_id": profile,
            "customer_reference": reference,
            "created_at": created_at,
            "updated_at": created_at,
        });
        self.orders.push(order.clone());
        order
    }

    /// Buys the first number for sale in an order of its own; panics if none is left.
    fn order_first_available(
        &mut self,
        tags: &[String],
        profile: Option<String>,
        reference: Option<&str>,
    ) -> NumberView {
        let phone_number = self
            .pool
            .iter()
            .find(|n| n.held == Held::Available)
            .map(|n| n.phone_number.clone())
            .expect("a number for sale in the fake");
        self.order(
            std::slice::from_ref(&phone_number),
            tags,
            profile,
            reference,
        );
        self.owned
            .iter()
            .rev()
            .find(|o| o.view.phone_number == phone_number)
            .map(|o| o.view.clone())
            .expect("the number just ordered")
    }
}

/// Telnyx's ids for numbers and order lines are large integers, sent as strings.
fn numeric_id() -> String {
    rand::thread_rng()
        .gen_range(1_000_000_000_000_000_000u64..9_000_000_000_000_000_000)
        .to_string()
}

struct Inner {
    config: TelnyxConfig,
    world: Mutex<World>,
    faults: Faults,
}

impl Inner {
    /// The state, also after a panic elsewhere (a failed test must still be able to clean up).
    fn world(&self) -> MutexGuard<'_, World> {
        unpoisoned(&self.world)
    }

    fn not_found(&self) -> Response {
        self.error(StatusCode::NOT_FOUND, "Resource not found")
    }

    fn invalid(&self, message: &str) -> Response {
        self.error(StatusCode::UNPROCESSABLE_ENTITY, message)
    }

    /// Whether a number is still settling after its order (404 to GET and PATCH).
    fn fresh(&self, owned: &Owned) -> bool {
        owned.ordered.elapsed() < Duration::from_millis(self.config.fresh_order_404_ms)
    }
}

/// `{"errors": [{"code", "title", "detail"}]}`.
fn errors(status: StatusCode, code: &str, title: &str, detail: &str) -> Response {
    (
        status,
        Json(json!({"errors": [{"code": code, "title": title, "detail": detail}]})),
    )
        .into_response()
}

impl Fake for Inner {
    fn faults(&self) -> &Faults {
        &self.faults
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        bearer_in(headers, std::slice::from_ref(&self.config.api_key))
    }

    fn error(&self, status: StatusCode, message: &str) -> Response {
        let (code, title) = match status {
            StatusCode::UNAUTHORIZED => ("10009", "Authentication failed"),
            StatusCode::NOT_FOUND => ("10005", "Resource not found"),
            StatusCode::UNPROCESSABLE_ENTITY | StatusCode::BAD_REQUEST => {
                ("10002", "Invalid parameter")
            }
            StatusCode::TOO_MANY_REQUESTS => ("10011", "Too many requests"),
            _ => ("10007", "Unexpected error"),
        };
        errors(status, code, title, message)
    }

    fn state(&self) -> Value {
        let world = self.world();
        json!({
            "numbers": world.owned.iter().map(|o| &o.view).collect::<Vec<_>>(),
            "available": world.pool.iter().filter(|n| n.held == Held::Available).count(),
            "takenElsewhere": world
                .pool
                .iter()
                .filter(|n| n.held == Held::Elsewhere)
                .map(|n| &n.phone_number)
                .collect::<Vec<_>>(),
            "messagingProfiles": world.profiles,
            "stealNext": world.steal_next,
        })
    }
}

/// A running fake; its server stops when it is dropped.
pub struct TelnyxFake {
    inner: Arc<Inner>,
    server: Server,
}

impl TelnyxFake {
    pub async fn start(config: TelnyxConfig) -> Self {
        let port = config.port;
        let world = World {
            next_seq: 0,
            pool: (1..=config.available.min(9999))
                .map(|i| PoolNumber {
                    phone_number: format!("+1555010{i:04}"),
                    held: Held::Available,
                })
                .collect(),
            owned: Vec::new(),
            profiles: vec![ProfileView {
                id: config.messaging_profile_id.clone(),
                name: config.messaging_profile_name.clone(),
                created_at: now(),
            }],
            orders: Vec::new(),
            steal_next: config.steal_next,
            outbid_next: None,
        };
        let inner = Arc::new(Inner {
            config,
            world: Mutex::new(world),
            faults: Faults::default(),
        });
        let routes = Router::new()
            .route("/v2/available_phone_numbers", get(search_numbers))
            .route("/v2/number_orders", post(order_numbers).get(list_orders))
            .route("/v2/phone_numbers", get(list_numbers))
            .route(
                "/v2/phone_numbers/{id}",
                get(get_number).patch(update_number).delete(release_number),
            )
            .route(
                "/v2/messaging_profiles",
                get(list_profiles).post(create_profile),
            );
        let server = Server::rest("telnyx", port, inner.clone(), routes).await;
        Self { inner, server }
    }

    /// The API base, `http://127.0.0.1:PORT/v2` (what `TELNYX_API_URL` takes).
    pub fn url(&self) -> String {
        format!("{}/v2", self.server.base_url())
    }

    pub fn api_key(&self) -> &str {
        &self.inner.config.api_key
    }

    /// The messaging profile that exists from the start.
    pub fn messaging_profile_id(&self) -> &str {
        &self.inner.config.messaging_profile_id
    }

    /// Every number we own, oldest first, with its tags.
    pub fn numbers(&self) -> Vec<NumberView> {
        self.inner
            .world()
            .owned
            .iter()
            .map(|o| o.view.clone())
            .collect()
    }

    /// How many numbers are for sale.
    pub fn available_count(&self) -> usize {
        self.inner
            .world()
            .pool
            .iter()
            .filter(|n| n.held == Held::Available)
            .count()
    }

    pub fn messaging_profiles(&self) -> Vec<ProfileView> {
        self.inner.world().profiles.clone()
    }

    /// The next `count` orders find their first number just taken by someone else (replaces
    /// what is left of the previous count).
    pub fn steal_next(&self, count: u32) {
        self.inner.world().steal_next = count;
    }

    /// Someone else buys this number now; false if it was not for sale.
    pub fn take_elsewhere(&self, phone_number: &str) -> bool {
        let mut world = self.inner.world();
        if world.held(phone_number) != Some(Held::Available) {
            return false;
        }
        world.set_held(phone_number, Held::Elsewhere);
        true
    }

    /// Buys the first number for sale without the API (someone used the portal, or an order
    /// whose reply never came back), tagged and on the default messaging profile. Panics if
    /// none is left.
    pub fn order_behind_our_back(&self, tags: &[&str]) -> NumberView {
        let mut world = self.inner.world();
        let tags: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
        let profile = Some(self.inner.config.messaging_profile_id.clone());
        world.order_first_available(&tags, profile, None)
    }

    /// Buys the first number for sale in an order with this `customer_reference` and leaves it
    /// untagged: what a creator that died between its order and its tag leaves behind. Panics if
    /// none is left.
    pub fn order_untagged(&self, reference: &str) -> NumberView {
        let mut world = self.inner.world();
        world.order_first_available(&[], None, Some(reference))
    }

    /// The next order answers 500 without buying anything, and right after it another buyer on
    /// this account (an instance named `reference`, of another replica) orders the same number
    /// and tags it: a client that takes "the number is ours now" for "my order went through"
    /// takes that instance's number.
    pub fn outbid_next(&self, reference: &str) {
        self.inner.world().outbid_next = Some(reference.to_string());
    }
}

// ---------------------------------------------------------------------------------------------
// Routes

async fn search_numbers(
    State(inner): State<Arc<Inner>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let read = || -> Result<(bool, usize), String> {
        let params = Params::read(query)?;
        let country_ok = params
            .get("filter[country_code]")
            .is_none_or(|c| c.eq_ignore_ascii_case("US"));
        let features_ok = params
            .all("filter[features][]")
            .iter()
            .chain(params.all("filter[features]").iter())
            .all(|f| FEATURES.contains(f));
        let limit = params.uint("filter[limit]")?.unwrap_or(10).clamp(1, 100);
        Ok((country_ok && features_ok, limit))
    };
    let (matches, limit) = match read() {
        Ok(params) => params,
        Err(message) => return inner.invalid(&message),
    };
    let world = inner.world();
    let data: Vec<Value> = world
        .pool
        .iter()
        .filter(|n| matches && n.held == Held::Available)
        .take(limit)
        .map(|n| {
            json!({
                "record_type": "available_phone_number",
                "phone_number": n.phone_number,
                "features": FEATURES.iter().map(|f| json!({"name": f})).collect::<Vec<_>>(),
                "region_information": [{"region_type": "country_code", "region_name": "US"}],
                "reservable": false,
                "quickship": true,
            })
        })
        .collect();
    Json(json!({
        "data": data,
        "metadata": {"total_results": data.len(), "best_effort_results": 0},
    }))
    .into_response()
}

/// What `POST /v2/number_orders` asks for.
struct OrderRequest {
    numbers: Vec<String>,
    profile: Option<String>,
    reference: Option<String>,
}

async fn order_numbers(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    let read = || -> Result<OrderRequest, String> {
        let body = json_body(&body)?;
        let numbers = match body.get("phone_numbers") {
            Some(Value::Array(items)) if !items.is_empty() => items
                .iter()
                .map(|item| {
                    item.get("phone_number")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .ok_or_else(|| "phone_numbers[].phone_number is required".to_string())
                })
                .collect::<Result<Vec<_>, _>>()?,
            _ => return Err("phone_numbers must be a non-empty array".into()),
        };
        let profile = opt_str(&body, "messaging_profile_id")?.map(str::to_string);
        let reference = opt_str(&body, "customer_reference")?.map(str::to_string);
        Ok(OrderRequest {
            numbers,
            profile,
            reference,
        })
    };
    let OrderRequest {
        numbers,
        profile,
        reference,
    } = match read() {
        Ok(order) => order,
        Err(message) => return inner.invalid(&message),
    };
    let mut world = inner.world();
    if let Some(profile) = &profile {
        if !world.profiles.iter().any(|p| &p.id == profile) {
            return inner.invalid(&format!("messaging_profile_id {profile} does not exist"));
        }
    }
    // A concurrent buyer got there between this client's search and its order.
    if world.steal_next > 0 && world.held(&numbers[0]) == Some(Held::Available) {
        world.steal_next -= 1;
        world.set_held(&numbers[0], Held::Elsewhere);
    }
    // All or nothing: one unavailable number fails the whole order.
    if let Some(taken) = numbers
        .iter()
        .find(|n| world.held(n) != Some(Held::Available))
    {
        return errors(
            StatusCode::UNPROCESSABLE_ENTITY,
            "10015",
            "Number unavailable",
            &format!("{taken} is no longer available"),
        );
    }
    if let Some(reference) = world.outbid_next.take() {
        // Another buyer on this account orders the number right after this order failed.
        world.order(
            &numbers,
            std::slice::from_ref(&reference),
            profile,
            Some(&reference),
        );
        return inner.error(StatusCode::INTERNAL_SERVER_ERROR, "order failed, try again");
    }
    let order = world.order(&numbers, &[], profile, reference.as_deref());
    Json(json!({ "data": order })).into_response()
}

/// `GET /v2/number_orders`, newest first, with `filter[customer_reference]` (exact),
/// `filter[created_at][gt]` / `[lt]` (RFC 3339) and `page[number]` / `page[size]`.
async fn list_orders(
    State(inner): State<Arc<Inner>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    type Bound = Option<chrono::DateTime<chrono::FixedOffset>>;
    let read = || -> Result<(Option<String>, Bound, Bound, usize, usize), String> {
        let params = Params::read(query)?;
        let time = |key: &str| -> Result<Bound, String> {
            params
                .get(key)
                .map(|t| {
                    chrono::DateTime::parse_from_rfc3339(t)
                        .map_err(|_| format!("{key} must be an RFC 3339 date-time"))
                })
                .transpose()
        };
        let (page, size) = paging(&params, inner.config.page_size)?;
        Ok((
            params.get("filter[customer_reference]").map(str::to_string),
            time("filter[created_at][gt]")?,
            time("filter[created_at][lt]")?,
            page,
            size,
        ))
    };
    let (reference, after, before, page, size) = match read() {
        Ok(listing) => listing,
        Err(message) => return inner.invalid(&message),
    };
    let world = inner.world();
    let matching: Vec<&Value> = world
        .orders
        .iter()
        .rev()
        .filter(|o| {
            reference
                .as_deref()
                .is_none_or(|r| o["customer_reference"].as_str() == Some(r))
        })
        .filter(|o| {
            let created = o["created_at"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
            after.is_none_or(|a| created.is_some_and(|c| c > a))
                && before.is_none_or(|b| created.is_some_and(|c| c < b))
        })
        .collect();
    paged(matching.into_iter().cloned().collect(), page, size)
}

/// `page[number]` (from 1) and `page[size]` (at most `largest`, 20 if not given).
fn paging(params: &Params, largest: usize) -> Result<(usize, usize), String> {
    let page = match params.uint("page[number]")? {
        Some(0) => return Err("page[number] must be at least 1".into()),
        Some(page) => page,
        None => 1,
    };
    let size = match params.uint("page[size]")? {
        Some(0) => return Err("page[size] must be at least 1".into()),
        Some(size) => size.min(largest),
        None => 20.min(largest),
    };
    Ok((page, size))
}

/// One page of `matching`, with Telnyx's `meta`.
fn paged(matching: Vec<Value>, page: usize, size: usize) -> Response {
    let total = matching.len();
    let data: Vec<Value> = matching
        .into_iter()
        .skip((page - 1).saturating_mul(size))
        .take(size)
        .collect();
    Json(json!({
        "data": data,
        "meta": {
            "total_pages": total.div_ceil(size),
            "total_results": total,
            "page_number": page,
            "page_size": size,
        },
    }))
    .into_response()
}

async fn list_numbers(
    State(inner): State<Arc<Inner>>,
    fault: Option<axum::Extension<Fault>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    struct Listing {
        tag: Option<String>,
        phone_number: Option<String>,
        page: usize,
        size: usize,
    }
    let read = || -> Result<Listing, String> {
        let params = Params::read(query)?;
        let (page, size) = paging(&params, inner.config.page_size)?;
        Ok(Listing {
            tag: params.get("filter[tag]").map(str::to_string),
            phone_number: params.get("filter[phone_number]").map(str::to_string),
            page,
            size,
        })
    };
    let listing = match read() {
        Ok(listing) => listing,
        Err(message) => return inner.invalid(&message),
    };
    let world = inner.world();
    let mut matching: Vec<&Owned> = world
        .owned
        .iter()
        .filter(|o| listing.tag.as_ref().is_none_or(|t| o.view.tags.contains(t)))
        .filter(|o| {
            listing
                .phone_number
                .as_ref()
                .is_none_or(|n| &o.view.phone_number == n)
        })
        .collect();
    matching.sort_by_key(|o| o.seq);
    // Items deleted before this page meanwhile: the page starts that much later.
    let shift = shifted_by(fault).min(matching.len());
    matching.drain(..shift);
    paged(
        matching.iter().map(|o| o.view.json("active")).collect(),
        listing.page,
        listing.size,
    )
}

/// The number a path names: its id, or the number itself.
fn find_owned<'a>(world: &'a mut World, id: &str) -> Option<&'a mut Owned> {
    world
        .owned
        .iter_mut()
        .find(|o| o.view.id == id || o.view.phone_number == id)
}

async fn get_number(
    State(inner): State<Arc<Inner>>,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let Ok(Path(id)) = id else {
        return inner.not_found();
    };
    let mut world = inner.world();
    match find_owned(&mut world, &id) {
        Some(owned) if !inner.fresh(owned) => {
            Json(json!({"data": owned.view.json("active")})).into_response()
        }
        _ => inner.not_found(),
    }
}

async fn update_number(
    State(inner): State<Arc<Inner>>,
    id: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Response {
    let Ok(Path(id)) = id else {
        return inner.not_found();
    };
    let read = || -> Result<Option<Vec<String>>, String> {
        let body = json_body(&body)?;
        match body.get("tags") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(tags)) => tags
                .iter()
                .map(|t| {
                    t.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| "tags must be strings".to_string())
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err("tags must be an array of strings".into()),
        }
    };
    let tags = match read() {
        Ok(tags) => tags,
        Err(message) => return inner.invalid(&message),
    };
    let mut world = inner.world();
    match find_owned(&mut world, &id) {
        Some(owned) if !inner.fresh(owned) => {
            if let Some(tags) = tags {
                owned.view.tags = tags;
            }
            Json(json!({"data": owned.view.json("active")})).into_response()
        }
        _ => inner.not_found(),
    }
}

async fn release_number(
    State(inner): State<Arc<Inner>>,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let Ok(Path(id)) = id else {
        return inner.not_found();
    };
    let mut world = inner.world();
    let Some(at) = world.owned.iter().position(|o| o.view.id == id) else {
        return inner.not_found();
    };
    let owned = world.owned.remove(at);
    // Back on sale: a long test run does not exhaust the pool.
    world.set_held(&owned.view.phone_number, Held::Available);
    Json(json!({"data": owned.view.json("deleted")})).into_response()
}

async fn list_profiles(State(inner): State<Arc<Inner>>) -> Response {
    let world = inner.world();
    Json(json!({
        "data": world.profiles.iter().map(ProfileView::json).collect::<Vec<_>>(),
        "meta": {
            "total_pages": 1,
            "total_results": world.profiles.len(),
            "page_number": 1,
            "page_size": world.profiles.len(),
        },
    }))
    .into_response()
}

async fn create_profile(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    let name = match json_body(&body).and_then(|body| {
        opt_str(&body, "name")?
            .filter(|n| !n.trim().is_empty())
            .map(str::to_string)
            .ok_or_else(|| "name is required".to_string())
    }) {
        Ok(name) => name,
        Err(message) => return inner.invalid(&message),
    };
    let profile = ProfileView {
        id: new_id(),
        name,
        created_at: now(),
    };
    inner.world().profiles.push(profile.clone());
    Json(json!({"data": profile.json()})).into_response()
}

impl Controls for TelnyxFake {
    fn server(&self) -> &Server {
        &self.server
    }

    fn faults(&self) -> &Faults {
        &self.inner.faults
    }
}
