//! The NATS JetStream sink: `--sink nats://HOST:PORT?stream=NAME&subject=TEMPLATE&...`.
//!
//! Every output is published with `Nats-Msg-Id` set to its id and counts as delivered only
//! when JetStream's `PubAck` for it is back. A replay or a retried batch re-publishes the same
//! ids, and JetStream's duplicate window (2 minutes by default, per stream) drops them: within
//! that window, delivery into the stream is effectively once. The subject comes from a
//! template in which `{key}` is the message key (characters other than letters, digits, `-`
//! and `_` become `_`, so a key is always one subject token; an empty key is `_`). Headers are
//! carried over, plus `sidelog-key` and `sidelog-event-time-ms`. A batch's publishes are all
//! sent before the first ack is awaited (pipelined); the client reconnects by itself, with
//! backoff, and sidelog starts even while NATS is unreachable (deliveries wait and retry).
//!
//! Options: `stream=NAME`, `subject=TEMPLATE` (default `sidelog.{key}`), `create=true` (create
//! the stream if missing: file storage, subjects from the template with `{key}` as `*`),
//! `tls=true`, `ca=FILE`, `cert=FILE&key_file=FILE` (client certificate), `creds=FILE`,
//! `token=TOKEN`, `user=NAME&password=PASS`. Secrets are never logged.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage, stream};
use async_nats::{HeaderMap, HeaderName, HeaderValue};
use tracing::{info, warn};

use super::{Batch, Receipt, Sink, SinkError, SinkSetupError};
use crate::proto::Message;
use crate::runtime::BoxFuture;

/// The parsed `nats://` sink URL.
#[derive(Clone, PartialEq, Eq)]
pub struct NatsSinkConfig {
    /// `HOST:PORT`, or several separated by commas.
    pub servers: String,
    pub stream: Option<String>,
    pub subject: String,
    pub create: bool,
    pub tls: bool,
    pub ca: Option<PathBuf>,
    pub cert: Option<(PathBuf, PathBuf)>,
    pub creds: Option<PathBuf>,
    pub token: Option<String>,
    pub user: Option<(String, String)>,
}

impl std::fmt::Debug for NatsSinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets stay out of logs and error messages.
        f.debug_struct("NatsSinkConfig")
            .field("servers", &self.servers)
            .field("stream", &self.stream)
            .field("subject", &self.subject)
            .field("create", &self.create)
            .field("tls", &self.tls)
            .field("creds", &self.creds)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .finish()
    }
}

const DEFAULT_SUBJECT: &str = "sidelog.{key}";

impl NatsSinkConfig {
    pub fn parse(url: &str) -> Result<NatsSinkConfig, String> {
        let rest = url
            .strip_prefix("nats://")
            .ok_or_else(|| "expected nats://HOST:PORT[?stream=NAME&subject=...]".to_owned())?;
        let (servers, query) = rest.split_once('?').unwrap_or((rest, ""));
        if servers.is_empty() || servers.split(',').any(|s| !s.contains(':')) {
            return Err("give the server as HOST:PORT".into());
        }
        let mut c = NatsSinkConfig {
            servers: servers.to_owned(),
            stream: None,
            subject: DEFAULT_SUBJECT.into(),
            create: false,
            tls: false,
            ca: None,
            cert: None,
            creds: None,
            token: None,
            user: None,
        };
        let (mut cert, mut key, mut user, mut password) = (None, None, None, None);
        for (k, v) in crate::url_options::options(query)? {
            let v = v.as_str();
            match k {
                "stream" => c.stream = Some(v.to_owned()),
                "subject" => c.subject = v.to_owned(),
                "create" => c.create = crate::url_options::flag(k, v)?,
                "tls" => c.tls = crate::url_options::flag(k, v)?,
                "ca" => c.ca = Some(v.into()),
                "cert" => cert = Some(PathBuf::from(v)),
                "key_file" => key = Some(PathBuf::from(v)),
                "creds" => c.creds = Some(v.into()),
                "token" => c.token = Some(v.to_owned()),
                "user" => user = Some(v.to_owned()),
                "password" => password = Some(v.to_owned()),
                _ => {
                    return Err(format!(
                        "unknown option {k:?} (stream, subject, create, tls, ca, cert, key_file, creds, token, user, password)"
                    ));
                }
            }
        }
        c.cert = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => return Err("cert and key_file go together".into()),
        };
        c.user = match (user, password) {
            (Some(u), Some(p)) => Some((u, p)),
            (None, None) => None,
            _ => return Err("user and password go together".into()),
        };
        if c.create && c.stream.is_none() {
            return Err("create=true needs stream=NAME".into());
        }
        // The template must make valid subjects for any key.
        let probe = c.subject.replace("{key}", "k");
        if probe.is_empty()
            || probe
                .split('.')
                .any(|t| t.is_empty() || t.contains(['*', '>', ' ', '\t']))
        {
            return Err(format!(
                "subject {:?} is not a valid subject template (dot-separated tokens; {{key}} is the key)",
                c.subject
            ));
        }
        Ok(c)
    }

    /// The subject for messages with `key`.
    pub fn subject_for(&self, key: &str) -> String {
        if !self.subject.contains("{key}") {
            return self.subject.clone();
        }
        let token: String = if key.is_empty() {
            "_".into()
        } else {
            key.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect()
        };
        self.subject.replace("{key}", &token)
    }
}

