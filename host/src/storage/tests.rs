//! The storage contract, as tests that run against every [`CheckpointStorage`]: each
//! `async fn` below takes a [`Fixture`] and is instantiated once per storage by
//! `contract_suite!`, and, for the storages opened as a savepoint, by `savepoint_suite!`
//! with the contract tests that hold in both layouts and the savepoint's own. Then the
//! tests that only one storage has: what the filesystem shows, crash leftovers,
//! confinement, moved savepoints; the double's fault injection; error wording.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use tempfile::TempDir;

use super::*;

/// A storage under test, and a way to damage its files behind its back.
trait Fixture {
    /// The storage under test.
    type Storage: CheckpointStorage;

    /// A fresh, unchecked storage.
    fn new() -> Self;

    /// The storage under test.
    fn storage(&self) -> &Self::Storage;

    /// Flips a bit of the last byte of the file at `path` (relative to the root).
    fn flip_last_byte(&self, path: &str);

    /// Cuts the file at `path` to `len` bytes.
    fn truncate(&self, path: &str, len: usize);
}

struct Fs {
    /// Holds the temporary directory until the test ends.
    _temp: TempDir,
    base: PathBuf,
    storage: FsStorage,
}

impl Fs {
    /// The job directory on disk.
    fn root(&self) -> PathBuf {
        self.base.join("job")
    }
}

impl Fixture for Fs {
    type Storage = FsStorage;

    fn new() -> Self {
        let temp = tempfile::tempdir().expect("temp dir");
        let base = temp.path().join("checkpoints");
        let storage = FsStorage::new(base.clone(), "job").expect("valid job id");
        Fs {
            _temp: temp,
            base,
            storage,
        }
    }

    fn storage(&self) -> &FsStorage {
        &self.storage
    }

    fn flip_last_byte(&self, path: &str) {
        flip_last_byte_of(&self.root().join(path));
    }

    fn truncate(&self, path: &str, len: usize) {
        truncate_file(&self.root().join(path), len);
    }
}

struct Memory {
    storage: MemoryStorage,
}

impl Fixture for Memory {
    type Storage = MemoryStorage;

    fn new() -> Self {
        Memory {
            storage: MemoryStorage::new("job").expect("valid job id"),
        }
    }

    fn storage(&self) -> &MemoryStorage {
        &self.storage
    }

    fn flip_last_byte(&self, path: &str) {
        assert!(self.storage.corrupt(path), "no file {path} to corrupt");
    }

    fn truncate(&self, path: &str, len: usize) {
        assert!(
            self.storage.truncate(path, len),
            "no file {path} to truncate"
        );
    }
}

/// The savepoint directory of the savepoint fixtures.
const SAVEPOINT: &str = "savepoint-job-1";

struct FsSavepoint {
    /// Holds the temporary directory until the test ends.
    _temp: TempDir,
    base: PathBuf,
    storage: FsStorage,
}

impl FsSavepoint {
    /// The savepoint directory on disk.
    fn root(&self) -> PathBuf {
        self.base.join(SAVEPOINT)
    }
}

impl Fixture for FsSavepoint {
    type Storage = FsStorage;

    fn new() -> Self {
        let temp = tempfile::tempdir().expect("temp dir");
        let base = temp.path().join("savepoints");
        let storage = FsStorage::savepoint(base.clone(), SAVEPOINT).expect("valid name");
        FsSavepoint {
            _temp: temp,
            base,
            storage,
        }
    }

    fn storage(&self) -> &FsStorage {
        &self.storage
    }

    fn flip_last_byte(&self, path: &str) {
        flip_last_byte_of(&self.root().join(path));
    }

    fn truncate(&self, path: &str, len: usize) {
        truncate_file(&self.root().join(path), len);
    }
}

/// Flips a bit of the last byte of `file`.
fn flip_last_byte_of(file: &Path) {
    let mut bytes = std::fs::read(file).expect("read file to corrupt");
    *bytes.last_mut().expect("non-empty file") ^= 1;
    std::fs::write(file, bytes).expect("write corrupted file");
}

/// Cuts `file` to `len` bytes.
fn truncate_file(file: &Path, len: usize) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .expect("open file to truncate")
        .set_len(u64::try_from(len).expect("small length"))
        .expect("truncate");
}

struct MemorySavepoint {
    storage: MemoryStorage,
}

impl Fixture for MemorySavepoint {
    type Storage = MemoryStorage;

    fn new() -> Self {
        MemorySavepoint {
            storage: MemoryStorage::savepoint(SAVEPOINT).expect("valid name"),
        }
    }

    fn storage(&self) -> &MemoryStorage {
        &self.storage
    }

    fn flip_last_byte(&self, path: &str) {
        assert!(self.storage.corrupt(path), "no file {path} to corrupt");
    }

    fn truncate(&self, path: &str, len: usize) {
        assert!(
            self.storage.truncate(path, len),
            "no file {path} to truncate"
        );
    }
}

/// Instantiates every contract test for one fixture type, in module `$module`.
macro_rules! contract_suite {
    ($module:ident, $fixture:ty) => {
        mod $module {
            use super::*;

            contract_suite!(@tests $fixture;
                a_written_file_reads_back_unchanged,
                an_empty_file_reads_back_empty,
                a_flipped_byte_in_a_data_file_is_corrupt_and_named,
                a_truncated_data_file_is_corrupt,
                a_file_that_was_never_written_is_not_found,
                committed_metadata_reads_back_unchanged,
                a_torn_metadata_file_is_corrupt,
                a_flipped_bit_in_metadata_is_corrupt,
                committing_a_checkpoint_twice_is_refused_and_keeps_the_first,
                a_committed_checkpoint_refuses_new_data_files,
                metadata_of_an_uncommitted_checkpoint_is_not_found,
                list_shows_checkpoints_with_and_without_metadata_oldest_first,
                deleting_a_checkpoint_removes_its_files_and_metadata,
                deleting_a_missing_checkpoint_succeeds,
                names_with_dot_dot_a_slash_or_a_leading_dot_are_refused,
                handles_pointing_outside_the_layout_are_refused,
                shared_writes_of_the_same_content_are_idempotent,
                a_shared_name_reused_for_different_content_is_a_conflict,
                deleting_shared_files_removes_only_those_named,
                storage_that_was_not_checked_reports_not_found,
                shared_files_are_listed_by_name,
                a_record_reads_back_until_it_is_deleted,
                a_second_lock_is_refused_naming_the_holder_until_the_first_is_released,
            );
        }
    };
    (@tests $fixture:ty; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let fixture = <$fixture as Fixture>::new();
                super::$name(&fixture).await;
            }
        )*
    };
}

