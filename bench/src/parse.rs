//! Readers for the load generators' reports: wrk's `--latency` text and oha's JSON.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What one load-generator run reports, in the units used throughout the harness.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    /// Responses received (any status).
    pub requests: u64,
    /// Wall time of the load, in seconds.
    pub duration_s: f64,
    /// Responses per second.
    pub rps: f64,
    /// Median latency in milliseconds, when any request completed.
    pub p50_ms: Option<f64>,
    /// 99th-percentile latency in milliseconds, when any request completed.
    pub p99_ms: Option<f64>,
    pub errors: Errors,
    /// Bytes read from the server, heads included (wrk's "read"; not given by oha).
    #[serde(default)]
    pub bytes_read: Option<u64>,
    /// The client's TLS handshakes by kind (tls-resume and tls-full: counted in wrk by
    /// bench/peers/tls-sessions.c).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_sessions: Option<TlsSessions>,
}

/// Completed TLS handshakes of a load generator, resumed and full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsSessions {
    pub resumed: u64,
    pub full: u64,
}

impl TlsSessions {
    /// Parses the shim's `resumed N full M` line.
    pub fn parse(text: &str) -> Option<TlsSessions> {
        let mut words = text.split_whitespace();
        let (Some("resumed"), Some(resumed), Some("full"), Some(full)) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            return None;
        };
        Some(TlsSessions {
            resumed: resumed.parse().ok()?,
            full: full.parse().ok()?,
        })
    }
}

/// Bytes in a MiB, the unit of wrk's "MB" and of the static-big table.
pub const MIB: f64 = 1024.0 * 1024.0;

impl LoadReport {
    /// Throughput in MiB (2^20 bytes) per second: the bytes read over the load's wall time.
    pub fn mib_per_s(&self) -> Option<f64> {
        let bytes = self.bytes_read?;
        (self.duration_s > 0.0).then(|| bytes as f64 / MIB / self.duration_s)
    }
}

/// Failed requests, by kind.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Errors {
    /// Responses with a status outside 2xx (wrk: outside 2xx and 3xx).
    pub non_2xx: u64,
    /// wrk's socket errors.
    pub connect: u64,
    pub read: u64,
    pub write: u64,
    pub timeout: u64,
    /// Other client-side errors by message (oha's errorDistribution).
    pub other: BTreeMap<String, u64>,
    /// Requests the load generator cut off at its own deadline: not server failures, so not
    /// counted in [`Errors::total`].
    pub aborted_by_deadline: u64,
}

impl Errors {
    /// Every failure the server is to blame for (or at least could be).
    pub fn total(&self) -> u64 {
        self.non_2xx
            + self.connect
            + self.read
            + self.write
            + self.timeout
            + self.other.values().sum::<u64>()
    }

    /// A short breakdown of the non-zero kinds, e.g. `read 3, timeout 12`.
    pub fn breakdown(&self) -> String {
        let mut parts = Vec::new();
        for (name, n) in [
            ("non-2xx", self.non_2xx),
            ("connect", self.connect),
            ("read", self.read),
            ("write", self.write),
            ("timeout", self.timeout),
        ] {
            if n > 0 {
                parts.push(format!("{name} {n}"));
            }
        }
        for (msg, n) in &self.other {
            parts.push(format!("{msg} {n}"));
        }
        parts.join(", ")
    }
}

/// oha's message for requests cut off by its own `-z` deadline.
const OHA_DEADLINE: &str = "aborted due to deadline";

