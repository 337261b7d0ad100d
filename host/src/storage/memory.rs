//! [`MemoryStorage`]: the in-memory double of checkpoint storage, for tests of the code
//! that uses storage (coordinator, retention, restore). It keeps every guarantee of the
//! [`CheckpointStorage`] contract, checked by the same contract tests as the real
//! storages, and adds hooks that inject faults: failing calls, corrupt and truncated
//! files. It opens in either [`Layout`]: a job's checkpoints or one savepoint. It owns
//! only its own map; it may not touch the filesystem.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use bytes::Bytes;

use super::checksum::{self, checksum, len_u64};
use super::layout::{self, Layout};
use super::lock::LockGuard;
use super::{
    CheckpointListing, CheckpointStorage, FileHandle, JobLock, JobRecord, LockHolder, LostSignal,
    StorageError,
};
use crate::runtime::ids::CheckpointId;

/// Checkpoint storage in memory, with fault injection.
///
/// Paths in the hooks are relative to the root, as in a [`FileHandle`]:
/// `chk-7/count-2-state`, `chk-7/_metadata`, `shared/abc.sst`; in a savepoint
/// `count-2-state`, `_metadata`.
#[derive(Debug)]
pub struct MemoryStorage {
    /// `memory://<job-id>` or `memory://<savepoint>`, for messages.
    url: String,
    /// How the files are arranged.
    layout: Layout,
    state: Mutex<State>,
    /// Who holds the job's lock: shared with the guard, which clears it on release.
    lock: Arc<Mutex<Option<LockHolder>>>,
}

#[derive(Debug, Default)]
struct State {
    /// Whether `check` created the root (and no savepoint's delete removed it since).
    created: bool,
    /// The checkpoint directories: created by a write or a commit, removed by a delete.
    /// Empty in a savepoint, which is listed by its files.
    checkpoints: BTreeSet<CheckpointId>,
    /// Every file, by its path relative to the root.
    files: BTreeMap<String, Bytes>,
    /// How many of the next `write`/`write_shared` calls fail.
    failing_writes: usize,
    /// How many of the next `commit` calls fail.
    failing_commits: usize,
    /// How many of the next `read`/`read_metadata` calls fail.
    failing_reads: usize,
}

/// Takes one injected failure from `counter`, if any is left.
fn take_fault(
    counter: &mut usize,
    location: String,
    action: &'static str,
) -> Result<(), StorageError> {
    if *counter == 0 {
        return Ok(());
    }
    *counter -= 1;
    Err(StorageError::Io {
        location,
        action,
        source: io::Error::new(io::ErrorKind::TimedOut, "fault injected by MemoryStorage"),
        transient: true,
    })
}

impl MemoryStorage {
    /// Empty storage for job `job_id`; like a directory, it must be
    /// [`check`](CheckpointStorage::check)ed before use.
    ///
    /// Fails if `job_id` would not be a valid directory name, as
    /// [`FsStorage::new`](super::FsStorage::new) does.
    pub fn new(job_id: &str) -> Result<Self, StorageError> {
        layout::validate_job_id(job_id)?;
        Ok(Self::with_layout(job_id, Layout::Checkpoints))
    }

    /// An empty savepoint directory `name` (`savepoint-<job>-<n>`), in the savepoint
    /// layout of the module docs of `storage`; it must be
    /// [`check`](CheckpointStorage::check)ed before use.
    ///
    /// Fails if `name` would not be a valid directory name, as
    /// [`FsStorage::savepoint`](super::FsStorage::savepoint) does.
    pub fn savepoint(name: &str) -> Result<Self, StorageError> {
        layout::validate_savepoint_name(name)?;
        Ok(Self::with_layout(name, Layout::Savepoint))
    }

    fn with_layout(name: &str, layout: Layout) -> Self {
        MemoryStorage {
            url: format!("memory://{name}"),
            layout,
            state: Mutex::new(State::default()),
            lock: Arc::default(),
        }
    }

    /// Makes the next `n` calls of `write` and `write_shared` fail with a transient
    /// I/O error, storing nothing.
    pub fn fail_next_writes(&self, n: usize) {
        self.state().failing_writes = n;
    }

    /// Makes the next `n` calls of `commit` fail with a transient I/O error, committing
    /// nothing.
    pub fn fail_next_commits(&self, n: usize) {
        self.state().failing_commits = n;
    }

    /// Makes the next `n` calls of `read` and `read_metadata` fail with a transient I/O
    /// error.
    pub fn fail_next_reads(&self, n: usize) {
        self.state().failing_reads = n;
    }

