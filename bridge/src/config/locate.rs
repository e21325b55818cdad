//! Where each key of a YAML file sits: `pools.demo.processes` ↔ line 7, column 5.
//!
//! serde reports *where* something went wrong but not *which key* it was, and the
//! checks that run after parsing (a route to an unknown pool, a duplicate address)
//! know the key but not where it was written. One pass over the parser's events
//! answers both questions, so the typed structs stay free of span wrappers.
use serde_saphyr::granit_parser::{Event, Parser};
use std::fmt;

/// A 1-based line and column (in characters), as editors count them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A key path such as `listeners.api.routes[1].pool`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    /// Build from `["pools", "demo"]`-style keys.
    pub fn of(keys: &[&str]) -> Self {
        Self(keys.iter().map(|k| Seg::Key((*k).to_owned())).collect())
    }
    /// This path with one more key.
    pub fn key(&self, key: &str) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Key(key.to_owned()));
        p
    }
    /// This path with one more sequence index.
    pub fn index(&self, i: usize) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }
    /// The enclosing path; `None` at the top.
    pub fn parent(&self) -> Option<Self> {
        let mut p = self.clone();
        p.0.pop().map(|_| p)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
struct Node {
    pos: Pos,
    path: KeyPath,
    /// The key token itself, rather than the value it introduces.
    is_key: bool,
    /// Set for a key or value an alias brings (`<<: *defaults`, `x: *common`): `pos` is where
    /// the anchor's mapping has it, `path` where the alias puts it.
    via: Option<Via>,
}

/// The alias that brought a node from an anchor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// Where the alias (`*defaults`) is written.
    pub alias: Pos,
    /// The anchor's name, without its `&` (empty for a mapping merged as written: `<<: {…}`).
    pub anchor: String,
    /// A merge (`<<: *defaults`) rather than an alias standing for the whole value.
    pub merge: bool,
}

impl Via {
    /// What an error about a key it brought adds: where the value comes from.
    pub fn note(&self) -> String {
        let line = self.alias.line;
        match (self.anchor.as_str(), self.merge) {
            ("", _) => format!(" (in the mapping merged here at line {line})"),
            (name, true) => format!(" (in &{name}, merged here at line {line})"),
            (name, false) => format!(" (in &{name}, used here at line {line})"),
        }
    }
}

/// Whether `a` and `b` are one key of two entries of a section: `pools.a.threads` and
/// `pools.b.threads`, or `pools.a` and `pools.b`.
pub(super) fn alike(a: &KeyPath, b: &KeyPath) -> bool {
    a.0.len() == b.0.len() && a.0.len() >= 2 && a.0[0] == b.0[0] && a.0[2..] == b.0[2..]
}

/// The mapping a merge key's value is merged into: `pools.x` of `pools.x.<<` and of
/// `pools.x.<<[1]`; `None` for any other path.
pub(super) fn merged_into(path: &KeyPath) -> Option<KeyPath> {
    let merge = |s: &Seg| matches!(s, Seg::Key(k) if k == "<<");
    match &path.0[..] {
        [into @ .., last] if merge(last) => Some(KeyPath(into.to_vec())),
        [into @ .., last, Seg::Index(_)] if merge(last) => Some(KeyPath(into.to_vec())),
        _ => None,
    }
}

/// Every key and value node of one YAML document, in document order.
#[derive(Debug, Default, Clone)]
pub struct KeyIndex {
    nodes: Vec<Node>,
    /// Where a second document starts (its `---`), which the typed parse refuses.
    second_document: Option<Pos>,
}

enum Frame {
    Map {
        path: KeyPath,
        key: Option<String>,
    },
    Seq {
        path: KeyPath,
        next: usize,
    },
    /// A mapping or sequence used as a key: nothing inside it is addressable.
    Opaque,
}

