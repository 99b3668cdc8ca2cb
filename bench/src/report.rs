//! The summary over rounds: markdown tables and the raw JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::idle;
use crate::parse::{Errors, TlsSessions};
use crate::run::{Figure, Outcome, ReadyBy, Run, Sample, ServerSpec, Workload};
use crate::stats::Spread;

/// The server the ratio column divides by.
pub const REFERENCE: &str = "forklift";
/// The reference that does no HTTP work (bench/src/ceiling.rs).
pub const CEILING: &str = "ceiling";
/// The line under a table where the ceiling ran.
const CEILING_NOTE: &str = "`ceiling` answers every request head with canned bytes and parses \
     nothing (bench/src/ceiling.rs): the most a server with one recv and one send per request \
     gets here.";

/// Where and how the benchmark ran.
#[derive(Debug, Clone, Serialize)]
pub struct Meta {
    pub date_utc: String,
    pub command: String,
    pub mode: String,
    pub rounds: usize,
    pub nproc: usize,
    pub kernel: String,
    pub cpu_model: String,
    pub loadavg_before: String,
    pub loadavg_after: String,
    pub tools: Vec<String>,
    /// The load commands (in backquotes, with PORT standing for the server's port), or what
    /// the harness does as the client.
    pub load_commands: Vec<(Workload, String)>,
    /// Servers skipped and why, and other remarks.
    pub notices: Vec<String>,
}

/// Everything written to latest.json.
#[derive(Serialize)]
pub struct RawResults<'a> {
    pub meta: &'a Meta,
    pub runs: &'a [Run],
}

/// One server's figures for one workload, over the rounds.
#[derive(Debug, Clone)]
pub struct Row {
    pub server: String,
    /// Why the server was not run with this workload.
    pub skipped: Option<String>,
    pub ok_rounds: usize,
    pub failures: Vec<(usize, String)>,
    /// The workload's [`Figure`] (req/s, MiB/s or KiB per idle connection).
    pub figure: Option<Spread>,
    /// The figure by round, for ratios paired within a round.
    pub figure_by_round: BTreeMap<usize, f64>,
    pub rps: Option<Spread>,
    pub p50_ms: Option<Spread>,
    pub p99_ms: Option<Spread>,
    pub errors: Errors,
    pub cpu_us_per_req: Option<Spread>,
    /// CPU µs per request by round, for ratios paired within a round.
    pub cpu_by_round: BTreeMap<usize, f64>,
    pub master_rss_mib: Option<Spread>,
    pub worker_idle_mib: Option<Spread>,
    pub worker_peak_mib: Option<Spread>,
    pub workers: usize,
    pub ready_ms: Option<Spread>,
    pub ready_by: Option<ReadyBy>,
    /// The idle workload's memory figures.
    pub idle: Option<IdleRow>,
    /// tls-resume and tls-full: the client's handshakes, summed over the rounds.
    pub tls_sessions: Option<TlsSessions>,
}

/// The idle workload's figures over the rounds (PSS in MiB, summed over the server's
/// processes).
#[derive(Debug, Clone)]
pub struct IdleRow {
    pub connections: usize,
    /// The fewest connections held in any round.
    pub held_min: usize,
    pub before_mib: Option<Spread>,
    pub with_mib: Option<Spread>,
    pub after_mib: Option<Spread>,
    pub after_over_before: Option<Spread>,
}

/// A sample's value of its workload's figure.
pub fn figure_of(w: Workload, x: &Sample) -> Option<f64> {
    match w.figure() {
        Figure::ReqPerSec => Some(x.load.rps),
        Figure::MibPerSec => x.load.mib_per_s(),
        Figure::KibPerConn => x.idle.as_ref()?.kib_per_conn,
    }
}

/// `reference / row`, round by round (rounds where both have the figure), summarised: a ratio
/// taken within one round is spared the drift between rounds that a ratio of medians is not.
pub fn paired_ratio(
    reference: &BTreeMap<usize, f64>,
    row: &BTreeMap<usize, f64>,
) -> Option<Spread> {
    Spread::of(
        reference
            .iter()
            .filter_map(|(round, &a)| row.get(round).map(|&b| (a, b)))
            .filter(|&(_, b)| b > 0.0)
            .map(|(a, b)| a / b),
    )
}

