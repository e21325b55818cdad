//! CONTENT_LENGTH as a body length: the one strict parser behind the SCGI decoder and the
//! bridge's FastCGI requests, so that both refuse the same values.
//!
//! A body length is one or more ASCII digits and nothing else: no sign (`+5`), no blank
//! (` 5`), no prefix (`0x10`), at most `u64::MAX`. Rust's `str::parse::<u64>` accepts `+5`,
//! and trimming first would accept ` 5`: values that a web server in front may read
//! differently, so that the body boundary would be ambiguous. What a missing or empty value
//! means is the caller's business (SCGI requires one); [`declared`] reads a request's as
//! FastCGI web servers send it.
use crate::error::show;
use crate::Params;

/// Why a CONTENT_LENGTH value is not a body length; `value` is the received value, escaped
/// and cut to 64 bytes for a log line.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ContentLengthError {
    #[error("CONTENT_LENGTH {value:?} is not a decimal number")]
    NotDecimal { value: String },
    #[error("CONTENT_LENGTH {value} exceeds {max}, the largest body length", max = u64::MAX)]
    TooLarge { value: String },
}

/// The body length `value` declares.
pub fn parse(value: &[u8]) -> Result<u64, ContentLengthError> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(ContentLengthError::NotDecimal { value: show(value) });
    }
    value
        .iter()
        .try_fold(0u64, |n, &c| n.checked_mul(10)?.checked_add(u64::from(c - b'0')))
        .ok_or_else(|| ContentLengthError::TooLarge { value: show(value) })
}

/// The body length a request's params declare: `None` when CONTENT_LENGTH is absent, empty
/// (nginx, unbuffered chunked upload) or `-1` (Caddy 2.6, chunked upload), i.e. unknown.
/// Any other value must be a body length ([`parse`]).
pub fn declared(params: &Params) -> Result<Option<u64>, ContentLengthError> {
    match params.get(b"CONTENT_LENGTH") {
        None | Some(b"" | b"-1") => Ok(None),
        Some(v) => parse(v).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_lengths() {
        let mut p = Params::default();
        assert_eq!(declared(&p), Ok(None));
        for (v, want) in [("", None), ("-1", None), ("12", Some(12)), ("0", Some(0))] {
            p.insert(&b"CONTENT_LENGTH"[..], v.as_bytes());
            assert_eq!(declared(&p), Ok(want), "{v:?}");
        }
        for v in ["x", "+5", " 5", "5 ", "0x10", "-2", "1180591620717411303424"] {
            p.insert(&b"CONTENT_LENGTH"[..], v.as_bytes());
            assert!(declared(&p).is_err(), "{v:?}");
        }
    }

    #[test]
    fn digits_only() {
        assert_eq!(parse(b"0"), Ok(0));
        assert_eq!(parse(b"12"), Ok(12));
        assert_eq!(parse(b"007"), Ok(7), "leading zeros are still decimal");
        assert_eq!(parse(b"18446744073709551615"), Ok(u64::MAX));
        assert_eq!(parse(b"000000000000000000000000000005"), Ok(5));
        for bad in [&b""[..], b"abc", b"+5", b" 5", b"5 ", b"0x10", b"-1", b"1e3", b"5\0", b"\xff"] {
            assert!(matches!(parse(bad), Err(ContentLengthError::NotDecimal { .. })), "{bad:?}");
        }
    }

    #[test]
    fn too_large_is_its_own_error() {
        let two_to_70 = b"1180591620717411303424";
        assert_eq!(parse(two_to_70), Err(ContentLengthError::TooLarge { value: "1180591620717411303424".into() }));
        assert_eq!(
            parse(b"18446744073709551616"),
            Err(ContentLengthError::TooLarge { value: "18446744073709551616".into() })
        );
        let msg = parse(b"99999999999999999999").unwrap_err().to_string();
        assert_eq!(msg, "CONTENT_LENGTH 99999999999999999999 exceeds 18446744073709551615, the largest body length");
        let msg = parse(b"+5").unwrap_err().to_string();
        assert_eq!(msg, "CONTENT_LENGTH \"+5\" is not a decimal number");
    }
}