/// Add `node`, and for one inside a merge (`pools.x.<<.threads`, `pools.x.<<[1].threads`)
/// also where the merge puts it (`pools.x.threads`), as brought by the merge. A node brought
/// by an alias is kept only where it lands.
fn add(nodes: &mut Vec<Node>, node: Node) {
    let merge = node.path.0.iter().position(|s| matches!(s, Seg::Key(k) if k == "<<"));
    let Some(at) = merge else { return nodes.push(node) };
    let skip = if matches!(node.path.0.get(at + 1), Some(Seg::Index(_))) { 2 } else { 1 };
    if node.path.0.len() > at + skip {
        let mut landed = node.path.0.clone();
        landed.drain(at..at + skip);
        // Keys written inline (`<<: {threads: 2}`) are brought by the merge's value.
        // From the end: the merge's value was indexed just before what it holds.
        let merge_value = || nodes.iter().rev().find(|n| !n.is_key && n.path.0[..] == node.path.0[..at + skip]);
        let inline = |n: &Node| Via { alias: n.pos, anchor: String::new(), merge: true };
        let via = node.via.clone().or_else(|| merge_value().map(inline));
        let landed = Node { path: KeyPath(landed), via, ..node.clone() };
        add(nodes, landed);
    }
    if node.via.is_none() {
        nodes.push(node);
    }
}

/// Nodes an index holds at most: past it aliases bring no more (an error in what they bring
/// is then placed at the alias). The YAML parser refuses a document of more nodes anyway.
const MAX_NODES: usize = 250_000;

/// The nodes written inside the anchor at `anchor`, again under `to`, where the alias `via`
/// puts them. Not those an alias inside the anchor brought: copying copies would grow the
/// index exponentially with nested anchors (the "billion laughs").
fn borrow(nodes: &mut Vec<Node>, anchor: &KeyPath, to: &KeyPath, via: Via) {
    if nodes.len() >= MAX_NODES {
        return;
    }
    let inside: Vec<Node> = nodes
        .iter()
        .filter(|n| n.via.is_none() && n.path.0.len() > anchor.0.len() && n.path.0.starts_with(&anchor.0))
        .take(MAX_NODES - nodes.len())
        .cloned()
        .collect();
    for n in inside {
        let mut path = to.clone();
        path.0.extend_from_slice(&n.path.0[anchor.0.len()..]);
        add(nodes, Node { path, via: Some(via.clone()), ..n });
    }
}

impl KeyIndex {
    /// Index `text`. Stops quietly at a syntax error: the typed parse reports those.
    pub fn build(text: &str) -> Self {
        let mut nodes = Vec::new();
        let mut stack: Vec<Frame> = Vec::new();
        // Each anchor's node path, by the parser's anchor id.
        let mut anchors: std::collections::HashMap<usize, KeyPath> = std::collections::HashMap::new();
        let (mut documents, mut second_document) = (0, None);
        for item in Parser::new_from_str(text) {
            let Ok((event, span)) = item else { break };
            let pos = Pos { line: span.start.line(), column: span.start.col() + 1 };
            if matches!(event, Event::DocumentStart(..)) {
                documents += 1;
                if documents == 2 {
                    second_document = Some(pos);
                }
            }
            let is_node = matches!(
                event,
                Event::Scalar(..) | Event::MappingStart(..) | Event::SequenceStart(..) | Event::Alias(..)
            );
            if matches!(event, Event::MappingEnd | Event::SequenceEnd) {
                stack.pop();
                continue;
            }
            if !is_node {
                continue;
            }
            // Decide the path of this node from its container.
            let (path, is_key, opaque) = match stack.last_mut() {
                None => (Some(KeyPath::default()), false, false),
                Some(Frame::Opaque) => (None, false, true),
                Some(Frame::Seq { path, next }) => {
                    let p = path.index(*next);
                    *next += 1;
                    (Some(p), false, false)
                }
                Some(Frame::Map { path, key }) => match key.take() {
                    Some(k) => (Some(path.key(&k)), false, false),
                    None => match &event {
                        Event::Scalar(value, ..) => {
                            *key = Some(value.to_string());
                            (Some(path.key(value)), true, false)
                        }
                        _ => {
                            // A complex key: its value gets a placeholder name.
                            *key = Some("?".to_owned());
                            (None, false, true)
                        }
                    },
                },
            };
            if let Some(path) = &path {
                add(&mut nodes, Node { pos, path: path.clone(), is_key, via: None });
                match &event {
                    Event::Scalar(_, _, id, _) | Event::MappingStart(_, id, _) | Event::SequenceStart(_, id, _)
                        if *id != 0 =>
                    {
                        anchors.insert(*id, path.clone());
                    }
                    Event::Alias(id) => {
                        if let Some(anchor) = anchors.get(id) {
                            let name = text.chars().skip(span.start.index() + 1);
                            let name = name.take(span.end.index().saturating_sub(span.start.index() + 1)).collect();
                            let merge = merged_into(path).is_some();
                            borrow(&mut nodes, anchor, path, Via { alias: pos, anchor: name, merge });
                        }
                    }
                    _ => {}
                }
            }
            match event {
                Event::MappingStart(..) => stack.push(match (path, opaque) {
                    (Some(path), false) => Frame::Map { path, key: None },
                    _ => Frame::Opaque,
                }),
                Event::SequenceStart(..) => stack.push(match (path, opaque) {
                    (Some(path), false) => Frame::Seq { path, next: 0 },
                    _ => Frame::Opaque,
                }),
                _ => {}
            }
        }
        Self { nodes, second_document }
    }

