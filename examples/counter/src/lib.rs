//! The smallest tern app: a counter that survives migration.
//!
//! - `GET /` returns the count;
//! - `POST /` adds 1, or the integer in the body, and returns the new count;
//! - exports `add(i64) -> i64` and `get() -> i64` for `tern invoke`, on the
//!   same counter.

use tern_sdk::{export_app, log, App, Request, Response};

/// The app's whole state.
#[derive(Debug, Default)]
pub struct Counter {
    count: i64,
}

impl Counter {
    fn add(&mut self, n: i64) -> i64 {
        self.count = self.count.wrapping_add(n);
        self.count
    }
}

impl App for Counter {
    fn init() -> Self {
        log::info("counter ready");
        Counter::default()
    }

    fn handle(&mut self, req: Request) -> Response {
        if req.path != "/" {
            return Response::not_found();
        }
        match req.method.as_str() {
            "GET" => Response::text(200, format!("{}\n", self.count)),
            "POST" => {
                let body = req.text().unwrap_or("").trim();
                let by = if body.is_empty() {
                    Ok(1)
                } else {
                    body.parse::<i64>()
                };
                match by {
                    Ok(n) => Response::text(200, format!("{}\n", self.add(n))),
                    Err(_) => Response::bad_request("the body must be empty or an integer"),
                }
            }
            _ => Response::method_not_allowed("GET, POST"),
        }
    }
}

export_app!(Counter);

/// Adds `n` and returns the new count.
#[unsafe(no_mangle)]
pub extern "C" fn add(n: i64) -> i64 {
    tern_sdk::with_app(|c: &mut Counter| c.add(n))
}

/// Returns the count.
#[unsafe(no_mangle)]
pub extern "C" fn get() -> i64 {
    tern_sdk::with_app(|c: &mut Counter| c.count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_and_post() {
        let mut c = Counter::init();
        assert_eq!(c.handle(Request::new("GET", "/")).text_body(), Ok("0\n"));
        assert_eq!(c.handle(Request::new("POST", "/")).text_body(), Ok("1\n"));
        assert_eq!(
            c.handle(Request::new("POST", "/").with_body("41"))
                .text_body(),
            Ok("42\n")
        );
        assert_eq!(
            c.handle(Request::new("POST", "/").with_body("x")).status,
            400
        );
        assert_eq!(c.handle(Request::new("PUT", "/")).status, 405);
        assert_eq!(c.handle(Request::new("GET", "/nope")).status, 404);
    }
}
