//! What a tick is asked to do.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// On the interval: list the provider, ask every runtime, reconcile and replenish.
    Full,
    /// Reconcile only: as `Full`, but no new instances.
    Reconcile,
    /// After a claim, a drain or a kill: replenish, without listing the provider or asking any
    /// runtime but the `starting` ones. Kicks come as fast as claims; the fleet's health keeps
    /// its interval.
    Kick,
}
