#!/usr/bin/env python3
"""An independent Kafka client for the end-to-end tests: confluent-kafka (librdkafka)
against the broker the Rust fixture (`tests/src/kafka.rs`) starts. It checks what
`weir` writes to Kafka and feeds what `weir` reads, without sharing a line of code
with `weir`'s own Kafka client.

    client.py metadata     --bootstrap B
    client.py create-topic --bootstrap B --topic T --partitions N
    client.py produce      --bootstrap B --topic T      < JSON lines
    client.py consume      --bootstrap B --topic T      > JSON lines
    client.py committed    --bootstrap B --group G --topic T

`metadata` succeeds once the broker answers a metadata request. `produce` reads one
record a line, {"key": str|null, "value": str, "partition": int|null, "timestamp":
int ms|null}, and waits until every one is acknowledged. `consume` prints every record
in the topic (every partition, from its start to the high watermark of the first fetch)
as {"partition", "offset", "key", "value", "timestamp"}, partition by partition, and
commits nothing. `committed` prints {"<partition>": offset} for the partitions group G
committed an offset for.

On any failure: a sentence on stderr and exit status 1.
"""

import argparse
import json
import sys

from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

# Every call to the broker is bounded, so that a broker that does not answer fails the
# test instead of hanging it. The broker answers on loopback in milliseconds; a loaded
# two-core test machine can take seconds.
TIMEOUT_S = 30.0


class Failure(Exception):
    """A failure the CLI reports as one sentence."""


def base_config(bootstrap):
    return {
        "bootstrap.servers": bootstrap,
        # A request the broker never answers fails within the same bound.
        "socket.timeout.ms": int(TIMEOUT_S * 1000),
        # librdkafka logs every failed reconnect (many a second) to stderr; the failure
        # this CLI reports says enough.
        "log_level": 0,
    }


def topic_partitions(admin_or_client, topic):
    """The partition ids of `topic`, from a metadata request."""
    metadata = admin_or_client.list_topics(topic=topic, timeout=TIMEOUT_S)
    found = metadata.topics.get(topic)
    if found is None or found.error is not None:
        raise Failure(f"the broker knows no topic {topic!r}: {found.error if found else 'absent'}")
    return sorted(found.partitions)


def metadata(args):
    admin = AdminClient(base_config(args.bootstrap))
    found = admin.list_topics(timeout=TIMEOUT_S)
    json.dump({"brokers": len(found.brokers), "topics": sorted(found.topics)}, sys.stdout)
    sys.stdout.write("\n")


def create_topic(args):
    admin = AdminClient(base_config(args.bootstrap))
    futures = admin.create_topics(
        [NewTopic(args.topic, num_partitions=args.partitions, replication_factor=1)],
        request_timeout=TIMEOUT_S,
        operation_timeout=TIMEOUT_S,
    )
    try:
        futures[args.topic].result(timeout=TIMEOUT_S)
    except KafkaException as e:
        raise Failure(f"creating topic {args.topic!r} failed: {e.args[0]}") from e


