//! The status as one JSON document (the model's serde form).
use super::model::Status;

/// Pretty-printed JSON, newline-terminated.
pub fn render(s: &Status) -> String {
    let mut out = serde_json::to_string_pretty(s).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    out.push('\n');
    out
}
