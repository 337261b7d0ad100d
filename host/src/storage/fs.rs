//! [`FsStorage`]: checkpoint storage in a local directory (`file://`), through cap-std.
//!
//! It owns one root directory, created (by `check`) and opened once with ambient
//! authority: a job directory `<base>/<job-id>`, or a savepoint directory
//! `<base>/<savepoint>` (see [`Layout`]). Every other path is relative to that handle, so
//! nothing outside the root can be reached, not even through a symlink. It may not touch
//! the base directory's other entries (other jobs' checkpoints, other savepoints) nor
//! anything else on the machine. Disposing of a savepoint removes its directory, the one
//! call that reaches the root by its path.
//!
//! Every blocking call runs in [`tokio::task::spawn_blocking`], checksums included, so
//! the I/O runtime's workers never wait on the disk.
//!
//! A file is written as `.<name>.tmp-<pid>-<n>`, flushed to disk, then renamed (data
//! files) or hard-linked (`_metadata`, which must not replace an existing one) to its
//! name, so a crash never leaves a complete-looking partial file. Leftover temporary
//! files start with `.`, which no valid name does, so listing and reading ignore them,
//! and deleting a checkpoint removes those in its directory.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use bytes::Bytes;
use cap_std::ambient_authority;
use cap_std::fs::{Dir, OpenOptions};

use super::checksum::{self, checksum, len_u64};
use super::layout::{self, Layout};
use super::lock::LockGuard;
use super::{
    CheckpointListing, CheckpointStorage, FileHandle, JobLock, JobRecord, LockHolder, LostSignal,
    StorageError,
};
use crate::runtime::ids::CheckpointId;

/// Checkpoint storage in `<base>/<job-id>` on a local filesystem, or one savepoint in
/// `<base>/<savepoint>`.
///
/// The filesystem must support hard links: the commit creates `_metadata` with one, so
/// that of two commits of a checkpoint exactly one succeeds.
#[derive(Debug)]
pub struct FsStorage {
    /// `<base>/<job-id>` or `<base>/<savepoint>`.
    root: PathBuf,
    /// `file://` and the root, for messages.
    url: String,
    /// How the files are arranged below the root.
    layout: Layout,
    /// The root, opened on first use once it exists; forgotten when a savepoint's
    /// delete removed it, so that a `check` after it opens the new one.
    dir: Mutex<Option<Arc<Dir>>>,
}

/// How a written temporary file gets its name.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Publish {
    /// Rename over whatever has the name: retrying a write is safe.
    Replace,
    /// Hard-link, failing with `AlreadyExists` if the name is taken.
    CreateNew,
}

impl FsStorage {
    /// Storage for job `job_id` below `base`. No I/O happens here:
    /// [`check`](CheckpointStorage::check) creates the job directory.
    ///
    /// Fails if `job_id` is not a valid directory name (empty, contains `/` or `..`,
    /// starts with `.`).
    pub fn new(base: PathBuf, job_id: &str) -> Result<Self, StorageError> {
        layout::validate_job_id(job_id)?;
        Ok(Self::with_layout(base.join(job_id), Layout::Checkpoints))
    }

    /// The savepoint directory `<base>/<name>` (`savepoint-<job>-<n>`), in the savepoint
    /// layout of the module docs of `storage`: `_metadata` and the data files side by
    /// side, handle paths relative to the directory. No I/O happens here:
    /// [`check`](CheckpointStorage::check) creates the directory; an existing savepoint
    /// is read without it.
    ///
    /// Fails if `name` is not a valid directory name.
    pub fn savepoint(base: PathBuf, name: &str) -> Result<Self, StorageError> {
        layout::validate_savepoint_name(name)?;
        Ok(Self::with_layout(base.join(name), Layout::Savepoint))
    }

    fn with_layout(root: PathBuf, layout: Layout) -> Self {
        let url = format!("file://{}", root.display());
        FsStorage {
            root,
            url,
            layout,
            dir: Mutex::new(None),
        }
    }

    /// The URL of `relative`, a path below the root.
    fn location(&self, relative: &str) -> String {
        format!("{}/{relative}", self.url)
    }

    /// The cached root handle, whatever a panicking thread did: it is only ever
    /// replaced whole.
    fn cached_dir(&self) -> MutexGuard<'_, Option<Arc<Dir>>> {
        self.dir.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The root, opened once; fails with `NotFound` until `check` created it.
    async fn job_dir(&self) -> Result<Arc<Dir>, StorageError> {
        if let Some(dir) = self.cached_dir().as_ref() {
            return Ok(Arc::clone(dir));
        }
        let root = self.root.clone();
        let url = self.url.clone();
        let dir = run_blocking(url.clone(), move || {
            Dir::open_ambient_dir(&root, ambient_authority())
                .map(Arc::new)
                .map_err(|e| StorageError::io(url, "opening", e))
        })
        .await?;
        // Of two first uses at once, both opened the same directory: either handle does.
        Ok(Arc::clone(self.cached_dir().get_or_insert(dir)))
    }