/// The rows of one workload's table, in server order.
pub fn rows(runs: &[Run], w: Workload, servers: &[ServerSpec]) -> Vec<Row> {
    servers
        .iter()
        .map(|s| {
            let mine: Vec<&Run> = runs
                .iter()
                .filter(|r| r.workload == w && r.server == s.name)
                .collect();
            let by_round: Vec<(usize, &Sample)> = mine
                .iter()
                .filter_map(|r| match &r.outcome {
                    Outcome::Ok(x) => Some((r.round, x.as_ref())),
                    Outcome::Failed(_) => None,
                })
                .collect();
            let samples: Vec<&Sample> = by_round.iter().map(|(_, x)| *x).collect();
            let failures = mine
                .iter()
                .filter_map(|r| match &r.outcome {
                    Outcome::Failed(e) => Some((r.round, e.clone())),
                    Outcome::Ok(_) => None,
                })
                .collect();
            let figure_by_round: BTreeMap<usize, f64> = by_round
                .iter()
                .filter_map(|&(round, x)| figure_of(w, x).map(|v| (round, v)))
                .collect();
            let cpu_by_round: BTreeMap<usize, f64> = by_round
                .iter()
                .filter_map(|&(round, x)| x.cpu_us_per_req.map(|v| (round, v)))
                .collect();
            let mib = |kib: u64| kib as f64 / 1024.0;
            let mut errors = Errors::default();
            for x in &samples {
                add_errors(&mut errors, &x.load.errors);
            }
            let idles: Vec<&idle::Figures> =
                samples.iter().filter_map(|x| x.idle.as_ref()).collect();
            let idle = (!idles.is_empty()).then(|| IdleRow {
                connections: idles.iter().map(|i| i.connections).max().unwrap_or(0),
                held_min: idles.iter().map(|i| i.held).min().unwrap_or(0),
                before_mib: Spread::of(idles.iter().map(|i| mib(i.before.pss_kib))),
                with_mib: Spread::of(idles.iter().map(|i| mib(i.with.pss_kib))),
                after_mib: Spread::of(idles.iter().map(|i| mib(i.after.pss_kib))),
                after_over_before: Spread::of(idles.iter().filter_map(|i| i.after_over_before)),
            });
            Row {
                server: s.name.to_string(),
                skipped: s.skip_reason(w).map(str::to_string),
                ok_rounds: samples.len(),
                failures,
                figure: Spread::of(figure_by_round.values().copied()),
                figure_by_round,
                rps: Spread::of(samples.iter().map(|x| x.load.rps)),
                p50_ms: Spread::of(samples.iter().filter_map(|x| x.load.p50_ms)),
                p99_ms: Spread::of(samples.iter().filter_map(|x| x.load.p99_ms)),
                errors,
                cpu_us_per_req: Spread::of(cpu_by_round.values().copied()),
                cpu_by_round,
                master_rss_mib: Spread::of(samples.iter().map(|x| mib(x.rss_kib.master_peak))),
                worker_idle_mib: Spread::of(
                    samples
                        .iter()
                        .filter_map(|x| x.rss_kib.worker_idle.map(mib)),
                ),
                worker_peak_mib: Spread::of(
                    samples
                        .iter()
                        .filter_map(|x| x.rss_kib.worker_peak.map(mib)),
                ),
                workers: samples
                    .iter()
                    .map(|x| x.worker_pids.len())
                    .max()
                    .unwrap_or(0),
                ready_ms: Spread::of(samples.iter().map(|x| x.ready_ms)),
                ready_by: samples.first().map(|x| x.ready_by),
                idle,
                tls_sessions: samples
                    .iter()
                    .filter_map(|x| x.load.tls_sessions)
                    .reduce(|a, b| TlsSessions {
                        resumed: a.resumed + b.resumed,
                        full: a.full + b.full,
                    }),
            }
        })
        .collect()
}

fn add_errors(sum: &mut Errors, e: &Errors) {
    sum.non_2xx += e.non_2xx;
    sum.connect += e.connect;
    sum.read += e.read;
    sum.write += e.write;
    sum.timeout += e.timeout;
    sum.aborted_by_deadline += e.aborted_by_deadline;
    for (k, v) in &e.other {
        *sum.other.entry(k.clone()).or_insert(0) += v;
    }
}

const DASH: &str = "—";

/// A column of a workload's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Col {
    /// The workload's figure, median and min–max.
    Figure,
    /// forklift's figure over this server's, paired within rounds.
    Ratio,
    Rps,
    P50,
    P99,
    Errors,
    Cpu,
    /// forklift's CPU per request over this server's, paired within rounds.
    CpuRatio,
    Rss,
    /// Idle: connections held.
    Held,
    /// Idle: PSS before, with and after the connections.
    Memory,
    /// Idle: PSS after close over PSS before.
    AfterClose,
    /// tls-resume, tls-full: the share of the client's handshakes that resumed.
    Resumed,
    Ready,
}

