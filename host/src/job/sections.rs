//! The settings tables: `[job]`, `[checkpointing]`, `[restart]`, `[state]`, `[network]`
//! and `[rest]`.

use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use toml_edit::Item;

use super::doc::{Doc, Seg, is_table};
use super::duration::{DurationText, parse_duration};
use super::error::JobError;
use super::raw::{
    PortText, RawCheckpointing, RawDebloat, RawExponentialDelay, RawFailureRate, RawFixedDelay,
    RawJob, RawNetwork, RawNoRestart, RawRest, RawS3, RawState, StrategyName, defaults, fields_of,
};
use super::size::{SizeText, parse_size};
use super::spec::{
    CheckpointMode, CheckpointingConfig, DebloatConfig, NetworkConfig, RestConfig, RestartStrategy,
    S3Settings, StateBackendKind, StateConfig, StorageUrl,
};

/// `[job]`, validated.
pub(crate) struct JobSettings {
    pub name: String,
    pub parallelism: u32,
    pub max_parallelism: u32,
    /// Whether nodes may be chained at all; each node can opt out on its own.
    pub chaining: bool,
}

/// The table `name`, checked for unknown keys and deserialized; its default when
/// the file has none.
fn section<T: DeserializeOwned + Default>(doc: &Doc<'_>, name: &str) -> Result<T, JobError> {
    let Some(item) = doc.root.get(name) else {
        return Ok(T::default());
    };
    let context = format!("[{name}]");
    require_table(doc, item, name)?;
    doc.check_keys(item, fields_of::<T>(), &context, &[])?;
    doc.deserialize(item, &context)
}

fn require_table(doc: &Doc<'_>, item: &Item, name: &str) -> Result<(), JobError> {
    if is_table(item) {
        return Ok(());
    }
    Err(JobError::Invalid {
        at: doc.at(&[Seg::Key(name)]),
        message: format!(
            "`{name}` must be a table. Write [{name}] on a line of its own and its keys below it."
        ),
    })
}

fn invalid(doc: &Doc<'_>, section: &str, key: &str, message: String) -> JobError {
    JobError::Invalid {
        at: doc.at(&[Seg::Key(section), Seg::Key(key)]),
        message,
    }
}

/// The duration at `section.key`, or `default` when it is not set.
fn duration(
    doc: &Doc<'_>,
    section: &str,
    key: &str,
    value: Option<&DurationText>,
    default: Duration,
) -> Result<Duration, JobError> {
    let Some(DurationText(text)) = value else {
        return Ok(default);
    };
    parse_duration(text).map_err(|reason| {
        invalid(
            doc,
            section,
            key,
            format!("invalid duration \"{text}\" for `{key}`: {reason}."),
        )
    })
}

pub(crate) fn job(doc: &Doc<'_>, file_stem: &str) -> Result<JobSettings, JobError> {
    let raw: RawJob = section(doc, "job")?;
    let name = raw.name.unwrap_or_else(|| file_stem.to_owned());
    if name.trim().is_empty() {
        return Err(invalid(
            doc,
            "job",
            "name",
            "the job's `name` is empty. Give it a name, e.g. name = \"word-count\", or leave it out to use the file's name.".to_owned(),
        ));
    }
    let parallelism = raw.parallelism.unwrap_or(defaults::PARALLELISM);
    if parallelism == 0 {
        return Err(invalid(
            doc,
            "job",
            "parallelism",
            "`parallelism` is 0, but every node needs at least one subtask. Set parallelism = 1 or more.".to_owned(),
        ));
    }
    let max_parallelism = raw.max_parallelism.unwrap_or(defaults::MAX_PARALLELISM);
    if !(1..=defaults::MAX_PARALLELISM_LIMIT).contains(&max_parallelism) {
        return Err(invalid(
            doc,
            "job",
            "max-parallelism",
            format!(
                "`max-parallelism` is {max_parallelism}, but it is the number of key groups and must be between 1 and {}. Set e.g. max-parallelism = 128.",
                defaults::MAX_PARALLELISM_LIMIT
            ),
        ));
    }
    Ok(JobSettings {
        name,
        parallelism,
        max_parallelism,
        chaining: raw.chaining.unwrap_or(true),
    })
}

