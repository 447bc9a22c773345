//! The simulator's own promises: determinism, a passing sweep of every mode, and checkers that
//! catch loss (mode none) and deliberate bugs.

use sidelog::LoggingMode;
use sidelog_sim::{Bug, SimConfig, run};

/// Small runs keep the debug-build test quick; the CI sweep runs full-size seeds in release.
fn small(seed: u64, mode: LoggingMode) -> SimConfig {
    SimConfig {
        messages: 300,
        crashes: 5,
        ..SimConfig::new(seed, mode)
    }
}

#[test]
fn one_seed_gives_one_trace() {
    for mode in [LoggingMode::Hybrid, LoggingMode::SenderBased] {
        let a = run(small(42, mode));
        let b = run(small(42, mode));
        assert_eq!(
            a.trace_hash, b.trace_hash,
            "{mode}: two runs of one seed differ"
        );
        assert_eq!(a.trace_tail, b.trace_tail);
        assert_eq!(a.sink_messages, b.sink_messages);
        let c = run(small(43, mode));
        assert_ne!(
            a.trace_hash, c.trace_hash,
            "{mode}: two seeds gave the same trace"
        );
    }
}

#[test]
fn every_logging_mode_keeps_its_promises_over_a_sweep() {
    for mode in [
        LoggingMode::Hybrid,
        LoggingMode::ReceiverBased,
        LoggingMode::SenderBased,
    ] {
        for seed in 1..=4 {
            let r = run(small(seed, mode));
            assert!(
                r.ok(),
                "{mode} seed {seed}: {} losses, violations {:?}\nreplay: {}\n{}",
                r.losses.len(),
                r.violations,
                r.config.replay_command(),
                r.trace_tail.join("\n")
            );
            assert!(
                r.faults.crashes > 0,
                "{mode} seed {seed}: no crash was injected"
            );
            assert!(r.inputs_acked > 0);
        }
    }
}

#[test]
fn mode_none_loses_messages_and_the_simulator_says_so() {
    let lost: usize = (1..=3)
        .map(|seed| run(small(seed, LoggingMode::None)).losses.len())
        .sum();
    assert!(
        lost > 0,
        "mode none lost nothing under crashes: the checkers cannot see loss"
    );
}

#[test]
fn acking_before_fsync_is_caught_within_a_few_seeds() {
    for mode in [
        LoggingMode::Hybrid,
        LoggingMode::ReceiverBased,
        LoggingMode::SenderBased,
    ] {
        let caught = (1..=3).any(|seed| {
            let r = run(SimConfig {
                bug: Some(Bug::AckBeforeFsync),
                ..small(seed, mode)
            });
            !r.violations.is_empty() && r.violations.iter().any(|v| v.contains("not durable"))
        });
        assert!(caught, "{mode}: ack-before-fsync went unnoticed");
    }
}

/// A failed fsync may have dropped its pages (the disk model is pessimistic, as Linux is after a
/// writeback error): retrying it and trusting the retry acks what is not durable.
#[test]
fn trusting_a_retried_fsync_is_caught_within_a_few_seeds() {
    for mode in [
        LoggingMode::Hybrid,
        LoggingMode::ReceiverBased,
        LoggingMode::SenderBased,
    ] {
        let caught = (1..=20).any(|seed| {
            !run(SimConfig {
                bug: Some(Bug::RetryFailedFsync),
                sync_error_rate: 0.05,
                ..small(seed, mode)
            })
            .ok()
        });
        assert!(caught, "{mode}: trusting a retried fsync went unnoticed");
    }
}

/// The same fsync failures without the bug: nothing acked is lost.
#[test]
fn failed_fsyncs_lose_nothing_acked() {
    for mode in [
        LoggingMode::Hybrid,
        LoggingMode::ReceiverBased,
        LoggingMode::SenderBased,
    ] {
        let mut with_failures = 0;
        for seed in 1..=6 {
            let r = run(SimConfig {
                sync_error_rate: 0.05,
                ..small(seed, mode)
            });
            assert!(
                r.ok(),
                "{mode} seed {seed}: {:?} {:?}",
                r.violations,
                r.losses
            );
            with_failures += u32::from(r.faults.disk_sync_errors > 0);
        }
        assert!(
            with_failures >= 3,
            "{mode}: only {with_failures} of 6 seeds had an fsync fail"
        );
    }
}

#[test]
fn skipping_replay_is_caught_within_a_few_seeds() {
    for mode in [
        LoggingMode::Hybrid,
        LoggingMode::ReceiverBased,
        LoggingMode::SenderBased,
    ] {
        let caught = (1..=3).any(|seed| {
            !run(SimConfig {
                bug: Some(Bug::SkipReplay),
                ..small(seed, mode)
            })
            .ok()
        });
        assert!(caught, "{mode}: skipping replay went unnoticed");
    }
}
