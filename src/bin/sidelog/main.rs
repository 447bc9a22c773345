//! The `sidelog` command line: `serve`, `publish`, `inspect`.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use sidelog::{Config, ServeArgs};

/// mimalloc instead of glibc's malloc: see the Performance section of the README.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod chunk;
mod inspect;
mod publish;

use publish::PublishArgs;

#[derive(Debug, Parser)]
#[command(
    name = "sidelog",
    version,
    about = "A fault-tolerance logging sidecar (RBML, SBML, HML)"
)]
struct Cli {
    /// Log format: plain or json.
    #[arg(
        long,
        global = true,
        env = "SIDELOG_LOG_FORMAT",
        default_value = "plain"
    )]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

/// `sidelog health`'s flags.
#[derive(Debug, clap::Args)]
struct HealthArgs {
    /// The ingest address whose health service to ask.
    #[arg(long, env = "SIDELOG_LISTEN", default_value = "127.0.0.1:50051")]
    target: String,
    /// Give up after this long.
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
}

/// Asks the health service once; the exit code says what it answered.
async fn health(args: HealthArgs) -> anyhow::Result<ExitCode> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let url = if args.target.contains("://") {
        args.target.clone()
    } else {
        format!("http://{}", args.target)
    };
    let ask = async {
        let channel = tonic::transport::Endpoint::from_shared(url.clone())?
            .connect()
            .await?;
        let answer = HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await?;
        anyhow::Ok(answer.into_inner().status)
    };
    match tokio::time::timeout(Duration::from_millis(args.timeout_ms), ask).await {
        Ok(Ok(status)) if status == ServingStatus::Serving as i32 => {
            println!("SERVING");
            Ok(ExitCode::SUCCESS)
        }
        Ok(Ok(status)) => {
            let name = ServingStatus::try_from(status).map_or("UNKNOWN", |s| s.as_str_name());
            println!("{name}");
            Ok(ExitCode::from(1))
        }
        Ok(Err(e)) => {
            eprintln!("error: no answer from {url}: {e:#}");
            Ok(ExitCode::from(2))
        }
        Err(_) => {
            eprintln!("error: no answer from {url} within {} ms", args.timeout_ms);
            Ok(ExitCode::from(2))
        }
    }
}

/// `serve`'s own flags beside the configuration's.
#[derive(Debug, clap::Args)]
struct ServeCommand {
    /// Check the configuration (file, variables, flags), print it as sidelog would run with it
    /// (secrets redacted) and exit: 0 when it is valid, 1 with the reason when it is not.
    #[arg(long)]
    check_config: bool,
    /// For this start only: when the redo log (journal.wal) would refuse the start (it belongs
    /// to another journal, is newer than the journal, or is damaged where it was durable),
    /// discard its unusable frames instead, saying how many. What they held is lost.
    #[arg(long)]
    discard_wal: bool,
    #[command(flatten)]
    args: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the sidecar (embedded defaults: mode hml, ./sidelog-data, pass-through, file sink).
    Serve(Box<ServeCommand>),
    /// Send messages to a running sidelog and print a summary of the acks; exit 1 when any
    /// message was rejected or never acknowledged.
    Publish(PublishArgs),
    /// What the journal holds, and its dead letters (list, show, re-queue, purge): through a
    /// running sidelog's admin service, or from the file when none runs.
    Inspect(inspect::InspectArgs),
    /// Ask a sidelog's gRPC health service (for container health checks and exec probes):
    /// exit 0 when it is SERVING, 1 when it answers otherwise (replaying, shutting down),
    /// 2 when it does not answer.
    Health(HealthArgs),
    /// Print a shell completion script: `sidelog completions bash > /etc/bash_completion.d/sidelog`
    /// (also zsh, fish, elvish, powershell).
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `sidelog man > /usr/local/share/man/man1/sidelog.1`; with
    /// --out-dir, write one page per command and subcommand there (sidelog.1,
    /// sidelog-serve.1, sidelog-inspect-chunk.1, ...).
    Man {
        /// Write every page into this directory instead of printing the main one.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<std::path::PathBuf>,
    },
}

fn init_logs(format: &str, default_filter: &str) -> Result<(), String> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // Colours only on a terminal: a log redirected to a file or a collector stays plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        "plain" => builder.init(),
        "json" => builder.json().init(),
        other => {
            return Err(format!(
                "--log-format: unknown format {other:?}, expected plain or json"
            ));
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_filter = match cli.command {
        // inspect's output is its answer; the journal's INFO lines would bury it.
        Command::Inspect(_)
        | Command::Health(_)
        | Command::Completions { .. }
        | Command::Man { .. } => "warn",
        // The NATS client logs every connection event at INFO.
        _ => "info,async_nats=warn",
    };
    if let Err(e) = init_logs(&cli.log_format, default_filter) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli.command));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one command; the exit code says how it went.
