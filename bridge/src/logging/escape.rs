//! Text from outside — a client's URI, method and headers, the web server's params, an
//! app's output — is written to the log, the access log, the status page and the terminal
//! with its control characters escaped (`\n`, `\r`, `\x1b`, …): it can neither start a line
//! of its own nor rewrite one on a terminal.
//!
//! The daemon's text log escapes every field and message as it writes them
//! ([`OneLineFields`]), so no log line needs to escape what it names, and the request path
//! does no work for it. The JSON log escapes what JSON leaves raw ([`JsonSafe`]).
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
        // A request id (digits, or a direct worker's `<pid>-<n>`) is written bare however
        // the line got it, as the worker's `[request_id=…]` tags are: one grep finds them all.
        // Anything else in that field (an app's record may carry its own) is quoted.
        let an_id = |v: &str| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit() || b == b'-');
        if field.name() == "message" || (field.name() == "request_id" && an_id(value)) {
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
        // A field's value is bare when it is one word. One with a blank, a quote or an `=`
        // (a client's URI, an app's redirect target, an error's text) is quoted, as a &str
        // field is: else `uri=/x pool="other"` reads as two fields to a logfmt parser, and
        // some refuse `uri=/x?a=b`. A `?` field whose Debug form is quoted already stays so.
        if field.name() == "message" {
            return self.0.record_debug(field, &Escaped(value));
        }
        let text = format!("{value:?}");
        let quoted = text.len() >= 2 && text.starts_with('"') && text.ends_with('"');
        if text.is_empty() || (!quoted && text.contains([' ', '\t', '"', '='])) {
            self.0.record_debug(field, &Quoted(&text));
        } else {
            self.0.record_debug(field, &Escaped(&format_args!("{text}")));
        }
    }
}

/// A value in quotes: `"` and `\` escaped by a backslash, controls as [`clean`] escapes
/// them (the same `\x1b` as in the message and in a bare value).
struct Quoted<'a>(&'a str);

impl fmt::Debug for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.0.replace('\\', "\\\\").replace('"', "\\\"");
        f.write_char('"')?;
        Escaping(&mut *f).write_str(&inner)?;
        f.write_char('"')
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

/// The JSON log's writer. JSON escapes only U+0000–U+001F inside its strings; DEL, the C1
/// controls (U+0080–U+009F: `\u{9b}` starts a terminal escape like ESC `[`) and U+2028/U+2029
/// (line breaks to JavaScript and some viewers) pass through raw. They are written as
/// `\uXXXX` here, which keeps the line valid JSON with the same strings: outside its strings
/// a JSON line is ASCII, so these bytes only occur inside them.
pub(crate) struct JsonSafe<W>(pub W);

