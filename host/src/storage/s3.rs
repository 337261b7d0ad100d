//! [`S3Storage`]: checkpoint storage in an S3 bucket (`s3://<bucket>/<prefix>`), through
//! `aws-sdk-s3`, for AWS S3 and S3-compatible stores that support conditional writes.
//!
//! It owns the objects below one root in one bucket, `<prefix>/<job-id>/` (a job's
//! checkpoints) or `<prefix>/<savepoint>/` (one savepoint, see [`Layout`]), and the client
//! that reaches them. It may not touch other keys of the bucket (other jobs' checkpoints,
//! other savepoints), create or configure buckets, or decide what a failure means for the
//! job: it says whose fault and whether a retry helps, as [`StorageError`] does.
//!
//! # Keys
//!
//! The keys are fs's paths below the root, so a bucket browser shows Flink's layout, plus
//! one marker object, `.weir-job`, that `check` writes: S3 has no directories, and the
//! marker is what makes the root exist, so that a storage that was never checked reports
//! `NotFound` as the contract says. A savepoint's root exists also by its `_metadata`
//! alone, so that a savepoint copied without its hidden marker still opens. Names
//! starting with `.` are never valid file names, so the marker and `check`'s probe
//! objects never collide with a file.
//!
//! There is no entropy injection (Flink's `_entropy_` segment). S3 partitions a bucket by
//! key prefix on its own and splits a partition that receives more than about 3,500 writes
//! or 5,500 reads a second; a job writes a few objects per subtask per checkpoint, orders
//! of magnitude below. Random segments would cost what this layout gets for free: listing
//! the checkpoints with one delimiter query and deleting one by its prefix.
//!
//! # Integrity and atomicity
//!
//! - An object is absent or complete: a PUT or a completed multipart upload publishes the
//!   whole object at once. A multipart upload that fails is aborted; one cut short by a
//!   crash is left to the bucket's lifecycle rule (`AbortIncompleteMultipartUpload`),
//!   which a production bucket should have.
//! - Every upload carries its CRC32C (`x-amz-checksum-crc32c` on each PUT and part) so the
//!   store refuses bytes damaged in transit, and user metadata `crc32c` (hex) records the
//!   CRC32C of the whole object, which S3's own checksum of a multipart object is not.
//!   Reads verify size and CRC32C against the [`FileHandle`] themselves; the SDK's own
//!   response validation is off, as the handle is the authority.
//! - `commit` creates `_metadata` with `If-None-Match: *`: of two commits exactly one
//!   succeeds (HTTP 412 for the other). `write_shared` creates its object the same way.
//!
//! # Failures
//!
//! The SDK retries what can pass — HTTP 500, 502, 503, 504 and 429, throttling codes
//! (`SlowDown`), timeouts, connections refused or reset — with exponential backoff and full
//! jitter, up to [`S3Options::max_attempts`] attempts, with a retry quota of its own per
//! storage. Each attempt ends after [`S3Options::attempt_timeout`], so a server that accepts
//! a request and never answers costs a timeout, not a hang; a response body that stops
//! flowing is cut by the SDK's stalled-stream protection and the read is retried here.
//! What remains after the last attempt becomes a [`StorageError::Io`] naming the `s3://`
//! location and the endpoint, transient when a later retry can help.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::interceptors::InterceptorContext;
use aws_sdk_s3::config::retry::{
    ClassifyRetry, RetryAction, RetryConfig, RetryPartition, TokenBucket,
};
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    Region, ResponseChecksumValidation, SharedCredentialsProvider, StalledStreamProtectionConfig,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier,
};
use bytes::{Bytes, BytesMut};
use tokio::sync::OnceCell;
use tokio::task::JoinSet;

use super::checksum::{self, checksum, len_u64};
use super::layout::{self, Layout};
use super::lock::{LockGuard, lease_is_stale, lease_renewal};
use super::{
    CheckpointListing, CheckpointStorage, FileHandle, JobLock, JobRecord, LockHolder, LostSignal,
    StorageError,
};
use crate::runtime::ids::CheckpointId;

/// The object whose existence makes the job directory exist; see the module docs.
const MARKER: &str = ".weir-job";

/// The user-metadata key (`x-amz-meta-crc32c`) of an object's whole CRC32C, in hex.
const CRC_METADATA: &str = "crc32c";

/// S3's smallest part, except for the last part of an upload.
const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;

/// S3's largest number of parts in one upload.
const MAX_PARTS: u64 = 10_000;

/// S3's largest single PUT.
const MAX_PUT_SIZE: u64 = 5 * 1024 * 1024 * 1024;

/// S3's largest number of keys in one DeleteObjects request (and in one listing page).
const DELETE_BATCH: usize = 1000;

/// How to reach the bucket, and how hard to try. Credentials and, unless set here, the
/// region and endpoint come from the standard AWS chain: `AWS_ACCESS_KEY_ID` and
/// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_PROFILE` and the profile
/// files, web identity, container and instance credentials.
#[derive(Clone, Debug)]
pub struct S3Options {
    /// The endpoint URL, for S3-compatible stores (`http://127.0.0.1:9000`); `None` for the
    /// chain's (`AWS_ENDPOINT_URL`) or AWS's own endpoint of the region.
    pub endpoint: Option<String>,
    /// The region; `None` for the chain's (`AWS_REGION`, the profile).
    pub region: Option<String>,
    /// Path-style URLs (`<endpoint>/<bucket>/<key>`) instead of a bucket host name, as most
    /// S3-compatible stores on a bare address need.
    pub force_path_style: bool,
    /// The size of a multipart upload's parts. Raised to S3's minimum of 5 MiB, and as far
    /// as a large object needs to fit in S3's 10,000 parts.
    pub part_size: u64,
    /// Objects of at least this size go up in parts, smaller ones in one PUT. At most
    /// 5 GiB, S3's largest PUT.
    pub multipart_threshold: u64,
    /// How many parts of one upload are in flight at once.
    pub upload_concurrency: usize,
    /// Attempts per request, the first included, before a transient failure is reported.
    pub max_attempts: u32,
    /// The longest wait before the first retry; each retry doubles it, and the actual wait
    /// is drawn uniformly below it (full jitter).
    pub initial_backoff: Duration,
    /// The longest wait before any retry.
    pub max_backoff: Duration,
    /// How long to wait for a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// How long one attempt of a request may take, from sending it to the response's
    /// headers, the upload of a body included: a part or a PUT below the threshold must
    /// go up within it.
    pub attempt_timeout: Duration,
    /// How long a request or response body may make no progress before the transfer is
    /// cut (the SDK's stalled-stream protection).
    pub stall_timeout: Duration,
    /// Credentials to use instead of the standard chain's, e.g. for a test server.
    pub credentials: Option<SharedCredentialsProvider>,
    /// How long the job's lease lives without renewal (see `lock.rs`).
    pub lease_timeout: Duration,
}

