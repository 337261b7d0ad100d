//! Records in flat buffers: the [`Batch`] an operator reads, the [`Output`] it writes,
//! and the borrowed [`RecordRef`] view of one record.
//!
//! A batch arrives as a few buffers — every key in one, every value in another,
//! timestamps and flags one entry per record — that the host copied into the guest's
//! memory in one piece each. Reading a record borrows from them; writing one appends to
//! the output's buffers, which go to the host in one call when the method returns.
//! Nothing is allocated per record.

use crate::__bindings::weir::operator::output as wit_output;
use crate::__bindings::weir::operator::types as wit;

/// Bit 0 of a record's flags: it has a key.
const HAS_KEY: u8 = 1;
/// Bit 1 of a record's flags: it has a timestamp.
const HAS_TIMESTAMP: u8 = 2;

/// Item `i` of flat `blobs`: `bytes[ends[i-1]..ends[i]]`.
pub(crate) fn item(blobs: &wit::Blobs, i: usize) -> &[u8] {
    let start = if i == 0 {
        0
    } else {
        blobs.ends[i - 1] as usize
    };
    &blobs.bytes[start..blobs.ends[i] as usize]
}

/// Appends `item` to flat `blobs`.
pub(crate) fn push(blobs: &mut wit::Blobs, item: &[u8]) {
    blobs.bytes.extend_from_slice(item);
    seal(blobs);
}

/// Ends the item made of the bytes after the last end.
fn seal(blobs: &mut wit::Blobs) {
    // The guest's memory limit keeps a call's output far below 4 GiB.
    blobs
        .ends
        .push(u32::try_from(blobs.bytes.len()).unwrap_or(u32::MAX));
}

/// Empty flat blobs.
pub(crate) const fn empty_blobs() -> wit::Blobs {
    wit::Blobs {
        bytes: Vec::new(),
        ends: Vec::new(),
    }
}

/// One record, borrowed from a [`Batch`] (or built to pass to [`Output::emit`]).
///
/// ```
/// use weir_sdk::RecordRef;
///
/// let record = RecordRef::new(b"hello").with_key(b"greeting").with_timestamp(42);
/// assert_eq!(record.value, b"hello");
/// assert_eq!(record.key, Some(&b"greeting"[..]));
/// assert_eq!(record.timestamp, Some(42));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct RecordRef<'a> {
    /// The partitioning key. Operators downstream of a `key-by` edge see every record of
    /// a key on the same subtask; keyed state is addressed by this key.
    pub key: Option<&'a [u8]>,
    /// The payload. Weir never looks inside it.
    pub value: &'a [u8],
    /// Event time in milliseconds since the Unix epoch, if the record has one.
    pub timestamp: Option<i64>,
}

impl<'a> RecordRef<'a> {
    /// A record with this value, no key and no timestamp.
    ///
    /// ```
    /// assert_eq!(weir_sdk::RecordRef::new(b"x").key, None);
    /// ```
    pub const fn new(value: &'a [u8]) -> Self {
        Self {
            key: None,
            value,
            timestamp: None,
        }
    }

    /// The record with its key set to `key`.
    ///
    /// ```
    /// let record = weir_sdk::RecordRef::new(b"1").with_key(b"river");
    /// assert_eq!(record.key, Some(&b"river"[..]));
    /// ```
    #[must_use]
    pub const fn with_key(mut self, key: &'a [u8]) -> Self {
        self.key = Some(key);
        self
    }

    /// The record with its event time set to `timestamp`.
    ///
    /// ```
    /// assert_eq!(weir_sdk::RecordRef::new(b"x").with_timestamp(7).timestamp, Some(7));
    /// ```
    #[must_use]
    pub const fn with_timestamp(mut self, timestamp: i64) -> Self {
        self.timestamp = Some(timestamp);
        self
    }
}

/// A batch of records in flat buffers, as the host passes it to
/// [`crate::Operator::process`]. Read records with [`Batch::get`] or [`Batch::iter`]:
/// each is a view into the batch's buffers.
///
/// ```
/// use weir_sdk::{Batch, RecordRef};
///
/// let batch: Batch = [RecordRef::new(b"a").with_key(b"k"), RecordRef::new(b"b")]
///     .into_iter()
///     .collect();
/// assert_eq!(batch.len(), 2);
/// assert_eq!(batch.get(0).key, Some(&b"k"[..]));
/// let values: Vec<&[u8]> = batch.iter().map(|r| r.value).collect();
/// assert_eq!(values, [&b"a"[..], b"b"]);
/// ```
#[derive(Debug)]
pub struct Batch {
    raw: wit::Batch,
}

