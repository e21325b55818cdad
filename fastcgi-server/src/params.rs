//! Name-value pairs (FastCGI section 3.4): PARAMS, GET_VALUES(_RESULT), SCGI headers.
//!
//! Each pair is `nameLength valueLength name value`; a length below 128 takes one byte, longer
//! ones take four with the high bit set. A PARAMS stream is one byte sequence cut into records
//! anywhere — h2o cuts at 65535 bytes even inside a pair — so [`ParamsDecoder`] carries an
//! incomplete pair over to the next record.
//!
//! Decoding copies nothing except a pair that straddles two records: [`Params`] keeps the
//! received record contents and, per pair, the offsets of its name and value in them. That
//! also spares a reference-count update per name and value, which was most of the cost of
//! decoding a typical request.
use std::collections::HashMap;
use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use crate::{Error, Limits};

/// Where a name or value lies: a range of one of the stored chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    chunk: u32,
    start: usize,
    len: usize,
}

/// The empty name or value, valid whatever is stored.
const EMPTY: Span = Span { chunk: 0, start: 0, len: 0 };

/// A request's parameters in arrival order; a repeated name keeps its LAST value, except
/// `HTTP_COOKIE`.
///
/// A repeated name stays at the position of its FIRST occurrence and takes the value of its
/// last one: nginx repeats a name when a `fastcgi_param` overrides one from `fastcgi_params`
/// (`SCRIPT_FILENAME` set again after the include), HAProxy when a `set-param HTTP_…`
/// overrides a client's header (it comes after the header; nginx leaves such a header out
/// instead), and the override must win. A repeated `HTTP_COOKIE` is the client's cookies
/// in several headers, which nginx before 1.23 passes as one pair each: they are joined
/// with `; ` (as nginx 1.23 and Apache join them), so that none is lost. Names are
/// compared byte for byte, case-sensitively.
#[derive(Clone, Default)]
pub struct Params {
    entries: Vec<(Span, Span)>,
    /// Chunk 0: usually the whole PARAMS record, so one request needs no other.
    first: Bytes,
    /// Chunks 1..: further records, straddling pairs joined, inserted names and values.
    more: Vec<Bytes>,
}

