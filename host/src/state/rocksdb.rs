//! The RocksDB backend: keyed state in an embedded RocksDB instance, one column family
//! per state, snapshotted as RocksDB's native checkpoints and uploaded incrementally.
//!
//! It owns one working directory (the live database) and creates one sibling directory
//! per snapshot; it never touches checkpoint storage itself: the asynchronous phase
//! uploads the files a snapshot lists and removes that directory.
//!
//! # Layout
//!
//! On disk, with `dir` and `instance` from [`RocksDbOptions`]:
//!
//! ```text
//! <dir>/                           the live database, removed when the backend drops
//! <dir>/../<instance>-chk-<n>/     the native checkpoint of checkpoint n: hard links to
//!                                  the live SSTs plus copies of MANIFEST, CURRENT, OPTIONS
//! ```
//!
//! Inside the database:
//!
//! - column family `<kind>-<id>` (`value-0`, `list-1`, `map-2`) holds state `id`; the kind
//!   in the name picks the column family's options (the list merge operator) when a
//!   restored database is opened, before anything can be read from it;
//! - the default column family maps each column family's name to the state's name, so
//!   names are free-form and a restore gets every state back under its name, id and kind;
//! - every key of a state starts with its key group, two bytes big-endian, so that the
//!   key groups of a range are one contiguous key range (a restore drops the ones the
//!   subtask does not own; rescaling can extract them);
//! - value and list keys are `[group][key]`; map keys are
//!   `[group][key length, u32 big-endian][key][user key]`, so one key's map is one prefix
//!   and no two keys' prefixes overlap;
//! - a list is stored as its elements, each framed as `[length, u32 big-endian][bytes]`:
//!   an append is a RocksDB merge of one frame, and merging is concatenation.
//!
//! # Errors
//!
//! RocksDB and file-system failures become [`StateError::Corrupt`], whose message names
//! the state or directory and the operation that failed: `StateError` is shared by all
//! backends and has no variant for an I/O failure, and this module does not own it.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rocksdb::checkpoint::Checkpoint;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DBCompressionType,
    DBWithThreadMode, IteratorMode, MergeOperands, Options, ReadOptions, SingleThreaded,
    WriteBatch, WriteOptions,
};

use crate::runtime::ids::{CheckpointId, KeyGroup};
use crate::runtime::keygroup::KeyGroupRange;
use crate::state::{
    BackendSnapshot, KeyedStateBackend, LocalFile, LocalSnapshot, MapEntries, RestoredFiles,
    RestoredState, StateError, StateId, StateKind, StoredFile, Upload,
};
use crate::storage::FileHandle;

/// The database, single-threaded: the backend belongs to one subtask's thread, and this
/// mode hands out plain column family references instead of reference-counted ones.
type Db = DBWithThreadMode<SingleThreaded>;

/// The merge operator's name, recorded in the database's OPTIONS file.
const LIST_MERGE_OPERATOR: &str = "weir-list-append";

/// Where a stored file's handle path starts when the file is shared across checkpoints.
const SHARED_PREFIX: &str = "shared/";

/// The longest instance name: a shared file is named `<instance>-<sst name>`, storage
/// refuses names over 200 bytes, and RocksDB's SST names are about a dozen bytes.
const MAX_INSTANCE_LEN: usize = 128;

/// How one backend instance is set up. Build it with [`RocksDbOptions::new`], which
/// fills in the memory defaults, and change the fields that need it.
#[derive(Debug, Clone)]
pub struct RocksDbOptions {
    /// This instance's working directory, for the live database. Whatever is there is
    /// removed on [`RocksDbBackend::open`] and when the backend drops; snapshots go to
    /// siblings of it, so its parent must exist on the same file system.
    pub dir: PathBuf,
    /// A name unique to this backend instance (`count-2-<random>`): the prefix of its
    /// shared file names and snapshot directories, so that they never collide across
    /// subtasks, restores or attempts. ASCII letters, digits, `.`, `_` and `-`.
    pub instance: String,
    /// Whether snapshots upload only SSTs that no completed checkpoint stored yet.
    pub incremental: bool,
    /// The LRU block cache, shared by all states of this instance, which also holds the
    /// index and filter blocks so that they count against this limit.
    pub block_cache_bytes: usize,
    /// The size of one memtable of one state. Each snapshot flushes the memtables in its
    /// synchronous phase, so this bounds that pause as well as memory.
    pub write_buffer_bytes: usize,
    /// How many memtables a state may hold: the one being written and those waiting to
    /// be flushed.
    pub max_write_buffers: u16,
    /// The memtables of all states together: past it RocksDB flushes memtables early,
    /// so memory stays bounded however many states an operator opens.
    pub write_buffer_total_bytes: usize,
    /// Whether SSTs are LZ4-compressed instead of stored plain.
    pub lz4: bool,
}

impl RocksDbOptions {
    /// 64 MiB of block cache: a million entries of a 12-byte key and an 8-byte value
    /// take 21 MiB of SSTs (data, index and filter blocks together), so this keeps the
    /// working set of a subtask with a few million small entries in memory, while a
    /// host on a small machine can still run a dozen subtasks.
    pub const DEFAULT_BLOCK_CACHE_BYTES: usize = 64 << 20;
    /// 8 MiB memtables, not RocksDB's 64 MiB: a snapshot flushes the memtables in its
    /// synchronous phase, so their size bounds that pause. 8 MiB rather than less
    /// because, with in-place updates, it holds a working set of about 100k small keys,
    /// which then never reach the SSTs between snapshots: a keyed counter over 100k keys
    /// runs at ~400k records/s with 8 MiB and ~280-320k with 2 or 4 MiB, and the smaller
    /// memtables did not measurably shorten the synchronous phase (3-22 ms at p50 after
    /// 10k-100k updates, on a disk whose fsync is cheap).
    pub const DEFAULT_WRITE_BUFFER_BYTES: usize = 8 << 20;
    /// Two memtables: one takes writes while the other is flushed in the background;
    /// more would only buffer more memory ahead of a slow disk.
    pub const DEFAULT_MAX_WRITE_BUFFERS: u16 = 2;
    /// 32 MiB of memtables over all states: four full memtables, room for an operator
    /// with two busy states (each writing one memtable while flushing another) before
    /// RocksDB flushes early.
    pub const DEFAULT_WRITE_BUFFER_TOTAL_BYTES: usize = 32 << 20;

    /// Options for an instance in `dir` named `instance`, full snapshots, and the
    /// default memory limits.
    pub fn new(dir: impl Into<PathBuf>, instance: impl Into<String>) -> Self {
        Self {
            dir: dir.into(),
            instance: instance.into(),
            incremental: false,
            block_cache_bytes: Self::DEFAULT_BLOCK_CACHE_BYTES,
            write_buffer_bytes: Self::DEFAULT_WRITE_BUFFER_BYTES,
            max_write_buffers: Self::DEFAULT_MAX_WRITE_BUFFERS,
            write_buffer_total_bytes: Self::DEFAULT_WRITE_BUFFER_TOTAL_BYTES,
            // Uncompressed: the hot blocks sit in the block cache either way, and a
            // flush in the synchronous phase does not pay for compressing them.
            lz4: false,
        }
    }
}

/// One opened state.
struct State {
    name: String,
    kind: StateKind,
    /// Its column family, `<kind>-<id>`.
    column_family: String,
}

/// What each snapshot's upload reported, by checkpoint, until the checkpoint completes
/// or aborts. Shared with the `uploaded` callbacks, which run on the upload's thread.
type Uploads = Arc<Mutex<BTreeMap<CheckpointId, Vec<StoredFile>>>>;

/// Keyed state in an embedded RocksDB instance.
///
/// Writes skip RocksDB's write-ahead log: checkpoints give durability, as in Flink, and a
/// failure restores the last completed checkpoint, not the local database.
pub struct RocksDbBackend {
    groups: KeyGroupRange,
    options: RocksDbOptions,
    /// The open database; `None` only after a restore failed half-way, which leaves the
    /// backend unusable until the next restore.
    db: Option<Db>,
    /// Kept to build the options of column families created later.
    cache: Cache,
    /// The states by id.
    states: Vec<State>,
    write: WriteOptions,
    read: ReadOptions,
    /// Reused for every key built, so that a call does not allocate one.
    key: RefCell<Vec<u8>>,
    /// Reused for list frames.
    frame: RefCell<Vec<u8>>,
    /// SST name → where the last completed checkpoint (or the restored one) stored it.
    confirmed: HashMap<String, FileHandle>,
    uploads: Uploads,
}