impl Default for S3Options {
    fn default() -> Self {
        S3Options {
            endpoint: None,
            region: None,
            force_path_style: false,
            // AWS's guidance is 8-16 MiB parts, and its own tools use 8 MiB: large enough
            // that per-request overhead is small, small enough that a failed part is cheap
            // to resend and that parts of a 100 MiB state file go up in parallel.
            part_size: 8 * 1024 * 1024,
            // Below two parts, multipart costs two extra round trips (create and complete)
            // and has nothing to overlap: one PUT is faster.
            multipart_threshold: 16 * 1024 * 1024,
            // A few connections per upload already reach S3's per-connection throughput
            // several times over, and every subtask of a checkpoint uploads at once: more
            // would only add connections, not bandwidth.
            upload_concurrency: 4,
            // The SDK's standard mode. A checkpoint that fails is retried by the next one,
            // so long chains of retries inside a call only delay that decision.
            max_attempts: 3,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(20),
            // A reachable endpoint in the same region connects in milliseconds; an
            // unreachable one must fail the job's start in seconds, not minutes.
            connect_timeout: Duration::from_secs(3),
            // An 8 MiB part or a 16 MiB PUT at a slow 1 MiB/s stays well below it; a
            // stalled server is detected within it.
            attempt_timeout: Duration::from_secs(60),
            // The SDK's own default grace period.
            stall_timeout: Duration::from_secs(5),
            credentials: None,
            lease_timeout: super::lock::LEASE_TIMEOUT,
        }
    }
}

/// Checkpoint storage below `s3://<bucket>/<prefix>/<job-id>/`, or one savepoint below
/// `s3://<bucket>/<prefix>/<savepoint>/`.
///
/// The store must support conditional writes (`If-None-Match: *` on PUT and on
/// CompleteMultipartUpload), as AWS S3 has since 2024: they make the commit atomic.
#[derive(Debug)]
pub struct S3Storage {
    /// The bucket.
    bucket: String,
    /// The key prefix of the root, `<prefix>/<job-id>/` or `<prefix>/<savepoint>/`.
    root: String,
    /// `s3://<bucket>/` and the root without its last `/`, for messages.
    url: String,
    /// How the objects are arranged below the root.
    layout: Layout,
    /// As given, with sizes brought within S3's limits.
    options: S3Options,
    /// The client, built on first use: loading the AWS configuration is async.
    remote: OnceCell<Arc<Remote>>,
    /// Set once the root was seen to exist or `check` created it; cleared when a
    /// savepoint's delete removed it.
    created: AtomicBool,
}

/// The client and what messages say about it.
#[derive(Debug)]
struct Remote {
    client: Client,
    bucket: String,
    root: String,
    url: String,
    /// The endpoint as configured, or a description of AWS's.
    endpoint: String,
    options: S3Options,
}

/// Whether a PUT may replace an existing object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Replace whatever has the key: retrying a write is safe.
    Replace,
    /// Create only if the key is free (`If-None-Match: *`).
    CreateNew,
}

/// What a PUT did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Put {
    /// The object is stored.
    Stored,
    /// `CreateNew`, and the key was taken.
    Exists,
}

/// How a request failed, before it becomes a [`StorageError`].
enum Refusal {
    /// HTTP 404 for the object.
    Missing,
    /// HTTP 412: a condition (`If-None-Match`) did not hold.
    Precondition,
    /// Anything else, already worded.
    Failed(StorageError),
}

impl S3Storage {
    /// Storage for job `job_id` below `s3://<bucket>/<prefix>`, where `prefix` has no
    /// leading or trailing `/` and may be empty. No I/O happens here: the client is built
    /// on first use, and [`check`](CheckpointStorage::check) proves the bucket writable
    /// and creates the job directory.
    ///
    /// Fails if `job_id` is not a valid directory name (empty, contains `/` or `..`,
    /// starts with `.`).
    pub fn new(
        bucket: &str,
        prefix: &str,
        job_id: &str,
        options: S3Options,
    ) -> Result<Self, StorageError> {
        layout::validate_job_id(job_id)?;
        Ok(Self::with_layout(
            bucket,
            prefix,
            job_id,
            Layout::Checkpoints,
            options,
        ))
    }

    /// The savepoint `s3://<bucket>/<prefix>/<name>` (`savepoint-<job>-<n>`), in the
    /// savepoint layout of the module docs of `storage`: `_metadata` and the data files
    /// side by side, handle paths relative to the savepoint. `prefix` is as for
    /// [`new`](Self::new). No I/O happens here: [`check`](CheckpointStorage::check)
    /// creates the savepoint's marker; an existing savepoint is read without it.
    ///
    /// Fails if `name` is not a valid directory name.
    pub fn savepoint(
        bucket: &str,
        prefix: &str,
        name: &str,
        options: S3Options,
    ) -> Result<Self, StorageError> {
        layout::validate_savepoint_name(name)?;
        Ok(Self::with_layout(
            bucket,
            prefix,
            name,
            Layout::Savepoint,
            options,
        ))
    }

    /// The storage of root `<prefix>/<name>/`, `name` validated.
    fn with_layout(
        bucket: &str,
        prefix: &str,
        name: &str,
        layout: Layout,
        options: S3Options,
    ) -> Self {
        let path = if prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{prefix}/{name}")
        };
        let options = S3Options {
            part_size: options.part_size.max(MIN_PART_SIZE),
            multipart_threshold: options.multipart_threshold.min(MAX_PUT_SIZE),
            upload_concurrency: options.upload_concurrency.max(1),
            max_attempts: options.max_attempts.max(1),
            ..options
        };
        S3Storage {
            bucket: bucket.to_owned(),
            root: format!("{path}/"),
            url: format!("s3://{bucket}/{path}"),
            layout,
            options,
            remote: OnceCell::new(),
            created: AtomicBool::new(false),
        }
    }

    /// The client, built on first use from the AWS configuration chain and the options.
    async fn remote(&self) -> Arc<Remote> {
        let remote = self
            .remote
            .get_or_init(|| async {
                Arc::new(Remote::connect(&self.bucket, &self.root, &self.url, &self.options).await)
            })
            .await;
        Arc::clone(remote)
    }

    /// The client, once the root exists; `NotFound` until `check` created it.
    async fn job(&self) -> Result<Arc<Remote>, StorageError> {
        let remote = self.remote().await;
        if self.created.load(Ordering::Acquire) {
            return Ok(remote);
        }
        let exists = remote.head(MARKER).await?
            || (self.layout == Layout::Savepoint && remote.head(layout::METADATA).await?);
        if !exists {
            return Err(StorageError::NotFound {
                location: self.url.clone(),
            });
        }
        self.created.store(true, Ordering::Release);
        Ok(remote)
    }

    /// Removes a savepoint: `_metadata` first, so that it is never restorable half
    /// deleted, then every other object, the marker last, as it makes the savepoint
    /// exist. A savepoint that is not there is disposed of already.
    async fn dispose(&self) -> Result<(), StorageError> {
        let remote = self.remote().await;
        remote.delete(layout::METADATA, "deleting").await?;
        let marker = remote.key(MARKER);
        let (keys, _) = remote.list("", false).await?;
        let keys = keys.into_iter().filter(|key| *key != marker).collect();
        remote.delete_keys(keys, "").await?;
        remote.delete(MARKER, "deleting").await?;
        self.created.store(false, Ordering::Release);
        Ok(())
    }
}

