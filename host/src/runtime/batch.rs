//! The batch: the one unit of records that the data plane moves, lowers into guests,
//! partitions, persists as channel state and ships between workers.
//!
//! A [`Batch`] is a handful of contiguous buffers — every key in one, every value in
//! another, timestamps and flags one entry per record — laid out exactly as the WIT
//! `batch` record, so that it crosses into a guest in a few bulk copies and moves
//! between threads by pointer. Records are read as borrowed [`RecordRef`] views; nothing
//! is allocated per record, on either side of a channel.

use std::ops::Range;

/// Many byte strings in one buffer, as the WIT `blobs`: item `i` is
/// `bytes[ends[i-1]..ends[i]]`, the first starting at 0.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Blobs {
    /// The items, one after another.
    pub bytes: Vec<u8>,
    /// Where each item ends in `bytes`.
    pub ends: Vec<u32>,
}

/// Why a buffer that came from outside (a guest, a file) is not a valid [`Blobs`] or
/// [`Batch`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub String);

impl Blobs {
    /// No items.
    pub const fn new() -> Self {
        Self {
            bytes: Vec::new(),
            ends: Vec::new(),
        }
    }

    /// How many items there are.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Where item `i` lies in `bytes`.
    fn span(&self, i: usize) -> Range<usize> {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        start..self.ends[i] as usize
    }

    /// Item `i`. Panics when `i` is out of range; buffers from outside are checked by
    /// [`Blobs::check`] first.
    pub fn get(&self, i: usize) -> &[u8] {
        &self.bytes[self.span(i)]
    }

    /// Appends `item`.
    pub fn push(&mut self, item: &[u8]) {
        self.bytes.extend_from_slice(item);
        self.seal();
    }

    /// Appends an item written by `write` straight into the buffer.
    pub fn push_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        write(&mut self.bytes);
        self.seal();
    }

    /// Ends the item that the bytes after the last end make up.
    fn seal(&mut self) {
        // Lengths are capped far below 4 GiB by the memory limits of guests and channels.
        self.ends
            .push(u32::try_from(self.bytes.len()).unwrap_or(u32::MAX));
    }

    /// The items in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    /// Removes every item, keeping the buffers' capacity.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }

    /// Appends items `range` of `other` with one copy of their bytes.
    pub fn extend_from(&mut self, other: &Blobs, range: Range<usize>) {
        if range.is_empty() {
            return;
        }
        let from = other.span(range.start).start;
        let to = other.span(range.end - 1).end;
        let base = self.bytes.len();
        self.bytes.extend_from_slice(&other.bytes[from..to]);
        self.ends.extend(
            other.ends[range]
                .iter()
                .map(|&end| u32::try_from(base + (end as usize - from)).unwrap_or(u32::MAX)),
        );
    }

    /// Appends every item of `other`.
    pub fn append(&mut self, other: &Blobs) {
        self.extend_from(other, 0..other.len());
    }

    /// Checks that the ends never decrease and stay within the bytes, so that every
    /// [`Blobs::get`] is in range.
    pub fn check(&self, what: &str) -> Result<(), Malformed> {
        let mut previous = 0u32;
        for (i, &end) in self.ends.iter().enumerate() {
            if end < previous {
                return Err(Malformed(format!(
                    "{what}: item {i} ends at {end}, before item {} ends at {previous}",
                    i.saturating_sub(1)
                )));
            }
            previous = end;
        }
        if previous as usize != self.bytes.len() {
            return Err(Malformed(format!(
                "{what}: the items end at byte {previous}, but there are {} bytes",
                self.bytes.len()
            )));
        }
        Ok(())
    }
}

impl<'a> FromIterator<&'a [u8]> for Blobs {
    fn from_iter<I: IntoIterator<Item = &'a [u8]>>(items: I) -> Self {
        let mut blobs = Blobs::new();
        for item in items {
            blobs.push(item);
        }
        blobs
    }
}

/// Byte strings of which some may be missing, as the WIT `maybe-blobs`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MaybeBlobs {
    /// The items; a missing one is empty.
    pub items: Blobs,
    /// 1 where the item exists, 0 where it is missing.
    pub present: Vec<u8>,
}

