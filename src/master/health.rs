//! What the health port says (`sys/health.rs` serves it): `/livez` while the master runs,
//! `/readyz` while every worker slot has a ready worker and the host is neither draining nor
//! stopping, `/metrics` in the Prometheus text format. Readiness and the metrics text are
//! pure functions of the master's state, tested without processes.

use std::fmt::Write as _;
use std::time::Instant;

use super::pool::{Entry, State};
use super::Master;
use crate::sys::health::Reply;

/// Counters since the master started, for `/metrics`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Stats {
    pub spawns: u64,
    /// Exits the master asked for (a stop, a reload, a recycle).
    pub exits_expected: u64,
    /// Unexpected exits after ready.
    pub exits_crash: u64,
    /// Exits before ready.
    pub exits_boot_failure: u64,
    pub reloads_started: u64,
    pub reloads_completed: u64,
    pub reloads_failed: u64,
    pub upgrades_started: u64,
    pub upgrades_failed: u64,
}

/// Why the host is not ready, or `None` when it is: the answer of `/readyz`.
pub(super) fn unready_reason(
    stopping: bool,
    draining: bool,
    workers: &[Entry],
    slots: usize,
) -> Option<String> {
    if stopping {
        return Some("stopping".into());
    }
    if draining {
        return Some("draining".into());
    }
    let ready = (0..slots)
        .filter(|&id| {
            workers.iter().any(|w| {
                w.info.id == id && matches!(w.state, State::Ready { .. } | State::Superseded { .. })
            })
        })
        .count();
    (ready < slots).then(|| format!("{ready} of {slots} workers ready"))
}

/// Everything `/metrics` reports.
pub(super) struct Snapshot<'a> {
    pub uptime_secs: f64,
    pub generation: u64,
    pub slots: usize,
    pub ready: bool,
    pub draining: bool,
    pub workers: &'a [Entry],
    pub restarts: u64,
    pub stats: &'a Stats,
}

/// The Prometheus text exposition (format 0.0.4) of `s`.
pub(super) fn metrics_text(s: &Snapshot<'_>) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, String)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            if labels.is_empty() {
                let _ = writeln!(out, "{name} {value}");
            } else {
                let _ = writeln!(out, "{name}{{{labels}}} {value}");
            }
        }
    };
    metric(
        "forklift_info",
        "gauge",
        "The build of the master.",
        &[(
            &format!(
                "version=\"{}\",pid=\"{}\"",
                env!("CARGO_PKG_VERSION"),
                std::process::id()
            ),
            "1".into(),
        )],
    );
    metric(
        "forklift_uptime_seconds",
        "gauge",
        "Seconds since the master started.",
        &[("", format!("{:.3}", s.uptime_secs))],
    );
    metric(
        "forklift_ready",
        "gauge",
        "1 while /readyz answers 200.",
        &[("", u8::from(s.ready).to_string())],
    );
    metric(
        "forklift_draining",
        "gauge",
        "1 while an operator has drained the host.",
        &[("", u8::from(s.draining).to_string())],
    );
    metric(
        "forklift_generation",
        "gauge",
        "The current generation of workers.",
        &[("", s.generation.to_string())],
    );
    metric(
        "forklift_worker_slots",
        "gauge",
        "The target number of workers.",
        &[("", s.slots.to_string())],
    );
    let count = |label: &str| {
        s.workers
            .iter()
            .filter(|w| w.state.label() == label)
            .count()
            .to_string()
    };
    metric(
        "forklift_workers",
        "gauge",
        "Worker processes by state.",
        &[
            ("state=\"booting\"", count("booting")),
            ("state=\"ready\"", count("ready")),
            ("state=\"replaced\"", count("replaced")),
            ("state=\"stopping\"", count("stopping")),
        ],
    );
    metric(
        "forklift_worker_spawns_total",
        "counter",
        "Worker processes started.",
        &[("", s.stats.spawns.to_string())],
    );
    metric(
        "forklift_worker_exits_total",
        "counter",
        "Worker processes that ended, by cause.",
        &[
            ("cause=\"expected\"", s.stats.exits_expected.to_string()),
            ("cause=\"crash\"", s.stats.exits_crash.to_string()),
            (
                "cause=\"boot_failure\"",
                s.stats.exits_boot_failure.to_string(),
            ),
        ],
    );
    metric(
        "forklift_worker_restarts_total",
        "counter",
        "Crashed workers replaced.",
        &[("", s.restarts.to_string())],
    );
    metric(
        "forklift_reloads_total",
        "counter",
        "Rolling reloads, by outcome.",
        &[
            ("outcome=\"started\"", s.stats.reloads_started.to_string()),
            (
                "outcome=\"completed\"",
                s.stats.reloads_completed.to_string(),
            ),
            ("outcome=\"failed\"", s.stats.reloads_failed.to_string()),
        ],
    );
    metric(
        "forklift_upgrades_total",
        "counter",
        "Binary upgrades, by outcome (a completed one ends this master).",
        &[
            ("outcome=\"started\"", s.stats.upgrades_started.to_string()),
            ("outcome=\"failed\"", s.stats.upgrades_failed.to_string()),
        ],
    );
    let mut rows: Vec<&Entry> = s.workers.iter().collect();
    rows.sort_by_key(|w| (w.info.id, w.info.generation));
    let requests: Vec<(String, String)> = rows
        .iter()
        .map(|w| {
            (
                format!(
                    "worker=\"{}\",pid=\"{}\",generation=\"{}\"",
                    w.info.id, w.info.pid, w.info.generation
                ),
                w.requests.to_string(),
            )
        })
        .collect();
    let requests: Vec<(&str, String)> = requests
        .iter()
        .map(|(l, v)| (l.as_str(), v.clone()))
        .collect();
    metric(
        "forklift_worker_requests_total",
        "counter",
        "Requests served by each live worker (from its last heartbeat).",
        &requests,
    );
    let connections: Vec<(&str, String)> = requests
        .iter()
        .zip(&rows)
        .map(|((l, _), w)| (*l, w.connections.to_string()))
        .collect();
    metric(
        "forklift_worker_connections",
        "gauge",
        "Connections each live worker holds open (from its last heartbeat).",
        &connections,
    );
    out
}