/// Instantiates, for one fixture type that opens its storage as a savepoint, in module
/// `$module`, the contract tests that hold in both layouts and the savepoint's own.
macro_rules! savepoint_suite {
    ($module:ident, $fixture:ty) => {
        mod $module {
            use super::*;

            contract_suite!(@tests $fixture;
                an_empty_file_reads_back_empty,
                a_truncated_data_file_is_corrupt,
                committed_metadata_reads_back_unchanged,
                committing_a_checkpoint_twice_is_refused_and_keeps_the_first,
                a_committed_checkpoint_refuses_new_data_files,
                metadata_of_an_uncommitted_checkpoint_is_not_found,
                deleting_a_missing_checkpoint_succeeds,
                names_with_dot_dot_a_slash_or_a_leading_dot_are_refused,
                storage_that_was_not_checked_reports_not_found,
                a_savepoints_files_lie_in_its_root_under_bare_names,
                a_flipped_byte_in_a_savepoint_file_or_its_metadata_is_corrupt_and_named,
                a_truncated_savepoint_file_or_metadata_is_corrupt_and_named,
                a_savepoint_is_listed_once_with_whether_it_is_committed,
                deleting_a_savepoint_removes_all_of_it,
                a_savepoint_refuses_shared_files_records_and_the_lock,
                a_savepoint_handle_must_be_a_bare_file_name,
                a_savepoints_checkpoint_url_is_its_directory,
            );
        }
    };
}

contract_suite!(fs_contract, Fs);
contract_suite!(memory_contract, Memory);
savepoint_suite!(fs_savepoint, FsSavepoint);
savepoint_suite!(memory_savepoint, MemorySavepoint);

#[path = "s3_tests.rs"]
mod s3_tests;

/// The fixture's storage, checked.
async fn checked<F: Fixture>(f: &F) -> &F::Storage {
    f.storage().check().await.expect("check");
    f.storage()
}

fn state() -> Bytes {
    Bytes::from_static(b"state of node count, subtask 2")
}

async fn a_written_file_reads_back_unchanged<F: Fixture>(f: &F) {
    let s = checked(f).await;
    let handle = s
        .write(CheckpointId(7), "count-2-state", state())
        .await
        .expect("write");
    assert_eq!(
        handle,
        FileHandle {
            path: "chk-7/count-2-state".into(),
            size: 30,
            checksum: checksum(&state()),
        }
    );
    assert_eq!(s.read(&handle).await.expect("read"), state());
}

async fn an_empty_file_reads_back_empty<F: Fixture>(f: &F) {
    let s = checked(f).await;
    let handle = s
        .write(CheckpointId(1), "empty", Bytes::new())
        .await
        .expect("write");
    assert_eq!(handle.size, 0);
    assert_eq!(s.read(&handle).await.expect("read"), Bytes::new());
}

async fn a_flipped_byte_in_a_data_file_is_corrupt_and_named<F: Fixture>(f: &F) {
    let s = checked(f).await;
    let handle = s
        .write(CheckpointId(7), "count-2-state", state())
        .await
        .expect("write");
    f.flip_last_byte(&handle.path);
    let err = s.read(&handle).await.expect_err("corrupt file refused");
    let StorageError::Corrupt { location, reason } = &err else {
        panic!("expected Corrupt, got {err}");
    };
    assert_eq!(location, &format!("{}/chk-7/count-2-state", s.describe()));
    assert!(reason.contains("CRC32C"), "{reason}");
    assert!(err.to_string().contains("chk-7/count-2-state"), "{err}");
    assert!(!err.is_transient());
}

async fn a_truncated_data_file_is_corrupt<F: Fixture>(f: &F) {
    let s = checked(f).await;
    let handle = s
        .write(CheckpointId(7), "count-2-state", state())
        .await
        .expect("write");
    f.truncate(&handle.path, 10);
    let err = s.read(&handle).await.expect_err("truncated file refused");
    let StorageError::Corrupt { reason, .. } = &err else {
        panic!("expected Corrupt, got {err}");
    };
    assert!(reason.contains("10 bytes"), "{reason}");
}

async fn a_file_that_was_never_written_is_not_found<F: Fixture>(f: &F) {
    let s = checked(f).await;
    let handle = FileHandle {
        path: "chk-3/nothing".into(),
        size: 1,
        checksum: 0,
    };
    let err = s.read(&handle).await.expect_err("missing file");
    assert!(matches!(err, StorageError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("chk-3/nothing"), "{err}");
}

async fn committed_metadata_reads_back_unchanged<F: Fixture>(f: &F) {
    let s = checked(f).await;
    let metadata = Bytes::from_static(b"{\"checkpoint\":7}");
    s.commit(CheckpointId(7), metadata.clone())
        .await
        .expect("commit");
    assert_eq!(
        s.read_metadata(CheckpointId(7))
            .await
            .expect("read metadata"),
        metadata
    );
}

async fn a_torn_metadata_file_is_corrupt<F: Fixture>(f: &F) {
    let s = checked(f).await;
    let metadata = Bytes::from_static(b"{\"checkpoint\":7}");
    for (checkpoint, keep) in [(1, 0), (2, 10), (3, 24), (4, 24 + metadata.len() - 1)] {
        s.commit(CheckpointId(checkpoint), metadata.clone())
            .await
            .expect("commit");
        f.truncate(&format!("chk-{checkpoint}/_metadata"), keep);
        let err = s
            .read_metadata(CheckpointId(checkpoint))
            .await
            .expect_err("torn metadata refused");
        let StorageError::Corrupt { location, .. } = &err else {
            panic!("expected Corrupt for {keep} bytes kept, got {err}");
        };
        assert!(
            location.ends_with(&format!("chk-{checkpoint}/_metadata")),
            "{location}"
        );
    }
}

async fn a_flipped_bit_in_metadata_is_corrupt<F: Fixture>(f: &F) {
    let s = checked(f).await;
    s.commit(CheckpointId(7), Bytes::from_static(b"{\"checkpoint\":7}"))
        .await
        .expect("commit");
    f.flip_last_byte("chk-7/_metadata");
    let err = s
        .read_metadata(CheckpointId(7))
        .await
        .expect_err("flipped metadata refused");
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("chk-7/_metadata"), "{err}");
}

async fn committing_a_checkpoint_twice_is_refused_and_keeps_the_first<F: Fixture>(f: &F) {
    let s = checked(f).await;
    s.commit(CheckpointId(7), Bytes::from_static(b"first"))
        .await
        .expect("first commit");
    let err = s
        .commit(CheckpointId(7), Bytes::from_static(b"second"))
        .await
        .expect_err("second commit refused");
    assert!(
        matches!(
            err,
            StorageError::AlreadyCommitted {
                checkpoint: CheckpointId(7),
                ..
            }
        ),
        "{err}"
    );
    assert!(!err.is_transient());
    assert_eq!(
        s.read_metadata(CheckpointId(7)).await.expect("metadata"),
        Bytes::from_static(b"first")
    );
}

