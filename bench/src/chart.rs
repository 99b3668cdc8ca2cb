//! The SVG chart: per workload, req/s bars (median, with a min–max whisker) and the p50–p99
//! latency span of each server.

use std::path::Path;

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use crate::report::{self, Meta, Row};
use crate::run::{Figure, Run, ServerSpec, Workload};

const WHISKER: RGBColor = RGBColor(0x22, 0x22, 0x22);
const ROW_PX: u32 = 30;
const WIDTH: u32 = 1200;

type Res = Result<(), Box<dyn std::error::Error>>;

/// Draws the chart of every workload into `path`.
pub fn svg(
    path: &Path,
    meta: &Meta,
    runs: &[Run],
    servers: &[ServerSpec],
    workloads: &[Workload],
) -> Result<(), String> {
    draw(path, meta, runs, servers, workloads).map_err(|e| format!("chart: {e}"))
}

fn draw(
    path: &Path,
    meta: &Meta,
    runs: &[Run],
    servers: &[ServerSpec],
    workloads: &[Workload],
) -> Res {
    // Only servers with figures get a bar.
    let panels: Vec<(Workload, Vec<Row>)> = workloads
        .iter()
        .map(|&w| {
            let rows = report::rows(runs, w, servers)
                .into_iter()
                .filter(|r| r.figure.is_some())
                .collect();
            (w, rows)
        })
        .collect();
    let heights: Vec<u32> = panels
        .iter()
        .map(|(_, rows)| 90 + ROW_PX * rows.len().max(1) as u32)
        .collect();
    let title_px = 60;
    let total: u32 = title_px + heights.iter().sum::<u32>();

    let root = SVGBackend::new(path, (WIDTH, total)).into_drawing_area();
    root.fill(&WHITE)?;
    let (title, mut rest) = root.split_vertically(title_px);
    title.draw_text(
        &format!(
            "forklift benchmark — {} mode, {} round(s), {} CPUs, {}",
            meta.mode, meta.rounds, meta.nproc, meta.date_utc
        ),
        &("sans-serif", 20).into_font().color(&BLACK),
        (15, 12),
    )?;
    title.draw_text(
        "bars: each workload's median figure (whisker: min–max over rounds); right: p50 (dot) to p99 (diamond), log scale",
        &("sans-serif", 13).into_font().color(&BLACK),
        (15, 38),
    )?;

    for ((w, rows), h) in panels.iter().zip(&heights) {
        let (band, below) = rest.split_vertically(*h);
        rest = below;
        let (left, right) = band.split_horizontally(WIDTH * 11 / 20);
        if rows.is_empty() {
            left.draw_text(
                &format!("{}: no results", w.name()),
                &("sans-serif", 16).into_font().color(&BLACK),
                (15, 20),
            )?;
            continue;
        }
        throughput(&left, *w, rows)?;
        latency(&right, *w, rows)?;
    }
    root.present()?;
    Ok(())
}

/// forklift in oranges, nginx in greens, fasthttp in blues, the ceiling in grey.
fn color(server: &str) -> RGBColor {
    match server {
        report::CEILING => RGBColor(0x99, 0x99, 0x99),
        "forklift" => RGBColor(0xd9, 0x5f, 0x02),
        "forklift-reuseport" => RGBColor(0xf4, 0x8c, 0x3c),
        "forklift-pinned" => RGBColor(0xfd, 0xb8, 0x63),
        "forklift-single" => RGBColor(0xa8, 0x40, 0x00),
        "nginx" => RGBColor(0x1b, 0x9e, 0x77),
        "nginx-reuseport" => RGBColor(0x66, 0xc2, 0xa5),
        "nginx-deferred" => RGBColor(0x0b, 0x6e, 0x4f),
        "fasthttp-prefork" => RGBColor(0x44, 0x77, 0xaa),
        "fasthttp-prefork-reuseport" => RGBColor(0x88, 0xaa, 0xdd),
        _ => RGBColor(0x22, 0x44, 0x88),
    }
}

/// Segment index of row `i`: the first row on top.
fn seg(rows: &[Row], i: usize) -> usize {
    rows.len() - 1 - i
}

fn label_of(rows: &[Row], v: &SegmentValue<usize>) -> String {
    match v {
        SegmentValue::CenterOf(s) | SegmentValue::Exact(s) if *s < rows.len() => {
            rows[rows.len() - 1 - *s].server.clone()
        }
        _ => String::new(),
    }
}