impl MaybeBlobs {
    /// Appends `item`, or a missing item.
    pub fn push(&mut self, item: Option<&[u8]>) {
        self.items.push(item.unwrap_or_default());
        self.present.push(u8::from(item.is_some()));
    }

    /// Item `i`, if it exists.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        (self.present[i] != 0).then(|| self.items.get(i))
    }
}

/// A list of byte strings per key, as the WIT `blob-lists`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlobLists {
    /// Every list's items, list after list.
    pub items: Blobs,
    /// How many items each list has.
    pub counts: Vec<u32>,
}

impl BlobLists {
    /// Appends a list with `items`.
    pub fn push<'a>(&mut self, items: impl IntoIterator<Item = &'a [u8]>) {
        let before = self.items.len();
        for item in items {
            self.items.push(item);
        }
        self.counts
            .push(u32::try_from(self.items.len() - before).unwrap_or(u32::MAX));
    }
}

/// Bit 0 of a record's flags: it has a key.
pub const HAS_KEY: u8 = 1;
/// Bit 1 of a record's flags: it has a timestamp.
pub const HAS_TIMESTAMP: u8 = 2;

/// One record of a [`Batch`], borrowed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// The partitioning key; required on `key-by` edges.
    pub key: Option<&'a [u8]>,
    /// The payload.
    pub value: &'a [u8],
    /// Event time in milliseconds since the Unix epoch.
    pub timestamp: Option<i64>,
}

/// Records in contiguous buffers, as the WIT `batch`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// The records' keys; a record without a key has an empty item.
    pub keys: Blobs,
    /// The records' values.
    pub values: Blobs,
    /// The records' event times (0 where a record has none).
    pub timestamps: Vec<i64>,
    /// Per record, [`HAS_KEY`] and [`HAS_TIMESTAMP`].
    pub flags: Vec<u8>,
}

impl Batch {
    /// No records.
    pub const fn new() -> Self {
        Self {
            keys: Blobs::new(),
            values: Blobs::new(),
            timestamps: Vec::new(),
            flags: Vec::new(),
        }
    }

    /// How many records there are.
    pub fn len(&self) -> usize {
        self.flags.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.flags.is_empty()
    }

    /// Record `i`.
    pub fn get(&self, i: usize) -> RecordRef<'_> {
        let flags = self.flags[i];
        RecordRef {
            key: (flags & HAS_KEY != 0).then(|| self.keys.get(i)),
            value: self.values.get(i),
            timestamp: (flags & HAS_TIMESTAMP != 0).then(|| self.timestamps[i]),
        }
    }

    /// The key of record `i`, if it has one.
    pub fn key(&self, i: usize) -> Option<&[u8]> {
        (self.flags[i] & HAS_KEY != 0).then(|| self.keys.get(i))
    }

    /// The records in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = RecordRef<'_>> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    /// Appends `record`.
    pub fn push(&mut self, record: RecordRef<'_>) {
        self.push_with(record.key, record.timestamp, |value| {
            value.extend_from_slice(record.value);
        });
    }

    /// Appends a record whose value `write` writes straight into the buffer.
    pub fn push_with(
        &mut self,
        key: Option<&[u8]>,
        timestamp: Option<i64>,
        write: impl FnOnce(&mut Vec<u8>),
    ) {
        self.keys.push(key.unwrap_or_default());
        self.values.push_with(write);
        self.timestamps.push(timestamp.unwrap_or(0));
        self.flags.push(
            if key.is_some() { HAS_KEY } else { 0 }
                | if timestamp.is_some() {
                    HAS_TIMESTAMP
                } else {
                    0
                },
        );
    }

    /// Appends records `range` of `other`: a copy of each buffer's range, nothing per
    /// record.
    pub fn extend_from(&mut self, other: &Batch, range: Range<usize>) {
        self.keys.extend_from(&other.keys, range.clone());
        self.values.extend_from(&other.values, range.clone());
        self.timestamps
            .extend_from_slice(&other.timestamps[range.clone()]);
        self.flags.extend_from_slice(&other.flags[range]);
    }

    /// Appends every record of `other`.
    pub fn append(&mut self, other: &Batch) {
        self.extend_from(other, 0..other.len());
    }

    /// Moves the records of `other` to the end of this batch, leaving `other` empty;
    /// when this batch is empty, that is a swap of buffers, not a copy.
    pub fn take_from(&mut self, other: &mut Batch) {
        if self.is_empty() {
            std::mem::swap(self, other);
        } else {
            self.append(other);
        }
        other.clear();
    }

    /// Removes every record, keeping the buffers' capacity.
    pub fn clear(&mut self) {
        self.keys.clear();
        self.values.clear();
        self.timestamps.clear();
        self.flags.clear();
    }

    /// The bytes of keys and values: what the batch weighs on the host and in channel
    /// state, besides 13 bytes per record of ends, timestamp and flags.
    pub fn payload_bytes(&self) -> usize {
        self.keys.bytes.len() + self.values.bytes.len()
    }

    /// Checks a batch from outside: every buffer has one entry per record and every
    /// item is in range.
    pub fn check(&self, what: &str) -> Result<(), Malformed> {
        let n = self.flags.len();
        for (name, len) in [
            ("keys", self.keys.len()),
            ("values", self.values.len()),
            ("timestamps", self.timestamps.len()),
        ] {
            if len != n {
                return Err(Malformed(format!(
                    "{what}: {n} records have flags but {len} have {name}"
                )));
            }
        }
        self.keys.check(&format!("{what}, keys"))?;
        self.values.check(&format!("{what}, values"))
    }
}