impl Batch {
    /// How many records the batch has.
    pub fn len(&self) -> usize {
        self.raw.flags.len()
    }

    /// Whether it has none.
    pub fn is_empty(&self) -> bool {
        self.raw.flags.is_empty()
    }

    /// Record `i`; panics when `i >= len()`.
    pub fn get(&self, i: usize) -> RecordRef<'_> {
        record_at(&self.raw, i)
    }

    /// The records in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = RecordRef<'_>> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    /// The batch the host passed; the SDK checked its shape.
    pub(crate) fn from_raw(raw: wit::Batch) -> core::result::Result<Self, String> {
        let n = raw.flags.len();
        let consistent = raw.keys.ends.len() == n
            && raw.values.ends.len() == n
            && raw.timestamps.len() == n
            && ends_fit(&raw.keys)
            && ends_fit(&raw.values);
        if consistent {
            Ok(Self { raw })
        } else {
            Err(format!(
                "the host passed a malformed batch of {n} records; this operator was built against weir:operator@0.2.0"
            ))
        }
    }
}

/// Record `i` of a batch in the host's layout.
fn record_at(raw: &wit::Batch, i: usize) -> RecordRef<'_> {
    let flags = raw.flags[i];
    RecordRef {
        key: (flags & HAS_KEY != 0).then(|| item(&raw.keys, i)),
        value: item(&raw.values, i),
        timestamp: (flags & HAS_TIMESTAMP != 0).then(|| raw.timestamps[i]),
    }
}

/// Whether the ends of `blobs` never decrease and stay within its bytes.
pub(crate) fn ends_fit(blobs: &wit::Blobs) -> bool {
    blobs.ends.windows(2).all(|w| w[0] <= w[1])
        && blobs
            .ends
            .last()
            .is_none_or(|&end| end as usize <= blobs.bytes.len())
}

/// An empty batch of the host's layout.
const fn empty_batch() -> wit::Batch {
    wit::Batch {
        keys: empty_blobs(),
        values: empty_blobs(),
        timestamps: Vec::new(),
        flags: Vec::new(),
    }
}

/// Appends a record whose value `write` writes into the buffer.
fn push_record(
    raw: &mut wit::Batch,
    key: Option<&[u8]>,
    timestamp: Option<i64>,
    write: impl FnOnce(&mut Vec<u8>),
) {
    push(&mut raw.keys, key.unwrap_or_default());
    write(&mut raw.values.bytes);
    seal(&mut raw.values);
    raw.timestamps.push(timestamp.unwrap_or(0));
    raw.flags.push(
        if key.is_some() { HAS_KEY } else { 0 }
            | if timestamp.is_some() {
                HAS_TIMESTAMP
            } else {
                0
            },
    );
}

impl<'a> FromIterator<RecordRef<'a>> for Batch {
    /// Builds a batch, for driving an operator in a native unit test.
    fn from_iter<I: IntoIterator<Item = RecordRef<'a>>>(records: I) -> Self {
        let mut raw = empty_batch();
        for r in records {
            push_record(&mut raw, r.key, r.timestamp, |v| {
                v.extend_from_slice(r.value)
            });
        }
        Self { raw }
    }
}

/// Records emitted during one call of [`crate::Operator::process`],
/// [`crate::Operator::on_timer`], [`crate::Operator::on_watermark`] or
/// [`crate::Operator::close`].
///
/// They are appended to flat buffers and go downstream, in order, in a single host call
/// after the method returns `Ok`; when it returns an error they are dropped, as the
/// attempt fails anyway. The buffers are reused from call to call.
///
/// ```
/// use std::io::Write;
/// use weir_sdk::{Output, RecordRef};
///
/// let mut out = Output::new();
/// out.emit(RecordRef::new(b"one"));
/// out.emit(RecordRef::new(b"two").with_key(b"k"));
/// // Write a value straight into the buffer, without a String per record:
/// out.emit_with(Some(b"river"), None, |value| { let _ = write!(value, "river\t{}", 3); });
/// assert_eq!(out.len(), 3);
/// assert_eq!(out.get(2).value, b"river\t3");
/// ```
#[derive(Debug)]
pub struct Output {
    raw: wit::Batch,
}

impl Default for Output {
    fn default() -> Self {
        Self::new()
    }
}

/// The most value bytes an idle [`Output`] keeps room for. One call that emits far more
/// than usual (an unbounded flat-map, say) must not pin that memory for the life of the
/// instance; 1 MiB covers the host's batches of ~1000 records with ample fan-out.
const RETAINED_BYTES: usize = 1 << 20;

