//! The work: claim, creation, the tick, and the gate that paces long work. Built on the layers
//! below; the faces (`handlers/`, `scheduler/`) call these.

pub mod claim;
pub mod creation;
pub mod gate;
pub mod heartbeat;
pub mod simulate;
pub mod tick;
