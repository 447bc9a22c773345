//! What people write, read as the settings declare it: sizes and durations with units
//! (`max_message_bytes = "2 MiB"`, `linger = "5ms"`, `max_age = "7d"`; numbers keep working),
//! a duration's key without its unit (`delivery.linger` for `delivery.linger_ms`), and the
//! errors for what is not a setting (an unknown key or `SIDELOG_*` variable, with the nearest
//! known one) or not one of its values (`mode = 3` says which are).
//!
//! The file's table is checked and normalized here, before serde reads it into [`Config`]
//! (which keeps plain numbers: milliseconds, microseconds, bytes).
//!
//! [`Config`]: super::Config

use super::ConfigError;
use super::declare::Setting;

/// How a number setting's value may be written, by its key's suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unit {
    /// `_bytes`: `2 MiB`, `512 KiB`, `1.5 GiB` (powers of 1024), `2 MB`, `2M` (of 1000).
    Bytes,
    /// `_ms`: `5ms`, `2s`, `1h 30m`, `7d` (humantime's units).
    Millis,
    /// `_us`: `250us`, `1ms`.
    Micros,
}

impl Unit {
    pub(super) fn of(key: &str) -> Option<Unit> {
        if key.ends_with("_bytes") {
            Some(Unit::Bytes)
        } else if key.ends_with("_ms") {
            Some(Unit::Millis)
        } else if key.ends_with("_us") {
            Some(Unit::Micros)
        } else {
            None
        }
    }

    /// The key people may write instead: a duration's without its unit.
    pub(super) fn alias(key: &str) -> Option<&str> {
        key.strip_suffix("_ms").or_else(|| key.strip_suffix("_us"))
    }

    /// `raw` as a number of this unit: a plain number is one already; anything else must say
    /// its unit and be a whole number of this one.
    pub(super) fn parse(self, raw: &str) -> Result<u64, String> {
        let raw = raw.trim();
        if let Ok(n) = raw.parse::<u64>() {
            return Ok(n);
        }
        let n = match self {
            Unit::Bytes => {
                let size: bytesize::ByteSize = raw.parse().map_err(|_| {
                    format!(
                        "{raw:?} is not a size: write bytes, or a number with a unit (KiB, MiB, \
                         GiB: powers of 1024; kB, MB, GB: of 1000), e.g. \"2 MiB\""
                    )
                })?;
                // bytesize saturates: anything this large was a mistake, not a size.
                if size.as_u64() >= 1 << 63 {
                    return Err(format!("{raw:?} is too large"));
                }
                size.as_u64()
            }
            Unit::Millis | Unit::Micros => {
                let d = humantime::parse_duration(raw).map_err(|e| {
                    format!(
                        "{raw:?} is not a duration ({e}): write {}, or a number with a unit, \
                         e.g. \"5ms\", \"2s\", \"1h 30m\", \"7d\"",
                        self.plain()
                    )
                })?;
                let (n, rest) = match self {
                    Unit::Millis => (d.as_millis(), d.as_nanos() % 1_000_000),
                    _ => (d.as_micros(), d.as_nanos() % 1_000),
                };
                if rest != 0 {
                    return Err(format!("{raw:?} is not a whole number of {}", self.plain()));
                }
                u64::try_from(n).map_err(|_| format!("{raw:?} is too long"))?
            }
        };
        Ok(n)
    }

    fn plain(self) -> &'static str {
        match self {
            Unit::Bytes => "bytes",
            Unit::Millis => "milliseconds",
            Unit::Micros => "microseconds",
        }
    }
}

/// Checks every key of a config file's `table` against the declared settings and puts each
/// value in the form serde reads: aliases renamed, sizes and durations as numbers, text
/// settings parsed (so a wrong value gets the setting's own message).
pub(super) fn normalize(table: &mut toml::Table, all: &[Setting]) -> Result<(), ConfigError> {
    let sections: Vec<&str> = all
        .iter()
        .filter_map(|s| s.key.split_once('.'))
        .map(|(section, _)| section)
        .collect();
    let top: Vec<String> = table.keys().cloned().collect();
    for name in top {
        if sections.contains(&name.as_str()) {
            let Some(toml::Value::Table(section)) = table.get_mut(&name) else {
                return Err(ConfigError::Shape(format!(
                    "`{name}` is a section: write it as [{name}] with its keys below it"
                )));
            };
            let keys: Vec<String> = section.keys().cloned().collect();
            for key in keys {
                let full = format!("{name}.{key}");
                normalize_one(section, &key, &full, all)?;
            }
        } else if table.get(&name).is_some_and(toml::Value::is_table) {
            let mut sections = sections.clone();
            sections.dedup();
            return Err(ConfigError::Unknown {
                what: format!("section [{name}]"),
                hint: nearest(&name, sections.into_iter())
                    .map(|k| format!("; did you mean [{k}]?"))
                    .unwrap_or_default(),
            });
        } else {
            normalize_one(table, &name, &name, all)?;
        }
    }
    Ok(())
}

