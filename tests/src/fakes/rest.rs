//! Request reading shared by the REST fakes. Nothing here panics on what a client sent: a body
//! or query the fake cannot read is a message for the API's own 400.

use axum::extract::rejection::QueryRejection;
use axum::extract::Query;
use serde_json::{Map, Value};

/// The request body as a JSON object; an empty body reads as `{}` (creates whose fields are all
/// optional).
pub fn json_body(body: &[u8]) -> Result<Map<String, Value>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("Body must be a JSON object".into()),
        Err(e) => Err(format!("Body is not valid JSON: {e}")),
    }
}

/// A field that may be absent, null or a string.
pub fn opt_str<'a>(body: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, String> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("{name} must be a string")),
    }
}

/// How a PATCH field reads: absent leaves it, null clears it, a value sets it.
pub enum Change<T> {
    Keep,
    Clear,
    Set(T),
}

/// Query parameters in order, repeated names kept (`filter[features][]=sms&...`).
pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn read(
        query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    ) -> Result<Self, String> {
        query
            .map(|Query(pairs)| Params(pairs))
            .map_err(|e| format!("Invalid query string: {}", e.body_text()))
    }

    /// The last value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// A non-negative integer parameter.
    pub fn uint(&self, name: &str) -> Result<Option<usize>, String> {
        match self.get(name) {
            None | Some("") => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| format!("{name} must be a non-negative integer, not {v:?}")),
        }
    }
}

/// `n` random bytes as lowercase hex.
pub fn random_hex(n: usize) -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..n).map(|_| format!("{:02x}", rng.gen::<u8>())).collect()
}