fn throughput<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    w: Workload,
    rows: &[Row],
) -> Res
where
    DB::ErrorType: 'static,
{
    let max = rows
        .iter()
        .filter_map(|r| r.figure.map(|s| s.max))
        .fold(1.0, f64::max);
    let n = rows.len();
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("{}: {}", w.name(), w.figure().unit()),
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(190)
        .build_cartesian_2d(0f64..max * 1.18, (0usize..n - 1).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .label_style(("sans-serif", 12))
        .y_labels(n)
        .y_label_formatter(&|v| label_of(rows, v))
        .x_labels(6)
        .x_label_formatter(&|v| axis_label(w.figure(), *v))
        .draw()?;
    for (i, r) in rows.iter().enumerate() {
        let Some(s) = r.figure else { continue };
        let y = seg(rows, i);
        let mut bar = Rectangle::new(
            [
                (0.0, SegmentValue::Exact(y)),
                (s.median, SegmentValue::Exact(y + 1)),
            ],
            color(&r.server).filled(),
        );
        bar.set_margin(4, 4, 0, 0);
        chart.draw_series(std::iter::once(bar))?;
        if s.n > 1 {
            chart.draw_series(std::iter::once(PathElement::new(
                vec![
                    (s.min, SegmentValue::CenterOf(y)),
                    (s.max, SegmentValue::CenterOf(y)),
                ],
                WHISKER.stroke_width(2),
            )))?;
        }
        chart.draw_series(std::iter::once(Text::new(
            format!(" {}", bar_label(w.figure(), s.median)),
            (s.max.max(s.median), SegmentValue::CenterOf(y)),
            ("sans-serif", 12),
        )))?;
    }
    Ok(())
}

/// Whole numbers with thousands separators; KiB per connection with decimals (they are small).
fn axis_label(f: Figure, v: f64) -> String {
    match f {
        Figure::KibPerConn => format!("{v:.1}"),
        _ => report::thousands(v),
    }
}

fn bar_label(f: Figure, v: f64) -> String {
    match f {
        Figure::KibPerConn => format!("{v:.2}"),
        _ => report::thousands(v),
    }
}

fn latency<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    w: Workload,
    rows: &[Row],
) -> Res
where
    DB::ErrorType: 'static,
{
    let values: Vec<f64> = rows
        .iter()
        .flat_map(|r| [r.p50_ms, r.p99_ms])
        .flatten()
        .map(|s| s.median)
        .filter(|v| *v > 0.0)
        .collect();
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(0.0, f64::max);
    let (lo, hi) = if values.is_empty() {
        (0.1, 10.0)
    } else {
        (lo / 2.0, hi * 2.0)
    };
    let n = rows.len();
    let mut chart = ChartBuilder::on(area)
        .caption(format!("{}: latency, ms", w.name()), ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(10)
        .build_cartesian_2d((lo..hi).log_scale(), (0usize..n - 1).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .label_style(("sans-serif", 12))
        .y_labels(n)
        .y_label_formatter(&|_| String::new())
        .x_labels(8)
        .x_label_formatter(&|v| {
            if *v >= 1.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            }
        })
        .draw()?;
    for (i, r) in rows.iter().enumerate() {
        let y = seg(rows, i);
        let c = color(&r.server);
        let p50 = r.p50_ms.map(|s| s.median).filter(|v| *v > 0.0);
        let p99 = r.p99_ms.map(|s| s.median).filter(|v| *v > 0.0);
        if let (Some(a), Some(b)) = (p50, p99) {
            chart.draw_series(std::iter::once(PathElement::new(
                vec![
                    (a, SegmentValue::CenterOf(y)),
                    (b, SegmentValue::CenterOf(y)),
                ],
                c.stroke_width(2),
            )))?;
        }
        if let Some(a) = p50 {
            chart.draw_series(std::iter::once(Circle::new(
                (a, SegmentValue::CenterOf(y)),
                5,
                c.filled(),
            )))?;
        }
        if let Some(b) = p99 {
            chart.draw_series(std::iter::once(
                EmptyElement::at((b, SegmentValue::CenterOf(y)))
                    + Polygon::new(vec![(0, -6), (6, 0), (0, 6), (-6, 0)], c.filled()),
            ))?;
            chart.draw_series(std::iter::once(Text::new(
                format!("  {}", report::fmt_ms(b)),
                (b, SegmentValue::CenterOf(y)),
                ("sans-serif", 11),
            )))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{Errors, LoadReport};
    use crate::run::{Outcome, ReadyBy, Rss, Sample, SERVERS};

    fn run(server: &str, w: Workload, round: usize, rps: f64) -> Run {
        Run {
            round,
            workload: w,
            server: server.into(),
            port: 20_000,
            outcome: Outcome::Ok(Box::new(Sample {
                load: LoadReport {
                    requests: (rps * 3.0) as u64,
                    duration_s: 3.0,
                    rps,
                    p50_ms: Some(2.0),
                    p99_ms: Some(20.0),
                    errors: Errors::default(),
                    bytes_read: None,
                    tls_sessions: None,
                },
                ready_ms: 3.0,
                ready_by: ReadyBy::ReadyLine,
                master_pid: 1,
                worker_pids: vec![2, 3],
                rss_kib: Rss::default(),
                cpu_s: 1.0,
                cpu_us_per_req: Some(8.0),
                stop: None,
                idle: None,
            })),
        }
    }

    fn meta() -> Meta {
        Meta {
            date_utc: "2024-01-01 00:00:00 UTC".into(),
            command: "bench/run --quick".into(),
            mode: "quick".into(),
            rounds: 2,
            nproc: 2,
            kernel: "6".into(),
            cpu_model: "cpu".into(),
            loadavg_before: String::new(),
            loadavg_after: String::new(),
            tools: vec![],
            load_commands: vec![],
            notices: vec![],
        }
    }

    #[test]
    fn draws_one_server_many_servers_and_empty_workloads() {
        let dir = std::env::temp_dir().join(format!("forklift-bench-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("chart.svg");
        let runs = vec![
            run("forklift", Workload::Conn, 1, 10_000.0),
            run("forklift", Workload::Conn, 2, 12_000.0),
            run("forklift", Workload::Keepalive, 1, 90_000.0),
            run("nginx", Workload::Keepalive, 1, 80_000.0),
            run("fasthttp-single", Workload::Keepalive, 1, 60_000.0),
            run("ceiling", Workload::Keepalive, 1, 140_000.0),
        ];
        svg(&path, &meta(), &runs, &SERVERS, &Workload::ALL).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("<svg"));
        assert!(text.contains("fasthttp-single"));
        assert!(text.contains("ceiling"));
        assert!(text.contains("sleep: no results"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
