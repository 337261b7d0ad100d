//! One subtask of the Kafka sink: records produced to the topic, partitioned by key by
//! the client's default partitioner, with the record's timestamp.
//!
//! # Checkpoints
//! With `delivery = "at-least-once"` the snapshot's synchronous phase flushes the
//! producer and checks that every record before the barrier was acknowledged; a flush
//! that times out (the broker is down) or a record the broker refused fails the
//! subtask, so the checkpoint never completes without them and the restart replays
//! them. The snapshot itself is empty: nothing is pending after a flush.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};

use super::{KafkaSinkSpec, REQUEST_TIMEOUT, SinkDelivery, client_config, protocol};
use crate::checkpoint::snapshot::SnapshotType;
use crate::connectors::rate::Pacer;
use crate::connectors::sinks::empty_snapshot;
use crate::runtime::{
    Batch, CheckpointId, Fault, Operator, RestoredParts, Snapshot, TaskError, TaskInfo,
};

/// How long a full producer queue is waited on before the send is retried.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(1);

/// Checks, before the job starts, that the sink can deliver as configured: the broker
/// answers, and for exactly-once that it can commit transactions.
pub(super) fn preflight(spec: &KafkaSinkSpec) -> Result<(), String> {
    let supported = protocol::supported(&spec.bootstrap_servers, REQUEST_TIMEOUT).map_err(|e| {
        format!(
            "cannot reach the Kafka broker at {} ({e}). Check `bootstrap-servers` and that the broker is up.",
            spec.bootstrap_servers
        )
    })?;
    if spec.delivery == SinkDelivery::ExactlyOnce {
        let missing = protocol::missing(&supported, &protocol::TRANSACTIONS);
        if let Some(api) = missing.first() {
            return Err(format!(
                "delivery = \"exactly-once\" needs a broker that commits transactions, but the Kafka broker at {} does not support {} (API key {}). Use delivery = \"at-least-once\" with this broker.",
                spec.bootstrap_servers, api.name, api.key
            ));
        }
        return Err(format!(
            "delivery = \"exactly-once\" is not available yet: librdkafka cannot commit, after a restart, a transaction that the crashed process pre-committed, so a crash between a checkpoint and its commit would lose that checkpoint's records. Use delivery = \"at-least-once\" (the broker at {} supports transactions; the README tracks this).",
            spec.bootstrap_servers
        ));
    }
    Ok(())
}

/// The first delivery failure the broker reported, shared with the producer's thread.
#[derive(Default)]
struct Deliveries {
    failed: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, _)) = result
            && let Ok(mut failed) = self.failed.lock()
        {
            failed.get_or_insert_with(|| error.to_string());
        }
    }
}

/// One subtask of a Kafka sink.
pub struct KafkaSink {
    spec: Arc<KafkaSinkSpec>,
    name: String,
    producer: ThreadedProducer<Deliveries>,
    pacer: Pacer,
}

impl KafkaSink {
    /// The sink of subtask `info`, paced to `rate` records per second (0: unpaced).
    pub fn new(spec: Arc<KafkaSinkSpec>, info: &TaskInfo, rate: u64) -> Result<Self, TaskError> {
        let mut config = client_config(&spec.bootstrap_servers, &spec.properties);
        if spec.delivery == SinkDelivery::AtLeastOnce {
            // Every in-sync replica has it before the flush of a checkpoint returns. The
            // idempotent producer (which drops the duplicates of a retry) is left to
            // `properties`: tansu 0.6 loses track of its sequence numbers when several
            // producers write to one partition.
            config.set("acks", "all");
        }
        let producer = config
            .create_with_context(Deliveries::default())
            .map_err(|e| {
                TaskError::failed(
                    Fault::External,
                    format!(
                        "{}: cannot create a Kafka producer for {}: {e}",
                        info.name(),
                        spec.bootstrap_servers
                    ),
                )
            })?;
        Ok(Self {
            spec,
            name: info.name(),
            producer,
            pacer: Pacer::new(rate),
        })
    }

    fn external(&self, message: impl std::fmt::Display) -> TaskError {
        TaskError::failed(Fault::External, format!("{}: {message}", self.name))
    }

    /// Fails on the first record the broker refused.
    fn check_deliveries(&self) -> Result<(), TaskError> {
        let failed = self
            .producer
            .context()
            .failed
            .lock()
            .ok()
            .and_then(|f| f.clone());
        match failed {
            Some(error) => Err(self.external(format!(
                "the Kafka broker at {} did not take a record for topic \"{}\": {error}",
                self.spec.bootstrap_servers, self.spec.topic
            ))),
            None => Ok(()),
        }
    }

    /// Waits until every record sent is acknowledged, or fails after the flush timeout.
    fn flush(&self, why: &str) -> Result<(), TaskError> {
        self.producer.flush(self.spec.flush_timeout).map_err(|e| {
            self.external(format!(
                "the Kafka broker at {} did not acknowledge the records for topic \"{}\" within {:?} ({why}): {e}",
                self.spec.bootstrap_servers, self.spec.topic, self.spec.flush_timeout
            ))
        })?;
        self.check_deliveries()
    }
}

impl Operator for KafkaSink {
    fn open(&mut self, _restored: Option<RestoredParts>) -> Result<(), TaskError> {
        Ok(())
    }

    fn process(&mut self, batch: &Batch, _out: &mut Batch) -> Result<(), TaskError> {
        self.pacer.record(batch.len());
        for record in batch.iter() {
            let mut base = BaseRecord::to(&self.spec.topic).payload(record.value);
            if let Some(key) = record.key {
                base = base.key(key);
            }
            if let Some(timestamp) = record.timestamp {
                base = base.timestamp(timestamp);
            }
            loop {
                match self.producer.send(base) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        // The client's queue is the sink's buffer: a full one is
                        // backpressure.
                        base = back;
                        std::thread::sleep(QUEUE_FULL_WAIT);
                    }
                    Err((e, _)) => {
                        return Err(self.external(format!(
                            "cannot produce to topic \"{}\": {e}",
                            self.spec.topic
                        )));
                    }
                }
            }
        }
        self.check_deliveries()?;
        self.pacer.wait();
        Ok(())
    }

    fn snapshot(
        &mut self,
        _checkpoint: CheckpointId,
        _kind: SnapshotType,
    ) -> Result<Snapshot, TaskError> {
        if self.spec.delivery == SinkDelivery::AtLeastOnce {
            self.flush("a checkpoint waits for them")?;
        }
        Ok(empty_snapshot())
    }

    fn close(&mut self, _out: &mut Batch) -> Result<(), TaskError> {
        self.flush("the input ended")
    }
}