    /// Runs `work` on the root on the blocking pool. `relative` names what it
    /// works on, for the error if the task does not finish.
    async fn with_dir<T, F>(&self, relative: String, work: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&Dir, &Locator) -> Result<T, StorageError> + Send + 'static,
    {
        let dir = self.job_dir().await?;
        let locator = Locator {
            url: self.url.clone(),
        };
        run_blocking(self.location(&relative), move || work(&dir, &locator)).await
    }

    /// Removes a savepoint: `_metadata` first (flushed, so that a crash leaves no
    /// restorable half), then every other entry, then the directory itself. A savepoint
    /// that is not there is disposed of already.
    async fn dispose(&self) -> Result<(), StorageError> {
        let root = self.root.clone();
        let removed = self
            .with_dir(".".to_owned(), move |dir, at| {
                match dir.remove_file(layout::METADATA) {
                    Ok(()) => sync_dir(dir, ".").map_err(at.io(".", "flushing"))?,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(at.io(layout::METADATA, "deleting")(e)),
                }
                for entry in dir.entries().map_err(at.io(".", "listing"))? {
                    let entry = entry.map_err(at.io(".", "listing"))?;
                    let name = entry.file_name();
                    let shown = name.to_string_lossy();
                    let removed = if entry
                        .file_type()
                        .map_err(at.io(&shown, "inspecting"))?
                        .is_dir()
                    {
                        dir.remove_dir_all(&name)
                    } else {
                        dir.remove_file(&name)
                    };
                    ignore_missing(removed).map_err(at.io(&shown, "deleting"))?;
                }
                // A handle cannot remove its own directory: this one call goes by path.
                // `remove_dir` removes only an empty directory, never a symlink's target.
                ignore_missing(std::fs::remove_dir(&root)).map_err(at.io(".", "deleting"))
            })
            .await;
        *self.cached_dir() = None;
        match removed {
            Err(StorageError::NotFound { .. }) => Ok(()),
            other => other,
        }
    }
}

/// Turns relative paths into URLs for errors, inside blocking tasks.
struct Locator {
    url: String,
}

impl Locator {
    fn at(&self, relative: &str) -> String {
        format!("{}/{relative}", self.url)
    }

    /// Maps an I/O error on `relative` while `action`.
    fn io(&self, relative: &str, action: &'static str) -> impl FnOnce(io::Error) -> StorageError {
        let location = self.at(relative);
        move |e| StorageError::io(location, action, e)
    }
}

/// Runs `work` on tokio's blocking pool.
async fn run_blocking<T, F>(location: String, work: F) -> Result<T, StorageError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StorageError> + Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(e) => Err(StorageError::Internal {
            location,
            reason: e.to_string(),
        }),
    }
}

/// A name for a temporary file beside `name`, unique in this process; `create_new`
/// makes it safe against other processes too.
fn temp_name(name: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!(".{name}.tmp-{}-{n}", std::process::id())
}

/// Writes `bytes` to `dir/name` through a flushed temporary file, so the name never
/// shows a partial file.
fn write_atomically(dir: &Dir, name: &str, bytes: &[u8], publish: Publish) -> io::Result<()> {
    let temp = temp_name(name);
    let mut file = dir.open_with(&temp, OpenOptions::new().write(true).create_new(true))?;
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| {
            drop(file);
            match publish {
                Publish::Replace => dir.rename(&temp, dir, name),
                Publish::CreateNew => dir.hard_link(&temp, dir, name),
            }
        });
    if written.is_err() || publish == Publish::CreateNew {
        // Best effort: a leftover temporary file is ignored by every reader and goes
        // with its checkpoint's directory.
        let _ = dir.remove_file(&temp);
    }
    written
}

/// The directory below `dir` that holds a checkpoint's files, created if missing, and
/// its path for messages and flushing: `sub` (`chk-<n>`), or `dir` itself (`.`) for a
/// savepoint's.
fn files_dir(dir: &Dir, sub: Option<String>, at: &Locator) -> Result<(Dir, String), StorageError> {
    match sub {
        Some(sub) => {
            dir.create_dir_all(&sub).map_err(at.io(&sub, "creating"))?;
            let opened = dir.open_dir(&sub).map_err(at.io(&sub, "opening"))?;
            Ok((opened, sub))
        }
        None => Ok((
            dir.try_clone().map_err(at.io(".", "opening"))?,
            ".".to_owned(),
        )),
    }
}

