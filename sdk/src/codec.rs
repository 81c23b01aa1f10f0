//! The byte encoding of requests and responses (guest ABI v1).
//!
//! Every integer is a `u32` in little-endian order; every string is UTF-8;
//! every string or byte field is a `u32` length followed by that many bytes.
//!
//! ```text
//! request  = method, path, query, header_count:u32, (name, value)*, body
//! response = status:u32,          header_count:u32, (name, value)*, body
//! ```
//!
//! The code is pure and target-independent: the host decodes responses and
//! encodes requests with the same functions the guest uses. Decoding never
//! panics and never allocates more than the input can justify: a length that
//! runs past the end of the input, a header count larger than the remaining
//! bytes could hold, invalid UTF-8, bytes left over after the body, or a status
//! outside `100..=999` is a [`DecodeError`].

use crate::{Request, Response};
use std::fmt;

/// Smallest encoding of one header: two `u32` lengths with empty strings.
const MIN_HEADER_LEN: usize = 8;

/// Why a byte string is not a valid encoded request or response.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ends before `field` does: `needed` bytes were declared or
    /// required at `offset`, only `available` remain.
    Truncated {
        /// The field being read (`"method"`, `"header name"`, `"body"`, ...).
        field: &'static str,
        /// Byte offset in the input where the field starts.
        offset: usize,
        /// Bytes the field needs.
        needed: u64,
        /// Bytes left in the input from `offset`.
        available: usize,
    },
    /// A string field is not valid UTF-8.
    InvalidUtf8 {
        /// The field being read.
        field: &'static str,
        /// Byte offset of the string's first byte.
        offset: usize,
    },
    /// The body is followed by `extra` more bytes, starting at `offset`.
    TrailingBytes {
        /// Byte offset of the first extra byte.
        offset: usize,
        /// Number of extra bytes.
        extra: usize,
    },
    /// A response status outside `100..=999`.
    InvalidStatus {
        /// The status as encoded.
        status: u32,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated { field, offset, needed, available } => write!(
                f,
                "truncated message: {field} at byte {offset} needs {needed} bytes but only {available} remain"
            ),
            DecodeError::InvalidUtf8 { field, offset } => {
                write!(f, "{field} at byte {offset} is not valid UTF-8")
            }
            DecodeError::TrailingBytes { offset, extra } => {
                write!(f, "{extra} unexpected bytes after the body, at byte {offset}")
            }
            DecodeError::InvalidStatus { status } => {
                write!(f, "status {status} is not an HTTP status (100..=999)")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// A field is longer than a `u32` length can express (only possible on
/// 64-bit hosts: a guest's memory is smaller than 4 GiB).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodeError {
    /// The field that is too long.
    pub field: &'static str,
    /// Its length in bytes.
    pub len: usize,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is {} bytes long, more than a u32 length allows",
            self.field, self.len
        )
    }
}

impl std::error::Error for EncodeError {}

/// Encodes a request (host to guest).
pub fn encode_request(req: &Request) -> Result<Vec<u8>, EncodeError> {
    let mut w = Writer::with_capacity(
        16 + req.method.len()
            + req.path.len()
            + req.query.len()
            + headers_len(&req.headers)
            + req.body.len(),
    );
    w.bytes("method", req.method.as_bytes())?;
    w.bytes("path", req.path.as_bytes())?;
    w.bytes("query", req.query.as_bytes())?;
    w.headers(&req.headers)?;
    w.bytes("body", &req.body)?;
    Ok(w.buf)
}

/// Decodes a request. See the [module docs](self) for what is rejected.
pub fn decode_request(buf: &[u8]) -> Result<Request, DecodeError> {
    let mut r = Reader { buf, pos: 0 };
    let method = r.string("method")?;
    let path = r.string("path")?;
    let query = r.string("query")?;
    let headers = r.headers()?;
    let body = r.bytes("body")?.to_vec();
    r.finish()?;
    Ok(Request {
        method,
        path,
        query,
        headers,
        body,
    })
}

/// Encodes a response (guest to host).
pub fn encode_response(resp: &Response) -> Result<Vec<u8>, EncodeError> {
    let mut w = Writer::with_capacity(12 + headers_len(&resp.headers) + resp.body.len());
    w.u32(u32::from(resp.status));
    w.headers(&resp.headers)?;
    w.bytes("body", &resp.body)?;
    Ok(w.buf)
}

