//! `sidelog-sim`: run seeds of the simulator, or replay one.
//!
//! ```sh
//! cargo run -p sidelog-sim --release -- --mode hml --seeds 1000
//! cargo run -p sidelog-sim --release -- --mode hml --seed 42 --trace
//! ```

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use sidelog::LoggingMode;
use sidelog_sim::{Bug, FaultCounts, Report, SimConfig, run};

#[derive(Debug, Parser)]
#[command(
    name = "sidelog-sim",
    about = "Deterministic fault-injection simulator of sidelog"
)]
struct Args {
    /// Mode to simulate: hml, rbml, sbml, none, or all.
    #[arg(long, default_value = "all")]
    mode: String,
    /// Run this many seeds per mode, starting at --first-seed.
    #[arg(long, default_value_t = 10)]
    seeds: u64,
    /// The first seed of a sweep.
    #[arg(long, default_value_t = 1)]
    first_seed: u64,
    /// Run exactly this seed (and print its trace's end).
    #[arg(long)]
    seed: Option<u64>,
    /// Messages per run.
    #[arg(long, default_value_t = 1000)]
    messages: usize,
    /// Concurrent producers.
    #[arg(long, default_value_t = 4)]
    producers: usize,
    /// sidelog crashes per run.
    #[arg(long, default_value_t = 10)]
    crashes: usize,
    /// Multiplies every other fault rate (0: crashes only).
    #[arg(long, default_value_t = 1.0)]
    fault_scale: f64,
    /// The chance that one fsync of the journal or its log fails (before --fault-scale).
    #[arg(long, default_value_t = 0.005)]
    sync_error_rate: f64,
    /// A deliberate bug: ack-before-fsync, retry-failed-fsync or skip-replay.
    #[arg(long)]
    bug: Option<String>,
    /// Every seed without a handler (pass-through); by default a quarter of the seeds are.
    #[arg(long)]
    pass_through: bool,
    /// Print the last events of every run, not only of failing ones.
    #[arg(long)]
    trace: bool,
    /// Fail the sweep when a kind of fault never fired in a mode (the disk's kinds are not
    /// required in mode none, which writes nothing to it).
    #[arg(long)]
    require_every_fault: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let modes = match parse_modes(&args.mode) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: --mode: {e} (or all)");
            return ExitCode::from(2);
        }
    };
    let bug = match parse_bug(args.bug.as_deref()) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: --bug: {e}");
            return ExitCode::from(2);
        }
    };
    let seeds: Vec<u64> = match args.seed {
        Some(s) => vec![s],
        None => (args.first_seed..args.first_seed + args.seeds).collect(),
    };
    println!(
        "{:<5} {:>6} {:>9} {:>9} {:>8} {:>8} {:>9} {:>9} {:>7} {:>7} {:>8}",
        "mode",
        "seeds",
        "messages",
        "acked",
        "crashes",
        "faults",
        "sink dup",
        "dead",
        "losses",
        "violat.",
        "wall ms"
    );
    let mut failed = false;
    for mode in modes {
        failed |= !sweep(&args, mode, bug, &seeds);
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn parse_modes(arg: &str) -> Result<Vec<LoggingMode>, String> {
    if arg == "all" {
        return Ok(vec![
            LoggingMode::Hybrid,
            LoggingMode::ReceiverBased,
            LoggingMode::SenderBased,
            LoggingMode::None,
        ]);
    }
    arg.parse().map(|m| vec![m])
}

fn parse_bug(arg: Option<&str>) -> Result<Option<Bug>, String> {
    match arg {
        None => Ok(None),
        Some("ack-before-fsync") => Ok(Some(Bug::AckBeforeFsync)),
        Some("retry-failed-fsync") => Ok(Some(Bug::RetryFailedFsync)),
        Some("skip-replay") => Ok(Some(Bug::SkipReplay)),
        Some(other) => Err(format!(
            "unknown bug {other:?}: expected ack-before-fsync, retry-failed-fsync or skip-replay"
        )),
    }
}

/// Runs `seeds` in `mode`, printing failing runs (or every run with --trace) and the totals;
/// whether every run was ok.
fn sweep(args: &Args, mode: LoggingMode, bug: Option<Bug>, seeds: &[u64]) -> bool {
    #[allow(clippy::disallowed_methods)] // the driver reports how long a sweep took for real
    let started = Instant::now();
    let mut total = Totals::default();
    let mut ok = true;
    for &seed in seeds {
        let base = SimConfig::new(seed, mode);
        let cfg = SimConfig {
            pass_through: args.pass_through || base.pass_through,
            messages: args.messages,
            producers: args.producers,
            crashes: args.crashes,
            fault_scale: args.fault_scale,
            sync_error_rate: args.sync_error_rate,
            bug,
            ..base
        };
        let report = run(cfg);
        total.add(&report);
        if !report.ok() || args.trace || args.seed.is_some() {
            print_report(&report);
        }
        ok &= report.ok();
    }
    println!(
        "{:<5} {:>6} {:>9} {:>9} {:>8} {:>8} {:>9} {:>9} {:>7} {:>7} {:>8}",
        mode.as_str(),
        seeds.len(),
        total.messages,
        total.acked,
        total.crashes,
        total.faults,
        total.duplicates,
        total.dead,
        total.losses,
        total.violations,
        started.elapsed().as_millis()
    );
    let kinds = total.by_kind.kinds();
    println!(
        "{:<5} faults by kind: {}",
        mode.as_str(),
        kinds
            .iter()
            .map(|(name, n)| format!("{name} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let coverage = total.coverage.kinds();
    println!(
        "{:<5} behaviours: {}",
        mode.as_str(),
        coverage
            .iter()
            .map(|(name, n)| format!("{name} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    // Mode none writes nothing to the disk and has no journal to replay or to keep the
    // dedup window in.
    let never: Vec<&str> = kinds
        .iter()
        .filter(|(name, n)| *n == 0 && (mode != LoggingMode::None || !name.starts_with("disk_")))
        .chain(
            coverage
                .iter()
                .filter(|(_, n)| *n == 0 && mode != LoggingMode::None),
        )
        .map(|(name, _)| *name)
        .collect();
    if args.require_every_fault && !never.is_empty() {
        println!(
            "{:<5} FAILED: these faults or behaviours never fired: {}",
            mode.as_str(),
            never.join(", ")
        );
        ok = false;
    }
    ok
}

#[derive(Default)]
struct Totals {
    by_kind: FaultCounts,
    coverage: sidelog_sim::Coverage,
    messages: u64,
    acked: u64,
    crashes: u64,
    faults: u64,
    duplicates: u64,
    dead: u64,
    losses: u64,
    violations: u64,
}

impl Totals {
    fn add(&mut self, r: &Report) {
        self.messages += r.config.messages as u64;
        self.acked += r.inputs_acked as u64;
        self.by_kind.add(&r.faults);
        self.coverage.add(&r.coverage);
        self.crashes += r.faults.crashes;
        self.faults += r.faults.total();
        self.duplicates += r.sink_duplicates as u64;
        self.dead += r.dead_letters as u64;
        self.losses += r.losses.len() as u64;
        self.violations += r.violations.len() as u64;
    }
}

fn print_report(r: &Report) {
    let verdict = if r.ok() { "ok" } else { "FAILED" };
    println!(
        "seed {} mode {}: {verdict}; trace hash {:016x}; {} acked of {} messages, {} acks, {} restarts, faults {:?}, sink {} messages ({} duplicate ids), {} dead letters, {} losses, {} virtual ms",
        r.config.seed,
        r.config.mode,
        r.trace_hash,
        r.inputs_acked,
        r.config.messages,
        r.acks,
        r.restarts,
        r.faults,
        r.sink_messages,
        r.sink_duplicates,
        r.dead_letters,
        r.losses.len(),
        r.virtual_ms
    );
    for v in &r.violations {
        println!("  violation: {v}");
    }
    if !r.losses.is_empty() {
        println!(
            "  lost outputs (first 10): {:?}",
            &r.losses[..r.losses.len().min(10)]
        );
    }
    if !r.ok() || r.config.bug.is_some() {
        println!("  replay: {}", r.config.replay_command());
    }
    println!("  last events:");
    for e in &r.trace_tail {
        println!("    {e}");
    }
}
