//! Going on after an error on one key, so that one run names every mistake of a file.
//!
//! serde stops at the first error of a document. When that error is about one key (unknown,
//! a wrong type, a bad duration or size), the key is taken out of the text and the file is
//! parsed again: a bad value becomes `~` (every key is optional in `file.rs`), an unknown or
//! repeated key goes altogether. Characters are overwritten with spaces, never removed, so
//! every other key keeps the line and column the operator wrote it at. A key of a flow
//! mapping (`{a: 1, b: 2}`) goes with its comma, so its neighbours are still checked; an item
//! of a list (`- x`, `[x, y]`) cannot go on its own without renumbering the items after it:
//! the key holding the list loses its value. A YAML syntax error stops the file: what follows
//! it is not checked, and the error says so.
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
        let (error, mut fix) = here.yaml_error_and_fix(&err, &text);
        // The key just emptied does not take null either (a pool written as a list, say):
        // it goes altogether, and its error is not reported twice.
        let again = fix.as_mut().filter(|f| dropped.last() == Some(&f.path)).map(|f| f.remove = true).is_some();
        let also = fix.as_ref().map(|f| f.also.clone()).unwrap_or_default();
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
                // Last: a key emptied again is the one just emptied.
                dropped.extend(also);
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
            // Flow first: a flow mapping's continuation line looks like block style.
            if let Some(next) = cut_flow_key(text, pos, remove).or_else(|| cut_key(text, pos, remove)) {
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
        // A sequence item (or a key that is neither block nor flow style, such as `? k`):
        // its enclosing key's value goes.
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

/// Blank the flow-mapping key at `pos` with its value and its comma (`remove`), or only its
/// value, which becomes `~`. `None` when `pos` is no key of a flow mapping.
fn cut_flow_key(text: &str, pos: Pos, remove: bool) -> Option<String> {
    let entry = flow_entry(text, pos)?;
    let mut chars: Vec<char> = text.chars().collect();
    if !remove {
        // A key written without a value is null already: the same text makes the caller
        // remove the key instead.
        let Some((start, end)) = entry.value else { return Some(text.to_owned()) };
        blank(chars.get_mut(start..end)?);
        chars[start] = '~';
        return Some(chars.into_iter().collect());
    }
    let after = entry.value.map_or(entry.key_end, |(_, end)| end);
    let (stop, comma) = entry_end(&chars, after, entry.value.is_none())?;
    blank(chars.get_mut(entry.key..stop)?);
    if comma {
        chars[stop] = ' ';
    } else if let Some(c) = entry.prev_end.and_then(|prev| comma_between(&chars, prev, entry.key)) {
        // The last entry: the comma before it goes instead (`{a: 1, b: 2}` → `{a: 1      }`).
        chars[c] = ' ';
    }
    Some(chars.into_iter().collect())
}

/// One `key: value` of a flow mapping, as character offsets into the text.
#[derive(Debug)]
struct FlowEntry {
    key: usize,
    key_end: usize,
    /// Where the value starts and ends; `None` for a key written without one (`{a, b: 1}`).
    value: Option<(usize, usize)>,
    /// Where the entry before it in the same mapping ends.
    prev_end: Option<usize>,
}

/// The entry of a flow mapping whose key starts at `pos`, found from the parser's events
/// (quotes, nested brackets and comments are the parser's business, not a scan's).
fn flow_entry(text: &str, pos: Pos) -> Option<FlowEntry> {
    use serde_saphyr::granit_parser::{Event, Parser, StructureStyle};
    /// An open collection: a flow mapping or not, whether its next node is a key, and
    /// where its last complete entry ended.
    struct Open {
        flow_map: bool,
        key_next: bool,
        last_end: Option<usize>,
    }
    // A node ending at `end` inside `parent`: a key, or a value that completes an entry.
    let node_done = |parent: Option<&mut Open>, end: usize| {
        if let Some(open) = parent {
            if !open.key_next {
                open.last_end = Some(end);
            }
            open.key_next = !open.key_next;
        }
    };
    let mut events = Parser::new_from_str(text);
    let mut stack: Vec<Open> = Vec::new();
    loop {
        let (event, span) = events.next()?.ok()?;
        let (start, end) = (span.start.index(), span.end.index());
        match event {
            Event::MappingStart(style, ..) => {
                stack.push(Open { flow_map: style == StructureStyle::Flow, key_next: true, last_end: None })
            }
            // In a sequence, `key_next` and `last_end` are kept but mean nothing.
            Event::SequenceStart(..) => stack.push(Open { flow_map: false, key_next: false, last_end: None }),
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
                node_done(stack.last_mut(), end);
            }
            Event::Scalar(..) | Event::Alias(..) => {
                let at = Pos { line: span.start.line(), column: span.start.col() + 1 };
                match stack.last() {
                    Some(open) if open.flow_map && open.key_next && at == pos => {
                        let prev_end = open.last_end;
                        let value = flow_value(&mut events)?;
                        return Some(FlowEntry { key: start, key_end: end, value, prev_end });
                    }
                    _ => node_done(stack.last_mut(), end),
                }
            }
            _ => {}
        }
    }
}

