//! `sidelog-bench --targets`: every workload the lean durable path is judged on, in one run,
//! and one table saying which targets are met.
//!
//! The targets are ratios within this run on this machine (the README's Performance section
//! lists them). A sidelog mode's rate is the one it sustained to the sink (`sink/s`: the run and
//! the drain after it), so a backlog that grew during the run does not count as throughput; a
//! JetStream peer's is its PubAck rate (it delivers nowhere).

use std::time::Duration;

use anyhow::Context as _;
use sidelog::LoggingMode;

use super::{BenchArgs, ModeResult, recovery, run_modes};

/// One workload's results, by name.
struct Workload {
    name: &'static str,
    results: Vec<ModeResult>,
}

impl Workload {
    fn get(&self, mode: &str) -> anyhow::Result<&ModeResult> {
        self.results
            .iter()
            .find(|r| r.mode == mode)
            .with_context(|| format!("workload {}: no result for {mode}", self.name))
    }

    /// The rate a row stands for: sustained to the sink where measured, else acks per second.
    fn rate(&self, mode: &str) -> anyhow::Result<f64> {
        let r = self.get(mode)?;
        Ok(r.sink_per_s.unwrap_or(r.msgs_per_s))
    }

    fn cpu(&self, mode: &str) -> anyhow::Result<f64> {
        self.get(mode)?
            .cpu_us_per_msg
            .with_context(|| format!("workload {}: no CPU figure for {mode}", self.name))
    }
}

/// One target's verdict.
struct Verdict {
    target: &'static str,
    measured: String,
    met: bool,
}

pub(super) async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let peers: Vec<String> = args.peer.iter().map(|p| p.label.clone()).collect();
    let base = BenchArgs {
        json: None,
        plot: None,
        recovery: None,
        targets: false,
        size: 1024,
        ..args.clone()
    };
    // A: 64 unary producers, every mode (and the peers); B and C are A with 100 messages a
    // request, and A on a stream.
    let a = BenchArgs {
        modes: LoggingMode::ALL.to_vec(),
        producers: 64,
        batch: 1,
        ..base.clone()
    };
    let mut workloads = vec![step("A", a.clone()).await?];
    let b = BenchArgs {
        producers: 16,
        batch: 100,
        ..a.clone()
    };
    workloads.push(step("B", b).await?);
    let c = BenchArgs {
        stream: true,
        ..a.clone()
    };
    workloads.push(step("C", no_peers(c)).await?);
    workloads.extend(light(&base).await?);
    let hml_peak = workloads[0].get("hml")?.msgs_per_s;
    let half = BenchArgs {
        modes: vec![LoggingMode::None, LoggingMode::Hybrid],
        rate: Some((hml_peak / 2.0).max(1.0) as u64),
        ..a.clone()
    };
    workloads.push(step("A at half of hml's peak", no_peers(half)).await?);
    workloads.extend(with_handler(&a).await?);
    let recovered = match args.recovery {
        Some(entries) => {
            println!("\n== recovery");
            let r = BenchArgs {
                modes: vec![LoggingMode::Hybrid],
                size: 100,
                json: None,
                ..args.clone()
            };
            Some((entries, recovery::run(&r, entries).await?))
        }
        None => None,
    };
    report(args, &workloads, &peers, recovered)
}

/// One workload, run and named.
async fn step(name: &'static str, a: BenchArgs) -> anyhow::Result<Workload> {
    println!("\n== {name}");
    let results = run_modes(&a)
        .await
        .with_context(|| format!("workload {name}"))?;
    Ok(Workload { name, results })
}

/// The workload without the JetStream peers (they have no stream, handler or open loop).
fn no_peers(a: BenchArgs) -> BenchArgs {
    BenchArgs {
        peer: Vec::new(),
        ..a
    }
}

/// One producer; 1,000 msgs/s offered by eight; 500 msgs/s by one: `none` and `hml`.
async fn light(base: &BenchArgs) -> anyhow::Result<Vec<Workload>> {
    let light = no_peers(BenchArgs {
        modes: vec![LoggingMode::None, LoggingMode::Hybrid],
        producers: 1,
        batch: 1,
        ..base.clone()
    });
    let offered = BenchArgs {
        producers: 8,
        rate: Some(1000),
        ..light.clone()
    };
    let low = BenchArgs {
        rate: Some(500),
        ..light.clone()
    };
    Ok(vec![
        step("one producer", light).await?,
        step("1,000 msgs/s offered", offered).await?,
        step("light load", low).await?,
    ])
}

