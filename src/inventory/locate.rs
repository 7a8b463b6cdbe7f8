//! Find the line of a key path in block-style YAML text.
//!
//! yaml_serde gives positions only for syntax errors, not for values. Semantic
//! errors ("port out of range") still have to name a line, so this module finds
//! a key path such as `all.children.db.hosts.db1.ansible_port` by indentation.
//! It understands block mappings, block sequences (`- item`, also "compact"
//! sequences at the same indent as their key), quoted keys and comments. A
//! value written in flow style (`{a: 1}`, `[x]`) or anything else it cannot
//! follow makes it stop at the nearest ancestor it did find.
//!
//! Pure functions over text; no I/O.

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

impl Seg {
    pub fn key(k: &str) -> Seg {
        Seg::Key(k.to_string())
    }
}

/// A position in the text (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    pub line: usize,
    pub column: usize,
    /// True when the whole path was found, false when this is an ancestor.
    pub exact: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// `- ` sequence item marker.
    Dash,
    /// `key:` (value may follow on the same line).
    Key(String),
    /// A scalar or anything else.
    Other,
}

/// A logical line: a physical line, or the part of it after a `- ` marker.
#[derive(Debug, Clone)]
struct VLine {
    line: usize,
    indent: usize,
    kind: Kind,
}

/// Find `path` in `text`: the position of its last key (or sequence item), else of
/// the deepest ancestor found. None when not even the first segment is found.
pub fn locate(text: &str, path: &[Seg]) -> Option<Loc> {
    let lines = scan(text);
    let mut found: Option<Loc> = None;
    let (mut start, mut end) = (0, lines.len());
    for (depth, seg) in path.iter().enumerate() {
        match find_child(&lines, start, end, seg) {
            Some(i) => {
                found = Some(Loc {
                    line: lines[i].line,
                    column: lines[i].indent + 1,
                    exact: depth + 1 == path.len(),
                });
                start = i + 1;
                end = scope_end(&lines, i, end);
            }
            None => {
                // A flow mapping on the ancestor's line (`db1: {ansible_port: 0}`):
                // point at the key inside it when it is the last segment.
                if let (Some(loc), Seg::Key(k), true) = (found, seg, depth + 1 == path.len())
                    && let Some(col) = text
                        .lines()
                        .nth(loc.line - 1)
                        .and_then(|l| flow_key_column(l, k))
                {
                    found = Some(Loc {
                        line: loc.line,
                        column: col,
                        exact: true,
                    });
                }
                break;
            }
        }
    }
    found
}

/// The column (1-based) of `key:` inside a flow mapping on `line`.
fn flow_key_column(line: &str, key: &str) -> Option<usize> {
    let line = strip_comment(line);
    let open = line.find('{')?;
    let needle = format!("{key}:");
    let mut from = open + 1;
    while let Some(i) = line[from..].find(&needle) {
        let at = from + i;
        let before = line[..at].trim_end_matches(' ');
        let after = &line[at + needle.len()..];
        if (before.ends_with('{') || before.ends_with(','))
            && (after.is_empty()
                || after.starts_with(' ')
                || after.starts_with('}')
                || after.starts_with(','))
        {
            return Some(line[..at].chars().count() + 1);
        }
        from = at + needle.len();
    }
    None
}

/// Every line where `key` occurs as a direct child of the mapping at `parent`
/// (used to point at the second occurrence of a duplicate key).
pub fn locate_key_occurrences(text: &str, parent: &[Seg], key: &str) -> Vec<Loc> {
    let lines = scan(text);
    let (mut start, mut end) = (0, lines.len());
    for seg in parent {
        match find_child(&lines, start, end, seg) {
            Some(i) => {
                start = i + 1;
                end = scope_end(&lines, i, end);
            }
            None => return Vec::new(),
        }
    }
    let Some(indent) = lines[start..end].first().map(|l| l.indent) else {
        return Vec::new();
    };
    lines[start..end]
        .iter()
        .filter(|l| l.indent == indent && l.kind == Kind::Key(key.to_string()))
        .map(|l| Loc {
            line: l.line,
            column: l.indent + 1,
            exact: true,
        })
        .collect()
}

