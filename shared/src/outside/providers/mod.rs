//! Compute providers: where instances run.

pub mod local;
pub mod railway;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::calls::Tally;
use crate::config::{OutboundSettings, ProviderKind, ProviderSettings};
use crate::domain::ObservedResource;
use crate::error::{Error, Result};

/// What a provider is asked to create. `env` carries secrets (the gateway token), hence the
/// hand-written `Debug`. The provider reports its steps to `progress`.
pub struct CreateSpec {
    pub name: String,
    pub env: Vec<(String, String)>,
    pub progress: Arc<dyn crate::progress::Progress>,
}

impl fmt::Debug for CreateSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<&str> = self.env.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("CreateSpec")
            .field("name", &self.name)
            .field("env_keys", &keys)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct Created {
    pub resource_id: String,
    pub url: String,
    pub details: serde_json::Value,
}

/// A resource to destroy. The resource id is unknown when a replica died between creating the
/// resource and recording it; the name (unique, prefixed) is enough to find it then.
#[derive(Debug, Clone)]
pub struct ResourceRef {
    pub name: String,
    pub resource_id: Option<String>,
    /// What the provider recorded at creation (`instance_infra.details`), or `Null`.
    pub details: serde_json::Value,
}

#[async_trait]
pub trait Provider: Send + Sync {
    fn kind(&self) -> ProviderKind;

    /// Creates the resource `spec.name`, or returns it if it already exists.
    async fn create(&self, spec: &CreateSpec) -> Result<Created>;

    /// Destroys a resource. Only an explicit "not found" counts as already destroyed; any other
    /// failure is an error, and the row waits for the next attempt.
    async fn destroy(&self, resource: &ResourceRef) -> Result<()>;

    /// Every resource whose name starts with `prefix`, with its status, in one batch. The listing
    /// is complete or an error: a resource the provider could not read must fail the listing,
    /// never be left out, because a resource left out looks gone (and, twice, is destroyed).
    async fn list(&self, prefix: &str) -> Result<Vec<ObservedResource>>;

    // Room for what comes next. Both default to "not offered", and a caller falls back to what
    // every provider can do: destroy and create anew.

    /// Brings a used resource back to its golden checkpoint instead of destroying it: seed 002's
    /// Sprites restore in about 15 s what a rebuild takes about 5 minutes to make. `None`: this
    /// provider keeps no checkpoints.
    async fn recycle(&self, _resource: &ResourceRef) -> Option<Result<Created>> {
        None
    }

    /// Adds variables to a running resource, for a tool added to a running instance or supplied
    /// by the user at claim time (seed 004). `None`: only a new resource gets new variables.
    async fn add_env(
        &self,
        _resource: &ResourceRef,
        _env: &[(String, String)],
    ) -> Option<Result<()>> {
        None
    }
}

pub fn from_settings(
    settings: &ProviderSettings,
    outbound: &OutboundSettings,
    tally: &Tally,
) -> Result<Arc<dyn Provider>> {
    match settings.pool_provider {
        ProviderKind::Local => Ok(Arc::new(local::LocalProvider::from_settings(
            &settings.local,
        )?)),
        ProviderKind::Railway => Ok(Arc::new(railway::RailwayProvider::from_settings(
            &settings.railway,
            outbound,
            tally,
        )?)),
        other => Err(Error::Config(crate::config::ConfigError {
            setting: "POOL_PROVIDER".into(),
            problem: format!(
                "provider {:?} is not available in this build",
                other.as_str()
            ),
        })),
    }
}
