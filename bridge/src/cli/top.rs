//! `fcgibridge top`: the status tables, refreshed in place, with the rates a single
//! snapshot cannot show (requests and 503s per second, per pool and listener).
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
    rejected: u64,
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
                    rejected: field(e, "rejected_requests"),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Per-second rates between two snapshots, by name; a name new in `now` (a reload added
/// it) or a counter that went down (the daemon restarted) shows no rate rather than a
/// wrong one.
fn rates(before: &[Counts], now: &[Counts], secs: f64) -> Vec<(String, Option<(f64, f64)>)> {
    now.iter()
        .map(|n| {
            let rate = before.iter().find(|b| b.name == n.name).and_then(|b| {
                let req = n.requests.checked_sub(b.requests)?;
                let rej = n.rejected.checked_sub(b.rejected)?;
                (secs > 0.0).then(|| (req as f64 / secs, rej as f64 / secs))
            });
            (n.name.clone(), rate)
        })
        .collect()
}

fn rate_lines(out: &mut String, title: &str, rates: &[(String, Option<(f64, f64)>)]) {
    let width = rates.iter().map(|(n, _)| n.len()).max().unwrap_or(0).max(title.len());
    let _ = writeln!(out, "{title:<width$}  REQ/S     503/S");
    for (name, rate) in rates {
        match rate {
            Some((req, rej)) => {
                let _ = writeln!(out, "{name:<width$}  {req:<8.1}  {rej:.1}");
            }
            None => {
                let _ = writeln!(out, "{name:<width$}  -         -");
            }
        }
    }
}

/// One screen: the rates, then `fcgibridge status`'s tables.
fn frame(now: &Value, before: Option<(&Value, f64)>) -> String {
    let mut out = String::new();
    if let Some((prev, secs)) = before {
        rate_lines(&mut out, "POOL", &rates(&counts(prev, "pools"), &counts(now, "pools"), secs));
        out.push('\n');
        rate_lines(&mut out, "LISTENER", &rates(&counts(prev, "listeners"), &counts(now, "listeners"), secs));
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
        Counts { name: name.to_owned(), requests, rejected }
    }

    #[test]
    fn rates_are_differences_per_second() {
        let r = rates(&[c("a", 100, 4)], &[c("a", 300, 10)], 2.0);
        assert_eq!(r, vec![("a".to_owned(), Some((100.0, 3.0)))]);
    }

    #[test]
    fn new_names_and_restarted_counters_have_no_rate() {
        let r = rates(&[c("a", 100, 0)], &[c("a", 50, 0), c("b", 7, 0)], 1.0);
        assert_eq!(r, vec![("a".to_owned(), None), ("b".to_owned(), None)]);
    }

    #[test]
    fn first_frame_has_only_the_tables() {
        let v: Value = serde_json::json!({"version": "x", "pid": 1, "pools": [{"name": "p", "accepted_requests": 5}], "listeners": []});
        let f = frame(&v, None);
        assert!(!f.contains("REQ/S") && f.contains("POOL"), "{f}");
        let later: Value = serde_json::json!({"version": "x", "pid": 1, "pools": [{"name": "p", "accepted_requests": 15}], "listeners": []});
        let f = frame(&later, Some((&v, 1.0)));
        assert!(f.contains("10.0"), "{f}");
    }
}
