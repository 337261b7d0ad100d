//! The nodes: each `[[source]]`, `[[operator]]` and `[[sink]]` read by its kind,
//! then the logical graph: ids, inputs, parallelism, partitioning and a
//! topological order.

use std::collections::HashMap;
use std::time::Duration;

use toml_edit::Item;

use super::doc::{Doc, Seg, node_items, str_at};
use super::duration::{DurationText, parse_duration};
use super::error::{FileRole, JobError, Location};
use super::raw::{
    NODE_SECTIONS, RawDirGrant, RawOperator, RawSinkNode, RawSourceNode, RawWatermark, defaults,
    fields_of,
};
use super::scope::{Scope, existing_file};
use super::sections::JobSettings;
use super::size::{SizeText, format_size, parse_size};
use super::spec::{
    DirGrant, Node, NodeKind, OperatorSpec, Partition, RunawayPolicy, RunawayPolicyName,
    SandboxSpec, SinkKind, SinkSpec, SourceKind, SourceSpec, WatermarkStrategy,
};

/// A node as read from its table, before the graph is checked.
struct Draft {
    section: &'static str,
    /// Position within its section, for finding its keys in the document.
    index: usize,
    id: String,
    parallelism: Option<u32>,
    /// `chaining` as written on the node.
    chaining: Option<bool>,
    inputs: Vec<String>,
    partition: Option<Partition>,
    kind: NodeKind,
}

impl Draft {
    fn label(&self) -> String {
        format!("{} \"{}\"", self.section, self.id)
    }
}

/// Where `key` of the node at `index` of `section` is written (or the node itself).
fn at(doc: &Doc<'_>, section: &str, index: usize, key: &str) -> Location {
    doc.at(&[Seg::Key(section), Seg::Index(index), Seg::Key(key)])
}

/// Reads, checks and topologically sorts all nodes.
pub(crate) fn nodes(doc: &Doc<'_>, job: &JobSettings) -> Result<Vec<Node>, JobError> {
    let mut drafts = Vec::new();
    for section in NODE_SECTIONS {
        let Some(section_item) = doc.root.get(section) else {
            continue;
        };
        let Some(items) = node_items(section_item) else {
            return Err(JobError::Invalid {
                at: doc.at(&[Seg::Key(section)]),
                message: format!(
                    "`{section}` must be an array of tables. Write each {section} under its own [[{section}]] header (two brackets)."
                ),
            });
        };
        for (index, item) in items.into_iter().enumerate() {
            let reader = NodeReader {
                doc,
                section,
                index,
                item,
                context: match str_at(item, "id") {
                    Some(id) => format!("[[{section}]] \"{id}\""),
                    None => format!("[[{section}]] number {}", index + 1),
                },
            };
            drafts.push(match section {
                "source" => reader.source()?,
                "operator" => reader.operator()?,
                _ => reader.sink()?,
            });
        }
    }
    Graph::new(doc, job, drafts)?.into_nodes(job.chaining)
}

/// Reads one node's table.
struct NodeReader<'d, 'a> {
    doc: &'d Doc<'a>,
    section: &'static str,
    index: usize,
    item: &'d Item,
    /// e.g. `[[operator]] "count"`.
    context: String,
}

impl NodeReader<'_, '_> {
    fn at(&self, key: &str) -> Location {
        at(self.doc, self.section, self.index, key)
    }

    fn label(&self, id: &str) -> String {
        format!("{} \"{id}\"", self.section)
    }

    /// The node's id: present and of the allowed characters.
    fn id(&self, id: Option<String>) -> Result<String, JobError> {
        let Some(id) = id else {
            return Err(JobError::Invalid {
                at: self.at("id"),
                message: format!(
                    "{} has no `id`. Give every node a unique id, e.g. id = \"tokenize\".",
                    self.context
                ),
            });
        };
        let valid = !id.is_empty()
            && id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !valid {
            return Err(JobError::Invalid {
                at: self.at("id"),
                message: format!(
                    "the id \"{id}\" may contain only lowercase letters, digits, `-` and `_`, and must not be empty. Write e.g. id = \"{}\".",
                    suggested_id(&id)
                ),
            });
        }
        Ok(id)
    }