/// A with a handler (one output, 2 ms) in the modes that have one, closed loop, then open at
/// half of `hml`'s peak there.
async fn with_handler(a: &BenchArgs) -> anyhow::Result<Vec<Workload>> {
    let handler = no_peers(BenchArgs {
        modes: vec![
            LoggingMode::ReceiverBased,
            LoggingMode::SenderBased,
            LoggingMode::Hybrid,
        ],
        handler_outputs: Some(1),
        handler_delay: Duration::from_millis(2),
        ..a.clone()
    });
    let closed = step("handler, closed loop", handler.clone()).await?;
    let peak = closed.get("hml")?.msgs_per_s;
    let half = BenchArgs {
        rate: Some((peak / 2.0).max(1.0) as u64),
        ..handler
    };
    Ok(vec![
        closed,
        step("handler at half of hml's peak", half).await?,
    ])
}

/// The figures, the targets met or not, and the JSON (`--json`).
fn report(
    args: &BenchArgs,
    workloads: &[Workload],
    peers: &[String],
    recovered: Option<(u64, recovery::Recovered)>,
) -> anyhow::Result<()> {
    let by = |name: &str| {
        workloads
            .iter()
            .find(|w| w.name == name)
            .expect("every workload above ran")
    };
    println!("\n== figures (msgs/s sustained to the sink, or a peer's acks/s; CPU µs/msg)");
    print_figures(&[by("A"), by("B"), by("C")], peers);
    let verdicts = verdicts(&by, peers, recovered)?;
    println!("\n== targets");
    for v in &verdicts {
        println!(
            "{:<5} {:<62} {}",
            if v.met { "met" } else { "NOT" },
            v.target,
            v.measured
        );
    }
    println!(
        "{} of {} measured targets met (10, `none` bounded by max_backlog_bytes, is a test: \
         mode_none_holds_no_more_than_the_backlog_limit_in_memory)",
        verdicts.iter().filter(|v| v.met).count(),
        verdicts.len()
    );
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "workloads": workloads.iter().map(|w| (w.name, &w.results)).collect::<std::collections::BTreeMap<_, _>>(),
            "recovery": recovered.map(|(entries, r)| serde_json::json!({
                "entries": entries, "entries_per_s": r.entries_per_s, "peak_rss_bytes": r.peak_rss_bytes,
            })),
            "targets": verdicts.iter().map(|v| serde_json::json!({
                "target": v.target, "measured": v.measured, "met": v.met,
            })).collect::<Vec<_>>(),
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {} (--json)", path.display()))?;
    }
    Ok(())
}

/// The A/B/C table: one row per workload, `msgs/s (CPU µs/msg)` per mode and peer.
fn print_figures(workloads: &[&Workload], peers: &[String]) {
    let columns: Vec<String> = LoggingMode::ALL
        .iter()
        .map(|m| m.as_str().to_owned())
        .chain(peers.iter().cloned())
        .collect();
    println!("| workload | {} |", columns.join(" | "));
    println!("|---|{}", "---|".repeat(columns.len()));
    for w in workloads {
        let cells: Vec<String> = columns
            .iter()
            .map(|c| match (w.rate(c), w.get(c)) {
                (Ok(rate), Ok(r)) => format!(
                    "{:.1} k ({})",
                    rate / 1000.0,
                    r.cpu_us_per_msg
                        .map(|c| format!("{c:.1}"))
                        .unwrap_or_else(|| "-".into())
                ),
                _ => String::new(),
            })
            .collect();
        println!("| {} | {} |", w.name, cells.join(" | "));
    }
}

