//! `redraft report`: one self-contained HTML file for one or more evals.
//! Plots are inline SVG drawn here; the only script sorts the item table.
//! Nothing is fetched: no network, no external files.

use std::fmt::Write as _;

use serde_json::Value;

use super::stats::{self, Metrics};
use super::store::{EvalRecord, UnitRecord, models_of};

/// Units per eval whose revision chain is written out (the table lists all).
pub const CHAIN_LIMIT: usize = 300;

/// One eval as the report needs it.
pub struct ReportEval {
    pub record: EvalRecord,
    pub metrics: Metrics,
    pub units: Vec<UnitRecord>,
}

const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf",
];

pub use super::html::escape;

fn pct(x: Option<f64>) -> String {
    x.map_or("–".into(), |x| format!("{:.1}%", x * 100.0))
}

fn num(x: Option<f64>) -> String {
    x.map_or("–".into(), |x| format!("{x:.3}"))
}

/// The methods table's rows for these evals, the first being the baseline.
pub fn method_rows(evals: &[ReportEval]) -> Vec<super::table::MethodRow> {
    let inputs: Vec<super::table::Evaluated> = evals
        .iter()
        .map(|e| (&e.record, e.units.as_slice(), &e.metrics))
        .collect();
    super::table::rows(&inputs)
}

/// Renders the report.
pub fn render(evals: &[ReportEval]) -> String {
    render_with(evals, &method_rows(evals))
}

/// Where a report is read, which decides how its items link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// One self-contained file: each item links to its revision chain,
    /// written out below the table (the first [`CHAIN_LIMIT`] per eval).
    File,
    /// `redraft view`: each item links to its own page (`/e/EVAL/item?...`),
    /// so no chains are written, and the app's script is loaded.
    View,
}

/// [`render`] with the methods table's rows already computed (the CLI also
/// writes them as Markdown and SVG).
pub fn render_with(evals: &[ReportEval], rows: &[super::table::MethodRow]) -> String {
    render_for(evals, rows, Target::File)
}

/// The report for `target`: the same summary, tables and plots either way.
pub fn render_for(
    evals: &[ReportEval],
    rows: &[super::table::MethodRow],
    target: Target,
) -> String {
    let mut h = String::with_capacity(64 << 10);
    h.push_str(HEAD);
    if target == Target::View {
        let ids: Vec<&str> = evals.iter().map(|e| e.record.id.as_str()).collect();
        let _ = write!(
            h,
            "<nav class=view data-evals=\"{}\"><a href=\"/\">← all evals</a> <span id=live></span></nav>",
            escape(&ids.join(" "))
        );
    }
    let names: Vec<String> = evals
        .iter()
        .map(|e| {
            format!(
                "{} ({})",
                e.record.name,
                &e.record.id[..8.min(e.record.id.len())]
            )
        })
        .collect();
    let _ = write!(
        h,
        "<h1>redraft report: {}</h1>",
        escape(&names.join(" vs "))
    );
    summary_table(&mut h, evals, &names);
    if evals.len() > 1 {
        let _ = write!(
            h,
            "<h2>Methods against {}</h2><p>{}</p>",
            escape(&names[0]),
            escape(super::table::READING)
        );
        h.push_str(&super::table::html(rows));
        h.push_str(&super::table::frontier_svg(
            "Accuracy vs tokens per item",
            rows,
        ));
    }

    h.push_str("<h2>Plots</h2><div class=plots>");
    let per_round: Vec<(String, Vec<(f64, f64)>)> = evals
        .iter()
        .zip(&names)
        .flat_map(|(e, n)| {
            [
                (
                    format!("{n} accuracy"),
                    e.metrics
                        .per_round
                        .iter()
                        .map(|p| (p.round as f64, p.accuracy))
                        .collect(),
                ),
                (
                    format!("{n} best so far"),
                    e.metrics
                        .per_round
                        .iter()
                        .map(|p| (p.round as f64, p.best_so_far))
                        .collect(),
                ),
            ]
        })
        .collect();
    h.push_str(&line_plot(
        "Score per round",
        "round (0 = first answer)",
        "score",
        &per_round,
    ));
    let vs_tokens: Vec<(String, Vec<(f64, f64)>)> = evals
        .iter()
        .zip(&names)
        .map(|(e, n)| {
            (
                n.clone(),
                e.metrics
                    .score_vs_tokens
                    .iter()
                    .map(|p| (p.tokens as f64, p.mean_score))
                    .collect(),
            )
        })
        .collect();
    h.push_str(&line_plot(
        "Score vs tokens per item",
        "tokens spent",
        "best score so far",
        &vs_tokens,
    ));
    let points: Vec<(String, f64, f64)> = evals
        .iter()
        .flat_map(|e| {
            let models = models_of(&e.record.meta);
            e.metrics.loops.iter().filter_map(move |(id, l)| {
                l.overcorrection_risk_rate
                    .map(|orr| (format!("{models} · {id}"), orr, l.correction_success_rate))
            })
        })
        .collect();
    h.push_str(&scatter(
        "ORR vs CSR per model",
        "overcorrection risk rate",
        "correction success rate",
        &points,
    ));
    if let Some(plot) = reliability_plot(evals, &names) {
        h.push_str(&plot);
    }
    h.push_str("</div>");
    if evals.len() > 1 {
        flip_matrix(&mut h, evals, &names);
    }
    round_table(&mut h, evals, &names);
    item_table(&mut h, evals, &names, target);
    if target == Target::File {
        chains(&mut h, evals, &names);
    }
    h.push_str(SCRIPT);
    if target == Target::View {
        h.push_str(VIEW_SCRIPT);
    }
    h.push_str("</body></html>\n");
    h
}

