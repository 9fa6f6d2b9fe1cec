//! A reader for the YAML subset the container kit is written in, so the
//! tests can check the manifests' structure (a key's place, not just its
//! text) without a YAML dependency. The full grammar is not needed: the
//! schemas themselves are checked by kubernetes-validate in .ci/run.

/// One document's leaves: (`a.b[0].c`, unquoted value), in order.
pub type Doc = Vec<(String, String)>;

/// Removes a `#` comment that is not inside quotes.
pub fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    let mut previous = ' ';
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), _) if c == q => quote = None,
            (None, '#') if previous == ' ' => return &line[..i],
            _ => {}
        }
        previous = c;
    }
    line
}

pub fn unquote(value: &str) -> String {
    let v = value.trim();
    for q in ['"', '\''] {
        if let Some(inner) = v.strip_prefix(q).and_then(|v| v.strip_suffix(q)) {
            return inner.to_owned();
        }
    }
    v.to_owned()
}

/// The items of a one-line flow collection (`[a, "b"]` or `{k: v}`), split at
/// the commas that are not nested.
pub fn flow_items(value: &str) -> Vec<String> {
    let inner = &value.trim()[1..value.trim().len() - 1];
    let (mut items, mut depth, mut start, mut quote) = (Vec::new(), 0, 0, None);
    for (i, c) in inner.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), _) if c == q => quote = None,
            (None, '[' | '{') => depth += 1,
            (None, ']' | '}') => depth -= 1,
            (None, ',') if depth == 0 => {
                items.push(inner[start..i].trim().to_owned());
                start = i + 1;
            }
            _ => {}
        }
    }
    if !inner[start..].trim().is_empty() {
        items.push(inner[start..].trim().to_owned());
    }
    items
}

/// A flow sequence (`["ALL"]`) as its unquoted items.
pub fn flow_list(value: &str) -> Vec<String> {
    assert!(value.starts_with('['), "`{value}` is not a flow sequence");
    flow_items(value).iter().map(|i| unquote(i)).collect()
}

/// The scalar leaves of one YAML document as (`a.b[0].c`, unquoted value),
/// in order. Reads the subset the kit is written in: block mappings and
/// sequences (items indented or not), one-line flow mappings (expanded),
/// flow sequences (kept as one leaf, see `flow_list`) and `|` / `>` block
/// scalars (one leaf, their text left out).
pub fn leaves(doc: &str) -> Doc {
    let mut out = Vec::new();
    let mut stack: Vec<(usize, String)> = Vec::new(); // (indent, path)
    let mut counts = std::collections::HashMap::<String, usize>::new();
    let mut block_scalar: Option<usize> = None;
    for raw in doc.lines() {
        let line = strip_comment(raw).trim_end();
        let content = line.trim_start();
        let mut indent = line.len() - content.len();
        match block_scalar {
            Some(level) if indent > level || content.is_empty() => continue,
            _ => block_scalar = None,
        }
        if content.is_empty() || content == "---" {
            continue;
        }
        let mut rest = content;
        while let Some(item) = rest
            .strip_prefix("- ")
            .or(rest.strip_prefix('-').filter(|r| r.is_empty()))
        {
            while stack
                .last()
                .is_some_and(|(i, p)| *i > indent || (*i == indent && p.ends_with(']')))
            {
                stack.pop();
            }
            let parent = stack.last().map(|(_, p)| p.clone()).unwrap_or_default();
            let n = counts.entry(parent.clone()).or_insert(0);
            let path = format!("{parent}[{n}]");
            *n += 1;
            stack.push((indent, path));
            indent += 2;
            rest = item.trim_start();
        }
        if rest.is_empty() {
            continue;
        }
        while stack.last().is_some_and(|(i, _)| *i >= indent) {
            stack.pop();
        }
        let parent = stack.last().map(|(_, p)| p.clone()).unwrap_or_default();
        let join = |key: &str| match parent.is_empty() {
            true => key.to_owned(),
            false => format!("{parent}.{key}"),
        };
        let pair = (!rest.starts_with(['"', '\'', '[', '{']))
            .then(|| {
                rest.split_once(": ")
                    .or(rest.strip_suffix(':').map(|k| (k, "")))
            })
            .flatten();
        let (path, value) = match pair {
            Some((key, value)) => (join(&unquote(key)), value.trim()),
            // A scalar or flow item of a sequence.
            None => (
                stack.last().map(|(_, p)| p.clone()).unwrap_or_default(),
                rest,
            ),
        };
        if value.is_empty() {
            stack.push((indent, path));
        } else if value.starts_with(['|', '>']) {
            block_scalar = Some(indent);
            out.push((path, value.to_owned()));
        } else if value.starts_with('{') && value != "{}" {
            for item in flow_items(value) {
                let (k, v) = item.split_once(':').expect("a flow mapping entry");
                out.push((format!("{path}.{}", unquote(k)), unquote(v)));
            }
        } else if value.starts_with('[') {
            out.push((path, value.to_owned()));
        } else {
            out.push((path, unquote(value)));
        }
    }
    out
}

