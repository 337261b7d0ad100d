//! [`S3Storage`] against a real S3-compatible server on loopback (s3s-fs, started by
//! `weir_tests::s3::S3Server`): the contract suite in both layouts, then what only S3
//! has: failures `check` must name, multipart uploads, retries through a [`FaultProxy`],
//! and savepoints copied to another bucket and prefix.
//!
//! A child module of `tests.rs`, for its [`Fixture`] and contract tests. Every test starts
//! its own server (in milliseconds), so tests share nothing. They fail, never skip, when
//! s3s-fs is not installed (`scripts/setup.sh` installs it).

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::config::{Credentials, SharedCredentialsProvider};
use weir_tests::s3::{
    ACCESS_KEY, Fault, FaultProxy, Logged, Outcome, REGION, S3Server, SECRET_KEY,
};

use super::*;

/// The key prefix of the fixture's checkpoints.
const PREFIX: &str = "checkpoints";

/// Options for a test server at `endpoint`: short waits, so failures end quickly, yet
/// long enough for a loaded test machine to answer on loopback.
fn options(endpoint: &str) -> S3Options {
    S3Options {
        endpoint: Some(endpoint.to_owned()),
        region: Some(REGION.to_owned()),
        force_path_style: true,
        max_attempts: 3,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(100),
        connect_timeout: Duration::from_secs(2),
        attempt_timeout: Duration::from_secs(10),
        stall_timeout: Duration::from_secs(2),
        credentials: Some(credentials(SECRET_KEY)),
        // Renewed every second: a second lock sees the renewal within a couple of
        // seconds (the store's clock counts whole seconds).
        lease_timeout: Duration::from_secs(3),
        ..S3Options::default()
    }
}

fn credentials(secret: &str) -> SharedCredentialsProvider {
    SharedCredentialsProvider::new(Credentials::new(
        ACCESS_KEY,
        secret,
        None,
        None,
        "weir-tests",
    ))
}

/// Options whose objects of 6 MiB and more go up in 5 MiB parts, S3's smallest.
fn multipart_options(endpoint: &str) -> S3Options {
    S3Options {
        part_size: 5 * 1024 * 1024,
        multipart_threshold: 6 * 1024 * 1024,
        upload_concurrency: 2,
        ..options(endpoint)
    }
}

/// 12 MiB that differ from part to part: three parts.
fn large() -> Bytes {
    let mut state = 0x9e37_79b9_u32;
    let bytes: Vec<u8> = (0..12 * 1024 * 1024)
        .map(|_| {
            // xorshift32: cheap bytes that no two parts share.
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state.to_le_bytes()[0]
        })
        .collect();
    Bytes::from(bytes)
}

struct S3 {
    server: S3Server,
    storage: S3Storage,
}

impl S3 {
    /// The file that holds `path` (relative to the job directory).
    fn object_file(&self, path: &str) -> std::path::PathBuf {
        self.server.object_path(&format!("{PREFIX}/job/{path}"))
    }
}

impl Fixture for S3 {
    type Storage = S3Storage;

    fn new() -> Self {
        let server = S3Server::start();
        let storage = S3Storage::new(server.bucket(), PREFIX, "job", options(&server.endpoint()))
            .expect("valid job id");
        S3 { server, storage }
    }

    fn storage(&self) -> &S3Storage {
        &self.storage
    }

    fn flip_last_byte(&self, path: &str) {
        let file = self.object_file(path);
        let mut bytes = std::fs::read(&file).expect("read object to corrupt");
        *bytes.last_mut().expect("non-empty object") ^= 1;
        std::fs::write(&file, bytes).expect("write corrupted object");
    }

    fn truncate(&self, path: &str, len: usize) {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(self.object_file(path))
            .expect("open object to truncate");
        file.set_len(u64::try_from(len).expect("small length"))
            .expect("truncate");
    }
}

contract_suite!(s3_contract, S3);

/// A savepoint below [`PREFIX`].
struct S3Savepoint {
    server: S3Server,
    storage: S3Storage,
}

impl S3Savepoint {
    /// The key of `path` (relative to the savepoint).
    fn key(path: &str) -> String {
        format!("{PREFIX}/{SAVEPOINT}/{path}")
    }
}