/// The columns of `w`'s table after the server's name. The static workloads pair CPU per
/// request too, the figure their targets compare besides throughput.
fn columns(w: Workload) -> &'static [Col] {
    use Col::*;
    match w {
        Workload::Conn | Workload::Keepalive | Workload::Sleep => {
            &[Figure, Ratio, P50, P99, Errors, Cpu, Rss, Ready]
        }
        Workload::StaticSmall => &[Figure, Ratio, P50, P99, Errors, Cpu, CpuRatio, Rss, Ready],
        Workload::StaticBig => &[
            Figure, Ratio, Rps, P50, P99, Errors, Cpu, CpuRatio, Rss, Ready,
        ],
        Workload::Idle => &[
            Figure, Ratio, Held, Memory, AfterClose, Errors, Cpu, P99, Ready,
        ],
        Workload::TlsKa | Workload::H2 | Workload::H2c => {
            &[Figure, Ratio, P50, P99, Errors, Cpu, CpuRatio, Rss, Ready]
        }
        Workload::TlsResume | Workload::TlsFull => &[
            Figure, Ratio, P50, P99, Errors, Cpu, CpuRatio, Resumed, Rss, Ready,
        ],
    }
}

fn header(c: Col, w: Workload) -> String {
    let idle = w == Workload::Idle;
    match c {
        Col::Figure => format!("{} (median, min–max)", w.figure().unit()),
        Col::Ratio if w.figure().higher_is_better() => "forklift / this".into(),
        Col::Ratio => "forklift / this (below 1: forklift holds less)".into(),
        Col::Rps => "req/s".into(),
        Col::P50 if idle => "connect + GET p50".into(),
        Col::P50 => "p50".into(),
        Col::P99 if idle => "connect + GET p99".into(),
        Col::P99 => "p99".into(),
        Col::Errors => "errors".into(),
        Col::Cpu if idle => "CPU µs/conn".into(),
        Col::Cpu => "CPU µs/req".into(),
        Col::CpuRatio => "CPU/req forklift / this".into(),
        Col::Rss => "RSS master / worker idle / worker peak".into(),
        Col::Held => "connections held".into(),
        Col::Memory => "PSS before / with / after close (MiB)".into(),
        Col::AfterClose => "PSS after close / before".into(),
        Col::Resumed => "handshakes resumed".into(),
        Col::Ready => "ready in".into(),
    }
}

