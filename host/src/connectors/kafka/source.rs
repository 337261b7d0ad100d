//! One subtask of the Kafka source: the partitions it owns, their offsets, and the
//! records it polls from them.
//!
//! # Checkpoints
//! A snapshot holds, for every partition the subtask owns, the offset of its next
//! record and (when `bounded`) the offset it stops at. A restore takes each owned
//! partition's cursor from whichever restored state has it (its own at the same
//! parallelism, any old subtask's after a rescale); a partition in none (new since the
//! checkpoint) starts at `starting-offsets`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use super::{KafkaSourceSpec, REQUEST_TIMEOUT, StartingOffsets, TopicSelector};
use crate::runtime::{
    Batch, CheckpointId, Fault, RecordRef, SnapshotWriter, Source, SourcePoll, TaskError, TaskInfo,
};

/// How long a poll that found nothing lets the subtask wait before the next.
const IDLE_WAIT: Duration = Duration::from_millis(5);

/// A partition of a topic.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub(super) struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

/// Where the subtask stands in one partition: what the snapshot holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Cursor {
    #[serde(flatten)]
    at: TopicPartition,
    /// The offset of the next record to emit.
    next: i64,
    /// With `bounded`, the offset to stop before.
    stop: Option<i64>,
}

impl Cursor {
    fn done(&self) -> bool {
        self.stop.is_some_and(|stop| self.next >= stop)
    }
}

/// A snapshot of the source's subtask.
#[derive(Debug, Serialize, Deserialize)]
struct SourceState {
    partitions: Vec<Cursor>,
}

/// The subtask that reads partition `partition` of `topic`, of `parallelism`, as
/// Flink's `KafkaSourceEnumerator.getSplitOwner`: a topic's partitions go round the
/// subtasks from a start that depends on the topic, so that several topics of few
/// partitions spread out.
pub(super) fn owner(topic: &str, partition: i32, parallelism: u32) -> u32 {
    let parallelism = u64::from(parallelism.max(1));
    let start = xxh3_64(topic.as_bytes()) % parallelism;
    let partition = u64::try_from(partition).unwrap_or(0);
    u32::try_from((start + partition) % parallelism).unwrap_or(0)
}

/// A consumer of the spec's cluster.
fn consumer(spec: &KafkaSourceSpec) -> Result<BaseConsumer, String> {
    spec.client_config().create().map_err(|e| {
        format!(
            "cannot create a Kafka consumer for {}: {e}",
            spec.bootstrap_servers
        )
    })
}

/// Every partition the source reads, sorted; an error names the broker or the missing
/// topic.
pub(super) fn partitions(spec: &KafkaSourceSpec) -> Result<Vec<TopicPartition>, String> {
    let consumer = consumer(spec)?;
    partitions_of(&consumer, spec)
}

fn partitions_of(
    consumer: &BaseConsumer,
    spec: &KafkaSourceSpec,
) -> Result<Vec<TopicPartition>, String> {
    let metadata = consumer.fetch_metadata(None, REQUEST_TIMEOUT).map_err(|e| {
        format!(
            "cannot reach the Kafka broker at {} within {}s: {e}. Check `bootstrap-servers` and that the broker is up.",
            spec.bootstrap_servers,
            REQUEST_TIMEOUT.as_secs()
        )
    })?;
    let mut out = Vec::new();
    let wanted = |name: &str| match &spec.topics {
        TopicSelector::Names(names) => names.iter().any(|n| n == name),
        TopicSelector::Pattern(pattern) => pattern.is_match(name),
    };
    for topic in metadata.topics() {
        if topic.error().is_some() || !wanted(topic.name()) {
            continue;
        }
        out.extend(topic.partitions().iter().map(|p| TopicPartition {
            topic: topic.name().to_owned(),
            partition: p.id(),
        }));
    }
    if let TopicSelector::Names(names) = &spec.topics {
        for name in names {
            if !out.iter().any(|tp| &tp.topic == name) {
                return Err(format!(
                    "the topic \"{name}\" does not exist on the Kafka broker at {}. Create it, or correct `topic`.",
                    spec.bootstrap_servers
                ));
            }
        }
    } else if out.is_empty() {
        return Err(format!(
            "no topic on the Kafka broker at {} matches {}. Create one, or correct `topic-pattern`.",
            spec.bootstrap_servers,
            spec.topics.describe()
        ));
    }
    out.sort();
    Ok(out)
}

