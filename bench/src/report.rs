//! The summary over rounds: markdown tables and the raw JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::parse::Errors;
use crate::run::{Outcome, ReadyBy, Run, ServerSpec, Workload};
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
    /// The load commands, with PORT standing for the server's port.
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
    pub rps: Option<Spread>,
    /// req/s by round, for ratios paired within a round.
    pub rps_by_round: BTreeMap<usize, f64>,
    pub p50_ms: Option<Spread>,
    pub p99_ms: Option<Spread>,
    pub errors: Errors,
    pub cpu_us_per_req: Option<Spread>,
    pub master_rss_mib: Option<Spread>,
    pub worker_idle_mib: Option<Spread>,
    pub worker_peak_mib: Option<Spread>,
    pub workers: usize,
    pub ready_ms: Option<Spread>,
    pub ready_by: Option<ReadyBy>,
}

/// `reference / row` req/s, round by round (rounds where both served), summarised: a ratio
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
            let samples: Vec<_> = mine
                .iter()
                .filter_map(|r| match &r.outcome {
                    Outcome::Ok(x) => Some(x.as_ref()),
                    Outcome::Failed(_) => None,
                })
                .collect();
            let failures = mine
                .iter()
                .filter_map(|r| match &r.outcome {
                    Outcome::Failed(e) => Some((r.round, e.clone())),
                    Outcome::Ok(_) => None,
                })
                .collect();
            let rps_by_round: BTreeMap<usize, f64> = mine
                .iter()
                .filter_map(|r| match &r.outcome {
                    Outcome::Ok(x) => Some((r.round, x.load.rps)),
                    Outcome::Failed(_) => None,
                })
                .collect();
            let mib = |kib: u64| kib as f64 / 1024.0;
            let mut errors = Errors::default();
            for x in &samples {
                add_errors(&mut errors, &x.load.errors);
            }
            Row {
                server: s.name.to_string(),
                skipped: (!s.serves(w)).then(|| "no /sleep endpoint".to_string()),
                ok_rounds: samples.len(),
                failures,
                rps: Spread::of(rps_by_round.values().copied()),
                rps_by_round,
                p50_ms: Spread::of(samples.iter().filter_map(|x| x.load.p50_ms)),
                p99_ms: Spread::of(samples.iter().filter_map(|x| x.load.p99_ms)),
                errors,
                cpu_us_per_req: Spread::of(samples.iter().filter_map(|x| x.cpu_us_per_req)),
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
        let _ = writeln!(md, "- {}: `{cmd}`", w.name());
    }
    for n in &meta.notices {
        let _ = writeln!(md, "- note: {n}");
    }
    let _ = writeln!(
        md,
        "\nEach round runs every workload on every server in turn (a fresh server each time); \
         figures are medians over the rounds, req/s also with min–max. \
         forklift / this: forklift's req/s divided by this server's in the same round, the \
         median (and min–max) over the rounds. \
         RSS in MiB: master peak during the load / largest worker RSS idle (right before the \
         load) / largest worker peak during the load. CPU µs/req: the server's user+sys CPU \
         (master and workers) during the load divided by the requests completed. Errors: \
         non-2xx responses plus socket errors, summed over the rounds."
    );

    for &w in workloads {
        let rows = rows(runs, w, servers);
        let reference = rows
            .iter()
            .find(|r| r.server == REFERENCE)
            .map(|r| r.rps_by_round.clone());
        let _ = writeln!(md, "\n## {}\n", w.title());
        let _ = writeln!(
            md,
            "| server | req/s (median, min–max) | forklift / this | p50 | p99 | errors | CPU µs/req | RSS master / worker idle / worker peak | ready in |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        let mut footnotes = Vec::new();
        let mut first_response_used = false;
        for r in &rows {
            if let Some(why) = &r.skipped {
                let _ = writeln!(
                    md,
                    "| {} | skipped: {why} | {DASH} | {DASH} | {DASH} | {DASH} | {DASH} | {DASH} | {DASH} |",
                    r.server
                );
                continue;
            }
            for (round, e) in &r.failures {
                footnotes.push(format!("{} failed in round {round}: {e}", r.server));
            }
            let Some(rps) = r.rps else {
                let why = if r.failures.is_empty() {
                    "not run".to_string()
                } else {
                    "**failed** (see below)".to_string()
                };
                let _ = writeln!(
                    md,
                    "| {} | {why} | {DASH} | {DASH} | {DASH} | {DASH} | {DASH} | {DASH} | {DASH} |",
                    r.server
                );
                continue;
            };
            let mut rps_cell = fmt_rps(rps);
            if !r.failures.is_empty() {
                rps_cell.push_str(&format!(
                    " ({} of {} rounds failed)",
                    r.failures.len(),
                    r.failures.len() + r.ok_rounds
                ));
            }
            let ratio = reference
                .as_ref()
                .and_then(|f| paired_ratio(f, &r.rps_by_round))
                .map_or_else(|| DASH.to_string(), |x| fmt_ratio(&x));
            let errors = match r.errors.total() {
                0 => "0".to_string(),
                n => format!("{n} ({})", r.errors.breakdown()),
            };
            let rss = format!(
                "{} / {} / {}{}",
                fmt_mib(r.master_rss_mib),
                fmt_mib(r.worker_idle_mib),
                fmt_mib(r.worker_peak_mib),
                match r.workers {
                    0 => " (one process)".to_string(),
                    // Its first process serves too: "master" is one of n + 1 servers.
                    n if r.server == CEILING => format!(" ({} processes, all serve)", n + 1),
                    n => format!(" ({n} workers)"),
                }
            );
            let ready = match (r.ready_ms, r.ready_by) {
                (Some(s), Some(ReadyBy::FirstResponse)) => {
                    first_response_used = true;
                    format!("{}¹", fmt_ms(s.median))
                }
                (Some(s), _) => fmt_ms(s.median),
                _ => DASH.to_string(),
            };
            let _ = writeln!(
                md,
                "| {} | {rps_cell} | {ratio} | {} | {} | {errors} | {} | {rss} | {ready} |",
                r.server,
                r.p50_ms.map_or(DASH.to_string(), |s| fmt_ms(s.median)),
                r.p99_ms.map_or(DASH.to_string(), |s| fmt_ms(s.median)),
                r.cpu_us_per_req
                    .map_or(DASH.to_string(), |s| format!("{:.1}", s.median)),
            );
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
        if i > 0 && (digits.len() - i) % 3 == 0 {
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
                },
                ready_ms: 3.0,
                ready_by: ReadyBy::FirstResponse,
                master_pid: 1,
                worker_pids: vec![2],
                rss_kib: Rss::default(),
                cpu_s: 1.0,
                cpu_us_per_req: Some(8.0),
                stop: None,
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
}