async fn a_committed_checkpoint_refuses_new_data_files<F: Fixture>(f: &F) {
    let s = checked(f).await;
    let handle = s
        .write(CheckpointId(7), "count-2-state", state())
        .await
        .expect("write");
    s.commit(CheckpointId(7), Bytes::from_static(b"m"))
        .await
        .expect("commit");
    for name in ["late", "count-2-state"] {
        let err = s
            .write(CheckpointId(7), name, Bytes::from_static(b"late"))
            .await
            .expect_err("write into a committed checkpoint refused");
        assert!(
            matches!(err, StorageError::AlreadyCommitted { .. }),
            "{err}"
        );
    }
    assert_eq!(s.read(&handle).await.expect("read"), state());
}

async fn metadata_of_an_uncommitted_checkpoint_is_not_found<F: Fixture>(f: &F) {
    let s = checked(f).await;
    s.write(CheckpointId(7), "count-2-state", state())
        .await
        .expect("write");
    for checkpoint in [CheckpointId(7), CheckpointId(8)] {
        let err = s.read_metadata(checkpoint).await.expect_err("no metadata");
        assert!(matches!(err, StorageError::NotFound { .. }), "{err}");
    }
}

async fn list_shows_checkpoints_with_and_without_metadata_oldest_first<F: Fixture>(f: &F) {
    let s = checked(f).await;
    assert_eq!(s.list().await.expect("list"), []);
    s.write(CheckpointId(12), "a", state())
        .await
        .expect("write");
    s.write(CheckpointId(3), "a", state()).await.expect("write");
    s.commit(CheckpointId(3), Bytes::from_static(b"m"))
        .await
        .expect("commit");
    s.commit(CheckpointId(5), Bytes::from_static(b"m"))
        .await
        .expect("commit without data files");
    s.write_shared("abc.sst", state())
        .await
        .expect("write shared");
    let listing = |n, has_metadata| CheckpointListing {
        checkpoint: CheckpointId(n),
        has_metadata,
    };
    assert_eq!(
        s.list().await.expect("list"),
        [listing(3, true), listing(5, true), listing(12, false)]
    );
}

async fn deleting_a_checkpoint_removes_its_files_and_metadata<F: Fixture>(f: &F) {
    let s = checked(f).await;
    let data = s
        .write(CheckpointId(3), "count-2-state", state())
        .await
        .expect("write");
    let shared = s
        .write_shared("abc.sst", state())
        .await
        .expect("write shared");
    s.commit(CheckpointId(3), Bytes::from_static(b"m"))
        .await
        .expect("commit");
    s.write(CheckpointId(4), "count-2-state", state())
        .await
        .expect("write");
    s.delete_checkpoint(CheckpointId(3)).await.expect("delete");
    assert_eq!(
        s.list().await.expect("list"),
        [CheckpointListing {
            checkpoint: CheckpointId(4),
            has_metadata: false,
        }]
    );
    let err = s.read(&data).await.expect_err("deleted file");
    assert!(matches!(err, StorageError::NotFound { .. }), "{err}");
    let err = s
        .read_metadata(CheckpointId(3))
        .await
        .expect_err("deleted metadata");
    assert!(matches!(err, StorageError::NotFound { .. }), "{err}");
    assert_eq!(s.read(&shared).await.expect("shared file stays"), state());
    s.commit(CheckpointId(3), Bytes::from_static(b"again"))
        .await
        .expect("a deleted checkpoint's id is free again");
}

async fn deleting_a_missing_checkpoint_succeeds<F: Fixture>(f: &F) {
    let s = checked(f).await;
    s.delete_checkpoint(CheckpointId(9))
        .await
        .expect("delete of nothing");
    s.delete_shared(&["never-written".to_owned()])
        .await
        .expect("delete of nothing");
}

async fn names_with_dot_dot_a_slash_or_a_leading_dot_are_refused<F: Fixture>(f: &F) {
    let s = checked(f).await;
    for name in ["..", "../escape", "a/b", "/abs", ".hidden", "", "_metadata"] {
        let err = s
            .write(CheckpointId(1), name, state())
            .await
            .expect_err("invalid name refused");
        assert!(
            matches!(err, StorageError::InvalidName { .. }),
            "{name:?}: {err}"
        );
        let err = s
            .write_shared(name, state())
            .await
            .expect_err("invalid shared name refused");
        assert!(
            matches!(err, StorageError::InvalidName { .. }),
            "{name:?}: {err}"
        );
        let err = s
            .delete_shared(&["fine".to_owned(), name.to_owned()])
            .await
            .expect_err("invalid shared name refused");
        assert!(
            matches!(err, StorageError::InvalidName { .. }),
            "{name:?}: {err}"
        );
    }
    assert_eq!(s.list().await.expect("list"), []);
}

async fn handles_pointing_outside_the_layout_are_refused<F: Fixture>(f: &F) {
    let s = checked(f).await;
    s.commit(CheckpointId(1), Bytes::from_static(b"m"))
        .await
        .expect("commit");
    for path in [
        "../../etc/passwd",
        "chk-1/../../x",
        "chk-1/_metadata",
        "taskowned/x",
        "x",
    ] {
        let handle = FileHandle {
            path: path.into(),
            size: 0,
            checksum: 0,
        };
        let err = s.read(&handle).await.expect_err("handle refused");
        assert!(
            matches!(err, StorageError::InvalidName { .. }),
            "{path}: {err}"
        );
    }
}

async fn shared_writes_of_the_same_content_are_idempotent<F: Fixture>(f: &F) {
    let s = checked(f).await;
    let first = s
        .write_shared("abc.sst", state())
        .await
        .expect("write shared");
    let second = s
        .write_shared("abc.sst", state())
        .await
        .expect("same content again");
    assert_eq!(first, second);
    assert_eq!(first.path, "shared/abc.sst");
    assert_eq!(s.read(&second).await.expect("read"), state());
}

async fn a_shared_name_reused_for_different_content_is_a_conflict<F: Fixture>(f: &F) {
    let s = checked(f).await;
    let handle = s
        .write_shared("abc.sst", state())
        .await
        .expect("write shared");
    for other in [&b"other content, same length!!!"[..], b"short"] {
        let err = s
            .write_shared("abc.sst", Bytes::copy_from_slice(other))
            .await
            .expect_err("different content refused");
        assert!(matches!(err, StorageError::Conflict { .. }), "{err}");
        assert!(err.to_string().contains("shared/abc.sst"), "{err}");
    }
    assert_eq!(
        s.read(&handle).await.expect("the first content stays"),
        state()
    );
}

async fn deleting_shared_files_removes_only_those_named<F: Fixture>(f: &F) {
    let s = checked(f).await;
    let a = s.write_shared("a.sst", state()).await.expect("write");
    let b = s.write_shared("b.sst", state()).await.expect("write");
    s.delete_shared(&["a.sst".to_owned(), "missing.sst".to_owned()])
        .await
        .expect("delete");
    let err = s.read(&a).await.expect_err("deleted");
    assert!(matches!(err, StorageError::NotFound { .. }), "{err}");
    assert_eq!(s.read(&b).await.expect("kept"), state());
}

