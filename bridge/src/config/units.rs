//! Human-friendly durations ("30s", "1h30m", "250ms") and sizes ("512MiB", "64k").
//!
//! Both also accept a plain integer: seconds for durations, bytes for sizes. The
//! `Display` side of each type prints the shortest exact form, so `fcgibridge check`
//! shows values the way an operator would write them.
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::fmt;
use std::time::Duration;

/// A duration as written in a config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

/// A byte count as written in a config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

/// A byte count, and whether it was written without a unit (`500000000`): for a key whose
/// namesake elsewhere counts otherwise (mod_wsgi's `memory-limit=` is a hard limit in bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrittenSize {
    pub bytes: u64,
    pub bare: bool,
}

// Written back as an operator would write them (`fcgibridge check` prints templates so).
impl serde::Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&DurationDisplay(self.0))
    }
}

impl serde::Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&SizeDisplay(self.0))
    }
}

impl serde::Serialize for WrittenSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&SizeDisplay(self.bytes))
    }
}

const DURATION_UNITS: &[(&str, u128)] = &[
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
    ("d", 86_400_000_000_000),
];

/// "1.5s" as "1s500ms", "0.5m" as "30s": a decimal number with one unit, written exactly in
/// whole units (at most milliseconds); `None` for anything else.
fn fraction_in_smaller_units(s: &str) -> Option<String> {
    let (number, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic())?);
    let (&(_, per_unit), (whole, frac)) = (DURATION_UNITS.iter().find(|(u, _)| *u == unit)?, number.split_once('.')?);
    if whole.is_empty() && frac.is_empty() || !(whole.bytes().chain(frac.bytes())).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let scale = 10u128.checked_pow(u32::try_from(frac.len()).ok()?)?;
    let digits: u128 = format!("{whole}{frac}").parse().ok()?;
    let nanos = digits.checked_mul(per_unit)?;
    let exact = u64::try_from(nanos / scale).ok().filter(|n| nanos % scale == 0 && n % 1_000_000 == 0 && *n > 0)?;
    Some(DurationDisplay(Duration::from_nanos(exact)).to_string())
}

/// A duration written with spaces, capitals or unit words (`30 s`, `30S`, `30sec`,
/// `5 minutes`, `1h 30m`) as it is written here, when that is one; `None` otherwise.
fn spelled_out(s: &str) -> Option<String> {
    const WORDS: [(&str, &[&str]); 5] = [
        ("ms", &["msec", "msecs", "millis", "millisecond", "milliseconds"]),
        ("s", &["sec", "secs", "second", "seconds"]),
        ("m", &["min", "mins", "minute", "minutes"]),
        ("h", &["hr", "hrs", "hour", "hours"]),
        ("d", &["day", "days"]),
    ];
    let lower: String = s.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_lowercase();
    let mut meant = String::new();
    let mut rest = lower.as_str();
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let unit_len = rest[digits..].bytes().take_while(u8::is_ascii_alphabetic).count();
        let (number, unit) = (&rest[..digits], &rest[digits..digits + unit_len]);
        if digits == 0 || unit_len == 0 {
            return None;
        }
        let unit = WORDS.iter().find(|(_, words)| words.contains(&unit)).map_or(unit, |(u, _)| u);
        meant.push_str(number);
        meant.push_str(unit);
        rest = &rest[digits + unit_len..];
    }
    (meant != s && parse_duration(&meant).is_ok()).then_some(meant)
}

/// Parse "30s", "5m", "1h30m", "250ms", "2d", or a plain integer of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    let explain = || {
        format!("invalid duration {text:?}; write a number with a unit: ms, s, m, h, d (e.g. \"30s\", \"1h30m\", \"250ms\")")
    };
    if s.is_empty() {
        return Err(explain());
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = s.parse().map_err(|_| explain())?;
        return Ok(Duration::from_secs(secs));
    }
    if let Some(whole) = fraction_in_smaller_units(s) {
        return Err(format!("invalid duration {text:?}: no fractions; write {whole:?}"));
    }
    if let Some(meant) = spelled_out(s) {
        return Err(format!("invalid duration {text:?}; write {meant:?}"));
    }
    let mut nanos: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(explain());
        }
        let number: u128 = rest[..digits].parse().map_err(|_| explain())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale =
            DURATION_UNITS.iter().find(|(name, _)| *name == unit).map(|(_, scale)| *scale).ok_or_else(explain)?;
        nanos = number
            .checked_mul(scale)
            .and_then(|n| nanos.checked_add(n))
            .ok_or_else(|| format!("duration {text:?} is too large"))?;
    }
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| format!("duration {text:?} is too large"))?;
    // The remainder is below one second, so it always fits in u32.
    let sub = u32::try_from(nanos % 1_000_000_000).unwrap_or(0);
    Ok(Duration::new(secs, sub))
}

/// A size with a fraction of a binary unit (`1.5G`, `0.5MiB`) in the next smaller unit, as
/// written in the same style (`1536M`, `512KiB`), rounded down when that is not whole
/// (`1.3G`: `1331M`), and whether it was; `None` when `s` is no such size.
fn size_fraction(s: &str) -> Option<(String, bool)> {
    let (number, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic())?);
    let (whole, frac) = number.trim().split_once('.')?;
    let smaller = match unit {
        "G" | "g" => "M",
        "M" | "m" => "k",
        "GiB" => "MiB",
        "MiB" => "KiB",
        _ => return None,
    };
    let scale = 10u64.checked_pow(u32::try_from(frac.len()).ok()?)?;
    let digits: u64 = format!("{whole}{frac}").parse().ok()?;
    let in_smaller = digits.checked_mul(1024)?;
    Some((format!("{}{smaller}", in_smaller / scale), in_smaller % scale == 0))
}

