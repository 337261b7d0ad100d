//! The RocksDB backend: keyed state in an embedded RocksDB instance, one column family
//! per state, written behind an in-memory buffer, snapshotted as RocksDB's native
//! checkpoints and uploaded incrementally.
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
//! <dir>/                             the live database, removed when the backend drops
//! <dir>/../<instance>-chk-<n>/       the native checkpoint of checkpoint n: hard links to
//!                                    the live SSTs plus copies of MANIFEST, CURRENT, OPTIONS
//! <dir>/../<instance>-savepoint-<n>/ the same for savepoint n (native or canonical)
//! <dir>/../<instance>-rescale/       SSTs cut from other subtasks' databases during a
//!                                    rescaling restore, removed once they are ingested
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
//! # Write-behind
//!
//! State calls never write to RocksDB. Every write goes into the active [`Buffer`]: per
//! state, encoded key → [`Pending`] (a put, a delete that masks the database, or list
//! frames to append to whatever lies below), ordered like the database so that a map's
//! entries are one range of it too. A read looks at the active buffer, then at the
//! frozen buffers (swapped out by a snapshot, newest first), then at the database.
//!
//! The synchronous phase of a snapshot only freezes the active buffer and hands the
//! asynchronous phase a [`Job`]: that one writes the frozen buffers to the database as
//! one `WriteBatch`, takes the native checkpoint (which flushes the memtables) and lists
//! its files. So the synchronous phase never waits for a flush or a write stall.
//!
//! Nothing written after checkpoint n may reach the database before checkpoint n's
//! native checkpoint is taken, so at most one job is out: the next snapshot, a state
//! creation, and a spill wait for it. A spill is the way out of a full buffer: when the
//! buffers hold [`RocksDbOptions::write_behind_bytes`], the subtask writes them to the
//! database itself, without a flush. A job that fails or is dropped before its batch is
//! written leaves its buffers frozen: they are still the live state, readable, and the
//! next job or spill writes them.
//!
//! While a job writes its batch, the database holds the frozen buffers or not, and a read
//! cannot tell which. That matters only for a list whose frozen entry is an append (a
//! put or delete gives the same answer either way): such a read checks the job's
//! [`Phase`] before and after it reads the database, and waits out the write itself.
//!
//! # Savepoints
//!
//! Both kinds start as a checkpoint does: the synchronous phase freezes the active buffer
//! and hands out a [`Job`], which writes the frozen buffers and takes a native checkpoint
//! into the savepoint's directory. Then:
//!
//! - a **native savepoint** lists that directory with every file [`Upload::Private`]:
//!   it is self-contained, stored with the savepoint and not in the job's `shared/`.
//!   Its upload is reported to nobody, and its completion leaves the set of reusable
//!   SSTs as it was, so no later incremental checkpoint refers to a savepoint's files
//!   (the user may delete a savepoint, and retention does not know of it);
//! - a **canonical savepoint** opens that directory read-only, off the subtask's thread,
//!   and writes the canonical sections from it: for each key group ascending, each state
//!   in id order, its entries in key order (one iterator per state, moving forward only),
//!   decoding the key layout above back to keys, list elements and each key's map
//!   entries. The checkpoint is a point-in-time copy, so the subtask goes on writing, and
//!   RocksDB snapshots, which in-place memtable updates would break, are not needed. The
//!   directory is removed once written.
//!
//! # Restoring and rescaling
//!
//! A restore drops the buffers and the live database and builds a new one:
//!
//! - from **canonical** sections (a canonical savepoint, or state the heap backend
//!   wrote): a fresh database, a column family per state name (a state may have another
//!   index in each old subtask's sections; one name with two kinds is refused), and the
//!   entries of the owned key groups written in [`RESTORE_BATCH_BYTES`] batches, lists
//!   framed and maps keyed as above;
//! - from **native files** of one old subtask: its directory becomes the working
//!   directory, and the key groups outside the owned range are range-deleted
//!   (`clip_to_groups`);
//! - from native files of **several** old subtasks (a rescale): the first is taken over
//!   as above; each other one is opened read-only, and per column family the keys of the
//!   owned key groups (one contiguous range, as every key starts with its key group) are
//!   cut into SSTs of at most [`TARGET_FILE_BYTES`] and ingested into the column family of
//!   the same state name (created if the first lacked it). Old subtasks own disjoint key
//!   groups, so the ingested ranges never overlap what is there and RocksDB puts them
//!   below everything without rewriting anything. Their directories are removed after.
//!
//! Only the taken-over subtask's shared SSTs can be reused by the next incremental
//! checkpoint; the ingested ones are new files and are uploaded by it.
//!
//! # Errors
//!
//! RocksDB and file-system failures become [`StateError::Corrupt`], whose message names
//! the state or directory and the operation that failed: `StateError` is shared by all
//! backends and has no variant for an I/O failure, and this module does not own it.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fs;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use rocksdb::checkpoint::Checkpoint;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DBCompressionType,
    DBPinnableSlice, DBRawIteratorWithThreadMode, DBWithThreadMode, IngestExternalFileOptions,
    IteratorMode, MergeOperands, Options, ReadOptions, SingleThreaded, SstFileWriter, WriteBatch,
    WriteOptions,
};

use crate::checkpoint::snapshot::{
    EntryValue, KeyedSections, KeyedState, SectionWriter, SnapshotType, StateDecl, entries,
};
use crate::runtime::batch::{BlobLists, Blobs, MaybeBlobs};
use crate::runtime::ids::{CheckpointId, KeyGroup};
use crate::runtime::keygroup::KeyGroupRange;
use crate::state::{
    BackendSnapshot, GroupedKeys, KeyedStateBackend, LocalFile, LocalFiles, LocalSnapshot,
    MapEntries, RestoredFiles, RestoredState, StateError, StateId, StateKind, StoredFile, Upload,
};
use crate::storage::FileHandle;

/// The database, in single-threaded mode although an asynchronous phase uses it too: the
/// mode only guards creating column families, which needs `&mut`, and the backend
/// creates them only when no job holds the database; in exchange it hands out plain
/// column family references instead of reference-counted ones.
type Db = DBWithThreadMode<SingleThreaded>;

/// The size RocksDB cuts compacted SSTs at (see `column_family_options`), and a rescaling
/// restore the SSTs it ingests, for the same reason: an upload holds its file in memory.
const TARGET_FILE_BYTES: u64 = 16 << 20;

/// How many bytes of entries a canonical restore puts in one `WriteBatch` before writing
/// it: large enough that the cost per write disappears, small enough that the batch does
/// not hold a second copy of a large state in memory.
const RESTORE_BATCH_BYTES: usize = 4 << 20;

/// The merge operator's name, recorded in the database's OPTIONS file.
const LIST_MERGE_OPERATOR: &str = "weir-list-append";

/// Where a stored file's handle path starts when the file is shared across checkpoints.
const SHARED_PREFIX: &str = "shared/";

/// The longest instance name: a shared file is named `<instance>-<sst name>`, storage
/// refuses names over 200 bytes, and RocksDB's SST names are about a dozen bytes.
const MAX_INSTANCE_LEN: usize = 128;

/// What one buffered entry weighs besides its key and value bytes: its slot in a B-tree
/// node is 56 bytes (the key's `Vec` header and the 32-byte [`Pending`]), nodes are about
/// two-thirds full, so about 84 bytes with the node's own fields, and the key's and the
/// value's allocations are each rounded up by some 8 bytes. About 100 bytes, so that the
/// bound is on real memory within some 20 %, which is all a bound needs.
const ENTRY_OVERHEAD: usize = 100;

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
    /// asynchronous phase, so this bounds that flush as well as memory.
    pub write_buffer_bytes: usize,
    /// How many memtables a state may hold: the one being written and those waiting to
    /// be flushed.
    pub max_write_buffers: u16,
    /// The memtables of all states together: past it RocksDB flushes memtables early,
    /// so memory stays bounded however many states an operator opens.
    pub write_buffer_total_bytes: usize,
    /// The writes held in memory ahead of the database (the active buffer and the
    /// frozen ones together, see the module docs): past it the subtask writes them to
    /// the database itself, after waiting for a snapshot's write in flight.
    pub write_behind_bytes: usize,
    /// Whether SSTs are LZ4-compressed instead of stored plain.
    pub lz4: bool,
}

impl RocksDbOptions {
    /// 64 MiB of block cache: a million entries of a 12-byte key and an 8-byte value
    /// take 21 MiB of SSTs (data, index and filter blocks together), so this keeps the
    /// working set of a subtask with a few million small entries in memory, while a
    /// host on a small machine can still run a dozen subtasks.
    pub const DEFAULT_BLOCK_CACHE_BYTES: usize = 64 << 20;
    /// 8 MiB memtables, not RocksDB's 64 MiB: a snapshot's asynchronous phase flushes
    /// them, so their size bounds that flush and the memory it holds. 8 MiB rather than
    /// less because, with in-place updates, it holds a working set of about 100k small
    /// keys, which then never reach the SSTs between snapshots: a keyed counter over
    /// 100k keys ran at ~400k records/s with 8 MiB and ~280-320k with 2 or 4 MiB (measured
    /// before writes went through the write-behind buffer).
    pub const DEFAULT_WRITE_BUFFER_BYTES: usize = 8 << 20;
    /// Two memtables: one takes writes while the other is flushed in the background;
    /// more would only buffer more memory ahead of a slow disk.
    pub const DEFAULT_MAX_WRITE_BUFFERS: u16 = 2;
    /// 32 MiB of memtables over all states: four full memtables, room for an operator
    /// with two busy states (each writing one memtable while flushing another) before
    /// RocksDB flushes early.
    pub const DEFAULT_WRITE_BUFFER_TOTAL_BYTES: usize = 32 << 20;
    /// 16 MiB of buffered writes, a quarter of the block cache: the buffers, the write
    /// batch made of them and the memtable it lands in each hold that much at the peak,
    /// so a larger bound shows up three times in the process's memory (at 64 MiB a
    /// subtask with 500 MB of state peaked at 690 MB of RSS; at 16 MiB it stays below
    /// the state, as `tests/rocksdb.rs` checks). That is about 140k entries of a 12-byte
    /// key and an 8-byte value: a keyed counter over 100k keys (12 MiB per interval) fits
    /// one interval's writes; when the next interval fills the rest before the previous
    /// snapshot's write is done, it waits for that write, then writes to the database.
    pub const DEFAULT_WRITE_BEHIND_BYTES: usize = 16 << 20;

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
            write_behind_bytes: Self::DEFAULT_WRITE_BEHIND_BYTES,
            // Uncompressed: the hot blocks sit in the block cache either way, and a
            // snapshot's flush does not pay for compressing them.
            lz4: false,
        }
    }
}

/// One opened state.
#[derive(Clone, Debug)]
struct State {
    name: String,
    kind: StateKind,
    /// Its column family, `<kind>-<id>`.
    column_family: String,
}

/// What each snapshot's upload reported, by checkpoint, until the checkpoint completes
/// or aborts. Shared with the `uploaded` callbacks, which run on the upload's thread.
type Uploads = Arc<Mutex<BTreeMap<CheckpointId, Vec<StoredFile>>>>;

/// SST name → where the last completed checkpoint (or the restored one) stored it. Shared
/// with the jobs, which decide uploads with the set of their synchronous phase.
type Confirmed = Arc<HashMap<String, FileHandle>>;

/// A write not yet in the database, as a [`Buffer`] holds it for one key.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Pending {
    /// The key's value (for a list, all its frames), whatever lies below.
    Put(Vec<u8>),
    /// The key has nothing, whatever lies below.
    Delete,
    /// List frames to append to whatever lies below: a RocksDB merge. Only list states
    /// have them.
    Append(Vec<u8>),
}

impl Pending {
    /// The bytes it holds.
    fn len(&self) -> usize {
        match self {
            Pending::Put(bytes) | Pending::Append(bytes) => bytes.len(),
            Pending::Delete => 0,
        }
    }
}

/// Writes not yet in the database: per state (by id), encoded key → pending write.
#[derive(Debug, Default)]
struct Buffer {
    states: Vec<BTreeMap<Vec<u8>, Pending>>,
    /// What the entries weigh, [`ENTRY_OVERHEAD`] included.
    bytes: usize,
}

impl Buffer {
    fn get(&self, state: usize, key: &[u8]) -> Option<&Pending> {
        self.states.get(state)?.get(key)
    }

    fn is_empty(&self) -> bool {
        self.states.iter().all(BTreeMap::is_empty)
    }

    /// Replaces the entry of `key` with what `change` makes of it (`None` when there is
    /// none). The old entry is moved in, so that `change` can reuse its allocation.
    fn update(
        &mut self,
        state: usize,
        key: &[u8],
        change: impl FnOnce(Option<Pending>) -> Pending,
    ) {
        if self.states.len() <= state {
            self.states.resize_with(state + 1, BTreeMap::new);
        }
        let entries = &mut self.states[state];
        if let Some(entry) = entries.get_mut(key) {
            let old = std::mem::replace(entry, Pending::Delete);
            let before = old.len();
            *entry = change(Some(old));
            self.bytes = self.bytes.saturating_sub(before) + entry.len();
        } else {
            let entry = change(None);
            self.bytes += ENTRY_OVERHEAD + key.len() + entry.len();
            entries.insert(key.to_vec(), entry);
        }
    }

    /// The entries of `state` whose key starts with `prefix`, in key order.
    fn prefixed<'a>(
        &'a self,
        state: usize,
        prefix: &'a [u8],
    ) -> impl Iterator<Item = (&'a Vec<u8>, &'a Pending)> + 'a {
        self.states
            .get(state)
            .into_iter()
            .flat_map(move |entries| {
                entries.range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
            })
            .take_while(move |(key, _)| key.starts_with(prefix))
    }

    /// Adds every entry to `batch`, in the column family of its state.
    fn write_to(
        &self,
        batch: &mut WriteBatch,
        db: &Db,
        column_families: &[String],
        dir: &Path,
    ) -> Result<(), StateError> {
        for (state, entries) in self.states.iter().enumerate() {
            if entries.is_empty() {
                continue;
            }
            let cf = column_families
                .get(state)
                .and_then(|name| db.cf_handle(name))
                .ok_or_else(|| {
                    StateError::Corrupt(format!(
                        "buffered writes of state {state} have no column family in {} (host bug)",
                        dir.display()
                    ))
                })?;
            for (key, pending) in entries {
                match pending {
                    Pending::Put(value) => batch.put_cf(cf, key, value),
                    Pending::Delete => batch.delete_cf(cf, key),
                    Pending::Append(frames) => batch.merge_cf(cf, key, frames),
                }
            }
        }
        Ok(())
    }
}

/// The new entry of a key set to `value`, reusing the old entry's allocation.
fn put(old: Option<Pending>, value: &[u8]) -> Pending {
    match old {
        Some(Pending::Put(mut bytes) | Pending::Append(mut bytes)) => {
            bytes.clear();
            bytes.extend_from_slice(value);
            Pending::Put(bytes)
        }
        Some(Pending::Delete) | None => Pending::Put(value.to_vec()),
    }
}

/// The new entry of a list key after appending the frame `[header][value]`.
fn append(old: Option<Pending>, header: [u8; 4], value: &[u8]) -> Pending {
    let frame = |mut bytes: Vec<u8>| {
        bytes.extend_from_slice(&header);
        bytes.extend_from_slice(value);
        bytes
    };
    match old {
        Some(Pending::Put(bytes)) => Pending::Put(frame(bytes)),
        Some(Pending::Append(bytes)) => Pending::Append(frame(bytes)),
        // A delete masks what lies below, so the list is this one element.
        Some(Pending::Delete) => Pending::Put(frame(Vec::with_capacity(4 + value.len()))),
        None => Pending::Append(frame(Vec::with_capacity(4 + value.len()))),
    }
}

