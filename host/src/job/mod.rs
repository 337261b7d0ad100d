//! The job file: reading the TOML that describes a job, applying `-D` overrides,
//! validating every setting, and building the logical graph (nodes in
//! topological order, with parallelism and partitioning decided).
//!
//! The output is a [`JobSpec`] that the runtime can trust: defaults applied,
//! paths absolute, referenced files present, the graph acyclic. Every problem is a
//! [`JobError`] that names the file, the line (or the `-D` override), what is
//! wrong and how to fix it. Names follow Flink's configuration where Flink has
//! the setting (`parallelism`, `max-parallelism`, `execution.checkpointing.*`,
//! `restart-strategy.*`).
//!
//! This module may not touch the runtime: it starts nothing, compiles nothing,
//! and does no I/O beyond reading the job file and checking that the files it
//! names exist. Mapping the logical graph onto subtasks and channels is the
//! runtime's job.
//!
//! # Layout
//!
//! - `mod.rs`: [`load`] and [`parse`], the pipeline.
//! - `spec.rs`: the validated types ([`JobSpec`], [`Node`], ...).
//! - `raw.rs`: the file as written (serde structs per table) and every default
//!   but the connectors' own, in one place.
//! - `overrides.rs`: [`Override`] and how `-D` edits the document.
//! - `doc.rs`: the document with its spans; key lookup, deserialization with
//!   located errors, the unknown-key check.
//! - `sections.rs`: `[job]`, `[checkpointing]`, `[restart]`, `[state]`.
//! - `graph.rs`: `[[source]]`, `[[operator]]`, `[[sink]]` and the graph checks. A
//!   source's or sink's own keys are its connector's ([`crate::connectors`]): the
//!   parser reads the keys every node shares and hands the rest to the kind's
//!   registered configuration.
//! - `scope.rs`: [`Scope`], what a connector's configuration sees of its table.
//! - `duration.rs`: [`parse_duration`].
//! - `size.rs`: [`parse_size`], sizes in bytes such as `"64MiB"`.
//! - `error.rs`: [`JobError`] and [`Location`].

mod doc;
mod duration;
mod error;
mod graph;
mod overrides;
mod raw;
mod scope;
mod sections;
mod size;
mod spec;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use toml_edit::Document;

pub use duration::parse_duration;
pub use error::{FileRole, JobError, Location, MissingFile, Place, UnknownKey};
pub use overrides::{Override, OverrideSyntaxError};
pub use sections::storage_url;
pub use size::{format_size, parse_size};
pub use spec::{
    CheckpointMode, CheckpointingConfig, DebloatConfig, DirGrant, JobSpec, NetworkConfig, Node,
    NodeKind, OperatorSpec, Partition, RestConfig, RestartStrategy, Retention, RunawayPolicy,
    S3Settings, SandboxSpec, SinkKind, SinkSpec, SourceKind, SourceSpec, StateBackendKind,
    StateConfig, StorageUrl, WatermarkStrategy,
};

pub(crate) use duration::DurationText;
pub(crate) use raw::{StringList, fields_of};
pub use scope::Scope;

use doc::{Doc, normalize};
use error::Origin;

/// Reads the job file at `path`, applies `overrides` and validates the result.
pub fn load(path: &Path, overrides: &[Override]) -> Result<JobSpec, JobError> {
    let text = std::fs::read_to_string(path).map_err(|source| JobError::Io {
        at: Origin::new(path, "").whole(),
        source,
    })?;
    parse(&text, path, overrides)
}

/// Parses `text`, the contents of the job file at `origin`, applies `overrides`
/// in order and validates the result. `origin` names the file in errors; its
/// directory is where relative paths resolve and the default job name is its
/// stem. Referenced files (operators' `.wasm`, file sources' inputs) must exist.
pub fn parse(text: &str, origin: &Path, overrides: &[Override]) -> Result<JobSpec, JobError> {
    let mut source = Origin::new(origin, text);
    let document = Document::parse(text).map_err(|error| {
        let mut message = error.message().trim().replace('\n', "; ");
        if let Some(line) = error.span().and_then(|span| source.line_text(span.start)) {
            message = format!("{message}, in `{line}`");
        }
        JobError::Syntax {
            at: source.at_with_column(error.span()),
            message,
        }
    })?;
    // A clone of the root keeps the parser's spans, which an edit of the parsed
    // `Document` (through `into_mut`) would strip.
    let mut root = document.as_item().clone();
    overrides::apply(&mut root, overrides, &mut source)?;

    let dir = job_dir(origin).map_err(|source_error| JobError::Io {
        at: source.whole(),
        source: source_error,
    })?;
    let doc = Doc {
        origin: &source,
        root: &root,
        dir: &dir,
    };
    doc.check_keys(&root, &raw::SECTIONS, "the job file (top level)", &[])?;
    let stem = origin
        .file_stem()
        .map_or_else(|| "job".to_owned(), |s| s.to_string_lossy().into_owned());
    let job = sections::job(&doc, &stem)?;
    let checkpointing = sections::checkpointing(&doc)?;
    let restart = sections::restart(&doc, checkpointing.is_some())?;
    let state = sections::state(&doc)?;
    let network = sections::network(&doc)?;
    let rest = sections::rest(&doc)?;
    let nodes = graph::nodes(&doc, &job)?;
    Ok(JobSpec {
        name: job.name,
        dir,
        parallelism: job.parallelism,
        max_parallelism: job.max_parallelism,
        checkpointing,
        restart,
        state,
        network,
        rest,
        nodes,
    })
}

/// The absolute directory of the job file.
fn job_dir(origin: &Path) -> std::io::Result<PathBuf> {
    let parent = origin
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok(normalize(&std::path::absolute(parent)?))
}