    /// The `kind` of a source or sink, as one of `kinds` (name, own keys), after the
    /// unknown-key check of the node's table: `common` and the kind's own keys are
    /// known; a key of another kind is named as such.
    fn kind(
        &self,
        kinds: &[(&'static str, &'static [&'static str])],
        common: &'static [&'static str],
    ) -> Result<&'static str, JobError> {
        let names: Vec<&str> = kinds.iter().map(|(name, _)| *name).collect();
        let Some(item) = self.item.get("kind") else {
            let choices: Vec<String> = names.iter().map(|n| format!("kind = \"{n}\"")).collect();
            return Err(JobError::Invalid {
                at: self.at("kind"),
                message: format!("{} has no `kind`. Set {}.", self.context, or_list(&choices)),
            });
        };
        let written: String = self.doc.deserialize_value(item, "kind", &self.context)?;
        let Some(&(kind, own)) = kinds.iter().find(|(name, _)| *name == written) else {
            let choices: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
            return Err(JobError::Invalid {
                at: self.at("kind"),
                message: format!(
                    "invalid value for `kind` in {}: unknown kind \"{written}\", expected {}.",
                    self.context,
                    or_list(&choices)
                ),
            });
        };
        let known: Vec<&'static str> = common.iter().chain(own).copied().collect();
        let others: Vec<(String, &'static [&'static str])> = kinds
            .iter()
            .filter(|(name, _)| *name != kind)
            .map(|(name, keys)| (format!("kind \"{name}\""), *keys))
            .collect();
        self.doc
            .check_keys(self.item, &known, &self.kind_table(kind), &others)?;
        Ok(kind)
    }

    /// e.g. `[[source]] "events" of kind "kafka"`.
    fn kind_table(&self, kind: &str) -> String {
        format!("{} of kind \"{kind}\"", self.context)
    }

    fn source(&self) -> Result<Draft, JobError> {
        if self.item.get("inputs").is_some() {
            return Err(JobError::Graph {
                at: self.at("inputs"),
                message: format!(
                    "{} has `inputs`, but a source reads from outside the job and has no upstream nodes. Remove `inputs`, or make this node an [[operator]].",
                    self.context
                ),
            });
        }
        let kinds = SourceKind::kinds();
        let common = fields_of::<RawSourceNode>();
        let kind = self.kind(&kinds, common)?;
        let raw: RawSourceNode = self.doc.deserialize(self.item, &self.kind_table(kind))?;
        let id = self.id(raw.id)?;
        let scope = self.scope(common, &id, kind);
        let source = SourceKind::read(kind, &scope).unwrap_or_else(|| unreachable!())?;
        let watermark = match raw.watermark {
            Some(watermark) => Some(self.watermark(&scope, &source, watermark)?),
            None => None,
        };
        Ok(Draft {
            section: self.section,
            index: self.index,
            id,
            parallelism: raw.parallelism,
            chaining: raw.chaining,
            inputs: Vec::new(),
            partition: None,
            kind: NodeKind::Source(SourceSpec {
                kind: source,
                watermark,
            }),
        })
    }

    /// A source's `watermark` table, for a kind whose records carry timestamps.
    fn watermark(
        &self,
        scope: &Scope<'_>,
        source: &SourceKind,
        raw: RawWatermark,
    ) -> Result<WatermarkStrategy, JobError> {
        if !source.has_timestamps() {
            return Err(scope.invalid(
                "watermark",
                format!(
                    "{} sets `watermark`, but the records of kind \"{}\" carry no timestamps to derive watermarks from. Remove `watermark`, or read from a source whose records have timestamps, such as kind = \"kafka\".",
                    scope.label(),
                    source.name()
                ),
            ));
        }
        let max_out_of_orderness = match &raw.max_out_of_orderness {
            Some(text) => scope.duration("watermark", text)?,
            None => Duration::ZERO,
        };
        let idle_timeout = match &raw.idle_timeout {
            Some(text) => Some(scope.duration("watermark", text)?).filter(|d| !d.is_zero()),
            None => None,
        };
        Ok(WatermarkStrategy {
            max_out_of_orderness,
            idle_timeout,
        })
    }

