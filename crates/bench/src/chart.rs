//! SVG charts (plotters): guest/host ratio per table row and environment, exit latency.
//!
//! The ratio chart has a log-scale axis centred on 1.0 (native speed), so a 7x row does not
//! flatten the rest and "2x slower" and "2x faster" are the same distance from the line;
//! each bar carries a whisker: the 95% interval of the ratio (a bootstrap of the ratio of medians, or Welch's on the logs below 6 runs). Rows are labelled as in the report's tables. Each series has a fixed colour:
//! the paper's bars are always named as the paper's and drawn in a colour no series of this
//! run uses. The exit chart draws each row's raw KVM floor (a minimal VMM's round trip,
//! `crate::floor`) as a dashed line across its group, in a colour no bar uses.

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::environment::Env;
use crate::results::{BenchResults, WorkloadResult};
use crate::table::Table;

/// One bar: its value and, where known, the (low, high) whisker.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bar {
    /// The bar's value.
    pub value: f64,
    /// The whisker's ends, if any.
    pub range: Option<(f64, f64)>,
}

/// One group of bars: a label and (series index, bar) pairs.
type Group = (String, Vec<(usize, Bar)>);

/// A named series with its colour.
#[derive(Clone, Debug)]
pub struct Series {
    /// The legend entry.
    pub name: String,
    /// Its colour (unique within a chart).
    pub color: RGBColor,
}

/// This run's kvmkit column.
const KVMKIT_COLOR: RGBColor = RGBColor(31, 119, 180);
/// This run's QEMU column.
const QEMU_COLOR: RGBColor = RGBColor(255, 127, 14);
/// The paper's figures: a grey no series of this run uses.
const PAPER_COLOR: RGBColor = RGBColor(170, 170, 170);

/// The raw KVM floor's line on the exit chart: a red no series uses.
const FLOOR_COLOR: RGBColor = RGBColor(214, 39, 40);

/// The legend entry of the raw KVM floor's line on the exit chart.
pub const FLOOR_SERIES: &str = "raw KVM floor (minimal VMM)";

/// The legend entry of the paper's bars.
pub const PAPER_SERIES: &str = "the paper: KVM/host (2017 hardware, not this run)";

/// The legend entry of this run's `env` guest/host ratio.
pub fn ratio_series(env: Env) -> String {
    format!("this run: {}/host", env.name())
}

fn env_color(env: Env) -> RGBColor {
    match env {
        Env::Qemu => QEMU_COLOR,
        _ => KVMKIT_COLOR,
    }
}

/// The chart label of a row: the report table's row label, with the table's subject where
/// the label is only a size.
pub fn row_label(w: &WorkloadResult) -> String {
    match w.table {
        Table::Cpu => format!("primes {}", w.label),
        Table::Memory => format!("memory {}", w.label),
        _ => w.label.clone(),
    }
}

/// The whisker of `env`'s ratio: its 95% interval.
fn ratio_range(w: &WorkloadResult, env: Env) -> Option<(f64, f64)> {
    let v = w.cell(env).verdict.as_ref().filter(|v| v.against == "host")?;
    v.ratio_ci95.map(|[lo, hi]| (lo, hi))
}