/// The name of a state kind in column family names.
fn kind_name(kind: StateKind) -> &'static str {
    match kind {
        StateKind::Value => "value",
        StateKind::List => "list",
        StateKind::Map => "map",
    }
}

/// The column family of state `id`.
fn column_family_name(kind: StateKind, id: u32) -> String {
    format!("{}-{id}", kind_name(kind))
}

/// The kind and id of a column family named by [`column_family_name`].
fn parse_column_family_name(name: &str) -> Option<(StateKind, u32)> {
    let (kind, id) = name.split_once('-')?;
    let kind = match kind {
        "value" => StateKind::Value,
        "list" => StateKind::List,
        "map" => StateKind::Map,
        _ => return None,
    };
    let canonical = !id.is_empty()
        && id.bytes().all(|b| b.is_ascii_digit())
        && (id == "0" || !id.starts_with('0'));
    if !canonical {
        return None;
    }
    Some((kind, id.parse().ok()?))
}

/// Refuses an instance name that could not prefix a stored file name.
fn validate_instance(instance: &str) -> Result<(), StateError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if instance.is_empty()
        || instance.len() > MAX_INSTANCE_LEN
        || instance.starts_with('.')
        || !instance.chars().all(allowed)
    {
        return Err(StateError::Corrupt(format!(
            "the RocksDB instance name `{instance}` is not 1 to {MAX_INSTANCE_LEN} ASCII \
             letters, digits, `.`, `_` or `-` not starting with `.` (host bug)"
        )));
    }
    Ok(())
}

/// `[group][key]`: the key of a value or list entry.
fn encode_key(buf: &mut Vec<u8>, group: KeyGroup, key: &[u8]) {
    buf.clear();
    buf.extend_from_slice(&group.0.to_be_bytes());
    buf.extend_from_slice(key);
}

/// `[group][key length][key]`: the prefix all entries of one key's map share. The length
/// makes it unambiguous: a longer key that starts with `key` has another length.
fn encode_map_prefix(buf: &mut Vec<u8>, group: KeyGroup, key: &[u8]) -> Result<(), StateError> {
    let len = u32::try_from(key.len()).map_err(|_| {
        StateError::Corrupt(format!(
            "a key of {} bytes is too long for a map state (at most 4 GiB)",
            key.len()
        ))
    })?;
    buf.clear();
    buf.extend_from_slice(&group.0.to_be_bytes());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(key);
    Ok(())
}

/// `[group][key length][key][user key]`: the key of one map entry.
fn encode_map_key(
    buf: &mut Vec<u8>,
    group: KeyGroup,
    key: &[u8],
    user_key: &[u8],
) -> Result<(), StateError> {
    encode_map_prefix(buf, group, key)?;
    buf.extend_from_slice(user_key);
    Ok(())
}

/// Appends one list element as `[length][bytes]`.
fn push_frame(buf: &mut Vec<u8>, value: &[u8]) -> Result<(), StateError> {
    let len = u32::try_from(value.len()).map_err(|_| {
        StateError::Corrupt(format!(
            "a list element of {} bytes is too long (at most 4 GiB)",
            value.len()
        ))
    })?;
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(value);
    Ok(())
}

/// The elements of a stored list, oldest first.
fn decode_frames(mut bytes: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (len, rest) = bytes.split_first_chunk::<4>()?;
        let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
        if rest.len() < len {
            return None;
        }
        let (value, rest) = rest.split_at(len);
        out.push(value.to_vec());
        bytes = rest;
    }
    Some(out)
}

/// The list merge operator: operands are whole frames, so appending them to the
/// existing value in order is the merge, and it is associative, so RocksDB may also
/// combine operands before it sees the base value.
fn append_frames(
    _key: &[u8],
    existing: Option<&[u8]>,
    operands: &MergeOperands,
) -> Option<Vec<u8>> {
    let existing = existing.unwrap_or_default();
    let len = existing.len() + operands.iter().map(<[u8]>::len).sum::<usize>();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(existing);
    for operand in operands {
        out.extend_from_slice(operand);
    }
    Some(out)
}

/// The first key after every key that starts with `prefix`, if there is one (there is
/// none when `prefix` is all `0xff`).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let last = prefix.iter().rposition(|&b| b != u8::MAX)?;
    let mut end = prefix[..=last].to_vec();
    end[last] += 1;
    Some(end)
}

/// How the asynchronous phase stores file `name` of a native checkpoint.
///
/// Only SSTs are shared: they are immutable and their names are never reused by one
/// database, so `<instance>-<name>` names one content. An SST the last completed
/// checkpoint stored is referred to again. MANIFEST, CURRENT, OPTIONS and logs change
/// under the same names and belong to one checkpoint.
fn upload_for(
    name: &str,
    incremental: bool,
    instance: &str,
    confirmed: &HashMap<String, FileHandle>,
) -> Upload {
    if !incremental || !name.ends_with(".sst") {
        return Upload::Private;
    }
    match confirmed.get(name) {
        Some(handle) => Upload::Reuse(handle.clone()),
        None => Upload::Shared(format!("{instance}-{name}")),
    }
}

/// The SSTs among `files` that are stored in `shared/`, which later checkpoints may
/// refer to: the reuse set once the checkpoint that stored them completed.
fn shared_ssts(files: &[StoredFile]) -> HashMap<String, FileHandle> {
    files
        .iter()
        .filter(|f| f.name.ends_with(".sst") && f.handle.path.starts_with(SHARED_PREFIX))
        .map(|f| (f.name.clone(), f.handle.clone()))
        .collect()
}