    /// What the connector of `kind` sees of this node.
    fn scope<'s>(
        &'s self,
        common: &'static [&'static str],
        id: &'s str,
        kind: &'static str,
    ) -> Scope<'s> {
        Scope {
            doc: self.doc,
            section: self.section,
            index: self.index,
            item: self.item,
            common,
            id,
            kind,
        }
    }

    fn operator(&self) -> Result<Draft, JobError> {
        self.doc
            .check_keys(self.item, fields_of::<RawOperator>(), &self.context, &[])?;
        let mut raw: RawOperator = self.doc.deserialize(self.item, &self.context)?;
        let id = self.id(raw.id.take())?;
        let Some(wasm) = raw.wasm.take() else {
            return Err(JobError::Invalid {
                at: self.at("wasm"),
                message: format!(
                    "{} has no `wasm`. Set wasm = \"path/to/operator.wasm\", relative to the job file.",
                    self.label(&id)
                ),
            });
        };
        let wasm = existing_file(
            self.doc,
            &self.label(&id),
            &wasm,
            FileRole::Component,
            self.at("wasm"),
        )?;
        let batch_size = raw.batch_size.unwrap_or(defaults::BATCH_SIZE);
        if batch_size == 0 {
            return Err(JobError::Invalid {
                at: self.at("batch-size"),
                message: format!(
                    "{}: `batch-size` is 0, but a batch holds at least one record. Set batch-size = 1 or more (default {}).",
                    self.label(&id),
                    defaults::BATCH_SIZE
                ),
            });
        }
        let sandbox = self.sandbox(&id, &raw)?;
        Ok(Draft {
            section: self.section,
            index: self.index,
            id,
            parallelism: raw.parallelism,
            chaining: raw.chaining,
            inputs: raw.inputs.map(|l| l.0).unwrap_or_default(),
            partition: raw.partition,
            kind: NodeKind::Operator(OperatorSpec {
                wasm,
                config: raw.config.map(|c| c.0).unwrap_or_default(),
                batch_size,
                sandbox,
            }),
        })
    }

    /// An error about `key` of the operator `id`.
    fn invalid(&self, key: &str, id: &str, message: String) -> JobError {
        JobError::Invalid {
            at: self.at(key),
            message: format!("{}: {message}", self.label(id)),
        }
    }

    /// The duration at `key`, if set.
    fn duration(
        &self,
        id: &str,
        key: &str,
        value: Option<&DurationText>,
    ) -> Result<Option<Duration>, JobError> {
        value
            .map(|DurationText(text)| {
                parse_duration(text).map_err(|reason| {
                    self.invalid(
                        key,
                        id,
                        format!("invalid duration \"{text}\" for `{key}`: {reason}."),
                    )
                })
            })
            .transpose()
    }

    /// The size at `key`, if set.
    fn size(&self, id: &str, key: &str, value: Option<&SizeText>) -> Result<Option<u64>, JobError> {
        value
            .map(|SizeText(text)| {
                parse_size(text).map_err(|reason| {
                    self.invalid(
                        key,
                        id,
                        format!("invalid size \"{text}\" for `{key}`: {reason}."),
                    )
                })
            })
            .transpose()
    }

    /// The operator's sandbox: limits, runaway policy and WASI grants.
    fn sandbox(&self, id: &str, raw: &RawOperator) -> Result<SandboxSpec, JobError> {
        let fuel_per_record = match raw.fuel_per_record.unwrap_or(defaults::FUEL_PER_RECORD) {
            0 => None,
            fuel => Some(fuel),
        };
        let memory_limit = self
            .size(id, "memory-limit", raw.memory_limit.as_ref())?
            .unwrap_or(defaults::MEMORY_LIMIT);
        if memory_limit < defaults::MIN_MEMORY_LIMIT {
            return Err(self.invalid(
                "memory-limit",
                id,
                format!(
                    "`memory-limit` is {}, but a guest needs at least {} to start. Set memory-limit = \"{}\" or more (default {}).",
                    format_size(memory_limit),
                    format_size(defaults::MIN_MEMORY_LIMIT),
                    format_size(defaults::MIN_MEMORY_LIMIT).replace(' ', ""),
                    format_size(defaults::MEMORY_LIMIT)
                ),
            ));
        }
        let call_timeout = self
            .duration(id, "call-timeout", raw.call_timeout.as_ref())?
            .unwrap_or(defaults::CALL_TIMEOUT);
        if call_timeout < defaults::MIN_CALL_TIMEOUT {
            return Err(self.invalid(
                "call-timeout",
                id,
                format!(
                    "`call-timeout` is {call_timeout:?}, shorter than the least the host can enforce ({:?}). Set call-timeout = \"100ms\" or more (default {:?}); no guest call can run without a deadline.",
                    defaults::MIN_CALL_TIMEOUT,
                    defaults::CALL_TIMEOUT
                ),
            ));
        }
        let sync_phase_timeout = self
            .duration(id, "sync-phase-timeout", raw.sync_phase_timeout.as_ref())?
            .or(defaults::SYNC_PHASE_TIMEOUT);
        match sync_phase_timeout {
            Some(limit) if limit.is_zero() => {
                return Err(self.invalid(
                    "sync-phase-timeout",
                    id,
                    "`sync-phase-timeout` is 0, which would decline every checkpoint. Set a positive duration, or remove the key for no limit.".to_owned(),
                ));
            }
            Some(limit) if limit >= call_timeout => {
                return Err(self.invalid(
                    "sync-phase-timeout",
                    id,
                    format!(
                        "`sync-phase-timeout` ({limit:?}) must be shorter than `call-timeout` ({call_timeout:?}): at the call timeout the guest is stopped for good, so the checkpoint could never be declined instead. Lower sync-phase-timeout or raise call-timeout."
                    ),
                ));
            }
            _ => {}
        }
        let sync_phase_fuel = raw.sync_phase_fuel.or(defaults::SYNC_PHASE_FUEL);
        match sync_phase_fuel {
            Some(0) => {
                return Err(self.invalid(
                    "sync-phase-fuel",
                    id,
                    "`sync-phase-fuel` is 0, which would decline every checkpoint. Set a positive amount, or remove the key for no limit.".to_owned(),
                ));
            }
            Some(_) if fuel_per_record.is_none() => {
                return Err(self.invalid(
                    "sync-phase-fuel",
                    id,
                    "`sync-phase-fuel` needs fuel metering, which `fuel-per-record = 0` turns off. Set fuel-per-record to a budget, or remove sync-phase-fuel.".to_owned(),
                ));
            }
            _ => {}
        }
        let on_runaway = self.runaway_policy(id, raw)?;
        Ok(SandboxSpec {
            fuel_per_record,
            memory_limit,
            call_timeout,
            sync_phase_timeout,
            sync_phase_fuel,
            on_runaway,
            dirs: self.dir_grants(id, raw.dirs.as_deref().unwrap_or_default())?,
            env: self.env_grants(id, raw.env.as_deref().unwrap_or_default())?,
        })
    }

    /// `on-runaway`, with `dead-letter-dir` and `replay-limit`, which only `dead-letter`
    /// uses.
    fn runaway_policy(&self, id: &str, raw: &RawOperator) -> Result<RunawayPolicy, JobError> {
        match raw.on_runaway.unwrap_or(defaults::ON_RUNAWAY) {
            RunawayPolicyName::Fail => {
                for (key, set) in [
                    ("dead-letter-dir", raw.dead_letter_dir.is_some()),
                    ("replay-limit", raw.replay_limit.is_some()),
                ] {
                    if set {
                        return Err(self.invalid(
                            key,
                            id,
                            format!(
                                "`{key}` is only used with on-runaway = \"dead-letter\", and this operator fails on a runaway record. Set on-runaway = \"dead-letter\", or remove `{key}`."
                            ),
                        ));
                    }
                }
                Ok(RunawayPolicy::Fail)
            }
            RunawayPolicyName::DeadLetter => {
                let dir = raw
                    .dead_letter_dir
                    .as_deref()
                    .unwrap_or(defaults::DEAD_LETTER_DIR);
                let resolved = self.doc.resolve(dir);
                if resolved.exists() && !resolved.is_dir() {
                    return Err(self.invalid(
                        "dead-letter-dir",
                        id,
                        format!(
                            "`dead-letter-dir` {dir} is a file (resolved to {}), but dead letters go into a directory. Point it at a directory; it is created if missing.",
                            resolved.display()
                        ),
                    ));
                }
                let replay_limit = self
                    .size(id, "replay-limit", raw.replay_limit.as_ref())?
                    .unwrap_or(defaults::REPLAY_LIMIT);
                if replay_limit == 0 {
                    return Err(self.invalid(
                        "replay-limit",
                        id,
                        format!(
                            "`replay-limit` is 0, so no record could ever be dead-lettered. Set a size such as \"{}\" (the default).",
                            format_size(defaults::REPLAY_LIMIT).replace(' ', "")
                        ),
                    ));
                }
                Ok(RunawayPolicy::DeadLetter {
                    dir: resolved,
                    replay_limit,
                })
            }
        }
    }

    /// `dirs`: each host directory exists; guest paths are absolute and distinct.
    fn dir_grants(&self, id: &str, grants: &[RawDirGrant]) -> Result<Vec<DirGrant>, JobError> {
        let mut out: Vec<DirGrant> = Vec::with_capacity(grants.len());
        for (i, grant) in grants.iter().enumerate() {
            let at = self.doc.at(&[
                Seg::Key(self.section),
                Seg::Index(self.index),
                Seg::Key("dirs"),
                Seg::Index(i),
            ]);
            let invalid = |message: String| JobError::Invalid {
                at: at.clone(),
                message: format!("{}: {message}", self.label(id)),
            };
            let (Some(host), Some(guest)) = (&grant.host, &grant.guest) else {
                return Err(invalid(format!(
                    "entry {} of `dirs` needs both `host` and `guest`, e.g. dirs = [{{ host = \"data\", guest = \"/data\" }}].",
                    i + 1
                )));
            };
            let resolved = self.doc.resolve(host);
            if !resolved.is_dir() {
                return Err(invalid(format!(
                    "the granted directory {host} (resolved to {}) {}. Create it, or fix `host`; it is relative to the job file.",
                    resolved.display(),
                    if resolved.exists() {
                        "is not a directory"
                    } else {
                        "does not exist"
                    }
                )));
            }
            if !guest.starts_with('/') || guest.split('/').any(|part| part == "..") {
                return Err(invalid(format!(
                    "the guest path \"{guest}\" must be absolute and without `..`, e.g. guest = \"/data\"."
                )));
            }
            if out.iter().any(|g| g.guest == *guest) {
                return Err(invalid(format!(
                    "the guest path \"{guest}\" is granted twice. Give each directory its own guest path."
                )));
            }
            out.push(DirGrant {
                host: std::fs::canonicalize(&resolved).unwrap_or(resolved),
                guest: guest.clone(),
                writable: grant.writable.unwrap_or(false),
            });
        }
        Ok(out)
    }

    /// `env`: `NAME=value`, or a bare `NAME` for the host's value.
    fn env_grants(&self, id: &str, vars: &[String]) -> Result<Vec<(String, String)>, JobError> {
        let mut out: Vec<(String, String)> = Vec::with_capacity(vars.len());
        for (i, entry) in vars.iter().enumerate() {
            let at = self.doc.at(&[
                Seg::Key(self.section),
                Seg::Index(self.index),
                Seg::Key("env"),
                Seg::Index(i),
            ]);
            let invalid = |message: String| JobError::Invalid {
                at: at.clone(),
                message: format!("{}: {message}", self.label(id)),
            };
            let (name, value) = match entry.split_once('=') {
                Some((name, value)) => (name, Some(value.to_owned())),
                None => (entry.as_str(), None),
            };
            let valid = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(invalid(format!(
                    "\"{entry}\" in `env` is not NAME=value or NAME: a name is letters, digits and `_`, not starting with a digit."
                )));
            }
            if out.iter().any(|(n, _)| n == name) {
                return Err(invalid(format!(
                    "`env` sets {name} twice. Keep one entry per variable."
                )));
            }
            let value = match value {
                Some(value) => value,
                None => std::env::var(name).map_err(|_| {
                    invalid(format!(
                        "`env` passes {name} from the host, but the host has no such variable (or it is not UTF-8). Set it, or write {name}=value."
                    ))
                })?,
            };
            out.push((name.to_owned(), value));
        }
        Ok(out)
    }

    fn sink(&self) -> Result<Draft, JobError> {
        let kinds = SinkKind::kinds();
        let common = fields_of::<RawSinkNode>();
        let kind = self.kind(&kinds, common)?;
        let raw: RawSinkNode = self.doc.deserialize(self.item, &self.kind_table(kind))?;
        let id = self.id(raw.id)?;
        let sink = SinkKind::read(kind, &self.scope(common, &id, kind))
            .unwrap_or_else(|| unreachable!())?;
        Ok(Draft {
            section: self.section,
            index: self.index,
            id,
            parallelism: raw.parallelism,
            chaining: raw.chaining,
            inputs: raw.inputs.map(|l| l.0).unwrap_or_default(),
            partition: raw.partition,
            kind: NodeKind::Sink(SinkSpec {
                kind: sink,
                rate: raw.rate.unwrap_or(0),
            }),
        })
    }
}

