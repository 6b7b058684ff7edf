//! The methods table: several evals of one data set set against a baseline
//! (single shot), each with its accuracy and 95% interval, the exact McNemar
//! p-value of its item flips against the baseline, and what it cost per
//! item; and the score-versus-tokens frontier of the same evals as a plot.
//! `redraft report --baseline` renders both into the report, and
//! `--table`/`--frontier` write them as Markdown and SVG for the docs.
//!
//! **Invariants:** a row's numbers come from the stored units only (the
//! same evals always give the same table); tokens per item count calls the
//! response cache served at what they had cost when made, so a method whose
//! first call was served from single shot's is not made to look cheaper
//! than it is; an eval with no done unit has no accuracy, never 0%; evals
//! pair with the baseline by item id only when both read the same data
//! source, else only items with the same content pair.

use std::fmt::Write as _;

use serde::Serialize;

use super::ItemStatus;
use super::html::escape;
use super::stats::{Metrics, Pairing, compare};
use super::store::{EvalRecord, UnitRecord};

/// One eval as the table reads it: its record, its stored units and their
/// metrics (computed once, by whoever loaded the eval).
pub type Evaluated<'a> = (&'a EvalRecord, &'a [UnitRecord], &'a Metrics);

/// How to read the table, beside it in the report and in Markdown.
pub const READING: &str = "Accuracy with its 95% Wilson interval; Δ, flips (right → wrong / wrong → right) and the exact McNemar p are against the baseline on the same items; \"own first → final\" are the flips between the method's own first answer and its final one (what its loop did); tokens per item count calls served from the response cache at their cost; s/item is the time this eval spent (a served call takes none).";

/// One method's line of the table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MethodRow {
    pub name: String,
    pub workflow: String,
    pub models: String,
    /// Units scored (done), and how many passed.
    pub done: usize,
    pub right: usize,
    pub failed: usize,
    pub accuracy: Option<f64>,
    /// The Wilson score interval at 95%.
    pub interval: Option<(f64, f64)>,
    /// Against the baseline, over the units scored in both (none for the
    /// baseline itself).
    pub against: Option<Against>,
    /// The method's own first answer against its final one: what its loop
    /// did, apart from any difference in the first answer.
    pub own_flips: super::stats::Flips,
    /// Mean tokens per done unit, calls served from the cache at their cost.
    pub tokens_per_item: f64,
    /// `tokens_per_item` over the baseline's.
    pub token_ratio: Option<f64>,
    /// Mean wall time per done unit, in seconds (calls served from the
    /// cache took none of it).
    pub seconds_per_item: f64,
    /// Share of model calls the response cache served.
    pub cached_share: Option<f64>,
}

/// Item flips against the baseline.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Against {
    pub paired: usize,
    /// Right in the baseline, wrong here.
    pub negative: usize,
    /// Wrong in the baseline, right here.
    pub positive: usize,
    /// Exact two-sided McNemar p-value of the flips.
    pub p_value: f64,
    /// This accuracy minus the baseline's, over the paired units.
    pub difference: f64,
}

/// The 95% Wilson score interval of `right` successes in `n` trials.
pub fn wilson(right: usize, n: usize) -> Option<(f64, f64)> {
    if n == 0 {
        return None;
    }
    const Z: f64 = 1.959_963_984_540_054;
    let (k, n) = (right as f64, n as f64);
    let p = k / n;
    let z2 = Z * Z;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = Z / (1.0 + z2 / n) * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    Some(((centre - half).max(0.0), (centre + half).min(1.0)))
}

