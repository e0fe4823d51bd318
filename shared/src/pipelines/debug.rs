//! `GET /api/pool/debug/:id`: what the pool, the runtime and the provider can tell of one
//! instance (seed 002's debug probe), with every secret redacted: the instance's gateway token
//! wherever it appears, any value under a name that says token, key, secret or password, and
//! `NAME=value` pairs of such names in text (a process list shows command lines and env files).

use serde_json::{json, Map, Value};

use crate::domain::Health;
use crate::error::Result;
use crate::instances;
use crate::providers::ResourceRef;
use crate::Pool;

const REDACTED: &str = "[redacted]";

pub async fn probe(pool: &Pool, id: &str) -> Result<Value> {
    let instance = instances::get(&pool.db, id).await?;
    let gateway_token = instances::gateway_token(&pool.db, id).await?;
    let infra = instances::infra_of(&pool.db, id).await?;
    let runtime = match instance.url.as_deref() {
        Some(url) => match pool.runtime.health(url, &gateway_token).await {
            Health::Ready { conversation_id } => {
                json!({"state": "ready", "conversationId": conversation_id})
            }
            Health::NotReady => json!({"state": "not_ready"}),
            Health::Unreachable => json!({"state": "unreachable"}),
        },
        None => json!({"state": "no_url"}),
    };
    let provider = match &infra {
        Some((name, resource_id, details)) => {
            let resource = ResourceRef {
                name: name.clone(),
                resource_id: Some(resource_id.clone()),
                details: details.clone(),
            };
            let seen = match pool.provider.probe(&resource).await {
                Some(Ok(seen)) => seen,
                Some(Err(e)) => json!({"error": e.public_message()}),
                None => Value::Null,
            };
            json!({"resourceId": resource_id, "recorded": details, "probe": seen})
        }
        None => Value::Null,
    };
    let mut report = json!({
        "instanceId": instance.id,
        "name": instance.name,
        "status": instance.status,
        "statusSince": instance.status_since,
        "url": instance.url,
        "provider": pool.provider.kind().as_str(),
        "runtime": runtime,
        "resource": provider,
    });
    redact(&mut report, &[gateway_token.as_str()]);
    Ok(report)
}

fn secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["token", "key", "secret", "password"]
        .iter()
        .any(|word| name.contains(word))
}

/// Blanks every secret in `value`, in place.
pub fn redact(value: &mut Value, secrets: &[&str]) {
    match value {
        Value::String(text) => *text = redact_text(text, secrets),
        Value::Array(items) => items.iter_mut().for_each(|v| redact(v, secrets)),
        Value::Object(map) => redact_map(map, secrets),
        _ => {}
    }
}

fn redact_map(map: &mut Map<String, Value>, secrets: &[&str]) {
    for (name, value) in map.iter_mut() {
        if secret_name(name) && (value.is_string() || value.is_number()) {
            *value = json!(REDACTED);
        } else {
            redact(value, secrets);
        }
    }
}

/// Known secrets blanked, and the value of every `NAME=value` (or `--name value`-less `name:
/// value`) whose name says secret.
pub fn redact_text(text: &str, secrets: &[&str]) -> String {
    let mut text = text.to_string();
    for secret in secrets.iter().filter(|s| s.len() >= 8) {
        text = text.replace(secret, REDACTED);
    }
    text.split_inclusive(|c: char| c.is_whitespace())
        .map(|word| {
            let body = word.trim_end();
            let tail = &word[body.len()..];
            match body.split_once('=') {
                Some((name, value)) if secret_name(name) && !value.is_empty() => {
                    format!("{name}={REDACTED}{tail}")
                }
                _ => word.to_string(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_blanked_by_value_by_name_and_in_text() {
        let token = "a".repeat(64);
        let mut report = json!({
            "recorded": {"apiKey": "sk-123", "pid": 7},
            "processes": format!("1 node gateway OPENCLAW_GATEWAY_TOKEN={token} ANTHROPIC_API_KEY=sk-ant-1\n2 sh"),
            "seen": format!("Bearer {token}"),
            "list": ["PATH=/bin", "DB_PASSWORD=hunter2"],
        });
        redact(&mut report, &[token.as_str()]);
        let text = report.to_string();
        assert!(!text.contains(&token), "{text}");
        assert!(
            !text.contains("sk-123") && !text.contains("sk-ant-1") && !text.contains("hunter2"),
            "{text}"
        );
        assert_eq!(report["recorded"]["pid"], 7);
        assert_eq!(report["list"][0], "PATH=/bin");
        assert!(report["processes"].as_str().unwrap().ends_with("\n2 sh"));
    }
}