impl Params {
    /// An empty set with room for `n` pairs.
    pub fn with_capacity(n: usize) -> Self {
        Self { entries: Vec::with_capacity(n), ..Self::default() }
    }
    /// Build from pairs; a repeated name keeps its last value (at its first position).
    pub fn from_pairs(pairs: Vec<(Bytes, Bytes)>) -> Self {
        let mut p = Self::with_capacity(pairs.len());
        for (n, v) in pairs {
            let n = p.store(n);
            let v = p.store(v);
            p.entries.push((n, v));
        }
        p.dedup_last_wins();
        p
    }
    /// The value of `name`.
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        // From the back so that the last value wins even before de-duplication.
        self.entries.iter().rev().find(|(n, _)| self.slice(*n) == name).map(|(_, v)| self.slice(*v))
    }
    /// The value of `name` as a [`Bytes`] sharing the received buffer.
    pub fn get_bytes(&self, name: &[u8]) -> Option<Bytes> {
        self.entries.iter().rev().find(|(n, _)| self.slice(*n) == name).map(|(_, v)| self.bytes(*v))
    }
    /// The pairs in order, each name once.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.entries.iter().map(|(n, v)| (self.slice(*n), self.slice(*v)))
    }
    /// The pairs as [`Bytes`] sharing the received buffer, names unique, in order.
    pub fn into_pairs(self) -> Vec<(Bytes, Bytes)> {
        self.entries.iter().map(|(n, v)| (self.bytes(*n), self.bytes(*v))).collect()
    }
    /// How many distinct names.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    /// Whether there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    /// Add or replace (last wins). A replaced value's storage is kept until the `Params` drops.
    pub fn insert(&mut self, name: impl Into<Bytes>, value: impl Into<Bytes>) {
        let name = name.into();
        let value = value.into();
        match self.entries.iter().position(|(n, _)| self.slice(*n) == &name[..]) {
            Some(i) => {
                let v = self.store(value);
                self.entries[i].1 = v;
            }
            None => {
                let n = self.store(name);
                let v = self.store(value);
                self.entries.push((n, v));
            }
        }
    }
    /// Remove `name`, returning its value.
    pub fn remove(&mut self, name: &[u8]) -> Option<Bytes> {
        let i = self.entries.iter().position(|(n, _)| self.slice(*n) == name)?;
        let (_, v) = self.entries.remove(i);
        Some(self.bytes(v))
    }
    /// Bytes these pairs take when encoded with [`write_pair`].
    pub fn encoded_len(&self) -> usize {
        self.iter().map(|(n, v)| pair_len(n, v)).sum()
    }

    #[inline]
    fn chunk(&self, i: u32) -> &Bytes {
        match i {
            0 => &self.first,
            // Spans are only made by `store`/`next_chunk`, which keep the index in range.
            i => &self.more[i as usize - 1],
        }
    }
    #[inline]
    fn slice(&self, s: Span) -> &[u8] {
        &self.chunk(s.chunk)[s.start..s.start + s.len]
    }
    fn bytes(&self, s: Span) -> Bytes {
        self.chunk(s.chunk).slice(s.start..s.start + s.len)
    }
    /// The index the next stored chunk gets.
    #[inline]
    fn next_chunk(&self) -> u32 {
        if self.first.is_empty() && self.more.is_empty() {
            0
        } else {
            self.more.len() as u32 + 1
        }
    }
    /// Keep `b` and return its index (see `next_chunk`).
    fn add_chunk(&mut self, b: Bytes) -> u32 {
        let i = self.next_chunk();
        if i == 0 {
            self.first = b;
        } else {
            self.more.push(b);
        }
        i
    }
    fn store(&mut self, b: Bytes) -> Span {
        if b.is_empty() {
            return EMPTY;
        }
        let len = b.len();
        Span { chunk: self.add_chunk(b), start: 0, len }
    }

    /// Params over one received block (SCGI headers): chunk 0 is `block`.
    pub(crate) fn over_block(block: Bytes, capacity: usize) -> Self {
        Self { entries: Vec::with_capacity(capacity), first: block, more: Vec::new() }
    }
    /// Append a pair given as ranges of the block of [`Params::over_block`], repeats unresolved.
    pub(crate) fn push_block_pair(&mut self, name: std::ops::Range<usize>, value: std::ops::Range<usize>) {
        let span = |r: std::ops::Range<usize>| Span { chunk: 0, start: r.start, len: r.end - r.start };
        debug_assert!(name.end <= self.first.len() && value.end <= self.first.len());
        self.entries.push((span(name), span(value)));
    }

    /// How the values of a repeated name are joined (RFC 6265 5.4 for `Cookie`); None: the
    /// last value wins. Other headers are not joined: a repeated `HTTP_*` name may be an
    /// operator's override (HAProxy's `set-param`) as well as a client's repeat (nginx before
    /// 1.23), the two cannot be told apart, and joining would let a client's value through.
    fn joined_with(name: &[u8]) -> Option<&'static [u8]> {
        (name == b"HTTP_COOKIE").then_some(b"; ")
    }

    /// Resolve repeated names: first position, last value.
    pub(crate) fn dedup_last_wins(&mut self) {
        let mut filter = RepeatFilter::default();
        for i in 0..self.entries.len() {
            filter.add(self.slice(self.entries[i].0));
        }
        self.resolve_repeats(&filter);
    }

    /// Resolve repeated names given a filter fed with every name in order. The usual few dozen
    /// distinct names cost nothing here; a filter hit costs a scan of the earlier names.
    fn resolve_repeats(&mut self, filter: &RepeatFilter) {
        let n = self.entries.len();
        if n < 2 || (filter.hits.is_empty() && n <= RepeatFilter::MAX_NAMES) {
            return;
        }
        if n <= RepeatFilter::MAX_NAMES {
            let repeat = filter.hits.iter().any(|&i| {
                let i = i as usize;
                let name = self.slice(self.entries[i].0);
                self.entries[..i].iter().any(|(m, _)| self.slice(*m) == name)
            });
            if !repeat {
                return;
            }
        }
        // Slow path: a real repeat, or many names (hashing keeps a flood of pairs linear).
        let mut first: HashMap<&[u8], usize> = HashMap::with_capacity(n);
        let mut moves: Vec<(usize, usize)> = Vec::new();
        for (i, (name, _)) in self.entries.iter().enumerate() {
            match first.entry(self.slice(*name)) {
                std::collections::hash_map::Entry::Occupied(e) => moves.push((i, *e.get())),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(i);
                }
            }
        }
        drop(first);
        if moves.is_empty() {
            return;
        }
        let mut keep = vec![true; n];
        // Joined values are built in one buffer per name and stored once: a join per repeat
        // would copy the value so far each time (thousands of `Cookie:` lines, quadratic).
        let mut joins: HashMap<usize, Vec<u8>> = HashMap::new();
        for &(from, to) in &moves {
            keep[from] = false;
            let later = self.entries[from].1;
            let Some(sep) = Self::joined_with(self.slice(self.entries[to].0)) else {
                self.entries[to].1 = later;
                continue;
            };
            let joined = joins.entry(to).or_insert_with(|| self.slice(self.entries[to].1).to_vec());
            let value = self.slice(later);
            // An empty value (an override that clears it) replaces what came before.
            if joined.is_empty() || value.is_empty() {
                joined.clear();
            } else {
                joined.extend_from_slice(sep);
            }
            joined.extend_from_slice(value);
        }
        for (to, joined) in joins {
            self.entries[to].1 = self.store(Bytes::from(joined));
        }
        let mut i = 0;
        self.entries.retain(|_| {
            let k = keep[i];
            i += 1;
            k
        });
    }
}

