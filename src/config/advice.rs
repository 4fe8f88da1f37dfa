//! Advice for the TOML mistakes users make, in place of the parser's own terms.

use std::ops::Range;

/// The TOML parser's message with what to write instead, for the two mistakes it words in
/// its own terms: a list of tables written as one table (`[identities]` for
/// `[[identities]]`), and text written without quotes (`listen = 0.0.0.0:7835`, which TOML
/// reads as a broken number).
pub(super) fn advice(text: &str, span: &Range<usize>, msg: String) -> String {
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("").trim();
    if msg.contains("invalid type: map, expected a sequence") {
        if let Some(table) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            if !table.starts_with('[') {
                return format!(
                    "[{table}] is a list of tables: write [[{table}]] (two brackets) above each entry"
                );
            }
        }
    }
    if let Some((key, value)) = line.split_once('=') {
        let value = value.trim();
        let unquoted = !value.is_empty()
            && !value.starts_with(['"', '\'', '[', '{'])
            && value.parse::<f64>().is_err()
            && !matches!(value, "true" | "false");
        if unquoted {
            return format!(
                "{msg}: text must be quoted, e.g. {} = \"{value}\"",
                key.trim()
            );
        }
    }
    msg
}