/// How far a [`Job`] got. Readers of the database need it to know whether the frozen
/// buffers are in it; the backend to know when it may write to it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Handed out, not started: it may still be revoked.
    Waiting,
    /// Revoked before it started (the backend was restored or dropped): it will not touch
    /// the database.
    Revoked,
    /// Started; its buffers are not in the database (it is building its batch, or
    /// writing it failed).
    Unwritten,
    /// Writing its batch: the database may or may not hold the buffers yet.
    Writing,
    /// Its buffers are in the database.
    Written,
}

/// What a job and its backend share.
#[derive(Debug)]
struct Progress {
    phase: Phase,
    /// Whether the job still holds the database: until it has taken its native
    /// checkpoint, failed, or been dropped.
    busy: bool,
}

/// A job's [`Progress`], and a condition variable signalled on every change of it.
#[derive(Debug)]
struct Flight {
    progress: Mutex<Progress>,
    changed: Condvar,
}

impl Flight {
    fn new() -> Self {
        Self {
            progress: Mutex::new(Progress {
                phase: Phase::Waiting,
                busy: true,
            }),
            changed: Condvar::new(),
        }
    }

    /// Locks the progress. Each change of it is one assignment of a field, so a thread
    /// that panicked holding the lock left it sound, and poisoning is ignored.
    fn lock(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits while `waiting` holds, and returns the progress then.
    fn wait_while(&self, mut waiting: impl FnMut(&Progress) -> bool) -> MutexGuard<'_, Progress> {
        self.changed
            .wait_while(self.lock(), |p| waiting(p))
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn set_phase(&self, phase: Phase) {
        self.lock().phase = phase;
        self.changed.notify_all();
    }

    /// Whether the job's buffers are in the database, once it is not writing them.
    fn written(&self) -> bool {
        self.wait_while(|p| p.phase == Phase::Writing).phase == Phase::Written
    }
}

/// The asynchronous phase of one snapshot, up to the files: writes the frozen buffers,
/// takes the native checkpoint and lists its files.
struct Job {
    /// Released (dropped, and the flight told) as soon as the native checkpoint is taken.
    db: Option<Arc<Db>>,
    flight: Arc<Flight>,
    checkpoint: CheckpointId,
    /// The buffers to write, oldest first.
    buffers: Vec<Arc<Buffer>>,
    /// Buffers an earlier job wrote: dropped here, so that freeing them does not cost
    /// the synchronous phase.
    retired: Vec<Arc<Buffer>>,
    /// The column family of each state, by id.
    column_families: Vec<String>,
    /// The live database's directory, for messages.
    working: PathBuf,
    /// Where the native checkpoint goes.
    dir: PathBuf,
    incremental: bool,
    instance: String,
    confirmed: Confirmed,
}

impl Job {
    /// Makes the files and lists them, each with how to upload it.
    fn run(self) -> Result<LocalFiles, StateError> {
        let incremental = self.incremental;
        let instance = self.instance.clone();
        let confirmed = Arc::clone(&self.confirmed);
        let dir = self.checkpoint()?;
        match list_snapshot(&dir, incremental, &instance, &confirmed) {
            Ok(files) => Ok(LocalFiles { dir, files }),
            Err(e) => {
                // Best effort, as below: the files are not handed to the uploader, so
                // nothing else would remove the directory.
                let _ = remove_dir_if_exists(&dir);
                Err(e)
            }
        }
    }

    /// Writes the buffers, takes the native checkpoint and lets go of the database;
    /// returns the checkpoint's directory, which the caller removes.
    fn checkpoint(mut self) -> Result<PathBuf, StateError> {
        drop(std::mem::take(&mut self.retired));
        let created = self.write_and_checkpoint();
        self.release();
        if let Err(e) = created {
            // Best effort: a half-made directory is of no use to anyone, and the error
            // reported is RocksDB's.
            let _ = remove_dir_if_exists(&self.dir);
            return Err(e);
        }
        Ok(self.dir.clone())
    }

    fn write_and_checkpoint(&self) -> Result<(), StateError> {
        let working = self.working.display();
        let n = self.checkpoint.0;
        let db = self.db.as_deref().ok_or_else(|| {
            StateError::Corrupt(format!(
                "the snapshot of checkpoint {n} of RocksDB in {working} ran twice (host bug)"
            ))
        })?;
        {
            let mut progress = self.flight.lock();
            if progress.phase == Phase::Revoked {
                return Err(StateError::Corrupt(format!(
                    "the snapshot of checkpoint {n} of RocksDB in {working} was abandoned: the \
                     backend was restored or closed before its asynchronous phase started"
                )));
            }
            progress.phase = Phase::Unwritten;
        }
        let mut batch = WriteBatch::default();
        for buffer in &self.buffers {
            buffer.write_to(&mut batch, db, &self.column_families, &self.working)?;
        }
        let mut write = WriteOptions::default();
        // As for the backend's own writes: checkpoints give durability.
        write.disable_wal(true);
        self.flight.set_phase(Phase::Writing);
        let written = db.write_opt(batch, &write);
        self.flight.set_phase(if written.is_ok() {
            Phase::Written
        } else {
            Phase::Unwritten
        });
        written.map_err(|e| {
            failure(
                format_args!(
                    "writing the buffered state of checkpoint {n} to RocksDB in {working}"
                ),
                e,
            )
        })?;
        // A native checkpoint flushes the memtables (the writes skipped the log, so the
        // SSTs must hold them) and hard-links the SSTs: its cost is the memtables' size,
        // bounded by the write buffer options, not the state's size.
        Checkpoint::new(db)
            .and_then(|c| c.create_checkpoint(&self.dir))
            .map_err(|e| {
                failure(
                    format_args!("creating the RocksDB checkpoint {}", self.dir.display()),
                    e,
                )
            })
    }

