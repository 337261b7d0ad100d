"""python-counter: a keyed counter, a Weir operator written in Python.

For every keyed input record it adds one to the key's count, kept in the host's keyed
value state `count`, and emits the record's key and timestamp with the value
`"<key>\\t<count>"` (the key as UTF-8, invalid bytes shown as U+FFFD), as the Rust
counter of examples/word-count does. A count is stored as 8 bytes, a little-endian u64.

Per batch the state costs two host calls whatever the batch's length: one `get_many`
for the batch's distinct keys and one `set_many` for their new counts; the output goes
downstream in one `output.emit`. Every input record gives one output record with its
own key, timestamp and flags, so those buffers are sent back as they came and only the
values are built.

The operator-managed state (`snapshot-state`/`restore-state`) is the number of records
this instance has processed, also an 8-byte little-endian u64.

Built into a component by `build.sh` with componentize-py; `weir_batch` (the flat-batch
helpers) comes from ../python-upper.
"""

import re

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import log, output, state, types

import weir_batch

COUNT_BYTES = 8
"""A count in keyed state, and the snapshot: a little-endian u64."""
MAX_COUNT = 2**64 - 1

# The host makes one component instance per subtask and calls it from one thread, so
# module-level state is the instance's state, however componentize-py creates `Handler`.
_count: state.ValueState | None = None
_seen = 0


def _fail(message: str) -> Err:
    return Err(types.Error(message=message))


def _state_error(what: str, e: Err) -> Err:
    """A failed call on the `count` state as this operator's error, naming the WIT case."""
    err = e.value
    case = re.sub(r"(?<!^)(?=[A-Z])", "-", type(err).__name__.removeprefix("StateError_")).lower()
    detail = case if isinstance(err, state.StateError_NotOpening) else f"{case}: {err.value}"
    return _fail(f"python-counter could not {what} keyed state `count`: {detail}")


def value_prefix(key: bytes) -> bytes:
    r"""The part of an output value before the count: the key as (lossy) UTF-8 and a tab.

    >>> value_prefix(b"weir") + b"3"
    b'weir\t3'
    >>> value_prefix(b"a\xff")
    b'a\xef\xbf\xbd\t'
    """
    return key.decode("utf-8", "replace").encode() + b"\t"


class Handler(exports.Handler):
    def open(self, ctx: types.Context) -> None:
        global _count, _seen
        try:
            _count = state.ValueState.open("count")
        except Err as e:
            raise _state_error("open", e)
        _seen = 0
        log.write(
            log.Level.INFO,
            f"python-counter opened on subtask {ctx.subtask_index} of {ctx.parallelism}",
        )

    def restore_state(self, snapshot: bytes) -> None:
        global _seen
        if not snapshot:
            _seen = 0
            return
        if len(snapshot) != COUNT_BYTES:
            raise _fail(
                f"python-counter cannot read its snapshot: {len(snapshot)} bytes, "
                f"expected {COUNT_BYTES}"
            )
        _seen = int.from_bytes(snapshot, "little")

    def process(self, batch: types.Batch) -> None:
        global _seen
        count = _count
        if count is None:
            raise _fail("`process` was called on python-counter before `open` succeeded")
        try:
            n = weir_batch.check_batch(batch)
        except weir_batch.MalformedBatch as e:
            raise _fail(f"python-counter got a malformed batch: {e}")
        if n == 0:
            return
        if not all(f & weir_batch.KEYED for f in batch.flags):
            raise _fail(
                'python-counter needs keyed input: set partition = "key-by" on this operator'
            )

        keys = weir_batch.items(batch.keys)
        # The batch's distinct keys in order of first appearance (dicts keep it).
        slot_of = dict.fromkeys(keys)
        distinct = list(slot_of)
        for slot, key in enumerate(distinct):
            slot_of[key] = slot
        state_keys = weir_batch.blobs_of(distinct)

        try:
            stored = count.get_many(state_keys)
        except Err as e:
            raise _state_error("read", e)
        counts = []
        for key, value, present in zip(distinct, weir_batch.items(stored.items), stored.present):
            if not present:
                counts.append(0)
            elif len(value) == COUNT_BYTES:
                counts.append(int.from_bytes(value, "little"))
            else:
                raise _fail(
                    f"python-counter found a count of {len(value)} bytes for key {key[:32]!r} "
                    f"in keyed state `count`, expected {COUNT_BYTES}"
                )

        # Each distinct key's part of an output value, "<key as UTF-8>\t", made once.
        prefixes = [value_prefix(k) for k in distinct]
        values = weir_batch.BlobsBuilder()
        for key in keys:
            slot = slot_of[key]
            c = counts[slot] + 1
            counts[slot] = c
            values.push(prefixes[slot] + str(c).encode("ascii"))

        if max(counts) > MAX_COUNT:
            raise _fail("python-counter: a count would pass 2^64 - 1")
        new_counts = weir_batch.blobs_of([c.to_bytes(COUNT_BYTES, "little") for c in counts])
        try:
            count.set_many(state_keys, new_counts)
        except Err as e:
            raise _state_error("write", e)

        _seen += n
        output.emit(
            types.Batch(
                keys=batch.keys,
                values=values.build(),
                timestamps=batch.timestamps,
                flags=batch.flags,
            )
        )

    def on_timer(self, timers: types.FiredTimers) -> None:
        pass

    def on_watermark(self, watermark: int) -> None:
        pass

    def snapshot_state(self, checkpoint: int) -> bytes:
        return _seen.to_bytes(COUNT_BYTES, "little")

    def notify_checkpoint_complete(self, checkpoint: int) -> None:
        pass

    def notify_checkpoint_aborted(self, checkpoint: int) -> None:
        pass

    def close(self) -> None:
        global _count
        _count = None