def produce(args):
    records = []
    for number, line in enumerate(sys.stdin, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            value = record["value"]
        except (ValueError, KeyError, TypeError) as e:
            raise Failure(f"line {number} of the input is not a record: {e}") from e
        records.append(record)

    failures = []

    def delivered(error, message):
        if error is not None:
            failures.append(f"{message.partition()}: {error.str()}")

    producer = Producer(
        {
            **base_config(args.bootstrap),
            # Every record is acknowledged by the one broker before produce returns.
            "acks": "all",
            "message.timeout.ms": int(TIMEOUT_S * 1000),
        }
    )
    for record in records:
        options = {"on_delivery": delivered}
        if record.get("key") is not None:
            options["key"] = record["key"].encode()
        if record.get("partition") is not None:
            options["partition"] = record["partition"]
        if record.get("timestamp") is not None:
            options["timestamp"] = record["timestamp"]
        while True:
            try:
                producer.produce(args.topic, record["value"].encode(), **options)
                break
            except BufferError:
                # The local queue is full: wait for deliveries to make room.
                producer.poll(0.1)
            except KafkaException as e:
                raise Failure(f"producing to {args.topic!r} failed: {e.args[0]}") from e
    left = producer.flush(TIMEOUT_S)
    if left:
        raise Failure(f"{left} records to {args.topic!r} were not delivered in {TIMEOUT_S}s")
    if failures:
        raise Failure(
            f"{len(failures)} records to {args.topic!r} failed, the first on partition {failures[0]}"
        )


def decode(data):
    return None if data is None else data.decode()


def consume(args):
    consumer = Consumer(
        {
            **base_config(args.bootstrap),
            # librdkafka wants a group even for assigned partitions; nothing is committed.
            "group.id": "weir-tests-reader",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            # Reading starts at offset 0, the log's start unless the broker deleted some.
            "auto.offset.reset": "earliest",
        }
    )
    try:
        partitions = topic_partitions(consumer, args.topic)
        # Each partition's end is the high watermark of the first fetch answer for it.
        # Not a ListOffsets request: tansu 0.6.0 answers "latest" with the newest batch's
        # base offset plus one, short of the end when that batch holds more records.
        ends = {}
        records = {partition: [] for partition in partitions}
        consumer.assign([TopicPartition(args.topic, p, 0) for p in partitions])
        pending = set(partitions)
        while pending:
            message = consumer.poll(TIMEOUT_S)
            if message is None:
                raise Failure(
                    f"reading {args.topic!r} stalled with partitions {sorted(pending)} short "
                    f"of their ends"
                )
            error = message.error()
            partition = message.partition()
            if error is not None and error.code() != KafkaError._PARTITION_EOF:
                raise Failure(f"reading {args.topic!r} failed: {error.str()}")
            if partition not in ends:
                _, high = consumer.get_watermark_offsets(
                    TopicPartition(args.topic, partition), cached=True
                )
                ends[partition] = high
            if error is None and message.offset() < ends[partition]:
                _, timestamp = message.timestamp()
                records[partition].append(
                    {
                        "partition": partition,
                        "offset": message.offset(),
                        "key": decode(message.key()),
                        "value": decode(message.value()),
                        "timestamp": timestamp,
                    }
                )
            next_offset = message.offset() if error is not None else message.offset() + 1
            if next_offset >= ends[partition]:
                pending.discard(partition)
    finally:
        consumer.close()
    for partition in sorted(records):
        for record in records[partition]:
            json.dump(record, sys.stdout)
            sys.stdout.write("\n")


def committed(args):
    consumer = Consumer(
        {
            **base_config(args.bootstrap),
            "group.id": args.group,
            "enable.auto.commit": False,
        }
    )
    try:
        partitions = topic_partitions(consumer, args.topic)
        offsets = consumer.committed(
            [TopicPartition(args.topic, p) for p in partitions], timeout=TIMEOUT_S
        )
    except KafkaException as e:
        raise Failure(f"reading the offsets group {args.group!r} committed failed: {e.args[0]}") from e
    finally:
        consumer.close()
    found = {}
    for offset in offsets:
        if offset.error is not None:
            raise Failure(
                f"the offset group {args.group!r} committed for partition {offset.partition} "
                f"could not be read: {offset.error.str()}"
            )
        if offset.offset != OFFSET_INVALID:
            found[str(offset.partition)] = offset.offset
    json.dump(found, sys.stdout)
    sys.stdout.write("\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    command = commands.add_parser("metadata", help="succeed once the broker answers")
    command.add_argument("--bootstrap", required=True)
    command.set_defaults(run=metadata)

    command = commands.add_parser("create-topic", help="create a topic")
    command.add_argument("--bootstrap", required=True)
    command.add_argument("--topic", required=True)
    command.add_argument("--partitions", type=int, required=True)
    command.set_defaults(run=create_topic)

    command = commands.add_parser("produce", help="write JSON-line records from stdin")
    command.add_argument("--bootstrap", required=True)
    command.add_argument("--topic", required=True)
    command.set_defaults(run=produce)

    command = commands.add_parser("consume", help="print every record in a topic")
    command.add_argument("--bootstrap", required=True)
    command.add_argument("--topic", required=True)
    command.set_defaults(run=consume)

    command = commands.add_parser("committed", help="print a group's committed offsets")
    command.add_argument("--bootstrap", required=True)
    command.add_argument("--group", required=True)
    command.add_argument("--topic", required=True)
    command.set_defaults(run=committed)

    args = parser.parse_args()
    try:
        args.run(args)
    except Failure as e:
        print(f"client.py {args.command}: {e}", file=sys.stderr)
        sys.exit(1)
    except KafkaException as e:
        print(
            f"client.py {args.command}: the broker could not be reached or refused: {e.args[0]}",
            file=sys.stderr,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
