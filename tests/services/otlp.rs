//! The OTLP door with OpenTelemetry's own exporters: the Python SDK's `OTLPLogExporter` over
//! gRPC and over HTTP (PyPI `opentelemetry-sdk`, `opentelemetry-exporter-otlp-proto-grpc`,
//! `-http`; `.ci/run` installs them into `target/otel-venv`, `SIDELOG_TEST_OTEL_PYTHON` may
//! name another Python), an application logging through `logging` while sidelog is SIGKILLed
//! and restarted. Every record the exporter reported exported is at the sink, under one id.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{Missing, Outcome};
use crate::common::{Sidelog, eventually, free_port, otlp_at_sink};

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
    assert!(
        eventually(Duration::from_secs(60), || otlp_at_sink(&out).len() >= 300).await,
        "the application's records do not arrive"
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
