//! Reading a Prometheus text exposition: one series' value, found by name
//! and labels in any order; a missing series names the similar ones.

/// The value of `series` (`name` or `name{label="value",...}`, labels in
/// any order) in a Prometheus text exposition. A missing series fails the
/// test, naming the series and the similar ones present, so that a
/// misspelled name can never pass an "equals 0" assertion.
pub fn metric_value(text: &str, series: &str) -> f64 {
    metric_or_absent(text, series).unwrap_or_else(|| {
        panic!(
            "metric series `{series}` is not on /metrics; similar series present:\n  {}",
            similar_series(text, series).join("\n  ")
        )
    })
}

/// The value of `series` in a Prometheus text exposition, `None` if no
/// line carries it. Panics on a malformed `series` or value.
pub fn metric_or_absent(text: &str, series: &str) -> Option<f64> {
    let wanted = parse_series(series)
        .unwrap_or_else(|| panic!("`{series}` is not a series (name{{label=\"value\",...}})"));
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (s, value) = l.rsplit_once(' ')?;
            (parse_series(s)? == wanted).then_some(value)
        })
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("series `{series}` has a malformed value `{v}`"))
        })
}

/// A series name and its labels, sorted so that label order does not count.
type Series = (String, Vec<(String, String)>);

/// Parses `name` or `name{k="v",...}` (Prometheus text format escapes:
/// `\\`, `\"`, `\n`).
fn parse_series(s: &str) -> Option<Series> {
    let s = s.trim();
    let Some((name, rest)) = s.split_once('{') else {
        return (!s.is_empty()).then(|| (s.to_owned(), Vec::new()));
    };
    let mut labels = Vec::new();
    let mut chars = rest.strip_suffix('}')?.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        if chars.next()? != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '"' => break,
                '\\' => value.push(match chars.next()? {
                    'n' => '\n',
                    c => c,
                }),
                c => value.push(c),
            }
        }
        labels.push((key.trim().to_owned(), value));
        match chars.next() {
            None => break,
            Some(',') => {}
            Some(_) => return None,
        }
    }
    labels.sort();
    Some((name.to_owned(), labels))
}

/// The series in `text` that look like `series`: those of the same metric
/// name, or else those whose names are close to it; every name present if
/// nothing is close.
fn similar_series(text: &str, series: &str) -> Vec<String> {
    let name = series.split_once('{').map_or(series, |(n, _)| n).trim();
    let present: Vec<(&str, &str)> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(s, _)| s))
        .map(|s| (s.split_once('{').map_or(s, |(n, _)| n), s))
        .collect();
    let same: Vec<String> = present
        .iter()
        .filter(|(n, _)| *n == name)
        .map(|(_, s)| (*s).to_owned())
        .collect();
    if !same.is_empty() {
        return same;
    }
    let mut names: Vec<&str> = present.iter().map(|(n, _)| *n).collect();
    names.sort_unstable();
    names.dedup();
    let close: Vec<String> = names
        .iter()
        .filter(|n| edit_distance(n, name) <= 3 || n.contains(name) || name.contains(**n))
        .flat_map(|n| present.iter().filter(move |(p, _)| p == n))
        .map(|(_, s)| (*s).to_owned())
        .collect();
    if close.is_empty() {
        names.into_iter().map(str::to_owned).collect()
    } else {
        close
    }
}

/// Levenshtein distance, for naming the series a misspelling meant.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}
