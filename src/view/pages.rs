//! The viewer's pages. An eval's and a comparison's are the report's own
//! rendering ([`report::render_for`] with [`Target::View`]); the list and the
//! review page are shells that `assets/app.js` fills from the JSON API.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde_json::Value;

use crate::eval::html::escape;
use crate::eval::report::{self, HEAD, ReportEval, Target, VIEW_SCRIPT, query_value};
use crate::eval::stats;
use crate::eval::store::{EvalRecord, UnitRecord};

/// The script of every page (embedded: the viewer works offline).
pub(super) const APP_JS: &str = include_str!("assets/app.js");

/// The most characters of one output shown side by side in a comparison.
const SIDE_CHARS: usize = 4000;

fn head(title: &str) -> String {
    HEAD.replacen(
        "<title>redraft report</title>",
        &format!("<title>{}</title>", escape(title)),
        1,
    )
}

fn end() -> String {
    format!("{VIEW_SCRIPT}</body></html>\n")
}

/// The eval list: filled and kept current by the script.
pub(super) fn list() -> String {
    let mut h = head("redraft view");
    h.push_str(
        "<main data-page=list><h1>Evals</h1>\
<p id=status>Loading…</p>\
<table id=evals><thead><tr><th>eval</th><th>name</th><th>workflow</th><th>models</th><th>progress</th><th>running</th><th>failed</th><th>mean score so far</th><th>tokens</th><th>cost</th><th>created (UTC)</th></tr></thead><tbody></tbody></table>\
<h2>Compare two evals</h2><form id=compare action=/compare method=get>\
<label>A <select name=a></select></label> <label>B <select name=b></select></label> <button type=submit>Compare</button></form>\
<p><a href=/review>Reviews waiting</a></p></main>",
    );
    h.push_str(&end());
    h
}

/// The review page: filled by the script.
pub(super) fn review() -> String {
    let mut h = head("redraft review");
    h.push_str(
        "<main data-page=review><nav class=view><a href=\"/\">← all evals</a></nav><h1>Reviews</h1>\
<p><label>Your name <input id=reviewer maxlength=100></label></p>\
<p class=verdict>Keys: j / k next / previous edit, a accept, r reject, Enter submit the review.</p>\
<div id=reviews><p>Loading…</p></div><h2>Decided</h2><ul id=decided></ul></main>",
    );
    h.push_str(&end());
    h
}

fn report_eval(record: EvalRecord, units: Vec<UnitRecord>) -> ReportEval {
    let metrics = stats::compute(&units);
    ReportEval {
        record,
        metrics,
        units,
    }
}

/// One eval: the report as `redraft report` renders it, items linking to
/// their pages.
pub(super) fn eval(record: EvalRecord, units: Vec<UnitRecord>) -> String {
    let evals = [report_eval(record, units)];
    report::render_for(&evals, &report::method_rows(&evals), Target::View)
}

/// Two evals: the report of both (summary, methods table with McNemar p,
/// flip matrix, items) and the items whose verdict differs side by side.
pub(super) fn compare(evals: Vec<(EvalRecord, Vec<UnitRecord>)>) -> String {
    let evals: Vec<ReportEval> = evals.into_iter().map(|(r, u)| report_eval(r, u)).collect();
    let mut page = report::render_for(&evals, &report::method_rows(&evals), Target::View);
    let mut side = String::from("<h2 id=flipped>Flipped items, side by side</h2>");
    let (a, b) = (&evals[0], &evals[1]);
    // The pairs `redraft compare`, the methods table and the flip matrix
    // count (the same id and epoch on one data set; elsewhere the same
    // item), scored in both.
    let pairing = stats::Pairing::between(&a.record, &b.record);
    let flipped = stats::compare(&a.units, &b.units, pairing).flipped;
    let outputs = |e: &ReportEval| -> HashMap<(String, u32), String> {
        e.units
            .iter()
            .filter_map(|u| {
                let out = u.result.as_ref()?.output.clone()?;
                Some(((u.item.id.clone(), u.epoch), out))
            })
            .collect()
    };
    let (out_a, out_b) = (outputs(a), outputs(b));
    for f in &flipped {
        let _ = write!(
            side,
            "<section class=flip data-item=\"{}\"><h3>{} · epoch {} · {}</h3><div class=side>",
            escape(&f.item),
            escape(&f.item),
            f.epoch,
            if f.direction == "negative" {
                "right → wrong"
            } else {
                "wrong → right"
            }
        );
        let key = (f.item.clone(), f.epoch);
        for (e, outs, right) in [
            (a, &out_a, f.direction == "negative"),
            (b, &out_b, f.direction == "positive"),
        ] {
            let out = outs.get(&key).map_or("", String::as_str);
            let shown: String = out.chars().take(SIDE_CHARS).collect();
            let _ = write!(
                side,
                "<div><a href=\"/e/{}/item?id={}&amp;epoch={}\">{}</a> {}<pre>{}</pre></div>",
                query_value(&e.record.id),
                query_value(&f.item),
                f.epoch,
                escape(&e.record.name),
                if right { "right" } else { "wrong" },
                escape(&shown)
            );
        }
        side.push_str("</div></section>");
    }
    if flipped.is_empty() {
        side.push_str("<p>No item is right in one and wrong in the other.</p>");
    }
    if let Some(at) = page.find("<h2>Items</h2>") {
        page.insert_str(at, &side);
    }
    page
}