/// Spots possibly repeated names as they are decoded: a 2048-bit filter of name fingerprints,
/// filled while the name is still in cache. Only a hit needs an exact comparison later.
#[derive(Debug, Clone, Default)]
struct RepeatFilter {
    bits: [u64; 32],
    /// Positions of names whose fingerprint was already set.
    hits: Vec<u32>,
    count: u32,
}

impl RepeatFilter {
    /// Beyond this many names the filter is too full to help; hashing takes over.
    const MAX_NAMES: usize = 128;

    #[inline]
    fn add(&mut self, name: &[u8]) {
        if (self.count as usize) < Self::MAX_NAMES {
            let bit = fingerprint(name);
            let (word, mask) = (bit >> 6, 1u64 << (bit & 63));
            if self.bits[word] & mask != 0 {
                self.hits.push(self.count);
            }
            self.bits[word] |= mask;
        }
        self.count = self.count.saturating_add(1);
    }
}

impl PartialEq for Params {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Params {}

impl fmt::Debug for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.iter().map(|(n, v)| (n.escape_ascii().to_string(), v.escape_ascii().to_string())))
            .finish()
    }
}

impl<N: Into<Bytes>, V: Into<Bytes>> FromIterator<(N, V)> for Params {
    fn from_iter<T: IntoIterator<Item = (N, V)>>(iter: T) -> Self {
        Self::from_pairs(iter.into_iter().map(|(n, v)| (n.into(), v.into())).collect())
    }
}

impl IntoIterator for Params {
    type Item = (Bytes, Bytes);
    type IntoIter = std::vec::IntoIter<(Bytes, Bytes)>;
    fn into_iter(self) -> Self::IntoIter {
        self.into_pairs().into_iter()
    }
}

/// An 11-bit fingerprint of a name for the repeat filter: its length and last eight bytes,
/// which tell CGI names apart (they share prefixes such as `HTTP_`, not endings).
#[inline]
fn fingerprint(name: &[u8]) -> usize {
    let n = name.len();
    let mut tail = [0u8; 8];
    if n >= 8 {
        tail.copy_from_slice(&name[n - 8..]);
    } else {
        tail[..n].copy_from_slice(name);
    }
    let h = (u64::from_le_bytes(tail) ^ (n as u64).rotate_left(56)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h >> 53) as usize
}

