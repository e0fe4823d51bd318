//! Compute providers: where instances run.

pub mod local;
pub mod railway;
pub mod sprites;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::calls::Tally;
use crate::config::{ProviderKind, Settings};
use crate::domain::ObservedResource;
use crate::error::Result;

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

    /// Renames a resource for an operator's eyes (a claimed agent after its name, seeds 001 and
    /// 003). The resource keeps its id, by which the tick knows it; the new name keeps the pool's
    /// prefix. `None`: this provider's names are fixed.
    async fn rename(&self, _resource: &ResourceRef, _name: &str) -> Option<Result<()>> {
        None
    }

    /// Whether [`Provider::rename`] is offered, so that the tick plans renames only where they
    /// can happen (with fixed names, every claimed agent would be planned again every tick).
    fn can_rename(&self) -> bool {
        false
    }

    // Room for what comes next. Both default to "not offered", and a caller falls back to what
    // every provider can do: destroy and create anew.

    /// Whether [`Provider::recycle`] is offered: a used instance is then recycled (`claimed →
    /// recycling → idle`) rather than destroyed, and a new one gets its golden checkpoint
    /// ([`Provider::checkpoint`]) once its runtime is ready and clean.
    fn can_recycle(&self) -> bool {
        false
    }

    /// Takes the golden checkpoint of a resource whose runtime is ready and clean; returns what
    /// to add to the resource's recorded details (the checkpoint's id), which
    /// [`Provider::recycle`] is handed later. `None`: this provider keeps no checkpoints.
    async fn checkpoint(&self, _resource: &ResourceRef) -> Option<Result<serde_json::Value>> {
        None
    }

    /// Brings a used resource back to its golden checkpoint instead of destroying it: seed 002's
    /// Sprites restore in about 15 s what a rebuild takes about 5 minutes to make. `env`
    /// replaces variables of the checkpoint (a new gateway token: the previous user knew the
    /// old one). The answer comes once the resource is back; its runtime may still be starting.
    /// `None`: this provider keeps no checkpoints.
    async fn recycle(
        &self,
        _resource: &ResourceRef,
        _env: &[(String, String)],
    ) -> Option<Result<Created>> {
        None
    }

    /// Whether this provider's instances sleep when left alone and must be pinged every
    /// `HEARTBEAT_INTERVAL_MS` (Sprites), and can be woken by [`Provider::wake`].
    fn keeps_alive(&self) -> bool {
        false
    }

    /// Wakes a resource whose runtime stopped answering pings (an exec of `true` for a sprite).
    /// `None`: nothing to wake.
    async fn wake(&self, _resource: &ResourceRef) -> Option<Result<()>> {
        None
    }

    /// What the provider can tell of a resource for `GET /api/pool/debug/:id`: its record at the
    /// provider and, where it can look inside, processes, the runtime's status fetched from
    /// within, whether the env file exists, listening ports. Secrets may be in it: the caller
    /// redacts. `None`: nothing beyond what the pool recorded.
    async fn probe(&self, _resource: &ResourceRef) -> Option<Result<serde_json::Value>> {
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

/// `env` with each of `replace`'s variables set to its new value (added if it was not there).
pub fn replace_vars(env: &mut Vec<(String, String)>, replace: &[(String, String)]) {
    for (name, value) in replace {
        match env.iter_mut().find(|(k, _)| k == name) {
            Some(slot) => slot.1 = value.clone(),
            None => env.push((name.clone(), value.clone())),
        }
    }
}

/// The provider `POOL_PROVIDER` names, with its own settings (and, for Sprites, the pool's
/// environment in every name and the recycle's deadline).
pub fn from_settings(all: &Settings, tally: &Tally) -> Result<Arc<dyn Provider>> {
    let settings = &all.providers;
    let outbound = &all.outbound;
    match settings.pool_provider {
        ProviderKind::Local => Ok(Arc::new(local::LocalProvider::from_settings(
            &settings.local,
        )?)),
        ProviderKind::Railway => Ok(Arc::new(railway::RailwayProvider::from_settings(
            &settings.railway,
            outbound,
            tally,
        )?)),
        ProviderKind::Sprites => Ok(Arc::new(sprites::SpritesProvider::from_settings(
            &settings.sprites,
            outbound,
            &all.pool.pool_environment,
            all.creation.recycle_timeout(),
            tally,
        )?)),
    }
}
