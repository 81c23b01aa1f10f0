//! Test guest: a plain WASI command, run through `_start`.
//!
//! Prints, one item per line on stdout:
//! - `arg <value>` for each argument after the program name;
//! - `env <KEY>=<value>` for each environment variable, sorted;
//! - `dir <path>` then `entry <name> <size>` for each entry of the directory
//!   named by `COMMAND_DIR` (default `.`; it must be preopened), sorted;
//! - `file input.txt <contents>` if that file exists in the directory;
//! - `wrote output.txt` after writing `output.txt` there, if `COMMAND_WRITE`
//!   is set (its value is the file's content).
//!
//! `--exit N` as an argument makes it exit with status N; it logs
//! `INFO command done` to stderr before exiting.

use std::io::Write;
use std::path::Path;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut out = std::io::stdout().lock();
    for a in &args {
        writeln!(out, "arg {a}").unwrap();
    }
    let mut env: Vec<(String, String)> = std::env::vars().collect();
    env.sort();
    for (k, v) in &env {
        writeln!(out, "env {k}={v}").unwrap();
    }

    let dir = std::env::var("COMMAND_DIR").unwrap_or_else(|_| ".".into());
    let dir = Path::new(&dir);
    writeln!(out, "dir {}", dir.display()).unwrap();
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            let mut found: Vec<(String, u64)> = entries
                .filter_map(Result::ok)
                .map(|e| {
                    let size = e.metadata().map(|m| m.len()).unwrap_or(0);
                    (e.file_name().to_string_lossy().into_owned(), size)
                })
                .collect();
            found.sort();
            for (name, size) in found {
                writeln!(out, "entry {name} {size}").unwrap();
            }
        }
        Err(e) => writeln!(out, "error reading {}: {e}", dir.display()).unwrap(),
    }
    if let Ok(text) = std::fs::read_to_string(dir.join("input.txt")) {
        writeln!(out, "file input.txt {}", text.trim_end()).unwrap();
    }
    if let Ok(content) = std::env::var("COMMAND_WRITE") {
        match std::fs::write(dir.join("output.txt"), content) {
            Ok(()) => writeln!(out, "wrote output.txt").unwrap(),
            Err(e) => writeln!(out, "error writing output.txt: {e}").unwrap(),
        }
    }
    out.flush().unwrap();
    drop(out);

    eprintln!("INFO command done");
    let code = args
        .iter()
        .position(|a| a == "--exit")
        .and_then(|i| args.get(i + 1))
        .and_then(|c| c.parse::<i32>().ok())
        .unwrap_or(0);
    std::process::exit(code);
}