/// One subtask of a Kafka source.
pub struct KafkaSource {
    spec: Arc<KafkaSourceSpec>,
    info: TaskInfo,
    consumer: Option<BaseConsumer>,
    /// The partitions the subtask owns, sorted; a record's split is its index here.
    cursors: Vec<Cursor>,
    index: HashMap<(String, i32), usize>,
    /// The split of each record the last poll appended.
    splits: Vec<u32>,
    /// The offsets of each checkpoint not yet complete, to commit to the group then.
    uncommitted: BTreeMap<CheckpointId, Vec<Cursor>>,
}

impl KafkaSource {
    /// The source of subtask `info`; it connects in `open`.
    pub fn new(spec: Arc<KafkaSourceSpec>, info: &TaskInfo) -> Self {
        Self {
            spec,
            info: info.clone(),
            consumer: None,
            cursors: Vec::new(),
            index: HashMap::new(),
            splits: Vec::new(),
            uncommitted: BTreeMap::new(),
        }
    }

    fn external(&self, message: impl std::fmt::Display) -> TaskError {
        TaskError::failed(Fault::External, format!("{}: {message}", self.info.name()))
    }

    /// The offset a partition without a restored cursor starts at.
    fn starting_offset(
        &self,
        consumer: &BaseConsumer,
        at: &TopicPartition,
        committed: &HashMap<(String, i32), i64>,
        by_time: &HashMap<(String, i32), i64>,
    ) -> Result<i64, TaskError> {
        let (low, high) = consumer
            .fetch_watermarks(&at.topic, at.partition, REQUEST_TIMEOUT)
            .map_err(|e| {
                self.external(format!(
                    "cannot read the offsets of {}-{} from {}: {e}",
                    at.topic, at.partition, self.spec.bootstrap_servers
                ))
            })?;
        let key = (at.topic.clone(), at.partition);
        Ok(match self.spec.starting_offsets {
            StartingOffsets::Earliest => low,
            StartingOffsets::Latest => high,
            StartingOffsets::Committed => committed.get(&key).copied().unwrap_or(low),
            StartingOffsets::Timestamp(_) => by_time.get(&key).copied().unwrap_or(high),
        })
    }

    /// Offsets per partition from a list the broker answered, where it has one.
    fn offsets_in(list: &TopicPartitionList) -> HashMap<(String, i32), i64> {
        list.elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some(((e.topic().to_owned(), e.partition()), o)),
                _ => None,
            })
            .collect()
    }

    fn owned_list(&self, owned: &[TopicPartition], offset: Offset) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        for tp in owned {
            let _ = list.add_partition_offset(&tp.topic, tp.partition, offset);
        }
        list
    }
}

impl Source for KafkaSource {
    fn open(&mut self, restored: Option<Vec<Vec<u8>>>) -> Result<(), TaskError> {
        let consumer = consumer(&self.spec).map_err(|e| self.external(e))?;
        let owned: Vec<TopicPartition> = partitions_of(&consumer, &self.spec)
            .map_err(|e| self.external(e))?
            .into_iter()
            .filter(|tp| {
                owner(&tp.topic, tp.partition, self.info.parallelism) == self.info.subtask.0
            })
            .collect();
        let mut restored_cursors: HashMap<TopicPartition, Cursor> = HashMap::new();
        for bytes in restored.unwrap_or_default() {
            let state: SourceState = serde_json::from_slice(&bytes).map_err(|e| {
                TaskError::failed(
                    Fault::Host,
                    format!(
                        "{}: the restored Kafka offsets are unreadable: {e}",
                        self.info.name()
                    ),
                )
            })?;
            for cursor in state.partitions {
                restored_cursors.insert(cursor.at.clone(), cursor);
            }
        }
        let fresh: Vec<TopicPartition> = owned
            .iter()
            .filter(|tp| !restored_cursors.contains_key(*tp))
            .cloned()
            .collect();
        let committed =
            if self.spec.starting_offsets == StartingOffsets::Committed && !fresh.is_empty() {
                let list = consumer
                    .committed_offsets(self.owned_list(&fresh, Offset::Invalid), REQUEST_TIMEOUT)
                    .map_err(|e| {
                        self.external(format!("cannot read the group's committed offsets: {e}"))
                    })?;
                Self::offsets_in(&list)
            } else {
                HashMap::new()
            };
        let by_time = match self.spec.starting_offsets {
            StartingOffsets::Timestamp(ms) if !fresh.is_empty() => {
                let list = consumer
                    .offsets_for_times(self.owned_list(&fresh, Offset::Offset(ms)), REQUEST_TIMEOUT)
                    .map_err(|e| {
                        self.external(format!("cannot look up the offsets at timestamp {ms}: {e}"))
                    })?;
                Self::offsets_in(&list)
            }
            _ => HashMap::new(),
        };
        let mut cursors = Vec::with_capacity(owned.len());
        for tp in &owned {
            let cursor = match restored_cursors.remove(tp) {
                Some(cursor) => cursor,
                None => {
                    let next = self.starting_offset(&consumer, tp, &committed, &by_time)?;
                    // A bounded partition's stop is the end the broker reports on its
                    // first fetch (see `learn_stops`).
                    Cursor {
                        at: tp.clone(),
                        next,
                        stop: None,
                    }
                }
            };
            cursors.push(cursor);
        }
        for gone in restored_cursors.keys() {
            tracing::warn!(
                "{}: the restored checkpoint has offsets of {}-{}, which the broker no longer has or this subtask does not own; they are ignored",
                self.info.name(),
                gone.topic,
                gone.partition
            );
        }
        let mut assignment = TopicPartitionList::new();
        for cursor in cursors.iter().filter(|c| !c.done()) {
            assignment
                .add_partition_offset(
                    &cursor.at.topic,
                    cursor.at.partition,
                    Offset::Offset(cursor.next),
                )
                .map_err(|e| self.external(e))?;
        }
        consumer
            .assign(&assignment)
            .map_err(|e| self.external(format!("cannot assign the partitions: {e}")))?;
        self.index = cursors
            .iter()
            .enumerate()
            .map(|(i, c)| ((c.at.topic.clone(), c.at.partition), i))
            .collect();
        tracing::info!(
            "{}: reads {} partition(s) of {} from {}",
            self.info.name(),
            cursors.len(),
            self.spec.topics.describe(),
            self.spec.bootstrap_servers
        );
        self.cursors = cursors;
        self.consumer = Some(consumer);
        Ok(())
    }