pub(crate) fn checkpointing(doc: &Doc<'_>) -> Result<Option<CheckpointingConfig>, JobError> {
    const S: &str = "checkpointing";
    // The nested table's keys first, for the same message as a table's own.
    if let Some(item) = doc.root.get(S).and_then(|c| c.get("s3")) {
        doc.check_keys(item, fields_of::<RawS3>(), "[checkpointing.s3]", &[])?;
    }
    let raw: RawCheckpointing = section(doc, S)?;
    let interval = duration(doc, S, "interval", raw.interval.as_ref(), Duration::ZERO)?;
    let timeout = duration(
        doc,
        S,
        "timeout",
        raw.timeout.as_ref(),
        defaults::CHECKPOINT_TIMEOUT,
    )?;
    let min_pause = duration(
        doc,
        S,
        "min-pause",
        raw.min_pause.as_ref(),
        defaults::MIN_PAUSE,
    )?;
    let aligned_timeout = duration(
        doc,
        S,
        "aligned-timeout",
        raw.aligned_timeout.as_ref(),
        defaults::ALIGNED_TIMEOUT,
    )?;
    let min = defaults::MIN_CHECKPOINT_TIME;
    if raw.interval.is_some() && interval < min {
        return Err(invalid(
            doc,
            S,
            "interval",
            format!(
                "checkpoint `interval` {interval:?} is shorter than the minimum of {min:?}. Set interval = \"10ms\" or more, or remove it to turn checkpointing off."
            ),
        ));
    }
    if timeout < min {
        return Err(invalid(
            doc,
            S,
            "timeout",
            format!(
                "checkpoint `timeout` {timeout:?} is shorter than the minimum of {min:?}. Set timeout = \"10min\" or another value of at least 10ms."
            ),
        ));
    }
    let mode = raw.mode.unwrap_or(defaults::CHECKPOINT_MODE);
    let max_concurrent = raw.max_concurrent.unwrap_or(defaults::MAX_CONCURRENT);
    if max_concurrent == 0 {
        return Err(invalid(
            doc,
            S,
            "max-concurrent",
            "`max-concurrent` is 0, so no checkpoint could ever start. Set max-concurrent = 1 or more.".to_owned(),
        ));
    }
    let num_retained = raw.num_retained.unwrap_or(defaults::NUM_RETAINED);
    if num_retained == 0 {
        return Err(invalid(
            doc,
            S,
            "num-retained",
            "`num-retained` is 0, but the latest completed checkpoint must be kept to recover from. Set num-retained = 1 or more.".to_owned(),
        ));
    }
    let unaligned = raw.unaligned.unwrap_or(defaults::UNALIGNED);
    if unaligned && mode == CheckpointMode::AtLeastOnce {
        return Err(invalid(
            doc,
            S,
            "unaligned",
            "unaligned checkpoints need mode = \"exactly-once\": at-least-once never aligns barriers, so there is nothing to unalign. Set unaligned = false or mode = \"exactly-once\".".to_owned(),
        ));
    }
    if raw.aligned_timeout.is_some() && !unaligned {
        return Err(invalid(
            doc,
            S,
            "aligned-timeout",
            "`aligned-timeout` is how long a checkpoint stays aligned before it turns unaligned, so it needs unaligned = true. Set unaligned = true, or remove aligned-timeout.".to_owned(),
        ));
    }
    if unaligned && max_concurrent > 1 {
        return Err(invalid(
            doc,
            S,
            "unaligned",
            format!(
                "unaligned checkpoints allow only one checkpoint at a time (as in Flink), but max-concurrent is {max_concurrent}. Set max-concurrent = 1 or unaligned = false."
            ),
        ));
    }
    let dir = match &raw.dir {
        Some(text) => storage_url(text, doc.dir).map_err(|reason| {
            invalid(
                doc,
                S,
                "dir",
                format!("invalid checkpoint `dir` \"{text}\": {reason}."),
            )
        })?,
        None => StorageUrl::File(doc.resolve(defaults::CHECKPOINT_DIR)),
    };
    let savepoint_dir = match &raw.savepoint_dir {
        Some(text) => Some(storage_url(text, doc.dir).map_err(|reason| {
            invalid(
                doc,
                S,
                "savepoint-dir",
                format!("invalid `savepoint-dir` \"{text}\": {reason}."),
            )
        })?),
        None => None,
    };
    let has_s3_table = raw.s3.is_some();
    let s3 = s3_settings(doc, raw.s3)?;
    if has_s3_table && matches!(dir, StorageUrl::File(_)) {
        return Err(JobError::Invalid {
            at: doc.at(&[Seg::Key("checkpointing"), Seg::Key("s3")]),
            message: "`[checkpointing.s3]` only applies to an s3:// checkpoint `dir`, and this job checkpoints to a local directory. Remove the table, or set dir = \"s3://<bucket>/<prefix>\".".to_owned(),
        });
    }
    if raw.interval.is_none() {
        return Ok(None);
    }
    Ok(Some(CheckpointingConfig {
        interval,
        mode,
        timeout,
        min_pause,
        max_concurrent,
        tolerable_failed: raw.tolerable_failed.unwrap_or(defaults::TOLERABLE_FAILED),
        unaligned,
        aligned_timeout,
        recover_without_channel_state: raw.recover_without_channel_state,
        retention: raw.retention.unwrap_or(defaults::RETENTION),
        num_retained,
        dir,
        savepoint_dir,
        s3,
    }))
}

