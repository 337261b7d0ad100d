//! The one format of a subtask's snapshot, the same in checkpoints and savepoints and
//! for every state backend.
//!
//! A snapshot has named parts, each described in `_metadata` by a [`StateParts`]:
//!
//! - **operator state**: opaque bytes of the node's own (a guest's `snapshot-state`, a
//!   sink's open transactions, a source's positions). On a rescale every new subtask
//!   receives the operator state of every old one (Flink's union list state); at the
//!   same parallelism each receives its own.
//! - **keyed state**, per key group: the entries of every named value, list and map
//!   state, in the canonical encoding below, which the heap and RocksDB backends both
//!   write and read; or a backend's native files (RocksDB's incremental checkpoints and
//!   native savepoints), which only that backend reads.
//! - **timers**, per key group.
//! - the **channel state** of an unaligned checkpoint, in its own file
//!   ([`super::channel_state`]).
//!
//! Every per-key-group part records its key-group range and where each key group's
//! section lies in the file, so that a restore at another parallelism takes exactly the
//! key groups a new subtask owns, from every old subtask that held some.
//!
//! # Encoding
//!
//! A subtask's state file is the keyed sections, then the timer sections, then the
//! operator state; nothing else, its index is in `_metadata`. Integers are unsigned
//! LEB128 (`uvar`) unless said otherwise; `bytes` is a `uvar` length and the bytes.
//!
//! - keyed section (one key group): entries until its end, each `uvar` state index
//!   into the part's [`StateDecl`]s, `bytes` key, then by the state's kind: a value's
//!   `bytes`; a list's `uvar` count and as many `bytes`; a map's `uvar` count and as many
//!   pairs of `bytes` user key, `bytes` value.
//! - timer section (one key group): entries until its end, each a domain byte
//!   (0 event time, 1 processing time), the time as 8 bytes little-endian, `bytes` key.
//!
//! Storage checksums every file; a section that does not decode is an error naming it.

use crate::runtime::ids::KeyGroup;
use crate::runtime::keygroup::KeyGroupRange;
use crate::state::StoredFile;
use crate::storage::FileHandle;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// What a snapshot is taken for, which decides how a backend writes its keyed state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SnapshotType {
    /// A periodic checkpoint: whatever is cheapest (RocksDB: incremental native files).
    #[default]
    Checkpoint,
    /// A canonical savepoint: keyed state in the canonical encoding, which every
    /// backend restores.
    CanonicalSavepoint,
    /// A native savepoint: the backend's own files (faster for RocksDB), all copied
    /// into the savepoint, restorable only by the same backend.
    NativeSavepoint,
}

impl SnapshotType {
    /// Whether this is a savepoint: self-contained, and no side effects committed.
    pub fn is_savepoint(self) -> bool {
        self != Self::Checkpoint
    }

    /// A savepoint's format by Flink's name (`CANONICAL`, `NATIVE`); `None` for a
    /// checkpoint.
    pub fn savepoint_format(self) -> Option<&'static str> {
        match self {
            Self::Checkpoint => None,
            Self::CanonicalSavepoint => Some("CANONICAL"),
            Self::NativeSavepoint => Some("NATIVE"),
        }
    }
}

/// The kind of a keyed state, as the format records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntryKind {
    /// One value per key.
    Value,
    /// A list of values per key.
    List,
    /// A map of user keys to values per key.
    Map,
}

/// A keyed state named in a snapshot: entries refer to it by its index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct StateDecl {
    /// The name the operator opened it under.
    pub name: String,
    /// Its kind.
    pub kind: EntryKind,
}

/// Where a key group's section lies in a subtask's state file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GroupSpan {
    /// The key group.
    pub group: u16,
    /// Its first byte in the file.
    pub offset: u64,
    /// Its length in bytes.
    pub len: u64,
}

/// A contiguous byte range of a subtask's state file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Span {
    /// Its first byte.
    pub offset: u64,
    /// Its length in bytes.
    pub len: u64,
}

/// A key-group range as `_metadata` records it: `start..end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GroupRange {
    /// The first key group.
    pub start: u16,
    /// One past the last.
    pub end: u16,
}

impl From<KeyGroupRange> for GroupRange {
    fn from(r: KeyGroupRange) -> Self {
        Self {
            start: r.start,
            end: r.end,
        }
    }
}

impl From<GroupRange> for KeyGroupRange {
    fn from(r: GroupRange) -> Self {
        Self {
            start: r.start,
            end: r.end,
        }
    }
}