/// One key of `table` (named `full` as a setting): renamed if an alias, its value normalized.
fn normalize_one(
    table: &mut toml::Table,
    key: &str,
    full: &str,
    all: &[Setting],
) -> Result<(), ConfigError> {
    let (setting, canonical) = match lookup(full, all) {
        Some(found) => found,
        None => {
            return Err(ConfigError::Unknown {
                what: format!("key `{full}`"),
                hint: nearest(full, all.iter().map(|s| s.key))
                    .map(|k| format!("; did you mean `{k}`?"))
                    .unwrap_or_default(),
            });
        }
    };
    let value = table
        .remove(key)
        .expect("the key was listed from this table");
    let name = canonical.rsplit('.').next().unwrap_or(canonical);
    if table.contains_key(name) {
        return Err(ConfigError::invalid(
            setting.key,
            value.to_string(),
            format!("`{full}` and `{canonical}` are the same setting: keep one"),
        ));
    }
    let value = normalize_value(setting, value)?;
    table.insert(name.to_owned(), value);
    Ok(())
}

/// The setting `full` names, by its key or its alias, and its key.
fn lookup<'a>(full: &str, all: &'a [Setting]) -> Option<(&'a Setting, &'static str)> {
    all.iter()
        .find(|s| s.key == full || Unit::alias(s.key) == Some(full))
        .map(|s| (s, s.key))
}

/// A value as serde reads it for `setting`, or the setting's own error.
pub(super) fn normalize_value(
    setting: &Setting,
    value: toml::Value,
) -> Result<toml::Value, ConfigError> {
    let shown = match &value {
        // A URL may hold a password or a token.
        toml::Value::String(url) if setting.value_name == "URL" => {
            format!("{:?}", super::url_setting::redact_url(url))
        }
        value => show(value),
    };
    let invalid = |reason: String| ConfigError::invalid(setting.key, shown.clone(), reason);
    if setting.is_number() {
        let n = match &value {
            toml::Value::Integer(n) => {
                u64::try_from(*n).map_err(|_| invalid("a negative number is not allowed".into()))?
            }
            // "off" for a setting whose 0 means off (`journal.wal_bytes = "off"`).
            toml::Value::String(text)
                if setting.rule.zero_is_off && text.trim().eq_ignore_ascii_case("off") =>
            {
                0
            }
            toml::Value::String(text) => match Unit::of(setting.key) {
                Some(unit) => unit.parse(text).map_err(invalid)?,
                // A plain count: the setting's own reading of a flag's text.
                None => return (setting.parse)(text.trim()).map_err(invalid),
            },
            _ => return Err(invalid(expected_number(setting.key))),
        };
        let n = i64::try_from(n).map_err(|_| invalid("too large".into()))?;
        return Ok(toml::Value::Integer(n));
    }
    match &value {
        toml::Value::String(text) => {
            (setting.parse)(text).map_err(invalid)?;
            Ok(value)
        }
        other => {
            let text = match other {
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                _ => String::new(),
            };
            Err(invalid(match (setting.parse)(&text) {
                Err(reason) => reason,
                Ok(_) => format!("expected text in quotes: {} = \"{text}\"", setting.key),
            }))
        }
    }
}

