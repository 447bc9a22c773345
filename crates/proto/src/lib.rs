//! sidelog's protobuf messages, as prost generates them from `proto/`.
//!
//! `v1` is the wire contract producers, handlers and sinks speak (its services are generated in
//! the `sidelog` crate, which serves them); `journal` is the journal's on-disk record encoding
//! (internal, but stable: a file written by one version is read by the next).

/// The generated code, laid out by package as prost's cross-package paths expect.
mod generated {
    pub mod sidelog {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/sidelog.v1.rs"));
        }
        pub mod journal {
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/sidelog.journal.v1.rs"));
            }
        }
    }
}

/// The `sidelog.v1` messages.
pub mod v1 {
    pub use crate::generated::sidelog::v1::*;
}

/// The journal's on-disk records.
pub mod journal {
    pub use crate::generated::sidelog::journal::v1::*;
}
