//! An edge aggregator: per-sensor statistics over a sliding window, and
//! anomaly flags.
//!
//! - `POST /readings`: a text body of lines `sensor_id value` (blank lines
//!   and lines starting with `#` are skipped). Each value is compared with its
//!   sensor's window *before* it joins it: once the window holds at least 10
//!   readings and their standard deviation is not zero, a reading with
//!   |z| = |value - mean| / stddev > 3 is recorded as an anomaly. Answers
//!   `{"accepted":N,"rejected":N,"errors":[...],"anomalies":[...]}`.
//! - `GET /stats`: `{"window":N,"sensors":{"id":{"count",...}}}` with count,
//!   mean, min, max and (population) stddev over the last N readings, and
//!   `total` readings ever; `GET /stats/ID` for one sensor.
//! - `GET /anomalies` (`?since=SEQ` for newer ones only) and
//!   `DELETE /anomalies`. The last 1000 anomalies are kept.
//!
//! The window size N comes from the env var `SENSOR_WINDOW` (default 100),
//! read once at start: it moves with the app like the rest of its state.

use std::collections::{BTreeMap, VecDeque};
use tern_sdk::{export_app, json_string, log, App, Request, Response};

const DEFAULT_WINDOW: usize = 100;
const MIN_READINGS_FOR_Z: usize = 10;
const Z_LIMIT: f64 = 3.0;
const KEEP_ANOMALIES: usize = 1000;
const MAX_ERRORS_REPORTED: usize = 10;

/// The last `cap` readings of one sensor.
#[derive(Debug, Clone)]
pub struct Window {
    values: VecDeque<f64>,
    cap: usize,
    total: u64,
}

/// Summary of a window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    pub count: usize,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
    pub stddev: f64,
}

impl Window {
    fn new(cap: usize) -> Self {
        Window {
            values: VecDeque::with_capacity(cap),
            cap,
            total: 0,
        }
    }

    fn push(&mut self, v: f64) {
        if self.values.len() == self.cap {
            self.values.pop_front();
        }
        self.values.push_back(v);
        self.total += 1;
    }

    /// Stats of the readings in the window; `None` when it is empty.
    /// Recomputed from the values (at most N of them) so that no rounding
    /// error accumulates over a long-running app's life.
    pub fn stats(&self) -> Option<Stats> {
        let count = self.values.len();
        if count == 0 {
            return None;
        }
        let mean = self.values.iter().sum::<f64>() / count as f64;
        let var = self
            .values
            .iter()
            .map(|v| (v - mean) * (v - mean))
            .sum::<f64>()
            / count as f64;
        let min = self.values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self
            .values
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        Some(Stats {
            count,
            mean,
            min,
            max,
            stddev: var.sqrt(),
        })
    }
}

/// One flagged reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Anomaly {
    pub seq: u64,
    pub sensor: String,
    pub value: f64,
    pub z: f64,
    pub mean: f64,
    pub stddev: f64,
    pub at_ms: i64,
}

impl Anomaly {
    fn to_json(&self) -> String {
        format!(
            r#"{{"seq":{},"sensor":{},"value":{},"z":{},"mean":{},"stddev":{},"at_ms":{}}}"#,
            self.seq,
            json_string(&self.sensor),
            num(self.value),
            num(self.z),
            num(self.mean),
            num(self.stddev),
            self.at_ms
        )
    }
}

/// A finite f64 as JSON (Rust's shortest round-trip form is valid JSON).
fn num(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        "null".into()
    }
}

/// The aggregator.
#[derive(Debug)]
pub struct Sensors {
    window: usize,
    sensors: BTreeMap<String, Window>,
    anomalies: VecDeque<Anomaly>,
    next_seq: u64,
}

impl Sensors {
    /// An aggregator with windows of `window` readings (at least 1).
    pub fn new(window: usize) -> Self {
        Sensors {
            window: window.max(1),
            sensors: BTreeMap::new(),
            anomalies: VecDeque::new(),
            next_seq: 1,
        }
    }

