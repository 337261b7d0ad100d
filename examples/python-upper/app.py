"""python-upper: a Weir operator written in Python.

Drops records whose value is shorter than `min-length` bytes (config JSON
`{"min-length": N}`, default 0) and uppercases the ASCII letters of the rest, keeping
key and timestamp. Each batch goes downstream in one `output.emit` call. The operator-
managed state is the number of records seen so far, as decimal ASCII.

Built into a component by `build.sh` with componentize-py, which generates the
`wit_world` bindings from the repository's `wit/` on the fly.
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import log, output, types

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

    def process(self, batch: list[types.Record]) -> None:
        global _seen
        if not _opened:
            raise _fail("`process` was called on python-upper before `open` succeeded")
        _seen += len(batch)
        min_length = _min_length
        out = [
            types.Record(key=r.key, value=r.value.upper(), timestamp=r.timestamp)
            for r in batch
            if len(r.value) >= min_length
        ]
        if out:
            output.emit(out)

    def on_timer(self, timers: list[types.Timer]) -> None:
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
