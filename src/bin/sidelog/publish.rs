//! `sidelog publish`: a producer for people and scripts.
//!
//! Sends N generated messages (or stdin lines, one message a line) in batches from concurrent
//! workers, and prints a summary of the acks. Like a real client, it retries a batch that got no
//! acks (sidelog down, replaying, backpressure) with the same ids, so a message accepted before
//! a lost response comes back as `DUPLICATE`, not as a second copy. A batch refused for what it
//! is (too large, malformed) is not retried: its messages count as rejected, and the command
//! exits non-zero when anything was rejected or never acknowledged.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use sidelog::proto::ingest_client::IngestClient;
use sidelog::proto::{Message, PublishRequest, ack};
use sidelog::runtime::{Backoff, Clock, Entropy, SystemClock};

#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    /// sidelog's address.
    #[arg(long, env = "SIDELOG_TARGET", default_value = "http://127.0.0.1:50051")]
    pub target: String,
    /// Messages to generate (ignored with --stdin).
    #[arg(long, default_value_t = 1000)]
    pub count: u64,
    /// Payload bytes of each generated message.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Messages per request.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Message ids are <prefix>-<n>; default: a prefix unique to this run.
    #[arg(long)]
    pub id_prefix: Option<String>,
    /// Spread messages over this many keys (0: no key).
    #[arg(long, default_value_t = 16)]
    pub keys: u64,
    /// Read payloads from standard input, one message a line (split on newlines only: any
    /// other bytes, binary too, are kept).
    #[arg(long)]
    pub stdin: bool,
    /// Give up on what is left once sidelog has acked nothing for this long (the clock restarts
    /// with every ack, so a long run is not cut short by one outage).
    #[arg(long, default_value_t = 60_000)]
    pub retry_for_ms: u64,
    /// File holding the bearer token, if sidelog asks for one (`serve --auth-token-file`).
    #[arg(long, env = "SIDELOG_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<std::path::PathBuf>,
}

/// What the acks said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishSummary {
    pub sent: u64,
    pub accepted: u64,
    pub duplicate: u64,
    pub rejected: u64,
    /// Messages never acked within `--retry-for-ms`.
    pub unacked: u64,
    /// Requests sent again after an error.
    pub retries: u64,
    pub first_rejection: Option<String>,
}

/// Runs the producer and returns its summary.
/// The messages to send, cut into batches: the lines of standard input, or `--count`
/// generated payloads.
fn batches(
    args: &PublishArgs,
    prefix: &str,
    clock: &SystemClock,
) -> anyhow::Result<VecDeque<Vec<Message>>> {
    let payloads: Vec<Vec<u8>> = if args.stdin {
        let mut input = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut input)
            .context("reading standard input")?;
        stdin_lines(&input)
    } else {
        Vec::new()
    };
    let total = if args.stdin {
        payloads.len() as u64
    } else {
        args.count
    };
    let mut batches = VecDeque::new();
    let mut n = 0u64;
    while n < total {
        let end = (n + args.batch as u64).min(total);
        let batch: Vec<Message> = (n..end)
            .map(|i| Message {
                id: format!("{prefix}-{i}"),
                key: if args.keys == 0 {
                    String::new()
                } else {
                    format!("k{}", i % args.keys)
                },
                payload: if args.stdin {
                    payloads[i as usize].clone().into()
                } else {
                    generated_payload(i, args.size).into()
                },
                headers: Default::default(),
                event_time_ms: clock.now_ms(),
            })
            .collect();
        batches.push_back(batch);
        n = end;
    }
    Ok(batches)
}

/// One payload per line of `input`, any bytes but `\n` (binary-safe: not read as UTF-8); a
/// last line without its newline counts, an empty input is no message.
fn stdin_lines(input: &[u8]) -> Vec<Vec<u8>> {
    let input = input.strip_suffix(b"\n").unwrap_or(input);
    if input.is_empty() {
        return Vec::new();
    }
    input.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect()
}

