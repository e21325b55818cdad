//! Byte search for the header scanners (SCGI NULs, CGI line ends), a word at a time.

/// The first `needle` in `hay`, eight bytes at a time.
pub(crate) fn find_byte(needle: u8, hay: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let pattern = LO * u64::from(needle);
    let mut chunks = hay.chunks_exact(8);
    let mut base = 0;
    for c in chunks.by_ref() {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let x = u64::from_le_bytes(w) ^ pattern;
        // Classic "has a zero byte": exact for the lowest zero byte, which is the one we want.
        let z = x.wrapping_sub(LO) & !x & HI;
        if z != 0 {
            return Some(base + (z.trailing_zeros() / 8) as usize);
        }
        base += 8;
    }
    chunks.remainder().iter().position(|&c| c == needle).map(|i| base + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agrees_with_position() {
        for hay in [&b""[..], b"a", b"abcdefgh", b"abcdefghij\0", b"\0", b"abcdefg\0abc\0", b"\xff\x80\x01\0"] {
            assert_eq!(find_byte(0, hay), hay.iter().position(|&c| c == 0), "{hay:?}");
            assert_eq!(find_byte(b'\n', hay), None);
        }
        for i in 0..40 {
            let mut v = vec![b'x'; 40];
            v[i] = 0;
            v[39] = 0;
            assert_eq!(find_byte(0, &v), Some(i));
        }
    }
}
