//! `sidelog inspect`: what a journal holds, and what to do with its dead letters.
//!
//! It talks to a running sidelog's `Admin` service (`--admin URL`, or the default admin address
//! when the journal file is locked by a running server). With no server running it opens the
//! journal file itself and serves the same calls in-process: listing changes nothing, and
//! `requeue`/`purge` write to the file, to be replayed or forgotten by the next start.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use tonic::Request;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use sidelog::AdminService;
use sidelog::journal::{Journal, JournalConfig, JournalError};
use sidelog::proto::admin_client::AdminClient;
use sidelog::proto::admin_server::Admin as _;
use sidelog::proto::{
    Entry, GetEntryRequest, ListRequest, ListResponse, SelectDeadLetters, SummaryRequest,
    SummaryResponse, entry,
};
use sidelog::runtime::{Clock as _, SystemClock};

/// Where a running sidelog's admin service is unless told otherwise (`admin_listen`).
pub const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:50052";

#[derive(Debug, Clone, Args)]
pub struct InspectArgs {
    /// The data directory whose journal to read when no server runs.
    #[arg(long, env = "SIDELOG_DATA_DIR", default_value = "./sidelog-data")]
    pub data_dir: PathBuf,
    /// A running sidelog's admin service (http://HOST:PORT, or https:// with --tls-ca-file).
    /// Without it, the journal file is read directly, or, when a running sidelog holds it,
    /// the admin service at the default address is asked.
    #[arg(long, env = "SIDELOG_ADMIN")]
    pub admin: Option<String>,
    /// A file holding the bearer token the admin service asks for.
    #[arg(long, env = "SIDELOG_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// PEM CA certificate(s) to verify the admin service's TLS certificate with.
    #[arg(long, env = "SIDELOG_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,
    /// Print one JSON document instead of text, for scripts (payloads as base64, and as text
    /// when they are UTF-8; times as unix ms and RFC 3339).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Option<InspectCommand>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum InspectCommand {
    /// Entries by state, oldest backlog age, journal size, dedup window (the default).
    Summary,
    /// Undelivered entries, oldest first.
    Backlog(ListArgs),
    /// Messages that could not be handled or delivered within max_attempts.
    DeadLetters(ListArgs),
    /// One entry with its payload and headers.
    Show {
        /// Its sequence (from `backlog` or `dead-letters`).
        sequence: u64,
    },
    /// Put dead letters back into the backlog: handled or delivered again.
    Requeue(Selection),
    /// Delete dead letters for good.
    Purge(Selection),
    /// What the file sink stored: every record of the chunk files given (a directory: its
    /// sealed chunks, oldest first), in sidelog's record format or Parquet, with id, key,
    /// sequence, event time, headers and payload (text, or base64 when not UTF-8); with
    /// --json one JSON object a line. Reads only the files: no journal, no server.
    Chunk {
        /// Chunk files or directories (e.g. ./sidelog-data/out).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// What the redo log (journal.wal) holds, read from the file without the journal: its
    /// header, each frame of the run it starts with (and the message ids in it), where that
    /// run ends and whole frames found after it. Never writes; works on a damaged log.
    Wal,
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// First sequence to list.
    #[arg(long, default_value_t = 0)]
    pub from: u64,
    /// Entries to list at most (1..=10000).
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
}

#[derive(Debug, Clone, Args)]
pub struct Selection {
    /// Sequences of the dead letters.
    pub sequences: Vec<u64>,
    /// Every dead letter.
    #[arg(long, conflicts_with = "sequences")]
    pub all: bool,
}

/// The admin calls, remote or over a journal opened here.
enum Backend {
    Remote(
        AdminClient<
            tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>,
        >,
    ),
    Local(AdminService),
}

#[derive(Clone)]
struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

macro_rules! call {
    ($backend:expr, $method:ident, $request:expr) => {
        match $backend {
            Backend::Remote(client) => client.$method(Request::new($request)).await,
            Backend::Local(service) => service.$method(Request::new($request)).await,
        }
        .map(tonic::Response::into_inner)
    };
}

/// `sidelog inspect wal`.
fn show_wal(args: &InspectArgs) -> anyhow::Result<()> {
    let path = args.data_dir.join(sidelog::journal::WAL_FILE_NAME);
    let report = sidelog::journal::read_wal(&path)
        .with_context(|| format!("cannot read the redo log {} (--data-dir)", path.display()))?;
    let format = match report.format {
        sidelog::journal::WalFormat::V1 => "1 (no header: written before journal identities)",
        sidelog::journal::WalFormat::V2 => "2",
    };
    if args.json {
        return print_wal_json(&path, &report, format);
    }
    print_wal_text(&path, &report, format);
    Ok(())
}

/// The redo log's report as JSON.
fn print_wal_json(
    path: &std::path::Path,
    report: &sidelog::journal::WalReport,
    format: &str,
) -> anyhow::Result<()> {
    let frames: Vec<serde_json::Value> = report
        .frames
        .iter()
        .map(|f| {
            serde_json::json!({
                "offset": f.offset,
                "whole": f.whole,
                "identity": format!("{:016x}", f.header.identity),
                "epoch": f.header.epoch,
                "salt": format!("{:016x}", f.header.salt),
                "number": f.header.number,
                "synced": f.header.synced,
                "len": f.header.len,
                "ops": f.ops,
            })
        })
        .collect();
    print_json(&serde_json::json!({
        "path": path,
        "bytes": report.len,
        "format": format,
        "header": report.header.map(|h| serde_json::json!({
            "identity": format!("{:016x}", h.identity),
            "clean_stop": h.clean,
            "journal_fingerprint": h.db.map(|d| serde_json::json!({"len": d.len, "crc": d.crc})),
        })),
        "frames": frames,
    }))
}

/// The redo log's report as text: its header, then each frame and its operations.
fn print_wal_text(path: &std::path::Path, report: &sidelog::journal::WalReport, format: &str) {
    println!("{}: {} bytes, format {format}", path.display(), report.len);
    match report.header {
        Some(h) => println!(
            "journal identity {:016x}; {}",
            h.identity,
            if h.clean {
                "stopped cleanly: every frame is in that journal"
            } else {
                "not stopped cleanly since its last frame"
            }
        ),
        None => println!("no header"),
    }
    if report.frames.is_empty() {
        println!("no frames");
    }
    let mut ended = false;
    for f in &report.frames {
        let h = &f.header;
        if !f.whole {
            println!(
                "offset {}: the run ends here; the bytes there are not its next frame \
                 (number {}, epoch {}, identity {:016x} as read; its checksum does not match)",
                f.offset, h.number, h.epoch, h.identity
            );
            ended = true;
            continue;
        }
        println!(
            "{}frame {} at offset {}: epoch {}, salt {:016x}, {} bytes, {} frames synced before it{}",
            if ended { "after the end: " } else { "" },
            h.number,
            f.offset,
            h.epoch,
            h.salt,
            h.len,
            h.synced,
            if h.identity == report.header.map_or(h.identity, |x| x.identity) {
                String::new()
            } else {
                format!(", identity {:016x}", h.identity)
            }
        );
        for op in &f.ops {
            println!("  {op}");
        }
    }
}

pub async fn run(args: InspectArgs) -> anyhow::Result<()> {
    match &args.command {
        Some(InspectCommand::Wal) => return show_wal(&args),
        Some(InspectCommand::Chunk { paths }) => return crate::chunk::print(paths, args.json),
        _ => {}
    }
    let (mut backend, local) = connect(&args).await?;
    let result = run_command(&args, &mut backend).await;
    if let Some(journal) = local {
        // Closed as `serve` closes it: the next start neither replays nor rewrites it.
        drop(backend);
        journal
            .close()
            .await
            .context("closing the journal after reading it")?;
    }
    result
}

async fn run_command(args: &InspectArgs, backend: &mut Backend) -> anyhow::Result<()> {
    let status = |what: &str| {
        let what = what.to_owned();
        move |s: tonic::Status| anyhow::anyhow!("{what}: {} ({:?})", s.message(), s.code())
    };
    match args.command.clone().unwrap_or(InspectCommand::Summary) {
        InspectCommand::Summary => {
            let s = call!(backend, summary, SummaryRequest {}).map_err(status("summary"))?;
            if args.json {
                return print_json(&json::summary(&s));
            }
            print_summary(&s);
        }
        InspectCommand::Backlog(list) => {
            let page =
                call!(backend, list_backlog, list_request(&list)?).map_err(status("backlog"))?;
            if args.json {
                return print_json(&json::page(&page));
            }
            print_page(&page);
        }
        InspectCommand::DeadLetters(list) => {
            let page = call!(backend, list_dead_letters, list_request(&list)?)
                .map_err(status("dead letters"))?;
            if args.json {
                return print_json(&json::page(&page));
            }
            print_page(&page);
        }
        InspectCommand::Show { sequence } => {
            let e =
                call!(backend, get_entry, GetEntryRequest { sequence }).map_err(status("show"))?;
            if args.json {
                return print_json(&json::entry(&e));
            }
            print_entry(&e);
        }
        InspectCommand::Requeue(sel) => {
            let r = call!(backend, requeue, select(&sel)?).map_err(status("requeue"))?;
            if args.json {
                return print_json(&serde_json::json!({
                    "requeued": r.requeued,
                    "new_sequences": r.new_sequences,
                }));
            }
            let when = if matches!(backend, Backend::Local(_)) {
                "; they are sent when sidelog next starts"
            } else {
                "; they are on their way again"
            };
            println!("re-queued {} dead letters{when}", r.requeued);
            for (old, new) in sel.sequences.iter().zip(&r.new_sequences) {
                println!("  {old} -> {new}");
            }
        }
        InspectCommand::Purge(sel) => {
            let r = call!(backend, purge, select(&sel)?).map_err(status("purge"))?;
            if args.json {
                return print_json(&serde_json::json!({ "purged": r.purged }));
            }
            println!("purged {} dead letters", r.purged);
        }
        InspectCommand::Wal | InspectCommand::Chunk { .. } => {
            unreachable!("handled before connecting")
        }
    }
    Ok(())
}

fn list_request(list: &ListArgs) -> anyhow::Result<ListRequest> {
    anyhow::ensure!(
        (1..=sidelog::MAX_LIST_LIMIT).contains(&list.limit),
        "--limit must be 1..={}",
        sidelog::MAX_LIST_LIMIT
    );
    Ok(ListRequest {
        from_sequence: list.from,
        limit: list.limit,
    })
}

fn select(sel: &Selection) -> anyhow::Result<SelectDeadLetters> {
    anyhow::ensure!(
        sel.all || !sel.sequences.is_empty(),
        "name the dead letters by sequence, or give --all"
    );
    Ok(SelectDeadLetters {
        sequences: sel.sequences.clone(),
        all: sel.all,
    })
}

/// The admin calls, and the journal when they are served here.
async fn connect(args: &InspectArgs) -> anyhow::Result<(Backend, Option<Journal>)> {
    if let Some(url) = &args.admin {
        return Ok((remote(args, url).await?, None));
    }
    match open_local(&args.data_dir) {
        Ok(journal) => Ok((
            Backend::Local(AdminService::new(
                journal.clone(),
                Arc::new(SystemClock),
                None,
            )),
            Some(journal),
        )),
        Err(LocalError::Journal(JournalError::InUse { path })) => {
            eprintln!(
                "{} is in use by a running sidelog; asking its admin service at {DEFAULT_ADMIN_URL} (--admin)",
                path.display()
            );
            Ok((remote(args, DEFAULT_ADMIN_URL).await?, None))
        }
        Err(LocalError::Journal(
            e @ (JournalError::Corrupted { .. } | JournalError::Decode { .. }),
        )) => {
            let path = args.data_dir.join(sidelog::journal::FILE_NAME);
            print_damage(&path, &e);
            Err(anyhow::Error::new(e).context(format!(
                "the journal {} is damaged; move it aside and restore it from a backup",
                path.display()
            )))
        }
        Err(LocalError::Journal(e)) => Err(anyhow::Error::new(e).context(format!(
            "cannot open the journal in {}",
            args.data_dir.display()
        ))),
        Err(LocalError::Missing(path)) => Err(anyhow::anyhow!(
            "no journal at {} (--data-dir), and no --admin address given",
            path.display()
        )),
    }
}

async fn remote(args: &InspectArgs, url: &str) -> anyhow::Result<Backend> {
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("--admin: not a URL: {url}"))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(60));
    if let Some(ca) = &args.tls_ca_file {
        let pem = std::fs::read(ca)
            .with_context(|| format!("cannot read --tls-ca-file {}", ca.display()))?;
        endpoint = endpoint
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
            .context("--tls-ca-file")?;
    }
    let token = match &args.auth_token_file {
        Some(path) => {
            let token = sidelog::read_token_file(path)
                .map_err(|e| anyhow::anyhow!("--auth-token-file: {e}"))?;
            Some(format!("Bearer {token}").parse().map_err(|_| {
                anyhow::anyhow!("--auth-token-file: the token is not a valid header value")
            })?)
        }
        None => None,
    };
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach the admin service at {url} (--admin)"))?;
    Ok(Backend::Remote(AdminClient::with_interceptor(
        channel,
        Bearer(token),
    )))
}