async fn shared_files_are_listed_by_name<F: Fixture>(f: &F) {
    let s = checked(f).await;
    assert!(s.list_shared().await.expect("list").is_empty());
    s.write_shared("a.sst", state()).await.expect("write");
    s.write_shared("b.sst", state()).await.expect("write");
    s.write(CheckpointId(1), "not-shared", state())
        .await
        .expect("write");
    let mut names = s.list_shared().await.expect("list");
    names.sort();
    assert_eq!(names, vec!["a.sst".to_owned(), "b.sst".to_owned()]);
}

async fn a_record_reads_back_until_it_is_deleted<F: Fixture>(f: &F) {
    let s = checked(f).await;
    let record = JobRecord::Finished;
    assert_eq!(s.read_record(record).await.expect("read"), None);
    s.write_record(record, Bytes::from_static(b"first"))
        .await
        .expect("write");
    s.write_record(record, Bytes::from_static(b"second"))
        .await
        .expect("replace");
    assert_eq!(
        s.read_record(record).await.expect("read"),
        Some(Bytes::from_static(b"second"))
    );
    // A record is no checkpoint.
    assert!(s.list().await.expect("list").is_empty());
    s.delete_record(record).await.expect("delete");
    s.delete_record(record).await.expect("delete what is gone");
    assert_eq!(s.read_record(record).await.expect("read"), None);
}

async fn a_second_lock_is_refused_naming_the_holder_until_the_first_is_released<F: Fixture>(f: &F) {
    let s = checked(f).await;
    let first = LockHolder::this_process();
    let held = s.lock(&first).await.expect("the first lock");
    let err = s
        .lock(&LockHolder::this_process())
        .await
        .expect_err("a second lock");
    match &err {
        StorageError::Locked { holder, .. } => assert_eq!(holder, &first.description),
        other => panic!("expected Locked, got {other}"),
    }
    assert!(err.to_string().contains("Stop that process first"), "{err}");
    assert_eq!(held.lost(), None);
    held.release().await;
    let again = s
        .lock(&LockHolder::this_process())
        .await
        .expect("a lock after the release");
    again.release().await;
}

async fn storage_that_was_not_checked_reports_not_found<F: Fixture>(f: &F) {
    let s = f.storage();
    let err = s.list().await.expect_err("not created yet");
    let StorageError::NotFound { location } = &err else {
        panic!("expected NotFound, got {err}");
    };
    assert!(location.starts_with(&s.describe()), "{location}");
    let err = s
        .write(CheckpointId(1), "a", state())
        .await
        .expect_err("not created yet");
    assert!(matches!(err, StorageError::NotFound { .. }), "{err}");
    s.check().await.expect("check");
    s.check().await.expect("check again");
    assert_eq!(s.list().await.expect("list"), []);
}

// The savepoint layout, in every storage.

/// A listing of a savepoint.
fn savepoint_listing(has_metadata: bool) -> CheckpointListing {
    CheckpointListing {
        checkpoint: CheckpointId(0),
        has_metadata,
    }
}

async fn a_savepoints_files_lie_in_its_root_under_bare_names<F: Fixture>(f: &F) {
    let s = checked(f).await;
    let handle = s
        .write(CheckpointId(7), "count-2-state", state())
        .await
        .expect("write");
    assert_eq!(
        handle,
        FileHandle {
            path: "count-2-state".into(),
            size: 30,
            checksum: checksum(&state()),
        }
    );
    // The checkpoint id is ignored: one savepoint holds one snapshot.
    let other = s
        .write(CheckpointId(9), "other", Bytes::from_static(b"other"))
        .await
        .expect("write");
    assert_eq!(other.path, "other");
    s.commit(CheckpointId(3), Bytes::from_static(b"m"))
        .await
        .expect("commit");
    assert_eq!(
        s.read_metadata(CheckpointId(8)).await.expect("metadata"),
        Bytes::from_static(b"m")
    );
    assert_eq!(s.read(&handle).await.expect("read"), state());
    assert_eq!(
        s.read(&other).await.expect("read"),
        Bytes::from_static(b"other")
    );
}

async fn a_flipped_byte_in_a_savepoint_file_or_its_metadata_is_corrupt_and_named<F: Fixture>(
    f: &F,
) {
    let s = checked(f).await;
    let handle = s
        .write(CheckpointId(1), "count-2-state", state())
        .await
        .expect("write");
    s.commit(CheckpointId(1), Bytes::from_static(b"{\"savepoint\":1}"))
        .await
        .expect("commit");
    f.flip_last_byte("count-2-state");
    let err = s.read(&handle).await.expect_err("corrupt file refused");
    let StorageError::Corrupt { location, reason } = &err else {
        panic!("expected Corrupt, got {err}");
    };
    assert_eq!(location, &format!("{}/count-2-state", s.describe()));
    assert!(reason.contains("CRC32C"), "{reason}");
    assert!(!err.is_transient());
    f.flip_last_byte("_metadata");
    let err = s
        .read_metadata(CheckpointId(1))
        .await
        .expect_err("corrupt metadata refused");
    let StorageError::Corrupt { location, .. } = &err else {
        panic!("expected Corrupt, got {err}");
    };
    assert_eq!(location, &format!("{}/_metadata", s.describe()));
}

async fn a_truncated_savepoint_file_or_metadata_is_corrupt_and_named<F: Fixture>(f: &F) {
    let s = checked(f).await;
    let handle = s
        .write(CheckpointId(1), "count-2-state", state())
        .await
        .expect("write");
    let metadata = Bytes::from_static(b"{\"savepoint\":1}");
    s.commit(CheckpointId(1), metadata.clone())
        .await
        .expect("commit");
    f.truncate("count-2-state", 10);
    let err = s.read(&handle).await.expect_err("truncated file refused");
    let StorageError::Corrupt { location, reason } = &err else {
        panic!("expected Corrupt, got {err}");
    };
    assert_eq!(location, &format!("{}/count-2-state", s.describe()));
    assert!(reason.contains("10 bytes"), "{reason}");
    // Shorter and shorter: a savepoint is committed once.
    for keep in [24 + metadata.len() - 1, 24, 10, 0] {
        f.truncate("_metadata", keep);
        let err = s
            .read_metadata(CheckpointId(1))
            .await
            .expect_err("torn metadata refused");
        let StorageError::Corrupt { location, .. } = &err else {
            panic!("expected Corrupt for {keep} bytes kept, got {err}");
        };
        assert_eq!(location, &format!("{}/_metadata", s.describe()));
    }
}

async fn a_savepoint_is_listed_once_with_whether_it_is_committed<F: Fixture>(f: &F) {
    let s = checked(f).await;
    assert_eq!(s.list().await.expect("list"), []);
    s.write(CheckpointId(4), "a", state()).await.expect("write");
    s.write(CheckpointId(5), "b", state()).await.expect("write");
    assert_eq!(s.list().await.expect("list"), [savepoint_listing(false)]);
    s.commit(CheckpointId(5), Bytes::from_static(b"m"))
        .await
        .expect("commit");
    assert_eq!(s.list().await.expect("list"), [savepoint_listing(true)]);
}

