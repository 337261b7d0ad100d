//! Names and paths inside a job's checkpoint directory: the one place that spells
//! `chk-<n>`, `shared`, `taskowned`, `_metadata`, `_finished` and `_lock`, and that decides which names are
//! allowed. Pure: no I/O. It may not know how a backend stores a path (a file, an
//! object key, a map entry).
//!
//! Every path here is relative to the job directory and uses `/`, whatever the
//! platform: it is what a [`FileHandle`](super::FileHandle) records.

use crate::runtime::ids::CheckpointId;

use super::StorageError;

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

/// Where a handle's path points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Place<'a> {
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

/// Where a handle's path points, or why it points outside the layout. A handle is read
/// back from `_metadata`, so its path is checked like any outside input.
pub(crate) fn parse_handle_path(path: &str) -> Result<Place<'_>, StorageError> {
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