/// `[checkpointing.s3]`.
fn s3_settings(doc: &Doc<'_>, raw: Option<RawS3>) -> Result<S3Settings, JobError> {
    let Some(raw) = raw else {
        return Ok(S3Settings::default());
    };
    let at = |key: &str| doc.at(&[Seg::Key("checkpointing"), Seg::Key("s3"), Seg::Key(key)]);
    if raw.upload_concurrency == Some(0) {
        return Err(JobError::Invalid {
            at: at("upload-concurrency"),
            message: "`upload-concurrency` is 0, so nothing would be uploaded. Set it to 1 or more, e.g. upload-concurrency = 4.".to_owned(),
        });
    }
    // S3 refuses parts below 5 MiB (but the last).
    const MIN_PART: u64 = 5 << 20;
    let part_size = match &raw.part_size {
        None => None,
        Some(SizeText(text)) => {
            let size = parse_size(text).map_err(|reason| JobError::Invalid {
                at: at("part-size"),
                message: format!("invalid `part-size` \"{text}\": {reason}."),
            })?;
            if size < MIN_PART {
                return Err(JobError::Invalid {
                    at: at("part-size"),
                    message: "`part-size` is below S3's minimum part of 5 MiB. Set it to at least 5MiB, e.g. part-size = \"8MiB\".".to_owned(),
                });
            }
            Some(size)
        }
    };
    // Renewed three times per timeout: below a second, one slow request would lose it.
    const MIN_LEASE: Duration = Duration::from_secs(1);
    let lease_timeout = match &raw.lease_timeout {
        None => None,
        Some(DurationText(text)) => {
            let timeout = parse_duration(text).map_err(|reason| JobError::Invalid {
                at: at("lease-timeout"),
                message: format!("invalid duration \"{text}\" for `lease-timeout`: {reason}."),
            })?;
            if timeout < MIN_LEASE {
                return Err(JobError::Invalid {
                    at: at("lease-timeout"),
                    message: "`lease-timeout` is below 1s: the lease is renewed three times per timeout, and one slow request would lose it. Set e.g. lease-timeout = \"15s\".".to_owned(),
                });
            }
            Some(timeout)
        }
    };
    Ok(S3Settings {
        endpoint: raw.endpoint,
        region: raw.region,
        force_path_style: raw.force_path_style.unwrap_or(false),
        part_size,
        upload_concurrency: raw.upload_concurrency,
        lease_timeout,
    })
}

/// Reads a checkpoint directory: `file:///abs`, `s3://bucket/prefix`, or a plain
/// path relative to the job file's directory `dir`.
pub fn storage_url(text: &str, dir: &Path) -> Result<StorageUrl, String> {
    if text.trim().is_empty() {
        return Err("it is empty. Write a path, a file:// URL or an s3:// URL".to_owned());
    }
    if let Some(rest) = text.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        if !valid_bucket {
            return Err(format!(
                "\"{bucket}\" is not an S3 bucket name (3 to 63 lowercase letters, digits, `-` or `.`). Write s3://<bucket>/<prefix>, e.g. s3://my-bucket/checkpoints"
            ));
        }
        return Ok(StorageUrl::S3 {
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
        });
    }
    if let Some(rest) = text.strip_prefix("file:") {
        let path = rest.strip_prefix("//").unwrap_or(rest);
        if !path.starts_with('/') {
            return Err("a file URL needs an absolute path, e.g. file:///var/lib/weir/checkpoints (three slashes). For a path relative to the job file, write the plain path".to_owned());
        }
        return Ok(StorageUrl::File(super::doc::normalize(Path::new(path))));
    }
    if let Some((scheme, _)) = text.split_once("://") {
        return Err(format!(
            "the scheme \"{scheme}\" is not supported. Use file://, s3:// or a plain path"
        ));
    }
    Ok(StorageUrl::File(super::doc::normalize(&dir.join(text))))
}