/// Where the next node of `events` (a value) starts and ends; `Some(None)` when it is
/// empty, `None` when the events end first.
fn flow_value<'a>(
    events: &mut serde_saphyr::granit_parser::Parser<'a, serde_saphyr::granit_parser::StrInput<'a>>,
) -> Option<Option<(usize, usize)>> {
    use serde_saphyr::granit_parser::Event;
    let mut depth = 0usize;
    let mut start = None;
    loop {
        let (event, span) = events.next()?.ok()?;
        let (s, e) = (span.start.index(), span.end.index());
        match event {
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                start.get_or_insert(s);
                depth += 1;
            }
            Event::MappingEnd | Event::SequenceEnd => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(Some((start?, e)));
                }
            }
            Event::Scalar(..) | Event::Alias(..) if depth == 0 => return Some((s < e).then_some((s, e))),
            _ => {}
        }
    }
}

/// From `from` (just past an entry), what ends the entry: its `,` (true) or the closing
/// bracket of its mapping (false). `colon`: the entry has no value, its `:` may come first.
fn entry_end(chars: &[char], from: usize, mut colon: bool) -> Option<(usize, bool)> {
    let mut i = from;
    loop {
        match *chars.get(i)? {
            ',' => return Some((i, true)),
            '}' | ']' => return Some((i, false)),
            '#' => i = comment_end(chars, i),
            ':' if colon => colon = false,
            c if c.is_whitespace() => {}
            _ => return None,
        }
        i += 1;
    }
}

/// The `,` between two entries of a flow mapping (`from` ends one, `to` starts the next).
fn comma_between(chars: &[char], from: usize, to: usize) -> Option<usize> {
    let mut i = from;
    while i < to {
        match chars[i] {
            ',' => return Some(i),
            '#' => i = comment_end(chars, i),
            _ => {}
        }
        i += 1;
    }
    None
}