impl Fixture for S3Savepoint {
    type Storage = S3Storage;

    fn new() -> Self {
        let server = S3Server::start();
        let storage = S3Storage::savepoint(
            server.bucket(),
            PREFIX,
            SAVEPOINT,
            options(&server.endpoint()),
        )
        .expect("valid name");
        S3Savepoint { server, storage }
    }

    fn storage(&self) -> &S3Storage {
        &self.storage
    }

    fn flip_last_byte(&self, path: &str) {
        flip_last_byte_of(&self.server.object_path(&Self::key(path)));
    }

    fn truncate(&self, path: &str, len: usize) {
        truncate_file(&self.server.object_path(&Self::key(path)), len);
    }
}

savepoint_suite!(s3_savepoint, S3Savepoint);

/// A plain client of `server`, to look at objects the way another tool would.
fn raw_client(server: &S3Server) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .endpoint_url(server.endpoint())
        .region(aws_sdk_s3::config::Region::new(REGION))
        .credentials_provider(credentials(SECRET_KEY))
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

#[tokio::test]
async fn check_fails_naming_the_endpoint_when_nothing_listens_there() {
    // A port that was free a moment ago: connections are refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let s = S3Storage::new("bucket", PREFIX, "job", options(&endpoint)).expect("valid job id");
    let err = s.check().await.expect_err("nothing listens");
    let message = err.to_string();
    assert!(message.contains(&endpoint), "{message}");
    assert!(
        message.contains("s3://bucket/checkpoints/job/"),
        "{message}"
    );
    assert!(message.contains("Check the endpoint URL"), "{message}");
}

#[tokio::test]
async fn check_fails_naming_the_bucket_when_it_does_not_exist() {
    let server = S3Server::start();
    let s = S3Storage::new("no-such-bucket", PREFIX, "job", options(&server.endpoint()))
        .expect("valid job id");
    let err = s.check().await.expect_err("missing bucket");
    assert!(!err.is_transient(), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("bucket `no-such-bucket` does not exist"),
        "{message}"
    );
    assert!(message.contains(&server.endpoint()), "{message}");
}

#[tokio::test]
async fn check_fails_naming_the_credentials_when_the_secret_is_wrong() {
    let server = S3Server::start();
    let s = S3Storage::new(
        server.bucket(),
        PREFIX,
        "job",
        S3Options {
            credentials: Some(credentials("not-the-secret")),
            ..options(&server.endpoint())
        },
    )
    .expect("valid job id");
    let err = s.check().await.expect_err("wrong secret");
    assert!(!err.is_transient(), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("refused access to bucket `weir-checkpoints`"),
        "{message}"
    );
    assert!(message.contains("AWS_SECRET_ACCESS_KEY"), "{message}");
    assert!(message.contains(&server.endpoint()), "{message}");
}

#[tokio::test]
async fn a_large_file_goes_up_in_parts_and_reads_back_verified() {
    let server = S3Server::start();
    let s = S3Storage::new(
        server.bucket(),
        PREFIX,
        "job",
        multipart_options(&server.endpoint()),
    )
    .expect("valid job id");
    s.check().await.expect("check");
    let bytes = large();
    let handle = s
        .write(CheckpointId(1), "big-state", bytes.clone())
        .await
        .expect("write");
    assert_eq!(handle.size, 12 * 1024 * 1024);
    assert_eq!(s.read(&handle).await.expect("read"), bytes);
    let head = raw_client(&server)
        .head_object()
        .bucket(server.bucket())
        .key(format!("{PREFIX}/job/chk-1/big-state"))
        .send()
        .await
        .expect("head");
    // A multipart object's ETag ends with its number of parts.
    assert!(
        head.e_tag()
            .is_some_and(|tag| tag.trim_matches('"').ends_with("-3")),
        "{:?}",
        head.e_tag()
    );
    let crc = head.metadata().and_then(|m| m.get("crc32c")).cloned();
    assert_eq!(crc, Some(format!("{:08x}", handle.checksum)));
    assert_eq!(server.pending_uploads(), Vec::<String>::new());
}

