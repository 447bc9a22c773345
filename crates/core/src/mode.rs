//! The logging modes and the one place that branches on them.
//!
//! The mode table of ARCHITECTURE.md becomes a [`Plan`]: plain decisions about what to write,
//! when to ack, and what to replay. The publish path (`pipeline/publish.rs`) and the
//! continuation after the handler act on the plan's fields and never look at the mode again.
//!
//! | mode   | input journaled          | handler called        | outputs journaled        | ack when           |
//! |--------|--------------------------|-----------------------|--------------------------|--------------------|
//! | `none` | no                       | on receipt            | no                       | on receipt         |
//! | `rbml` | durable, before handler  | after input durable   | no                       | input durable      |
//! | `sbml` | no                       | on receipt            | durable, before delivery | outputs durable    |
//! | `hml`  | durable, concurrently    | on receipt            | async, after handler     | input durable      |
//!
//! Replay is mode-agnostic: whatever the journal holds is replayed (outputs are re-sent, inputs
//! without recorded outputs go to the handler again), so a restart in another mode loses nothing.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LoggingMode {
    /// No journal: at-most-once, the baseline.
    #[serde(rename = "none")]
    None,
    /// Receiver-based message logging (RBML).
    #[serde(rename = "rbml")]
    ReceiverBased,
    /// Sender-based message logging (SBML).
    #[serde(rename = "sbml")]
    SenderBased,
    /// Hybrid message logging (HML): one store, input write concurrent with the handler.
    #[serde(rename = "hml")]
    Hybrid,
}

/// When the input is written to the journal, if at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputJournaling {
    None,
    /// Durable before the handler is called (RBML).
    BeforeHandler,
    /// Durable, written while the handler runs (HML).
    ConcurrentWithHandler,
}

/// When the handler's outputs are written to the journal, if at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputJournaling {
    None,
    /// Durable before the producer's ack and before delivery (SBML).
    DurableBeforeAck,
    /// Written without fsync after the handler returns, before delivery (HML).
    AfterHandler,
}

/// What a mode means, as decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub inputs: InputJournaling,
    pub outputs: OutputJournaling,
}

impl Plan {
    /// The handler runs inside the publish path, before the ack.
    pub fn handle_before_ack(&self) -> bool {
        self.outputs == OutputJournaling::DurableBeforeAck
    }

    /// The dedup window is persisted with the journal (every mode but `none`).
    pub fn journals_anything(&self) -> bool {
        self.inputs != InputJournaling::None || self.outputs != OutputJournaling::None
    }
}

impl LoggingMode {
    pub const ALL: [LoggingMode; 4] = [
        LoggingMode::None,
        LoggingMode::ReceiverBased,
        LoggingMode::SenderBased,
        LoggingMode::Hybrid,
    ];

    pub fn plan(self) -> Plan {
        match self {
            LoggingMode::None => Plan {
                inputs: InputJournaling::None,
                outputs: OutputJournaling::None,
            },
            LoggingMode::ReceiverBased => Plan {
                inputs: InputJournaling::BeforeHandler,
                outputs: OutputJournaling::None,
            },
            LoggingMode::SenderBased => Plan {
                inputs: InputJournaling::None,
                outputs: OutputJournaling::DurableBeforeAck,
            },
            LoggingMode::Hybrid => Plan {
                inputs: InputJournaling::ConcurrentWithHandler,
                outputs: OutputJournaling::AfterHandler,
            },
        }
    }

    /// The name used on the command line and in config files.
    pub fn as_str(self) -> &'static str {
        match self {
            LoggingMode::None => "none",
            LoggingMode::ReceiverBased => "rbml",
            LoggingMode::SenderBased => "sbml",
            LoggingMode::Hybrid => "hml",
        }
    }
}

impl fmt::Display for LoggingMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LoggingMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LoggingMode::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown mode {s:?}: expected one of hml, rbml, sbml, none"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for mode in LoggingMode::ALL {
            assert_eq!(mode.as_str().parse::<LoggingMode>(), Ok(mode));
        }
        assert!("fast".parse::<LoggingMode>().is_err());
    }

    #[test]
    fn only_sbml_handles_before_the_ack() {
        let before: Vec<_> = LoggingMode::ALL
            .into_iter()
            .filter(|m| m.plan().handle_before_ack())
            .collect();
        assert_eq!(before, vec![LoggingMode::SenderBased]);
        assert!(!LoggingMode::None.plan().journals_anything());
    }
}
