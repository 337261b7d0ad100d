//! What requests a Kafka broker supports: the ApiVersions exchange (API key 18), the
//! first request every client sends. librdkafka does the same exchange but keeps the
//! answer to itself; Weir asks once at start, so that a job whose sink needs
//! transactions is refused with the request the broker lacks instead of failing at
//! its first commit.
//!
//! The encoding and decoding are pure; [`supported`] is the one function that talks
//! to the network.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// A request the broker may support: its API key and name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Api {
    pub key: i16,
    pub name: &'static str,
}

/// The requests of a transactional producer (KIP-98).
pub(super) const TRANSACTIONS: [Api; 3] = [
    Api {
        key: 22,
        name: "InitProducerId",
    },
    Api {
        key: 24,
        name: "AddPartitionsToTxn",
    },
    Api {
        key: 26,
        name: "EndTxn",
    },
];

const API_VERSIONS: i16 = 18;
const CORRELATION_ID: i32 = 1;
/// The largest answer accepted: a broker lists a hundred APIs in about 600 bytes.
const MAX_RESPONSE: usize = 1 << 20;

/// An ApiVersions request, version 0 (understood by every broker since 0.10), framed.
fn encode_request(client_id: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&API_VERSIONS.to_be_bytes());
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&CORRELATION_ID.to_be_bytes());
    let id = client_id.as_bytes();
    body.extend_from_slice(&i16::try_from(id.len()).unwrap_or(0).to_be_bytes());
    body.extend_from_slice(&id[..usize::try_from(i16::MAX).unwrap_or(0).min(id.len())]);
    let mut framed = Vec::with_capacity(body.len() + 4);
    framed.extend_from_slice(&i32::try_from(body.len()).unwrap_or(0).to_be_bytes());
    framed.extend_from_slice(&body);
    framed
}

/// The API keys of a version-0 ApiVersions response (without its length prefix).
fn decode_response(response: &[u8]) -> Result<Vec<i16>, String> {
    let mut at = 0;
    let mut take = |n: usize| -> Result<&[u8], String> {
        let slice = response
            .get(at..at + n)
            .ok_or_else(|| "the broker's ApiVersions answer is truncated".to_owned())?;
        at += n;
        Ok(slice)
    };
    let i16_at = |b: &[u8]| i16::from_be_bytes([b[0], b[1]]);
    let correlation = take(4)?;
    if correlation != CORRELATION_ID.to_be_bytes() {
        return Err("the broker answered another request than ApiVersions".to_owned());
    }
    let error = i16_at(take(2)?);
    if error != 0 {
        return Err(format!(
            "the broker refused ApiVersions with error code {error}"
        ));
    }
    let count = take(4)?;
    let count = i32::from_be_bytes([count[0], count[1], count[2], count[3]]);
    let count = usize::try_from(count)
        .map_err(|_| "the broker listed a negative number of APIs".to_owned())?;
    let mut keys = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let entry = take(6)?;
        keys.push(i16_at(entry));
    }
    Ok(keys)
}

/// Of `wanted`, the requests that `supported` lacks.
pub(super) fn missing(supported: &[i16], wanted: &[Api]) -> Vec<Api> {
    wanted
        .iter()
        .filter(|api| !supported.contains(&api.key))
        .copied()
        .collect()
}

/// The API keys the first reachable broker of `bootstrap_servers` supports.
pub(super) fn supported(bootstrap_servers: &str, timeout: Duration) -> Result<Vec<i16>, String> {
    let mut last = String::from("no broker is listed");
    for server in bootstrap_servers
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        match ask(server, timeout) {
            Ok(keys) => return Ok(keys),
            Err(e) => last = format!("{server}: {e}"),
        }
    }
    Err(last)
}

fn ask(server: &str, timeout: Duration) -> Result<Vec<i16>, String> {
    let address = server
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or_else(|| "the address resolves to nothing".to_owned())?;
    let mut stream = TcpStream::connect_timeout(&address, timeout).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(&encode_request("weir"))
        .map_err(|e| e.to_string())?;
    let mut length = [0u8; 4];
    stream.read_exact(&mut length).map_err(|e| e.to_string())?;
    let length =
        usize::try_from(i32::from_be_bytes(length)).map_err(|_| "a negative length".to_owned())?;
    if length > MAX_RESPONSE {
        return Err(format!(
            "an answer of {length} bytes is not an ApiVersions answer"
        ));
    }
    let mut response = vec![0u8; length];
    stream
        .read_exact(&mut response)
        .map_err(|e| e.to_string())?;
    decode_response(&response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(keys: &[i16]) -> Vec<u8> {
        let mut r = CORRELATION_ID.to_be_bytes().to_vec();
        r.extend_from_slice(&0i16.to_be_bytes());
        r.extend_from_slice(&i32::try_from(keys.len()).unwrap_or(0).to_be_bytes());
        for key in keys {
            r.extend_from_slice(&key.to_be_bytes());
            r.extend_from_slice(&0i16.to_be_bytes());
            r.extend_from_slice(&3i16.to_be_bytes());
        }
        r
    }

    #[test]
    fn the_request_is_a_framed_api_versions_v0_header() {
        let request = encode_request("weir");
        assert_eq!(&request[..4], &14i32.to_be_bytes());
        assert_eq!(&request[4..6], &18i16.to_be_bytes());
        assert_eq!(&request[6..8], &0i16.to_be_bytes());
        assert_eq!(&request[12..14], &4i16.to_be_bytes());
        assert_eq!(&request[14..], b"weir");
    }

    #[test]
    fn the_keys_of_a_response_are_read_back() {
        assert_eq!(
            decode_response(&response(&[0, 1, 18, 22])),
            Ok(vec![0, 1, 18, 22])
        );
    }

    #[test]
    fn a_truncated_or_refused_response_is_an_error() {
        let full = response(&[0, 1]);
        assert!(decode_response(&full[..full.len() - 1]).is_err());
        let mut refused = full.clone();
        refused[5] = 35;
        assert!(matches!(decode_response(&refused), Err(e) if e.contains("error code 35")));
    }

    #[test]
    fn a_broker_without_end_txn_lacks_exactly_that_for_transactions() {
        let missing = missing(&[0, 1, 3, 18, 22, 24], &TRANSACTIONS);
        assert_eq!(
            missing.iter().map(|a| a.name).collect::<Vec<_>>(),
            ["EndTxn"]
        );
        assert!(super::missing(&[22, 24, 26], &TRANSACTIONS).is_empty());
    }
}
