//! Scenario 5, fuzzing: random mutations of valid requests on the wire, and the fuzz targets
//! of `fuzz/` (libFuzzer when built, else the stable `smoke` runner) for a bounded time.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Shutdown, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use forklift_testkit::hooks::hook_field;
use forklift_testkit::http::read_until_close;

use crate::client::connect;
use crate::context::Ctx;
use crate::report::{Section, Table};

/// Sends random mutations of valid requests; returns (requests, answers by class).
pub fn wire_fuzz(addr: SocketAddr, dur: Duration) -> (u64, BTreeMap<String, u64>) {
    let templates: [&[u8]; 5] = [
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /sleep?ms=1 HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    ];
    let tokens: [&[u8]; 16] = [
        b"\r\n",
        b"\n",
        b"\r",
        b":",
        b" ",
        b"\t",
        b"\0",
        b"chunked",
        b"Content-Length: ",
        b"Transfer-Encoding: ",
        b"HTTP/1.0",
        b"HTTP/2.0",
        b"ffffffffffffffff",
        b"-1",
        b"\xff\xfe",
        b"%00",
    ];
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (std::process::id() as u64);
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut classes: BTreeMap<String, u64> = BTreeMap::new();
    let end = Instant::now() + dur;
    let mut sent = 0;
    while Instant::now() < end && sent < 100_000 {
        let mut m = templates[(next() % 5) as usize].to_vec();
        for _ in 0..1 + next() % 4 {
            let len = m.len();
            let i = (next() as usize) % (len + 1);
            match next() % 5 {
                0 if len > 0 => m[i.min(len - 1)] = next() as u8,
                1 if len > 0 => {
                    let j = (i + 1 + (next() as usize) % 8).min(len);
                    m.drain(i.min(len - 1)..j);
                }
                2 => {
                    let t = tokens[(next() % tokens.len() as u64) as usize];
                    m.splice(i..i, t.iter().copied());
                }
                3 if len > 0 => m[i.min(len - 1)] ^= 1 << (next() % 8),
                _ => {
                    let n = (next() % 64) as usize;
                    m.splice(i..i, std::iter::repeat_n(b'A', n));
                }
            }
        }
        sent += 1;
        let class = match connect(addr, Duration::from_secs(2)) {
            Err(f) => format!("connect {}", f.name()),
            Ok(mut s) => {
                let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                let _ = s.write_all(&m);
                let _ = s.shutdown(Shutdown::Write);
                let mut got = Vec::new();
                let closed = read_until_close(&mut s, &mut got);
                match got.get(9..10) {
                    Some([c]) if got.starts_with(b"HTTP/1.1 ") => format!("{}xx", *c as char),
                    _ if got.is_empty() && closed => "closed without answer".into(),
                    _ if got.is_empty() => "no answer in 500 ms".into(),
                    _ => "other bytes".into(),
                }
            }
        };
        *classes.entry(class).or_default() += 1;
    }
    (sent, classes)
}

