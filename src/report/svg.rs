//! `chart.svg`: a hand-written SVG chart of the report (no plotting library).

use std::fmt::{self, Write as _};

use super::{MethodResult, Report, StepRow, one_line};

const WIDTH: f64 = 900.0;
const FONT: &str = "font-family=\"DejaVu Sans, Arial, Helvetica, sans-serif\"";
const GREEN: &str = "#2e9d4a";
const GREY: &str = "#9a9a9a";
const BLUE: &str = "#3b6fb6";
const PALETTE: [&str; 8] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1", "#edc948", "#9c755f",
];

/// The SVG alone.
pub fn render_svg(r: &Report) -> String {
    let mut body = String::new();
    let height = svg_body(r, &mut body).expect("writing to a String cannot fail");
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height:.0}\" \
         viewBox=\"0 0 {WIDTH} {height:.0}\" {FONT} font-size=\"12\">\n<title>{}</title>\n\
         <path d=\"M0 0H{WIDTH}V{height:.0}H0Z\" fill=\"#ffffff\"/>\n{body}</svg>\n",
        xml(&r.title)
    );
    out
}

/// Draws the panels into `out`; returns the total height.
fn svg_body(r: &Report, out: &mut String) -> Result<f64, fmt::Error> {
    let mut y = 0.0;
    let title = if r.title.trim().is_empty() {
        "Run report"
    } else {
        r.title.trim()
    };
    writeln!(
        out,
        "<text x=\"20\" y=\"26\" font-size=\"16\" font-weight=\"bold\" fill=\"#222\">{}</text>",
        xml(&truncate(&one_line(title), 95))
    )?;
    y += 40.0;
    let points: Vec<&StepRow> = {
        let mut p: Vec<&StepRow> = r
            .steps
            .iter()
            .filter(|s| s.validation_ndcg_10.is_some_and(f64::is_finite))
            .collect();
        p.sort_by_key(|s| s.step);
        p
    };
    if !points.is_empty() {
        y = steps_panel(out, &r.steps, &points, y)?;
    }
    y = methods_panel(out, &r.methods, y)?;
    Ok(y + 10.0)
}

/// Top panel: validation NDCG@10 per step. Returns the y below the panel.
/// `points` are the steps with a validation value, in step order; the other steps get a
/// cross on the x axis.
fn steps_panel(
    out: &mut String,
    all: &[StepRow],
    points: &[&StepRow],
    y0: f64,
) -> Result<f64, fmt::Error> {
    let scale = StepScale::new(all, points, y0);
    writeln!(out, "<g class=\"steps\">")?;
    writeln!(
        out,
        "<text x=\"20\" y=\"{:.1}\" font-size=\"14\" font-weight=\"bold\" fill=\"#222\">Validation NDCG@10 per step</text>",
        y0 + 18.0
    )?;
    steps_legend(out, all, points, y0, scale.right)?;
    steps_axes(out, &scale)?;
    // The line through all points, then the dots (and their values when few).
    steps_line(out, points, &scale)?;
    missing_marks(out, all, &scale)?;
    step_dots(out, points, &scale)?;
    writeln!(out, "</g>")?;
    Ok(scale.bottom + 50.0)
}

/// The plot area of the steps panel and where a step (x) and a value (y) fall in it.
struct StepScale {
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
    /// Value ticks; the first and last bound the y range.
    yticks: Vec<f64>,
    /// Decimals of the value tick labels.
    yd: usize,
    smin: i32,
    smax: i32,
}

impl StepScale {
    /// Fits the values of `points` and the step range of `all` into the panel below `y0`.
    fn new(all: &[StepRow], points: &[&StepRow], y0: f64) -> Self {
        let values: Vec<f64> = points.iter().filter_map(|s| s.validation_ndcg_10).collect();
        let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let (yticks, ystep) = nice_ticks(lo, hi);
        StepScale {
            left: 80.0,
            right: WIDTH - 40.0,
            top: y0 + 40.0,
            bottom: y0 + 230.0,
            yticks,
            yd: decimals(ystep),
            smin: all.iter().map(|s| s.step).min().unwrap_or(0),
            smax: all.iter().map(|s| s.step).max().unwrap_or(0),
        }
    }

