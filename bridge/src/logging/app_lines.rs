//! What an app writes to the log — its stderr and stdout lines, STDERR records, `logging`
//! records — is the app's text, and on a shared box the app may be hostile: each pool has
//! a budget of lines a second ([`LineBudget`]) that its workers share (a worker that
//! crashes gets no fresh one), a long line costing one line per KiB, and control characters
//! are escaped
//! ([`clean`]) so that no text of the app's can start a line of its own or rewrite one
//! on a terminal. A traceback (a few dozen lines at once) fits the burst; a flood is
//! counted, and the count is logged with the next line that fits.
use super::escape::clean;
use std::sync::Mutex;
use std::time::Instant;

/// Lines a second one pool may log, and the burst it may log at once.
const RATE: f64 = 200.0;
/// Room for the stack dumps the bridge asks for (slowlog, request-timeout) of a worker with
/// many threads or tasks.
const BURST: f64 = 5000.0;

/// One pool's budget of log lines (see the module).
#[derive(Debug)]
pub(crate) struct LineBudget {
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
    dropped: u64,
}

/// What to do with the next line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Take {
    Log,
    /// Log it, after a line saying how many were not logged before it.
    LogAfterDropped(u64),
    Drop,
}

impl Default for LineBudget {
    fn default() -> Self {
        Self { state: Mutex::new(Bucket { tokens: BURST, at: Instant::now(), dropped: 0 }) }
    }
}

/// A line costs one more for each KiB it holds: a flood of long lines (a worker cuts
/// them at 16 KiB) is held to about as many bytes as one of short ones.
const BYTES_PER_LINE: usize = 1024;

impl LineBudget {
    /// Take one line of `len` bytes.
    pub(crate) fn take(&self, len: usize) -> Take {
        self.take_at(Instant::now(), len)
    }

    fn take_at(&self, now: Instant, len: usize) -> Take {
        let cost = (1 + len / BYTES_PER_LINE) as f64;
        let mut b = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * RATE).min(BURST);
        b.at = now;
        if b.tokens < cost {
            b.dropped += 1;
            return Take::Drop;
        }
        b.tokens -= cost;
        match std::mem::take(&mut b.dropped) {
            0 => Take::Log,
            n => Take::LogAfterDropped(n),
        }
    }

    /// Whether worker `pool`/`pid` may log one more line of `len` bytes; the count of the
    /// lines held back before it is logged first.
    pub(crate) fn admit(&self, pool: &str, pid: u32, len: usize) -> bool {
        match self.take(len) {
            Take::Log => true,
            Take::LogAfterDropped(n) => {
                log_dropped(pool, pid, n);
                true
            }
            Take::Drop => false,
        }
    }

    /// Lines not logged since the last one that was (for the worker's end).
    pub(crate) fn dropped(&self) -> u64 {
        std::mem::take(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()).dropped)
    }
}

/// The line saying how many lines a worker's budget held back.
pub(crate) fn log_dropped(pool: &str, pid: u32, n: u64) {
    tracing::warn!(pool, pid, "{n} lines of the app's output not logged (more than {RATE} a second)");
}

/// How a worker's report of a failed request starts, logged as an error rather than as the
/// app's other output: a Python traceback, or the worker's own finding of what the app did
/// wrong (a str yielded, no start_response; written by the worker's `report_error`).
pub(crate) const APP_FAILURES: [&str; 2] =
    ["Traceback (most recent call last):", "fcgibridge worker: the application failed: "];

/// Whether `text` (one STDERR record, or the lines of one) holds such a report anywhere.
pub(crate) fn holds_a_failure(text: &[u8]) -> bool {
    APP_FAILURES.iter().any(|marker| text.windows(marker.len()).any(|w| w == marker.as_bytes()))
}

/// The tag a direct worker's line begins with, `[request_id=… METHOD URI] ` (`None`: the
/// line has none).
pub(crate) fn request_tag(line: &str) -> Option<&str> {
    const OPEN: &str = "[request_id=";
    let end = line.strip_prefix(OPEN)?.find("] ")?;
    Some(&line[..OPEN.len() + end + 2])
}

/// A direct worker tags only a line's start: when the bridge logs a line in parts (its rest
/// came too late, or it was too long), the rest gets the tag of the part before it, unless
/// it carries a tag of its own (another request's line, written meanwhile by another
/// thread or task).
#[derive(Default)]
pub(crate) struct LineParts {
    carried: Option<String>,
}

impl LineParts {
    /// `text` as logged; `whole`: it ends its line.
    pub(crate) fn text(&mut self, mut text: String, whole: bool) -> String {
        if let Some(tag) = self.carried.take().filter(|_| request_tag(&text).is_none()) {
            text.insert_str(0, &tag);
        }
        if !whole {
            self.carried = request_tag(&text).map(str::to_owned);
        }
        text
    }
}

