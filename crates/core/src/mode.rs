//! The logging modes and the one place that branches on them.
//!
//! The mode table of ARCHITECTURE.md becomes a [`Plan`]: its [`Intake`] (one per row) and
//! whether there is a handler at all. The intake (`pipeline/intake.rs`) and the continuation
//! after the handler act on the plan and never look at the mode again.
//!
//! | mode   | input journaled          | handler called        | outputs journaled        | ack when           |
//! |--------|--------------------------|-----------------------|--------------------------|--------------------|
//! | `none` | no                       | on receipt            | no                       | on receipt         |
//! | `rbml` | durable, before handler  | after input durable   | no                       | input durable      |
//! | `sbml` | no                       | on receipt            | durable, before delivery | outputs durable    |
//! | `hml`  | durable, concurrently    | on receipt            | async, after handler     | input durable      |
//!
//! Without a handler (pass-through) each input is its own output: `hml` then has nothing to run
//! while the input is written and takes `rbml`'s intake, and no output is recorded (replaying
//! the input yields it again).
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

/// What a plan does with a request's new messages before their acks: one variant per plan,
/// each one function of `pipeline/intake.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intake {
    /// Nothing is written: each message is held in memory until it is delivered (a
    /// `MemoryPermit` that frees itself), acked on receipt; the handler runs after the ack
    /// (`none`).
    MemoryOnly,
    /// The input is durable before the ack; the handler runs after it (`rbml`; and `hml`
    /// without a handler, which has nothing to run while the input is written).
    InputFirst,
    /// The handler runs before the ack and its outputs are durable before the ack and before
    /// delivery (`sbml`).
    OutputsFirst,
    /// The input is written, durably, while the handler runs; the ack waits for the input only,
    /// and the outputs are recorded without fsync after the handler (`hml`).
    Hybrid,
}

/// What a mode means for a pipeline, as decisions: how it takes a request in, and whether
/// there is a handler at all. Built once, by [`LoggingMode::plan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub intake: Intake,
    /// No handler: each input is its own single output, delivered under the input's own
    /// sequence. Nothing is called, and no output is recorded (replaying the input yields it).
    pub pass_through: bool,
}

impl Plan {
    /// The dedup window is persisted with the journal (every mode but `none`).
    pub fn journals_anything(&self) -> bool {
        self.intake != Intake::MemoryOnly
    }

    /// The handler's outputs are recorded (without fsync) after it returns, before delivery:
    /// `hml` with a handler.
    pub fn records_outputs_after_handler(&self) -> bool {
        self.intake == Intake::Hybrid
    }
}

impl LoggingMode {
    pub const ALL: [LoggingMode; 4] = [
        LoggingMode::None,
        LoggingMode::ReceiverBased,
        LoggingMode::SenderBased,
        LoggingMode::Hybrid,
    ];

    /// The mode's plan, for a pipeline with a handler or without one (`pass_through`).
    pub fn plan(self, pass_through: bool) -> Plan {
        let intake = match self {
            LoggingMode::None => Intake::MemoryOnly,
            LoggingMode::ReceiverBased => Intake::InputFirst,
            LoggingMode::SenderBased => Intake::OutputsFirst,
            LoggingMode::Hybrid if pass_through => Intake::InputFirst,
            LoggingMode::Hybrid => Intake::Hybrid,
        };
        Plan {
            intake,
            pass_through,
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
    fn each_mode_has_its_intake_and_hml_without_a_handler_is_input_first() {
        let intakes: Vec<_> = LoggingMode::ALL
            .into_iter()
            .map(|m| m.plan(false).intake)
            .collect();
        assert_eq!(
            intakes,
            vec![
                Intake::MemoryOnly,
                Intake::InputFirst,
                Intake::OutputsFirst,
                Intake::Hybrid
            ]
        );
        assert_eq!(LoggingMode::Hybrid.plan(true).intake, Intake::InputFirst);
        assert!(
            !LoggingMode::Hybrid
                .plan(true)
                .records_outputs_after_handler()
        );
        assert!(!LoggingMode::None.plan(true).journals_anything());
    }
}
