//! A todo list: an HTML page over a small JSON API.
//!
//! - `GET /` serves the page (`index.html`, compiled in);
//! - `GET /api/todos` lists todos: `[{"id":1,"title":"...","done":false,"created_ms":...}]`;
//! - `POST /api/todos` with `{"title": "..."}` (and optionally `"done"`) adds one: `201`;
//! - `PATCH /api/todos/ID` with `"title"` and/or `"done"` changes one;
//! - `DELETE /api/todos/ID` removes one: `204`.
//!
//! JSON is parsed and written by hand ([`json`]) to keep the module free of
//! dependencies.

pub mod json;

use json::Value;
use tern_sdk::{export_app, json_string, log, App, Request, Response};

const PAGE: &str = include_str!("index.html");
const MAX_TITLE: usize = 500;

/// One item.
#[derive(Debug, Clone, PartialEq)]
pub struct Todo {
    pub id: u64,
    pub title: String,
    pub done: bool,
    pub created_ms: i64,
}

impl Todo {
    fn to_json(&self) -> String {
        format!(
            r#"{{"id":{},"title":{},"done":{},"created_ms":{}}}"#,
            self.id,
            json_string(&self.title),
            self.done,
            self.created_ms
        )
    }
}

/// The list.
#[derive(Debug, Default)]
pub struct Todos {
    items: Vec<Todo>,
    next_id: u64,
}

impl App for Todos {
    fn init() -> Self {
        log::info("todo ready");
        Todos {
            items: Vec::new(),
            next_id: 1,
        }
    }

    fn handle(&mut self, req: Request) -> Response {
        let segments = req.segments();
        match (req.method.as_str(), segments.as_slice()) {
            ("GET", []) | ("GET", ["index.html"]) => Response::html(200, PAGE),
            (_, []) => Response::method_not_allowed("GET"),
            ("GET", ["api", "todos"]) => self.list(),
            ("POST", ["api", "todos"]) => self.create(&req),
            (_, ["api", "todos"]) => Response::method_not_allowed("GET, POST"),
            (method, ["api", "todos", id]) => {
                let Ok(id) = id.parse::<u64>() else {
                    return Response::not_found();
                };
                match method {
                    "GET" => match self.items.iter().find(|t| t.id == id) {
                        Some(t) => Response::json_raw(200, t.to_json()),
                        None => Response::not_found(),
                    },
                    "PATCH" => self.update(id, &req),
                    "DELETE" => self.delete(id),
                    _ => Response::method_not_allowed("GET, PATCH, DELETE"),
                }
            }
            _ => Response::not_found(),
        }
    }
}

/// Reads the request body as a JSON object, or says why it is not one.
fn body_object(req: &Request) -> Result<Value, Response> {
    let text = req
        .text()
        .map_err(|_| Response::bad_request("the body is not UTF-8"))?;
    match json::parse(text) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(Response::bad_request("expected a JSON object")),
        Err(e) => Err(Response::bad_request(format!("invalid JSON: {e}"))),
    }
}

fn title_of(v: &Value) -> Result<Option<String>, Response> {
    match v.get("title") {
        None => Ok(None),
        Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= MAX_TITLE => {
            Ok(Some(s.trim().to_owned()))
        }
        Some(_) => Err(Response::bad_request(format!(
            "\"title\" must be a non-empty string of at most {MAX_TITLE} bytes"
        ))),
    }
}

fn done_of(v: &Value) -> Result<Option<bool>, Response> {
    match v.get("done") {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(Response::bad_request("\"done\" must be true or false")),
    }
}

impl Todos {
    fn list(&self) -> Response {
        let items: Vec<String> = self.items.iter().map(Todo::to_json).collect();
        Response::json_raw(200, format!("[{}]", items.join(",")))
    }

