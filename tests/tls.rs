//! TLS and mutual TLS on the ingest listener, the HTTP door and the forward door, against the
//! real binary, with certificates made by the test (rcgen): a TLS client with the CA gets in; with
//! `--tls-client-ca-file` only a client certificate signed by that CA does; plaintext never
//! does.

mod common;

use std::path::Path;
use std::time::Duration;

use common::Sidelog;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use sidelog::proto::ingest_client::IngestClient;
use sidelog::proto::{Message, PublishRequest, ack};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String),
    stranger: (String, String),
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let stranger_key = KeyPair::generate().unwrap();
    let stranger = CertificateParams::new(vec!["stranger".to_string()])
        .unwrap()
        .self_signed(&stranger_key)
        .unwrap();
    Pki {
        ca: ca_cert.pem(),
        server: leaf(vec!["localhost".into()]),
        client: leaf(vec!["producer".into()]),
        stranger: (stranger.pem(), stranger_key.serialize_pem()),
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// A publish over TLS to `sidelog`, with this client identity (if any).
async fn publish(
    sidelog: &Sidelog,
    ca: &str,
    identity: Option<&(String, String)>,
    id: &str,
) -> Result<ack::Status, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Channel::from_shared(format!("https://{}", sidelog.addr))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let acks = IngestClient::new(channel)
        .publish(PublishRequest {
            messages: vec![Message {
                id: id.into(),
                payload: b"x".to_vec().into(),
                ..Default::default()
            }],
        })
        .await
        .map_err(|e| format!("{e:?}"))?
        .into_inner()
        .acks;
    Ok(ack::Status::try_from(acks[0].status).unwrap())
}

/// `POST /v1/publish` (one NDJSON line) to the HTTP door at `addr` over TLS (rustls, HTTP/1.1),
/// with this client identity (if any): the status and the body.
async fn https_post(
    addr: std::net::SocketAddr,
    ca: &str,
    identity: Option<&(String, String)>,
    line: &str,
) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await?;
        let request = format!(
            "POST /v1/publish HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/x-ndjson\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{line}",
            line.len()
        );
        tls.write_all(request.as_bytes()).await?;
        let mut answer = String::new();
        tls.read_to_string(&mut answer).await?;
        std::io::Result::Ok(answer)
    };
    let answer = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no HTTP answer: {answer:?}"))?;
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
    Ok((status, body.unwrap_or_default()))
}

/// Polls with a TLS client until sidelog answers (the harness's own check is plaintext).
async fn wait_tls(sidelog: &Sidelog, ca: &str, identity: Option<&(String, String)>) {
    for i in 0..300 {
        if publish(sidelog, ca, identity, &format!("probe-{i}"))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "sidelog did not answer over TLS; log:\n{}",
        sidelog.log_tail()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_mutual_tls_let_in_only_who_they_should() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let cert = write(dir.path(), "server.pem", &pki.server.0);
    let key = write(dir.path(), "server.key", &pki.server.1);
    let ca = write(dir.path(), "ca.pem", &pki.ca);

    // TLS: any client that trusts the CA, on the gRPC listener and on the HTTP door.
    let http = common::free_port();
    let http_text = http.to_string();
    let mut tls = Sidelog::new(
        &dir.path().join("tls"),
        &[
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--http-listen",
            &http_text,
        ],
    );
    tls.spawn();
    wait_tls(&tls, &pki.ca, None).await;
    assert_eq!(
        publish(&tls, &pki.ca, None, "a").await,
        Ok(ack::Status::Accepted)
    );
    let (code, body) = https_post(http, &pki.ca, None, "{\"id\":\"h-a\"}")
        .await
        .expect("the HTTP door answers over TLS");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"ACCEPTED\""), "{body}");
    let plain = reqwest::Client::new()
        .post(format!("http://{http}/v1/publish"))
        .body("{}")
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(
        plain.is_err(),
        "plaintext HTTP gets no answer from the door over TLS: {plain:?}"
    );
    assert_eq!(
        tls.health().await,
        None,
        "plaintext gets no answer from a TLS listener"
    );
    tls.kill9().await;

    // mTLS: only clients with a certificate from the CA.
    let http = common::free_port();
    let http_text = http.to_string();
    let mut mtls = Sidelog::new(
        &dir.path().join("mtls"),
        &[
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-client-ca-file",
            &ca,
            "--http-listen",
            &http_text,
        ],
    );
    mtls.spawn();
    wait_tls(&mtls, &pki.ca, Some(&pki.client)).await;
    assert_eq!(
        publish(&mtls, &pki.ca, Some(&pki.client), "b").await,
        Ok(ack::Status::Accepted)
    );
    let anonymous = publish(&mtls, &pki.ca, None, "c").await;
    assert!(
        anonymous.is_err(),
        "no client certificate got in: {anonymous:?}"
    );
    let stranger = publish(&mtls, &pki.ca, Some(&pki.stranger), "d").await;
    assert!(
        stranger.is_err(),
        "a certificate from another CA got in: {stranger:?}"
    );
    assert_eq!(mtls.health().await, None);
    let line = "{\"id\":\"h-b\"}";
    let (code, body) = https_post(http, &pki.ca, Some(&pki.client), line)
        .await
        .expect("the HTTP door answers a client with a certificate");
    assert_eq!(code, 200, "{body}");
    for who in [None, Some(&pki.stranger)] {
        let refused = https_post(http, &pki.ca, who, line).await;
        assert!(
            refused.is_err(),
            "the HTTP door let in {who:?}: {refused:?}"
        );
    }
    assert!(
        !mtls.log().contains("PRIVATE KEY"),
        "no key material in the log"
    );
    mtls.kill9().await;
}