impl Remote {
    /// A client for `bucket`, configured by the AWS chain and `options`.
    async fn connect(bucket: &str, root: &str, url: &str, options: &S3Options) -> Remote {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(options.max_attempts)
                    .with_initial_backoff(options.initial_backoff)
                    .with_max_backoff(options.max_backoff),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(options.connect_timeout)
                    .operation_attempt_timeout(options.attempt_timeout)
                    .build(),
            )
            .stalled_stream_protection(
                StalledStreamProtectionConfig::enabled()
                    .grace_period(options.stall_timeout)
                    .build(),
            );
        if let Some(region) = &options.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(credentials) = &options.credentials {
            loader = loader.credentials_provider(credentials.clone());
        }
        let shared = loader.load().await;
        let mut config = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(options.force_path_style)
            // Reads verify against the handle, which knows the whole object's CRC32C;
            // the SDK's check would only repeat it, and not at all for multipart objects.
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            // The SDK's retry quota is shared by every client in the process by default:
            // one job's failing store would use up the retries of every other job's.
            .retry_partition(
                RetryPartition::custom(format!("weir {url}"))
                    .token_bucket(TokenBucket::default())
                    .build(),
            )
            .retry_classifier(TooManyRequests);
        if let Some(endpoint) = &options.endpoint {
            config = config.endpoint_url(endpoint.clone());
        }
        let endpoint = match (&options.endpoint, shared.endpoint_url()) {
            (Some(endpoint), _) => endpoint.clone(),
            (None, Some(endpoint)) => endpoint.to_owned(),
            (None, None) => match shared.region() {
                Some(region) => format!("the AWS S3 endpoint of region {region}"),
                None => "the AWS S3 endpoint (no region is configured)".to_owned(),
            },
        };
        Remote {
            client: Client::from_conf(config.build()),
            bucket: bucket.to_owned(),
            root: root.to_owned(),
            url: url.to_owned(),
            endpoint,
            options: options.clone(),
        }
    }

    /// The key of `relative`, a path below the job directory.
    fn key(&self, relative: &str) -> String {
        format!("{}{relative}", self.root)
    }

    /// The URL of `relative`, for messages.
    fn location(&self, relative: &str) -> String {
        format!("{}/{relative}", self.url)
    }

    /// Whether the object `relative` exists.
    async fn head(&self, relative: &str) -> Result<bool, StorageError> {
        Ok(self.modified(relative).await?.is_some())
    }

    /// When the object `relative` was last written, by the store's clock; `None` if it
    /// does not exist.
    async fn modified(&self, relative: &str) -> Result<Option<SystemTime>, StorageError> {
        let result = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.key(relative))
            .send()
            .await;
        match result {
            Ok(output) => Ok(Some(
                output
                    .last_modified()
                    .and_then(|t| SystemTime::try_from(*t).ok())
                    .unwrap_or(SystemTime::UNIX_EPOCH),
            )),
            Err(e) => match self.refusal(relative, "looking for", &e) {
                Refusal::Missing => Ok(None),
                refusal => Err(self.unexpected(relative, "looking for", refusal)),
            },
        }
    }

    /// The store's clock now: the time it gives a probe object it was just sent.
    async fn store_now(&self) -> Result<SystemTime, StorageError> {
        let probe = probe_name();
        self.put_single(&probe, Bytes::from_static(b"clock"), Mode::Replace)
            .await?;
        let now = self.modified(&probe).await?;
        self.delete(&probe, "deleting a probe object from").await?;
        Ok(now.unwrap_or_else(SystemTime::now))
    }

    /// The content of `relative`. A response body that breaks off is fetched again, as
    /// the SDK retries only up to the response's headers.
    async fn get(&self, relative: &str) -> Result<Bytes, StorageError> {
        let mut attempt = 1;
        loop {
            let response = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(self.key(relative))
                .send()
                .await;
            let output = match response {
                Ok(output) => output,
                Err(e) => {
                    return Err(match self.refusal(relative, "reading", &e) {
                        Refusal::Missing => StorageError::NotFound {
                            location: self.location(relative),
                        },
                        refusal => self.unexpected(relative, "reading", refusal),
                    });
                }
            };
            let capacity = output
                .content_length()
                .and_then(|len| usize::try_from(len).ok())
                .unwrap_or(0);
            match collect(output.body, capacity).await {
                Ok(bytes) => return Ok(bytes),
                Err(e) if attempt < self.options.max_attempts => {
                    tracing::debug!(
                        location = %self.location(relative),
                        error = %causes(&e),
                        attempt,
                        "reading a response body failed; retrying"
                    );
                    tokio::time::sleep(self.backoff(attempt)).await;
                    attempt += 1;
                }
                Err(e) => {
                    let detail = format!(
                        "the response from {} broke off, also when fetched again ({attempt} \
                         attempts): {}",
                        self.endpoint,
                        causes(&e)
                    );
                    return Err(io_error(self.location(relative), "reading", true, detail));
                }
            }
        }
    }

    /// The wait before retry number `attempt` (from 1): full jitter below an
    /// exponentially growing bound, as the SDK's own retries.
    fn backoff(&self, attempt: u32) -> Duration {
        let bound = self
            .options
            .initial_backoff
            .saturating_mul(2_u32.saturating_pow(attempt.saturating_sub(1)))
            .min(self.options.max_backoff);
        // A `RandomState` is seeded randomly and differently each time: random enough to
        // spread retries, without a dependency for it.
        let random = RandomState::new().build_hasher().finish() >> 32;
        let fraction = f64::from(u32::try_from(random).unwrap_or(0)) / f64::from(u32::MAX);
        bound.mul_f64(fraction)
    }

    /// Stores `bytes` at `relative`: in one PUT below the multipart threshold, in parts
    /// above it.
    async fn put(
        self: &Arc<Self>,
        relative: &str,
        bytes: Bytes,
        mode: Mode,
    ) -> Result<Put, StorageError> {
        let size = len_u64(&bytes);
        if size > 0 && size >= self.options.multipart_threshold {
            self.put_multipart(relative, bytes, mode).await
        } else {
            self.put_single(relative, bytes, mode).await
        }
    }

    /// Stores `bytes` at `relative` in one PUT.
    async fn put_single(
        &self,
        relative: &str,
        bytes: Bytes,
        mode: Mode,
    ) -> Result<Put, StorageError> {
        let crc = checksum(&bytes);
        let mut request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.key(relative))
            .content_length(i64::try_from(bytes.len()).unwrap_or(i64::MAX))
            .checksum_algorithm(ChecksumAlgorithm::Crc32C)
            .checksum_crc32_c(crc32c_header(crc))
            .metadata(CRC_METADATA, format!("{crc:08x}"))
            .body(ByteStream::from(bytes));
        if mode == Mode::CreateNew {
            request = request.if_none_match("*");
        }
        match request.send().await {
            Ok(_) => Ok(Put::Stored),
            Err(e) => match self.refusal(relative, "writing", &e) {
                Refusal::Precondition if mode == Mode::CreateNew => Ok(Put::Exists),
                refusal => Err(self.unexpected(relative, "writing", refusal)),
            },
        }
    }

    /// Stores `bytes` at `relative` by a multipart upload, aborted if it fails.
    async fn put_multipart(
        self: &Arc<Self>,
        relative: &str,
        bytes: Bytes,
        mode: Mode,
    ) -> Result<Put, StorageError> {
        let key = self.key(relative);
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&key)
            .checksum_algorithm(ChecksumAlgorithm::Crc32C)
            .metadata(CRC_METADATA, format!("{:08x}", checksum(&bytes)))
            .send()
            .await
            .map_err(|e| self.error(relative, "starting an upload of", &e))?;
        let Some(upload_id) = created.upload_id else {
            return Err(io_error(
                self.location(relative),
                "starting an upload of",
                false,
                format!("{} answered without an upload id", self.endpoint),
            ));
        };
        let mut upload = Upload {
            remote: Arc::clone(self),
            key,
            upload_id,
            done: false,
        };
        let result = upload.send_parts(relative, bytes, mode).await;
        if !matches!(result, Ok(Put::Stored)) {
            upload.abort().await;
        }
        result
    }

    /// Deletes the object `relative`; deleting what is not there succeeds.
    async fn delete(&self, relative: &str, action: &'static str) -> Result<(), StorageError> {
        let result = self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.key(relative))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) => match self.refusal(relative, action, &e) {
                Refusal::Missing => Ok(()),
                refusal => Err(self.unexpected(relative, action, refusal)),
            },
        }
    }

    /// Deletes `keys` in batches of S3's largest DeleteObjects request. `what` is the
    /// path (relative to the job directory) that messages name.
    async fn delete_keys(&self, keys: Vec<String>, what: &str) -> Result<(), StorageError> {
        for batch in keys.chunks(DELETE_BATCH) {
            let objects = batch
                .iter()
                .map(|key| ObjectIdentifier::builder().key(key).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| self.build_failed(what, "deleting", &e))?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| self.build_failed(what, "deleting", &e))?;
            let output = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| self.error(what, "deleting", &e))?;
            if let Some(error) = output.errors().first() {
                let code = error.code().unwrap_or("an unnamed error");
                let key = error.key().unwrap_or_default();
                let relative = key.strip_prefix(&self.root).unwrap_or(key);
                let transient = is_transient_code(code);
                return Err(io_error(
                    self.location(relative),
                    "deleting",
                    transient,
                    format!(
                        "{} refused with {code}: {}",
                        self.endpoint,
                        error.message().unwrap_or_default()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Every key below `relative` (a path ending in `/`, or empty for the job directory);
    /// with `delimiter`, only the objects directly inside, and the "directories" below as
    /// common prefixes. Both are full keys.
    async fn list(
        &self,
        relative: &str,
        delimiter: bool,
    ) -> Result<(Vec<String>, Vec<String>), StorageError> {
        let (mut keys, mut prefixes) = (Vec::new(), Vec::new());
        let mut token = None;
        loop {
            let mut request = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(self.key(relative))
                .set_continuation_token(token);
            if delimiter {
                request = request.delimiter("/");
            }
            let page = request
                .send()
                .await
                .map_err(|e| self.error(relative, "listing", &e))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
            prefixes.extend(
                page.common_prefixes()
                    .iter()
                    .filter_map(|p| p.prefix().map(str::to_owned)),
            );
            match page.next_continuation_token {
                Some(next) if page.is_truncated == Some(true) => token = Some(next),
                _ => return Ok((keys, prefixes)),
            }
        }
    }

    /// How `err`, from `action` on `relative`, failed.
    fn refusal<E>(&self, relative: &str, action: &'static str, err: &SdkError<E>) -> Refusal
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let status = err.raw_response().map(|r| r.status().as_u16());
        let code = err.as_service_error().and_then(|e| e.code());
        match (status, code) {
            (_, Some("NoSuchBucket")) => {}
            (_, Some("NoSuchKey" | "NotFound")) | (Some(404), _) => return Refusal::Missing,
            (_, Some("PreconditionFailed")) | (Some(412), _) => return Refusal::Precondition,
            _ => {}
        }
        let (transient, detail) = self.explain(err, status, code);
        Refusal::Failed(io_error(self.location(relative), action, transient, detail))
    }

    /// `err`, from `action` on `relative`, for a request that expects no 404 or 412.
    fn error<E>(&self, relative: &str, action: &'static str, err: &SdkError<E>) -> StorageError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let refusal = self.refusal(relative, action, err);
        self.unexpected(relative, action, refusal)
    }

    /// A refusal the request did not expect, as an error.
    fn unexpected(&self, relative: &str, action: &'static str, refusal: Refusal) -> StorageError {
        match refusal {
            Refusal::Failed(e) => e,
            Refusal::Missing => StorageError::NotFound {
                location: self.location(relative),
            },
            Refusal::Precondition => io_error(
                self.location(relative),
                action,
                false,
                format!(
                    "{} answered 412 Precondition Failed to a request without a condition",
                    self.endpoint
                ),
            ),
        }
    }

    /// A request the SDK could not build: a bug in Weir.
    fn build_failed(
        &self,
        relative: &str,
        action: &'static str,
        err: &dyn std::error::Error,
    ) -> StorageError {
        StorageError::Internal {
            location: self.location(relative),
            reason: format!("{action}: the request could not be built: {err}"),
        }
    }

    /// What to say when the bucket does not exist.
    fn no_bucket(&self) -> String {
        format!(
            "bucket `{}` does not exist at {}. Create it, or check the bucket in the job's \
             checkpoint URL and the endpoint (AWS_ENDPOINT_URL or the job's S3 options)",
            self.bucket, self.endpoint
        )
    }

    /// The kind, transience and wording of a failure that is not a plain 404 or 412:
    /// what happened, at which endpoint, and what to check.
    fn explain<E>(
        &self,
        err: &SdkError<E>,
        status: Option<u16>,
        code: Option<&str>,
    ) -> (bool, String)
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let (endpoint, bucket) = (&self.endpoint, &self.bucket);
        let retried = format!(
            "also when retried (up to {} attempts)",
            self.options.max_attempts
        );
        let check_setup = "Check the endpoint URL, the region (AWS_REGION) and the credentials \
                           (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)";
        match err {
            SdkError::ServiceError(service) => {
                let status = status.unwrap_or(0);
                let code = code.unwrap_or_default();
                let answer = answer(status, code, service.err().message());
                if code == "NoSuchBucket" {
                    (false, self.no_bucket())
                } else if status == 403
                    || matches!(
                        code,
                        "AccessDenied"
                            | "InvalidAccessKeyId"
                            | "SignatureDoesNotMatch"
                            | "ExpiredToken"
                            | "InvalidToken"
                    )
                {
                    (
                        false,
                        format!(
                            "{endpoint} refused access to bucket `{bucket}` ({answer}). Check \
                             the credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or \
                             AWS_PROFILE), and that they may list the bucket and put, get and \
                             delete objects in it"
                        ),
                    )
                } else if status == 301
                    || matches!(
                        code,
                        "PermanentRedirect"
                            | "AuthorizationHeaderMalformed"
                            | "IllegalLocationConstraintException"
                    )
                {
                    (
                        false,
                        format!(
                            "bucket `{bucket}` is not in the configured region at {endpoint} \
                             ({answer}). Set AWS_REGION (or the job's S3 region) to the \
                             bucket's region"
                        ),
                    )
                } else if is_transient_status(status) || is_transient_code(code) {
                    (true, format!("{endpoint} answered {answer}, {retried}"))
                } else {
                    (false, format!("{endpoint} answered {answer}"))
                }
            }
            SdkError::TimeoutError(_) => (
                true,
                format!(
                    "{endpoint} did not answer within {:?}, {retried}. Check that the \
                     endpoint is reachable and not overloaded",
                    self.options.attempt_timeout
                ),
            ),
            SdkError::DispatchFailure(failure) if failure.is_timeout() => (
                true,
                format!(
                    "no connection to {endpoint} within {:?}, {retried}: {}. Check the \
                     endpoint URL and that it is reachable from this host",
                    self.options.connect_timeout,
                    causes(err)
                ),
            ),
            // Connections refused, reset or closed early: what the SDK retries.
            SdkError::DispatchFailure(failure)
                if failure.is_io() || failure.as_other().is_some() =>
            {
                (
                    true,
                    format!(
                        "the connection to {endpoint} failed, {retried}: {}. Check the endpoint \
                     URL and that the server is running",
                        causes(err)
                    ),
                )
            }
            SdkError::DispatchFailure(_) => (
                false,
                format!(
                    "the request to {endpoint} could not be sent: {}. {check_setup}",
                    causes(err)
                ),
            ),
            SdkError::ResponseError(_) => (
                true,
                format!(
                    "{endpoint} sent a response that could not be read, {retried}: {}",
                    causes(err)
                ),
            ),
            _ => (
                false,
                format!(
                    "the request to {endpoint} could not be made: {}. {check_setup}",
                    causes(err)
                ),
            ),
        }
    }
}

/// An HTTP answer for messages: `HTTP 503 SlowDown: Please reduce your request rate.`,
/// or only what of it there is (a HEAD's answer has no body, hence no code).
fn answer(status: u16, code: &str, message: Option<&str>) -> String {
    let mut answer = format!("HTTP {status}");
    if !code.is_empty() {
        answer = format!("{answer} {code}");
    }
    match message {
        Some(message) if !message.is_empty() => format!("{answer}: {message}"),
        _ => answer,
    }
}

/// `err` and its causes, each once: `dispatch failure: io error: tcp connect error:
/// Connection refused (os error 111)`. The SDK's own context display adds a debug dump.
fn causes(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        let part = cause.to_string();
        if !text.contains(&part) {
            text = format!("{text}: {part}");
        }
        next = cause.source();
    }
    // The message that follows starts a sentence of its own.
    text.trim_end_matches('.').to_owned()
}

/// A multipart upload in progress. Dropped before it completed (its task was cancelled),
/// it aborts itself in the background, so that no upload is left behind to be billed.
struct Upload {
    remote: Arc<Remote>,
    key: String,
    upload_id: String,
    /// Completed or aborted: nothing left to clean up.
    done: bool,
}

impl Upload {
    /// Sends the parts of `bytes`, `upload_concurrency` at a time, and completes the
    /// upload.
    async fn send_parts(
        &mut self,
        relative: &str,
        bytes: Bytes,
        mode: Mode,
    ) -> Result<Put, StorageError> {
        let remote = &self.remote;
        let size = len_u64(&bytes);
        let part_size = remote.options.part_size.max(size.div_ceil(MAX_PARTS));
        let part_size = usize::try_from(part_size).unwrap_or(usize::MAX);
        let mut parts = Vec::new();
        let mut in_flight = JoinSet::new();
        let mut chunks = bytes_chunks(&bytes, part_size).enumerate().peekable();
        while chunks.peek().is_some() || !in_flight.is_empty() {
            while in_flight.len() < remote.options.upload_concurrency {
                let Some((index, chunk)) = chunks.next() else {
                    break;
                };
                // At most 10,000 parts, so the number fits.
                let number = i32::try_from(index + 1).unwrap_or(i32::MAX);
                in_flight.spawn(send_part(
                    Arc::clone(remote),
                    self.key.clone(),
                    self.upload_id.clone(),
                    relative.to_owned(),
                    number,
                    chunk,
                ));
            }
            match in_flight.join_next().await {
                Some(Ok(Ok(part))) => parts.push(part),
                Some(Ok(Err(e))) => return Err(e),
                Some(Err(e)) => {
                    return Err(StorageError::Internal {
                        location: remote.location(relative),
                        reason: format!("the task uploading a part failed: {e}"),
                    });
                }
                None => {}
            }
        }
        parts.sort_by_key(|part| part.part_number);
        let mut request = remote
            .client
            .complete_multipart_upload()
            .bucket(&remote.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            );
        if mode == Mode::CreateNew {
            request = request.if_none_match("*");
        }
        match request.send().await {
            Ok(_) => {
                self.done = true;
                Ok(Put::Stored)
            }
            Err(e) => match remote.refusal(relative, "completing the upload of", &e) {
                Refusal::Precondition if mode == Mode::CreateNew => Ok(Put::Exists),
                refusal => Err(remote.unexpected(relative, "completing the upload of", refusal)),
            },
        }
    }

    /// Aborts the upload, so the store drops its parts. A failure is only logged: the
    /// upload's own failure is what the caller needs to hear about, and a lifecycle rule
    /// collects what is left.
    async fn abort(&mut self) {
        let aborted = abort_upload(&self.remote, &self.key, &self.upload_id).await;
        // Only now: cancelled while aborting, the drop aborts again.
        self.done = true;
        if let Err(e) = aborted {
            tracing::warn!(
                bucket = %self.remote.bucket,
                key = %self.key,
                upload_id = %self.upload_id,
                error = %causes(&e),
                "aborting a failed multipart upload failed; the bucket's lifecycle rule \
                 (AbortIncompleteMultipartUpload) must remove it"
            );
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Cancelled mid-upload: abort in the background, as a drop cannot wait.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let remote = Arc::clone(&self.remote);
            let (key, upload_id) = (self.key.clone(), self.upload_id.clone());
            runtime.spawn(async move {
                if let Err(e) = abort_upload(&remote, &key, &upload_id).await {
                    tracing::warn!(
                        bucket = %remote.bucket,
                        %key,
                        %upload_id,
                        error = %causes(&e),
                        "aborting a cancelled multipart upload failed"
                    );
                }
            });
        }
    }
}

/// Aborts upload `upload_id` of `key`.
async fn abort_upload(
    remote: &Remote,
    key: &str,
    upload_id: &str,
) -> Result<(), SdkError<aws_sdk_s3::operation::abort_multipart_upload::AbortMultipartUploadError>>
{
    remote
        .client
        .abort_multipart_upload()
        .bucket(&remote.bucket)
        .key(key)
        .upload_id(upload_id)
        .send()
        .await
        .map(|_| ())
}

/// Uploads part `number` of upload `upload_id`, with its CRC32C.
async fn send_part(
    remote: Arc<Remote>,
    key: String,
    upload_id: String,
    relative: String,
    number: i32,
    chunk: Bytes,
) -> Result<CompletedPart, StorageError> {
    let crc = crc32c_header(checksum(&chunk));
    let output = remote
        .client
        .upload_part()
        .bucket(&remote.bucket)
        .key(&key)
        .upload_id(&upload_id)
        .part_number(number)
        .content_length(i64::try_from(chunk.len()).unwrap_or(i64::MAX))
        .checksum_algorithm(ChecksumAlgorithm::Crc32C)
        .checksum_crc32_c(crc.clone())
        .body(ByteStream::from(chunk))
        .send()
        .await
        .map_err(|e| remote.error(&relative, "uploading a part of", &e))?;
    Ok(CompletedPart::builder()
        .part_number(number)
        .set_e_tag(output.e_tag)
        .checksum_crc32_c(crc)
        .build())
}

/// `bytes` in consecutive slices of `size` (the last one shorter), without copying.
fn bytes_chunks(bytes: &Bytes, size: usize) -> impl Iterator<Item = Bytes> + '_ {
    (0..bytes.len())
        .step_by(size.max(1))
        .map(move |start| bytes.slice(start..bytes.len().min(start.saturating_add(size))))
}