/// An id in the allowed characters, for the example in the error.
fn suggested_id(id: &str) -> String {
    let suggestion: String = id
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if suggestion.is_empty() {
        "my-node".to_owned()
    } else {
        suggestion
    }
}

/// "a", "a or b", "a, b or c".
fn or_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// The drafts with their inputs resolved to indices (in declaration order).
struct Graph<'d, 'a> {
    doc: &'d Doc<'a>,
    drafts: Vec<Draft>,
    parallelism: Vec<u32>,
    inputs: Vec<Vec<usize>>,
}

impl<'d, 'a> Graph<'d, 'a> {
    fn new(doc: &'d Doc<'a>, job: &JobSettings, drafts: Vec<Draft>) -> Result<Self, JobError> {
        let at = |d: &Draft, key: &str| at(doc, d.section, d.index, key);
        let mut by_id: HashMap<&str, usize> = HashMap::new();
        for (i, d) in drafts.iter().enumerate() {
            if let Some(&first) = by_id.get(d.id.as_str()) {
                let first = &drafts[first];
                let line = at(first, "id")
                    .line()
                    .map(|l| format!(" on line {l}"))
                    .unwrap_or_default();
                return Err(JobError::Graph {
                    at: at(d, "id"),
                    message: format!(
                        "the id \"{}\" is used twice: by {}{line} and by this {}. Ids must be unique across sources, operators and sinks; rename one.",
                        d.id,
                        first.label(),
                        d.section
                    ),
                });
            }
            by_id.insert(&d.id, i);
        }
        for (section, example) in [
            ("source", "kind = \"file\" and path = \"input.txt\""),
            (
                "sink",
                "kind = \"stdout\" and inputs = [\"<last operator>\"]",
            ),
        ] {
            if !drafts.iter().any(|d| d.section == section) {
                return Err(JobError::Graph {
                    at: doc.origin.whole(),
                    message: format!(
                        "the job has no {section}. Add a [[{section}]] with an id and e.g. {example}."
                    ),
                });
            }
        }

        let ids: Vec<&str> = drafts.iter().map(|d| d.id.as_str()).collect();
        let mut inputs = Vec::with_capacity(drafts.len());
        for d in &drafts {
            if d.section != "source" && d.inputs.is_empty() {
                return Err(JobError::Graph {
                    at: at(d, "inputs"),
                    message: format!(
                        "{} has no inputs. Add inputs = [\"<id>\"] naming the nodes it reads from.",
                        d.label()
                    ),
                });
            }
            let mut resolved: Vec<usize> = Vec::with_capacity(d.inputs.len());
            for (j, input) in d.inputs.iter().enumerate() {
                let at_input = || {
                    let single = doc
                        .get(&[Seg::Key(d.section), Seg::Index(d.index), Seg::Key("inputs")])
                        .is_some_and(|i| i.is_str());
                    let mut path =
                        vec![Seg::Key(d.section), Seg::Index(d.index), Seg::Key("inputs")];
                    if !single {
                        path.push(Seg::Index(j));
                    }
                    doc.at(&path)
                };
                let Some(&index) = by_id.get(input.as_str()) else {
                    return Err(JobError::Graph {
                        at: at_input(),
                        message: format!(
                            "{} reads from \"{input}\", but no node has that id. Node ids: {}.",
                            d.label(),
                            ids.join(", ")
                        ),
                    });
                };
                if drafts[index].section == "sink" {
                    return Err(JobError::Graph {
                        at: at_input(),
                        message: format!(
                            "{} reads from {}, but a sink has no output. Read from a source or an operator instead.",
                            d.label(),
                            drafts[index].label()
                        ),
                    });
                }
                if resolved.contains(&index) {
                    return Err(JobError::Graph {
                        at: at_input(),
                        message: format!(
                            "{} lists \"{input}\" twice in its inputs. List each input once.",
                            d.label()
                        ),
                    });
                }
                resolved.push(index);
            }
            inputs.push(resolved);
        }

        let mut parallelism = Vec::with_capacity(drafts.len());
        for d in &drafts {
            let p = d.parallelism.unwrap_or(job.parallelism);
            if d.parallelism == Some(0) {
                return Err(JobError::Invalid {
                    at: at(d, "parallelism"),
                    message: format!(
                        "{} has parallelism 0, but it needs at least one subtask. Set parallelism = 1 or more, or leave it out to use the job's parallelism ({}).",
                        d.label(),
                        job.parallelism
                    ),
                });
            }
            if p > job.max_parallelism {
                let at = if d.parallelism.is_some() {
                    at(d, "parallelism")
                } else {
                    doc.at(&[Seg::Key("job"), Seg::Key("parallelism")])
                };
                return Err(JobError::Invalid {
                    at,
                    message: format!(
                        "{} has parallelism {p}, more than max-parallelism {} (the number of key groups). Raise max-parallelism in [job] or lower the parallelism.",
                        d.label(),
                        job.max_parallelism
                    ),
                });
            }
            parallelism.push(p);
        }
        Ok(Graph {
            doc,
            drafts,
            parallelism,
            inputs,
        })
    }

