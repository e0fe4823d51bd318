//! Stateful fakes of the external APIs the providers talk to (see DESIGN.md, "Reference:
//! external APIs"): in-process axum servers on loopback that keep what they were asked to create
//! and can inject faults.

pub mod graphql;
pub mod railway;

pub use railway::{
    FakeConfig, FakeStats, Fault, ProjectView, RailwayFake, Scope, ServiceView, SharedIds,
    VolumeView,
};
