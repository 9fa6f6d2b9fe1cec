//! Maps between key paths and places in the file, so every error can say
//! `PATH:LINE:COL: key: message`.
//!
//! Serde errors come with a byte span but no key; validation errors come with
//! a key but no span. A span-keeping `toml_edit::Document` answers both ways.

use std::fmt;
use std::ops::Range;

use toml_edit::{Document, Item, Value};

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    /// A table key, as written (`acme`, `pools`).
    Key(String),
    /// A 0-based position in an array.
    Index(usize),
}

/// A dotted key such as `tenants.acme.pools.blue[1]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
///
/// Built by validation as it walks the raw file (`root().key("tenants")
/// .key("acme")...`), and by the locator from a byte offset; shown as the
/// `key` of every `PATH:LINE:COL: key: message` line.
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    /// The empty path: the whole file.
    pub fn root() -> Self {
        KeyPath(Vec::new())
    }

    /// This path extended by the table key `key` (a copy; `self` is kept).
    pub fn key(&self, key: &str) -> KeyPath {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(key.to_owned()));
        KeyPath(segs)
    }

    /// This path extended by the 0-based array position `index`.
    pub fn index(&self, index: usize) -> KeyPath {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(index));
        KeyPath(segs)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => f.write_str(k)?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// The text of a control file with its parsed spans.
pub struct Locator<'a> {
    text: &'a str,
    doc: Option<Document<&'a str>>,
}

impl<'a> Locator<'a> {
    /// Parses `text` for its spans. A file that does not parse still gets a
    /// locator: [`Locator::line_col`] works, paths resolve to `(1, 1)`.
    pub fn new(text: &'a str) -> Self {
        Locator {
            text,
            doc: Document::parse(text).ok(),
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = self.text.get(..offset).unwrap_or(self.text);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before[line_start..].chars().count() + 1;
        (line, col)
    }

    /// Where `path` is written, or the deepest part of it that exists (the
    /// table a missing key belongs in). `(1, 1)` for an empty file.
    pub fn position(&self, path: &KeyPath) -> (usize, usize) {
        let offset = self.span_of(path).map_or(0, |span| span.start);
        self.line_col(offset)
    }

    fn span_of(&self, path: &KeyPath) -> Option<Range<usize>> {
        let doc = self.doc.as_ref()?;
        let mut item = doc.as_item();
        let mut best = None;
        for seg in &path.0 {
            let next = match seg {
                Seg::Key(k) => {
                    // Prefer the key's own span: it is where a reader looks.
                    if let Some(span) = key_span(item, k) {
                        best = Some(span);
                    }
                    item.get(k.as_str())
                }
                Seg::Index(i) => item.get(*i),
            };
            let Some(next) = next else { break };
            if let (Seg::Index(_), Some(span)) = (seg, next.span()) {
                best = Some(span);
            }
            item = next;
        }
        best.or_else(|| item.span())
    }

    /// The key whose value (or key) covers `offset`, the deepest one.
    pub fn path_at(&self, offset: usize) -> Option<KeyPath> {
        let doc = self.doc.as_ref()?;
        let mut path = KeyPath::root();
        descend(doc.as_item(), offset, &mut path);
        (!path.0.is_empty()).then_some(path)
    }
}

fn key_span(item: &Item, key: &str) -> Option<Range<usize>> {
    match item {
        Item::Table(t) => t.key(key).and_then(|k| k.span()),
        Item::Value(Value::InlineTable(t)) => t.key(key).and_then(|k| k.span()),
        _ => None,
    }
}

fn covers(span: Option<Range<usize>>, offset: usize) -> bool {
    span.is_some_and(|s| s.start <= offset && offset < s.end.max(s.start + 1))
}

/// Walks down to the deepest entry containing `offset`, pushing its path.
fn descend(item: &Item, offset: usize, path: &mut KeyPath) {
    let children: Vec<(Seg, &Item, Option<Range<usize>>)> = match item {
        Item::Table(t) => t
            .iter()
            .map(|(k, v)| (Seg::Key(k.to_owned()), v, key_span(item, k)))
            .collect(),
        Item::Value(Value::InlineTable(t)) => t
            .iter()
            .filter_map(|(k, _)| {
                item.get(k)
                    .map(|v| (Seg::Key(k.to_owned()), v, key_span(item, k)))
            })
            .collect(),
        Item::Value(Value::Array(a)) => (0..a.len())
            .filter_map(|i| item.get(i).map(|v| (Seg::Index(i), v, None)))
            .collect(),
        Item::ArrayOfTables(a) => (0..a.len())
            .filter_map(|i| item.get(i).map(|v| (Seg::Index(i), v, None)))
            .collect(),
        _ => Vec::new(),
    };
    for (seg, child, key_span) in children {
        if covers(key_span, offset) {
            path.0.push(seg);
            return;
        }
        if covers(child.span(), offset) || contains_within(child, offset) {
            path.0.push(seg);
            descend(child, offset, path);
            return;
        }
    }
}

/// Table spans cover only their headers; look at their entries instead.
fn contains_within(item: &Item, offset: usize) -> bool {
    match item {
        Item::Table(t) => t.iter().any(|(k, v)| {
            covers(t.key(k).and_then(|k| k.span()), offset)
                || covers(v.span(), offset)
                || contains_within(v, offset)
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[listen]\nhttp = \"x\"\n\n[tenants.acme]\nweights = { blue = 1, green = 2 }\npools.blue = [\"a:1\", \"b:2\"]\n";

    #[test]
    fn finds_nested_keys() {
        let loc = Locator::new(TEXT);
        let p = KeyPath::root()
            .key("tenants")
            .key("acme")
            .key("weights")
            .key("green");
        assert_eq!(loc.position(&p), (5, 23));
        let p = KeyPath::root()
            .key("tenants")
            .key("acme")
            .key("pools")
            .key("blue")
            .index(1);
        assert_eq!(loc.position(&p), (6, 22));
        let p = KeyPath::root().key("listen").key("http");
        assert_eq!(loc.position(&p), (2, 1));
    }

    #[test]
    fn missing_key_points_at_its_table() {
        let loc = Locator::new(TEXT);
        let p = KeyPath::root().key("tenants").key("acme").key("stable");
        assert_eq!(loc.position(&p).0, 4);
    }

    #[test]
    fn path_at_offset() {
        let loc = Locator::new(TEXT);
        let offset = TEXT.find("green").unwrap();
        let path = loc.path_at(offset).unwrap();
        assert_eq!(path.to_string(), "tenants.acme.weights.green");
        let offset = TEXT.find("\"b:2\"").unwrap();
        assert_eq!(
            loc.path_at(offset).unwrap().to_string(),
            "tenants.acme.pools.blue[1]"
        );
    }
}
