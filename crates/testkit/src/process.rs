//! The real `sidelog` binary as a child process: started, health-checked, killed (SIGKILL),
//! signalled, and asked with `sidelog inspect`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::time::Instant;
use tonic::transport::Channel;

use super::net::{free_port, is_serving};
use super::wait::poll_until;
use sidelog::proto::ingest_client::IngestClient;

/// The `sidelog` binary: the running executable when it is sidelog itself, else the one beside
/// it: Cargo builds `sidelog` in the folder of `sidelog-bench` (`target/<profile>/`) and in the
/// parent of a test's `deps/` folder.
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the running executable has a path");
    if exe.file_stem().is_some_and(|s| s == "sidelog") {
        return exe;
    }
    let dir = exe.parent().expect("an executable lives in a folder");
    let dir = if dir.ends_with("deps") {
        dir.parent().expect("deps/ lives in the profile folder")
    } else {
        dir
    };
    dir.join(format!("sidelog{}", std::env::consts::EXE_SUFFIX))
}

/// `sidelog serve` as a child process.
pub struct Sidelog {
    pub addr: SocketAddr,
    /// The admin service's address (`inspect --admin`); `None`: `--admin-listen off`.
    pub admin: Option<SocketAddr>,
    pub data_dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    log: PathBuf,
    envs: Vec<(String, String)>,
    /// The executable; [`binary`] unless told otherwise.
    program: PathBuf,
    pub starts: u32,
}

impl Sidelog {
    /// A sidelog on free loopback ports with its journal in `data_dir` and these extra flags;
    /// its log goes beside the data directory (`<data_dir>.log`).
    pub fn new(data_dir: &Path, args: &[&str]) -> Sidelog {
        Sidelog {
            addr: free_port().expect("bind a loopback port"),
            admin: Some(free_port().expect("bind a loopback port")),
            data_dir: data_dir.to_owned(),
            args: args.iter().map(|s| s.to_string()).collect(),
            child: None,
            log: data_dir.with_extension("log"),
            envs: vec![("RUST_LOG".into(), "info".into())],
            program: binary(),
            starts: 0,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Starts the process; does not wait for it to serve.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the process log");
        let admin = self
            .admin
            .map_or_else(|| "off".to_owned(), |a| a.to_string());
        let child = Command::new(&self.program)
            .arg("serve")
            .arg("--listen")
            .arg(self.addr.to_string())
            .arg("--admin-listen")
            .arg(admin)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn sidelog");
        self.child = Some(child);
    }

    /// Writes the process's log to `path` instead of beside the data directory.
    pub fn with_log(mut self, path: PathBuf) -> Sidelog {
        self.log = path;
        self
    }

    /// An environment variable for every start (a later one of the same name wins).
    pub fn with_env(mut self, name: &str, value: &str) -> Sidelog {
        self.envs.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Another `sidelog` executable (an earlier version, to compare with).
    pub fn with_program(mut self, program: PathBuf) -> Sidelog {
        self.program = program;
        self
    }

    /// No admin listener (`--admin-listen off`).
    pub fn without_admin(mut self) -> Sidelog {
        self.admin = None;
        self
    }

    /// More flags for the next start.
    pub fn add_args(&mut self, args: &[&str]) {
        self.args.extend(args.iter().map(|s| s.to_string()));
    }

    /// Runs `sidelog inspect` against this process's admin service; its stdout, or the
    /// stderr of a failure as `Err`.
    pub async fn inspect(&self, args: &[&str]) -> Result<String, String> {
        let admin = format!(
            "http://{}",
            self.admin.expect("started with an admin listener")
        );
        inspect(&[&["--admin", &admin][..], args].concat()).await
    }

    /// Starts the process and waits until it is serving (replay done); panics if it does not.
    pub async fn start(&mut self) {
        self.spawn();
        self.wait_serving(Duration::from_secs(60)).await;
    }

    /// Waits until health says SERVING; panics with the log's tail if it does not in time.
    pub async fn wait_serving(&mut self, timeout: Duration) {
        if let Err(e) = self.try_wait_serving(timeout).await {
            panic!("{e}");
        }
    }

    /// Waits until health says SERVING; an error says why not, with the log's tail.
    pub async fn try_wait_serving(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.health().await == Some(true) {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!(
                    "sidelog exited with {status} before serving; log:\n{}",
                    self.log_tail()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "sidelog did not serve within {timeout:?}; log:\n{}",
                    self.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `Some(true)` when health says SERVING, `Some(false)` when it answers otherwise, `None`
    /// when nothing answers.
    pub async fn health(&self) -> Option<bool> {
        is_serving(self.addr).await
    }

    /// SIGKILL: no shutdown code runs.
    pub async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.start_kill().expect("SIGKILL sidelog");
            let _ = child.wait().await;
        }
    }

    /// SIGTERM and wait for the exit status.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        self.wait_exit().await
    }

    /// Sends a signal by name (TERM, INT, ...) without waiting.
    pub fn signal(&self, name: &str) {
        let pid = self.pid().expect("running");
        // std has no kill(2); `kill` is in every base system.
        let ok = std::process::Command::new("kill")
            .args(["-s", name, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(ok.success(), "kill -s {name} {pid}");
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref()?.id()
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        child.wait().await.expect("wait")
    }

    /// The whole process log (every start appends to it).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the process log contains `needle`; panics with the log's tail after
    /// `timeout`.
    pub async fn wait_log(&self, needle: &str, timeout: Duration) {
        poll_until(
            timeout,
            || format!("the log never said {needle:?}; log:\n{}", self.log_tail()),
            || async { self.log().contains(needle).then_some(()) },
        )
        .await
    }

    /// What a failing test shows of the log: its last 40 distinct lines (see [`tail`]).
    pub fn log_tail(&self) -> String {
        tail(&self.log(), 40)
    }

    pub async fn client(&self) -> IngestClient<Channel> {
        let channel = Channel::from_shared(self.url())
            .expect("a loopback URL is valid")
            .connect_timeout(Duration::from_millis(500))
            .connect_lazy();
        IngestClient::new(channel)
    }

    /// Polls `inspect`'s summary until `field` reads `want`; returns that summary.
    pub async fn wait_summary(&self, field: &str, want: u64) -> String {
        poll_until(
            Duration::from_secs(30),
            || format!("{field} never reached {want}; log:\n{}", self.log_tail()),
            || async {
                let summary = self.inspect(&[]).await.expect("inspect summary");
                (summary_field(&summary, field) == want).then_some(summary)
            },
        )
        .await
    }
}

/// Runs `sidelog inspect ARGS`; its stdout, or its stderr as `Err` when it fails.
pub async fn inspect(args: &[&str]) -> Result<String, String> {
    let out = Command::new(binary())
        .arg("inspect")
        .args(args)
        .output()
        .await
        .expect("run sidelog inspect");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!("{}{stdout}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// The number after `name` in `inspect`'s summary (`dead letters    5`).
pub fn summary_field(summary: &str, name: &str) -> u64 {
    summary
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|rest| rest.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name:?} in the summary:\n{summary}"))
}

/// CPU time (µs, user + system) and peak RSS (bytes) of process `pid` so far, from /proc
/// (Linux; zeros elsewhere).
pub fn proc_usage(pid: u32) -> (u64, u64) {
    // Clock ticks are 100 a second on Linux x86_64 and aarch64 (USER_HZ).
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
            Some(ticks * 10_000)
        })
        .unwrap_or(0);
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
            let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kb * 1024)
        })
        .unwrap_or(0);
    (cpu, rss)
}