/// Parses the text wrk prints with `--latency`.
pub fn parse_wrk(text: &str) -> Result<LoadReport, String> {
    let mut requests = None;
    let mut duration_s = None;
    let mut rps = None;
    let mut p50_ms = None;
    let mut p99_ms = None;
    let mut bytes_read = None;
    let mut errors = Errors::default();
    let mut in_distribution = false;

    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("Latency Distribution") {
            in_distribution = true;
            continue;
        }
        if in_distribution {
            if let Some((pct, value)) = line.split_once(char::is_whitespace) {
                if let Some(pct) = pct.strip_suffix('%') {
                    let ms = parse_wrk_time_ms(value.trim())
                        .ok_or_else(|| format!("wrk: bad latency {value:?}"))?;
                    match pct {
                        "50" => p50_ms = Some(ms),
                        "99" => p99_ms = Some(ms),
                        _ => {}
                    }
                    continue;
                }
            }
            in_distribution = false;
        }
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            rps = Some(parse_num(rest.trim(), "Requests/sec")?);
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            for part in rest.split(',') {
                let (kind, n) = part
                    .trim()
                    .split_once(' ')
                    .ok_or_else(|| format!("wrk: bad socket errors {rest:?}"))?;
                let n = parse_num(n.trim(), "socket errors")? as u64;
                match kind {
                    "connect" => errors.connect = n,
                    "read" => errors.read = n,
                    "write" => errors.write = n,
                    "timeout" => errors.timeout = n,
                    _ => {}
                }
            }
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors.non_2xx = parse_num(rest.trim(), "Non-2xx")? as u64;
        } else if let Some((n, rest)) = line.split_once(" requests in ") {
            // "1000 requests in 10.00s, 120.00KB read"
            requests = Some(parse_num(n.trim(), "requests")? as u64);
            let (d, read) = rest.split_once(',').unwrap_or((rest, ""));
            let d = d.trim();
            duration_s = Some(
                parse_wrk_time_ms(d).ok_or_else(|| format!("wrk: bad duration {d:?}"))? / 1000.0,
            );
            if let Some(size) = read.trim().strip_suffix(" read") {
                bytes_read = Some(
                    parse_wrk_bytes(size).ok_or_else(|| format!("wrk: bad size {size:?}"))? as u64,
                );
            }
        }
    }

    let requests = requests.ok_or("wrk: no 'N requests in' line")?;
    let rps = rps.ok_or("wrk: no Requests/sec line")?;
    // wrk prints a latency distribution of zeros when nothing completed.
    if requests == 0 {
        p50_ms = None;
        p99_ms = None;
    }
    Ok(LoadReport {
        requests,
        duration_s: duration_s.unwrap_or(0.0),
        rps,
        p50_ms,
        p99_ms,
        errors,
        bytes_read,
        tls_sessions: None,
    })
}

fn parse_num(s: &str, what: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .map_err(|_| format!("wrk: bad number {s:?} in {what}"))
}

/// wrk's times: a number with a unit of us, ms, s, m or h. Returns milliseconds.
fn parse_wrk_time_ms(s: &str) -> Option<f64> {
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().ok()?;
    let factor = match unit {
        "us" => 0.001,
        "ms" => 1.0,
        "s" => 1000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => return None,
    };
    Some(v * factor)
}

/// wrk's sizes: a number with two decimals and a unit of B, KB, MB, GB, TB or PB, each 1024
/// times the one before (wrk's `format_binary`). Returns bytes, to within the rounding of the
/// last decimal (0.5% at worst, from 1.00 of a unit up).
fn parse_wrk_bytes(s: &str) -> Option<f64> {
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().ok()?;
    let power = ["B", "KB", "MB", "GB", "TB", "PB"]
        .iter()
        .position(|u| *u == unit)?;
    Some(v * 1024f64.powi(power as i32))
}

/// The parts of oha's `--output-format json` report the harness reads.
#[derive(Deserialize)]
struct OhaJson {
    summary: OhaSummary,
    #[serde(rename = "latencyPercentiles", default)]
    latency_percentiles: BTreeMap<String, Option<f64>>,
    #[serde(rename = "statusCodeDistribution", default)]
    status_code_distribution: BTreeMap<String, u64>,
    #[serde(rename = "errorDistribution", default)]
    error_distribution: BTreeMap<String, u64>,
}

#[derive(Deserialize)]
struct OhaSummary {
    /// Wall time in seconds.
    total: f64,
}