/// The `authorization` header from `--auth-token-file`, if given.
fn authorization(
    args: &PublishArgs,
) -> anyhow::Result<Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>> {
    let Some(path) = &args.auth_token_file else {
        return Ok(None);
    };
    let token = sidelog::read_token_file(path)
        .map_err(|reason| anyhow::anyhow!("--auth-token-file {}: {reason}", path.display()))?;
    let value = format!("Bearer {token}")
        .parse()
        .context("the token is not a valid header value")?;
    Ok(Some(value))
}

pub async fn run(args: PublishArgs) -> anyhow::Result<PublishSummary> {
    anyhow::ensure!(args.batch >= 1, "--batch must be at least 1");
    anyhow::ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    let clock = SystemClock;
    let entropy = Entropy::from_clock(&clock);
    let prefix = args
        .id_prefix
        .clone()
        .unwrap_or_else(|| format!("pub-{:x}-{:04x}", clock.now_ms(), entropy.below(0x10000)));
    let batches = batches(&args, &prefix, &clock)?;
    let total = batches.iter().map(|b| b.len() as u64).sum();
    let authorization = authorization(&args)?;
    let channel = Endpoint::from_shared(args.target.clone())
        .with_context(|| format!("invalid --target {:?}", args.target))?
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy();
    let queue = Arc::new(Mutex::new(batches));
    let summary = Arc::new(Mutex::new(PublishSummary {
        sent: total,
        ..Default::default()
    }));
    let bar = progress_bar(total);
    let progress = Arc::new(Progress {
        target: args.target.clone(),
        retry_for: Duration::from_millis(args.retry_for_ms),
        last_ack: Mutex::new(tokio::time::Instant::now()),
        warned: AtomicBool::new(false),
        bar: bar.clone(),
    });
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let worker = Worker {
                queue: queue.clone(),
                summary: summary.clone(),
                authorization: authorization.clone(),
                progress: progress.clone(),
                entropy: entropy.clone(),
            };
            tokio::spawn(worker.run(channel.clone()))
        })
        .collect();
    // Ctrl-C ends the run with a summary of what was acked so far.
    let all = async {
        for w in workers {
            w.await.context("publish worker failed")??;
        }
        anyhow::Ok(())
    };
    tokio::select! {
        done = all => done?,
        _ = tokio::signal::ctrl_c() => {
            tracing::warn!("interrupted; what was not acked is counted as unacked");
        }
    }
    bar.finish_and_clear();
    let mut summary = summary.lock().expect("no panics under this lock").clone();
    summary.unacked = summary.sent - summary.accepted - summary.duplicate - summary.rejected;
    Ok(summary)
}

/// A progress bar on a terminal (nothing when stderr is a file or a pipe).
fn progress_bar(total: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} acked ({per_sec}, eta {eta})",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar
}

/// One of `--concurrency` publishers: takes batches from the shared queue until it is empty.
struct Worker {
    queue: Arc<Mutex<VecDeque<Vec<Message>>>>,
    summary: Arc<Mutex<PublishSummary>>,
    authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    progress: Arc<Progress>,
    entropy: Entropy,
}

impl Worker {
    async fn run(self, channel: Channel) -> anyhow::Result<()> {
        let mut client = IngestClient::new(channel).max_decoding_message_size(usize::MAX);
        loop {
            let Some(batch) = self
                .queue
                .lock()
                .expect("no panics under this lock")
                .pop_front()
            else {
                return Ok(());
            };
            let fatal = publish_batch(
                &mut client,
                batch,
                self.authorization.as_ref(),
                &self.progress,
                &self.entropy,
                &self.summary,
            )
            .await;
            if let Some(fatal) = fatal {
                return Err(fatal);
            }
        }
    }
}

/// The run's progress, shared by the workers: when sidelog last acked anything, and whether
/// the current outage was reported.
struct Progress {
    target: String,
    retry_for: Duration,
    last_ack: Mutex<tokio::time::Instant>,
    warned: AtomicBool,
    bar: indicatif::ProgressBar,
}

impl Progress {
    fn acked(&self) {
        *self.last_ack.lock().expect("no panics under this lock") = tokio::time::Instant::now();
        if self.warned.swap(false, Ordering::Relaxed) {
            tracing::info!(target = %self.target, "sidelog answers again");
        }
    }

    fn given_up(&self) -> bool {
        let last = *self.last_ack.lock().expect("no panics under this lock");
        last.elapsed() >= self.retry_for
    }