impl<W: std::io::Write> std::io::Write for JsonSafe<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let raw = |i: usize| match buf[i] {
            0x7f => Some((1, 0x7f)),
            0xc2 => buf.get(i + 1).filter(|b| (0x80..=0x9f).contains(*b)).map(|&b| (2, u32::from(b))),
            0xe2 if buf.get(i + 1) == Some(&0x80) => {
                buf.get(i + 2).filter(|b| matches!(b, 0xa8 | 0xa9)).map(|&b| (3, 0x2000 | (u32::from(b) - 0x80)))
            }
            _ => None,
        };
        let Some(first) = (0..buf.len()).find(|&i| raw(i).is_some()) else {
            return self.0.write(buf);
        };
        // One write of the whole line, as the formatter made it (a log line is not split).
        let mut out = Vec::with_capacity(buf.len() + 16);
        out.extend_from_slice(&buf[..first]);
        let mut i = first;
        while i < buf.len() {
            match raw(i) {
                Some((len, code)) => {
                    let _ = std::io::Write::write_fmt(&mut out, format_args!("\\u{code:04x}"));
                    i += len;
                }
                None => {
                    out.push(buf[i]);
                    i += 1;
                }
            }
        }
        self.0.write_all(&out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl<'a, M: tracing_subscriber::fmt::MakeWriter<'a>> tracing_subscriber::fmt::MakeWriter<'a> for JsonSafe<M> {
    type Writer = JsonSafe<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        JsonSafe(self.0.make_writer())
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        JsonSafe(self.0.make_writer_for(meta))
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
    fn the_json_log_escapes_what_json_leaves_raw() {
        let mut out = Vec::new();
        let line = "{\"uri\":\"/a\u{7f}b\u{9b}2J\u{85}\u{2028}\u{2029}\u{2027}é\u{a0}\"}\n";
        let n = std::io::Write::write(&mut JsonSafe(&mut out), line.as_bytes()).unwrap();
        assert_eq!(n, line.len());
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text, "{\"uri\":\"/a\\u007fb\\u009b2J\\u0085\\u2028\\u2029\u{2027}é\u{a0}\"}\n");
        // Still JSON, with the same string.
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["uri"], "/a\u{7f}b\u{9b}2J\u{85}\u{2028}\u{2029}\u{2027}é\u{a0}");
        let mut plain = Vec::new();
        std::io::Write::write(&mut JsonSafe(&mut plain), b"{\"a\":1}\n").unwrap();
        assert_eq!(plain, b"{\"a\":1}\n");
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
        // A field of several words is quoted, its controls escaped as in the message.
        assert!(
            text.contains(r#" pool="app" uri="/read\n2026-12-05T03:06:00Z ERROR fcgibridge::daemon: FORGED\x1b[2J" "#),
            "{text}"
        );
        // A &str field is written as Debug, as before.
        assert!(text.contains(r#" shown="/read\n2026"#), "{text}");
        assert!(text.ends_with(" error=bad\\nline\n"), "{text}");
        // A value of more than one word is quoted, so that it cannot read as more fields.
        let text = text_log(|| tracing::warn!(uri = %r#"/a b\"c"#, "x"));
        assert!(text.ends_with(&(r#" x uri="/a b\\\"c""#.to_owned() + "\n")), "{text}");
        let text = text_log(|| tracing::warn!(uri = %"/x?a=b", path = ?std::path::Path::new("/run/x"), "x"));
        assert!(text.ends_with(" x uri=\"/x?a=b\" path=\"/run/x\"\n"), "{text}");
        let spoof = "/x pool=\"other\"";
        let err = std::io::Error::other("Connection refused (os error 111)");
        let text = text_log(|| {
            tracing::warn!(uri = %spoof, target = %"", error = &err as &dyn std::error::Error, "redirect");
        });
        assert!(
            text.ends_with(
                " redirect uri=\"/x pool=\\\"other\\\"\" target=\"\" error=\"Connection refused (os error 111)\"\n"
            ),
            "{text}"
        );
        // Plain text is written as tracing-subscriber writes it.
        let plain = text_log(|| tracing::info!(listener = %"web", n = 3, ok = true, "no route matches: {}", "/x"));
        assert!(plain.ends_with(" no route matches: /x listener=web n=3 ok=true\n"), "{plain}");
    }

    #[test]
    fn a_request_id_is_written_bare_however_it_was_given() {
        let (id, direct) = ("812", "4242-17");
        let text = text_log(|| {
            tracing::error!(pool = "app", request_id = id, "request-timeout: answering 504");
            tracing::error!(pool = "app", request_id = 812u64, "worker did not end it");
            tracing::error!(pool = "app", request_id = %direct, "request-timeout");
            tracing::error!(pool = "app", request_id = "x ok=1", "an app's own id");
        });
        let ids: Vec<_> = text.lines().map(|l| l.split_once(" request_id=").map_or("", |(_, id)| id)).collect();
        assert_eq!(ids, ["812", "812", "4242-17", "\"x ok=1\""], "{text}");
    }
}
