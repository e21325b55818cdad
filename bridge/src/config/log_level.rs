//! `log-level:`, a tracing filter, checked for what tracing accepts but reads otherwise than
//! the operator meant: a word that is no level (`warning`) is a target name to tracing, and
//! a filter of only target names logs nothing else.
use tracing_subscriber::filter::LevelFilter;

/// The levels (tracing also takes them in any case, and 0 to 5).
const LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];

/// Other programs' names for a level (syslog's, log4j's), and the level they mean here.
const SYNONYMS: &[(&str, &str)] = &[
    ("warning", "warn"),
    ("notice", "info"),
    ("information", "info"),
    ("verbose", "debug"),
    ("err", "error"),
    ("crit", "error"),
    ("critical", "error"),
    ("fatal", "error"),
    ("alert", "error"),
    ("emerg", "error"),
    ("none", "off"),
    ("quiet", "off"),
];

/// What is wrong with `filter` as a `log-level`, said after the key: the rest of an error
/// `bridge.log-level: …`.
pub(super) fn problem(filter: &str) -> Option<String> {
    // tracing splits at every comma and skips empty directives, as here.
    let directives: Vec<&str> = filter.split(',').filter(|d| !d.is_empty()).collect();
    if let Some(d) = directives.iter().find(|d| d.trim() != **d) {
        // tracing takes " debug" for a target, and " fcgibridge=debug" for nothing (its
        // level check does not trim).
        return Some(format!(
            "{d:?} starts or ends with a space, which tracing reads as part of a target name; write the list \
             without spaces: warn,fcgibridge=debug"
        ));
    }
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(filter) {
        return Some(format!("{filter:?} is not a log filter ({e}); write e.g. info, debug, or fcgibridge=debug"));
    }
    if directives.is_empty() {
        return Some("is empty: nothing would be logged; write a level such as info, or leave the key out".to_owned());
    }
    directives.into_iter().find_map(directive_problem)
}

/// What is wrong with one directive of the comma list, which tracing accepts.
fn directive_problem(d: &str) -> Option<String> {
    // The level follows the last '=' outside a span's `[…]` (whose fields hold '=' too).
    let after_span = d.rfind(']').map_or(d, |i| &d[i + 1..]);
    match after_span.split_once('=') {
        Some((_, "")) => {
            let target = &d[..d.len() - 1];
            Some(format!("{d:?} has no level after '='; write TARGET=LEVEL, e.g. {target}=debug, or a level alone"))
        }
        Some(_) => None,
        // A span filter without a level (`[request]`, `target[span]`): every level inside it.
        None if d.parse::<LevelFilter>().is_ok() || d.ends_with(']') => None,
        None => Some(format!(
            "{d:?} is not a level (tracing would read it as a target name and log nothing else){}",
            instead(d)
        )),
    }
}

/// What to write instead of `d`, a word that is no level.
fn instead(d: &str) -> String {
    let lower = d.to_ascii_lowercase();
    let level = SYNONYMS
        .iter()
        .find(|(name, _)| *name == lower)
        .map(|(_, level)| *level)
        .or_else(|| super::hint::did_you_mean(d, &LEVELS));
    match level {
        Some(level) => format!("; did you mean {level:?}?"),
        None => format!("; write a level (error, warn, info, debug, trace or off), or TARGET=LEVEL: {d}=debug"),
    }
}