/// Parse a dotted path as printed by yaml_serde errors (`all.children.db`) into segments.
/// Indices appear as `[2]` (`apt_pins[2].package`).
pub fn parse_dotted(path: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    if path.is_empty() || path == "." {
        return out;
    }
    for part in path.split('.') {
        let mut rest = part;
        if let Some(b) = rest.find('[') {
            if b > 0 {
                out.push(Seg::key(&rest[..b]));
            }
            rest = &rest[b..];
            while let Some(stripped) = rest.strip_prefix('[') {
                let Some(close) = stripped.find(']') else {
                    break;
                };
                if let Ok(i) = stripped[..close].parse() {
                    out.push(Seg::Index(i));
                }
                rest = &stripped[close + 1..];
            }
        } else if !rest.is_empty() {
            out.push(Seg::key(rest));
        }
    }
    out
}

fn find_child(lines: &[VLine], start: usize, end: usize, seg: &Seg) -> Option<usize> {
    let indent = lines[start..end].first()?.indent;
    let mut n = 0;
    for (i, l) in lines.iter().enumerate().take(end).skip(start) {
        if l.indent != indent {
            continue;
        }
        match (seg, &l.kind) {
            (Seg::Key(k), Kind::Key(name)) if k == name => return Some(i),
            (Seg::Index(want), Kind::Dash) => {
                if n == *want {
                    return Some(i);
                }
                n += 1;
            }
            _ => {}
        }
    }
    None
}

/// The end (exclusive) of the block owned by `lines[i]`.
fn scope_end(lines: &[VLine], i: usize, end: usize) -> usize {
    let own = &lines[i];
    // A key's value may be a sequence at the key's own indent ("compact" form).
    let compact = matches!(own.kind, Kind::Key(_))
        && i + 1 < end
        && lines[i + 1].indent == own.indent
        && lines[i + 1].kind == Kind::Dash;
    for (j, l) in lines.iter().enumerate().take(end).skip(i + 1) {
        if l.indent < own.indent {
            return j;
        }
        if l.indent == own.indent && !(compact && l.kind == Kind::Dash) {
            return j;
        }
    }
    end
}

/// Turn text into logical lines, skipping blanks, comments, directives and
/// document markers, and the bodies of block scalars (`|`, `>`).
fn scan(text: &str) -> Vec<VLine> {
    let mut out = Vec::new();
    let mut block_scalar: Option<usize> = None; // indent of the owner line
    for (n, raw) in text.lines().enumerate() {
        let line = n + 1;
        let content = strip_comment(raw);
        let trimmed = content.trim_start_matches(' ');
        if trimmed.trim().is_empty() {
            continue;
        }
        let indent = content.len() - trimmed.len();
        if let Some(owner) = block_scalar {
            if indent > owner {
                continue;
            }
            block_scalar = None;
        }
        if indent == 0
            && (trimmed.starts_with("---")
                || trimmed.starts_with("...")
                || trimmed.starts_with('%'))
        {
            continue;
        }
        let first = out.len();
        push_logical(&mut out, line, indent, trimmed.trim_end());
        let last = &out[out.len() - 1];
        let rest_is_block = match &last.kind {
            Kind::Key(_) => {
                let after = value_after_key(trimmed.trim_end());
                after.starts_with('|') || after.starts_with('>')
            }
            _ => false,
        };
        if rest_is_block {
            block_scalar = Some(out[first].indent);
        }
    }
    out
}

fn push_logical(out: &mut Vec<VLine>, line: usize, indent: usize, s: &str) {
    if s == "-" || s.starts_with("- ") {
        out.push(VLine {
            line,
            indent,
            kind: Kind::Dash,
        });
        let rest = &s[1..];
        let inner = rest.trim_start_matches(' ');
        if !inner.is_empty() {
            let inner_indent = indent + 1 + (rest.len() - inner.len());
            push_logical(out, line, inner_indent, inner);
        }
        return;
    }
    let kind = match key_of(s) {
        Some(k) => Kind::Key(k),
        None => Kind::Other,
    };
    out.push(VLine { line, indent, kind });
}

/// The key of a `key: value` line, unquoted.
fn key_of(s: &str) -> Option<String> {
    let (key, rest) = split_key(s)?;
    let _ = rest;
    Some(key)
}

fn value_after_key(s: &str) -> &str {
    split_key(s).map(|(_, r)| r.trim_start()).unwrap_or("")
}

