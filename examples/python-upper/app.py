"""python-upper: a Weir operator written in Python.

Drops records whose value is shorter than `min-length` bytes (config JSON
`{"min-length": N}`, default 0) and uppercases the ASCII letters of the rest, keeping
key and timestamp. Each batch goes downstream in one `output.emit` call. The operator-
managed state is the number of records seen so far, as decimal ASCII.

Batches are flat (`weir:operator@0.2.0`): the values arrive as one buffer, so the
operator uppercases that buffer in one `bytes.upper()` call (ASCII only, length kept, so
the item ends stay valid) and, when no record is dropped, sends the batch's own keys,
timestamps and flags back with it. Only a batch that drops records is rebuilt, through
`weir_batch`.

Built into a component by `build.sh` with componentize-py, which generates the
`wit_world` bindings from the repository's `wit/` on the fly.
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import log, output, types

import weir_batch

# The host makes one component instance per subtask and calls it from one thread, so
# module-level state is the instance's state, however componentize-py creates `Handler`.
_opened = False
_min_length = 0
_seen = 0


def _fail(message: str) -> Err:
    return Err(types.Error(message=message))


def _parse_config(operator_id: str, config: str) -> int:
    """The `min-length` of a config string; an empty config means the defaults."""
    if not config.strip():
        return 0
    try:
        parsed = json.loads(config)
    except ValueError as e:
        raise _fail(f"the config of operator `{operator_id}` is not valid JSON: {e}")
    if not isinstance(parsed, dict):
        raise _fail(f"the config of operator `{operator_id}` must be a JSON object")
    unknown = sorted(set(parsed) - {"min-length"})
    if unknown:
        raise _fail(
            f"the config of operator `{operator_id}` has unknown fields {unknown}; "
            "expected only `min-length`"
        )
    min_length = parsed.get("min-length", 0)
    if not isinstance(min_length, int) or isinstance(min_length, bool) or min_length < 0:
        raise _fail(
            f"the config of operator `{operator_id}`: `min-length` must be a "
            "non-negative integer"
        )
    return min_length


class Handler(exports.Handler):
    def open(self, ctx: types.Context) -> None:
        global _opened, _min_length, _seen
        _min_length = _parse_config(ctx.operator_id, ctx.config)
        _seen = 0
        _opened = True
        log.write(
            log.Level.INFO,
            f"python-upper opened on subtask {ctx.subtask_index} of {ctx.parallelism}",
        )

    def restore_state(self, state: bytes) -> None:
        global _seen
        try:
            _seen = int(state.decode("ascii")) if state else 0
        except ValueError:
            raise _fail(f"python-upper cannot read its snapshot {state[:32]!r}: not a count")

    def process(self, batch: types.Batch) -> None:
        global _seen
        if not _opened:
            raise _fail("`process` was called on python-upper before `open` succeeded")
        try:
            n = weir_batch.check_batch(batch)
        except weir_batch.MalformedBatch as e:
            raise _fail(f"python-upper got a malformed batch: {e}")
        _seen += n
        values = batch.values
        upper = values.bytes.upper()
        ends = values.ends
        if _min_length == 0:
            kept = n
        else:
            starts = [0, *ends]
            lengths = [e - s for s, e in zip(starts, ends)]
            kept = sum(length >= _min_length for length in lengths)
        if kept == 0:
            return
        if kept == n:
            output.emit(
                types.Batch(
                    keys=batch.keys,
                    values=types.Blobs(bytes=upper, ends=ends),
                    timestamps=batch.timestamps,
                    flags=batch.flags,
                )
            )
            return
        out = weir_batch.BatchBuilder()
        keys = weir_batch.views(batch.keys)
        upper_view = memoryview(upper)
        timestamps = batch.timestamps
        flags = batch.flags
        for i, length in enumerate(lengths):
            if length >= _min_length:
                out.push_raw(keys[i], upper_view[starts[i] : ends[i]], timestamps[i], flags[i])
        output.emit(out.build())

    def on_timer(self, timers: types.FiredTimers) -> None:
        pass

    def on_watermark(self, watermark: int) -> None:
        pass

    def snapshot_state(self, checkpoint: int) -> bytes:
        return str(_seen).encode("ascii")

    def notify_checkpoint_complete(self, checkpoint: int) -> None:
        pass

    def notify_checkpoint_aborted(self, checkpoint: int) -> None:
        pass

    def close(self) -> None:
        global _opened
        _opened = False
