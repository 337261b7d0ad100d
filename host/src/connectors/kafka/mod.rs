//! The `kafka` source and sink, through librdkafka.
//!
//! # Source
//! The partitions of the topics (named, or matched by a pattern, when the job starts)
//! are assigned to subtasks deterministically, as Flink's `KafkaSourceEnumerator`:
//! topic `t` starts at subtask `hash(t) mod p` and its partition `k` goes `k` subtasks
//! further. Each subtask `assign`s its partitions itself; the consumer group takes no
//! part in the assignment. The offsets live in Weir's checkpoint (the next offset of
//! every partition, and with `bounded` the offset to stop at), so a restore resumes
//! exactly where the checkpoint's barrier was; on checkpoint completion they are also
//! committed to the group, for monitoring only.
//!
//! # Sink
//! `delivery = "at-least-once"` (the default) produces with `acks=all` and flushes in
//! the synchronous phase of every checkpoint: a checkpoint completes only
//! once everything before its barrier is acknowledged by the broker. `"none"` does not
//! wait. `"exactly-once"` (a transaction per checkpoint) is refused at start: see
//! [`protocol`] for what the broker must support and the README for what is missing.
//!
//! # Layout
//! - `mod.rs`: the configuration of both kinds, validated.
//! - `source.rs`: the source's subtask (assignment, offsets, bounded reads, state).
//! - `sink.rs`: the sink's subtask.
//! - `protocol.rs`: the probe of what requests a broker supports (ApiVersions).

mod protocol;
mod sink;
mod source;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;
use serde::Deserialize;

use crate::connectors::{SinkConnector, SinkContext, SourceConnector};
use crate::job::{DurationText, JobError, Scope, StringList};
use crate::runtime::executor::{OperatorFactory, SourceFactory};
use crate::runtime::{Operator, Source};

pub use sink::KafkaSink;
pub use source::KafkaSource;

/// How long a metadata or offsets request to the broker may take at start.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Client properties Weir sets itself, which the job file may not pass through, and
/// what to do instead.
const OWNED_PROPERTIES: &[(&str, &str)] = &[
    ("bootstrap.servers", "set `bootstrap-servers`"),
    ("group.id", "set `group-id`"),
    (
        "enable.auto.commit",
        "offsets live in Weir's checkpoints and go to the group when a checkpoint completes",
    ),
    (
        "enable.auto.offset.store",
        "offsets live in Weir's checkpoints and go to the group when a checkpoint completes",
    ),
    (
        "transactional.id",
        "set `delivery` and `transactional-id-prefix`",
    ),
];

/// `[[source]]` with `kind = "kafka"`: its own keys.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct KafkaSourceConfig {
    bootstrap_servers: Option<String>,
    topic: Option<StringList>,
    topic_pattern: Option<String>,
    group_id: Option<String>,
    starting_offsets: Option<StartingOffsetsName>,
    starting_timestamp: Option<i64>,
    bounded: Option<bool>,
    properties: Option<BTreeMap<String, PropertyValue>>,
}

/// `starting-offsets` as written.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum StartingOffsetsName {
    Earliest,
    Latest,
    Committed,
    Timestamp,
}

/// Where a partition without a restored offset starts (Flink's `OffsetsInitializer`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartingOffsets {
    /// The first offset still in the log.
    Earliest,
    /// The end of the log when the job starts: only what is written later.
    Latest,
    /// The group's committed offset; earliest where the group has none.
    Committed,
    /// The first record with a timestamp at or after this many ms since the epoch.
    Timestamp(i64),
}

/// Which topics a source reads.
#[derive(Clone, Debug)]
pub enum TopicSelector {
    /// These topics; each must exist when the job starts.
    Names(Vec<String>),
    /// Every topic whose whole name matches, when the job starts.
    Pattern(regex::Regex),
}