/// Encoded size of one pair.
#[inline]
pub fn pair_len(name: &[u8], value: &[u8]) -> usize {
    len_len(name.len()) + len_len(value.len()) + name.len() + value.len()
}

#[inline]
fn len_len(n: usize) -> usize {
    if n < 128 {
        1
    } else {
        4
    }
}

#[inline]
fn put_len(out: &mut impl BufMut, n: usize) {
    if n < 128 {
        out.put_u8(n as u8);
    } else {
        // Lengths above 2^31-1 cannot be expressed in FastCGI; no caller holds such a value.
        out.put_u32((n as u32) | 0x8000_0000);
    }
}

/// Encode one pair with 1- or 4-byte lengths as needed.
pub fn write_pair(out: &mut impl BufMut, name: &[u8], value: &[u8]) {
    put_len(out, name.len());
    put_len(out, value.len());
    out.put_slice(name);
    out.put_slice(value);
}

/// The length at `pos` and how many bytes it took; `None` if not all there yet.
#[inline(always)]
fn read_len(b: &[u8], pos: usize) -> Option<(usize, usize)> {
    let first = *b.get(pos)?;
    if first & 0x80 == 0 {
        Some((first as usize, 1))
    } else {
        let s = b.get(pos..pos + 4)?;
        let n = u32::from_be_bytes([s[0] & 0x7f, s[1], s[2], s[3]]);
        Some((n as usize, 4))
    }
}

/// Walk the complete pairs at the start of `b`, calling `f(name_start, name_len, value_len)`
/// for each; returns where the first incomplete pair begins. Lengths are checked against the
/// limits as soon as they are readable, before their bytes arrive.
#[inline(always)]
fn scan(b: &[u8], limits: &Limits, request_id: u16, mut f: impl FnMut(usize, usize, usize)) -> Result<usize, Error> {
    let mut pos = 0;
    loop {
        let Some((nl, a)) = read_len(b, pos) else {
            return Ok(pos);
        };
        let Some((vl, c)) = read_len(b, pos + a) else {
            if nl > limits.max_name_len {
                return Err(Error::NameTooLong { request_id, len: nl, limit: limits.max_name_len });
            }
            return Ok(pos);
        };
        if nl > limits.max_name_len {
            return Err(Error::NameTooLong { request_id, len: nl, limit: limits.max_name_len });
        }
        if vl > limits.max_value_len {
            return Err(Error::ValueTooLong { request_id, len: vl, limit: limits.max_value_len });
        }
        let start = pos + a + c;
        let end = start.saturating_add(nl).saturating_add(vl);
        if end > b.len() {
            return Ok(pos);
        }
        f(start, nl, vl);
        pos = end;
    }
}

/// Decodes one name-value stream that arrives in pieces (the records of one PARAMS stream).
#[derive(Debug, Default)]
pub struct ParamsDecoder {
    params: Params,
    /// The start of a pair whose end has not arrived yet.
    pending: BytesMut,
    /// Stream bytes so far, for `Limits::max_params_bytes`.
    total: usize,
    /// Non-empty pieces so far, for `Limits::max_params_records`.
    records: usize,
    /// Every decoded name, for resolving repeats at the end.
    filter: RepeatFilter,
}

impl ParamsDecoder {
    /// A decoder at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stream bytes received so far.
    pub fn total_bytes(&self) -> usize {
        self.total
    }