#[tokio::test]
async fn a_large_shared_file_is_created_once_and_conflicts_on_other_content() {
    let server = S3Server::start();
    let s = S3Storage::new(
        server.bucket(),
        PREFIX,
        "job",
        multipart_options(&server.endpoint()),
    )
    .expect("valid job id");
    s.check().await.expect("check");
    let bytes = large();
    let first = s
        .write_shared("big.sst", bytes.clone())
        .await
        .expect("write");
    let again = s
        .write_shared("big.sst", bytes.clone())
        .await
        .expect("again");
    assert_eq!(first, again);
    let mut other = bytes.to_vec();
    other[0] ^= 1;
    let err = s
        .write_shared("big.sst", Bytes::from(other))
        .await
        .expect_err("different content");
    assert!(matches!(err, StorageError::Conflict { .. }), "{err}");
    assert_eq!(s.read(&first).await.expect("read"), bytes);
    assert_eq!(server.pending_uploads(), Vec::<String>::new());
}

#[tokio::test]
async fn a_multipart_upload_that_fails_is_aborted_and_leaves_nothing() {
    let server = S3Server::start();
    let proxy = FaultProxy::start(server.addr());
    let s = S3Storage::new(
        server.bucket(),
        PREFIX,
        "job",
        multipart_options(&proxy.endpoint()),
    )
    .expect("valid job id");
    s.check().await.expect("check");
    proxy.fail_matching("partNumber=2", usize::MAX, Fault::InternalError);
    let err = s
        .write(CheckpointId(1), "big-state", large())
        .await
        .expect_err("part 2 always fails");
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("chk-1/big-state"), "{err}");
    assert!(err.to_string().contains("InternalError"), "{err}");
    let log = proxy.log();
    let part_two_failures = log
        .iter()
        .filter(|e| e.request_line.contains("partNumber=2"))
        .count();
    assert_eq!(part_two_failures, 3, "one per attempt: {log:?}");
    assert!(
        an_upload_was_aborted(&log),
        "the upload was aborted: {log:?}"
    );
    assert_eq!(server.pending_uploads(), Vec::<String>::new());
    assert!(
        !server
            .object_path(&format!("{PREFIX}/job/chk-1/big-state"))
            .exists()
    );
}

/// Whether the proxy's log shows a stalled request.
fn a_request_stalled(log: &[Logged]) -> bool {
    log.iter()
        .any(|e| e.outcome == Outcome::Faulted(Fault::Stall))
}

/// Whether the proxy's log shows an upload aborted (DELETE with an upload id), answered.
fn an_upload_was_aborted(log: &[Logged]) -> bool {
    log.iter().any(|e| {
        e.request_line.starts_with("DELETE ")
            && e.request_line.contains("uploadId=")
            && e.outcome == Outcome::Passed
    })
}

/// Waits (off the runtime's threads) until `done` holds for `proxy`'s log.
async fn wait_for(proxy: &Arc<FaultProxy>, done: fn(&[Logged]) -> bool) -> bool {
    let proxy = Arc::clone(proxy);
    tokio::task::spawn_blocking(move || proxy.wait_until(Duration::from_secs(30), done))
        .await
        .expect("the waiting task")
}

#[tokio::test]
async fn a_cancelled_multipart_upload_is_aborted_in_the_background() {
    let server = S3Server::start();
    let proxy = Arc::new(FaultProxy::start(server.addr()));
    let s = Arc::new(
        S3Storage::new(
            server.bucket(),
            PREFIX,
            "job",
            multipart_options(&proxy.endpoint()),
        )
        .expect("valid job id"),
    );
    s.check().await.expect("check");
    proxy.fail_matching("partNumber=2", usize::MAX, Fault::Stall);
    let writer = {
        let s = Arc::clone(&s);
        tokio::spawn(async move { s.write(CheckpointId(1), "big-state", large()).await })
    };
    assert!(
        wait_for(&proxy, a_request_stalled).await,
        "part 2 reached the proxy: {:?}",
        proxy.log()
    );
    assert_eq!(server.pending_uploads().len(), 1);
    writer.abort();
    assert!(writer.await.is_err_and(|e| e.is_cancelled()));
    assert!(
        wait_for(&proxy, an_upload_was_aborted).await,
        "the upload was aborted: {:?}",
        proxy.log()
    );
    assert_eq!(server.pending_uploads(), Vec::<String>::new());
}

