//! Checksums and the `_metadata` frame: how storage tells what it wrote from a torn,
//! truncated or changed file. Pure functions over bytes; no I/O. It may not look inside
//! a payload: the metadata's content belongs to the checkpoint coordinator.
//!
//! A `_metadata` file is a 24-byte header followed by the payload, integers
//! little-endian:
//!
//! ```text
//! offset  0  8 bytes  magic "WEIRMETA"
//! offset  8  u32      format version (1)
//! offset 12  u64      payload length in bytes
//! offset 20  u32      CRC32C of the payload
//! offset 24           payload
//! ```
//!
//! Every single-bit flip is caught: in the magic or version by their check, in the
//! length by comparing it with the file's size, in the payload or its CRC by the CRC.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::FileHandle;

/// The first bytes of every `_metadata` file.
const MAGIC: &[u8; 8] = b"WEIRMETA";

/// The frame format this build writes and reads.
const FORMAT_VERSION: u32 = 1;

/// Magic (8) + version (4) + length (8) + CRC32C (4).
const HEADER_LEN: usize = 24;

/// The CRC32C (Castagnoli) of `bytes`: the checksum in every [`FileHandle`] and in the
/// `_metadata` header. CRC32C because S3 stores and verifies it natively
/// (`x-amz-checksum-crc32c`) and CPUs compute it in hardware.
pub fn checksum(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// `bytes.len()` as the `u64` that handles and headers carry.
pub(crate) fn len_u64(bytes: &[u8]) -> u64 {
    // A usize is at most 64 bits on every target Weir builds for.
    u64::try_from(bytes.len()).unwrap_or(u64::MAX)
}

/// Wraps a metadata payload in its header.
pub(crate) fn frame(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER_LEN + payload.len());
    out.put_slice(MAGIC);
    out.put_u32_le(FORMAT_VERSION);
    out.put_u64_le(len_u64(payload));
    out.put_u32_le(checksum(payload));
    out.put_slice(payload);
    out.freeze()
}

/// The payload of a framed `_metadata` file, or why the file is corrupt.
pub(crate) fn unframe(framed: Bytes) -> Result<Bytes, String> {
    let Some((header, payload)) = framed.split_at_checked(HEADER_LEN) else {
        return Err(format!(
            "it is {} bytes, shorter than the {HEADER_LEN}-byte header: torn by a crash or truncated",
            framed.len()
        ));
    };
    let (magic, mut fields) = header.split_at(MAGIC.len());
    if magic != MAGIC {
        return Err("it does not start with WEIRMETA: not a Weir checkpoint metadata file".into());
    }
    // `fields` is exactly the 16 bytes these three reads take.
    let version = fields.get_u32_le();
    let length = fields.get_u64_le();
    let crc = fields.get_u32_le();
    if version != FORMAT_VERSION {
        return Err(format!(
            "its format version is {version}, and this Weir reads version {FORMAT_VERSION}"
        ));
    }
    let actual_length = len_u64(payload);
    if length != actual_length {
        return Err(format!(
            "its header announces {length} payload bytes and it holds {actual_length}: torn by a crash or truncated"
        ));
    }
    let actual_crc = checksum(payload);
    if crc != actual_crc {
        return Err(format!(
            "its payload's CRC32C is {actual_crc:08x}, its header says {crc:08x}"
        ));
    }
    Ok(framed.slice(HEADER_LEN..))
}

/// Whether `bytes` are what `handle` describes; the reason if not.
pub(crate) fn verify(handle: &FileHandle, bytes: &[u8]) -> Result<(), String> {
    let size = len_u64(bytes);
    if size != handle.size {
        return Err(format!(
            "it is {size} bytes, its handle says {}: truncated or replaced",
            handle.size
        ));
    }
    let crc = checksum(bytes);
    if crc != handle.checksum {
        return Err(format!(
            "its CRC32C is {crc:08x}, its handle says {:08x}",
            handle.checksum
        ));
    }
    Ok(())
}

/// Why `existing` content cannot take the name `handle` was made for, if it differs.
pub(crate) fn conflict(handle: &FileHandle, existing: &[u8]) -> Option<String> {
    let (size, crc) = (len_u64(existing), checksum(existing));
    (size != handle.size || crc != handle.checksum).then(|| {
        format!(
            "it is {size} bytes with CRC32C {crc:08x}, the new content {} bytes with CRC32C {:08x}",
            handle.size, handle.checksum
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // The check value of CRC-32C (iSCSI), RFC 3720 B.4.
        assert_eq!(checksum(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn a_framed_payload_unframes_to_itself() {
        let framed = frame(b"{\"id\":7}");
        assert_eq!(framed.len(), HEADER_LEN + 8);
        assert_eq!(
            unframe(framed).expect("intact frame"),
            Bytes::from_static(b"{\"id\":7}")
        );
    }

    #[test]
    fn an_empty_payload_is_framed_too() {
        assert_eq!(unframe(frame(b"")).expect("intact frame"), Bytes::new());
    }

    #[test]
    fn every_single_bit_flip_of_a_frame_is_caught() {
        let framed = frame(b"payload");
        for byte in 0..framed.len() {
            for bit in 0..8 {
                let mut bad = framed.to_vec();
                bad[byte] ^= 1 << bit;
                assert!(
                    unframe(Bytes::from(bad)).is_err(),
                    "flip of bit {bit} in byte {byte} passed"
                );
            }
        }
    }

    #[test]
    fn every_truncation_of_a_frame_is_caught() {
        let framed = frame(b"payload");
        for len in 0..framed.len() {
            assert!(unframe(framed.slice(..len)).is_err(), "length {len} passed");
        }
    }

    #[test]
    fn a_newer_format_version_is_named_in_the_reason() {
        let mut bad = frame(b"x").to_vec();
        bad[8] = 2;
        let reason = unframe(Bytes::from(bad)).expect_err("version 2 refused");
        assert!(reason.contains("version is 2"), "{reason}");
    }

    #[test]
    fn a_handle_with_the_wrong_size_or_checksum_fails_verification() {
        let handle = FileHandle {
            path: "chk-1/a".into(),
            size: 3,
            checksum: checksum(b"abc"),
        };
        assert!(verify(&handle, b"abc").is_ok());
        assert!(verify(&handle, b"ab").is_err());
        assert!(verify(&handle, b"abd").is_err());
    }

    #[test]
    fn a_conflict_shows_both_contents() {
        let handle = FileHandle {
            path: "shared/a".into(),
            size: 3,
            checksum: checksum(b"abc"),
        };
        assert_eq!(conflict(&handle, b"abc"), None);
        let reason = conflict(&handle, b"abcd").expect("differs");
        assert!(reason.starts_with("it is 4 bytes with CRC32C "), "{reason}");
        assert!(reason.contains("the new content 3 bytes"), "{reason}");
    }
}