    /// Flips the lowest bit of the last byte of the file at `path`, as a bad disk would.
    /// Returns whether there was a non-empty file to corrupt.
    pub fn corrupt(&self, path: &str) -> bool {
        let mut state = self.state();
        let Some(bytes) = state.files.get_mut(path) else {
            return false;
        };
        let mut changed = bytes.to_vec();
        let Some(last) = changed.last_mut() else {
            return false;
        };
        *last ^= 1;
        *bytes = Bytes::from(changed);
        true
    }

    /// Cuts the file at `path` to its first `len` bytes, as a torn write would. Returns
    /// whether there was a file.
    pub fn truncate(&self, path: &str, len: usize) -> bool {
        let mut state = self.state();
        let Some(bytes) = state.files.get_mut(path) else {
            return false;
        };
        bytes.truncate(len);
        true
    }

    /// The paths of every stored file, sorted, for assertions on what was written or
    /// deleted.
    pub fn files(&self) -> Vec<String> {
        self.state().files.keys().cloned().collect()
    }

    fn location(&self, relative: &str) -> String {
        format!("{}/{relative}", self.url)
    }

    /// The state, whatever a panicking test did: every change to it is a single insert
    /// or removal, so a panic never leaves it half-changed.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The state of a checked storage; `NotFound` before `check`, as for a directory.
    fn checked_state(&self) -> Result<MutexGuard<'_, State>, StorageError> {
        let state = self.state();
        if state.created {
            Ok(state)
        } else {
            Err(StorageError::NotFound {
                location: self.url.clone(),
            })
        }
    }
}

#[async_trait]
impl CheckpointStorage for MemoryStorage {
    fn describe(&self) -> String {
        self.url.clone()
    }

    fn checkpoint_url(&self, checkpoint: CheckpointId) -> String {
        self.layout.checkpoint_url(&self.url, checkpoint)
    }

    async fn check(&self) -> Result<(), StorageError> {
        self.state().created = true;
        Ok(())
    }

    async fn write(
        &self,
        checkpoint: CheckpointId,
        name: &str,
        bytes: Bytes,
    ) -> Result<FileHandle, StorageError> {
        layout::validate_file_name(name)?;
        let path = self.layout.data_file(checkpoint, name);
        let mut state = self.checked_state()?;
        take_fault(&mut state.failing_writes, self.location(&path), "writing")?;
        let metadata = self.layout.metadata_file(checkpoint);
        if state.files.contains_key(&metadata) {
            return Err(StorageError::AlreadyCommitted {
                location: self.location(&metadata),
                checkpoint,
            });
        }
        let handle = FileHandle {
            path: path.clone(),
            size: len_u64(&bytes),
            checksum: checksum(&bytes),
        };
        if self.layout == Layout::Checkpoints {
            state.checkpoints.insert(checkpoint);
        }
        state.files.insert(path, bytes);
        Ok(handle)
    }

    async fn write_shared(&self, name: &str, bytes: Bytes) -> Result<FileHandle, StorageError> {
        layout::validate_file_name(name)?;
        self.layout.refuse_in_savepoint(&self.url, "shared files")?;
        let path = layout::shared_file(name);
        let mut state = self.checked_state()?;
        take_fault(&mut state.failing_writes, self.location(&path), "writing")?;
        let handle = FileHandle {
            path: path.clone(),
            size: len_u64(&bytes),
            checksum: checksum(&bytes),
        };
        if let Some(existing) = state.files.get(&path) {
            return match checksum::conflict(&handle, existing) {
                None => Ok(handle),
                Some(reason) => Err(StorageError::Conflict {
                    location: self.location(&path),
                    reason,
                }),
            };
        }
        state.files.insert(path, bytes);
        Ok(handle)
    }

    async fn read(&self, handle: &FileHandle) -> Result<Bytes, StorageError> {
        let path = self.layout.handle_file(&handle.path)?;
        let mut state = self.checked_state()?;
        take_fault(&mut state.failing_reads, self.location(&path), "reading")?;
        let Some(bytes) = state.files.get(&path) else {
            return Err(StorageError::NotFound {
                location: self.location(&path),
            });
        };
        checksum::verify(handle, bytes).map_err(|reason| StorageError::Corrupt {
            location: self.location(&path),
            reason,
        })?;
        Ok(bytes.clone())
    }

    async fn commit(&self, checkpoint: CheckpointId, metadata: Bytes) -> Result<(), StorageError> {
        let path = self.layout.metadata_file(checkpoint);
        let mut state = self.checked_state()?;
        take_fault(&mut state.failing_commits, self.location(&path), "writing")?;
        if state.files.contains_key(&path) {
            return Err(StorageError::AlreadyCommitted {
                location: self.location(&path),
                checkpoint,
            });
        }
        if self.layout == Layout::Checkpoints {
            state.checkpoints.insert(checkpoint);
        }
        state.files.insert(path, checksum::frame(&metadata));
        Ok(())
    }