enum LocalError {
    Missing(PathBuf),
    Journal(JournalError),
}

fn open_local(data_dir: &Path) -> Result<Journal, LocalError> {
    let path = data_dir.join(sidelog::journal::FILE_NAME);
    if !path.exists() {
        return Err(LocalError::Missing(path));
    }
    // The redo log keeps the size it has: inspect reads it, it does not resize it.
    let wal_bytes = std::fs::metadata(data_dir.join(sidelog::journal::WAL_FILE_NAME))
        .map_or(0, |m| {
            m.len().saturating_sub(sidelog::journal::WAL_FRAMES_START)
        });
    Journal::open(
        data_dir,
        JournalConfig {
            // Nothing ages out of the dedup window because inspect looked at it.
            dedup_window_count: u64::MAX,
            dedup_window_age_ms: i64::MAX,
            max_file_bytes: None,
            wal_bytes,
            ..JournalConfig::default()
        },
        Arc::new(SystemClock),
    )
    .map_err(LocalError::Journal)
}

/// What can be said of a file `serve` refuses to open: its size, whether its header is there,
/// and what redb's read-only open can still read of each table.
fn print_damage(path: &Path, error: &JournalError) {
    println!("journal       {}", path.display());
    println!("state         DAMAGED: {error}");
    match std::fs::read(path) {
        Ok(bytes) => {
            println!("file bytes    {}", bytes.len());
            let magic = b"redb\x1A\x0A\xA9\x0D\x0A";
            println!(
                "redb header   {}",
                if bytes.starts_with(magic) {
                    "present (the damage is further in)"
                } else {
                    "missing or overwritten"
                }
            );
            let zero_pages = bytes
                .chunks(4096)
                .filter(|p| p.iter().all(|b| *b == 0))
                .count();
            println!(
                "pages         {} of 4 KiB, {} all zero",
                bytes.len().div_ceil(4096),
                zero_pages
            );
        }
        Err(e) => println!("file          cannot be read: {e}"),
    }
    match sidelog::journal::salvage(path) {
        Ok(tables) => {
            for t in tables {
                match t.error {
                    None => println!("readable      {}: all {} entries", t.table, t.readable),
                    Some(e) => println!(
                        "readable      {}: {} entries, then: {e}",
                        t.table, t.readable
                    ),
                }
            }
            println!(
                "              (read-only; restore the file from a backup, or move it aside to start empty)"
            );
        }
        Err(e) => println!("readable      nothing: {e}"),
    }
}

