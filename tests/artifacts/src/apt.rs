//! Installing Debian packages a build or a test needs (shared by the build
//! script, which includes this file, and `tools`).

use std::path::Path;
use std::process::{Command, Stdio};

/// Installs `packages` with apt-get when this runs as root on a system
/// that has it (refreshing the package lists once if the first try fails);
/// whether it tried.
pub fn install(packages: &[&str]) -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root || !Path::new("/usr/bin/apt-get").exists() {
        return false;
    }
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let mut args = vec!["install", "-y", "-qq"];
    args.extend_from_slice(packages);
    if !apt(&args) {
        let _ = apt(&["update", "-qq"]) && apt(&args);
    }
    true
}
