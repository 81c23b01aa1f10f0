//! Instantiate latency: tern's `Instance::start` against raw wasmtime, on
//! the default engine and on tern's own.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tern_runtime::{AppConfig, Instance, Runtime};

use crate::report::{fmt_time, median, secs, Row};

/// Instantiate latency: tern's `Instance::start` against raw wasmtime.
pub(crate) fn bench_instantiate(rt: &Arc<Runtime>, reps: usize, rows: &mut Vec<Row>) {
    use wasmtime::{Config, Engine, Linker, Module, Store};
    use wasmtime_wasi::p1::WasiP1Ctx;
    use wasmtime_wasi::WasiCtxBuilder;

    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/guests/wat/contract_counter.wat");
    let wasm = wat::parse_file(&path).expect("contract_counter.wat");
    let loaded = rt.load(wasm.clone()).expect("load");

    // Raw wasmtime, default engine, the original module.
    let engine = Engine::new(&Config::new()).unwrap();
    let module = Module::new(&engine, &wasm).unwrap();
    let mut linker: Linker<WasiP1Ctx> = Linker::new(&engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |t| t).unwrap();
    let pre = linker.instantiate_pre(&module).unwrap();

    // Raw wasmtime on tern's engine (fuel, epochs, tern's memory creator) and
    // the rewritten module: splits tern's overhead into engine and wrapper.
    let mut tlinker: Linker<WasiP1Ctx> = Linker::new(rt.engine());
    wasmtime_wasi::p1::add_to_linker_sync(&mut tlinker, |t| t).unwrap();
    let tpre = tlinker.instantiate_pre(&loaded.module).unwrap();

    const K: usize = 300;
    let (mut raw, mut raw_tern, mut tern) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..reps {
        let t = Instant::now();
        for _ in 0..K {
            let mut store = Store::new(&engine, WasiCtxBuilder::new().build_p1());
            let i = pre.instantiate(&mut store).unwrap();
            black_box(i);
            drop(store);
        }
        raw.push(secs(t) / K as f64);
        let t = Instant::now();
        for _ in 0..K {
            let mut store = Store::new(rt.engine(), WasiCtxBuilder::new().build_p1());
            let i = tpre.instantiate(&mut store).unwrap();
            black_box(i);
            drop(store);
        }
        raw_tern.push(secs(t) / K as f64);
        let t = Instant::now();
        for _ in 0..K {
            let i = Instance::start(rt, &loaded, AppConfig::default()).unwrap();
            drop(black_box(i));
        }
        tern.push(secs(t) / K as f64);
    }
    let raw = median(raw);
    let raw_tern = median(raw_tern);
    let tern = median(tern);
    let base = format!("raw wasmtime {}", fmt_time(raw));
    let size = "contract_counter".to_string();
    let mut push = |what: &str, t: f64, aim: &str, met: &'static str| {
        rows.push(Row {
            what: what.into(),
            size: size.clone(),
            time: Some(t),
            bytes: None,
            baseline: base.clone(),
            ratio: format!("{:.2}× time", t / raw),
            aim: aim.into(),
            met,
        });
    };
    push(
        "raw wasmtime: Store + WASI p1 + instantiate + drop (baseline)",
        raw,
        "",
        "",
    );
    push(
        "  same on tern's engine and rewritten module",
        raw_tern,
        "",
        "",
    );
    push(
        "Instance::start + drop",
        tern,
        "≤ 1.5× time",
        if tern / raw <= 1.5 { "yes" } else { "no" },
    );
}