/// A part held per key group: the range its subtask owned and the non-empty sections.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GroupedPart {
    /// The key groups the subtask owned when it was taken.
    pub key_groups: GroupRange,
    /// The sections of the key groups that hold something, ascending.
    pub groups: Vec<GroupSpan>,
}

/// Where a subtask's keyed state is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "format")]
pub enum KeyedPart {
    /// In the canonical encoding, per key group, in the state file.
    Canonical {
        /// The states the entries refer to.
        states: Vec<StateDecl>,
        /// The sections.
        #[serde(flatten)]
        part: GroupedPart,
    },
    /// In a backend's own files (RocksDB), holding the key groups of `key_groups`.
    Native {
        /// The backend that wrote them ("rocksdb").
        backend: String,
        /// The key groups the subtask owned.
        key_groups: GroupRange,
        /// The files, under their names in the backend's directory.
        files: Vec<StoredFile>,
    },
}

impl KeyedPart {
    /// The key groups the subtask owned.
    pub fn key_groups(&self) -> GroupRange {
        match self {
            Self::Canonical { part, .. } => part.key_groups,
            Self::Native { key_groups, .. } => *key_groups,
        }
    }
}

/// A subtask's snapshot as `_metadata` describes it: its state file and where each part
/// lies in it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct StateParts {
    /// The state file; `None` when every part is empty or in backend files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileHandle>,
    /// The operator state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<Span>,
    /// The keyed state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyed: Option<KeyedPart>,
    /// The timers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timers: Option<GroupedPart>,
    /// Records the subtask had taken in, counted across restores at the same
    /// parallelism (a record's position in messages).
    #[serde(default)]
    pub records_in: u64,
}

/// What a subtask's asynchronous phase produced, before it is laid out in a file.
#[derive(Debug, Default)]
pub struct SnapshotParts {
    /// The operator state.
    pub operator: Option<Vec<u8>>,
    /// The keyed state in the canonical encoding; `None` for a backend's native files
    /// (which come beside) or a node without keyed state.
    pub keyed: Option<KeyedState>,
    /// The timers.
    pub timers: Option<Sections>,
    /// The key groups the subtask owns, when it has keyed state or timers.
    pub key_groups: Option<KeyGroupRange>,
    /// Records the subtask had taken in.
    pub records_in: u64,
}

impl SnapshotParts {
    /// Only operator state: a source's positions, a sink's transactions.
    pub fn operator(bytes: Vec<u8>) -> Self {
        Self {
            operator: Some(bytes),
            ..Self::default()
        }
    }
}

/// Sections per key group in one buffer, as a [`SectionWriter`] made them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sections {
    /// The encoded sections, one after another.
    pub bytes: Vec<u8>,
    /// Where each is in `bytes`, ascending by key group.
    pub groups: Vec<GroupSpan>,
}

/// Keyed state in the canonical encoding.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyedState {
    /// The states entries refer to.
    pub states: Vec<StateDecl>,
    /// The entries, per key group.
    pub sections: Sections,
}

/// Lays out the parts of one subtask's snapshot: the state file's bytes and the index
/// `_metadata` records (its `file` left for the caller to fill in once stored). A
/// native keyed part is passed in as it is.
pub fn lay_out(parts: SnapshotParts, native: Option<KeyedPart>) -> (Vec<u8>, StateParts) {
    let range = parts
        .key_groups
        .map(GroupRange::from)
        .unwrap_or(GroupRange { start: 0, end: 0 });
    let (mut file, keyed) = match parts.keyed {
        Some(KeyedState { states, sections }) => (
            sections.bytes,
            Some(KeyedPart::Canonical {
                states,
                part: GroupedPart {
                    key_groups: range,
                    groups: sections.groups,
                },
            }),
        ),
        None => (Vec::new(), native),
    };
    let timers = parts.timers.map(|t| {
        let base = file.len() as u64;
        file.extend_from_slice(&t.bytes);
        GroupedPart {
            key_groups: range,
            groups: t
                .groups
                .into_iter()
                .map(|g| GroupSpan {
                    offset: g.offset + base,
                    ..g
                })
                .collect(),
        }
    });
    let operator = parts.operator.map(|o| {
        let span = Span {
            offset: file.len() as u64,
            len: o.len() as u64,
        };
        file.extend_from_slice(&o);
        span
    });
    let index = StateParts {
        file: None,
        operator,
        keyed,
        timers,
        records_in: parts.records_in,
    };
    (file, index)
}

/// Why a snapshot's bytes do not fit their index or do not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FormatError(pub String);