#[tokio::test]
async fn throttling_and_server_errors_are_retried_until_the_write_succeeds() {
    let server = S3Server::start();
    let proxy = FaultProxy::start(server.addr());
    let s = S3Storage::new(server.bucket(), PREFIX, "job", options(&proxy.endpoint()))
        .expect("valid job id");
    s.check().await.expect("check");
    for fault in [
        Fault::SlowDown,
        Fault::TooManyRequests,
        Fault::InternalError,
        Fault::Close,
    ] {
        let before = proxy.counts();
        proxy.fail_next(2, fault);
        let handle = s
            .write(CheckpointId(1), "count-2-state", state())
            .await
            .unwrap_or_else(|e| panic!("{fault:?} twice, then success: {e}"));
        assert_eq!(s.read(&handle).await.expect("read"), state());
        let after = proxy.counts();
        assert_eq!(
            after.requests - after.passed - (before.requests - before.passed),
            2
        );
    }
}

#[tokio::test]
async fn errors_that_outlast_the_retries_are_transient_and_name_the_location() {
    let server = S3Server::start();
    let proxy = FaultProxy::start(server.addr());
    let s = S3Storage::new(server.bucket(), PREFIX, "job", options(&proxy.endpoint()))
        .expect("valid job id");
    s.check().await.expect("check");
    proxy.fail_next(usize::MAX, Fault::SlowDown);
    let err = s
        .commit(CheckpointId(4), Bytes::from_static(b"m"))
        .await
        .expect_err("always throttled");
    assert!(err.is_transient(), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("s3://weir-checkpoints/checkpoints/job/chk-4/_metadata"),
        "{message}"
    );
    assert!(message.contains("503 SlowDown"), "{message}");
    assert_eq!(proxy.counts().failed, 3);
    proxy.pass_through();
    s.commit(CheckpointId(4), Bytes::from_static(b"m"))
        .await
        .expect("a retry by the caller succeeds");
}

#[tokio::test]
async fn a_server_that_never_answers_ends_in_a_transient_timeout_not_a_hang() {
    let server = S3Server::start();
    let proxy = FaultProxy::start(server.addr());
    let options = S3Options {
        attempt_timeout: Duration::from_secs(1),
        ..options(&proxy.endpoint())
    };
    let s = S3Storage::new(server.bucket(), PREFIX, "job", options).expect("valid job id");
    s.check().await.expect("check");
    proxy.fail_next(usize::MAX, Fault::Stall);
    let err = s
        .write(CheckpointId(1), "count-2-state", state())
        .await
        .expect_err("stalled");
    assert!(err.is_transient(), "{err}");
    let message = err.to_string();
    assert!(message.contains("did not answer within"), "{message}");
    assert!(message.contains(&proxy.endpoint()), "{message}");
    assert_eq!(proxy.counts().stalled, 3);
}

#[tokio::test]
async fn a_response_that_breaks_off_or_stops_flowing_is_fetched_again() {
    let server = S3Server::start();
    let proxy = FaultProxy::start(server.addr());
    let s = S3Storage::new(server.bucket(), PREFIX, "job", options(&proxy.endpoint()))
        .expect("valid job id");
    s.check().await.expect("check");
    let bytes = Bytes::from(vec![7; 256 * 1024]);
    let handle = s
        .write(CheckpointId(1), "count-2-state", bytes.clone())
        .await
        .expect("write");
    for fault in [Fault::CutBody, Fault::StallBody] {
        proxy.fail_matching("GET ", 1, fault);
        assert_eq!(s.read(&handle).await.expect("read, fetched again"), bytes);
    }
    assert_eq!(proxy.counts().cut, 2);
    proxy.fail_matching("GET ", usize::MAX, Fault::CutBody);
    let err = s.read(&handle).await.expect_err("always cut");
    assert!(err.is_transient(), "{err}");
    let message = err.to_string();
    assert!(message.contains("broke off"), "{message}");
    assert!(message.contains("chk-1/count-2-state"), "{message}");
}