async fn deleting_a_savepoint_removes_all_of_it<F: Fixture>(f: &F) {
    let s = checked(f).await;
    let a = s.write(CheckpointId(1), "a", state()).await.expect("write");
    let b = s.write(CheckpointId(1), "b", state()).await.expect("write");
    s.commit(CheckpointId(1), Bytes::from_static(b"m"))
        .await
        .expect("commit");
    // Any checkpoint id: the savepoint is the one snapshot.
    s.delete_checkpoint(CheckpointId(7)).await.expect("dispose");
    for handle in [&a, &b] {
        let err = s.read(handle).await.expect_err("deleted file");
        assert!(matches!(err, StorageError::NotFound { .. }), "{err}");
    }
    let err = s
        .read_metadata(CheckpointId(1))
        .await
        .expect_err("deleted metadata");
    assert!(matches!(err, StorageError::NotFound { .. }), "{err}");
    let err = s.list().await.expect_err("the savepoint is gone");
    assert!(matches!(err, StorageError::NotFound { .. }), "{err}");
    s.delete_checkpoint(CheckpointId(1))
        .await
        .expect("disposing of a savepoint that is gone");
    s.check().await.expect("check creates it anew");
    assert_eq!(s.list().await.expect("list"), []);
    s.commit(CheckpointId(1), Bytes::from_static(b"again"))
        .await
        .expect("a new savepoint in the same place");
}

async fn a_savepoint_refuses_shared_files_records_and_the_lock<F: Fixture>(f: &F) {
    let s = checked(f).await;
    let refused = |err: StorageError, what: &str| {
        let StorageError::NotInSavepoint { location, .. } = &err else {
            panic!("expected NotInSavepoint, got {err}");
        };
        assert_eq!(location, &s.describe());
        assert!(!err.is_transient());
        assert_eq!(
            err.to_string(),
            format!(
                "{} is a savepoint, and a savepoint is self-contained: it has no {what}. \
                 Asking a savepoint for them is a bug in Weir.",
                s.describe()
            )
        );
    };
    refused(
        s.write_shared("abc.sst", state())
            .await
            .expect_err("shared file refused"),
        "shared files",
    );
    refused(
        s.write_record(JobRecord::Finished, Bytes::from_static(b"r"))
            .await
            .expect_err("record refused"),
        "job records",
    );
    refused(
        s.lock(&LockHolder::this_process())
            .await
            .expect_err("lock refused"),
        "job lock",
    );
    assert!(s.list_shared().await.expect("list shared").is_empty());
    s.delete_shared(&["abc.sst".to_owned()])
        .await
        .expect("deleting no shared file");
    for record in [JobRecord::Finished, JobRecord::Statistics] {
        assert_eq!(s.read_record(record).await.expect("read record"), None);
        s.delete_record(record).await.expect("deleting no record");
    }
    assert_eq!(s.list().await.expect("list"), []);
}

async fn a_savepoint_handle_must_be_a_bare_file_name<F: Fixture>(f: &F) {
    let s = checked(f).await;
    s.write(CheckpointId(1), "a", state()).await.expect("write");
    s.commit(CheckpointId(1), Bytes::from_static(b"m"))
        .await
        .expect("commit");
    for path in [
        "chk-1/a",
        "shared/a",
        "../a",
        "../savepoint-job-2/a",
        "a/b",
        "/a",
        "a\\b",
        "..",
        ".hidden",
        "_metadata",
        "",
    ] {
        let handle = FileHandle {
            path: path.into(),
            size: 30,
            checksum: checksum(&state()),
        };
        let err = s.read(&handle).await.expect_err("handle refused");
        assert!(
            matches!(
                err,
                StorageError::InvalidName {
                    what: "handle path",
                    ..
                }
            ),
            "{path:?}: {err}"
        );
        assert!(err.to_string().contains("one file name"), "{err}");
    }
}

async fn a_savepoints_checkpoint_url_is_its_directory<F: Fixture>(f: &F) {
    let s = f.storage();
    assert!(
        s.describe().ends_with("/savepoint-job-1"),
        "{}",
        s.describe()
    );
    assert_eq!(s.checkpoint_url(CheckpointId(3)), s.describe());
}

// Only the filesystem.

/// Every path below `dir`, relative to it.
fn walk(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).expect("read dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                pending.push(path.clone());
            }
            let relative = path.strip_prefix(dir).expect("below dir");
            found.push(relative.to_string_lossy().into_owned());
        }
    }
    found.sort();
    found
}

#[tokio::test]
async fn files_land_in_flinks_layout_on_disk() {
    let f = Fs::new();
    let s = checked(&f).await;
    s.write(CheckpointId(7), "count-2-state", state())
        .await
        .expect("write");
    s.write_shared("abc.sst", state())
        .await
        .expect("write shared");
    s.commit(CheckpointId(7), Bytes::from_static(b"m"))
        .await
        .expect("commit");
    assert_eq!(
        walk(&f.base),
        [
            "job",
            "job/chk-7",
            "job/chk-7/_metadata",
            "job/chk-7/count-2-state",
            "job/shared",
            "job/shared/abc.sst",
            "job/taskowned",
        ]
    );
    let metadata = std::fs::read(f.root().join("chk-7/_metadata")).expect("read");
    assert!(metadata.starts_with(b"WEIRMETA"));
    assert_eq!(
        std::fs::read(f.root().join("chk-7/count-2-state")).expect("read"),
        state()
    );
}

#[tokio::test]
async fn a_successful_write_leaves_no_temporary_files() {
    let f = Fs::new();
    let s = checked(&f).await;
    s.write(CheckpointId(1), "a", state()).await.expect("write");
    s.write(CheckpointId(1), "a", state())
        .await
        .expect("rewrite");
    s.write_shared("s", state()).await.expect("write shared");
    s.write_shared("s", state())
        .await
        .expect("write shared again");
    s.commit(CheckpointId(1), Bytes::from_static(b"m"))
        .await
        .expect("commit");
    s.commit(CheckpointId(1), Bytes::from_static(b"m"))
        .await
        .expect_err("second commit refused");
    let leftovers: Vec<_> = walk(&f.base)
        .into_iter()
        .filter(|path| path.contains(".tmp-"))
        .collect();
    assert_eq!(leftovers, Vec::<String>::new());
}