/// The app's script on a report served by `redraft view`.
pub(crate) const VIEW_SCRIPT: &str = "<script src=\"/assets/app.js\"></script>";

/// Percent-encodes a query value (everything but unreserved characters).
pub fn query_value(s: &str) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    const RESERVED: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    utf8_percent_encode(s, RESERVED).to_string()
}

/// An item's "passed" cell: yes, no, or empty without a score.
pub(crate) fn passed_cell(r: &super::ItemResult) -> &'static str {
    r.score
        .as_ref()
        .map_or("", |s| if s.passed { "yes" } else { "no" })
}

/// An item's score to three decimals, or empty.
pub(crate) fn score_cell(r: &super::ItemResult) -> String {
    r.score
        .as_ref()
        .map_or(String::new(), |s| format!("{:.3}", s.score))
}

/// How an item's first answer and final answer compare: `neg` (right →
/// wrong), `pos` (wrong → right), `right`, `wrong`, or empty without a
/// scored answer.
fn flip(r: &super::ItemResult) -> &'static str {
    match (
        r.first().map(|c| c.passed),
        r.score.as_ref().map(|s| s.passed),
    ) {
        (Some(true), Some(false)) => "neg",
        (Some(false), Some(true)) => "pos",
        (_, Some(true)) => "right",
        (_, Some(false)) => "wrong",
        _ => "",
    }
}

