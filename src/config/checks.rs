//! What a configuration must satisfy beyond each setting's own rule, and the values derived
//! from it (TLS, the token, the admin address, the sink, backoffs).

use std::net::SocketAddr;
use std::path::PathBuf;

use super::ConfigError;
use super::settings::Config;
use crate::runtime::Backoff;
use crate::sink::SinkTarget;

impl Config {
    /// Every setting's key and value as people read it (`none` when not set), with secrets
    /// hidden: the values of a sink URL's `token=` and `password=` options. (Token and key
    /// settings name files; their contents are never read into it.) The same values as
    /// [`Config::to_toml_redacted`], without TOML's quotes.
    pub fn effective_redacted(&self) -> Vec<(&'static str, String)> {
        self.effective_toml()
            .into_iter()
            .map(|(key, value)| {
                let text = match self.shown(key, value) {
                    Some(toml::Value::String(text)) => text,
                    Some(other) => other.to_string(),
                    None => "none".to_owned(),
                };
                (key, text)
            })
            .collect()
    }

    /// The configuration as a TOML file that sidelog reads back to the same settings (secrets
    /// redacted): top-level keys, then one table per section; sizes with units; a setting
    /// that is not set is a comment.
    pub fn to_toml_redacted(&self) -> String {
        let mut out = String::new();
        let mut section = "";
        for (key, value) in self.effective_toml() {
            let (this_section, name) = key.split_once('.').unwrap_or(("", key));
            if this_section != section {
                out.push_str(&format!("\n[{this_section}]\n"));
                section = this_section;
            }
            match self.shown(key, value) {
                Some(value) => out.push_str(&format!("{name} = {value}\n")),
                None => out.push_str(&format!("# {name}: not set\n")),
            }
        }
        out
    }

    /// A setting's value as a config file shows it: secrets redacted, the default sink said,
    /// whole sizes in units.
    pub(super) fn shown(&self, key: &str, value: Option<toml::Value>) -> Option<toml::Value> {
        match (key, value) {
            // No sink set is the file sink in the data directory: say where.
            ("sink", None) => Some(toml::Value::String(format!(
                "file:{}",
                self.data_dir.join("out").display()
            ))),
            ("sink" | "mqtt_source", Some(toml::Value::String(url))) => {
                Some(toml::Value::String(super::url_setting::redact_url(&url)))
            }
            (key, Some(toml::Value::Integer(n))) if key.ends_with("_bytes") => {
                let shown = super::declare::show_bytes(n as u64);
                Some(if shown.contains(' ') {
                    toml::Value::String(shown)
                } else {
                    toml::Value::Integer(n)
                })
            }
            (_, value) => value,
        }
    }

    /// One line for the start-up log: what this sidelog runs with (secrets redacted).
    pub fn summary_line(&self) -> String {
        let wanted = [
            "mode",
            "handler",
            "sink",
            "listen",
            "admin_listen",
            "metrics_listen",
            "data_dir",
        ];
        let effective = self.effective_redacted();
        wanted
            .iter()
            .filter_map(|k| effective.iter().find(|(key, _)| key == k))
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Checks every setting against its rule, then the rules between settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_rules()?;
        if self.limits.max_message_bytes > self.limits.max_request_bytes {
            return Err(ConfigError::invalid(
                "limits.max_message_bytes",
                self.limits.max_message_bytes.to_string(),
                "must not exceed limits.max_request_bytes",
            ));
        }
        if let Some(url) = &self.handler {
            check_http_url(
                "handler",
                url,
                "expected http://HOST:PORT of the Handler service",
            )?;
        }
        if let Some(addr) = self.admin_addr()?
            && !addr.ip().is_loopback()
            && (self.tls_cert_file.is_none() || self.auth_token_file.is_none())
        {
            return Err(ConfigError::invalid(
                "admin_listen",
                addr.to_string(),
                "the admin service can re-queue and purge: on a non-loopback address it \
                 needs TLS (tls_cert_file, tls_key_file) and a token (auth_token_file)",
            ));
        }
        Ok(())
    }

    /// The files the listeners need (the token, the TLS certificate and key, the client CA),
    /// read once: `serve` reads them before it opens the journal or binds anything, so a file
    /// that cannot be read fails the start with its name, and every listener uses the same
    /// contents.
    pub fn secrets(&self) -> Result<Secrets, ConfigError> {
        Ok(Secrets {
            token: self.auth_token()?,
            tls: self.tls_pem()?,
            forward_shared_key: self.forward_shared_key()?,
        })
    }