/// Writes the charts into `dir`; returns their file names.
pub fn write_all(results: &BenchResults, dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    let ordered = || results.order.iter().filter_map(|id| results.workloads.get(id));
    let guests = [Env::Kvmkit, Env::Qemu];
    let mut series: Vec<Series> = guests
        .iter()
        .map(|&e| Series {
            name: ratio_series(e),
            color: env_color(e),
        })
        .collect();
    series.push(Series {
        name: PAPER_SERIES.into(),
        color: PAPER_COLOR,
    });
    let paper_index = series.len() - 1;
    let mut groups: Vec<Group> = Vec::new();
    for w in ordered().filter(|w| w.table != Table::Exits) {
        let mut bars: Vec<(usize, Bar)> = guests
            .iter()
            .enumerate()
            .filter_map(|(i, &e)| {
                let value = *w.ratios.get(e.name())?;
                Some((
                    i,
                    Bar {
                        value,
                        range: ratio_range(w, e),
                    },
                ))
            })
            .collect();
        if let Some(&r) = w.paper.as_ref().and_then(|p| p.get("kvm_over_host")) {
            bars.push((paper_index, Bar { value: r, range: None }));
        }
        groups.push((row_label(w), bars));
    }
    let this_run = groups.iter().any(|(_, b)| b.iter().any(|&(s, _)| s != paper_index));
    let title = if this_run {
        "guest/host time ratio (median, whiskers: 95% interval; log scale, 1.0 = native speed)"
    } else {
        "the paper's KVM/host ratios only: this run has no host column to divide by"
    };
    ratio_chart(&dir.join("ratios.svg"), title, &series, &groups)?;
    names.push("ratios.svg".to_owned());
    let exits: Vec<Group> = ordered()
        .filter(|w| w.table == Table::Exits)
        .map(|w| {
            let bars = guests
                .iter()
                .enumerate()
                .filter_map(|(i, &e)| {
                    let s = w.cell(e).stats.as_ref()?;
                    // ns per exit in the results; microseconds on the chart.
                    Some((
                        i,
                        Bar {
                            value: s.median / 1e3,
                            range: s.ci95.map(|[lo, hi]| (lo / 1e3, hi / 1e3)),
                        },
                    ))
                })
                .collect();
            (w.label.clone(), bars)
        })
        .collect();
    // The raw KVM floor of each exit row, in microseconds, where it was measured.
    let floors: Vec<Option<f64>> = ordered()
        .filter(|w| w.table == Table::Exits)
        .map(|w| Some(w.floor.as_ref()?.stats?.median / 1e3))
        .collect();
    if exits.iter().any(|(_, b)| !b.is_empty()) {
        let series: Vec<Series> = guests
            .iter()
            .map(|&e| Series {
                name: format!("this run: {}", e.name()),
                color: env_color(e),
            })
            .collect();
        exit_chart(
            &dir.join("exits.svg"),
            "VM exit round trip, PIO and MMIO (median, whiskers: 95% interval)",
            &series,
            &exits,
            &floors,
        )?;
        names.push("exits.svg".to_owned());
    }
    Ok(names)
}

/// The ratio chart: a log axis symmetric around 1.0, bars from 1.0 to the value.
pub fn ratio_chart(path: &Path, title: &str, series: &[Series], groups: &[Group]) -> anyhow::Result<()> {
    // The largest distance from 1.0, either way, sets both ends of the axis.
    let reach = groups
        .iter()
        .flat_map(|(_, b)| {
            b.iter()
                .flat_map(|(_, bar)| [Some(bar.value), bar.range.map(|r| r.0), bar.range.map(|r| r.1)])
        })
        .flatten()
        .filter(|v| *v > 0.0 && v.is_finite())
        .map(|v| v.max(1.0 / v))
        .fold(1.0f64, f64::max);
    // Headroom both ways (the axis stays centred on 1.0) keeps the legend off the bars.
    let top = (reach * 3.5).max(2.0);
    grouped_bars(
        path,
        title,
        "guest / host (log scale)",
        series,
        groups,
        &[],
        (1.0 / top, top),
        true,
    )
}

/// The exit chart: microseconds per exit on a linear axis from 0; `floors` (one per group,
/// where measured) are drawn as a dashed line across their group.
fn exit_chart(
    path: &Path,
    title: &str,
    series: &[Series],
    groups: &[Group],
    floors: &[Option<f64>],
) -> anyhow::Result<()> {
    let max = groups
        .iter()
        .flat_map(|(_, b)| b.iter().map(|(_, bar)| bar.range.map_or(bar.value, |r| r.1)))
        .chain(floors.iter().flatten().copied())
        .fold(0.0f64, f64::max);
    let top = if max > 0.0 { max * 1.45 } else { 1.0 };
    grouped_bars(path, title, "µs per exit", series, groups, floors, (0.0, top), false)
}

