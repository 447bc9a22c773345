//! How a setting is declared: once, in `settings.rs`, with its doc, type, default and allowed
//! values. The [`settings!`] macro turns that one declaration into the config structs (the
//! TOML keys), their defaults, the list [`settings`] that the flags, the environment variables,
//! the range checks and the README's table are made from.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::mode::LoggingMode;
use crate::sink::ChunkFormat;

pub(super) const KIB: u64 = 1024;
pub(super) const MIB: u64 = 1024 * KIB;
pub(super) const GIB: u64 = 1024 * MIB;

/// What values a setting allows, and how its default is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// For numbers: the inclusive range.
    pub min: u64,
    pub max: u64,
    /// For numbers: 0 is allowed too, meaning "off" (outside `min..=max`).
    pub zero_is_off: bool,
    /// Shown instead of the default value (when it depends on other settings, or is "off").
    pub default_text: Option<&'static str>,
}

impl Rule {
    /// Any value of the type.
    pub const fn any() -> Rule {
        Rule {
            min: 0,
            max: u64::MAX,
            zero_is_off: false,
            default_text: None,
        }
    }

    /// A number in `min..=max`.
    pub const fn range(min: u64, max: u64) -> Rule {
        Rule {
            min,
            max,
            ..Rule::any()
        }
    }

    /// 0 (off), or a number in `min..=max`.
    pub const fn off_or(min: u64, max: u64) -> Rule {
        Rule {
            zero_is_off: true,
            ..Rule::range(min, max)
        }
    }

    /// Shows `text` as the default.
    pub const fn shown(self, text: &'static str) -> Rule {
        Rule {
            default_text: Some(text),
            ..self
        }
    }

    /// Whether `n` is allowed.
    pub fn allows(&self, n: u64) -> bool {
        (self.zero_is_off && n == 0) || (self.min..=self.max).contains(&n)
    }

    /// The allowed values, for people (`1..=1024`, `0 (off) or ≥ 1 MiB`).
    pub fn describe(&self, bytes: bool) -> String {
        let show = |n: u64| if bytes { show_bytes(n) } else { n.to_string() };
        let range = match (self.min, self.max) {
            (0, u64::MAX) => return String::new(),
            (min, u64::MAX) => format!("≥ {}", show(min)),
            (min, max) => format!("{} – {}", show(min), show(max)),
        };
        if self.zero_is_off {
            format!("0 (off) or {range}")
        } else {
            range
        }
    }
}

/// One setting, as the flags, the environment, the checks and the README see it.
#[derive(Debug, Clone)]
pub struct Setting {
    /// The TOML key: `section.name`, or `name` at the top level.
    pub key: &'static str,
    /// Its documentation, one paragraph.
    pub doc: String,
    /// The default, as people read it.
    pub default: String,
    pub rule: Rule,
    /// How to read a value given on the command line or in the environment.
    pub parse: fn(&str) -> Result<toml::Value, String>,
    /// What to call a value in `--help` (`BYTES`, `MS`, `ADDR`…).
    pub value_name: &'static str,
}

impl Setting {
    /// `section-name`: the flag without its dashes.
    pub fn flag(&self) -> String {
        flag_of(self.key)
    }

    /// `SIDELOG_SECTION_NAME`.
    pub fn env(&self) -> String {
        env_of(self.key)
    }

    /// Whether the value is a size in bytes (shown with units).
    pub fn is_bytes(&self) -> bool {
        self.key.ends_with("_bytes")
    }

    /// Whether the value is a number (a size, a duration, a count).
    pub fn is_number(&self) -> bool {
        self.value_name == <u64 as SettingValue>::VALUE_NAME
    }
}

/// The flag of setting `key`, without its dashes: `section.max_bytes` → `section-max-bytes`.
pub fn flag_of(key: &str) -> String {
    key.replace(['.', '_'], "-")
}

/// The environment variable of setting `key`: `section.max_bytes` → `SIDELOG_SECTION_MAX_BYTES`.
pub fn env_of(key: &str) -> String {
    format!("SIDELOG_{}", key.replace('.', "_").to_uppercase())
}

