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
                        "web_request_id" => write!(out, "{}", r.web_request_id.unwrap_or("-")),
                        "queue_ms" => ms(&mut out, r.queue),
                        "app_ms" => ms(&mut out, r.app),
                        "pid" => match r.pid {
                            Some(pid) => write!(out, "{pid}"),
                            None => write!(out, "-"),
                        },
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

/// Milliseconds with three decimals, or "-" when there is no such time.
fn ms(out: &mut String, d: Option<std::time::Duration>) -> std::fmt::Result {
    match d {
        Some(d) => write!(out, "{:.3}", d.as_secs_f64() * 1000.0),
        None => write!(out, "-"),
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
pub(super) fn rfc3339_now() -> String {
    rfc3339(std::time::SystemTime::now())
}

/// `t` as RFC 3339 with milliseconds. The calendar is httpdate's (the one the file
/// hand-off's Last-Modified uses), so the crate has one civil-date routine: its IMF-fixdate
/// (`Sun, 06 Nov 1994 08:49:37 GMT`) is rearranged, not recomputed.
fn rfc3339(t: std::time::SystemTime) -> String {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let millis = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_millis();
    let imf = httpdate::fmt_http_date(t);
    let field = |range: std::ops::Range<usize>| imf.get(range).unwrap_or("");
    let month = MONTHS.iter().position(|m| *m == field(8..11)).map_or(0, |i| i + 1);
    format!("{}-{month:02}-{}T{}.{millis:03}Z", field(12..16), field(5..7), field(17..25))
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
            web_request_id: None,
            queue: Some(std::time::Duration::from_micros(1500)),
            app: None,
            pid: Some(42),
        };
        assert_eq!(f.render(&r), "10.0.0.1 \"GET /x?y\" 200 12 $ -\n");
        let f = AccessFormat::parse("$queue_ms $app_ms $pid $web_request_id").expect("format");
        assert_eq!(f.render(&r), "1.500 - 42 -\n");
    }

    #[test]
    fn a_request_does_only_the_work_its_access_line_needs() {
        use crate::config::access_format::Needs;
        use crate::logging::AccessLog;
        let needs = |t: &str| AccessFormat::parse(t).expect("format").needs();
        let basics = "$remote_addr \"$method $uri\" $status $bytes $duration $duration_ms $pool $pid $request_id $time";
        assert_eq!(needs(basics), Needs::default());
        assert_eq!(needs("$queue_ms"), Needs { times: true, web_request_id: false });
        assert_eq!(needs("${app_ms}ms"), Needs { times: true, web_request_id: false });
        assert_eq!(needs("$web_request_id $$queue_ms"), Needs { times: false, web_request_id: true });
        // The main log's access events carry every field; the built-in file line none of these.
        let (tx, _rx) = std::sync::mpsc::sync_channel(1);
        assert_eq!(AccessLog::MainLog.needs(), Needs::ALL);
        assert_eq!(
            AccessLog::File { tx: tx.clone(), format: None, dropped: Default::default() }.needs(),
            Needs::default()
        );
        let format = AccessFormat::parse("$app_ms $web_request_id").ok();
        assert_eq!(AccessLog::File { tx, format, dropped: Default::default() }.needs(), Needs::ALL);
        // Read by every request from the registry; no access log, no work.
        let registry = |log| crate::registry::Registry::new(log, 1 << 20, Vec::new(), Default::default());
        assert_eq!(registry(Some(AccessLog::MainLog)).access_needs, Needs::ALL);
        assert_eq!(registry(None).access_needs, Needs::default());
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

    #[test]
    fn rfc3339_dates() {
        use std::time::{Duration, UNIX_EPOCH};
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (a leap day of a century leap year), 23:59:59.5
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_millis(951_868_799_500)), "2000-02-29T23:59:59.500Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(1_796_083_200)), "2026-12-01T00:00:00.000Z");
    }
}
