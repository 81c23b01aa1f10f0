//! The `tern` binary: [`tern::run`] on the program's arguments, its result
//! turned into an exit status, a failure into one `error:` line on stderr.

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    match tern::run(std::env::args_os()) {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(std::io::stderr().lock(), "error: {}", tern::one_line(&e));
            ExitCode::FAILURE
        }
    }
}