    fn create(&mut self, req: &Request) -> Response {
        let parsed = body_object(req).and_then(|v| Ok((title_of(&v)?, done_of(&v)?)));
        let (title, done) = match parsed {
            Ok((Some(title), done)) => (title, done.unwrap_or(false)),
            Ok((None, _)) => return Response::bad_request("\"title\" is required"),
            Err(resp) => return resp,
        };
        let todo = Todo {
            id: self.next_id,
            title,
            done,
            created_ms: tern_sdk::now_ms(),
        };
        self.next_id += 1;
        let resp = Response::json_raw(201, todo.to_json());
        self.items.push(todo);
        resp
    }

    fn update(&mut self, id: u64, req: &Request) -> Response {
        let Some(todo) = self.items.iter_mut().find(|t| t.id == id) else {
            return Response::not_found();
        };
        let (title, done) = match body_object(req).and_then(|v| Ok((title_of(&v)?, done_of(&v)?))) {
            Ok(changes) => changes,
            Err(resp) => return resp,
        };
        if let Some(title) = title {
            todo.title = title;
        }
        if let Some(done) = done {
            todo.done = done;
        }
        Response::json_raw(200, todo.to_json())
    }

    fn delete(&mut self, id: u64) -> Response {
        match self.items.iter().position(|t| t.id == id) {
            Some(i) => {
                self.items.remove(i);
                Response::no_content()
            }
            None => Response::not_found(),
        }
    }
}

export_app!(Todos);

#[cfg(test)]
mod tests {
    use super::*;

    fn call(app: &mut Todos, method: &str, path: &str, body: &str) -> Response {
        app.handle(Request::new(method, path).with_body(body))
    }

    #[test]
    fn crud() {
        let mut app = Todos::init();
        assert_eq!(
            call(&mut app, "GET", "/", "").header("content-type"),
            Some("text/html; charset=utf-8")
        );
        assert_eq!(
            call(&mut app, "GET", "/api/todos", "").text_body(),
            Ok("[]")
        );
        let created = call(
            &mut app,
            "POST",
            "/api/todos",
            r#"{"title":" milk \"2%\" "}"#,
        );
        assert_eq!(created.status, 201);
        let body = json::parse(created.text_body().unwrap()).unwrap();
        assert_eq!(
            body.get("title"),
            Some(&Value::String("milk \"2%\"".into()))
        );
        assert_eq!(body.get("id"), Some(&Value::Number(1.0)));
        assert_eq!(
            call(&mut app, "POST", "/api/todos", r#"{"title":"eggs"}"#).status,
            201
        );
        let patched = call(&mut app, "PATCH", "/api/todos/1", r#"{"done":true}"#);
        assert_eq!(
            json::parse(patched.text_body().unwrap())
                .unwrap()
                .get("done"),
            Some(&Value::Bool(true))
        );
        assert_eq!(call(&mut app, "DELETE", "/api/todos/2", "").status, 204);
        assert_eq!(call(&mut app, "DELETE", "/api/todos/2", "").status, 404);
        let list =
            json::parse(call(&mut app, "GET", "/api/todos", "").text_body().unwrap()).unwrap();
        let Value::Array(items) = list else { panic!() };
        assert_eq!(items.len(), 1);
    }

    #[test]
    fn bad_requests() {
        let mut app = Todos::init();
        assert_eq!(call(&mut app, "POST", "/api/todos", "not json").status, 400);
        assert_eq!(call(&mut app, "POST", "/api/todos", "[]").status, 400);
        assert_eq!(
            call(&mut app, "POST", "/api/todos", r#"{"title":""}"#).status,
            400
        );
        assert_eq!(
            call(&mut app, "POST", "/api/todos", r#"{"done":1,"title":"x"}"#).status,
            400
        );
        assert_eq!(call(&mut app, "PATCH", "/api/todos/9", "{}").status, 404);
        assert_eq!(call(&mut app, "GET", "/api/todos/abc", "").status, 404);
        assert_eq!(call(&mut app, "PUT", "/api/todos", "").status, 405);
    }
}