    /// The x of a step; a padding keeps the first and last dots off the axes.
    fn x(&self, step: i32) -> f64 {
        let (left, right, smin, smax) = (self.left, self.right, self.smin, self.smax);
        let pad = 20.0;
        if smax == smin {
            (left + right) / 2.0
        } else {
            left + pad + (step - smin) as f64 / (smax - smin) as f64 * (right - left - 2.0 * pad)
        }
    }

    /// The y of a validation value.
    fn y(&self, v: f64) -> f64 {
        let (ymin, ymax) = (self.yticks[0], self.yticks[self.yticks.len() - 1]);
        self.bottom - (v - ymin) / (ymax - ymin) * (self.bottom - self.top)
    }
}

/// The steps legend (only the kinds present), right-aligned on the title line ending at `right`.
fn steps_legend(
    out: &mut String,
    all: &[StepRow],
    points: &[&StepRow],
    y0: f64,
    right: f64,
) -> Result<(), fmt::Error> {
    let mut legend: Vec<(&str, &str)> = Vec::new();
    if points.iter().any(|s| s.accepted == Some(true)) {
        legend.push((GREEN, "accepted"));
    }
    if points.iter().any(|s| s.accepted == Some(false)) {
        legend.push((GREY, "rejected"));
    }
    if points.iter().any(|s| s.accepted.is_none()) {
        legend.push((BLUE, "baseline / not judged"));
    }
    let crosses = all
        .iter()
        .any(|s| !s.validation_ndcg_10.is_some_and(f64::is_finite));
    let mut lx = right;
    if crosses {
        let label = "no validation value";
        lx -= text_width(label, 12.0) + 30.0;
        writeln!(
            out,
            "<path d=\"M{:.1} {:.1}l8 8m0 -8l-8 8\" stroke=\"{GREY}\" stroke-width=\"2\"/><text x=\"{:.1}\" y=\"{:.1}\" fill=\"#333\">{label}</text>",
            lx + 2.0,
            y0 + 10.0,
            lx + 15.0,
            y0 + 18.0,
        )?;
    }
    for (color, label) in legend.iter().rev() {
        lx -= text_width(label, 12.0) + 30.0;
        writeln!(
            out,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"5\" fill=\"{color}\"/><text x=\"{:.1}\" y=\"{:.1}\" fill=\"#333\">{}</text>",
            lx + 6.0,
            y0 + 14.0,
            lx + 15.0,
            y0 + 18.0,
            xml(label)
        )?;
    }
    Ok(())
}

/// Grid lines, tick labels, axes and axis titles of the steps panel.
fn steps_axes(out: &mut String, scale: &StepScale) -> Result<(), fmt::Error> {
    let StepScale {
        left,
        right,
        top,
        bottom,
        yd,
        ..
    } = *scale;
    for t in &scale.yticks {
        let py = scale.y(*t);
        writeln!(
            out,
            "<line x1=\"{left:.1}\" y1=\"{py:.1}\" x2=\"{right:.1}\" y2=\"{py:.1}\" stroke=\"#e4e4e4\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#444\">{t:.yd$}</text>",
            left - 6.0,
            py + 4.0
        )?;
    }
    for t in int_ticks(scale.smin, scale.smax) {
        let px = scale.x(t);
        writeln!(
            out,
            "<line x1=\"{px:.1}\" y1=\"{bottom:.1}\" x2=\"{px:.1}\" y2=\"{:.1}\" stroke=\"#666\"/>\
             <text x=\"{px:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#444\">{t}</text>",
            bottom + 4.0,
            bottom + 17.0
        )?;
    }
    writeln!(
        out,
        "<path d=\"M{left:.1} {top:.1}V{bottom:.1}H{right:.1}\" fill=\"none\" stroke=\"#666\"/>"
    )?;
    writeln!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#444\">step</text>",
        (left + right) / 2.0,
        bottom + 34.0
    )?;
    let (ax, ay) = (22.0, (top + bottom) / 2.0);
    writeln!(
        out,
        "<text x=\"{ax:.1}\" y=\"{ay:.1}\" text-anchor=\"middle\" fill=\"#444\" transform=\"rotate(-90 {ax:.1} {ay:.1})\">NDCG@10</text>"
    )
}