    /// Adds one reading; returns the anomaly it raised, if any.
    pub fn add(&mut self, sensor: &str, value: f64, at_ms: i64) -> Option<Anomaly> {
        let cap = self.window;
        let w = self
            .sensors
            .entry(sensor.to_owned())
            .or_insert_with(|| Window::new(cap));
        let anomaly = match w.stats() {
            Some(s) if s.count >= MIN_READINGS_FOR_Z && s.stddev > 0.0 => {
                let z = (value - s.mean) / s.stddev;
                (z.abs() > Z_LIMIT).then(|| Anomaly {
                    seq: 0,
                    sensor: sensor.to_owned(),
                    value,
                    z,
                    mean: s.mean,
                    stddev: s.stddev,
                    at_ms,
                })
            }
            _ => None,
        };
        w.push(value);
        let mut anomaly = anomaly?;
        anomaly.seq = self.next_seq;
        self.next_seq += 1;
        if self.anomalies.len() == KEEP_ANOMALIES {
            self.anomalies.pop_front();
        }
        self.anomalies.push_back(anomaly.clone());
        Some(anomaly)
    }

    /// Stats of one sensor.
    pub fn stats(&self, sensor: &str) -> Option<Stats> {
        self.sensors.get(sensor).and_then(Window::stats)
    }

    fn sensor_json(w: &Window) -> String {
        match w.stats() {
            Some(s) => format!(
                r#"{{"count":{},"mean":{},"min":{},"max":{},"stddev":{},"total":{}}}"#,
                s.count,
                num(s.mean),
                num(s.min),
                num(s.max),
                num(s.stddev),
                w.total
            ),
            None => format!(r#"{{"count":0,"total":{}}}"#, w.total),
        }
    }

    fn ingest(&mut self, body: &str) -> Response {
        let now = tern_sdk::now_ms();
        let (mut accepted, mut rejected) = (0u64, 0u64);
        let mut errors = Vec::new();
        let mut raised = Vec::new();
        for (i, line) in body.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            let parsed = match (parts.next(), parts.next(), parts.next()) {
                (Some(id), Some(v), None) => match v.parse::<f64>() {
                    Ok(v) if v.is_finite() => Ok((id, v)),
                    _ => Err("the value is not a finite number"),
                },
                _ => Err("expected `sensor_id value`"),
            };
            match parsed {
                Ok((id, v)) => {
                    accepted += 1;
                    if let Some(a) = self.add(id, v, now) {
                        log::warn!(
                            "anomaly: sensor {} value {} (z = {:.2})",
                            a.sensor,
                            a.value,
                            a.z
                        );
                        raised.push(a.to_json());
                    }
                }
                Err(why) => {
                    rejected += 1;
                    if errors.len() < MAX_ERRORS_REPORTED {
                        errors.push(json_string(&format!("line {}: {why}", i + 1)));
                    }
                }
            }
        }
        let status = if accepted == 0 && rejected > 0 {
            400
        } else {
            200
        };
        Response::json_raw(
            status,
            format!(
                r#"{{"accepted":{accepted},"rejected":{rejected},"errors":[{}],"anomalies":[{}]}}"#,
                errors.join(","),
                raised.join(",")
            ),
        )
    }
}

impl App for Sensors {
    fn init() -> Self {
        let window = std::env::var("SENSOR_WINDOW")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or(DEFAULT_WINDOW);
        log::info!("sensor ready: window of {window} readings");
        Sensors::new(window)
    }