/// The most records an idle [`Output`] keeps room for, for the same reason.
const RETAINED_RECORDS: usize = 16 * 1024;

impl Output {
    /// An empty buffer. The SDK makes the one the host's calls use; make your own to
    /// drive an operator in a native unit test.
    ///
    /// ```
    /// assert!(weir_sdk::Output::new().is_empty());
    /// ```
    pub const fn new() -> Self {
        Self { raw: empty_batch() }
    }

    /// Queues `record` (a [`RecordRef`], or a `&`[`crate::Record`]) to go downstream,
    /// copying its key and value into the buffers.
    ///
    /// ```
    /// let mut out = weir_sdk::Output::new();
    /// out.emit(weir_sdk::RecordRef::new(b"hello").with_key(b"greeting"));
    /// assert_eq!(out.get(0).value, b"hello");
    /// ```
    pub fn emit<'r>(&mut self, record: impl Into<RecordRef<'r>>) {
        let record = record.into();
        push_record(&mut self.raw, record.key, record.timestamp, |v| {
            v.extend_from_slice(record.value);
        });
    }

    /// Queues a record whose value `write` appends to the given buffer (which already
    /// holds the values queued before: append only).
    ///
    /// ```
    /// let mut out = weir_sdk::Output::new();
    /// out.emit_with(None, Some(5), |value| value.extend_from_slice(b"made in place"));
    /// assert_eq!(out.get(0).value, b"made in place");
    /// assert_eq!(out.get(0).timestamp, Some(5));
    /// ```
    pub fn emit_with(
        &mut self,
        key: Option<&[u8]>,
        timestamp: Option<i64>,
        write: impl FnOnce(&mut Vec<u8>),
    ) {
        push_record(&mut self.raw, key, timestamp, write);
    }

    /// How many records are queued.
    pub fn len(&self) -> usize {
        self.raw.flags.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.raw.flags.is_empty()
    }

    /// Queued record `i`; panics when `i >= len()`.
    pub fn get(&self, i: usize) -> RecordRef<'_> {
        record_at(&self.raw, i)
    }

    /// The queued records in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = RecordRef<'_>> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    /// Sends the queued records to the host in one `output.emit` call and empties the
    /// buffers.
    pub(crate) fn flush(&mut self) {
        if !self.is_empty() {
            wit_output::emit(&self.raw);
        }
        self.discard();
    }

    /// Empties the buffers without sending anything, keeping a usual call's room.
    pub(crate) fn discard(&mut self) {
        let raw = &mut self.raw;
        for blobs in [&mut raw.keys, &mut raw.values] {
            blobs.bytes.clear();
            blobs.bytes.shrink_to(RETAINED_BYTES);
            blobs.ends.clear();
            blobs.ends.shrink_to(RETAINED_RECORDS);
        }
        raw.timestamps.clear();
        raw.timestamps.shrink_to(RETAINED_RECORDS);
        raw.flags.clear();
        raw.flags.shrink_to(RETAINED_RECORDS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_with_their_key_value_and_timestamp() {
        let batch: Batch = [
            RecordRef::new(b"a").with_key(b"").with_timestamp(-1),
            RecordRef::new(b""),
        ]
        .into_iter()
        .collect();
        assert_eq!(batch.get(0).key, Some(&b""[..]), "an empty key is a key");
        assert_eq!(batch.get(0).timestamp, Some(-1));
        assert_eq!(batch.get(1), RecordRef::new(b""));
    }

    #[test]
    fn a_batch_whose_ends_overrun_its_bytes_is_refused() {
        let mut raw = empty_batch();
        push_record(&mut raw, None, None, |v| v.push(1));
        raw.values.ends[0] = 9;
        assert!(Batch::from_raw(raw).is_err());
    }

    #[test]
    fn discarding_keeps_the_room_of_a_usual_call_and_releases_an_outsized_one() {
        let mut out = Output::new();
        for _ in 0..1000 {
            out.emit(RecordRef::new(&[0; 8]));
        }
        out.discard();
        assert!(out.is_empty());
        assert!(out.raw.values.bytes.capacity() >= 8000);
        for _ in 0..RETAINED_RECORDS * 2 {
            out.emit(RecordRef::new(&[0; 128]));
        }
        out.discard();
        assert!(out.raw.values.bytes.capacity() <= RETAINED_BYTES);
        assert!(out.raw.flags.capacity() <= RETAINED_RECORDS);
    }
}