/// The polyline through the steps with a validation value.
fn steps_line(out: &mut String, points: &[&StepRow], scale: &StepScale) -> Result<(), fmt::Error> {
    let path: Vec<String> = points
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let v = s.validation_ndcg_10.unwrap_or(0.0);
            format!(
                "{}{:.1} {:.1}",
                if i == 0 { 'M' } else { 'L' },
                scale.x(s.step),
                scale.y(v)
            )
        })
        .collect();
    writeln!(
        out,
        "<path d=\"{}\" fill=\"none\" stroke=\"#7a8fa6\" stroke-width=\"1.5\"/>",
        path.join(" ")
    )
}

/// A cross on the x axis for each step without a (finite) validation value.
fn missing_marks(out: &mut String, all: &[StepRow], scale: &StepScale) -> Result<(), fmt::Error> {
    for s in all
        .iter()
        .filter(|s| !s.validation_ndcg_10.is_some_and(f64::is_finite))
    {
        let (px, py) = (scale.x(s.step), scale.bottom - 10.0);
        let tip = format!(
            "step {}: no validation value{}",
            s.step,
            reason_suffix(&s.reason)
        );
        writeln!(
            out,
            "<path d=\"M{:.1} {:.1}l8 8m0 -8l-8 8\" stroke=\"{GREY}\" stroke-width=\"2\"><title>{}</title></path>",
            px - 4.0,
            py - 4.0,
            xml(&tip)
        )?;
    }
    Ok(())
}

/// A dot per step with a validation value, coloured by verdict; labelled when there are few.
fn step_dots(out: &mut String, points: &[&StepRow], scale: &StepScale) -> Result<(), fmt::Error> {
    let label_values = points.len() <= 16;
    for s in points {
        let v = s.validation_ndcg_10.unwrap_or(0.0);
        let color = match s.accepted {
            Some(true) => GREEN,
            Some(false) => GREY,
            None => BLUE,
        };
        let (px, py) = (scale.x(s.step), scale.y(v));
        let tip = format!(
            "step {} ({}): validation NDCG@10 {v:.3}{}",
            s.step,
            match s.accepted {
                Some(true) => "accepted",
                Some(false) => "rejected",
                None => "baseline / not judged",
            },
            reason_suffix(&s.reason)
        );
        writeln!(
            out,
            "<circle cx=\"{px:.1}\" cy=\"{py:.1}\" r=\"5\" fill=\"{color}\" stroke=\"#ffffff\" stroke-width=\"1.5\"><title>{}</title></circle>",
            xml(&tip)
        )?;
        if label_values {
            writeln!(
                out,
                "<text x=\"{px:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\" fill=\"#333\">{v:.3}</text>",
                py - 9.0
            )?;
        }
    }
    Ok(())
}

/// `"; <reason>"` for a tooltip, or nothing when the step gives no reason.
fn reason_suffix(reason: &str) -> String {
    if reason.trim().is_empty() {
        String::new()
    } else {
        format!("; {}", one_line(reason))
    }
}

