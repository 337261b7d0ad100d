//! Names and paths inside a storage's root: the one place that spells `chk-<n>`,
//! `shared`, `taskowned`, `_metadata`, `_finished` and `_lock`, that decides which
//! names are allowed, and where a [`Layout`] puts a checkpoint's files. Pure: no I/O. It
//! may not know how a backend stores a path (a file, an object key, a map entry).
//!
//! Every path here is relative to the storage's root (the job directory, or the
//! savepoint directory) and uses `/`, whatever the platform: it is what a
//! [`FileHandle`](super::FileHandle) records.

use crate::runtime::ids::CheckpointId;

use super::{CheckpointListing, StorageError};

/// The commit point of a checkpoint, written last.
pub(crate) const METADATA: &str = "_metadata";

/// The directory of files referenced across checkpoints.
pub(crate) const SHARED: &str = "shared";

/// The record of a job that finished.
pub(crate) const FINISHED: &str = "_finished";
/// The record of a job's checkpoint statistics.
pub(crate) const STATISTICS: &str = "_checkpoint-stats";

/// The lock of the one process running the job.
pub(crate) const LOCK: &str = "_lock";

/// The directory of task-owned state, as in Flink's layout; nothing writes there yet.
pub(crate) const TASK_OWNED: &str = "taskowned";

/// What a checkpoint directory's name starts with.
const CHECKPOINT_PREFIX: &str = "chk-";

/// The longest name, in bytes. Filesystems allow 255; a temporary file adds a leading
/// dot, `.tmp-` and a unique suffix of at most 41 bytes, and 200 leaves room for them.
const MAX_NAME_LEN: usize = 200;

/// The checkpoint id a savepoint is listed under: a savepoint directory holds one
/// snapshot, whatever checkpoint it was taken as, and its files do not say which.
pub(crate) const SAVEPOINT_LISTING: CheckpointId = CheckpointId(0);

/// How a storage arranges its files below its root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// A job's checkpoint directory, as Flink's: `chk-<n>/<name>`, `chk-<n>/_metadata`,
    /// `shared/<name>`, the job's records and its lock.
    Checkpoints,
    /// A savepoint directory: one snapshot, self-contained and relocatable. `_metadata`
    /// and the data files lie side by side in the root and every handle path is a bare
    /// file name, so the directory can be moved or copied and opened where it lands.
    /// Checkpoint ids are ignored; there are no shared files, records or lock.
    Savepoint,
}

impl Layout {
    /// Where data file `name` of `checkpoint` is: `chk-<n>/<name>`, or `<name>` in a
    /// savepoint.
    pub(crate) fn data_file(self, checkpoint: CheckpointId, name: &str) -> String {
        match self {
            Layout::Checkpoints => checkpoint_file(checkpoint, name),
            Layout::Savepoint => name.to_owned(),
        }
    }

    /// Where `checkpoint`'s commit point is: `chk-<n>/_metadata`, or `_metadata` in a
    /// savepoint.
    pub(crate) fn metadata_file(self, checkpoint: CheckpointId) -> String {
        self.data_file(checkpoint, METADATA)
    }

    /// The directory below the root that holds `checkpoint`'s files, `chk-<n>`; `None` in
    /// a savepoint, whose files are in the root itself.
    pub(crate) fn checkpoint_dir(self, checkpoint: CheckpointId) -> Option<String> {
        match self {
            Layout::Checkpoints => Some(checkpoint_dir(checkpoint)),
            Layout::Savepoint => None,
        }
    }

    /// Where `checkpoint` is, as a URL for the user, given the root's URL.
    pub(crate) fn checkpoint_url(self, root: &str, checkpoint: CheckpointId) -> String {
        match self.checkpoint_dir(checkpoint) {
            Some(dir) => format!("{root}/{dir}"),
            None => root.to_owned(),
        }
    }

    /// Refuses, in a savepoint (at `url`), what only a job's checkpoint directory has:
    /// `what` is "shared files", "job records" or "job lock".
    pub(crate) fn refuse_in_savepoint(
        self,
        url: &str,
        what: &'static str,
    ) -> Result<(), StorageError> {
        match self {
            Layout::Checkpoints => Ok(()),
            Layout::Savepoint => Err(StorageError::NotInSavepoint {
                location: url.to_owned(),
                what,
            }),
        }
    }