    fn poll(&mut self, out: &mut Batch, max: usize) -> Result<SourcePoll, TaskError> {
        self.splits.clear();
        if self.spec.bounded && self.cursors.iter().all(Cursor::done) {
            return Ok(SourcePoll::Finished);
        }
        if self.spec.bounded {
            self.learn_stops();
        }
        let Some(consumer) = self.consumer.as_ref() else {
            return Err(TaskError::failed(
                Fault::Host,
                "the Kafka source was polled before open",
            ));
        };
        let mut finished_one = false;
        let mut at_end = false;
        while out.len() < max {
            let Some(result) = consumer.poll(Duration::ZERO) else {
                break;
            };
            match result {
                Ok(message) => {
                    let key = (message.topic().to_owned(), message.partition());
                    let Some(&split) = self.index.get(&key) else {
                        continue;
                    };
                    let cursor = &mut self.cursors[split];
                    if cursor.done() || message.offset() < cursor.next {
                        continue;
                    }
                    if let Some(stop) = cursor.stop
                        && message.offset() >= stop
                    {
                        cursor.next = stop;
                        finished_one = true;
                        continue;
                    }
                    cursor.next = message.offset() + 1;
                    out.push(RecordRef {
                        key: message.key(),
                        value: message.payload().unwrap_or_default(),
                        timestamp: message.timestamp().to_millis(),
                    });
                    self.splits.push(u32::try_from(split).unwrap_or(u32::MAX));
                    finished_one |= cursor.done();
                }
                Err(KafkaError::PartitionEOF(_)) => {
                    // A bounded partition may end before its stop offset's record
                    // (transaction markers take offsets too): the position says.
                    at_end = true;
                }
                Err(e) => {
                    // The client reconnects by itself; a broker outage shows here.
                    tracing::warn!("{}: Kafka: {e}", self.info.name());
                    break;
                }
            }
        }
        if at_end && self.spec.bounded {
            self.learn_stops();
            finished_one |= self.mark_ended_by_position();
        }
        if finished_one {
            self.pause_done();
        }
        if out.is_empty() {
            return Ok(SourcePoll::Idle(Instant::now() + IDLE_WAIT));
        }
        Ok(SourcePoll::Ready)
    }

    fn snapshot(&mut self, checkpoint: CheckpointId) -> Result<SnapshotWriter, TaskError> {
        if self.spec.group_id.is_some() {
            self.uncommitted.insert(checkpoint, self.cursors.clone());
        }
        let state = SourceState {
            partitions: self.cursors.clone(),
        };
        Ok(Box::new(move || {
            serde_json::to_vec(&state).map_err(|e| TaskError::failed(Fault::Host, e.to_string()))
        }))
    }