async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(command) => serve(*command).await,
        Command::Publish(args) => publish(args).await,
        Command::Inspect(args) => inspect::run(args).await.map(|()| ExitCode::SUCCESS),
        Command::Health(args) => health(args).await,
        Command::Completions { shell } => {
            use clap::CommandFactory as _;
            let mut command = Cli::command();
            clap_complete::generate(shell, &mut command, "sidelog", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { out_dir } => {
            use clap::CommandFactory as _;
            match out_dir {
                None => clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?,
                Some(dir) => {
                    let written = write_man_pages(Cli::command(), &dir)?;
                    println!("wrote {written} pages into {}", dir.display());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `sidelog serve` (and `--check-config`).
async fn serve(command: ServeCommand) -> anyhow::Result<ExitCode> {
    let ServeCommand {
        check_config,
        discard_wal,
        args,
    } = command;
    let variables = std::env::vars_os().filter_map(|(n, _)| n.into_string().ok());
    sidelog::check_environment(variables, &cli_variables())?;
    let config = Config::load(args)?;
    if check_config {
        // The files a start reads before it binds (token, TLS, the forward door's key).
        config.secrets()?;
        // The next tier too, where asking it is cheap and says what a start would
        // meet: a Kafka topic that is not there, a cluster that does not answer.
        if let sidelog::sink::SinkTarget::Kafka(kafka) = config.sink_target() {
            match kafka.check().await {
                Ok(found) => eprintln!("checked: {found}"),
                Err(e) => {
                    let reason = anyhow::Error::from(e);
                    eprintln!("error: invalid setting sink (--sink, SIDELOG_SINK): {reason:#}");
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        return print_effective(&config);
    }
    ignore_sighup();
    let this_start = sidelog::ThisStart { discard_wal };
    sidelog::serve(config, this_start, shutdown_signal(), |_| {})
        .await
        .map(|()| ExitCode::SUCCESS)
}

/// `sidelog publish`: its summary line, and a failure when anything was not taken.
async fn publish(args: PublishArgs) -> anyhow::Result<ExitCode> {
    let s = publish::run(args).await?;
    println!(
        "sent {} accepted {} duplicate {} rejected {} unacked {} retries {}",
        s.sent, s.accepted, s.duplicate, s.rejected, s.unacked, s.retries
    );
    if let Some(r) = &s.first_rejection {
        println!("first rejection: {r}");
    }
    // A script must not take a run that lost messages for a success.
    if s.rejected > 0 || s.unacked > 0 {
        eprintln!(
            "error: {} messages were rejected and {} never acknowledged: they are \
             not in sidelog",
            s.rejected, s.unacked
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// `serve --check-config`'s output. A reader that stops early (`| head`) closes the pipe:
/// that ends the output, not the process with a panic.
fn print_effective(config: &Config) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let mut write = || -> std::io::Result<()> {
        writeln!(
            out,
            "# the configuration is valid; as sidelog would run with it (a config file it \
             reads back):"
        )?;
        out.write_all(config.to_toml_redacted().as_bytes())?;
        out.flush()
    };
    match write() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("writing the configuration"))
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// Every environment variable the command line reads, from its clap command (the settings'
/// and each subcommand's own).
fn cli_variables() -> Vec<String> {
    use clap::CommandFactory as _;
    fn walk(command: &clap::Command, out: &mut Vec<String>) {
        out.extend(
            command
                .get_arguments()
                .filter_map(|a| a.get_env())
                .map(|env| env.to_string_lossy().into_owned()),
        );
        for sub in command.get_subcommands() {
            walk(sub, out);
        }
    }
    let mut out = Vec::new();
    walk(&Cli::command(), &mut out);
    out
}

/// Writes the man page of `command` and of each of its subcommands, recursively, into `dir`
/// (`sidelog.1`, `sidelog-serve.1`, ...), the way git and cargo name theirs; returns how many.
fn write_man_pages(command: clap::Command, dir: &std::path::Path) -> anyhow::Result<usize> {
    use anyhow::Context as _;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create {} (--out-dir)", dir.display()))?;
    fn walk(command: clap::Command, name: String, dir: &std::path::Path) -> anyhow::Result<usize> {
        let command = command.name(name.clone()).bin_name(name.replace('-', " "));
        let path = dir.join(format!("{name}.1"));
        let mut page = Vec::new();
        clap_mangen::Man::new(command.clone()).render(&mut page)?;
        std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))?;
        let mut written = 1;
        for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
            written += walk(sub.clone(), format!("{name}-{}", sub.get_name()), dir)?;
        }
        Ok(written)
    }
    let mut command = command;
    command.build();
    walk(command, "sidelog".into(), dir)
}

/// SIGHUP would end the process (exit 129) by default; sidelog reloads nothing while it runs,
/// so it says so and goes on.
fn ignore_sighup() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(mut hangup) => {
            tokio::spawn(async move {
                while hangup.recv().await.is_some() {
                    tracing::warn!(
                        "SIGHUP received and ignored: sidelog reloads nothing while it runs; \
                         restart it (SIGTERM, then start it again) to apply a changed configuration"
                    );
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, "cannot listen for SIGHUP; it would stop sidelog"),
    }
}

/// Resolves at the first SIGTERM or Ctrl-C (graceful shutdown begins); a second one exits at
/// once with status 130. Exiting at once loses nothing acknowledged: an ack follows its fsync,
/// and the journal is replayed on the next start.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops sidelog");
            None
        }
    };
    let mut interrupt = match signal(SignalKind::interrupt()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            None
        }
    };
    async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
        match s {
            Some(s) => drop(s.recv().await),
            None => std::future::pending().await,
        }
    }
    tokio::select! {
        _ = next(&mut term) => {}
        _ = next(&mut interrupt) => {}
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = next(&mut term) => {}
            _ = next(&mut interrupt) => {}
        }
        tracing::warn!(
            "second signal: exiting now; what is journaled is replayed on the next start"
        );
        std::process::exit(130);
    });
}