fn split_key(s: &str) -> Option<(String, &str)> {
    let first = s.chars().next()?;
    if first == '"' || first == '\'' {
        let body = &s[1..];
        let mut key = String::new();
        let mut chars = body.char_indices();
        let mut close = None;
        while let Some((i, c)) = chars.next() {
            if c == first {
                if first == '\'' && body[i + 1..].starts_with('\'') {
                    key.push('\'');
                    chars.next();
                    continue;
                }
                close = Some(i);
                break;
            }
            if c == '\\' && first == '"' {
                if let Some((_, e)) = chars.next() {
                    key.push(e);
                }
                continue;
            }
            key.push(c);
        }
        let after = body[close? + 1..].trim_start_matches(' ');
        let rest = after.strip_prefix(':')?;
        if rest.is_empty() || rest.starts_with(' ') {
            return Some((key, rest));
        }
        return None;
    }
    if matches!(first, '{' | '[' | '?' | '&' | '*' | '!' | '|' | '>') {
        return None;
    }
    // A plain key ends at the first ": " or a trailing ':'.
    let bytes = s.as_bytes();
    for i in 0..bytes.len() {
        if bytes[i] == b':' && (i + 1 == bytes.len() || bytes[i + 1] == b' ') {
            return Some((s[..i].trim_end().to_string(), &s[i + 1..]));
        }
    }
    None
}

/// Remove a trailing comment: `#` at the start or after whitespace, outside quotes.
fn strip_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut prev_space = true;
    let mut chars = line.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match quote {
            Some('\'') if c == '\'' && chars.peek().is_some_and(|&(_, n)| n == '\'') => {
                chars.next(); // '' is an escaped quote
            }
            Some('"') if c == '\\' => {
                chars.next(); // \" is an escaped quote
            }
            Some(q) => {
                if c == q {
                    quote = None;
                }
            }
            None => {
                if c == '#' && prev_space {
                    return &line[..i];
                }
                // A quote opens a quoted scalar only where a scalar can start.
                if (c == '"' || c == '\'') && prev_space_or_indicator(&line[..i]) {
                    quote = Some(c);
                }
            }
        }
        prev_space = c == ' ' || c == '\t';
    }
    line
}