/// `[restart]`. Without the table, Flink's defaults: exponential delay when
/// checkpointing is on, no restart when it is off (a restart would start over from the
/// beginning of the input).
pub(crate) fn restart(doc: &Doc<'_>, checkpointing: bool) -> Result<RestartStrategy, JobError> {
    const S: &str = "restart";
    let Some(item) = doc.root.get(S) else {
        if !checkpointing {
            return Ok(RestartStrategy::None);
        }
        return exponential_delay(doc, &RawExponentialDelay::default());
    };
    require_table(doc, item, S)?;
    let strategy = match item.get("strategy") {
        Some(value) => doc.deserialize_value::<StrategyName>(value, "strategy", "[restart]")?,
        None => StrategyName::DEFAULT,
    };
    let table = format!("[restart] for strategy \"{}\"", strategy.name());
    let others: Vec<(String, &'static [&'static str])> = StrategyName::ALL
        .into_iter()
        .filter(|other| *other != strategy)
        .map(|other| (format!("strategy \"{}\"", other.name()), other.keys()))
        .collect();
    doc.check_keys(item, strategy.keys(), &table, &others)?;
    match strategy {
        StrategyName::None => {
            doc.deserialize::<RawNoRestart>(item, &table)?;
            Ok(RestartStrategy::None)
        }
        StrategyName::FixedDelay => {
            let raw: RawFixedDelay = doc.deserialize(item, &table)?;
            Ok(RestartStrategy::FixedDelay {
                attempts: raw.attempts.unwrap_or(defaults::FIXED_DELAY_ATTEMPTS),
                delay: duration(doc, S, "delay", raw.delay.as_ref(), defaults::FIXED_DELAY)?,
            })
        }
        StrategyName::ExponentialDelay => {
            exponential_delay(doc, &doc.deserialize::<RawExponentialDelay>(item, &table)?)
        }
        StrategyName::FailureRate => {
            let raw: RawFailureRate = doc.deserialize(item, &table)?;
            let max_failures = raw
                .max_failures_per_interval
                .unwrap_or(defaults::MAX_FAILURES_PER_INTERVAL);
            if max_failures == 0 {
                return Err(invalid(
                    doc,
                    S,
                    "max-failures-per-interval",
                    "`max-failures-per-interval` is 0, so the first failure would fail the job. Set it to 1 or more, or use strategy = \"none\".".to_owned(),
                ));
            }
            let interval = duration(
                doc,
                S,
                "failure-rate-interval",
                raw.failure_rate_interval.as_ref(),
                defaults::FAILURE_RATE_INTERVAL,
            )?;
            if interval.is_zero() {
                return Err(invalid(
                    doc,
                    S,
                    "failure-rate-interval",
                    "`failure-rate-interval` is 0, so no failure rate can be measured. Set e.g. failure-rate-interval = \"1min\".".to_owned(),
                ));
            }
            Ok(RestartStrategy::FailureRate {
                max_failures,
                interval,
                delay: duration(
                    doc,
                    S,
                    "delay",
                    raw.delay.as_ref(),
                    defaults::FAILURE_RATE_DELAY,
                )?,
            })
        }
    }
}

