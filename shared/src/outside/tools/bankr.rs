//! Bankr: the pool's `BANKR_API_KEY`, handed to each instance for its crypto actions. Nothing is
//! made outside per instance, so there is nothing to destroy or to find as an orphan.

use async_trait::async_trait;
use serde_json::{json, Value};

use super::{Listed, Provisioned, Target, Tool};
use crate::config::{BankrSettings, Secret};
use crate::error::Result;

pub struct Bankr {
    key: Secret,
}

impl Bankr {
    pub fn from_settings(settings: &BankrSettings) -> Option<Self> {
        Some(Self {
            key: settings.bankr_api_key.clone()?,
        })
    }
}

#[async_trait]
impl Tool for Bankr {
    fn id(&self) -> &'static str {
        "crypto"
    }

    fn step(&self) -> &'static str {
        "bankr"
    }

    async fn create(&self, target: Target<'_>) -> Result<Provisioned> {
        Ok(Provisioned {
            resource_id: format!("bankr:{}", target.instance_id),
            config: json!({}),
            env: vec![("BANKR_API_KEY".into(), self.key.expose().to_string())],
        })
    }

    async fn update(&self, _resource_id: &str, _config: &Value) -> Result<()> {
        Ok(())
    }

    async fn destroy(&self, _resource_id: &str) -> Result<()> {
        Ok(())
    }

    async fn list(&self, _prefix: &str) -> Result<Option<Vec<Listed>>> {
        Ok(None)
    }
}