#[test]
fn a_half_tls_configuration_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sidelog"))
        .env("SIDELOG_ADMIN_LISTEN", "127.0.0.1:0")
        .args(["serve", "--data-dir"])
        .arg(dir.path().join("data"))
        .args([
            "--listen",
            "127.0.0.1:1",
            "--tls-cert-file",
            "/nonexistent.pem",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("tls_key_file"), "{stderr}");
}

/// One acked Forward-mode frame over TLS to the forward door at `addr`: the ack's chunk id.
async fn forward_over_tls(addr: std::net::SocketAddr, ca: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let record = rmpv::Value::Map(vec![("log".into(), "over tls".into())]);
    let frame = rmpv::Value::Array(vec![
        "secure.app".into(),
        rmpv::Value::Array(vec![rmpv::Value::Array(vec![1_700_000_000.into(), record])]),
        rmpv::Value::Map(vec![("chunk".into(), "dGxzLTE=".into())]),
    ]);
    let mut bytes = Vec::new();
    rmpv::encode::write_value(&mut bytes, &frame).unwrap();
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await?;
        tls.write_all(&bytes).await?;
        let mut answer = vec![0u8; 64];
        let n = tls.read(&mut answer).await?;
        std::io::Result::Ok(answer[..n].to_vec())
    };
    let answer = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let value = rmpv::decode::read_value(&mut &answer[..]).map_err(|e| e.to_string())?;
    value
        .as_map()
        .and_then(|m| m.iter().find(|(k, _)| k.as_str() == Some("ack")))
        .and_then(|(_, v)| v.as_str().map(str::to_owned))
        .ok_or_else(|| format!("not an ack: {value}"))
}

/// The forward door serves TLS with the listeners' certificate (Fluent Bit's `tls on`,
/// Fluentd's `transport tls`): a client trusting the CA gets its ack; plaintext gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forward_door_speaks_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let cert = write(dir.path(), "server.pem", &pki.server.0);
    let key = write(dir.path(), "server.key", &pki.server.1);
    let forward = common::free_port();
    let forward_text = forward.to_string();
    let mut sidelog = Sidelog::new(
        &dir.path().join("data"),
        &[
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--forward-listen",
            &forward_text,
        ],
    );
    sidelog.spawn();
    wait_tls(&sidelog, &pki.ca, None).await;
    assert_eq!(
        forward_over_tls(forward, &pki.ca).await.as_deref(),
        Ok("dGxzLTE=")
    );
    // Plaintext: the TLS handshake fails, the connection closes, nothing is taken.
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut plain = tokio::net::TcpStream::connect(forward).await.unwrap();
    let frame = [0x92, 0xa1, b't', 0x90];
    plain.write_all(&frame).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
    assert!(
        matches!(read, Ok(Ok(_)) | Ok(Err(_))),
        "closed, not left open"
    );
    // (What comes back, if anything, is a TLS alert, not a msgpack map.)
    let ack = rmpv::decode::read_value(&mut &answer[..]).ok();
    assert!(
        ack.is_none_or(|v| v.as_map().is_none()),
        "no ack in plaintext: {answer:?}"
    );
    sidelog.kill9().await;
}