fn exponential_delay(
    doc: &Doc<'_>,
    raw: &RawExponentialDelay,
) -> Result<RestartStrategy, JobError> {
    const S: &str = "restart";
    let initial = duration(
        doc,
        S,
        "initial-backoff",
        raw.initial_backoff.as_ref(),
        defaults::INITIAL_BACKOFF,
    )?;
    let max = duration(
        doc,
        S,
        "max-backoff",
        raw.max_backoff.as_ref(),
        defaults::MAX_BACKOFF,
    )?;
    let reset_threshold = duration(
        doc,
        S,
        "reset-backoff-threshold",
        raw.reset_backoff_threshold.as_ref(),
        defaults::RESET_BACKOFF_THRESHOLD,
    )?;
    if initial.is_zero() {
        return Err(invalid(
            doc,
            S,
            "initial-backoff",
            "`initial-backoff` is 0, so a failing job would restart in a tight loop. Set e.g. initial-backoff = \"1s\".".to_owned(),
        ));
    }
    if max < initial {
        return Err(invalid(
            doc,
            S,
            "max-backoff",
            format!(
                "`max-backoff` {max:?} is shorter than `initial-backoff` {initial:?}. Raise max-backoff or lower initial-backoff."
            ),
        ));
    }
    let multiplier = raw
        .backoff_multiplier
        .unwrap_or(defaults::BACKOFF_MULTIPLIER);
    if !(multiplier.is_finite() && multiplier >= 1.0) {
        return Err(invalid(
            doc,
            S,
            "backoff-multiplier",
            format!(
                "`backoff-multiplier` is {multiplier}, but the backoff must not shrink. Set it to 1.0 or more, e.g. backoff-multiplier = 2.0."
            ),
        ));
    }
    let jitter = raw.jitter_factor.unwrap_or(defaults::JITTER_FACTOR);
    if !(0.0..=1.0).contains(&jitter) {
        return Err(invalid(
            doc,
            S,
            "jitter-factor",
            format!(
                "`jitter-factor` is {jitter}, but it is a fraction of the backoff. Set it between 0.0 and 1.0, e.g. jitter-factor = 0.1."
            ),
        ));
    }
    if reset_threshold.is_zero() {
        return Err(invalid(
            doc,
            S,
            "reset-backoff-threshold",
            "`reset-backoff-threshold` is 0. Set e.g. reset-backoff-threshold = \"1h\".".to_owned(),
        ));
    }
    if raw.attempts == Some(0) {
        return Err(invalid(
            doc,
            S,
            "attempts",
            "`attempts` is 0. Set it to 1 or more, leave it out for unlimited attempts, or use strategy = \"none\".".to_owned(),
        ));
    }
    Ok(RestartStrategy::ExponentialDelay {
        initial,
        max,
        multiplier,
        jitter,
        reset_threshold,
        attempts: raw.attempts,
    })
}

pub(crate) fn state(doc: &Doc<'_>) -> Result<StateConfig, JobError> {
    let raw: RawState = section(doc, "state")?;
    let backend = raw.backend.unwrap_or(defaults::STATE_BACKEND);
    let incremental = match (backend, raw.incremental) {
        (StateBackendKind::Heap, Some(true)) => {
            return Err(invalid(
                doc,
                "state",
                "incremental",
                "incremental checkpoints need backend = \"rocksdb\"; the heap backend always writes its whole state. Remove `incremental` or set backend = \"rocksdb\".".to_owned(),
            ));
        }
        (StateBackendKind::Heap, _) => false,
        (StateBackendKind::RocksDb, set) => set.unwrap_or(defaults::INCREMENTAL_ROCKSDB),
    };
    let heap_limit = match (&raw.heap_limit, backend) {
        (None, _) => defaults::HEAP_LIMIT,
        (Some(_), StateBackendKind::RocksDb) => {
            return Err(invalid(
                doc,
                "state",
                "heap-limit",
                "`heap-limit` bounds the heap backend, and this job uses rocksdb, which keeps state on disk. Remove `heap-limit` or set backend = \"heap\".".to_owned(),
            ));
        }
        (Some(SizeText(text)), StateBackendKind::Heap) => match parse_size(text) {
            Ok(0) | Err(_) => {
                return Err(invalid(
                    doc,
                    "state",
                    "heap-limit",
                    format!(
                        "invalid `heap-limit` \"{text}\": give a size above zero, e.g. heap-limit = \"2GiB\"."
                    ),
                ));
            }
            Ok(size) => size,
        },
    };
    if raw.timer_limit == Some(0) {
        return Err(invalid(
            doc,
            "state",
            "timer-limit",
            "`timer-limit` is 0, so no operator could set a timer. Set it to 1 or more, e.g. timer-limit = 1000000.".to_owned(),
        ));
    }
    Ok(StateConfig {
        backend,
        incremental,
        dir: raw.dir.as_deref().map(|dir| doc.resolve(dir)),
        heap_limit,
        timer_limit: raw.timer_limit.unwrap_or(defaults::TIMER_LIMIT),
    })
}