#[tokio::test]
async fn leftover_temporary_files_from_a_crash_are_ignored() {
    let f = Fs::new();
    let s = checked(&f).await;
    let handle = s
        .write(CheckpointId(3), "count-2-state", state())
        .await
        .expect("write");
    s.commit(CheckpointId(3), Bytes::from_static(b"m"))
        .await
        .expect("commit");
    // What a crash in the middle of writes leaves: partial temporary files, one of
    // them a `_metadata` that was never published.
    let root = f.root();
    std::fs::create_dir(root.join("chk-4")).expect("mkdir");
    for (path, bytes) in [
        ("chk-3/.count-2-state.tmp-999-0", &b"partial"[..]),
        ("chk-4/._metadata.tmp-999-1", b"WEIRMETA"),
        ("shared/.abc.sst.tmp-999-2", b"partial"),
        (".chk-5.tmp-999-3", b"partial"),
    ] {
        std::fs::write(root.join(path), bytes).expect("plant leftover");
    }
    assert_eq!(
        s.list().await.expect("list"),
        [
            CheckpointListing {
                checkpoint: CheckpointId(3),
                has_metadata: true,
            },
            CheckpointListing {
                checkpoint: CheckpointId(4),
                has_metadata: false,
            },
        ]
    );
    assert_eq!(s.read(&handle).await.expect("read"), state());
    assert_eq!(
        s.read_metadata(CheckpointId(3)).await.expect("metadata"),
        Bytes::from_static(b"m")
    );
    let err = s
        .read_metadata(CheckpointId(4))
        .await
        .expect_err("unpublished metadata");
    assert!(matches!(err, StorageError::NotFound { .. }), "{err}");
    s.commit(CheckpointId(4), Bytes::from_static(b"m4"))
        .await
        .expect("commit beside a leftover");
    s.delete_checkpoint(CheckpointId(4))
        .await
        .expect("delete with a leftover inside");
    assert!(!root.join("chk-4").exists());
}

#[tokio::test]
async fn a_restarted_process_reads_what_was_committed() {
    let f = Fs::new();
    let s = checked(&f).await;
    let handle = s
        .write(CheckpointId(2), "count-2-state", state())
        .await
        .expect("write");
    s.commit(CheckpointId(2), Bytes::from_static(b"m"))
        .await
        .expect("commit");
    let restarted = FsStorage::new(f.base.clone(), "job").expect("valid job id");
    assert_eq!(
        restarted.list().await.expect("list without check"),
        [CheckpointListing {
            checkpoint: CheckpointId(2),
            has_metadata: true,
        }]
    );
    assert_eq!(restarted.read(&handle).await.expect("read"), state());
    assert_eq!(
        restarted
            .read_metadata(CheckpointId(2))
            .await
            .expect("metadata"),
        Bytes::from_static(b"m")
    );
}

#[tokio::test]
async fn of_two_concurrent_commits_of_one_checkpoint_exactly_one_succeeds() {
    let f = Fs::new();
    let s = checked(&f).await;
    let other = FsStorage::new(f.base.clone(), "job").expect("valid job id");
    for n in 1..=20 {
        let (a, b) = tokio::join!(
            s.commit(CheckpointId(n), Bytes::from_static(b"a")),
            other.commit(CheckpointId(n), Bytes::from_static(b"b")),
        );
        assert_eq!(
            usize::from(a.is_ok()) + usize::from(b.is_ok()),
            1,
            "checkpoint {n}: {a:?} {b:?}"
        );
        for refused in [a, b].into_iter().filter_map(Result::err) {
            assert!(
                matches!(refused, StorageError::AlreadyCommitted { .. }),
                "{refused}"
            );
        }
    }
}

#[cfg(unix)]
#[tokio::test]
async fn a_symlink_out_of_the_job_directory_is_not_followed() {
    let f = Fs::new();
    let s = checked(&f).await;
    let outside = f.base.parent().expect("temp dir").join("outside");
    std::fs::create_dir(&outside).expect("mkdir");
    std::fs::write(outside.join("secret"), b"secret").expect("write");
    std::os::unix::fs::symlink(&outside, f.root().join("chk-9")).expect("symlink");
    s.write(CheckpointId(9), "planted", state())
        .await
        .expect_err("write through the symlink refused");
    let handle = FileHandle {
        path: "chk-9/secret".into(),
        size: 6,
        checksum: checksum(b"secret"),
    };
    s.read(&handle)
        .await
        .expect_err("read through the symlink refused");
    assert_eq!(walk(&outside), ["secret"]);
}

#[tokio::test]
async fn check_names_the_location_when_the_base_is_a_file() {
    let temp = tempfile::tempdir().expect("temp dir");
    let base = temp.path().join("not-a-dir");
    std::fs::write(&base, b"x").expect("write");
    let s = FsStorage::new(base.clone(), "job").expect("valid job id");
    let err = s.check().await.expect_err("a file is no directory");
    assert!(matches!(err, StorageError::Io { .. }), "{err}");
    assert!(!err.is_transient());
    let message = err.to_string();
    assert!(
        message.contains(&format!("file://{}/job", base.display())),
        "{message}"
    );
}

#[tokio::test]
async fn describe_is_the_job_directorys_file_url() {
    let s = FsStorage::new(PathBuf::from("/var/lib/weir/checkpoints"), "word-count")
        .expect("valid job id");
    assert_eq!(s.describe(), "file:///var/lib/weir/checkpoints/word-count");
}

#[test]
fn a_job_id_that_is_not_one_path_component_is_refused() {
    for job_id in ["", "..", "a/b", ".hidden"] {
        let err = FsStorage::new(PathBuf::from("/tmp"), job_id).expect_err("refused");
        assert!(
            matches!(err, StorageError::InvalidName { what: "job id", .. }),
            "{err}"
        );
        assert!(MemoryStorage::new(job_id).is_err());
    }
}

#[test]
fn open_gives_file_storage_for_a_file_url() {
    let url = StorageUrl::File(PathBuf::from("/var/lib/weir/checkpoints"));
    let storage = open(&url, "word-count", &S3Settings::default()).expect("file storage");
    assert_eq!(
        storage.describe(),
        "file:///var/lib/weir/checkpoints/word-count"
    );
}

#[test]
fn open_gives_s3_storage_for_an_s3_url() {
    let url = StorageUrl::S3 {
        bucket: "bucket".into(),
        prefix: "prefix".into(),
    };
    let storage = open(&url, "word-count", &S3Settings::default()).expect("s3 storage");
    assert_eq!(storage.describe(), "s3://bucket/prefix/word-count");
}

#[tokio::test]
async fn a_savepoint_lies_directly_in_its_directory_on_disk() {
    let f = FsSavepoint::new();
    let s = checked(&f).await;
    assert_eq!(walk(&f.base), [SAVEPOINT]);
    s.write(CheckpointId(7), "count-2-state", state())
        .await
        .expect("write");
    s.commit(CheckpointId(7), Bytes::from_static(b"m"))
        .await
        .expect("commit");
    assert_eq!(
        walk(&f.base),
        [
            "savepoint-job-1",
            "savepoint-job-1/_metadata",
            "savepoint-job-1/count-2-state",
        ]
    );
    let metadata = std::fs::read(f.root().join("_metadata")).expect("read");
    assert!(metadata.starts_with(b"WEIRMETA"));
    assert_eq!(
        s.describe(),
        format!("file://{}/savepoint-job-1", f.base.display())
    );
}