    /// Decode the next piece of the stream (the content of one record).
    pub fn push(&mut self, chunk: Bytes, limits: &Limits, request_id: u16) -> Result<(), Error> {
        if chunk.is_empty() {
            return Ok(());
        }
        self.records += 1;
        if self.records > limits.max_params_records {
            return Err(Error::TooManyParamsRecords { request_id, limit: limits.max_params_records });
        }
        self.total = self.total.saturating_add(chunk.len());
        if self.total > limits.max_params_bytes {
            return Err(Error::ParamsTooLarge { request_id, len: self.total, limit: limits.max_params_bytes });
        }
        let params = &mut self.params;
        if self.pending.is_empty() {
            if params.entries.capacity() == 0 {
                // Typical CGI pairs take 20–40 bytes; one allocation for the usual request.
                params.entries.reserve((chunk.len() / 24).clamp(4, 256));
            }
            let idx = params.next_chunk();
            let entries = &mut params.entries;
            let filter = &mut self.filter;
            let before = entries.len();
            let end = scan(&chunk, limits, request_id, |s, nl, vl| {
                filter.add(&chunk[s..s + nl]);
                entries.push((Span { chunk: idx, start: s, len: nl }, Span { chunk: idx, start: s + nl, len: vl }));
            })?;
            if end < chunk.len() {
                self.pending.extend_from_slice(&chunk[end..]);
            }
            if entries.len() > before {
                params.add_chunk(chunk);
            }
        } else {
            // A pair straddles the record boundary: join, then keep what is complete.
            self.pending.extend_from_slice(&chunk);
            let idx = params.next_chunk();
            let entries = &mut params.entries;
            let filter = &mut self.filter;
            let joined = &self.pending;
            let end = scan(joined, limits, request_id, |s, nl, vl| {
                filter.add(&joined[s..s + nl]);
                entries.push((Span { chunk: idx, start: s, len: nl }, Span { chunk: idx, start: s + nl, len: vl }));
            })?;
            if end > 0 {
                params.add_chunk(self.pending.split_to(end).freeze());
            }
        }
        Ok(())
    }

    /// The end of the stream: every pair must be complete.
    pub fn finish(self, request_id: u16, record_type: &'static str) -> Result<Params, Error> {
        if !self.pending.is_empty() {
            return Err(Error::TruncatedPair { request_id, record_type, pending: self.pending.len() });
        }
        let mut params = self.params;
        params.resolve_repeats(&self.filter);
        Ok(params)
    }
}

