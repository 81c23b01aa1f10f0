//! Conway's Game of Life on a board that grows as the pattern spreads.
//!
//! The board starts at 64x64 with a Gosper glider gun and an R-pentomino.
//! Whenever a live cell comes within 2 cells of an edge the board grows by
//! 32 cells on that side, up to 1024x1024; from then on its edges are dead
//! walls. So memory grows with time, which makes migrations of it interesting.
//!
//! - `tern_tick` advances one generation;
//! - `POST /step?n=N` advances N generations (default 1, at most 100000);
//! - `GET /` returns `{"generation","population","width","height","hash"}`;
//! - `GET /board` draws the live area (cropped to 200x100) as text;
//! - `POST /reset` starts over;
//! - the export `steps(n: i64) -> i64` advances n generations and returns the
//!   population: CPU-bound work for `tern invoke`.

use tern_sdk::{export_app, log, App, Request, Response};

const START_SIDE: usize = 64;
const GROW_BY: usize = 32;
const MAX_SIDE: usize = 1024;
const MARGIN: usize = 2;
const MAX_STEPS_PER_REQUEST: u64 = 100_000;

const GLIDER_GUN: [&str; 9] = [
    "........................O...........",
    "......................O.O...........",
    "............OO......OO............OO",
    "...........O...O....OO............OO",
    "OO........O.....O...OO..............",
    "OO........O...O.OO....O.O...........",
    "..........O.....O.......O...........",
    "...........O...O....................",
    "............OO......................",
];
const R_PENTOMINO: [&str; 3] = [".OO", "OO.", ".O."];

/// Live cells' bounding box, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bbox {
    x0: usize,
    y0: usize,
    x1: usize,
    y1: usize,
}

/// The board and its history.
#[derive(Debug, Clone)]
pub struct Life {
    width: usize,
    height: usize,
    /// Row-major, one byte per cell (0 or 1), with a border of dead cells
    /// all around so that neighbours need no bounds checks: cell (x, y) is at
    /// `(y + 1) * (width + 2) + x + 1`.
    cells: Vec<u8>,
    /// The next generation, same layout as `cells`.
    next: Vec<u8>,
    /// Column sums of three rows, one row long (scratch for `step`).
    colsum: Vec<u8>,
    generation: u64,
    population: u64,
    bbox: Option<Bbox>,
}

impl Default for Life {
    fn default() -> Self {
        Life::new()
    }
}

impl Life {
    /// The starting board.
    pub fn new() -> Self {
        let padded = (START_SIDE + 2) * (START_SIDE + 2);
        let mut life = Life {
            width: START_SIDE,
            height: START_SIDE,
            cells: vec![0; padded],
            next: vec![0; padded],
            colsum: vec![0; START_SIDE + 2],
            generation: 0,
            population: 0,
            bbox: None,
        };
        life.place(&GLIDER_GUN, 4, 20);
        life.place(&R_PENTOMINO, 50, 8);
        life.recount();
        life
    }

    fn place(&mut self, pattern: &[&str], x: usize, y: usize) {
        for (dy, row) in pattern.iter().enumerate() {
            for (dx, c) in row.bytes().enumerate() {
                if c == b'O' {
                    let i = self.index(x + dx, y + dy);
                    self.cells[i] = 1;
                }
            }
        }
    }

    /// Index of cell (x, y) in `cells`.
    fn index(&self, x: usize, y: usize) -> usize {
        (y + 1) * (self.width + 2) + x + 1
    }

    /// Whether cell (x, y) is alive.
    pub fn alive(&self, x: usize, y: usize) -> bool {
        self.cells[self.index(x, y)] != 0
    }

    fn recount(&mut self) {
        let mut pop = 0;
        let mut bbox: Option<Bbox> = None;
        for y in 0..self.height {
            for x in 0..self.width {
                if self.alive(x, y) {
                    pop += 1;
                    bbox = Some(extend(bbox, x, y));
                }
            }
        }
        self.population = pop;
        self.bbox = bbox;
    }

    /// Generation number (0 at the start).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Number of live cells.
    pub fn population(&self) -> u64 {
        self.population
    }