/// Bottom panel: NDCG@10 by method, horizontal bars with ± std whiskers. Returns the y below.
fn methods_panel(out: &mut String, methods: &[MethodResult], y0: f64) -> Result<f64, fmt::Error> {
    let seeds = methods.iter().map(|m| m.per_seed.len()).max().unwrap_or(0);
    let title = if seeds > 1 {
        format!("NDCG@10 by method (mean ± std over {seeds} seeds)")
    } else {
        "NDCG@10 by method".to_string()
    };
    writeln!(out, "<g class=\"methods\">")?;
    writeln!(
        out,
        "<text x=\"20\" y=\"{:.1}\" font-size=\"14\" font-weight=\"bold\" fill=\"#222\">{}</text>",
        y0 + 18.0,
        xml(&title)
    )?;
    if methods.is_empty() {
        writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"14\" fill=\"#888\">no data</text>\n</g>",
            WIDTH / 2.0,
            y0 + 70.0
        )?;
        return Ok(y0 + 100.0);
    }

    const MAX_LABEL: usize = 36;
    let names: Vec<String> = methods
        .iter()
        .map(|m| truncate_middle(&one_line(&m.method), MAX_LABEL))
        .collect();
    let label_w = names
        .iter()
        .map(|n| text_width(n, 12.0))
        .fold(60.0, f64::max);
    let left = 20.0 + label_w + 10.0;
    let right = WIDTH - 140.0; // room for the value labels
    let row_h = 30.0;
    let top = y0 + 36.0;
    let bottom = top + row_h * methods.len() as f64;

    // NDCG is at most 1: whiskers past 1 are cut rather than stretching the scale.
    let hi = methods
        .iter()
        .map(|m| {
            let mu = finite_or_zero(m.mean.ndcg_10);
            (mu + finite_or_zero(m.std.ndcg_10).abs()).min(1.0).max(mu)
        })
        .fold(0.0, f64::max);
    let (xticks, xstep) = nice_ticks(0.0, if hi > 0.0 { hi } else { 1.0 });
    let bars = BarScale {
        left,
        right,
        top,
        row_h,
        bar_h: 18.0,
        xmax: xticks[xticks.len() - 1],
        seeds,
    };
    methods_axes(out, &bars, &xticks, decimals(xstep), bottom)?;
    for (i, (m, name)) in methods.iter().zip(&names).enumerate() {
        method_row(out, &bars, i, m, name)?;
    }
    writeln!(out, "</g>")?;
    Ok(bottom + 50.0)
}

/// The plot area of the methods panel and where a value falls on its x axis.
struct BarScale {
    left: f64,
    right: f64,
    top: f64,
    row_h: f64,
    bar_h: f64,
    /// The last x tick: values beyond it are clamped.
    xmax: f64,
    /// The largest number of seeds of any method.
    seeds: usize,
}

impl BarScale {
    /// The x of an NDCG value.
    fn x(&self, v: f64) -> f64 {
        self.left + (v.clamp(0.0, self.xmax) / self.xmax) * (self.right - self.left)
    }
}

/// Grid lines, tick labels (with `xd` decimals), axes and axis title of the methods panel.
fn methods_axes(
    out: &mut String,
    bars: &BarScale,
    xticks: &[f64],
    xd: usize,
    bottom: f64,
) -> Result<(), fmt::Error> {
    let (left, right, top) = (bars.left, bars.right, bars.top);
    for t in xticks {
        let px = bars.x(*t);
        writeln!(
            out,
            "<line x1=\"{px:.1}\" y1=\"{top:.1}\" x2=\"{px:.1}\" y2=\"{:.1}\" stroke=\"#e4e4e4\"/>\
             <text x=\"{px:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#444\">{t:.xd$}</text>",
            bottom + 4.0,
            bottom + 18.0
        )?;
    }
    writeln!(
        out,
        "<path d=\"M{left:.1} {top:.1}V{bottom:.1}H{right:.1}\" fill=\"none\" stroke=\"#666\"/>"
    )?;
    writeln!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#444\">NDCG@10</text>",
        (left + right) / 2.0,
        bottom + 36.0
    )
}