/// A direct worker writes each request's stderr lines behind the request's tag
/// (`[request_id=… METHOD URI] `): whether `line` belongs to a failure report, the lines
/// after a report's first one known by their tag. `failing`: the tag of the report being
/// read, kept between calls.
pub(crate) fn reports_a_failure(failing: &mut Option<String>, line: &str) -> bool {
    let Some(tag) = request_tag(line) else {
        *failing = None;
        return false;
    };
    let text = &line[tag.len()..];
    if APP_FAILURES.iter().any(|marker| text.starts_with(marker)) {
        *failing = Some(tag.to_owned());
        return true;
    }
    let same = failing.as_deref() == Some(tag);
    if !same {
        *failing = None;
    }
    same
}

/// `lines`, each escaped as [`clean`] escapes it, joined by newlines: one event's message
/// where the log format escapes newlines ([`super::keeps_lines_together`]).
pub(crate) fn clean_lines<'a>(lines: impl Iterator<Item = &'a str>) -> String {
    let mut out = String::new();
    for line in lines {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&clean(line));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_request_tag_is_the_lines_start_up_to_its_bracket() {
        assert_eq!(request_tag("[request_id=12-3 GET /a?b] text] more"), Some("[request_id=12-3 GET /a?b] "));
        assert_eq!(request_tag("[request_id=12-3 GET /a"), None, "unclosed");
        assert_eq!(request_tag("text [request_id=12-3 GET /a] "), None, "not at the start");
    }

    #[test]
    fn the_rest_of_a_line_logged_in_parts_keeps_its_tag_unless_it_has_another() {
        let mut parts = LineParts::default();
        let tag = "[request_id=7-1 GET /a] ";
        assert_eq!(parts.text(format!("{tag}begun "), false), format!("{tag}begun "));
        assert_eq!(parts.text("more ".into(), false), format!("{tag}more "));
        assert_eq!(parts.text("ended".into(), true), format!("{tag}ended"));
        assert_eq!(parts.text("untagged".into(), true), "untagged", "the line was over");
        // Another request's line in between keeps its own tag, and is not glued to the first.
        assert_eq!(parts.text(format!("{tag}begun "), false), format!("{tag}begun "));
        let other = "[request_id=7-2 GET /b] Traceback (most recent call last):";
        assert_eq!(parts.text(other.into(), true), other);
        assert_eq!(parts.text("plain".into(), true), "plain", "not carried past another's line");
    }

    #[test]
    fn a_direct_workers_failure_report_is_known_by_its_first_line_and_its_tag() {
        let mut failing = None;
        let lines = [
            ("[request_id=7-1 GET /a] wsgi.errors line", false),
            ("[request_id=7-2 GET /b] Traceback (most recent call last):", true),
            ("[request_id=7-2 GET /b]   File \"app.py\", line 3, in application", true),
            ("[request_id=7-2 GET /b] RuntimeError: boom", true),
            ("[request_id=7-3 GET /c] another request's line", false),
            ("[request_id=7-2 GET /b] after another request's line", false),
            ("[request_id=7-4 GET /d] fcgibridge worker: the application failed: TypeError: str", true),
            ("a line of the process, untagged", false),
            ("[request_id=7-4 GET /d] after an untagged line", false),
        ];
        for (line, error) in lines {
            assert_eq!(reports_a_failure(&mut failing, line), error, "{line}");
        }
    }

    #[test]
    fn each_line_is_escaped() {
        assert_eq!(clean_lines("Traceback:\n  x\x1b\r\n".lines()), "Traceback:\n  x\\x1b");
    }

    #[test]
    fn a_burst_fits_and_a_flood_is_counted() {
        let budget = LineBudget::default();
        let t0 = Instant::now();
        assert!((0..5000).all(|_| budget.take_at(t0, 80) == Take::Log));
        assert_eq!(budget.take_at(t0, 80), Take::Drop);
        assert_eq!(budget.take_at(t0, 80), Take::Drop);
        // 10 ms later two lines' worth came back: the first says what was dropped.
        let later = t0 + Duration::from_millis(10);
        assert_eq!(budget.take_at(later, 80), Take::LogAfterDropped(2));
        assert_eq!(budget.take_at(later, 80), Take::Log);
        assert_eq!(budget.take_at(later, 80), Take::Drop);
        assert_eq!(budget.dropped(), 1);
        assert_eq!(budget.dropped(), 0);
    }

    #[test]
    fn a_long_line_costs_a_line_per_kib() {
        let budget = LineBudget::default();
        let t0 = Instant::now();
        // 16 KiB pieces cost 17 lines each: the burst holds 294 of them, not 5,000.
        let fit = (0..5000).take_while(|_| budget.take_at(t0, 16 << 10) == Take::Log).count();
        assert_eq!(fit, 5000 / 17);
        // Short lines still fit the rest of the burst.
        assert_eq!(budget.take_at(t0, 10), Take::LogAfterDropped(1));
    }
}