    fn handle(&mut self, req: Request) -> Response {
        let segments = req.segments();
        match (req.method.as_str(), segments.as_slice()) {
            ("POST", ["readings"]) => match req.text() {
                Ok(body) => self.ingest(body),
                Err(_) => Response::bad_request("the body is not UTF-8 text"),
            },
            (_, ["readings"]) => Response::method_not_allowed("POST"),
            ("GET", ["stats"]) => {
                let sensors: Vec<String> = self
                    .sensors
                    .iter()
                    .map(|(id, w)| format!("{}:{}", json_string(id), Self::sensor_json(w)))
                    .collect();
                Response::json_raw(
                    200,
                    format!(
                        r#"{{"window":{},"sensors":{{{}}}}}"#,
                        self.window,
                        sensors.join(",")
                    ),
                )
            }
            ("GET", ["stats", id]) => {
                let id = tern_sdk::percent_decode(id, false);
                match self.sensors.get(&id) {
                    Some(w) => Response::json_raw(200, Self::sensor_json(w)),
                    None => Response::not_found(),
                }
            }
            ("GET", ["anomalies"]) => {
                let since = match req.query_param("since").map(|s| s.parse::<u64>()) {
                    None => 0,
                    Some(Ok(n)) => n,
                    Some(Err(_)) => return Response::bad_request("since must be an integer"),
                };
                let items: Vec<String> = self
                    .anomalies
                    .iter()
                    .filter(|a| a.seq > since)
                    .map(Anomaly::to_json)
                    .collect();
                Response::json_raw(200, format!("[{}]", items.join(",")))
            }
            ("DELETE", ["anomalies"]) => {
                self.anomalies.clear();
                Response::no_content()
            }
            (_, ["anomalies"]) => Response::method_not_allowed("GET, DELETE"),
            ("GET", []) => Response::text(
                200,
                format!(
                    "sensor: {} sensors, window {}, {} anomalies kept\n",
                    self.sensors.len(),
                    self.window,
                    self.anomalies.len()
                ),
            ),
            _ => Response::not_found(),
        }
    }
}

export_app!(Sensors);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_stats() {
        let mut s = Sensors::new(4);
        for v in [1.0, 2.0, 3.0, 4.0, 5.0] {
            s.add("t", v, 0);
        }
        let st = s.stats("t").unwrap();
        assert_eq!((st.count, st.min, st.max), (4, 2.0, 5.0));
        assert!((st.mean - 3.5).abs() < 1e-12);
        assert!((st.stddev - 1.25f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn outliers_are_flagged_after_ten_readings() {
        let mut s = Sensors::new(100);
        for i in 0..9 {
            assert!(s.add("a", 10.0 + (i % 2) as f64, 0).is_none());
        }
        // Only 9 readings so far: not judged yet.
        assert!(s.add("a", 1000.0, 0).is_none());
        let mut s = Sensors::new(100);
        for i in 0..20 {
            s.add("a", 10.0 + (i % 2) as f64, 0);
        }
        let a = s.add("a", 20.0, 7).expect("anomaly");
        assert_eq!((a.seq, a.at_ms), (1, 7));
        assert!(a.z > 3.0);
        assert!(s.add("a", 10.5, 0).is_none());
    }

    #[test]
    fn http_api() {
        let mut s = Sensors::new(100);
        let mut body = String::from("# warm-up\n");
        for i in 0..30 {
            body.push_str(&format!("temp {}\n\n", 20 + i % 3));
        }
        body.push_str("temp 90\nbad line here\nhum NaN\n");
        let r = s.handle(Request::new("POST", "/readings").with_body(body));
        assert_eq!(r.status, 200);
        let text = r.text_body().unwrap();
        assert!(
            text.starts_with(r#"{"accepted":31,"rejected":2,"errors":["line 63: expected"#),
            "{text}"
        );
        assert!(text.contains(r#""sensor":"temp","value":90"#), "{text}");
        let stats = s.handle(Request::new("GET", "/stats"));
        assert!(stats
            .text_body()
            .unwrap()
            .starts_with(r#"{"window":100,"sensors":{"temp":{"count":31,"#));
        assert_eq!(s.handle(Request::new("GET", "/stats/temp")).status, 200);
        assert_eq!(s.handle(Request::new("GET", "/stats/none")).status, 404);
        let an = s.handle(Request::new("GET", "/anomalies"));
        assert!(an.text_body().unwrap().starts_with(r#"[{"seq":1,"#));
        let none = s.handle(Request::new("GET", "/anomalies").with_query("since=1"));
        assert_eq!(none.text_body(), Ok("[]"));
        assert_eq!(
            s.handle(Request::new("POST", "/readings").with_body("x"))
                .status,
            400
        );
        assert_eq!(s.handle(Request::new("DELETE", "/anomalies")).status, 204);
    }
}
