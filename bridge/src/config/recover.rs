//! Going on after an error on one key, so that one run names every mistake of a file.
//!
//! serde stops at the first error of a document. When that error is about one key (unknown,
//! a wrong type, a bad duration or size), the key is taken out of the text and the file is
//! parsed again: a bad value becomes `~` (every key is optional in `file.rs`), an unknown or
//! repeated key goes altogether. Characters are overwritten with spaces, never removed, so
//! every other key keeps the line and column the operator wrote it at. Only a key in block
//! style can be cut out on its own; for one inside a flow collection (`{a: 1, b: 2}`) the
//! nearest enclosing block-style key loses its value. A YAML syntax error stops the file:
//! what follows it is not checked, and the error says so.
use super::error::{ConfigError, Fix, Source};
use super::file::RawFile;
use super::locate::{KeyIndex, KeyPath, Pos};

/// Errors reported for one file before the rest of it is left unchecked.
const MAX_ERRORS: usize = 50;

/// One file, read as far as its errors allow.
pub(super) struct Recovered {
    /// The file without its bad keys; `None` when it could not be read to its end.
    pub raw: Option<RawFile>,
    pub errors: Vec<ConfigError>,
    /// Keys taken out: what follows only from their absence is not reported again.
    pub dropped: Vec<KeyPath>,
}

/// Parse `text` (the file `source` names), collecting every error on a single key.
pub(super) fn parse(source: &Source, text: &str) -> Recovered {
    let mut text = text.to_owned();
    let mut errors = Vec::new();
    let mut dropped = Vec::new();
    loop {
        let err = match serde_saphyr::from_str::<Option<RawFile>>(&text) {
            Ok(raw) => return Recovered { raw: Some(raw.unwrap_or_default()), errors, dropped },
            Err(e) => e,
        };
        // Key paths as this text has them; lines and columns are the original ones.
        let here = Source { file: source.file.clone(), index: KeyIndex::build(&text) };
        let (error, mut fix) = here.yaml_error_and_fix(&err);
        // The key just emptied does not take null either (a pool written as a list, say):
        // it goes altogether, and its error is not reported twice.
        let again = fix.as_mut().filter(|f| dropped.last() == Some(&f.path)).map(|f| f.remove = true).is_some();
        let cut = match fix {
            Some(fix) if errors.len() + 1 < MAX_ERRORS => cut(&text, &here.index, &fix),
            _ => None,
        };
        match (cut, again) {
            (Some((path, next)), true) => {
                if dropped.last() != Some(&path) {
                    dropped.push(path);
                }
                text = next;
            }
            (Some((path, next)), false) => {
                errors.push(error);
                dropped.push(path);
                text = next;
            }
            (None, true) => {
                if let Some(last) = errors.pop() {
                    errors.push(last.stops_the_file());
                }
                return Recovered { raw: None, errors, dropped };
            }
            (None, false) => {
                errors.push(error.stops_the_file());
                return Recovered { raw: None, errors, dropped };
            }
        }
    }
}

/// `text` without the key `fix` names (or the nearest enclosing key that can go), and the
/// path of what went; `None` when nothing can be cut out.
fn cut(text: &str, index: &KeyIndex, fix: &Fix) -> Option<(KeyPath, String)> {
    let mut path = fix.path.clone();
    let mut remove = fix.remove;
    loop {
        if let Some(pos) = index.key_before(&path, fix.at) {
            if let Some(next) = cut_key(text, pos, remove) {
                if next != text {
                    return Some((path, next));
                }
                // Its value was null already (and null is not accepted there): drop the key.
                if !remove {
                    remove = true;
                    continue;
                }
                return None;
            }
        }
        // A sequence item, or a key inside a flow collection: its enclosing key's value goes.
        path = path.parent().filter(|p| !p.0.is_empty())?;
        remove = false;
    }
}

/// Blank the key at `pos` and its value (`remove`), or only its value, which becomes `~`.
/// `None` when the key is not in block style (something other than indentation and `- `
/// before it on its line).
fn cut_key(text: &str, pos: Pos, remove: bool) -> Option<String> {
    let mut lines: Vec<Vec<char>> = text.split('\n').map(|l| l.chars().collect()).collect();
    let (row, col) = (pos.line.checked_sub(1)?, pos.column.checked_sub(1)?);
    let line = lines.get(row)?;
    if col > line.len() || !line[..col].iter().all(|&c| c == ' ' || c == '-') {
        return None;
    }
    let in_item = line[..col].contains(&'-');
    let end = block_end(&lines, row, col);
    if remove {
        blank(&mut lines[row][col..]);
        // A list item left with no key at all would become null: an empty mapping instead.
        let sibling_follows = lines.get(end).is_some_and(|l| indent(l) == col && l.get(col) != Some(&'-'));
        if in_item && !sibling_follows {
            let spaces = lines[row][col..].iter().take_while(|&&c| c == ' ').count();
            lines[row].splice(col..col + spaces.min(2), ['{', '}']);
        }
    } else {
        let colon = key_colon(&lines[row], col)?;
        let l = &mut lines[row];
        let cr = l.last() == Some(&'\r');
        let len = l.len() - usize::from(cr);
        l.truncate(colon + 1);
        l.extend([' ', '~']);
        l.extend(std::iter::repeat_n(' ', len.saturating_sub(colon + 3)));
        l.extend(cr.then_some('\r'));
    }
    for l in &mut lines[row + 1..end] {
        blank(l);
    }
    let rebuilt: Vec<String> = lines.into_iter().map(|l| l.into_iter().collect()).collect();
    Some(rebuilt.join("\n"))
}