    fn at(&self, node: usize, key: &str) -> Location {
        let d = &self.drafts[node];
        at(self.doc, d.section, d.index, key)
    }

    /// Kahn's algorithm, taking the ready node declared first, so that the order
    /// is the file's wherever the edges allow.
    fn topological_order(&self) -> Result<Vec<usize>, JobError> {
        let n = self.drafts.len();
        let mut placed = vec![false; n];
        let mut order = Vec::with_capacity(n);
        while order.len() < n {
            let ready = (0..n).find(|&v| !placed[v] && self.inputs[v].iter().all(|&u| placed[u]));
            let Some(v) = ready else {
                return Err(self.cycle_error(&placed));
            };
            placed[v] = true;
            order.push(v);
        }
        Ok(order)
    }

    /// Every unplaced node has an unplaced input, so walking inputs from one of
    /// them must come back to a node already seen: that loop is a cycle.
    fn cycle_error(&self, placed: &[bool]) -> JobError {
        let start = (0..placed.len()).find(|&v| !placed[v]).unwrap_or(0);
        let mut walk = vec![start];
        let mut current = start;
        let cycle = loop {
            let next = self.inputs[current]
                .iter()
                .copied()
                .find(|&u| !placed[u])
                .unwrap_or(current);
            if let Some(pos) = walk.iter().position(|&v| v == next) {
                break walk.split_off(pos);
            }
            walk.push(next);
            current = next;
        };
        // The walk went upstream; show the cycle in the direction records flow,
        // starting from the node declared first.
        let mut flow: Vec<usize> = cycle.into_iter().rev().collect();
        let first = flow
            .iter()
            .enumerate()
            .min_by_key(|(_, v)| **v)
            .map_or(0, |(i, _)| i);
        flow.rotate_left(first);
        let mut names: Vec<&str> = flow.iter().map(|&v| self.drafts[v].id.as_str()).collect();
        names.push(&self.drafts[flow[0]].id);
        JobError::Graph {
            at: self.at(flow[0], "inputs"),
            message: format!(
                "the job graph has a cycle: {}. Operators cannot feed their own inputs; remove one of these inputs.",
                names.join(" -> ")
            ),
        }
    }

