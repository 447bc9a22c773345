//! Layering: defaults, then the TOML file (`--config`), then `SIDELOG_*` environment variables,
//! then flags. clap reads each setting's flag and variable (a flag wins); their values are
//! checked by type and laid over the file's table, and serde fills the rest from the defaults.
//! So there is no merging code per setting: a setting declared in `settings.rs` is everywhere.

use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, Command, FromArgMatches};

use super::ConfigError;
use super::settings::{Config, settings};
use super::units::{self, Unit};

/// What `sidelog serve` was given: a config file, and settings from flags or the environment.
#[derive(Debug, Clone, Default)]
pub struct ServeArgs {
    /// The TOML file (`--config`, `SIDELOG_CONFIG`).
    pub config: Option<PathBuf>,
    /// Settings given on the command line or in the environment, in declaration order.
    pub given: Vec<Given>,
}

/// One setting's value as given on the command line or in the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Given {
    /// The setting's TOML key.
    pub key: &'static str,
    pub value: String,
    /// The flag or variable it came from, for errors.
    pub from: String,
}

impl ServeArgs {
    /// The same as `--FLAG VALUE` for the setting `key` (tests, tools).
    pub fn set(mut self, key: &str, value: &str) -> ServeArgs {
        let setting = settings()
            .into_iter()
            .find(|s| s.key == key)
            .unwrap_or_else(|| panic!("no setting {key:?}"));
        self.given.push(Given {
            key: setting.key,
            value: value.to_owned(),
            from: format!("--{}", setting.flag()),
        });
        self
    }
}

const CONFIG_ARG: &str = "config";

impl clap::Args for ServeArgs {
    fn augment_args(cmd: Command) -> Command {
        let config = Arg::new(CONFIG_ARG)
            .long("config")
            .env("SIDELOG_CONFIG")
            .value_name("FILE")
            .value_parser(clap::value_parser!(PathBuf))
            .help("TOML config file; SIDELOG_* variables and flags override its keys");
        cmd.arg(config).args(settings().into_iter().map(|s| {
            let mut help = s.doc.clone();
            help.push_str(&format!(" [default: {}] [key: {}]", s.default, s.key));
            let arg = Arg::new(s.key)
                .long(s.flag())
                .env(s.env())
                .value_name(s.value_name)
                .help(help)
                .hide(super::settings::NOT_IN_HELP.contains(&s.key));
            // `--delivery-linger 5ms` as well as `--delivery-linger-ms 5`.
            match Unit::alias(s.key) {
                Some(alias) => arg.alias(super::declare::flag_of(alias)),
                None => arg,
            }
        }))
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for ServeArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut args = ServeArgs {
            config: m.get_one::<PathBuf>(CONFIG_ARG).cloned(),
            given: Vec::new(),
        };
        for s in settings() {
            let Some(value) = m.get_one::<String>(s.key) else {
                continue;
            };
            let from = match m.value_source(s.key) {
                Some(ValueSource::EnvVariable) => s.env(),
                _ => format!("--{}", s.flag()),
            };
            args.given.push(Given {
                key: s.key,
                value: value.clone(),
                from,
            });
        }
        Ok(args)
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl Config {
    /// Reads a TOML config file (defaults for what it leaves out); not validated.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        Self::layered(Some(path), &[])
    }

    /// Defaults, then the file named by `--config`, then the environment and flags; validated.
    pub fn load(args: ServeArgs) -> Result<Config, ConfigError> {
        let config = Self::layered(args.config.as_deref(), &args.given)?;
        config.validate()?;
        Ok(config)
    }

    fn layered(file: Option<&Path>, given: &[Given]) -> Result<Config, ConfigError> {
        let all = settings();
        let mut table = match file {
            Some(path) => {
                let mut table = read_table(path)?;
                units::normalize(&mut table, &all).map_err(|e| in_file(e, path))?;
                table
            }
            None => toml::Table::new(),
        };
        for g in given {
            let setting = all
                .iter()
                .find(|s| s.key == g.key)
                .expect("Given names a declared setting");
            let value = units::normalize_value(setting, toml::Value::String(g.value.clone()))
                .map_err(|e| match e {
                    ConfigError::Invalid { key, reason, .. } => ConfigError::Invalid {
                        key,
                        // A URL may hold a password or a token.
                        value: match setting.value_name {
                            "URL" => super::url_setting::redact_url(&g.value),
                            _ => g.value.clone(),
                        },
                        reason: format!("{reason} (from {})", g.from),
                    },
                    other => other,
                })?;
            insert(&mut table, setting.key, value);
        }
        let from = file.map(Path::to_owned);
        toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| match from {
                Some(path) => ConfigError::Parse {
                    path,
                    message: e.to_string(),
                },
                None => ConfigError::Flags(e.to_string()),
            })
    }
}

/// An error about a file's contents, saying which file.
fn in_file(e: ConfigError, path: &Path) -> ConfigError {
    match e {
        ConfigError::Invalid { key, value, reason } => ConfigError::Invalid {
            key,
            value,
            reason: format!("{reason} (in {})", path.display()),
        },
        other => ConfigError::Parse {
            path: path.to_owned(),
            message: other.to_string(),
        },
    }
}

fn read_table(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_owned(),
        error,
    })?;
    text.parse::<toml::Table>().map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// Sets `section.name` (or `name`) in `table`.
fn insert(table: &mut toml::Table, key: &str, value: toml::Value) {
    match key.split_once('.') {
        Some((section, name)) => {
            let entry = table
                .entry(section)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(t) => {
                    t.insert(name.to_owned(), value);
                }
                // The file has `section = <not a table>`: the flag's value replaces it, and
                // serde reports nothing wrong with the file's other keys.
                other => {
                    let mut t = toml::Table::new();
                    t.insert(name.to_owned(), value);
                    *other = toml::Value::Table(t);
                }
            }
        }
        None => {
            table.insert(key.to_owned(), value);
        }
    }
}

/// For the tests: arguments as `sidelog serve` would get them.
#[cfg(test)]
pub(super) fn parse_serve(args: &[&str]) -> Result<ServeArgs, clap::Error> {
    use clap::Args as _;
    use std::ffi::OsString;
    let cmd = ServeArgs::augment_args(Command::new("serve").no_binary_name(true));
    let m = cmd.try_get_matches_from(args.iter().map(OsString::from))?;
    ServeArgs::from_arg_matches(&m)
}
