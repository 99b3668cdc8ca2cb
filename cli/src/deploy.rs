//! `forklift reload --wait` and `forklift upgrade --wait`: deploy commands that say whether
//! they worked. They ask the master on its control socket, then poll its `status-json`
//! until the new generation (or the new master) serves, or the master reports that it gave
//! up, or the timeout passes.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How often the master is asked again while waiting.
const POLL: Duration = Duration::from_millis(50);

/// The master's `status-json`, parsed.
pub fn status(control: &Path) -> Result<Value, String> {
    let text = forklift::control(control, "status-json").map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| format!("the master's status-json: {e}: {text}"))
}

/// `reload`, then (with `wait`) until the generation it started serves or is given up.
pub fn reload(control: &Path, wait: Option<Duration>) -> Result<String, String> {
    let answer = forklift::control(control, "reload").map_err(|e| e.to_string())?;
    let Some(timeout) = wait else {
        return Ok(answer);
    };
    if answer.starts_with("error:") {
        return Err(answer.trim_start_matches("error:").trim().to_string());
    }
    let generation: u64 = answer
        .strip_prefix("reloading: generation ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("unexpected answer to reload: {answer}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        let st = status(control)?;
        let last = &st["last_reload"];
        if last["generation"].as_u64().is_some_and(|g| g >= generation) {
            return match last["outcome"].as_str() {
                Some("completed") => Ok(format!("generation {generation} serves\n")),
                _ => Err(format!(
                    "reload to generation {generation} failed: {}",
                    last["reason"].as_str().unwrap_or("see the master's log")
                )),
            };
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "generation {generation} did not serve within {timeout:?} (the reload may still \
                 be under way: forklift status)"
            ));
        }
        std::thread::sleep(POLL);
    }
}

/// `upgrade`, then (with `wait`) until the new master serves on the control socket, or the
/// old master reports that the new one failed.
pub fn upgrade(control: &Path, wait: Option<Duration>) -> Result<String, String> {
    let before = status(control)?;
    let old = before["master_pid"].as_u64().unwrap_or(0);
    let answer = forklift::control(control, "upgrade").map_err(|e| e.to_string())?;
    if answer.starts_with("error:") {
        return Err(answer.trim_start_matches("error:").trim().to_string());
    }
    let Some(timeout) = wait else {
        return Ok(answer);
    };
    let new: u64 = answer
        .strip_prefix("upgrading: new master pid ")
        .and_then(|r| r.trim().parse().ok())
        .ok_or_else(|| format!("unexpected answer to upgrade: {answer}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        // While the old master runs it answers; once it has handed over, the new one does.
        if let Ok(st) = status(control) {
            let pid = st["master_pid"].as_u64().unwrap_or(0);
            if pid == new && st["ready"].as_bool() == Some(true) {
                return Ok(format!("new master pid {new} serves (was {old})\n"));
            }
            let failed = &st["last_upgrade_failure"];
            if pid == old && failed["new_master_pid"].as_u64() == Some(new) {
                return Err(format!(
                    "upgrade failed: {}; master {old} keeps serving",
                    failed["reason"].as_str().unwrap_or("see the master's log")
                ));
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the new master (pid {new}) did not serve within {timeout:?}"
            ));
        }
        std::thread::sleep(POLL);
    }
}