    fn partition(&self, v: usize) -> Result<Partition, JobError> {
        let d = &self.drafts[v];
        let p = self.parallelism[v];
        let differing = self.inputs[v]
            .iter()
            .copied()
            .find(|&u| self.parallelism[u] != p);
        match (d.partition, differing) {
            (Some(Partition::Forward), Some(u)) => Err(JobError::Graph {
                at: self.at(v, "partition"),
                message: format!(
                    "{} uses partition = \"forward\" with parallelism {p}, but its input \"{}\" has parallelism {}. Forward partitioning does not allow a change of parallelism: use \"rebalance\" or \"key-by\", or give both the same parallelism.",
                    d.label(),
                    self.drafts[u].id,
                    self.parallelism[u]
                ),
            }),
            (Some(partition), _) => Ok(partition),
            (None, Some(_)) => Ok(Partition::Rebalance),
            (None, None) => Ok(Partition::Forward),
        }
    }

    /// The nodes in topological order; `chaining` is `[job] chaining`.
    fn into_nodes(self, chaining: bool) -> Result<Vec<Node>, JobError> {
        let order = self.topological_order()?;
        let mut partitions = Vec::with_capacity(self.drafts.len());
        for v in 0..self.drafts.len() {
            partitions.push(self.partition(v)?);
        }
        for (v, d) in self.drafts.iter().enumerate() {
            let feeds_nothing = !self.inputs.iter().any(|inputs| inputs.contains(&v));
            if d.section != "sink" && feeds_nothing {
                return Err(JobError::Graph {
                    at: self.at(v, "id"),
                    message: format!(
                        "{} feeds no node, so its output would be lost. Add \"{}\" to the inputs of an operator or sink, or remove it.",
                        d.label(),
                        d.id
                    ),
                });
            }
        }
        let mut new_index = vec![0; self.drafts.len()];
        for (position, &v) in order.iter().enumerate() {
            new_index[v] = position;
        }
        let Graph {
            drafts,
            parallelism,
            inputs,
            ..
        } = self;
        let mut slots: Vec<Option<Node>> = drafts
            .into_iter()
            .enumerate()
            .map(|(v, d)| {
                Some(Node {
                    id: d.id,
                    parallelism: parallelism[v],
                    inputs: inputs[v].iter().map(|&u| new_index[u]).collect(),
                    partition: partitions[v],
                    chaining: chaining && d.chaining.unwrap_or(true),
                    kind: d.kind,
                })
            })
            .collect();
        Ok(order
            .iter()
            .filter_map(|&v| slots.get_mut(v).and_then(Option::take))
            .collect())
    }
}