/// One row per eval; the first eval is the baseline the others are set
/// against.
pub fn rows(evals: &[Evaluated]) -> Vec<MethodRow> {
    let mut out: Vec<MethodRow> = Vec::with_capacity(evals.len());
    for (i, &(record, units, metrics)) in evals.iter().enumerate() {
        let done: Vec<_> = units
            .iter()
            .filter_map(|u| u.result.as_ref())
            .filter(|r| r.status == ItemStatus::Done && r.score.is_some())
            .collect();
        let right = done
            .iter()
            .filter(|r| r.score.as_ref().is_some_and(|s| s.passed))
            .count();
        let n = done.len();
        let mean = |f: &dyn Fn(&&super::ItemResult) -> f64| {
            if n == 0 {
                0.0
            } else {
                done.iter().map(f).sum::<f64>() / n as f64
            }
        };
        let tokens_per_item = mean(&|r| (r.tokens + r.cached_tokens) as f64);
        let calls: u64 = done.iter().map(|r| r.calls).sum();
        let cached: u64 = done.iter().map(|r| r.cached_calls).sum();
        let against = (i > 0).then(|| {
            let c = compare(evals[0].1, units, Pairing::between(evals[0].0, record));
            Against {
                paired: c.paired,
                negative: c.negative,
                positive: c.positive,
                p_value: c.p_value,
                difference: c.accuracy_b.unwrap_or(0.0) - c.accuracy_a.unwrap_or(0.0),
            }
        });
        let token_ratio = out
            .first()
            .map(|b| b.tokens_per_item)
            .filter(|t| *t > 0.0 && i > 0)
            .map(|t| tokens_per_item / t);
        out.push(MethodRow {
            name: record.name.clone(),
            workflow: record.workflow.clone(),
            models: super::store::models_of(&record.meta),
            done: n,
            right,
            failed: metrics.failed,
            accuracy: (n > 0).then(|| right as f64 / n as f64),
            interval: wilson(right, n),
            against,
            tokens_per_item,
            token_ratio,
            seconds_per_item: mean(&|r| r.wall_ms / 1000.0),
            cached_share: (calls > 0).then(|| cached as f64 / calls as f64),
            own_flips: metrics.flips,
        });
    }
    out
}

fn pct(x: f64) -> String {
    format!("{:.1}", x * 100.0)
}

fn p_value(p: f64) -> String {
    if p < 0.001 {
        "< 0.001".into()
    } else {
        format!("{p:.3}")
    }
}

/// The cells of one row, shared by the Markdown and HTML tables.
fn cells(r: &MethodRow) -> [String; 9] {
    let accuracy = match (r.accuracy, r.interval) {
        (Some(a), Some((lo, hi))) => format!("{}% [{}, {}]", pct(a), pct(lo), pct(hi)),
        _ => "–".into(),
    };
    let (difference, p, flips) = match r.against {
        Some(a) if a.paired > 0 => (
            format!("{:+.1}", a.difference * 100.0),
            p_value(a.p_value),
            format!("−{} / +{}", a.negative, a.positive),
        ),
        Some(_) => ("–".into(), "–".into(), "no paired items".into()),
        None => ("baseline".into(), "–".into(), "–".into()),
    };
    let tokens = match r.token_ratio {
        Some(x) => format!("{:.0} ({x:.1}×)", r.tokens_per_item),
        None => format!("{:.0}", r.tokens_per_item),
    };
    let items = if r.failed > 0 {
        format!("{} ({} failed)", r.done, r.failed)
    } else {
        r.done.to_string()
    };
    let own = if r.own_flips.units == 0 {
        "–".to_string()
    } else {
        format!("−{} / +{}", r.own_flips.negative, r.own_flips.positive)
    };
    [
        r.name.clone(),
        accuracy,
        difference,
        p,
        flips,
        own,
        tokens,
        seconds(r),
        items,
    ]
}

/// Seconds per item, with the share of calls the cache served (they take
/// no time, so such a row's time is not the method's).
fn seconds(r: &MethodRow) -> String {
    match r.cached_share {
        Some(c) if c > 0.0 => format!("{:.1} ({}% of calls cached)", r.seconds_per_item, pct(c)),
        _ => format!("{:.1}", r.seconds_per_item),
    }
}

const HEADERS: [&str; 9] = [
    "method",
    "accuracy [95% CI]",
    "Δ pts",
    "McNemar p",
    "flips − / +",
    "own first → final − / +",
    "tokens/item (× baseline)",
    "s/item",
    "items",
];

