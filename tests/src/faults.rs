//! A provider wrapper whose listing a test can slow down, fail, or hold at a gate.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Semaphore;

use agentpool_core::config::ProviderKind;
use agentpool_core::domain::ObservedResource;
use agentpool_core::providers::{CreateSpec, Created, Provider, ResourceRef};
use agentpool_core::{Error, Result};

pub struct FaultyProvider {
    inner: Arc<dyn Provider>,
    list_fails: AtomicBool,
    list_delay_ms: AtomicU64,
    create_delay_ms: AtomicU64,
    hold: Mutex<Option<Arc<Semaphore>>>,
    /// Listings waiting at the hold right now.
    pub held: AtomicUsize,
}

impl FaultyProvider {
    pub fn new(inner: Arc<dyn Provider>) -> Self {
        Self {
            inner,
            list_fails: AtomicBool::new(false),
            list_delay_ms: AtomicU64::new(0),
            create_delay_ms: AtomicU64::new(0),
            hold: Mutex::new(None),
            held: AtomicUsize::new(0),
        }
    }

    pub fn fail_lists(&self, fail: bool) {
        self.list_fails.store(fail, Ordering::SeqCst);
    }

    /// Each listing waits this long before it reads anything: what it returns is as of the end.
    pub fn slow_lists(&self, delay: Duration) {
        self.list_delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Each creation takes this long more, as one on Railway does.
    pub fn slow_creates(&self, delay: Duration) {
        self.create_delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// From now on every listing waits until [`FaultyProvider::release_lists`].
    pub fn hold_lists(&self) {
        *self.hold.lock().unwrap() = Some(Arc::new(Semaphore::new(0)));
    }

    pub fn release_lists(&self) {
        if let Some(gate) = self.hold.lock().unwrap().take() {
            gate.close();
        }
    }
}

#[async_trait]
impl Provider for FaultyProvider {
    fn kind(&self) -> ProviderKind {
        self.inner.kind()
    }

    async fn create(&self, spec: &CreateSpec) -> Result<Created> {
        let delay = self.create_delay_ms.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        self.inner.create(spec).await
    }

    async fn destroy(&self, resource: &ResourceRef) -> Result<()> {
        self.inner.destroy(resource).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObservedResource>> {
        let gate = self.hold.lock().unwrap().clone();
        if let Some(gate) = gate {
            self.held.fetch_add(1, Ordering::SeqCst);
            // Closed = released.
            let _ = gate.acquire().await;
            self.held.fetch_sub(1, Ordering::SeqCst);
        }
        let delay = self.list_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if self.list_fails.load(Ordering::SeqCst) {
            return Err(Error::provider("local", "injected listing failure"));
        }
        self.inner.list(prefix).await
    }
}
