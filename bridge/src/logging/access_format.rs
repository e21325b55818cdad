//! `access-log-format:`: the access log line written from its template of `$variables`
//! (config/access_format.rs reads the template).
use super::AccessRecord;
use crate::config::access_format::{AccessFormat, Piece, VARIABLES};
use std::fmt::Write;

impl AccessFormat {
    /// One line, newline included. Empty values print as "-".
    pub fn render(&self, r: &AccessRecord<'_>) -> String {
        let mut out = String::with_capacity(128);
        for p in self.pieces() {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Var(i) => {
                    let _ = match VARIABLES[*i] {
                        "remote_addr" => write!(out, "{}", dash(r.remote)),
                        "method" => write!(out, "{}", dash(r.method)),
                        "uri" => write!(out, "{}", dash(r.uri)),
                        "status" => write!(out, "{}", r.status),
                        "bytes" => write!(out, "{}", r.bytes),
                        "duration" => write!(out, "{:.3}", r.duration.as_secs_f64()),
                        "duration_ms" => write!(out, "{:.3}", r.duration.as_secs_f64() * 1000.0),
                        "pool" => write!(out, "{}", dash(r.pool)),
                        "request_id" => write!(out, "{}", dash(r.request_id)),
                        "time" => write!(out, "{}", rfc3339_now()),
                        _ => Ok(()),
                    };
                }
            }
        }
        out.push('\n');
        out
    }
}

fn dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// UTC time as 2026-01-31T12:34:56.789Z.
fn rfc3339_now() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = now.as_secs() as i64;
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", sod / 3600, sod % 3600 / 60, sod % 60, now.subsec_millis())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::access_format::check;

    #[test]
    fn renders_variables() {
        let f = AccessFormat::parse("$remote_addr \"$method ${uri}\" $status $bytes $$ $pool").expect("format");
        let r = AccessRecord {
            remote: "10.0.0.1",
            method: "GET",
            uri: "/x?y",
            status: 200,
            bytes: 12,
            duration: std::time::Duration::from_millis(5),
            pool: "",
            request_id: "7",
        };
        assert_eq!(f.render(&r), "10.0.0.1 \"GET /x?y\" 200 12 $ -\n");
    }

    #[test]
    fn unknown_variable_is_named() {
        let e = check("$remote_addr $referer").err().unwrap_or_default();
        assert!(e.starts_with("unknown variable $referer"), "{e}");
        assert!(check("${uri").is_err());
    }

    #[test]
    fn time_is_rfc3339() {
        let t = rfc3339_now();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T', "{t}");
    }
}
