//! The parsed (and overridden) document with its origin: finding the span of a
//! key, deserializing a table with errors that name the key and its line, and
//! the unknown-key check.

use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use serde::de::{DeserializeOwned, IntoDeserializer};
use toml_edit::{DocumentMut, Item, TableLike, Value};

use super::error::{JobError, Location, Origin, UnknownKey};

/// One step of a path into the document.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// The document, with what is needed to place errors and resolve paths.
pub(crate) struct Doc<'a> {
    pub origin: &'a Origin<'a>,
    pub root: &'a Item,
    /// The job file's directory, absolute.
    pub dir: &'a Path,
}

impl Doc<'_> {
    /// The item at `path`, if every step exists.
    pub(crate) fn get(&self, path: &[Seg<'_>]) -> Option<&Item> {
        path.iter().try_fold(self.root, |item, seg| match *seg {
            Seg::Key(key) => item.get(key),
            Seg::Index(index) => item.get(index),
        })
    }

    /// The location of the item at `path`, or of its nearest ancestor that has a
    /// span (a key that is not written points at its table), or the whole file.
    pub(crate) fn at(&self, path: &[Seg<'_>]) -> Location {
        let mut item = self.root;
        let mut span = None;
        for seg in path {
            let next = match *seg {
                Seg::Key(key) => item.get(key),
                Seg::Index(index) => item.get(index),
            };
            let Some(next) = next else { break };
            item = next;
            span = item.span().or(span);
        }
        self.origin.at(span)
    }

    /// Deserializes `item` as `T`; an error names the key it is about and
    /// `context` (e.g. `[job]` or `[[operator]] "count"`).
    pub(crate) fn deserialize<T: DeserializeOwned>(
        &self,
        item: &Item,
        context: &str,
    ) -> Result<T, JobError> {
        let result = match item {
            Item::Table(table) => toml_edit::de::from_document(DocumentMut::from(table.clone())),
            Item::Value(value) => T::deserialize(value.clone().into_deserializer()),
            Item::None | Item::ArrayOfTables(_) => {
                return Err(JobError::Invalid {
                    at: self.origin.at(item.span()),
                    message: format!("{context} must be a table."),
                });
            }
        };
        result.map_err(|error| {
            let span = error.span();
            let detail = error
                .message()
                .trim()
                .trim_end_matches('.')
                .replace('\n', " ");
            let key = span
                .clone()
                .and_then(|span| key_containing(item, &span))
                .map(|key| format!(" for `{key}`"))
                .unwrap_or_default();
            JobError::Invalid {
                at: self.origin.at(span.or_else(|| item.span())),
                message: format!("invalid value{key} in {context}: {detail}."),
            }
        })
    }

    /// Deserializes the value of `key` (already looked up as `item`).
    pub(crate) fn deserialize_value<T: DeserializeOwned>(
        &self,
        item: &Item,
        key: &str,
        context: &str,
    ) -> Result<T, JobError> {
        let Some(value) = item.as_value() else {
            return Err(JobError::Invalid {
                at: self.origin.at(item.span()),
                message: format!("`{key}` in {context} must be a value, not a table."),
            });
        };
        T::deserialize(value.clone().into_deserializer()).map_err(|error| JobError::Invalid {
            at: self.origin.at(error.span().or_else(|| item.span())),
            message: format!(
                "invalid value for `{key}` in {context}: {}.",
                error
                    .message()
                    .trim()
                    .trim_end_matches('.')
                    .replace('\n', " ")
            ),
        })
    }

    /// Rejects keys of `item` that are not in `known`. `table` names the table in
    /// the message; `others` are the key lists of the other kinds (or
    /// strategies) of the same table, so that the message can say where a key
    /// belongs.
    pub(crate) fn check_keys(
        &self,
        item: &Item,
        known: &[&'static str],
        table: &str,
        others: &[(String, &'static [&'static str])],
    ) -> Result<(), JobError> {
        let Some(tl) = item.as_table_like() else {
            return Ok(());
        };
        for (key, value) in tl.iter() {
            if known.contains(&key) {
                continue;
            }
            let span = tl.key(key).and_then(|k| k.span()).or_else(|| value.span());
            let owners: Vec<&str> = others
                .iter()
                .filter(|(_, keys)| keys.contains(&key))
                .map(|(owner, _)| owner.as_str())
                .collect();
            let hint = if !owners.is_empty() {
                Some(format!("`{key}` belongs to {}.", owners.join(" and ")))
            } else {
                closest(key, known).map(|near| format!("Did you mean `{near}`?"))
            };
            return Err(JobError::UnknownKey(Box::new(UnknownKey {
                at: self.origin.at(span),
                key: key.to_owned(),
                table: table.to_owned(),
                known: known.to_vec(),
                hint,
            })));
        }
        Ok(())
    }

    /// Resolves a path written in the job file against the job file's directory.
    pub(crate) fn resolve(&self, given: &str) -> PathBuf {
        normalize(&self.dir.join(given))
    }
}

/// The key of `item` (a table) whose key or value contains `span`.
fn key_containing(item: &Item, span: &Range<usize>) -> Option<String> {
    let table = item.as_table_like()?;
    table.iter().find_map(|(key, value)| {
        let contains = |s: Option<Range<usize>>| s.is_some_and(|s| s.contains(&span.start));
        let key_span = table.key(key).and_then(|k| k.span());
        (contains(value.span()) || contains(key_span)).then(|| key.to_owned())
    })
}

/// The nodes in a `[[source]]`-style section: an array of tables, or an array of
/// inline tables. `None` when the section is something else.
pub(crate) fn node_items(section: &Item) -> Option<Vec<&Item>> {
    match section {
        Item::ArrayOfTables(array) => {
            Some((0..array.len()).filter_map(|i| section.get(i)).collect())
        }
        Item::Value(Value::Array(array)) => {
            let items: Vec<&Item> = (0..array.len()).filter_map(|i| section.get(i)).collect();
            items.iter().all(|i| i.is_inline_table()).then_some(items)
        }
        _ => None,
    }
}

/// A known key within edit distance 2 of `key`, for "did you mean".
fn closest(key: &str, known: &[&'static str]) -> Option<&'static str> {
    known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, k)| *d <= 2 && *d < k.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut row = Vec::with_capacity(b.len() + 1);
        row.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            row.push(substitute.min(prev[j + 1] + 1).min(row[j] + 1));
        }
        prev = row;
    }
    prev[b.len()]
}

/// Removes `.` and resolves `..` lexically, so messages show clean paths.
pub(crate) fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if matches!(out.components().next_back(), Some(Component::Normal(_))) {
                    out.pop();
                } else if !out.has_root() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// True when `item` is a table or an inline table.
pub(crate) fn is_table(item: &Item) -> bool {
    item.as_table_like().is_some()
}

/// The string at `key` of a table-like `item`, for naming a node before it is
/// deserialized.
pub(crate) fn str_at<'i>(item: &'i Item, key: &str) -> Option<&'i str> {
    item.as_table_like()
        .and_then(|t: &dyn TableLike| t.get(key))
        .and_then(Item::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizing_removes_dots_and_resolves_parents() {
        assert_eq!(
            normalize(Path::new("/a/b/./../c/../../d/e.wasm")),
            PathBuf::from("/d/e.wasm")
        );
        assert_eq!(normalize(Path::new("/../x")), PathBuf::from("/x"));
    }

    #[test]
    fn close_spellings_are_suggested_and_far_ones_are_not() {
        assert_eq!(
            closest("paralelism", &["id", "parallelism"]),
            Some("parallelism")
        );
        assert_eq!(closest("xyz", &["id", "parallelism"]), None);
    }
}