#[tokio::test]
async fn a_restarted_server_serves_what_was_written_before() {
    let mut server = S3Server::start();
    let s = S3Storage::new(server.bucket(), PREFIX, "job", options(&server.endpoint()))
        .expect("valid job id");
    s.check().await.expect("check");
    let handle = s
        .write(CheckpointId(2), "count-2-state", state())
        .await
        .expect("write");
    s.commit(CheckpointId(2), Bytes::from_static(b"m"))
        .await
        .expect("commit");
    server.restart();
    // A new process: no check, and a client whose pooled connections are not stale.
    let restarted = S3Storage::new(server.bucket(), PREFIX, "job", options(&server.endpoint()))
        .expect("valid job id");
    assert_eq!(
        restarted.list().await.expect("list without check"),
        [CheckpointListing {
            checkpoint: CheckpointId(2),
            has_metadata: true,
        }]
    );
    assert_eq!(restarted.read(&handle).await.expect("read"), state());
    // The first client's pooled connections went with the old server: it reconnects.
    assert_eq!(s.read(&handle).await.expect("read again"), state());
}

#[tokio::test]
async fn objects_land_in_flinks_layout_below_the_prefix() {
    let server = S3Server::start();
    let s = S3Storage::new(server.bucket(), PREFIX, "job", options(&server.endpoint()))
        .expect("valid job id");
    s.check().await.expect("check");
    s.write(CheckpointId(7), "count-2-state", state())
        .await
        .expect("write");
    s.write_shared("abc.sst", state())
        .await
        .expect("write shared");
    s.commit(CheckpointId(7), Bytes::from_static(b"m"))
        .await
        .expect("commit");
    let listed = raw_client(&server)
        .list_objects_v2()
        .bucket(server.bucket())
        .send()
        .await
        .expect("list");
    let keys: Vec<&str> = listed.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(
        keys,
        [
            "checkpoints/job/.weir-job",
            "checkpoints/job/chk-7/_metadata",
            "checkpoints/job/chk-7/count-2-state",
            "checkpoints/job/shared/abc.sst",
        ]
    );
    let metadata =
        std::fs::read(server.object_path("checkpoints/job/chk-7/_metadata")).expect("read");
    assert!(metadata.starts_with(b"WEIRMETA"));
}

#[tokio::test]
async fn deleting_a_checkpoint_with_more_files_than_one_batch_removes_them_all() {
    let server = S3Server::start();
    let s = S3Storage::new(server.bucket(), PREFIX, "job", options(&server.endpoint()))
        .expect("valid job id");
    s.check().await.expect("check");
    // Past one listing page and one DeleteObjects batch (1000 keys each).
    std::fs::create_dir_all(server.object_path("checkpoints/job/chk-1")).expect("mkdir");
    for n in 0..1001 {
        std::fs::write(
            server.object_path(&format!("checkpoints/job/chk-1/file-{n}")),
            b"x",
        )
        .expect("plant an object");
    }
    s.commit(CheckpointId(1), Bytes::from_static(b"m"))
        .await
        .expect("commit");
    s.delete_checkpoint(CheckpointId(1)).await.expect("delete");
    assert_eq!(s.list().await.expect("list"), []);
}

