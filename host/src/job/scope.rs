//! What a connector's configuration sees of the job file: its own keys of one
//! `[[source]]` or `[[sink]]` table, errors placed at a key's line, and paths and
//! durations read the way every other part of the job file reads them.

use std::path::PathBuf;
use std::time::Duration;

use serde::de::DeserializeOwned;
use toml_edit::Item;

use super::doc::{Doc, Seg};
use super::duration::{DurationText, parse_duration};
use super::error::{FileRole, JobError, Location, MissingFile};
use super::raw::StringList;

/// One source or sink table, seen by the connector of its kind.
pub struct Scope<'s> {
    pub(crate) doc: &'s Doc<'s>,
    pub(crate) section: &'static str,
    pub(crate) index: usize,
    /// The whole table.
    pub(crate) item: &'s Item,
    /// The keys the parser reads itself (`id`, `parallelism`, ...), left out of
    /// [`Scope::config`].
    pub(crate) common: &'static [&'static str],
    /// The node's id.
    pub(crate) id: &'s str,
    /// `kind = "..."`.
    pub(crate) kind: &'static str,
}

impl Scope<'_> {
    /// e.g. `[[source]] "events"`.
    pub fn label(&self) -> String {
        format!("{} \"{}\"", self.section, self.id)
    }

    /// The node's id.
    pub fn id(&self) -> &str {
        self.id
    }

    /// e.g. `[[source]] "events" of kind "kafka"`, for messages about the table.
    pub fn table(&self) -> String {
        format!("{} of kind \"{}\"", self.label(), self.kind)
    }

    /// Where `key` is written, or the table when it is not.
    pub fn at(&self, key: &str) -> Location {
        self.doc.at(&self.path(key))
    }

    /// An error about `key`: `message` is the whole sentence, naming the node itself
    /// (through [`Scope::label`] or [`Scope::table`]).
    pub fn invalid(&self, key: &str, message: String) -> JobError {
        JobError::Invalid {
            at: self.at(key),
            message,
        }
    }

    /// Whether `key` is written.
    pub fn has(&self, key: &str) -> bool {
        self.item.get(key).is_some()
    }

    /// The kind's own keys as `T`, without the common ones.
    pub(crate) fn config<T: DeserializeOwned>(&self) -> Result<T, JobError> {
        let mut own = self.item.clone();
        if let Some(table) = own.as_table_like_mut() {
            for key in self.common {
                table.remove(key);
            }
        }
        self.doc.deserialize(&own, &self.table())
    }

    /// Reads a duration written at `key`.
    pub(crate) fn duration(&self, key: &str, text: &DurationText) -> Result<Duration, JobError> {
        parse_duration(&text.0).map_err(|reason| {
            self.invalid(
                key,
                format!(
                    "{}: invalid duration \"{}\" for `{key}`: {reason}.",
                    self.label(),
                    text.0
                ),
            )
        })
    }

    /// Resolves a path written in the job file against the job file's directory.
    pub fn resolve(&self, given: &str) -> PathBuf {
        self.doc.resolve(given)
    }

    /// The files named at `key` (one string or a list), each resolved and checked to
    /// exist, canonical.
    pub(crate) fn existing_files(
        &self,
        key: &str,
        given: &StringList,
        role: FileRole,
    ) -> Result<Vec<PathBuf>, JobError> {
        let single = self.item.get(key).is_some_and(Item::is_str);
        given
            .0
            .iter()
            .enumerate()
            .map(|(i, given)| {
                let mut path = self.path(key);
                if !single {
                    path.push(Seg::Index(i));
                }
                existing_file(self.doc, &self.label(), given, role, self.doc.at(&path))
            })
            .collect()
    }

    fn path<'k>(&self, key: &'k str) -> Vec<Seg<'k>> {
        vec![
            Seg::Key(self.section),
            Seg::Index(self.index),
            Seg::Key(key),
        ]
    }
}

/// Resolves `given` and checks that it is a file; returns its canonical path. `node`
/// names the node in the error.
pub(crate) fn existing_file(
    doc: &Doc<'_>,
    node: &str,
    given: &str,
    role: FileRole,
    at: Location,
) -> Result<PathBuf, JobError> {
    let resolved = doc.resolve(given);
    if resolved.is_file() {
        return Ok(std::fs::canonicalize(&resolved).unwrap_or(resolved));
    }
    Err(JobError::MissingFile(Box::new(MissingFile {
        at,
        node: node.to_owned(),
        role,
        given: given.to_owned(),
        not_a_file: resolved.exists(),
        resolved,
    })))
}
