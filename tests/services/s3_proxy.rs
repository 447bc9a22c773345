//! A fault-injecting HTTP proxy in front of moto: it forwards every S3 request, and on command
//! loses the answer of an object upload (after moto stored it) or fails a multipart part. It
//! records what it saw, so a test can check that sidelog asked (HEAD) or cleaned up (abort).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// What the proxy does to the next requests.
#[derive(Debug, Default)]
pub struct Faults {
    /// Single-request object uploads (PUT without a query) whose answer is lost after moto
    /// stored the object: the connection is closed without a response.
    pub lose_put_answers: AtomicU32,
    /// Attempts at part 1 of a multipart upload answered 500 without reaching moto.
    pub fail_parts: AtomicU32,
    /// Every request seen: method, path and query, and what happened to it.
    pub seen: Mutex<Vec<String>>,
}

impl Faults {
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().expect("never held across a panic").clone()
    }

    fn note(&self, line: String) {
        self.seen
            .lock()
            .expect("never held across a panic")
            .push(line);
    }
}

/// Serves the proxy on a loopback port in front of `upstream`; returns its endpoint URL.
pub async fn start(upstream: SocketAddr, faults: Arc<Faults>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port for the S3 proxy");
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    let client = reqwest::Client::new();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (client, faults) = (client.clone(), faults.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    forward(request, upstream, client.clone(), faults.clone())
                });
                // A lost answer ends the connection with an error: that is the point.
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

async fn forward(
    request: Request<Incoming>,
    upstream: SocketAddr,
    client: reqwest::Client,
    faults: Arc<Faults>,
) -> Result<Response<Full<Bytes>>, String> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("reading the request body: {e}"))?
        .to_bytes();
    let target = parts
        .uri
        .path_and_query()
        .map_or("/".to_string(), |p| p.to_string());
    let query = parts.uri.query().unwrap_or_default().to_string();
    let line = format!("{} {target}", parts.method);
    let is_part =
        parts.method == hyper::Method::PUT && query.split('&').any(|kv| kv == "partNumber=1");
    if is_part && take(&faults.fail_parts) {
        faults.note(format!("{line} -> failed by the proxy"));
        return Ok(Response::builder()
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .body(Full::new(Bytes::from_static(
                b"<Error><Code>InternalError</Code></Error>",
            )))
            .expect("a valid response"));
    }
    let mut headers = parts.headers.clone();
    headers.remove(hyper::header::HOST);
    let answer = client
        .request(parts.method.clone(), format!("http://{upstream}{target}"))
        .headers(headers)
        .body(body)
        .send()
        .await
        .map_err(|e| format!("forwarding to moto: {e}"))?;
    let status = answer.status();
    let answer_headers = answer.headers().clone();
    let answer_body = answer
        .bytes()
        .await
        .map_err(|e| format!("reading moto's answer: {e}"))?;
    let plain_put = parts.method == hyper::Method::PUT && query.is_empty();
    if plain_put && status.is_success() && take(&faults.lose_put_answers) {
        faults.note(format!("{line} -> {status}, answer lost"));
        return Err("answer lost by the proxy".into());
    }
    faults.note(format!("{line} -> {status}"));
    let mut response = Response::builder().status(status);
    for (name, value) in &answer_headers {
        if name != hyper::header::TRANSFER_ENCODING && name != hyper::header::CONNECTION {
            response = response.header(name, value);
        }
    }
    Ok(response
        .body(Full::new(answer_body))
        .expect("headers copied from a valid response"))
}

/// Takes one from `n` if it is not zero.
fn take(n: &AtomicU32) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
        .is_ok()
}