    /// Says once per outage that sidelog does not answer.
    fn failed(&self, status: &tonic::Status) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                target = %self.target,
                error = %status,
                retry_for_ms = self.retry_for.as_millis() as u64,
                "cannot get acks from sidelog; retrying with the same ids until it answers or \
                 nothing was acked for --retry-for-ms"
            );
        }
    }
}

/// Publishes one batch, retrying with backoff; an error only for what retrying cannot fix.
async fn publish_batch(
    client: &mut IngestClient<Channel>,
    batch: Vec<Message>,
    authorization: Option<&tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    progress: &Progress,
    entropy: &Entropy,
    summary: &Mutex<PublishSummary>,
) -> Option<anyhow::Error> {
    // Capped exponential backoff with full jitter, as sidelog's own retries: 50 ms doubling
    // to 2 s; how long to keep trying is `--retry-for-ms`'s (`Progress::given_up`).
    const RETRY: Backoff = Backoff {
        initial_ms: 50,
        max_ms: 2_000,
        max_attempts: u32::MAX,
    };
    let mut attempt = 1u32;
    loop {
        let mut request = tonic::Request::new(PublishRequest {
            messages: batch.clone(),
        });
        if let Some(value) = authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        match client.publish(request).await {
            Ok(response) => {
                progress.acked();
                progress.bar.inc(batch.len() as u64);
                let mut s = summary.lock().expect("no panics under this lock");
                for a in response.into_inner().acks {
                    match ack::Status::try_from(a.status) {
                        Ok(ack::Status::Accepted) => s.accepted += 1,
                        Ok(ack::Status::Duplicate) => s.duplicate += 1,
                        _ => {
                            s.rejected += 1;
                            if s.first_rejection.is_none() {
                                s.first_rejection = Some(format!("{}: {}", a.id, a.reason));
                            }
                        }
                    }
                }
                return None;
            }
            Err(status) if !retryable(&status) && status.code() != Code::Unauthenticated => {
                let mut s = summary.lock().expect("no panics under this lock");
                s.rejected += batch.len() as u64;
                s.first_rejection
                    .get_or_insert_with(|| format!("{:?}: {}", status.code(), status.message()));
                return None;
            }
            Err(status) if status.code() == Code::Unauthenticated => {
                return Some(anyhow::anyhow!(
                    "sidelog refused the call: {} (--auth-token-file)",
                    status.message()
                ));
            }
            Err(status) => {
                if progress.given_up() {
                    summary.lock().expect("no panics under this lock").unacked +=
                        batch.len() as u64;
                    tracing::debug!(error = %status, "giving up on a batch");
                    return None;
                }
                progress.failed(&status);
                summary.lock().expect("no panics under this lock").retries += 1;
                tokio::time::sleep(RETRY.delay(attempt, entropy)).await;
                attempt = attempt.saturating_add(1);
            }
        }
    }
}

/// Whether a request that failed with `status` may succeed if sent again as it is: sidelog
/// unreachable, replaying or stopping, a deadline, backpressure (RESOURCE_EXHAUSTED with
/// `RetryInfo`). RESOURCE_EXHAUSTED without it is a request too large, and the other codes
/// (malformed, internal) fail the same way every time.
fn retryable(status: &tonic::Status) -> bool {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Aborted | Code::Unknown => true,
        Code::ResourceExhausted => sidelog::asks_for_retry(status),
        _ => false,
    }
}

/// A readable payload of `size` bytes for message `i`.
fn generated_payload(i: u64, size: usize) -> Vec<u8> {
    let mut p = format!("message {i} ").into_bytes();
    p.resize(size.max(1), b'.');
    p.truncate(size);
    p
}

#[cfg(test)]
mod tests {
    use super::stdin_lines;

    #[test]
    fn stdin_is_split_on_newlines_only_whatever_the_bytes() {
        let input = b"a\xff\x00b\r\n\nlast";
        assert_eq!(
            stdin_lines(input),
            [b"a\xff\x00b\r".to_vec(), Vec::new(), b"last".to_vec()]
        );
        assert_eq!(stdin_lines(b"one\n"), [b"one".to_vec()]);
        assert!(stdin_lines(b"").is_empty());
    }
}
