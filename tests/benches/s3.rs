//! Upload and restore throughput of one large checkpoint file through the real
//! [`S3Storage`], against an S3-compatible server (s3s-fs) on loopback: multipart uploads
//! with 1, 2, 4 and 8 parts in flight, as ratios to one PUT of the whole file measured in
//! the same run, and the restore (one GET, verified against the handle's size and CRC32C).
//!
//! `cargo bench -p weir-tests --bench s3` (needs `s3s-fs`, which `scripts/setup.sh`
//! installs).
//!
//! Loopback has no network to measure: the figures are bounded by this machine's cores,
//! which the client and the server share, and by what the server does with the bytes.
//! s3s-fs hashes every byte it receives (MD5, and the CRC32C the client declares), writes
//! objects as plain files without fsync, and completes a multipart upload by copying its
//! parts, one after the other, into the object: a cost AWS S3 does not charge. The disk and
//! the memory the server works with are printed first, with a plain file write and read of
//! the same bytes into the same directory as the ceiling.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{Credentials, SharedCredentialsProvider};
use bytes::Bytes;
use weir::runtime::CheckpointId;
use weir::storage::{CheckpointStorage, S3Options, S3Storage, checksum};
use weir_tests::s3::{ACCESS_KEY, BUCKET, REGION, S3Server, SECRET_KEY};

/// The allocator of the `weir` binary, so that the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The file: a large state file of one subtask, 32 parts at the default 8 MiB part size.
const FILE_SIZE: usize = 256 * 1024 * 1024;

/// Runs of each variant; the best and the median count (the machine is shared).
const RUNS: usize = 3;

/// Parts in flight per multipart upload. 1 shows what splitting alone costs; the default
/// is 4; 8 is more than this 2-core machine can use.
const CONCURRENCY: [usize; 4] = [1, 2, 4, 8];

const MIB: f64 = (1024 * 1024) as f64;

/// One way to upload the file.
struct Variant {
    label: String,
    storage: S3Storage,
}

/// The times of one variant's runs.
#[derive(Default)]
struct Times {
    upload: Vec<Duration>,
    restore: Vec<Duration>,
}

/// MiB/s of the fastest run and of the median run.
fn rates(times: &[Duration]) -> (f64, f64) {
    let mut sorted = times.to_vec();
    sorted.sort();
    let rate = |d: Duration| FILE_SIZE as f64 / MIB / d.as_secs_f64();
    (rate(sorted[0]), rate(sorted[sorted.len() / 2]))
}

