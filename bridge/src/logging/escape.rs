//! Text from outside — a client's URI, method and headers, the web server's params, an
//! app's output — is written to the log, the access log, the status page and the terminal
//! with its control characters escaped (`\n`, `\r`, `\x1b`, …): it can neither start a line
//! of its own nor rewrite one on a terminal.
//!
//! The daemon's text log escapes every field and message as it writes them
//! ([`OneLineFields`]), so no log line needs to escape what it names, and the request path
//! does no work for it. (JSON escapes control characters itself.)
use std::borrow::Cow;
use std::fmt::{self, Write};
use tracing::field::{Field, Visit};
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::{DefaultFields, DefaultVisitor, Writer};

/// `text` with every control character but tab escaped (`\n`, `\r`, `\x1b`, …): one line,
/// whatever was sent. Borrowed when there is nothing to escape.
pub(crate) fn clean(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_escaped) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    let _ = Escaping(&mut out).write_str(text);
    Cow::Owned(out)
}

/// `bytes` as text (invalid UTF-8 replaced), escaped as [`clean`] escapes it.
pub(crate) fn clean_bytes(bytes: &[u8]) -> Cow<'_, str> {
    let text = String::from_utf8_lossy(bytes);
    if let Cow::Owned(escaped) = clean(&text) {
        return Cow::Owned(escaped);
    }
    text
}

/// At most `max` bytes of `text`, cut at a character boundary, with `…` when cut.
pub(crate) fn prefix(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…", &text[..end]))
}

fn is_escaped(c: char) -> bool {
    (c.is_control() && c != '\t') || c == '\u{2028}' || c == '\u{2029}'
}

/// A writer that passes on what is written to it, escaped as [`clean`] escapes it.
struct Escaping<W>(W);

impl<W: Write> Write for Escaping<W> {
    fn write_str(&mut self, mut s: &str) -> fmt::Result {
        while let Some(at) = s.find(is_escaped) {
            self.0.write_str(&s[..at])?;
            let c = s[at..].chars().next().unwrap_or_default();
            match c {
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                c => write!(self.0, "\\x{:02x}", c as u32)?,
            }
            s = &s[at + c.len_utf8()..];
        }
        self.0.write_str(s)
    }
}

/// The text log's fields: tracing-subscriber's own format, each value and the message
/// written through [`Escaping`] (a `%uri` or a `{}` in a message is the sender's text).
pub(crate) struct OneLineFields;

impl<'w> MakeVisitor<Writer<'w>> for OneLineFields {
    type Visitor = OneLineVisitor<'w>;

    fn make_visitor(&self, target: Writer<'w>) -> Self::Visitor {
        OneLineVisitor(DefaultFields::new().make_visitor(target))
    }
}

pub(crate) struct OneLineVisitor<'w>(DefaultVisitor<'w>);

impl Visit for OneLineVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            // Written as Debug, quoted and already escaped.
            self.0.record_str(field, value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record_debug(field, &format_args!("{value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.record_debug(field, &Escaped(value));
    }
}

impl VisitOutput<fmt::Result> for OneLineVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.0.finish()
    }
}

impl VisitFmt for OneLineVisitor<'_> {
    fn writer(&mut self) -> &mut dyn Write {
        self.0.writer()
    }
}

/// A value whose Debug text is escaped.
struct Escaped<'a>(&'a dyn fmt::Debug);

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(Escaping(f), "{:?}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn controls_are_escaped_and_plain_text_is_borrowed() {
        assert!(matches!(clean("plain\ttext é"), Cow::Borrowed(_)));
        assert_eq!(clean("a\nb\rc\0d\x1b[31m\u{85}\u{2028}é"), "a\\nb\\rc\\x00d\\x1b[31m\\x85\\x2028é");
        assert!(matches!(clean_bytes(b"/a?b=c"), Cow::Borrowed("/a?b=c")));
        assert_eq!(clean_bytes(b"/a\n\xff\x1b[2J"), "/a\\n\u{fffd}\\x1b[2J");
        assert_eq!(clean_bytes(b"/\xff"), "/\u{fffd}");
        assert_eq!(prefix("/é/x", 2), "/…");
        assert_eq!(prefix("/a", 2), "/a");
    }

    /// What the text log writes for the events `log` makes.
    fn text_log(log: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Out(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Out {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let out = Out::default();
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(OneLineFields)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        let bytes = out.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn a_log_line_is_one_line_whatever_its_fields_hold() {
        let uri = "/read\n2026-12-05T03:06:00Z ERROR fcgibridge::daemon: FORGED\x1b[2J";
        let err = std::io::Error::other("bad\nline");
        let text = text_log(|| {
            tracing::warn!(pool = "app", uri = %uri, shown = uri, error = &err as &dyn std::error::Error, "slow request: GET {uri} after {}", 2);
        });
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(!text.contains('\x1b'), "{text}");
        let forged = r"/read\n2026-12-05T03:06:00Z ERROR fcgibridge::daemon: FORGED\x1b[2J";
        assert!(text.contains(&format!("slow request: GET {forged} after 2 ")), "{text}");
        assert!(text.contains(&format!(" pool=\"app\" uri={forged} ")), "{text}");
        // A &str field is written as Debug, as before.
        assert!(text.contains(r#" shown="/read\n2026"#), "{text}");
        assert!(text.ends_with(" error=bad\\nline\n"), "{text}");
        // Plain text is written as tracing-subscriber writes it.
        let plain = text_log(|| tracing::info!(listener = %"web", n = 3, ok = true, "no route matches: {}", "/x"));
        assert!(plain.ends_with(" no route matches: /x listener=web n=3 ok=true\n"), "{plain}");
    }
}