/// Reads a response body to its end.
async fn collect(
    mut body: ByteStream,
    capacity: usize,
) -> Result<Bytes, aws_sdk_s3::primitives::ByteStreamError> {
    let mut buffer = BytesMut::with_capacity(capacity);
    while let Some(chunk) = body.try_next().await? {
        buffer.extend_from_slice(&chunk);
    }
    Ok(buffer.freeze())
}

/// Retries HTTP 429 Too Many Requests as throttling. The SDK's own classifiers know
/// throttling only by error code (`SlowDown`), and an S3-compatible store or a proxy in
/// front of S3 may answer 429 without one.
#[derive(Debug)]
struct TooManyRequests;

impl ClassifyRetry for TooManyRequests {
    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        match ctx.response() {
            Some(response) if response.status().as_u16() == 429 => RetryAction::throttling_error(),
            _ => RetryAction::NoActionIndicated,
        }
    }

    fn name(&self) -> &'static str {
        "TooManyRequests"
    }
}

/// Statuses that describe a passing condition: server errors and throttling.
fn is_transient_status(status: u16) -> bool {
    matches!(status, 429 | 500 | 502 | 503 | 504)
}

/// S3 error codes that describe a passing condition: throttling, an overloaded or
/// failing server, a conflicting request in progress.
fn is_transient_code(code: &str) -> bool {
    matches!(
        code,
        "SlowDown"
            | "Throttling"
            | "ThrottlingException"
            | "RequestLimitExceeded"
            | "TooManyRequestsException"
            | "RequestThrottled"
            | "BandwidthLimitExceeded"
            | "RequestTimeout"
            | "InternalError"
            | "ServiceUnavailable"
            | "OperationAborted"
            | "ConditionalRequestConflict"
    )
}

