//! Deploy commands that say whether they worked: `forklift reload --wait`, `forklift upgrade
//! --wait`, and `forklift status --json` for scripts.

mod common;

use common::*;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

fn forklift(args: &[&str]) -> Output {
    std::process::Command::new(forklift_bin())
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn status_json(ctl: &Path) -> serde_json::Value {
    let out = forklift(&["status", "--json", "--control", ctl.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
}

#[test]
fn reload_wait_succeeds_once_the_generation_serves_and_fails_with_the_reason() {
    let dir = TempDir::new("reload-wait");
    let ctl = dir.0.join("ctl.sock");
    let fault = dir.0.join("fault");
    let s = Server::start_ready(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--control",
        ctl.to_str().unwrap(),
        "--fault",
        "boot-panic-if-file",
        "--fault-file",
        fault.to_str().unwrap(),
    ]);
    let st = status_json(&ctl);
    assert_eq!(st["master_pid"].as_u64(), Some(s.pid as u64));
    assert_eq!(st["generation"].as_u64(), Some(1));
    assert_eq!(st["worker_list"].as_array().map(Vec::len), Some(2));
    assert!(st["last_reload"].is_null());

    let ok = forklift(&["reload", "--wait", "--control", ctl.to_str().unwrap()]);
    assert!(ok.status.success(), "{}", text(&ok));
    assert_eq!(text(&ok).trim(), "generation 2 serves");
    // By the time it returns, the new generation serves.
    let st = status_json(&ctl);
    assert_eq!(st["last_reload"]["outcome"], "completed");
    assert!(st["worker_list"]
        .as_array()
        .unwrap()
        .iter()
        .any(|w| w["generation"] == 2 && w["state"] == "ready"));

    std::fs::write(&fault, b"x").unwrap();
    let failed = forklift(&["reload", "--wait", "--control", ctl.to_str().unwrap()]);
    assert!(!failed.status.success(), "{}", text(&failed));
    let msg = text(&failed);
    assert!(
        msg.contains("reload to generation 3 failed") && msg.contains("panicked"),
        "{msg}"
    );
    assert_eq!(status_json(&ctl)["generation"].as_u64(), Some(2));
    assert_greeting(&http_get(s.addr(), "/").unwrap());
}

#[test]
fn upgrade_wait_reports_the_new_master_or_why_it_failed() {
    let dir = TempDir::new("upgrade-wait");
    let bin = install_binary(&dir.0, None);
    let ctl = dir.0.join("ctl.sock");
    let ctl_str = ctl.to_str().unwrap();
    let mut s = Server::start_program(
        &bin,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--control",
            ctl_str,
        ],
    );
    s.wait_ready();
    // A broken binary: the new master fails, the old one keeps serving, --wait says so.
    install_binary(
        &dir.0,
        Some(b"#!/bin/sh\necho broken release >&2\nexit 7\n"),
    );
    let failed = forklift(&["upgrade", "--wait", "--control", ctl_str]);
    assert!(!failed.status.success(), "{}", text(&failed));
    let msg = text(&failed);
    assert!(
        msg.contains("upgrade failed") && msg.contains("exited with code 7"),
        "{msg}"
    );
    assert_eq!(status_json(&ctl)["master_pid"].as_u64(), Some(s.pid as u64));
    // No binary at all: no new master starts; the answer, status and --wait say why.
    std::fs::remove_file(&bin).unwrap();
    let failed = forklift(&["upgrade", "--wait", "--control", ctl_str]);
    assert!(!failed.status.success(), "{}", text(&failed));
    let why = format!(
        "cannot execute {}: No such file or directory",
        bin.display()
    );
    let msg = text(&failed);
    assert!(
        msg.contains("no upgrade started") && msg.contains(&why),
        "{msg}"
    );
    let st = status_json(&ctl);
    assert_eq!(st["master_pid"].as_u64(), Some(s.pid as u64));
    let last = &st["last_upgrade_failure"];
    assert!(last["new_master_pid"].is_null(), "{st}");
    assert!(last["reason"].as_str().unwrap().contains(&why), "{st}");
    // A good one: --wait returns once the new master serves.
    install_binary(&dir.0, None);
    let ok = forklift(&["upgrade", "--wait", "--control", ctl_str]);
    assert!(ok.status.success(), "{}", text(&ok));
    let st = status_json(&ctl);
    let new = st["master_pid"].as_u64().unwrap() as u32;
    assert_ne!(new, s.pid);
    assert_eq!(st["ready"], true);
    assert!(text(&ok).contains(&format!("new master pid {new} serves")));
    let old_exit = s.wait_exit(Instant::now() + Duration::from_secs(10));
    assert_eq!(old_exit.code(), Some(0));
    kill_pid(new, libc::SIGTERM);
}