/// The end of the line of the comment starting at `i`.
fn comment_end(chars: &[char], i: usize) -> usize {
    chars[i..].iter().position(|&c| c == '\n').map_or(chars.len(), |n| i + n)
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

/// Overwrite with spaces (line endings stay).
fn blank(chars: &mut [char]) {
    for c in chars.iter_mut().filter(|c| **c != '\r' && **c != '\n') {
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
    fn a_flow_key_goes_with_its_comma_and_keeps_every_column() {
        let text = "l: {a: 1, b: 2, c: 3}\n";
        assert_eq!(cut_flow_key(text, at(1, 11), true).unwrap(), "l: {a: 1,       c: 3}\n");
        // The last key: the comma before it goes.
        assert_eq!(cut_flow_key(text, at(1, 17), true).unwrap(), "l: {a: 1, b: 2      }\n");
        assert_eq!(cut_flow_key("l: {a: 1}\n", at(1, 5), true).unwrap(), "l: {    }\n");
        assert_eq!(cut_flow_key(text, at(1, 11), false).unwrap(), "l: {a: 1, b: ~, c: 3}\n");
        // Nested collections, quotes and commas inside them are one value.
        let nested = "l: {a: [1, {x: y}], \"b,c\": 'x, }', d: 1}\n";
        assert_eq!(cut_flow_key(nested, at(1, 5), false).unwrap(), "l: {a: ~          , \"b,c\": 'x, }', d: 1}\n");
        assert_eq!(cut_flow_key(nested, at(1, 21), true).unwrap(), "l: {a: [1, {x: y}],                d: 1}\n");
        // Inside a block list item.
        let item = "routes:\n  - {prefx: /a, pool: p}\n";
        assert_eq!(cut_flow_key(item, at(2, 6), true).unwrap(), "routes:\n  - {           pool: p}\n");
    }

    #[test]
    fn a_flow_key_without_a_value_and_one_over_several_lines() {
        // No value: null already (the text stays, so the caller removes the key).
        assert_eq!(cut_flow_key("l: {a, b: 1}\n", at(1, 5), false).unwrap(), "l: {a, b: 1}\n");
        assert_eq!(cut_flow_key("l: {a, b: 1}\n", at(1, 5), true).unwrap(), "l: {   b: 1}\n");
        assert_eq!(cut_flow_key("l: {a: , b: 1}\n", at(1, 5), true).unwrap(), "l: {     b: 1}\n");
        // Comments (with commas) and CRLF line endings stay where they were.
        let text = "l: {\r\n  a: 1, # one, two\r\n  b: [x,\r\n   y]\r\n}\r\n";
        assert_eq!(
            cut_flow_key(text, at(3, 3), true).unwrap(),
            "l: {\r\n  a: 1  # one, two\r\n        \r\n     \r\n}\r\n"
        );
        assert_eq!(
            cut_flow_key(text, at(3, 3), false).unwrap(),
            "l: {\r\n  a: 1, # one, two\r\n  b: ~  \r\n     \r\n}\r\n"
        );
        // Not a key of a flow mapping.
        assert_eq!(cut_flow_key("a:\n  b: 1\n", at(2, 3), true), None);
        assert_eq!(cut_flow_key("a: [b, c]\n", at(1, 5), true), None);
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
        // Only the bad key of the flow mapping goes: env keeps B.
        assert_eq!(dropped, ["pools.x.threads", "pools.x.queue-timout", "pools.x.env.A", "pools.x.startup-timeout"]);
        let raw = r.raw.unwrap();
        let pool = &raw.pools.as_ref().unwrap().0[0].1;
        let env: Vec<&str> = pool.env.as_ref().unwrap().0.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(env, ["B"]);
    }

    #[test]
    fn every_key_of_a_flow_mapping_is_checked() {
        let text = "pools:\n  x: {app: x, procesess: 2, threads: many,\n      queue-timout: 5s, queue-size: 3}\nlisteners:\n  l: {fastcgi: a, routes: [{prefx: /a, pool: x}, {pool: 3, hst: h}]}\n";
        let source = Source { file: "f.yaml".to_owned(), index: KeyIndex::build(text) };
        let r = parse(&source, text);
        let errors: Vec<String> = r.errors.iter().map(ToString::to_string).collect();
        let want = [
            "f.yaml:2:15: pools.x.procesess: unknown key",
            "f.yaml:2:38: pools.x.threads: expected a whole number",
            "f.yaml:3:7: pools.x.queue-timout: unknown key",
            "f.yaml:5:29: listeners.l.routes[0].prefx: unknown key",
            "f.yaml:5:60: listeners.l.routes[1].hst: unknown key",
        ];
        assert_eq!(errors.len(), want.len(), "{errors:#?}");
        for (e, w) in errors.iter().zip(want) {
            assert!(e.starts_with(w), "got:  {e}\nwant: {w}");
        }
        // What was right in those entries is kept.
        let raw = r.raw.unwrap();
        let pool = &raw.pools.as_ref().unwrap().0[0].1;
        assert_eq!((pool.app.as_deref(), pool.queue_size, pool.threads), (Some("x"), Some(3), None));
        let l = &raw.listeners.as_ref().unwrap().0[0].1;
        let routes = l.routes.as_ref().unwrap();
        assert_eq!(routes.iter().map(|r| r.pool.as_deref()).collect::<Vec<_>>(), [Some("x"), Some("3")]);
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