/// A [`StorageError::ObjectStore`] with `detail` as its message.
fn io_error(
    location: String,
    action: &'static str,
    transient: bool,
    detail: String,
) -> StorageError {
    StorageError::ObjectStore {
        location,
        action,
        detail,
        transient,
    }
}

/// `crc` as the value of `x-amz-checksum-crc32c`: base64 of its big-endian bytes.
fn crc32c_header(crc: u32) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let [a, b, c, d] = crc.to_be_bytes();
    let sextets = [
        a >> 2,
        ((a & 0b11) << 4) | (b >> 4),
        ((b & 0b1111) << 2) | (c >> 6),
        c & 0b11_1111,
        d >> 2,
        (d & 0b11) << 4,
    ];
    sextets
        .iter()
        .map(|&s| char::from(ALPHABET[usize::from(s)]))
        .chain("==".chars())
        .collect()
}

/// A name for a probe object, unique in this process and starting with `.`, so it is no
/// valid file's.
fn probe_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!(".probe-{}-{n}", std::process::id())
}

#[async_trait]
impl CheckpointStorage for S3Storage {
    fn describe(&self) -> String {
        self.url.clone()
    }

    fn checkpoint_url(&self, checkpoint: CheckpointId) -> String {
        self.layout.checkpoint_url(&self.url, checkpoint)
    }