    /// Board size.
    pub fn size(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    /// FNV-1a (64-bit) over the width, height and every cell (row by row):
    /// equal boards have equal hashes, so a moved app can be checked against
    /// a local run.
    pub fn hash(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut feed = |b: u8| {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        };
        for b in (self.width as u64)
            .to_le_bytes()
            .into_iter()
            .chain((self.height as u64).to_le_bytes())
        {
            feed(b);
        }
        for y in 0..self.height {
            let at = self.index(0, y);
            for &c in &self.cells[at..at + self.width] {
                feed(c);
            }
        }
        h
    }

    /// Advances one generation, growing the board first if the pattern is
    /// near an edge. Only the live area plus one cell around it is computed.
    pub fn step(&mut self) {
        self.grow_if_needed();
        let (w, h) = (self.width, self.height);
        let stride = w + 2;
        self.next.fill(0);
        let mut pop = 0;
        let mut bbox = None;
        if let Some(b) = self.bbox {
            let (ys, ye) = (b.y0.saturating_sub(1), (b.y1 + 1).min(h - 1));
            let (xs, xe) = (b.x0.saturating_sub(1), (b.x1 + 1).min(w - 1));
            // Padded columns xs..=xe+2 hold cells xs-1..=xe+1 (borders included).
            for y in ys..=ye {
                let (up, row, down) = (y * stride, (y + 1) * stride, (y + 2) * stride);
                for px in xs..=xe + 2 {
                    self.colsum[px] =
                        self.cells[up + px] + self.cells[row + px] + self.cells[down + px];
                }
                for px in xs + 1..=xe + 1 {
                    let alive = self.cells[row + px];
                    let n = self.colsum[px - 1] + self.colsum[px] + self.colsum[px + 1] - alive;
                    if n == 3 || (n == 2 && alive == 1) {
                        self.next[row + px] = 1;
                        pop += 1;
                        bbox = Some(extend(bbox, px - 1, y));
                    }
                }
            }
        }
        std::mem::swap(&mut self.cells, &mut self.next);
        self.population = pop;
        self.bbox = bbox;
        self.generation += 1;
    }

    /// Advances `n` generations.
    pub fn steps(&mut self, n: u64) {
        for _ in 0..n {
            self.step();
        }
    }

    fn grow_if_needed(&mut self) {
        let Some(b) = self.bbox else { return };
        let grow = |near_low: bool, near_high: bool, side: usize| -> (usize, usize) {
            let room = MAX_SIDE.saturating_sub(side);
            let low = if near_low { GROW_BY.min(room) } else { 0 };
            let high = if near_high {
                GROW_BY.min(room - low)
            } else {
                0
            };
            (low, high)
        };
        let (left, right) = grow(b.x0 < MARGIN, b.x1 + MARGIN >= self.width, self.width);
        let (top, bottom) = grow(b.y0 < MARGIN, b.y1 + MARGIN >= self.height, self.height);
        if left + right + top + bottom == 0 {
            return;
        }
        let (w, h) = (self.width + left + right, self.height + top + bottom);
        let mut cells = vec![0; (w + 2) * (h + 2)];
        for y in 0..self.height {
            let from = self.index(0, y);
            let at = (y + top + 1) * (w + 2) + left + 1;
            cells[at..at + self.width].copy_from_slice(&self.cells[from..from + self.width]);
        }
        log::debug!(
            "life: board grows from {}x{} to {w}x{h} at generation {}",
            self.width,
            self.height,
            self.generation
        );
        self.cells = cells;
        self.next = vec![0; (w + 2) * (h + 2)];
        self.colsum = vec![0; w + 2];
        self.width = w;
        self.height = h;
        self.bbox = Some(Bbox {
            x0: b.x0 + left,
            y0: b.y0 + top,
            x1: b.x1 + left,
            y1: b.y1 + top,
        });
    }

    /// `{"generation":..,"population":..,"width":..,"height":..,"hash":"<16 hex>"}`
    pub fn status_json(&self) -> String {
        format!(
            r#"{{"generation":{},"population":{},"width":{},"height":{},"hash":"{:016x}"}}"#,
            self.generation,
            self.population,
            self.width,
            self.height,
            self.hash()
        )
    }

    /// The live area as text (`#` alive, `.` dead), cropped to 200x100.
    pub fn draw(&self) -> String {
        let Some(b) = self.bbox else {
            return String::from("(empty)\n");
        };
        let mut out = String::new();
        for y in b.y0..=b.y1.min(b.y0 + 99) {
            for x in b.x0..=b.x1.min(b.x0 + 199) {
                out.push(if self.alive(x, y) { '#' } else { '.' });
            }
            out.push('\n');
        }
        out
    }
}

fn extend(bbox: Option<Bbox>, x: usize, y: usize) -> Bbox {
    match bbox {
        None => Bbox {
            x0: x,
            y0: y,
            x1: x,
            y1: y,
        },
        Some(b) => Bbox {
            x0: b.x0.min(x),
            y0: b.y0.min(y),
            x1: b.x1.max(x),
            y1: b.y1.max(y),
        },
    }
}

impl App for Life {
    fn init() -> Self {
        let life = Life::new();
        log::info!(
            "life ready: {}x{}, population {}",
            life.width,
            life.height,
            life.population
        );
        life
    }