/// What a table's figures are, where the general explanation at the top does not say.
fn explanation(w: Workload) -> Option<&'static str> {
    match w {
        Workload::StaticSmall | Workload::StaticBig => Some(
            "forklift runs `forklift serve --dir ROOT --workers 2`; nginx runs \
             bench/peers/nginx-static.conf.in (2 workers, `sendfile on; tcp_nopush on;`); ROOT \
             holds 4k.bin and 1m.bin of random bytes, made by this run and checked byte for \
             byte on each server before its load. MiB/s: the bytes wrk read (heads included, \
             2^20 bytes to the MiB) over its wall time. forklift / this: above 1, forklift \
             served more; CPU/req forklift / this: below 1, forklift spent less CPU per \
             request; both paired within rounds. Servers that serve no files are skipped.",
        ),
        Workload::Idle => Some(
            "The harness opens the connections itself, each answered (`GET /4k.bin`) before the \
             next, and holds them idle. KiB per idle connection: the growth of the server's PSS \
             (/proc/PID/smaps_rollup, summed over the master and its workers) from before the \
             connections (after a warm-up of 64) to when all are open and answered, divided by \
             the connections held (still open on both sides). forklift / this: below 1, \
             forklift holds less per connection (paired within rounds). PSS after close: once \
             the client has closed them all and the server its side (/proc/net/tcp), when the \
             PSS stops moving; after close / before: 1.00 means it gave everything back. CPU \
             µs/conn: the server's CPU from the warm-up to the end, per connection answered; \
             connect + GET: the client's time to connect and get the answer.",
        ),
        Workload::TlsKa => Some(
            "forklift runs `forklift serve --tls-cert CERT --tls-key KEY --workers 2` (rustls, \
             aws-lc-rs); nginx runs bench/peers/nginx-tls.conf.in (2 workers, `listen ... ssl \
             http2`, `ssl_session_tickets on; ssl_session_cache shared:SSL:10m;`, \
             `keepalive_requests 10000`, `return 200 \"greeting!!!\"`). Both serve the same ECDSA \
             P-256 certificate, made by this run, and negotiate TLS 1.3; before the load curl \
             checks each answers the greeting in HTTP/1.1 over TLS. CPU/req forklift / this: \
             below 1, forklift spent less CPU per request (paired within rounds).",
        ),
        Workload::TlsResume => Some(
            "wrk sends `Connection: close`, so every request is a new TCP connection and TLS \
             handshake; wrk's OpenSSL keeps each connection's last session and offers it on \
             the next (TLS 1.3 PSK from the server's ticket). Servers as in tls-ka (forklift: \
             tickets shared by its workers; nginx: tickets and a shared cache). Handshakes \
             resumed: counted in wrk itself by bench/peers/tls-sessions.c (LD_PRELOAD: \
             `SSL_session_reused` after each completed `SSL_connect`), summed over the rounds; \
             each of the 256 connections' first handshake is full.",
        ),
        Workload::TlsFull => Some(
            "As tls-resume, but every handshake is full on both servers: nginx refuses \
             resumption (`ssl_session_tickets off; ssl_session_cache off;`), and forklift, which \
             has no switch for it, is never offered a session: the shim \
             (`FORKLIFT_BENCH_TLS_NO_RESUME=1`) makes wrk drop its session before each new \
             connection, for both servers. Handshakes resumed should read 0%.",
        ),
        Workload::H2 | Workload::H2c => Some(
            "h2load: 100 connections, at most 10 streams on each, a fixed number of requests. \
             h2: forklift with `--tls-cert/--tls-key`, HTTP/2 by ALPN; nginx with `listen ... ssl \
             http2`. h2c: plain ports, HTTP/2 by prior knowledge (hyper's auto builder sniffs the \
             preface; nginx 1.22's `listen ... http2` without ssl). curl checks the protocol \
             before the load. req/s: h2load's; p50 and p99: from h2load's per-request log \
             (`--log-file`, each request's time until the end of its response), as h2load \
             itself reports only min, max, mean and sd. Errors: responses outside 2xx and \
             requests h2load counts as errored, timed out or not done.",
        ),
        _ => None,
    }
}

