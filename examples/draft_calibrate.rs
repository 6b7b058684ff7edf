//! Calibrates DRAFT's two thresholds for the embedding its workflow uses
//! (TF-IDF, `redraft::similarity::tfidf`), from labelled pairs:
//!
//! - `request` pairs: is the second request too similar to the first (a
//!   reworded repeat) for the diversity check to let it through? Scored by
//!   the TF-IDF cosine of the two, as the `novelty` node embeds them.
//! - `docs` pairs: has the documentation converged (a light edit), or is
//!   the new version a substantive rewrite? Scored by δ, the mean of BLEU-4
//!   and the TF-IDF cosine, as the `episodes` loop stops.
//!
//! Prints each score's distribution per label, the calibrated threshold
//! (the midpoint with the best balanced accuracy) and what the paper's
//! thresholds (0.9 and 0.75, set for ada-002 embeddings) would do.
//!
//! Run with `cargo run --example draft_calibrate [PAIRS.jsonl]`
//! (default `examples/draft/calibration.jsonl`).

use redraft::similarity::{Cut, calibrate_threshold, tfidf_cosine, version_delta};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "examples/draft/calibration.jsonl".into());
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let mut requests = Vec::new();
    let mut docs = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let at = |what: &str| format!("{path}:{}: {what}", i + 1);
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| at(&e.to_string()))?;
        let field = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_str())
                .ok_or_else(|| at(&format!("no string `{k}`")))
        };
        let same = v
            .get("same")
            .and_then(|x| x.as_bool())
            .ok_or_else(|| at("no boolean `same`"))?;
        let (a, b) = (field("a")?, field("b")?);
        match field("kind")? {
            "request" => requests.push((tfidf_cosine(b, a), same)),
            "docs" => docs.push((version_delta(a, b), same)),
            other => return Err(at(&format!("unknown kind `{other}` (request, docs)")).into()),
        }
    }
    report("too_similar (request cosine)", &requests, 0.9);
    report("converged (δ of successive docs)", &docs, 0.75);
    Ok(())
}

fn report(name: &str, scored: &[(f64, bool)], paper: f64) {
    println!("{name}: {} pairs", scored.len());
    for label in [true, false] {
        let mut s: Vec<f64> = scored
            .iter()
            .filter(|x| x.1 == label)
            .map(|x| x.0)
            .collect();
        s.sort_by(f64::total_cmp);
        if s.is_empty() {
            continue;
        }
        println!(
            "  {:<9} n {:>2}  min {:.3}  median {:.3}  max {:.3}",
            if label { "alike" } else { "different" },
            s.len(),
            s[0],
            s[s.len() / 2],
            s[s.len() - 1]
        );
    }
    if let Some(cut) = calibrate_threshold(scored) {
        println!(
            "  calibrated {:.3}, shipped as {:.2} (balanced accuracy {:.3}); the paper's {paper} gives {:.3}",
            cut.threshold,
            cut.threshold,
            Cut::of((cut.threshold * 100.0).round() / 100.0, scored).balanced_accuracy,
            Cut::of(paper, scored).balanced_accuracy
        );
    }
}