impl PartialEq for TopicSelector {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Names(a), Self::Names(b)) => a == b,
            (Self::Pattern(a), Self::Pattern(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl TopicSelector {
    fn describe(&self) -> String {
        match self {
            Self::Names(names) if names.len() == 1 => format!("topic \"{}\"", names[0]),
            Self::Names(names) => format!("topics \"{}\"", names.join("\", \"")),
            Self::Pattern(pattern) => format!("the topics matching \"{}\"", pattern.as_str()),
        }
    }
}

/// A Kafka source's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct KafkaSourceSpec {
    /// `bootstrap-servers`: `host:port[,host:port...]`.
    pub bootstrap_servers: String,
    /// `topic` or `topic-pattern`.
    pub topics: TopicSelector,
    /// `group-id`: the group that offsets are committed to on checkpoint completion.
    pub group_id: Option<String>,
    /// `starting-offsets` (with `starting-timestamp`).
    pub starting_offsets: StartingOffsets,
    /// `bounded`: stop at the end offsets found when the job first started.
    pub bounded: bool,
    /// `properties`: passed to librdkafka as they are.
    pub properties: BTreeMap<String, String>,
}

impl KafkaSourceSpec {
    /// The consumer's client configuration.
    fn client_config(&self) -> ClientConfig {
        let mut config = client_config(&self.bootstrap_servers, &self.properties);
        config
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true");
        config.set(
            "group.id",
            self.group_id.as_deref().unwrap_or("weir-unused-group"),
        );
        config
    }
}

impl SourceConnector for KafkaSourceSpec {
    const KIND: &'static str = "kafka";
    const TIMESTAMPS: bool = true;
    type Config = KafkaSourceConfig;

    fn validate(config: KafkaSourceConfig, scope: &Scope<'_>) -> Result<Self, JobError> {
        let bootstrap_servers = bootstrap_servers(config.bootstrap_servers, scope)?;
        let topics = match (config.topic, config.topic_pattern) {
            (Some(StringList(names)), None) if !names.is_empty() => TopicSelector::Names(names),
            (None, Some(pattern)) => {
                let anchored = format!("^(?:{pattern})$");
                let regex = regex::Regex::new(&anchored).map_err(|e| {
                    scope.invalid(
                        "topic-pattern",
                        format!(
                            "{}: `topic-pattern` \"{pattern}\" is not a regular expression: {e}",
                            scope.label()
                        ),
                    )
                })?;
                TopicSelector::Pattern(regex)
            }
            (Some(_), Some(_)) => {
                return Err(scope.invalid(
                    "topic-pattern",
                    format!(
                        "{} sets both `topic` and `topic-pattern`. Keep one: topics by name, or every topic whose name matches the pattern.",
                        scope.label()
                    ),
                ));
            }
            _ => {
                return Err(scope.invalid(
                    "topic",
                    format!(
                        "{} has no topic. Set topic = \"events\", topic = [\"a\", \"b\"] or topic-pattern = \"events-.*\".",
                        scope.table()
                    ),
                ));
            }
        };
        let starting_offsets = match (config.starting_offsets, config.starting_timestamp) {
            (None | Some(StartingOffsetsName::Earliest), None) => StartingOffsets::Earliest,
            (Some(StartingOffsetsName::Latest), None) => StartingOffsets::Latest,
            (Some(StartingOffsetsName::Committed), None) => StartingOffsets::Committed,
            (Some(StartingOffsetsName::Timestamp), Some(ms)) => StartingOffsets::Timestamp(ms),
            (Some(StartingOffsetsName::Timestamp), None) => {
                return Err(scope.invalid(
                    "starting-offsets",
                    format!(
                        "{}: starting-offsets = \"timestamp\" needs `starting-timestamp`, in milliseconds since the epoch, e.g. starting-timestamp = 1767225600000.",
                        scope.label()
                    ),
                ));
            }
            (_, Some(_)) => {
                return Err(scope.invalid(
                    "starting-timestamp",
                    format!(
                        "{}: `starting-timestamp` is used only with starting-offsets = \"timestamp\". Set that, or remove `starting-timestamp`.",
                        scope.label()
                    ),
                ));
            }
        };
        if starting_offsets == StartingOffsets::Committed && config.group_id.is_none() {
            return Err(scope.invalid(
                "starting-offsets",
                format!(
                    "{}: starting-offsets = \"committed\" reads the offsets of a consumer group, but no `group-id` is set. Set group-id = \"my-group\".",
                    scope.label()
                ),
            ));
        }
        Ok(Self {
            bootstrap_servers,
            topics,
            group_id: config.group_id,
            starting_offsets,
            bounded: config.bounded.unwrap_or(false),
            properties: properties(config.properties, scope)?,
        })
    }

    fn preflight(&self) -> Result<(), String> {
        source::partitions(self).map(|_| ())
    }

    fn factory(&self) -> SourceFactory {
        let spec = Arc::new(self.clone());
        Arc::new(move |info| Ok(Box::new(KafkaSource::new(spec.clone(), info)) as Box<dyn Source>))
    }
}

/// `[[sink]]` with `kind = "kafka"`: its own keys.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct KafkaSinkConfig {
    bootstrap_servers: Option<String>,
    topic: Option<String>,
    delivery: Option<SinkDelivery>,
    transactional_id_prefix: Option<String>,
    flush_timeout: Option<DurationText>,
    properties: Option<BTreeMap<String, PropertyValue>>,
}

/// `delivery` of a Kafka sink (Flink's `DeliveryGuarantee`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SinkDelivery {
    /// Produce without waiting for acknowledgements at checkpoints.
    None,
    /// `acks=all`, flushed in the synchronous phase of every checkpoint.
    AtLeastOnce,
    /// A transaction per checkpoint.
    ExactlyOnce,
}

impl SinkDelivery {
    fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::AtLeastOnce => "at-least-once",
            Self::ExactlyOnce => "exactly-once",
        }
    }
}