/// Row `i` of the methods panel: label, bar, whisker and value of method `m`.
fn method_row(
    out: &mut String,
    bars: &BarScale,
    i: usize,
    m: &MethodResult,
    name: &str,
) -> Result<(), fmt::Error> {
    let (left, bar_h) = (bars.left, bars.bar_h);
    let cy = bars.top + bars.row_h * i as f64 + bars.row_h / 2.0;
    let (mu, sd) = (
        finite_or_zero(m.mean.ndcg_10),
        finite_or_zero(m.std.ndcg_10).abs(),
    );
    let color = PALETTE[i % PALETTE.len()];
    writeln!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#222\">{}</text>",
        left - 8.0,
        cy + 4.0,
        xml(name)
    )?;
    let tip = if m.description.trim().is_empty() {
        m.method.clone()
    } else {
        format!("{}: {}", m.method, one_line(&m.description))
    };
    writeln!(
        out,
        "<rect x=\"{left:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bar_h:.1}\" fill=\"{color}\"><title>{}</title></rect>",
        cy - bar_h / 2.0,
        bars.x(mu) - left,
        xml(&tip)
    )?;
    let mut end = bars.x(mu);
    if sd > 0.0 {
        let (a, b) = (bars.x(mu - sd), bars.x(mu + sd));
        let (t, u) = (cy - 6.0, cy + 6.0);
        writeln!(
            out,
            "<path d=\"M{a:.1} {cy:.1}H{b:.1}M{a:.1} {t:.1}V{u:.1}M{b:.1} {t:.1}V{u:.1}\" fill=\"none\" stroke=\"#222\" stroke-width=\"1.2\"/>"
        )?;
        end = end.max(b);
    }
    let value = if bars.seeds > 1 || sd > 0.0 {
        format!("{:.3} ± {:.3}", m.mean.ndcg_10, m.std.ndcg_10)
    } else {
        format!("{:.3}", m.mean.ndcg_10)
    };
    writeln!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#222\">{}</text>",
        end + 6.0,
        cy + 4.0,
        xml(&value)
    )
}

/// `v`, or 0 for NaN and infinities, so that coordinates stay finite.
fn finite_or_zero(v: f64) -> f64 {
    if v.is_finite() { v } else { 0.0 }
}

/// 3–5 evenly spaced "nice" ticks (steps 1, 2, 2.5, 5 × 10^k) covering `[lo, hi]`; returns
/// the ticks and the step. Never empty, never a zero span.
fn nice_ticks(lo: f64, hi: f64) -> (Vec<f64>, f64) {
    let (mut lo, mut hi) = if lo.is_finite() && hi.is_finite() {
        (lo, hi)
    } else {
        (0.0, 1.0)
    };
    if hi < lo {
        std::mem::swap(&mut lo, &mut hi);
    }
    if hi - lo < 1e-12 {
        let d = if lo.abs() > 1e-9 { lo.abs() * 0.1 } else { 0.1 };
        // Do not invent negative ticks for non-negative data.
        lo = if lo >= 0.0 { (lo - d).max(0.0) } else { lo - d };
        hi += d;
    }
    let base = 10f64.powf(((hi - lo) / 4.0).log10().floor() - 1.0);
    let eps = 1e-9;
    let mut chosen = None;
    'outer: for e in 0..4 {
        for m in [1.0, 2.0, 2.5, 5.0] {
            let step = base * 10f64.powi(e) * m;
            let a = (lo / step + eps).floor() as i64;
            let b = (hi / step - eps).ceil() as i64;
            if b - a < 5 {
                chosen = Some((step, a, b));
                break 'outer;
            }
        }
    }
    let (step, a, mut b) = chosen.unwrap_or((hi - lo, 0, 1));
    while b - a < 2 {
        b += 1;
    }
    ((a..=b).map(|i| i as f64 * step).collect(), step)
}

/// Integer ticks (at most ~12) covering `[lo, hi]`.
fn int_ticks(lo: i32, hi: i32) -> Vec<i32> {
    let span = (hi - lo).max(0) as i64;
    let step = [
        1i64, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000,
    ]
    .into_iter()
    .find(|s| span / s <= 12)
    .unwrap_or_else(|| (span / 10).max(1));
    let first = (lo as i64).div_euclid(step) * step;
    let first = if first < lo as i64 {
        first + step
    } else {
        first
    };
    (0..)
        .map(|i| first + i * step)
        .take_while(|&t| t <= hi as i64)
        .map(|t| t as i32)
        .collect()
}

/// Decimals needed to show multiples of `step` exactly.
fn decimals(step: f64) -> usize {
    (0..6)
        .find(|&d| {
            let x = step * 10f64.powi(d as i32);
            (x - x.round()).abs() < 1e-6
        })
        .unwrap_or(6)
}

