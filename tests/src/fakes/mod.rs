//! Stateful fakes of the external APIs the providers talk to (see DESIGN.md, "Reference:
//! external APIs"): in-process axum servers on loopback that keep what they were asked to create
//! and can inject faults (the machinery all of them share, and the ops faults target, are in
//! [`faults`]).

pub mod agentmail;
pub mod faults;
pub mod graphql;
pub mod openrouter;
pub mod railway;
mod rest;
pub mod sprites;
pub mod telnyx;

pub use agentmail::{AgentMailConfig, AgentMailFake, InboxView};
pub use faults::{Controls, FakeStats, Fault, Scope};
pub use openrouter::{KeyView, OpenRouterConfig, OpenRouterFake};
pub use railway::{FakeConfig, ProjectView, RailwayFake, ServiceView, SharedIds, VolumeView};
pub use sprites::{SpriteView, SpritesConfig, SpritesFake};
pub use telnyx::{NumberView, ProfileView, TelnyxConfig, TelnyxFake};
