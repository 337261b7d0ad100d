// js-counter: a keyed counter, a Weir operator written in JavaScript.
//
// For every keyed input record it adds one to the key's count, kept in the host's keyed
// value state `count`, and emits the record's key and timestamp with the value
// "<key>\t<count>" (the key as UTF-8, invalid bytes shown as U+FFFD), as the Rust
// counter of examples/word-count does. A count is stored as 8 bytes, a little-endian
// u64. Per batch the state costs two host calls whatever the batch's length: one
// `getMany` for the batch's distinct keys and one `setMany` for their new counts; the
// output goes out in one `emit`.
//
// The operator-managed state (`snapshotState`/`restoreState`) is the number of records
// this instance has processed, also an 8-byte little-endian u64.
//
// ComponentizeJS maps the WIT types to: list<u8> -> Uint8Array, list<u32> -> Uint32Array,
// list<s64> -> BigInt64Array, u64/s64 -> bigint, records -> plain objects with camelCase
// fields; an export returns its `result`'s ok value and throws its error value, and an
// import whose `result` is an error throws.

import { ValueState } from 'weir:operator/state@0.2.0';
import { emit } from 'weir:operator/output@0.2.0';
import { write } from 'weir:operator/log@0.2.0';

/** Bit 0 of a record's flags: the record has a key. */
const KEYED = 1;
/** A count's bytes in state: a little-endian u64. */
const COUNT_BYTES = 8;
/**
 * Counts are JavaScript numbers, exact up to 2^53 - 1: nine quadrillion records per key
 * is out of reach, and doubles are what the engine counts fastest. A larger stored count
 * is reported as an error rather than rounded.
 */
const MAX_COUNT = Number.MAX_SAFE_INTEGER;
const TWO_POW_32 = 2 ** 32;
/** The high 32 bits of MAX_COUNT: a stored count whose high word is larger is too big. */
const MAX_HIGH_WORD = Math.floor(MAX_COUNT / TWO_POW_32);

const utf8Decoder = new TextDecoder('utf-8');
/** Throws on invalid UTF-8, which `isAscii` needs: a lone 0xff would decode to one unit. */
const asciiDecoder = new TextDecoder('utf-8', { fatal: true });
const utf8Encoder = new TextEncoder();

// The host makes one component instance per subtask and calls it from one thread, so
// module state is the instance's state.
let count = null;
let seen = 0;

/** The error value of a failed export: the WIT `error` record. */
function fail(message) {
  return { message };
}

/** A state call's thrown error as a sentence. */
function stateErrorText(e) {
  const err = e && e.payload !== undefined ? e.payload : e;
  if (err && typeof err.tag === 'string') {
    return err.val === undefined ? err.tag : `${err.tag}: ${err.val}`;
  }
  return String(err);
}

/** Calls `f`, turning a state error it throws into this operator's error. */
function withState(what, f) {
  try {
    return f();
  } catch (e) {
    throw fail(`js-counter could not ${what} keyed state \`count\`: ${stateErrorText(e)}`);
  }
}

/**
 * A string that stands for the bytes `bytes[start..end]`, one char per byte, to key a Map
 * with: distinct byte strings give distinct strings (a UTF-8 decode would not).
 */
function binaryKey(bytes, start, end) {
  // Keys are short; the chunking keeps `apply` within the engine's argument limit.
  const CHUNK = 8192;
  if (end - start <= CHUNK) {
    return String.fromCharCode.apply(null, bytes.subarray(start, end));
  }
  let s = '';
  for (let i = start; i < end; i += CHUNK) {
    s += String.fromCharCode.apply(null, bytes.subarray(i, Math.min(i + CHUNK, end)));
  }
  return s;
}

/** Whether every byte of `bytes` is ASCII, checked by one native UTF-8 decode. */
function isAscii(bytes) {
  try {
    // Valid UTF-8 decodes to as many UTF-16 units as it has bytes only if all are ASCII.
    return asciiDecoder.decode(bytes).length === bytes.length;
  } catch {
    return false;
  }
}

/**
 * The count stored at `bytes[at..at + 8]`, a little-endian u64, as a number; an error
 * above 2^53 - 1. `where` names the bytes for that error.
 */
function readCount(bytes, at, where) {
  const lo = (bytes[at] | (bytes[at + 1] << 8) | (bytes[at + 2] << 16) | (bytes[at + 3] << 24)) >>> 0;
  const hi = (bytes[at + 4] | (bytes[at + 5] << 8) | (bytes[at + 6] << 16) | (bytes[at + 7] << 24)) >>> 0;
  if (hi > MAX_HIGH_WORD) {
    throw fail(`js-counter found a count of ${(BigInt(hi) << 32n) | BigInt(lo)} in ${where}: above 2^53 - 1`);
  }
  return hi * TWO_POW_32 + lo;
}

/** Writes `c` (a safe integer >= 0) at `bytes[at..at + 8]` as a little-endian u64. */
function writeCount(bytes, at, c) {
  const lo = c >>> 0;
  const hi = Math.floor(c / TWO_POW_32);
  bytes[at] = lo;
  bytes[at + 1] = lo >>> 8;
  bytes[at + 2] = lo >>> 16;
  bytes[at + 3] = lo >>> 24;
  bytes[at + 4] = hi;
  bytes[at + 5] = hi >>> 8;
  bytes[at + 6] = hi >>> 16;
  bytes[at + 7] = hi >>> 24;
}

