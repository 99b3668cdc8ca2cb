//! Once its workers are ready the master drops the code pages only start-up touched
//! (src/trim.rs), and it keeps working: it serves, reloads (running start-up code again) and
//! stops.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// `released start-up pages: X KiB of Y KiB resident in N read-only mappings (how)`.
fn released(line: &str) -> (u64, u64, String) {
    let rest = line
        .split("released start-up pages: ")
        .nth(1)
        .unwrap_or_else(|| panic!("not a release line: {line}"));
    let words: Vec<&str> = rest.split_whitespace().collect();
    let freed: u64 = words[0].parse().unwrap();
    let resident: u64 = words[3].parse().unwrap();
    let how = words.last().unwrap().trim_matches(|c| c == '(' || c == ')');
    (freed, resident, how.to_string())
}

/// Starts `forklift serve` with `extra` arguments, checks the release line says `how`, then
/// that the master still serves, reloads and stops.
fn check(extra: &[&str], how_expected: &str) {
    let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--workers", "2"];
    args.extend_from_slice(extra);
    let s = Server::start(&args);
    s.wait_ready();
    let line = s
        .wait_stderr_contains("released start-up pages", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no release line; stderr:\n{}", s.stderr_text()));
    let (freed, resident, how) = released(&line);
    println!(
        "{extra:?}: {line}; master RSS now {} KiB",
        rss_kib(s.pid).expect("VmRSS")
    );
    assert!(freed <= resident, "{line}");
    assert_eq!(how, how_expected, "{line}");
    if how == "unmapped" {
        // Unmapping drops every clean page the master is not using; reclaiming may find
        // nothing to take when the workers map it all too.
        assert!(freed > 0, "{line}");
    }

    // It still supervises: the workers serve, a reload runs the spawn code again, the new
    // generation serves, and a TERM stops everything.
    let addr = s.addr();
    assert_greeting(&http_get(addr, "/").unwrap());
    let before = s.pids_from_ready();
    s.send_signal(libc::SIGHUP);
    let reloaded = s.wait_for_line(
        |l| l.starts_with("reloaded generation=2"),
        Instant::now() + Duration::from_secs(10),
    );
    assert!(
        reloaded.is_some(),
        "no reload after SIGHUP; stdout:\n{}\nstderr:\n{}",
        s.stdout_text(),
        s.stderr_text()
    );
    let (_, fields) = parse_hook(&reloaded.unwrap());
    let new: BTreeSet<u32> = parse_pid_list(&fields["pids"]).into_iter().collect();
    assert!(
        new.iter().all(|p| !before.contains(p)),
        "{new:?} {before:?}"
    );
    // The old generation drains: until it has exited, a connection may still land on an old
    // worker that has not yet handled its SIGTERM (shared socket), and be served by it.
    let old_gone = poll_until(Instant::now() + Duration::from_secs(10), || {
        let exited: BTreeSet<u32> = s.hooks_of("exited").iter().map(|h| h.num("pid")).collect();
        before.iter().all(|p| exited.contains(p))
    });
    assert!(old_gone, "the old generation {before:?} did not exit");
    assert_served_by(&s.listeners()[0], &new, 200);
    let mut s = s;
    s.send_signal(libc::SIGTERM);
    let status = s.wait_exit(Instant::now() + Duration::from_secs(10));
    assert!(status.success(), "{}", describe_status(&status));
}

// The CLI's master runs one thread: its pages are unmapped.
#[test]
fn the_master_drops_its_start_up_pages_and_keeps_supervising_fork() {
    check(&["--spawn", "fork"], "unmapped");
}

#[test]
fn the_master_drops_its_start_up_pages_and_keeps_supervising_exec() {
    check(&["--spawn", "exec"], "unmapped");
}

// A master with another thread (allowed with exec) has them reclaimed instead, which is safe
// whatever that thread does to the mappings meanwhile.
#[test]
fn a_master_with_threads_reclaims_rather_than_unmaps() {
    check(
        &["--spawn", "exec", "--fault", "thread-before-fork"],
        "reclaimed",
    );
}