    fn notify_checkpoint_complete(&mut self, checkpoint: CheckpointId) -> Result<(), TaskError> {
        let Some(cursors) = self.uncommitted.remove(&checkpoint) else {
            return Ok(());
        };
        self.uncommitted.retain(|id, _| *id > checkpoint);
        let (Some(consumer), false) = (self.consumer.as_ref(), cursors.is_empty()) else {
            return Ok(());
        };
        let mut list = TopicPartitionList::new();
        for cursor in &cursors {
            let _ = list.add_partition_offset(
                &cursor.at.topic,
                cursor.at.partition,
                Offset::Offset(cursor.next),
            );
        }
        // For monitoring only: a failed commit changes nothing Weir relies on.
        if let Err(e) = consumer.commit(&list, CommitMode::Async) {
            tracing::warn!(
                "{}: could not commit offsets to the group: {e}",
                self.info.name()
            );
        }
        Ok(())
    }

    fn splits(&self) -> usize {
        self.cursors.len().max(1)
    }

    fn record_splits(&self) -> &[u32] {
        &self.splits
    }
}

impl KafkaSource {
    /// Marks done the bounded partitions whose fetch position reached their stop.
    fn mark_ended_by_position(&mut self) -> bool {
        let Some(position) = self.consumer.as_ref().and_then(|c| c.position().ok()) else {
            return false;
        };
        let positions = Self::offsets_in(&position);
        let mut any = false;
        for cursor in self.cursors.iter_mut().filter(|c| !c.done()) {
            if let (Some(&at), Some(stop)) = (
                positions.get(&(cursor.at.topic.clone(), cursor.at.partition)),
                cursor.stop,
            ) && at >= stop
            {
                cursor.next = cursor.next.max(stop);
                any = true;
            }
        }
        any
    }

    /// Sets the stop of every bounded partition that has none yet to the end offset its
    /// first fetch reported. That end comes with the fetch answer (its high watermark),
    /// which every broker gets right; a ListOffsets request for the latest offset, the
    /// other way to ask, is answered wrongly by some (tansu 0.6 reports the start of
    /// the last batch, plus one).
    fn learn_stops(&mut self) {
        let Some(consumer) = self.consumer.as_ref() else {
            return;
        };
        for cursor in self.cursors.iter_mut().filter(|c| c.stop.is_none()) {
            cursor.stop = fetched_end(consumer, &cursor.at);
        }
    }

    /// Stops fetching the partitions that reached their stop offset.
    fn pause_done(&self) {
        let Some(consumer) = self.consumer.as_ref() else {
            return;
        };
        let done: Vec<TopicPartition> = self
            .cursors
            .iter()
            .filter(|c| c.done())
            .map(|c| c.at.clone())
            .collect();
        if let Err(e) = consumer.pause(&self.owned_list(&done, Offset::Invalid)) {
            tracing::warn!(
                "{}: could not pause ended partitions: {e}",
                self.info.name()
            );
        }
    }
}

/// The high watermark of `at` that the consumer's last fetch answer carried; `None`
/// before the first answer.
fn fetched_end(consumer: &BaseConsumer, at: &TopicPartition) -> Option<i64> {
    let topic = std::ffi::CString::new(at.topic.as_str()).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer lives as long as `consumer`, which outlives the call;
    // the topic is a NUL-terminated string that outlives it too, and the out-pointers are
    // locals. rd_kafka_get_watermark_offsets only reads the client's cached state.
    let error = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            at.partition,
            &mut low,
            &mut high,
        )
    };
    (error == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
        .then_some(high)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_partition_has_exactly_one_owner_and_owners_spread_over_the_subtasks() {
        for parallelism in 1..=5 {
            let mut load = vec![0u32; parallelism as usize];
            for partition in 0..20 {
                let owner = owner("events", partition, parallelism);
                assert!(owner < parallelism);
                load[owner as usize] += 1;
            }
            let (min, max) = (load.iter().min(), load.iter().max());
            assert!(
                max.zip(min).is_some_and(|(max, min)| max - min <= 1),
                "{load:?}"
            );
        }
    }

    #[test]
    fn the_owner_of_a_partition_does_not_depend_on_other_topics() {
        assert_eq!(owner("a", 3, 4), owner("a", 3, 4));
        assert_eq!(owner("a", 0, 1), 0);
    }

    #[test]
    fn a_bounded_cursor_is_done_at_its_stop_offset() {
        let mut cursor = Cursor {
            at: TopicPartition {
                topic: "t".into(),
                partition: 0,
            },
            next: 4,
            stop: Some(5),
        };
        assert!(!cursor.done());
        cursor.next = 5;
        assert!(cursor.done());
        cursor.stop = None;
        assert!(!cursor.done());
    }
}
