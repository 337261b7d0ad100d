//! The storage layer's one error type. It owns the wording of every storage failure:
//! which location, whose fault, what to check, and whether a retry can help. It may
//! not decide what a caller does about a failure (skip a checkpoint, abort, fail the
//! job): that is the coordinator's.

use std::io;

use crate::runtime::ids::CheckpointId;

/// A checkpoint-storage operation failed.
///
/// Every variant names the location it concerns as a URL (`file:///…/chk-7/_metadata`),
/// so a message can be acted on without context. [`StorageError::is_transient`] says
/// whether retrying the same call can help.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Nothing is stored at `location`: a checkpoint that was never committed, a file
    /// that retention deleted, or a job directory that
    /// [`check`](super::CheckpointStorage::check) has not created. The caller's fault, or
    /// the user's for a mistyped directory; a retry does not help.
    #[error(
        "{location} does not exist. Check the checkpoint directory in the job file, and that \
         the checkpoint completed and was not deleted by retention."
    )]
    NotFound {
        /// The missing file or directory.
        location: String,
    },

    /// What is stored at `location` is not what was written: truncated, torn by a crash,
    /// or changed on disk. The storage's (disk, filesystem, object store) fault; a retry
    /// does not help, but an older complete checkpoint can be restored instead.
    #[error(
        "{location} is corrupt: {reason}. The checkpoint or savepoint that uses it cannot be \
         restored."
    )]
    Corrupt {
        /// The corrupt file.
        location: String,
        /// What does not match, e.g. "it is 10 bytes, its handle says 12".
        reason: String,
    },

    /// Checkpoint `checkpoint` already has its `_metadata`: it is committed, and a
    /// committed checkpoint never changes. A host bug, or two jobs sharing one checkpoint
    /// directory (the user's configuration); a retry does not help.
    ///
    /// After a [transient](StorageError::is_transient) failure of a commit, an earlier
    /// attempt may have committed after all: compare
    /// [`read_metadata`](super::CheckpointStorage::read_metadata) with what was written.
    #[error(
        "checkpoint {checkpoint} at {location} is already committed, and a committed \
         checkpoint never changes. Is another job writing to the same checkpoint directory?"
    )]
    AlreadyCommitted {
        /// The checkpoint's `_metadata`.
        location: String,
        /// The checkpoint.
        checkpoint: CheckpointId,
    },

    /// A shared file of this name already exists with different content. Shared names
    /// must identify their content; two writers chose one name. A host bug; a retry does
    /// not help.
    #[error(
        "{location} already holds different content: {reason}. Two writers chose the same \
         shared file name; this is a bug in Weir."
    )]
    Conflict {
        /// The shared file.
        location: String,
        /// How the stored content differs from the new one.
        reason: String,
    },

    /// A file name, job id or handle path would leave its directory or collide with the
    /// storage's own files. A host bug (names are chosen by Weir), or the user's for a job
    /// id; a retry does not help.
    #[error("`{name}` is not a valid {what}: {reason}")]
    InvalidName {
        /// The refused name, as given.
        name: String,
        /// What the name was for: "file name", "job id", "savepoint directory name" or
        /// "handle path".
        what: &'static str,
        /// Which rule it breaks.
        reason: &'static str,
    },

    /// `location` is not one a savepoint can be opened at: not a path, a `file://` or an
    /// `s3://` URL, or one that names no savepoint directory. The user's; a retry does
    /// not help.
    #[error("`{location}` is not the location of a savepoint: {reason}.")]
    InvalidLocation {
        /// The location, as given.
        location: String,
        /// What is wrong with it, and what to write instead.
        reason: String,
    },

    /// A savepoint was asked for what only a job's checkpoint directory has: shared
    /// files, job records or the job's lock. A savepoint is self-contained, so that it
    /// can be moved. A host bug; a retry does not help.
    #[error(
        "{location} is a savepoint, and a savepoint is self-contained: it has no {what}. \
         Asking a savepoint for them is a bug in Weir."
    )]
    NotInSavepoint {
        /// The savepoint directory.
        location: String,
        /// What it was asked for: "shared files", "job records" or "job lock".
        what: &'static str,
    },

    /// The operating system or the store reported an error. The environment's fault
    /// (permissions, a full disk, a failing device); `transient` says whether a retry can
    /// help.
    #[error("{action} {location} failed: {source}. {hint}", hint = io_hint(source, *transient))]
    Io {
        /// The file or directory being worked on.
        location: String,
        /// What was being done, e.g. "writing", "renaming into place".
        action: &'static str,
        /// The underlying error.
        source: io::Error,
        /// Whether retrying the call can help.
        transient: bool,
    },

    /// An object store (S3) refused or failed a request: a missing bucket, refused
    /// credentials, an unreachable endpoint, or a server error that outlasted the
    /// retries. `detail` says what to check. The store's or the user's configuration;
    /// `transient` says whether a retry can help.
    #[error("{action} {location} failed: {detail}")]
    ObjectStore {
        /// The object or bucket, as an `s3://` URL.
        location: String,
        /// What was being done, e.g. "writing".
        action: &'static str,
        /// What went wrong and what to check.
        detail: String,
        /// Whether retrying the call can help.
        transient: bool,
    },

    /// Another process holds the job's lock: it is running the same job on the same
    /// checkpoint directory. The user's (a job started twice, or restarted while the old
    /// process still runs); a retry helps only once that process stopped.
    #[error(
        "{location} is locked by {holder}: another `weir run` of this job is writing its \
         checkpoints{stale_hint}. Stop that process first; two writers would delete each \
         other's checkpoints.",
        stale_hint = if detail.is_empty() { String::new() } else { format!(" ({detail})") }
    )]
    Locked {
        /// The lock.
        location: String,
        /// Who holds it, as its [`LockHolder`](super::LockHolder) describes itself.
        holder: String,
        /// How the lock was judged alive, e.g. "its lease was renewed 3 s ago"; may be
        /// empty.
        detail: String,
    },

    /// The configured storage is not available in this build. The user's configuration;
    /// a retry does not help.
    #[error("{url}: {reason}")]
    Unsupported {
        /// The configured location.
        url: String,
        /// Why it cannot be used, and what to use instead.
        reason: &'static str,
    },

    /// A blocking storage task did not finish: it panicked, or the runtime is shutting
    /// down. A host bug unless shutting down; a retry does not help.
    #[error(
        "the storage task for {location} did not finish: {reason}. Unless Weir is shutting \
         down, this is a bug in Weir."
    )]
    Internal {
        /// The location the task was working on.
        location: String,
        /// What happened to the task.
        reason: String,
    },
}