/// One item: its result, its revision chain with diffs and verdicts, and
/// each model call (tokens, time, and the prompt and reply when the eval
/// logged content).
pub(super) fn item(record: &EvalRecord, u: &UnitRecord) -> String {
    let mut h = head(&format!("{} · {}", u.item.id, record.name));
    let _ = write!(
        h,
        "<main data-page=item><nav class=view><a href=\"/\">← all evals</a> · <a href=\"/e/{}\">{}</a></nav><h1>{} · epoch {}</h1>",
        query_value(&record.id),
        escape(&record.name),
        escape(&u.item.id),
        u.epoch
    );
    match &u.result {
        None => {
            let _ = write!(h, "<p>Status: {} (no result yet).</p>", escape(&u.status));
        }
        Some(r) => {
            let _ = write!(
                h,
                "<table class=summary id=result><tr><th>status</th><th>passed</th><th>score</th><th>feedback</th><th>answers</th><th>tokens</th><th>calls</th><th>wall ms</th></tr>\
<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.0}</td></tr></table>",
                r.status.as_str(),
                report::passed_cell(r),
                report::score_cell(r),
                escape(
                    r.score
                        .as_ref()
                        .map_or(r.error.as_deref().unwrap_or(""), |s| s.feedback.as_str())
                ),
                r.candidates.len(),
                r.tokens,
                r.calls,
                r.wall_ms
            );
            if let Some(task) = u.item.inputs.get("task").and_then(Value::as_str) {
                let _ = write!(h, "<h2>Task</h2><pre>{}</pre>", escape(task));
            }
            h.push_str("<h2>Revision chain</h2>");
            report::chain(&mut h, u, &record.name, "chain", true);
            calls(&mut h, &r.events);
        }
    }
    h.push_str("</main>");
    h.push_str(&end());
    h
}

/// The model calls of a unit's events, one row each; the prompt and reply
/// when they were logged.
fn calls(h: &mut String, events: &[Value]) {
    let calls: Vec<&Value> = events
        .iter()
        .filter(|e| e.get("event").and_then(Value::as_str) == Some("model_call"))
        .collect();
    if calls.is_empty() {
        return;
    }
    h.push_str("<h2>Model calls</h2><table id=calls><tr><th>node</th><th>round</th><th>model</th><th>prompt tokens</th><th>completion tokens</th><th>cached</th><th>ms</th><th>outcome</th></tr>");
    let text = |v: Option<&Value>| match v {
        Some(Value::String(s)) => escape(s),
        Some(v) => escape(&v.to_string()),
        None => String::new(),
    };
    for c in &calls {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.0}</td><td>{}</td></tr>",
            text(c.get("node")),
            text(c.get("round")),
            text(c.get("model_id")),
            text(c.get("prompt_tokens")),
            text(c.get("completion_tokens")),
            if c.get("cached").and_then(Value::as_bool) == Some(true) {
                "yes"
            } else {
                ""
            },
            c.get("latency_ms").and_then(Value::as_f64).unwrap_or(0.0),
            text(c.get("outcome"))
        );
    }
    h.push_str("</table>");
    let logged: Vec<&&Value> = calls.iter().filter(|c| c.get("prompt").is_some()).collect();
    if logged.is_empty() {
        h.push_str(
            "<p class=verdict>Prompts are shown for evals run with <code>--log-content</code>.</p>",
        );
        return;
    }
    h.push_str("<h2>Prompts and replies</h2>");
    for c in logged {
        let _ = write!(
            h,
            "<details><summary>{} round {}</summary>",
            text(c.get("node")),
            text(c.get("round"))
        );
        match c.get("prompt") {
            Some(Value::Array(messages)) => {
                for m in messages {
                    let _ = write!(
                        h,
                        "<div class=verdict>{}</div><pre>{}</pre>",
                        text(m.get("role")),
                        text(m.get("content"))
                    );
                }
            }
            other => {
                let _ = write!(h, "<pre>{}</pre>", text(other));
            }
        }
        for reply in c
            .get("reply")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let _ = write!(
                h,
                "<div class=verdict>reply</div><pre>{}</pre>",
                text(Some(reply))
            );
        }
        h.push_str("</details>");
    }
}