/// The documents of a YAML file, each as its leaves.
pub fn yaml_docs(rel: &str) -> Vec<Doc> {
    let text = std::fs::read_to_string(super::root(rel)).unwrap();
    text.split("\n---\n").map(leaves).collect()
}

pub fn get<'a>(doc: &'a [(String, String)], path: &str) -> Option<&'a str> {
    doc.iter().find(|(p, _)| p == path).map(|(_, v)| v.as_str())
}

/// The values of the leaves whose path is `prefix[N]` (a block sequence of
/// scalars).
pub fn items<'a>(doc: &'a [(String, String)], prefix: &str) -> Vec<&'a str> {
    doc.iter()
        .filter(|(p, _)| {
            p.strip_prefix(prefix)
                .and_then(|r| r.strip_prefix('['))
                .is_some_and(|r| r.ends_with(']') && !r.contains('.'))
        })
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The keys directly under `prefix[N]` for each N (e.g. each volume's keys).
pub fn entries_keys(doc: &[(String, String)], prefix: &str) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = Vec::new();
    for (path, _) in doc {
        let Some(rest) = path.strip_prefix(&format!("{prefix}[")) else {
            continue;
        };
        let (index, key) = rest.split_once("].").unwrap();
        let index: usize = index.parse().unwrap();
        out.resize(out.len().max(index + 1), Vec::new());
        let key = key.split(['.', '[']).next().unwrap().to_owned();
        if !out[index].contains(&key) {
            out[index].push(key);
        }
    }
    out
}
#[test]
fn the_yaml_reader_reads_the_kit_subset() {
    let doc = "a:\n  b: 1   # note\n  none: {}\n  flows:\n    - {k: v}\n  list:\n    - name: x\n      port: {name: http, n: 80}\n    - name: \"y # z\"\n  plain:\n  - one\n  - two\nflow: [\"ALL\", b]\nblock: |\n  k: v\n  - not an item\nlast: 'q'\n";
    let got = leaves(doc);
    let want = [
        ("a.b", "1"),
        ("a.none", "{}"),
        ("a.flows[0].k", "v"),
        ("a.list[0].name", "x"),
        ("a.list[0].port.name", "http"),
        ("a.list[0].port.n", "80"),
        ("a.list[1].name", "y # z"),
        ("a.plain[0]", "one"),
        ("a.plain[1]", "two"),
        ("flow", "[\"ALL\", b]"),
        ("block", "|"),
        ("last", "q"),
    ];
    let got: Vec<(&str, &str)> = got.iter().map(|(p, v)| (p.as_str(), v.as_str())).collect();
    assert_eq!(got, want);
    assert_eq!(flow_list("[\"ALL\", b]"), ["ALL", "b"]);
}