fn prev_space_or_indicator(before: &str) -> bool {
    let t = before.trim_end_matches(' ');
    t.is_empty()
        || t.ends_with(':')
        || t.ends_with('-')
        || t.ends_with('[')
        || t.ends_with('{')
        || t.ends_with(',')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Vec<Seg> {
        parse_dotted(s)
    }

    const DOC: &str = "\
# inventory
---
all:
  vars:
    cluster_name: demo   # a comment
    apt_pins:
    - package: postgresql-17
      version: 17.12*
    - package: patroni
      priority: 900
  hosts:
  children:
    postgres_cluster:
      children:
        db:
          hosts:
            db1:
              ansible_host: 10.0.0.11
            'db2':
              ansible_port: 2222
            \"db3\": {ansible_port: 22}
        router:
          vars:
            note: |
              db1:
                ansible_port: 1
          hosts:
            router1:
              ansible_port: 22
";

    #[test]
    fn finds_nested_keys() {
        let l = locate(
            DOC,
            &p("all.children.postgres_cluster.children.db.hosts.db1.ansible_host"),
        )
        .unwrap();
        assert_eq!((l.line, l.column, l.exact), (18, 15, true));
        let l = locate(DOC, &p("all.vars.cluster_name")).unwrap();
        assert_eq!((l.line, l.column, l.exact), (5, 5, true));
        let l = locate(
            DOC,
            &p("all.children.postgres_cluster.children.router.hosts.router1.ansible_port"),
        )
        .unwrap();
        assert_eq!(l.line, 29);
    }

    #[test]
    fn quoted_keys() {
        let l = locate(
            DOC,
            &p("all.children.postgres_cluster.children.db.hosts.db2.ansible_port"),
        )
        .unwrap();
        assert_eq!((l.line, l.exact), (20, true));
        // Flow mapping: the key inside it, on the host's line.
        let l = locate(
            DOC,
            &p("all.children.postgres_cluster.children.db.hosts.db3.ansible_port"),
        )
        .unwrap();
        assert_eq!((l.line, l.column, l.exact), (21, 21, true));
        // A key the flow mapping does not hold: the host's own line.
        let l = locate(
            DOC,
            &p("all.children.postgres_cluster.children.db.hosts.db3.ansible_user"),
        )
        .unwrap();
        assert_eq!((l.line, l.column, l.exact), (21, 13, false));
        assert_eq!(flow_key_column("  h: {a: 1, b: 2}", "b"), Some(13));
        assert_eq!(flow_key_column("  h: {ab: 1}", "b"), None);
    }

    #[test]
    fn compact_sequences_and_indices() {
        let l = locate(DOC, &p("all.vars.apt_pins[1].priority")).unwrap();
        assert_eq!((l.line, l.column, l.exact), (10, 7, true));
        let l = locate(DOC, &p("all.vars.apt_pins[0].version")).unwrap();
        assert_eq!(l.line, 8);
        let l = locate(DOC, &p("all.vars.apt_pins[1]")).unwrap();
        assert_eq!((l.line, l.column), (9, 5));
        // The sequence does not swallow the next key.
        let l = locate(DOC, &p("all.hosts")).unwrap();
        assert_eq!(l.line, 11);
    }

    #[test]
    fn falls_back_to_nearest_ancestor() {
        let l = locate(
            DOC,
            &p("all.children.postgres_cluster.children.db.hosts.db9.ansible_port"),
        )
        .unwrap();
        assert_eq!((l.line, l.exact), (16, false));
        assert!(locate(DOC, &p("nope.x")).is_none());
    }

    #[test]
    fn block_scalars_are_skipped() {
        // `db1:` inside the `note: |` block must not be taken for a key.
        let l = locate(
            DOC,
            &p("all.children.postgres_cluster.children.router.hosts"),
        )
        .unwrap();
        assert_eq!(l.line, 27);
        let l = locate(
            DOC,
            &p("all.children.postgres_cluster.children.router.vars.db1"),
        )
        .unwrap();
        assert!(!l.exact);
    }

    #[test]
    fn sequence_indented_under_key() {
        let doc = "a:\n  list:\n    - x: 1\n    - x: 2\n      y: 3\n  after: 1\n";
        assert_eq!(locate(doc, &p("a.list[1].y")).unwrap().line, 5);
        assert_eq!(locate(doc, &p("a.after")).unwrap().line, 6);
        let nested = "a:\n- - k: 1\n  - k: 2\n";
        assert_eq!(locate(nested, &p("a[0][1].k")).unwrap().line, 3);
    }

    #[test]
    fn comments_and_quotes() {
        let doc = "a:\n  # b: 1\n  c: \"x # not a comment\"  # comment\n  'd#e': 1\n  b: 2\n";
        assert_eq!(locate(doc, &p("a.b")).unwrap().line, 5);
        assert_eq!(locate(doc, &p("a.d#e")).unwrap().line, 4);
        assert_eq!(strip_comment("k: 'it''s # x' # c"), "k: 'it''s # x' ");
        assert_eq!(strip_comment("url: http://x/#frag"), "url: http://x/#frag");
    }

    #[test]
    fn key_parsing() {
        assert_eq!(key_of("a: 1").as_deref(), Some("a"));
        assert_eq!(key_of("a:").as_deref(), Some("a"));
        assert_eq!(key_of("url: http://x").as_deref(), Some("url"));
        assert_eq!(key_of("http://x"), None);
        assert_eq!(key_of("\"a:b\": 1").as_deref(), Some("a:b"));
        assert_eq!(key_of("'it''s': 1").as_deref(), Some("it's"));
        assert_eq!(key_of("{a: 1}"), None);
    }

    #[test]
    fn duplicate_key_occurrences() {
        let doc = "all:\n  vars:\n    a: 1\n    b:\n      a: 9\n    a: 2\n";
        let occ = locate_key_occurrences(doc, &p("all.vars"), "a");
        assert_eq!(occ.iter().map(|l| l.line).collect::<Vec<_>>(), vec![3, 6]);
    }

    #[test]
    fn dotted_paths() {
        assert_eq!(
            parse_dotted("all.vars.apt_pins[2].package"),
            vec![
                Seg::key("all"),
                Seg::key("vars"),
                Seg::key("apt_pins"),
                Seg::Index(2),
                Seg::key("package")
            ]
        );
        assert!(parse_dotted(".").is_empty());
    }
}