/// The bytes of a [`Batch`] outside the process, in channel state and in the frames of
/// the exchange between workers: its buffers one after another, so that writing and
/// reading copy buffers, not records. Little-endian: the number of records (u32); the
/// keys, then the values, each as the item ends (u32 per record), the length of the
/// bytes (u64) and the bytes; the timestamps (i64 per record); the flags (a byte per
/// record).
impl Batch {
    /// How many bytes [`Batch::encode_into`] writes.
    pub fn encoded_len(&self) -> usize {
        let n = self.len();
        4 + 2 * 8 + 8 * n + 8 * n + n + self.payload_bytes()
    }

    /// Appends the encoding of the batch to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        out.extend_from_slice(&u32::try_from(self.len()).unwrap_or(u32::MAX).to_le_bytes());
        for blobs in [&self.keys, &self.values] {
            for end in &blobs.ends {
                out.extend_from_slice(&end.to_le_bytes());
            }
            out.extend_from_slice(&(blobs.bytes.len() as u64).to_le_bytes());
            out.extend_from_slice(&blobs.bytes);
        }
        for t in &self.timestamps {
            out.extend_from_slice(&t.to_le_bytes());
        }
        out.extend_from_slice(&self.flags);
    }

    /// Reads one batch that [`Batch::encode_into`] wrote from the front of `bytes`,
    /// leaving `bytes` after it, and checks it as [`Batch::check`] does.
    pub fn decode_from(bytes: &mut &[u8]) -> Result<Batch, Malformed> {
        let records = u32::from_le_bytes(take_array(bytes)?) as usize;
        let mut blobs = || -> Result<Blobs, Malformed> {
            let ends = take(bytes, records.checked_mul(4).ok_or_else(too_many)?)?
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let len = usize::try_from(u64::from_le_bytes(take_array(bytes)?))
                .map_err(|_| Malformed("a buffer is larger than memory".to_owned()))?;
            Ok(Blobs {
                bytes: take(bytes, len)?.to_vec(),
                ends,
            })
        };
        let keys = blobs()?;
        let values = blobs()?;
        let timestamps = take(bytes, records.checked_mul(8).ok_or_else(too_many)?)?
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect();
        let flags = take(bytes, records)?.to_vec();
        let batch = Batch {
            keys,
            values,
            timestamps,
            flags,
        };
        batch.check("the batch")?;
        Ok(batch)
    }
}

fn too_many() -> Malformed {
    Malformed("the batch claims more records than memory holds".to_owned())
}

/// The first `n` bytes of `bytes`, which then starts after them.
fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a [u8], Malformed> {
    if bytes.len() < n {
        return Err(Malformed(format!(
            "the batch ends {} bytes early",
            n - bytes.len()
        )));
    }
    let (head, rest) = bytes.split_at(n);
    *bytes = rest;
    Ok(head)
}

fn take_array<const N: usize>(bytes: &mut &[u8]) -> Result<[u8; N], Malformed> {
    Ok(take(bytes, N)?.try_into().unwrap_or([0; N]))
}

