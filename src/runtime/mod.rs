//! The runtime seams (`sidelog-runtime`) and whether a hop is down (the core's `Outage`).

pub use sidelog_core::Outage;
pub use sidelog_runtime::*;
