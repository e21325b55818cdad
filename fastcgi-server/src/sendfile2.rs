//! lighttpd's `X-Sendfile2` response header: files and byte ranges an app hands to the web
//! server to send, `<url-encoded path> <start>-<end>` entries separated by commas.

/// One entry of an `X-Sendfile2` value: a file and an inclusive byte range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// Percent-decoded filesystem path.
    pub path: Vec<u8>,
    pub start: u64,
    /// `None`: to the end of the file (`start-`).
    pub end: Option<u64>,
}

/// Why an `X-Sendfile2` value cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Sendfile2Error {
    #[error("X-Sendfile2 is empty; write `<url-encoded path> <start>-<end>[, ...]`")]
    Empty,
    #[error("X-Sendfile2 entry {0} is empty (two commas in a row?)")]
    EmptyEntry(usize),
    #[error("X-Sendfile2 entry {0} has no range after the path; write `<url-encoded path> <start>-<end>` or `<path> <start>-`")]
    MissingRange(usize),
    #[error("X-Sendfile2 entry {entry}: {range:?} is not a byte range; write `start-end` or `start-`")]
    BadRange { entry: usize, range: String },
    #[error("X-Sendfile2 entry {entry}: range {start}-{end} ends before it starts")]
    Backwards { entry: usize, start: u64, end: u64 },
    #[error("X-Sendfile2 entry {0} has text after its range (a path with spaces or commas must be url-encoded)")]
    Trailing(usize),
}

/// Parse lighttpd's `X-Sendfile2`: comma-separated `<url-encoded path> <start>-<end>`
/// entries, `start-` meaning to the end of the file; spaces around entries are ignored.
pub fn parse(value: &[u8]) -> Result<Vec<Piece>, Sendfile2Error> {
    if value.trim_ascii().is_empty() {
        return Err(Sendfile2Error::Empty);
    }
    let mut out = Vec::new();
    let entries: Vec<&[u8]> = value.split(|&b| b == b',').collect();
    for (i, entry) in entries.iter().enumerate() {
        let n = i + 1;
        let entry = entry.trim_ascii();
        if entry.is_empty() {
            // lighttpd accepts a trailing comma
            if n == entries.len() && n > 1 {
                break;
            }
            return Err(Sendfile2Error::EmptyEntry(n));
        }
        let mut words = entry.split(|&b| b == b' ').filter(|w| !w.is_empty());
        let path = words.next().unwrap_or_default();
        let Some(range) = words.next() else { return Err(Sendfile2Error::MissingRange(n)) };
        if words.next().is_some() {
            return Err(Sendfile2Error::Trailing(n));
        }
        let bad = || Sendfile2Error::BadRange { entry: n, range: String::from_utf8_lossy(range).into_owned() };
        let text = std::str::from_utf8(range).map_err(|_| bad())?;
        let (a, b) = text.split_once('-').ok_or_else(bad)?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
        if !digits(a) || !(b.is_empty() || digits(b)) {
            return Err(bad());
        }
        let start: u64 = a.parse().map_err(|_| bad())?;
        let end: Option<u64> = if b.is_empty() { None } else { Some(b.parse().map_err(|_| bad())?) };
        // `start-(start-1)` is an empty range (lighttpd sends nothing for it).
        if let Some(e) = end {
            if e.saturating_add(1) < start {
                return Err(Sendfile2Error::Backwards { entry: n, start, end: e });
            }
        }
        out.push(Piece { path: crate::path::percent_decode(path).into_owned(), start, end });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(path: &str, start: u64, end: Option<u64>) -> Piece {
        Piece { path: path.as_bytes().to_vec(), start, end }
    }

    #[test]
    fn sendfile2_values() {
        assert_eq!(parse(b"/a/b 0-9"), Ok(vec![piece("/a/b", 0, Some(9))]));
        assert_eq!(parse(b" /a%20b%2Cc 5- , /d 1-1,"), Ok(vec![piece("/a b,c", 5, None), piece("/d", 1, Some(1))]));
        // an empty range (start = end + 1) is allowed, as in lighttpd
        assert_eq!(parse(b"/a 3-2"), Ok(vec![piece("/a", 3, Some(2))]));
    }

    #[test]
    fn sendfile2_malformed() {
        assert_eq!(parse(b""), Err(Sendfile2Error::Empty));
        assert_eq!(parse(b"  "), Err(Sendfile2Error::Empty));
        assert_eq!(parse(b"/a"), Err(Sendfile2Error::MissingRange(1)));
        assert_eq!(parse(b"/a 0-1,/b"), Err(Sendfile2Error::MissingRange(2)));
        assert_eq!(parse(b"/a 0-1,,/b 0-1"), Err(Sendfile2Error::EmptyEntry(2)));
        assert_eq!(parse(b",/a 0-1"), Err(Sendfile2Error::EmptyEntry(1)));
        assert_eq!(parse(b"/a 1"), Err(Sendfile2Error::BadRange { entry: 1, range: "1".into() }));
        assert_eq!(parse(b"/a -5"), Err(Sendfile2Error::BadRange { entry: 1, range: "-5".into() }));
        assert_eq!(parse(b"/a x-5"), Err(Sendfile2Error::BadRange { entry: 1, range: "x-5".into() }));
        assert_eq!(parse(b"/a 1-+5"), Err(Sendfile2Error::BadRange { entry: 1, range: "1-+5".into() }));
        assert_eq!(
            parse(b"/a 99999999999999999999-"),
            Err(Sendfile2Error::BadRange { entry: 1, range: "99999999999999999999-".into() })
        );
        assert_eq!(parse(b"/a 9-2"), Err(Sendfile2Error::Backwards { entry: 1, start: 9, end: 2 }));
        assert_eq!(parse(b"/a b 0-1"), Err(Sendfile2Error::Trailing(1)));
        assert!(parse(b"/a 0-1 x").unwrap_err().to_string().contains("url-encoded"));
    }
}