pub(crate) fn network(doc: &Doc<'_>) -> Result<NetworkConfig, JobError> {
    const S: &str = "network";
    if let Some(item) = doc.root.get(S).and_then(|c| c.get("buffer-debloat")) {
        doc.check_keys(
            item,
            fields_of::<RawDebloat>(),
            "[network.buffer-debloat]",
            &[],
        )?;
    }
    let raw: RawNetwork = section(doc, S)?;
    let channel_capacity = raw.channel_capacity.unwrap_or(defaults::CHANNEL_CAPACITY);
    if !(1..=defaults::CHANNEL_CAPACITY_LIMIT).contains(&channel_capacity) {
        return Err(invalid(
            doc,
            S,
            "channel-capacity",
            format!(
                "`channel-capacity` is {channel_capacity}, but a channel holds between 1 and {} batches. Set e.g. channel-capacity = 4; buffer-debloat bounds channels by time instead.",
                defaults::CHANNEL_CAPACITY_LIMIT
            ),
        ));
    }
    let local_workers = raw.local_workers.unwrap_or(1);
    if !(1..=defaults::LOCAL_WORKERS_LIMIT).contains(&local_workers) {
        return Err(invalid(
            doc,
            S,
            "local-workers",
            format!(
                "`local-workers` is {local_workers}, but this process runs between 1 and {} workers. Set e.g. local-workers = 2, or remove it to keep every channel in memory.",
                defaults::LOCAL_WORKERS_LIMIT
            ),
        ));
    }
    let Some(raw) = raw.buffer_debloat else {
        return Ok(NetworkConfig {
            channel_capacity,
            debloat: None,
            local_workers,
        });
    };
    let at = |key: &str| doc.at(&[Seg::Key(S), Seg::Key("buffer-debloat"), Seg::Key(key)]);
    let setting = |key: &str, value: Option<&DurationText>, default: Duration, example: &str| {
        let Some(DurationText(text)) = value else {
            return Ok(default);
        };
        match parse_duration(text) {
            Ok(d) if !d.is_zero() => Ok(d),
            Ok(_) => Err(JobError::Invalid {
                at: at(key),
                message: format!(
                    "`{key}` is zero. Set a positive duration, e.g. {key} = \"{example}\"."
                ),
            }),
            Err(reason) => Err(JobError::Invalid {
                at: at(key),
                message: format!(
                    "invalid duration \"{text}\" for `{key}` in [network.buffer-debloat]: {reason}."
                ),
            }),
        }
    };
    let target = setting(
        "target",
        raw.target.as_ref(),
        defaults::DEBLOAT_TARGET,
        "1s",
    )?;
    let period = setting(
        "period",
        raw.period.as_ref(),
        defaults::DEBLOAT_PERIOD,
        "200ms",
    )?;
    if raw.enabled != Some(true)
        && let Some(key) = [
            ("target", raw.target.is_some()),
            ("period", raw.period.is_some()),
        ]
        .into_iter()
        .find_map(|(key, set)| set.then_some(key))
    {
        return Err(JobError::Invalid {
            at: at(key),
            message: format!(
                "`{key}` only applies when buffer debloating is on. Set enabled = true in [network.buffer-debloat], or remove {key}."
            ),
        });
    }
    Ok(NetworkConfig {
        channel_capacity,
        debloat: (raw.enabled == Some(true)).then_some(DebloatConfig { target, period }),
        local_workers,
    })
}

pub(crate) fn rest(doc: &Doc<'_>) -> Result<RestConfig, JobError> {
    const S: &str = "rest";
    let raw: RawRest = section(doc, S)?;
    let address = match &raw.address {
        None => defaults::REST_ADDRESS,
        Some(text) => text.parse().map_err(|_| {
            invalid(
                doc,
                S,
                "address",
                format!(
                    "`address` \"{text}\" is not an IP address. Set e.g. address = \"127.0.0.1\" (this machine only) or address = \"0.0.0.0\" (every interface)."
                ),
            )
        })?,
    };
    let ports = match &raw.port {
        None => defaults::REST_PORTS,
        Some(PortText(text)) => parse_ports(text).ok_or_else(|| {
            invalid(
                doc,
                S,
                "port",
                format!(
                    "`port` \"{text}\" is neither a port nor a range of ports. Set e.g. port = 8081, port = \"8081-8090\" (the first free one) or port = 0 (any free port)."
                ),
            )
        })?,
    };
    let token = match raw.token {
        Some(token) if token.trim().is_empty() => {
            return Err(invalid(
                doc,
                S,
                "token",
                "`token` is empty, which would let anyone change the job. Set a long random token, or remove the key.".to_owned(),
            ));
        }
        token => token,
    };
    Ok(RestConfig {
        address,
        ports,
        token,
    })
}

/// `8081`, `0` or `8081-8090` as the first and last port.
fn parse_ports(text: &str) -> Option<(u16, u16)> {
    let (first, last) = match text.split_once('-') {
        Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
        None => {
            let port = text.trim().parse().ok()?;
            (port, port)
        }
    };
    (first <= last && (first > 0 || last == 0)).then_some((first, last))
}
