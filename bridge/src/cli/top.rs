//! `fcgibridge top`: the status tables, refreshed in place, headed by the rates a single
//! snapshot cannot show (requests, 5xx and 503s per second, per pool and listener).
//!
//! It is a client of the control socket like `fcgibridge status`: the daemon keeps no
//! state for it, and the rates are differences between two of its snapshots.
use serde_json::Value;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// What a pool or listener had counted at one snapshot.
#[derive(Debug, Clone, PartialEq)]
struct Counts {
    name: String,
    requests: u64,
    server_errors: u64,
    rejected: u64,
}

/// Per-second rates of one pool or listener.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Rates {
    requests: f64,
    server_errors: f64,
    rejected: f64,
}

fn counts(v: &Value, section: &str) -> Vec<Counts> {
    let field = |e: &Value, k: &str| e.get(k).and_then(Value::as_u64).unwrap_or(0);
    v.get(section)
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .map(|e| Counts {
                    name: e.get("name").and_then(Value::as_str).unwrap_or("-").to_owned(),
                    requests: field(e, "accepted_requests"),
                    server_errors: e.get("responses").map_or(0, |r| field(r, "5xx")),
                    rejected: field(e, "rejected_requests"),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Per-second rates between two snapshots, by name; a name new in `now` (a reload added
/// it) or a counter that went down (the daemon restarted) shows no rate rather than a
/// wrong one.
fn rates(before: &[Counts], now: &[Counts], secs: f64) -> Vec<(String, Option<Rates>)> {
    now.iter()
        .map(|n| {
            let rate = before.iter().find(|b| b.name == n.name).filter(|_| secs > 0.0).and_then(|b| {
                let per_sec = |now: u64, then: u64| Some(now.checked_sub(then)? as f64 / secs);
                Some(Rates {
                    requests: per_sec(n.requests, b.requests)?,
                    server_errors: per_sec(n.server_errors, b.server_errors)?,
                    rejected: per_sec(n.rejected, b.rejected)?,
                })
            });
            (n.name.clone(), rate)
        })
        .collect()
}

fn rate_lines(out: &mut String, title: &str, rates: &[(String, Option<Rates>)]) {
    let width = rates.iter().map(|(n, _)| n.len()).max().unwrap_or(0).max(title.len());
    let _ = writeln!(out, "{title:<width$}  REQ/S     5XX/S     503/S");
    for (name, rate) in rates {
        match rate {
            Some(r) => {
                let _ =
                    writeln!(out, "{name:<width$}  {:<8.1}  {:<8.1}  {:.1}", r.requests, r.server_errors, r.rejected);
            }
            None => {
                let _ = writeln!(out, "{name:<width$}  -         -         -");
            }
        }
    }
}

/// One screen: the rates (dashes on the first, which has nothing to compare with), then
/// `fcgibridge status`'s tables.
fn frame(now: &Value, before: Option<(&Value, f64)>) -> String {
    let mut out = String::new();
    for (title, section) in [("POOL", "pools"), ("LISTENER", "listeners")] {
        let now = counts(now, section);
        let rates = match before {
            Some((prev, secs)) => rates(&counts(prev, section), &now, secs),
            None => now.into_iter().map(|c| (c.name, None)).collect(),
        };
        rate_lines(&mut out, title, &rates);
        out.push('\n');
    }
    out.push_str(&super::status_table::render(now));
    out
}

/// Poll every `interval` until interrupted, or `count` screens when given.
pub fn main(socket: &Path, interval: Duration, count: Option<u64>) -> ExitCode {
    let terminal = std::io::stdout().is_terminal();
    let mut previous: Option<(Value, Instant)> = None;
    let mut shown = 0u64;
    loop {
        let text = match super::control::call(socket, "status") {
            Ok(Ok(text)) => text,
            Ok(Err(msg)) => {
                eprintln!("fcgibridge: {msg}");
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("fcgibridge: {e}");
                return ExitCode::FAILURE;
            }
        };
        let now = match serde_json::from_str::<Value>(&text) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("fcgibridge: the daemon sent a status this client cannot read: {e}");
                return ExitCode::FAILURE;
            }
        };
        let taken = Instant::now();
        let screen = frame(&now, previous.as_ref().map(|(v, at)| (v, taken.duration_since(*at).as_secs_f64())));
        let mut out = std::io::stdout().lock();
        // On a terminal, redraw in place; into a pipe or file, one screen after another.
        let lead = if terminal {
            "\x1b[H\x1b[2J"
        } else if shown > 0 {
            "\n"
        } else {
            ""
        };
        if write!(out, "{lead}{screen}").and_then(|()| out.flush()).is_err() {
            return ExitCode::SUCCESS; // the reader went away (`top | head`)
        }
        drop(out);
        shown += 1;
        if count.is_some_and(|c| shown >= c) {
            return ExitCode::SUCCESS;
        }
        previous = Some((now, taken));
        std::thread::sleep(interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str, requests: u64, rejected: u64) -> Counts {
        Counts { name: name.to_owned(), requests, server_errors: rejected, rejected }
    }

    #[test]
    fn rates_are_differences_per_second() {
        let r = rates(&[c("a", 100, 4)], &[c("a", 300, 10)], 2.0);
        assert_eq!(r, vec![("a".to_owned(), Some(Rates { requests: 100.0, server_errors: 3.0, rejected: 3.0 }))]);
    }

    #[test]
    fn new_names_and_restarted_counters_have_no_rate() {
        let r = rates(&[c("a", 100, 0)], &[c("a", 50, 0), c("b", 7, 0)], 1.0);
        assert_eq!(r, vec![("a".to_owned(), None), ("b".to_owned(), None)]);
    }

    #[test]
    fn every_frame_is_headed_by_the_rates() {
        let v: Value = serde_json::json!({"version": "x", "pid": 1, "pools": [{"name": "p", "accepted_requests": 5}], "listeners": []});
        let f = frame(&v, None);
        // The first has nothing to compare with: dashes, in the same place.
        assert!(f.starts_with("POOL  REQ/S     5XX/S     503/S\np     -"), "{f}");
        let later: Value = serde_json::json!({"version": "x", "pid": 1, "listeners": [],
            "pools": [{"name": "p", "accepted_requests": 15, "responses": {"5xx": 2}}]});
        let f = frame(&later, Some((&v, 1.0)));
        assert!(f.starts_with("POOL  REQ/S     5XX/S     503/S\np     10.0      2.0       0.0\n"), "{f}");
    }

    #[test]
    fn an_abandoned_request_is_marked_as_in_status() {
        let v: Value = serde_json::json!({"version": "x", "pid": 1, "listeners": [], "pools": [{"name": "p",
            "workers": [{"pid": 7, "state": "busy", "current": [
                {"method": "GET", "uri": "/left", "duration_seconds": 9.0, "abandoned": true}]}]}]});
        let f = frame(&v, None);
        assert!(f.lines().any(|l| l.starts_with("p ") && l.contains("GET /left (abandoned)  9.000s")), "{f}");
    }
}