/// The bytes of `span` in `file`, shared with it.
pub fn slice(file: &Bytes, offset: u64, len: u64, what: &str) -> Result<Bytes, FormatError> {
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    let end = start.saturating_add(usize::try_from(len).unwrap_or(usize::MAX));
    if end > file.len() {
        return Err(FormatError(format!(
            "{what} lies at bytes {start}..{end} of a file of {} bytes",
            file.len()
        )));
    }
    Ok(file.slice(start..end))
}

/// Restored keyed state in the canonical encoding: the sections of the key groups a
/// subtask owns, from one old subtask's file (whose state indices they use).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyedSections {
    /// The states of that old subtask.
    pub states: Vec<StateDecl>,
    /// Its sections, by key group.
    pub groups: Vec<(KeyGroup, Bytes)>,
}

impl KeyedState {
    /// The same state as restored sections (a dead-lettering operator restores its
    /// last snapshot in memory).
    pub fn into_sections(self) -> KeyedSections {
        let bytes = Bytes::from(self.sections.bytes);
        let groups = self
            .sections
            .groups
            .iter()
            .map(|g| {
                let start = usize::try_from(g.offset).unwrap_or(0);
                let end = start + usize::try_from(g.len).unwrap_or(0);
                (KeyGroup(g.group), bytes.slice(start..end))
            })
            .collect();
        KeyedSections {
            states: self.states,
            groups,
        }
    }
}

// ---- writing ----

fn put_uvar(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_uvar(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// Writes sections per key group, in ascending key-group order; a key group begun but
/// left empty takes no section.
#[derive(Debug, Default)]
pub struct SectionWriter {
    out: Sections,
    open: Option<(u16, usize)>,
}

impl SectionWriter {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    fn close(&mut self) {
        if let Some((group, start)) = self.open.take() {
            let len = self.out.bytes.len() - start;
            if len > 0 {
                self.out.groups.push(GroupSpan {
                    group,
                    offset: start as u64,
                    len: len as u64,
                });
            }
        }
    }

    /// Starts the section of `group`; what follows belongs to it.
    pub fn group(&mut self, group: KeyGroup) {
        if self.open.is_some_and(|(g, _)| g == group.0) {
            return;
        }
        self.close();
        debug_assert!(
            self.out.groups.last().is_none_or(|g| g.group < group.0),
            "key groups must be written in ascending order"
        );
        self.open = Some((group.0, self.out.bytes.len()));
    }

    /// A value state's entry.
    pub fn value(&mut self, state: u32, key: &[u8], value: &[u8]) {
        let out = &mut self.out.bytes;
        put_uvar(out, u64::from(state));
        put_bytes(out, key);
        put_bytes(out, value);
    }

    /// A list state's entry.
    pub fn list<'a>(
        &mut self,
        state: u32,
        key: &[u8],
        values: impl ExactSizeIterator<Item = &'a [u8]>,
    ) {
        let out = &mut self.out.bytes;
        put_uvar(out, u64::from(state));
        put_bytes(out, key);
        put_uvar(out, values.len() as u64);
        for v in values {
            put_bytes(out, v);
        }
    }

    /// A map state's entry: every user key and value of `key`.
    pub fn map<'a>(
        &mut self,
        state: u32,
        key: &[u8],
        entries: impl ExactSizeIterator<Item = (&'a [u8], &'a [u8])>,
    ) {
        let out = &mut self.out.bytes;
        put_uvar(out, u64::from(state));
        put_bytes(out, key);
        put_uvar(out, entries.len() as u64);
        for (k, v) in entries {
            put_bytes(out, k);
            put_bytes(out, v);
        }
    }

    /// A timer.
    pub fn timer(&mut self, domain: TimerDomain, time: i64, key: &[u8]) {
        let out = &mut self.out.bytes;
        out.push(match domain {
            TimerDomain::EventTime => 0,
            TimerDomain::ProcessingTime => 1,
        });
        out.extend_from_slice(&time.to_le_bytes());
        put_bytes(out, key);
    }

    /// The sections written.
    pub fn finish(mut self) -> Sections {
        self.close();
        self.out
    }
}