/// Parses oha's JSON report (oha 1.x, `--output-format json`).
///
/// req/s counts responses (any status) over the run's wall time; oha's own requestsPerSec
/// also counts client errors, so it is not used.
pub fn parse_oha(json: &str) -> Result<LoadReport, String> {
    let o: OhaJson = serde_json::from_str(json).map_err(|e| format!("oha: bad JSON: {e}"))?;
    let requests: u64 = o.status_code_distribution.values().sum();
    let non_2xx: u64 = o
        .status_code_distribution
        .iter()
        .filter(|(code, _)| !code.starts_with('2'))
        .map(|(_, n)| n)
        .sum();
    let mut errors = Errors {
        non_2xx,
        ..Errors::default()
    };
    for (msg, n) in o.error_distribution {
        if msg.contains(OHA_DEADLINE) {
            errors.aborted_by_deadline += n;
        } else {
            errors.other.insert(msg, n);
        }
    }
    let pct = |key: &str| {
        o.latency_percentiles
            .get(key)
            .copied()
            .flatten()
            .filter(|v| v.is_finite() && requests > 0)
            .map(|s| s * 1000.0)
    };
    let duration_s = o.summary.total;
    Ok(LoadReport {
        requests,
        duration_s,
        rps: if duration_s > 0.0 {
            requests as f64 / duration_s
        } else {
            0.0
        },
        p50_ms: pct("p50"),
        p99_ms: pct("p99"),
        errors,
        bytes_read: None,
        tls_sessions: None,
    })
}