/// Every key of `bucket` below `prefix`, sorted.
async fn keys_below(server: &S3Server, bucket: &str, prefix: &str) -> Vec<String> {
    let listed = raw_client(server)
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .send()
        .await
        .expect("list");
    let mut keys: Vec<String> = listed
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn a_savepoints_objects_lie_directly_below_its_prefix() {
    let f = S3Savepoint::new();
    let s = &f.storage;
    s.check().await.expect("check");
    s.write(CheckpointId(7), "count-2-state", state())
        .await
        .expect("write");
    s.commit(CheckpointId(7), Bytes::from_static(b"m"))
        .await
        .expect("commit");
    assert_eq!(
        keys_below(&f.server, f.server.bucket(), "").await,
        [
            "checkpoints/savepoint-job-1/.weir-job",
            "checkpoints/savepoint-job-1/_metadata",
            "checkpoints/savepoint-job-1/count-2-state",
        ]
    );
    assert_eq!(
        s.describe(),
        "s3://weir-checkpoints/checkpoints/savepoint-job-1"
    );
}

#[tokio::test]
async fn a_savepoint_copied_to_another_bucket_and_prefix_opens_and_reads_back_verified() {
    let f = S3Savepoint::new();
    let s = &f.storage;
    s.check().await.expect("check");
    let handle = s
        .write(CheckpointId(3), "count-2-state", state())
        .await
        .expect("write");
    let metadata = serde_json::to_vec(&[&handle]).expect("encode handles");
    s.commit(CheckpointId(3), Bytes::from(metadata))
        .await
        .expect("commit");
    // As a user copies it: the visible objects, without the hidden marker.
    f.server.create_bucket("other-bucket");
    let client = raw_client(&f.server);
    for name in ["_metadata", "count-2-state"] {
        client
            .copy_object()
            .copy_source(format!("{}/{}", f.server.bucket(), S3Savepoint::key(name)))
            .bucket("other-bucket")
            .key(format!("moved/elsewhere/renamed/{name}"))
            .send()
            .await
            .expect("copy");
    }
    let location = "s3://other-bucket/moved/elsewhere/renamed/_metadata";
    let settings = S3Settings {
        endpoint: Some(f.server.endpoint()),
        force_path_style: true,
        ..S3Settings::default()
    };
    let at = savepoint_at(location, &settings).expect("open");
    assert_eq!(at.describe(), "s3://other-bucket/moved/elsewhere/renamed");
    // The same storage, with the test server's credentials.
    let copy = S3Storage::savepoint(
        "other-bucket",
        "moved/elsewhere",
        "renamed",
        options(&f.server.endpoint()),
    )
    .expect("valid name");
    assert_eq!(copy.describe(), at.describe());
    assert_eq!(
        copy.list().await.expect("list"),
        [CheckpointListing {
            checkpoint: CheckpointId(0),
            has_metadata: true,
        }]
    );
    let metadata = copy.read_metadata(CheckpointId(0)).await.expect("metadata");
    let handles: Vec<FileHandle> = serde_json::from_slice(&metadata).expect("decode");
    assert_eq!(handles, std::slice::from_ref(&handle));
    assert_eq!(copy.read(&handles[0]).await.expect("read"), state());
    // The copy is checked as the original is.
    flip_last_byte_of(
        &f.server
            .data_dir()
            .join("other-bucket/moved/elsewhere/renamed/count-2-state"),
    );
    let err = copy.read(&handle).await.expect_err("corrupt copy");
    let StorageError::Corrupt { location, .. } = &err else {
        panic!("expected Corrupt, got {err}");
    };
    assert_eq!(
        location,
        "s3://other-bucket/moved/elsewhere/renamed/count-2-state"
    );
    assert_eq!(s.read(&handle).await.expect("the original"), state());
}

#[tokio::test]
async fn disposing_of_a_savepoint_removes_every_object_and_nothing_beside_it() {
    let f = S3Savepoint::new();
    let s = &f.storage;
    s.check().await.expect("check");
    let other = S3Storage::savepoint(
        f.server.bucket(),
        PREFIX,
        "savepoint-job-2",
        options(&f.server.endpoint()),
    )
    .expect("valid name");
    other.check().await.expect("check");
    let kept = other
        .write(CheckpointId(1), "a", state())
        .await
        .expect("write");
    for name in ["a", "b"] {
        s.write(CheckpointId(1), name, state())
            .await
            .expect("write");
    }
    s.commit(CheckpointId(1), Bytes::from_static(b"m"))
        .await
        .expect("commit");
    s.delete_checkpoint(CheckpointId(1)).await.expect("dispose");
    assert_eq!(
        keys_below(&f.server, f.server.bucket(), "").await,
        [
            "checkpoints/savepoint-job-2/.weir-job",
            "checkpoints/savepoint-job-2/a",
        ]
    );
    assert_eq!(other.read(&kept).await.expect("read"), state());
}