/// The table as Markdown, with a line naming the model, the baseline and
/// how to read it.
pub fn markdown(rows: &[MethodRow]) -> String {
    let mut s = String::new();
    if let Some(b) = rows.first() {
        let _ = writeln!(s, "Model: {}. Baseline: {}. {READING}\n", b.models, b.name);
    }
    let _ = writeln!(s, "| {} |", HEADERS.join(" | "));
    let _ = writeln!(s, "|{}", "---|".repeat(HEADERS.len()));
    for r in rows {
        let c = cells(r).map(|c| c.replace('|', "\\|"));
        let _ = writeln!(s, "| {} |", c.join(" | "));
    }
    s
}

/// The table as HTML, for the report.
pub fn html(rows: &[MethodRow]) -> String {
    let mut s = String::from("<table class=methods id=methods><tr>");
    for h in HEADERS {
        let _ = write!(s, "<th>{}</th>", escape(h));
    }
    s.push_str("</tr>");
    for r in rows {
        s.push_str("<tr>");
        for c in cells(r) {
            let _ = write!(s, "<td>{}</td>", escape(&c));
        }
        s.push_str("</tr>");
    }
    s.push_str("</table>");
    s
}

const W: f64 = 560.0;
const H: f64 = 340.0;
const LEFT: f64 = 56.0;
const BOTTOM: f64 = 44.0;
const TOP: f64 = 16.0;
const RIGHT: f64 = 16.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
];