fn age(ms: i64) -> String {
    match ms {
        0 => "-".into(),
        ms if ms < 1000 => format!("{ms} ms"),
        ms if ms < 120_000 => format!("{:.1} s", ms as f64 / 1000.0),
        ms if ms < 7_200_000 => format!("{:.1} min", ms as f64 / 60_000.0),
        ms => format!("{:.1} h", ms as f64 / 3_600_000.0),
    }
}

fn print_summary(s: &SummaryResponse) {
    println!("journal         {}", s.journal_path);
    println!("journal bytes   {}", s.journal_file_bytes);
    if s.mode.is_empty() {
        println!("server          not running (read from the file)");
    } else {
        println!(
            "server          mode {}, {}",
            s.mode,
            if s.serving {
                "serving"
            } else {
                "not serving (replaying or stopping)"
            }
        );
    }
    println!("backlog inputs  {}", s.backlog_inputs);
    println!("backlog outputs {}", s.backlog_outputs);
    println!("backlog bytes   {}", s.backlog_bytes);
    println!("oldest backlog  {}", age(s.oldest_backlog_age_ms));
    println!("dead letters    {}", s.dead_letters);
    println!("dedup ids       {}", s.dedup_ids);
    println!("next sequence   {}", s.next_sequence);
}

fn table(e: &Entry) -> &'static str {
    match entry::Table::try_from(e.table) {
        Ok(entry::Table::Input) => "input",
        Ok(entry::Table::Output) => "output",
        Ok(entry::Table::DeadLetter) => "dead",
        _ => "?",
    }
}