fn summary_table(h: &mut String, evals: &[ReportEval], names: &[String]) {
    h.push_str("<h2>Summary</h2><table class=summary id=summary><tr><th>eval</th><th>workflow</th><th>models</th><th>units</th><th>done</th><th>failed</th><th>accuracy</th><th>mean score</th><th>pass@k</th><th>first answer</th><th>NFR / PFR (first→final)</th><th>CL / CS / RSS</th><th>tokens mean / p50 / p95</th><th>wall ms p50 / p95</th><th>cost</th></tr>");
    for (e, name) in evals.iter().zip(names) {
        let m = &e.metrics;
        let pass: Vec<String> = m
            .pass_at_k
            .iter()
            .map(|(k, v)| format!("@{k} {:.1}%", v * 100.0))
            .collect();
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=done>{}</td><td>{}</td><td class=accuracy>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} / {}</td><td>{} / {} / {}</td><td>{:.0} / {:.0} / {:.0}</td><td>{:.0} / {:.0}</td><td>${:.4}</td></tr>",
            escape(name),
            escape(&e.record.workflow),
            escape(&models_of(&e.record.meta)),
            m.units,
            m.done,
            m.failed,
            pct(m.accuracy),
            num(m.mean_score),
            escape(&pass.join(" ")),
            pct(m.first_accuracy),
            pct(m.flips.negative_rate),
            pct(m.flips.positive_rate),
            num(m.cl),
            num(m.cs),
            num(m.rss),
            m.tokens.mean,
            m.tokens.p50,
            m.tokens.p95,
            m.wall_ms.p50,
            m.wall_ms.p95,
            m.total_cost_usd,
        );
    }
    h.push_str("</table>");
    let loops: Vec<String> = evals
        .iter()
        .zip(names)
        .flat_map(|(e, n)| {
            e.metrics.loops.iter().map(move |(id, l)| {
                format!(
                    "<tr><td>{}</td><td>{}</td><td>{:.2}</td><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{}</td></tr>",
                    escape(n),
                    escape(id),
                    l.rounds,
                    num(l.overcorrection_risk_rate),
                    l.correction_success_rate,
                    l.improvement_slope,
                    num(l.over_budget_ratio)
                )
            })
        })
        .collect();
    if !loops.is_empty() {
        h.push_str("<h3>Loops (mean over units)</h3><table><tr><th>eval</th><th>loop</th><th>rounds</th><th>ORR</th><th>CSR</th><th>improvement slope</th><th>over-budget ratio</th></tr>");
        h.push_str(&loops.concat());
        h.push_str("</table>");
    }
    let reviews: Vec<String> = evals
        .iter()
        .zip(names)
        .flat_map(|(e, n)| {
            e.metrics.reviews.iter().map(move |r| {
                format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    escape(n),
                    r.depth,
                    r.proposed,
                    r.accepted,
                    pct(r.acceptance_rate)
                )
            })
        })
        .collect();
    if !reviews.is_empty() {
        h.push_str("<h3>Human review</h3><table><tr><th>eval</th><th>depth</th><th>proposed</th><th>accepted</th><th>acceptance</th></tr>");
        h.push_str(&reviews.concat());
        h.push_str("</table>");
    }
    let nodes: Vec<String> = evals
        .iter()
        .zip(names)
        .flat_map(|(e, n)| {
            e.metrics.per_node.iter().map(move |p| {
                format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.3}</td><td>{:.0}</td></tr>",
                    escape(n),
                    escape(&p.node),
                    p.units,
                    pct(Some(p.accuracy)),
                    p.mean_score,
                    p.tokens
                )
            })
        })
        .collect();
    if !nodes.is_empty() {
        h.push_str("<h3>Per output node (each node's latest answer)</h3><table><tr><th>eval</th><th>node</th><th>units</th><th>accuracy</th><th>mean score</th><th>tokens spent when it answered</th></tr>");
        h.push_str(&nodes.concat());
        h.push_str("</table>");
    }
    let cache: Vec<String> = evals
        .iter()
        .zip(names)
        .flat_map(|(e, n)| {
            e.metrics.cache_by_node.iter().map(move |c| {
                format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    escape(n),
                    escape(&c.node),
                    c.calls,
                    c.cached,
                    pct(Some(c.hit_rate))
                )
            })
        })
        .collect();
    if !cache.is_empty() {
        h.push_str("<h3>Response cache (calls served without the model, per node)</h3><table><tr><th>eval</th><th>node</th><th>calls</th><th>from the cache</th><th>hit rate</th></tr>");
        h.push_str(&cache.concat());
        h.push_str("</table>");
    }
    let checks: Vec<String> = evals
        .iter()
        .zip(names)
        .filter_map(|(e, n)| {
            let i = e.metrics.insistency;
            let c = e.metrics.confidence;
            (i.is_some() || c.is_some()).then(|| {
                format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    escape(n),
                    i.map_or("–".into(), |i| format!(
                        "{} of {} ({})",
                        i.kept,
                        i.revisions,
                        pct(Some(i.rate))
                    )),
                    c.map_or("–".into(), |c| format!(
                        "{} ({} right)",
                        c.verdicts, c.right
                    )),
                    num(c.and_then(|c| c.mean_right)),
                    num(c.and_then(|c| c.mean_wrong)),
                    num(c.and_then(|c| c.auroc)),
                    num(c.and_then(|c| c.ece)),
                    e.metrics.calibrated_confidence.map_or("–".into(), |k| format!(
                        "ECE {} · AUROC {} · mean right {} wrong {}",
                        num(k.ece),
                        num(k.auroc),
                        num(k.mean_right),
                        num(k.mean_wrong)
                    )),
                )
            })
        })
        .collect();
    if !checks.is_empty() {
        h.push_str("<h3>Revisions that kept the answer; verifier confidence against correctness</h3><table><tr><th>eval</th><th>kept</th><th>verdicts</th><th>mean confidence, right</th><th>mean confidence, wrong</th><th>AUROC</th><th>ECE</th><th>calibrated confidence</th></tr>");
        h.push_str(&checks.concat());
        h.push_str("</table>");
    }
}

