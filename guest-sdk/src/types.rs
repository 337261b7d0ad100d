//! The plain data the host and an operator exchange, and the operator's error type.

use std::fmt;

use serde::de::DeserializeOwned;

use crate::__bindings::weir::operator::types as wit;
use crate::RecordRef;
use crate::batch::item;

/// Identifies one checkpoint of a job. Ids grow monotonically, across restarts too.
///
/// ```
/// let first: weir_sdk::CheckpointId = 1;
/// assert!(first < 2);
/// ```
pub type CheckpointId = u64;

/// The result type of every fallible call in this crate and of every [`crate::Operator`]
/// method.
///
/// ```
/// fn parse_count(text: &str) -> weir_sdk::Result<u64> {
///     text.parse().map_err(|_| weir_sdk::Error::new(format!("`{text}` is not a count")))
/// }
/// assert_eq!(parse_count("12"), Ok(12));
/// assert!(parse_count("twelve").is_err());
/// ```
pub type Result<T, E = Error> = core::result::Result<T, E>;

/// One element of a stream.
///
/// ```
/// use weir_sdk::Record;
///
/// let record = Record::new("hello").with_key("greeting").with_timestamp(1_700_000_000_000);
/// assert_eq!(record.value, b"hello");
/// assert_eq!(record.key.as_deref(), Some(&b"greeting"[..]));
/// assert_eq!(record.timestamp, Some(1_700_000_000_000));
/// ```
///
/// An owned record is for building records at leisure and for tests; the data path
/// reads [`crate::RecordRef`] views of a [`crate::Batch`] and emits with
/// [`crate::Output::emit`], which takes `&Record` too.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Record {
    /// The partitioning key. Operators downstream of a `key-by` edge see every record of
    /// a key on the same subtask; keyed state is addressed by this key.
    pub key: Option<Vec<u8>>,
    /// The payload. Weir never looks inside it.
    pub value: Vec<u8>,
    /// Event time in milliseconds since the Unix epoch, if the record has one.
    pub timestamp: Option<i64>,
}

impl Record {
    /// A record with this value, no key and no timestamp.
    ///
    /// ```
    /// let record = weir_sdk::Record::new(vec![1, 2, 3]);
    /// assert_eq!(record.value, [1, 2, 3]);
    /// assert_eq!(record.key, None);
    /// ```
    pub fn new(value: impl Into<Vec<u8>>) -> Self {
        Self {
            key: None,
            value: value.into(),
            timestamp: None,
        }
    }

    /// The record with its key set to `key`.
    ///
    /// ```
    /// let record = weir_sdk::Record::new("1").with_key("river");
    /// assert_eq!(record.key.as_deref(), Some(&b"river"[..]));
    /// ```
    #[must_use]
    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// The record with its event time set to `timestamp` (milliseconds since the Unix
    /// epoch).
    ///
    /// ```
    /// let record = weir_sdk::Record::new("x").with_timestamp(42);
    /// assert_eq!(record.timestamp, Some(42));
    /// ```
    #[must_use]
    pub fn with_timestamp(mut self, timestamp: i64) -> Self {
        self.timestamp = Some(timestamp);
        self
    }

    /// The record as a view.
    ///
    /// ```
    /// let record = weir_sdk::Record::new("x").with_key("k");
    /// assert_eq!(record.as_ref().key, Some(&b"k"[..]));
    /// ```
    pub fn as_ref(&self) -> RecordRef<'_> {
        RecordRef {
            key: self.key.as_deref(),
            value: &self.value,
            timestamp: self.timestamp,
        }
    }
}

impl<'a> From<&'a Record> for RecordRef<'a> {
    fn from(record: &'a Record) -> Self {
        record.as_ref()
    }
}

impl From<RecordRef<'_>> for Record {
    fn from(record: RecordRef<'_>) -> Self {
        Self {
            key: record.key.map(<[u8]>::to_vec),
            value: record.value.to_vec(),
            timestamp: record.timestamp,
        }
    }
}

