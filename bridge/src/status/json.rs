//! The status as one JSON document (the model's serde form).
use super::model::{History, Status};

/// Pretty-printed JSON, newline-terminated.
pub(crate) fn render(s: &Status) -> String {
    let mut out = serde_json::to_string_pretty(s).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    out.push('\n');
    out
}

/// The status document with the charts' data under `history`, compact (the columns are
/// long; pretty-printed they would put every number on a line of its own).
pub(crate) fn render_with_history(s: &Status, h: &History) -> String {
    #[derive(serde::Serialize)]
    struct WithHistory<'a> {
        #[serde(flatten)]
        status: &'a Status,
        history: &'a History,
    }
    let mut out = serde_json::to_string(&WithHistory { status: s, history: h })
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    out.push('\n');
    out
}
