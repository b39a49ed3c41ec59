//! SVG charts (plotters): guest/host ratio per workload and environment, exit latency.

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::environment::Env;
use crate::results::BenchResults;
use crate::table::Table;

/// One group of bars: a label and (series name, value) pairs.
type Group = (String, Vec<(String, f64)>);

const COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(150, 150, 150),
    GREEN,
];

/// Writes the charts into `dir`; returns their file names.
pub fn write_all(results: &BenchResults, dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    let ordered = || {
        results
            .order
            .iter()
            .filter_map(|id| results.workloads.get(id).map(|w| (id, w)))
    };
    // Guest/host ratios, with the paper's KVM/host ratio beside them.
    let groups: Vec<Group> = ordered()
        .filter(|(_, w)| w.table != Table::Exits)
        .map(|(id, w)| {
            let mut bars: Vec<(String, f64)> = [Env::Kvmkit, Env::Qemu]
                .iter()
                .filter_map(|e| w.ratios.get(e.name()).map(|&r| (format!("{}/host", e.name()), r)))
                .collect();
            if let Some(r) = w.paper.as_ref().and_then(|p| p.get("kvm_over_host")) {
                bars.push(("paper KVM/host (2017)".into(), *r));
            }
            (id.clone(), bars)
        })
        .collect();
    bar_chart(
        &dir.join("ratios.svg"),
        "guest/host time ratio (median; 1.0 = native speed)",
        "guest / host",
        &groups,
        Some(1.0),
    )?;
    names.push("ratios.svg".to_owned());
    let exits: Vec<Group> = ordered()
        .filter(|(_, w)| w.table == Table::Exits)
        .map(|(id, w)| {
            let bars = [Env::Kvmkit, Env::Qemu]
                .iter()
                .filter_map(|&e| w.cell(e).stats.map(|s| (e.name().to_owned(), s.median)))
                .collect();
            (id.clone(), bars)
        })
        .collect();
    if exits.iter().any(|(_, b)| !b.is_empty()) {
        bar_chart(
            &dir.join("exits.svg"),
            "VM exit round trip (median)",
            "ns per exit",
            &exits,
            None,
        )?;
        names.push("exits.svg".to_owned());
    }
    Ok(names)
}

/// A grouped bar chart; `reference` draws a dashed horizontal line (e.g. 1.0).
fn bar_chart(path: &Path, title: &str, y_desc: &str, groups: &[Group], reference: Option<f64>) -> anyhow::Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow!("chart {}: {e}", path.display());
    let mut series: Vec<String> = Vec::new();
    for (_, bars) in groups {
        for (name, _) in bars {
            if !series.contains(name) {
                series.push(name.clone());
            }
        }
    }
    let max = groups
        .iter()
        .flat_map(|(_, b)| b.iter().map(|&(_, v)| v))
        .chain(reference)
        .fold(0.0f64, f64::max);
    // Headroom above the bars for the legend.
    let y_max = if max > 0.0 { max * 1.45 } else { 1.0 };
    let n = groups.len().max(1);
    let width = (160 * n as u32).clamp(640, 1600);
    let root = SVGBackend::new(path, (width, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..n as f64, 0.0..y_max)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(y_desc)
        .draw()
        .map_err(|e| err(&e))?;
    let slots = series.len().max(1) as f64;
    for (si, name) in series.iter().enumerate() {
        let color = COLORS[si % COLORS.len()];
        let rects: Vec<Rectangle<(f64, f64)>> = groups
            .iter()
            .enumerate()
            .filter_map(|(gi, (_, bars))| {
                let v = bars.iter().find(|(s, _)| s == name)?.1;
                let x0 = gi as f64 + 0.1 + 0.8 * si as f64 / slots;
                let x1 = x0 + 0.8 / slots * 0.9;
                Some(Rectangle::new([(x0, 0.0), (x1, v)], color.filled()))
            })
            .collect();
        chart
            .draw_series(rects)
            .map_err(|e| err(&e))?
            .label(name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    if let Some(r) = reference {
        chart
            .draw_series(DashedLineSeries::new(
                [(0.0, r), (n as f64, r)],
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
        let (px, py) = chart.backend_coord(&(gi as f64 + 0.5, 0.0));
        let style = ("sans-serif", 14)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Top));
        root.draw(&Text::new(text, (px, py + 8), style)).map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