/// The first of `names` found as a file on `PATH` or in the sbin directories daemons are
/// installed in (Debian puts `mosquitto` in `/usr/sbin`, outside a user's `PATH`).
pub fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|p| p.is_file())
}

/// The last `distinct` different lines of a log, in their order, each with how many times it
/// came in the part shown (timestamps aside). A process stuck in a loop repeats a few lines
/// thousands of times: the last 40 lines would all be the loop, and the line that started it
/// would be out of sight.
fn tail(log: &str, distinct: usize) -> String {
    // A line is "2026-12-07T11:05:10.861830Z  WARN target: message": compared after the time.
    fn text(line: &str) -> &str {
        match line.split_once(' ') {
            Some((time, rest)) if time.ends_with('Z') && time.contains('T') => rest,
            _ => line,
        }
    }
    let mut shown: Vec<(&str, usize)> = Vec::new();
    let mut index = std::collections::HashMap::new();
    for line in log.lines().rev() {
        let key = text(line);
        if let Some(&i) = index.get(key) {
            let (_, count): &mut (&str, usize) = &mut shown[i];
            *count += 1;
            continue;
        }
        if shown.len() == distinct {
            break;
        }
        index.insert(key, shown.len());
        shown.push((line, 1));
    }
    shown.reverse();
    shown
        .iter()
        .map(|&(line, count)| match count {
            1 => line.to_owned(),
            n => format!("{line}  [x{n}]"),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tail_tests {
    use super::tail;

    #[test]
    fn a_loop_in_the_log_shows_once_with_its_count_and_what_came_before_it() {
        let mut log = String::from("2026-12-07T11:00:00.000000Z  INFO a: started\n");
        log.push_str("2026-12-07T11:00:01.000000Z  WARN a: the cause\n");
        for i in 0..1000 {
            log.push_str(&format!("2026-12-07T11:00:02.{i:06}Z  WARN a: reopening\n"));
            log.push_str(&format!("2026-12-07T11:00:02.{i:06}Z  WARN a: failed\n"));
        }
        let shown = tail(&log, 40);
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(lines.len(), 4, "{shown}");
        assert!(lines[0].ends_with("started"), "{shown}");
        assert!(lines[1].ends_with("the cause"), "{shown}");
        assert!(lines[2].ends_with("reopening  [x1000]"), "{shown}");
        assert!(lines[3].ends_with("failed  [x1000]"), "{shown}");
        // Fewer distinct lines asked for: the newest, counted back to the first line not shown.
        assert_eq!(tail(&log, 1), "2026-12-07T11:00:02.000999Z  WARN a: failed");
        assert!(
            tail(&log, 2).ends_with("failed  [x1000]"),
            "{}",
            tail(&log, 2)
        );
    }
}
