//! Records the git commit the binary is built from, for `forklift --version`. Outside a git
//! checkout (a crate package, a tarball) or without git, the commit is `unknown`.

use std::path::Path;
use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=FORKLIFT_GIT_COMMIT={commit}");
    // Rebuild when HEAD moves: HEAD itself (a checkout) and the ref it names (a commit).
    // In a worktree, `git rev-parse --git-dir` is the worktree's own directory.
    let git_dir = Command::new("git")
        .args(["rev-parse", "--git-dir", "--git-common-dir"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok());
    match git_dir {
        Some(dirs) => {
            let mut dirs = dirs.lines().map(Path::new);
            let (own, common) = (dirs.next(), dirs.next());
            if let Some(own) = own {
                let head = own.join("HEAD");
                println!("cargo:rerun-if-changed={}", head.display());
                if let Ok(text) = std::fs::read_to_string(&head) {
                    if let (Some(name), Some(common)) = (text.strip_prefix("ref: "), common) {
                        let reference = common.join(name.trim());
                        if reference.exists() {
                            println!("cargo:rerun-if-changed={}", reference.display());
                        }
                        println!(
                            "cargo:rerun-if-changed={}",
                            common.join("packed-refs").display()
                        );
                    }
                }
            }
        }
        None => println!("cargo:rerun-if-changed=build.rs"),
    }
}