    /// The path below the root that a handle's path names, or why it points outside the
    /// layout. A handle is read back from `_metadata`, so its path is checked like any
    /// outside input: in a savepoint it must be one valid file name.
    pub(crate) fn handle_file(self, path: &str) -> Result<String, StorageError> {
        match self {
            Layout::Checkpoints => Ok(match parse_handle_path(path)? {
                Place::Checkpoint(checkpoint, name) => checkpoint_file(checkpoint, name),
                Place::Shared(name) => shared_file(name),
            }),
            Layout::Savepoint => match validate_file_name(path) {
                Ok(()) => Ok(path.to_owned()),
                Err(_) => Err(StorageError::InvalidName {
                    name: path.to_owned(),
                    what: "handle path",
                    reason: "a savepoint's handle path is one file name, relative to the \
                             savepoint directory",
                }),
            },
        }
    }
}

/// What `list` shows of a savepoint directory: nothing while it holds no file (as a
/// checkpoint directory exists once a write or a commit created it), else its one
/// snapshot, as checkpoint [`SAVEPOINT_LISTING`].
pub(crate) fn savepoint_listing(holds_files: bool, has_metadata: bool) -> Vec<CheckpointListing> {
    if holds_files || has_metadata {
        vec![CheckpointListing {
            checkpoint: SAVEPOINT_LISTING,
            has_metadata,
        }]
    } else {
        Vec::new()
    }
}

/// Where a handle's path points in a job's checkpoint directory.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Place<'a> {
    /// A data file of a checkpoint.
    Checkpoint(CheckpointId, &'a str),
    /// A file of `shared/`.
    Shared(&'a str),
}

/// `chk-<n>`.
pub(crate) fn checkpoint_dir(checkpoint: CheckpointId) -> String {
    format!("{CHECKPOINT_PREFIX}{}", checkpoint.0)
}

/// `chk-<n>/<name>`.
pub(crate) fn checkpoint_file(checkpoint: CheckpointId, name: &str) -> String {
    format!("{}/{name}", checkpoint_dir(checkpoint))
}

/// `chk-<n>/_metadata`.
pub(crate) fn metadata_file(checkpoint: CheckpointId) -> String {
    checkpoint_file(checkpoint, METADATA)
}

/// `shared/<name>`.
pub(crate) fn shared_file(name: &str) -> String {
    format!("{SHARED}/{name}")
}

/// The checkpoint whose directory this is: `chk-` and a decimal number without leading
/// zeros, so that one checkpoint has one directory name.
pub(crate) fn parse_checkpoint_dir(name: &str) -> Option<CheckpointId> {
    let digits = name.strip_prefix(CHECKPOINT_PREFIX)?;
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    if !canonical {
        return None;
    }
    digits.parse().ok().map(CheckpointId)
}

/// Refuses a name that is not one plain path component of reasonable length, or that
/// is the commit point's.
pub(crate) fn validate_file_name(name: &str) -> Result<(), StorageError> {
    let refuse = |reason| {
        Err(StorageError::InvalidName {
            name: name.to_owned(),
            what: "file name",
            reason,
        })
    };
    if name == METADATA {
        return refuse("`_metadata` is the commit point, written only by commit");
    }
    match component_rule_broken(name) {
        Some(reason) => refuse(reason),
        None => Ok(()),
    }
}

/// Refuses a job id that could not be one directory name.
pub(crate) fn validate_job_id(job_id: &str) -> Result<(), StorageError> {
    match component_rule_broken(job_id) {
        Some(reason) => Err(StorageError::InvalidName {
            name: job_id.to_owned(),
            what: "job id",
            reason,
        }),
        None => Ok(()),
    }
}

/// Refuses a savepoint directory's name that could not be one directory name.
pub(crate) fn validate_savepoint_name(name: &str) -> Result<(), StorageError> {
    match component_rule_broken(name) {
        Some(reason) => Err(StorageError::InvalidName {
            name: name.to_owned(),
            what: "savepoint directory name",
            reason,
        }),
        None => Ok(()),
    }
}

/// Where a handle's path points in a job's checkpoint directory, or why it points
/// outside that layout. A handle is read back from `_metadata`, so its path is checked
/// like any outside input.
fn parse_handle_path(path: &str) -> Result<Place<'_>, StorageError> {
    let refuse = |reason| {
        Err(StorageError::InvalidName {
            name: path.to_owned(),
            what: "handle path",
            reason,
        })
    };
    let Some((dir, name)) = path.split_once('/') else {
        return refuse("it is not `chk-<n>/<name>` or `shared/<name>`");
    };
    if validate_file_name(name).is_err() {
        return refuse("its file name is not a valid one");
    }
    if dir == SHARED {
        return Ok(Place::Shared(name));
    }
    match parse_checkpoint_dir(dir) {
        Some(checkpoint) => Ok(Place::Checkpoint(checkpoint, name)),
        None => refuse("it is not `chk-<n>/<name>` or `shared/<name>`"),
    }
}