pub fn fuzz_targets(ctx: &Ctx, sec: &mut Section) {
    let fuzz = ctx.repo.join("fuzz");
    let libfuzzer_dir = fuzz.join("target/x86_64-unknown-linux-gnu/release");
    let targets = ["listen_addr", "listen_fds", "status_messages", "fd_name"];
    let have_libfuzzer = targets.iter().all(|t| libfuzzer_dir.join(t).is_file());
    let smoke = fuzz.join("target/release/smoke");
    let engine = match ctx.fuzz_engine.as_str() {
        "libfuzzer" if have_libfuzzer => "libfuzzer",
        "auto" if have_libfuzzer => "libfuzzer",
        _ => "stable",
    };
    if ctx.fuzz_engine == "libfuzzer" && !have_libfuzzer {
        sec.note("libFuzzer targets not built (bench/chaos builds them with `cargo +nightly fuzz build` when cargo-fuzz and a nightly toolchain are present): using the stable runner");
    }
    if !smoke.is_file() {
        sec.check(
            "fuzz targets run",
            false,
            format!("{} is missing: bench/chaos builds it", smoke.display()),
        );
        return;
    }
    // A network namespace of its own (only loopback), when this machine allows it: the
    // targets never resolve names, and this makes sure nothing leaves the machine anyway.
    let netns = Command::new("unshare")
        .args(["--net", "--", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let wrap = |cmd: Vec<String>| -> Command {
        if netns {
            let mut c = Command::new("unshare");
            c.args([
                "--net",
                "--",
                "sh",
                "-c",
                "ip link set lo up 2>/dev/null; exec \"$@\"",
                "sh",
            ]);
            c.args(cmd);
            c
        } else {
            let mut c = Command::new(&cmd[0]);
            c.args(&cmd[1..]);
            c
        }
    };
    let artifacts = fuzz.join("artifacts");
    let _ = std::fs::create_dir_all(&artifacts);
    let mut t = Table::new(&[
        "target",
        "engine",
        "seconds",
        "executions",
        "crashes",
        "notes",
    ]);
    let mut crashes_total = 0u64;
    let mut ran = 0;
    let per = ctx.fuzz_seconds / 5.0;
    let mut rows: Vec<(String, String, f64, u64, u64, String)> = Vec::new();
    let bin = ctx.bin.display().to_string();
    if engine == "libfuzzer" {
        let corpus_root = fuzz.join("corpus");
        // seed the corpora
        let _ = Command::new(&smoke)
            .args(["--write-seeds", &corpus_root.display().to_string()])
            .status();
        for target in targets {
            let corpus = corpus_root.join(target);
            let _ = std::fs::create_dir_all(&corpus);
            let t0 = Instant::now();
            let out = wrap(vec![
                libfuzzer_dir.join(target).display().to_string(),
                corpus.display().to_string(),
                format!("-max_total_time={}", per.ceil() as u64),
                "-max_len=4096".into(),
                "-print_final_stats=1".into(),
                format!("-artifact_prefix={}/", artifacts.display()),
            ])
            .stdin(Stdio::null())
            .output();
            let took = t0.elapsed().as_secs_f64();
            match out {
                Ok(o) => {
                    let text = String::from_utf8_lossy(&o.stderr).to_string()
                        + &String::from_utf8_lossy(&o.stdout);
                    let execs = text
                        .lines()
                        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
                        .and_then(|v| v.trim().parse().ok())
                        .or_else(|| {
                            text.lines().find_map(|l| {
                                l.strip_prefix("Done ")
                                    .and_then(|r| r.split(' ').next()?.parse().ok())
                            })
                        })
                        .unwrap_or(0);
                    let crashed = !o.status.success();
                    let note = if crashed {
                        text.lines()
                            .filter(|l| {
                                l.contains("panicked")
                                    || l.contains("ERROR")
                                    || l.contains("artifact")
                            })
                            .take(3)
                            .collect::<Vec<_>>()
                            .join(" / ")
                    } else {
                        let cov = text
                            .lines()
                            .rev()
                            .find(|l| l.contains(" cov: "))
                            .and_then(|l| l.split(" cov: ").nth(1))
                            .and_then(|r| r.split_whitespace().next())
                            .map(|c| format!("coverage {c} edges"))
                            .unwrap_or_default();
                        cov
                    };
                    rows.push((
                        target.into(),
                        "libFuzzer".into(),
                        took,
                        execs,
                        u64::from(crashed),
                        note,
                    ));
                }
                Err(e) => rows.push((
                    target.into(),
                    "libFuzzer".into(),
                    took,
                    0,
                    1,
                    format!("cannot run: {e}"),
                )),
            }
        }
        rows.extend(run_smoke(&wrap, &smoke, &artifacts, per, &["cli"], &bin));
    } else {
        rows.extend(run_smoke(
            &wrap,
            &smoke,
            &artifacts,
            per * 5.0,
            &[
                "listen_addr",
                "listen_fds",
                "status_messages",
                "fd_name",
                "cli",
            ],
            &bin,
        ));
    }
    for (target, eng, took, execs, crashes, note) in rows {
        ran += 1;
        crashes_total += crashes;
        t.row(vec![
            target,
            eng,
            format!("{took:.1}"),
            execs.to_string(),
            crashes.to_string(),
            note,
        ]);
    }
    sec.tables.push((
        format!(
            "Fuzz targets (`fuzz/`), {:.0} s in all{}:",
            ctx.fuzz_seconds,
            if netns {
                ", in a network namespace of their own"
            } else {
                ""
            }
        ),
        t,
    ));
    sec.check(
        "fuzz targets: no crash",
        ran >= 5 && crashes_total == 0,
        format!("{ran} targets run, {crashes_total} crashes (artifacts in fuzz/artifacts/)"),
    );
}

fn run_smoke(
    wrap: &dyn Fn(Vec<String>) -> Command,
    smoke: &Path,
    artifacts: &Path,
    seconds: f64,
    targets: &[&str],
    forklift: &str,
) -> Vec<(String, String, f64, u64, u64, String)> {
    let out = wrap(vec![
        smoke.display().to_string(),
        "--seconds".into(),
        format!("{seconds:.1}"),
        "--targets".into(),
        targets.join(","),
        "--cli".into(),
        forklift.into(),
        "--artifacts".into(),
        artifacts.display().to_string(),
    ])
    .stdin(Stdio::null())
    .output();
    let Ok(o) = out else {
        return vec![(
            "smoke".into(),
            "stable".into(),
            0.0,
            0,
            1,
            "cannot run the smoke runner".into(),
        )];
    };
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    let mut rows = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        if !l.starts_with("fuzz target=") {
            continue;
        }
        let name = hook_field(l, "target").unwrap_or_else(|| "?".into());
        let execs = hook_field(l, "execs")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let crashes = hook_field(l, "crashes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let secs = hook_field(l, "seconds")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let notes: Vec<String> = lines[i + 1..]
            .iter()
            .take_while(|n| n.starts_with("  "))
            .map(|n| {
                n.trim()
                    .split_once(": ")
                    .map_or(n.trim(), |(_, r)| r)
                    .to_string()
            })
            .take(2)
            .collect();
        let label = if name == "cli" {
            "cli (forklift serve argv + LISTEN_FDS env)".to_string()
        } else {
            name
        };
        rows.push((
            label,
            "stable (random mutation)".into(),
            secs,
            execs,
            crashes,
            notes.join(" / "),
        ));
    }
    if rows.is_empty() {
        rows.push((
            "smoke".into(),
            "stable".into(),
            0.0,
            0,
            1,
            format!("no output; exit {:?}", o.status.code()),
        ));
    }
    rows
}
