//! HTTP byte ranges (RFC 9110 §14): a `Range` header's byte-range set resolved against a
//! representation's length, and merged so that a response sends as few parts as it can.

/// `bytes=a-b, c-, -n` → the satisfiable inclusive ranges of a `len`-byte representation, in
/// the order written; `Some(empty)` when none is satisfiable (416); `None` when the header is
/// not a byte-range set (ignored: 200). The unit is case-insensitive, positions are digits,
/// and empty list elements (`bytes=0-1,,`) are allowed as long as one range is there.
pub fn parse(value: &[u8], len: u64) -> Option<Vec<(u64, u64)>> {
    let v = std::str::from_utf8(value).ok()?.trim();
    let (unit, set) = v.split_once('=')?;
    if !unit.eq_ignore_ascii_case("bytes") {
        return None;
    }
    let specs: Vec<&str> = set.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    if specs.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for spec in specs {
        let (a, b) = spec.split_once('-')?;
        let (first, last) = if a.is_empty() {
            (None, position(b)?)
        } else {
            let s = position(a)?;
            let e = if b.is_empty() { u64::MAX } else { position(b)? };
            if e < s {
                return None; // syntactically invalid: the header is ignored
            }
            (Some(s), e)
        };
        // An empty representation has no byte to give (every range unsatisfiable).
        let Some(end) = len.checked_sub(1) else { continue };
        match first {
            // The last `last` bytes (none: unsatisfiable).
            None if last == 0 => continue,
            None => out.push((len.saturating_sub(last), end)),
            Some(s) if s > end => continue,
            Some(s) => out.push((s, last.min(end))),
        }
    }
    Some(out)
}

/// A range's first or last position: one or more digits (`+5`, ` 5`, `0x5` are none).
fn position(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `ranges` sorted, with those that overlap, touch or lie at most `gap` bytes apart merged:
/// a client asking for many small or overlapping ranges gets no more parts, nor bytes, than
/// the distinct stretches it named.
pub fn coalesce(mut ranges: Vec<(u64, u64)>, gap: u64) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (s, e) in ranges {
        match out.last_mut() {
            Some(last) if s <= last.1.saturating_add(gap).saturating_add(1) => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse(b"bytes=0-9", 100), Some(vec![(0, 9)]));
        assert_eq!(parse(b"bytes=90-", 100), Some(vec![(90, 99)]));
        assert_eq!(parse(b"bytes=-5", 100), Some(vec![(95, 99)]));
        assert_eq!(parse(b"bytes=-500", 100), Some(vec![(0, 99)]));
        assert_eq!(parse(b"bytes=0-1, 5-200", 100), Some(vec![(0, 1), (5, 99)]));
        assert_eq!(parse(b"bytes=200-300", 100), Some(vec![]));
        assert_eq!(parse(b"bytes=-0", 100), Some(vec![]));
        assert_eq!(parse(b"items=0-1", 100), None);
        assert_eq!(parse(b"bytes=5-1", 100), None);
        // The largest positions: no overflow.
        assert_eq!(parse(b"bytes=18446744073709551615-", 100), Some(vec![]));
        assert_eq!(parse(b"bytes=0-18446744073709551615", 100), Some(vec![(0, 99)]));
        assert_eq!(parse(b"bytes=0-18446744073709551616", 100), None);
    }

    #[test]
    fn an_empty_representation_has_no_satisfiable_range() {
        for value in ["bytes=0-1", "bytes=-5", "bytes=0-", "bytes=-0"] {
            assert_eq!(parse(value.as_bytes(), 0), Some(vec![]), "{value}");
        }
        assert_eq!(parse(b"bytes=5-1", 0), None);
    }

    #[test]
    fn ranges_as_rfc_9110_writes_them() {
        // The unit is case-insensitive.
        assert_eq!(parse(b"BYTES=0-1", 100), Some(vec![(0, 1)]));
        assert_eq!(parse(b"Bytes=-1", 100), Some(vec![(99, 99)]));
        // Positions are digits: anything else makes the header invalid (ignored: 200).
        for bad in ["bytes=+5-10", "bytes=5-+10", "bytes=-+5", "bytes=0x10-20", "bytes=1 -2", "bytes=-", "bytes=5"] {
            assert_eq!(parse(bad.as_bytes(), 100), None, "{bad}");
        }
        // Empty list elements are allowed, not a list of nothing but them.
        assert_eq!(parse(b"bytes=0-1,,", 100), Some(vec![(0, 1)]));
        assert_eq!(parse(b"bytes=, 0-1 ,, 5-6", 100), Some(vec![(0, 1), (5, 6)]));
        assert_eq!(parse(b"bytes=", 100), None);
        assert_eq!(parse(b"bytes= , ,", 100), None);
    }

    #[test]
    fn ranges_are_sorted_and_coalesced() {
        let merged = |r: Vec<(u64, u64)>| coalesce(r, 80);
        assert_eq!(merged(vec![(150, 299), (0, 99), (50, 199)]), vec![(0, 299)]);
        assert_eq!(merged(vec![(0, 9), (10, 19)]), vec![(0, 19)]);
        // a gap of 80 bytes is sent; of 81, two parts
        assert_eq!(merged(vec![(90, 99), (0, 9)]), vec![(0, 99)]);
        assert_eq!(merged(vec![(91, 99), (0, 9)]), vec![(0, 9), (91, 99)]);
        assert_eq!(merged(vec![(0, 99_999); 500]), vec![(0, 99_999)]);
        assert_eq!(merged(vec![(5000, 5009), (0, 9), (2, 3)]), vec![(0, 9), (5000, 5009)]);
        assert_eq!(merged(vec![(0, u64::MAX), (5, 6)]), vec![(0, u64::MAX)]);
        assert_eq!(coalesce(vec![(0, 1), (u64::MAX, u64::MAX)], u64::MAX), vec![(0, u64::MAX)]);
    }
}