/// The rule a file name or job id breaks, if any: it must be one path component that
/// no platform reads as special, and not a hidden or temporary file's.
fn component_rule_broken(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_NAME_LEN {
        Some("it is longer than 200 bytes")
    } else if name.contains("..") {
        Some("it contains '..'")
    } else if name.contains(['/', '\\']) {
        Some("it contains a path separator, and a name is one path component")
    } else if name.starts_with('.') {
        Some("it starts with '.', as hidden and temporary files do")
    } else if name.chars().any(char::is_control) {
        Some("it contains a control character")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_paths_follow_flinks_layout() {
        assert_eq!(
            checkpoint_file(CheckpointId(7), "count-2-state"),
            "chk-7/count-2-state"
        );
        assert_eq!(metadata_file(CheckpointId(7)), "chk-7/_metadata");
        assert_eq!(shared_file("abc.sst"), "shared/abc.sst");
    }

    #[test]
    fn only_canonical_checkpoint_directory_names_parse() {
        assert_eq!(parse_checkpoint_dir("chk-7"), Some(CheckpointId(7)));
        assert_eq!(parse_checkpoint_dir("chk-0"), Some(CheckpointId(0)));
        assert_eq!(
            parse_checkpoint_dir("chk-18446744073709551615"),
            Some(CheckpointId(u64::MAX))
        );
        for name in [
            "chk-",
            "chk-07",
            "chk-+7",
            "chk-7a",
            "chk--7",
            "chk-18446744073709551616",
            "shared",
            "taskowned",
            ".chk-7.tmp-1",
        ] {
            assert_eq!(parse_checkpoint_dir(name), None, "{name}");
        }
    }

    #[test]
    fn plain_names_are_valid_file_names() {
        for name in ["count-2-state", "abc.sst", "a", "x_y.z-1", &"n".repeat(200)] {
            assert!(validate_file_name(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn names_that_leave_their_directory_or_hide_are_refused() {
        for name in [
            "",
            "..",
            "a..b",
            "../x",
            "a/b",
            "a\\b",
            ".hidden",
            ".x.tmp-1",
            "a\0b",
            "a\nb",
            "_metadata",
            &"n".repeat(201),
        ] {
            assert!(
                matches!(
                    validate_file_name(name),
                    Err(StorageError::InvalidName { .. })
                ),
                "{name:?}"
            );
        }
    }

    #[test]
    fn a_job_id_may_be_any_single_component() {
        assert!(validate_job_id("word count").is_ok());
        assert!(validate_job_id("_metadata").is_ok());
        assert!(validate_job_id("a/b").is_err());
        assert!(validate_job_id("..").is_err());
    }

    #[test]
    fn handle_paths_point_into_a_checkpoint_or_shared() {
        assert_eq!(
            parse_handle_path("chk-7/state").expect("valid"),
            Place::Checkpoint(CheckpointId(7), "state")
        );
        assert_eq!(
            parse_handle_path("shared/abc.sst").expect("valid"),
            Place::Shared("abc.sst")
        );
    }

    #[test]
    fn a_savepoint_keeps_its_files_and_metadata_in_its_root_whatever_the_checkpoint() {
        for checkpoint in [CheckpointId(0), CheckpointId(7)] {
            assert_eq!(
                Layout::Savepoint.data_file(checkpoint, "count-2-state"),
                "count-2-state"
            );
            assert_eq!(Layout::Savepoint.metadata_file(checkpoint), "_metadata");
            assert_eq!(Layout::Savepoint.checkpoint_dir(checkpoint), None);
            assert_eq!(
                Layout::Savepoint.checkpoint_url("file:///x/savepoint-wc-3", checkpoint),
                "file:///x/savepoint-wc-3"
            );
        }
    }

    #[test]
    fn the_checkpoints_layout_keeps_each_checkpoint_in_its_directory() {
        let layout = Layout::Checkpoints;
        assert_eq!(layout.data_file(CheckpointId(7), "a"), "chk-7/a");
        assert_eq!(layout.metadata_file(CheckpointId(7)), "chk-7/_metadata");
        assert_eq!(layout.checkpoint_dir(CheckpointId(7)), Some("chk-7".into()));
        assert_eq!(
            layout.checkpoint_url("file:///x/job", CheckpointId(7)),
            "file:///x/job/chk-7"
        );
        assert_eq!(layout.handle_file("shared/a").expect("valid"), "shared/a");
        assert!(layout.handle_file("a").is_err());
    }

    #[test]
    fn a_savepoint_handle_is_one_valid_file_name() {
        assert_eq!(
            Layout::Savepoint
                .handle_file("count-2-state")
                .expect("valid"),
            "count-2-state"
        );
        for path in [
            "chk-7/a",
            "shared/a",
            "../a",
            "a/b",
            "/a",
            "_metadata",
            ".x",
            "",
        ] {
            assert!(
                matches!(
                    Layout::Savepoint.handle_file(path),
                    Err(StorageError::InvalidName {
                        what: "handle path",
                        ..
                    })
                ),
                "{path:?}"
            );
        }
    }

    #[test]
    fn a_savepoint_is_listed_once_it_holds_a_file() {
        assert_eq!(savepoint_listing(false, false), []);
        let listing = |has_metadata| CheckpointListing {
            checkpoint: CheckpointId(0),
            has_metadata,
        };
        assert_eq!(savepoint_listing(true, false), [listing(false)]);
        assert_eq!(savepoint_listing(true, true), [listing(true)]);
        assert_eq!(savepoint_listing(false, true), [listing(true)]);
    }

    #[test]
    fn only_a_savepoint_refuses_what_only_a_job_has() {
        assert!(
            Layout::Checkpoints
                .refuse_in_savepoint("file:///x/job", "job lock")
                .is_ok()
        );
        let err = Layout::Savepoint
            .refuse_in_savepoint("file:///x/savepoint-wc-3", "shared files")
            .expect_err("refused");
        assert_eq!(
            err.to_string(),
            "file:///x/savepoint-wc-3 is a savepoint, and a savepoint is self-contained: it \
             has no shared files. Asking a savepoint for them is a bug in Weir."
        );
    }

    #[test]
    fn a_savepoint_directory_name_is_one_component() {
        assert!(validate_savepoint_name("savepoint-wc-3").is_ok());
        for name in ["", "..", "a/b", ".hidden", "a\\b"] {
            assert!(
                matches!(
                    validate_savepoint_name(name),
                    Err(StorageError::InvalidName {
                        what: "savepoint directory name",
                        ..
                    })
                ),
                "{name:?}"
            );
        }
    }

    #[test]
    fn handle_paths_outside_the_layout_are_refused() {
        for path in [
            "state",
            "chk-7",
            "chk-7/_metadata",
            "chk-7/../../etc/passwd",
            "chk-7/a/b",
            "../chk-7/a",
            "/chk-7/a",
            "taskowned/a",
            "chk-07/a",
            "shared/",
            "shared/.x.tmp-1",
        ] {
            assert!(parse_handle_path(path).is_err(), "{path}");
        }
    }
}