    fn handle(&mut self, req: Request) -> Response {
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/") => Response::json_raw(200, self.status_json()),
            ("GET", "/board") => Response::text(200, self.draw()),
            ("POST", "/step") => {
                let n = match req.query_param("n") {
                    None => 1,
                    Some(n) => match n.parse::<u64>() {
                        Ok(n) if n <= MAX_STEPS_PER_REQUEST => n,
                        _ => {
                            return Response::bad_request(format!(
                                "n must be an integer from 0 to {MAX_STEPS_PER_REQUEST}"
                            ))
                        }
                    },
                };
                self.steps(n);
                Response::json_raw(200, self.status_json())
            }
            ("POST", "/reset") => {
                *self = Life::new();
                Response::json_raw(200, self.status_json())
            }
            (_, "/" | "/board") => Response::method_not_allowed("GET"),
            (_, "/step" | "/reset") => Response::method_not_allowed("POST"),
            _ => Response::not_found(),
        }
    }

    fn tick(&mut self, _now_ms: i64) {
        self.step();
    }
}

export_app!(Life);

/// Advances `n` generations (none if `n <= 0`) and returns the population.
#[unsafe(no_mangle)]
pub extern "C" fn steps(n: i64) -> i64 {
    tern_sdk::with_app(|life: &mut Life| {
        life.steps(n.max(0) as u64);
        life.population as i64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference rule on a fixed board (no growth), for comparison.
    fn naive_step(cells: &[u8], w: usize, h: usize) -> Vec<u8> {
        let mut out = vec![0; w * h];
        for y in 0..h as isize {
            for x in 0..w as isize {
                let mut n = 0;
                for dy in -1..=1 {
                    for dx in -1..=1 {
                        let (xx, yy) = (x + dx, y + dy);
                        if (dx, dy) != (0, 0)
                            && xx >= 0
                            && yy >= 0
                            && xx < w as isize
                            && yy < h as isize
                        {
                            n += cells[yy as usize * w + xx as usize];
                        }
                    }
                }
                let alive = cells[y as usize * w + x as usize];
                out[y as usize * w + x as usize] = u8::from(n == 3 || (n == 2 && alive == 1));
            }
        }
        out
    }

    #[test]
    fn matches_the_naive_rule_before_growing() {
        let mut life = Life::new();
        let grid = |l: &Life| -> Vec<u8> {
            (0..l.height)
                .flat_map(|y| (0..l.width).map(move |x| (x, y)))
                .map(|(x, y)| u8::from(l.alive(x, y)))
                .collect()
        };
        for _ in 0..10 {
            let expected = naive_step(&grid(&life), life.width, life.height);
            life.step();
            assert_eq!(life.size(), (START_SIDE, START_SIDE));
            assert_eq!(grid(&life), expected);
            assert_eq!(
                life.population,
                expected.iter().map(|&c| u64::from(c)).sum::<u64>()
            );
        }
    }

    #[test]
    fn blinker_oscillates() {
        let mut life = Life::new();
        life.cells.fill(0);
        life.place(&["OOO"], 30, 30);
        life.recount();
        let h0 = life.hash();
        life.step();
        assert_eq!(life.population(), 3);
        assert_ne!(life.hash(), h0);
        life.step();
        assert_eq!(life.hash(), h0);
    }

    #[test]
    fn the_board_grows_and_stops_at_the_cap() {
        let mut life = Life::new();
        life.steps(300);
        let (w, h) = life.size();
        assert!(w > START_SIDE || h > START_SIDE, "still {w}x{h}");
        assert!(w <= MAX_SIDE && h <= MAX_SIDE);
        assert!(life.population() > 0);
    }

    #[test]
    fn http_api() {
        let mut life = Life::init();
        let r = life.handle(Request::new("POST", "/step").with_query("n=5"));
        assert!(r.text_body().unwrap().starts_with(r#"{"generation":5,"#));
        assert_eq!(
            life.handle(Request::new("POST", "/step").with_query("n=x"))
                .status,
            400
        );
        life.tick(0);
        assert_eq!(life.generation(), 6);
        assert_eq!(life.handle(Request::new("GET", "/board")).status, 200);
        life.handle(Request::new("POST", "/reset"));
        assert_eq!(life.generation(), 0);
    }
}