// ---- reading ----

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn done(&self) -> bool {
        self.at >= self.bytes.len()
    }

    fn short(&self) -> FormatError {
        FormatError(format!("the section ends early, at byte {}", self.at))
    }

    fn uvar(&mut self) -> Result<u64, FormatError> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.bytes.get(self.at).ok_or_else(|| self.short())?;
            self.at += 1;
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(FormatError(format!(
            "a length at byte {} does not end",
            self.at
        )))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        let end = self.at.checked_add(n).ok_or_else(|| self.short())?;
        let b = self.bytes.get(self.at..end).ok_or_else(|| self.short())?;
        self.at = end;
        Ok(b)
    }

    fn bytes(&mut self) -> Result<&'a [u8], FormatError> {
        let n = usize::try_from(self.uvar()?).unwrap_or(usize::MAX);
        self.take(n)
    }

    fn count(&mut self) -> Result<usize, FormatError> {
        let n = usize::try_from(self.uvar()?).unwrap_or(usize::MAX);
        // Every item takes at least one byte: a count past the rest is corrupt.
        if n > self.bytes.len() - self.at {
            return Err(FormatError(format!(
                "a count of {n} at byte {} exceeds the section",
                self.at
            )));
        }
        Ok(n)
    }
}

/// A keyed state's entry as read back.
#[derive(Debug, PartialEq, Eq)]
pub enum EntryValue<'a> {
    /// A value.
    Value(&'a [u8]),
    /// A list, oldest first.
    List(Vec<&'a [u8]>),
    /// A map's user keys and values.
    Map(Vec<(&'a [u8], &'a [u8])>),
}

/// One entry of a keyed section.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The index of its state in the part's [`StateDecl`]s.
    pub state: u32,
    /// The key.
    pub key: &'a [u8],
    /// What the key holds.
    pub value: EntryValue<'a>,
}

/// The entries of a keyed section whose states are `states`.
pub fn entries<'a>(
    states: &'a [StateDecl],
    section: &'a [u8],
) -> impl Iterator<Item = Result<Entry<'a>, FormatError>> + 'a {
    items(section, move |r| read_entry(states, r))
}

/// The items `read` reads one after another from `section`, until it ends or one does
/// not decode (that error is the last item).
fn items<'a, T>(
    section: &'a [u8],
    mut read: impl FnMut(&mut Reader<'a>) -> Result<T, FormatError> + 'a,
) -> impl Iterator<Item = Result<T, FormatError>> + 'a {
    let mut r = Reader {
        bytes: section,
        at: 0,
    };
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || r.done() {
            return None;
        }
        let item = read(&mut r);
        failed = item.is_err();
        Some(item)
    })
}

fn read_entry<'a>(states: &[StateDecl], r: &mut Reader<'a>) -> Result<Entry<'a>, FormatError> {
    let state = u32::try_from(r.uvar()?).unwrap_or(u32::MAX);
    let decl = states.get(state as usize).ok_or_else(|| {
        FormatError(format!(
            "an entry names state {state}, but the snapshot declares {} states",
            states.len()
        ))
    })?;
    let key = r.bytes()?;
    let value = match decl.kind {
        EntryKind::Value => EntryValue::Value(r.bytes()?),
        EntryKind::List => {
            let n = r.count()?;
            EntryValue::List((0..n).map(|_| r.bytes()).collect::<Result<_, _>>()?)
        }
        EntryKind::Map => {
            let n = r.count()?;
            EntryValue::Map(
                (0..n)
                    .map(|_| Ok((r.bytes()?, r.bytes()?)))
                    .collect::<Result<_, FormatError>>()?,
            )
        }
    };
    Ok(Entry { state, key, value })
}

/// The clock of a timer, as the format records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerDomain {
    /// Event time.
    EventTime,
    /// Processing time.
    ProcessingTime,
}