/// The whole markdown report.
pub fn markdown(
    meta: &Meta,
    runs: &[Run],
    servers: &[ServerSpec],
    workloads: &[Workload],
) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# forklift benchmark\n");
    let _ = writeln!(md, "- date: {}", meta.date_utc);
    let _ = writeln!(
        md,
        "- machine: {} CPUs ({}), Linux {}",
        meta.nproc, meta.cpu_model, meta.kernel
    );
    let _ = writeln!(
        md,
        "- load average before / after: {} / {}",
        meta.loadavg_before, meta.loadavg_after
    );
    let _ = writeln!(md, "- mode: {}, rounds: {}", meta.mode, meta.rounds);
    let _ = writeln!(md, "- command: `{}`", meta.command);
    let _ = writeln!(md, "- tools: {}", meta.tools.join("; "));
    for (w, cmd) in &meta.load_commands {
        let _ = writeln!(md, "- {}: {cmd}", w.name());
    }
    for n in &meta.notices {
        let _ = writeln!(md, "- note: {n}");
    }
    let _ = writeln!(
        md,
        "\nEach round runs every workload on every server in turn (a fresh server each time); \
         figures are medians over the rounds, the first also with min–max. \
         forklift / this: forklift's figure (req/s, MiB/s or KiB per connection) divided by \
         this server's in the same round, the median (and min–max) over the rounds. \
         RSS in MiB: master peak during the load / largest worker RSS idle (right before the \
         load) / largest worker peak during the load. CPU µs/req: the server's user+sys CPU \
         (master and workers) during the load divided by the requests completed. Errors: \
         non-2xx responses plus socket errors, summed over the rounds."
    );

    for &w in workloads {
        let rows = rows(runs, w, servers);
        let cols = columns(w);
        let reference = rows.iter().find(|r| r.server == REFERENCE);
        let _ = writeln!(md, "\n## {}\n", w.title());
        if let Some(text) = explanation(w) {
            let _ = writeln!(md, "{text}\n");
        }
        let heads: Vec<String> = cols.iter().map(|&c| header(c, w)).collect();
        let _ = writeln!(md, "| server | {} |", heads.join(" | "));
        let _ = writeln!(md, "|---|{}", "---:|".repeat(cols.len()));
        let dashes = vec![DASH; cols.len() - 1].join(" | ");
        let mut footnotes = Vec::new();
        let mut first_response_used = false;
        for r in &rows {
            if let Some(why) = &r.skipped {
                let _ = writeln!(md, "| {} | skipped: {why} | {dashes} |", r.server);
                continue;
            }
            for (round, e) in &r.failures {
                footnotes.push(format!("{} failed in round {round}: {e}", r.server));
            }
            let Some(figure) = r.figure else {
                let why = if r.failures.is_empty() {
                    "not run".to_string()
                } else {
                    "**failed** (see below)".to_string()
                };
                let _ = writeln!(md, "| {} | {why} | {dashes} |", r.server);
                continue;
            };
            let cells: Vec<String> = cols
                .iter()
                .map(|&c| match c {
                    Col::Figure => {
                        let mut cell = fmt_figure(w.figure(), figure);
                        if !r.failures.is_empty() {
                            cell.push_str(&format!(
                                " ({} of {} rounds failed)",
                                r.failures.len(),
                                r.failures.len() + r.ok_rounds
                            ));
                        }
                        cell
                    }
                    Col::Ratio => reference
                        .and_then(|f| paired_ratio(&f.figure_by_round, &r.figure_by_round))
                        .map_or_else(|| DASH.to_string(), |x| fmt_ratio(&x)),
                    Col::CpuRatio => reference
                        .and_then(|f| paired_ratio(&f.cpu_by_round, &r.cpu_by_round))
                        .map_or_else(|| DASH.to_string(), |x| fmt_ratio(&x)),
                    Col::Rps => r.rps.map_or(DASH.to_string(), |s| thousands(s.median)),
                    Col::P50 => r.p50_ms.map_or(DASH.to_string(), |s| fmt_ms(s.median)),
                    Col::P99 => r.p99_ms.map_or(DASH.to_string(), |s| fmt_ms(s.median)),
                    Col::Errors => match r.errors.total() {
                        0 => "0".to_string(),
                        n => format!("{n} ({})", r.errors.breakdown()),
                    },
                    Col::Cpu => r
                        .cpu_us_per_req
                        .map_or(DASH.to_string(), |s| format!("{:.1}", s.median)),
                    Col::Rss => format!(
                        "{} / {} / {}{}",
                        fmt_mib(r.master_rss_mib),
                        fmt_mib(r.worker_idle_mib),
                        fmt_mib(r.worker_peak_mib),
                        match r.workers {
                            0 => " (one process)".to_string(),
                            // Its first process serves too: "master" is one of n + 1 servers.
                            n if r.server == CEILING =>
                                format!(" ({} processes, all serve)", n + 1),
                            n => format!(" ({n} workers)"),
                        }
                    ),
                    Col::Held => r.idle.as_ref().map_or(DASH.to_string(), |i| {
                        if i.held_min == i.connections {
                            thousands(i.held_min as f64)
                        } else {
                            format!(
                                "{} of {} (fewest in a round)",
                                thousands(i.held_min as f64),
                                thousands(i.connections as f64)
                            )
                        }
                    }),
                    Col::Memory => r.idle.as_ref().map_or(DASH.to_string(), |i| {
                        format!(
                            "{} / {} / {}",
                            fmt_mib(i.before_mib),
                            fmt_mib(i.with_mib),
                            fmt_mib(i.after_mib)
                        )
                    }),
                    Col::AfterClose => r
                        .idle
                        .as_ref()
                        .and_then(|i| i.after_over_before)
                        .map_or(DASH.to_string(), |s| fmt_ratio(&s)),
                    Col::Resumed => r.tls_sessions.map_or(DASH.to_string(), |t| {
                        let all = t.resumed + t.full;
                        format!(
                            "{:.1}% ({} of {})",
                            if all > 0 {
                                100.0 * t.resumed as f64 / all as f64
                            } else {
                                0.0
                            },
                            thousands(t.resumed as f64),
                            thousands(all as f64)
                        )
                    }),
                    Col::Ready => match (r.ready_ms, r.ready_by) {
                        (Some(s), Some(ReadyBy::FirstResponse)) => {
                            first_response_used = true;
                            format!("{}¹", fmt_ms(s.median))
                        }
                        (Some(s), _) => fmt_ms(s.median),
                        _ => DASH.to_string(),
                    },
                })
                .collect();
            let _ = writeln!(md, "| {} | {} |", r.server, cells.join(" | "));
        }
        let ceiling_ran = rows
            .iter()
            .any(|r| r.server == CEILING && (r.ok_rounds > 0 || !r.failures.is_empty()));
        if ceiling_ran {
            let _ = writeln!(md, "\n{CEILING_NOTE}");
        }
        if first_response_used {
            let _ = writeln!(
                md,
                "\n¹ time from start to the first successful HTTP response (the server does not \
                 report readiness). Without the mark: time from start until forklift printed \
                 `ready pids=` (all workers serving)."
            );
        }
        if !footnotes.is_empty() {
            let _ = writeln!(md);
            for f in footnotes {
                let _ = writeln!(md, "- {}", f.replace('|', "\\|"));
            }
        }
    }
    md
}

