//! Build script: puts the git revision into `ncx --version` (`NCX_VERSION`), so a binary in the
//! field says which commit it was built from. Outside a git checkout (a source tarball) it says
//! the revision is unknown.

use std::path::Path;
use std::process::Command;

fn main() {
    let version = env!("CARGO_PKG_VERSION");
    let revision = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    match revision {
        Some(r) => println!("cargo:rustc-env=NCX_VERSION={version} ({r})"),
        None => println!("cargo:rustc-env=NCX_VERSION={version} (revision unknown)"),
    }
    // Run again when HEAD moves: .git/HEAD changes on a checkout, the branch's ref on a commit.
    // Only files that exist are named, since cargo reruns on every build for a missing one.
    let git = Path::new(".git");
    for f in ["HEAD", "packed-refs"] {
        if git.join(f).is_file() {
            println!("cargo:rerun-if-changed=.git/{f}");
        }
    }
    if let Ok(head) = std::fs::read_to_string(git.join("HEAD")) {
        if let Some(r) = head.strip_prefix("ref: ") {
            if git.join(r.trim()).is_file() {
                println!("cargo:rerun-if-changed=.git/{}", r.trim());
            }
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
