//! The runtime seams (`sidelog-runtime`) and whether a hop is down (`outage.rs`).

mod outage;

pub use outage::Outage;
pub use sidelog_runtime::*;
