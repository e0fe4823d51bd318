//! The work: claim, creation, the tick, and the gate that paces long work; what operators do by
//! hand, who gets in, and what the pages read. Built on the layers below; the faces
//! (`handlers/`, `scheduler/`) call these and nothing under them.

pub mod access;
pub mod claim;
pub mod creation;
pub mod debug;
pub mod gate;
pub mod heartbeat;
pub mod operator;
pub mod overview;
pub mod recycle;
pub mod simulate;
pub mod tick;