/// Characters of a row label per line (a group is 200 px wide, a 12 px character ~6.5 px).
const LABEL_CHARS: usize = 28;

/// `text` in lines of at most `width` characters, broken at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split(' ') {
        match lines.last_mut() {
            Some(line) if line.chars().count() + 1 + word.chars().count() <= width => {
                line.push(' ');
                line.push_str(word);
            }
            _ => lines.push(word.to_owned()),
        }
    }
    lines
}

/// Grouped bars with whiskers. `log`: a log axis over `y`, bars from 1.0 and a dashed line
/// there; else a linear axis, bars from 0. `floors`: per group, a dashed line across it at
/// that value ([`FLOOR_SERIES`]); empty for none.
#[allow(clippy::too_many_arguments)]
fn grouped_bars(
    path: &Path,
    title: &str,
    y_desc: &str,
    series: &[Series],
    groups: &[Group],
    floors: &[Option<f64>],
    y: (f64, f64),
    log: bool,
) -> anyhow::Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow!("chart {}: {e}", path.display());
    let n = groups.len().max(1);
    let width = (200 * n as u32).clamp(640, 2400);
    let root = SVGBackend::new(path, (width, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let used: Vec<usize> = (0..series.len())
        .filter(|&s| groups.iter().any(|(_, b)| b.iter().any(|&(i, _)| i == s)))
        .collect();
    let slots = used.len().max(1) as f64;
    let slot_of = |s: usize| used.iter().position(|&u| u == s).unwrap_or(0) as f64;
    let base = if log { 1.0 } else { 0.0 };
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(64)
        .y_label_area_size(64);
    // One drawing routine for both axis kinds.
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(0)
                .y_desc(y_desc)
                .draw()
                .map_err(|e| err(&e))?;
            for &s in &used {
                let color = series[s].color;
                let slot = slot_of(s);
                let bars: Vec<(f64, f64, Bar)> = groups
                    .iter()
                    .enumerate()
                    .filter_map(|(gi, (_, bars))| {
                        let bar = bars.iter().find(|(i, _)| *i == s)?.1;
                        let x0 = gi as f64 + 0.1 + 0.8 * slot / slots;
                        Some((x0, x0 + 0.8 / slots * 0.9, bar))
                    })
                    .collect();
                chart
                    .draw_series(
                        bars.iter()
                            .map(|&(x0, x1, b)| Rectangle::new([(x0, base), (x1, b.value)], color.filled())),
                    )
                    .map_err(|e| err(&e))?
                    .label(series[s].name.as_str())
                    .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
                chart
                    .draw_series(bars.iter().filter_map(|&(x0, x1, b)| {
                        let (lo, hi) = b.range?;
                        let x = (x0 + x1) / 2.0;
                        Some(PathElement::new(vec![(x, lo), (x, hi)], BLACK.stroke_width(1)))
                    }))
                    .map_err(|e| err(&e))?;
            }
            let mut labelled = false;
            for (gi, v) in floors.iter().enumerate().take(n) {
                let Some(v) = *v else { continue };
                let x = gi as f64;
                let anno = chart
                    .draw_series(DashedLineSeries::new(
                        [(x + 0.05, v), (x + 0.95, v)],
                        8,
                        4,
                        FLOOR_COLOR.stroke_width(2),
                    ))
                    .map_err(|e| err(&e))?;
                if !labelled {
                    labelled = true;
                    anno.label(FLOOR_SERIES)
                        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 10, y)], FLOOR_COLOR.stroke_width(2)));
                }
            }
            if log {
                chart
                    .draw_series(DashedLineSeries::new(
                        [(0.0, 1.0), (n as f64, 1.0)],
                        6,
                        4,
                        BLACK.stroke_width(1),
                    ))
                    .map_err(|e| err(&e))?;
            }
            for (gi, (label, bars)) in groups.iter().enumerate() {
                let text = if bars.is_empty() {
                    format!("{label} (no data)")
                } else {
                    label.clone()
                };
                let (px, py) = chart.backend_coord(&(gi as f64 + 0.5, y.0));
                let style = ("sans-serif", 12)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Top));
                for (li, line) in wrap(&text, LABEL_CHARS).into_iter().enumerate() {
                    root.draw(&Text::new(line, (px, py + 8 + 14 * li as i32), style.clone()))
                        .map_err(|e| err(&e))?;
                }
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(|e| err(&e))?;
        }};
    }
    if log {
        draw!(builder
            .build_cartesian_2d(0.0..n as f64, (y.0..y.1).log_scale())
            .map_err(|e| err(&e))?);
    } else {
        draw!(builder
            .build_cartesian_2d(0.0..n as f64, y.0..y.1)
            .map_err(|e| err(&e))?);
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text of every `<text>` element of an SVG file.
    fn svg_texts(path: &Path) -> Vec<String> {
        let svg = std::fs::read_to_string(path).expect("svg");
        svg.split("<text")
            .skip(1)
            .filter_map(|t| {
                let body = &t[t.find('>')? + 1..];
                Some(body[..body.find("</text>")?].trim().to_owned())
            })
            .collect()
    }

    fn fill_colors(path: &Path) -> String {
        std::fs::read_to_string(path).expect("svg")
    }

    #[test]
    fn ratio_chart_legend_names_this_run_and_the_paper_apart() {
        let dir = std::env::temp_dir().join(format!("kvmkit-chart-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let series = vec![
            Series {
                name: ratio_series(Env::Kvmkit),
                color: KVMKIT_COLOR,
            },
            Series {
                name: ratio_series(Env::Qemu),
                color: QEMU_COLOR,
            },
            Series {
                name: PAPER_SERIES.into(),
                color: PAPER_COLOR,
            },
        ];
        let bar = |value| Bar {
            value,
            range: Some((value * 0.9, value * 1.1)),
        };
        let groups: Vec<Group> = vec![
            ("primes 1e5".into(), vec![(0, bar(1.05)), (1, bar(1.1)), (2, bar(1.07))]),
            ("read 1M".into(), vec![(0, bar(7.0)), (2, bar(1.5))]),
            ("MD5, 16 MiB".into(), vec![(0, bar(0.6))]),
        ];
        let path = dir.join("ratios.svg");
        ratio_chart(&path, "ratios", &series, &groups).expect("chart");
        let texts = svg_texts(&path);
        for want in [
            ratio_series(Env::Kvmkit),
            ratio_series(Env::Qemu),
            PAPER_SERIES.to_owned(),
        ] {
            assert!(texts.contains(&want), "legend lacks {want:?}: {texts:?}");
        }
        for label in ["primes 1e5", "read 1M", "MD5, 16 MiB"] {
            assert!(texts.iter().any(|t| t == label), "no row label {label:?}");
        }
        assert_eq!(
            wrap("compression (LZ4, in place of 7-Zip), 16 MiB", LABEL_CHARS),
            ["compression (LZ4, in place", "of 7-Zip), 16 MiB"]
        );
        // A chart with the paper's bars alone (no host column): the paper keeps its own
        // name and grey, never this run's colours.
        let paper_only: Vec<Group> = vec![("primes 1e5".into(), vec![(2, bar(1.07))])];
        let path = dir.join("paper-only.svg");
        ratio_chart(&path, "paper only", &series, &paper_only).expect("chart");
        let texts = svg_texts(&path);
        assert!(texts.contains(&PAPER_SERIES.to_owned()), "{texts:?}");
        assert!(!texts.iter().any(|t| t.starts_with("this run")), "{texts:?}");
        let svg = fill_colors(&path).to_uppercase();
        assert!(svg.contains("#AAAAAA"), "the paper's grey is missing");
        assert!(
            !svg.contains("#1F77B4") && !svg.contains("#FF7F0E"),
            "this run's colours drawn"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bench_ratio_chart_has_its_legend_and_interval_whiskers() {
        let dir = std::env::temp_dir().join(format!("kvmkit-chart-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let results = crate::results::fixtures::synthetic_results(6);
        let row = &results.workloads["primes:100000"];
        let (lo, hi) = ratio_range(row, Env::Kvmkit).expect("kvmkit's ratio has an interval");
        assert!(lo <= 1.2 && 1.2 <= hi && hi - lo < 0.05, "{lo} {hi}");
        assert_eq!(
            row.kvmkit.verdict.as_ref().expect("verdict").text,
            "kvmkit slower than host (significant)"
        );
        assert_eq!(
            row.qemu.verdict.as_ref().expect("verdict").text,
            "no difference detectable"
        );
        let names = write_all(&results, &dir).expect("charts");
        assert_eq!(names, ["ratios.svg"]);
        // With the exit rows, exits.svg carries their raw KVM floor.
        let exits = crate::results::fixtures::with_exit_floor();
        assert_eq!(write_all(&exits, &dir).expect("charts"), ["ratios.svg", "exits.svg"]);
        assert!(svg_texts(&dir.join("exits.svg")).iter().any(|t| t == FLOOR_SERIES));
        let texts = svg_texts(&dir.join("ratios.svg"));
        for want in [
            ratio_series(Env::Kvmkit),
            ratio_series(Env::Qemu),
            PAPER_SERIES.to_owned(),
            "primes 1e5".to_owned(),
        ] {
            assert!(texts.contains(&want), "ratios.svg lacks {want:?}: {texts:?}");
        }
        assert!(texts.iter().any(|t| t.contains("whiskers: 95% interval")), "{texts:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn exit_chart_names_pio_and_mmio_in_microseconds() {
        let dir = std::env::temp_dir().join(format!("kvmkit-exit-chart-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let series: Vec<Series> = [Env::Kvmkit, Env::Qemu]
            .iter()
            .map(|&e| Series {
                name: format!("this run: {}", e.name()),
                color: env_color(e),
            })
            .collect();
        let bar = Bar {
            value: 40.0,
            range: Some((38.0, 45.0)),
        };
        let groups: Vec<Group> = vec![
            ("PIO (out to a null port)".into(), vec![(0, bar), (1, bar)]),
            ("MMIO (write to a null page)".into(), vec![(0, bar), (1, bar)]),
        ];
        let path = dir.join("exits.svg");
        exit_chart(&path, "exits", &series, &groups, &[Some(30.0), Some(35.0)]).expect("chart");
        let texts = svg_texts(&path);
        for want in [
            "this run: kvmkit",
            "this run: qemu",
            "PIO (out to a null port)",
            "MMIO (write to a null page)",
            "µs per exit",
            FLOOR_SERIES,
        ] {
            assert!(texts.iter().any(|t| t == want), "exit chart lacks {want:?}: {texts:?}");
        }
        // The floor's dashes: short horizontal strokes in its own colour, no bar's fill.
        let svg = fill_colors(&path).to_uppercase();
        let floor = format!(
            "STROKE=\"#{:02X}{:02X}{:02X}\"",
            FLOOR_COLOR.0, FLOOR_COLOR.1, FLOOR_COLOR.2
        );
        let dashes = svg
            .split('<')
            .filter(|e| (e.starts_with("POLYLINE") || e.starts_with("LINE")) && e.contains(&floor))
            .count();
        // One legend sample plus dashes across two groups (each ~0.9 of a 320 px group).
        assert!(dashes > 10, "{dashes} floor strokes");
        assert!(
            !svg.contains(&floor.replace("STROKE", "FILL")),
            "a bar drawn in the floor's colour"
        );
        // Without floors, no line and no legend entry.
        exit_chart(&path, "exits", &series, &groups, &[None, None]).expect("chart");
        assert!(!svg_texts(&path).iter().any(|t| t == FLOOR_SERIES));
        assert!(!fill_colors(&path).to_uppercase().contains(&floor));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
