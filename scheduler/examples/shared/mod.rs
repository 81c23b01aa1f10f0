//! What the examples share: the shipped trace samples.

use tern_scheduler::{parse_azure, Trace};

/// The shipped Azure Functions 2019 sample of `n` functions ("10" or
/// "100").
pub fn sample(n: &str) -> Trace {
    let (inv, dur, mem) = match n {
        "10" => (
            include_str!("../../testdata/azure-functions-2019/10_invocations.csv"),
            include_str!("../../testdata/azure-functions-2019/10_durations.csv"),
            include_str!("../../testdata/azure-functions-2019/10_memory.csv"),
        ),
        _ => (
            include_str!("../../testdata/azure-functions-2019/100_invocations.csv"),
            include_str!("../../testdata/azure-functions-2019/100_durations.csv"),
            include_str!("../../testdata/azure-functions-2019/100_memory.csv"),
        ),
    };
    parse_azure(inv, dur, mem).expect("shipped trace parses")
}
