//! Configuration: every setting declared once (`settings.rs`, through the macro of
//! `declare.rs`), laid in layers (`load.rs`: defaults, then the TOML file, then `SIDELOG_*`
//! environment variables, then flags), and validated once at start-up (`checks.rs`) with
//! errors that name the key, its flag and its variable. `reference.rs` renders the README's
//! configuration table from the same declarations.
//!
//! A setting `section.name` is the flag `--section-name` and the variable
//! `SIDELOG_SECTION_NAME`; top-level ones drop the section (`listen`, `--listen`,
//! `SIDELOG_LISTEN`).

mod checks;
pub(crate) mod declare;
mod load;
mod mqtt;
mod reference;
mod settings;
mod units;
mod url_setting;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use checks::{Secrets, TlsPem, TokenFileError, read_token_file};
pub use load::ServeArgs;
pub use mqtt::MqttSource;
pub use reference::{example_toml, markdown_table};
pub use settings::{Config, ForwardPayload, ReplayPolicy};
pub use units::check_environment;
pub use url_setting::CorsOrigins;

/// A configuration that cannot be used, naming the file or the setting. Never retryable: the
/// configuration must change (sidelog exits with the message at start-up).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named by `--config` cannot be read.
    #[error("cannot read config file {path}: {error}")]
    Read {
        path: PathBuf,
        // Not `source`: the message says it, and a chain would print it twice.
        error: std::io::Error,
    },
    /// The file is not TOML, or has an unknown key or a value of the wrong type.
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// Flags and variables that together do not make a configuration.
    #[error("flags or environment: {0}")]
    Flags(String),
    /// A key or variable that is no setting (a typo would leave the setting at its default).
    #[error("unknown {what}{hint}")]
    Unknown { what: String, hint: String },
    /// A file whose tables are not where the settings are.
    #[error("{0}")]
    Shape(String),
    /// A file a setting names that cannot be read (the token, a TLS certificate or key).
    #[error("invalid setting {} = {}: cannot read it: {error}", names(key), path.display())]
    Unreadable {
        key: &'static str,
        path: PathBuf,
        // Not `source`: the message says it, and a chain would print it twice.
        error: std::io::Error,
    },
    /// A value outside what its setting allows.
    #[error("invalid setting {} = {value}: {reason}", names(key))]
    Invalid {
        key: &'static str,
        value: String,
        reason: String,
    },
}

impl ConfigError {
    pub fn invalid(key: &'static str, value: String, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key,
            value,
            reason: reason.into(),
        }
    }
}

/// `delivery.lanes (--delivery-lanes, SIDELOG_DELIVERY_LANES)`.
fn names(key: &str) -> String {
    format!(
        "{key} (--{}, {})",
        declare::flag_of(key),
        declare::env_of(key)
    )
}