export const handler = {
  open(ctx) {
    count = withState('open', () => ValueState.open('count'));
    seen = 0;
    write('info', `js-counter opened on subtask ${ctx.subtaskIndex} of ${ctx.parallelism}`);
  },

  restoreState(state) {
    if (state.length === 0) {
      seen = 0;
      return;
    }
    if (state.length !== COUNT_BYTES) {
      throw fail(`js-counter cannot read its snapshot: ${state.length} bytes, expected ${COUNT_BYTES}`);
    }
    const restored = readCount(state, 0, 'its snapshot');
    seen = restored;
  },

  process(batch) {
    if (count === null) {
      throw fail('`process` was called on js-counter before `open` succeeded');
    }
    const { keys, flags } = batch;
    const n = flags.length;
    if (n === 0) {
      return;
    }
    const keyBytes = keys.bytes;
    const keyEnds = keys.ends;
    if (keyEnds.length !== n) {
      throw fail(`js-counter got a batch of ${n} records with ${keyEnds.length} keys`);
    }

    // In the common case every key is ASCII: then one native decode of the key buffer
    // gives every key as a cheap slice of one string, the key's bytes are its text, and
    // the output values can be built as one string.
    const ascii = isAscii(keyBytes);
    const keyText = ascii ? asciiDecoder.decode(keyBytes) : '';

    // The batch's distinct keys, in order of first appearance, and each record's index
    // into them.
    const slotOf = new Map();
    const slots = new Uint32Array(n);
    const distinctStarts = [];
    const distinctEnds = [];
    let distinctBytes = 0;
    let start = 0;
    for (let i = 0; i < n; i++) {
      const end = keyEnds[i];
      if ((flags[i] & KEYED) === 0) {
        throw fail('js-counter needs keyed input: set partition = "key-by" on this operator');
      }
      if (end < start || end > keyBytes.length) {
        throw fail(`js-counter got a batch whose key ${i} ends at ${end}, before its start or past the buffer`);
      }
      const k = ascii ? keyText.slice(start, end) : binaryKey(keyBytes, start, end);
      let slot = slotOf.get(k);
      if (slot === undefined) {
        slot = distinctStarts.length;
        slotOf.set(k, slot);
        distinctStarts.push(start);
        distinctEnds.push(end);
        distinctBytes += end - start;
      }
      slots[i] = slot;
      start = end;
    }
    const m = distinctStarts.length;

    // One buffer of the distinct keys, for getMany and setMany.
    const stateKeys = { bytes: new Uint8Array(distinctBytes), ends: new Uint32Array(m) };
    let at = 0;
    for (let j = 0; j < m; j++) {
      stateKeys.bytes.set(keyBytes.subarray(distinctStarts[j], distinctEnds[j]), at);
      at += distinctEnds[j] - distinctStarts[j];
      stateKeys.ends[j] = at;
    }

    const stored = withState('read', () => count.getMany(stateKeys));
    const counts = new Float64Array(m);
    {
      const { bytes, ends } = stored.items;
      let from = 0;
      for (let j = 0; j < m; j++) {
        const to = ends[j];
        if (stored.present[j]) {
          if (to - from !== COUNT_BYTES) {
            throw fail(`js-counter found a count of ${to - from} bytes in keyed state \`count\`, expected ${COUNT_BYTES}`);
          }
          counts[j] = readCount(bytes, from, 'keyed state `count`');
        }
        from = to;
      }
    }

    // Each distinct key's part of an output value, "<key as UTF-8>\t", made once, as
    // text and with its length in UTF-8 bytes.
    const prefixes = new Array(m);
    const prefixBytes = new Uint32Array(m);
    for (let j = 0; j < m; j++) {
      const s = distinctStarts[j];
      const e = distinctEnds[j];
      if (ascii) {
        prefixes[j] = keyText.slice(s, e) + '\t';
        prefixBytes[j] = e - s + 1;
      } else {
        prefixes[j] = utf8Decoder.decode(keyBytes.subarray(s, e)) + '\t';
        prefixBytes[j] = utf8Encoder.encode(prefixes[j]).length;
      }
    }

    // The output values as one string, encoded to UTF-8 in one native call at the end;
    // a count's digits are ASCII, so its share of the string is its share of the bytes.
    let text = '';
    const valueEnds = new Uint32Array(n);
    at = 0;
    for (let i = 0; i < n; i++) {
      const j = slots[i];
      const c = counts[j] + 1;
      counts[j] = c;
      const digits = String(c);
      text += prefixes[j] + digits;
      at += prefixBytes[j] + digits.length;
      valueEnds[i] = at;
    }

    const newCounts = new Uint8Array(m * COUNT_BYTES);
    const countEnds = new Uint32Array(m);
    for (let j = 0; j < m; j++) {
      writeCount(newCounts, j * COUNT_BYTES, counts[j]);
      countEnds[j] = (j + 1) * COUNT_BYTES;
    }
    withState('write', () => count.setMany(stateKeys, { bytes: newCounts, ends: countEnds }));

    seen += n;
    // Every record goes out with its own key, timestamp and flags: those buffers are
    // passed back as they came.
    emit({
      keys,
      values: { bytes: utf8Encoder.encode(text), ends: valueEnds },
      timestamps: batch.timestamps,
      flags,
    });
  },

  onTimer(_timers) {},

  onWatermark(_watermark) {},

  snapshotState(_checkpoint) {
    const state = new Uint8Array(COUNT_BYTES);
    writeCount(state, 0, seen);
    return state;
  },

  notifyCheckpointComplete(_checkpoint) {},

  notifyCheckpointAborted(_checkpoint) {},

  close() {
    count = null;
  },
};