/// Locks the uploads. A callback that panicked while holding the lock left the map
/// as it was or with one entry more (each change is one insert or remove), so the data
/// is sound to use after poisoning.
fn lock(uploads: &Uploads) -> MutexGuard<'_, BTreeMap<CheckpointId, Vec<StoredFile>>> {
    uploads.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A failure of RocksDB or the file system, as [`StateError::Corrupt`] (see the module
/// docs for why).
fn failure(what: fmt::Arguments<'_>, error: impl fmt::Display) -> StateError {
    StateError::Corrupt(format!("{what} failed: {error}"))
}

/// Removes `dir` if it exists.
fn remove_dir_if_exists(dir: &Path) -> std::io::Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Moves the files of `from` to `to`, which does not exist: a rename when both are on one
/// file system, else a copy of every file and the removal of `from`.
fn take_over(from: &Path, to: &Path) -> std::io::Result<()> {
    if fs::rename(from, to).is_ok() {
        return Ok(());
    }
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    fs::remove_dir_all(from)
}

impl RocksDbBackend {
    /// A backend with no state for the key groups in `groups`, in a new database in
    /// `options.dir` (whatever was there is removed).
    pub fn open(groups: KeyGroupRange, options: RocksDbOptions) -> Result<Self, StateError> {
        validate_instance(&options.instance)?;
        if options.dir.parent().is_none() {
            return Err(StateError::Corrupt(format!(
                "the RocksDB directory {} has no parent to put snapshots in (user config)",
                options.dir.display()
            )));
        }
        let dir = options.dir.display();
        remove_dir_if_exists(&options.dir)
            .and_then(|()| fs::create_dir_all(&options.dir))
            .map_err(|e| failure(format_args!("creating the RocksDB directory {dir}"), e))?;
        let cache = Cache::new_lru_cache(options.block_cache_bytes);
        let db = Db::open(&db_options(&options, &cache), &options.dir)
            .map_err(|e| failure(format_args!("opening RocksDB in {dir}"), e))?;
        let mut write = WriteOptions::default();
        // Checkpoints give durability: a failure restores the last checkpoint, never
        // the local database, so a write-ahead log would be written and never read.
        write.disable_wal(true);
        Ok(Self {
            groups,
            options,
            db: Some(db),
            cache,
            states: Vec::new(),
            write,
            read: ReadOptions::default(),
            key: RefCell::new(Vec::new()),
            frame: RefCell::new(Vec::new()),
            confirmed: HashMap::new(),
            uploads: Arc::default(),
        })
    }

    /// The directory of checkpoint `checkpoint`'s native checkpoint: beside the live
    /// database, never inside it, so it outlives the backend until it is uploaded.
    fn snapshot_dir(&self, checkpoint: CheckpointId) -> PathBuf {
        let name = format!("{}-chk-{}", self.options.instance, checkpoint.0);
        match self.options.dir.parent() {
            Some(parent) => parent.join(name),
            // `open` refused a directory without a parent.
            None => PathBuf::from(name),
        }
    }

    fn db(&self) -> Result<&Db, StateError> {
        self.db.as_ref().ok_or_else(|| {
            StateError::Corrupt(format!(
                "the RocksDB backend in {} is unusable: a restore failed",
                self.options.dir.display()
            ))
        })
    }

    /// The database and the column family of `state`, which must be of `kind`.
    fn state(&self, state: StateId, kind: StateKind) -> Result<(&Db, &ColumnFamily), StateError> {
        let entry = usize::try_from(state.0)
            .ok()
            .and_then(|i| self.states.get(i))
            .ok_or(StateError::UnknownState(state))?;
        if entry.kind != kind {
            return Err(StateError::WrongKind(state, kind));
        }
        let db = self.db()?;
        let cf = db.cf_handle(&entry.column_family).ok_or_else(|| {
            StateError::Corrupt(format!(
                "the column family {} of state `{}` is missing in {} (host bug)",
                entry.column_family,
                entry.name,
                self.options.dir.display()
            ))
        })?;
        Ok((db, cf))
    }

    /// A RocksDB failure of operation `op` on `state`.
    fn state_failure(&self, state: StateId, op: &str, error: rocksdb::Error) -> StateError {
        let name = usize::try_from(state.0)
            .ok()
            .and_then(|i| self.states.get(i))
            .map_or("?", |s| s.name.as_str());
        failure(
            format_args!(
                "RocksDB {op} on state `{name}` in {}",
                self.options.dir.display()
            ),
            error,
        )
    }

    /// Runs `f` with the key buffer, filled by `encode`.
    fn with_key<R>(
        &self,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), StateError>,
        f: impl FnOnce(&[u8]) -> Result<R, StateError>,
    ) -> Result<R, StateError> {
        match self.key.try_borrow_mut() {
            Ok(mut buf) => {
                encode(&mut buf)?;
                f(&buf)
            }
            // Only a re-entrant call finds the buffer taken; it gets one of its own.
            Err(_) => {
                let mut buf = Vec::new();
                encode(&mut buf)?;
                f(&buf)
            }
        }
    }

    /// Runs `f` with the frame buffer, emptied.
    fn with_frame<R>(
        &self,
        f: impl FnOnce(&mut Vec<u8>) -> Result<R, StateError>,
    ) -> Result<R, StateError> {
        match self.frame.try_borrow_mut() {
            Ok(mut buf) => {
                buf.clear();
                f(&mut buf)
            }
            Err(_) => f(&mut Vec::new()),
        }
    }

    /// Deletes every entry of `state` whose key starts with `prefix`.
    fn delete_prefix(
        &self,
        state: StateId,
        db: &Db,
        cf: &ColumnFamily,
        prefix: &[u8],
    ) -> Result<(), StateError> {
        // One point tombstone per entry, as Flink clears a map: range tombstones are
        // cheaper to write but every later read in their range pays for them.
        let mut batch = WriteBatch::default();
        let mut it = db.raw_iterator_cf_opt(cf, bounded_read(prefix));
        it.seek(prefix);
        while let Some(key) = it.key().filter(|k| k.starts_with(prefix)) {
            batch.delete_cf(cf, key);
            it.next();
        }
        it.status()
            .map_err(|e| self.state_failure(state, "scan", e))?;
        drop(it);
        if batch.is_empty() {
            return Ok(());
        }
        db.write_opt(batch, &self.write)
            .map_err(|e| self.state_failure(state, "delete", e))
    }

    /// Reads the states of a restored database from its default column family.
    fn recover_states(&self, db: &Db) -> Result<Vec<State>, StateError> {
        let dir = self.options.dir.display();
        let mut by_id = BTreeMap::new();
        for entry in db.iterator(IteratorMode::Start) {
            let (cf, name) =
                entry.map_err(|e| failure(format_args!("reading the states of {dir}"), e))?;
            let cf = String::from_utf8(cf.into_vec()).ok();
            let name = String::from_utf8(name.into_vec()).ok();
            let parsed = cf.as_deref().and_then(parse_column_family_name);
            let (Some(cf), Some(name), Some((kind, id))) = (cf, name, parsed) else {
                return Err(StateError::Corrupt(format!(
                    "the restored RocksDB database in {dir} has a state entry that does not decode"
                )));
            };
            if db.cf_handle(&cf).is_none() {
                return Err(StateError::Corrupt(format!(
                    "the restored RocksDB database in {dir} lacks column family {cf} of state `{name}`"
                )));
            }
            by_id.insert(
                id,
                State {
                    name,
                    kind,
                    column_family: cf,
                },
            );
        }
        // Ids are handed out in order from 0, so a gap means a state is missing.
        let contiguous = by_id
            .keys()
            .zip(0u32..)
            .all(|(&id, expected)| id == expected);
        if !contiguous {
            return Err(StateError::Corrupt(format!(
                "the restored RocksDB database in {dir} misses a state: its ids are {:?}",
                by_id.keys().collect::<Vec<_>>()
            )));
        }
        Ok(by_id.into_values().collect())
    }

    /// Drops the key groups outside this backend's range from a restored state.
    fn clip_to_groups(&self, db: &Db, state: &State) -> Result<(), StateError> {
        let what = || {
            format!(
                "dropping the key groups outside {}..{} of state `{}` in {}",
                self.groups.start,
                self.groups.end,
                state.name,
                self.options.dir.display()
            )
        };
        let Some(cf) = db.cf_handle(&state.column_family) else {
            return Ok(());
        };
        let start = self.groups.start.to_be_bytes();
        let end = self.groups.end.to_be_bytes();
        let (below, above) = {
            let mut it = db.raw_iterator_cf_opt(cf, ReadOptions::default());
            it.seek_to_first();
            let below = it.key().is_some_and(|k| k < start.as_slice());
            it.seek_to_last();
            // Just past the last key, so that a range ending there covers all keys.
            let above = it.key().filter(|k| *k >= end.as_slice()).map(|k| {
                let mut past = k.to_vec();
                past.push(0);
                past
            });
            it.status()
                .map_err(|e| failure(format_args!("{}", what()), e))?;
            (below, above)
        };
        if below {
            db.delete_range_cf_opt(cf, &[][..], &start[..], &self.write)
                .map_err(|e| failure(format_args!("{}", what()), e))?;
        }
        if let Some(past) = above {
            db.delete_range_cf_opt(cf, &end[..], past.as_slice(), &self.write)
                .map_err(|e| failure(format_args!("{}", what()), e))?;
        }
        Ok(())
    }

    /// The files of the native checkpoint in `dir`, sorted by name, each with how to
    /// upload it.
    fn list_snapshot(&self, dir: &Path) -> Result<Vec<LocalFile>, StateError> {
        let shown = dir.display();
        let listing_failed =
            |e: std::io::Error| failure(format_args!("listing the RocksDB checkpoint {shown}"), e);
        let mut files = Vec::new();
        for entry in fs::read_dir(dir).map_err(listing_failed)? {
            let entry = entry.map_err(listing_failed)?;
            let name = entry.file_name().into_string().map_err(|name| {
                StateError::Corrupt(format!(
                    "the RocksDB checkpoint {shown} holds a file whose name is not UTF-8: {name:?}"
                ))
            })?;
            let upload = upload_for(
                &name,
                self.options.incremental,
                &self.options.instance,
                &self.confirmed,
            );
            files.push(LocalFile {
                name,
                path: entry.path(),
                upload,
            });
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(files)
    }

    /// Opens the database `restore` moved into the working directory.
    fn open_restored(&self) -> Result<Db, StateError> {
        let dir = self.options.dir.display();
        let db_opts = db_options(&self.options, &self.cache);
        let names = Db::list_cf(&db_opts, &self.options.dir)
            .map_err(|e| failure(format_args!("listing the column families in {dir}"), e))?;
        let mut descriptors = Vec::new();
        for name in names.into_iter().filter(|n| n != "default") {
            let Some((kind, _)) = parse_column_family_name(&name) else {
                return Err(StateError::Corrupt(format!(
                    "the restored RocksDB database in {dir} has an unknown column family {name}"
                )));
            };
            let opts = column_family_options(&self.options, &self.cache, kind);
            descriptors.push(ColumnFamilyDescriptor::new(name, opts));
        }
        Db::open_cf_descriptors(&db_opts, &self.options.dir, descriptors).map_err(|e| {
            failure(
                format_args!("opening the restored RocksDB database in {dir}"),
                e,
            )
        })
    }
}

/// Read options for a scan of the keys that start with `prefix`, bounded so that RocksDB
/// stops at the prefix instead of reading into the next key's blocks.
fn bounded_read(prefix: &[u8]) -> ReadOptions {
    let mut read = ReadOptions::default();
    if let Some(end) = prefix_end(prefix) {
        read.set_iterate_upper_bound(end);
    }
    read
}

/// The options of the database and of its default column family, which holds the state
/// names only.
fn db_options(options: &RocksDbOptions, cache: &Cache) -> Options {
    let mut opts = column_family_options(options, cache, StateKind::Value);
    opts.create_if_missing(true);
    // One subtask thread writes, so concurrent memtable writes buy nothing, and they
    // exclude the in-place updates `column_family_options` turns on.
    opts.set_allow_concurrent_memtable_write(false);
    opts.set_db_write_buffer_size(options.write_buffer_total_bytes);
    // RocksDB's own LOG: four files of at most 4 MiB, enough to diagnose a failure
    // without filling the disk of a long-running job.
    opts.set_max_log_file_size(4 << 20);
    opts.set_keep_log_file_num(4);
    opts
}

/// The options of a state's column family.
fn column_family_options(options: &RocksDbOptions, cache: &Cache, kind: StateKind) -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    // Ten bits a key: a 1% false-positive rate, so a get of a key that is not there
    // (a counter's first record per key) rarely reads a data block.
    table.set_bloom_filter(10.0, false);
    // Index and filter blocks in the cache count against its limit instead of growing
    // with the number of SSTs; L0's are pinned as they are read on every get.
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    let mut opts = Options::default();
    opts.set_block_based_table_factory(&table);
    opts.set_write_buffer_size(options.write_buffer_bytes);
    opts.set_max_write_buffer_number(i32::from(options.max_write_buffers));
    // Overwrite a value in the memtable when the new one is no larger (a counter's
    // always is): the memtable then holds each hot key once instead of once per update,
    // so more of the working set is served from it and a snapshot's flush writes only
    // the keys changed since the last one. Sound here because nothing reads a
    // point-in-time view of the memtable: there are no RocksDB snapshots, scans run
    // on the writing thread, and flushes read only immutable memtables.
    opts.set_inplace_update_support(true);
    // A bloom filter over the memtable's keys (10% of its size), so that a get of a key
    // the memtable lacks skips the skip-list search: +7-10% on the counter benchmark.
    opts.set_memtable_whole_key_filtering(true);
    opts.set_memtable_prefix_bloom_ratio(0.1);
    opts.set_compression_type(if options.lz4 {
        DBCompressionType::Lz4
    } else {
        DBCompressionType::None
    });
    if kind == StateKind::List {
        opts.set_merge_operator_associative(LIST_MERGE_OPERATOR, append_frames);
    }
    opts
}