/// Decodes a response. See the [module docs](self) for what is rejected.
pub fn decode_response(buf: &[u8]) -> Result<Response, DecodeError> {
    let mut r = Reader { buf, pos: 0 };
    let status = r.u32("status")?;
    if !(100..=999).contains(&status) {
        return Err(DecodeError::InvalidStatus { status });
    }
    let headers = r.headers()?;
    let body = r.bytes("body")?.to_vec();
    r.finish()?;
    // The range check above makes the conversion lossless.
    Ok(Response {
        status: status as u16,
        headers,
        body,
    })
}

fn headers_len(headers: &[(String, String)]) -> usize {
    headers
        .iter()
        .map(|(n, v)| MIN_HEADER_LEN + n.len() + v.len())
        .sum()
}

struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn with_capacity(cap: usize) -> Self {
        Writer {
            buf: Vec::with_capacity(cap),
        }
    }

    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    fn len(&mut self, field: &'static str, len: usize) -> Result<(), EncodeError> {
        let v = u32::try_from(len).map_err(|_| EncodeError { field, len })?;
        self.u32(v);
        Ok(())
    }

    fn bytes(&mut self, field: &'static str, b: &[u8]) -> Result<(), EncodeError> {
        self.len(field, b.len())?;
        self.buf.extend_from_slice(b);
        Ok(())
    }

    fn headers(&mut self, headers: &[(String, String)]) -> Result<(), EncodeError> {
        self.len("header count", headers.len())?;
        for (name, value) in headers {
            self.bytes("header name", name.as_bytes())?;
            self.bytes("header value", value.as_bytes())?;
        }
        Ok(())
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, field: &'static str, n: u64) -> Result<&'a [u8], DecodeError> {
        let available = self.remaining();
        if n > available as u64 {
            return Err(DecodeError::Truncated {
                field,
                offset: self.pos,
                needed: n,
                available,
            });
        }
        // `n <= available`, so it fits in usize.
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(field, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn bytes(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = self.u32(field)?;
        self.take(field, u64::from(len))
    }

    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let offset = self.pos + 4;
        let b = self.bytes(field)?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(DecodeError::InvalidUtf8 { field, offset }),
        }
    }

    fn headers(&mut self) -> Result<Vec<(String, String)>, DecodeError> {
        let offset = self.pos;
        let count = self.u32("header count")?;
        // Refuse a count the rest of the input cannot hold before allocating.
        let needed = u64::from(count) * MIN_HEADER_LEN as u64;
        if needed > self.remaining() as u64 {
            return Err(DecodeError::Truncated {
                field: "headers",
                offset,
                needed,
                available: self.remaining(),
            });
        }
        let mut headers = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let name = self.string("header name")?;
            let value = self.string("header value")?;
            headers.push((name, value));
        }
        Ok(headers)
    }

    fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(DecodeError::TrailingBytes {
                offset: self.pos,
                extra,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_request() -> Request {
        Request {
            method: "POST".into(),
            path: "/kv/h%C3%A9llo".into(),
            query: "a=1&b=two%20words".into(),
            headers: vec![
                ("content-type".into(), "text/plain".into()),
                ("x-empty".into(), String::new()),
                ("x-unicode".into(), "héllo ✓".into()),
            ],
            body: vec![0, 1, 2, 255, b'\n'],
        }
    }

    fn sample_response() -> Response {
        Response::text(201, "créé\n").with_header("x-count", "3")
    }

    #[test]
    fn request_round_trip() {
        let req = sample_request();
        let bytes = encode_request(&req).unwrap();
        assert_eq!(decode_request(&bytes).unwrap(), req);
    }

    #[test]
    fn response_round_trip() {
        let resp = sample_response();
        let bytes = encode_response(&resp).unwrap();
        assert_eq!(decode_response(&bytes).unwrap(), resp);
    }

    #[test]
    fn empty_fields_round_trip() {
        let req = Request {
            method: String::new(),
            path: String::new(),
            ..Request::default()
        };
        let bytes = encode_request(&req).unwrap();
        assert_eq!(bytes, [0u8; 20]);
        assert_eq!(decode_request(&bytes).unwrap(), req);
        let resp = Response::new(204);
        let bytes = encode_response(&resp).unwrap();
        assert_eq!(bytes, [204, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(decode_response(&bytes).unwrap(), resp);
    }

    #[test]
    fn wire_format_is_the_documented_one() {
        let req = Request {
            method: "GET".into(),
            path: "/x".into(),
            query: String::new(),
            headers: vec![("a".into(), "bc".into())],
            body: b"hi".to_vec(),
        };
        let expected: Vec<u8> = [
            &3u32.to_le_bytes()[..],
            b"GET",
            &2u32.to_le_bytes(),
            b"/x",
            &0u32.to_le_bytes(),
            &1u32.to_le_bytes(),
            &1u32.to_le_bytes(),
            b"a",
            &2u32.to_le_bytes(),
            b"bc",
            &2u32.to_le_bytes(),
            b"hi",
        ]
        .concat();
        assert_eq!(encode_request(&req).unwrap(), expected);
        let resp = Response::new(200).with_body("ok");
        assert_eq!(
            encode_response(&resp).unwrap(),
            [0xc8, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, b'o', b'k']
        );
    }

    #[test]
    fn every_truncation_of_a_request_is_an_error() {
        let bytes = encode_request(&sample_request()).unwrap();
        for cut in 0..bytes.len() {
            match decode_request(&bytes[..cut]) {
                Err(DecodeError::Truncated { .. }) => {}
                other => panic!("cut at {cut}: expected Truncated, got {other:?}"),
            }
        }
    }

    #[test]
    fn every_truncation_of_a_response_is_an_error() {
        let bytes = encode_response(&sample_response()).unwrap();
        for cut in 0..bytes.len() {
            assert!(
                matches!(
                    decode_response(&bytes[..cut]),
                    Err(DecodeError::Truncated { .. })
                ),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = encode_request(&sample_request()).unwrap();
        let len = bytes.len();
        bytes.push(0);
        assert_eq!(
            decode_request(&bytes),
            Err(DecodeError::TrailingBytes {
                offset: len,
                extra: 1
            })
        );
    }

    #[test]
    fn oversized_lengths_are_rejected_without_allocating() {
        // A method that claims 4 GiB.
        let bytes = u32::MAX.to_le_bytes();
        assert_eq!(
            decode_request(&bytes),
            Err(DecodeError::Truncated {
                field: "method",
                offset: 4,
                needed: u32::MAX as u64,
                available: 0
            })
        );
        // A header count of 2^32-1 with nothing behind it.
        let mut bytes = Vec::new();
        for _ in 0..3 {
            bytes.extend_from_slice(&0u32.to_le_bytes());
        }
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        bytes.extend_from_slice(&[0; 16]);
        match decode_request(&bytes) {
            Err(DecodeError::Truncated {
                field: "headers",
                offset: 12,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        // A response whose body length is one more than what is there.
        let mut bytes = encode_response(&Response::text(200, "abc")).unwrap();
        let body_len_at = bytes.len() - 3 - 4;
        bytes[body_len_at..body_len_at + 4].copy_from_slice(&4u32.to_le_bytes());
        assert!(matches!(
            decode_response(&bytes),
            Err(DecodeError::Truncated { field: "body", .. })
        ));
    }

    #[test]
    fn invalid_utf8_is_rejected() {
        let mut bytes = encode_request(&Request::new("GET", "/ab")).unwrap();
        // path bytes start after method (4 + 3) and the path length (4).
        bytes[11] = 0xff;
        assert_eq!(
            decode_request(&bytes),
            Err(DecodeError::InvalidUtf8 {
                field: "path",
                offset: 11
            })
        );
    }

    #[test]
    fn bad_status_is_rejected() {
        for status in [0u32, 99, 1000, u32::MAX] {
            let mut bytes = encode_response(&Response::new(200)).unwrap();
            bytes[..4].copy_from_slice(&status.to_le_bytes());
            assert_eq!(
                decode_response(&bytes),
                Err(DecodeError::InvalidStatus { status })
            );
        }
    }

    #[test]
    fn decoding_garbage_never_panics() {
        // A small deterministic fuzz: random bytes, and valid messages with
        // random bytes flipped.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let valid = encode_request(&sample_request()).unwrap();
        for _ in 0..20_000 {
            let len = (next() % 64) as usize;
            let junk: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let _ = decode_request(&junk);
            let _ = decode_response(&junk);
            let mut flipped = valid.clone();
            let i = (next() as usize) % flipped.len();
            flipped[i] = next() as u8;
            let _ = decode_request(&flipped);
            let _ = decode_response(&flipped);
        }
    }
}
