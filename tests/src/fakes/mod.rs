//! Stateful fakes of the external APIs the providers talk to (see DESIGN.md, "Reference:
//! external APIs"): in-process axum servers on loopback that keep what they were asked to create
//! and can inject faults (the machinery all of them share is in [`faults`]).

pub mod faults;
pub mod graphql;
pub mod railway;

pub use faults::{FakeStats, Fault, Scope};
pub use railway::{FakeConfig, ProjectView, RailwayFake, ServiceView, SharedIds, VolumeView};
