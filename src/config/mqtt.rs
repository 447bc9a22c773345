//! `mqtt_source`, parsed: the broker, the topic filters and the session the MQTT door
//! (`service/mqtt.rs`) subscribes with. The URL's scheme, host and port are read by the `url`
//! crate; its options by `url_options.rs` (`%`-escapes decoded: `#` is `%23`; `+`, a topic
//! filter's wildcard, stays `+`).

use std::path::PathBuf;

/// What `mqtt_source` says, parsed.
#[derive(Clone, PartialEq, Eq)]
pub struct MqttSource {
    pub host: String,
    pub port: u16,
    /// Topic filters (`#` and `+` wildcards), at least one.
    pub topics: Vec<String>,
    pub client_id: String,
    pub user: Option<(String, String)>,
    pub tls: bool,
    /// PEM file of the CA that signs the broker's certificate (else the system's roots).
    pub ca: Option<PathBuf>,
    /// How long the broker keeps the session (and the messages for it) while sidelog is away.
    pub session_expiry_s: u32,
    /// The in-flight window: unacknowledged messages the broker may send at once.
    pub receive_maximum: u16,
    pub keep_alive_s: u16,
}

impl std::fmt::Debug for MqttSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttSource")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("topics", &self.topics)
            .field("client_id", &self.client_id)
            .field("user", &self.user.as_ref().map(|(u, _)| (u, "<redacted>")))
            .field("tls", &self.tls)
            .field("ca", &self.ca)
            .field("session_expiry_s", &self.session_expiry_s)
            .field("receive_maximum", &self.receive_maximum)
            .field("keep_alive_s", &self.keep_alive_s)
            .finish()
    }
}

const OPTIONS: &str = "topics, client_id, qos, user, password, tls, ca, session_expiry_s, \
                       receive_maximum, keep_alive_s";

impl MqttSource {
    /// `mqtt://HOST:PORT?topics=devices/%23&client_id=ID[&qos=1][&user=U&password=P]
    /// [&tls=true&ca=FILE][&session_expiry_s=N][&receive_maximum=N][&keep_alive_s=N]`;
    /// `mqtts://` is `tls=true`. `topics` may repeat, or list filters separated by commas.
    pub fn parse(text: &str) -> Result<MqttSource, String> {
        let url = url::Url::parse(text).map_err(|e| {
            format!("{e}: expected mqtt://HOST:PORT?topics=…&client_id=… or mqtts://… ({OPTIONS})")
        })?;
        let mut source = MqttSource::broker(&url)?;
        let (mut user, mut password) = (None, None);
        for (k, v) in crate::url_options::options(url.query().unwrap_or(""))? {
            match k {
                "user" => user = Some(v),
                "password" => password = Some(v),
                _ => source.set(k, v)?,
            }
        }
        source.user = match (user, password) {
            (Some(u), Some(p)) => Some((u, p)),
            (Some(u), None) => Some((u, String::new())),
            (None, None) => None,
            (None, Some(_)) => return Err("password needs user".into()),
        };
        source.check()?;
        Ok(source)
    }

    /// The scheme, host and port, with every option at its default.
    fn broker(url: &url::Url) -> Result<MqttSource, String> {
        let tls = match url.scheme() {
            "mqtt" => false,
            "mqtts" => true,
            _ => {
                return Err(format!(
                    "expected mqtt://HOST:PORT?topics=…&client_id=… or mqtts://… ({OPTIONS})"
                ));
            }
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err("give the credentials as user= and password=, not in the address".into());
        }
        let host = url.host_str().unwrap_or_default();
        let port = url.port().unwrap_or(0);
        if host.is_empty() || port == 0 || !matches!(url.path(), "" | "/") {
            return Err("give the broker as HOST:PORT".into());
        }
        Ok(MqttSource {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
            topics: Vec::new(),
            client_id: String::new(),
            user: None,
            tls,
            ca: None,
            session_expiry_s: 86_400,
            receive_maximum: 256,
            keep_alive_s: 30,
        })
    }