/// A workload's figure: req/s and MiB/s as whole numbers with thousands separators, KiB per
/// connection to two decimals; the range when there is more than one round.
pub fn fmt_figure(f: Figure, s: Spread) -> String {
    match f {
        Figure::ReqPerSec | Figure::MibPerSec => fmt_rps(s),
        Figure::KibPerConn if s.n > 1 => {
            format!("{:.2} ({:.2}–{:.2})", s.median, s.min, s.max)
        }
        Figure::KibPerConn => format!("{:.2}", s.median),
    }
}

/// req/s with thousands separators; the range when there is more than one round.
pub fn fmt_rps(s: Spread) -> String {
    if s.n > 1 {
        format!(
            "{} ({}–{})",
            thousands(s.median),
            thousands(s.min),
            thousands(s.max)
        )
    } else {
        thousands(s.median)
    }
}

/// A ratio to two decimals; the range when there is more than one round.
pub fn fmt_ratio(s: &Spread) -> String {
    if s.n > 1 {
        format!("{:.2} ({:.2}–{:.2})", s.median, s.min, s.max)
    } else {
        format!("{:.2}", s.median)
    }
}

/// A whole number with `,` between thousands.
pub fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        out.insert(0, '-');
    }
    out
}

/// Milliseconds with about three significant digits; seconds from 1 s up.
pub fn fmt_ms(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else if ms >= 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

fn fmt_mib(s: Option<Spread>) -> String {
    s.map_or(DASH.to_string(), |s| format!("{:.1}", s.median))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1234567.0), "1,234,567");
        assert_eq!(thousands(-12345.0), "-12,345");
    }

    #[test]
    fn ms_formats() {
        assert_eq!(fmt_ms(0.8123), "0.81 ms");
        assert_eq!(fmt_ms(12.345), "12.3 ms");
        assert_eq!(fmt_ms(101.7), "102 ms");
        assert_eq!(fmt_ms(1020.0), "1.02 s");
    }

    #[test]
    fn the_ceiling_note_is_under_the_tables_where_it_ran() {
        use crate::parse::LoadReport;
        use crate::run::{Rss, Sample, SERVERS};
        let run = |server: &str, w: Workload, outcome: Outcome| Run {
            round: 1,
            workload: w,
            server: server.into(),
            port: 20_000,
            outcome,
        };
        let ok = || {
            Outcome::Ok(Box::new(Sample {
                load: LoadReport {
                    requests: 3000,
                    duration_s: 3.0,
                    rps: 1000.0,
                    p50_ms: Some(2.0),
                    p99_ms: Some(20.0),
                    errors: Errors::default(),
                    bytes_read: None,
                    tls_sessions: None,
                },
                ready_ms: 3.0,
                ready_by: ReadyBy::FirstResponse,
                master_pid: 1,
                worker_pids: vec![2],
                rss_kib: Rss::default(),
                cpu_s: 1.0,
                cpu_us_per_req: Some(8.0),
                stop: None,
                idle: None,
            }))
        };
        let meta = Meta {
            date_utc: String::new(),
            command: String::new(),
            mode: "quick".into(),
            rounds: 1,
            nproc: 2,
            kernel: String::new(),
            cpu_model: String::new(),
            loadavg_before: String::new(),
            loadavg_after: String::new(),
            tools: vec![],
            load_commands: vec![],
            notices: vec![],
        };
        let runs = vec![
            run("forklift", Workload::Conn, ok()),
            run("forklift", Workload::Keepalive, ok()),
            run(CEILING, Workload::Keepalive, ok()),
            run(CEILING, Workload::Conn, Outcome::Failed("boom".into())),
            run("forklift", Workload::Sleep, ok()),
        ];
        let md = markdown(&meta, &runs, &SERVERS, &Workload::ALL);
        // Under conn (failed there, but it ran) and keepalive; not under sleep (skipped).
        assert_eq!(md.matches(CEILING_NOTE).count(), 2);
        let sleep = md.split("## sleep").nth(1).unwrap();
        assert!(!sleep.contains(CEILING_NOTE));
        assert!(sleep.contains("| ceiling | skipped"));
        let without: Vec<Run> = runs.into_iter().filter(|r| r.server != CEILING).collect();
        assert!(!markdown(&meta, &without, &SERVERS[..1], &Workload::ALL).contains(CEILING_NOTE));
    }

    #[test]
    fn ratios_are_paired_within_rounds() {
        let by = |v: &[(usize, f64)]| v.iter().copied().collect::<BTreeMap<usize, f64>>();
        // Drift between rounds: both halve in round 2; the ratio stays 1.25.
        let forklift = by(&[(1, 100.0), (2, 50.0), (3, 100.0)]);
        let other = by(&[(1, 80.0), (2, 40.0), (3, 80.0)]);
        let r = paired_ratio(&forklift, &other).unwrap();
        assert_eq!((r.median, r.min, r.max, r.n), (1.25, 1.25, 1.25, 3));
        assert_eq!(fmt_ratio(&r), "1.25 (1.25–1.25)");
        // A round one of them failed is left out; a zero rate is not divided by.
        let gaps = by(&[(1, 50.0), (3, 0.0)]);
        let r = paired_ratio(&forklift, &gaps).unwrap();
        assert_eq!((r.median, r.n), (2.0, 1));
        assert_eq!(fmt_ratio(&r), "2.00");
        assert!(paired_ratio(&forklift, &BTreeMap::new()).is_none());
    }

    #[test]
    fn rps_shows_range_only_for_several_rounds() {
        let one = Spread::of([1500.0]).unwrap();
        assert_eq!(fmt_rps(one), "1,500");
        let three = Spread::of([1500.0, 1000.0, 2000.0]).unwrap();
        assert_eq!(fmt_rps(three), "1,500 (1,000–2,000)");
    }

    /// A round of the static and idle workloads: forklift and nginx with the figures given,
    /// the fasthttp peer and the ceiling skipped.
    fn static_runs(round: usize, forklift: (f64, f64, f64), nginx: (f64, f64, f64)) -> Vec<Run> {
        use crate::parse::{LoadReport, MIB};
        use crate::run::Rss;
        let sample = |w: Workload, (figure, cpu, kib_before): (f64, f64, f64)| {
            let duration_s = 2.0;
            let (rps, bytes_read, idle) = match w.figure() {
                Figure::ReqPerSec => (figure, Some((figure * duration_s * 4200.0) as u64), None),
                Figure::MibPerSec => (figure, Some((figure * duration_s * MIB) as u64), None),
                Figure::KibPerConn => {
                    // A thousandth of the figure, in KiB per connection.
                    let before = kib_before as u64;
                    let with = before + (figure * 10.0) as u64;
                    let mem = |k| idle::Memory {
                        rss_kib: k,
                        pss_kib: k,
                    };
                    (
                        5000.0,
                        None,
                        Some(idle::Figures {
                            connections: 10_000,
                            held: 10_000,
                            server_side_open: 10_000,
                            open_s: duration_s,
                            before: mem(before),
                            with: mem(with),
                            after: mem(with),
                            kib_per_conn: idle::per_connection_kib(before, with, 10_000),
                            kib_per_conn_rss: idle::per_connection_kib(before, with, 10_000),
                            after_over_before: idle::after_over_before(before, with),
                            server_closed_ms: Some(300.0),
                            fd_limits: vec!["20000".into()],
                        }),
                    )
                }
            };
            Outcome::Ok(Box::new(Sample {
                load: LoadReport {
                    requests: (rps * duration_s) as u64,
                    duration_s,
                    rps,
                    p50_ms: Some(2.0),
                    p99_ms: Some(20.0),
                    errors: Errors::default(),
                    bytes_read,
                    tls_sessions: None,
                },
                ready_ms: 3.0,
                ready_by: ReadyBy::ReadyLine,
                master_pid: 1,
                worker_pids: vec![2, 3],
                rss_kib: Rss::default(),
                cpu_s: 1.0,
                cpu_us_per_req: Some(cpu),
                stop: None,
                idle,
            }))
        };
        let mut runs = Vec::new();
        for w in [Workload::StaticSmall, Workload::StaticBig, Workload::Idle] {
            for (server, figures) in [("forklift", forklift), ("nginx", nginx)] {
                runs.push(Run {
                    round,
                    workload: w,
                    server: server.into(),
                    port: 20_000,
                    outcome: sample(w, figures),
                });
            }
        }
        runs
    }

    #[test]
    fn static_and_idle_tables_lead_with_their_figure_and_pair_it() {
        use crate::run::SERVERS;
        let meta = Meta {
            date_utc: String::new(),
            command: String::new(),
            mode: "full".into(),
            rounds: 2,
            nproc: 2,
            kernel: String::new(),
            cpu_model: String::new(),
            loadavg_before: String::new(),
            loadavg_after: String::new(),
            tools: vec![],
            load_commands: vec![],
            notices: vec![],
        };
        // (figure, CPU µs/req, PSS before in KiB). Round 2 runs at half speed for both.
        let mut runs = static_runs(1, (1000.0, 40.0, 5000.0), (4000.0, 10.0, 20_000.0));
        runs.extend(static_runs(
            2,
            (500.0, 40.0, 5000.0),
            (2000.0, 10.0, 20_000.0),
        ));
        let ws = [Workload::StaticSmall, Workload::StaticBig, Workload::Idle];
        let servers: Vec<ServerSpec> = SERVERS
            .iter()
            .filter(|s| ["forklift", "nginx", "fasthttp-prefork", "ceiling"].contains(&s.name))
            .copied()
            .collect();
        let md = markdown(&meta, &runs, &servers, &ws);
        let table = |w: Workload| {
            md.split(&format!("## {}", w.name()))
                .nth(1)
                .unwrap()
                .split("\n## ")
                .next()
                .unwrap()
                .to_string()
        };

        let small = table(Workload::StaticSmall);
        assert!(small.contains("| server | req/s (median, min–max) | forklift / this |"));
        assert!(small.contains("| CPU µs/req | CPU/req forklift / this |"));
        // Paired: 0.25 in both rounds though the rounds differ by half; CPU 4× nginx's.
        assert!(
            small.contains("| nginx | 3,000 (2,000–4,000) | 0.25 (0.25–0.25) |"),
            "{small}"
        );
        assert!(small.contains("| 10.0 | 4.00 (4.00–4.00) |"), "{small}");
        assert!(small.contains("| fasthttp-prefork | skipped: serves no files | — |"));
        assert!(small.contains("| ceiling | skipped: serves no files |"));
        // Every row has as many cells as the header.
        let cells = |line: &str| line.matches(" | ").count();
        let lines: Vec<&str> = small.lines().filter(|l| l.starts_with("| ")).collect();
        assert!(lines.iter().all(|l| cells(l) == cells(lines[0])), "{small}");

        let big = table(Workload::StaticBig);
        assert!(big.contains("| server | MiB/s (median, min–max) | forklift / this | req/s |"));
        assert!(
            big.contains("| forklift | 750 (500–1,000) | 1.00 (1.00–1.00) | 750 |"),
            "{big}"
        );

        let idle = table(Workload::Idle);
        assert!(idle.contains(
            "| KiB per idle connection (median, min–max) | forklift / this (below 1: forklift holds less) |"
        ));
        // forklift: 1 then 0.5 KiB per connection; nginx 4 then 2: forklift holds a quarter.
        assert!(
            idle.contains("| forklift | 0.75 (0.50–1.00) | 1.00 (1.00–1.00) | 10,000 |"),
            "{idle}"
        );
        assert!(
            idle.contains("| nginx | 3.00 (2.00–4.00) | 0.25 (0.25–0.25) | 10,000 |"),
            "{idle}"
        );
        // PSS before / with / after (MiB) and after over before.
        assert!(
            idle.contains("| 4.9 / 12.2 / 12.2 | 2.50 (2.00–3.00) |"),
            "{idle}"
        );
        assert!(
            idle.contains("| 19.5 / 48.8 / 48.8 | 2.50 (2.00–3.00) |"),
            "{idle}"
        );
        assert!(idle.contains("CPU µs/conn"));
        let lines: Vec<&str> = idle.lines().filter(|l| l.starts_with("| ")).collect();
        assert!(lines.iter().all(|l| cells(l) == cells(lines[0])), "{idle}");
    }
}