/// Parse "512MiB", "1MB", "64k", "1GiB", or a plain integer of bytes.
///
/// Single-letter suffixes (k, M, G) are binary, as in nginx; "KB"/"MB"/"GB" are
/// decimal and "KiB"/"MiB"/"GiB" binary, as their names say.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let s = text.trim();
    let explain = || {
        format!("invalid size {text:?}; write bytes, or a number with a unit: k, M, G, KiB, MiB, GiB, KB, MB, GB (e.g. \"1MiB\", \"64k\")")
    };
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(explain());
    }
    let number: u64 = s[..digits].parse().map_err(|_| explain())?;
    match size_fraction(s) {
        Some((whole, true)) => return Err(format!("invalid size {text:?}: no fractions; write {whole:?}")),
        Some((about, false)) => {
            return Err(format!(
                "invalid size {text:?}: no fractions; write a whole number of a smaller unit, e.g. {about:?}"
            ))
        }
        None => {}
    }
    let unit = s[digits..].trim_start();
    let scale: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return Err(explain()),
    };
    number.checked_mul(scale).ok_or_else(|| format!("size {text:?} is too large"))
}

/// Prints e.g. "30s", "1h30m", "250ms", "0s".
pub struct DurationDisplay(pub Duration);

impl fmt::Display for DurationDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut nanos = self.0.as_nanos();
        if nanos == 0 {
            return f.write_str("0s");
        }
        if !nanos.is_multiple_of(1_000_000) {
            // Finer than a millisecond cannot come from a config file; show it exactly anyway.
            return write!(f, "{}ns", nanos);
        }
        for (name, scale) in DURATION_UNITS.iter().rev() {
            if nanos >= *scale {
                write!(f, "{}{}", nanos / scale, name)?;
                nanos %= scale;
            }
        }
        Ok(())
    }
}

/// Prints e.g. "1MiB", "64KiB", "1000000" (bytes when no binary unit is exact).
pub struct SizeDisplay(pub u64);

impl fmt::Display for SizeDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (name, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
            if n != 0 && n.is_multiple_of(1 << shift) {
                return write!(f, "{}{}", n >> shift, name);
            }
        }
        write!(f, "{n}")
    }
}

/// Accepts a YAML string or integer and hands over its text.
struct ScalarText;

impl<'de> Visitor<'de> for ScalarText {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number with a unit, like \"30s\" or \"1MiB\"")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = deserializer.deserialize_str(ScalarText)?;
        parse_duration(&text).map(HumanDuration).map_err(de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = deserializer.deserialize_str(ScalarText)?;
        parse_size(&text).map(ByteSize).map_err(de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for WrittenSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = deserializer.deserialize_str(ScalarText)?;
        let bytes = parse_size(&text).map_err(de::Error::custom)?;
        Ok(Self { bytes, bare: text.trim().bytes().all(|b| b.is_ascii_digit()) })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m30s500ms"), Ok(Duration::from_millis(90_500)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn bad_durations() {
        for bad in ["", "s", "30x", "1.5s", "-1s", "30 s", "h1", "99999999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
        let msg = parse_duration("30x").unwrap_err();
        assert!(msg.contains("\"30x\"") && msg.contains("ms, s, m, h, d"), "{msg}");
    }

    #[test]
    fn a_fraction_is_answered_with_its_whole_form() {
        assert_eq!(parse_duration("1.5s").unwrap_err(), "invalid duration \"1.5s\": no fractions; write \"1s500ms\"");
        assert_eq!(parse_duration("0.5m").unwrap_err(), "invalid duration \"0.5m\": no fractions; write \"30s\"");
        assert_eq!(parse_duration(".25h").unwrap_err(), "invalid duration \".25h\": no fractions; write \"15m\"");
        // Not whole milliseconds, or not one number and unit: the general advice.
        for other in ["1.0005s", "1.5", "1.5x", "1.5s30ms", "..s", "0.0s"] {
            assert!(parse_duration(other).unwrap_err().contains("write a number with a unit"), "{other}");
        }
    }

    #[test]
    fn a_size_s_fraction_is_answered_with_a_smaller_unit() {
        assert_eq!(parse_size("0.5MiB").unwrap_err(), "invalid size \"0.5MiB\": no fractions; write \"512KiB\"");
        // 1.3 × 1024 M is not whole: rounded down, and said to be an example.
        assert_eq!(
            parse_size("1.3G").unwrap_err(),
            "invalid size \"1.3G\": no fractions; write a whole number of a smaller unit, e.g. \"1331M\""
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1MB"), Ok(1_000_000));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("1 GiB"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("10b"), Ok(10));
    }

    #[test]
    fn bad_sizes() {
        for bad in ["", "MiB", "1.5MiB", "12 apples", "-1", "99999999999999999999G"] {
            assert!(parse_size(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn display_round_trips() {
        for text in ["30s", "1h30m", "250ms", "0s", "2d1s"] {
            let d = parse_duration(text).unwrap();
            assert_eq!(DurationDisplay(d).to_string(), text);
        }
        assert_eq!(SizeDisplay(1 << 20).to_string(), "1MiB");
        assert_eq!(SizeDisplay(1_000_000).to_string(), "1000000");
        assert_eq!(SizeDisplay(0).to_string(), "0");
    }
}
