//! The contract's identifiers, checked the same way everywhere: app and
//! node names (they become file names and URL path segments on every node
//! and in the control plane's store) and module hashes.

use std::fmt;

/// The longest name an app or a node may have.
pub const MAX_NAME_LEN: usize = 63;

/// What a name names (for messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    App,
    Node,
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameKind::App => "app",
            NameKind::Node => "node",
        })
    }
}

/// A name that breaks the rules, with a message that says them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{name}` is not a valid {kind} name: use 1 to 63 letters, digits, `.`, `_` or `-`, not starting with `.` or `-`")]
pub struct BadName {
    pub kind: NameKind,
    /// The name as given, shortened and with control characters escaped.
    pub name: String,
}

/// Whether `name` may name an app or a node: 1 to 63 of `A-Z a-z 0-9 . _ -`,
/// not starting with a dot or a dash (so never `.`, `..`, a hidden file or
/// something a command line takes for a flag).
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// Checks an app name.
pub fn check_app_name(name: &str) -> Result<(), BadName> {
    check(NameKind::App, name)
}

/// Checks a node name.
pub fn check_node_name(name: &str) -> Result<(), BadName> {
    check(NameKind::Node, name)
}

fn check(kind: NameKind, name: &str) -> Result<(), BadName> {
    if is_valid_name(name) {
        return Ok(());
    }
    let shown: String = name.chars().take(80).collect();
    Err(BadName {
        kind,
        name: shown.escape_default().to_string(),
    })
}

/// Parses a module's sha256 as the contract writes it: 64 lowercase hex
/// digits.
pub fn parse_sha256(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.as_bytes().chunks_exact(2).enumerate() {
        let hex = |c: u8| if c <= b'9' { c - b'0' } else { c - b'a' + 10 };
        out[i] = hex(pair[0]) << 4 | hex(pair[1]);
    }
    Some(out)
}

/// Whether `s` is a module sha256 as the contract writes it.
pub fn is_valid_sha256(s: &str) -> bool {
    parse_sha256(s).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in [
            "a",
            "counter",
            "my-app_2.v1",
            "web.v2",
            "A",
            &"x".repeat(63),
        ] {
            assert!(check_app_name(ok).is_ok(), "{ok}");
            assert!(check_node_name(ok).is_ok(), "{ok}");
        }
        let long = "x".repeat(64);
        for bad in [
            "", ".", "..", ".hidden", "-x", "a/b", "../../x", "a b", "a\0b", "é", &long,
        ] {
            let e = check_app_name(bad).unwrap_err();
            assert!(e.to_string().contains("not a valid app name"), "{e}");
        }
        let e = check_node_name("a\nb").unwrap_err().to_string();
        assert!(e.contains("`a\\nb` is not a valid node name"), "{e}");
    }

    #[test]
    fn sha256() {
        let s = "0123456789abcdef".repeat(4);
        let b = parse_sha256(&s).unwrap();
        assert_eq!(b[0], 0x01);
        assert_eq!(b[31], 0xef);
        for bad in [
            "",
            &s[1..],
            &s.to_uppercase(),
            &format!("{}g", &s[1..]),
            &format!("{s}0"),
        ] {
            assert!(parse_sha256(bad).is_none(), "{bad}");
        }
    }
}
