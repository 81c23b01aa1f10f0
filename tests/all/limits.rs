//! Sandbox limits: a guest that traps, loops, recurses or hogs memory gets an
//! error, the host goes on, and the app stays usable where Wasm allows.

use tern_runtime::{AppConfig, Error, Instance, LimitsState, Val};

use crate::support::{fresh_runtime, wat};

fn misbehaving(limits: LimitsState) -> Instance {
    let rt = fresh_runtime();
    let m = rt.load_file(&wat("misbehave.wat")).unwrap();
    Instance::start(
        &rt,
        &m,
        AppConfig {
            limits,
            ..Default::default()
        },
    )
    .unwrap()
}

#[test]
fn traps_are_errors_and_the_app_goes_on() {
    let mut inst = misbehaving(LimitsState::default());
    let cases: Vec<(&str, Vec<Val>, &str)> = vec![
        ("trap", vec![], "unreachable"),
        ("div", vec![Val::I32(1), Val::I32(0)], "divide by zero"),
        ("oob", vec![], "out of bounds"),
    ];
    for (export, args, needle) in cases {
        let e = inst.call(export, &args).unwrap_err();
        assert!(matches!(e, Error::Trap { .. }), "{export}: {e}");
        assert!(
            e.to_string().contains(needle),
            "{export}: `{e}` should mention `{needle}`"
        );
        assert!(e.is_guest_fault());
        // The app is still usable after a trap.
        assert!(inst.call("ok", &[]).unwrap()[0].unwrap_i64() > 0);
    }
}

#[test]
fn an_endless_loop_is_stopped_by_the_timeout() {
    let mut inst = misbehaving(LimitsState {
        timeout_ms_per_call: Some(50),
        ..Default::default()
    });
    let e = inst.call("spin", &[]).unwrap_err();
    assert!(matches!(e, Error::Timeout { limit_ms: 50, .. }), "{e}");
    assert_eq!(inst.call("ok", &[]).unwrap()[0].unwrap_i64(), 1);
}

#[test]
fn an_endless_loop_is_stopped_by_fuel() {
    let mut inst = misbehaving(LimitsState {
        fuel_per_call: Some(100_000),
        ..Default::default()
    });
    let e = inst.call("spin", &[]).unwrap_err();
    assert!(matches!(e, Error::OutOfFuel { fuel: 100_000, .. }), "{e}");
    // Fuel is per call: the next call gets a full tank.
    assert_eq!(inst.call("ok", &[]).unwrap()[0].unwrap_i64(), 1);
}

#[test]
fn unbounded_recursion_overflows_the_guest_stack_not_the_host() {
    let mut inst = misbehaving(LimitsState::default());
    let e = inst.call("recurse", &[Val::I64(0)]).unwrap_err();
    assert!(matches!(e, Error::StackOverflow { .. }), "{e}");
    assert_eq!(inst.call("ok", &[]).unwrap()[0].unwrap_i64(), 1);
}

#[test]
fn memory_growth_past_the_limit_fails_as_wasm_says() {
    // 1 page initially, limit 4 MiB = 64 pages.
    let mut inst = misbehaving(LimitsState {
        memory_bytes: Some(4 << 20),
        ..Default::default()
    });
    assert_eq!(
        inst.call("grow", &[Val::I32(63)]).unwrap()[0].unwrap_i32(),
        1
    );
    // One page more than the limit: memory.grow returns -1, no trap.
    assert_eq!(
        inst.call("grow", &[Val::I32(1)]).unwrap()[0].unwrap_i32(),
        -1
    );
    assert_eq!(
        inst.call("grow", &[Val::I32(60000)]).unwrap()[0].unwrap_i32(),
        -1
    );
    assert_eq!(inst.call("pages", &[]).unwrap()[0].unwrap_i32(), 64);
}

#[test]
fn a_module_whose_minimum_memory_exceeds_the_limit_is_refused() {
    let rt = fresh_runtime();
    let m = rt.load(wat_bytes("(module (memory 100))")).unwrap();
    let e = Instance::start(
        &rt,
        &m,
        AppConfig {
            limits: LimitsState {
                memory_bytes: Some(1 << 20),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("memory"), "{e}");
}

#[test]
fn arguments_are_parsed_by_the_signature() {
    let mut inst = misbehaving(LimitsState::default());
    let cases: &[(&[&str], Result<i32, &str>)] = &[
        (&["7", "2"], Ok(3)),
        (&["-9", "3"], Ok(-3)),
        (&["0x10", "4"], Ok(4)),
        (&["1.5", "1"], Err("not a valid i32")),
        (&["1"], Err("takes 2 argument")),
        (&["99999999999", "1"], Err("not a valid i32")),
    ];
    for (args, want) in cases {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        match (inst.call_text("div", &args), want) {
            (Ok(v), Ok(w)) => assert_eq!(v[0].unwrap_i32(), *w, "{args:?}"),
            (Err(e), Err(needle)) => assert!(e.to_string().contains(needle), "{args:?}: {e}"),
            (got, want) => panic!("{args:?}: got {got:?}, want {want:?}"),
        }
    }
    let e = inst.call_text("nope", &[]).unwrap_err();
    assert!(e.to_string().contains("it exports:"), "{e}");
}

pub fn wat_bytes(src: &str) -> Vec<u8> {
    wat::parse_str(src).unwrap()
}
