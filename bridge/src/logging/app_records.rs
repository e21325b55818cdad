//! The app's Python `logging` records, as the worker's handler (`logging_bridge.py`) writes
//! them to stderr: one line, a marker, then JSON with level, logger, message and request
//! id (and the app's own, when it put a `request_id` on the record). They become bridge log
//! events at the record's level, with pool, pid, logger and request id as fields, instead
//! of anonymous stderr warnings.
use serde::Deserialize;

/// Starts every structured record line (an ASCII unit separator, then a tag no app prints).
pub(crate) const MARKER: &str = "\u{1f}fcgibridge-log ";

#[derive(Deserialize)]
struct Record {
    level: String,
    logger: String,
    msg: String,
    request_id: Option<String>,
    /// The `request_id` the app set on the record (`extra=`, a filter), when not the bridge's.
    app_request_id: Option<String>,
}

/// Which request a record belongs to: the bridge's id, and the app's own.
struct Ids<'a> {
    bridge: &'a str,
    app: Option<&'a str>,
}

/// Log `line` if it is a structured record; false for any other line.
pub(crate) fn emit(pool: &str, pid: u32, line: &str) -> bool {
    let Some(json) = line.strip_prefix(MARKER) else { return false };
    let Ok(r) = serde_json::from_str::<Record>(json) else { return false };
    let app = r.app_request_id.as_deref().map(|id| super::escape::prefix(&super::escape::clean(id), 200).into_owned());
    let ids = Ids { bridge: r.request_id.as_deref().unwrap_or("-"), app: app.as_deref() };
    let logger = r.logger.as_str();
    let lines = r.msg.lines().filter(|l| !l.trim().is_empty());
    if super::keeps_lines_together() {
        // JSON: a traceback stays in its record's message, one event.
        let msg = super::app_lines::clean_lines(lines);
        if !msg.is_empty() {
            log_at(&r.level, pool, pid, logger, &ids, &msg);
        }
    } else {
        // Text: each line of the message is a log line with the fields, so no text of the
        // app's starts a line of its own.
        for line in lines {
            log_at(&r.level, pool, pid, logger, &ids, &super::escape::clean(line));
        }
    }
    true
}

/// The message of `line` if it is a structured record.
pub(crate) fn message(line: &str) -> Option<String> {
    let json = line.strip_prefix(MARKER)?;
    serde_json::from_str::<Record>(json).ok().map(|r| r.msg)
}

fn log_at(level: &str, pool: &str, pid: u32, logger: &str, ids: &Ids<'_>, msg: &str) {
    let (request_id, app_request_id) = (ids.bridge, ids.app);
    match level {
        "CRITICAL" | "ERROR" => tracing::error!(target: "app", pool, pid, logger, request_id, app_request_id, "{msg}"),
        "WARNING" => tracing::warn!(target: "app", pool, pid, logger, request_id, app_request_id, "{msg}"),
        "INFO" => tracing::info!(target: "app", pool, pid, logger, request_id, app_request_id, "{msg}"),
        _ => tracing::debug!(target: "app", pool, pid, logger, request_id, app_request_id, "{msg}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_marked_json_lines_are_records() {
        let line = format!("{MARKER}{{\"level\":\"INFO\",\"logger\":\"shop\",\"msg\":\"hi\",\"request_id\":\"7\"}}");
        assert!(emit("p", 1, &line));
        assert!(!emit("p", 1, "plain stderr text"));
        assert!(!emit("p", 1, &format!("{MARKER}not json")));
        assert_eq!(message(&line).as_deref(), Some("hi"));
        assert_eq!(message("plain stderr text"), None);
    }
}