/// The first line after `row` that is not part of the value of the key at column `col`:
/// deeper lines, a block sequence at the key's own indentation, blank lines and comments
/// belong to it.
fn block_end(lines: &[Vec<char>], row: usize, col: usize) -> usize {
    let mut end = row + 1;
    while let Some(l) = lines.get(end) {
        let n = indent(l);
        let rest: String = l[n..].iter().collect();
        let rest = rest.trim_end();
        let inside = rest.is_empty()
            || rest.starts_with('#')
            || n > col
            || (n == col && (rest == "-" || rest.starts_with("- ")));
        if !inside {
            break;
        }
        end += 1;
    }
    end
}

/// Where the `:` after the key starting at `col` is (past a quoted key).
fn key_colon(line: &[char], col: usize) -> Option<usize> {
    let mut i = col;
    if let Some(&q) = line.get(col).filter(|c| **c == '"' || **c == '\'') {
        i = col + 1 + line.get(col + 1..)?.iter().position(|&c| c == q)? + 1;
    }
    (i..line.len()).find(|&j| line[j] == ':' && line.get(j + 1).is_none_or(|c| c.is_whitespace()))
}

fn indent(line: &[char]) -> usize {
    line.iter().take_while(|&&c| c == ' ').count()
}

/// Overwrite with spaces (a CR of a CRLF line ending stays).
fn blank(chars: &mut [char]) {
    for c in chars.iter_mut().filter(|c| **c != '\r') {
        *c = ' ';
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn at(line: usize, column: usize) -> Pos {
        Pos { line, column }
    }

    #[test]
    fn a_bad_value_becomes_null_and_keeps_every_column() {
        let text = "pools:\n  x:\n    threads: many\n    env:\n      A: [1]\n      B: b\n    app: x\n";
        assert_eq!(
            cut_key(text, at(3, 5), false).unwrap(),
            "pools:\n  x:\n    threads: ~   \n    env:\n      A: [1]\n      B: b\n    app: x\n"
        );
        assert_eq!(
            cut_key(text, at(4, 5), false).unwrap(),
            "pools:\n  x:\n    threads: many\n    env: ~\n            \n          \n    app: x\n"
        );
    }

    #[test]
    fn an_unknown_key_goes_with_its_block() {
        let text = "pools:\n  x:\n    zzz:\n    - a\n    - b\n    app: x\n";
        assert_eq!(cut_key(text, at(3, 5), true).unwrap(), "pools:\n  x:\n        \n       \n       \n    app: x\n");
    }

    #[test]
    fn a_list_item_keeps_its_other_keys_or_becomes_empty() {
        let text = "routes:\n  - prefx: /a\n    pool: p\n  - prefx: /b\n";
        let once = cut_key(text, at(2, 5), true).unwrap();
        assert_eq!(once, "routes:\n  -          \n    pool: p\n  - prefx: /b\n");
        assert_eq!(cut_key(&once, at(4, 5), true).unwrap(), "routes:\n  -          \n    pool: p\n  - {}       \n");
    }

    #[test]
    fn flow_style_is_not_cut_here() {
        assert_eq!(cut_key("routes: [{prefx: /a}]\n", at(1, 11), true), None);
        assert_eq!(key_colon(&"\"a: b\": c".chars().collect::<Vec<_>>(), 0), Some(6));
    }

    #[test]
    fn every_error_of_a_file_and_what_went() {
        let text = "pools:\n  x:\n    app: x\n    threads: many\n    queue-timout: 5s\n    env: {A: [1], B: b}\n    startup-timeout: soon\n";
        let source = Source { file: "f.yaml".to_owned(), index: KeyIndex::build(text) };
        let r = parse(&source, text);
        let errors: Vec<String> = r.errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 4, "{errors:#?}");
        assert!(errors[0].starts_with("f.yaml:4:14: pools.x.threads: expected a whole number"), "{errors:#?}");
        assert!(
            errors[1].starts_with("f.yaml:5:5: pools.x.queue-timout: unknown key; did you mean \"queue-timeout\"?"),
            "{errors:#?}"
        );
        assert!(errors[2].starts_with("f.yaml:6:14: pools.x.env.A: "), "{errors:#?}");
        assert!(errors[3].starts_with("f.yaml:7:22: pools.x.startup-timeout: invalid duration"), "{errors:#?}");
        let dropped: Vec<String> = r.dropped.iter().map(ToString::to_string).collect();
        // The flow mapping goes as a whole.
        assert_eq!(dropped, ["pools.x.threads", "pools.x.queue-timout", "pools.x.env", "pools.x.startup-timeout"]);
        assert!(r.raw.is_some());
    }

    #[test]
    fn a_syntax_error_stops_the_file_and_says_so() {
        let text = "pools:\n  x:\n    threads: many\n  y: {app: y\n";
        let source = Source { file: "f.yaml".to_owned(), index: KeyIndex::build(text) };
        let r = parse(&source, text);
        assert!(r.raw.is_none());
        let errors: Vec<String> = r.errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert!(errors[0].starts_with("f.yaml:3:14: pools.x.threads"), "{errors:#?}");
        assert!(errors[1].ends_with("(the rest of this file is not checked until this is fixed)"), "{errors:#?}");
    }
}