/// Parses h2load's report, with the latency percentiles taken from its `--log-file` (one line
/// per request: start time in µs, status (-1 for a failed stream), µs until the end of the
/// response), since h2load itself gives only min, max, mean and sd.
///
/// Responses are h2load's "done" requests with a status; errors are the responses outside
/// 2xx and the requests that did not complete (h2load's failed streams, errors and timeouts,
/// and those never done).
pub fn parse_h2load(text: &str, log: &str) -> Result<LoadReport, String> {
    let mut duration_s = None;
    let mut rps = None;
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    let mut statuses: BTreeMap<&str, u64> = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("finished in ") {
            // "finished in 1.11s, 18053.51 req/s, 1.35MB/s"
            let mut parts = rest.split(',').map(str::trim);
            let d = parts.next().unwrap_or("");
            duration_s = Some(
                parse_wrk_time_ms(d).ok_or_else(|| format!("h2load: bad duration {d:?}"))? / 1000.0,
            );
            let r = parts.next().unwrap_or("");
            let r = r
                .strip_suffix(" req/s")
                .ok_or_else(|| format!("h2load: bad rate {r:?}"))?;
            rps = Some(
                r.parse::<f64>()
                    .map_err(|_| format!("h2load: bad rate {r:?}"))?,
            );
        } else if let Some(rest) = line.strip_prefix("requests:") {
            // "requests: 20000 total, 20000 started, 20000 done, 20000 succeeded, 0 failed, ..."
            for part in rest.split(',') {
                if let Some((n, what)) = part.trim().split_once(' ') {
                    let n = n
                        .parse()
                        .map_err(|_| format!("h2load: bad count {part:?}"))?;
                    counts.insert(what, n);
                }
            }
        } else if let Some(rest) = line.strip_prefix("status codes:") {
            // "status codes: 20000 2xx, 0 3xx, 0 4xx, 0 5xx"
            for part in rest.split(',') {
                if let Some((n, what)) = part.trim().split_once(' ') {
                    let n = n
                        .parse()
                        .map_err(|_| format!("h2load: bad status count {part:?}"))?;
                    statuses.insert(what, n);
                }
            }
        }
    }
    let duration_s = duration_s.ok_or("h2load: no 'finished in' line")?;
    let rps = rps.ok_or("h2load: no 'finished in' line")?;
    let count = |k: &str| counts.get(k).copied();
    let total = count("total").ok_or("h2load: no 'requests:' line")?;
    let done = count("done").unwrap_or(0);
    let with_status: u64 = statuses.values().sum();
    let mut errors = Errors {
        non_2xx: with_status - statuses.get("2xx").copied().unwrap_or(0),
        ..Errors::default()
    };
    for (what, n) in [
        ("h2load errored", count("errored").unwrap_or(0)),
        ("h2load timeout", count("timeout").unwrap_or(0)),
        ("not done", total.saturating_sub(done)),
    ] {
        if n > 0 {
            errors.other.insert(what.to_string(), n);
        }
    }
    // Latencies of the streams that got a response.
    let mut micros: Vec<u64> = log
        .lines()
        .filter_map(|l| {
            let mut cols = l.split('\t');
            let _start = cols.next()?;
            let status: i64 = cols.next()?.trim().parse().ok()?;
            let us: u64 = cols.next()?.trim().parse().ok()?;
            (status > 0).then_some(us)
        })
        .collect();
    micros.sort_unstable();
    let pct = |p: f64| -> Option<f64> {
        if micros.is_empty() {
            return None;
        }
        // Nearest rank.
        let rank = ((p / 100.0) * micros.len() as f64).ceil() as usize;
        Some(micros[rank.clamp(1, micros.len()) - 1] as f64 / 1000.0)
    };
    Ok(LoadReport {
        requests: with_status,
        duration_s,
        rps,
        p50_ms: pct(50.0),
        p99_ms: pct(99.0),
        errors,
        bytes_read: None,
        tls_sessions: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK_OK: &str = "\
Running 3s test @ http://127.0.0.1:20001/
  2 threads and 512 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     5.12ms    2.01ms  30.00ms   80.00%
    Req/Sec    50.00k     3.00k   60.00k    70.00%
  Latency Distribution
     50%    4.80ms
     75%    6.00ms
     90%    7.50ms
     99%  812.00us
  301234 requests in 3.01s, 36.20MB read
Requests/sec: 100077.41
Transfer/sec:     12.03MB
";

    const WRK_ERRORS: &str = "\
Running 10s test @ http://127.0.0.1:20001/sleep?ms=100
  2 threads and 512 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   101.50ms    1.20ms   1.02s    99.00%
    Req/Sec     2.50k   100.00      2.60k    80.00%
  Latency Distribution
     50%  101.20ms
     75%  101.80ms
     90%  102.30ms
     99%    1.02s
  50000 requests in 1.00m, 6.00MB read
  Socket errors: connect 3, read 12, write 1, timeout 40
  Non-2xx or 3xx responses: 7
Requests/sec:    833.30
Transfer/sec:    102.40KB
";

    #[test]
    fn wrk_clean_run() {
        let r = parse_wrk(WRK_OK).unwrap();
        assert_eq!(r.requests, 301_234);
        assert!((r.duration_s - 3.01).abs() < 1e-9);
        assert!((r.rps - 100_077.41).abs() < 1e-6);
        assert!((r.p50_ms.unwrap() - 4.8).abs() < 1e-9);
        assert!((r.p99_ms.unwrap() - 0.812).abs() < 1e-9);
        assert_eq!(r.errors.total(), 0);
        assert_eq!(r.errors.breakdown(), "");
        assert_eq!(r.bytes_read, Some((36.2 * MIB) as u64));
    }

    #[test]
    fn wrk_errors_and_units() {
        let r = parse_wrk(WRK_ERRORS).unwrap();
        assert_eq!(r.requests, 50_000);
        assert!((r.duration_s - 60.0).abs() < 1e-9);
        assert!((r.p50_ms.unwrap() - 101.2).abs() < 1e-9);
        assert!((r.p99_ms.unwrap() - 1020.0).abs() < 1e-9);
        let e = &r.errors;
        assert_eq!((e.connect, e.read, e.write, e.timeout), (3, 12, 1, 40));
        assert_eq!(e.non_2xx, 7);
        assert_eq!(e.total(), 63);
        assert_eq!(r.bytes_read, Some((6.0 * MIB) as u64));
        assert_eq!(
            e.breakdown(),
            "non-2xx 7, connect 3, read 12, write 1, timeout 40"
        );
    }

    /// static-big: 1 MiB files, so gigabytes read.
    const WRK_BIG: &str = "\
Running 3s test @ http://127.0.0.1:20001/1m.bin
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    14.10ms    3.00ms  40.00ms   75.00%
    Req/Sec     1.13k    80.00     1.30k    70.00%
  Latency Distribution
     50%   13.50ms
     75%   15.80ms
     90%   18.00ms
     99%   27.40ms
  6800 requests in 3.00s, 6.64GB read
Requests/sec:   2266.67
Transfer/sec:      2.21GB
";

    #[test]
    fn wrk_bytes_read_give_mib_per_s() {
        let r = parse_wrk(WRK_BIG).unwrap();
        assert_eq!(r.requests, 6800);
        assert_eq!(r.bytes_read, Some((6.64 * 1024.0 * MIB) as u64));
        // 6.64 GiB in 3 s.
        let mib_s = r.mib_per_s().unwrap();
        assert!((mib_s - 6.64 * 1024.0 / 3.0).abs() < 1e-3, "{mib_s}");
        // Within wrk's rounding of the size of 6,800 responses of 1 MiB and their heads.
        assert!((mib_s / (6800.0 / 3.0) - 1.0).abs() < 0.005, "{mib_s}");
        // No bytes, no MiB/s; no time, no MiB/s.
        let mut none = r.clone();
        none.bytes_read = None;
        assert_eq!(none.mib_per_s(), None);
        none.bytes_read = Some(1);
        none.duration_s = 0.0;
        assert_eq!(none.mib_per_s(), None);
    }

    #[test]
    fn wrk_size_units() {
        assert_eq!(parse_wrk_bytes("512.00B"), Some(512.0));
        assert_eq!(parse_wrk_bytes("120.00KB"), Some(120.0 * 1024.0));
        assert_eq!(parse_wrk_bytes("1.50MB"), Some(1.5 * MIB));
        assert_eq!(parse_wrk_bytes("2.00GB"), Some(2.0 * 1024.0 * MIB));
        assert_eq!(parse_wrk_bytes("1.00TB"), Some(MIB * MIB));
        assert_eq!(parse_wrk_bytes("12"), None);
        assert_eq!(parse_wrk_bytes("3.0XB"), None);
        assert_eq!(parse_wrk_bytes("MB"), None);
    }

    #[test]
    fn wrk_without_report_is_an_error() {
        let out = "unable to connect to 127.0.0.1:1 Connection refused\n";
        assert!(parse_wrk(out).is_err());
    }

    #[test]
    fn wrk_time_units() {
        assert_eq!(parse_wrk_time_ms("250.00us"), Some(0.25));
        assert_eq!(parse_wrk_time_ms("2.00s"), Some(2000.0));
        assert_eq!(parse_wrk_time_ms("1.50m"), Some(90_000.0));
        assert_eq!(parse_wrk_time_ms("12"), None);
        assert_eq!(parse_wrk_time_ms("3.0xs"), None);
    }

    /// Trimmed from a real `oha --output-format json` report (oha 1.16).
    const OHA: &str = r#"{
  "summary": {
    "successRate": 0.99,
    "total": 2.5,
    "slowest": 1.03,
    "fastest": 0.0001,
    "average": 0.012,
    "requestsPerSec": 8000.0,
    "totalData": 219780,
    "sizePerRequest": 11,
    "sizePerSec": 87912.0
  },
  "metrics": {"success_rate": 0.99, "requests_per_sec": 8000.0,
              "latency_ms": {"min": 0.1, "mean": 12.0, "p50": 8.5, "p95": 30.0, "p99": 1010.0, "max": 1030.0}},
  "responseTimeHistogram": {"0.0001": 10},
  "latencyPercentiles": {"p10": 0.002, "p25": 0.004, "p50": 0.0085, "p75": 0.012,
                         "p90": 0.02, "p95": 0.03, "p99": 1.01, "p99.9": 1.02, "p99.99": 1.03},
  "rps": {"mean": 8000.0, "stddev": 100.0, "max": 9000.0, "min": 7000.0, "percentiles": {}},
  "details": {"DNSDialup": {"average": 0.001, "fastest": 0.0, "slowest": 0.01},
              "DNSLookup": {"average": 0.0, "fastest": 0.0, "slowest": 0.0},
              "firstByte": {"average": 0.01, "fastest": 0.0, "slowest": 1.0}},
  "statusCodeDistribution": {"200": 19960, "503": 20},
  "errorDistribution": {"connection closed before message completed": 15,
                        "aborted due to deadline": 5}
}"#;

    #[test]
    fn oha_report() {
        let r = parse_oha(OHA).unwrap();
        assert_eq!(r.requests, 19_980);
        assert!((r.duration_s - 2.5).abs() < 1e-9);
        assert!((r.rps - 7992.0).abs() < 1e-9);
        assert!((r.p50_ms.unwrap() - 8.5).abs() < 1e-9);
        assert!((r.p99_ms.unwrap() - 1010.0).abs() < 1e-9);
        // 20 non-2xx + 15 connection errors; the 5 deadline aborts are not the server's.
        assert_eq!(r.errors.non_2xx, 20);
        assert_eq!(r.errors.aborted_by_deadline, 5);
        assert_eq!(r.errors.total(), 35);
        assert_eq!((r.bytes_read, r.mib_per_s()), (None, None));
    }

    #[test]
    fn oha_with_nothing_completed() {
        let json = r#"{"summary": {"total": 1.0}, "latencyPercentiles": {"p50": null, "p99": null},
                       "statusCodeDistribution": {}, "errorDistribution": {"connection refused": 500}}"#;
        let r = parse_oha(json).unwrap();
        assert_eq!((r.requests, r.rps), (0, 0.0));
        assert_eq!((r.p50_ms, r.p99_ms), (None, None));
        assert_eq!(r.errors.total(), 500);
    }

    #[test]
    fn oha_garbage_is_an_error() {
        assert!(parse_oha("Error: connection refused").is_err());
    }

    #[test]
    fn h2load_report_and_log() {
        let text = "\
starting benchmark...
Application protocol: h2c
finished in 689.55ms, 29004.47 req/s, 1.07MB/s
requests: 20000 total, 20000 started, 19998 done, 19990 succeeded, 10 failed, 2 errored, 0 timeout
status codes: 19990 2xx, 0 3xx, 8 4xx, 0 5xx
traffic: 1.07MB (1120000) total
                     min         max         mean         sd        +/- sd
time for request:     1.39ms    109.83ms     30.13ms     27.33ms    82.67%
";
        let mut log = String::new();
        for i in 1..=100 {
            log.push_str(&format!("1796052426661888\t200\t{}\n", i * 1000));
        }
        log.push_str("1796052426661888\t-1\t5\n");
        let r = parse_h2load(text, &log).unwrap();
        assert_eq!(r.requests, 19_998);
        assert!((r.duration_s - 0.68955).abs() < 1e-9);
        assert!((r.rps - 29_004.47).abs() < 1e-9);
        assert_eq!(r.p50_ms, Some(50.0));
        assert_eq!(r.p99_ms, Some(99.0));
        assert_eq!(r.errors.non_2xx, 8);
        assert_eq!(r.errors.other.get("h2load errored"), Some(&2));
        assert_eq!(r.errors.other.get("not done"), Some(&2));
        assert_eq!(r.errors.total(), 12);
        assert!(parse_h2load("nothing", "").is_err());
    }

    #[test]
    fn tls_session_counts() {
        assert_eq!(
            TlsSessions::parse("resumed 1404 full 16\n"),
            Some(TlsSessions {
                resumed: 1404,
                full: 16
            })
        );
        assert_eq!(TlsSessions::parse("resumed x full 1"), None);
        assert_eq!(TlsSessions::parse(""), None);
    }
}