impl KeyedStateBackend for RocksDbBackend {
    fn open_state(&mut self, name: &str, kind: StateKind) -> Result<StateId, StateError> {
        if let Some(i) = self.states.iter().position(|s| s.name == name) {
            let existing = self.states[i].kind;
            if existing != kind {
                return Err(StateError::KindMismatch {
                    name: name.to_owned(),
                    existing,
                    requested: kind,
                });
            }
            return u32::try_from(i)
                .map(StateId)
                .map_err(|_| StateError::Corrupt(format!("state `{name}` has no u32 id")));
        }
        let id = u32::try_from(self.states.len()).map_err(|_| {
            StateError::Corrupt(format!("cannot open state `{name}`: too many states"))
        })?;
        let column_family = column_family_name(kind, id);
        let opts = column_family_options(&self.options, &self.cache, kind);
        let dir = self.options.dir.display();
        let db = self.db.as_mut().ok_or_else(|| {
            StateError::Corrupt(format!(
                "the RocksDB backend in {dir} is unusable: a restore failed"
            ))
        })?;
        db.create_cf(&column_family, &opts).map_err(|e| {
            failure(
                format_args!("creating column family {column_family} for state `{name}` in {dir}"),
                e,
            )
        })?;
        // Recorded in the database, so that a snapshot carries the state's name.
        db.put_opt(column_family.as_bytes(), name.as_bytes(), &self.write)
            .map_err(|e| failure(format_args!("recording state `{name}` in {dir}"), e))?;
        self.states.push(State {
            name: name.to_owned(),
            kind,
            column_family,
        });
        Ok(StateId(id))
    }

