//! Logging: one line per record on stderr, `LEVEL message`.
//!
//! The host collects the app's stderr lines as its log (see ABI.md); there is
//! no custom host import. Each name here is both a function taking a `&str`
//! and a `format!`-style macro:
//!
//! ```
//! use tern_sdk::log;
//! log::info("started");
//! log::warn!("slow request: {} ms", 250);
//! ```
//!
//! A message that contains line breaks becomes one record per line, all at
//! the same level. A record is written with a single `write` call, so records
//! from one app never interleave.

use std::fmt;
use std::io::Write;

/// Severity of a log record; its `Display` is the word written on the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// `DEBUG`
    Debug,
    /// `INFO`
    Info,
    /// `WARN`
    Warn,
    /// `ERROR`
    Error,
}

impl Level {
    /// The word that starts the line.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Formats `msg` as the log lines the host expects: `LEVEL line\n` for each
/// line of `msg` (an empty message gives one line, `LEVEL \n`).
pub fn format_record(level: Level, msg: &str) -> String {
    let mut out = String::with_capacity(msg.len() + 8);
    let mut lines = msg.lines().peekable();
    if lines.peek().is_none() {
        out.push_str(level.as_str());
        out.push_str(" \n");
    }
    for line in lines {
        out.push_str(level.as_str());
        out.push(' ');
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Writes one record to stderr. Errors writing stderr are ignored: logging
/// never makes a request fail.
pub fn write(level: Level, msg: &str) {
    let record = format_record(level, msg);
    let _ = std::io::stderr().write_all(record.as_bytes());
}

/// Logs at `DEBUG`.
pub fn debug(msg: &str) {
    write(Level::Debug, msg)
}

/// Logs at `INFO`.
pub fn info(msg: &str) {
    write(Level::Info, msg)
}

/// Logs at `WARN`.
pub fn warn(msg: &str) {
    write(Level::Warn, msg)
}

/// Logs at `ERROR`.
pub fn error(msg: &str) {
    write(Level::Error, msg)
}

#[doc(hidden)]
#[macro_export]
macro_rules! __tern_log_debug {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Debug, &::std::format!($($arg)*)) };
}
#[doc(hidden)]
#[macro_export]
macro_rules! __tern_log_info {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Info, &::std::format!($($arg)*)) };
}
#[doc(hidden)]
#[macro_export]
macro_rules! __tern_log_warn {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Warn, &::std::format!($($arg)*)) };
}
#[doc(hidden)]
#[macro_export]
macro_rules! __tern_log_error {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Error, &::std::format!($($arg)*)) };
}

/// `log::debug!("x = {}", x)`: `format!` arguments, logged at `DEBUG`.
pub use crate::__tern_log_debug as debug;
/// `log::error!("x = {}", x)`: `format!` arguments, logged at `ERROR`.
pub use crate::__tern_log_error as error;
/// `log::info!("x = {}", x)`: `format!` arguments, logged at `INFO`.
pub use crate::__tern_log_info as info;
/// `log::warn!("x = {}", x)`: `format!` arguments, logged at `WARN`.
pub use crate::__tern_log_warn as warn;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_one_line_each() {
        assert_eq!(format_record(Level::Info, "started"), "INFO started\n");
        assert_eq!(format_record(Level::Error, "a\nb\n"), "ERROR a\nERROR b\n");
        assert_eq!(format_record(Level::Warn, ""), "WARN \n");
        assert_eq!(format_record(Level::Debug, "x\r\ny"), "DEBUG x\nDEBUG y\n");
    }

    #[test]
    fn macros_and_functions_share_names() {
        info("plain");
        info!("formatted {}", 1);
        crate::log::warn!("{}", "w");
        debug!("d");
        error!("e");
    }
}