impl Master {
    /// Serves the health port's clients, without blocking.
    pub(super) fn serve_health(&mut self) {
        let Some(mut server) = self.health.take() else {
            return;
        };
        server.serve(Instant::now(), |_, path| self.health_reply(path));
        self.health = Some(server);
    }

    fn health_reply(&self, path: &str) -> Reply {
        match path {
            "/livez" => Reply::text(200, "alive\n"),
            "/readyz" => match self.unready() {
                None => Reply::text(200, "ready\n"),
                Some(reason) => Reply::text(503, format!("{reason}\n")),
            },
            "/metrics" => Reply {
                status: 200,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body: metrics_text(&Snapshot {
                    uptime_secs: self.started.elapsed().as_secs_f64(),
                    generation: self.generation,
                    slots: self.slots.len(),
                    ready: self.unready().is_none(),
                    draining: self.draining,
                    workers: &self.workers,
                    restarts: self.slots.iter().map(|s| s.restarts).sum(),
                    stats: &self.stats,
                }),
            },
            _ => Reply::text(404, "not found: /livez, /readyz or /metrics\n"),
        }
    }

    pub(super) fn unready(&self) -> Option<String> {
        unready_reason(
            !self.running() || self.shutdown_at.is_some(),
            self.draining,
            &self.workers,
            self.slots.len(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(id: usize, generation: u64) -> Entry {
        Entry::for_test(
            id,
            generation,
            State::Ready {
                since: Instant::now(),
                recycle: super::super::pool::Recycle::No,
            },
        )
    }

    #[test]
    fn ready_needs_every_slot_served_and_no_drain() {
        let booting = [ready(0, 1), Entry::for_test(1, 1, State::Starting)];
        assert_eq!(
            unready_reason(false, false, &booting, 2).as_deref(),
            Some("1 of 2 workers ready")
        );
        let serving = [ready(0, 1), ready(1, 1)];
        assert_eq!(unready_reason(false, false, &serving, 2), None);
        assert_eq!(
            unready_reason(false, true, &serving, 2).as_deref(),
            Some("draining")
        );
        assert_eq!(
            unready_reason(true, false, &serving, 2).as_deref(),
            Some("stopping")
        );
        // During a reload the old generation serves while the new one boots.
        let reloading = [
            ready(0, 1),
            ready(1, 1),
            Entry::for_test(0, 2, State::Starting),
            Entry::for_test(1, 2, State::Starting),
        ];
        assert_eq!(unready_reason(false, false, &reloading, 2), None);
    }

    #[test]
    fn metrics_are_prometheus_text() {
        let workers = [ready(0, 1), Entry::for_test(1, 1, State::Starting)];
        let stats = Stats {
            spawns: 3,
            exits_crash: 1,
            ..Stats::default()
        };
        let text = metrics_text(&Snapshot {
            uptime_secs: 12.5,
            generation: 1,
            slots: 2,
            ready: false,
            draining: false,
            workers: &workers,
            restarts: 1,
            stats: &stats,
        });
        for line in text.lines() {
            assert!(
                line.starts_with("# HELP forklift_")
                    || line.starts_with("# TYPE forklift_")
                    || line.starts_with("forklift_"),
                "{line}"
            );
        }
        assert!(
            text.contains("forklift_workers{state=\"ready\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("forklift_workers{state=\"booting\"} 1\n"));
        assert!(text.contains("forklift_worker_spawns_total 3\n"));
        assert!(text.contains("forklift_worker_exits_total{cause=\"crash\"} 1\n"));
        assert!(text.contains("forklift_uptime_seconds 12.500\n"));
        assert!(text.contains(
            "forklift_worker_requests_total{worker=\"0\",pid=\"1000\",generation=\"1\"} 0\n"
        ));
    }
}
