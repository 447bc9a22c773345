//! The OTLP door with OpenTelemetry's own exporters: the Python SDK's `OTLPLogExporter` over
//! gRPC and over HTTP (PyPI `opentelemetry-sdk`, `opentelemetry-exporter-otlp-proto-grpc`,
//! `-http`; `.ci/run` installs them into `target/otel-venv`, `SIDELOG_TEST_OTEL_PYTHON` may
//! name another Python), an application logging through `logging` while sidelog is SIGKILLed
//! and restarted. Every record the exporter reported exported is at the sink, under one id.
//! And the same application behind an OpenTelemetry Collector (`otelcol/`: the OTLP receiver,
//! the batch processor and the `otlp_grpc` exporter, built from the Go module proxy by
//! `.ci/run` into `target/otelcol`; `SIDELOG_TEST_OTELCOL` may name another collector).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{Missing, Outcome};
use crate::common::{Sidelog, crash_while_sending, eventually, free_port, otlp_at_sink};

/// A Python with the OpenTelemetry SDK and both OTLP exporters.
fn otel_python() -> Result<PathBuf, Missing> {
    let candidates = std::env::var_os("SIDELOG_TEST_OTEL_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain([Path::new(env!("CARGO_MANIFEST_DIR")).join("target/otel-venv/bin/python")]);
    for python in candidates {
        let has_sdk = Command::new(&python)
            .args([
                "-c",
                "import opentelemetry.sdk._logs, opentelemetry.exporter.otlp.proto.grpc, \
                 opentelemetry.exporter.otlp.proto.http",
            ])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if has_sdk {
            return Ok(python);
        }
    }
    Err(Missing(
        "no Python with the OpenTelemetry SDK and OTLP exporters (python3 -m venv \
         target/otel-venv && target/otel-venv/bin/pip install 'opentelemetry-sdk==1.*' \
         'opentelemetry-exporter-otlp-proto-grpc==1.*' 'opentelemetry-exporter-otlp-proto-http==1.*')"
            .into(),
    ))
}

pub async fn the_python_sdks_grpc_exporter_through_a_sigkill() -> Outcome {
    exporter_through_a_sigkill("grpc").await
}

pub async fn the_python_sdks_http_exporter_through_a_sigkill() -> Outcome {
    exporter_through_a_sigkill("http").await
}

/// 3,000 records logged by an application (2 ms apart, batches of 50 every 20 ms); sidelog is
/// SIGKILLed once 300 are at the sink, and started again 0.3 s later; the exporter retries
/// what got no answer.
async fn exporter_through_a_sigkill(protocol: &str) -> Outcome {
    let python = otel_python()?;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let http = free_port();
    let http_text = http.to_string();
    let mut sidelog = Sidelog::new(&data, &["--mode", "hml", "--http-listen", &http_text]);
    sidelog.start().await;
    let endpoint = match protocol {
        "grpc" => sidelog.url(),
        _ => format!("http://{http}"),
    };
    let count = 3000;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/services/clients/otlp_logs.py");
    let client = tokio::process::Command::new(&python)
        .arg(&script)
        .args([protocol, &endpoint, &count.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python runs");

    let out = data.join("out");
    crash_while_sending(&mut sidelog, "the application's records", || {
        otlp_at_sink(&out).len() >= 300
    })
    .await;
    let finished = client.wait_with_output().await.expect("python ran");
    let stdout = String::from_utf8_lossy(&finished.stdout);
    assert!(
        finished.status.success() && stdout.contains("done"),
        "the OpenTelemetry client failed: {}",
        String::from_utf8_lossy(&finished.stderr)
    );
    let acked: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("acked "))
        .collect();
    let failed = stdout.lines().filter(|l| l.starts_with("failed")).count();
    println!(
        "OTLP {protocol}: {} of {count} records acked, {failed} batches failed",
        acked.len()
    );
    // The exporter retries through the restart: nearly everything is acked in the end.
    assert!(
        acked.len() >= count * 9 / 10,
        "only {} of {count} records were acked",
        acked.len()
    );
    let all_there = || {
        let found = otlp_at_sink(&out);
        acked.iter().all(|body| found.contains_key(*body))
    };
    assert!(
        eventually(Duration::from_secs(30), all_there).await,
        "records the exporter was told were exported are missing at the sink"
    );
    for (body, record) in otlp_at_sink(&out) {
        assert_eq!(
            record.ids.len(),
            1,
            "{body} is stored under more than one id: {:?}",
            record.ids
        );
        assert_eq!(record.key, "checkout", "{body}: the service.name");
    }
    sidelog.kill9().await;
    Ok(())
}

/// The collector `otelcol/main.go` builds.
fn collector() -> Result<PathBuf, Missing> {
    let binary = std::env::var_os("SIDELOG_TEST_OTELCOL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/otelcol/sidelog-otelcol")
        });
    if binary.exists() {
        return Ok(binary);
    }
    Err(Missing(
        "no OpenTelemetry Collector (cd tests/services/otelcol && go build -o \
         ../../../target/otelcol/sidelog-otelcol .)"
            .into(),
    ))
}

