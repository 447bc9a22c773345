//! The HTTP door as log shippers and scripts reach it: `curl` posting a 100,000-line NDJSON
//! file (what Vector's and Fluent Bit's `http` outputs send, reproduced byte for byte), and a
//! Python client (the standard library's `urllib`) reading every status code it can get.
//! Needs `curl` and `python3` on `PATH`.

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::{Missing, Outcome};
use crate::common::{Sidelog, chunk_ids, eventually, free_port};

fn tool(name: &str) -> Result<(), Missing> {
    match Command::new(name).arg("--version").output() {
        Ok(out) if out.status.success() => Ok(()),
        _ => Err(Missing(format!(
            "no {name} on PATH (Debian: apt-get install {name})"
        ))),
    }
}

/// `curl` POSTing `file` as NDJSON: (HTTP status, body).
fn curl_ndjson(port: std::net::SocketAddr, file: &Path) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}"])
        .args(["-H", "content-type: application/x-ndjson"])
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(format!("http://{port}/v1/publish"))
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("the status after the body");
    (code.trim().parse().expect("a status code"), body.to_owned())
}

/// 100,000 NDJSON lines in one request from a file, acked one by one; the shipper's retry of
/// the whole file is all `DUPLICATE`; every line reaches the sink.
pub async fn a_100k_line_ndjson_file_from_curl_is_acked_and_delivered() -> Outcome {
    tool("curl")?;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let port_text = port.to_string();
    let mut sidelog = Sidelog::new(
        &data,
        &[
            "--http-listen",
            &port_text,
            "--limits-max-messages-per-request",
            "100000",
            "--http-ndjson-key-field",
            "host",
        ],
    );
    sidelog.start().await;
    let lines = 100_000;
    let file = dir.path().join("events.ndjson");
    let ndjson: String = (0..lines)
        .map(|i| {
            format!(
                "{{\"id\":\"ev-{i}\",\"host\":\"web-{}\",\"level\":\"info\",\"message\":\"request {i} served\"}}\n",
                i % 7
            )
        })
        .collect();
    std::fs::write(&file, ndjson).unwrap();

    let (code, body) = curl_ndjson(port, &file);
    assert_eq!(code, 200, "{}", &body[..body.len().min(500)]);
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let acks = answer["acks"].as_array().unwrap();
    assert_eq!(acks.len(), lines);
    assert!(acks.iter().all(|a| a["status"] == "ACCEPTED"));
    assert_eq!(acks[41]["id"], "ev-41");

    let (code, body) = curl_ndjson(port, &file);
    assert_eq!(code, 200);
    let again: serde_json::Value = serde_json::from_str(&body).unwrap();
    let again = again["acks"].as_array().unwrap();
    assert!(again.iter().all(|a| a["status"] == "DUPLICATE"));
    assert_eq!(again[41]["sequence"], acks[41]["sequence"]);

    let want: HashSet<String> = (0..lines).map(|i| format!("ev-{i}")).collect();
    let out = data.join("out");
    assert!(
        eventually(Duration::from_secs(120), || chunk_ids(&out) == want).await,
        "{} of {lines} lines at the sink",
        chunk_ids(&out).len()
    );
    sidelog.kill9().await;
    Ok(())
}

/// The client a script would write, in Python's standard library: 200 with acks, 400 with the
/// reason, 401 without the token, 413 over the size limit, 429 with `Retry-After` when the
/// backlog is full.
const PYTHON_CLIENT: &str = r#"
import json, sys, urllib.request, urllib.error
url, token = sys.argv[1], sys.argv[2]
def post(body, content_type="application/json", auth=True):
    req = urllib.request.Request(url, data=body.encode(), method="POST",
                                 headers={"content-type": content_type})
    if auth:
        req.add_header("authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers.get("retry-after"), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("retry-after"), json.loads(e.read())
results = {
    "ok": post(json.dumps({"messages": [{"id": "py-1", "payload": "aGk="}]})),
    "malformed": post("{not json"),
    "no_token": post('{"messages":[{"id":"py-2"}]}', auth=False),
    "too_large": post(json.dumps({"messages": [{"id": "py-3", "payload": "QUFB" * 3000}]})),
    "fills": post(json.dumps({"messages": [{"id": "py-4", "payload": "QUFB" * 2000}]})),
    "full": post(json.dumps({"messages": [{"id": "py-5", "payload": "aGk="}]})),
}
print(json.dumps(results))
"#;

pub async fn a_python_client_gets_every_status_it_should() -> Outcome {
    tool("python3")?;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    let token = "0123456789abcdef0123";
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let port = free_port();
    let port_text = port.to_string();
    // The sink is down and the backlog small, so that a 429 can be had.
    let mut sidelog = Sidelog::new(
        &dir.path().join("data"),
        &[
            "--http-listen",
            &port_text,
            "--auth-token-file",
            token_file.to_str().unwrap(),
            "--limits-max-request-bytes",
            "10000",
            "--limits-max-message-bytes",
            "10000",
            "--limits-max-backlog-bytes",
            "4096",
            "--sink",
            "http://127.0.0.1:1",
        ],
    );
    sidelog.start().await;
    let script = dir.path().join("client.py");
    std::fs::write(&script, PYTHON_CLIENT).unwrap();
    let out = Command::new("python3")
        .arg(&script)
        .arg(format!("http://{port}/v1/publish"))
        .arg(token)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let status = |name: &str| results[name][0].as_u64().unwrap();
    assert_eq!(status("ok"), 200, "{results}");
    assert_eq!(results["ok"][2]["acks"][0]["status"], "ACCEPTED");
    assert_eq!(status("malformed"), 400, "{results}");
    assert!(results["malformed"][2]["error"].as_str().unwrap().len() > 5);
    assert_eq!(status("no_token"), 401, "{results}");
    assert_eq!(status("too_large"), 413, "{results}");
    assert_eq!(status("fills"), 200, "{results}");
    assert_eq!(status("full"), 429, "{results}");
    assert_eq!(results["full"][1], "1", "Retry-After: {results}");
    sidelog.kill9().await;
    Ok(())
}
