//! The answers to a status or ping request, the same on the status listener (`http.rs`)
//! and on a listener's `status-path` / `ping-path` (`front.rs`).
use crate::registry::Registry;

/// A response: status code, content type, body.
pub(crate) struct Reply {
    pub code: u16,
    pub content_type: &'static str,
    pub body: String,
}

/// The status document for `query` (the part after '?') and an Accept header value.
pub(crate) fn status_reply(registry: &Registry, query: &str, accept: &str) -> Reply {
    let s = super::snapshot(registry);
    let has = |k: &str| query.split('&').any(|p| p == k || p == format!("format={k}"));
    if has("openmetrics") || has("metrics") {
        Reply { code: 200, content_type: super::openmetrics::CONTENT_TYPE, body: super::openmetrics::render(&s) }
    } else if !has("json") && (has("html") || accept.contains("text/html")) {
        Reply {
            code: 200,
            content_type: "text/html; charset=utf-8",
            body: super::html::render(&s, &super::history(registry)),
        }
    } else if has("history") {
        Reply {
            code: 200,
            content_type: "application/json",
            body: super::json::render_with_history(&s, &super::history(registry)),
        }
    } else {
        Reply { code: 200, content_type: "application/json", body: super::json::render(&s) }
    }
}

/// The ping answer (for load balancers and health checks): 503 while draining.
pub(crate) fn ping_reply(registry: &Registry) -> Reply {
    if registry.draining() {
        return Reply { code: 503, content_type: "text/plain; charset=utf-8", body: "draining\n".into() };
    }
    Reply { code: 200, content_type: "text/plain; charset=utf-8", body: "pong\n".into() }
}