/// What the host tells an operator instance when it opens it.
///
/// ```
/// let ctx = weir_sdk::Context {
///     operator_id: "count".into(),
///     config: String::new(),
///     subtask_index: 0,
///     parallelism: 2,
///     max_parallelism: 128,
///     restored: false,
/// };
/// assert!(ctx.subtask_index < ctx.parallelism);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context {
    /// The id of the operator in the job file.
    pub operator_id: String,
    /// The operator's `config` from the job file: a string as written, or a table
    /// rendered as JSON. Empty when the job file sets none.
    pub config: String,
    /// Which parallel instance this is, from 0 to `parallelism - 1`.
    pub subtask_index: u32,
    /// How many parallel instances the operator has.
    pub parallelism: u32,
    /// The number of key groups of the job (Flink's max parallelism).
    pub max_parallelism: u32,
    /// True when the instance is restored from a checkpoint; [`crate::Operator::restore_state`]
    /// is called right after [`crate::Operator::open`] in that case.
    pub restored: bool,
}

impl Context {
    /// Parses [`Context::config`] as JSON into `T`. An empty config reads as the empty
    /// object `{}`, so a struct whose fields all have defaults parses from it.
    ///
    /// ```
    /// #[derive(serde::Deserialize)]
    /// #[serde(rename_all = "kebab-case", deny_unknown_fields)]
    /// struct Config {
    ///     #[serde(default)]
    ///     min_length: usize,
    /// }
    ///
    /// let mut ctx = weir_sdk::Context { config: r#"{"min-length": 3}"#.into(), ..Default::default() };
    /// assert_eq!(ctx.config_json::<Config>().unwrap().min_length, 3);
    /// ctx.config.clear();
    /// assert_eq!(ctx.config_json::<Config>().unwrap().min_length, 0);
    /// ctx.config = r#"{"max-length": 3}"#.into();
    /// assert!(ctx.config_json::<Config>().is_err());
    /// ```
    pub fn config_json<T: DeserializeOwned>(&self) -> Result<T> {
        let text = if self.config.trim().is_empty() {
            "{}"
        } else {
            &self.config
        };
        serde_json::from_str(text).map_err(|e| {
            Error::new(format!(
                "the config of operator `{}` is not valid: {e}",
                self.operator_id
            ))
        })
    }
}

impl From<wit::Context> for Context {
    fn from(ctx: wit::Context) -> Self {
        Self {
            operator_id: ctx.operator_id,
            config: ctx.config,
            subtask_index: ctx.subtask_index,
            parallelism: ctx.parallelism,
            max_parallelism: ctx.max_parallelism,
            restored: ctx.restored,
        }
    }
}

/// Which clock a timer is set on.
///
/// ```
/// use weir_sdk::TimeDomain;
/// assert_ne!(TimeDomain::EventTime, TimeDomain::ProcessingTime);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimeDomain {
    /// Fires when the watermark passes the timer's time.
    EventTime,
    /// Fires when the host's wall clock passes the timer's time.
    ProcessingTime,
}

impl From<wit::TimeDomain> for TimeDomain {
    fn from(domain: wit::TimeDomain) -> Self {
        match domain {
            wit::TimeDomain::EventTime => Self::EventTime,
            wit::TimeDomain::ProcessingTime => Self::ProcessingTime,
        }
    }
}

impl From<TimeDomain> for wit::TimeDomain {
    fn from(domain: TimeDomain) -> Self {
        match domain {
            TimeDomain::EventTime => Self::EventTime,
            TimeDomain::ProcessingTime => Self::ProcessingTime,
        }
    }
}

/// Timers of one clock that fired, as [`crate::Operator::on_timer`] gets them, ordered
/// by time. Timers are keyed: each belongs to the key it was set for.
///
/// ```
/// use weir_sdk::{TimeDomain, Timers};
///
/// let fired = Timers::new(TimeDomain::EventTime, [(&b"river"[..], 60_000)]);
/// for timer in fired.iter() {
///     assert_eq!((timer.key, timer.timestamp), (&b"river"[..], 60_000));
/// }
/// assert_eq!(fired.domain(), TimeDomain::EventTime);
/// ```
#[derive(Debug)]
pub struct Timers {
    raw: wit::FiredTimers,
}