    /// The PEM files TLS is configured with, read, if `tls_cert_file` is set.
    fn tls_pem(&self) -> Result<Option<TlsPem>, ConfigError> {
        let read = |key: &'static str, path: &PathBuf| {
            std::fs::read(path).map_err(|error| ConfigError::Unreadable {
                key,
                path: path.clone(),
                error,
            })
        };
        let (cert, key) = match (&self.tls_cert_file, &self.tls_key_file) {
            (None, None) => {
                if let Some(ca) = &self.tls_client_ca_file {
                    return Err(ConfigError::Invalid {
                        key: "tls_client_ca_file",
                        value: ca.display().to_string(),
                        reason: "client certificates need TLS: set tls_cert_file and tls_key_file"
                            .into(),
                    });
                }
                return Ok(None);
            }
            (Some(c), Some(k)) => (read("tls_cert_file", c)?, read("tls_key_file", k)?),
            (Some(c), None) | (None, Some(c)) => {
                return Err(ConfigError::Invalid {
                    key: if self.tls_key_file.is_none() {
                        "tls_key_file"
                    } else {
                        "tls_cert_file"
                    },
                    value: c.display().to_string(),
                    reason: "tls_cert_file and tls_key_file go together".into(),
                });
            }
        };
        let client_ca = match &self.tls_client_ca_file {
            Some(ca) => Some(read("tls_client_ca_file", ca)?),
            None => None,
        };
        Ok(Some(TlsPem {
            cert,
            key,
            client_ca,
        }))
    }

    /// The bearer token from `auth_token_file`, if one is set.
    fn auth_token(&self) -> Result<Option<String>, ConfigError> {
        secret_file("auth_token_file", self.auth_token_file.as_deref())
    }

    /// The forward door's shared key from `forward_shared_key_file`, if one is set.
    fn forward_shared_key(&self) -> Result<Option<String>, ConfigError> {
        secret_file(
            "forward_shared_key_file",
            self.forward_shared_key_file.as_deref(),
        )
    }

    /// Where the admin service listens, parsed from `admin_listen`; `None` when it is `off`.
    pub fn admin_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        if self.admin_listen == "off" {
            return Ok(None);
        }
        let addr: SocketAddr = self
            .admin_listen
            .parse()
            .map_err(|e| ConfigError::Invalid {
                key: "admin_listen",
                value: self.admin_listen.clone(),
                reason: format!("expected HOST:PORT (an IP address) or off: {e}"),
            })?;
        if addr.port() != 0 && (self.metrics_listen == Some(addr) || self.listen == addr) {
            return Err(ConfigError::Invalid {
                key: "admin_listen",
                value: self.admin_listen.clone(),
                reason: "must differ from listen and metrics_listen".into(),
            });
        }
        Ok(Some(addr))
    }

    /// Where outputs go: what `sink` says (read with the configuration), or the file sink in
    /// the data directory.
    pub fn sink_target(&self) -> SinkTarget {
        match &self.sink {
            Some(sink) => sink.value().clone(),
            None => SinkTarget::File(self.data_dir.join("out")),
        }
    }

    pub fn handler_backoff(&self) -> Backoff {
        Backoff {
            initial_ms: self.handling.backoff_initial_ms,
            max_ms: self.handling.backoff_max_ms,
            max_attempts: attempts_limit(self.handling.max_attempts),
        }
    }

    pub fn delivery_backoff(&self) -> Backoff {
        Backoff {
            initial_ms: self.delivery.backoff_initial_ms,
            max_ms: self.delivery.backoff_max_ms,
            max_attempts: attempts_limit(self.delivery.max_attempts),
        }
    }
}

/// `max_attempts` as a [`Backoff`] counts it: 0 (no limit) is as many as a `u32` holds.
fn attempts_limit(setting: u64) -> u32 {
    match setting {
        0 => u32::MAX,
        n => u32::try_from(n).unwrap_or(u32::MAX),
    }
}

fn check_http_url(key: &'static str, url: &str, expected: &str) -> Result<(), ConfigError> {
    if super::url_setting::is_http_url(url) {
        return Ok(());
    }
    Err(ConfigError::Invalid {
        key,
        value: url.to_owned(),
        reason: expected.into(),
    })
}

/// Reads a token file: one line, printable ASCII, at least 16 characters.
pub fn read_token_file(path: &std::path::Path) -> Result<String, TokenFileError> {
    let text = std::fs::read_to_string(path).map_err(TokenFileError::Read)?;
    let token = text.trim_end_matches(['\n', '\r']);
    if token.len() < 16 {
        return Err(TokenFileError::TooShort);
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenFileError::NotPrintable);
    }
    Ok(token.to_owned())
}

/// Why [`read_token_file`] found no token.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read it: {0}")]
    Read(std::io::Error),
    #[error("the secret in it must be at least 16 characters")]
    TooShort,
    #[error("the secret in it must be one line of printable ASCII without spaces")]
    NotPrintable,
}

/// The secret in the file setting `key` names, if it names one (see [`read_token_file`]).
fn secret_file(
    key: &'static str,
    path: Option<&std::path::Path>,
) -> Result<Option<String>, ConfigError> {
    let Some(path) = path else {
        return Ok(None);
    };
    read_token_file(path).map(Some).map_err(|e| match e {
        TokenFileError::Read(error) => ConfigError::Unreadable {
            key,
            path: path.to_owned(),
            error,
        },
        e => ConfigError::Invalid {
            key,
            value: path.display().to_string(),
            reason: e.to_string(),
        },
    })
}

/// What [`Config::secrets`] read.
#[derive(Clone)]
pub struct Secrets {
    /// The bearer token every listener asks for (`auth_token_file`).
    pub token: Option<String>,
    /// The TLS files every listener serves with (`tls_cert_file`, ...).
    pub tls: Option<TlsPem>,
    /// The forward door's shared key (`forward_shared_key_file`).
    pub forward_shared_key: Option<String>,
}

impl Secrets {
    /// The gRPC listeners' TLS settings, if TLS is configured.
    pub fn grpc_tls(&self) -> Option<tonic::transport::ServerTlsConfig> {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let pem = self.tls.as_ref()?;
        let mut tls =
            ServerTlsConfig::new().identity(Identity::from_pem(pem.cert.clone(), pem.key.clone()));
        if let Some(ca) = &pem.client_ca {
            tls = tls.client_ca_root(Certificate::from_pem(ca.clone()));
        }
        Some(tls)
    }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls.is_some())
            .field(
                "forward_shared_key",
                &self.forward_shared_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The contents of the TLS files (PEM).
#[derive(Clone)]
pub struct TlsPem {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    /// `tls_client_ca_file`: clients must present a certificate it signed.
    pub client_ca: Option<Vec<u8>>,
}