/// The score-versus-tokens frontier: one point per method at its mean
/// tokens per item (log scale) and accuracy, with its 95% interval as a
/// bar; the methods no other method beats on both axes are joined by a
/// line. A standalone SVG document.
pub fn frontier_svg(title: &str, rows: &[MethodRow]) -> String {
    let points: Vec<(usize, &MethodRow, f64, f64)> = rows
        .iter()
        .enumerate()
        .filter_map(|(i, r)| Some((i, r, r.tokens_per_item, r.accuracy?)))
        .filter(|(_, _, t, _)| *t > 0.0)
        .collect();
    let (lo, hi) = points
        .iter()
        .fold((f64::MAX, 0.0f64), |(lo, hi), p| (lo.min(p.2), hi.max(p.2)));
    // Whole powers of ten around the data, so the axis reads at a glance.
    let (lx, hx) = if points.is_empty() {
        (1.0, 3.0)
    } else {
        let (a, b) = (lo.log10().floor(), hi.log10().ceil());
        (a, if b > a { b } else { a + 1.0 })
    };
    let x = |t: f64| LEFT + (W - LEFT - RIGHT) * (t.log10() - lx) / (hx - lx);
    let y = |a: f64| TOP + (H - TOP - BOTTOM) * (1.0 - a.clamp(0.0, 1.0));
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" role=\"img\" aria-label=\"{t}\" font-family=\"sans-serif\" font-size=\"11\">\
<rect width=\"100%\" height=\"100%\" fill=\"white\"/><text x=\"{LEFT}\" y=\"11\" font-size=\"12\">{t}</text>",
        t = escape(title)
    );
    let (x0, y0, x1, y1) = (LEFT, H - BOTTOM, W - RIGHT, TOP);
    let _ = write!(
        s,
        "<line x1=\"{x0}\" y1=\"{y0}\" x2=\"{x1}\" y2=\"{y0}\" stroke=\"#333\"/><line x1=\"{x0}\" y1=\"{y0}\" x2=\"{x0}\" y2=\"{y1}\" stroke=\"#333\"/>"
    );
    for k in 0..=10 {
        let a = k as f64 / 10.0;
        let _ = write!(
            s,
            "<line x1=\"{x0}\" y1=\"{yy:.1}\" x2=\"{x1}\" y2=\"{yy:.1}\" stroke=\"#eee\"/><text x=\"{tx}\" y=\"{ty:.1}\" text-anchor=\"end\">{p}%</text>",
            yy = y(a),
            p = k * 10,
            tx = x0 - 4.0,
            ty = y(a) + 4.0
        );
    }
    let mut e = lx;
    while e <= hx + 1e-9 {
        let t = 10f64.powf(e);
        let _ = write!(
            s,
            "<line x1=\"{xx:.1}\" y1=\"{y0}\" x2=\"{xx:.1}\" y2=\"{y1}\" stroke=\"#eee\"/><text x=\"{xx:.1}\" y=\"{ty}\" text-anchor=\"middle\">{t}</text>",
            xx = x(t),
            ty = y0 + 14.0
        );
        e += 1.0;
    }
    let _ = write!(
        s,
        "<text x=\"{cx}\" y=\"{by}\" text-anchor=\"middle\">tokens per item (log scale)</text>\
<text x=\"12\" y=\"{cy}\" transform=\"rotate(-90 12 {cy})\" text-anchor=\"middle\">accuracy (95% interval)</text>",
        cx = (x0 + x1) / 2.0,
        by = H - 8.0,
        cy = (y0 + y1) / 2.0
    );
    // The frontier: sorted by tokens, each point that beats every cheaper one.
    let mut by_cost: Vec<&(usize, &MethodRow, f64, f64)> = points.iter().collect();
    by_cost.sort_by(|a, b| a.2.total_cmp(&b.2).then(b.3.total_cmp(&a.3)));
    let mut best = f64::NEG_INFINITY;
    let frontier: Vec<String> = by_cost
        .iter()
        .filter(|p| {
            let keep = p.3 > best;
            best = best.max(p.3);
            keep
        })
        .map(|p| format!("{:.1},{:.1}", x(p.2), y(p.3)))
        .collect();
    if frontier.len() > 1 {
        let _ = write!(
            s,
            "<polyline fill=\"none\" stroke=\"#999\" stroke-dasharray=\"4 3\" points=\"{}\"/>",
            frontier.join(" ")
        );
    }
    for (i, r, t, a) in &points {
        let c = COLORS[i % COLORS.len()];
        let (px, py) = (x(*t), y(*a));
        if let Some((lo, hi)) = r.interval {
            let _ = write!(
                s,
                "<line x1=\"{px:.1}\" y1=\"{:.1}\" x2=\"{px:.1}\" y2=\"{:.1}\" stroke=\"{c}\" stroke-width=\"2\"/>",
                y(lo),
                y(hi)
            );
        }
        let _ = write!(
            s,
            "<circle cx=\"{px:.1}\" cy=\"{py:.1}\" r=\"4\" fill=\"{c}\"><title>{}: {:.1}% at {t:.0} tokens</title></circle>",
            escape(&r.name),
            a * 100.0
        );
    }
    // The legend, in the plot's top right corner, without the part every
    // name shares (`model/data/`).
    let names: Vec<&str> = points.iter().map(|p| p.1.name.as_str()).collect();
    let shared = shared_prefix(&names);
    for (row, (i, r, _, _)) in points.iter().enumerate() {
        let ly = TOP + 12.0 + 14.0 * row as f64;
        let _ = write!(
            s,
            "<rect x=\"{lx:.1}\" y=\"{ry:.1}\" width=\"8\" height=\"8\" fill=\"{c}\"/><text x=\"{tx:.1}\" y=\"{ly:.1}\">{n}</text>",
            lx = W - RIGHT - 200.0,
            ry = ly - 8.0,
            c = COLORS[i % COLORS.len()],
            tx = W - RIGHT - 188.0,
            n = escape(&r.name[shared..])
        );
    }
    if points.is_empty() {
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\">no scored items</text>",
            W / 2.0 - 40.0,
            H / 2.0
        );
    }
    s.push_str("</svg>\n");
    s
}