    /// One option of the query (not the credentials).
    fn set(&mut self, k: &str, v: String) -> Result<(), String> {
        let number = |min: u64, max: u64| -> Result<u64, String> {
            v.parse::<u64>()
                .ok()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| format!("{k}={v:?}: expected a number from {min} to {max}"))
        };
        match k {
            "topics" | "topic" => self
                .topics
                .extend(v.split(',').map(|t| t.trim().to_owned())),
            "client_id" => self.client_id = v,
            "qos" if v == "1" => {}
            "qos" => {
                return Err(format!(
                    "qos={v}: only 1 is taken (0 can lose messages before sidelog has them; \
                     1 with manual acknowledgement cannot)"
                ));
            }
            "tls" => self.tls = crate::url_options::flag(k, &v)?,
            "ca" => self.ca = Some(v.into()),
            "session_expiry_s" => self.session_expiry_s = number(1, u64::from(u32::MAX))? as u32,
            "receive_maximum" => self.receive_maximum = number(1, 65_535)? as u16,
            "keep_alive_s" => self.keep_alive_s = number(5, 65_535)? as u16,
            _ => return Err(format!("unknown option {k:?} ({OPTIONS})")),
        }
        Ok(())
    }

    /// The rules between options.
    fn check(&self) -> Result<(), String> {
        if self.topics.is_empty() || self.topics.iter().any(|t| !valid_filter(t)) {
            return Err(format!(
                "topics={:?}: give one or more topic filters, e.g. topics=devices/%23 (# is %23 \
                 in a URL; + and # only as whole levels, # last)",
                self.topics
            ));
        }
        if self.client_id.is_empty() {
            return Err(
                "client_id is needed: the broker keeps sidelog's session (and the messages not \
                 yet acknowledged) under it across restarts"
                    .into(),
            );
        }
        if self.ca.is_some() && !self.tls {
            return Err("ca is for TLS: use mqtts:// or tls=true".into());
        }
        Ok(())
    }
}

/// A topic filter MQTT accepts: `+` and `#` only as whole levels, `#` only last.
fn valid_filter(filter: &str) -> bool {
    let levels: Vec<&str> = filter.split('/').collect();
    !filter.is_empty()
        && levels.iter().enumerate().all(|(i, level)| {
            (!level.contains('+') || *level == "+")
                && (!level.contains('#') || (*level == "#" && i == levels.len() - 1))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls_and_names_what_is_wrong() {
        let s = MqttSource::parse(
            "mqtt://127.0.0.1:1883?topics=devices/%23&topics=a/+/b&client_id=side-1&qos=1\
             &user=u&password=p&receive_maximum=16",
        )
        .unwrap();
        assert_eq!(s.host, "127.0.0.1");
        assert_eq!(s.port, 1883);
        assert_eq!(s.topics, ["devices/#", "a/+/b"]);
        assert_eq!(s.client_id, "side-1");
        assert_eq!(s.user, Some(("u".into(), "p".into())));
        assert_eq!(s.receive_maximum, 16);
        assert!(!s.tls);
        assert!(
            !format!("{s:?}").contains("\"p\""),
            "the password is not shown"
        );
        assert!(
            MqttSource::parse("mqtts://b:8883?topics=x&client_id=c")
                .unwrap()
                .tls
        );
        let bad = [
            ("http://b:1?topics=x&client_id=c", "mqtt://"),
            ("mqtt://b?topics=x&client_id=c", "HOST:PORT"),
            ("mqtt://b:1?client_id=c", "topics"),
            ("mqtt://b:1?topics=a/%23/b&client_id=c", "topics"),
            ("mqtt://b:1?topics=a+&client_id=c", "topics"),
            ("mqtt://b:1?topics=x", "client_id"),
            ("mqtt://b:1?topics=x&client_id=c&qos=0", "qos=0"),
            (
                "mqtt://b:1?topics=x&client_id=c&password=p",
                "password needs user",
            ),
            (
                "mqtt://b:1?topics=x&client_id=c&receive_maximum=0",
                "receive_maximum",
            ),
            (
                "mqtt://b:1?topics=x&client_id=c&colour=red",
                "unknown option",
            ),
            ("mqtt://b:1?topics=x&client_id=c&ca=f", "ca is for TLS"),
        ];
        for (url, says) in bad {
            let e = MqttSource::parse(url).unwrap_err();
            assert!(e.contains(says), "{url}: {e}");
        }
    }

    #[test]
    fn brackets_credentials_and_paths() {
        let v6 = MqttSource::parse("mqtt://[::1]:1883?topics=x&client_id=c").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 1883));
        for (url, says) in [
            ("mqtt://u:p@b:1?topics=x&client_id=c", "user= and password="),
            ("mqtt://b:1/path?topics=x&client_id=c", "HOST:PORT"),
            ("mqtt://:1?topics=x&client_id=c", "mqtt://"),
        ] {
            let e = MqttSource::parse(url).unwrap_err();
            assert!(e.contains(says), "{url}: {e}");
        }
    }
}