/// The application's SDK exports to a Collector, whose `otlp_grpc` exporter (batches, a
/// sending queue, retries) delivers to sidelog; sidelog is SIGKILLed and restarted while the
/// records flow. Every record the Collector took is at the sink, under one id: its retries of
/// a batch sidelog had journaled but not answered are `DUPLICATE`.
pub async fn the_collector_delivers_through_a_sigkill() -> Outcome {
    let python = otel_python()?;
    let collector = collector()?;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut sidelog = Sidelog::new(&data, &["--mode", "hml"]);
    sidelog.start().await;
    let receiver = free_port();
    let config = dir.path().join("collector.yaml");
    let sidelog_addr = sidelog.url().trim_start_matches("http://").to_owned();
    std::fs::write(
        &config,
        format!(
            "receivers:\n  otlp:\n    protocols:\n      grpc:\n        endpoint: {receiver}\n\
             processors:\n  batch:\n    timeout: 50ms\n\
             exporters:\n  otlp_grpc:\n    endpoint: {sidelog_addr}\n    tls:\n      insecure: true\n\
             \x20   retry_on_failure:\n      initial_interval: 100ms\n      max_interval: 1s\n\
             \x20     max_elapsed_time: 0\n\
             service:\n  pipelines:\n    logs:\n      receivers: [otlp]\n      processors: [batch]\n\
             \x20     exporters: [otlp_grpc]\n  telemetry:\n    metrics:\n      level: none\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("collector.log")).unwrap();
    let mut otelcol = tokio::process::Command::new(&collector)
        .arg("--config")
        .arg(format!("file:{}", config.display()))
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("the collector runs");
    let listening = eventually(Duration::from_secs(30), || {
        std::net::TcpStream::connect(receiver).is_ok()
    })
    .await;
    let collector_log = || std::fs::read_to_string(dir.path().join("collector.log")).unwrap();
    assert!(
        listening,
        "the collector does not listen: {}",
        collector_log()
    );

    let count = 3000;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/services/clients/otlp_logs.py");
    let client = tokio::process::Command::new(&python)
        .arg(&script)
        .args(["grpc", &format!("http://{receiver}"), &count.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python runs");
    let out = data.join("out");
    assert!(
        eventually(Duration::from_secs(60), || otlp_at_sink(&out).len() >= 300).await,
        "the records do not arrive through the collector: {}",
        collector_log()
    );
    sidelog.kill9().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    sidelog.start().await;
    let finished = client.wait_with_output().await.expect("python ran");
    let stdout = String::from_utf8_lossy(&finished.stdout);
    assert!(
        finished.status.success() && stdout.contains("done"),
        "the OpenTelemetry client failed: {}",
        String::from_utf8_lossy(&finished.stderr)
    );
    let acked: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("acked "))
        .collect();
    assert_eq!(acked.len(), count, "the collector takes everything");
    let all_there = || {
        let found = otlp_at_sink(&out);
        acked.iter().all(|body| found.contains_key(*body))
    };
    assert!(
        eventually(Duration::from_secs(60), all_there).await,
        "records the collector took are missing at the sink: {}",
        collector_log()
    );
    for (body, record) in otlp_at_sink(&out) {
        assert_eq!(
            record.ids.len(),
            1,
            "{body} under more than one id: {:?}",
            record.ids
        );
        assert_eq!(record.key, "checkout");
    }
    let _ = otelcol.kill().await;
    sidelog.kill9().await;
    Ok(())
}
