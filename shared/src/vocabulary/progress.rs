//! How each step of a long piece of work went, as a creation reports it to whoever watches (the
//! SSE stream, nobody). Vocabulary shared by the pipelines that report and the providers and tools
//! whose steps they are.

/// How a creation step went, as the SSE stream reports it (seed 000).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StepStatus {
    Active,
    Ok,
    Fail,
    Skip,
}

/// Hears about each step of one creation (`openrouter`, `agentmail`, `telnyx`, `wallet`,
/// `bankr`, the provider's own steps, `done`).
pub trait Progress: Send + Sync {
    fn step(&self, step: &str, status: StepStatus, message: &str);
}

/// Progress nobody watches.
pub struct Unwatched;

impl Progress for Unwatched {
    fn step(&self, _: &str, _: StepStatus, _: &str) {}
}