/// Decode a complete name-value block (one management record, an SCGI-free test helper).
pub fn decode_pairs(
    block: Bytes,
    limits: &Limits,
    request_id: u16,
    record_type: &'static str,
) -> Result<Params, Error> {
    let mut d = ParamsDecoder::new();
    // A management record is one record whatever max_params_records says.
    let one = Limits { max_params_records: usize::MAX, ..limits.clone() };
    d.push(block, &one, request_id)?;
    d.finish(request_id, record_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut v = Vec::new();
        for (n, val) in pairs {
            write_pair(&mut v, n, val);
        }
        v
    }

    #[test]
    fn short_and_long_lengths() {
        let long = vec![b'x'; 300];
        let b = enc(&[(b"A", b"1"), (b"LONG", &long)]);
        assert_eq!(&b[..4], b"\x01\x01A1");
        assert_eq!(&b[4..9], b"\x04\x80\x00\x01\x2c");
        let p = decode_pairs(Bytes::from(b), &Limits::default(), 1, "FCGI_PARAMS").expect("decode");
        assert_eq!(p.get(b"A"), Some(&b"1"[..]));
        assert_eq!(p.get(b"LONG"), Some(&long[..]));
        assert_eq!(p.encoded_len(), 4 + 5 + 4 + 300);
    }

    #[test]
    fn boundary_127_128() {
        let v127 = vec![b'a'; 127];
        let v128 = vec![b'b'; 128];
        let b = enc(&[(&v127, &v128)]);
        assert_eq!(b[0], 127);
        assert_eq!(&b[1..5], &[0x80, 0, 0, 128]);
        let p = decode_pairs(Bytes::from(b), &Limits::default(), 1, "x").expect("decode");
        assert_eq!(p.get(&v127), Some(&v128[..]));
    }

    #[test]
    fn four_byte_length_for_short_value_is_accepted() {
        // Some encoders always use 4-byte lengths.
        let b = b"\x80\x00\x00\x01\x80\x00\x00\x02Nvv".to_vec();
        let p = decode_pairs(Bytes::from(b), &Limits::default(), 1, "x").expect("decode");
        assert_eq!(p.get(b"N"), Some(&b"vv"[..]));
    }

    #[test]
    fn last_wins_at_first_position() {
        let b = enc(&[(b"A", b"1"), (b"B", b"2"), (b"A", b"3"), (b"C", b""), (b"A", b"4")]);
        let p = decode_pairs(Bytes::from(b), &Limits::default(), 1, "x").expect("decode");
        let v: Vec<_> = p.iter().collect();
        assert_eq!(v, vec![(&b"A"[..], &b"4"[..]), (&b"B"[..], &b"2"[..]), (&b"C"[..], &b""[..])]);
    }

    #[test]
    fn repeated_cookies_keep_every_value_and_other_names_the_last() {
        let b = enc(&[
            (b"HTTP_COOKIE", b"a=1"),
            (b"HTTP_X_CUSTOM", b"A"),
            (b"CONTENT_LENGTH", b"5"),
            (b"HTTP_COOKIE", b"b=2"),
            (b"HTTP_X_CUSTOM", b"B"),
            (b"HTTP_X_CUSTOM", b""),
            (b"CONTENT_LENGTH", b"7"),
            (b"HTTP_COOKIE", b"c=3"),
        ]);
        let p = decode_pairs(Bytes::from(b), &Limits::default(), 1, "x").expect("decode");
        let v: Vec<_> = p.iter().collect();
        assert_eq!(
            v,
            vec![
                (&b"HTTP_COOKIE"[..], &b"a=1; b=2; c=3"[..]),
                // an override (`fastcgi_param HTTP_HOST $2;`) or a repeat: the last one wins
                (&b"HTTP_X_CUSTOM"[..], &b""[..]),
                (&b"CONTENT_LENGTH"[..], &b"7"[..]),
            ]
        );
    }

    #[test]
    fn thousands_of_cookie_lines_are_joined_in_one_buffer() {
        let mut raw = Vec::new();
        for i in 0..3000 {
            write_pair(&mut raw, b"HTTP_COOKIE", format!("c{i}=1").as_bytes());
        }
        let p = decode_pairs(Bytes::from(raw), &Limits::default(), 1, "x").expect("decode");
        let value = p.get(b"HTTP_COOKIE").expect("cookie");
        assert!(value.starts_with(b"c0=1; c1=1; ") && value.ends_with(b"; c2999=1"));
        // one joined value stored, not one per repeat: the storage stays near the input's size
        let stored: usize = p.more.iter().map(Bytes::len).sum();
        assert!(stored < 2 * value.len(), "{stored} bytes stored for a {} byte value", value.len());
    }

    #[test]
    fn many_names_dedup_uses_hash_path() {
        let mut raw = Vec::new();
        for i in 0..500 {
            write_pair(&mut raw, format!("N{i}").as_bytes(), b"a");
        }
        write_pair(&mut raw, b"N7", b"late");
        let p = decode_pairs(Bytes::from(raw), &Limits::default(), 1, "x").expect("decode");
        assert_eq!(p.len(), 500);
        assert_eq!(p.get(b"N7"), Some(&b"late"[..]));
        assert_eq!(p.iter().nth(7), Some((&b"N7"[..], &b"late"[..])));
        assert_eq!(p.get_bytes(b"N7"), Some(Bytes::from_static(b"late")));
        assert_eq!(p.clone().into_pairs().len(), 500);
    }

    #[test]
    fn insert_remove_get() {
        let mut p = Params::default();
        p.insert(&b"A"[..], &b"1"[..]);
        p.insert(&b"B"[..], &b"2"[..]);
        p.insert(&b"A"[..], &b"3"[..]);
        assert_eq!(p.len(), 2);
        assert_eq!(p.get(b"A"), Some(&b"3"[..]));
        assert_eq!(p.remove(b"A"), Some(Bytes::from_static(b"3")));
        assert_eq!(p.remove(b"A"), None);
        assert_eq!(p.get(b"A"), None);
        assert!(!p.is_empty());
        let q: Params = vec![(&b"X"[..], &b"1"[..]), (&b"X"[..], &b"2"[..])].into_iter().collect();
        assert_eq!(q.len(), 1);
        assert_eq!(q.get(b"X"), Some(&b"2"[..]));
    }

    #[test]
    fn split_at_every_point() {
        let long = vec![b'v'; 200];
        let b = enc(&[(b"SCRIPT_NAME", b"/x"), (b"HTTP_COOKIE", &long), (b"E", b"")]);
        for cut in 0..=b.len() {
            let mut d = ParamsDecoder::new();
            d.push(Bytes::copy_from_slice(&b[..cut]), &Limits::default(), 1).expect("a");
            d.push(Bytes::copy_from_slice(&b[cut..]), &Limits::default(), 1).expect("b");
            let p = d.finish(1, "x").expect("finish");
            assert_eq!(p.len(), 3, "cut {cut}");
            assert_eq!(p.get(b"HTTP_COOKIE"), Some(&long[..]));
        }
        // one byte at a time
        let mut d = ParamsDecoder::new();
        let l = Limits { max_params_records: usize::MAX, ..Limits::default() };
        for &c in &b {
            d.push(Bytes::copy_from_slice(&[c]), &l, 1).expect("byte");
        }
        assert_eq!(d.finish(1, "x").expect("finish").get(b"SCRIPT_NAME"), Some(&b"/x"[..]));
    }

    #[test]
    fn limits() {
        let l = Limits {
            max_name_len: 4,
            max_value_len: 8,
            max_params_bytes: 32,
            max_params_records: 2,
            ..Limits::default()
        };
        let e = decode_pairs(Bytes::from(enc(&[(b"NAME5", b"")])), &l, 3, "x").unwrap_err();
        assert_eq!(e, Error::NameTooLong { request_id: 3, len: 5, limit: 4 });
        let e = decode_pairs(Bytes::from(enc(&[(b"N", b"123456789")])), &l, 3, "x").unwrap_err();
        assert_eq!(e, Error::ValueTooLong { request_id: 3, len: 9, limit: 8 });
        // the value length alone is enough to refuse, before the bytes arrive
        let e = decode_pairs(Bytes::from_static(b"\x01\x80\x10\x00\x00N"), &l, 3, "x").unwrap_err();
        assert!(matches!(e, Error::ValueTooLong { len: 0x0010_0000, .. }));
        let e = decode_pairs(Bytes::from_static(b"\x80\x10\x00\x00"), &l, 3, "x").unwrap_err();
        assert!(matches!(e, Error::NameTooLong { .. }));
        let e = decode_pairs(Bytes::from(vec![0u8; 33]), &l, 3, "x").unwrap_err();
        assert_eq!(e, Error::ParamsTooLarge { request_id: 3, len: 33, limit: 32 });
        let mut d = ParamsDecoder::new();
        d.push(Bytes::from_static(b"\0\0"), &l, 9).expect("1");
        d.push(Bytes::from_static(b"\0\0"), &l, 9).expect("2");
        d.push(Bytes::new(), &l, 9).expect("empty pieces are not counted");
        let e = d.push(Bytes::from_static(b"\0\0"), &l, 9).unwrap_err();
        assert_eq!(e, Error::TooManyParamsRecords { request_id: 9, limit: 2 });
    }

    #[test]
    fn truncated_pair() {
        let e = decode_pairs(Bytes::from_static(b"\x04\x01AB"), &Limits::default(), 5, "FCGI_PARAMS").unwrap_err();
        assert_eq!(e, Error::TruncatedPair { request_id: 5, record_type: "FCGI_PARAMS", pending: 4 });
        let e = decode_pairs(Bytes::from_static(b"\x84\x00"), &Limits::default(), 5, "FCGI_PARAMS").unwrap_err();
        assert!(matches!(e, Error::TruncatedPair { pending: 2, .. }));
    }

    #[test]
    fn empty_stream() {
        let p = ParamsDecoder::new().finish(1, "x").expect("empty");
        assert!(p.is_empty());
    }
}