fn print_page(page: &ListResponse) {
    let now = SystemClock.now_ms();
    for e in &page.entries {
        let m = e.message.clone().unwrap_or_default();
        let detail = match entry::Table::try_from(e.table) {
            Ok(entry::Table::DeadLetter) => {
                // The whole reason is in `show`; a list keeps one line per entry.
                let mut reason: String = e.reason.chars().take(120).collect();
                if reason.len() < e.reason.len() {
                    reason.push('…');
                }
                format!("{} after {} attempts: {reason}", e.dead_kind, e.attempts)
            }
            Ok(entry::Table::Input) => e.state.clone(),
            _ if e.input_sequence != 0 => format!("of input {}", e.input_sequence),
            _ => String::new(),
        };
        println!(
            "{:>10} {:<6} id={} key={:?} bytes={} age={} {detail}",
            e.sequence,
            table(e),
            m.id,
            m.key,
            e.payload_bytes,
            age((now - e.written_at_ms).max(1)),
        );
    }
    match page.next_from_sequence {
        0 => println!("({} entries, end)", page.entries.len()),
        next => println!("({} entries; more with --from {next})", page.entries.len()),
    }
}

fn print_entry(e: &Entry) {
    let m = e.message.clone().unwrap_or_default();
    println!("sequence      {}", e.sequence);
    println!("table         {}", table(e));
    println!("id            {}", m.id);
    println!("key           {:?}", m.key);
    println!("written at    {}", rfc3339(e.written_at_ms));
    if m.event_time_ms != 0 {
        println!("event time    {}", rfc3339(m.event_time_ms));
    }
    if !e.state.is_empty() {
        println!("state         {}", e.state);
    }
    if e.input_sequence != 0 {
        println!("input         {}", e.input_sequence);
    }
    if !e.reason.is_empty() {
        println!(
            "dead          {} after {} attempts",
            e.dead_kind, e.attempts
        );
        println!("reason        {}", e.reason);
    }
    for (k, v) in &m.headers {
        println!("header        {k}: {v}");
    }
    println!("payload bytes {}", m.payload.len());
    match std::str::from_utf8(&m.payload) {
        Ok(text) => println!("payload       {text}"),
        Err(_) => {
            let hex: String = m
                .payload
                .iter()
                .take(256)
                .map(|b| format!("{b:02x}"))
                .collect();
            println!(
                "payload (hex) {hex}{}",
                if m.payload.len() > 256 { "…" } else { "" }
            );
        }
    }
}