impl<'a> FromIterator<RecordRef<'a>> for Batch {
    fn from_iter<I: IntoIterator<Item = RecordRef<'a>>>(records: I) -> Self {
        let mut batch = Batch::new();
        for record in records {
            batch.push(record);
        }
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Batch {
        let mut batch = Batch::new();
        batch.push(RecordRef {
            key: Some(b"a"),
            value: b"one",
            timestamp: Some(7),
        });
        batch.push(RecordRef {
            key: None,
            value: b"",
            timestamp: None,
        });
        batch.push(RecordRef {
            key: Some(b""),
            value: b"three",
            timestamp: None,
        });
        batch
    }

    #[test]
    fn records_read_back_as_they_were_pushed() {
        let batch = sample();
        assert_eq!(batch.len(), 3);
        assert_eq!(batch.get(0).key, Some(&b"a"[..]));
        assert_eq!(batch.get(0).timestamp, Some(7));
        assert_eq!(batch.get(1).key, None);
        assert_eq!(batch.get(1).value, b"");
        assert_eq!(batch.get(2).key, Some(&b""[..]), "an empty key is a key");
        assert_eq!(batch.get(2).value, b"three");
        assert!(batch.check("test").is_ok());
    }

    #[test]
    fn a_range_copied_into_another_batch_keeps_every_field() {
        let source = sample();
        let mut target = sample();
        target.extend_from(&source, 1..3);
        let records: Vec<RecordRef<'_>> = target.iter().collect();
        assert_eq!(records.len(), 5);
        assert_eq!(records[3], source.get(1));
        assert_eq!(records[4], source.get(2));
        assert!(target.check("test").is_ok());
    }

    #[test]
    fn taking_from_into_an_empty_batch_moves_the_buffers() {
        let mut source = sample();
        let pointer = source.values.bytes.as_ptr();
        let mut target = Batch::new();
        target.take_from(&mut source);
        assert_eq!(target.values.bytes.as_ptr(), pointer);
        assert!(source.is_empty());
        assert_eq!(target, sample());
    }

    #[test]
    fn ends_that_go_backwards_or_past_the_bytes_are_refused() {
        let backwards = Blobs {
            bytes: vec![0; 4],
            ends: vec![3, 2, 4],
        };
        assert!(backwards.check("keys").is_err());
        let past = Blobs {
            bytes: vec![0; 4],
            ends: vec![5],
        };
        assert!(past.check("keys").is_err());
        let short = Blobs {
            bytes: vec![0; 4],
            ends: vec![3],
        };
        assert!(
            short.check("keys").is_err(),
            "trailing bytes belong to no item"
        );
    }

    #[test]
    fn a_batch_whose_buffers_disagree_on_the_record_count_is_refused() {
        let mut batch = sample();
        batch.timestamps.pop();
        let error = batch.check("the output of `count`").err();
        assert_eq!(
            error.map(|e| e.0),
            Some("the output of `count`: 3 records have flags but 2 have timestamps".into())
        );
    }

    #[test]
    fn a_batch_survives_its_encoding_and_leaves_what_follows() -> Result<(), Malformed> {
        let mut bytes = Vec::new();
        sample().encode_into(&mut bytes);
        assert_eq!(bytes.len(), sample().encoded_len());
        Batch::new().encode_into(&mut bytes);
        bytes.push(42);
        let mut rest = &bytes[..];
        assert_eq!(Batch::decode_from(&mut rest)?, sample());
        assert_eq!(Batch::decode_from(&mut rest)?, Batch::new());
        assert_eq!(rest, [42]);
        Ok(())
    }

    #[test]
    fn every_truncated_encoding_is_refused() {
        let mut bytes = Vec::new();
        sample().encode_into(&mut bytes);
        for len in 0..bytes.len() {
            let error = Batch::decode_from(&mut &bytes[..len]).err();
            assert!(error.is_some_and(|e| e.0.starts_with("the batch")), "{len}");
        }
    }

    #[test]
    fn maybe_blobs_tell_missing_items_from_empty_ones() {
        let mut found = MaybeBlobs::default();
        found.push(Some(b""));
        found.push(None);
        found.push(Some(b"x"));
        assert_eq!(found.get(0), Some(&b""[..]));
        assert_eq!(found.get(1), None);
        assert_eq!(found.get(2), Some(&b"x"[..]));
    }
}