    /// Where a second YAML document starts: its `---` line when it has one.
    pub fn second_document(&self) -> Option<Pos> {
        self.second_document
    }

    /// Where the key at `path` is written; for a sequence item, where the item starts; for
    /// a key a merge brings (`<<: *defaults`), where the anchor has it. Falls back to the
    /// nearest enclosing key that exists.
    pub fn find(&self, path: &KeyPath) -> Option<Pos> {
        self.node(path).map(|n| n.pos)
    }

    /// The alias that brings the key at `path` from an anchor (or its nearest enclosing
    /// key, as [`Self::find`] falls back); `None` for a key written where it is.
    pub fn brought_by(&self, path: &KeyPath) -> Option<&Via> {
        self.node(path).and_then(|n| n.via.as_ref())
    }

    /// Where an alias that `accept`s puts the node written at `at` in its anchor (the
    /// innermost there, the first alias of those accepted), and the alias.
    pub fn brought_to(&self, at: Pos, accept: impl Fn(&Via) -> bool) -> Option<(&KeyPath, &Via)> {
        let brought = self.nodes.iter().filter_map(|n| Some((n, n.via.as_ref().filter(|v| n.pos == at && accept(v))?)));
        // `rev`: of the innermost, max_by_key keeps the last, which is then the first.
        brought.rev().max_by_key(|(n, _)| n.path.0.len()).map(|(n, via)| (&n.path, via))
    }

    /// Every key that the node written at `at` becomes through an alias and that keeps it (a
    /// key its mapping writes itself wins over a merged one), with the alias, in the order
    /// of the aliases.
    pub fn landings(&self, at: Pos) -> Vec<(KeyPath, Via)> {
        let mut landings: Vec<(KeyPath, Via)> = Vec::new();
        for n in self.nodes.iter().filter(|n| n.pos == at) {
            let Some(via) = &n.via else { continue };
            if self.brought_by(&n.path) == Some(via) && !landings.iter().any(|(p, _)| *p == n.path) {
                landings.push((n.path.clone(), via.clone()));
            }
        }
        landings
    }

    /// The node [`Self::find`] places `path` at: written there before brought by an alias.
    fn node(&self, path: &KeyPath) -> Option<&Node> {
        let mut path = path.clone();
        loop {
            let exact =
                self.nodes.iter().filter(|n| n.path == path).min_by_key(|n| (n.via.is_some(), !n.is_key, n.pos));
            if let Some(node) = exact {
                return Some(node);
            }
            path = path.parent()?;
            if path.0.is_empty() {
                return None;
            }
        }
    }

    /// Only the nodes at `path` and inside it: what a pool template keeps to place the
    /// errors of its instances, made long after the file was read.
    pub fn under(&self, path: &KeyPath) -> Self {
        let nodes = self.nodes.iter().filter(|n| n.path.0.starts_with(&path.0)).cloned().collect();
        Self { nodes, second_document: None }
    }

    /// Whether the key `path` is written, or brought by a merge (no fallback to the keys
    /// around it).
    pub fn written(&self, path: &KeyPath) -> bool {
        self.nodes.iter().any(|n| n.is_key && n.path == *path)
    }