/// Writes a savepoint with two data files and a `_metadata` that lists their handles,
/// as a snapshot's metadata does.
async fn write_savepoint(s: &dyn CheckpointStorage) -> Vec<FileHandle> {
    s.check().await.expect("check");
    let mut handles = Vec::new();
    for (name, bytes) in [("count-0-state", state()), ("count-1-state", Bytes::new())] {
        handles.push(s.write(CheckpointId(3), name, bytes).await.expect("write"));
    }
    let metadata = serde_json::to_vec(&handles).expect("encode handles");
    s.commit(CheckpointId(3), Bytes::from(metadata))
        .await
        .expect("commit");
    handles
}

/// Reads the savepoint `write_savepoint` wrote, through the handles in its `_metadata`.
async fn read_savepoint(s: &dyn CheckpointStorage) -> Vec<Bytes> {
    let metadata = s.read_metadata(CheckpointId(0)).await.expect("metadata");
    let handles: Vec<FileHandle> = serde_json::from_slice(&metadata).expect("decode handles");
    let mut contents = Vec::new();
    for handle in &handles {
        contents.push(s.read(handle).await.expect("read"));
    }
    contents
}

#[tokio::test]
async fn a_moved_or_copied_savepoint_opens_where_it_lands_and_reads_back_verified() {
    let temp = tempfile::tempdir().expect("temp dir");
    let url = StorageUrl::File(temp.path().join("savepoints"));
    let written = open_savepoint(&url, "savepoint-wc-3", &S3Settings::default()).expect("open");
    let handles = write_savepoint(written.as_ref()).await;
    assert!(handles.iter().all(|h| !h.path.contains('/')), "{handles:?}");
    let expected = vec![state(), Bytes::new()];

    // Renamed, into another directory.
    let moved = temp.path().join("elsewhere/renamed");
    std::fs::create_dir_all(temp.path().join("elsewhere")).expect("mkdir");
    std::fs::rename(temp.path().join("savepoints/savepoint-wc-3"), &moved).expect("move");
    for location in [
        moved.display().to_string(),
        format!("{}/_metadata", moved.display()),
        format!("file://{}/", moved.display()),
    ] {
        let s = savepoint_at(&location, &S3Settings::default()).expect("open moved");
        assert_eq!(s.describe(), format!("file://{}", moved.display()));
        assert_eq!(read_savepoint(s.as_ref()).await, expected, "{location}");
    }
    // Opened where it was, it is not found.
    let left = open_savepoint(&url, "savepoint-wc-3", &S3Settings::default()).expect("open");
    let err = left
        .read_metadata(CheckpointId(3))
        .await
        .expect_err("nothing is left where it was");
    assert!(matches!(err, StorageError::NotFound { .. }), "{err}");

    // Copied, file by file, and the copy damaged.
    let copy = temp.path().join("copy-of-it");
    std::fs::create_dir(&copy).expect("mkdir");
    for entry in std::fs::read_dir(&moved).expect("read dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), copy.join(entry.file_name())).expect("copy");
    }
    let s = savepoint_at(&copy.display().to_string(), &S3Settings::default()).expect("open");
    assert_eq!(read_savepoint(s.as_ref()).await, expected);
    flip_last_byte_of(&copy.join("count-0-state"));
    let err = s.read(&handles[0]).await.expect_err("corrupt copy");
    let StorageError::Corrupt { location, .. } = &err else {
        panic!("expected Corrupt, got {err}");
    };
    assert_eq!(
        location,
        &format!("file://{}/count-0-state", copy.display())
    );
    let moved = savepoint_at(&moved.display().to_string(), &S3Settings::default()).expect("open");
    assert_eq!(read_savepoint(moved.as_ref()).await, expected);
}

#[tokio::test]
async fn disposing_of_a_savepoint_removes_its_directory_and_nothing_beside_it() {
    let f = FsSavepoint::new();
    let s = checked(&f).await;
    s.write(CheckpointId(1), "a", state()).await.expect("write");
    s.commit(CheckpointId(1), Bytes::from_static(b"m"))
        .await
        .expect("commit");
    // A crash's leftover inside, another savepoint beside.
    std::fs::write(f.root().join(".a.tmp-999-0"), b"partial").expect("plant leftover");
    let other = FsStorage::savepoint(f.base.clone(), "savepoint-job-2").expect("valid name");
    let kept = write_savepoint(&other).await;
    s.delete_checkpoint(CheckpointId(1)).await.expect("dispose");
    assert!(!f.root().exists());
    assert_eq!(
        walk(&f.base),
        [
            "savepoint-job-2",
            "savepoint-job-2/_metadata",
            "savepoint-job-2/count-0-state",
            "savepoint-job-2/count-1-state",
        ]
    );
    assert_eq!(other.read(&kept[0]).await.expect("read"), state());
}

#[test]
fn a_savepoint_name_that_is_not_one_path_component_is_refused() {
    for name in ["", "..", "a/b", ".hidden", "savepoint-wc-3/_metadata"] {
        let err = FsStorage::savepoint(PathBuf::from("/tmp"), name).expect_err("refused");
        assert!(
            matches!(
                err,
                StorageError::InvalidName {
                    what: "savepoint directory name",
                    ..
                }
            ),
            "{err}"
        );
        assert!(MemoryStorage::savepoint(name).is_err());
        assert!(S3Storage::savepoint("bucket", "", name, S3Options::default()).is_err());
        let url = StorageUrl::File(PathBuf::from("/tmp"));
        assert!(open_savepoint(&url, name, &S3Settings::default()).is_err());
    }
}

#[test]
fn open_savepoint_gives_the_savepoint_directory_for_a_file_or_s3_url() {
    let settings = S3Settings::default();
    let url = StorageUrl::File(PathBuf::from("/var/lib/weir/savepoints"));
    let s = open_savepoint(&url, "savepoint-wc-3", &settings).expect("file storage");
    assert_eq!(
        s.describe(),
        "file:///var/lib/weir/savepoints/savepoint-wc-3"
    );
    assert_eq!(s.checkpoint_url(CheckpointId(3)), s.describe());
    for (prefix, described) in [
        ("savepoints", "s3://bucket/savepoints/savepoint-wc-3"),
        ("", "s3://bucket/savepoint-wc-3"),
    ] {
        let url = StorageUrl::S3 {
            bucket: "bucket".into(),
            prefix: prefix.into(),
        };
        let s = open_savepoint(&url, "savepoint-wc-3", &settings).expect("s3 storage");
        assert_eq!(s.describe(), described);
        assert_eq!(s.checkpoint_url(CheckpointId(3)), described);
    }
}