/// The reliability diagram of the verifiers' confidence: accuracy against
/// mean confidence per bin, raw and (where a calibration was applied)
/// calibrated, with the diagonal a calibrated verifier follows.
fn reliability_plot(evals: &[ReportEval], names: &[String]) -> Option<String> {
    use crate::calibration::reliability;
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for (e, n) in evals.iter().zip(names) {
        let verdicts = e
            .units
            .iter()
            .filter_map(|u| u.result.as_ref())
            .filter(|r| r.status == super::ItemStatus::Done)
            .flat_map(|r| r.verdicts.iter());
        let raw: Vec<(f64, bool)> = verdicts.clone().map(|v| (v.confidence, v.passed)).collect();
        let calibrated: Vec<(f64, bool)> = verdicts
            .filter_map(|v| Some((v.calibrated?, v.passed)))
            .collect();
        let bins = |pts: &[(f64, bool)]| {
            reliability(pts, 10)
                .into_iter()
                .map(|b| (b.mean_confidence, b.accuracy))
                .collect::<Vec<_>>()
        };
        if !raw.is_empty() {
            series.push((format!("{n} raw"), bins(&raw)));
        }
        if !calibrated.is_empty() {
            series.push((format!("{n} calibrated"), bins(&calibrated)));
        }
    }
    if series.is_empty() {
        return None;
    }
    series.push(("perfectly calibrated".into(), vec![(0.0, 0.0), (1.0, 1.0)]));
    Some(line_plot(
        "Verifier reliability",
        "confidence (bin mean)",
        "share of right answers",
        &series,
    ))
}

/// Each round's answers against the previous round's: where refining
/// turns right answers wrong, and how often a guarded loop said no.
fn round_table(h: &mut String, evals: &[ReportEval], names: &[String]) {
    let rows: Vec<String> = evals
        .iter()
        .zip(names)
        .flat_map(|(e, n)| {
            e.metrics.per_round.iter().filter_map(move |r| {
                let f = r.flips?;
                Some(format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.1}%</td><td>{}</td><td>{}</td><td>{:.1}%</td><td>{}</td></tr>",
                    escape(n),
                    r.round,
                    r.reached,
                    r.accuracy * 100.0,
                    f.negative,
                    f.positive,
                    f.negative_rate * 100.0,
                    r.rejected
                ))
            })
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    h.push_str("<h2>Rounds</h2><p>Each round's answers against the previous round's, over the items that reached it (a revision a guarded loop rejected leaves the previous answer).</p><table class=rounds id=rounds><tr><th>eval</th><th>round</th><th>reached</th><th>accuracy</th><th>right → wrong</th><th>wrong → right</th><th>NFR vs previous</th><th>rejected</th></tr>");
    for r in rows {
        h.push_str(&r);
    }
    h.push_str("</table>");
}

