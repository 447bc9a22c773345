//! The browser demo page (`examples/browser/index.html`) in a real headless Chromium: Debian's
//! `chromium`, driven by Debian's `chromedriver` over the W3C WebDriver protocol (the protocol
//! Selenium speaks, here as plain HTTP requests: nothing is downloaded, no browser fetches
//! itself). The page publishes with `fetch` (the HTTP door, NDJSON) and gRPC-Web (the gRPC
//! listener), retrying with the same ids; sidelog is SIGKILLed twice while it does; what the page
//! still holds when it goes away leaves by `navigator.sendBeacon`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};

use super::{Missing, Outcome};
use crate::common::{Sidelog, chunk_ids, eventually, free_port, poll_until};
use sidelog_testkit::find_program;

/// A WebDriver session of a headless Chromium, and the `chromedriver` serving it.
struct Browser {
    http: reqwest::Client,
    base: String,
    session: String,
    _driver: tokio::process::Child,
}

impl Browser {
    async fn start(profile: &Path) -> Result<Browser, Missing> {
        let chromium = find_program(&["chromium", "chromium-browser"]).ok_or_else(|| {
            Missing("no chromium (Debian: apt-get install chromium chromium-driver)".into())
        })?;
        let chromedriver = find_program(&["chromedriver"]).ok_or_else(|| {
            Missing("no chromedriver (Debian: apt-get install chromium-driver)".into())
        })?;
        let port = free_port().port();
        let driver = tokio::process::Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let ready = eventually(Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .await;
        assert!(ready, "chromedriver did not listen on {port} within 30 s");
        let mut args = vec![
            "--headless=new".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            format!("--user-data-dir={}", profile.display()),
        ];
        // Chromium's sandbox needs user namespaces a root process in a container may not have.
        if is_root() {
            args.push("--no-sandbox".to_owned());
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        }}});
        let mut browser = Browser {
            http,
            base,
            session: String::new(),
            _driver: driver,
        };
        let answer = browser
            .call(reqwest::Method::POST, "/session", capabilities)
            .await;
        browser.session = answer["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session from chromedriver: {answer}"))
            .to_owned();
        Ok(browser)
    }

    /// One WebDriver command; its `value`.
    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let response = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {path}: {e}"));
        let status = response.status();
        let text = response.text().await.expect("a WebDriver answer");
        let answer: Value = serde_json::from_str(&text).expect("a WebDriver answer is JSON");
        assert!(status.is_success(), "WebDriver {path}: {status} {answer}");
        answer["value"].clone()
    }

    async fn goto(&self, url: &str) {
        let path = format!("/session/{}/url", self.session);
        self.call(reqwest::Method::POST, &path, json!({"url": url}))
            .await;
    }

    /// Runs `script` (a function body: `return …`) in the page; its result.
    async fn eval(&self, script: &str) -> Value {
        let path = format!("/session/{}/execute/sync", self.session);
        self.call(
            reqwest::Method::POST,
            &path,
            json!({"script": script, "args": []}),
        )
        .await
    }

    async fn close(self) {
        let path = format!("/session/{}", self.session);
        self.call(reqwest::Method::DELETE, &path, json!({})).await;
    }
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// Serves the demo page at `/` on `addr`, as any static web server would.
async fn serve_page(addr: SocketAddr) -> tokio::task::JoinHandle<()> {
    let page = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/browser/index.html"),
    )
    .expect("examples/browser/index.html");
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || async move { axum::response::Html(page) }),
    );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("the page's port");
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("the page server");
    })
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("a list, not {value}"))
        .iter()
        .map(|v| v.as_str().expect("a string").to_owned())
        .collect()
}

/// 600 events from the page in 3-event requests, `fetch` and gRPC-Web alternating, sidelog
/// SIGKILLed twice while they go: every event the page saw acked (ACCEPTED, or DUPLICATE for a
/// retry of one whose answer was lost) is at the sink, nothing was rejected, and the events
/// queued when the page goes away arrive by `sendBeacon`.
pub async fn the_demo_page_loses_no_acked_event_across_sigkills() -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let browser = Browser::start(&dir.path().join("profile")).await?;
    let data = dir.path().join("data");
    let page = free_port();
    let http = free_port();
    let origin = format!("http://{page}");
    let mut sidelog = Sidelog::new(
        &data,
        &[
            "--http-listen",
            &http.to_string(),
            "--http-cors-origins",
            &origin,
        ],
    );
    sidelog.start().await;
    let _page_server = serve_page(page).await;
    let total = 600;
    browser
        .goto(&format!(
            "{origin}/?http=http://{http}&grpc={}&auto={total}&batch=3&lanes=2&pace=10",
            sidelog.url()
        ))
        .await;

    for threshold in [100, 300] {
        let acked = poll_until(
            Duration::from_secs(60),
            || format!("the page to have {threshold} events acked"),
            || async {
                let n = browser
                    .eval("return window.sidelogDemo.acked.length")
                    .await
                    .as_u64()
                    .unwrap_or(0);
                (n >= threshold).then_some(n)
            },
        )
        .await;
        let done = browser.eval("return window.sidelogDemo.done").await;
        assert_eq!(
            done, false,
            "the page finished before the kill at {acked} acks: slow it down (pace)"
        );
        sidelog.kill9().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        sidelog.start().await;
    }
    poll_until(
        Duration::from_secs(120),
        || "the page to finish publishing".to_owned(),
        || async { (browser.eval("return window.sidelogDemo.done").await == true).then_some(()) },
    )
    .await;

    let state = browser.eval("return window.sidelogDemo").await;
    assert_eq!(state["rejected"], json!([]), "nothing is refused: {state}");
    let acked = strings(&state["acked"]);
    let unique: HashSet<String> = acked.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        total,
        "every event acked once: {}",
        acked.len()
    );
    assert!(
        state["retries"].as_u64().unwrap_or(0) > 0,
        "the page saw the kills and retried: {}",
        state["retries"]
    );
    assert!(
        state["ackedBy"]["fetch"].as_u64().unwrap_or(0) > 0
            && state["ackedBy"]["grpcWeb"].as_u64().unwrap_or(0) > 0,
        "both doors carried events: {}",
        state["ackedBy"]
    );

    // Events still queued when the page goes away leave by sendBeacon, with the departure.
    let queued = strings(
        &browser
            .eval("window.sidelogDemo.queue(3); return window.sidelogDemo.pending.map(e => e.id)")
            .await,
    );
    assert_eq!(queued.len(), 3);
    browser.goto("about:blank").await;

    let out = data.join("out");
    let mut want = unique;
    want.extend(queued.iter().cloned());
    assert!(
        eventually(Duration::from_secs(60), || chunk_ids(&out)
            .is_superset(&want))
        .await,
        "acked or beaconed but missing at the sink: {:?}",
        want.difference(&chunk_ids(&out))
            .take(10)
            .collect::<Vec<_>>()
    );
    let departures = chunk_ids(&out)
        .into_iter()
        .filter(|id| !want.contains(id))
        .count();
    assert_eq!(departures, 1, "the pagehide event arrives by beacon too");
    browser.close().await;
    sidelog.kill9().await;
    Ok(())
}