#[test]
fn savepoint_at_takes_the_directory_or_its_metadata_as_a_path_or_url() {
    let settings = S3Settings::default();
    for (location, described) in [
        ("/x/y/savepoint-wc-3", "file:///x/y/savepoint-wc-3"),
        ("/x/y/savepoint-wc-3/", "file:///x/y/savepoint-wc-3"),
        (
            "/x/y/savepoint-wc-3/_metadata",
            "file:///x/y/savepoint-wc-3",
        ),
        ("/x/y/../y/savepoint-wc-3", "file:///x/y/savepoint-wc-3"),
        ("file:///x/y/savepoint-wc-3", "file:///x/y/savepoint-wc-3"),
        ("file:///x/y/renamed/_metadata", "file:///x/y/renamed"),
        ("/x/y_metadata", "file:///x/y_metadata"),
        (
            "s3://bucket/p/savepoint-wc-3",
            "s3://bucket/p/savepoint-wc-3",
        ),
        (
            "s3://bucket/p/q/savepoint-wc-3/",
            "s3://bucket/p/q/savepoint-wc-3",
        ),
        (
            "s3://bucket/savepoint-wc-3/_metadata",
            "s3://bucket/savepoint-wc-3",
        ),
    ] {
        let s = savepoint_at(location, &settings).expect(location);
        assert_eq!(s.describe(), described, "{location}");
    }
    let cwd = std::env::current_dir().expect("current dir");
    for location in ["sp/savepoint-wc-3", "sp/savepoint-wc-3/_metadata"] {
        let s = savepoint_at(location, &settings).expect(location);
        assert_eq!(
            s.describe(),
            format!("file://{}/sp/savepoint-wc-3", cwd.display())
        );
    }
}

#[test]
fn savepoint_at_refuses_a_location_that_names_no_savepoint_directory() {
    let settings = S3Settings::default();
    for location in [
        "",
        "/",
        "/_metadata",
        "s3://bucket",
        "s3://bucket/",
        "ftp://x/y",
        "s3://B/x",
    ] {
        let err = savepoint_at(location, &settings).expect_err(location);
        assert!(
            matches!(err, StorageError::InvalidLocation { .. }),
            "{location:?}: {err}"
        );
        assert!(!err.is_transient());
        let message = err.to_string();
        assert!(
            message.starts_with(&format!(
                "`{location}` is not the location of a savepoint: "
            )),
            "{message}"
        );
        assert!(message.ends_with('.'), "{message}");
    }
    let err = savepoint_at("/x/..", &settings).expect_err("the root has no name");
    assert!(matches!(err, StorageError::InvalidLocation { .. }), "{err}");
}

#[test]
fn a_savepoints_directory_is_its_location_without_metadata_or_trailing_slashes() {
    for (location, directory) in [
        ("/x/savepoint-wc-3", "/x/savepoint-wc-3"),
        ("/x/savepoint-wc-3//", "/x/savepoint-wc-3"),
        ("/x/savepoint-wc-3/_metadata", "/x/savepoint-wc-3"),
        ("/x/savepoint-wc-3/_metadata/", "/x/savepoint-wc-3"),
        (
            "s3://bucket/p/savepoint-wc-3/_metadata",
            "s3://bucket/p/savepoint-wc-3",
        ),
        ("/x/y_metadata", "/x/y_metadata"),
        ("_metadata", "."),
        ("/_metadata", "/"),
        ("/", "/"),
        ("", ""),
    ] {
        assert_eq!(savepoint_directory(location), directory, "{location}");
    }
}

// Only the double.

#[tokio::test]
async fn injected_write_failures_are_transient_and_store_nothing() {
    let f = Memory::new();
    let s = checked(&f).await;
    s.fail_next_writes(2);
    for _ in 0..2 {
        let err = s
            .write(CheckpointId(1), "a", state())
            .await
            .expect_err("injected");
        assert!(err.is_transient(), "{err}");
    }
    assert_eq!(s.files(), Vec::<String>::new());
    s.write(CheckpointId(1), "a", state())
        .await
        .expect("third write");
    assert_eq!(s.files(), ["chk-1/a"]);
}

#[tokio::test]
async fn injected_commit_failures_leave_the_checkpoint_uncommitted() {
    let f = Memory::new();
    let s = checked(&f).await;
    s.write(CheckpointId(1), "a", state()).await.expect("write");
    s.fail_next_commits(1);
    let err = s
        .commit(CheckpointId(1), Bytes::from_static(b"m"))
        .await
        .expect_err("injected");
    assert!(err.is_transient(), "{err}");
    assert_eq!(
        s.list().await.expect("list"),
        [CheckpointListing {
            checkpoint: CheckpointId(1),
            has_metadata: false,
        }]
    );
    s.commit(CheckpointId(1), Bytes::from_static(b"m"))
        .await
        .expect("retry");
}

#[tokio::test]
async fn injected_read_failures_pass_after_the_count() {
    let f = Memory::new();
    let s = checked(&f).await;
    let handle = s.write(CheckpointId(1), "a", state()).await.expect("write");
    s.commit(CheckpointId(1), Bytes::from_static(b"m"))
        .await
        .expect("commit");
    s.fail_next_reads(2);
    assert!(s.read(&handle).await.is_err());
    assert!(s.read_metadata(CheckpointId(1)).await.is_err());
    assert_eq!(s.read(&handle).await.expect("read"), state());
}

#[tokio::test]
async fn the_double_keeps_a_savepoints_files_by_bare_name() {
    let f = MemorySavepoint::new();
    let s = checked(&f).await;
    s.write(CheckpointId(7), "count-2-state", state())
        .await
        .expect("write");
    s.commit(CheckpointId(7), Bytes::from_static(b"m"))
        .await
        .expect("commit");
    assert_eq!(s.files(), ["_metadata", "count-2-state"]);
    s.delete_checkpoint(CheckpointId(7)).await.expect("dispose");
    assert_eq!(s.files(), Vec::<String>::new());
}

#[test]
fn corrupting_or_truncating_a_missing_file_reports_false() {
    let s = MemoryStorage::new("job").expect("valid job id");
    assert!(!s.corrupt("chk-1/a"));
    assert!(!s.truncate("chk-1/a", 0));
}

// Error wording.

#[test]
fn io_errors_say_whether_a_retry_helps() {
    use std::io::{Error, ErrorKind};
    let io = |kind| StorageError::io("file:///x/chk-1/a".into(), "writing", Error::from(kind));
    assert!(io(ErrorKind::TimedOut).is_transient());
    assert!(io(ErrorKind::Interrupted).is_transient());
    assert!(!io(ErrorKind::PermissionDenied).is_transient());
    assert!(!io(ErrorKind::StorageFull).is_transient());
    assert!(matches!(
        io(ErrorKind::NotFound),
        StorageError::NotFound { .. }
    ));
    let message = io(ErrorKind::PermissionDenied).to_string();
    assert!(
        message.starts_with("writing file:///x/chk-1/a failed: "),
        "{message}"
    );
    assert!(message.contains("permissions"), "{message}");
}