    /// Where the key `path` was written, the last time at or before `near` (a key written
    /// twice in one mapping is reported at the second); `None` if `path` is not a key.
    pub fn key_before(&self, path: &KeyPath, near: Pos) -> Option<Pos> {
        let keys = || self.nodes.iter().filter(|n| n.is_key && n.via.is_none() && n.path == *path);
        keys().filter(|n| n.pos <= near).map(|n| n.pos).max().or_else(|| keys().map(|n| n.pos).min())
    }

    /// Where the key `path` is first written (not brought by an alias).
    pub fn first_written(&self, path: &KeyPath) -> Option<Pos> {
        self.nodes.iter().filter(|n| n.is_key && n.via.is_none() && n.path == *path).map(|n| n.pos).min()
    }

    /// The key path of the node at `pos`: the innermost node starting there, or else
    /// the last node that starts before it (as written there, not where an alias puts it).
    pub fn path_at(&self, pos: Pos) -> Option<&KeyPath> {
        let written = || self.nodes.iter().filter(|n| n.via.is_none());
        let at: Vec<&Node> = written().filter(|n| n.pos == pos).collect();
        if let Some(node) = at.iter().max_by_key(|n| n.path.0.len()) {
            return Some(&node.path);
        }
        written().filter(|n| n.pos < pos).max_by_key(|n| n.pos).map(|n| &n.path)
    }

    /// The path of the mapping that starts at `pos` (used for "missing field" errors,
    /// which serde reports at the first key of the mapping that lacks one).
    pub fn container_at(&self, pos: Pos) -> Option<&KeyPath> {
        self.nodes
            .iter()
            .filter(|n| n.pos == pos && !n.is_key && n.via.is_none())
            .min_by_key(|n| n.path.0.len())
            .map(|n| &n.path)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const DOC: &str = "\
pools:
  demo:
    app: app.py
    processes: 2
listeners:
  api:
    scgi: unix:/run/api.sock
    routes:
      - {host: a.example, pool: demo}
      - pool: demo
";

    #[test]
    fn finds_keys_by_path() {
        let index = KeyIndex::build(DOC);
        let at = |keys: &[&str]| index.find(&KeyPath::of(keys)).unwrap();
        assert_eq!(at(&["pools"]), Pos { line: 1, column: 1 });
        assert_eq!(at(&["pools", "demo", "processes"]), Pos { line: 4, column: 5 });
        let routes = KeyPath::of(&["listeners", "api", "routes"]);
        assert_eq!(index.find(&routes.index(0).key("pool")), Some(Pos { line: 9, column: 27 }));
        assert_eq!(index.find(&routes.index(1).key("pool")), Some(Pos { line: 10, column: 9 }));
        // An absent key falls back to its parent.
        assert_eq!(at(&["pools", "demo", "threads"]), Pos { line: 2, column: 3 });
    }

    #[test]
    fn nested_anchors_do_not_multiply_the_index() {
        // Nine anchors, each used eight times by the next: expanded, 8^9 nodes.
        let mut doc = String::from("a0: &a0 {x: 1, y: 2}\n");
        for i in 1..9 {
            let uses: Vec<String> = (0..8).map(|k| format!("k{k}: *a{}", i - 1)).collect();
            doc.push_str(&format!("a{i}: &a{i} {{{}}}\n", uses.join(", ")));
        }
        doc.push_str("pools:\n  x:\n    <<: *a8\n");
        let index = KeyIndex::build(&doc);
        assert!(index.nodes.len() < 2_000, "{} nodes", index.nodes.len());
        // What the merge brings that the anchor writes itself is still placed in the anchor.
        assert_eq!(index.find(&KeyPath::of(&["pools", "x", "k3"])), Some(Pos { line: 9, column: 37 }));
    }

    #[test]
    fn names_the_key_at_a_position() {
        let index = KeyIndex::build(DOC);
        let path = |line, column| index.path_at(Pos { line, column }).unwrap().to_string();
        assert_eq!(path(4, 5), "pools.demo.processes");
        assert_eq!(path(4, 16), "pools.demo.processes");
        assert_eq!(path(9, 15), "listeners.api.routes[0].host");
        assert_eq!(path(10, 15), "listeners.api.routes[1].pool");
        let container = index.container_at(Pos { line: 3, column: 5 }).unwrap();
        assert_eq!(container.to_string(), "pools.demo");
    }
}