fn verdicts<'a>(
    by: &impl Fn(&str) -> &'a Workload,
    peers: &[String],
    recovered: Option<(u64, recovery::Recovered)>,
) -> anyhow::Result<Vec<Verdict>> {
    let mut v = Vec::new();
    let (a, b, c) = (by("A"), by("B"), by("C"));
    let ratio =
        |w: &Workload, x: &str, y: &str| -> anyhow::Result<f64> { Ok(w.rate(x)? / w.rate(y)?) };

    let r: Vec<f64> = [a, b, c]
        .iter()
        .map(|w| ratio(w, "hml", "none"))
        .collect::<anyhow::Result<_>>()?;
    v.push(Verdict {
        target: "1 hml >= 0.8x none in A, B and C",
        measured: format!("A {:.2}x, B {:.2}x, C {:.2}x", r[0], r[1], r[2]),
        met: r.iter().all(|x| *x >= 0.8),
    });
    v.extend(against_jetstream(a, b, peers)?);
    let one = by("one producer");
    let (hp50, np50) = (one.get("hml")?.ack_p50_us, one.get("none")?.ack_p50_us);
    let cpu_1k = by("1,000 msgs/s offered").cpu("hml")?;
    v.push(Verdict {
        target: "4 one producer: hml ack p50 <= none's + 150 µs; 1k/s: <= 30 µs",
        measured: format!("{hp50} vs {np50} µs; {cpu_1k:.1} µs CPU/msg"),
        met: hp50 <= np50 + 150 && cpu_1k <= 30.0,
    });
    let light = by("light load");
    let e2e = |m: &str| -> anyhow::Result<u64> {
        light
            .get(m)?
            .e2e_p50_us
            .context("light load: no publish→sink figure")
    };
    let (ne, he) = (e2e("none")?, e2e("hml")?);
    v.push(Verdict {
        target: "5 light load: publish→sink p50 <= 0.5 ms none, <= 1 ms hml",
        measured: format!("none {ne} µs, hml {he} µs"),
        met: ne <= 500 && he <= 1000,
    });
    let half = by("A at half of hml's peak").get("hml")?;
    v.push(Verdict {
        target: "6 A at half of hml's peak, open loop: hml ack p99 <= 2 ms",
        measured: format!("{} µs", half.ack_p99_us),
        met: half.ack_p99_us <= 2000,
    });
    v.push(replay_verdict(recovered));
    let rpc = a.get("hml")?.records_per_commit.unwrap_or(0.0);
    v.push(Verdict {
        target: "8 >= 32 records per commit in A (hml)",
        measured: format!("{rpc:.1}"),
        met: rpc >= 32.0,
    });
    let h = by("handler at half of hml's peak");
    let (hml, sbml, rbml) = (h.get("hml")?, h.get("sbml")?, h.get("rbml")?);
    let e2e = |r: &ModeResult| r.e2e_p50_us.unwrap_or(u64::MAX);
    let bytes_ratio = hml.bytes_per_msg / (rbml.bytes_per_msg + sbml.bytes_per_msg).max(1.0);
    v.push(Verdict {
        target: "9 handler: hml ack p50 <= 0.5x sbml's, e2e <= rbml's - 1 ms, bytes <= 0.6x",
        measured: format!(
            "ack {} vs {} µs, e2e {} vs {} µs, bytes {:.2}x (rbml + sbml)",
            hml.ack_p50_us,
            sbml.ack_p50_us,
            e2e(hml),
            e2e(rbml),
            bytes_ratio
        ),
        met: hml.ack_p50_us * 2 <= sbml.ack_p50_us
            && e2e(hml).saturating_add(1000) <= e2e(rbml)
            && bytes_ratio <= 0.6,
    });
    Ok(v)
}

/// Targets 2 and 3: `hml` beside JetStream's default sync (the first peer).
fn against_jetstream(a: &Workload, b: &Workload, peers: &[String]) -> anyhow::Result<Vec<Verdict>> {
    let ratio =
        |w: &Workload, x: &str, y: &str| -> anyhow::Result<f64> { Ok(w.rate(x)? / w.rate(y)?) };
    // The default-sync peer is the first one given (benches/nats-peer.sh: nats-default).
    let mut v = Vec::new();
    match peers.first() {
        Some(js) => {
            let (ra, rb) = (ratio(a, "hml", js)?, ratio(b, "hml", js)?);
            v.push(Verdict {
                target: "2 hml >= 1.0x JetStream default in B, >= 0.6x in A",
                measured: format!("B {rb:.2}x, A {ra:.2}x ({js})"),
                met: rb >= 1.0 && ra >= 0.6,
            });
            let cpu = |w: &Workload| -> anyhow::Result<(f64, Option<f64>)> {
                Ok((w.cpu("hml")?, w.get(js)?.cpu_us_per_msg))
            };
            let ((ha, ja), (hb, jb)) = (cpu(a)?, cpu(b)?);
            let fmt = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.1}"));
            v.push(Verdict {
                target: "3 hml CPU/msg <= JetStream default's in A and B",
                measured: format!("A {ha:.1} vs {} µs, B {hb:.1} vs {} µs", fmt(ja), fmt(jb)),
                met: ja.is_some_and(|j| ha <= j) && jb.is_some_and(|j| hb <= j),
            });
        }
        None => v.push(Verdict {
            target: "2, 3 against JetStream",
            measured: "not measured: no --peer (benches/nats-peer.sh gives two)".into(),
            met: false,
        }),
    }
    Ok(v)
}

