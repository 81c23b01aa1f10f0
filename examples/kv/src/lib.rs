//! An in-memory HTTP key-value store; the whole store moves with the app.
//!
//! - `GET /kv` lists the keys as a JSON array (sorted; `?prefix=p` filters);
//! - `GET /kv/KEY` returns the value with the content type it was stored with;
//! - `PUT /kv/KEY` stores the body (`201` when new, `204` when replaced);
//! - `DELETE /kv/KEY` removes it (`204`, or `404` when absent);
//! - `GET /` gives a one-line summary.
//!
//! `KEY` is the rest of the path after `/kv/`, percent-decoded, and may
//! contain `/`.

use std::collections::BTreeMap;
use tern_sdk::{export_app, json_string, log, percent_decode, App, Request, Response};

struct Entry {
    content_type: String,
    value: Vec<u8>,
}

/// The store.
#[derive(Default)]
pub struct Kv {
    entries: BTreeMap<String, Entry>,
    bytes: usize,
}

impl App for Kv {
    fn init() -> Self {
        log::info("kv ready");
        Kv::default()
    }

    fn handle(&mut self, req: Request) -> Response {
        let path = req.path.as_str();
        if path == "/" {
            return match req.method.as_str() {
                "GET" => Response::text(
                    200,
                    format!("kv: {} keys, {} bytes\n", self.entries.len(), self.bytes),
                ),
                _ => Response::method_not_allowed("GET"),
            };
        }
        if path == "/kv" || path == "/kv/" {
            return match req.method.as_str() {
                "GET" => self.list(req.query_param("prefix").unwrap_or_default()),
                _ => Response::method_not_allowed("GET"),
            };
        }
        let Some(raw_key) = path.strip_prefix("/kv/") else {
            return Response::not_found();
        };
        let key = percent_decode(raw_key, false);
        match req.method.as_str() {
            "GET" => match self.entries.get(&key) {
                Some(e) => Response::new(200)
                    .with_header("content-type", e.content_type.clone())
                    .with_body(e.value.clone()),
                None => Response::not_found(),
            },
            "PUT" => {
                let content_type = req
                    .header("content-type")
                    .unwrap_or("application/octet-stream")
                    .to_owned();
                self.bytes += req.body.len();
                let old = self.entries.insert(
                    key,
                    Entry {
                        content_type,
                        value: req.body,
                    },
                );
                match old {
                    Some(old) => {
                        self.bytes -= old.value.len();
                        Response::no_content()
                    }
                    None => Response::new(201),
                }
            }
            "DELETE" => match self.entries.remove(&key) {
                Some(old) => {
                    self.bytes -= old.value.len();
                    Response::no_content()
                }
                None => Response::not_found(),
            },
            _ => Response::method_not_allowed("GET, PUT, DELETE"),
        }
    }
}

impl Kv {
    fn list(&self, prefix: String) -> Response {
        let keys: Vec<String> = self
            .entries
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| json_string(k))
            .collect();
        Response::json_raw(200, format!("[{}]", keys.join(",")))
    }
}

export_app!(Kv);

#[cfg(test)]
mod tests {
    use super::*;

    fn call(kv: &mut Kv, method: &str, path: &str, body: &str) -> Response {
        kv.handle(Request::new(method, path).with_body(body))
    }

    #[test]
    fn put_get_list_delete() {
        let mut kv = Kv::init();
        assert_eq!(call(&mut kv, "PUT", "/kv/a", "1").status, 201);
        assert_eq!(call(&mut kv, "PUT", "/kv/a", "11").status, 204);
        assert_eq!(call(&mut kv, "PUT", "/kv/dir/b%20c", "2").status, 201);
        assert_eq!(call(&mut kv, "PUT", "/kv/z", "3").status, 201);
        assert_eq!(call(&mut kv, "GET", "/kv/a", "").body, b"11");
        assert_eq!(call(&mut kv, "GET", "/kv/dir/b c", "").body, b"2");
        assert_eq!(
            call(&mut kv, "GET", "/kv", "").text_body(),
            Ok(r#"["a","dir/b c","z"]"#)
        );
        let listed = kv.handle(Request::new("GET", "/kv").with_query("prefix=dir%2F"));
        assert_eq!(listed.text_body(), Ok(r#"["dir/b c"]"#));
        assert_eq!(
            call(&mut kv, "GET", "/", "").text_body(),
            Ok("kv: 3 keys, 4 bytes\n")
        );
        assert_eq!(call(&mut kv, "DELETE", "/kv/a", "").status, 204);
        assert_eq!(call(&mut kv, "DELETE", "/kv/a", "").status, 404);
        assert_eq!(call(&mut kv, "GET", "/kv/a", "").status, 404);
        assert_eq!(call(&mut kv, "POST", "/kv/a", "").status, 405);
    }

    #[test]
    fn content_type_is_kept() {
        let mut kv = Kv::init();
        kv.handle(
            Request::new("PUT", "/kv/j")
                .with_header("content-type", "application/json")
                .with_body("{}"),
        );
        assert_eq!(
            call(&mut kv, "GET", "/kv/j", "").header("content-type"),
            Some("application/json")
        );
    }
}