/// `1 MiB` for 1048576; bytes that are not a whole unit stay a number.
pub fn show_bytes(n: u64) -> String {
    for (unit, size) in [("GiB", GIB), ("MiB", MIB), ("KiB", KIB)] {
        if n >= size && n.is_multiple_of(size) {
            return format!("{} {unit}", n / size);
        }
    }
    n.to_string()
}

/// A type a setting can have: how it is shown, checked and read from a flag.
pub trait SettingValue {
    /// What to call a value in `--help`.
    const VALUE_NAME: &'static str;
    /// The value as people read it.
    fn show(&self) -> String;
    /// The number, for range checks (`None`: not a number).
    fn number(&self) -> Option<u64> {
        None
    }
    /// A value given as text on the command line or in the environment, checked, as TOML.
    fn parse(raw: &str) -> Result<toml::Value, String>;
    /// The value as a config file would say it (`None`: not set).
    fn to_toml(&self) -> Option<toml::Value> {
        Some(toml::Value::String(self.show()))
    }
}

impl SettingValue for u64 {
    const VALUE_NAME: &'static str = "N";
    fn show(&self) -> String {
        self.to_string()
    }
    fn number(&self) -> Option<u64> {
        Some(*self)
    }
    fn to_toml(&self) -> Option<toml::Value> {
        Some(toml::Value::Integer(
            i64::try_from(*self).unwrap_or(i64::MAX),
        ))
    }
    fn parse(raw: &str) -> Result<toml::Value, String> {
        let n: u64 = raw
            .trim()
            .parse()
            .map_err(|e| format!("{raw:?} is not a whole number: {e}"))?;
        i64::try_from(n)
            .map(toml::Value::Integer)
            .map_err(|_| format!("{n} is too large"))
    }
}

/// Settings read from their text form (`FromStr`) and shown by `Display`.
macro_rules! text_setting {
    ($t:ty, $name:literal) => {
        impl SettingValue for $t {
            const VALUE_NAME: &'static str = $name;
            fn show(&self) -> String {
                self.to_string()
            }
            fn parse(raw: &str) -> Result<toml::Value, String> {
                raw.parse::<$t>().map_err(|e| e.to_string())?;
                Ok(toml::Value::String(raw.to_owned()))
            }
        }
    };
}

text_setting!(String, "TEXT");
text_setting!(LoggingMode, "MODE");
text_setting!(super::settings::ReplayPolicy, "POLICY");
text_setting!(ChunkFormat, "FORMAT");
text_setting!(super::settings::ForwardPayload, "PAYLOAD");

impl SettingValue for SocketAddr {
    const VALUE_NAME: &'static str = "ADDR";
    fn show(&self) -> String {
        self.to_string()
    }
    fn parse(raw: &str) -> Result<toml::Value, String> {
        raw.parse::<SocketAddr>().map_err(|_| {
            "expected IP:PORT, e.g. 127.0.0.1:50051 or [::1]:50051 (host names are not \
             resolved: for localhost write 127.0.0.1)"
                .to_string()
        })?;
        Ok(toml::Value::String(raw.to_owned()))
    }
}

impl SettingValue for PathBuf {
    const VALUE_NAME: &'static str = "PATH";
    fn show(&self) -> String {
        self.display().to_string()
    }
    fn parse(raw: &str) -> Result<toml::Value, String> {
        if raw.is_empty() {
            return Err("the path is empty".into());
        }
        Ok(toml::Value::String(raw.to_owned()))
    }
}

impl<T: SettingValue> SettingValue for Option<T> {
    const VALUE_NAME: &'static str = T::VALUE_NAME;
    fn show(&self) -> String {
        self.as_ref().map_or_else(|| "none".into(), T::show)
    }
    fn number(&self) -> Option<u64> {
        self.as_ref().and_then(T::number)
    }
    fn to_toml(&self) -> Option<toml::Value> {
        self.as_ref().and_then(T::to_toml)
    }
    fn parse(raw: &str) -> Result<toml::Value, String> {
        T::parse(raw)
    }
}

