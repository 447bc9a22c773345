//! The README's "Five minutes by hand", run as written: its commands are read from the README
//! itself, so the walkthrough a newcomer follows first cannot drift from what works.
//!
//! `cargo run --release --` becomes the sidelog binary Cargo built for the tests and `cargo run
//! --example NAME --` the example's binary (`cargo test` builds both; run alone, this test
//! builds the examples itself); everything else runs
//! verbatim through `sh`, in a temporary directory. One change: the crash run publishes 20,000
//! messages, not 200,000, to keep a debug build's test short. It uses the README's fixed ports
//! (50051, 50052, 50061, 50062), so it is the only test in this binary.

// A synchronous test of processes and a file: no tokio clock to pause here.
#![allow(clippy::disallowed_methods)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The commands of the section's shell blocks, in order (comments dropped, blank lines too).
fn walkthrough() -> Vec<Vec<String>> {
    let readme = include_str!("../README.md");
    let section = readme
        .split("## Five minutes by hand")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("the README has a 'Five minutes by hand' section");
    section
        .split("```sh\n")
        .skip(1)
        .map(|block| {
            block
                .split("```")
                .next()
                .unwrap_or_default()
                .lines()
                .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

/// A README line as a shell command against the built binaries; the comment after `#` kept
/// apart (it may say what the command prints).
fn translate(line: &str) -> (String, String) {
    let (command, comment) = match line.find("  #") {
        Some(at) => (&line[..at], line[at + 3..].trim()),
        None => (line, ""),
    };
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_sidelog"));
    let examples = bin.parent().expect("target/<profile>").join("examples");
    let mut command = command
        .trim()
        .replace("cargo run --release --", &bin.display().to_string());
    while let Some(at) = command.find("cargo run --example ") {
        let rest = &command[at + "cargo run --example ".len()..];
        let name = rest.split_whitespace().next().expect("an example name");
        let tail = rest[name.len()..].trim_start();
        let tail = tail.strip_prefix("--").unwrap_or(tail);
        if !examples.join(name).exists() {
            build_examples(&bin);
        }
        assert!(
            examples.join(name).exists(),
            "no example binary {} even after `cargo build --examples`",
            examples.join(name).display()
        );
        command = format!(
            "{}{}{}",
            &command[..at],
            examples.join(name).display(),
            tail
        );
    }
    (command, comment.to_owned())
}

/// Builds the examples the README runs, with the profile of the test's own binary: `cargo
/// test` builds them, `cargo test --test walkthrough` alone does not.
fn build_examples(bin: &Path) {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let release = bin
            .parent()
            .and_then(Path::file_name)
            .is_some_and(|profile| profile == "release");
        eprintln!("walkthrough: building the examples it runs (cargo build --examples)");
        let mut cargo = Command::new(env!("CARGO"));
        // Without what Cargo set for this test process (its package's variables, OUT_DIR, the
        // library path): a build script seeing them would rebuild, and the next `cargo test`
        // would rebuild it back.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("CARGO_PKG_")
                || name.starts_with("CARGO_MANIFEST_")
                || name.starts_with("CARGO_BIN_")
                || name.starts_with("CARGO_CRATE_")
                || [
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                    "OUT_DIR",
                    "LD_LIBRARY_PATH",
                ]
                .contains(&name.as_ref())
            {
                cargo.env_remove(name.as_ref());
            }
        }
        cargo
            .args(["build", "--examples", "--manifest-path"])
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"));
        if release {
            cargo.arg("--release");
        }
        let status = cargo.status().unwrap_or_else(|e| {
            panic!(
                "cannot run cargo ({}) to build the examples: {e}",
                env!("CARGO")
            )
        });
        assert!(
            status.success(),
            "`cargo build --examples` failed ({status}): the walkthrough runs them"
        );
    });
}

/// `command` run by `sh`, which reads it from a file (as a terminal's shell, whose own command
/// line does not contain it: `pgrep -f 'sidelog serve'` must not find the shell).
fn sh(dir: &Path, command: &str) -> Command {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let script = dir.join(format!(".step-{n}.sh"));
    std::fs::write(&script, format!("{command}\n")).expect("a script file");
    let mut c = Command::new("sh");
    c.arg(script).current_dir(dir);
    c
}