/// Target 7: replay of a large backlog (`--recovery`).
fn replay_verdict(recovered: Option<(u64, recovery::Recovered)>) -> Verdict {
    match recovered {
        Some((entries, r)) => Verdict {
            target: "7 replay >= 1 M entries/s, RSS < 256 MiB",
            measured: format!(
                "{entries} x 100 B: {:.0} entries/s, {:.0} MiB",
                r.entries_per_s,
                r.peak_rss_bytes as f64 / (1024.0 * 1024.0)
            ),
            met: r.entries_per_s >= 1e6 && r.peak_rss_bytes < 256 << 20,
        },
        None => Verdict {
            target: "7 replay >= 1 M entries/s, RSS < 256 MiB",
            measured: "not measured: give --recovery 10000000".into(),
            met: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(mode: &str, rate: f64, cpu: f64) -> ModeResult {
        ModeResult {
            mode: mode.into(),
            messages: 1000,
            msgs_per_s: rate,
            sink_per_s: (!mode.starts_with("nats")).then_some(rate),
            mib_per_s: 1.0,
            ack_p50_us: 100,
            ack_p99_us: 1500,
            ack_p999_us: 5000,
            e2e_p50_us: Some(400),
            e2e_p99_us: Some(900),
            records_per_commit: Some(40.0),
            fsyncs_per_1k: Some(25.0),
            bytes_per_msg: 1000.0,
            cpu_us_per_msg: Some(cpu),
            peak_rss_bytes: Some(64 << 20),
            journal_peak_bytes: None,
            journal_end_bytes: None,
            ratio_to_none: None,
            errors: 0,
        }
    }

    fn workload(name: &'static str, results: Vec<ModeResult>) -> Workload {
        Workload { name, results }
    }

    /// Every workload, with hml as fast and as cheap as the targets ask; `tweak` spoils one.
    fn all(tweak: impl Fn(&'static str, &mut ModeResult)) -> Vec<Workload> {
        let names = [
            "A",
            "B",
            "C",
            "one producer",
            "1,000 msgs/s offered",
            "light load",
            "A at half of hml's peak",
            "handler at half of hml's peak",
        ];
        names
            .into_iter()
            .map(|name| {
                let mut rows = vec![
                    row("none", 100.0, 10.0),
                    row("rbml", 90.0, 12.0),
                    row("sbml", 90.0, 12.0),
                    row("hml", 90.0, 12.0),
                    row("nats-default", 80.0, 20.0),
                ];
                if name.starts_with("handler") {
                    rows[1].e2e_p50_us = Some(3000);
                    rows[2].ack_p50_us = 2500;
                }
                rows.iter_mut().for_each(|r| tweak(name, r));
                workload(name, rows)
            })
            .collect()
    }

    fn judge(workloads: &[Workload]) -> Vec<bool> {
        let by = |name: &str| workloads.iter().find(|w| w.name == name).unwrap();
        let recovered = recovery::Recovered {
            entries_per_s: 1.5e6,
            peak_rss_bytes: 100 << 20,
        };
        verdicts(&by, &["nats-default".into()], Some((10, recovered)))
            .unwrap()
            .into_iter()
            .map(|v| v.met)
            .collect()
    }

    #[test]
    fn every_target_met_when_the_figures_say_so() {
        assert_eq!(judge(&all(|_, _| {})), vec![true; 9]);
    }

    #[test]
    fn each_spoiled_figure_fails_its_own_target() {
        // (workload, mode, spoil, index of the target that must fail)
        type Spoil = fn(&mut ModeResult);
        let cases: [(&str, &str, Spoil, usize); 7] = [
            ("C", "hml", |r| r.sink_per_s = Some(70.0), 0),
            ("B", "nats-default", |r| r.msgs_per_s = 95.0, 1),
            ("A", "hml", |r| r.cpu_us_per_msg = Some(25.0), 2),
            ("one producer", "hml", |r| r.ack_p50_us = 400, 3),
            ("light load", "hml", |r| r.e2e_p50_us = Some(1200), 4),
            ("A at half of hml's peak", "hml", |r| r.ack_p99_us = 2500, 5),
            ("A", "hml", |r| r.records_per_commit = Some(20.0), 7),
        ];
        for (workload, mode, spoil, target) in cases {
            let verdicts = judge(&all(|name, r| {
                if name == workload && r.mode == mode {
                    spoil(r)
                }
            }));
            let failed: Vec<usize> = (0..verdicts.len()).filter(|i| !verdicts[*i]).collect();
            assert_eq!(failed, vec![target], "{workload}/{mode}");
        }
    }
}