    async fn check(&self) -> Result<(), StorageError> {
        let remote = self.remote().await;
        // Some stores create a missing bucket on a PUT: ask for it first.
        let action = "checking the bucket of";
        if let Err(e) = remote
            .client
            .head_bucket()
            .bucket(&remote.bucket)
            .send()
            .await
        {
            return Err(match remote.refusal("", action, &e) {
                Refusal::Missing => {
                    io_error(remote.location(""), action, false, remote.no_bucket())
                }
                refusal => remote.unexpected("", action, refusal),
            });
        }
        let probe = probe_name();
        remote
            .put_single(&probe, Bytes::from_static(b"probe"), Mode::Replace)
            .await?;
        remote
            .delete(&probe, "deleting a probe object from")
            .await?;
        let marker: &'static [u8] = match self.layout {
            Layout::Checkpoints => b"weir job directory\n",
            Layout::Savepoint => b"weir savepoint directory\n",
        };
        remote
            .put_single(MARKER, Bytes::from_static(marker), Mode::Replace)
            .await?;
        self.created.store(true, Ordering::Release);
        Ok(())
    }

    async fn write(
        &self,
        checkpoint: CheckpointId,
        name: &str,
        bytes: Bytes,
    ) -> Result<FileHandle, StorageError> {
        layout::validate_file_name(name)?;
        let remote = self.job().await?;
        let metadata = self.layout.metadata_file(checkpoint);
        if remote.head(&metadata).await? {
            return Err(StorageError::AlreadyCommitted {
                location: remote.location(&metadata),
                checkpoint,
            });
        }
        let handle = FileHandle {
            path: self.layout.data_file(checkpoint, name),
            size: len_u64(&bytes),
            checksum: checksum(&bytes),
        };
        remote.put(&handle.path, bytes, Mode::Replace).await?;
        Ok(handle)
    }

    async fn write_shared(&self, name: &str, bytes: Bytes) -> Result<FileHandle, StorageError> {
        layout::validate_file_name(name)?;
        self.layout.refuse_in_savepoint(&self.url, "shared files")?;
        let remote = self.job().await?;
        let handle = FileHandle {
            path: layout::shared_file(name),
            size: len_u64(&bytes),
            checksum: checksum(&bytes),
        };
        // A name that is taken is compared, not rewritten: before the upload, to spare it,
        // and after a refused conditional create, when another writer got there first.
        let compare = |existing: Bytes| match checksum::conflict(&handle, &existing) {
            None => Ok(handle.clone()),
            Some(reason) => Err(StorageError::Conflict {
                location: remote.location(&handle.path),
                reason,
            }),
        };
        match remote.get(&handle.path).await {
            Ok(existing) => return compare(existing),
            Err(StorageError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        match remote.put(&handle.path, bytes, Mode::CreateNew).await? {
            Put::Stored => Ok(handle),
            Put::Exists => compare(remote.get(&handle.path).await?),
        }
    }

    async fn read(&self, handle: &FileHandle) -> Result<Bytes, StorageError> {
        let path = self.layout.handle_file(&handle.path)?;
        let remote = self.job().await?;
        let bytes = remote.get(&path).await?;
        checksum::verify(handle, &bytes).map_err(|reason| StorageError::Corrupt {
            location: remote.location(&path),
            reason,
        })?;
        Ok(bytes)
    }

    async fn commit(&self, checkpoint: CheckpointId, metadata: Bytes) -> Result<(), StorageError> {
        let remote = self.job().await?;
        let path = self.layout.metadata_file(checkpoint);
        // Every data file's PUT returned before this one starts, and S3 reads after writes:
        // the commit point cannot be seen before the files it refers to.
        match remote
            .put(&path, checksum::frame(&metadata), Mode::CreateNew)
            .await?
        {
            Put::Stored => Ok(()),
            Put::Exists => Err(StorageError::AlreadyCommitted {
                location: remote.location(&path),
                checkpoint,
            }),
        }
    }

    async fn read_metadata(&self, checkpoint: CheckpointId) -> Result<Bytes, StorageError> {
        let remote = self.job().await?;
        let path = self.layout.metadata_file(checkpoint);
        let framed = remote.get(&path).await?;
        checksum::unframe(framed).map_err(|reason| StorageError::Corrupt {
            location: remote.location(&path),
            reason,
        })
    }

    async fn list(&self) -> Result<Vec<CheckpointListing>, StorageError> {
        let remote = self.job().await?;
        if self.layout == Layout::Savepoint {
            let (keys, _) = remote.list("", true).await?;
            let names: Vec<&str> = keys
                .iter()
                .filter_map(|key| key.strip_prefix(&remote.root))
                .collect();
            return Ok(layout::savepoint_listing(
                names
                    .iter()
                    .any(|name| layout::validate_file_name(name).is_ok()),
                names.contains(&layout::METADATA),
            ));
        }
        let (_, prefixes) = remote.list("", true).await?;
        let checkpoints: Vec<CheckpointId> = prefixes
            .iter()
            .filter_map(|prefix| {
                let dir = prefix.strip_prefix(&remote.root)?.strip_suffix('/')?;
                layout::parse_checkpoint_dir(dir)
            })
            .collect();
        // One HEAD per checkpoint, as many at a time as an upload has parts in flight:
        // jobs retain a handful of checkpoints, and listing every data file instead would
        // read far more.
        let mut listings = Vec::with_capacity(checkpoints.len());
        for batch in checkpoints.chunks(remote.options.upload_concurrency) {
            let mut heads = JoinSet::new();
            for &checkpoint in batch {
                let remote = Arc::clone(&remote);
                heads.spawn(async move {
                    let has_metadata = remote.head(&layout::metadata_file(checkpoint)).await?;
                    Ok::<_, StorageError>(CheckpointListing {
                        checkpoint,
                        has_metadata,
                    })
                });
            }
            while let Some(joined) = heads.join_next().await {
                let listing = joined.map_err(|e| StorageError::Internal {
                    location: remote.location(""),
                    reason: format!("the task listing a checkpoint failed: {e}"),
                })??;
                listings.push(listing);
            }
        }
        listings.sort_by_key(|listing| listing.checkpoint);
        Ok(listings)
    }

    async fn delete_checkpoint(&self, checkpoint: CheckpointId) -> Result<(), StorageError> {
        if self.layout == Layout::Savepoint {
            return self.dispose().await;
        }
        let remote = self.job().await?;
        // The checkpoint must be unrestorable before its files go.
        remote
            .delete(&layout::metadata_file(checkpoint), "deleting")
            .await?;
        let dir = format!("{}/", layout::checkpoint_dir(checkpoint));
        let (keys, _) = remote.list(&dir, false).await?;
        remote.delete_keys(keys, &dir).await
    }

    async fn delete_shared(&self, names: &[String]) -> Result<(), StorageError> {
        for name in names {
            layout::validate_file_name(name)?;
        }
        if self.layout == Layout::Savepoint {
            // A savepoint never has shared files, and deleting what is not there succeeds.
            return Ok(());
        }
        let remote = self.job().await?;
        let keys = names
            .iter()
            .map(|name| remote.key(&layout::shared_file(name)))
            .collect();
        remote.delete_keys(keys, layout::SHARED).await
    }

    async fn list_shared(&self) -> Result<Vec<String>, StorageError> {
        let remote = self.job().await?;
        if self.layout == Layout::Savepoint {
            return Ok(Vec::new());
        }
        let dir = format!("{}/", layout::SHARED);
        let (keys, _) = remote.list(&dir, false).await?;
        let below = remote.key(&dir);
        Ok(keys
            .iter()
            .filter_map(|key| key.strip_prefix(&below))
            .filter(|name| layout::validate_file_name(name).is_ok())
            .map(str::to_owned)
            .collect())
    }

    async fn write_record(&self, record: JobRecord, bytes: Bytes) -> Result<(), StorageError> {
        self.layout.refuse_in_savepoint(&self.url, "job records")?;
        let remote = self.job().await?;
        remote
            .put_single(record.name(), checksum::frame(&bytes), Mode::Replace)
            .await
            .map(|_| ())
    }

    async fn read_record(&self, record: JobRecord) -> Result<Option<Bytes>, StorageError> {
        let remote = self.job().await?;
        if self.layout == Layout::Savepoint {
            return Ok(None);
        }
        let framed = match remote.get(record.name()).await {
            Ok(framed) => framed,
            Err(StorageError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        checksum::unframe(framed)
            .map(Some)
            .map_err(|reason| StorageError::Corrupt {
                location: remote.location(record.name()),
                reason,
            })
    }

    async fn delete_record(&self, record: JobRecord) -> Result<(), StorageError> {
        if self.layout == Layout::Savepoint {
            // A savepoint never has records.
            return Ok(());
        }
        let remote = self.job().await?;
        remote.delete(record.name(), "deleting").await
    }

    /// A lease: see the module docs of `lock.rs`. Of two processes that find one stale
    /// lease at the same moment, both may delete it and one creates the next; the other
    /// then finds it taken and is refused, or (if it deleted the new one) the renewal of
    /// the first finds its lease gone and stops that job.
    async fn lock(&self, holder: &LockHolder) -> Result<JobLock, StorageError> {
        self.layout.refuse_in_savepoint(&self.url, "job lock")?;
        let remote = self.job().await?;
        let timeout = remote.options.lease_timeout;
        let location = remote.location(layout::LOCK);
        let mine = Bytes::from(holder.to_bytes());
        // The first renewal time seen of a lease held by another: a later one means
        // its holder is alive.
        let mut first_seen: Option<(String, SystemTime)> = None;
        loop {
            if remote
                .put_single(layout::LOCK, mine.clone(), Mode::CreateNew)
                .await?
                == Put::Stored
            {
                let lost = LostSignal::default();
                let renewal = tokio::spawn(renew(
                    Arc::clone(&remote),
                    mine,
                    holder.token.clone(),
                    lost.clone(),
                ));
                return Ok(JobLock::new(
                    Box::new(Lease {
                        remote,
                        token: holder.token.clone(),
                        renewal,
                    }),
                    lost,
                ));
            }
            let (other, renewed) = match (
                remote.get(layout::LOCK).await,
                remote.modified(layout::LOCK).await?,
            ) {
                (Ok(bytes), Some(renewed)) => (LockHolder::from_bytes(&bytes), renewed),
                // Released meanwhile: try again.
                (Err(StorageError::NotFound { .. }), _) | (_, None) => continue,
                (Err(e), _) => return Err(e),
            };
            let now = remote.store_now().await?;
            if lease_is_stale(renewed, now, timeout) {
                tracing::warn!(
                    lock = %location,
                    "taking over the stale lease of {}, not renewed for {} s: that process is gone",
                    other.description,
                    now.duration_since(renewed).unwrap_or_default().as_secs()
                );
                remote.delete(layout::LOCK, "taking over").await?;
                continue;
            }
            match &first_seen {
                Some((token, at)) if *token == other.token && renewed > *at => {
                    return Err(StorageError::Locked {
                        location,
                        holder: other.description,
                        detail: format!(
                            "its lease was renewed while this process waited; a lease not renewed for {} s is taken over",
                            timeout.as_secs_f64()
                        ),
                    });
                }
                Some((token, _)) if *token == other.token => {}
                _ => {
                    tracing::info!(
                        lock = %location,
                        "the job's lease is held by {}; waiting up to {} s to see whether that process is alive",
                        other.description,
                        timeout.as_secs_f64()
                    );
                    first_seen = Some((other.token.clone(), renewed));
                }
            }
            tokio::time::sleep(lease_renewal(timeout) / 2).await;
        }
    }
}

/// Renews the lease `mine` (holding `token`) three times per lease timeout until aborted;
/// sets `lost` and stops when it finds the lease replaced or deleted by another process.
/// A store it cannot reach loses it nothing: the job survives an outage of S3, as it
/// does for checkpoints.
async fn renew(remote: Arc<Remote>, mine: Bytes, token: String, lost: LostSignal) {
    let timeout = remote.options.lease_timeout;
    loop {
        tokio::time::sleep(lease_renewal(timeout)).await;
        let why = match remote.get(layout::LOCK).await {
            Ok(bytes) => {
                let current = LockHolder::from_bytes(&bytes);
                if current.token != token {
                    Some(format!(
                        "its lease {} was taken over by {}",
                        remote.location(layout::LOCK),
                        current.description
                    ))
                } else {
                    if let Err(e) = remote
                        .put_single(layout::LOCK, mine.clone(), Mode::Replace)
                        .await
                    {
                        tracing::warn!("could not renew the job's lease: {e}");
                    }
                    None
                }
            }
            Err(StorageError::NotFound { .. }) => Some(format!(
                "its lease {} was deleted by another process",
                remote.location(layout::LOCK)
            )),
            // An outage of the store: no other process can take the lease over through
            // it either, and the next renewal tells whether one did.
            Err(e) => {
                tracing::warn!("could not renew the job's lease: {e}");
                None
            }
        };
        if let Some(why) = why {
            tracing::error!("this process lost the job's lock: {why}");
            lost.set(why);
            return;
        }
    }
}

/// A held S3 lease.
struct Lease {
    remote: Arc<Remote>,
    token: String,
    renewal: tokio::task::JoinHandle<()>,
}

#[async_trait]
impl LockGuard for Lease {
    async fn release(self: Box<Self>) {
        self.renewal.abort();
        let ours = matches!(
            self.remote.get(layout::LOCK).await,
            Ok(bytes) if LockHolder::from_bytes(&bytes).token == self.token
        );
        if ours && let Err(e) = self.remote.delete(layout::LOCK, "releasing").await {
            tracing::warn!(
                "could not release the job's lease (it expires in {} s): {e}",
                self.remote.options.lease_timeout.as_secs_f64()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checksum_header_is_the_base64_of_the_big_endian_crc() {
        // CRC32C of "123456789" is e3069283; base64 of those four bytes is 4waSgw==.
        assert_eq!(crc32c_header(checksum(b"123456789")), "4waSgw==");
        assert_eq!(crc32c_header(0), "AAAAAA==");
        assert_eq!(crc32c_header(u32::MAX), "/////w==");
    }

    #[test]
    fn chunks_cover_the_bytes_in_order_with_a_short_last_one() {
        let bytes = Bytes::from_static(b"abcdefghij");
        let chunks: Vec<Bytes> = bytes_chunks(&bytes, 4).collect();
        assert_eq!(chunks, [&b"abcd"[..], b"efgh", b"ij"]);
        assert_eq!(bytes_chunks(&Bytes::new(), 4).count(), 0);
    }

    #[test]
    fn keys_and_urls_follow_the_prefix_and_job() {
        let s = S3Storage::new("bucket", "a/b", "job", S3Options::default()).expect("valid");
        assert_eq!(s.describe(), "s3://bucket/a/b/job");
        assert_eq!(s.root, "a/b/job/");
        let s = S3Storage::new("bucket", "", "job", S3Options::default()).expect("valid");
        assert_eq!(s.describe(), "s3://bucket/job");
        assert_eq!(s.root, "job/");
    }

    #[test]
    fn part_sizes_below_the_s3_minimum_are_raised() {
        let options = S3Options {
            part_size: 1024,
            multipart_threshold: u64::MAX,
            upload_concurrency: 0,
            ..S3Options::default()
        };
        let s = S3Storage::new("bucket", "", "job", options).expect("valid");
        assert_eq!(s.options.part_size, MIN_PART_SIZE);
        assert_eq!(s.options.multipart_threshold, MAX_PUT_SIZE);
        assert_eq!(s.options.upload_concurrency, 1);
    }

    #[test]
    fn a_job_id_that_is_not_one_path_component_is_refused() {
        for job_id in ["", "..", "a/b", ".hidden"] {
            assert!(S3Storage::new("bucket", "", job_id, S3Options::default()).is_err());
        }
    }

    #[test]
    fn throttling_and_server_errors_are_transient_and_client_errors_are_not() {
        for status in [429, 500, 502, 503, 504] {
            assert!(is_transient_status(status), "{status}");
        }
        for status in [400, 403, 404, 409, 412] {
            assert!(!is_transient_status(status), "{status}");
        }
        assert!(is_transient_code("SlowDown"));
        assert!(!is_transient_code("AccessDenied"));
    }
}
