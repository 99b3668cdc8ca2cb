//! The report: a section per scenario with its tables, checks and notes, rendered as
//! markdown under a header that says where and how the run went.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, SystemTime};

use forklift_bench::clock::utc_date_time;
use forklift_bench::machine::{cpu_model, read_trim};
use forklift_testkit::time::ms;
use forklift_testkit::Server;

use crate::context::Ctx;

#[derive(Default)]
pub struct Table {
    head: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(head: &[&str]) -> Table {
        Table {
            head: head.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }
    fn render(&self, out: &mut String) {
        let esc = |s: &str| s.replace('|', "\\|").replace('\n', " ");
        let _ = writeln!(
            out,
            "| {} |",
            self.head
                .iter()
                .map(|h| esc(h))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        let _ = writeln!(
            out,
            "|{}|",
            self.head
                .iter()
                .map(|_| "---")
                .collect::<Vec<_>>()
                .join("|")
        );
        for r in &self.rows {
            let _ = writeln!(
                out,
                "| {} |",
                r.iter().map(|c| esc(c)).collect::<Vec<_>>().join(" | ")
            );
        }
    }
}

pub struct Check {
    pub what: String,
    pub pass: bool,
    pub detail: String,
}

#[derive(Default)]
pub struct Section {
    pub title: String,
    pub intro: Vec<String>,
    pub tables: Vec<(String, Table)>,
    pub checks: Vec<Check>,
    pub notes: Vec<String>,
    pub commands: Vec<String>,
    pub seconds: f64,
}

impl Section {
    pub fn new(title: &str) -> Section {
        Section {
            title: title.to_string(),
            ..Default::default()
        }
    }
    pub fn check(&mut self, what: impl Into<String>, pass: bool, detail: impl Into<String>) {
        let c = Check {
            what: what.into(),
            pass,
            detail: detail.into(),
        };
        eprintln!(
            "  [{}] {}: {}",
            if c.pass { "pass" } else { "FAIL" },
            c.what,
            c.detail
        );
        self.checks.push(c);
    }
    pub fn note(&mut self, s: impl Into<String>) {
        self.notes.push(s.into());
    }
    pub fn failed_checks(&self) -> usize {
        self.checks.iter().filter(|c| !c.pass).count()
    }
    /// Lists the server's command line (its guard's label) under the section.
    pub fn command(&mut self, s: &Server) {
        let c = s.label.join(" ");
        if !self.commands.contains(&c) {
            self.commands.push(c);
        }
    }
}

pub fn render(
    ctx: &Ctx,
    sections: &[Section],
    took: Duration,
    load_before: &str,
    load_after: &str,
) -> String {
    let mut out = String::new();
    let command = std::env::var("FORKLIFT_CHAOS_COMMAND").unwrap_or_else(|_| {
        std::env::args()
            .map(|a| shell_quote(&a))
            .collect::<Vec<_>>()
            .join(" ")
    });
    let total: usize = sections.iter().map(|s| s.checks.len()).sum();
    let failed: usize = sections.iter().map(Section::failed_checks).sum();
    let _ = writeln!(out, "# forklift chaos run\n");
    let _ = writeln!(out, "- command: `{command}`");
    let _ = writeln!(
        out,
        "- mode: {}; took {:.0} s; {} checks, {} failed",
        if ctx.quick { "quick" } else { "full" },
        took.as_secs_f64(),
        total,
        failed
    );
    let _ = writeln!(out, "- date: {}", utc_date_time(SystemTime::now()));
    let _ = writeln!(
        out,
        "- forklift: {} ({})",
        ctx.bin.display(),
        git_describe(&ctx.repo)
    );
    let _ = writeln!(
        out,
        "- machine: {} CPUs ({}), kernel {}, load average before {load_before}, after {load_after}",
        thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        read_trim("/proc/sys/kernel/osrelease")
    );
    let _ = writeln!(
        out,
        "- open-file limit of this harness: {} (raised with setrlimit); `ulimit -n` of a shell it starts: {}",
        ctx.nofile,
        shell_ulimit_n()
    );
    let _ = writeln!(
        out,
        "- net.ipv4.tcp_migrate_req = {}, net.core.somaxconn = {}",
        read_trim("/proc/sys/net/ipv4/tcp_migrate_req"),
        read_trim("/proc/sys/net/core/somaxconn")
    );
    let _ = writeln!(
        out,
        "- everything runs on 127.0.0.1; server logs go to target/chaos-logs/\n"
    );
    let _ = writeln!(out, "## Summary\n");
    let mut t = Table::new(&["scenario", "checks", "failed", "seconds"]);
    for s in sections {
        t.row(vec![
            s.title.clone(),
            s.checks.len().to_string(),
            if s.failed_checks() == 0 {
                "0".into()
            } else {
                format!("**{}**", s.failed_checks())
            },
            format!("{:.0}", s.seconds),
        ]);
    }
    t.render(&mut out);
    for s in sections {
        let _ = writeln!(out, "\n## {}\n", s.title);
        for l in &s.intro {
            let _ = writeln!(out, "{l}\n");
        }
        for (caption, table) in &s.tables {
            if !caption.is_empty() {
                let _ = writeln!(out, "{caption}\n");
            }
            table.render(&mut out);
            out.push('\n');
        }
        if !s.checks.is_empty() {
            let mut t = Table::new(&["check", "result", "measured"]);
            for c in &s.checks {
                t.row(vec![
                    c.what.clone(),
                    if c.pass {
                        "pass".into()
                    } else {
                        "**FAIL**".into()
                    },
                    c.detail.clone(),
                ]);
            }
            t.render(&mut out);
            out.push('\n');
        }
        for n in &s.notes {
            let _ = writeln!(out, "- {n}");
        }
        if !s.commands.is_empty() {
            let _ = writeln!(out, "\nServer command lines:\n");
            for c in &s.commands {
                let _ = writeln!(out, "    {c}");
            }
        }
    }
    out
}

pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn command_output(cmd: &mut Command) -> String {
    cmd.stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn git_describe(repo: &Path) -> String {
    let head = command_output(
        Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .current_dir(repo),
    );
    let dirty = !command_output(
        Command::new("git")
            .args(["status", "--porcelain", "--untracked-files=no"])
            .current_dir(repo),
    )
    .is_empty();
    format!(
        "commit {}{}",
        if head.is_empty() { "?" } else { &head },
        if dirty { ", with local changes" } else { "" }
    )
}

fn shell_ulimit_n() -> String {
    command_output(Command::new("sh").args(["-c", "ulimit -n"]))
}

pub fn ms_opt(d: Option<Duration>) -> String {
    d.map_or("–".into(), ms)
}

pub fn pct(part: u64, total: u64) -> String {
    if total == 0 {
        "–".into()
    } else {
        format!("{:.3} %", part as f64 * 100.0 / total as f64)
    }
}

/// (median, max) of durations.
pub fn med_max(v: &[Duration]) -> (Option<Duration>, Option<Duration>) {
    if v.is_empty() {
        return (None, None);
    }
    let mut s = v.to_vec();
    s.sort();
    (Some(s[s.len() / 2]), Some(s[s.len() - 1]))
}
