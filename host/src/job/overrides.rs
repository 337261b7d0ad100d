//! `-D key=value` overrides, applied to the parsed document before it is
//! deserialized, so that an overridden value goes through exactly the same
//! checks as one written in the file.
//!
//! Each override is parsed as its own little TOML document, padded so that its
//! spans come after the job file's text (see [`Origin`]): an error in an
//! overridden value then points at the override instead of a line.

use std::fmt;
use std::str::FromStr;

use toml_edit::{Document, InlineTable, Item, Key, Table, Value};

use super::error::{JobError, Origin};
use super::raw::NODE_SECTIONS;

/// One `-D key=value` from the command line, as Flink's `-D`.
///
/// `key` is a dotted path: `job.parallelism`, `checkpointing.interval`, or a node
/// by kind and id, `operator.count.parallelism`. `value` is read as a TOML value
/// when it is one (`4`, `true`, `"x"`, `[1, 2]`) and as a string otherwise
/// (`500ms`, `file:///tmp/x`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Override {
    /// The dotted key.
    pub key: String,
    /// The value's text.
    pub value: String,
}

/// A `-D` argument without `=`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("expected key=value after -D, e.g. -D job.parallelism=4, but got \"{0}\"")]
pub struct OverrideSyntaxError(String);

impl FromStr for Override {
    type Err = OverrideSyntaxError;

    /// Splits `key=value` at the first `=`; the value may contain more `=`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => Ok(Override {
                key: key.trim().to_owned(),
                value: value.to_owned(),
            }),
            _ => Err(OverrideSyntaxError(text.to_owned())),
        }
    }
}

impl fmt::Display for Override {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.key, self.value)
    }
}

/// Applies `overrides` in order to the document's root.
pub(crate) fn apply(
    root: &mut Item,
    overrides: &[Override],
    origin: &mut Origin<'_>,
) -> Result<(), JobError> {
    for over in overrides {
        apply_one(root, over, origin)?;
    }
    Ok(())
}

fn apply_one(root: &mut Item, over: &Override, origin: &mut Origin<'_>) -> Result<(), JobError> {
    let text = over.to_string();
    let fail = |origin: &Origin<'_>, message: String| JobError::Override {
        at: origin.at_override(&text),
        message,
    };
    let segments: Vec<&str> = over.key.split('.').collect();
    if !segments.iter().all(|s| is_bare_key(s)) {
        return Err(fail(
            origin,
            format!(
                "`{}` is not a dotted key. Write names of letters, digits, `-` and `_` joined by dots, e.g. checkpointing.interval or operator.count.parallelism.",
                over.key
            ),
        ));
    }
    let (keys, leaf) = parse_snippet(over, origin).map_err(|m| fail(origin, m))?;

    let (target, keys, base) = match segments.first() {
        Some(section) if NODE_SECTIONS.contains(section) => {
            if segments.len() < 3 {
                return Err(fail(
                    origin,
                    format!(
                        "to override a key of a node, name its kind, its id and the key, e.g. -D {section}.<id>.parallelism=4."
                    ),
                ));
            }
            let node = find_node(root, section, segments[1]).map_err(|m| fail(origin, m))?;
            (node, &keys[2..], 2)
        }
        _ => (root, &keys[..], 0),
    };
    set_path(target, keys, leaf).map_err(|depth| {
        let depth = base + depth;
        let prefix = segments[..depth].join(".");
        fail(
            origin,
            format!(
                "`{prefix}` is a value, not a table, so it has no key `{}`. Override `{prefix}` itself instead.",
                segments[depth]
            ),
        )
    })
}

fn is_bare_key(segment: &str) -> bool {
    !segment.is_empty()
        && segment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Parses the override as `key = value` placed after everything `origin` knows,
/// and returns the keys along the path (with their spans) and the value.
fn parse_snippet(over: &Override, origin: &mut Origin<'_>) -> Result<(Vec<Key>, Item), String> {
    let value = over.value.trim();
    let value_text = if value.parse::<Value>().is_ok() {
        value.to_owned()
    } else {
        Value::from(over.value.as_str()).to_string()
    };
    let start = origin.next_offset();
    let mut snippet = " ".repeat(start);
    snippet.push_str(&over.key);
    snippet.push_str(" = ");
    snippet.push_str(&value_text);
    origin.add_override(start..snippet.len(), over.to_string());

    let doc = Document::parse(snippet.as_str())
        .map_err(|e| format!("the value cannot be read: {}.", e.message().trim()))?;
    let mut keys = Vec::new();
    let mut table: &Table = doc.as_table();
    let mut segments = over.key.split('.').peekable();
    while let Some(segment) = segments.next() {
        let Some((key, item)) = table.get_key_value(segment) else {
            break;
        };
        keys.push(key.clone());
        if segments.peek().is_none() {
            return Ok((keys, item.clone()));
        }
        match item.as_table() {
            Some(inner) => table = inner,
            None => break,
        }
    }
    Err(format!("`{}` cannot be read as a dotted key.", over.key))
}

/// The node of kind `section` whose id is `id`.
fn find_node<'a>(root: &'a mut Item, section: &str, id: &str) -> Result<&'a mut Item, String> {
    let nodes = root.get(section);
    let count = nodes.map_or(0, |n| match n {
        Item::ArrayOfTables(a) => a.len(),
        Item::Value(Value::Array(a)) => a.len(),
        _ => 0,
    });
    let ids: Vec<&str> = (0..count)
        .filter_map(|i| nodes?.get(i)?.get("id")?.as_str())
        .collect();
    let Some(index) = ids.iter().position(|&candidate| candidate == id) else {
        let known = if ids.is_empty() {
            format!("The job file has no [[{section}]].")
        } else {
            format!("{} ids: {}.", capitalized(section), ids.join(", "))
        };
        return Err(format!("no [[{section}]] has id \"{id}\". {known}"));
    };
    root.get_mut(section)
        .and_then(|nodes| nodes.get_mut(index))
        .ok_or_else(|| format!("[[{section}]] \"{id}\" cannot be changed."))
}

fn capitalized(word: &str) -> String {
    let mut chars = word.chars();
    chars
        .next()
        .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

/// Sets the last of `keys` to `leaf` under the tables named by the others,
/// creating missing tables. On failure returns how many keys lead to the value
/// that is in the way.
fn set_path(item: &mut Item, keys: &[Key], leaf: Item) -> Result<(), usize> {
    set_path_at(item, keys, leaf, 0)
}

fn set_path_at(item: &mut Item, keys: &[Key], leaf: Item, depth: usize) -> Result<(), usize> {
    let Some((key, rest)) = keys.split_first() else {
        *item = leaf;
        return Ok(());
    };
    let inline = item.is_inline_table();
    let Some(table) = item.as_table_like_mut() else {
        return Err(depth);
    };
    if rest.is_empty() {
        insert(table, key, leaf);
        return Ok(());
    }
    if table.get(key.get()).is_none() {
        let empty = if inline {
            Item::Value(Value::InlineTable(InlineTable::new()))
        } else {
            Item::Table(Table::new())
        };
        insert(table, key, empty);
    }
    match table.get_mut(key.get()) {
        Some(child) => set_path_at(child, rest, leaf, depth + 1),
        None => Err(depth),
    }
}

fn insert(table: &mut dyn toml_edit::TableLike, key: &Key, item: Item) {
    match table.entry_format(key) {
        toml_edit::Entry::Occupied(mut entry) => {
            entry.insert(item);
        }
        toml_edit::Entry::Vacant(entry) => {
            entry.insert(item);
        }
    }
}
