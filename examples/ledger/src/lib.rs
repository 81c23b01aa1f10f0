//! A ledger of call ids: what `tern soak` deploys to check, after thousands
//! of moves, that every call it sent was applied at most once, and every
//! acknowledged one exactly once.
//!
//! - `POST /ledger` with a decimal id as the body appends it and answers
//!   its position in the ledger (`0`, `1`, ...), one line;
//! - `GET /ledger?from=N` answers the ledger's length on the first line,
//!   then the ids from position `N` on, one per line, at most
//!   [`PAGE`] of them (ask again from where the page ended);
//! - `GET /` gives a one-line summary.
//!
//! The ledger is the app's whole state: it moves with the app, and a copy
//! restored from an older checkpoint has a shorter one.

use tern_sdk::{export_app, log, App, Request, Response};

/// Ids per `GET /ledger` page.
pub const PAGE: usize = 8192;

/// The ids applied, in order.
#[derive(Debug, Default)]
pub struct Ledger {
    ids: Vec<u64>,
}

impl App for Ledger {
    fn init() -> Self {
        log::info("ledger ready");
        Ledger::default()
    }

    fn handle(&mut self, req: Request) -> Response {
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/") => Response::text(200, format!("ledger: {} ids\n", self.ids.len())),
            ("POST", "/ledger") => match req.text().unwrap_or("").trim().parse::<u64>() {
                Ok(id) => {
                    self.ids.push(id);
                    Response::text(200, format!("{}\n", self.ids.len() - 1))
                }
                Err(_) => Response::bad_request("the body must be a decimal id"),
            },
            ("GET", "/ledger") => {
                let from = req
                    .query_param("from")
                    .and_then(|f| f.parse::<usize>().ok())
                    .unwrap_or(0)
                    .min(self.ids.len());
                let end = (from + PAGE).min(self.ids.len());
                let mut body = format!("{}\n", self.ids.len());
                for id in &self.ids[from..end] {
                    body.push_str(&id.to_string());
                    body.push('\n');
                }
                Response::text(200, body)
            }
            (_, "/" | "/ledger") => Response::method_not_allowed("GET, POST"),
            _ => Response::not_found(),
        }
    }
}

export_app!(Ledger);

#[cfg(test)]
mod tests {
    use super::*;

    fn call(l: &mut Ledger, method: &str, path: &str, body: &str) -> Response {
        l.handle(Request::new(method, path).with_body(body))
    }

    #[test]
    fn appends_and_pages() {
        let mut l = Ledger::init();
        for (i, id) in [7u64, 3, 7].iter().enumerate() {
            let r = call(&mut l, "POST", "/ledger", &id.to_string());
            assert_eq!(r.text_body().unwrap(), format!("{i}\n"));
        }
        let r = l.handle(Request::new("GET", "/ledger").with_query("from=1"));
        assert_eq!(r.text_body().unwrap(), "3\n3\n7\n");
        assert_eq!(call(&mut l, "POST", "/ledger", "x").status, 400);
        assert_eq!(call(&mut l, "DELETE", "/ledger", "").status, 405);
        for i in 0..PAGE + 1 {
            call(&mut l, "POST", "/ledger", &i.to_string());
        }
        let r = call(&mut l, "GET", "/ledger", "");
        assert_eq!(r.text_body().unwrap().lines().count(), 1 + PAGE);
    }
}