/// A Kafka sink's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct KafkaSinkSpec {
    /// `bootstrap-servers`.
    pub bootstrap_servers: String,
    /// `topic`: where every record goes, partitioned by its key.
    pub topic: String,
    /// `delivery`.
    pub delivery: SinkDelivery,
    /// `transactional-id-prefix`, for exactly-once.
    pub transactional_id_prefix: Option<String>,
    /// `flush-timeout`: how long a checkpoint waits for the broker's acknowledgements
    /// before it fails the subtask.
    pub flush_timeout: Duration,
    /// `properties`: passed to librdkafka as they are.
    pub properties: BTreeMap<String, String>,
}

impl SinkConnector for KafkaSinkSpec {
    const KIND: &'static str = "kafka";
    type Config = KafkaSinkConfig;

    fn validate(config: KafkaSinkConfig, scope: &Scope<'_>) -> Result<Self, JobError> {
        let bootstrap_servers = bootstrap_servers(config.bootstrap_servers, scope)?;
        let Some(topic) = config.topic.filter(|t| !t.is_empty()) else {
            return Err(scope.invalid(
                "topic",
                format!("{} has no `topic`. Set topic = \"results\".", scope.table()),
            ));
        };
        let delivery = config.delivery.unwrap_or(SinkDelivery::AtLeastOnce);
        if delivery == SinkDelivery::ExactlyOnce && config.transactional_id_prefix.is_none() {
            return Err(scope.invalid(
                "delivery",
                format!(
                    "{}: delivery = \"exactly-once\" needs `transactional-id-prefix`, unique to this sink among all jobs writing to the cluster, e.g. transactional-id-prefix = \"{}\".",
                    scope.label(),
                    scope.id()
                ),
            ));
        }
        if delivery != SinkDelivery::ExactlyOnce && config.transactional_id_prefix.is_some() {
            return Err(scope.invalid(
                "transactional-id-prefix",
                format!(
                    "{}: `transactional-id-prefix` is used only with delivery = \"exactly-once\", but delivery is \"{}\". Remove it.",
                    scope.label(),
                    delivery.name()
                ),
            ));
        }
        let flush_timeout = match &config.flush_timeout {
            Some(text) => scope.duration("flush-timeout", text)?,
            None => Duration::from_secs(60),
        };
        Ok(Self {
            bootstrap_servers,
            topic,
            delivery,
            transactional_id_prefix: config.transactional_id_prefix,
            flush_timeout,
            properties: properties(config.properties, scope)?,
        })
    }

    fn preflight(&self, transactional: bool) -> Result<(), String> {
        let _ = transactional;
        sink::preflight(self)
    }

    fn factory(&self, context: SinkContext) -> OperatorFactory {
        let spec = Arc::new(self.clone());
        Arc::new(move |info| {
            Ok(Box::new(KafkaSink::new(spec.clone(), info, context.rate)?) as Box<dyn Operator>)
        })
    }
}

/// `bootstrap-servers`: present and not empty.
fn bootstrap_servers(given: Option<String>, scope: &Scope<'_>) -> Result<String, JobError> {
    given.filter(|s| !s.trim().is_empty()).ok_or_else(|| {
        scope.invalid(
            "bootstrap-servers",
            format!(
                "{} has no `bootstrap-servers`. Set bootstrap-servers = \"127.0.0.1:9092\" (several as \"host1:9092,host2:9092\").",
                scope.table()
            ),
        )
    })
}

/// A client property's value as written: librdkafka takes all of them as text.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a string, a number or a boolean")]
pub enum PropertyValue {
    /// `"1s"`.
    Text(String),
    /// `5`.
    Integer(i64),
    /// `0.5`.
    Float(f64),
    /// `true`.
    Bool(bool),
}

impl PropertyValue {
    fn text(self) -> String {
        match self {
            Self::Text(s) => s,
            Self::Integer(i) => i.to_string(),
            Self::Float(f) => f.to_string(),
            Self::Bool(b) => b.to_string(),
        }
    }
}

/// `properties`: librdkafka's names and values; the ones Weir sets itself are refused.
fn properties(
    given: Option<BTreeMap<String, PropertyValue>>,
    scope: &Scope<'_>,
) -> Result<BTreeMap<String, String>, JobError> {
    let mut out = BTreeMap::new();
    for (name, value) in given.unwrap_or_default() {
        if let Some((_, instead)) = OWNED_PROPERTIES.iter().find(|(owned, _)| *owned == name) {
            return Err(scope.invalid(
                "properties",
                format!(
                    "{}: the property \"{name}\" is Weir's to set: {instead}.",
                    scope.label()
                ),
            ));
        }
        out.insert(name, value.text());
    }
    Ok(out)
}

/// A client configuration with the servers and the passed-through properties.
fn client_config(bootstrap_servers: &str, properties: &BTreeMap<String, String>) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap_servers);
    // librdkafka logs through its own callback; errors reach Weir as results instead.
    config.set("log_level", "3");
    for (name, value) in properties {
        config.set(name, value);
    }
    config
}
