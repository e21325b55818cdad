//! Name-value pairs (FastCGI section 3.4): PARAMS, GET_VALUES(_RESULT), SCGI headers.
use bytes::{BufMut, Bytes};

/// A request's parameters in arrival order; a repeated name keeps its LAST value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    pairs: Vec<(Bytes, Bytes)>,
}

impl Params {
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        let _ = name;
        todo!()
    }
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.pairs.iter().map(|(n, v)| (&n[..], &v[..]))
    }
    pub fn len(&self) -> usize {
        self.pairs.len()
    }
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
    /// Add or replace (last wins).
    pub fn insert(&mut self, name: impl Into<Bytes>, value: impl Into<Bytes>) {
        let _ = (name.into(), value.into());
        todo!()
    }
    pub fn remove(&mut self, name: &[u8]) -> Option<Bytes> {
        let _ = name;
        todo!()
    }
}

/// Encode one pair with 1- or 4-byte lengths as needed.
pub fn write_pair(out: &mut impl BufMut, name: &[u8], value: &[u8]) {
    let _ = (out, name, value);
    todo!()
}
