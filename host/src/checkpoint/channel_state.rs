//! The encoding of a subtask's channel state: the in-flight batches an unaligned
//! checkpoint persisted, per input channel. Storage frames and checksums the file; this
//! only lays out the batches, each as its four buffers, so that writing and replaying
//! copy buffers, not records.
//!
//! Layout, little-endian: a version byte; the number of channels (u32); per channel the
//! number of batches (u32), then each batch in [`Batch::encode_into`]'s encoding.

use crate::runtime::ChannelState;
use crate::runtime::batch::Batch;

/// The version byte the encoding starts with; a reader refuses others.
const VERSION: u8 = 1;

/// Encodes `state`.
pub fn encode(state: &ChannelState) -> Vec<u8> {
    let bytes: usize = state.iter().flatten().map(|b| b.encoded_len() + 4).sum();
    let mut out = Vec::with_capacity(bytes + 8);
    out.push(VERSION);
    put_u32(&mut out, state.len());
    for channel in state {
        put_u32(&mut out, channel.len());
        for batch in channel {
            batch.encode_into(&mut out);
        }
    }
    out
}

/// Decodes what [`encode`] wrote; a malformed file is an error that says where.
pub fn decode(bytes: &[u8]) -> Result<ChannelState, String> {
    let mut r = Reader { bytes, at: 0 };
    let version = r.take(1)?[0];
    if version != VERSION {
        return Err(format!(
            "the channel state has format version {version}, this weir reads version {VERSION}"
        ));
    }
    let channels = r.u32()?;
    let mut state = Vec::new();
    for c in 0..channels {
        let batches = r.u32()?;
        let mut channel = Vec::new();
        for b in 0..batches {
            let mut rest = &r.bytes[r.at..];
            let batch = Batch::decode_from(&mut rest)
                .map_err(|e| format!("the channel state's channel {c}, batch {b}: {e}"))?;
            r.at = r.bytes.len() - rest.len();
            channel.push(batch);
        }
        state.push(channel);
    }
    if r.at != bytes.len() {
        return Err(format!(
            "the channel state has {} bytes after its last batch",
            bytes.len() - r.at
        ));
    }
    Ok(state)
}

fn put_u32(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| {
                format!(
                    "the channel state ends at byte {} where {n} more were expected",
                    self.bytes.len()
                )
            })?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or_default(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Record;

    fn sample() -> ChannelState {
        let mut keyed = Record::new("value").with_key("key");
        keyed.timestamp = Some(-7);
        vec![
            vec![
                [Record::new("a"), keyed].iter().collect(),
                [Record::new("")].iter().collect(),
            ],
            vec![],
            vec![Batch::new()],
        ]
    }

    #[test]
    fn channel_state_survives_a_round_trip() -> Result<(), String> {
        let state = sample();
        assert_eq!(decode(&encode(&state))?, state);
        Ok(())
    }

    #[test]
    fn every_truncation_is_refused_with_a_sentence() {
        let bytes = encode(&sample());
        for len in 0..bytes.len() {
            let err = decode(&bytes[..len]).err().unwrap_or_default();
            assert!(err.starts_with("the channel state"), "{len}: {err}");
        }
    }

    #[test]
    fn an_item_end_beyond_its_bytes_is_refused() {
        let mut bytes = encode(&vec![vec![[Record::new("ab")].iter().collect()]]);
        // version, channels, batches, records, the key's end (0): the value's end is next.
        let value_end = 1 + 4 + 4 + 4 + 4 + 8;
        bytes[value_end] = 9;
        let err = decode(&bytes).err().unwrap_or_default();
        assert!(err.contains("channel 0, batch 0"), "{err}");
    }

    #[test]
    fn an_unknown_version_is_refused() {
        let mut bytes = encode(&sample());
        bytes[0] = 2;
        assert!(decode(&bytes).is_err_and(|e| e.contains("version 2")));
    }
}