/// The length of the longest prefix, ending in `/`, that every name shares
/// (0 for a single name: it is shown whole).
fn shared_prefix(names: &[&str]) -> usize {
    let Some((first, rest)) = names.split_first() else {
        return 0;
    };
    if rest.is_empty() {
        return 0;
    }
    // Counted in whole characters, so the cut never falls inside one.
    let mut len = first.len();
    for n in rest {
        len = len.min(
            first
                .char_indices()
                .zip(n.chars())
                .find(|((_, a), b)| a != b)
                .map_or(first.len().min(n.len()), |((i, _), _)| i),
        );
    }
    first[..len].rfind('/').map_or(0, |i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::stats::tests::unit;

    fn eval(
        name: &str,
        source: &str,
        right: &[bool],
        tokens: u64,
        cached: u64,
    ) -> (EvalRecord, Vec<UnitRecord>) {
        let units: Vec<UnitRecord> = right
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let mut u = unit(&format!("q{i}"), 0, Some(*r), *r, &[tokens]);
                let result = u.result.as_mut().unwrap();
                result.cached_tokens = cached;
                result.calls = 2;
                result.cached_calls = u64::from(cached > 0);
                result.wall_ms = 2000.0;
                u
            })
            .collect();
        let record = EvalRecord {
            id: format!("{name:0>16}"),
            name: name.into(),
            workflow: "w".into(),
            created_at: 0,
            meta: serde_json::json!({"data": {"source": source}, "models": {"m": "llama:<q>"}}),
        };
        (record, units)
    }

    /// The same eval with these first answers (the last stay as they were).
    fn with_firsts(
        (record, units): (EvalRecord, Vec<UnitRecord>),
        firsts: &[bool],
    ) -> (EvalRecord, Vec<UnitRecord>) {
        let units = units
            .into_iter()
            .zip(firsts)
            .map(|(u, first)| {
                let r = u.result.as_ref().unwrap();
                let last = r.score.as_ref().unwrap().passed;
                let tokens = r.tokens;
                let mut v = unit(&u.item.id, 0, Some(*first), last, &[tokens, tokens]);
                v.result = Some(crate::eval::ItemResult {
                    candidates: v.result.unwrap().candidates,
                    ..r.clone()
                });
                v
            })
            .collect();
        (record, units)
    }

    fn rows_of(evals: &[(EvalRecord, Vec<UnitRecord>)]) -> Vec<MethodRow> {
        let metrics: Vec<Metrics> = evals
            .iter()
            .map(|(_, u)| crate::eval::stats::compute(u))
            .collect();
        let inputs: Vec<Evaluated> = evals
            .iter()
            .zip(&metrics)
            .map(|((r, u), m)| (r, u.as_slice(), m))
            .collect();
        rows(&inputs)
    }

    #[test]
    fn wilson_intervals_match_their_formula() {
        let close = |a: (f64, f64), b: (f64, f64)| {
            assert!(
                (a.0 - b.0).abs() < 1e-4 && (a.1 - b.1).abs() < 1e-4,
                "{a:?} vs {b:?}"
            );
        };
        close(wilson(5, 10).unwrap(), (0.2366, 0.7634));
        close(wilson(0, 10).unwrap(), (0.0, 0.2775));
        close(wilson(10, 10).unwrap(), (0.7225, 1.0));
        close(wilson(81, 100).unwrap(), (0.7222, 0.8749));
        assert_eq!(wilson(0, 0), None);
    }

    #[test]
    fn rows_set_each_method_against_the_first() {
        // Baseline right on q0..q5 of 10; the method loses q0, gains q6..q9.
        let base = [
            true, true, true, true, true, true, false, false, false, false,
        ];
        let method = [false, true, true, true, true, true, true, true, true, true];
        let evals = [
            eval("m/d/single-shot", "gsm8k", &base, 100, 0),
            // Half its tokens were served from the cache: still counted.
            with_firsts(eval("m/d/loop", "gsm8k", &method, 150, 150), &base),
            // Another data source: items pair only by content (here the
            // same ids and empty inputs, so they pair).
            eval("m/d/other", "other.jsonl", &base, 100, 0),
        ];
        let rows = rows_of(&evals);
        assert_eq!(rows[0].against, None);
        assert_eq!((rows[0].done, rows[0].right), (10, 6));
        assert_eq!(rows[0].models, "m=llama:<q>");
        let a = rows[1].against.unwrap();
        assert_eq!((a.paired, a.negative, a.positive), (10, 1, 4));
        assert!((a.difference - 0.3).abs() < 1e-12);
        // Exact two-sided McNemar on 1 vs 4 discordant pairs: 2 * P(X <= 1), X ~ B(5, 1/2).
        assert!((a.p_value - 0.375).abs() < 1e-12, "{}", a.p_value);
        assert_eq!(rows[1].tokens_per_item, 300.0);
        assert_eq!(rows[1].token_ratio, Some(3.0));
        assert_eq!(rows[1].cached_share, Some(0.5));
        assert_eq!(rows[1].seconds_per_item, 2.0);
        assert_eq!(rows[2].against.unwrap().paired, 10);
        // The loop's own first answers were the baseline's: its own flips
        // are the same −1 / +4 (a method whose draft differs shows them apart).
        let own = rows[1].own_flips;
        assert_eq!((own.units, own.negative, own.positive), (10, 1, 4));
        let md = markdown(&rows);
        assert!(
            md.starts_with("Model: m=llama:<q>. Baseline: m/d/single-shot."),
            "{md}"
        );
        assert!(
            md.contains("| m/d/loop | 90.0% [59.6, 98.2] | +30.0 | 0.375 | −1 / +4 | −1 / +4 | 300 (3.0×) | 2.0 (50.0% of calls cached) | 10 |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| m/d/single-shot | 60.0% [31.3, 83.2] | baseline | – | – | −0 / +0 | 100 | 2.0 | 10 |"
            ),
            "{md}"
        );
    }

    #[test]
    fn an_eval_without_scored_items_has_no_accuracy() {
        let evals = [
            eval("base", "gsm8k", &[true], 10, 0),
            eval("empty", "gsm8k", &[], 0, 0),
        ];
        let rows = rows_of(&evals);
        assert_eq!(rows[1].accuracy, None);
        assert_eq!(rows[1].interval, None);
        assert_eq!(rows[1].against.unwrap().paired, 0);
        assert!(markdown(&rows).contains("| empty | – | – | – | no paired items |"));
        // The plot leaves it out rather than drawing it at 0%.
        let svg = frontier_svg("t", &rows);
        assert_eq!(svg.matches("<circle").count(), 1);
    }

    #[test]
    fn the_legend_drops_a_shared_prefix_in_whole_characters() {
        // "é" and "è" share their first UTF-8 byte: the shared part must
        // stop before the character, not inside it.
        assert_eq!(shared_prefix(&["m/é/a", "m/è/b"]), 2);
        assert_eq!(shared_prefix(&["m/d/x", "m/d/xy"]), 4);
        assert_eq!(shared_prefix(&["solo/x"]), 0);
        let evals = [
            eval("m/é", "d", &[true], 100, 0),
            eval("m/è", "d", &[false], 200, 0),
        ];
        let svg = frontier_svg("t", &rows_of(&evals));
        assert!(
            svg.contains(">é</text>") && svg.contains(">è</text>"),
            "{svg}"
        );
    }

    #[test]
    fn the_frontier_escapes_names_and_joins_the_undominated_methods() {
        let evals = [
            eval("x/<script>/cheap", "d", &[true, false], 100, 0),
            eval("x/<script>/dear-worse", "d", &[false, false], 1000, 0),
            eval("x/<script>/dear-better", "d", &[true, true], 2000, 0),
        ];
        let svg = frontier_svg("a \"title\" <b>", &rows_of(&evals));
        assert!(!svg.contains("<script>") && !svg.contains("<b>"), "{svg}");
        assert!(svg.contains("a &quot;title&quot; &lt;b&gt;"), "{svg}");
        assert_eq!(svg.matches("<circle").count(), 3);
        // The legend drops the shared `x/<script>/`.
        assert!(svg.contains(">cheap</text>") && svg.contains(">dear-better</text>"));
        // The dashed frontier joins cheap and dear-better only.
        let line = svg.split("<polyline").nth(1).unwrap();
        let points = line
            .split("points=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert_eq!(points.split(' ').count(), 2, "{points}");
        assert!(svg.contains(">0%</text>") && svg.contains(">100%</text>"));
    }
}