/// The timers of a timer section: domain, time, key.
pub fn timers(
    section: &[u8],
) -> impl Iterator<Item = Result<(TimerDomain, i64, &[u8]), FormatError>> + '_ {
    items(section, |r| {
        let domain = match r.take(1)?[0] {
            0 => TimerDomain::EventTime,
            1 => TimerDomain::ProcessingTime,
            other => {
                return Err(FormatError(format!(
                    "a timer at byte {} has domain {other}, which is neither 0 nor 1",
                    r.at - 1
                )));
            }
        };
        let time = i64::from_le_bytes(r.take(8)?.try_into().unwrap_or_default());
        Ok((domain, time, r.bytes()?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decls() -> Vec<StateDecl> {
        vec![
            StateDecl {
                name: "count".into(),
                kind: EntryKind::Value,
            },
            StateDecl {
                name: "seen".into(),
                kind: EntryKind::List,
            },
            StateDecl {
                name: "by-word".into(),
                kind: EntryKind::Map,
            },
        ]
    }

    #[test]
    fn entries_of_every_kind_read_back_per_key_group() -> Result<(), FormatError> {
        let mut w = SectionWriter::new();
        w.group(KeyGroup(3));
        w.value(0, b"a", b"1");
        w.list(1, b"a", [&b"x"[..], b"y"].into_iter());
        w.group(KeyGroup(4));
        w.group(KeyGroup(9));
        w.map(2, b"b", [(&b"k"[..], &b"v"[..])].into_iter());
        let sections = w.finish();
        assert_eq!(
            sections.groups.iter().map(|g| g.group).collect::<Vec<_>>(),
            [3, 9],
            "an empty key group takes no section"
        );
        let states = decls();
        let restored = KeyedState {
            states: states.clone(),
            sections,
        }
        .into_sections();
        let first: Vec<Entry<'_>> =
            entries(&states, &restored.groups[0].1).collect::<Result<_, _>>()?;
        assert_eq!(
            first,
            [
                Entry {
                    state: 0,
                    key: b"a",
                    value: EntryValue::Value(b"1")
                },
                Entry {
                    state: 1,
                    key: b"a",
                    value: EntryValue::List(vec![b"x", b"y"])
                },
            ]
        );
        let second: Vec<Entry<'_>> =
            entries(&states, &restored.groups[1].1).collect::<Result<_, _>>()?;
        assert_eq!(second[0].value, EntryValue::Map(vec![(b"k", b"v")]));
        Ok(())
    }

    #[test]
    fn a_truncated_or_garbled_section_is_an_error_not_a_panic() {
        let mut w = SectionWriter::new();
        w.group(KeyGroup(0));
        w.list(1, b"key", [&b"value"[..]].into_iter());
        let bytes = w.finish().bytes;
        let states = decls();
        for cut in 0..bytes.len() {
            let read: Result<Vec<_>, _> = entries(&states, &bytes[..cut]).collect();
            assert!(cut == 0 || read.is_err(), "cut at {cut} read as {read:?}");
        }
        let wrong_state = [7u8, 1, b'k', 1, b'v'];
        let err = entries(&states, &wrong_state)
            .collect::<Result<Vec<_>, _>>()
            .err();
        assert!(err.is_some_and(|e| e.0.contains("state 7")));
    }

    #[test]
    fn timers_read_back_with_their_domain() -> Result<(), FormatError> {
        let mut w = SectionWriter::new();
        w.group(KeyGroup(1));
        w.timer(TimerDomain::EventTime, -5, b"k");
        w.timer(TimerDomain::ProcessingTime, 1 << 40, b"");
        let s = w.finish();
        let read: Vec<_> = timers(&s.bytes).collect::<Result<_, _>>()?;
        assert_eq!(
            read,
            [
                (TimerDomain::EventTime, -5, &b"k"[..]),
                (TimerDomain::ProcessingTime, 1 << 40, &b""[..])
            ]
        );
        assert!(
            timers(&[2, 0, 0, 0, 0, 0, 0, 0, 0, 0])
                .next()
                .is_some_and(|t| t.is_err())
        );
        Ok(())
    }

    #[test]
    fn the_layout_puts_every_part_where_its_index_says() -> Result<(), FormatError> {
        let mut keyed = SectionWriter::new();
        keyed.group(KeyGroup(5));
        keyed.value(0, b"k", b"v");
        let mut timers_w = SectionWriter::new();
        timers_w.group(KeyGroup(5));
        timers_w.timer(TimerDomain::EventTime, 1, b"k");
        let keyed = keyed.finish();
        let timer_bytes = timers_w.finish();
        let parts = SnapshotParts {
            operator: Some(b"op".to_vec()),
            keyed: Some(KeyedState {
                states: decls(),
                sections: keyed.clone(),
            }),
            timers: Some(timer_bytes.clone()),
            key_groups: Some(KeyGroupRange { start: 4, end: 8 }),
            records_in: 12,
        };
        let (file, index) = lay_out(parts, None);
        let file = Bytes::from(file);
        let op = index.operator.ok_or(FormatError("no operator".into()))?;
        assert_eq!(&slice(&file, op.offset, op.len, "op")?[..], b"op");
        let t = index.timers.ok_or(FormatError("no timers".into()))?;
        assert_eq!(t.key_groups, GroupRange { start: 4, end: 8 });
        let g = t.groups[0];
        assert_eq!(
            &slice(&file, g.offset, g.len, "t")?[..],
            &timer_bytes.bytes[..]
        );
        assert!(slice(&file, 0, 1_000, "the keyed state").is_err());
        assert_eq!(index.records_in, 12);
        Ok(())
    }
}