fn show(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

fn expected_number(key: &str) -> String {
    match Unit::of(key) {
        Some(Unit::Bytes) => "expected a number of bytes or a size such as \"2 MiB\"".into(),
        Some(Unit::Millis) => {
            "expected milliseconds or a duration such as \"5ms\" or \"7d\"".into()
        }
        Some(Unit::Micros) => "expected microseconds or a duration such as \"250us\"".into(),
        None => "expected a whole number".into(),
    }
}

/// Variables the library reads itself, outside the command line's flags.
const READ_OUTSIDE_THE_CLI: &[&str] = &["SIDELOG_UNSAFE_SKIP_FSYNC"];

/// Variables of the test harness (`SIDELOG_TEST_SERVICES` and the like), which a test's
/// sidelog inherits.
const TEST_PREFIX: &str = "SIDELOG_TEST_";

/// An unknown `SIDELOG_*` variable among `names` is an error (a typo would otherwise leave the
/// setting at its default without a word), naming the nearest known one. `cli_variables` are
/// the variables the command line reads (every setting's, and the other commands' own): the
/// binary collects them from its clap command, so the list cannot drift from what is read.
pub fn check_environment(
    names: impl IntoIterator<Item = String>,
    cli_variables: &[String],
) -> Result<(), ConfigError> {
    let known: Vec<&str> = cli_variables
        .iter()
        .map(String::as_str)
        .chain(READ_OUTSIDE_THE_CLI.iter().copied())
        .collect();
    for name in names {
        if !name.starts_with("SIDELOG_")
            || name.starts_with(TEST_PREFIX)
            || known.contains(&name.as_str())
        {
            continue;
        }
        return Err(ConfigError::Unknown {
            what: format!("environment variable {name}"),
            hint: nearest(&name, known.iter().copied())
                .map(|k| format!("; did you mean {k}?"))
                .unwrap_or_default(),
        });
    }
    Ok(())
}

/// The candidate closest to `word`, if one is close enough to be what was meant: one that
/// ends with it (a key without its section, a variable without it), else one a few edits
/// away (`SIDELOG_` left out of the comparison: every variable has it).
fn nearest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let candidates: Vec<&str> = candidates.collect();
    let tail = word.strip_prefix("SIDELOG_").unwrap_or(word);
    if let Some(found) = candidates.iter().find(|c| {
        c.strip_suffix(tail)
            .is_some_and(|head| head.ends_with('.') || head.ends_with('_'))
    }) {
        return Some(found);
    }
    candidates
        .into_iter()
        .map(|c| {
            let c_tail = c.strip_prefix("SIDELOG_").unwrap_or(c);
            (strsim::normalized_damerau_levenshtein(tail, c_tail), c)
        })
        .filter(|(score, _)| *score >= 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_take_units_and_plain_numbers() {
        assert_eq!(Unit::Bytes.parse("2 MiB"), Ok(2 << 20));
        assert_eq!(Unit::Bytes.parse("2MiB"), Ok(2 << 20));
        assert_eq!(Unit::Bytes.parse("512 KiB"), Ok(512 << 10));
        assert_eq!(Unit::Bytes.parse("2 MB"), Ok(2_000_000));
        assert_eq!(Unit::Bytes.parse("1048576"), Ok(1 << 20));
        assert!(Unit::Bytes.parse("2 XB").unwrap_err().contains("2 MiB"));
        assert!(
            Unit::Bytes
                .parse("99999999999 GiB")
                .unwrap_err()
                .contains("too large")
        );
        assert_eq!(Unit::Millis.parse("5ms"), Ok(5));
        assert_eq!(Unit::Millis.parse("2s"), Ok(2000));
        assert_eq!(Unit::Millis.parse("7d"), Ok(7 * 86_400_000));
        assert_eq!(Unit::Millis.parse("1h 30m"), Ok(5_400_000));
        assert_eq!(Unit::Millis.parse(" 250 "), Ok(250));
        assert!(
            Unit::Millis
                .parse("5us")
                .unwrap_err()
                .contains("whole number of milliseconds")
        );
        assert!(Unit::Millis.parse("5 parsecs").is_err());
        assert_eq!(Unit::Micros.parse("2ms"), Ok(2000));
        assert_eq!(Unit::of("delivery.linger_ms"), Some(Unit::Millis));
        assert_eq!(Unit::of("limits.max_headers"), None);
        assert_eq!(Unit::alias("delivery.linger_ms"), Some("delivery.linger"));
    }

    #[test]
    fn the_nearest_known_name_is_suggested_and_a_far_one_is_not() {
        let keys = [
            "delivery.lanes",
            "delivery.linger_ms",
            "limits.max_message_bytes",
            "mode",
        ];
        let near = |w| nearest(w, keys.into_iter());
        assert_eq!(near("delivery.linger_mss"), Some("delivery.linger_ms"));
        assert_eq!(near("delivery.lane"), Some("delivery.lanes"));
        assert_eq!(near("max_message_bytes"), Some("limits.max_message_bytes"));
        assert_eq!(near("colour"), None);
        let vars = [
            "SIDELOG_DELIVERY_LANES",
            "SIDELOG_MODE",
            "SIDELOG_LIMITS_MAX_MESSAGE_BYTES",
        ];
        let near = |w| nearest(w, vars.into_iter());
        assert_eq!(
            near("SIDELOG_DELIVERY_LANS"),
            Some("SIDELOG_DELIVERY_LANES")
        );
        assert_eq!(
            near("SIDELOG_MAX_MESSAGE_BYTES"),
            Some("SIDELOG_LIMITS_MAX_MESSAGE_BYTES")
        );
        assert_eq!(near("SIDELOG_FOO"), None);
    }

    #[test]
    fn unknown_variables_are_refused_and_known_ones_pass() {
        // As the binary gives them: every setting's variable and the commands' own.
        let cli: Vec<String> = crate::config::settings::settings()
            .iter()
            .map(Setting::env)
            .chain(["SIDELOG_CONFIG".to_owned(), "SIDELOG_LOG_FORMAT".to_owned()])
            .collect();
        let check = |names: &[&str]| {
            check_environment(names.iter().map(|s| (*s).to_owned()), &cli)
                .map_err(|e| e.to_string())
        };
        check(&[
            "SIDELOG_MODE",
            "SIDELOG_CONFIG",
            "SIDELOG_TEST_SERVICES",
            "PATH",
            "SIDELOG_LOG_FORMAT",
            "SIDELOG_UNSAFE_SKIP_FSYNC",
        ])
        .unwrap();
        let err = check(&["SIDELOG_DELIVERY_LANS"]).unwrap_err();
        assert_eq!(
            err,
            "unknown environment variable SIDELOG_DELIVERY_LANS; did you mean SIDELOG_DELIVERY_LANES?"
        );
        assert_eq!(
            check(&["SIDELOG_FOO"]).unwrap_err(),
            "unknown environment variable SIDELOG_FOO"
        );
    }
}