    fn value_get(
        &self,
        state: StateId,
        group: KeyGroup,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, StateError> {
        let (db, cf) = self.state(state, StateKind::Value)?;
        self.with_key(
            |buf| {
                encode_key(buf, group, key);
                Ok(())
            },
            |k| {
                db.get_pinned_cf_opt(cf, k, &self.read)
                    .map(|v| v.map(|v| v.to_vec()))
                    .map_err(|e| self.state_failure(state, "get", e))
            },
        )
    }

    fn value_set(
        &mut self,
        state: StateId,
        group: KeyGroup,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<(), StateError> {
        let (db, cf) = self.state(state, StateKind::Value)?;
        self.with_key(
            |buf| {
                encode_key(buf, group, &key);
                Ok(())
            },
            |k| {
                db.put_cf_opt(cf, k, &value, &self.write)
                    .map_err(|e| self.state_failure(state, "put", e))
            },
        )
    }

    fn list_get(
        &self,
        state: StateId,
        group: KeyGroup,
        key: &[u8],
    ) -> Result<Vec<Vec<u8>>, StateError> {
        let (db, cf) = self.state(state, StateKind::List)?;
        let stored = self.with_key(
            |buf| {
                encode_key(buf, group, key);
                Ok(())
            },
            |k| {
                db.get_pinned_cf_opt(cf, k, &self.read)
                    .map_err(|e| self.state_failure(state, "get", e))
            },
        )?;
        match stored {
            None => Ok(Vec::new()),
            Some(bytes) => decode_frames(&bytes).ok_or_else(|| {
                StateError::Corrupt(format!(
                    "a list of state `{}` in {} does not decode",
                    self.states
                        .get(usize::try_from(state.0).unwrap_or(usize::MAX))
                        .map_or("?", |s| s.name.as_str()),
                    self.options.dir.display()
                ))
            }),
        }
    }

    fn list_add(
        &mut self,
        state: StateId,
        group: KeyGroup,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<(), StateError> {
        let (db, cf) = self.state(state, StateKind::List)?;
        self.with_frame(|frame| {
            push_frame(frame, &value)?;
            self.with_key(
                |buf| {
                    encode_key(buf, group, &key);
                    Ok(())
                },
                |k| {
                    db.merge_cf_opt(cf, k, &*frame, &self.write)
                        .map_err(|e| self.state_failure(state, "merge", e))
                },
            )
        })
    }

    fn list_update(
        &mut self,
        state: StateId,
        group: KeyGroup,
        key: Vec<u8>,
        values: Vec<Vec<u8>>,
    ) -> Result<(), StateError> {
        let (db, cf) = self.state(state, StateKind::List)?;
        self.with_frame(|frame| {
            for value in &values {
                push_frame(frame, value)?;
            }
            self.with_key(
                |buf| {
                    encode_key(buf, group, &key);
                    Ok(())
                },
                |k| {
                    // An empty list is no entry, as in the heap backend.
                    let done = if values.is_empty() {
                        db.delete_cf_opt(cf, k, &self.write)
                    } else {
                        db.put_cf_opt(cf, k, &*frame, &self.write)
                    };
                    done.map_err(|e| self.state_failure(state, "put", e))
                },
            )
        })
    }

    fn map_get(
        &self,
        state: StateId,
        group: KeyGroup,
        key: &[u8],
        user_key: &[u8],
    ) -> Result<Option<Vec<u8>>, StateError> {
        let (db, cf) = self.state(state, StateKind::Map)?;
        self.with_key(
            |buf| encode_map_key(buf, group, key, user_key),
            |k| {
                db.get_pinned_cf_opt(cf, k, &self.read)
                    .map(|v| v.map(|v| v.to_vec()))
                    .map_err(|e| self.state_failure(state, "get", e))
            },
        )
    }

    fn map_put(
        &mut self,
        state: StateId,
        group: KeyGroup,
        key: Vec<u8>,
        user_key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<(), StateError> {
        let (db, cf) = self.state(state, StateKind::Map)?;
        self.with_key(
            |buf| encode_map_key(buf, group, &key, &user_key),
            |k| {
                db.put_cf_opt(cf, k, &value, &self.write)
                    .map_err(|e| self.state_failure(state, "put", e))
            },
        )
    }

    fn map_remove(
        &mut self,
        state: StateId,
        group: KeyGroup,
        key: &[u8],
        user_key: &[u8],
    ) -> Result<(), StateError> {
        let (db, cf) = self.state(state, StateKind::Map)?;
        self.with_key(
            |buf| encode_map_key(buf, group, key, user_key),
            |k| {
                db.delete_cf_opt(cf, k, &self.write)
                    .map_err(|e| self.state_failure(state, "delete", e))
            },
        )
    }

    fn map_entries(
        &self,
        state: StateId,
        group: KeyGroup,
        key: &[u8],
    ) -> Result<MapEntries, StateError> {
        let (db, cf) = self.state(state, StateKind::Map)?;
        self.with_key(
            |buf| encode_map_prefix(buf, group, key),
            |prefix| {
                let mut entries = Vec::new();
                let mut it = db.raw_iterator_cf_opt(cf, bounded_read(prefix));
                it.seek(prefix);
                while let Some((k, v)) = it.item().filter(|(k, _)| k.starts_with(prefix)) {
                    entries.push((k[prefix.len()..].to_vec(), v.to_vec()));
                    it.next();
                }
                it.status()
                    .map_err(|e| self.state_failure(state, "scan", e))?;
                Ok(entries)
            },
        )
    }

    fn clear(&mut self, state: StateId, group: KeyGroup, key: &[u8]) -> Result<(), StateError> {
        let kind = usize::try_from(state.0)
            .ok()
            .and_then(|i| self.states.get(i))
            .map(|s| s.kind)
            .ok_or(StateError::UnknownState(state))?;
        let (db, cf) = self.state(state, kind)?;
        match kind {
            StateKind::Value | StateKind::List => self.with_key(
                |buf| {
                    encode_key(buf, group, key);
                    Ok(())
                },
                |k| {
                    db.delete_cf_opt(cf, k, &self.write)
                        .map_err(|e| self.state_failure(state, "delete", e))
                },
            ),
            StateKind::Map => self.with_key(
                |buf| encode_map_prefix(buf, group, key),
                |prefix| self.delete_prefix(state, db, cf, prefix),
            ),
        }
    }

    fn snapshot(&mut self, checkpoint: CheckpointId) -> Result<BackendSnapshot, StateError> {
        let dir = self.snapshot_dir(checkpoint);
        let shown = dir.display();
        let db = self.db()?;
        // A native checkpoint flushes the memtables (the writes skipped the log, so the
        // SSTs must hold them) and hard-links the SSTs: its cost is the memtables' size,
        // bounded by the write buffer options, not the state's size.
        let created = Checkpoint::new(db).and_then(|c| c.create_checkpoint(&dir));
        if let Err(e) = created {
            // Best effort: a half-made directory is of no use to anyone, and the error
            // reported is RocksDB's.
            let _ = remove_dir_if_exists(&dir);
            return Err(failure(
                format_args!("creating the RocksDB checkpoint {shown}"),
                e,
            ));
        }
        let files = match self.list_snapshot(&dir) {
            Ok(files) => files,
            Err(e) => {
                // Best effort, as above: the snapshot is not handed to the uploader, so
                // nothing else would remove its directory.
                let _ = remove_dir_if_exists(&dir);
                return Err(e);
            }
        };
        let uploads = Arc::clone(&self.uploads);
        let uploaded = Box::new(move |stored: &[StoredFile]| {
            lock(&uploads).insert(checkpoint, stored.to_vec());
        });
        Ok(BackendSnapshot::Files(LocalSnapshot {
            dir,
            files,
            uploaded,
        }))
    }

    /// Takes the restored directory over by renaming it to the working directory (or
    /// copying its files when it is on another file system), then opens it.
    fn restore(&mut self, restored: RestoredState<'_>) -> Result<(), StateError> {
        let (from, files) = match restored {
            RestoredState::Encoded(_) => {
                return Err(StateError::Corrupt(
                    "this checkpoint was written by the heap backend (its keyed state is \
                     encoded bytes, not RocksDB files): restore it with `backend = \"heap\"`"
                        .to_owned(),
                ));
            }
            RestoredState::Files(RestoredFiles { dir, files }) => (dir, files),
        };
        // Close the live database before its directory is replaced.
        self.db = None;
        self.states.clear();
        self.confirmed.clear();
        lock(&self.uploads).clear();
        // Restoring from the working directory itself opens it in place.
        if from != self.options.dir {
            let dir = self.options.dir.display();
            remove_dir_if_exists(&self.options.dir)
                .and_then(|()| take_over(&from, &self.options.dir))
                .map_err(|e| {
                    failure(
                        format_args!("moving the restored files from {} to {dir}", from.display()),
                        e,
                    )
                })?;
        }
        let db = self.open_restored()?;
        let states = self.recover_states(&db)?;
        for state in &states {
            self.clip_to_groups(&db, state)?;
        }
        self.db = Some(db);
        self.states = states;
        // The restored checkpoint is completed, so its shared SSTs can be referred to.
        self.confirmed = shared_ssts(&files);
        Ok(())
    }

    fn checkpoint_complete(&mut self, checkpoint: CheckpointId) {
        let mut uploads = lock(&self.uploads);
        // Only the last completed checkpoint's files are certain to be kept by
        // retention. Without its report (it completed before its upload reported, or it
        // is not one of ours), reuse nothing rather than something retention may delete.
        self.confirmed = uploads
            .remove(&checkpoint)
            .map(|files| shared_ssts(&files))
            .unwrap_or_default();
        // Reports of older checkpoints can no longer complete usefully.
        *uploads = uploads.split_off(&CheckpointId(checkpoint.0.saturating_add(1)));
    }

    fn checkpoint_aborted(&mut self, checkpoint: CheckpointId) {
        lock(&self.uploads).remove(&checkpoint);
    }
}

impl Drop for RocksDbBackend {
    fn drop(&mut self) {
        // Close the database before removing its files.
        self.db = None;
        // Best effort: a leftover directory is wiped by the next `open` on it.
        let _ = fs::remove_dir_all(&self.options.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::ids::SubtaskIndex;
    use crate::state::HeapBackend;
    use proptest::prelude::*;
    use std::collections::BTreeSet;
    use std::error::Error;

    type TestResult = Result<(), Box<dyn Error>>;

    /// Every key group of a job with maximum parallelism 8.
    fn all_groups() -> KeyGroupRange {
        KeyGroupRange::for_subtask(SubtaskIndex(0), 1, 8)
    }

    fn options(root: &Path, instance: &str, incremental: bool) -> RocksDbOptions {
        let mut options = RocksDbOptions::new(root.join(instance), instance);
        options.incremental = incremental;
        options
    }

    fn backend(
        root: &Path,
        instance: &str,
        incremental: bool,
    ) -> Result<RocksDbBackend, StateError> {
        RocksDbBackend::open(all_groups(), options(root, instance, incremental))
    }

    fn files(snapshot: BackendSnapshot) -> Result<LocalSnapshot, Box<dyn Error>> {
        match snapshot {
            BackendSnapshot::Files(local) => Ok(local),
            BackendSnapshot::Encoded(_) => Err("the RocksDB backend encoded its snapshot".into()),
        }
    }

    /// Does what the asynchronous phase does with a snapshot, into a checkpoint store in
    /// `store`: stores each file as its `upload` says, reports where they went and removes
    /// the snapshot's directory.
    fn upload(
        store: &Path,
        checkpoint: u64,
        local: LocalSnapshot,
    ) -> Result<Vec<StoredFile>, Box<dyn Error>> {
        let mut stored = Vec::new();
        for file in &local.files {
            let path = match &file.upload {
                Upload::Reuse(handle) => {
                    assert!(
                        store.join(&handle.path).is_file(),
                        "{handle:?} was never stored"
                    );
                    handle.path.clone()
                }
                Upload::Shared(name) => format!("{SHARED_PREFIX}{name}"),
                Upload::Private => format!("chk-{checkpoint}/{}", file.name),
            };
            let target = store.join(&path);
            if !matches!(file.upload, Upload::Reuse(_)) {
                fs::create_dir_all(target.parent().ok_or("a stored file has no parent")?)?;
                fs::copy(&file.path, &target)?;
            }
            let size = fs::metadata(&target)?.len();
            stored.push(StoredFile {
                name: file.name.clone(),
                handle: FileHandle {
                    path,
                    size,
                    checksum: 0,
                },
            });
        }
        (local.uploaded)(&stored);
        fs::remove_dir_all(&local.dir)?;
        Ok(stored)
    }

    /// Downloads a checkpoint's files from `store` into a fresh directory, as a restore
    /// does before it hands them to the backend.
    fn download(
        store: &Path,
        stored: &[StoredFile],
        into: &Path,
    ) -> Result<PathBuf, Box<dyn Error>> {
        fs::create_dir_all(into)?;
        for file in stored {
            fs::copy(store.join(&file.handle.path), into.join(&file.name))?;
        }
        Ok(into.to_path_buf())
    }

    fn sst_uploads(local: &LocalSnapshot) -> Vec<&Upload> {
        local
            .files
            .iter()
            .filter(|f| f.name.ends_with(".sst"))
            .map(|f| &f.upload)
            .collect()
    }

    /// The same calls on any backend, and what each read returned.
    fn scenario(b: &mut dyn KeyedStateBackend) -> Result<Vec<String>, StateError> {
        let mut seen = Vec::new();
        let v = b.open_state("v", StateKind::Value)?;
        let l = b.open_state("l", StateKind::List)?;
        let m = b.open_state("m", StateKind::Map)?;
        let (g1, g2) = (KeyGroup(1), KeyGroup(6));

        seen.push(format!("{:?}", b.value_get(v, g1, b"k")?));
        b.value_set(v, g1, b"k".to_vec(), b"1".to_vec())?;
        b.value_set(v, g1, b"k".to_vec(), b"2".to_vec())?;
        b.value_set(v, g2, b"k".to_vec(), b"other group".to_vec())?;
        b.value_set(v, g1, b"".to_vec(), b"".to_vec())?;
        seen.push(format!("{:?}", b.value_get(v, g1, b"k")?));
        seen.push(format!("{:?}", b.value_get(v, g2, b"k")?));
        seen.push(format!("{:?}", b.value_get(v, g1, b"")?));
        b.clear(v, g1, b"k")?;
        seen.push(format!("{:?}", b.value_get(v, g1, b"k")?));
        seen.push(format!("{:?}", b.value_get(v, g2, b"k")?));

        seen.push(format!("{:?}", b.list_get(l, g1, b"k")?));
        for value in [&b"a"[..], b"", b"ccc"] {
            b.list_add(l, g1, b"k".to_vec(), value.to_vec())?;
        }
        b.list_add(l, g1, b"k2".to_vec(), b"x".to_vec())?;
        seen.push(format!("{:?}", b.list_get(l, g1, b"k")?));
        b.list_update(l, g1, b"k".to_vec(), vec![b"z".to_vec(), b"y".to_vec()])?;
        b.list_add(l, g1, b"k".to_vec(), b"w".to_vec())?;
        seen.push(format!("{:?}", b.list_get(l, g1, b"k")?));
        b.list_update(l, g1, b"k".to_vec(), Vec::new())?;
        seen.push(format!("{:?}", b.list_get(l, g1, b"k")?));
        b.list_add(l, g1, b"k".to_vec(), b"again".to_vec())?;
        b.clear(l, g1, b"k2")?;
        seen.push(format!("{:?}", b.list_get(l, g1, b"k")?));
        seen.push(format!("{:?}", b.list_get(l, g1, b"k2")?));

        let sorted = |mut entries: MapEntries| {
            entries.sort();
            format!("{entries:?}")
        };
        seen.push(sorted(b.map_entries(m, g1, b"k")?));
        b.map_put(m, g1, b"k".to_vec(), b"b".to_vec(), b"2".to_vec())?;
        b.map_put(m, g1, b"k".to_vec(), b"a".to_vec(), b"1".to_vec())?;
        b.map_put(m, g1, b"k".to_vec(), b"a".to_vec(), b"1'".to_vec())?;
        b.map_put(m, g1, b"k".to_vec(), b"".to_vec(), b"empty".to_vec())?;
        b.map_put(m, g1, b"kk".to_vec(), b"a".to_vec(), b"other key".to_vec())?;
        b.map_put(m, g1, b"".to_vec(), b"ka".to_vec(), b"empty key".to_vec())?;
        b.map_put(m, g2, b"k".to_vec(), b"a".to_vec(), b"other group".to_vec())?;
        seen.push(format!("{:?}", b.map_get(m, g1, b"k", b"a")?));
        seen.push(format!("{:?}", b.map_get(m, g1, b"k", b"c")?));
        seen.push(sorted(b.map_entries(m, g1, b"k")?));
        seen.push(sorted(b.map_entries(m, g1, b"")?));
        b.map_remove(m, g1, b"k", b"b")?;
        b.map_remove(m, g1, b"k", b"never there")?;
        seen.push(sorted(b.map_entries(m, g1, b"k")?));
        b.clear(m, g1, b"k")?;
        seen.push(sorted(b.map_entries(m, g1, b"k")?));
        seen.push(format!("{:?}", b.map_get(m, g1, b"k", b"a")?));
        seen.push(sorted(b.map_entries(m, g1, b"kk")?));
        seen.push(sorted(b.map_entries(m, g2, b"k")?));
        seen.push(sorted(b.map_entries(m, g1, b"")?));
        Ok(seen)
    }

    #[test]
    fn the_backend_can_move_to_a_subtask_thread() {
        fn is_send<T: Send>() {}
        is_send::<RocksDbBackend>();
    }

    #[test]
    fn value_list_map_and_clear_behave_as_in_the_heap_backend() -> TestResult {
        let root = tempfile::tempdir()?;
        let mut rocks = backend(root.path(), "scenario", false)?;
        let mut heap = HeapBackend::new(all_groups());
        let expected = scenario(&mut heap)?;
        assert_eq!(scenario(&mut rocks)?, expected);
        Ok(())
    }

    #[test]
    fn the_same_calls_after_a_snapshot_read_the_flushed_state_as_the_heap_does() -> TestResult {
        // Appends to a list whose base is in an SST exercise the merge across a flush.
        let root = tempfile::tempdir()?;
        let mut rocks = backend(root.path(), "flushed", false)?;
        let mut heap = HeapBackend::new(all_groups());
        scenario(&mut heap)?;
        scenario(&mut rocks)?;
        files(rocks.snapshot(CheckpointId(1))?)?;
        let expected = scenario(&mut heap)?;
        assert_eq!(scenario(&mut rocks)?, expected);
        Ok(())
    }

    #[test]
    fn reopening_a_state_under_another_kind_is_a_kind_mismatch() -> TestResult {
        let root = tempfile::tempdir()?;
        let mut b = backend(root.path(), "kinds", false)?;
        let first = b.open_state("s", StateKind::List)?;
        assert_eq!(b.open_state("s", StateKind::List)?, first);
        assert!(matches!(
            b.open_state("s", StateKind::Map),
            Err(StateError::KindMismatch {
                existing: StateKind::List,
                requested: StateKind::Map,
                ..
            })
        ));
        assert!(matches!(
            b.value_get(first, KeyGroup(0), b"k"),
            Err(StateError::WrongKind(_, StateKind::Value))
        ));
        assert!(matches!(
            b.value_get(StateId(7), KeyGroup(0), b"k"),
            Err(StateError::UnknownState(StateId(7)))
        ));
        Ok(())
    }

    #[test]
    fn a_snapshot_restored_into_a_new_instance_has_the_same_state_names_ids_and_kinds() -> TestResult
    {
        let root = tempfile::tempdir()?;
        let store = root.path().join("store");
        let mut b = backend(root.path(), "before", false)?;
        let v = b.open_state("counts", StateKind::Value)?;
        let l = b.open_state("buffered", StateKind::List)?;
        let m = b.open_state("seen", StateKind::Map)?;
        b.value_set(v, KeyGroup(1), b"k".to_vec(), b"before".to_vec())?;
        b.list_add(l, KeyGroup(2), b"k".to_vec(), b"x".to_vec())?;
        b.list_add(l, KeyGroup(2), b"k".to_vec(), b"y".to_vec())?;
        b.map_put(m, KeyGroup(3), b"k".to_vec(), b"u".to_vec(), b"1".to_vec())?;
        let local = files(b.snapshot(CheckpointId(1))?)?;
        // Written after the synchronous phase: not part of the checkpoint.
        b.value_set(v, KeyGroup(1), b"k".to_vec(), b"after".to_vec())?;
        b.value_set(v, KeyGroup(4), b"new".to_vec(), b"after".to_vec())?;
        let stored = upload(&store, 1, local)?;

        let mut restored = backend(root.path(), "after", false)?;
        let dir = download(&store, &stored, &root.path().join("download"))?;
        restored.restore(RestoredState::Files(RestoredFiles { dir, files: stored }))?;
        assert_eq!(restored.open_state("seen", StateKind::Map)?, m);
        assert_eq!(restored.open_state("counts", StateKind::Value)?, v);
        assert_eq!(restored.open_state("buffered", StateKind::List)?, l);
        assert!(matches!(
            restored.open_state("counts", StateKind::List),
            Err(StateError::KindMismatch {
                existing: StateKind::Value,
                ..
            })
        ));
        assert_eq!(
            restored.value_get(v, KeyGroup(1), b"k")?,
            Some(b"before".to_vec())
        );
        assert_eq!(restored.value_get(v, KeyGroup(4), b"new")?, None);
        assert_eq!(
            restored.list_get(l, KeyGroup(2), b"k")?,
            vec![b"x".to_vec(), b"y".to_vec()]
        );
        assert_eq!(
            restored.map_get(m, KeyGroup(3), b"k", b"u")?,
            Some(b"1".to_vec())
        );
        // A state first opened after the restore gets the next id.
        assert_eq!(restored.open_state("fresh", StateKind::Value)?, StateId(3));
        Ok(())
    }

    #[test]
    fn a_restore_keeps_only_the_key_groups_the_subtask_owns() -> TestResult {
        let root = tempfile::tempdir()?;
        let store = root.path().join("store");
        let mut all = backend(root.path(), "all", false)?;
        let v = all.open_state("v", StateKind::Value)?;
        let m = all.open_state("m", StateKind::Map)?;
        for g in 0..8u8 {
            all.value_set(v, KeyGroup(u16::from(g)), vec![g], b"x".to_vec())?;
            all.map_put(
                m,
                KeyGroup(u16::from(g)),
                vec![g],
                b"u".to_vec(),
                b"x".to_vec(),
            )?;
        }
        let stored = upload(&store, 1, files(all.snapshot(CheckpointId(1))?)?)?;
        let half = KeyGroupRange::for_subtask(SubtaskIndex(1), 2, 8);
        let mut b = RocksDbBackend::open(half, options(root.path(), "half", false))?;
        let dir = download(&store, &stored, &root.path().join("download"))?;
        b.restore(RestoredState::Files(RestoredFiles { dir, files: stored }))?;
        let v = b.open_state("v", StateKind::Value)?;
        let m = b.open_state("m", StateKind::Map)?;
        // Look at every key group, as a backend owning all of them would after
        // another restore.
        let stored = upload(&store, 2, files(b.snapshot(CheckpointId(2))?)?)?;
        let mut back = backend(root.path(), "back", false)?;
        let dir = download(&store, &stored, &root.path().join("download-2"))?;
        back.restore(RestoredState::Files(RestoredFiles { dir, files: stored }))?;
        for g in 0..8u8 {
            let expected = (g >= 4).then(|| b"x".to_vec());
            let group = KeyGroup(u16::from(g));
            assert_eq!(back.value_get(v, group, &[g])?, expected, "key group {g}");
            assert_eq!(
                back.map_get(m, group, &[g], b"u")?,
                expected,
                "key group {g}"
            );
        }
        Ok(())
    }

    #[test]
    fn after_a_completed_checkpoint_only_new_ssts_are_uploaded() -> TestResult {
        let root = tempfile::tempdir()?;
        let store = root.path().join("store");
        let mut b = backend(root.path(), "inc", true)?;
        let v = b.open_state("v", StateKind::Value)?;
        for i in 0..1000u32 {
            b.value_set(v, KeyGroup(0), i.to_be_bytes().to_vec(), b"first".to_vec())?;
        }
        let first = files(b.snapshot(CheckpointId(1))?)?;
        assert!(!sst_uploads(&first).is_empty());
        assert!(
            sst_uploads(&first)
                .iter()
                .all(|u| matches!(u, Upload::Shared(n) if n.starts_with("inc-")))
        );
        assert!(
            first
                .files
                .iter()
                .filter(|f| !f.name.ends_with(".sst"))
                .all(|f| f.upload == Upload::Private)
        );
        let first = upload(&store, 1, first)?;
        b.checkpoint_complete(CheckpointId(1));

        b.value_set(v, KeyGroup(0), b"one more".to_vec(), b"second".to_vec())?;
        let second = files(b.snapshot(CheckpointId(2))?)?;
        let first_handles: BTreeSet<_> =
            shared_ssts(&first).into_values().map(|h| h.path).collect();
        let mut reused = 0;
        for file in second.files.iter().filter(|f| f.name.ends_with(".sst")) {
            match &file.upload {
                Upload::Reuse(handle) => {
                    assert!(first_handles.contains(&handle.path));
                    reused += 1;
                }
                Upload::Shared(name) => {
                    assert!(!first_handles.contains(&format!("{SHARED_PREFIX}{name}")));
                }
                Upload::Private => panic!("SST {} uploaded privately", file.name),
            }
        }
        assert_eq!(reused, first_handles.len());
        assert!(
            sst_uploads(&second)
                .iter()
                .any(|u| matches!(u, Upload::Shared(_)))
        );
        let stored = upload(&store, 2, second)?;

        // The incremental checkpoint restores on its own.
        let mut restored = backend(root.path(), "inc-restored", true)?;
        let dir = download(&store, &stored, &root.path().join("download"))?;
        restored.restore(RestoredState::Files(RestoredFiles { dir, files: stored }))?;
        let v = restored.open_state("v", StateKind::Value)?;
        assert_eq!(
            restored.value_get(v, KeyGroup(0), &7u32.to_be_bytes())?,
            Some(b"first".to_vec())
        );
        assert_eq!(
            restored.value_get(v, KeyGroup(0), b"one more")?,
            Some(b"second".to_vec())
        );
        Ok(())
    }

    #[test]
    fn nothing_of_an_aborted_checkpoint_is_reused() -> TestResult {
        let root = tempfile::tempdir()?;
        let store = root.path().join("store");
        let mut b = backend(root.path(), "aborted", true)?;
        let v = b.open_state("v", StateKind::Value)?;
        b.value_set(v, KeyGroup(0), b"k".to_vec(), b"1".to_vec())?;
        upload(&store, 1, files(b.snapshot(CheckpointId(1))?)?)?;
        b.checkpoint_aborted(CheckpointId(1));
        // A completion of another checkpoint does not revive it either.
        b.checkpoint_complete(CheckpointId(0));
        b.value_set(v, KeyGroup(0), b"k".to_vec(), b"2".to_vec())?;
        let second = files(b.snapshot(CheckpointId(2))?)?;
        assert!(sst_uploads(&second).len() >= 2);
        assert!(
            sst_uploads(&second)
                .iter()
                .all(|u| matches!(u, Upload::Shared(_)))
        );
        Ok(())
    }

    #[test]
    fn a_checkpoint_that_completes_before_its_upload_reported_reuses_nothing() -> TestResult {
        let root = tempfile::tempdir()?;
        let store = root.path().join("store");
        let mut b = backend(root.path(), "early", true)?;
        let v = b.open_state("v", StateKind::Value)?;
        b.value_set(v, KeyGroup(0), b"k".to_vec(), b"1".to_vec())?;
        upload(&store, 1, files(b.snapshot(CheckpointId(1))?)?)?;
        b.checkpoint_complete(CheckpointId(1));
        b.value_set(v, KeyGroup(0), b"k".to_vec(), b"2".to_vec())?;
        let second = files(b.snapshot(CheckpointId(2))?)?;
        b.checkpoint_complete(CheckpointId(2));
        upload(&store, 2, second)?;
        let third = files(b.snapshot(CheckpointId(3))?)?;
        assert!(
            sst_uploads(&third)
                .iter()
                .all(|u| matches!(u, Upload::Shared(_)))
        );
        Ok(())
    }

    #[test]
    fn without_incremental_every_file_is_private() -> TestResult {
        let root = tempfile::tempdir()?;
        let store = root.path().join("store");
        let mut b = backend(root.path(), "full", false)?;
        let v = b.open_state("v", StateKind::Value)?;
        b.value_set(v, KeyGroup(0), b"k".to_vec(), b"1".to_vec())?;
        upload(&store, 1, files(b.snapshot(CheckpointId(1))?)?)?;
        b.checkpoint_complete(CheckpointId(1));
        b.value_set(v, KeyGroup(0), b"k".to_vec(), b"2".to_vec())?;
        let second = files(b.snapshot(CheckpointId(2))?)?;
        assert!(second.files.iter().any(|f| f.name.ends_with(".sst")));
        assert!(second.files.iter().all(|f| f.upload == Upload::Private));
        Ok(())
    }

    #[test]
    fn a_restored_backend_reuses_the_shared_files_it_was_restored_from() -> TestResult {
        let root = tempfile::tempdir()?;
        let store = root.path().join("store");
        let mut b = backend(root.path(), "origin", true)?;
        let v = b.open_state("v", StateKind::Value)?;
        b.value_set(v, KeyGroup(0), b"k".to_vec(), b"1".to_vec())?;
        let stored = upload(&store, 1, files(b.snapshot(CheckpointId(1))?)?)?;
        let shared = shared_ssts(&stored);
        assert!(!shared.is_empty());

        let mut restored = backend(root.path(), "successor", true)?;
        let dir = download(&store, &stored, &root.path().join("download"))?;
        restored.restore(RestoredState::Files(RestoredFiles { dir, files: stored }))?;
        let next = files(restored.snapshot(CheckpointId(2))?)?;
        for (name, handle) in &shared {
            let file = next
                .files
                .iter()
                .find(|f| &f.name == name)
                .ok_or("an SST is gone")?;
            assert_eq!(file.upload, Upload::Reuse(handle.clone()));
        }
        Ok(())
    }

    #[test]
    fn a_checkpoint_written_by_the_heap_backend_is_refused() -> TestResult {
        let root = tempfile::tempdir()?;
        let mut b = backend(root.path(), "heap-bytes", false)?;
        let Err(StateError::Corrupt(message)) = b.restore(RestoredState::Encoded(b"bytes")) else {
            return Err("heap bytes were accepted".into());
        };
        assert!(message.contains("heap backend"), "{message}");
        Ok(())
    }

    #[test]
    fn a_snapshot_goes_beside_the_working_directory_which_drop_removes() -> TestResult {
        let root = tempfile::tempdir()?;
        let mut b = backend(root.path(), "where", false)?;
        let working = root.path().join("where");
        assert!(working.is_dir());
        let local = files(b.snapshot(CheckpointId(5))?)?;
        assert_eq!(local.dir, root.path().join("where-chk-5"));
        assert!(local.files.iter().all(|f| f.path.starts_with(&local.dir)));
        assert!(local.files.iter().any(|f| f.name == "CURRENT"));
        drop(b);
        assert!(!working.exists());
        assert!(
            local.dir.is_dir(),
            "the uploader removes the snapshot, not the backend"
        );
        Ok(())
    }

    #[test]
    fn open_wipes_what_was_in_the_directory() -> TestResult {
        let root = tempfile::tempdir()?;
        let first = backend(root.path(), "reused", false)?;
        drop(first);
        let dir = root.path().join("reused");
        fs::create_dir_all(&dir)?;
        fs::write(dir.join("leftover"), b"x")?;
        let _b = backend(root.path(), "reused", false)?;
        assert!(!dir.join("leftover").exists());
        Ok(())
    }

    #[test]
    fn an_instance_name_that_cannot_name_a_file_is_refused() -> TestResult {
        let root = tempfile::tempdir()?;
        for bad in ["", "a/b", ".hidden", "spa ce"] {
            let options = RocksDbOptions::new(root.path().join("x"), bad);
            assert!(
                RocksDbBackend::open(all_groups(), options).is_err(),
                "{bad:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn a_prefix_of_all_0xff_has_no_end() {
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[1, 2]), Some(vec![1, 3]));
    }

    #[test]
    fn a_truncated_list_does_not_decode() {
        let mut buf = Vec::new();
        assert!(push_frame(&mut buf, b"abc").is_ok());
        assert_eq!(decode_frames(&buf), Some(vec![b"abc".to_vec()]));
        assert_eq!(decode_frames(&buf[..buf.len() - 1]), None);
        assert_eq!(decode_frames(&buf[..2]), None);
    }

    #[test]
    fn column_family_names_round_trip_and_nothing_else_parses() {
        for kind in [StateKind::Value, StateKind::List, StateKind::Map] {
            assert_eq!(
                parse_column_family_name(&column_family_name(kind, 12)),
                Some((kind, 12))
            );
        }
        for bad in ["default", "value-", "value-01", "set-1", "map-x", "map-+1"] {
            assert_eq!(parse_column_family_name(bad), None, "{bad}");
        }
    }

    /// What a map state should hold: (key group, key) → user key → value.
    type Model = BTreeMap<(u16, Vec<u8>), BTreeMap<Vec<u8>, Vec<u8>>>;

    fn small_bytes() -> impl Strategy<Value = Vec<u8>> {
        // A tiny alphabet and short lengths, so that keys are often prefixes of each
        // other and of user keys, and lengths look like key bytes.
        prop::collection::vec(prop::sample::select(vec![0u8, 1, 4, 0xff]), 0..4)
    }

    proptest! {
        #[test]
        fn a_map_prefix_matches_exactly_the_entries_of_its_own_group_and_key(
            a in (0u16..4, small_bytes(), small_bytes()),
            b in (0u16..4, small_bytes()),
        ) {
            let (mut entry, mut prefix) = (Vec::new(), Vec::new());
            prop_assert!(encode_map_key(&mut entry, KeyGroup(a.0), &a.1, &a.2).is_ok());
            prop_assert!(encode_map_prefix(&mut prefix, KeyGroup(b.0), &b.1).is_ok());
            prop_assert_eq!(entry.starts_with(&prefix), (a.0, &a.1) == (b.0, &b.1));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn map_entries_and_clear_see_only_their_own_group_and_key(
            puts in prop::collection::vec((0u16..3, small_bytes(), small_bytes(), small_bytes()), 1..40),
        ) {
            let run = || -> Result<(), Box<dyn Error>> {
                let root = tempfile::tempdir()?;
                let mut b = backend(root.path(), "prop", false)?;
                let m = b.open_state("m", StateKind::Map)?;
                let mut model = Model::new();
                for (g, key, user_key, value) in &puts {
                    b.map_put(m, KeyGroup(*g), key.clone(), user_key.clone(), value.clone())?;
                    model.entry((*g, key.clone())).or_default().insert(user_key.clone(), value.clone());
                }
                let check = |b: &RocksDbBackend, model: &Model| -> Result<(), Box<dyn Error>> {
                    for (g, key, _, _) in &puts {
                        let mut got = b.map_entries(m, KeyGroup(*g), key)?;
                        got.sort();
                        let expected: MapEntries = model
                            .get(&(*g, key.clone()))
                            .map(|inner| inner.clone().into_iter().collect())
                            .unwrap_or_default();
                        assert_eq!(got, expected, "group {g} key {key:?}");
                    }
                    Ok(())
                };
                check(&b, &model)?;
                let (g, key, _, _) = &puts[0];
                b.clear(m, KeyGroup(*g), key)?;
                model.remove(&(*g, key.clone()));
                check(&b, &model)?;
                Ok(())
            };
            let result = run();
            prop_assert!(result.is_ok(), "{:?}", result.err());
        }
    }
}
