//! The README's configuration table, rendered from the declarations.

use super::declare::show_bytes;
use super::settings::settings;

/// The configuration reference as a Markdown table: one row per setting.
pub fn markdown_table() -> String {
    let mut out = String::from("| key | default | allowed | meaning |\n|---|---|---|---|\n");
    for s in settings() {
        let allowed = s.rule.describe(s.is_bytes());
        let default = match (s.rule.default_text, s.default.parse::<u64>()) {
            (Some(text), _) => text.to_owned(),
            (None, Ok(n)) if s.is_bytes() => format!("`{}`", show_bytes(n)),
            (None, _) if s.default == "none" => s.default.clone(),
            (None, _) => format!("`{}`", s.default),
        };
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            s.key,
            default,
            allowed,
            s.doc.replace('|', "\\|")
        ));
    }
    out
}

/// The example configuration file `deploy/sidelog.toml`: every setting, its doc, what it
/// allows, and its default as a commented-out line to uncomment and change. Rendered from the
/// declarations; a test fails when the file differs.
pub fn example_toml() -> String {
    let defaults = super::Config::default();
    let docs = settings();
    let mut out = String::from(
        "# sidelog.toml: every setting of `sidelog serve`, with its default (rendered from\n\
         # src/config/settings.rs; a test fails when they differ). Uncomment a line to change\n\
         # it. Each key is also a flag and a variable: delivery.lanes is --delivery-lanes and\n\
         # SIDELOG_DELIVERY_LANES. Sizes take units (\"2 MiB\"), durations too (\"5ms\", \"7d\").\n\
         # Use: sidelog serve --config sidelog.toml (--check-config to see what it makes).\n",
    );
    let mut section = "";
    for (key, value) in defaults.effective_toml() {
        let (this_section, name) = key.split_once('.').unwrap_or(("", key));
        if this_section != section {
            out.push_str(&format!("\n[{this_section}]\n"));
            section = this_section;
        }
        let setting = docs
            .iter()
            .find(|s| s.key == key)
            .expect("every key is declared");
        out.push('\n');
        let allowed = setting.rule.describe(setting.is_bytes());
        let mut doc = setting.doc.replace('`', "");
        if !allowed.is_empty() {
            doc.push_str(&format!(" Allowed: {allowed}."));
        }
        for line in wrap(&doc, 96) {
            out.push_str(&format!("# {line}\n"));
        }
        match defaults.shown(key, value) {
            Some(value) => out.push_str(&format!("#{name} = {value}\n")),
            None => out.push_str(&format!(
                "# Not set by default: {}.\n",
                setting.rule.default_text.unwrap_or("none").replace('`', "")
            )),
        }
    }
    out
}

/// `text` in lines of at most `width` characters, broken between words.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let line = lines.last_mut().expect("never empty");
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(word.to_owned());
        } else {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
    }
    lines
}
