//! The Kafka fixture against the real broker: what the independent client writes to a
//! `tansu` broker it reads back, record for record, and a broker killed and restarted
//! on its port still holds it. The Kafka source and sink tests stand on this.

use weir_tests::kafka::{KafkaBroker, KafkaRecord};

/// Records written: several batches' worth on every partition.
const RECORDS: i32 = 100;

/// Partitions of the topic: more than one, so that partition order and offsets per
/// partition are checked.
const PARTITIONS: i32 = 3;

/// A fixed instant in milliseconds, so that the timestamps read back are the
/// producer's and not the broker's clock.
const EPOCH_MS: i64 = 1_700_000_000_000;

#[test]
fn records_written_by_the_client_are_read_back_after_a_broker_restart() {
    let mut broker = KafkaBroker::start();
    broker.create_topic("words", PARTITIONS);
    let written: Vec<KafkaRecord> = (0..RECORDS)
        .map(|i| KafkaRecord {
            key: Some(format!("key-{}", i % 7)),
            value: format!("value-{i}"),
            partition: Some(i % PARTITIONS),
            offset: None,
            timestamp: Some(EPOCH_MS + i64::from(i)),
        })
        .collect();
    broker.produce("words", &written);

    // What the partitions hold, in order: per partition, the records sent to it, at
    // offsets 0, 1, 2, ….
    let mut expected = Vec::new();
    for partition in 0..PARTITIONS {
        let sent = written.iter().filter(|r| r.partition == Some(partition));
        expected.extend(sent.zip(0..).map(|(record, offset)| KafkaRecord {
            offset: Some(offset),
            ..record.clone()
        }));
    }
    assert_eq!(broker.consume("words"), expected, "{}", broker.log());

    let addr = broker.addr();
    broker.kill();
    broker.restart();
    assert_eq!(broker.addr(), addr);
    assert_eq!(
        broker.consume("words"),
        expected,
        "the restarted broker lost records\n{}",
        broker.log()
    );
}