    async fn read_metadata(&self, checkpoint: CheckpointId) -> Result<Bytes, StorageError> {
        let path = self.layout.metadata_file(checkpoint);
        let mut state = self.checked_state()?;
        take_fault(&mut state.failing_reads, self.location(&path), "reading")?;
        let Some(framed) = state.files.get(&path) else {
            return Err(StorageError::NotFound {
                location: self.location(&path),
            });
        };
        checksum::unframe(framed.clone()).map_err(|reason| StorageError::Corrupt {
            location: self.location(&path),
            reason,
        })
    }

    async fn list(&self) -> Result<Vec<CheckpointListing>, StorageError> {
        let state = self.checked_state()?;
        if self.layout == Layout::Savepoint {
            return Ok(layout::savepoint_listing(
                !state.files.is_empty(),
                state.files.contains_key(layout::METADATA),
            ));
        }
        Ok(state
            .checkpoints
            .iter()
            .map(|&checkpoint| CheckpointListing {
                checkpoint,
                has_metadata: state.files.contains_key(&layout::metadata_file(checkpoint)),
            })
            .collect())
    }

    async fn delete_checkpoint(&self, checkpoint: CheckpointId) -> Result<(), StorageError> {
        if self.layout == Layout::Savepoint {
            // Every file and the directory at once: a map changes in one step.
            let mut state = self.state();
            state.files.clear();
            state.created = false;
            return Ok(());
        }
        let mut state = self.checked_state()?;
        let prefix = format!("{}/", layout::checkpoint_dir(checkpoint));
        state.files.retain(|path, _| !path.starts_with(&prefix));
        state.checkpoints.remove(&checkpoint);
        Ok(())
    }

    async fn delete_shared(&self, names: &[String]) -> Result<(), StorageError> {
        for name in names {
            layout::validate_file_name(name)?;
        }
        if self.layout == Layout::Savepoint {
            // A savepoint never has shared files, and deleting what is not there succeeds.
            return Ok(());
        }
        let mut state = self.checked_state()?;
        for name in names {
            state.files.remove(&layout::shared_file(name));
        }
        Ok(())
    }

    async fn list_shared(&self) -> Result<Vec<String>, StorageError> {
        let state = self.checked_state()?;
        if self.layout == Layout::Savepoint {
            return Ok(Vec::new());
        }
        let prefix = format!("{}/", layout::SHARED);
        Ok(state
            .files
            .keys()
            .filter_map(|path| path.strip_prefix(&prefix).map(str::to_owned))
            .collect())
    }

    async fn write_record(&self, record: JobRecord, bytes: Bytes) -> Result<(), StorageError> {
        self.layout.refuse_in_savepoint(&self.url, "job records")?;
        let mut state = self.checked_state()?;
        take_fault(
            &mut state.failing_writes,
            self.location(record.name()),
            "writing",
        )?;
        state
            .files
            .insert(record.name().to_owned(), checksum::frame(&bytes));
        Ok(())
    }

    async fn read_record(&self, record: JobRecord) -> Result<Option<Bytes>, StorageError> {
        let state = self.checked_state()?;
        if self.layout == Layout::Savepoint {
            return Ok(None);
        }
        let Some(framed) = state.files.get(record.name()) else {
            return Ok(None);
        };
        checksum::unframe(framed.clone())
            .map(Some)
            .map_err(|reason| StorageError::Corrupt {
                location: self.location(record.name()),
                reason,
            })
    }

    async fn delete_record(&self, record: JobRecord) -> Result<(), StorageError> {
        if self.layout == Layout::Savepoint {
            // A savepoint never has records.
            return Ok(());
        }
        self.checked_state()?.files.remove(record.name());
        Ok(())
    }

    async fn lock(&self, holder: &LockHolder) -> Result<JobLock, StorageError> {
        self.layout.refuse_in_savepoint(&self.url, "job lock")?;
        drop(self.checked_state()?);
        let mut held = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(other) = held.as_ref() {
            return Err(StorageError::Locked {
                location: self.location(layout::LOCK),
                holder: other.description.clone(),
                detail: String::new(),
            });
        }
        *held = Some(holder.clone());
        Ok(JobLock::new(
            Box::new(MemoryLock {
                lock: Arc::clone(&self.lock),
            }),
            LostSignal::default(),
        ))
    }
}

/// A held lock of a [`MemoryStorage`].
struct MemoryLock {
    lock: Arc<Mutex<Option<LockHolder>>>,
}

#[async_trait]
impl LockGuard for MemoryLock {
    async fn release(self: Box<Self>) {
        *self.lock.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}
