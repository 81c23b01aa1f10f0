//! Everything a command prints on stdout goes through [`write`] (or the
//! `out!` and `outln!` macros, its `print!` and `println!`).
//!
//! A reader that stops reading (`tern ps | head -1`) closes the pipe. That
//! ends the output, not the command: nothing more is written, the command
//! finishes what it was asked to do (a snapshot still gets written) and
//! exits with its own status, without a panic or an `error:` line. Commands
//! that only print for as long as someone reads (`tern logs --follow`) ask
//! [`closed`] and stop. Any other failure to write (a full disk under
//! `> file`) is an error.

use std::fmt;
use std::io::{ErrorKind, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};

/// Set once a write found stdout's reader gone.
static CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes `bytes` to stdout and flushes them; once the reader has gone,
/// does nothing.
pub fn write(bytes: &[u8]) -> Result<()> {
    if closed() {
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == ErrorKind::BrokenPipe => {
            CLOSED.store(true, Ordering::Relaxed);
            Ok(())
        }
        other => other.context("cannot write to stdout"),
    }
}

/// Writes formatted text to stdout (see [`write`]).
pub fn print(args: fmt::Arguments<'_>) -> Result<()> {
    match args.as_str() {
        Some(s) => write(s.as_bytes()),
        None => write(args.to_string().as_bytes()),
    }
}

/// Whether stdout's reader has gone (a write found the pipe closed).
pub fn closed() -> bool {
    CLOSED.load(Ordering::Relaxed)
}

/// `print!` through [`write`]: evaluates to `anyhow::Result<()>`.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::print(format_args!($($arg)*))
    };
}

/// `println!` through [`write`]: evaluates to `anyhow::Result<()>`.
macro_rules! outln {
    () => {
        $crate::output::write(b"\n")
    };
    ($($arg:tt)*) => {
        $crate::output::print(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub(crate) use {out, outln};