impl StorageError {
    /// Whether retrying the same call can succeed: true only for I/O errors that are
    /// known to pass (timeouts, interruptions, a busy resource).
    pub fn is_transient(&self) -> bool {
        match self {
            StorageError::Io { transient, .. } | StorageError::ObjectStore { transient, .. } => {
                *transient
            }
            StorageError::NotFound { .. }
            | StorageError::Corrupt { .. }
            | StorageError::AlreadyCommitted { .. }
            | StorageError::Conflict { .. }
            | StorageError::Locked { .. }
            | StorageError::InvalidName { .. }
            | StorageError::InvalidLocation { .. }
            | StorageError::NotInSavepoint { .. }
            | StorageError::Unsupported { .. }
            | StorageError::Internal { .. } => false,
        }
    }

    /// An I/O error while `action` on `location`; a missing file becomes
    /// [`StorageError::NotFound`], and transience follows the error's kind.
    pub(crate) fn io(location: String, action: &'static str, source: io::Error) -> Self {
        if source.kind() == io::ErrorKind::NotFound {
            return StorageError::NotFound { location };
        }
        let transient = kind_is_transient(source.kind());
        StorageError::Io {
            location,
            action,
            source,
            transient,
        }
    }
}

/// Kinds that describe a passing condition rather than a broken one. A full disk is not
/// among them: retrying at once does not free space.
fn kind_is_transient(kind: io::ErrorKind) -> bool {
    matches!(
        kind,
        io::ErrorKind::Interrupted
            | io::ErrorKind::TimedOut
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::ResourceBusy
    )
}

/// What to check for an I/O error, by kind.
fn io_hint(source: &io::Error, transient: bool) -> &'static str {
    match source.kind() {
        io::ErrorKind::PermissionDenied => {
            "Check that the checkpoint directory's owner and permissions let Weir write there, \
             and that no symlink inside it points outside it."
        }
        io::ErrorKind::StorageFull => {
            "The disk is full: free space, or keep fewer checkpoints (num-retained)."
        }
        io::ErrorKind::ReadOnlyFilesystem => "The filesystem is mounted read-only.",
        io::ErrorKind::NotADirectory => {
            "A part of the path is a file, not a directory: check the checkpoint directory \
             in the job file."
        }
        io::ErrorKind::Unsupported => {
            "The filesystem lacks an operation Weir needs (hard links, for the atomic commit)."
        }
        _ if transient => "The error is transient; a retry may succeed.",
        _ => "Check the disk and the filesystem.",
    }
}
