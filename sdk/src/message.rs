//! [`Request`] and [`Response`]: what an app's handler takes and gives back.

use crate::codec::{self, DecodeError, EncodeError};

/// An HTTP request as the host hands it to the app.
///
/// `path` and `query` are exactly as they arrived on the wire: still
/// percent-encoded, `query` without its leading `?`. Header names are
/// lowercase (the host normalises them); a repeated header appears once per
/// occurrence, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, ... (uppercase, as sent by the client).
    pub method: String,
    /// The path the app sees, starting with `/`.
    pub path: String,
    /// The raw query string, without `?`; empty when there is none.
    pub query: String,
    /// `(name, value)` pairs, names lowercase.
    pub headers: Vec<(String, String)>,
    /// The request body.
    pub body: Vec<u8>,
}

impl Request {
    /// A request with no query, headers or body (handy in tests).
    pub fn new(method: impl Into<String>, path: impl Into<String>) -> Self {
        Request {
            method: method.into(),
            path: path.into(),
            ..Request::default()
        }
    }

    /// Sets the body (builder style).
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Adds a header (builder style).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the raw query string (builder style), e.g. `"n=3&x=a%20b"`.
    pub fn with_query(mut self, query: impl Into<String>) -> Self {
        self.query = query.into();
        self
    }

    /// The body as UTF-8 text.
    pub fn text(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(&self.body)
    }

    /// The first header called `name` (compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// The first value of query parameter `name`, percent-decoded (`+` is a
    /// space). `Some("")` for `?flag` or `?flag=`.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query_params()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// Every query parameter in order, percent-decoded.
    pub fn query_params(&self) -> Vec<(String, String)> {
        self.query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (percent_decode(k, true), percent_decode(v, true))
            })
            .collect()
    }

    /// The path's non-empty segments, still percent-encoded:
    /// `/api/todos/3` gives `["api", "todos", "3"]`.
    pub fn segments(&self) -> Vec<&str> {
        self.path.split('/').filter(|s| !s.is_empty()).collect()
    }

    /// Encodes the request in the ABI's wire format.
    ///
    /// # Panics
    /// If a field is 4 GiB or longer; use [`Request::try_encode`] to get an error instead.
    pub fn encode(&self) -> Vec<u8> {
        self.try_encode()
            .expect("request field too long for the tern ABI")
    }

    /// Encodes the request, or says which field is too long for a `u32` length.
    pub fn try_encode(&self) -> Result<Vec<u8>, EncodeError> {
        codec::encode_request(self)
    }

    /// Decodes a request from the ABI's wire format; never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        codec::decode_request(bytes)
    }
}

/// An HTTP response produced by the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// HTTP status, `100..=999` (the host refuses anything else with a 502).
    pub status: u16,
    /// `(name, value)` pairs in any case. The host sets `content-length`
    /// itself and ignores `content-length`, `transfer-encoding` and
    /// `connection` given here.
    pub headers: Vec<(String, String)>,
    /// The response body.
    pub body: Vec<u8>,
}

impl Response {
    /// A response with this status, no headers and an empty body.
    pub fn new(status: u16) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// `text/plain; charset=utf-8`.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Response::new(status)
            .with_header("content-type", "text/plain; charset=utf-8")
            .with_body(body.into())
    }

    /// `text/html; charset=utf-8`.
    pub fn html(status: u16, body: impl Into<String>) -> Self {
        Response::new(status)
            .with_header("content-type", "text/html; charset=utf-8")
            .with_body(body.into())
    }

    /// `application/json` with a body the app has already serialized
    /// (see [`crate::json_string`] for quoting strings by hand).
    pub fn json_raw(status: u16, json: String) -> Self {
        Response::new(status)
            .with_header("content-type", "application/json")
            .with_body(json)
    }

    /// `application/octet-stream`.
    pub fn bytes(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Response::new(status)
            .with_header("content-type", "application/octet-stream")
            .with_body(body)
    }

    /// `404 not found` as text.
    pub fn not_found() -> Self {
        Response::text(404, "not found\n")
    }

    /// `400` with a short explanation as text.
    pub fn bad_request(why: impl std::fmt::Display) -> Self {
        Response::text(400, format!("bad request: {why}\n"))
    }

    /// `405` with an `allow` header listing the methods that would work.
    pub fn method_not_allowed(allow: &str) -> Self {
        Response::text(405, "method not allowed\n").with_header("allow", allow)
    }

    /// `204 No Content`.
    pub fn no_content() -> Self {
        Response::new(204)
    }

    /// Adds a header (builder style).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Replaces the body (builder style).
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The first header called `name` (compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// The body as UTF-8 text.
    pub fn text_body(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(&self.body)
    }

    /// Encodes the response in the ABI's wire format.
    ///
    /// # Panics
    /// If a field is 4 GiB or longer; use [`Response::try_encode`] to get an error instead.
    pub fn encode(&self) -> Vec<u8> {
        self.try_encode()
            .expect("response field too long for the tern ABI")
    }

    /// Encodes the response, or says which field is too long for a `u32` length.
    pub fn try_encode(&self) -> Result<Vec<u8>, EncodeError> {
        codec::encode_response(self)
    }

    /// Decodes a response from the ABI's wire format; never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        codec::decode_response(bytes)
    }
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Decodes `%XX` escapes (and `+` as a space when `plus_is_space`). Invalid
/// escapes are kept as they are; bytes that do not form UTF-8 become U+FFFD.
pub fn percent_decode(s: &str, plus_is_space: bool) -> String {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Quotes and escapes `s` as a JSON string literal, for apps that write their
/// JSON by hand: `json_string("a\"b")` is `"a\"b"` with the quote escaped.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_decoded() {
        let req = Request::new("GET", "/").with_query("a=1&name=two+words%21&flag&a=2&bad=%zz%4");
        assert_eq!(req.query_param("a").as_deref(), Some("1"));
        assert_eq!(req.query_param("name").as_deref(), Some("two words!"));
        assert_eq!(req.query_param("flag").as_deref(), Some(""));
        assert_eq!(req.query_param("bad").as_deref(), Some("%zz%4"));
        assert_eq!(req.query_param("missing"), None);
        assert_eq!(req.query_params().len(), 5);
    }

    #[test]
    fn percent_decoding_edges() {
        assert_eq!(percent_decode("h%C3%A9llo", false), "héllo");
        assert_eq!(percent_decode("a+b", false), "a+b");
        assert_eq!(percent_decode("%", true), "%");
        assert_eq!(percent_decode("%4", true), "%4");
        assert_eq!(percent_decode("%41", true), "A");
        assert_eq!(percent_decode("%ff", true), "\u{fffd}");
    }

    #[test]
    fn headers_are_case_insensitive() {
        let req = Request::new("GET", "/").with_header("content-type", "text/plain");
        assert_eq!(req.header("Content-Type"), Some("text/plain"));
        let resp = Response::json_raw(200, "{}".into());
        assert_eq!(resp.header("CONTENT-TYPE"), Some("application/json"));
    }

    #[test]
    fn segments_skip_empty_parts() {
        assert_eq!(
            Request::new("GET", "/api//todos/3/").segments(),
            ["api", "todos", "3"]
        );
        assert!(Request::new("GET", "/").segments().is_empty());
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(
            json_string("a\"b\\c\nd\u{1}é"),
            "\"a\\\"b\\\\c\\nd\\u0001é\""
        );
    }
}
