//! The words every other layer speaks: domain types, the error type, what can go wrong with an
//! outside call, step progress, settings. Depends on nothing else in the crate.

pub mod calls;
pub mod config;
pub mod domain;
pub mod error;
pub mod failpoint;
pub mod progress;
pub mod template;