/// Starts a long-running command of the walkthrough (a terminal of its own).
fn background(dir: &Path, command: &str, log: &str) -> Child {
    let log = std::fs::File::create(dir.join(log)).expect("a log file");
    sh(dir, &format!("exec {command}"))
        .stdout(log.try_clone().expect("a second handle"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command}: {e}"))
}

fn run(dir: &Path, command: &str) -> String {
    let out = sh(dir, command)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command}: {e}"));
    assert!(out.status.success(), "{command} failed: {:?}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until `done`; on a timeout the panic shows the end of every terminal's log in `dir`,
/// so a failure on a machine nobody can log in to still says why.
fn wait_for(dir: &Path, what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() >= deadline {
            panic!("timed out waiting for {what}\n{}", terminal_logs(dir));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last lines of each `*.log` in `dir`.
fn terminal_logs(dir: &Path) -> String {
    let mut out = String::new();
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default();
    logs.retain(|p| p.extension().is_some_and(|e| e == "log"));
    logs.sort();
    for log in logs {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        out.push_str(&format!("--- {} ---\n{tail}\n", log.display()));
    }
    out
}

/// The walkthrough's long-running processes, killed when the test ends, passing or not.
struct Terminals(Vec<Child>);

impl Drop for Terminals {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn serving(addr: &str) -> bool {
    std::net::TcpStream::connect(addr).is_ok()
}

fn received(dir: &Path) -> Vec<(String, String, String)> {
    std::fs::read_to_string(dir.join("received.tsv"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, '\t');
            Some((f.next()?.into(), f.next()?.into(), f.next()?.into()))
        })
        .collect()
}

#[test]
fn the_readme_walkthrough_runs_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let blocks = walkthrough();
    assert_eq!(blocks.len(), 2, "two shell blocks: {blocks:?}");
    for port in [
        "127.0.0.1:50051",
        "127.0.0.1:50052",
        "127.0.0.1:50061",
        "127.0.0.1:50062",
    ] {
        assert!(
            !serving(port),
            "{port} is taken on this machine: the walkthrough needs it"
        );
    }
    let mut children = Terminals(Vec::new());

    // Block 1: handler, sink and sidelog in terminals of their own, then a producer.
    let first: Vec<(String, String)> = blocks[0].iter().map(|l| translate(l)).collect();
    assert_eq!(first.len(), 5, "{first:?}");
    children.0.push(background(dir, &first[0].0, "handler.log"));
    children.0.push(background(dir, &first[1].0, "sink.log"));
    wait_for(
        dir,
        "the handler and the sink",
        Duration::from_secs(120),
        || serving("127.0.0.1:50061") && serving("127.0.0.1:50062"),
    );
    let serve = first[2].0.clone();
    children.0.push(background(dir, &serve, "serve.log"));
    wait_for(dir, "sidelog", Duration::from_secs(120), || {
        serving("127.0.0.1:50051")
    });
    let published = run(dir, &first[3].0);
    assert!(published.contains("accepted 2"), "{published}");
    let lines: usize = first[4]
        .1
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("the README says how many lines");
    wait_for(dir, "received.tsv", Duration::from_secs(120), || {
        received(dir).len() >= lines
    });
    let cat = run(dir, &first[4].0);
    assert_eq!(cat.lines().count(), lines, "received.tsv:\n{cat}");
    // The two lines are two messages (of two keys, so in either order); each line's words in
    // order, under ids <input>/<i>.
    let mut words: Vec<(String, String)> = received(dir)
        .into_iter()
        .map(|(_, id, w)| (id, w))
        .collect();
    words.sort();
    let want = [
        ("line-0/0", "the"),
        ("line-0/1", "quick"),
        ("line-0/2", "brown"),
        ("line-0/3", "fox"),
        ("line-1/0", "jumps"),
        ("line-1/1", "over"),
    ]
    .map(|(id, w)| (id.to_string(), w.to_string()));
    assert_eq!(words, want);

    // Block 2: crash it under load, look at the journal, start it again.
    let second: Vec<(String, String)> = blocks[1].iter().map(|l| translate(l)).collect();
    assert_eq!(second.len(), 4, "{second:?}");
    let load = second[0].0.trim_end_matches('&').trim();
    assert!(load.contains("--count 200000"), "{load}");
    let load = load.replace("--count 200000", "--count 20000");
    let producer = sh(dir, &load)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the producer starts");
    wait_for(
        dir,
        "load to reach the sink",
        Duration::from_secs(120),
        || received(dir).len() > lines + 3000,
    );
    run(dir, &second[1].0); // kill -9
    let mut killed = children.0.pop().expect("sidelog");
    let status = killed.wait().expect("the killed sidelog is reaped");
    assert!(!status.success(), "sidelog was killed: {status:?}");
    wait_for(dir, "sidelog to be gone", Duration::from_secs(30), || {
        !serving("127.0.0.1:50051")
    });
    let inspected = run(dir, &second[2].0);
    assert!(inspected.contains("backlog"), "{inspected}");
    assert_eq!(second[3].0, serve, "the restart is the same command");
    children
        .0
        .push(background(dir, &second[3].0, "serve-again.log"));
    let out = producer.wait_with_output().expect("the producer ends");
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains("sent 20000") && summary.contains("unacked 0"),
        "{summary}"
    );
    // Every message's words reach received.tsv (three each: "message", its number, the dots).
    wait_for(
        dir,
        "every message at the sink",
        Duration::from_secs(120),
        || {
            let inputs: HashSet<String> = received(dir)
                .into_iter()
                .filter(|(_, id, _)| !id.starts_with("line-"))
                .filter_map(|(_, id, _)| Some(id.rsplit_once('/')?.0.to_owned()))
                .collect();
            inputs.len() == 20000
        },
    );
    let log = std::fs::read_to_string(dir.join("serve-again.log")).unwrap_or_default();
    assert!(log.contains("replaying the journal"), "{log}");
    drop(children);
}