    /// Lets go of the database and tells the backend, which may then write to it again.
    fn release(&mut self) {
        if self.db.take().is_none() {
            return;
        }
        let mut progress = self.flight.lock();
        // Only a panic inside RocksDB's write leaves the phase here; a failed write
        // changes nothing, so "not written" is the likelier truth to go on with.
        if progress.phase == Phase::Writing {
            progress.phase = Phase::Unwritten;
        }
        progress.busy = false;
        drop(progress);
        self.flight.changed.notify_all();
    }
}

impl Drop for Job {
    /// A job dropped unrun (a declined snapshot) or by a panic must still let the
    /// backend go on; its buffers, unwritten, stay frozen in the backend.
    fn drop(&mut self) {
        self.release();
    }
}

/// Keyed state in an embedded RocksDB instance, written behind an in-memory buffer (see
/// the module docs).
///
/// Writes skip RocksDB's write-ahead log: checkpoints give durability, as in Flink, and a
/// failure restores the last completed checkpoint, not the local database.
pub struct RocksDbBackend {
    groups: KeyGroupRange,
    options: RocksDbOptions,
    /// The open database, shared with the job in flight; `None` only after a restore
    /// failed half-way, which leaves the backend unusable until the next restore.
    db: Option<Arc<Db>>,
    /// Kept to build the options of column families created later.
    cache: Cache,
    /// The states by id.
    states: Vec<State>,
    /// The id of every state, by name: opening a state is one lookup.
    ids: HashMap<String, StateId>,
    write: WriteOptions,
    read: ReadOptions,
    /// Where writes go.
    active: Buffer,
    /// Buffers swapped out by snapshots and not yet known to be in the database, oldest
    /// first: those of the job in flight, and any an earlier job failed to write.
    frozen: Vec<Arc<Buffer>>,
    /// What the frozen buffers weigh.
    frozen_bytes: usize,
    /// The last job handed out, until the backend has seen it let go of the database.
    flight: Option<Arc<Flight>>,
    /// Reused for every key built, so that a call does not allocate one.
    key: RefCell<Vec<u8>>,
    /// Reused for the keys of a bulk read.
    keys: RefCell<Blobs>,
    confirmed: Confirmed,
    uploads: Uploads,
    /// Savepoints taken and not yet completed or aborted: their completion must not
    /// change what later checkpoints reuse (see the module docs).
    savepoints: BTreeSet<CheckpointId>,
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

/// `[group][key]`: the key of a value or list entry, appended to `buf`.
fn append_key(buf: &mut Vec<u8>, group: KeyGroup, key: &[u8]) {
    buf.extend_from_slice(&group.0.to_be_bytes());
    buf.extend_from_slice(key);
}

/// [`append_key`] into an emptied `buf`.
fn encode_key(buf: &mut Vec<u8>, group: KeyGroup, key: &[u8]) {
    buf.clear();
    append_key(buf, group, key);
}

/// `[group][key length][key]`, appended to `buf`: the prefix all entries of one key's map
/// share. The length makes it unambiguous: a longer key that starts with `key` has
/// another length.
fn append_map_prefix(buf: &mut Vec<u8>, group: KeyGroup, key: &[u8]) -> Result<(), StateError> {
    let len = u32::try_from(key.len()).map_err(|_| {
        StateError::Corrupt(format!(
            "a key of {} bytes is too long for a map state (at most 4 GiB)",
            key.len()
        ))
    })?;
    buf.extend_from_slice(&group.0.to_be_bytes());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(key);
    Ok(())
}

/// [`append_map_prefix`] into an emptied `buf`.
fn encode_map_prefix(buf: &mut Vec<u8>, group: KeyGroup, key: &[u8]) -> Result<(), StateError> {
    buf.clear();
    append_map_prefix(buf, group, key)
}

/// `[group][key length][key][user key]`, appended to `buf`: the key of one map entry.
fn append_map_key(
    buf: &mut Vec<u8>,
    group: KeyGroup,
    key: &[u8],
    user_key: &[u8],
) -> Result<(), StateError> {
    append_map_prefix(buf, group, key)?;
    buf.extend_from_slice(user_key);
    Ok(())
}

/// [`append_map_key`] into an emptied `buf`.
fn encode_map_key(
    buf: &mut Vec<u8>,
    group: KeyGroup,
    key: &[u8],
    user_key: &[u8],
) -> Result<(), StateError> {
    buf.clear();
    append_map_key(buf, group, key, user_key)
}

/// The `[length]` of a list element's frame.
fn frame_header(value: &[u8]) -> Result<[u8; 4], StateError> {
    u32::try_from(value.len())
        .map(u32::to_be_bytes)
        .map_err(|_| {
            StateError::Corrupt(format!(
                "a list element of {} bytes is too long (at most 4 GiB)",
                value.len()
            ))
        })
}

/// Appends one list element as `[length][bytes]`.
fn push_frame(buf: &mut Vec<u8>, value: &[u8]) -> Result<(), StateError> {
    buf.extend_from_slice(&frame_header(value)?);
    buf.extend_from_slice(value);
    Ok(())
}

/// Splits the first element off `frames`: `None` when they do not start with a whole
/// frame.
fn split_frame(frames: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = frames.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// Whether `frames` is whole frames and nothing else.
fn whole_frames(mut frames: &[u8]) -> bool {
    while !frames.is_empty() {
        match split_frame(frames) {
            Some((_, rest)) => frames = rest,
            None => return false,
        }
    }
    true
}

/// The elements of frames that [`whole_frames`] accepted, oldest first.
fn elements(mut frames: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (element, rest) = split_frame(frames)?;
        frames = rest;
        Some(element)
    })
}

/// The elements of a stored list, oldest first.
fn decode_frames(frames: &[u8]) -> Option<Vec<Vec<u8>>> {
    whole_frames(frames).then(|| elements(frames).map(<[u8]>::to_vec).collect())
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

/// The files of the native checkpoint in `dir`, sorted by name, each with how to upload
/// it.
fn list_snapshot(
    dir: &Path,
    incremental: bool,
    instance: &str,
    confirmed: &HashMap<String, FileHandle>,
) -> Result<Vec<LocalFile>, StateError> {
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
        let upload = upload_for(&name, incremental, instance, confirmed);
        files.push(LocalFile {
            name,
            path: entry.path(),
            upload,
        });
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

/// Where a list's elements come from, as the buffers see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ListBase {
    /// A buffer put or deleted the whole list: its pieces are all of it.
    Buffered,
    /// The database holds what lies under the pieces. `frozen_pieces` says whether
    /// some come from frozen buffers, which the database may hold as well.
    Database { frozen_pieces: bool },
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
        let cache = Cache::new_lru_cache(options.block_cache_bytes);
        let db = fresh_database(&options, &cache)?;
        let mut write = WriteOptions::default();
        // Checkpoints give durability: a failure restores the last checkpoint, never
        // the local database, so a write-ahead log would be written and never read.
        write.disable_wal(true);
        Ok(Self {
            groups,
            options,
            db: Some(Arc::new(db)),
            cache,
            states: Vec::new(),
            ids: HashMap::new(),
            write,
            read: ReadOptions::default(),
            active: Buffer::default(),
            frozen: Vec::new(),
            frozen_bytes: 0,
            flight: None,
            key: RefCell::new(Vec::new()),
            keys: RefCell::new(Blobs::new()),
            confirmed: Arc::default(),
            uploads: Arc::default(),
            savepoints: BTreeSet::new(),
        })
    }

    /// The directory of the native checkpoint of checkpoint or savepoint `checkpoint`:
    /// beside the live database, never inside it, so it outlives the backend until it is
    /// uploaded. Savepoints have their own names, so that one never meets a checkpoint's
    /// directory whatever the ids.
    fn snapshot_dir(&self, checkpoint: CheckpointId, kind: SnapshotType) -> PathBuf {
        let what = if kind.is_savepoint() {
            "savepoint"
        } else {
            "chk"
        };
        self.sibling(&format!(
            "{}-{what}-{}",
            self.options.instance, checkpoint.0
        ))
    }

    /// `name` beside the working directory.
    fn sibling(&self, name: &str) -> PathBuf {
        match self.options.dir.parent() {
            Some(parent) => parent.join(name),
            // `open` refused a directory without a parent.
            None => PathBuf::from(name),
        }
    }

    fn unusable(&self) -> StateError {
        StateError::Corrupt(format!(
            "the RocksDB backend in {} is unusable: a restore failed",
            self.options.dir.display()
        ))
    }

    fn db(&self) -> Result<&Db, StateError> {
        self.db.as_deref().ok_or_else(|| self.unusable())
    }

    /// The index of `state` in `states` and in the buffers, which must be of `kind`.
    fn state_index(&self, state: StateId, kind: StateKind) -> Result<usize, StateError> {
        let index = usize::try_from(state.0).map_err(|_| StateError::UnknownState(state))?;
        let entry = self
            .states
            .get(index)
            .ok_or(StateError::UnknownState(state))?;
        if entry.kind != kind {
            return Err(StateError::WrongKind(state, kind));
        }
        Ok(index)
    }

    /// The kind of `state`.
    fn kind_of(&self, state: StateId) -> Result<StateKind, StateError> {
        usize::try_from(state.0)
            .ok()
            .and_then(|i| self.states.get(i))
            .map(|s| s.kind)
            .ok_or(StateError::UnknownState(state))
    }

    /// The database and the column family of state `index`.
    fn column_family(&self, index: usize) -> Result<(&Db, &ColumnFamily), StateError> {
        let db = self.db()?;
        let entry = &self.states[index];
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

    fn state_name(&self, state: StateId) -> &str {
        usize::try_from(state.0)
            .ok()
            .and_then(|i| self.states.get(i))
            .map_or("?", |s| s.name.as_str())
    }

    /// A RocksDB failure of operation `op` on `state`.
    fn state_failure(&self, state: StateId, op: &str, error: rocksdb::Error) -> StateError {
        failure(
            format_args!(
                "RocksDB {op} on state `{}` in {}",
                self.state_name(state),
                self.options.dir.display()
            ),
            error,
        )
    }

    /// A list of `state` that does not decode.
    fn corrupt_list(&self, state: StateId) -> StateError {
        StateError::Corrupt(format!(
            "a list of state `{}` in {} does not decode",
            self.state_name(state),
            self.options.dir.display()
        ))
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

    /// Runs `f` with the keys of a bulk call, each appended by `encode` (given the
    /// key's index) to the reused bulk key buffer.
    fn with_keys<R>(
        &self,
        keys: GroupedKeys<'_>,
        mut encode: impl FnMut(&mut Vec<u8>, usize, KeyGroup, &[u8]) -> Result<(), StateError>,
        f: impl FnOnce(&Blobs) -> Result<R, StateError>,
    ) -> Result<R, StateError> {
        let mut fill = |encoded: &mut Blobs| -> Result<(), StateError> {
            encoded.clear();
            for (i, (group, key)) in keys.iter().enumerate() {
                let mut result = Ok(());
                encoded.push_with(|buf| result = encode(buf, i, group, key));
                result?;
            }
            Ok(())
        };
        match self.keys.try_borrow_mut() {
            Ok(mut encoded) => {
                fill(&mut encoded)?;
                f(&encoded)
            }
            // Only a re-entrant call finds the buffer taken; it gets one of its own.
            Err(_) => {
                let mut encoded = Blobs::new();
                fill(&mut encoded)?;
                f(&encoded)
            }
        }
    }

    /// What the buffers hold for `key` in value or map state `index`: `Some(value)` or
    /// `Some(None)` (deleted) when a buffer decides, `None` when the database does.
    fn buffered(&self, index: usize, key: &[u8]) -> Option<Option<&[u8]>> {
        let layers = std::iter::once(&self.active).chain(self.frozen.iter().rev().map(|b| &**b));
        for buffer in layers {
            match buffer.get(index, key) {
                Some(Pending::Put(value)) => return Some(Some(value)),
                Some(Pending::Delete) => return Some(None),
                // Value and map states have no appends.
                Some(Pending::Append(_)) | None => {}
            }
        }
        None
    }

    /// Pushes to `pieces` what the buffers hold for list `key` of state `index`, newest
    /// first: the active buffer's, then the frozen ones'. Returns where the rest comes
    /// from, and how many of the pieces are the active buffer's.
    fn buffered_list<'a>(
        &'a self,
        index: usize,
        key: &[u8],
        pieces: &mut Vec<&'a [u8]>,
    ) -> (ListBase, usize) {
        let mut active_pieces = 0;
        let layers = std::iter::once(&self.active).chain(self.frozen.iter().rev().map(|b| &**b));
        for (depth, buffer) in layers.enumerate() {
            match buffer.get(index, key) {
                Some(Pending::Put(frames)) => {
                    pieces.push(frames);
                    return (ListBase::Buffered, active_pieces);
                }
                Some(Pending::Delete) => return (ListBase::Buffered, active_pieces),
                Some(Pending::Append(frames)) => {
                    pieces.push(frames);
                    if depth == 0 {
                        active_pieces = 1;
                    }
                }
                None => {}
            }
        }
        let frozen_pieces = pieces.len() > active_pieces;
        (ListBase::Database { frozen_pieces }, active_pieces)
    }

    /// Runs `read`, a read of the database, and says whether the database held the
    /// frozen buffers for it. Only a read that puts a frozen append on top of the
    /// database needs to know (see the module docs); it pays two locks.
    fn read_under_frozen<R>(
        &self,
        mut read: impl FnMut() -> Result<R, StateError>,
    ) -> Result<(R, bool), StateError> {
        let Some(flight) = &self.flight else {
            // No job is out: frozen buffers left are ones a job did not write.
            return Ok((read()?, false));
        };
        loop {
            if flight.written() {
                return Ok((read()?, true));
            }
            let result = read()?;
            // Not written before the read, and no write began since (a failed write
            // changes nothing): the read cannot have seen the batch. Else read again.
            if matches!(
                flight.lock().phase,
                Phase::Waiting | Phase::Revoked | Phase::Unwritten
            ) {
                return Ok((result, false));
            }
        }
    }

    /// Waits until the job in flight, if any, lets go of the database: at most one is
    /// out, and nothing may reach the database before its native checkpoint is taken.
    /// Returns the buffers it wrote, no longer needed; those it did not write (it failed
    /// or was dropped unrun) stay frozen.
    fn settle(&mut self) -> Vec<Arc<Buffer>> {
        let Some(flight) = self.flight.take() else {
            return Vec::new();
        };
        if flight.wait_while(|p| p.busy).phase != Phase::Written {
            return Vec::new();
        }
        self.frozen_bytes = 0;
        std::mem::take(&mut self.frozen)
    }

    /// Revokes the job in flight if it has not started; waits for it to let go of the
    /// database if it has, or, with `until_dropped`, in any case (until a revoked job is
    /// run or dropped).
    fn abandon(&mut self, until_dropped: bool) {
        let Some(flight) = self.flight.take() else {
            return;
        };
        let mut progress = flight.lock();
        if progress.phase == Phase::Waiting {
            progress.phase = Phase::Revoked;
        }
        drop(progress);
        flight.changed.notify_all();
        drop(flight.wait_while(|p| p.busy && (until_dropped || p.phase != Phase::Revoked)));
    }

    /// Writes the buffers to the database when they hold
    /// [`RocksDbOptions::write_behind_bytes`]: a spill.
    fn spill_if_full(&mut self) -> Result<(), StateError> {
        if self.active.bytes + self.frozen_bytes < self.options.write_behind_bytes {
            return Ok(());
        }
        self.spill()
    }

    /// Writes the frozen and active buffers to the database as one batch, without a
    /// flush, once the job in flight has taken its checkpoint.
    fn spill(&mut self) -> Result<(), StateError> {
        drop(self.settle());
        let column_families: Vec<String> = self
            .states
            .iter()
            .map(|s| s.column_family.clone())
            .collect();
        let db = self.db()?;
        let mut batch = WriteBatch::default();
        for buffer in self.frozen.iter().map(|b| &**b).chain([&self.active]) {
            buffer.write_to(&mut batch, db, &column_families, &self.options.dir)?;
        }
        db.write_opt(batch, &self.write).map_err(|e| {
            failure(
                format_args!(
                    "writing the full write-behind buffer to RocksDB in {}",
                    self.options.dir.display()
                ),
                e,
            )
        })?;
        self.frozen.clear();
        self.frozen_bytes = 0;
        self.active = Buffer::default();
        Ok(())
    }

    /// Marks every live entry of the map of `key` deleted.
    fn clear_map(&mut self, state: StateId, group: KeyGroup, key: &[u8]) -> Result<(), StateError> {
        let index = self.state_index(state, StateKind::Map)?;
        // One point tombstone per live entry, as Flink clears a map: range tombstones
        // are cheaper to write but every later read in their range pays for them.
        let entries = self.map_entries(state, group, key)?;
        let full = self.key.get_mut();
        encode_map_prefix(full, group, key)?;
        let prefix = full.len();
        for (user_key, _) in entries {
            full.truncate(prefix);
            full.extend_from_slice(&user_key);
            self.active.update(index, full, |_| Pending::Delete);
        }
        Ok(())
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

    /// Opens the database `restore` moved into the working directory.
    fn open_restored(&self) -> Result<Db, StateError> {
        let dir = &self.options.dir;
        let (db_opts, descriptors) = descriptors(dir, &self.options, &self.cache)?;
        Db::open_cf_descriptors(&db_opts, dir, descriptors).map_err(|e| {
            failure(
                format_args!("opening the restored RocksDB database in {}", dir.display()),
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
    // point-in-time view of the memtable: there are no RocksDB snapshots; the one write
    // that runs beside reads is a job's batch, whose keys every read takes from the
    // frozen buffer instead (or, for a list append, waits out); and flushes read only
    // immutable memtables.
    opts.set_inplace_update_support(true);
    // A bloom filter over the memtable's keys (10% of its size), so that a get of a key
    // the memtable lacks skips the skip-list search: +7-10% on the counter benchmark.
    opts.set_memtable_whole_key_filtering(true);
    opts.set_memtable_prefix_bloom_ratio(0.1);
    // Compacted SSTs of 16 MiB, not RocksDB's 64 MiB: an upload holds its file in
    // memory, and a compaction that rewrites a little state then makes (and an
    // incremental checkpoint uploads) a small file rather than a large one.
    opts.set_target_file_size_base(TARGET_FILE_BYTES);
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

/// Creates the column family of state `id` in `db` and records its name in the default
/// column family, so that a snapshot carries it.
fn create_state(
    db: &mut Db,
    options: &RocksDbOptions,
    cache: &Cache,
    write: &WriteOptions,
    id: u32,
    name: &str,
    kind: StateKind,
) -> Result<State, StateError> {
    let dir = options.dir.display();
    let column_family = column_family_name(kind, id);
    let opts = column_family_options(options, cache, kind);
    db.create_cf(&column_family, &opts).map_err(|e| {
        failure(
            format_args!("creating column family {column_family} for state `{name}` in {dir}"),
            e,
        )
    })?;
    db.put_opt(column_family.as_bytes(), name.as_bytes(), write)
        .map_err(|e| failure(format_args!("recording state `{name}` in {dir}"), e))?;
    Ok(State {
        name: name.to_owned(),
        kind,
        column_family,
    })
}

/// A new, empty database in `options.dir`, whatever was there removed.
fn fresh_database(options: &RocksDbOptions, cache: &Cache) -> Result<Db, StateError> {
    let dir = options.dir.display();
    remove_dir_if_exists(&options.dir)
        .and_then(|()| fs::create_dir_all(&options.dir))
        .map_err(|e| failure(format_args!("creating the RocksDB directory {dir}"), e))?;
    Db::open(&db_options(options, cache), &options.dir)
        .map_err(|e| failure(format_args!("opening RocksDB in {dir}"), e))
}

/// How a database of this backend in `dir` is opened: the database's options and a
/// descriptor per state's column family, whose options its name's kind picks.
fn descriptors(
    dir: &Path,
    options: &RocksDbOptions,
    cache: &Cache,
) -> Result<(Options, Vec<ColumnFamilyDescriptor>), StateError> {
    let shown = dir.display();
    let db_opts = db_options(options, cache);
    let names = Db::list_cf(&db_opts, dir)
        .map_err(|e| failure(format_args!("listing the column families in {shown}"), e))?;
    let mut descriptors = Vec::new();
    for name in names.into_iter().filter(|n| n != "default") {
        let Some((kind, _)) = parse_column_family_name(&name) else {
            return Err(StateError::Corrupt(format!(
                "the RocksDB database in {shown} has an unknown column family {name}"
            )));
        };
        let opts = column_family_options(options, cache, kind);
        descriptors.push(ColumnFamilyDescriptor::new(name, opts));
    }
    Ok((db_opts, descriptors))
}

/// Opens the database in `dir` read-only: a native checkpoint being encoded, or another
/// subtask's database being cut from.
fn open_read_only(dir: &Path, options: &RocksDbOptions, cache: &Cache) -> Result<Db, StateError> {
    let (db_opts, descriptors) = descriptors(dir, options, cache)?;
    Db::open_cf_descriptors_read_only(&db_opts, dir, descriptors, false).map_err(|e| {
        failure(
            format_args!(
                "opening the RocksDB database in {} read-only",
                dir.display()
            ),
            e,
        )
    })
}

/// Read options for one pass over every key of the key groups `groups`: bounded to them,
/// and leaving the block cache to the live working set.
fn scan_groups(groups: KeyGroupRange) -> ReadOptions {
    let mut read = ReadOptions::default();
    read.fill_cache(false);
    read.set_iterate_upper_bound(groups.end.to_be_bytes().to_vec());
    read
}

/// Reads the states of a database from its default column family.
fn recover_states(db: &Db, dir: &Path) -> Result<Vec<State>, StateError> {
    let dir = dir.display();
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

/// The key and user key of a map entry's key after its key group: the inverse of
/// [`append_map_key`].
fn split_map_key(rest: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = rest.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// The one key whose map entries [`write_group`] is collecting, and them.
#[derive(Default)]
struct OpenMap {
    key: Option<Vec<u8>>,
    entries: MapEntries,
}

impl OpenMap {
    /// Writes the map collected, if any, as state `id`'s entry.
    fn close(&mut self, out: &mut SectionWriter, id: u32) {
        if let Some(key) = self.key.take() {
            let entries = self.entries.iter();
            out.map(id, &key, entries.map(|(u, v)| (u.as_slice(), v.as_slice())));
            self.entries.clear();
        }
    }
}

/// Writes the entries of `state` (id `id`) in key group `group` to `out`, from `it`,
/// which is at the first of them or past them, and leaves it past them.
fn write_group(
    out: &mut SectionWriter,
    it: &mut DBRawIteratorWithThreadMode<'_, Db>,
    id: u32,
    state: &State,
    group: KeyGroup,
    open: &mut OpenMap,
) -> Result<(), StateError> {
    let tag = group.0.to_be_bytes();
    let corrupt = |what: &str| {
        StateError::Corrupt(format!(
            "a key of state `{}` in key group {} {what}",
            state.name, group.0
        ))
    };
    while let Some((key, value)) = it.item() {
        let Some(rest) = key.strip_prefix(&tag) else {
            // Keys are in order, so one of a later key group ends this one; any other
            // key does not start with a key group.
            if key.len() < tag.len() || key[..tag.len()] < tag[..] {
                return Err(corrupt("does not start with its key group"));
            }
            break;
        };
        match state.kind {
            StateKind::Value => out.value(id, rest, value),
            StateKind::List => {
                if !whole_frames(value) {
                    return Err(corrupt("holds a list that does not decode"));
                }
                let list: Vec<&[u8]> = elements(value).collect();
                // An empty list is no entry, as in the heap backend.
                if !list.is_empty() {
                    out.list(id, rest, list.into_iter());
                }
            }
            StateKind::Map => {
                let (key, user_key) =
                    split_map_key(rest).ok_or_else(|| corrupt("is not a map entry's key"))?;
                if open.key.as_deref() != Some(key) {
                    open.close(out, id);
                    open.key = Some(key.to_vec());
                }
                open.entries.push((user_key.to_vec(), value.to_vec()));
            }
        }
        it.next();
    }
    open.close(out, id);
    Ok(())
}

/// What a canonical savepoint's writer needs besides its [`Job`].
struct Encoder {
    options: RocksDbOptions,
    cache: Cache,
    /// The states when the savepoint was taken, by id: exactly the column families of
    /// its native checkpoint, as states are created only when no job is out.
    states: Vec<State>,
    groups: KeyGroupRange,
}

impl Encoder {
    /// Writes the native checkpoint in `dir` in the canonical format (see the module
    /// docs).
    fn encode(&self, dir: &Path) -> Result<KeyedState, StateError> {
        let db = open_read_only(dir, &self.options, &self.cache)?;
        let mut cursors = Vec::with_capacity(self.states.len());
        for state in &self.states {
            let cf = db.cf_handle(&state.column_family).ok_or_else(|| {
                StateError::Corrupt(format!(
                    "the RocksDB checkpoint {} lacks column family {} of state `{}` (host bug)",
                    dir.display(),
                    state.column_family,
                    state.name
                ))
            })?;
            let mut it = db.raw_iterator_cf_opt(cf, scan_groups(self.groups));
            it.seek(self.groups.start.to_be_bytes());
            cursors.push(it);
        }
        let mut out = SectionWriter::new();
        let mut open = OpenMap::default();
        for group in self.groups.start..self.groups.end {
            out.group(KeyGroup(group));
            for ((id, state), it) in (0u32..).zip(&self.states).zip(&mut cursors) {
                write_group(&mut out, it, id, state, KeyGroup(group), &mut open)?;
            }
        }
        for (state, it) in self.states.iter().zip(&cursors) {
            it.status().map_err(|e| {
                failure(
                    format_args!(
                        "reading state `{}` from the RocksDB checkpoint {}",
                        state.name,
                        dir.display()
                    ),
                    e,
                )
            })?;
        }
        Ok(KeyedState {
            states: self
                .states
                .iter()
                .map(|s| StateDecl {
                    name: s.name.clone(),
                    kind: s.kind.into(),
                })
                .collect(),
            sections: out.finish(),
        })
    }
}

impl KeyedStateBackend for RocksDbBackend {
    fn open_state(&mut self, name: &str, kind: StateKind) -> Result<StateId, StateError> {
        if let Some(&id) = self.ids.get(name) {
            let existing = self.kind_of(id)?;
            if existing != kind {
                return Err(StateError::KindMismatch {
                    name: name.to_owned(),
                    existing,
                    requested: kind,
                });
            }
            return Ok(id);
        }
        let id = u32::try_from(self.states.len()).map_err(|_| {
            StateError::Corrupt(format!("cannot open state `{name}`: too many states"))
        })?;
        // Creating a column family needs the database to itself, and the name record
        // below must not reach a checkpoint still being taken: states are opened as an
        // operator starts, so waiting for a job in flight here is rare.
        drop(self.settle());
        let dir = self.options.dir.display();
        let db = self
            .db
            .as_mut()
            .ok_or_else(|| {
                StateError::Corrupt(format!(
                    "the RocksDB backend in {dir} is unusable: a restore failed"
                ))
            })
            .and_then(|db| {
                Arc::get_mut(db).ok_or_else(|| {
                    StateError::Corrupt(format!(
                        "the RocksDB database in {dir} is still held by a snapshot that \
                         finished (host bug)"
                    ))
                })
            })?;
        let state = create_state(db, &self.options, &self.cache, &self.write, id, name, kind)?;
        self.states.push(state);
        self.ids.insert(name.to_owned(), StateId(id));
        Ok(StateId(id))
    }

    fn value_get(
        &self,
        state: StateId,
        group: KeyGroup,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, StateError> {
        let index = self.state_index(state, StateKind::Value)?;
        self.with_key(
            |buf| {
                encode_key(buf, group, key);
                Ok(())
            },
            |k| self.get(state, index, k),
        )
    }

    fn value_set(
        &mut self,
        state: StateId,
        group: KeyGroup,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<(), StateError> {
        let index = self.state_index(state, StateKind::Value)?;
        let k = self.key.get_mut();
        encode_key(k, group, &key);
        self.active.update(index, k, |_| Pending::Put(value));
        self.spill_if_full()
    }

    fn list_get(
        &self,
        state: StateId,
        group: KeyGroup,
        key: &[u8],
    ) -> Result<Vec<Vec<u8>>, StateError> {
        let index = self.state_index(state, StateKind::List)?;
        self.with_key(
            |buf| {
                encode_key(buf, group, key);
                Ok(())
            },
            |k| {
                let mut pieces = Vec::new();
                let (base, active_pieces) = self.buffered_list(index, k, &mut pieces);
                let mut list = Vec::new();
                if let ListBase::Database { frozen_pieces } = base {
                    let (db, cf) = self.column_family(index)?;
                    let read = || {
                        db.get_pinned_cf_opt(cf, k, &self.read)
                            .map_err(|e| self.state_failure(state, "get", e))
                    };
                    let stored = if frozen_pieces {
                        let (stored, frozen_in_db) = self.read_under_frozen(read)?;
                        if frozen_in_db {
                            pieces.truncate(active_pieces);
                        }
                        stored
                    } else {
                        read()?
                    };
                    if let Some(frames) = stored {
                        list = decode_frames(&frames).ok_or_else(|| self.corrupt_list(state))?;
                    }
                }
                for frames in pieces.iter().rev() {
                    if !whole_frames(frames) {
                        return Err(self.corrupt_list(state));
                    }
                    list.extend(elements(frames).map(<[u8]>::to_vec));
                }
                Ok(list)
            },
        )
    }

    fn list_add(
        &mut self,
        state: StateId,
        group: KeyGroup,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<(), StateError> {
        let index = self.state_index(state, StateKind::List)?;
        let header = frame_header(&value)?;
        let k = self.key.get_mut();
        encode_key(k, group, &key);
        self.active
            .update(index, k, |old| append(old, header, &value));
        self.spill_if_full()
    }

    fn list_update(
        &mut self,
        state: StateId,
        group: KeyGroup,
        key: Vec<u8>,
        values: Vec<Vec<u8>>,
    ) -> Result<(), StateError> {
        let index = self.state_index(state, StateKind::List)?;
        // An empty list is no entry, as in the heap backend.
        let entry = if values.is_empty() {
            Pending::Delete
        } else {
            let mut frames = Vec::with_capacity(values.iter().map(|v| 4 + v.len()).sum());
            for value in &values {
                push_frame(&mut frames, value)?;
            }
            Pending::Put(frames)
        };
        let k = self.key.get_mut();
        encode_key(k, group, &key);
        self.active.update(index, k, |_| entry);
        self.spill_if_full()
    }

    fn map_get(
        &self,
        state: StateId,
        group: KeyGroup,
        key: &[u8],
        user_key: &[u8],
    ) -> Result<Option<Vec<u8>>, StateError> {
        let index = self.state_index(state, StateKind::Map)?;
        self.with_key(
            |buf| encode_map_key(buf, group, key, user_key),
            |k| self.get(state, index, k),
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
        let index = self.state_index(state, StateKind::Map)?;
        let k = self.key.get_mut();
        encode_map_key(k, group, &key, &user_key)?;
        self.active.update(index, k, |_| Pending::Put(value));
        self.spill_if_full()
    }

    fn map_remove(
        &mut self,
        state: StateId,
        group: KeyGroup,
        key: &[u8],
        user_key: &[u8],
    ) -> Result<(), StateError> {
        let index = self.state_index(state, StateKind::Map)?;
        let k = self.key.get_mut();
        encode_map_key(k, group, key, user_key)?;
        self.active.update(index, k, |_| Pending::Delete);
        self.spill_if_full()
    }

    fn map_entries(
        &self,
        state: StateId,
        group: KeyGroup,
        key: &[u8],
    ) -> Result<MapEntries, StateError> {
        let index = self.state_index(state, StateKind::Map)?;
        let (db, cf) = self.column_family(index)?;
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
                // Oldest first, so that each buffer overrides what lies below it. A frozen
                // buffer gives the same entries whether the database holds it yet or not.
                let layers = self.frozen.iter().map(|b| &**b).chain([&self.active]);
                for buffer in layers {
                    let mut layer = buffer.prefixed(index, prefix).peekable();
                    if layer.peek().is_some() {
                        entries = overlay(entries, layer, prefix.len());
                    }
                }
                Ok(entries)
            },
        )
    }

    fn clear(&mut self, state: StateId, group: KeyGroup, key: &[u8]) -> Result<(), StateError> {
        match self.kind_of(state)? {
            StateKind::Value | StateKind::List => {
                let index =
                    usize::try_from(state.0).map_err(|_| StateError::UnknownState(state))?;
                let k = self.key.get_mut();
                encode_key(k, group, key);
                self.active.update(index, k, |_| Pending::Delete);
            }
            StateKind::Map => self.clear_map(state, group, key)?,
        }
        self.spill_if_full()
    }

    fn value_get_many(
        &self,
        state: StateId,
        keys: GroupedKeys<'_>,
        out: &mut MaybeBlobs,
    ) -> Result<(), StateError> {
        let index = self.state_index(state, StateKind::Value)?;
        self.with_keys(
            keys,
            |buf, _, group, key| {
                append_key(buf, group, key);
                Ok(())
            },
            |encoded| self.get_many(state, index, encoded, out),
        )
    }

    fn value_set_many(
        &mut self,
        state: StateId,
        keys: GroupedKeys<'_>,
        values: &Blobs,
    ) -> Result<(), StateError> {
        let index = self.state_index(state, StateKind::Value)?;
        let k = self.key.get_mut();
        for (i, (group, key)) in keys.iter().enumerate() {
            encode_key(k, group, key);
            self.active.update(index, k, |old| put(old, values.get(i)));
        }
        self.spill_if_full()
    }

    fn clear_many(&mut self, state: StateId, keys: GroupedKeys<'_>) -> Result<(), StateError> {
        match self.kind_of(state)? {
            StateKind::Value | StateKind::List => {
                let index =
                    usize::try_from(state.0).map_err(|_| StateError::UnknownState(state))?;
                let k = self.key.get_mut();
                for (group, key) in keys.iter() {
                    encode_key(k, group, key);
                    self.active.update(index, k, |_| Pending::Delete);
                }
            }
            StateKind::Map => {
                for (group, key) in keys.iter() {
                    self.clear_map(state, group, key)?;
                }
            }
        }
        self.spill_if_full()
    }

    fn list_get_many(
        &self,
        state: StateId,
        keys: GroupedKeys<'_>,
        out: &mut BlobLists,
    ) -> Result<(), StateError> {
        let index = self.state_index(state, StateKind::List)?;
        self.with_keys(
            keys,
            |buf, _, group, key| {
                append_key(buf, group, key);
                Ok(())
            },
            |encoded| {
                // Every key's buffered pieces, newest first, one run per key.
                let mut pieces = Vec::new();
                let mut lists = Vec::with_capacity(encoded.len());
                let mut frozen_pieces = false;
                for k in encoded.iter() {
                    let start = pieces.len();
                    let (base, active) = self.buffered_list(index, k, &mut pieces);
                    if let ListBase::Database {
                        frozen_pieces: true,
                    } = base
                    {
                        frozen_pieces = true;
                    }
                    lists.push((start, pieces.len(), base, start + active));
                }
                let from_db = |(_, _, base, _): &(usize, usize, ListBase, usize)| {
                    matches!(base, ListBase::Database { .. })
                };
                let (stored, frozen_in_db) = if lists.iter().any(from_db) {
                    let (db, cf) = self.column_family(index)?;
                    let read = || {
                        let wanted = encoded.iter().zip(&lists).filter(|(_, l)| from_db(l));
                        Ok(db.batched_multi_get_cf_opt(
                            cf,
                            wanted.map(|(k, _)| k),
                            false,
                            &self.read,
                        ))
                    };
                    if frozen_pieces {
                        self.read_under_frozen(read)?
                    } else {
                        (read()?, false)
                    }
                } else {
                    (Vec::new(), false)
                };
                let mut stored = stored.into_iter();
                for &(start, end, base, active_end) in &lists {
                    let mut db_frames: Option<DBPinnableSlice<'_>> = None;
                    let mut end = end;
                    if let ListBase::Database { frozen_pieces } = base {
                        db_frames = stored
                            .next()
                            .ok_or_else(|| missing_result(&self.options.dir))?
                            .map_err(|e| self.state_failure(state, "multi-get", e))?;
                        if frozen_pieces && frozen_in_db {
                            end = active_end;
                        }
                    }
                    let run = &pieces[start..end];
                    let parts = db_frames
                        .as_deref()
                        .into_iter()
                        .chain(run.iter().rev().copied());
                    if !parts.clone().all(whole_frames) {
                        return Err(self.corrupt_list(state));
                    }
                    out.push(parts.flat_map(elements));
                }
                Ok(())
            },
        )
    }

    fn list_add_many(
        &mut self,
        state: StateId,
        keys: GroupedKeys<'_>,
        values: &Blobs,
    ) -> Result<(), StateError> {
        let index = self.state_index(state, StateKind::List)?;
        let k = self.key.get_mut();
        for (i, (group, key)) in keys.iter().enumerate() {
            let value = values.get(i);
            let header = frame_header(value)?;
            encode_key(k, group, key);
            self.active
                .update(index, k, |old| append(old, header, value));
        }
        self.spill_if_full()
    }

    fn map_get_many(
        &self,
        state: StateId,
        keys: GroupedKeys<'_>,
        user_keys: &Blobs,
        out: &mut MaybeBlobs,
    ) -> Result<(), StateError> {
        let index = self.state_index(state, StateKind::Map)?;
        self.with_keys(
            keys,
            |buf, i, group, key| append_map_key(buf, group, key, user_keys.get(i)),
            |encoded| self.get_many(state, index, encoded, out),
        )
    }

    fn map_put_many(
        &mut self,
        state: StateId,
        keys: GroupedKeys<'_>,
        user_keys: &Blobs,
        values: &Blobs,
    ) -> Result<(), StateError> {
        let index = self.state_index(state, StateKind::Map)?;
        let k = self.key.get_mut();
        for (i, (group, key)) in keys.iter().enumerate() {
            encode_map_key(k, group, key, user_keys.get(i))?;
            self.active.update(index, k, |old| put(old, values.get(i)));
        }
        self.spill_if_full()
    }

    fn map_remove_many(
        &mut self,
        state: StateId,
        keys: GroupedKeys<'_>,
        user_keys: &Blobs,
    ) -> Result<(), StateError> {
        let index = self.state_index(state, StateKind::Map)?;
        let k = self.key.get_mut();
        for (i, (group, key)) in keys.iter().enumerate() {
            encode_map_key(k, group, key, user_keys.get(i))?;
            self.active.update(index, k, |_| Pending::Delete);
        }
        self.spill_if_full()
    }

    /// Freezes the active buffer and hands the rest to the asynchronous phase: writing
    /// it, the native checkpoint, and the listing or, for a canonical savepoint, the
    /// encoding (see the module docs). It waits only for the previous snapshot's job to
    /// have taken its checkpoint.
    fn snapshot(
        &mut self,
        checkpoint: CheckpointId,
        kind: SnapshotType,
    ) -> Result<BackendSnapshot, StateError> {
        let job = self.job(checkpoint, kind)?;
        if kind.is_savepoint() {
            self.savepoints.insert(checkpoint);
        }
        match kind {
            SnapshotType::Checkpoint => {
                let uploads = Arc::clone(&self.uploads);
                let uploaded = Box::new(move |stored: &[StoredFile]| {
                    lock(&uploads).insert(checkpoint, stored.to_vec());
                });
                Ok(BackendSnapshot::Files(LocalSnapshot {
                    prepare: Box::new(move || job.run()),
                    uploaded,
                }))
            }
            // Stored in the savepoint's own place: later checkpoints must never refer to
            // its files, so where they went is told to no one.
            SnapshotType::NativeSavepoint => Ok(BackendSnapshot::Files(LocalSnapshot {
                prepare: Box::new(move || job.run()),
                uploaded: Box::new(|_| {}),
            })),
            SnapshotType::CanonicalSavepoint => {
                let encoder = Encoder {
                    options: self.options.clone(),
                    cache: self.cache.clone(),
                    states: self.states.clone(),
                    groups: self.groups,
                };
                Ok(BackendSnapshot::Encoded(Box::new(move || {
                    let dir = job.checkpoint()?;
                    let encoded = encoder.encode(&dir);
                    let removed = remove_dir_if_exists(&dir).map_err(|e| {
                        failure(
                            format_args!("removing the RocksDB checkpoint {}", dir.display()),
                            e,
                        )
                    });
                    let encoded = encoded?;
                    removed?;
                    Ok(encoded)
                })))
            }
        }
    }

    /// Drops all state, then builds it from what snapshots stored (see the module
    /// docs). A restore that fails leaves the backend unusable until the next one.
    fn restore(&mut self, restored: RestoredState) -> Result<(), StateError> {
        self.drop_state();
        match restored {
            RestoredState::Canonical(sections) => self.restore_canonical(&sections),
            RestoredState::Files(files) => self.restore_files(files),
        }
    }

    fn checkpoint_complete(&mut self, checkpoint: CheckpointId) {
        if self.savepoints.remove(&checkpoint) {
            return;
        }
        let next = CheckpointId(checkpoint.0.saturating_add(1));
        // A savepoint older than a completed checkpoint that completes after it is then
        // taken for a checkpoint without a report, which reuses nothing: safe, and it
        // keeps this set from growing with savepoints whose outcome never arrives.
        self.savepoints = self.savepoints.split_off(&next);
        let mut uploads = lock(&self.uploads);
        // Only the last completed checkpoint's files are certain to be kept by
        // retention. Without its report (it completed before its upload reported, or it
        // is not one of ours), reuse nothing rather than something retention may delete.
        self.confirmed = Arc::new(
            uploads
                .remove(&checkpoint)
                .map(|files| shared_ssts(&files))
                .unwrap_or_default(),
        );
        // Reports of older checkpoints can no longer complete usefully.
        *uploads = uploads.split_off(&next);
    }

    fn checkpoint_aborted(&mut self, checkpoint: CheckpointId) {
        self.savepoints.remove(&checkpoint);
        lock(&self.uploads).remove(&checkpoint);
    }
}

impl RocksDbBackend {
    /// The synchronous phase every snapshot shares: waits for the previous job to let go
    /// of the database, freezes the active buffer and hands out the job that writes the
    /// frozen buffers and takes the native checkpoint.
    fn job(&mut self, checkpoint: CheckpointId, kind: SnapshotType) -> Result<Job, StateError> {
        let retired = self.settle();
        let db = Arc::clone(self.db.as_ref().ok_or_else(|| self.unusable())?);
        if !self.active.is_empty() {
            let active = std::mem::take(&mut self.active);
            self.frozen_bytes += active.bytes;
            self.frozen.push(Arc::new(active));
        }
        let flight = Arc::new(Flight::new());
        self.flight = Some(Arc::clone(&flight));
        Ok(Job {
            db: Some(db),
            flight,
            checkpoint,
            buffers: self.frozen.clone(),
            retired,
            column_families: self
                .states
                .iter()
                .map(|s| s.column_family.clone())
                .collect(),
            working: self.options.dir.clone(),
            dir: self.snapshot_dir(checkpoint, kind),
            // A savepoint is self-contained: every file private.
            incremental: self.options.incremental && kind == SnapshotType::Checkpoint,
            instance: self.options.instance.clone(),
            confirmed: Arc::clone(&self.confirmed),
        })
    }

    /// Drops every state, the buffers and the database, as a restore begins: the
    /// restored state replaces them. A job in flight is revoked or waited for first.
    fn drop_state(&mut self) {
        // The live database closes only once no job holds it.
        self.abandon(true);
        self.active = Buffer::default();
        self.frozen.clear();
        self.frozen_bytes = 0;
        self.db = None;
        self.states.clear();
        self.ids.clear();
        self.confirmed = Arc::default();
        lock(&self.uploads).clear();
        self.savepoints.clear();
    }

    /// Makes `db`, holding `states`, the live database.
    fn install(&mut self, db: Db, states: Vec<State>) {
        self.ids = (0u32..)
            .zip(&states)
            .map(|(id, state)| (state.name.clone(), StateId(id)))
            .collect();
        self.states = states;
        self.db = Some(Arc::new(db));
    }

    /// The index in `states` of the state called `name` of `kind`, creating it in `db`
    /// if there is none: how a restore maps the states of old subtasks, each with its own
    /// ids, to one set.
    fn merge_state(
        &self,
        db: &mut Db,
        states: &mut Vec<State>,
        name: &str,
        kind: StateKind,
    ) -> Result<usize, StateError> {
        if let Some(index) = states.iter().position(|s| s.name == name) {
            let existing = states[index].kind;
            if existing != kind {
                return Err(StateError::Corrupt(format!(
                    "the restored snapshots hold state `{name}` as {existing:?} state and as \
                     {kind:?} state"
                )));
            }
            return Ok(index);
        }
        let id = u32::try_from(states.len()).map_err(|_| {
            StateError::Corrupt(format!("cannot restore state `{name}`: too many states"))
        })?;
        let state = create_state(db, &self.options, &self.cache, &self.write, id, name, kind)?;
        states.push(state);
        Ok(states.len() - 1)
    }

    /// Builds a fresh database from canonical sections, keeping the owned key groups.
    fn restore_canonical(&mut self, restored: &[KeyedSections]) -> Result<(), StateError> {
        let mut db = fresh_database(&self.options, &self.cache)?;
        let mut states = Vec::new();
        let dir = self.options.dir.display();
        let mut batch = WriteBatch::default();
        let mut key = Vec::new();
        let mut frames = Vec::new();
        let write = |db: &Db, batch: WriteBatch| {
            db.write_opt(batch, &self.write).map_err(|e| {
                failure(
                    format_args!("writing restored state to RocksDB in {dir}"),
                    e,
                )
            })
        };
        for old in restored {
            let indices = old
                .states
                .iter()
                .map(|decl| self.merge_state(&mut db, &mut states, &decl.name, decl.kind.into()))
                .collect::<Result<Vec<_>, _>>()?;
            let cfs = indices
                .iter()
                .map(|&i| {
                    db.cf_handle(&states[i].column_family).ok_or_else(|| {
                        StateError::Corrupt(format!(
                            "the column family {} of state `{}` is missing in {dir} (host bug)",
                            states[i].column_family, states[i].name
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            for (group, section) in &old.groups {
                if !self.groups.contains(*group) {
                    continue;
                }
                for entry in entries(&old.states, section) {
                    let entry = entry
                        .map_err(|e| StateError::Corrupt(format!("key group {}: {e}", group.0)))?;
                    // `entries` checked the index against the states.
                    let cf = cfs[entry.state as usize];
                    match entry.value {
                        EntryValue::Value(value) => {
                            encode_key(&mut key, *group, entry.key);
                            batch.put_cf(cf, &key, value);
                        }
                        // An empty list is no entry, as in the heap backend.
                        EntryValue::List(list) if list.is_empty() => {}
                        EntryValue::List(list) => {
                            frames.clear();
                            for element in list {
                                push_frame(&mut frames, element)?;
                            }
                            encode_key(&mut key, *group, entry.key);
                            batch.put_cf(cf, &key, &frames);
                        }
                        EntryValue::Map(map) => {
                            for (user_key, value) in map {
                                encode_map_key(&mut key, *group, entry.key, user_key)?;
                                batch.put_cf(cf, &key, value);
                            }
                        }
                    }
                    if batch.size_in_bytes() >= RESTORE_BATCH_BYTES {
                        write(&db, std::mem::take(&mut batch))?;
                    }
                }
            }
        }
        write(&db, batch)?;
        self.install(db, states);
        Ok(())
    }

    /// Takes the first restored directory over by renaming it to the working directory
    /// (or copying its files when it is on another file system), opens it and drops the
    /// key groups it does not own; then copies the owned key groups of every other one
    /// in and removes their directories (see the module docs).
    fn restore_files(&mut self, restored: Vec<RestoredFiles>) -> Result<(), StateError> {
        let mut restored = restored.into_iter();
        let Some(RestoredFiles { dir: from, files }) = restored.next() else {
            let db = fresh_database(&self.options, &self.cache)?;
            self.install(db, Vec::new());
            return Ok(());
        };
        let others: Vec<RestoredFiles> = restored.collect();
        let taken = self.take_over_files(&from, &others);
        for other in &others {
            // Best effort: a leftover download is of no use, and failing the restore
            // for it would only restore again into the same disk.
            let _ = remove_dir_if_exists(&other.dir);
        }
        let (db, states) = taken?;
        self.install(db, states);
        // The restored checkpoint is completed, so its shared SSTs can be referred to.
        self.confirmed = Arc::new(shared_ssts(&files));
        Ok(())
    }

    /// The database of [`Self::restore_files`], before it is installed.
    fn take_over_files(
        &self,
        from: &Path,
        others: &[RestoredFiles],
    ) -> Result<(Db, Vec<State>), StateError> {
        // Restoring from the working directory itself opens it in place.
        if from != self.options.dir {
            let dir = self.options.dir.display();
            remove_dir_if_exists(&self.options.dir)
                .and_then(|()| take_over(from, &self.options.dir))
                .map_err(|e| {
                    failure(
                        format_args!("moving the restored files from {} to {dir}", from.display()),
                        e,
                    )
                })?;
        }
        let mut db = self.open_restored()?;
        let mut states = recover_states(&db, &self.options.dir)?;
        for state in &states {
            self.clip_to_groups(&db, state)?;
        }
        if others.is_empty() {
            return Ok((db, states));
        }
        let staging = self.sibling(&format!("{}-rescale", self.options.instance));
        let shown = staging.display();
        remove_dir_if_exists(&staging)
            .and_then(|()| fs::create_dir_all(&staging))
            .map_err(|e| failure(format_args!("creating the directory {shown}"), e))?;
        let copied = others.iter().enumerate().try_for_each(|(n, other)| {
            self.copy_owned_groups(&mut db, &mut states, &other.dir, &staging, n)
        });
        // Best effort: ingesting moved every SST that made it; the next restore wipes
        // what is left.
        let _ = remove_dir_if_exists(&staging);
        copied?;
        Ok((db, states))
    }

    /// Copies the keys of the owned key groups of every state of the database in
    /// `from` into the state of the same name in `db`: cut into SSTs in `staging`
    /// (named after `n`, the database's place among those copied), then ingested.
    fn copy_owned_groups(
        &self,
        db: &mut Db,
        states: &mut Vec<State>,
        from: &Path,
        staging: &Path,
        n: usize,
    ) -> Result<(), StateError> {
        let old_db = open_read_only(from, &self.options, &self.cache)?;
        let shown = from.display();
        for old in recover_states(&old_db, from)? {
            let index = self.merge_state(db, states, &old.name, old.kind)?;
            let Some(old_cf) = old_db.cf_handle(&old.column_family) else {
                continue;
            };
            let what = || format!("copying state `{}` from {shown}", old.name);
            let opts = column_family_options(&self.options, &self.cache, old.kind);
            let mut it = old_db.raw_iterator_cf_opt(old_cf, scan_groups(self.groups));
            it.seek(self.groups.start.to_be_bytes());
            let mut ssts = Vec::new();
            let mut writer: Option<SstFileWriter<'_>> = None;
            while let Some((key, value)) = it.item() {
                let sst = match &mut writer {
                    Some(sst) => sst,
                    None => {
                        let path =
                            staging.join(format!("{n}-{}-{}.sst", old.column_family, ssts.len()));
                        let sst = SstFileWriter::create(&opts);
                        sst.open(&path)
                            .map_err(|e| failure(format_args!("{}", what()), e))?;
                        ssts.push(path);
                        writer.insert(sst)
                    }
                };
                sst.put(key, value)
                    .map_err(|e| failure(format_args!("{}", what()), e))?;
                if sst.file_size() >= TARGET_FILE_BYTES {
                    sst.finish()
                        .map_err(|e| failure(format_args!("{}", what()), e))?;
                    writer = None;
                }
                it.next();
            }
            it.status()
                .map_err(|e| failure(format_args!("{}", what()), e))?;
            if let Some(mut sst) = writer {
                sst.finish()
                    .map_err(|e| failure(format_args!("{}", what()), e))?;
            }
            if ssts.is_empty() {
                continue;
            }
            let state = &states[index];
            let cf = db.cf_handle(&state.column_family).ok_or_else(|| {
                StateError::Corrupt(format!(
                    "the column family {} of state `{}` is missing in {} (host bug)",
                    state.column_family,
                    state.name,
                    self.options.dir.display()
                ))
            })?;
            let mut ingest = IngestExternalFileOptions::default();
            // The SSTs are of no use once ingested: linking them in beats copying.
            ingest.set_move_files(true);
            db.ingest_external_file_cf_opts(cf, &ingest, ssts)
                .map_err(|e| failure(format_args!("{}", what()), e))?;
        }
        Ok(())
    }
}

impl RocksDbBackend {
    /// The value of the encoded `key` in value or map state `index`: from the buffers,
    /// else from the database.
    fn get(&self, state: StateId, index: usize, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        if let Some(found) = self.buffered(index, key) {
            return Ok(found.map(<[u8]>::to_vec));
        }
        let (db, cf) = self.column_family(index)?;
        db.get_pinned_cf_opt(cf, key, &self.read)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| self.state_failure(state, "get", e))
    }

    /// The values of the encoded `keys` in value or map state `index`, appended to `out`:
    /// those the buffers decide, and the others from one batched read of the database.
    fn get_many(
        &self,
        state: StateId,
        index: usize,
        keys: &Blobs,
        out: &mut MaybeBlobs,
    ) -> Result<(), StateError> {
        let buffered: Vec<Option<Option<&[u8]>>> =
            keys.iter().map(|k| self.buffered(index, k)).collect();
        let stored = if buffered.iter().any(Option::is_none) {
            let (db, cf) = self.column_family(index)?;
            let wanted = keys.iter().zip(&buffered).filter(|(_, b)| b.is_none());
            db.batched_multi_get_cf_opt(cf, wanted.map(|(k, _)| k), false, &self.read)
        } else {
            Vec::new()
        };
        let mut stored = stored.into_iter();
        for found in buffered {
            match found {
                Some(value) => out.push(value),
                None => {
                    let value = stored
                        .next()
                        .ok_or_else(|| missing_result(&self.options.dir))?
                        .map_err(|e| self.state_failure(state, "multi-get", e))?;
                    out.push(value.as_deref());
                }
            }
        }
        Ok(())
    }
}

/// RocksDB answered a batched read with fewer results than keys.
fn missing_result(dir: &Path) -> StateError {
    StateError::Corrupt(format!(
        "a batched RocksDB read in {} returned fewer results than keys",
        dir.display()
    ))
}

/// `base`, a map's entries in user key order, with the buffered entries `layer` (full
/// keys, in order, their user keys after `prefix_len` bytes) put or deleted over it.
fn overlay<'a>(
    base: MapEntries,
    layer: impl Iterator<Item = (&'a Vec<u8>, &'a Pending)>,
    prefix_len: usize,
) -> MapEntries {
    let mut out = Vec::with_capacity(base.len());
    let mut base = base.into_iter().peekable();
    for (key, pending) in layer {
        let user_key = &key[prefix_len..];
        while let Some(entry) = base.next_if(|(k, _)| k.as_slice() < user_key) {
            out.push(entry);
        }
        // Masked whatever the buffer holds.
        let _ = base.next_if(|(k, _)| k.as_slice() == user_key);
        if let Pending::Put(value) = pending {
            out.push((user_key.to_vec(), value.clone()));
        }
    }
    out.extend(base);
    out
}

impl Drop for RocksDbBackend {
    fn drop(&mut self) {
        // A job that started is waited for (a write, a flush and a checkpoint), so that
        // its files are not removed under it; one that did not is revoked.
        self.abandon(false);
        // Close the database before removing its files (a revoked job that still holds
        // it closes it when it is run or dropped).
        self.db = None;
        // Best effort: a leftover directory is wiped by the next `open` on it.
        let _ = fs::remove_dir_all(&self.options.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::ids::SubtaskIndex;
    use crate::state::{HeapBackend, UploadedCallback};
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

    fn local(snapshot: BackendSnapshot) -> Result<LocalSnapshot, Box<dyn Error>> {
        match snapshot {
            BackendSnapshot::Files(local) => Ok(local),
            BackendSnapshot::Encoded(_) => Err("the RocksDB backend encoded its snapshot".into()),
        }
    }

    /// A snapshot whose files are made: what the asynchronous phase has before uploading.
    struct Prepared {
        dir: PathBuf,
        files: Vec<LocalFile>,
        uploaded: UploadedCallback,
    }

    /// Makes the files of `snapshot`, as the asynchronous phase does first.
    fn prepare(snapshot: BackendSnapshot) -> Result<Prepared, Box<dyn Error>> {
        let LocalSnapshot { prepare, uploaded } = local(snapshot)?;
        let LocalFiles { dir, files } = prepare()?;
        Ok(Prepared {
            dir,
            files,
            uploaded,
        })
    }

    /// Does what the asynchronous phase does with a snapshot's files, into a checkpoint
    /// store in `store`: stores each file as its `upload` says, reports where they went
    /// and removes the snapshot's directory.
    fn upload(
        store: &Path,
        checkpoint: u64,
        local: Prepared,
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
                // Per instance too, as storage keeps each subtask's files apart.
                Upload::Private => format!(
                    "chk-{checkpoint}/{}/{}",
                    local.dir.file_name().unwrap_or_default().display(),
                    file.name
                ),
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

    fn sst_uploads(local: &Prepared) -> Vec<&Upload> {
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
        let mut heap = HeapBackend::new(all_groups(), u64::MAX);
        let expected = scenario(&mut heap)?;
        assert_eq!(scenario(&mut rocks)?, expected);
        Ok(())
    }

    #[test]
    fn the_same_calls_after_a_snapshot_read_the_flushed_state_as_the_heap_does() -> TestResult {
        // Appends to a list whose base is in an SST exercise the merge across a flush.
        let root = tempfile::tempdir()?;
        let mut rocks = backend(root.path(), "flushed", false)?;
        let mut heap = HeapBackend::new(all_groups(), u64::MAX);
        scenario(&mut heap)?;
        scenario(&mut rocks)?;
        prepare(rocks.snapshot(CheckpointId(1), SnapshotType::Checkpoint)?)?;
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
        let snapshot = b.snapshot(CheckpointId(1), SnapshotType::Checkpoint)?;
        // Written after the synchronous phase: not part of the checkpoint.
        b.value_set(v, KeyGroup(1), b"k".to_vec(), b"after".to_vec())?;
        b.value_set(v, KeyGroup(4), b"new".to_vec(), b"after".to_vec())?;
        let stored = upload(&store, 1, prepare(snapshot)?)?;

        let mut restored = backend(root.path(), "after", false)?;
        let dir = download(&store, &stored, &root.path().join("download"))?;
        restored.restore(RestoredState::Files(vec![RestoredFiles {
            dir,
            files: stored,
        }]))?;
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
        let stored = upload(
            &store,
            1,
            prepare(all.snapshot(CheckpointId(1), SnapshotType::Checkpoint)?)?,
        )?;
        let half = KeyGroupRange::for_subtask(SubtaskIndex(1), 2, 8);
        let mut b = RocksDbBackend::open(half, options(root.path(), "half", false))?;
        let dir = download(&store, &stored, &root.path().join("download"))?;
        b.restore(RestoredState::Files(vec![RestoredFiles {
            dir,
            files: stored,
        }]))?;
        let v = b.open_state("v", StateKind::Value)?;
        let m = b.open_state("m", StateKind::Map)?;
        // Look at every key group, as a backend owning all of them would after
        // another restore.
        let stored = upload(
            &store,
            2,
            prepare(b.snapshot(CheckpointId(2), SnapshotType::Checkpoint)?)?,
        )?;
        let mut back = backend(root.path(), "back", false)?;
        let dir = download(&store, &stored, &root.path().join("download-2"))?;
        back.restore(RestoredState::Files(vec![RestoredFiles {
            dir,
            files: stored,
        }]))?;
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
        let first = prepare(b.snapshot(CheckpointId(1), SnapshotType::Checkpoint)?)?;
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
        let second = prepare(b.snapshot(CheckpointId(2), SnapshotType::Checkpoint)?)?;
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
        restored.restore(RestoredState::Files(vec![RestoredFiles {
            dir,
            files: stored,
        }]))?;
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
        upload(
            &store,
            1,
            prepare(b.snapshot(CheckpointId(1), SnapshotType::Checkpoint)?)?,
        )?;
        b.checkpoint_aborted(CheckpointId(1));
        // A completion of another checkpoint does not revive it either.
        b.checkpoint_complete(CheckpointId(0));
        b.value_set(v, KeyGroup(0), b"k".to_vec(), b"2".to_vec())?;
        let second = prepare(b.snapshot(CheckpointId(2), SnapshotType::Checkpoint)?)?;
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
        upload(
            &store,
            1,
            prepare(b.snapshot(CheckpointId(1), SnapshotType::Checkpoint)?)?,
        )?;
        b.checkpoint_complete(CheckpointId(1));
        b.value_set(v, KeyGroup(0), b"k".to_vec(), b"2".to_vec())?;
        let second = prepare(b.snapshot(CheckpointId(2), SnapshotType::Checkpoint)?)?;
        b.checkpoint_complete(CheckpointId(2));
        upload(&store, 2, second)?;
        let third = prepare(b.snapshot(CheckpointId(3), SnapshotType::Checkpoint)?)?;
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
        upload(
            &store,
            1,
            prepare(b.snapshot(CheckpointId(1), SnapshotType::Checkpoint)?)?,
        )?;
        b.checkpoint_complete(CheckpointId(1));
        b.value_set(v, KeyGroup(0), b"k".to_vec(), b"2".to_vec())?;
        let second = prepare(b.snapshot(CheckpointId(2), SnapshotType::Checkpoint)?)?;
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
        let stored = upload(
            &store,
            1,
            prepare(b.snapshot(CheckpointId(1), SnapshotType::Checkpoint)?)?,
        )?;
        let shared = shared_ssts(&stored);
        assert!(!shared.is_empty());

        let mut restored = backend(root.path(), "successor", true)?;
        let dir = download(&store, &stored, &root.path().join("download"))?;
        restored.restore(RestoredState::Files(vec![RestoredFiles {
            dir,
            files: stored,
        }]))?;
        let next = prepare(restored.snapshot(CheckpointId(2), SnapshotType::Checkpoint)?)?;
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

    /// Takes a canonical savepoint of `b` and writes it, as the asynchronous phase does.
    fn canonical(
        b: &mut dyn KeyedStateBackend,
        savepoint: u64,
    ) -> Result<KeyedState, Box<dyn Error>> {
        match b.snapshot(CheckpointId(savepoint), SnapshotType::CanonicalSavepoint)? {
            BackendSnapshot::Encoded(write) => Ok(write()?),
            BackendSnapshot::Files(_) => Err("a canonical savepoint came as files".into()),
        }
    }

    /// Every entry of canonical keyed state as a line naming its key group and state,
    /// sorted: the order of entries within a key group and of a map's entries, which
    /// the format leaves open, does not show.
    fn content(state: &KeyedState) -> Result<Vec<String>, Box<dyn Error>> {
        let sections = state.clone().into_sections();
        let mut lines = Vec::new();
        for (group, section) in &sections.groups {
            for entry in entries(&sections.states, section) {
                let entry = entry?;
                let decl = &sections.states[entry.state as usize];
                let value = match entry.value {
                    EntryValue::Map(mut map) => {
                        map.sort();
                        format!("{map:?}")
                    }
                    other => format!("{other:?}"),
                };
                lines.push(format!(
                    "{} {} {:?} {:?} {value}",
                    group.0, decl.name, decl.kind, entry.key
                ));
            }
        }
        lines.sort();
        Ok(lines)
    }

    /// `n` keys spread over key groups 0 to 7.
    fn keys_in_eight_groups(n: u32) -> Vec<(KeyGroup, Vec<u8>)> {
        (0..n)
            .map(|i| (KeyGroup((i % 8) as u16), i.to_be_bytes().to_vec()))
            .collect()
    }

    /// Opens a value, a list and a map state, `v`, `l` and `m`.
    fn open_value_list_map(b: &mut dyn KeyedStateBackend) -> Result<[StateId; 3], StateError> {
        Ok([
            b.open_state("v", StateKind::Value)?,
            b.open_state("l", StateKind::List)?,
            b.open_state("m", StateKind::Map)?,
        ])
    }

    #[test]
    fn a_canonical_savepoint_holds_what_the_heap_writes_and_restores_into_either_backend()
    -> TestResult {
        let root = tempfile::tempdir()?;
        let store = root.path().join("store");
        let mut rocks = backend(root.path(), "canonical", false)?;
        let mut heap = HeapBackend::new(all_groups(), u64::MAX);
        let keys = keys_in_eight_groups(600);
        let states = open_value_list_map(&mut rocks)?;
        open_value_list_map(&mut heap)?;
        for round in 0..2 {
            interval(&mut rocks, states, &keys, round)?;
            interval(&mut heap, states, &keys, round)?;
        }
        // Part of the state in SSTs, part in the database's memtables, part buffered.
        upload(
            &store,
            1,
            prepare(rocks.snapshot(CheckpointId(1), SnapshotType::Checkpoint)?)?,
        )?;
        interval(&mut rocks, states, &keys, 2)?;
        interval(&mut heap, states, &keys, 2)?;
        let BackendSnapshot::Encoded(write) =
            rocks.snapshot(CheckpointId(2), SnapshotType::CanonicalSavepoint)?
        else {
            return Err("a canonical savepoint came as files".into());
        };
        let writing = std::thread::spawn(write);
        // Written after the synchronous phase: not part of the savepoint.
        interval(&mut rocks, states, &keys, 3)?;
        let from_rocks = writing.join().map_err(|_| "the writer panicked")??;
        assert!(
            !root.path().join("canonical-savepoint-2").exists(),
            "the savepoint's native checkpoint is removed once written"
        );
        let from_heap = canonical(&mut heap, 2)?;
        assert_eq!(from_rocks.states, from_heap.states);
        let expected = content(&from_heap)?;
        assert!(expected.len() > keys.len());
        assert_eq!(first_difference(&content(&from_rocks)?, &expected), None);

        // Into the heap backend, and from there back into RocksDB.
        let mut into_heap = HeapBackend::new(all_groups(), u64::MAX);
        into_heap.restore(RestoredState::Canonical(vec![from_rocks.into_sections()]))?;
        assert_eq!(open_value_list_map(&mut into_heap)?, states);
        assert_eq!(
            first_difference(
                &dump(&into_heap, states, &keys)?,
                &dump(&heap, states, &keys)?
            ),
            None
        );
        let again = canonical(&mut into_heap, 3)?;
        let mut back = backend(root.path(), "canonical-back", false)?;
        back.open_state("gone", StateKind::Value)?;
        back.restore(RestoredState::Canonical(vec![again.into_sections()]))?;
        assert_eq!(open_value_list_map(&mut back)?, states);
        assert_eq!(
            first_difference(&dump(&back, states, &keys)?, &dump(&heap, states, &keys)?),
            None
        );
        assert_eq!(
            first_difference(&content(&canonical(&mut back, 4)?)?, &expected),
            None
        );
        // The restore replaced every state: the one opened before it is gone.
        assert_eq!(back.open_state("gone", StateKind::List)?, StateId(3));
        Ok(())
    }

    #[test]
    fn a_canonical_restore_keeps_only_the_key_groups_the_subtask_owns() -> TestResult {
        let root = tempfile::tempdir()?;
        let mut all = backend(root.path(), "canonical-all", false)?;
        let v = all.open_state("v", StateKind::Value)?;
        let l = all.open_state("l", StateKind::List)?;
        let m = all.open_state("m", StateKind::Map)?;
        for g in 0..8u8 {
            let group = KeyGroup(u16::from(g));
            all.value_set(v, group, vec![g], b"x".to_vec())?;
            all.list_add(l, group, vec![g], b"y".to_vec())?;
            all.map_put(m, group, vec![g], b"u".to_vec(), b"z".to_vec())?;
        }
        let everything = canonical(&mut all, 1)?;
        let half = KeyGroupRange::for_subtask(SubtaskIndex(1), 2, 8);
        let mut b = RocksDbBackend::open(half, options(root.path(), "canonical-half", false))?;
        b.restore(RestoredState::Canonical(vec![
            everything.clone().into_sections(),
        ]))?;
        let kept = content(&canonical(&mut b, 2)?)?;
        let expected: Vec<String> = content(&everything)?
            .into_iter()
            .filter(|line| line.split(' ').next().is_some_and(|g| g >= "4"))
            .collect();
        assert_eq!(expected.len(), 12);
        assert_eq!(kept, expected);
        // Nothing of the other half is in the database either, whatever the range read.
        assert_eq!(in_database(&b, v, &value_key(KeyGroup(1), &[1]))?, None);
        assert_eq!(
            in_database(&b, v, &value_key(KeyGroup(5), &[5]))?,
            Some(b"x".to_vec())
        );
        Ok(())
    }

    /// Fills the key groups of `range` with entries of a value, a list and a map state,
    /// opened in an order of `subtask`'s own (so that old subtasks give them other ids),
    /// and a state only odd subtasks have.
    fn fill(b: &mut RocksDbBackend, range: KeyGroupRange, subtask: u32) -> Result<(), StateError> {
        let names: &[(&str, StateKind)] = if subtask.is_multiple_of(2) {
            &[
                ("v", StateKind::Value),
                ("l", StateKind::List),
                ("m", StateKind::Map),
            ]
        } else {
            &[
                ("m", StateKind::Map),
                ("odd", StateKind::Value),
                ("l", StateKind::List),
                ("v", StateKind::Value),
            ]
        };
        for &(name, kind) in names {
            let id = b.open_state(name, kind)?;
            for g in range.start..range.end {
                for i in 0..20u32 {
                    let key = format!("{g}-{i}").into_bytes();
                    let value = format!("{name} {g} {i}").into_bytes();
                    match kind {
                        StateKind::Value => b.value_set(id, KeyGroup(g), key, value)?,
                        StateKind::List => {
                            b.list_add(id, KeyGroup(g), key.clone(), value)?;
                            b.list_add(id, KeyGroup(g), key, b"second".to_vec())?;
                        }
                        StateKind::Map => {
                            b.map_put(id, KeyGroup(g), key.clone(), b"a".to_vec(), value)?;
                            b.map_put(id, KeyGroup(g), key, b"b".to_vec(), b"2".to_vec())?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Native incremental checkpoints of `from` subtasks restored into `to`: every entry
    /// ends up in exactly the new subtask that owns its key group, and a checkpoint of
    /// each new subtask restores to the same.
    fn rescale(from: u32, to: u32) -> TestResult {
        const MAX: u32 = 16;
        let root = tempfile::tempdir()?;
        // One checkpoint storage, as in a job: the new subtasks' checkpoints refer to
        // the old ones' shared SSTs.
        let store = root.path().join("store");
        let mut old = Vec::new();
        let mut expected = Vec::new();
        for i in 0..from {
            let range = KeyGroupRange::for_subtask(SubtaskIndex(i), from, MAX);
            let mut b = RocksDbBackend::open(
                range,
                options(root.path(), &format!("old-{from}-{i}"), true),
            )?;
            fill(&mut b, range, i)?;
            upload(
                &store,
                1,
                prepare(b.snapshot(CheckpointId(1), SnapshotType::Checkpoint)?)?,
            )?;
            b.checkpoint_complete(CheckpointId(1));
            // The second checkpoint refers to the first's SSTs and adds its own.
            let v = b.open_state("v", StateKind::Value)?;
            b.value_set(v, KeyGroup(range.start), b"late".to_vec(), b"1".to_vec())?;
            let stored = upload(
                &store,
                2,
                prepare(b.snapshot(CheckpointId(2), SnapshotType::Checkpoint)?)?,
            )?;
            assert!(
                stored
                    .iter()
                    .any(|f| f.handle.path.starts_with(SHARED_PREFIX)),
                "incremental"
            );
            expected.extend(content(&canonical(&mut b, 3)?)?);
            old.push((range, stored));
        }
        expected.sort();
        let mut got = Vec::new();
        for j in 0..to {
            let range = KeyGroupRange::for_subtask(SubtaskIndex(j), to, MAX);
            let mut restored = Vec::new();
            for (i, (old_range, stored)) in old.iter().enumerate() {
                if old_range.start < range.end && range.start < old_range.end {
                    let into = root.path().join(format!("download-{j}-{i}"));
                    let dir = download(&store, stored, &into)?;
                    restored.push(RestoredFiles {
                        dir,
                        files: stored.clone(),
                    });
                }
            }
            let dirs: Vec<PathBuf> = restored.iter().map(|r| r.dir.clone()).collect();
            let mut b =
                RocksDbBackend::open(range, options(root.path(), &format!("new-{to}-{j}"), true))?;
            b.restore(RestoredState::Files(restored))?;
            for dir in &dirs {
                assert!(!dir.exists(), "{} is left", dir.display());
            }
            assert!(!root.path().join(format!("new-{to}-{j}-rescale")).exists());
            let lines = content(&canonical(&mut b, 3)?)?;
            for line in &lines {
                let group: u16 = line.split(' ').next().unwrap_or_default().parse()?;
                assert!(range.contains(KeyGroup(group)), "{line} in subtask {j}");
            }
            // Its own checkpoint holds the same: the ingested files and any state only
            // another old subtask had are part of the database.
            let stored = upload(
                &store,
                4,
                prepare(b.snapshot(CheckpointId(4), SnapshotType::Checkpoint)?)?,
            )?;
            let mut again = RocksDbBackend::open(
                range,
                options(root.path(), &format!("again-{to}-{j}"), true),
            )?;
            let dir = download(&store, &stored, &root.path().join(format!("again-{j}")))?;
            again.restore(RestoredState::Files(vec![RestoredFiles {
                dir,
                files: stored,
            }]))?;
            assert_eq!(
                first_difference(&content(&canonical(&mut again, 5)?)?, &lines),
                None
            );
            got.extend(lines);
        }
        got.sort();
        assert!(expected.len() > 16 * 20 * 3);
        assert_eq!(first_difference(&got, &expected), None);
        Ok(())
    }

    #[test]
    fn a_rescale_from_two_subtasks_to_one_keeps_every_entry() -> TestResult {
        rescale(2, 1)
    }

    #[test]
    fn a_rescale_from_one_subtask_to_two_splits_the_entries_by_key_group() -> TestResult {
        rescale(1, 2)
    }

    #[test]
    fn a_rescale_from_two_subtasks_to_three_puts_every_entry_in_its_owner() -> TestResult {
        rescale(2, 3)
    }

    #[test]
    fn a_native_savepoint_is_all_private_files_that_no_checkpoint_reuses() -> TestResult {
        let root = tempfile::tempdir()?;
        let store = root.path().join("store");
        let savepoints = root.path().join("savepoints");
        let mut b = backend(root.path(), "native", true)?;
        let v = b.open_state("v", StateKind::Value)?;
        for i in 0..1000u32 {
            b.value_set(v, KeyGroup(0), i.to_be_bytes().to_vec(), b"first".to_vec())?;
        }
        let first = upload(
            &store,
            1,
            prepare(b.snapshot(CheckpointId(1), SnapshotType::Checkpoint)?)?,
        )?;
        b.checkpoint_complete(CheckpointId(1));
        let first_handles: BTreeSet<_> =
            shared_ssts(&first).into_values().map(|h| h.path).collect();
        assert!(!first_handles.is_empty());

        b.value_set(v, KeyGroup(0), b"k".to_vec(), b"at the savepoint".to_vec())?;
        let savepoint = prepare(b.snapshot(CheckpointId(2), SnapshotType::NativeSavepoint)?)?;
        assert_eq!(savepoint.dir, root.path().join("native-savepoint-2"));
        assert!(
            sst_uploads(&savepoint).len() >= 2,
            "every SST, not only new ones"
        );
        assert!(savepoint.files.iter().all(|f| f.upload == Upload::Private));
        let in_savepoint = upload(&savepoints, 2, savepoint)?;
        b.checkpoint_complete(CheckpointId(2));

        b.value_set(v, KeyGroup(0), b"k".to_vec(), b"after".to_vec())?;
        let next = prepare(b.snapshot(CheckpointId(3), SnapshotType::Checkpoint)?)?;
        let mut reused = 0;
        for file in next.files.iter().filter(|f| f.name.ends_with(".sst")) {
            match &file.upload {
                Upload::Reuse(handle) => {
                    assert!(first_handles.contains(&handle.path), "{handle:?}");
                    reused += 1;
                }
                Upload::Shared(_) => {}
                Upload::Private => panic!("SST {} uploaded privately", file.name),
            }
        }
        assert_eq!(
            reused,
            first_handles.len(),
            "the savepoint's completion left the first checkpoint's SSTs reusable"
        );

        let mut restored = backend(root.path(), "native-restored", true)?;
        let dir = download(&savepoints, &in_savepoint, &root.path().join("download"))?;
        restored.restore(RestoredState::Files(vec![RestoredFiles {
            dir,
            files: in_savepoint,
        }]))?;
        let v = restored.open_state("v", StateKind::Value)?;
        assert_eq!(
            restored.value_get(v, KeyGroup(0), b"k")?,
            Some(b"at the savepoint".to_vec())
        );
        assert_eq!(
            restored.value_get(v, KeyGroup(0), &7u32.to_be_bytes())?,
            Some(b"first".to_vec())
        );
        // Restored from a savepoint, the next checkpoint reuses nothing of it.
        let after = prepare(restored.snapshot(CheckpointId(3), SnapshotType::Checkpoint)?)?;
        assert!(
            sst_uploads(&after)
                .iter()
                .all(|u| matches!(u, Upload::Shared(_)))
        );
        Ok(())
    }

    #[test]
    fn a_state_restored_under_two_kinds_is_refused() -> TestResult {
        let root = tempfile::tempdir()?;
        let section = |kind| -> Result<KeyedSections, Box<dyn Error>> {
            let mut heap = HeapBackend::new(all_groups(), u64::MAX);
            let s = heap.open_state("twice", kind)?;
            match kind {
                StateKind::Value => heap.value_set(s, KeyGroup(1), b"k".to_vec(), b"1".to_vec())?,
                _ => heap.list_add(s, KeyGroup(2), b"k".to_vec(), b"1".to_vec())?,
            }
            Ok(canonical(&mut heap, 1)?.into_sections())
        };
        let mut b = backend(root.path(), "twice", false)?;
        let Err(StateError::Corrupt(message)) = b.restore(RestoredState::Canonical(vec![
            section(StateKind::Value)?,
            section(StateKind::List)?,
        ])) else {
            return Err("a state of two kinds was restored".into());
        };
        assert!(message.contains("`twice`"), "{message}");

        // The same from the native files of two subtasks.
        let mut stored = Vec::new();
        for (i, kind) in [StateKind::Value, StateKind::List].into_iter().enumerate() {
            let mut old = backend(root.path(), &format!("twice-{i}"), false)?;
            old.open_state("twice", kind)?;
            let store = root.path().join(format!("store-{i}"));
            let files = upload(
                &store,
                1,
                prepare(old.snapshot(CheckpointId(1), SnapshotType::Checkpoint)?)?,
            )?;
            let dir = download(&store, &files, &root.path().join(format!("download-{i}")))?;
            stored.push(RestoredFiles { dir, files });
        }
        let Err(StateError::Corrupt(message)) = b.restore(RestoredState::Files(stored)) else {
            return Err("a state of two kinds was restored".into());
        };
        assert!(message.contains("`twice`"), "{message}");
        assert!(!root.path().join("download-1").exists());
        Ok(())
    }

    #[test]
    fn a_snapshot_goes_beside_the_working_directory_which_drop_removes() -> TestResult {
        let root = tempfile::tempdir()?;
        let mut b = backend(root.path(), "where", false)?;
        let working = root.path().join("where");
        assert!(working.is_dir());
        let local = prepare(b.snapshot(CheckpointId(5), SnapshotType::Checkpoint)?)?;
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

    /// What the database itself holds under the encoded `key` of `state`, whatever the
    /// buffers hold.
    fn in_database(
        b: &RocksDbBackend,
        state: StateId,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, Box<dyn Error>> {
        let (db, cf) = b.column_family(usize::try_from(state.0)?)?;
        Ok(db.get_cf(cf, key)?)
    }

    fn value_key(group: KeyGroup, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::new();
        encode_key(&mut k, group, key);
        k
    }

    fn grouped(keys: &[(u16, &[u8])]) -> (Blobs, Vec<KeyGroup>) {
        (
            keys.iter().map(|(_, k)| *k).collect(),
            keys.iter().map(|(g, _)| KeyGroup(*g)).collect(),
        )
    }

    fn blobs(items: &[&[u8]]) -> Blobs {
        items.iter().copied().collect()
    }

    /// What [`bulk_scenario`] runs between its writes.
    type Between<'a> = dyn FnMut(&mut dyn KeyedStateBackend) -> TestResult + 'a;

    /// The bulk calls, on any backend, with `between` run twice to move what was written
    /// so far (for RocksDB: into the database, then into a frozen buffer). Every bulk
    /// read is checked against the single-key reads of the same backend; returns what
    /// the bulk reads returned.
    fn bulk_scenario(
        b: &mut dyn KeyedStateBackend,
        between: &mut Between<'_>,
    ) -> Result<Vec<String>, Box<dyn Error>> {
        let mut seen = Vec::new();
        let v = b.open_state("v", StateKind::Value)?;
        let l = b.open_state("l", StateKind::List)?;
        let m = b.open_state("m", StateKind::Map)?;
        let all: [(u16, &[u8]); 6] = [
            (1, b"a"),
            (1, b"b"),
            (6, b"a"),
            (1, b""),
            (2, b"c"),
            (2, b"d"),
        ];
        let (keys, groups) = grouped(&all);
        let every = GroupedKeys {
            keys: &keys,
            groups: &groups,
        };
        // A key twice in one call: the later item wins, or appends later.
        let (twice, twice_groups) = grouped(&[(1, b"a"), (2, b"c"), (1, b"a")]);
        let twice = GroupedKeys {
            keys: &twice,
            groups: &twice_groups,
        };
        let (some, some_groups) = grouped(&[(1, b"b"), (2, b"d")]);
        let some = GroupedKeys {
            keys: &some,
            groups: &some_groups,
        };

        let check =
            |b: &dyn KeyedStateBackend, seen: &mut Vec<String>| -> Result<(), Box<dyn Error>> {
                let mut values = MaybeBlobs::default();
                b.value_get_many(v, every, &mut values)?;
                let mut lists = BlobLists::default();
                b.list_get_many(l, every, &mut lists)?;
                let user_keys = blobs(&[b"u", b"u", b"w", b"u", b"", b"w"]);
                let mut mapped = MaybeBlobs::default();
                b.map_get_many(m, every, &user_keys, &mut mapped)?;
                let mut item = 0;
                for (i, (group, key)) in every.iter().enumerate() {
                    assert_eq!(
                        values.get(i),
                        b.value_get(v, group, key)?.as_deref(),
                        "value {i}"
                    );
                    let count = usize::try_from(lists.counts[i])?;
                    let list: Vec<Vec<u8>> = (item..item + count)
                        .map(|j| lists.items.get(j).to_vec())
                        .collect();
                    item += count;
                    assert_eq!(list, b.list_get(l, group, key)?, "list {i}");
                    assert_eq!(
                        mapped.get(i),
                        b.map_get(m, group, key, user_keys.get(i))?.as_deref(),
                        "map {i}"
                    );
                }
                seen.push(format!("{values:?} {lists:?} {mapped:?}"));
                Ok(())
            };

        check(b, &mut seen)?;
        b.value_set_many(v, every, &blobs(&[b"1", b"2", b"3", b"4", b"5", b"6"]))?;
        b.list_add_many(l, twice, &blobs(&[b"x", b"y", b"z"]))?;
        b.map_put_many(
            m,
            every,
            &blobs(&[b"u", b"u", b"w", b"u", b"", b"w"]),
            &blobs(&[b"m1", b"m2", b"m3", b"m4", b"m5", b"m6"]),
        )?;
        check(b, &mut seen)?;
        between(b)?;
        check(b, &mut seen)?;
        b.value_set_many(v, twice, &blobs(&[b"a'", b"c'", b"a''"]))?;
        b.clear_many(v, some)?;
        b.list_add_many(l, every, &blobs(&[b"1", b"2", b"3", b"4", b"5", b"6"]))?;
        b.clear_many(l, some)?;
        b.map_remove_many(m, twice, &blobs(&[b"u", b"", b"nothing"]))?;
        b.clear_many(m, some)?;
        check(b, &mut seen)?;
        between(b)?;
        check(b, &mut seen)?;
        b.list_add_many(l, twice, &blobs(&[b"p", b"q", b"r"]))?;
        b.map_put_many(
            m,
            twice,
            &blobs(&[b"u", b"", b"u"]),
            &blobs(&[b"n1", b"n2", b"n3"]),
        )?;
        check(b, &mut seen)?;
        Ok(seen)
    }

    #[test]
    fn bulk_calls_read_and_write_as_the_single_key_calls_and_the_heap_backend_do() -> TestResult {
        let root = tempfile::tempdir()?;
        let mut heap = HeapBackend::new(all_groups(), u64::MAX);
        let expected = bulk_scenario(&mut heap, &mut |_| Ok(()))?;
        let mut rocks = backend(root.path(), "bulk", false)?;
        // First into the database, then into a frozen buffer whose files are made only
        // at the end, after reads that put appends on top of it.
        let mut round = 0;
        let mut pending = None;
        let got = bulk_scenario(&mut rocks, &mut |b| {
            round += 1;
            let snapshot = b.snapshot(CheckpointId(round), SnapshotType::Checkpoint)?;
            if round == 1 {
                prepare(snapshot)?;
            } else {
                pending = Some(snapshot);
            }
            Ok(())
        })?;
        assert_eq!(got, expected);
        // Once the frozen buffer is in the database, the same reads again.
        prepare(pending.ok_or("no second snapshot")?)?;
        let again = bulk_scenario(&mut heap, &mut |_| Ok(()))?;
        assert_eq!(bulk_scenario(&mut rocks, &mut |_| Ok(()))?, again);
        Ok(())
    }

    #[test]
    fn reads_see_writes_that_are_not_in_the_database_yet() -> TestResult {
        let root = tempfile::tempdir()?;
        let mut b = backend(root.path(), "unflushed", false)?;
        let v = b.open_state("v", StateKind::Value)?;
        let l = b.open_state("l", StateKind::List)?;
        let m = b.open_state("m", StateKind::Map)?;
        b.value_set(v, KeyGroup(1), b"k".to_vec(), b"1".to_vec())?;
        b.list_add(l, KeyGroup(1), b"k".to_vec(), b"x".to_vec())?;
        b.map_put(m, KeyGroup(1), b"k".to_vec(), b"u".to_vec(), b"1".to_vec())?;
        assert_eq!(in_database(&b, v, &value_key(KeyGroup(1), b"k"))?, None);
        assert_eq!(in_database(&b, l, &value_key(KeyGroup(1), b"k"))?, None);
        assert_eq!(b.value_get(v, KeyGroup(1), b"k")?, Some(b"1".to_vec()));
        assert_eq!(b.list_get(l, KeyGroup(1), b"k")?, vec![b"x".to_vec()]);
        assert_eq!(
            b.map_entries(m, KeyGroup(1), b"k")?,
            vec![(b"u".to_vec(), b"1".to_vec())]
        );
        // Frozen by a snapshot whose files are not made yet: still read.
        let snapshot = b.snapshot(CheckpointId(1), SnapshotType::Checkpoint)?;
        b.list_add(l, KeyGroup(1), b"k".to_vec(), b"y".to_vec())?;
        assert_eq!(b.value_get(v, KeyGroup(1), b"k")?, Some(b"1".to_vec()));
        assert_eq!(
            b.list_get(l, KeyGroup(1), b"k")?,
            vec![b"x".to_vec(), b"y".to_vec()]
        );
        prepare(snapshot)?;
        assert_eq!(
            in_database(&b, v, &value_key(KeyGroup(1), b"k"))?,
            Some(b"1".to_vec())
        );
        // The database holds the frozen append now; it is not counted twice.
        assert_eq!(
            b.list_get(l, KeyGroup(1), b"k")?,
            vec![b"x".to_vec(), b"y".to_vec()]
        );
        Ok(())
    }

    #[test]
    fn clears_mask_what_the_database_holds() -> TestResult {
        let root = tempfile::tempdir()?;
        let store = root.path().join("store");
        let mut b = backend(root.path(), "masked", false)?;
        let v = b.open_state("v", StateKind::Value)?;
        let l = b.open_state("l", StateKind::List)?;
        let m = b.open_state("m", StateKind::Map)?;
        let g = KeyGroup(3);
        b.value_set(v, g, b"k".to_vec(), b"1".to_vec())?;
        b.list_add(l, g, b"k".to_vec(), b"x".to_vec())?;
        b.map_put(m, g, b"k".to_vec(), b"u".to_vec(), b"1".to_vec())?;
        b.map_put(m, g, b"k".to_vec(), b"w".to_vec(), b"2".to_vec())?;
        prepare(b.snapshot(CheckpointId(1), SnapshotType::Checkpoint)?)?;
        b.clear(v, g, b"k")?;
        b.clear(l, g, b"k")?;
        b.clear(m, g, b"k")?;
        assert!(in_database(&b, v, &value_key(g, b"k"))?.is_some());
        assert!(in_database(&b, l, &value_key(g, b"k"))?.is_some());
        assert_eq!(b.value_get(v, g, b"k")?, None);
        assert_eq!(b.list_get(l, g, b"k")?, Vec::<Vec<u8>>::new());
        assert_eq!(b.map_entries(m, g, b"k")?, Vec::new());
        assert_eq!(b.map_get(m, g, b"k", b"u")?, None);
        // An append after the clear starts a new list.
        b.list_add(l, g, b"k".to_vec(), b"y".to_vec())?;
        assert_eq!(b.list_get(l, g, b"k")?, vec![b"y".to_vec()]);
        let stored = upload(
            &store,
            2,
            prepare(b.snapshot(CheckpointId(2), SnapshotType::Checkpoint)?)?,
        )?;
        let mut restored = backend(root.path(), "masked-restored", false)?;
        let dir = download(&store, &stored, &root.path().join("download"))?;
        restored.restore(RestoredState::Files(vec![RestoredFiles {
            dir,
            files: stored,
        }]))?;
        assert_eq!(restored.value_get(v, g, b"k")?, None);
        assert_eq!(restored.list_get(l, g, b"k")?, vec![b"y".to_vec()]);
        assert_eq!(restored.map_entries(m, g, b"k")?, Vec::new());
        Ok(())
    }

    #[test]
    fn map_entries_merge_the_buffers_and_the_database_in_key_order() -> TestResult {
        let root = tempfile::tempdir()?;
        let mut b = backend(root.path(), "merged", false)?;
        let m = b.open_state("m", StateKind::Map)?;
        let g = KeyGroup(2);
        let put = |b: &mut RocksDbBackend, u: &[u8], value: &[u8]| {
            b.map_put(m, g, b"k".to_vec(), u.to_vec(), value.to_vec())
        };
        for u in [&b"b"[..], b"d", b"f"] {
            put(&mut b, u, b"db")?;
        }
        // Another key whose prefix the scan must not run into.
        b.map_put(m, g, b"kk".to_vec(), b"a".to_vec(), b"other".to_vec())?;
        prepare(b.snapshot(CheckpointId(1), SnapshotType::Checkpoint)?)?;
        put(&mut b, b"c", b"frozen")?;
        b.map_remove(m, g, b"k", b"d")?;
        let frozen = b.snapshot(CheckpointId(2), SnapshotType::Checkpoint)?;
        put(&mut b, b"a", b"active")?;
        put(&mut b, b"e", b"active")?;
        put(&mut b, b"b", b"active")?;
        b.map_remove(m, g, b"k", b"f")?;
        let expected: MapEntries = [
            (&b"a"[..], &b"active"[..]),
            (b"b", b"active"),
            (b"c", b"frozen"),
            (b"e", b"active"),
        ]
        .iter()
        .map(|(u, v)| (u.to_vec(), v.to_vec()))
        .collect();
        assert_eq!(b.map_entries(m, g, b"k")?, expected);
        prepare(frozen)?;
        assert_eq!(b.map_entries(m, g, b"k")?, expected);
        assert_eq!(
            b.map_entries(m, g, b"kk")?,
            vec![(b"a".to_vec(), b"other".to_vec())]
        );
        Ok(())
    }

    /// Every value, list and map entry of `keys` in the three states, for comparing
    /// backends.
    fn dump(
        b: &dyn KeyedStateBackend,
        states: [StateId; 3],
        keys: &[(KeyGroup, Vec<u8>)],
    ) -> Result<Vec<String>, StateError> {
        let [v, l, m] = states;
        let mut out = Vec::new();
        for (group, key) in keys {
            let mut entries = b.map_entries(m, *group, key)?;
            entries.sort();
            out.push(format!(
                "{:?} {:?} {:?}",
                b.value_get(v, *group, key)?,
                b.list_get(l, *group, key)?,
                entries
            ));
        }
        Ok(out)
    }

    /// Where two dumps first differ, if they do.
    fn first_difference(a: &[String], b: &[String]) -> Option<(usize, String, String)> {
        if a.len() != b.len() {
            return Some((
                a.len().min(b.len()),
                format!("{} lines", a.len()),
                format!("{} lines", b.len()),
            ));
        }
        a.iter()
            .zip(b)
            .position(|(x, y)| x != y)
            .map(|i| (i, a[i].clone(), b[i].clone()))
    }

    /// One interval's writes to `b`: every key's value, an append to every third key's
    /// list, a map entry per key, and clears of a few keys.
    fn interval(
        b: &mut dyn KeyedStateBackend,
        states: [StateId; 3],
        keys: &[(KeyGroup, Vec<u8>)],
        round: u32,
    ) -> Result<(), StateError> {
        let [v, l, m] = states;
        for (i, (group, key)) in keys.iter().enumerate() {
            let stamp = format!("{round}-{i}").into_bytes();
            b.value_set(v, *group, key.clone(), stamp.clone())?;
            if i % 3 == round as usize % 3 {
                b.list_add(l, *group, key.clone(), stamp.clone())?;
            }
            b.map_put(m, *group, key.clone(), vec![(i % 5) as u8], stamp)?;
            if i % 17 == round as usize {
                b.clear(l, *group, key)?;
                b.clear(m, *group, key)?;
            }
        }
        Ok(())
    }

    /// Snapshots RocksDB and the heap backend after the same writes, makes RocksDB's
    /// files on another thread while both go on writing and reading, and checks that
    /// RocksDB's restored snapshot equals the heap's, and the live states each other.
    fn snapshot_while_writing(write_behind_bytes: usize, instance: &str) -> TestResult {
        let root = tempfile::tempdir()?;
        let store = root.path().join("store");
        let mut options = options(root.path(), instance, true);
        options.write_behind_bytes = write_behind_bytes;
        let mut rocks = RocksDbBackend::open(all_groups(), options)?;
        let mut heap = HeapBackend::new(all_groups(), u64::MAX);
        let keys = keys_in_eight_groups(3000);
        let states = open_value_list_map(&mut rocks)?;
        open_value_list_map(&mut heap)?;
        for round in 0..2 {
            interval(&mut rocks, states, &keys, round)?;
            interval(&mut heap, states, &keys, round)?;
        }
        // The first checkpoint completes, so the second one reuses its SSTs.
        upload(
            &store,
            1,
            prepare(rocks.snapshot(CheckpointId(1), SnapshotType::Checkpoint)?)?,
        )?;
        rocks.checkpoint_complete(CheckpointId(1));
        interval(&mut rocks, states, &keys, 2)?;
        interval(&mut heap, states, &keys, 2)?;
        let snapshot = local(rocks.snapshot(CheckpointId(2), SnapshotType::Checkpoint)?)?;
        let BackendSnapshot::Encoded(encode) =
            heap.snapshot(CheckpointId(2), SnapshotType::Checkpoint)?
        else {
            return Err("the heap backend made files".into());
        };
        let at_snapshot = encode()?;
        let LocalSnapshot { prepare, uploaded } = snapshot;
        let making = std::thread::spawn(prepare);
        for round in 3..6 {
            interval(&mut rocks, states, &keys, round)?;
            interval(&mut heap, states, &keys, round)?;
            assert_eq!(
                first_difference(&dump(&rocks, states, &keys)?, &dump(&heap, states, &keys)?),
                None
            );
        }
        let LocalFiles { dir, files } =
            making.join().map_err(|_| "making the files panicked")??;
        assert!(
            files.iter().any(|f| matches!(f.upload, Upload::Reuse(_))),
            "the second checkpoint reuses SSTs of the first"
        );
        let stored = upload(
            &store,
            2,
            Prepared {
                dir,
                files,
                uploaded,
            },
        )?;
        assert_eq!(
            first_difference(&dump(&rocks, states, &keys)?, &dump(&heap, states, &keys)?),
            None
        );

        let mut restored = backend(root.path(), &format!("{instance}-restored"), true)?;
        let dir = download(&store, &stored, &root.path().join("download"))?;
        restored.restore(RestoredState::Files(vec![RestoredFiles {
            dir,
            files: stored,
        }]))?;
        let mut heap_restored = HeapBackend::new(all_groups(), u64::MAX);
        heap_restored.restore(RestoredState::Canonical(vec![at_snapshot.into_sections()]))?;
        let restored_states = open_value_list_map(&mut restored)?;
        assert_eq!(restored_states, states);
        open_value_list_map(&mut heap_restored)?;
        assert_eq!(
            first_difference(
                &dump(&restored, states, &keys)?,
                &dump(&heap_restored, states, &keys)?
            ),
            None
        );
        Ok(())
    }

    #[test]
    fn a_snapshot_taken_while_the_next_interval_writes_holds_exactly_the_state_at_the_snapshot()
    -> TestResult {
        snapshot_while_writing(RocksDbOptions::DEFAULT_WRITE_BEHIND_BYTES, "while")
    }

    #[test]
    fn a_snapshot_holds_exactly_its_state_when_the_next_interval_spills() -> TestResult {
        // About a tenth of an interval's writes: the writes after the snapshot spill,
        // each spill waiting for the snapshot's own write first.
        snapshot_while_writing(64 << 10, "spilling")
    }

    #[test]
    fn a_full_buffer_spills_to_the_database_without_a_snapshot() -> TestResult {
        let root = tempfile::tempdir()?;
        let mut options = options(root.path(), "spill", false);
        options.write_behind_bytes = 16 << 10;
        let mut b = RocksDbBackend::open(all_groups(), options)?;
        let v = b.open_state("v", StateKind::Value)?;
        let l = b.open_state("l", StateKind::List)?;
        for i in 0..1000u32 {
            b.value_set(v, KeyGroup(0), i.to_be_bytes().to_vec(), b"x".to_vec())?;
            b.list_add(l, KeyGroup(0), b"k".to_vec(), i.to_be_bytes().to_vec())?;
            assert!(b.active.bytes + b.frozen_bytes < 16 << 10);
        }
        assert_eq!(
            in_database(&b, v, &value_key(KeyGroup(0), &0u32.to_be_bytes()))?,
            Some(b"x".to_vec())
        );
        let list = b.list_get(l, KeyGroup(0), b"k")?;
        let expected: Vec<Vec<u8>> = (0..1000u32).map(|i| i.to_be_bytes().to_vec()).collect();
        assert_eq!(list, expected);
        let beside: Vec<_> = fs::read_dir(root.path())?.collect::<Result<_, _>>()?;
        assert_eq!(beside.len(), 1, "no snapshot directory: {beside:?}");
        Ok(())
    }

    #[test]
    fn a_snapshot_dropped_before_its_files_are_made_loses_no_write() -> TestResult {
        let root = tempfile::tempdir()?;
        let store = root.path().join("store");
        let mut b = backend(root.path(), "declined", false)?;
        let v = b.open_state("v", StateKind::Value)?;
        let l = b.open_state("l", StateKind::List)?;
        b.value_set(v, KeyGroup(0), b"k".to_vec(), b"1".to_vec())?;
        b.list_add(l, KeyGroup(0), b"k".to_vec(), b"a".to_vec())?;
        // Declined: dropped unrun.
        drop(b.snapshot(CheckpointId(1), SnapshotType::Checkpoint)?);
        b.list_add(l, KeyGroup(0), b"k".to_vec(), b"b".to_vec())?;
        assert_eq!(b.value_get(v, KeyGroup(0), b"k")?, Some(b"1".to_vec()));
        assert_eq!(
            b.list_get(l, KeyGroup(0), b"k")?,
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        assert!(!root.path().join("declined-chk-1").exists());
        let stored = upload(
            &store,
            2,
            prepare(b.snapshot(CheckpointId(2), SnapshotType::Checkpoint)?)?,
        )?;
        let mut restored = backend(root.path(), "declined-restored", false)?;
        let dir = download(&store, &stored, &root.path().join("download"))?;
        restored.restore(RestoredState::Files(vec![RestoredFiles {
            dir,
            files: stored,
        }]))?;
        assert_eq!(
            restored.value_get(v, KeyGroup(0), b"k")?,
            Some(b"1".to_vec())
        );
        assert_eq!(
            restored.list_get(l, KeyGroup(0), b"k")?,
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        Ok(())
    }

    #[test]
    fn a_snapshot_that_fails_after_its_write_loses_no_write_and_appends_once() -> TestResult {
        let root = tempfile::tempdir()?;
        let store = root.path().join("store");
        let mut b = backend(root.path(), "failing", false)?;
        let l = b.open_state("l", StateKind::List)?;
        b.list_add(l, KeyGroup(0), b"k".to_vec(), b"a".to_vec())?;
        // RocksDB refuses to make a checkpoint in a directory that exists.
        fs::create_dir_all(root.path().join("failing-chk-1").join("in-the-way"))?;
        let LocalSnapshot { prepare: make, .. } =
            local(b.snapshot(CheckpointId(1), SnapshotType::Checkpoint)?)?;
        assert!(make().is_err());
        assert!(in_database(&b, l, &value_key(KeyGroup(0), b"k"))?.is_some());
        b.list_add(l, KeyGroup(0), b"k".to_vec(), b"b".to_vec())?;
        assert_eq!(
            b.list_get(l, KeyGroup(0), b"k")?,
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        let stored = upload(
            &store,
            2,
            prepare(b.snapshot(CheckpointId(2), SnapshotType::Checkpoint)?)?,
        )?;
        let mut restored = backend(root.path(), "failing-restored", false)?;
        let dir = download(&store, &stored, &root.path().join("download"))?;
        restored.restore(RestoredState::Files(vec![RestoredFiles {
            dir,
            files: stored,
        }]))?;
        assert_eq!(
            restored.list_get(l, KeyGroup(0), b"k")?,
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        Ok(())
    }

    #[test]
    fn a_snapshot_whose_backend_dropped_before_it_started_makes_nothing() -> TestResult {
        let root = tempfile::tempdir()?;
        let mut b = backend(root.path(), "orphan", false)?;
        let v = b.open_state("v", StateKind::Value)?;
        b.value_set(v, KeyGroup(0), b"k".to_vec(), b"1".to_vec())?;
        let LocalSnapshot { prepare: make, .. } =
            local(b.snapshot(CheckpointId(1), SnapshotType::Checkpoint)?)?;
        drop(b);
        let Err(StateError::Corrupt(message)) = make() else {
            return Err("a snapshot of a dropped backend was made".into());
        };
        assert!(message.contains("abandoned"), "{message}");
        assert!(!root.path().join("orphan-chk-1").exists());
        Ok(())
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