fn flip_matrix(h: &mut String, evals: &[ReportEval], names: &[String]) {
    h.push_str("<h2>Flips between evals</h2><p>Row → column: negative flips (right in the row's eval, wrong in the column's), positive flips, and the exact McNemar p-value.</p><table class=flips><tr><th></th>");
    for n in names {
        let _ = write!(h, "<th>{}</th>", escape(n));
    }
    h.push_str("</tr>");
    for (i, a) in evals.iter().enumerate() {
        let _ = write!(h, "<tr><th>{}</th>", escape(&names[i]));
        for (j, b) in evals.iter().enumerate() {
            if i == j {
                h.push_str("<td>–</td>");
                continue;
            }
            let pairing = stats::Pairing::between(&a.record, &b.record);
            let c = stats::compare(&a.units, &b.units, pairing);
            let shade = c.negative_flip_rate.unwrap_or(0.0).min(1.0);
            let _ = write!(
                h,
                "<td style=\"background:rgba(214,39,40,{:.2})\">NFR {} · PFR {} · p={:.3}</td>",
                shade * 0.8,
                pct(c.negative_flip_rate),
                pct(c.positive_flip_rate),
                c.p_value
            );
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");
}

/// The item table. Each row carries what the viewer filters on:
/// `data-status`, `data-flip` (see [`flip`]) and `data-node` (the node of
/// the final answer).
fn item_table(h: &mut String, evals: &[ReportEval], names: &[String], target: Target) {
    let hint = match target {
        Target::File => "click an item to see its revision chain",
        Target::View => "click an item to open it",
    };
    let _ = write!(
        h,
        "<h2>Items</h2><p>Click a column to sort; {hint}.</p><table id=items class=sortable><thead><tr><th>item</th><th>epoch</th><th>eval</th><th>status</th><th>passed</th><th>score</th><th>first answer</th><th>answers</th><th>tokens</th><th>wall ms</th></tr></thead><tbody>"
    );
    for (ei, (e, name)) in evals.iter().zip(names).enumerate() {
        for (ui, u) in e.units.iter().enumerate() {
            let Some(r) = &u.result else {
                let _ = write!(
                    h,
                    "<tr data-status=\"{}\" data-flip=\"\" data-node=\"\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td></td><td></td><td></td><td></td><td></td><td></td></tr>",
                    escape(&u.status),
                    escape(&u.item.id),
                    u.epoch,
                    escape(name),
                    escape(&u.status)
                );
                continue;
            };
            let anchor = match target {
                Target::View => format!(
                    "<a href=\"/e/{}/item?id={}&amp;epoch={}\">{}</a>",
                    query_value(&e.record.id),
                    query_value(&u.item.id),
                    u.epoch,
                    escape(&u.item.id)
                ),
                Target::File if ui < CHAIN_LIMIT => {
                    format!("<a href=\"#u{ei}-{ui}\">{}</a>", escape(&u.item.id))
                }
                Target::File => escape(&u.item.id),
            };
            let _ = write!(
                h,
                "<tr data-status=\"{}\" data-flip=\"{}\" data-node=\"{}\"><td>{anchor}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.0}</td></tr>",
                r.status.as_str(),
                flip(r),
                escape(r.candidates.last().map_or("", |c| c.node.as_str())),
                u.epoch,
                escape(name),
                r.status.as_str(),
                passed_cell(r),
                score_cell(r),
                r.first()
                    .map_or("", |c| if c.passed { "yes" } else { "no" }),
                r.candidates.len(),
                r.tokens,
                r.wall_ms
            );
        }
    }
    h.push_str("</tbody></table>");
}

/// Each unit's revision chain: the nodes in the order they finished, their
/// outputs, verdicts, and a word-level diff of each answer against the one
/// before it.
fn chains(h: &mut String, evals: &[ReportEval], names: &[String]) {
    h.push_str("<h2>Revision chains</h2>");
    for (ei, (e, name)) in evals.iter().zip(names).enumerate() {
        if e.units.len() > CHAIN_LIMIT {
            let _ = write!(
                h,
                "<p>{}: the first {CHAIN_LIMIT} of {} units.</p>",
                escape(name),
                e.units.len()
            );
        }
        for (ui, u) in e.units.iter().enumerate().take(CHAIN_LIMIT) {
            chain(h, u, name, &format!("u{ei}-{ui}"), false);
        }
    }
}

/// One unit's revision chain as a `<details>` element with id `id` (open
/// with `open`): the nodes in the order they finished, their outputs,
/// verdicts, and a word-level diff of each answer against the one before.
pub fn chain(h: &mut String, u: &UnitRecord, name: &str, id: &str, open: bool) {
    let Some(r) = &u.result else { return };
    let _ = write!(
        h,
        "<details id=\"{}\"{}><summary>{} · epoch {} · {} · {}</summary>",
        escape(id),
        if open { " open" } else { "" },
        escape(&u.item.id),
        u.epoch,
        escape(name),
        r.score.as_ref().map_or_else(
            || format!("failed: {}", escape(r.error.as_deref().unwrap_or(""))),
            |s| format!("score {:.3} ({})", s.score, escape(&s.feedback))
        )
    );
    let answer_nodes: Vec<&str> = r.candidates.iter().map(|c| c.node.as_str()).collect();
    let mut kinds = std::collections::HashMap::new();
    let mut previous: Option<String> = None;
    for ev in &r.events {
        match ev.get("event").and_then(Value::as_str) {
            Some("node_started") => {
                if let (Some(n), Some(k)) = (
                    ev.get("node").and_then(Value::as_str),
                    ev.get("kind").and_then(Value::as_str),
                ) {
                    kinds.insert(n.to_string(), k.to_string());
                }
            }
            Some("node_finished") => {
                let node = ev.get("node").and_then(Value::as_str).unwrap_or("?");
                let round = ev.get("round").and_then(Value::as_u64).unwrap_or(0);
                let Some(out) = ev.get("output") else {
                    continue;
                };
                let text = match out.get("text") {
                    Some(Value::String(s)) => s.clone(),
                    _ => serde_json::to_string_pretty(out).unwrap_or_default(),
                };
                let kind = kinds.get(node).map(String::as_str).unwrap_or("");
                let _ = write!(
                    h,
                    "<div class=step><b>{}</b> <i>{}</i> round {round}",
                    escape(node),
                    escape(kind)
                );
                if answer_nodes.contains(&node) {
                    match &previous {
                        Some(p) => {
                            h.push_str("<pre class=diff>");
                            h.push_str(&word_diff(p, &text));
                            h.push_str("</pre>");
                        }
                        None => {
                            let _ = write!(h, "<pre>{}</pre>", escape(&text));
                        }
                    }
                    previous = Some(text);
                } else {
                    let _ = write!(h, "<pre>{}</pre>", escape(&text));
                }
                h.push_str("</div>");
            }
            Some("verdict") => {
                let _ = write!(
                    h,
                    "<div class=verdict>verdict of {}: {} (score {})</div>",
                    escape(ev.get("node").and_then(Value::as_str).unwrap_or("?")),
                    if ev.get("passed").and_then(Value::as_bool) == Some(true) {
                        "passed"
                    } else {
                        "failed"
                    },
                    ev.get("score").map(|s| s.to_string()).unwrap_or_default()
                );
            }
            _ => {}
        }
    }
    h.push_str("</details>");
}

/// A word-level diff: removed words struck through, added words marked.
pub fn word_diff(old: &str, new: &str) -> String {
    let diff = similar::TextDiff::from_words(old, new);
    let mut out = String::new();
    for change in diff.iter_all_changes() {
        let text = escape(change.value());
        match change.tag() {
            similar::ChangeTag::Equal => out.push_str(&text),
            similar::ChangeTag::Delete => {
                let _ = write!(out, "<del>{text}</del>");
            }
            similar::ChangeTag::Insert => {
                let _ = write!(out, "<ins>{text}</ins>");
            }
        }
    }
    out
}

const W: f64 = 460.0;
const H: f64 = 260.0;
const PAD: f64 = 44.0;

fn frame(title: &str, xlabel: &str, ylabel: &str, xmax: f64, body: &str, legend: &str) -> String {
    format!(
        "<figure><svg viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" role=img aria-label=\"{t}\">\
<line x1=\"{PAD}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#333\"/><line x1=\"{PAD}\" y1=\"10\" x2=\"{PAD}\" y2=\"{b}\" stroke=\"#333\"/>\
<text x=\"{PAD}\" y=\"{yl}\" font-size=\"11\">0</text><text x=\"{xr}\" y=\"{yl}\" font-size=\"11\" text-anchor=end>{xmax}</text>\
<text x=\"4\" y=\"14\" font-size=\"11\">1</text><text x=\"4\" y=\"{b}\" font-size=\"11\">0</text>\
<text x=\"{cx}\" y=\"{xl}\" font-size=\"11\" text-anchor=middle>{xlabel}</text>\
<text x=\"12\" y=\"{cy}\" font-size=\"11\" transform=\"rotate(-90 12 {cy})\" text-anchor=middle>{ylabel}</text>{body}</svg>\
<figcaption>{t}{legend}</figcaption></figure>",
        t = escape(title),
        b = H - PAD,
        r = W - 10.0,
        yl = H - PAD + 14.0,
        xr = W - 10.0,
        xmax = escape(&format!("{xmax}")),
        cx = (W + PAD) / 2.0,
        xl = H - 8.0,
        cy = (H - PAD) / 2.0,
        xlabel = escape(xlabel),
        ylabel = escape(ylabel),
    )
}

fn sx(x: f64, xmax: f64) -> f64 {
    PAD + (W - PAD - 10.0) * if xmax > 0.0 { x / xmax } else { 0.0 }
}

fn sy(y: f64) -> f64 {
    10.0 + (H - PAD - 10.0) * (1.0 - y.clamp(0.0, 1.0))
}

fn legend(names: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = names
        .enumerate()
        .map(|(i, n)| {
            format!(
                "<span style=\"color:{}\">■ {}</span>",
                COLORS[i % COLORS.len()],
                escape(&n)
            )
        })
        .collect();
    format!("<br>{}", items.join(" "))
}

fn line_plot(
    title: &str,
    xlabel: &str,
    ylabel: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> String {
    let xmax = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|p| p.0))
        .fold(0.0, f64::max);
    let mut body = String::new();
    for (i, (_, points)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x, xmax), sy(*y)))
            .collect();
        let _ = write!(
            body,
            "<polyline fill=none stroke=\"{color}\" stroke-width=2 points=\"{}\"/>",
            path.join(" ")
        );
        for (x, y) in points {
            let _ = write!(
                body,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=3 fill=\"{color}\"><title>{x}: {y:.3}</title></circle>",
                sx(*x, xmax),
                sy(*y)
            );
        }
    }
    if series.iter().all(|(_, p)| p.is_empty()) {
        body.push_str("<text x=\"150\" y=\"120\" font-size=\"12\">no data</text>");
    }
    frame(
        title,
        xlabel,
        ylabel,
        xmax,
        &body,
        &legend(series.iter().map(|s| s.0.clone())),
    )
}

