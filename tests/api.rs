//! The gRPC contract of the real binary: dedup, bad input, disk full, health, reflection,
//! PublishStream, configuration errors and the publish CLI.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use sidelog::proto::{Ack, Message, PublishRequest, ack};
use tokio::io::AsyncBufReadExt;
use tokio::time::Instant;
use tonic::Code;

fn status(a: &Ack) -> ack::Status {
    ack::Status::try_from(a.status).expect("a known status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_id_is_a_duplicate_with_its_original_sequence_across_sigkill() {
    for mode in ["hml", "rbml", "sbml"] {
        let dir = tempfile::tempdir().unwrap();
        let mut sidelog = Sidelog::new(&dir.path().join("data"), &["--mode", mode]);
        sidelog.start().await;
        let acks = publish(
            &sidelog,
            vec![msg("a", b"1"), msg("b", b"2"), msg("a", b"1")],
        )
        .await
        .unwrap();
        assert_eq!(status(&acks[0]), ack::Status::Accepted, "{mode}");
        assert_eq!(status(&acks[1]), ack::Status::Accepted, "{mode}");
        // The same id twice in one request: the second is a duplicate of the first.
        assert_eq!(status(&acks[2]), ack::Status::Duplicate, "{mode}");
        assert_eq!(acks[2].sequence, acks[0].sequence, "{mode}");
        assert!(
            acks[0].sequence > 0 && acks[0].sequence != acks[1].sequence,
            "{mode}"
        );

        sidelog.kill9().await;
        sidelog.start().await;
        let again = publish(
            &sidelog,
            vec![msg("b", b"2"), msg("a", b"1"), msg("c", b"3")],
        )
        .await
        .unwrap();
        assert_eq!(status(&again[0]), ack::Status::Duplicate, "{mode}");
        assert_eq!(
            again[0].sequence, acks[1].sequence,
            "{mode}: original sequence of b"
        );
        assert_eq!(status(&again[1]), ack::Status::Duplicate, "{mode}");
        assert_eq!(
            again[1].sequence, acks[0].sequence,
            "{mode}: original sequence of a"
        );
        assert_eq!(status(&again[2]), ack::Status::Accepted, "{mode}");
        // Each id reached the sink once: duplicates were neither handled nor delivered again.
        let out = dir.path().join("data/out");
        let _ = eventually(Duration::from_secs(20), || chunk_ids(&out).len() >= 3).await;
        let mut all: Vec<String> = sidelog::sink::list_chunks(&out)
            .unwrap()
            .iter()
            .flat_map(|p| sidelog::sink::read_chunk(p).unwrap())
            .map(|m| m.id)
            .collect();
        all.sort();
        assert_eq!(all, ["a", "b", "c"], "{mode}");
        sidelog.kill9().await;
    }
}

/// A DUPLICATE is answered from the dedup window alone: the handler is not called for it again
/// and nothing more reaches the sink, within one process and across a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_is_neither_handled_nor_delivered_again() {
    for mode in ["hml", "rbml", "sbml"] {
        let dir = tempfile::tempdir().unwrap();
        let handler = TestHandler::default();
        let _handler_server = handler.start(free_port()).await;
        let sink = TestSink::default();
        let _sink_server = sink.start(free_port()).await;
        let handler_url = format!("http://{}", _handler_server.addr);
        let sink_url = format!("http://{}", _sink_server.addr);
        let args = [
            "--mode",
            mode,
            "--handler",
            &handler_url,
            "--sink",
            &sink_url,
        ];
        let mut sidelog = Sidelog::new(&dir.path().join("data"), &args);
        sidelog.start().await;
        // "dup-1" has 3 outputs, "dup-3" has 1 (expected_outputs).
        let ids = ["dup-1", "dup-3"];
        let first = publish(&sidelog, ids.iter().map(|id| msg(id, b"p")).collect())
            .await
            .unwrap();
        assert!(
            first.iter().all(|a| status(a) == ack::Status::Accepted),
            "{mode}"
        );
        let outputs: HashSet<String> = ids
            .iter()
            .flat_map(|id| expected_outputs(id, b"p"))
            .map(|(id, _)| id)
            .collect();
        assert!(!outputs.is_empty(), "the test needs outputs to count");
        let missing = wait_for_ids(&sink, &outputs, Duration::from_secs(30)).await;
        assert!(missing.is_empty(), "{mode}: {missing:?} never arrived");
        let calls = handler.calls.load(std::sync::atomic::Ordering::Relaxed);
        let arrivals = sink.arrivals().len();
        assert_eq!(calls, 2, "{mode}: one call per input");

        for restart in [false, true] {
            if restart {
                // A clean restart: a SIGKILL may re-send what was in flight, which is delivery's
                // at-least-once, not a duplicate handled again (tests/crash.rs covers that).
                assert!(sidelog.terminate().await.success(), "{mode}");
                sidelog.start().await;
            }
            let again = publish(&sidelog, ids.iter().map(|id| msg(id, b"p")).collect())
                .await
                .unwrap();
            for (a, f) in again.iter().zip(&first) {
                assert_eq!(
                    status(a),
                    ack::Status::Duplicate,
                    "{mode} restart {restart}"
                );
                assert_eq!(a.sequence, f.sequence, "{mode} restart {restart}");
            }
            // The answer is already given; a delivery would have had the time of a whole
            // round trip through a second publish by now.
            let probe = publish(&sidelog, vec![msg(&format!("probe-{restart}"), b"p")])
                .await
                .unwrap();
            assert_eq!(status(&probe[0]), ack::Status::Accepted, "{mode}");
            let probe_outputs: HashSet<String> =
                expected_outputs(&format!("probe-{restart}"), b"p")
                    .into_iter()
                    .map(|(id, _)| id)
                    .collect();
            let missing = wait_for_ids(&sink, &probe_outputs, Duration::from_secs(30)).await;
            assert!(
                missing.is_empty(),
                "{mode}: the probe's outputs never arrived"
            );
        }
        let calls_after = handler.calls.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            calls_after,
            calls + 2,
            "{mode}: only the two probes were handled; a duplicate was handled again"
        );
        let dup_arrivals = sink
            .arrivals()
            .iter()
            .filter(|a| outputs.contains(&a.id))
            .count();
        assert_eq!(
            dup_arrivals, arrivals,
            "{mode}: a duplicate's outputs reached the sink again"
        );
        sidelog.kill9().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dedup_window_is_bounded_by_count_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut sidelog = Sidelog::new(&dir.path().join("data"), &["--dedup-window-count", "3"]);
    sidelog.start().await;
    for id in ["w1", "w2", "w3", "w4"] {
        let acks = publish(&sidelog, vec![msg(id, b"x")]).await.unwrap();
        assert_eq!(status(&acks[0]), ack::Status::Accepted);
    }
    // w1 fell out of the window of 3 ids; w4 is still in it, also after a restart.
    sidelog.kill9().await;
    sidelog.start().await;
    let acks = publish(&sidelog, vec![msg("w4", b"x"), msg("w1", b"x")])
        .await
        .unwrap();
    assert_eq!(status(&acks[0]), ack::Status::Duplicate);
    assert_eq!(status(&acks[1]), ack::Status::Accepted, "evicted by count");
    sidelog.kill9().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dedup_window_is_bounded_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let mut sidelog = Sidelog::new(&dir.path().join("data"), &["--dedup-window-age-ms", "1000"]);
    sidelog.start().await;
    let accepted_at = Instant::now();
    let first = publish(&sidelog, vec![msg("aged", b"x")]).await.unwrap();
    assert_eq!(status(&first[0]), ack::Status::Accepted);
    let again = publish(&sidelog, vec![msg("aged", b"x")]).await.unwrap();
    assert_eq!(
        status(&again[0]),
        ack::Status::Duplicate,
        "within the window"
    );
    // Ask again until it is accepted: not before the window has passed, and not long after.
    let late = poll_until(
        Duration::from_secs(20),
        || "never expired".to_string(),
        || async {
            let acks = publish(&sidelog, vec![msg("aged", b"x")]).await.unwrap();
            (status(&acks[0]) == ack::Status::Accepted).then_some(acks)
        },
    )
    .await;
    let waited = accepted_at.elapsed();
    assert!(
        waited >= Duration::from_millis(950),
        "expired after {waited:?}, before the 1,000 ms window"
    );
    assert!(late[0].sequence > first[0].sequence);
    sidelog.kill9().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_answer_and_nothing_else_is_affected() {
    let dir = tempfile::tempdir().unwrap();
    let mut sidelog = Sidelog::new(
        &dir.path().join("data"),
        &[
            "--limits-max-message-bytes",
            "1000",
            "--limits-max-messages-per-request",
            "5",
            "--limits-max-headers",
            "3",
            "--limits-max-header-bytes",
            "100",
            "--limits-max-key-bytes",
            "16",
            "--limits-max-request-bytes",
            "4096",
        ],
    );
    sidelog.start().await;

    // A request over max_request_bytes is refused before it is read, as every limit is.
    let err = publish(&sidelog, vec![msg("huge", &[0u8; 5000])])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(err.message().contains("too large"), "{err}");
    assert!(err.message().contains("max_request_bytes"), "{err}");
    // Never retry it: unlike a full backlog, it carries no RetryInfo.
    assert!(!sidelog::asks_for_retry(&err), "{err:?}");

    // The same on a stream: the requests before it are answered, then the stream ends with it.
    let requests = vec![
        PublishRequest {
            messages: vec![msg("small", b"x")],
        },
        PublishRequest {
            messages: vec![msg("huge", &[0u8; 5000])],
        },
    ];
    let mut client = sidelog.client().await;
    let mut responses = client
        .publish_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let first = responses.message().await.unwrap().expect("the small one");
    assert_eq!(status(&first.acks[0]), ack::Status::Accepted);
    let err = responses.message().await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(err.message().contains("max_request_bytes"), "{err}");
    assert!(!sidelog::asks_for_retry(&err), "{err:?}");

    let err = publish(&sidelog, vec![]).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("no messages"), "{err}");

    let six = (0..6).map(|i| msg(&format!("m{i}"), b"x")).collect();
    let err = publish(&sidelog, six).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("max_messages_per_request"), "{err}");

    let long_id = "x".repeat(300);
    let acks = publish(
        &sidelog,
        vec![
            msg("ok-1", b"fine"),
            msg("big", &[0u8; 2000]),
            msg("has space", b"x"),
            msg(&long_id, b"x"),
            msg("", b"gets an id"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(status(&acks[0]), ack::Status::Accepted);
    assert_eq!(status(&acks[1]), ack::Status::Rejected);
    assert!(
        acks[1].reason.contains("max_message_bytes"),
        "{}",
        acks[1].reason
    );
    assert_eq!(status(&acks[2]), ack::Status::Rejected);
    assert!(acks[2].reason.contains("whitespace"), "{}", acks[2].reason);
    assert_eq!(status(&acks[3]), ack::Status::Rejected);
    assert!(
        acks[3].reason.contains("max_id_bytes"),
        "{}",
        acks[3].reason
    );
    assert_eq!(status(&acks[4]), ack::Status::Accepted);
    let assigned = &acks[4].id;
    assert!(
        uuid::Uuid::parse_str(assigned).is_ok_and(|u| u.get_version_num() == 7),
        "{assigned}"
    );

    // Headers and keys: each limit answered with its own reason.
    let with = |id: &str, headers: &[(&str, &str)], key: &str| Message {
        key: key.into(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..msg(id, b"x")
    };
    let big = "v".repeat(200);
    let cases = [
        (
            with(
                "h-many",
                &[("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")],
                "",
            ),
            "max_headers",
        ),
        (with("h-big", &[("a", &big)], ""), "max_header_bytes"),
        (with("h-name", &[("bad name", "1")], ""), "header name"),
        (with("h-colon", &[("a:b", "1")], ""), "header name"),
        (with("h-line", &[("a", "one\ntwo")], ""), "line break"),
        (with("k-long", &[], &"k".repeat(17)), "max_key_bytes"),
    ];
    let (messages, reasons): (Vec<Message>, Vec<&str>) = cases.into_iter().unzip();
    let mut acks = publish(&sidelog, messages[..3].to_vec()).await.unwrap();
    acks.extend(publish(&sidelog, messages[3..].to_vec()).await.unwrap());
    assert_eq!(acks.len(), reasons.len());
    for (a, want) in acks.iter().zip(reasons) {
        assert_eq!(status(a), ack::Status::Rejected, "{}", a.id);
        assert!(a.reason.contains(want), "{}: {}", a.id, a.reason);
    }
    let acks = publish(
        &sidelog,
        vec![with("h-ok", &[("a", "1"), ("b", "2")], "key-1")],
    )
    .await
    .unwrap();
    assert_eq!(status(&acks[0]), ack::Status::Accepted);

    // Only the accepted ones reach the sink.
    let out = dir.path().join("data/out");
    let _ = eventually(Duration::from_secs(20), || chunk_ids(&out).len() >= 4).await;
    assert_eq!(
        chunk_ids(&out),
        HashSet::from([
            "small".to_string(),
            "ok-1".to_string(),
            assigned.clone(),
            "h-ok".to_string()
        ])
    );
    sidelog.kill9().await;
}

/// The journal's size limit stands in for a full disk: intake answers RESOURCE_EXHAUSTED,
/// nothing that failed is acked, the process keeps running, what was acked is delivered, and
/// the file opens cleanly afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_journal_never_acks_and_never_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let mut sidelog = Sidelog::new(
        &dir.path().join("data"),
        &[
            "--limits-max-journal-bytes",
            "2097152",
            "--file-sink-chunk-max-age-ms",
            "50",
        ],
    );
    sidelog.start().await;
    let mut accepted = HashSet::new();
    let mut full = None;
    for i in 0..200 {
        let batch: Vec<Message> = (0..5)
            .map(|j| msg(&format!("f{i}-{j}"), &[7u8; 30_000]))
            .collect();
        match publish(&sidelog, batch).await {
            Ok(acks) => {
                for a in acks {
                    assert_eq!(status(&a), ack::Status::Accepted);
                    accepted.insert(a.id);
                }
            }
            Err(e) => {
                full = Some(e);
                break;
            }
        }
    }
    let err = full.expect("the journal limit was never reached");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(err.message().contains("storage is full"), "{err}");
    // Retry later, and the status says so (RetryInfo), unlike a request too large.
    assert!(sidelog::asks_for_retry(&err), "{err:?}");
    // Asked again, it answers again (no crash, no hang): still full, or room again as the
    // delivered entries are freed.
    match publish(&sidelog, vec![msg("asked-again", &[7u8; 4096])]).await {
        Ok(acks) => {
            assert_eq!(status(&acks[0]), ack::Status::Accepted);
            accepted.insert(acks[0].id.clone());
        }
        Err(again) => assert_eq!(again.code(), Code::ResourceExhausted, "{again}"),
    }
    assert_eq!(
        sidelog.health().await,
        Some(true),
        "still running and serving after disk full"
    );
    let out = dir.path().join("data/out");
    let _ = eventually(Duration::from_secs(20), || {
        accepted.is_subset(&chunk_ids(&out))
    })
    .await;
    assert!(
        accepted.is_subset(&chunk_ids(&out)),
        "acked messages were not delivered"
    );
    sidelog.kill9().await;

    // The file is intact: a restart without the limit replays and serves.
    let mut again = Sidelog::new(&dir.path().join("data"), &[]);
    again.start().await;
    let acks = publish(&again, vec![msg("after-full", b"x")])
        .await
        .unwrap();
    assert_eq!(status(&acks[0]), ack::Status::Accepted);
    again.kill9().await;
}

/// A full journal drains and takes traffic again by itself: with the sink down the journal
/// fills to its size limit (RESOURCE_EXHAUSTED); once the sink is back, removing the delivered
/// entries (which needs pages of its own: redb copies on write) uses the headroom kept for it,
/// frees space, and intake resumes without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_journal_resumes_by_itself_when_the_sink_returns() {
    let dir = tempfile::tempdir().unwrap();
    fill_then_resume(
        Sidelog::new(&dir.path().join("data"), &[]),
        &["--limits-max-journal-bytes", "4194304"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_describe_the_services() {
    let dir = tempfile::tempdir().unwrap();
    let mut sidelog = Sidelog::new(&dir.path().join("data"), &[]);
    sidelog.start().await;
    assert_eq!(sidelog.health().await, Some(true));

    // Each port advertises what it serves, and only that, to both reflection versions.
    let admin = format!("http://{}", sidelog.admin.expect("admin on"));
    for url in [sidelog.url(), admin.clone()] {
        let v1 = reflected_services(&url, false).await;
        let v1alpha = reflected_services(&url, true).await;
        assert_eq!(v1, v1alpha, "{url}: v1 and v1alpha differ");
        let (want, not): (&[&str], &[&str]) = if url == admin {
            (
                &["sidelog.v1.Admin"],
                &["sidelog.v1.Ingest", "sidelog.v1.Handler", "sidelog.v1.Sink"],
            )
        } else {
            (
                &["sidelog.v1.Ingest", "grpc.health.v1.Health"],
                &["sidelog.v1.Admin", "sidelog.v1.Handler", "sidelog.v1.Sink"],
            )
        };
        for w in want {
            assert!(v1.contains(*w), "{url}: {w} missing from {v1:?}");
        }
        for n in not {
            assert!(
                !v1.contains(*n),
                "{url}: {n} advertised but not served: {v1:?}"
            );
        }
    }
    sidelog.kill9().await;
}

/// Asks the reflection service of one version (`v1`, `v1alpha`) on `channel` for its services.
macro_rules! list_services {
    ($version:ident, $channel:expr, $url:expr) => {{
        use tonic_reflection::pb::$version::ServerReflectionRequest;
        use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses = ServerReflectionClient::new($channel)
            .server_reflection_info(tokio_stream::iter(vec![request]))
            .await
            .unwrap_or_else(|e| panic!("{}: no {} reflection: {e}", $url, stringify!($version)))
            .into_inner();
        let response = responses.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
            panic!("not a list of services: {response:?}");
        };
        list.service.into_iter().map(|s| s.name).collect()
    }};
}

/// The services a reflection service at `url` lists (v1, or v1alpha).
async fn reflected_services(url: &str, v1alpha: bool) -> HashSet<String> {
    let channel = tonic::transport::Channel::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    if v1alpha {
        list_services!(v1alpha, channel, url)
    } else {
        list_services!(v1, channel, url)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_stream_answers_each_request_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut sidelog = Sidelog::new(&dir.path().join("data"), &["--mode", "rbml"]);
    sidelog.start().await;
    let requests: Vec<PublishRequest> = (0..200)
        .map(|i| PublishRequest {
            messages: (0..3).map(|j| msg(&format!("s{i}-{j}"), b"x")).collect(),
        })
        .collect();
    let mut client = sidelog.client().await;
    let mut responses = client
        .publish_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while let Some(r) = responses.message().await.unwrap() {
        let ids: Vec<String> = r.acks.iter().map(|a| a.id.clone()).collect();
        assert_eq!(ids, (0..3).map(|j| format!("s{n}-{j}")).collect::<Vec<_>>());
        assert!(r.acks.iter().all(|a| status(a) == ack::Status::Accepted));
        n += 1;
    }
    assert_eq!(n, 200, "one response per request");
    sidelog.kill9().await;
}

#[test]
fn configuration_errors_name_the_key_and_exit_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_sidelog"))
            .env("SIDELOG_ADMIN_LISTEN", "127.0.0.1:0")
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.path())
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["--delivery-lanes", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("delivery.lanes"));
    let out = run(&["--mode", "fast"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown mode"));
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[delivery]\nlanes = \"many\"\n").unwrap();
    let out = run(&["--config", config.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.toml") && stderr.contains("lanes"),
        "{stderr}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sidelog"))
        .env("SIDELOG_ADMIN_LISTEN", "127.0.0.1:0")
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .env("SIDELOG_DELIVERY_MAX_ATTEMPTS", "2000000")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("delivery.max_attempts"));
}

/// `sidelog publish` sends, reports, and retries with the same ids through a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publish_cli_retries_through_a_restart_with_the_same_ids() {
    let dir = tempfile::tempdir().unwrap();
    let mut sidelog = Sidelog::new(&dir.path().join("data"), &[]);
    // Not started yet: the CLI must retry until it is.
    let mut cli = tokio::process::Command::new(env!("CARGO_BIN_EXE_sidelog"))
        .env("SIDELOG_ADMIN_LISTEN", "127.0.0.1:0")
        .args([
            "publish",
            "--count",
            "500",
            "--batch",
            "50",
            "--id-prefix",
            "cli",
            "--target",
        ])
        .arg(sidelog.url())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Start sidelog only once the CLI has said it is retrying.
    let mut stderr = tokio::io::BufReader::new(cli.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    while !seen.contains("retrying with the same ids") {
        match tokio::time::timeout(Duration::from_secs(30), stderr.next_line()).await {
            Ok(Ok(Some(line))) => seen = line,
            other => panic!("the CLI never said it was retrying: {other:?}"),
        }
    }
    sidelog.start().await;
    let rest = tokio::spawn(async move {
        let mut text = String::new();
        while let Ok(Some(line)) = stderr.next_line().await {
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let out = cli.wait_with_output().await.unwrap();
    let out = std::process::Output {
        stderr: rest.await.unwrap().into_bytes(),
        ..out
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("sent 500 accepted 500"), "{stdout}");
    // The same ids again: all duplicates.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sidelog"))
        .env("SIDELOG_ADMIN_LISTEN", "127.0.0.1:0")
        .args([
            "publish",
            "--count",
            "500",
            "--batch",
            "50",
            "--id-prefix",
            "cli",
            "--target",
        ])
        .arg(sidelog.url())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("accepted 0 duplicate 500"));
    sidelog.kill9().await;
}

/// `sidelog publish` does not retry what can never be taken: a request over
/// `max_request_bytes` (RESOURCE_EXHAUSTED without RetryInfo) and messages REJECTED by their
/// acks count as rejected at once, and the command exits non-zero, as it does when anything
/// was never acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publish_cli_gives_up_on_refusals_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut sidelog = Sidelog::new(
        &dir.path().join("data"),
        &[
            "--limits-max-message-bytes",
            "1000",
            "--limits-max-request-bytes",
            "20000",
        ],
    );
    sidelog.start().await;
    let url = sidelog.url();
    let run = |args: &[&str]| {
        let started = tokio::time::Instant::now();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sidelog"))
            .args(["publish", "--concurrency", "1", "--target", &url])
            .args(args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status, text, started.elapsed())
    };
    // 30 messages of 2000 bytes in one request: over max_request_bytes. Not retried for
    // --retry-for-ms (a minute): refused at once.
    let (code, text, took) = run(&["--count", "30", "--size", "2000", "--batch", "30"]);
    assert_eq!(code.code(), Some(1), "{text}");
    assert!(
        text.contains("sent 30 accepted 0 duplicate 0 rejected 30 unacked 0 retries 0"),
        "{text}"
    );
    assert!(
        text.contains("ResourceExhausted") && text.contains("max_request_bytes"),
        "{text}"
    );
    assert!(text.contains("30 messages were rejected"), "{text}");
    assert!(
        took < Duration::from_secs(30),
        "retried a request too large: {took:?}"
    );
    // Messages over max_message_bytes in requests that fit: REJECTED by their acks.
    let (code, text, _) = run(&["--count", "4", "--size", "2000", "--batch", "1"]);
    assert_eq!(code.code(), Some(1), "{text}");
    assert!(text.contains("rejected 4 unacked 0"), "{text}");
    assert!(text.contains("max_message_bytes"), "{text}");
    // All taken: exit 0.
    let (code, text, _) = run(&["--count", "4", "--size", "100", "--batch", "2"]);
    assert!(code.success(), "{text}");
    // Never acknowledged (nothing listens there): exit 1 too.
    sidelog.kill9().await;
    let (code, text, _) = run(&["--count", "2", "--retry-for-ms", "300"]);
    assert_eq!(code.code(), Some(1), "{text}");
    assert!(text.contains("unacked 2"), "{text}");
    assert!(text.contains("2 never acknowledged"), "{text}");
}

/// With `--auth-token-file`, Ingest calls need `authorization: Bearer TOKEN` (compared in
/// constant time); health stays open; the publish CLI sends the token from its own file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_token_guards_ingest() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token-0123456789\n").unwrap();
    let mut sidelog = Sidelog::new(
        &dir.path().join("data"),
        &["--auth-token-file", token_file.to_str().unwrap()],
    );
    sidelog.start().await;
    assert_eq!(sidelog.health().await, Some(true), "health needs no token");

    let call = |auth: Option<&'static str>| {
        let mut request = tonic::Request::new(PublishRequest {
            messages: vec![msg("t-1", b"x")],
        });
        if let Some(a) = auth {
            request
                .metadata_mut()
                .insert("authorization", a.parse().unwrap());
        }
        request
    };
    let mut client = sidelog.client().await;
    for bad in [
        None,
        Some("Bearer wrong-token-0123456789"),
        Some("s3cret-token-0123456789"),
    ] {
        let err = client.publish(call(bad)).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{bad:?}: {err}");
    }
    let acks = client
        .publish(call(Some("Bearer s3cret-token-0123456789")))
        .await
        .unwrap()
        .into_inner()
        .acks;
    assert_eq!(status(&acks[0]), ack::Status::Accepted);

    let cli = |with_token: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sidelog"));
        cmd.args(["publish", "--target", &sidelog.url(), "--count", "20"]);
        if with_token {
            cmd.arg("--auth-token-file").arg(&token_file);
        }
        cmd.output().unwrap()
    };
    let out = cli(true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("accepted 20"));
    let out = cli(false);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--auth-token-file"), "{stderr}");
    assert!(
        !sidelog.log().contains("s3cret"),
        "the token is never logged"
    );
    sidelog.kill9().await;

    // A token file that is too short is refused at start-up, naming the setting.
    std::fs::write(&token_file, "short\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sidelog"))
        .env("SIDELOG_ADMIN_LISTEN", "127.0.0.1:0")
        .args(["serve", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--auth-token-file")
        .arg(&token_file)
        .args(["--listen", &free_port().to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("auth_token_file") && stderr.contains("16 characters"),
        "{stderr}"
    );
}

/// The value of one series (`name{labels}`), if the endpoint shows it.
fn try_series(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The value of one series; a missing series fails the test (it is not read as 0).
fn series(text: &str, name: &str) -> f64 {
    try_series(text, name).unwrap_or_else(|| panic!("no series {name} in:\n{text}"))
}

/// The metric families the metrics table of docs/operating.md lists.
fn readme_metric_families() -> Vec<String> {
    let readme = include_str!("../docs/operating.md");
    let table = readme
        .split("## Metrics")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("docs/operating.md has a Metrics section");
    let mut names: Vec<String> = table
        .lines()
        .filter(|l| l.starts_with("| `sidelog_") || l.starts_with("| `process_"))
        .flat_map(|l| {
            let first_cell = l.split('|').nth(1).unwrap_or_default();
            first_cell
                .split('`')
                .filter(|w| w.starts_with("sidelog_") || w.starts_with("process_"))
                .map(|w| w.split('{').next().unwrap_or(w).to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The Prometheus endpoint shows every family the README lists, and counts intake, journal,
/// handler calls, delivery, retries, dead letters, operator actions and replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_intake_delivery_retries_and_replays() {
    let dir = tempfile::tempdir().unwrap();
    let sink = TestSink::default();
    sink.failing
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let mut sink_server = sink.start(free_port()).await;
    let handler = TestHandler::default();
    let mut handler_server = handler.start(free_port()).await;
    let metrics = free_port();
    let mut sidelog = Sidelog::new(
        &dir.path().join("data"),
        &[
            "--mode",
            "rbml",
            "--sink",
            &sink_server.url(),
            "--handler",
            &handler_server.url(),
            "--metrics-listen",
            &metrics.to_string(),
            "--delivery-backoff-max-ms",
            "100",
            "--delivery-max-attempts",
            "1000",
            "--limits-max-request-bytes",
            "4096",
            "--limits-max-message-bytes",
            "1024",
        ],
    );
    sidelog.start().await;
    // Before any traffic, the series alerts watch exist at zero, with their help text.
    let at_start = scrape(metrics).await;
    for zero in [
        "sidelog_messages_total{door=\"grpc\",outcome=\"accepted\"}",
        "sidelog_requests_refused_total{door=\"grpc\",code=\"resource_exhausted\"}",
        "sidelog_delivered_total",
        "sidelog_dead_lettered_total",
        "sidelog_backlog_entries",
    ] {
        assert_eq!(series(&at_start, zero), 0.0, "{zero}:\n{at_start}");
    }
    assert!(
        at_start.contains("# HELP sidelog_delivered_total Messages acked by the sink."),
        "{at_start}"
    );
    let batch: Vec<Message> = (0..20).map(|i| msg(&format!("m{i}"), b"x")).collect();
    publish(&sidelog, batch.clone()).await.unwrap();
    publish(&sidelog, batch[..5].to_vec()).await.unwrap(); // 5 duplicates
    publish(&sidelog, vec![msg("bad id", b"x")]).await.unwrap();
    // The test handler refuses a poison message: dead-lettered at once.
    publish(&sidelog, vec![msg("poison-1", b"x")])
        .await
        .unwrap();
    let empty = publish(&sidelog, vec![]).await.unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
    // Refused by the decoder before the service sees it; counted all the same.
    let huge = publish(&sidelog, vec![msg("huge", &[0u8; 5000])])
        .await
        .unwrap_err();
    assert_eq!(huge.code(), Code::ResourceExhausted, "{huge}");
    // Undelivered for a while: the age of the oldest backlog entry shows it.
    poll_until(
        Duration::from_secs(10),
        || "the oldest backlog entry never aged".into(),
        || async {
            let text = scrape(metrics).await;
            (try_series(&text, "sidelog_backlog_oldest_age_seconds")? >= 0.5).then_some(())
        },
    )
    .await;
    let text = scrape(metrics).await;
    assert!(series(&text, "sidelog_backlog_bytes") > 0.0, "{text}");
    assert_eq!(series(&at_start, "sidelog_sink_up"), 1.0, "{at_start}");
    assert_eq!(
        series(&text, "sidelog_sink_up"),
        0.0,
        "the sink is failing:\n{text}"
    );
    assert!(series(&text, "sidelog_backlog_entries") > 0.0, "{text}");
    sink.failing
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let want: HashSet<String> = batch
        .iter()
        .flat_map(|m| expected_outputs(&m.id, &m.payload))
        .map(|(id, _)| id)
        .collect();
    assert!(
        wait_for_ids(&sink, &want, Duration::from_secs(20))
            .await
            .is_empty()
    );
    // The sink has them; the delivered counter follows its ack.
    let text = poll_until(
        Duration::from_secs(10),
        || format!("sidelog_delivered_total never reached {}", want.len()),
        || async {
            let text = scrape(metrics).await;
            (try_series(&text, "sidelog_delivered_total")? >= want.len() as f64).then_some(text)
        },
    )
    .await;
    assert_eq!(
        series(
            &text,
            "sidelog_messages_total{door=\"grpc\",outcome=\"accepted\"}"
        ),
        21.0,
        "{text}"
    );
    assert_eq!(
        series(&text, "sidelog_sink_up"),
        1.0,
        "delivering again:\n{text}"
    );
    assert_eq!(
        series(
            &text,
            "sidelog_messages_total{door=\"grpc\",outcome=\"duplicate\"}"
        ),
        5.0
    );
    assert_eq!(
        series(
            &text,
            "sidelog_messages_total{door=\"grpc\",outcome=\"rejected\",reason=\"invalid_id\"}"
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        series(
            &text,
            "sidelog_requests_refused_total{door=\"grpc\",code=\"invalid_argument\"}"
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        series(
            &text,
            "sidelog_requests_refused_total{door=\"grpc\",code=\"resource_exhausted\"}"
        ),
        1.0,
        "{text}"
    );
    assert!(
        series(&text, "sidelog_resent_messages_total{cause=\"retry\"}") > 0.0,
        "{text}"
    );
    // Every lane's batches failed while the sink was down; the log warned once per 10 s.
    let log = sidelog.log();
    let warned = log.matches("the sink is down; retrying").count();
    assert!(
        (1..=2).contains(&warned),
        "{warned} delivery warnings:\n{log}"
    );
    assert!(
        series(&text, "sidelog_delivery_retries_total") > 0.0,
        "{text}"
    );
    assert!(
        series(
            &text,
            "sidelog_sink_deliver_seconds_count{outcome=\"error\"}"
        ) > 0.0
    );
    assert!(series(&text, "sidelog_sink_deliver_seconds_count{outcome=\"ok\"}") > 0.0);
    assert!(
        series(&text, "sidelog_handler_call_seconds_count{outcome=\"ok\"}") >= 20.0,
        "{text}"
    );
    assert_eq!(
        series(
            &text,
            "sidelog_handler_call_seconds_count{outcome=\"refused\"}"
        ),
        1.0,
        "{text}"
    );
    assert_eq!(series(&text, "sidelog_dead_lettered_total"), 1.0, "{text}");
    assert!(series(&text, "sidelog_journal_commits_total{durability=\"fsync\"}") > 0.0);
    assert!(
        series(&text, "sidelog_journal_records_total") >= 21.0,
        "{text}"
    );
    assert!(
        series(&text, "sidelog_journal_record_bytes_total") > 0.0,
        "{text}"
    );
    assert!(
        series(&text, "sidelog_journal_records_per_commit_count") > 0.0,
        "{text}"
    );
    assert!(
        series(&text, "sidelog_journal_commit_seconds_count") > 0.0,
        "{text}"
    );
    assert!(
        series(&text, "sidelog_journal_fsync_seconds_count") > 0.0,
        "{text}"
    );
    assert!(!text.contains("m1"), "no message ids in labels");

    // An operator re-queues the dead letter (refused again by the handler).
    let listing = sidelog.inspect(&["dead-letters"]).await.unwrap();
    let seq = listing
        .lines()
        .find(|l| l.contains("poison-1"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("poison-1 not listed: {listing}"))
        .to_string();
    sidelog.inspect(&["requeue", &seq]).await.unwrap();
    let before_kill = poll_until(
        Duration::from_secs(10),
        || "the re-queue was not counted".into(),
        || async {
            let text = scrape(metrics).await;
            try_series(
                &text,
                "sidelog_dead_letters_handled_total{action=\"requeue\"}",
            )
            .is_some()
            .then_some(text)
        },
    )
    .await;
    assert_eq!(
        series(
            &before_kill,
            "sidelog_dead_letters_handled_total{action=\"requeue\"}"
        ),
        1.0
    );

    // The re-queued poison message is refused again before the kill, so that the replay
    // below holds exactly the next ten.
    poll_until(
        Duration::from_secs(10),
        || "the re-queued poison message was not dead-lettered again".into(),
        || async {
            let text = scrape(metrics).await;
            (try_series(&text, "sidelog_dead_lettered_total")? >= 2.0).then_some(())
        },
    )
    .await;
    sidelog.wait_summary("backlog inputs", 0).await;

    // A backlog left by a SIGKILL is counted as replayed after the restart. The handler fails
    // too until then: an input it makes no outputs of would otherwise complete before the kill
    // whenever the kill is late, and not be replayed.
    sink.failing
        .store(true, std::sync::atomic::Ordering::Relaxed);
    handler
        .failing
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let more: Vec<Message> = (0..10).map(|i| msg(&format!("r{i}"), b"x")).collect();
    publish(&sidelog, more.clone()).await.unwrap();
    sidelog.kill9().await;
    sink.failing
        .store(false, std::sync::atomic::Ordering::Relaxed);
    handler
        .failing
        .store(false, std::sync::atomic::Ordering::Relaxed);
    sidelog.start().await;
    let after_restart = scrape(metrics).await;
    assert_eq!(
        series(
            &after_restart,
            "sidelog_replayed_entries_total{kind=\"input\"}"
        ),
        10.0,
        "{after_restart}"
    );
    assert!(
        series(
            &after_restart,
            "sidelog_resent_messages_total{cause=\"replay\"}"
        ) >= 10.0,
        "{after_restart}"
    );
    assert_eq!(
        series(&after_restart, "sidelog_backlog_entries"),
        0.0,
        "{after_restart}"
    );

    // Every family the README lists was shown by one of the two processes.
    let families = readme_metric_families();
    assert_eq!(
        families.len(),
        30,
        "the README's table changed: {families:?}"
    );
    for family in &families {
        let declared = format!("# TYPE {family} ");
        assert!(
            before_kill.contains(&declared) || after_restart.contains(&declared),
            "{family} is in the README but was never shown:\n{before_kill}\n{after_restart}"
        );
        let help = format!("# HELP {family} ");
        assert!(
            before_kill.contains(&help) || after_restart.contains(&help),
            "{family} has no help text"
        );
    }
    sidelog.kill9().await;
    handler_server.stop().await;
    sink_server.stop().await;
}

/// Within one key, outputs reach a gRPC sink in journal order while nothing fails: eight
/// producers, each sending its own keys in turn, through a handler that makes up to three
/// outputs per input, eight lanes and a sink slow enough that batches queue up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_of_one_key_reach_the_sink_in_journal_order() {
    for mode in ["rbml", "sbml", "hml"] {
        let dir = tempfile::tempdir().unwrap();
        let sink = TestSink::default();
        sink.delay_us
            .store(2_000, std::sync::atomic::Ordering::Relaxed);
        let mut sink_server = sink.start(free_port()).await;
        let handler = TestHandler::default();
        let mut handler_server = handler.start(free_port()).await;
        let (sink_url, handler_url) = (sink_server.url(), handler_server.url());
        let mut sidelog = Sidelog::new(
            &dir.path().join("data"),
            &[
                "--mode",
                mode,
                "--sink",
                &sink_url,
                "--handler",
                &handler_url,
                "--delivery-batch-max-messages",
                "7",
            ],
        );
        sidelog.start().await;
        let mut producers = Vec::new();
        for p in 0..8 {
            let client = sidelog.client().await;
            producers.push(tokio::spawn(async move {
                let mut client = client;
                let mut sent = Vec::new();
                for i in 0..60 {
                    // Two keys per producer, interleaved; a batch holds several of one key.
                    let batch: Vec<Message> = (0..4)
                        .map(|j| Message {
                            id: format!("p{p}-{i}-{j}"),
                            key: format!("key-{p}-{}", (i + j) % 2),
                            payload: format!("{i}.{j}").into_bytes().into(),
                            ..Default::default()
                        })
                        .collect();
                    let acks = client
                        .publish(PublishRequest {
                            messages: batch.clone(),
                        })
                        .await
                        .expect("nothing fails in this test")
                        .into_inner()
                        .acks;
                    assert!(acks.iter().all(|a| status(a) == ack::Status::Accepted));
                    sent.extend(batch);
                }
                sent
            }));
        }
        let mut sent = Vec::new();
        for p in producers {
            sent.extend(p.await.unwrap());
        }
        let want: HashSet<String> = sent
            .iter()
            .flat_map(|m| expected_outputs(&m.id, &m.payload))
            .map(|(id, _)| id)
            .collect();
        let missing = wait_for_ids(&sink, &want, Duration::from_secs(60)).await;
        assert!(
            missing.is_empty(),
            "{mode}: {} never arrived",
            missing.len()
        );

        // Per key, in arrival order: journal positions rise (in rbml outputs are not journaled
        // and carry their input's sequence, so the output's index breaks the tie), and inputs
        // appear in the order they were sent (each producer sends one request after another).
        let position: HashMap<String, usize> = sent
            .iter()
            .enumerate()
            .map(|(i, m)| (m.id.clone(), i))
            .collect();
        let mut last: HashMap<String, ((u64, u32), usize, String)> = HashMap::new();
        let arrivals = sink.arrivals();
        assert_eq!(
            arrivals.len(),
            want.len(),
            "{mode}: duplicates with nothing failing"
        );
        for a in &arrivals {
            let (input, index) = a.id.rsplit_once('/').expect("outputs are named input/i");
            let seq = (
                a.seq.expect("a journaled mode carries sidelog-seq"),
                index.parse::<u32>().expect("a numeric output index"),
            );
            let pos = position[input];
            if let Some((prev_seq, prev_pos, prev_id)) = last.get(&a.key) {
                assert!(
                    seq > *prev_seq && pos >= *prev_pos,
                    "{mode}, key {}: {} at {seq:?} arrived after {prev_id} at {prev_seq:?}",
                    a.key,
                    a.id
                );
            }
            last.insert(a.key.clone(), (seq, pos, a.id.clone()));
        }
        assert_eq!(last.len(), 16, "{mode}: every key arrived");
        sidelog.kill9().await;
        handler_server.stop().await;
        sink_server.stop().await;
    }
}

/// Producers retry a full journal at once. Each failed commit costs a reopen that repairs the
/// file (a walk of all of it), so a retry is refused without a commit until marks free space
/// or a wait has passed (50 ms, doubling to 2 s): hundreds of refusals, a handful of failed
/// commits, and every refusal still says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_on_a_full_journal_are_refused_without_a_commit_each() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = free_port();
    let (_sink, sink_server) = failing_sink().await;
    let sink = sink_server.url();
    let mut sidelog = Sidelog::new(
        &dir.path().join("data"),
        &[
            "--mode",
            "rbml",
            "--sink",
            &sink,
            "--delivery-max-attempts",
            "1000000",
            "--limits-max-journal-bytes",
            "2097152",
            "--metrics-listen",
            &metrics.to_string(),
        ],
    );
    sidelog.start().await;
    let mut i = 0;
    let first = loop {
        i += 1;
        let batch = (0..5)
            .map(|j| msg(&format!("r{i}-{j}"), &[7u8; 30_000]))
            .collect();
        if let Err(e) = publish(&sidelog, batch).await {
            break e;
        }
        assert!(i < 1000, "the journal limit was never reached");
    };
    assert_eq!(first.code(), Code::ResourceExhausted, "{first}");
    let failures = |text: &str| {
        series(
            text,
            "sidelog_journal_commit_failures_total{cause=\"full\"}",
        )
    };
    // Single messages fill what five at a time left.
    while publish(&sidelog, vec![msg(&format!("one-{i}"), &[7u8; 30_000])])
        .await
        .is_ok()
    {
        i += 1;
    }
    let before = failures(&scrape(metrics).await);
    let started = Instant::now();
    let (mut refused, mut taken) = (0, 0);
    for r in 0..300 {
        match publish(&sidelog, vec![msg(&format!("again-{r}"), &[7u8; 30_000])]).await {
            Err(err) => {
                assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
                assert!(err.message().contains("storage is full"), "{err}");
                refused += 1;
            }
            // A reopen after a failed commit may find pages that earlier commits freed.
            Ok(_) => taken += 1,
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let failed = failures(&scrape(metrics).await) - before;
    eprintln!(
        "300 retries in {elapsed:.2} s: {refused} refused, {taken} taken, {failed} failed commits"
    );
    assert!(
        refused >= 250,
        "{refused} of 300 retries refused: the journal was not full"
    );
    // 50 + 100 + ... + 1600 ms, then one every 2 s; a commit that succeeds starts over.
    let bound = 7.0 * (1 + taken) as f64 + elapsed / 2.0;
    assert!(
        failed <= bound,
        "{failed} failed commits for {refused} refused retries in {elapsed:.2} s (at most \
         {bound:.0} expected)"
    );
    sidelog.kill9().await;
}

/// Group commit: requests arriving together share a commit and its fsync (one writer commits
/// every waiting record in one transaction, then acks them all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_share_commits_and_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = free_port();
    let mut sidelog = Sidelog::new(
        &dir.path().join("data"),
        &["--mode", "rbml", "--metrics-listen", &metrics.to_string()],
    );
    sidelog.start().await;
    let before = scrape(metrics).await;
    let fsyncs_before = try_series(
        &before,
        "sidelog_journal_commits_total{durability=\"fsync\"}",
    )
    .unwrap_or(0.0);
    let mut tasks = Vec::new();
    for t in 0..32 {
        let mut client = sidelog.client().await;
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                let acks = client
                    .publish(PublishRequest {
                        messages: vec![msg(&format!("g{t}-{i}"), b"x")],
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .acks;
                assert_eq!(status(&acks[0]), ack::Status::Accepted);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let text = scrape(metrics).await;
    let fsyncs =
        series(&text, "sidelog_journal_commits_total{durability=\"fsync\"}") - fsyncs_before;
    eprintln!("640 single-message publishes from 32 clients: {fsyncs} durable commits");
    assert!(
        fsyncs <= 480.0,
        "{fsyncs} durable commits for 640 publishes: they were not grouped"
    );
    sidelog.kill9().await;
}

/// Mode `none` holds what it accepted in memory, bounded like the journal's backlog: with the
/// sink down, intake answers RESOURCE_EXHAUSTED at `limits.max_backlog_bytes`, and takes
/// traffic again once the sink is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mode_none_holds_no_more_than_the_backlog_limit_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let (sink, mut sink_server) = failing_sink().await;
    let mut sidelog = Sidelog::new(
        &dir.path().join("data"),
        &[
            "--mode",
            "none",
            "--sink",
            &sink_server.url(),
            "--limits-max-backlog-bytes",
            "1048576",
        ],
    );
    sidelog.start().await;
    let mut accepted_bytes = 0usize;
    let mut refused = None;
    for i in 0..1000 {
        let batch: Vec<Message> = (0..10)
            .map(|j| msg(&format!("n{i}-{j}"), &[1u8; 10_000]))
            .collect();
        match publish(&sidelog, batch).await {
            Ok(acks) => accepted_bytes += 10_000 * acks.len(),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let refused = refused.expect("intake never refused with the sink down");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused}");
    assert!(refused.message().contains("max_backlog_bytes"), "{refused}");
    assert!(sidelog::asks_for_retry(&refused), "{refused:?}");
    // Admission is per request: at most one request beyond the limit.
    assert!(
        accepted_bytes <= 1_048_576 + 100_000,
        "{accepted_bytes} bytes held in memory"
    );
    sink.failing
        .store(false, std::sync::atomic::Ordering::Relaxed);
    poll_until(
        Duration::from_secs(20),
        || "intake never resumed".into(),
        || async {
            publish(&sidelog, vec![msg("after", b"x")])
                .await
                .ok()
                .map(|_| ())
        },
    )
    .await;
    sidelog.kill9().await;
    sink_server.stop().await;
}

/// `serve --check-config` validates without starting: it prints the effective configuration
/// with secrets redacted and exits 0, or names the bad setting and exits 1.
#[test]
fn check_config_prints_the_effective_configuration_or_the_error() {
    let check_config = |args: &[&str], env: &[(&str, &str)]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sidelog"))
            .args(["serve", "--check-config"])
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = check_config(
        &[
            "--mode",
            "sbml",
            "--sink",
            "nats://127.0.0.1:4222?stream=S&token=sekrit-token",
            "--delivery-linger",
            "5ms",
            "--limits-max-message-bytes",
            "2 MiB",
        ],
        &[
            ("SIDELOG_DELIVERY_LANES", "3"),
            ("SIDELOG_REPLAY_MAX_AGE_MS", "7d"),
        ],
    );
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    // Valid TOML, in sections, as a config file says it.
    let table: toml::Table = stdout.parse().unwrap_or_else(|e| panic!("{e}:\n{stdout}"));
    assert_eq!(table["mode"].as_str(), Some("sbml"), "{stdout}");
    assert_eq!(
        table["delivery"]["lanes"].as_integer(),
        Some(3),
        "the variable: {stdout}"
    );
    assert_eq!(
        table["delivery"]["linger_ms"].as_integer(),
        Some(5),
        "{stdout}"
    );
    assert_eq!(
        table["replay"]["max_age_ms"].as_integer(),
        Some(604_800_000),
        "{stdout}"
    );
    assert_eq!(
        table["limits"]["max_message_bytes"].as_str(),
        Some("2 MiB"),
        "{stdout}"
    );
    assert!(stdout.contains("token=<redacted>"), "{stdout}");
    assert!(!stdout.contains("sekrit"), "a secret printed: {stdout}");
    assert!(stdout.contains("# handler: not set"), "{stdout}");
    // Read back as a config file, it is the same configuration.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sidelog.toml");
    std::fs::write(&file, &stdout).unwrap();
    let (code, again, stderr) = check_config(&["--config", file.to_str().unwrap()], &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(again, stdout);

    // Without a sink: the file sink in the data directory, said as such (here and in the
    // start-up line, which reads the same list).
    let (_, stdout, _) = check_config(&[], &[]);
    assert!(
        stdout.contains("sink = \"file:./sidelog-data/out\""),
        "{stdout}"
    );
    let (code, _, stderr) = check_config(&["--delivery-lanes", "0"], &[]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("--delivery-lanes"), "{stderr}");
    // The files a start would read before it binds are read too: one that is missing or too
    // short is named, as `serve` would name it.
    let missing = dir.path().join("no-such-key");
    let (code, _, stderr) = check_config(
        &["--forward-shared-key-file", missing.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("forward_shared_key_file") && stderr.contains("cannot read it"),
        "{stderr}"
    );

    // A URL read wrong is named, and its secrets are not repeated: from a flag, a variable
    // or a file (credentials in the address and in the options alike).
    let bad_file = dir.path().join("bad.toml");
    std::fs::write(
        &bad_file,
        "sink = \"kafka://k:9092/t?sasl_mechanism=PLAIN&username=u&password=sekrit&x=1\"\n",
    )
    .unwrap();
    for (args, env, names) in [
        (
            &["--sink", "nats://u:sekrit@127.0.0.1:4222?stream=S&bogus=1"][..],
            &[][..],
            "unknown option \"bogus\"",
        ),
        (
            &[][..],
            &[(
                "SIDELOG_MQTT_SOURCE",
                "mqtt://h:1883?topics=t&client_id=c&password=sekrit",
            )][..],
            "password needs user",
        ),
        (
            &["--config", bad_file.to_str().unwrap()][..],
            &[][..],
            "unknown option \"x\"",
        ),
    ] {
        let (code, _, stderr) = check_config(args, env);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains(names), "{stderr}");
        assert!(!stderr.contains("sekrit"), "a secret printed: {stderr}");
    }
}

/// What people write is read as they mean it, and what is not a setting is said so with the
/// nearest one: units on sizes and durations (and a duration's key without `_ms`), an unknown
/// key, section or `SIDELOG_*` variable, and a value outside a setting's choices.
#[test]
fn settings_take_units_and_unknown_names_get_the_nearest_one() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sidelog.toml");
    let check = |toml: &str, env: &[(&str, &str)]| {
        std::fs::write(&file, toml).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sidelog"))
            .args(["serve", "--check-config", "--config"])
            .arg(&file)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let (code, text) = check(
        "[limits]\nmax_message_bytes = \"2 MiB\"\n[delivery]\nlinger = \"5ms\"\n\
         [replay]\nmax_age = \"7d\"\n[dedup]\nwindow_age_ms = 60000\n",
        &[],
    );
    assert_eq!(code, Some(0), "{text}");
    let table: toml::Table = text.parse().unwrap();
    assert_eq!(table["limits"]["max_message_bytes"].as_str(), Some("2 MiB"));
    assert_eq!(table["delivery"]["linger_ms"].as_integer(), Some(5));
    assert_eq!(
        table["replay"]["max_age_ms"].as_integer(),
        Some(7 * 86_400_000)
    );
    assert_eq!(
        table["dedup"]["window_age_ms"].as_integer(),
        Some(60_000),
        "numbers still work"
    );

    let refused = [
        ("mode = 3\n", "expected one of hml, rbml, sbml, none"),
        ("mode = \"fast\"\n", "expected one of hml, rbml, sbml, none"),
        (
            "[delivery]\nlinger_mss = 5\n",
            "unknown key `delivery.linger_mss`; did you mean `delivery.linger_ms`?",
        ),
        (
            "[delivry]\nlanes = 5\n",
            "unknown section [delivry]; did you mean [delivery]?",
        ),
        (
            "max_message_bytes = 5\n",
            "did you mean `limits.max_message_bytes`?",
        ),
        ("[delivery]\nlinger = \"5 parsecs\"\n", "is not a duration"),
        (
            "[delivery]\nlinger = \"5ms\"\nlinger_ms = 5\n",
            "the same setting: keep one",
        ),
        ("[limits]\nmax_message_bytes = \"2 XB\"\n", "is not a size"),
        (
            "[delivery]\nlanes = -1\n",
            "a negative number is not allowed",
        ),
    ];
    for (toml, want) in refused {
        let (code, text) = check(toml, &[]);
        assert_eq!(code, Some(1), "{toml}: {text}");
        assert!(text.contains(want), "{toml}: {text}");
        assert!(text.contains("sidelog.toml"), "the file is named: {text}");
    }
    let (code, text) = check("", &[("SIDELOG_DELIVERY_LANS", "3")]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("unknown environment variable SIDELOG_DELIVERY_LANS; did you mean SIDELOG_DELIVERY_LANES?"),
        "{text}"
    );
}

/// `sidelog health` for container health checks: 0 and SERVING from a serving sidelog, 2 when
/// nothing answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_command_answers_with_its_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let mut sidelog = Sidelog::new(&dir.path().join("data"), &[]);
    sidelog.start().await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sidelog"))
        .args(["health", "--target", &sidelog.url()])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "SERVING");
    let nobody = free_port();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sidelog"))
        .args(["health", "--target", &nobody.to_string()])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no answer"));
    sidelog.kill9().await;
}

/// `sidelog completions SHELL` prints a script the shell accepts; `sidelog man` a man page
/// naming every subcommand.
#[test]
fn completions_and_the_man_page_are_generated() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sidelog"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let bash = run(&["completions", "bash"]);
    assert!(
        bash.contains("inspect") && bash.contains("--data-dir"),
        "{bash}"
    );
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("sidelog.bash");
    std::fs::write(&script, &bash).unwrap();
    let checked = std::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .status()
        .unwrap();
    assert!(checked.success(), "bash -n refused the completion script");
    for shell in ["zsh", "fish"] {
        assert!(run(&["completions", shell]).contains("serve"), "{shell}");
    }
    let man = run(&["man"]);
    assert!(man.contains(".TH sidelog 1"), "{man}");
    for sub in ["serve", "publish", "inspect", "health"] {
        assert!(man.contains(sub), "{sub} missing from the man page");
    }
    // A page per command and subcommand, each with its own options, as man(1) reads them.
    let pages = dir.path().join("man1");
    let said = run(&["man", "--out-dir", pages.to_str().unwrap()]);
    assert!(said.starts_with("wrote "), "{said}");
    for (page, option) in [
        ("sidelog.1", "publish"),
        ("sidelog-serve.1", "delivery\\-lanes"),
        ("sidelog-publish.1", "retry\\-for\\-ms"),
        ("sidelog-inspect.1", "data\\-dir"),
        ("sidelog-inspect-chunk.1", "PATHS"),
        ("sidelog-inspect-requeue.1", "all"),
        ("sidelog-man.1", "out\\-dir"),
    ] {
        let text =
            std::fs::read_to_string(pages.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        let name = page.trim_end_matches(".1");
        assert!(text.contains(&format!(".TH {name} 1")), "{page}: {text}");
        assert!(text.contains(option), "{page} lacks {option}: {text}");
    }
}

/// The metrics listener's probes, as Kubernetes and load balancers use them: `/healthz` answers
/// while the process runs; `/readyz` only while it takes traffic: 503 while a `first` replay
/// holds intake (here: the sink is down, so the replay cannot finish), 200 once it is done.
/// Beside them, the process's own metrics, `sidelog_build_info` and the dead-letter gauge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_say_live_and_ready_and_readiness_waits_for_the_replay() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (sink, sink_server) = failing_sink().await;
    let sink_url = sink_server.url();
    let metrics = free_port();
    let metrics_arg = metrics.to_string();
    let args = [
        "--mode",
        "rbml",
        "--sink",
        &sink_url,
        "--metrics-listen",
        &metrics_arg,
        "--replay-policy",
        "first",
        "--delivery-backoff-max-ms",
        "100",
    ];
    // The sink refuses the poison message: a dead letter, which the gauge counts.
    sink.failing
        .store(false, std::sync::atomic::Ordering::Relaxed);
    sink.refuse.lock().unwrap().insert("poison-1".to_string());
    let mut sidelog = Sidelog::new(&data, &args);
    sidelog.start().await;
    assert_eq!(http_get(metrics, "/readyz").await.unwrap().0, 200);
    publish(&sidelog, vec![msg("poison-1", b"x")])
        .await
        .unwrap();
    poll_until(
        Duration::from_secs(10),
        || "the dead-letter gauge never showed the refused message".into(),
        || async {
            (try_series(&scrape(metrics).await, "sidelog_dead_letters") == Some(1.0)).then_some(())
        },
    )
    .await;
    // The sink goes down: what is acked now waits in the journal.
    sink.failing
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let batch: Vec<Message> = (0..10).map(|i| msg(&format!("p{i}"), b"x")).collect();
    publish(&sidelog, batch).await.unwrap();
    let text = scrape(metrics).await;
    let version = format!(
        "sidelog_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(series(&text, &version), 1.0, "{text}");
    for family in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(series(&text, family) > 0.0, "{family}:\n{text}");
    }
    sidelog.kill9().await;

    // Restarted with the sink still down: alive, not ready, for as long as the replay holds.
    let mut sidelog = Sidelog::new(&data, &args);
    sidelog.spawn();
    poll_until(
        Duration::from_secs(30),
        || "/healthz never answered 200".into(),
        || async { matches!(http_get(metrics, "/healthz").await, Ok((200, _))).then_some(()) },
    )
    .await;
    for _ in 0..5 {
        let (code, body) = http_get(metrics, "/readyz").await.unwrap();
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("replaying"), "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(http_get(metrics, "/healthz").await.unwrap().0, 200);
    // The sink is back: the replay ends and the probe says ready.
    sink.failing
        .store(false, std::sync::atomic::Ordering::Relaxed);
    poll_until(
        Duration::from_secs(30),
        || "/readyz never answered 200 after the replay".into(),
        || async { matches!(http_get(metrics, "/readyz").await, Ok((200, _))).then_some(()) },
    )
    .await;
    assert_eq!(sidelog.health().await, Some(true));
    sidelog.kill9().await;
}

/// After a crash, a replay under `replay.policy = first` holds intake until its backlog is
/// delivered. A sink that batches by age (the file and object sinks' chunks) is told to send
/// at once: intake waits tens of milliseconds, not the chunk's age (60 s here, past
/// `start`'s own 60 s wait).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_does_not_wait_for_the_chunk_age() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = [
        "--mode",
        "rbml",
        "--replay-policy",
        "first",
        "--file-sink-chunk-max-age-ms",
        "60000",
    ];
    let mut sidelog = Sidelog::new(&data, &args);
    sidelog.start().await;
    let batch: Vec<Message> = (0..50).map(|i| msg(&format!("r{i}"), b"x")).collect();
    let acks = publish(&sidelog, batch).await.unwrap();
    assert!(acks.iter().all(|a| status(a) == ack::Status::Accepted));
    // Acked and journaled, sitting in the open chunk: nothing is in the sink yet.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(chunk_ids(&data.join("out")).is_empty());
    sidelog.kill9().await;

    let mut sidelog = Sidelog::new(&data, &args);
    let started = Instant::now();
    sidelog.start().await;
    let held = started.elapsed();
    let ids = chunk_ids(&data.join("out"));
    assert_eq!(
        ids.len(),
        50,
        "the replayed chunk is sealed before intake opens: {ids:?}"
    );
    eprintln!("intake held {held:?} by the replay");
    sidelog.kill9().await;
}

/// A file or directory sidelog may not read or write is reported at start with its path, not
/// as a bare "Permission denied": the data directory, the journal, the file sink's directory,
/// the config file, and a chunk given to `sidelog inspect chunk`. Runs sidelog as an
/// unprivileged user (`setpriv`, when the test runs as root, which ignores permissions).
#[test]
fn permission_errors_name_the_file() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mode = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    mode(root, 0o777);
    let as_root =
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0;
    // The test's own binary may sit where that user cannot reach (a clone under a 0700
    // directory): a copy in the open directory.
    let program = root.join("sidelog");
    std::fs::copy(env!("CARGO_BIN_EXE_sidelog"), &program).unwrap();
    mode(&program, 0o755);
    let run = |args: &[&str]| {
        // Bounded: a start that should have failed and did not would serve forever.
        let mut command = std::process::Command::new("timeout");
        command.arg("30");
        if as_root {
            command.args([
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
            ]);
        }
        command.arg(&program);
        let out = command
            .current_dir(root)
            .env("SIDELOG_ADMIN_LISTEN", "off")
            .args(args)
            .output()
            .expect("setpriv (util-linux) runs the binary as an unprivileged user");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let listen = free_port().to_string();

    // The data directory's parent refuses new entries.
    let closed = root.join("closed");
    std::fs::create_dir(&closed).unwrap();
    mode(&closed, 0o555);
    let (code, err) = run(&["serve", "--data-dir", "closed/data", "--listen", &listen]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("closed/data") && err.contains("Permission denied"),
        "{err}"
    );

    // A journal made by another user, unreadable to this one.
    let data = root.join("data");
    std::fs::create_dir(&data).unwrap();
    mode(&data, 0o777);
    std::fs::write(data.join("journal.redb"), b"not for you").unwrap();
    mode(&data.join("journal.redb"), 0o600);
    let (code, err) = run(&["serve", "--data-dir", "data", "--listen", &listen]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("data/journal.redb") && err.contains("Permission denied"),
        "{err}"
    );
    std::fs::remove_file(data.join("journal.redb")).unwrap();
    // The redo log the same (the try above made one, of the other user's: replaced).
    let _ = std::fs::remove_file(data.join("journal.wal"));
    std::fs::write(data.join("journal.wal"), b"").unwrap();
    mode(&data.join("journal.wal"), 0o600);
    let (code, err) = run(&["serve", "--data-dir", "data", "--listen", &listen]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("data/journal.wal") && err.contains("Permission denied"),
        "{err}"
    );
    std::fs::remove_file(data.join("journal.wal")).unwrap();

    // The file sink's directory takes no files: said at start, before anything is acked.
    let out = root.join("out");
    std::fs::create_dir(&out).unwrap();
    mode(&out, 0o555);
    let (code, err) = run(&[
        "serve",
        "--data-dir",
        "data",
        "--listen",
        &listen,
        "--sink",
        "file:out",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("out for the file sink") && err.contains("Permission denied"),
        "{err}"
    );

    // The token and a TLS key the same, and read before anything is opened or bound: the
    // start fails naming the file, and the data directory is not even made.
    let secret = root.join("secret");
    std::fs::write(&secret, "a-token-of-sixteen-chars").unwrap();
    mode(&secret, 0o600);
    for flags in [
        &["--auth-token-file", "secret"][..],
        &["--tls-cert-file", "secret", "--tls-key-file", "secret"][..],
    ] {
        let args = [
            &["serve", "--data-dir", "never", "--listen", &listen][..],
            flags,
        ]
        .concat();
        let (code, err) = run(&args);
        assert_eq!(code, Some(1), "{err}");
        assert!(
            err.contains(flags[0]) && err.contains("Permission denied"),
            "{err}"
        );
        assert!(
            !root.join("never").exists(),
            "nothing opened before the secrets are read"
        );
    }

    // The config file, and a chunk for `inspect chunk`.
    let config = root.join("sidelog.toml");
    std::fs::write(&config, "mode = \"hml\"\n").unwrap();
    mode(&config, 0o600);
    let (code, err) = run(&["serve", "--config", "sidelog.toml", "--check-config"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("sidelog.toml") && err.contains("Permission denied"),
        "{err}"
    );
    let chunk = root.join("chunk-0000000000001-00000000-000001.sdlc");
    std::fs::write(&chunk, sidelog::sink::CHUNK_MAGIC).unwrap();
    mode(&chunk, 0o600);
    let name = chunk.file_name().unwrap().to_str().unwrap();
    let (code, err) = run(&["inspect", "chunk", name]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(name) && err.contains("Permission denied"),
        "{err}"
    );
}

/// `sidelog inspect chunk` prints what the file sink stored, from the files alone: each record
/// with id, key, sequence and headers, a text payload as text and a binary one as base64; with
/// `--json` one object a line; the record format and Parquet alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_chunk_prints_what_the_file_sink_stored() {
    for format in ["chunk", "parquet"] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut sidelog = Sidelog::new(
            &data,
            &[
                "--file-sink-format",
                format,
                "--file-sink-chunk-max-age-ms",
                "50",
            ],
        );
        sidelog.start().await;
        let text = Message {
            key: "user-7".into(),
            headers: [("trace".to_string(), "abc".to_string())].into(),
            ..msg("c-text", b"hello\nworld")
        };
        let binary = msg("c-binary", &[0xff, 0x00, 0xfe]);
        let acks = publish(&sidelog, vec![text, binary]).await.unwrap();
        let out = data.join("out");
        // Both in one request, so in one chunk: sealed once it is listed.
        let _ = eventually(Duration::from_secs(20), || {
            sidelog::sink::list_chunks(&out).is_ok_and(|c| !c.is_empty())
        })
        .await;
        sidelog.kill9().await;

        let inspect = |json: bool| {
            let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sidelog"));
            command.arg("inspect");
            if json {
                command.arg("--json");
            }
            let out = command.arg("chunk").arg(&out).output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        };
        let text_out = inspect(false);
        let seq = &acks[0].sequence;
        assert!(
            text_out.contains(&format!("sequence={seq} id=c-text key=\"user-7\"")),
            "{format}: {text_out}"
        );
        assert!(text_out.contains("trace=\"abc\""), "{format}: {text_out}");
        assert!(
            text_out.contains("  hello\\nworld\n"),
            "{format}: {text_out}"
        );
        assert!(text_out.contains("  base64:/wD+\n"), "{format}: {text_out}");
        let lines: Vec<serde_json::Value> = inspect(true)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{format}: {lines:?}");
        let by_id = |id: &str| lines.iter().find(|l| l["id"] == id).unwrap().clone();
        assert_eq!(by_id("c-text")["payload_text"], "hello\nworld");
        assert_eq!(by_id("c-text")["key"], "user-7");
        assert_eq!(by_id("c-text")["sequence"], acks[0].sequence);
        assert_eq!(by_id("c-binary")["payload_text"], serde_json::Value::Null);
        assert_eq!(by_id("c-binary")["payload_base64"], "/wD+");
    }
}