/// Delivers into a JetStream stream (see the module docs).
#[derive(Clone)]
pub struct NatsSink {
    js: jetstream::Context,
    config: Arc<NatsSinkConfig>,
    timeout: Duration,
}

impl NatsSink {
    /// Connects (in the background if NATS is unreachable now) and, with `create=true`,
    /// creates the stream if it is missing.
    pub async fn connect(
        config: NatsSinkConfig,
        timeout: Duration,
    ) -> Result<NatsSink, SinkSetupError> {
        let mut options = async_nats::ConnectOptions::new()
            .name("sidelog")
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .require_tls(config.tls);
        if let Some(ca) = &config.ca {
            options = options.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &config.cert {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        if let Some(creds) = &config.creds {
            options = options.credentials_file(creds).await.map_err(|e| {
                SinkSetupError::caused(format!("reading NATS credentials {}", creds.display()), e)
            })?;
        }
        if let Some(token) = &config.token {
            options = options.token(token.clone());
        }
        if let Some((user, password)) = &config.user {
            options = options.user_and_password(user.clone(), password.clone());
        }
        let servers: Vec<String> = config.servers.split(',').map(str::to_owned).collect();
        let client = options.connect(servers).await.map_err(|e| {
            SinkSetupError::caused(format!("connecting to NATS at {}", config.servers), e)
        })?;
        let mut js = jetstream::new(client);
        js.set_timeout(timeout);
        if config.create {
            let name = config
                .stream
                .clone()
                .expect("parse checks create needs a stream");
            let subjects = vec![config.subject.replace("{key}", "*")];
            // NATS may not be up yet: creation is retried by the first deliveries instead of
            // blocking start-up.
            match js
                .get_or_create_stream(stream::Config {
                    name: name.clone(),
                    subjects: subjects.clone(),
                    storage: stream::StorageType::File,
                    ..Default::default()
                })
                .await
            {
                Ok(_) => info!(stream = %name, ?subjects, "JetStream stream ready"),
                Err(e) => {
                    return Err(SinkSetupError::caused(
                        format!("cannot create the JetStream stream {name}"),
                        e,
                    ));
                }
            }
        } else {
            // Not refused (the stream may be made later, NATS may come up later), but said at
            // once: otherwise every delivery fails with "no stream found".
            crate::runtime::spawn(check_stream(js.clone(), config.clone()));
        }
        Ok(NatsSink {
            js,
            config: Arc::new(config),
            timeout,
        })
    }
}

/// Says whether a stream captures the sink's subjects (and is the one named, if one is).
async fn check_stream(js: jetstream::Context, config: NatsSinkConfig) {
    let probe = config.subject.replace("{key}", "k");
    let found = tokio::time::timeout(Duration::from_secs(10), js.stream_by_subject(probe.clone()));
    let found = found.await;
    let up = matches!(found, Ok(Ok(_)));
    metrics::gauge!(crate::metrics::SINK_UP).set(if up { 1.0 } else { 0.0 });
    match (found, &config.stream) {
        (Ok(Ok(name)), Some(want)) if name != *want => warn!(
            subject = %probe,
            stream = %name,
            expected = %want,
            "the NATS sink's subject is captured by another stream than the one named"
        ),
        (Ok(Ok(name)), _) => info!(stream = %name, subject = %probe, "JetStream stream found"),
        (Ok(Err(e)), _) => warn!(
            subject = %probe,
            error = %e,
            "no JetStream stream captures the NATS sink's subject; deliveries fail until one \
             does (create it, or add stream=NAME&create=true to the sink URL)"
        ),
        (Err(_), _) => warn!(
            servers = %config.servers,
            "NATS did not answer within 10 s; deliveries are retried until it does"
        ),
    }
}

/// The NATS headers of a message: its own, then sidelog's (`Nats-Msg-Id`, key, event time).
fn headers(m: &Message) -> Result<HeaderMap, SinkError> {
    let mut headers = HeaderMap::new();
    let mut put = |name: &str, value: &str| -> Result<(), SinkError> {
        let n = HeaderName::from_str(name).map_err(|e| {
            SinkError::refused(format!("header {name:?} cannot be sent to NATS: {e}"))
        })?;
        let v = HeaderValue::from_str(value).map_err(|e| {
            SinkError::refused(format!("header {name:?} cannot be sent to NATS: {e}"))
        })?;
        headers.insert(n, v);
        Ok(())
    };
    for (name, value) in &m.headers {
        put(name, value)?;
    }
    put("Nats-Msg-Id", &m.id)?;
    if !m.key.is_empty() {
        put("sidelog-key", &m.key)?;
    }
    if m.event_time_ms != 0 {
        put("sidelog-event-time-ms", &m.event_time_ms.to_string())?;
    }
    Ok(headers)
}

impl Sink for NatsSink {
    fn deliver(&self, batch: Batch) -> BoxFuture<'static, Result<Receipt, SinkError>> {
        let this = self.clone();
        Box::pin(async move {
            let publish_all = async {
                let mut acks = Vec::with_capacity(batch.len());
                for m in batch.messages.iter() {
                    let publish = PublishMessage::build()
                        .payload(m.payload.clone())
                        .headers(headers(m)?);
                    let ack = this
                        .js
                        .send_publish(this.config.subject_for(&m.key), publish)
                        .await
                        .map_err(|e| {
                            let reason = format!("publishing to NATS: {e}");
                            match e.kind() {
                                // Over the server's max_payload: it never fits.
                                async_nats::jetstream::context::PublishErrorKind::MaxPayloadExceeded => {
                                    SinkError::refused(reason)
                                }
                                _ => SinkError::retry(reason),
                            }
                        })?;
                    acks.push(ack);
                }
                for ack in acks {
                    ack.await
                        .map_err(|e| SinkError::retry(format!("no JetStream ack: {e}")))?;
                }
                Ok(Receipt::none())
            };
            tokio::time::timeout(this.timeout, publish_all)
                .await
                .unwrap_or_else(|_| {
                    Err(SinkError::retry(format!(
                        "JetStream did not ack within {:?}",
                        this.timeout
                    )))
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls_and_names_what_is_wrong() {
        let c = NatsSinkConfig::parse(
            "nats://127.0.0.1:4222?stream=EVENTS&subject=events.{key}&create=true&token=s3cret",
        )
        .unwrap();
        assert_eq!(c.stream.as_deref(), Some("EVENTS"));
        assert!(c.create);
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "the token is never printed"
        );
        assert_eq!(c.subject_for("user 42.eu"), "events.user_42_eu");
        assert_eq!(c.subject_for(""), "events._");
        let plain = NatsSinkConfig::parse("nats://127.0.0.1:4222").unwrap();
        assert_eq!(plain.subject_for("k"), "sidelog.k");
        for (url, why) in [
            ("http://x:1", "expected nats://"),
            ("nats://host", "HOST:PORT"),
            ("nats://h:1?create=true", "needs stream"),
            ("nats://h:1?subject=a..b", "not a valid subject"),
            ("nats://h:1?subject=a.>", "not a valid subject"),
            ("nats://h:1?color=red", "unknown option"),
            ("nats://h:1?user=a", "go together"),
            ("nats://h:1?tls=maybe", "true or false"),
        ] {
            let err = NatsSinkConfig::parse(url).unwrap_err();
            assert!(err.contains(why), "{url}: {err}");
        }
    }

    #[test]
    fn headers_carry_the_id_and_refuse_what_nats_cannot_hold() {
        let mut m = Message {
            id: "a/0".into(),
            key: "k".into(),
            event_time_ms: 7,
            ..Default::default()
        };
        m.headers.insert("sidelog-seq".into(), "12".into());
        let h = headers(&m).unwrap();
        assert_eq!(h.get("Nats-Msg-Id").map(|v| v.as_str()), Some("a/0"));
        assert_eq!(h.get("sidelog-seq").map(|v| v.as_str()), Some("12"));
        assert_eq!(
            h.get("sidelog-event-time-ms").map(|v| v.as_str()),
            Some("7")
        );
        m.headers.insert("bad".into(), "line\nbreak".into());
        assert!(headers(&m).is_err());
    }
}