/// Pseudo-random bytes (xorshift64), so that nothing along the way compresses them.
fn content() -> Bytes {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut bytes = Vec::with_capacity(FILE_SIZE);
    while bytes.len() < FILE_SIZE {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(FILE_SIZE);
    Bytes::from(bytes)
}

/// Options for the loopback server, with this variant's upload settings.
fn options(endpoint: &str, multipart_threshold: u64, upload_concurrency: usize) -> S3Options {
    S3Options {
        endpoint: Some(endpoint.to_owned()),
        region: Some(REGION.to_owned()),
        force_path_style: true,
        multipart_threshold,
        upload_concurrency,
        // One attempt must carry the whole 256 MiB PUT; at the default 60 s a slow,
        // loaded machine would fail the baseline instead of measuring it.
        attempt_timeout: Duration::from_secs(600),
        credentials: Some(SharedCredentialsProvider::new(Credentials::new(
            ACCESS_KEY,
            SECRET_KEY,
            None,
            None,
            "weir-bench",
        ))),
        ..S3Options::default()
    }
}

/// `df`'s line for the file system of `dir`: device, type, size, free space.
fn disk_of(dir: &Path) -> String {
    let output = Command::new("df").arg("-hT").arg(dir).output();
    match output {
        Ok(output) if output.status.success() => String::from_utf8_lossy(&output.stdout)
            .lines()
            .nth(1)
            .map_or_else(|| "unknown (df printed nothing)".to_owned(), str::to_owned),
        Ok(output) => format!("unknown (df: {})", output.status),
        Err(e) => format!("unknown (df: {e})"),
    }
}

/// `MemAvailable` from `/proc/meminfo`, in GiB: the page cache the server's files can use.
fn memory_available() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
            let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(format!("{:.1} GiB", kib / MIB))
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The 1-minute load average: above the core count, other work shares the machine and
/// the figures are low and spread.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Best times of writing `data` to a plain file in `dir` and reading it back.
fn local_file(dir: &Path, data: &[u8]) -> (Duration, Duration) {
    let path = dir.join("bench-local-file");
    let mut best = (Duration::MAX, Duration::MAX);
    for _ in 0..RUNS {
        let started = Instant::now();
        std::fs::write(&path, data).expect("a local file");
        let written = started.elapsed();
        let started = Instant::now();
        let back = std::fs::read(&path).expect("the local file back");
        let read = started.elapsed();
        assert!(back == data, "the local file reads back different bytes");
        best = (best.0.min(written), best.1.min(read));
        std::fs::remove_file(&path).expect("the local file removed");
    }
    best
}

fn main() {
    let io = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let server = S3Server::start();
    let data = content();
    let part_size = S3Options::default().part_size;

    println!(
        "S3 checkpoint storage, one {} MiB file of xorshift bytes, against s3s-fs on {} \
         (tokio, 2 workers; {RUNS} runs each)",
        FILE_SIZE / (1 << 20),
        server.endpoint()
    );
    println!(
        "   server data {}: {}",
        server.data_dir().display(),
        disk_of(server.data_dir())
    );
    println!(
        "   s3s-fs does not fsync: the page cache takes its files (MemAvailable {}); {} cores \
         shared by client and server; load average {} at the start",
        memory_available(),
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        load()
    );
    let (written, read) = local_file(server.data_dir(), &data);
    let started = Instant::now();
    let crc = checksum(&data);
    let crc_time = started.elapsed();
    println!(
        "   ceiling, plain file in the same directory: write {:.0} MiB/s, read {:.0} MiB/s; \
         CRC32C {:.0} MiB/s (crc {crc:08x})",
        FILE_SIZE as f64 / MIB / written.as_secs_f64(),
        FILE_SIZE as f64 / MIB / read.as_secs_f64(),
        FILE_SIZE as f64 / MIB / crc_time.as_secs_f64(),
    );

    let mut variants = vec![Variant {
        label: "single PUT".to_owned(),
        // The threshold above the file: one PUT (S3Storage clamps it to 5 GiB, still above).
        storage: S3Storage::new(
            BUCKET,
            "bench",
            "single",
            options(&server.endpoint(), u64::MAX, 1),
        )
        .expect("a storage"),
    }];
    for n in CONCURRENCY {
        variants.push(Variant {
            label: format!(
                "multipart, {} MiB parts, {n} in flight",
                part_size / (1024 * 1024)
            ),
            // The default threshold (16 MiB) is far below the file.
            storage: S3Storage::new(
                BUCKET,
                "bench",
                &format!("multipart-{n}"),
                options(
                    &server.endpoint(),
                    S3Options::default().multipart_threshold,
                    n,
                ),
            )
            .expect("a storage"),
        });
    }

    let times: Vec<Times> = io.block_on(async {
        for variant in &variants {
            variant.storage.check().await.expect("the bucket is usable");
        }
        let mut times: Vec<Times> = variants.iter().map(|_| Times::default()).collect();
        // Round by round, so that a slow spell of the machine hits every variant alike.
        for run in 0..RUNS {
            for (variant, times) in variants.iter().zip(&mut times) {
                let checkpoint = CheckpointId(u64::try_from(run).unwrap_or(0) + 1);
                let started = Instant::now();
                let handle = variant
                    .storage
                    .write(checkpoint, "state", data.clone())
                    .await
                    .unwrap_or_else(|e| panic!("{}: the upload fails: {e}", variant.label));
                times.upload.push(started.elapsed());
                let started = Instant::now();
                let back = variant
                    .storage
                    .read(&handle)
                    .await
                    .unwrap_or_else(|e| panic!("{}: the restore fails: {e}", variant.label));
                times.restore.push(started.elapsed());
                // `read` verified size and CRC32C; the bytes themselves too, untimed.
                assert!(back == data, "{}: the restore differs", variant.label);
                // Keeps the server's directory (and page cache) at one file per variant.
                variant
                    .storage
                    .delete_checkpoint(checkpoint)
                    .await
                    .unwrap_or_else(|e| panic!("{}: the delete fails: {e}", variant.label));
            }
        }
        times
    });

    let (single_best, single_median) = rates(&times[0].upload);
    println!(
        "   {:<36} {:>21}   {:>19}   {:>21}",
        "", "upload MiB/s", "ratio to single", "restore MiB/s"
    );
    println!(
        "   {:<36} {:>10} {:>10}   {:>9} {:>9}   {:>10} {:>10}",
        "", "best", "median", "best", "median", "best", "median"
    );
    for (variant, times) in variants.iter().zip(&times) {
        let (best, median) = rates(&times.upload);
        let (restore_best, restore_median) = rates(&times.restore);
        println!(
            "   {:<36} {best:>10.0} {median:>10.0}   {:>9.2} {:>9.2}   {restore_best:>10.0} \
             {restore_median:>10.0}",
            variant.label,
            best / single_best,
            median / single_median,
        );
    }
    println!(
        "   (restore: one GET, verified against the handle's size and CRC32C, then compared \
         byte for byte untimed; load average {} at the end)",
        load()
    );
}