fn scatter(title: &str, xlabel: &str, ylabel: &str, points: &[(String, f64, f64)]) -> String {
    let mut body = String::new();
    for (i, (_, x, y)) in points.iter().enumerate() {
        let _ = write!(
            body,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=5 fill=\"{}\"/>",
            sx(*x, 1.0),
            sy(*y),
            COLORS[i % COLORS.len()]
        );
    }
    if points.is_empty() {
        body.push_str(
            "<text x=\"120\" y=\"120\" font-size=\"12\">no loop with a defined ORR</text>",
        );
    }
    frame(
        title,
        xlabel,
        ylabel,
        1.0,
        &body,
        &legend(points.iter().map(|p| p.0.clone())),
    )
}

pub(crate) const HEAD: &str = "<!doctype html><html lang=en><head><meta charset=utf-8><title>redraft report</title>
<meta name=viewport content=\"width=device-width\"><link rel=icon href=\"data:,\">
<style>
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f3f3f3}
table.sortable th{cursor:pointer}
.plots{display:flex;flex-wrap:wrap;gap:1em}
figure{margin:0;border:1px solid #ddd;padding:.5em}
figcaption{font-size:12px}
pre{white-space:pre-wrap;background:#fafafa;border:1px solid #eee;padding:4px;margin:2px 0}
del{background:#fdd;color:#900}
ins{background:#dfd;color:#060;text-decoration:none}
details{margin:.3em 0;border-left:3px solid #ddd;padding-left:.5em}
.verdict{font-size:12px;color:#555}
nav.view{margin-bottom:1em;font-size:14px}
#filters{margin:.5em 0;font-size:13px}
#filters label{margin-right:1em}
.side{display:grid;grid-template-columns:1fr 1fr;gap:.5em}
.edit{margin:.2em 0;padding:.2em;border:1px solid #ddd}
.edit.current{outline:2px solid #36c}
.edit.accepted{background:#efe}
.edit.rejected{background:#fee}
</style></head><body>
<script>window.__errors=[];window.addEventListener('error',function(e){window.__errors.push(String(e.message));});</script>
";

const SCRIPT: &str = "<script>
(function(){
  var table=document.getElementById('items');
  var body=table.tBodies[0];
  var heads=table.tHead.rows[0].cells;
  function key(row,i){var t=row.cells[i].textContent;var n=parseFloat(t);return isNaN(n)?t.toLowerCase():n;}
  for(var i=0;i<heads.length;i++){(function(i){
    var asc=true;
    heads[i].addEventListener('click',function(){
      var rows=Array.prototype.slice.call(body.rows);
      rows.sort(function(a,b){var x=key(a,i),y=key(b,i);return (x<y?-1:x>y?1:0)*(asc?1:-1);});
      asc=!asc;rows.forEach(function(r){body.appendChild(r);});
    });
  })(i);}
  document.body.setAttribute('data-rows',String(body.rows.length));
  document.body.setAttribute('data-errors',String(window.__errors.length));
  document.body.setAttribute('data-ready','1');
})();
</script>
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_diffs_mark_removed_and_added_words() {
        assert_eq!(
            word_diff("the answer is 18", "the answer is <20>"),
            "the answer is <del>18</del><ins>&lt;20&gt;</ins>"
        );
    }

    #[test]
    fn an_empty_report_still_renders() {
        let h = render(&[]);
        assert!(h.contains("no data"));
        assert!(
            !h.contains("http://") && !h.contains("https://"),
            "nothing external"
        );
    }
}
