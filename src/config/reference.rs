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