/// One timer that fired, borrowed from [`Timers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Timer<'a> {
    /// The key the timer was registered for.
    pub key: &'a [u8],
    /// The time the timer was registered for, in milliseconds.
    pub timestamp: i64,
    /// The clock the timer was set on.
    pub domain: TimeDomain,
}

impl Timers {
    /// Timers of `domain` for these keys and times, for driving an operator in a native
    /// unit test.
    pub fn new<'a>(domain: TimeDomain, timers: impl IntoIterator<Item = (&'a [u8], i64)>) -> Self {
        let mut keys = crate::batch::empty_blobs();
        let mut timestamps = Vec::new();
        for (key, timestamp) in timers {
            crate::batch::push(&mut keys, key);
            timestamps.push(timestamp);
        }
        Self {
            raw: wit::FiredTimers {
                domain: domain.into(),
                keys,
                timestamps,
            },
        }
    }

    pub(crate) fn from_raw(raw: wit::FiredTimers) -> core::result::Result<Self, String> {
        if raw.keys.ends.len() == raw.timestamps.len() && crate::batch::ends_fit(&raw.keys) {
            Ok(Self { raw })
        } else {
            Err("the host passed malformed timers".to_owned())
        }
    }

    /// The clock they were set on.
    pub fn domain(&self) -> TimeDomain {
        self.raw.domain.into()
    }

    /// How many fired.
    pub fn len(&self) -> usize {
        self.raw.timestamps.len()
    }

    /// Whether none did.
    pub fn is_empty(&self) -> bool {
        self.raw.timestamps.is_empty()
    }

    /// The timers in time order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Timer<'_>> + '_ {
        let domain = self.domain();
        (0..self.len()).map(move |i| Timer {
            key: item(&self.raw.keys, i),
            timestamp: self.raw.timestamps[i],
            domain,
        })
    }
}

/// An error an operator reports to the host: a sentence for the user.
///
/// Returning it fails the running attempt of the job, which then restarts according to
/// its restart strategy. Unlike a panic (a trap), it leaves the instance usable for
/// [`crate::Operator::close`].
///
/// ```
/// use weir_sdk::Error;
///
/// let from_str: Error = "the input is not UTF-8".into();
/// let built = Error::new(format!("line {} is not UTF-8", 3));
/// assert_eq!(from_str.message(), "the input is not UTF-8");
/// assert_eq!(built.to_string(), "line 3 is not UTF-8");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    message: String,
}

impl Error {
    /// An error with this message. Say what went wrong and, where you can, what the
    /// user can do about it.
    ///
    /// ```
    /// let error = weir_sdk::Error::new("counter needs keyed input");
    /// assert_eq!(error.message(), "counter needs keyed input");
    /// ```
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// The message of the error.
    ///
    /// ```
    /// assert_eq!(weir_sdk::Error::from("oops").message(), "oops");
    /// ```
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Self { message }
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Self {
        Self::new(message)
    }
}

impl From<Error> for wit::Error {
    fn from(error: Error) -> Self {
        Self {
            message: error.message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_config_parses_as_an_empty_object() {
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct Config {
            #[serde(default)]
            n: u32,
        }
        let ctx = Context {
            config: "  ".into(),
            ..Context::default()
        };
        assert_eq!(ctx.config_json::<Config>(), Ok(Config { n: 0 }));
    }

    #[test]
    fn a_bad_config_names_the_operator() {
        let ctx = Context {
            operator_id: "count".into(),
            config: "{".into(),
            ..Context::default()
        };
        let error = ctx.config_json::<serde::de::IgnoredAny>().err();
        assert!(error.is_some_and(|e| e.message().contains("operator `count`")));
    }
}
