//! "Did you mean …?" for misspelled keys and values.

/// The expected name closest to `given`, if one is close enough to be a plausible typo.
pub(super) fn did_you_mean<'a>(given: &str, expected: &[&'a str]) -> Option<&'a str> {
    let given_lower = given.to_ascii_lowercase();
    expected
        .iter()
        .map(|candidate| (*candidate, strsim::jaro_winkler(&given_lower, candidate)))
        // 0.8 catches transpositions, doubled and dropped letters, and snake_case for
        // kebab-case, while leaving unrelated words without a misleading suggestion.
        .filter(|(_, score)| *score >= 0.8)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(candidate, _)| candidate)
}

/// `; did you mean "x"?`, or the list of accepted names when nothing is close.
pub(super) fn suggestion(given: &str, expected: &[&str]) -> String {
    if let Some(best) = did_you_mean(&given.replace('_', "-"), expected) {
        format!("; did you mean {best:?}?")
    } else if expected.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = expected.iter().map(|e| format!("{e:?}")).collect();
        format!("; expected one of {}", list.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POOL_KEYS: &[&str] = &["app", "python", "chdir", "env", "processes", "threads", "queue-size"];

    #[test]
    fn typos_find_their_key() {
        assert_eq!(did_you_mean("procesess", POOL_KEYS), Some("processes"));
        assert_eq!(did_you_mean("thread", POOL_KEYS), Some("threads"));
        assert_eq!(did_you_mean("Python", POOL_KEYS), Some("python"));
        assert_eq!(suggestion("queue_size", POOL_KEYS), "; did you mean \"queue-size\"?");
    }

    #[test]
    fn unrelated_words_list_the_choices() {
        assert_eq!(did_you_mean("zzz", POOL_KEYS), None);
        assert_eq!(suggestion("x", &["text", "json"]), "; expected one of \"text\", \"json\"");
    }
}