/// Flushes `relative`'s directory entries to disk (`.` for `dir` itself).
fn sync_dir(dir: &Dir, relative: &str) -> io::Result<()> {
    dir.open_with(relative, OpenOptions::new().read(true))?
        .sync_all()
}

/// Whether `relative` is a regular file; a missing one is not an error.
fn is_file(dir: &Dir, relative: &str) -> io::Result<bool> {
    match dir.metadata(relative) {
        Ok(metadata) => Ok(metadata.is_file()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Ignores `NotFound`: deleting what is not there succeeds.
fn ignore_missing(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[async_trait]
impl CheckpointStorage for FsStorage {
    fn describe(&self) -> String {
        self.url.clone()
    }

    fn checkpoint_url(&self, checkpoint: CheckpointId) -> String {
        self.layout.checkpoint_url(&self.url, checkpoint)
    }

    async fn check(&self) -> Result<(), StorageError> {
        let root = self.root.clone();
        let url = self.url.clone();
        run_blocking(url.clone(), move || {
            std::fs::create_dir_all(&root).map_err(|e| StorageError::io(url, "creating", e))
        })
        .await?;
        let layout = self.layout;
        self.with_dir(".".to_owned(), move |dir, at| {
            if layout == Layout::Checkpoints {
                for sub in [layout::SHARED, layout::TASK_OWNED] {
                    dir.create_dir_all(sub).map_err(at.io(sub, "creating"))?;
                }
            }
            let probe = temp_name("probe");
            dir.write(&probe, b"probe")
                .map_err(at.io(&probe, "writing a probe file to"))?;
            dir.remove_file(&probe)
                .map_err(at.io(&probe, "removing a probe file from"))
        })
        .await
    }

    async fn write(
        &self,
        checkpoint: CheckpointId,
        name: &str,
        bytes: Bytes,
    ) -> Result<FileHandle, StorageError> {
        layout::validate_file_name(name)?;
        let layout = self.layout;
        let path = layout.data_file(checkpoint, name);
        let name = name.to_owned();
        self.with_dir(path.clone(), move |dir, at| {
            let metadata = layout.metadata_file(checkpoint);
            if is_file(dir, &metadata).map_err(at.io(&metadata, "looking for"))? {
                return Err(StorageError::AlreadyCommitted {
                    location: at.at(&metadata),
                    checkpoint,
                });
            }
            let (files, _) = files_dir(dir, layout.checkpoint_dir(checkpoint), at)?;
            write_atomically(&files, &name, &bytes, Publish::Replace)
                .map_err(at.io(&path, "writing"))?;
            Ok(FileHandle {
                size: len_u64(&bytes),
                checksum: checksum(&bytes),
                path,
            })
        })
        .await
    }

    async fn write_shared(&self, name: &str, bytes: Bytes) -> Result<FileHandle, StorageError> {
        layout::validate_file_name(name)?;
        self.layout.refuse_in_savepoint(&self.url, "shared files")?;
        let path = layout::shared_file(name);
        let name = name.to_owned();
        self.with_dir(path.clone(), move |dir, at| {
            let handle = FileHandle {
                size: len_u64(&bytes),
                checksum: checksum(&bytes),
                path,
            };
            dir.create_dir_all(layout::SHARED)
                .map_err(at.io(layout::SHARED, "creating"))?;
            let shared = dir
                .open_dir(layout::SHARED)
                .map_err(at.io(layout::SHARED, "opening"))?;
            match shared.read(&name) {
                Ok(existing) => {
                    return match checksum::conflict(&handle, &existing) {
                        None => Ok(handle),
                        Some(reason) => Err(StorageError::Conflict {
                            location: at.at(&handle.path),
                            reason,
                        }),
                    };
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(at.io(&handle.path, "reading")(e)),
            }
            write_atomically(&shared, &name, &bytes, Publish::Replace)
                .map_err(at.io(&handle.path, "writing"))?;
            Ok(handle)
        })
        .await
    }

    async fn read(&self, handle: &FileHandle) -> Result<Bytes, StorageError> {
        let path = self.layout.handle_file(&handle.path)?;
        let handle = handle.clone();
        self.with_dir(path.clone(), move |dir, at| {
            let bytes = dir.read(&path).map_err(at.io(&path, "reading"))?;
            checksum::verify(&handle, &bytes).map_err(|reason| StorageError::Corrupt {
                location: at.at(&path),
                reason,
            })?;
            Ok(Bytes::from(bytes))
        })
        .await
    }

    async fn commit(&self, checkpoint: CheckpointId, metadata: Bytes) -> Result<(), StorageError> {
        let layout = self.layout;
        let path = layout.metadata_file(checkpoint);
        self.with_dir(path.clone(), move |dir, at| {
            let framed = checksum::frame(&metadata);
            let (files, sub) = files_dir(dir, layout.checkpoint_dir(checkpoint), at)?;
            // The data files' and shared files' names must be on disk before the commit
            // point that refers to them can be. A savepoint's are in the root.
            if layout == Layout::Checkpoints {
                sync_dir(dir, &sub).map_err(at.io(&sub, "flushing"))?;
                if dir.is_dir(layout::SHARED) {
                    sync_dir(dir, layout::SHARED).map_err(at.io(layout::SHARED, "flushing"))?;
                }
            }
            sync_dir(dir, ".").map_err(at.io(".", "flushing"))?;
            match write_atomically(&files, layout::METADATA, &framed, Publish::CreateNew) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(StorageError::AlreadyCommitted {
                        location: at.at(&path),
                        checkpoint,
                    });
                }
                Err(e) => return Err(at.io(&path, "writing")(e)),
            }
            sync_dir(dir, &sub).map_err(at.io(&sub, "flushing"))
        })
        .await
    }

    async fn read_metadata(&self, checkpoint: CheckpointId) -> Result<Bytes, StorageError> {
        let path = self.layout.metadata_file(checkpoint);
        self.with_dir(path.clone(), move |dir, at| {
            let framed = dir.read(&path).map_err(at.io(&path, "reading"))?;
            checksum::unframe(Bytes::from(framed)).map_err(|reason| StorageError::Corrupt {
                location: at.at(&path),
                reason,
            })
        })
        .await
    }

    async fn list(&self) -> Result<Vec<CheckpointListing>, StorageError> {
        if self.layout == Layout::Savepoint {
            return self
                .with_dir(".".to_owned(), |dir, at| {
                    let mut holds_files = false;
                    for entry in dir.entries().map_err(at.io(".", "listing"))? {
                        let entry = entry.map_err(at.io(".", "listing"))?;
                        let name = entry.file_name();
                        let Some(name) = name.to_str() else { continue };
                        if layout::validate_file_name(name).is_ok()
                            && entry
                                .file_type()
                                .map_err(at.io(name, "inspecting"))?
                                .is_file()
                        {
                            holds_files = true;
                            break;
                        }
                    }
                    let has_metadata = is_file(dir, layout::METADATA)
                        .map_err(at.io(layout::METADATA, "looking for"))?;
                    Ok(layout::savepoint_listing(holds_files, has_metadata))
                })
                .await;
        }
        self.with_dir(".".to_owned(), |dir, at| {
            let mut listings = Vec::new();
            for entry in dir.entries().map_err(at.io(".", "listing"))? {
                let entry = entry.map_err(at.io(".", "listing"))?;
                let name = entry.file_name();
                let Some(checkpoint) = name.to_str().and_then(layout::parse_checkpoint_dir) else {
                    continue;
                };
                let sub = layout::checkpoint_dir(checkpoint);
                if !entry
                    .file_type()
                    .map_err(at.io(&sub, "inspecting"))?
                    .is_dir()
                {
                    continue;
                }
                let metadata = layout::metadata_file(checkpoint);
                let has_metadata =
                    is_file(dir, &metadata).map_err(at.io(&metadata, "looking for"))?;
                listings.push(CheckpointListing {
                    checkpoint,
                    has_metadata,
                });
            }
            listings.sort_by_key(|listing| listing.checkpoint);
            Ok(listings)
        })
        .await
    }

    async fn delete_checkpoint(&self, checkpoint: CheckpointId) -> Result<(), StorageError> {
        if self.layout == Layout::Savepoint {
            return self.dispose().await;
        }
        let sub = layout::checkpoint_dir(checkpoint);
        self.with_dir(sub.clone(), move |dir, at| {
            let metadata = layout::metadata_file(checkpoint);
            match dir.remove_file(&metadata) {
                // The checkpoint must be unrestorable on disk before its files go.
                Ok(()) => sync_dir(dir, &sub).map_err(at.io(&sub, "flushing"))?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(at.io(&metadata, "deleting")(e)),
            }
            ignore_missing(dir.remove_dir_all(&sub)).map_err(at.io(&sub, "deleting"))
        })
        .await
    }

    async fn list_shared(&self) -> Result<Vec<String>, StorageError> {
        if self.layout == Layout::Savepoint {
            return self.job_dir().await.map(|_| Vec::new());
        }
        self.with_dir(layout::SHARED.to_owned(), |dir, at| {
            let entries = match dir.read_dir(layout::SHARED) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(at.io(layout::SHARED, "listing")(e)),
            };
            let mut names = Vec::new();
            for entry in entries {
                let entry = entry.map_err(at.io(layout::SHARED, "listing"))?;
                if let Some(name) = entry.file_name().to_str()
                    && layout::validate_file_name(name).is_ok()
                {
                    names.push(name.to_owned());
                }
            }
            Ok(names)
        })
        .await
    }

    async fn write_record(&self, record: JobRecord, bytes: Bytes) -> Result<(), StorageError> {
        self.layout.refuse_in_savepoint(&self.url, "job records")?;
        let name = record.name();
        self.with_dir(name.to_owned(), move |dir, at| {
            write_atomically(dir, name, &checksum::frame(&bytes), Publish::Replace)
                .and_then(|()| sync_dir(dir, "."))
                .map_err(at.io(name, "writing"))
        })
        .await
    }

    async fn read_record(&self, record: JobRecord) -> Result<Option<Bytes>, StorageError> {
        if self.layout == Layout::Savepoint {
            return self.job_dir().await.map(|_| None);
        }
        let name = record.name();
        self.with_dir(name.to_owned(), move |dir, at| {
            let framed = match dir.read(name) {
                Ok(framed) => framed,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(at.io(name, "reading")(e)),
            };
            checksum::unframe(Bytes::from(framed))
                .map(Some)
                .map_err(|reason| StorageError::Corrupt {
                    location: at.at(name),
                    reason,
                })
        })
        .await
    }

    async fn delete_record(&self, record: JobRecord) -> Result<(), StorageError> {
        if self.layout == Layout::Savepoint {
            // A savepoint never has records.
            return Ok(());
        }
        let name = record.name();
        self.with_dir(name.to_owned(), move |dir, at| {
            ignore_missing(dir.remove_file(name))
                .and_then(|()| sync_dir(dir, "."))
                .map_err(at.io(name, "deleting"))
        })
        .await
    }

    async fn lock(&self, holder: &LockHolder) -> Result<JobLock, StorageError> {
        self.layout.refuse_in_savepoint(&self.url, "job lock")?;
        let holder = holder.clone();
        let file = self
            .with_dir(layout::LOCK.to_owned(), move |dir, at| {
                let mut file = dir
                    .open_with(
                        layout::LOCK,
                        OpenOptions::new().read(true).write(true).create(true),
                    )
                    .map_err(at.io(layout::LOCK, "opening"))?
                    .into_std();
                match file.try_lock() {
                    Ok(()) => {}
                    Err(std::fs::TryLockError::WouldBlock) => {
                        let mut bytes = Vec::new();
                        let named = match file.read_to_end(&mut bytes) {
                            Ok(_) => LockHolder::from_bytes(&bytes).description,
                            Err(_) => "another process".to_owned(),
                        };
                        return Err(StorageError::Locked {
                            location: at.at(layout::LOCK),
                            holder: named,
                            detail: "it holds the file lock, which the operating system \
                                     releases when that process exits"
                                .to_owned(),
                        });
                    }
                    Err(std::fs::TryLockError::Error(e)) => {
                        return Err(at.io(layout::LOCK, "locking")(e));
                    }
                }
                file.set_len(0)
                    .and_then(|()| file.write_all(&holder.to_bytes()))
                    .and_then(|()| file.sync_all())
                    .map_err(at.io(layout::LOCK, "writing"))?;
                Ok(file)
            })
            .await?;
        Ok(JobLock::new(
            Box::new(FileLock { _file: file }),
            LostSignal::default(),
        ))
    }

    async fn delete_shared(&self, names: &[String]) -> Result<(), StorageError> {
        for name in names {
            layout::validate_file_name(name)?;
        }
        if self.layout == Layout::Savepoint {
            // A savepoint never has shared files, and deleting what is not there succeeds.
            return Ok(());
        }
        let paths: Vec<String> = names.iter().map(|name| layout::shared_file(name)).collect();
        self.with_dir(layout::SHARED.to_owned(), move |dir, at| {
            for path in &paths {
                ignore_missing(dir.remove_file(path)).map_err(at.io(path, "deleting"))?;
            }
            Ok(())
        })
        .await
    }
}

/// A held `flock`: released when the file is closed, by [`JobLock::release`] or when
/// the process exits, however it exits.
struct FileLock {
    _file: std::fs::File,
}

#[async_trait]
impl LockGuard for FileLock {
    async fn release(self: Box<Self>) {}
}