/// A unix time in ms as RFC 3339 (UTC, milliseconds), with the raw number beside it.
fn rfc3339(ms: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) => format!(
            "{} ({ms} unix ms)",
            t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        ),
        None => format!("{ms} (unix ms)"),
    }
}

fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `inspect --json`: the same fields as the text, named as in `sidelog.v1.Admin`'s messages.
mod json {
    use base64::Engine as _;
    use serde_json::{Value, json};
    use sidelog::proto::{Entry, ListResponse, SummaryResponse};

    pub fn summary(s: &SummaryResponse) -> Value {
        json!({
            "journal_path": s.journal_path,
            "journal_file_bytes": s.journal_file_bytes,
            "running": !s.mode.is_empty(),
            "mode": (!s.mode.is_empty()).then_some(&s.mode),
            "serving": s.serving,
            "backlog_inputs": s.backlog_inputs,
            "backlog_outputs": s.backlog_outputs,
            "backlog_bytes": s.backlog_bytes,
            "oldest_backlog_age_ms": s.oldest_backlog_age_ms,
            "dead_letters": s.dead_letters,
            "dedup_ids": s.dedup_ids,
            "next_sequence": s.next_sequence,
        })
    }

    pub fn page(p: &ListResponse) -> Value {
        json!({
            "entries": p.entries.iter().map(entry).collect::<Vec<_>>(),
            "next_from_sequence": (p.next_from_sequence != 0).then_some(p.next_from_sequence),
        })
    }

    pub fn entry(e: &Entry) -> Value {
        let m = e.message.clone().unwrap_or_default();
        let time = |ms: i64| {
            chrono::DateTime::from_timestamp_millis(ms)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        };
        let dead = !e.reason.is_empty();
        json!({
            "sequence": e.sequence,
            "table": super::table(e),
            "id": m.id,
            "key": m.key,
            "headers": m.headers,
            "payload_bytes": m.payload.len(),
            "payload_base64": base64::engine::general_purpose::STANDARD.encode(&m.payload),
            "payload_text": std::str::from_utf8(&m.payload).ok(),
            "written_at_ms": e.written_at_ms,
            "written_at": time(e.written_at_ms),
            "event_time_ms": (m.event_time_ms != 0).then_some(m.event_time_ms),
            "state": (!e.state.is_empty()).then_some(&e.state),
            "input_sequence": (e.input_sequence != 0).then_some(e.input_sequence),
            "dead_kind": dead.then_some(&e.dead_kind),
            "attempts": dead.then_some(e.attempts),
            "reason": dead.then_some(&e.reason),
        })
    }
}
