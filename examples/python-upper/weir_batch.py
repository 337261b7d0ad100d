"""Reading and writing Weir's flat batches (`weir:operator@0.2.0`) in Python.

A batch crosses the boundary as a few flat buffers: `keys` and `values` are `blobs` (all
items in one `bytes`, plus `ends`, where item i is `bytes[ends[i-1]:ends[i]]`), and
`timestamps` and `flags` have one entry per record. These helpers keep that shape: read a
batch's items as slices of its buffers, and build an output batch by appending to one
`bytearray` per buffer, so that the output also crosses in one `output.emit` call.

Shared by the Python examples: `python-counter` builds with this folder on its Python
path.
"""

from itertools import accumulate, islice
from operator import le

from wit_world.imports import types

# Bits of a record's `flags` byte.
KEYED = 1
"""Bit 0: the record has a key (an empty key is a key)."""
TIMESTAMPED = 2
"""Bit 1: the record has an event time."""


class MalformedBatch(ValueError):
    """A batch or blobs whose buffers do not fit together; the message says how."""


def check_blobs(what: str, blobs: types.Blobs, count: int) -> None:
    """Checks that `blobs` holds `count` items that lie inside its buffer, in order."""
    ends = blobs.ends
    if len(ends) != count:
        raise MalformedBatch(f"{what}: {len(ends)} items where {count} were expected")
    if count and ends[-1] > len(blobs.bytes):
        raise MalformedBatch(
            f"{what}: the last item ends at {ends[-1]}, past the {len(blobs.bytes)}-byte buffer"
        )
    # `ends` never decreases: a decreasing pair would read as an empty item, hiding the bug.
    if not all(map(le, ends, islice(ends, 1, None))):
        raise MalformedBatch(f"{what}: the item ends decrease")


def check_batch(batch: types.Batch) -> int:
    """The number of records of `batch`, after checking that its buffers agree on it."""
    n = len(batch.flags)
    if len(batch.timestamps) != n:
        raise MalformedBatch(f"batch: {len(batch.timestamps)} timestamps for {n} records")
    check_blobs("batch keys", batch.keys, n)
    check_blobs("batch values", batch.values, n)
    return n


def items(blobs: types.Blobs) -> list[bytes]:
    """The items of `blobs`, each a `bytes` copy (hashable, so usable as a dict key)."""
    data = blobs.bytes
    starts = [0, *blobs.ends]
    return [data[s:e] for s, e in zip(starts, blobs.ends)]


def views(blobs: types.Blobs) -> list[memoryview]:
    """The items of `blobs` as memoryviews into its buffer, without copying them."""
    data = memoryview(blobs.bytes)
    starts = [0, *blobs.ends]
    return [data[s:e] for s, e in zip(starts, blobs.ends)]


def blobs_of(parts: list[bytes]) -> types.Blobs:
    """`parts` as one `blobs`: their bytes joined, and where each ends."""
    return types.Blobs(bytes=b"".join(parts), ends=list(accumulate(map(len, parts))))


class BlobsBuilder:
    """Builds a `blobs` by appending items to one buffer."""

    __slots__ = ("_bytes", "_ends")

    def __init__(self) -> None:
        self._bytes = bytearray()
        self._ends: list[int] = []

    def __len__(self) -> int:
        return len(self._ends)

    def push(self, item: bytes | bytearray | memoryview) -> None:
        """Appends one item."""
        self._bytes += item
        self._ends.append(len(self._bytes))

    def build(self) -> types.Blobs:
        """The items pushed so far, as a `blobs`."""
        return types.Blobs(bytes=bytes(self._bytes), ends=self._ends)


class BatchBuilder:
    """Builds an output batch record by record, one buffer per field."""

    __slots__ = ("keys", "values", "_timestamps", "_flags")

    def __init__(self) -> None:
        self.keys = BlobsBuilder()
        self.values = BlobsBuilder()
        self._timestamps: list[int] = []
        self._flags = bytearray()

    def __len__(self) -> int:
        return len(self._flags)

    def push(self, key: bytes | memoryview | None, value: bytes | memoryview, timestamp: int | None) -> None:
        """Appends a record; `None` means no key or no event time."""
        self.keys.push(b"" if key is None else key)
        self.values.push(value)
        self._timestamps.append(0 if timestamp is None else timestamp)
        self._flags.append((KEYED if key is not None else 0) | (TIMESTAMPED if timestamp is not None else 0))

    def push_raw(self, key: bytes | memoryview, value: bytes | memoryview, timestamp: int, flags: int) -> None:
        """Appends a record with its fields as a batch carries them (as read from another batch)."""
        self.keys.push(key)
        self.values.push(value)
        self._timestamps.append(timestamp)
        self._flags.append(flags)

    def build(self) -> types.Batch:
        """The records pushed so far, as a batch for `output.emit`."""
        return types.Batch(
            keys=self.keys.build(),
            values=self.values.build(),
            timestamps=self._timestamps,
            flags=bytes(self._flags),
        )
