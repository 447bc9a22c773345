//! Settings written as URLs (`sink`, `mqtt_source`) or lists of them (`http_cors_origins`),
//! parsed when the configuration is read into what they say: the server takes the parsed value and never reads the text again. The text is
//! kept as given (a config file shows it), with its secrets redacted wherever it is shown.

use std::path::PathBuf;

use super::declare::SettingValue;
use super::mqtt::MqttSource;
use crate::sink::{KafkaSinkConfig, NatsSinkConfig, ObjectSinkConfig, SinkTarget};

/// What a URL setting reads into.
pub trait FromUrl: Sized {
    /// How `--help` names the value.
    const VALUE_NAME: &'static str = "URL";

    /// The value `text` says, or why it says none.
    fn from_url(text: &str) -> Result<Self, String>;
}

/// A URL setting, parsed: the text as given and what it says.
#[derive(Clone, PartialEq)]
pub struct Parsed<T> {
    text: String,
    value: T,
}

impl<T> Parsed<T> {
    /// What the URL says.
    pub fn value(&self) -> &T {
        &self.value
    }

    /// The URL with its secrets redacted, for messages and logs.
    pub fn shown(&self) -> String {
        redact_url(&self.text)
    }
}

impl<T: FromUrl> TryFrom<String> for Parsed<T> {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let value = T::from_url(&text)?;
        Ok(Parsed { text, value })
    }
}

impl<T> std::fmt::Debug for Parsed<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown())
    }
}

impl<'de, T: FromUrl> serde::Deserialize<'de> for Parsed<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Parsed::try_from(text).map_err(serde::de::Error::custom)
    }
}

impl<T: FromUrl> SettingValue for Parsed<T> {
    const VALUE_NAME: &'static str = T::VALUE_NAME;
    fn show(&self) -> String {
        self.text.clone()
    }
    fn parse(raw: &str) -> Result<toml::Value, String> {
        T::from_url(raw)?;
        Ok(toml::Value::String(raw.to_owned()))
    }
}

/// The browser origins CORS allows (`http_cors_origins`): any (`*`), or a comma-separated
/// list; empty allows none.
#[derive(Debug, Clone, PartialEq)]
pub enum CorsOrigins {
    Any,
    List(Vec<axum::http::HeaderValue>),
}

impl FromUrl for CorsOrigins {
    const VALUE_NAME: &'static str = "ORIGINS";

    fn from_url(text: &str) -> Result<Self, String> {
        if text.trim() == "*" {
            return Ok(CorsOrigins::Any);
        }
        let list = text
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(|o| {
                axum::http::HeaderValue::from_str(o)
                    .map_err(|_| format!("{o:?} is not an origin (scheme://host[:port])"))
            })
            .collect::<Result<_, _>>()?;
        Ok(CorsOrigins::List(list))
    }
}

impl FromUrl for MqttSource {
    fn from_url(text: &str) -> Result<Self, String> {
        MqttSource::parse(text)
    }
}

impl FromUrl for SinkTarget {
    fn from_url(s: &str) -> Result<Self, String> {
        const EXPECTED: &str = "expected http://HOST:PORT (a gRPC Sink), file:DIR, \
                                nats://HOST:PORT?… (JetStream), kafka://HOST:PORT/TOPIC?… \
                                (Apache Kafka) or s3://BUCKET/PREFIX?… (object storage)";
        if let Some(dir) = s.strip_prefix("file:") {
            if dir.is_empty() {
                return Err("file: needs a directory, e.g. file:./out".into());
            }
            return Ok(SinkTarget::File(PathBuf::from(dir)));
        }
        if s.starts_with("nats://") {
            return NatsSinkConfig::parse(s).map(|c| SinkTarget::Nats(Box::new(c)));
        }
        if s.starts_with("kafka://") {
            return KafkaSinkConfig::parse(s).map(|c| SinkTarget::Kafka(Box::new(c)));
        }
        if s.starts_with("s3://") {
            return ObjectSinkConfig::parse(s).map(|c| SinkTarget::Object(Box::new(c)));
        }
        if is_http_url(s) {
            return Ok(SinkTarget::Grpc(s.to_owned()));
        }
        Err(EXPECTED.into())
    }
}

/// `http://HOST:PORT` or `https://HOST:PORT`.
pub(super) fn is_http_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    matches!(rest, Some(hostport) if !hostport.is_empty() && hostport.contains(':'))
}

/// A URL with the values of its `token=` and `password=` options, and any credentials before
/// an `@` in its address, replaced by `<redacted>` (sink URLs, `mqtt_source`).
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let base = match base.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('/').unwrap_or((rest, "")) {
            (authority, path) if authority.contains('@') => {
                let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
                let slash = if rest.contains('/') { "/" } else { "" };
                format!("{scheme}://<redacted>@{host}{slash}{path}")
            }
            _ => base.to_owned(),
        },
        None => base.to_owned(),
    };
    let Some(query) = query else {
        return base;
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if k == "token" || k == "password" => format!("{k}=<redacted>"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{base}?{}", query.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_in_the_query_and_the_address() {
        assert_eq!(
            redact_url("nats://u:p@h:4222/x?stream=s&token=t"),
            "nats://<redacted>@h:4222/x?stream=s&token=<redacted>"
        );
        assert_eq!(
            redact_url("mqtt://h:1883?user=u&password=p"),
            "mqtt://h:1883?user=u&password=<redacted>"
        );
        assert_eq!(redact_url("http://h:1"), "http://h:1");
        assert_eq!(redact_url("nats://u@h:4222"), "nats://<redacted>@h:4222");
    }

    #[test]
    fn a_sink_url_is_read_once_into_its_target_and_shown_redacted() {
        let p: Parsed<SinkTarget> = "kafka://k:9092/t?sasl_mechanism=PLAIN&username=u&password=s3"
            .to_owned()
            .try_into()
            .unwrap();
        assert!(matches!(p.value(), SinkTarget::Kafka(_)));
        assert!(!format!("{p:?}").contains("s3"), "{p:?}");
        let e = Parsed::<SinkTarget>::try_from("ftp://x".to_owned()).unwrap_err();
        assert!(e.contains("expected http://HOST:PORT"), "{e}");
    }

    #[test]
    fn cors_origins_are_read_once_any_a_list_or_none() {
        let any: Parsed<CorsOrigins> = "*".to_owned().try_into().unwrap();
        assert_eq!(any.value(), &CorsOrigins::Any);
        let list: Parsed<CorsOrigins> = " https://a.example ,https://b.example:8443,"
            .to_owned()
            .try_into()
            .unwrap();
        assert!(matches!(list.value(), CorsOrigins::List(l) if l.len() == 2));
        let none: Parsed<CorsOrigins> = "".to_owned().try_into().unwrap();
        assert_eq!(none.value(), &CorsOrigins::List(Vec::new()));
        let e = Parsed::<CorsOrigins>::try_from("https://a.example,x\ny".to_owned()).unwrap_err();
        assert!(e.contains("is not an origin"), "{e}");
    }
}