/// Declares config structs, one field per setting, each with its doc, type, default and
/// [`Rule`]:
///
/// ```text
/// settings! {
///     pub struct Config {
///         /// Doc.
///         name: Type = default_expr, Rule::…;
///         …
///     }
///     [section] pub struct SectionType {
///         /// Doc.
///         name: Type = default_expr, Rule::…;
///     }
/// }
/// ```
///
/// It generates the structs (serde: unknown keys refused, missing ones defaulted), their
/// `Default`, `settings()` (every setting in declaration order) and `Config::check_rules`.
macro_rules! settings {
    (
        $(#[$meta:meta])*
        pub struct $root:ident {
            $( $(#[doc = $doc:literal])* $field:ident : $ty:ty = $default:expr, $rule:expr; )*
        }
        $(
            [$section:ident] $(#[$smeta:meta])*
            pub struct $sty:ident {
                $( $(#[doc = $sdoc:literal])* $sfield:ident : $sfty:ty = $sdefault:expr, $srule:expr; )*
            }
        )*
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, serde::Deserialize, PartialEq)]
        #[serde(deny_unknown_fields, default)]
        pub struct $root {
            $( $(#[doc = $doc])* pub $field: $ty, )*
            $( pub $section: $sty, )*
        }

        impl Default for $root {
            fn default() -> Self {
                $root {
                    $( $field: $default, )*
                    $( $section: $sty::default(), )*
                }
            }
        }

        $(
            $(#[$smeta])*
            #[derive(Debug, Clone, serde::Deserialize, PartialEq)]
            #[serde(deny_unknown_fields, default)]
            pub struct $sty {
                $( $(#[doc = $sdoc])* pub $sfield: $sfty, )*
            }

            impl Default for $sty {
                fn default() -> Self {
                    $sty { $( $sfield: $sdefault, )* }
                }
            }
        )*

        /// Every setting, in declaration order.
        pub fn settings() -> Vec<$crate::config::declare::Setting> {
            use $crate::config::declare::{Setting, SettingValue, doc_text};
            let defaults = $root::default();
            vec![
                $(
                    Setting {
                        key: stringify!($field),
                        doc: doc_text(&[$($doc),*]),
                        default: $rule.default_text.map_or_else(|| defaults.$field.show(), str::to_owned),
                        rule: $rule,
                        parse: <$ty as SettingValue>::parse,
                        value_name: <$ty as SettingValue>::VALUE_NAME,
                    },
                )*
                $($(
                    Setting {
                        key: concat!(stringify!($section), ".", stringify!($sfield)),
                        doc: doc_text(&[$($sdoc),*]),
                        default: $srule.default_text.map_or_else(|| defaults.$section.$sfield.show(), str::to_owned),
                        rule: $srule,
                        parse: <$sfty as SettingValue>::parse,
                        value_name: <$sfty as SettingValue>::VALUE_NAME,
                    },
                )*)*
            ]
        }

        impl $root {
            /// Every setting's key and value as a config file says it (`None`: not set), in
            /// declaration order (secrets not redacted: see `Config::to_toml_redacted`).
            pub fn effective_toml(&self) -> Vec<(&'static str, Option<toml::Value>)> {
                use $crate::config::declare::SettingValue;
                vec![
                    $( (stringify!($field), self.$field.to_toml()), )*
                    $($( (
                        concat!(stringify!($section), ".", stringify!($sfield)),
                        self.$section.$sfield.to_toml(),
                    ), )*)*
                ]
            }

            /// Checks every number against its rule; the error names the setting.
            pub fn check_rules(&self) -> Result<(), $crate::config::ConfigError> {
                use $crate::config::declare::SettingValue;
                let check = |key: &'static str, rule: $crate::config::declare::Rule, n: Option<u64>| {
                    match n {
                        Some(n) if !rule.allows(n) => Err($crate::config::ConfigError::invalid(
                            key,
                            n.to_string(),
                            format!("allowed: {}", rule.describe(key.ends_with("_bytes"))),
                        )),
                        _ => Ok(()),
                    }
                };
                $( check(stringify!($field), $rule, self.$field.number())?; )*
                $($( check(
                    concat!(stringify!($section), ".", stringify!($sfield)),
                    $srule,
                    self.$section.$sfield.number(),
                )?; )*)*
                Ok(())
            }
        }
    };
}

pub(super) use settings;

/// A doc comment's lines as one paragraph.
pub fn doc_text(lines: &[&str]) -> String {
    lines
        .iter()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}