/// Rough width of `s` in a sans-serif font of `size` px (a generous average glyph width).
fn text_width(s: &str, size: f64) -> f64 {
    s.chars()
        .map(|c| match c {
            'i' | 'j' | 'l' | '.' | ',' | ':' | ';' | '\'' | '|' | '!' => 0.3,
            'f' | 't' | 'r' | ' ' | '(' | ')' | '-' => 0.4,
            'm' | 'w' | 'M' | 'W' | '@' => 0.9,
            c if c.is_ascii_uppercase() => 0.7,
            _ => 0.6,
        })
        .sum::<f64>()
        * size
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() > max {
        s.chars().take(max - 1).collect::<String>() + "…"
    } else {
        s.to_string()
    }
}

/// At most `max` characters, cut in the middle so that both ends stay readable
/// (`llm_pgen_with_a_v…_number_4`).
fn truncate_middle(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max || max < 3 {
        return s.to_string();
    }
    let head = (max - 1) / 2;
    let tail = max - 1 - head;
    let mut out: String = s.chars().take(head).collect();
    out.push('…');
    out.extend(s.chars().skip(n - tail));
    out
}

/// XML text/attribute escaping.
fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters other than tab/newline are not allowed in XML 1.0.
            c if (c as u32) < 0x20 && c != '\t' && c != '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::super::*;
    use super::*;

    #[test]
    fn svg_bars_and_escaping() {
        let mut r = eval_report();
        r.methods[0].method = "a&b<c>".into();
        let svg = render_svg(&r);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<rect").count(), r.methods.len());
        assert!(svg.contains("a&amp;b&lt;c&gt;"));
        assert!(svg.contains("Evaluation &lt;Yelp&gt; &amp; co"));
        assert!(!svg.contains("a&b"));
        assert!(!svg.contains("no data"));
        // No steps: no top panel.
        assert!(!svg.contains("Validation NDCG@10 per step"));
        assert!(svg.contains("NDCG@10 by method"));
    }

    #[test]
    fn svg_empty_and_degenerate_data() {
        let svg = render_svg(&Report::default());
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("no data"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        assert_eq!(svg.matches("<rect").count(), 0);

        // One step with a value, all-zero metrics, a NaN: no division by zero in coordinates.
        let r = Report {
            steps: vec![StepRow {
                step: 3,
                validation_ndcg_10: Some(0.0),
                ..StepRow::default()
            }],
            methods: vec![MethodResult {
                method: "zero".into(),
                ..MethodResult::default()
            }],
            ..Report::default()
        };
        let svg = render_svg(&r);
        assert!(svg.contains("Validation NDCG@10 per step"));
        assert_eq!(svg.matches("<rect").count(), 1);
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
    }

    #[test]
    fn ticks_are_nice() {
        for (lo, hi) in [
            (0.0, 1.0),
            (0.31, 0.47),
            (0.0, 0.0),
            (0.5, 0.5),
            (0.0, 0.0123),
            (2.0, 900.0),
        ] {
            let (t, step) = nice_ticks(lo, hi);
            assert!((3..=6).contains(&t.len()), "{lo} {hi}: {t:?}");
            assert!(step > 0.0 && t[0] <= lo.min(hi) + 1e-9 && *t.last().unwrap() >= hi - 1e-9);
        }
        assert_eq!(int_ticks(0, 5), vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(int_ticks(3, 3), vec![3]);
        assert_eq!(int_ticks(1, 40), vec![5, 10, 15, 20, 25, 30, 35, 40]);
        assert_eq!(crate::report::markdown::group(1_234_567), "1,234,567");
        assert_eq!(crate::report::markdown::group(12), "12");
        assert_eq!(decimals(0.025), 3);
        assert_eq!(decimals(0.5), 1);
        assert_eq!(nice_ticks(0.0, 0.0).0[0], 0.0);
        assert_eq!(truncate_middle("abcdefghij", 5), "ab…ij");
        assert_eq!(truncate_middle("abc", 5), "abc");
    }
}
