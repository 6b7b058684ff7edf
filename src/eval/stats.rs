//! Metrics of an eval, computed from its stored units: accuracy, pass@k,
//! first-answer vs final-answer flips with CL, CS and RSS, loop metrics
//! aggregated over items, review acceptance, cost distributions, and the
//! score per round and per token spent. Also the paired comparison of two
//! evals (`compare`). Pure functions of the stored data.

use std::collections::BTreeMap;

use serde::Serialize;

use super::store::{EvalRecord, UnitRecord};
use super::{ItemResult, ItemStatus};
use crate::summary::LoopReport;

/// Mean, median and 95th percentile.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Dist {
    pub mean: f64,
    pub p50: f64,
    pub p95: f64,
}

impl Dist {
    pub fn of(mut xs: Vec<f64>) -> Dist {
        if xs.is_empty() {
            return Dist::default();
        }
        xs.sort_by(f64::total_cmp);
        let rank = |q: f64| xs[((q * xs.len() as f64).ceil() as usize).clamp(1, xs.len()) - 1];
        Dist {
            mean: xs.iter().sum::<f64>() / xs.len() as f64,
            p50: rank(0.5),
            p95: rank(0.95),
        }
    }
}

/// First answer (the draft) against final answer, over units with both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Flips {
    pub units: usize,
    /// Right first, wrong at the end.
    pub negative: usize,
    /// Wrong first, right at the end.
    pub positive: usize,
    pub negative_rate: Option<f64>,
    pub positive_rate: Option<f64>,
}

/// Loop metrics averaged over the units whose run had the loop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LoopMeans {
    pub units: usize,
    pub rounds: f64,
    /// Over units where it is defined.
    pub overcorrection_risk_rate: Option<f64>,
    pub correction_success_rate: f64,
    pub improvement_slope: f64,
    pub over_budget_ratio: Option<f64>,
}

/// Acceptance of `human_review` edits at one depth.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ReviewMeans {
    pub depth: u32,
    pub proposed: u64,
    pub accepted: u64,
    pub acceptance_rate: Option<f64>,
}

/// The answer after `round` revisions (the last one where a run stopped
/// earlier), over all scored units.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RoundPoint {
    /// 0 = the first answer.
    pub round: usize,
    /// Units that made an answer at this round (others carry their last).
    pub reached: usize,
    pub mean_score: f64,
    pub accuracy: f64,
    /// The best answer so far (what `select: best` would return).
    pub best_so_far: f64,
    /// Where this round's answers drew several samples (CodeChain): the
    /// unbiased pass@k over them, averaged over the units that reached the
    /// round, for k = 1 and each power of two up to the fewest samples.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sampled_pass_at_k: BTreeMap<u32, f64>,
    /// Against round k − 1, over the units that reached round k: answers
    /// that went from right to wrong (negative) and wrong to right
    /// (positive). None at round 0. Where these outweigh each other round
    /// after round, refining costs more than it gains for this model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flips: Option<RoundFlips>,
    /// Units whose revision at this round a guarded loop rejected (their
    /// answer stayed the previous one, which is what the scores count).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rejected: usize,
}

/// Round k's answers against round k − 1's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct RoundFlips {
    pub negative: usize,
    pub positive: usize,
    /// Negative flips over the units that reached the round.
    pub negative_rate: f64,
    pub positive_rate: f64,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Mean best-so-far score when each unit may spend at most `tokens`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct TokenPoint {
    pub tokens: u64,
    pub mean_score: f64,
}

/// Verifier confidence against correctness, over every verdict of the
/// done units.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Separation {
    pub verdicts: usize,
    /// Verdicts whose judged answer was right.
    pub right: usize,
    pub mean_right: Option<f64>,
    pub mean_wrong: Option<f64>,
    /// Probability that a right answer gets a higher confidence than a
    /// wrong one (ties count half); none without both kinds.
    pub auroc: Option<f64>,
    /// Expected calibration error (10 bins): how far the confidence is
    /// from the share of right answers at that confidence.
    pub ece: Option<f64>,
}

impl Separation {
    pub fn of(points: &[(f64, bool)]) -> Option<Separation> {
        if points.is_empty() {
            return None;
        }
        let right: Vec<f64> = points.iter().filter(|p| p.1).map(|p| p.0).collect();
        let wrong: Vec<f64> = points.iter().filter(|p| !p.1).map(|p| p.0).collect();
        Some(Separation {
            verdicts: points.len(),
            right: right.len(),
            mean_right: mean(right.iter().copied()),
            mean_wrong: mean(wrong.iter().copied()),
            auroc: auroc(&right, &wrong),
            ece: crate::calibration::ece(points),
        })
    }
}

/// The area under the ROC curve of scores for positives against negatives:
/// the Mann–Whitney U statistic over all pairs, ties counted half (sorted
/// ranks, O(n log n)).
pub fn auroc(positive: &[f64], negative: &[f64]) -> Option<f64> {
    if positive.is_empty() || negative.is_empty() {
        return None;
    }
    let mut all: Vec<(f64, bool)> = positive
        .iter()
        .map(|&s| (s, true))
        .chain(negative.iter().map(|&s| (s, false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Average ranks (1-based) over runs of equal scores.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j < all.len() && all[j].0 == all[i].0 {
            j += 1;
        }
        let rank = (i + j + 1) as f64 / 2.0;
        rank_sum += rank * all[i..j].iter().filter(|p| p.1).count() as f64;
        i = j;
    }
    let (p, n) = (positive.len() as f64, negative.len() as f64);
    Some((rank_sum - p * (p + 1.0) / 2.0) / (p * n))
}

/// Revisions (every candidate after the first) that kept the previous
/// answer unchanged: RBD's insistency, where each re-evaluation follows a
/// detected bias.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Insistency {
    pub revisions: usize,
    pub kept: usize,
    pub rate: f64,
    /// Of the kept answers, the share that were right.
    pub kept_right: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Metrics {
    pub items: usize,
    pub units: usize,
    pub done: usize,
    pub failed: usize,
    pub pending: usize,
    /// Share of done units that passed.
    pub accuracy: Option<f64>,
    pub mean_score: Option<f64>,
    /// Unbiased pass@k over items (k up to the fewest done epochs of an item).
    pub pass_at_k: BTreeMap<u32, f64>,
    /// Accuracy of the first answers.
    pub first_accuracy: Option<f64>,
    pub flips: Flips,
    /// Confidence Level, Critique Score and Relative Self-correction Score
    /// (Yang et al.) from first/final correctness.
    pub cl: Option<f64>,
    pub cs: Option<f64>,
    pub rss: Option<f64>,
    pub loops: BTreeMap<String, LoopMeans>,
    pub reviews: Vec<ReviewMeans>,
    /// How well the verify nodes' confidence separates right from wrong
    /// answers (each verdict's target scored by the eval's scorer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confidence: Option<Separation>,
    /// The same for the calibrated confidence, over the verdicts of nodes
    /// that applied a calibration (`calibration:` on a verify node).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calibrated_confidence: Option<Separation>,
    /// How often a revision kept the answer it revised.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insistency: Option<Insistency>,
    pub tokens: Dist,
    pub calls: Dist,
    pub cost_usd: Dist,
    pub wall_ms: Dist,
    pub total_tokens: u64,
    /// Prompt tokens of `total_tokens` (the rest were generated).
    pub total_prompt_tokens: u64,
    /// Prompt tokens of `total_tokens` served from a cache (reused KV
    /// prefixes, a server's prompt cache) rather than computed.
    pub total_reused_tokens: u64,
    /// Calls the response cache served, over all units (part of the calls).
    pub total_cached_calls: u64,
    /// What the cached replies had cost when made (not in `total_tokens`).
    pub total_cached_tokens: u64,
    /// Per node, calls and cache hits (units that ran with a cache).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cache_by_node: Vec<NodeCache>,
    pub total_cost_usd: f64,
    pub per_round: Vec<RoundPoint>,
    /// Each output node's own answer (its latest), when the output reads
    /// several nodes: e.g. ReVISE's single chain, K = 2 vote, majority
    /// and weighted votes side by side, with the tokens each had cost.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub per_node: Vec<NodePoint>,
    pub score_vs_tokens: Vec<TokenPoint>,
}

/// One node's calls across units and how many the response cache served.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeCache {
    pub node: String,
    pub calls: u64,
    pub cached: u64,
    pub hit_rate: f64,
}

/// Calls and hits per node over `results`, nodes in first-seen order.
fn cache_by_node(results: &[&ItemResult]) -> Vec<NodeCache> {
    let mut tally = Vec::new();
    for n in results.iter().flat_map(|r| &r.calls_by_node) {
        super::NodeCalls::add(&mut tally, &n.node, n.calls, n.cached);
    }
    tally
        .into_iter()
        .map(|n| NodeCache {
            hit_rate: n.cached as f64 / n.calls.max(1) as f64,
            node: n.node,
            calls: n.calls,
            cached: n.cached,
        })
        .collect()
}

/// One output node's answers across the done units.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodePoint {
    pub node: String,
    /// Units where the node answered.
    pub units: usize,
    pub accuracy: f64,
    pub mean_score: f64,
    /// Mean tokens the run had spent when the node answered.
    pub tokens: f64,
}

/// The unbiased pass@k estimator `1 − C(n−c, k) / C(n, k)`, as a product
/// (no large binomials).
pub fn pass_at_k(n: u64, c: u64, k: u64) -> f64 {
    if n < k || k == 0 {
        return f64::NAN;
    }
    if n - c < k {
        return 1.0;
    }
    1.0 - ((n - c + 1)..=n)
        .map(|i| 1.0 - k as f64 / i as f64)
        .product::<f64>()
}

/// Mean unbiased pass@k over candidates that drew several samples, for
/// k = 1, 2, 4, ... up to the fewest samples of any of them.
fn sampled_pass_at_k(counts: impl Iterator<Item = super::SampleCount>) -> BTreeMap<u32, f64> {
    let counts: Vec<super::SampleCount> = counts.collect();
    let mut out = BTreeMap::new();
    let Some(fewest) = counts.iter().map(|c| c.n).min() else {
        return out;
    };
    let mut k = 1;
    while k <= fewest {
        let values = counts
            .iter()
            .map(|c| pass_at_k(u64::from(c.n), u64::from(c.passed), u64::from(k)));
        if let Some(v) = mean(values) {
            out.insert(k, v);
        }
        k *= 2;
    }
    out
}

/// Two-sided exact McNemar test: the p-value of `b` against `c`
/// discordant pairs under a fair coin.
pub fn mcnemar_p(b: u64, c: u64) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let ln_choose = |n: u64, k: u64| ln_factorial(n) - ln_factorial(k) - ln_factorial(n - k);
    let tail: f64 = (0..=b.min(c))
        .map(|i| (ln_choose(n, i) - n as f64 * std::f64::consts::LN_2).exp())
        .sum();
    (2.0 * tail).min(1.0)
}

fn ln_factorial(n: u64) -> f64 {
    (2..=n).map(|i| (i as f64).ln()).sum()
}

fn mean(xs: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = xs.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// Computes every metric of an eval's units.
pub fn compute(units: &[UnitRecord]) -> Metrics {
    let results: Vec<&ItemResult> = units.iter().filter_map(|u| u.result.as_ref()).collect();
    let done: Vec<&ItemResult> = results
        .iter()
        .copied()
        .filter(|r| r.status == ItemStatus::Done && r.score.is_some())
        .collect();
    let mut m = Metrics {
        items: units
            .iter()
            .map(|u| u.item.id.as_str())
            .collect::<std::collections::HashSet<_>>()
            .len(),
        units: units.len(),
        done: done.len(),
        failed: results
            .iter()
            .filter(|r| r.status == ItemStatus::Failed)
            .count(),
        pending: units.iter().filter(|u| u.result.is_none()).count(),
        ..Metrics::default()
    };
    let scores = || done.iter().filter_map(|r| r.score.as_ref());
    m.accuracy = mean(scores().map(|s| f64::from(u8::from(s.passed))));
    m.mean_score = mean(scores().map(|s| s.score));

    // Per item: (epochs done, passed, first right, both right, first wrong then right, with first).
    #[derive(Default)]
    struct PerItem {
        n: u64,
        c: u64,
        with_first: u64,
        first: u64,
        first_and_final: u64,
        not_first_final: u64,
    }
    let mut items: BTreeMap<&str, PerItem> = BTreeMap::new();
    for r in &done {
        let e = items.entry(r.item_id.as_str()).or_default();
        let fin = r.score.as_ref().is_some_and(|s| s.passed);
        e.n += 1;
        e.c += u64::from(fin);
        if let Some(first) = r.first() {
            e.with_first += 1;
            if first.passed {
                e.first += 1;
                e.first_and_final += u64::from(fin);
                if !fin {
                    m.flips.negative += 1;
                }
            } else {
                e.not_first_final += u64::from(fin);
                if fin {
                    m.flips.positive += 1;
                }
            }
            m.flips.units += 1;
        }
    }
    if let Some(min_n) = items.values().map(|e| e.n).min() {
        for k in [1u64, 2, 5, 10, 20, 50, 100]
            .into_iter()
            .filter(|k| *k <= min_n)
        {
            let v = mean(items.values().map(|e| pass_at_k(e.n, e.c, k))).unwrap_or(0.0);
            m.pass_at_k.insert(k as u32, v);
        }
    }
    if m.flips.units > 0 {
        let n = m.flips.units as f64;
        m.flips.negative_rate = Some(m.flips.negative as f64 / n);
        m.flips.positive_rate = Some(m.flips.positive as f64 / n);
        // Yang et al.'s sampling form, per item over its epochs.
        let per: Vec<(f64, f64, f64, f64)> = items
            .values()
            .filter(|e| e.with_first > 0)
            .map(|e| {
                let n = e.with_first as f64;
                (
                    e.first as f64 / n,
                    e.first_and_final as f64 / n,
                    (e.with_first - e.first) as f64 / n,
                    e.not_first_final as f64 / n,
                )
            })
            .collect();
        let sum = |f: fn(&(f64, f64, f64, f64)) -> f64| per.iter().map(f).sum::<f64>();
        let (a, ab, na, nab) = (sum(|p| p.0), sum(|p| p.1), sum(|p| p.2), sum(|p| p.3));
        m.cl = (a > 0.0).then(|| ab / a);
        m.cs = (na > 0.0).then(|| nab / na);
        let acc1 = a / per.len() as f64;
        let acc2 = (ab + nab) / per.len() as f64;
        m.first_accuracy = Some(acc1);
        m.rss =
            (acc1 > 0.0 && acc1 < 1.0).then(|| (acc2 - acc1 * acc1) / (2.0 * acc1 * (1.0 - acc1)));
    }

    // Loop metrics and reviews, from the stored summaries.
    let mut loops: BTreeMap<&str, Vec<&LoopReport>> = BTreeMap::new();
    let mut reviews: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    for r in &results {
        for l in &r.loops {
            loops.entry(&l.loop_id).or_default().push(l);
        }
        for rv in &r.reviews {
            let e = reviews.entry(rv.depth).or_default();
            e.0 += u64::from(rv.proposed);
            e.1 += u64::from(rv.accepted);
        }
    }
    for (id, ls) in loops {
        let f = |value: fn(&LoopReport) -> Option<f64>| ls.iter().filter_map(move |l| value(l));
        m.loops.insert(
            id.to_string(),
            LoopMeans {
                units: ls.len(),
                rounds: mean(f(|l| Some(f64::from(l.rounds)))).unwrap_or(0.0),
                overcorrection_risk_rate: mean(f(|l| l.overcorrection_risk_rate)),
                correction_success_rate: mean(f(|l| Some(l.correction_success_rate)))
                    .unwrap_or(0.0),
                improvement_slope: mean(f(|l| Some(l.improvement_slope))).unwrap_or(0.0),
                over_budget_ratio: mean(f(|l| l.over_budget_ratio)),
            },
        );
    }
    m.reviews = reviews
        .into_iter()
        .map(|(depth, (proposed, accepted))| ReviewMeans {
            depth,
            proposed,
            accepted,
            acceptance_rate: (proposed > 0).then(|| accepted as f64 / proposed as f64),
        })
        .collect();

    let verdicts: Vec<(f64, bool)> = done
        .iter()
        .flat_map(|r| r.verdicts.iter().map(|v| (v.confidence, v.passed)))
        .collect();
    m.confidence = Separation::of(&verdicts);
    let calibrated: Vec<(f64, bool)> = done
        .iter()
        .flat_map(|r| {
            r.verdicts
                .iter()
                .filter_map(|v| Some((v.calibrated?, v.passed)))
        })
        .collect();
    m.calibrated_confidence = Separation::of(&calibrated);
    let revisions: Vec<&super::Candidate> = done
        .iter()
        .flat_map(|r| r.candidates.iter().skip(1))
        .collect();
    if !revisions.is_empty() {
        let kept: Vec<bool> = revisions
            .iter()
            .filter(|c| c.kept)
            .map(|c| c.passed)
            .collect();
        m.insistency = Some(Insistency {
            revisions: revisions.len(),
            kept: kept.len(),
            rate: kept.len() as f64 / revisions.len() as f64,
            kept_right: mean(kept.iter().map(|&p| f64::from(u8::from(p)))),
        });
    }

    m.tokens = Dist::of(results.iter().map(|r| r.tokens as f64).collect());
    m.calls = Dist::of(results.iter().map(|r| r.calls as f64).collect());
    m.cost_usd = Dist::of(results.iter().map(|r| r.cost_usd).collect());
    m.wall_ms = Dist::of(results.iter().map(|r| r.wall_ms).collect());
    m.total_tokens = results.iter().map(|r| r.tokens).sum();
    m.total_prompt_tokens = results.iter().map(|r| r.prompt_tokens).sum();
    m.total_reused_tokens = results.iter().map(|r| r.reused_tokens).sum();
    m.total_cached_calls = results.iter().map(|r| r.cached_calls).sum();
    m.total_cached_tokens = results.iter().map(|r| r.cached_tokens).sum();
    m.cache_by_node = cache_by_node(&results);
    m.total_cost_usd = results.iter().map(|r| r.cost_usd).sum();

    // Score per round: the answer after k revisions, and the best so far.
    // A revision a guarded loop rejected leaves the previous answer
    // standing: rounds count the answers the loop kept.
    let with: Vec<&ItemResult> = done
        .iter()
        .copied()
        .filter(|r| !r.candidates.is_empty())
        .collect();
    let standing: Vec<Vec<&super::Candidate>> = with.iter().map(|r| standing(r)).collect();
    let rounds = standing.iter().map(Vec::len).max().unwrap_or(0);
    let right = |c: &super::Candidate| f64::from(u8::from(c.passed));
    for k in 0..rounds {
        fn at<'a>(s: &[&'a super::Candidate], k: usize) -> &'a super::Candidate {
            s[k.min(s.len() - 1)]
        }
        let best = |s: &Vec<&super::Candidate>| {
            s[..=k.min(s.len() - 1)]
                .iter()
                .map(|c| c.score)
                .fold(0.0, f64::max)
        };
        let reached: Vec<&Vec<&super::Candidate>> =
            standing.iter().filter(|s| s.len() > k).collect();
        let flips = (k > 0 && !reached.is_empty()).then(|| {
            let n = reached.len() as f64;
            let (negative, positive) = reached.iter().fold((0, 0), |(neg, pos), s| {
                match (s[k - 1].passed, s[k].passed) {
                    (true, false) => (neg + 1, pos),
                    (false, true) => (neg, pos + 1),
                    _ => (neg, pos),
                }
            });
            RoundFlips {
                negative,
                positive,
                negative_rate: negative as f64 / n,
                positive_rate: positive as f64 / n,
            }
        });
        m.per_round.push(RoundPoint {
            round: k,
            reached: reached.len(),
            mean_score: mean(standing.iter().map(|s| at(s, k).score)).unwrap_or(0.0),
            accuracy: mean(standing.iter().map(|s| right(at(s, k)))).unwrap_or(0.0),
            best_so_far: mean(standing.iter().map(best)).unwrap_or(0.0),
            // Like the accuracy, an item that stopped earlier keeps its
            // last round's samples (CodeChain's pass@1 per round).
            sampled_pass_at_k: sampled_pass_at_k(standing.iter().filter_map(|s| at(s, k).samples)),
            flips,
            rejected: with
                .iter()
                .filter(|r| r.candidates.get(k).is_some_and(|c| c.rejected))
                .count(),
        });
    }
    // Per output node: each unit's latest answer of that node.
    let mut nodes: Vec<(String, Vec<&super::Candidate>)> = Vec::new();
    for r in &with {
        let mut latest: Vec<(&str, &super::Candidate)> = Vec::new();
        for c in r.candidates.iter().filter(|c| !c.rejected) {
            match latest.iter_mut().find(|(n, _)| *n == c.node) {
                Some(slot) => slot.1 = c,
                None => latest.push((&c.node, c)),
            }
        }
        for (node, c) in latest {
            match nodes.iter_mut().find(|(n, _)| n == node) {
                Some((_, cs)) => cs.push(c),
                None => nodes.push((node.to_string(), vec![c])),
            }
        }
    }
    if nodes.len() > 1 {
        m.per_node = nodes
            .into_iter()
            .map(|(node, cs)| NodePoint {
                units: cs.len(),
                accuracy: mean(cs.iter().map(|c| f64::from(u8::from(c.passed)))).unwrap_or(0.0),
                mean_score: mean(cs.iter().map(|c| c.score)).unwrap_or(0.0),
                tokens: mean(cs.iter().map(|c| c.tokens as f64)).unwrap_or(0.0),
                node,
            })
            .collect();
    }
    // Score vs tokens: at up to 20 budgets (quantiles of where answers were
    // made), the mean best score among answers made within the budget.
    let mut marks: Vec<u64> = with
        .iter()
        .flat_map(|r| {
            r.candidates
                .iter()
                .filter(|c| !c.rejected)
                .map(|c| c.tokens)
        })
        .collect();
    marks.sort_unstable();
    marks.dedup();
    if !marks.is_empty() {
        let picks = 20.min(marks.len());
        let mut budgets: Vec<u64> = (1..=picks)
            .map(|i| marks[(i * marks.len()).div_ceil(picks) - 1])
            .collect();
        budgets.dedup();
        for t in budgets {
            let s = mean(with.iter().map(|r| {
                r.candidates
                    .iter()
                    .filter(|c| c.tokens <= t && !c.rejected)
                    .map(|c| c.score)
                    .fold(0.0, f64::max)
            }))
            .unwrap_or(0.0);
            m.score_vs_tokens.push(TokenPoint {
                tokens: t,
                mean_score: s,
            });
        }
    }
    m
}

/// The answer standing after each candidate: the candidate itself, or the
/// last one before it that a guarded loop did not reject.
fn standing(r: &ItemResult) -> Vec<&super::Candidate> {
    let mut out: Vec<&super::Candidate> = Vec::with_capacity(r.candidates.len());
    for c in &r.candidates {
        let prev = out.last().copied();
        out.push(match prev {
            Some(p) if c.rejected => p,
            _ => c,
        });
    }
    out
}

/// Item-level changes from eval A to eval B on the same units.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Comparison {
    /// Units scored in both.
    pub paired: usize,
    pub accuracy_a: Option<f64>,
    pub accuracy_b: Option<f64>,
    /// Right in A, wrong in B.
    pub negative: usize,
    /// Wrong in A, right in B.
    pub positive: usize,
    pub negative_flip_rate: Option<f64>,
    pub positive_flip_rate: Option<f64>,
    /// Right in both (consistency, e.g. RBD's: right on the unbiased set
    /// and on its biased counterpart).
    pub both_right: usize,
    pub consistency: Option<f64>,
    /// Exact McNemar p-value of the discordant pairs.
    pub p_value: f64,
    /// Units scored in only one of the two.
    pub unpaired: usize,
    /// Units whose id (and epoch) is in both but whose item differs
    /// (inputs or reference answer): two questions under one id, not
    /// paired under [`Pairing::Content`], paired under [`Pairing::Id`].
    pub mismatched: usize,
    pub flipped: Vec<Flip>,
}

/// Which units of two evals are the same question.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pairing {
    /// The same id and epoch, and the same item (inputs and reference
    /// answer): row numbers of two unrelated files are never paired.
    #[default]
    Content,
    /// The same id and epoch, whatever the items hold: twins by design
    /// (RBD's biased and unbiased sets, DRAFT's docs before and after).
    Id,
}

impl Pairing {
    /// How every table, matrix and page pairs two stored evals: by id when
    /// they ran on the same data set (their inputs differ by design, a
    /// method's own `--input tau=0`), else only where the items are the
    /// same.
    pub fn between(a: &EvalRecord, b: &EvalRecord) -> Pairing {
        let source = |r: &EvalRecord| r.meta.pointer("/data/source").cloned();
        match (source(a), source(b)) {
            (Some(x), Some(y)) if x == y => Pairing::Id,
            _ => Pairing::Content,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Flip {
    pub item: String,
    pub epoch: u32,
    /// `negative` (right → wrong) or `positive`.
    pub direction: &'static str,
    pub score_a: f64,
    pub score_b: f64,
}

pub fn compare(a: &[UnitRecord], b: &[UnitRecord], pairing: Pairing) -> Comparison {
    type Scored = BTreeMap<(String, u32), (bool, f64, u64)>;
    let scored = |units: &[UnitRecord]| -> Scored {
        units
            .iter()
            .filter_map(|u| Some((u, u.result.as_ref()?)))
            .filter(|(_, r)| r.status == ItemStatus::Done)
            .filter_map(|(u, r)| {
                r.score.as_ref().map(|s| {
                    let content = crate::eval::digest::item(&u.item);
                    ((r.item_id.clone(), r.epoch), (s.passed, s.score, content))
                })
            })
            .collect()
    };
    let (sa, sb) = (scored(a), scored(b));
    let mut c = Comparison::default();
    let (mut right_a, mut right_b) = (0, 0);
    for (key, (pa, score_a, content_a)) in &sa {
        let Some((pb, score_b, content_b)) = sb.get(key) else {
            c.unpaired += 1;
            continue;
        };
        if content_a != content_b {
            c.mismatched += 1;
            if pairing == Pairing::Content {
                continue;
            }
        }
        c.paired += 1;
        right_a += usize::from(*pa);
        right_b += usize::from(*pb);
        c.both_right += usize::from(*pa && *pb);
        let direction = match (pa, pb) {
            (true, false) => {
                c.negative += 1;
                "negative"
            }
            (false, true) => {
                c.positive += 1;
                "positive"
            }
            _ => continue,
        };
        c.flipped.push(Flip {
            item: key.0.clone(),
            epoch: key.1,
            direction,
            score_a: *score_a,
            score_b: *score_b,
        });
    }
    c.unpaired += sb.keys().filter(|k| !sa.contains_key(*k)).count();
    if c.paired > 0 {
        let n = c.paired as f64;
        c.accuracy_a = Some(right_a as f64 / n);
        c.accuracy_b = Some(right_b as f64 / n);
        c.negative_flip_rate = Some(c.negative as f64 / n);
        c.positive_flip_rate = Some(c.positive as f64 / n);
        c.consistency = Some(c.both_right as f64 / n);
    }
    c.p_value = mcnemar_p(c.negative as u64, c.positive as u64);
    c
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn evals_of_one_data_set_pair_by_id_and_others_by_content() {
        let record = |meta: serde_json::Value| EvalRecord {
            id: "e".into(),
            name: "e".into(),
            workflow: "w".into(),
            created_at: 0,
            meta,
        };
        let gsm8k = |fixed: serde_json::Value| {
            record(serde_json::json!({"data": {"source": "gsm8k", "inputs": fixed}}))
        };
        let single = gsm8k(serde_json::json!({}));
        let revise = gsm8k(serde_json::json!({"tau": 0.0}));
        assert_eq!(Pairing::between(&single, &revise), Pairing::Id);
        let file = record(serde_json::json!({"data": {"source": "x.csv"}}));
        assert_eq!(Pairing::between(&single, &file), Pairing::Content);
        let unknown = record(serde_json::json!({}));
        assert_eq!(Pairing::between(&unknown, &unknown), Pairing::Content);
    }

    #[test]
    fn auroc_counts_pairs_and_ties() {
        // Perfect, inverted, all tied, and one tie among four pairs.
        assert_eq!(auroc(&[0.9, 0.8], &[0.1, 0.2]), Some(1.0));
        assert_eq!(auroc(&[0.1], &[0.9, 0.8]), Some(0.0));
        assert_eq!(auroc(&[0.5, 0.5], &[0.5]), Some(0.5));
        assert_eq!(auroc(&[0.9, 0.5], &[0.5, 0.1]), Some(0.875));
        assert_eq!(auroc(&[], &[0.5]), None);
        let s = Separation::of(&[(0.9, true), (0.3, false), (0.6, false)]).unwrap();
        assert_eq!((s.verdicts, s.right), (3, 1));
        assert_eq!(s.mean_right, Some(0.9));
        assert!((s.mean_wrong.unwrap() - 0.45).abs() < 1e-12);
        assert_eq!(s.auroc, Some(1.0));
        assert_eq!(Separation::of(&[]), None);
    }
    use crate::eval::data::Item;
    use crate::eval::score::Score;
    use crate::eval::{Candidate, ItemResult, ItemStatus};

    pub(crate) fn unit(
        id: &str,
        epoch: u32,
        first: Option<bool>,
        last: bool,
        tokens: &[u64],
    ) -> UnitRecord {
        let mut candidates: Vec<Candidate> = Vec::new();
        if let Some(f) = first {
            candidates.push(Candidate {
                node: "draft".into(),
                round: 0,
                tokens: tokens[0],
                score: f64::from(u8::from(f)),
                passed: f,
                samples: None,
                kept: false,
                rejected: false,
            });
            for (i, t) in tokens.iter().enumerate().skip(1) {
                candidates.push(Candidate {
                    node: "revise".into(),
                    round: i as u32,
                    tokens: *t,
                    score: f64::from(u8::from(last)),
                    passed: last,
                    samples: None,
                    kept: false,
                    rejected: false,
                });
            }
        }
        UnitRecord {
            item: Item {
                id: id.into(),
                inputs: Default::default(),
                answer: None,
                hidden: Default::default(),
            },
            epoch,
            status: "done".into(),
            result: Some(ItemResult {
                format: crate::eval::RESULT_FORMAT,
                item_id: id.into(),
                epoch,
                status: ItemStatus::Done,
                score: Some(Score {
                    score: f64::from(u8::from(last)),
                    passed: last,
                    feedback: String::new(),
                }),
                output: Some(String::new()),
                candidates,
                verdicts: vec![],
                run_status: None,
                tokens: tokens.last().copied().unwrap_or(0),
                prompt_tokens: 0,
                reused_tokens: 0,
                cached_calls: 0,
                cached_tokens: 0,
                calls_by_node: vec![],
                calls: 1,
                cost_usd: 0.0,
                wall_ms: 1.0,
                error: None,
                summary: None,
                loops: vec![],
                reviews: vec![],
                events: vec![],
                encoded: None,
                worker: String::new(),
                finished_at: 0,
            }),
        }
    }

    /// Units whose candidates are given as (passed, rejected) per round;
    /// the final answer is the last standing one.
    fn rounds_unit(id: &str, answers: &[(bool, bool)]) -> UnitRecord {
        let mut u = unit(id, 0, Some(answers[0].0), false, &vec![10; answers.len()]);
        let r = u.result.as_mut().unwrap();
        for (c, &(passed, rejected)) in r.candidates.iter_mut().zip(answers) {
            c.passed = passed;
            c.score = f64::from(u8::from(passed));
            c.rejected = rejected;
        }
        let last = standing(r).last().unwrap().passed;
        r.score.as_mut().unwrap().passed = last;
        u
    }

    #[test]
    fn per_round_flips_count_against_the_previous_round_and_rejections_keep_the_answer() {
        let units = [
            // Right, then a revision turns it wrong, then right again.
            rounds_unit("a", &[(true, false), (false, false), (true, false)]),
            // Wrong, fixed in round 1, stops.
            rounds_unit("b", &[(false, false), (true, false)]),
            // Right; the wrong revision was rejected: still right.
            rounds_unit("c", &[(true, false), (false, true), (true, false)]),
        ];
        let m = compute(&units);
        assert_eq!(m.per_round.len(), 3);
        assert_eq!(m.per_round[0].flips, None);
        let r1 = &m.per_round[1];
        assert_eq!(r1.reached, 3);
        assert_eq!(r1.rejected, 1);
        let f1 = r1.flips.unwrap();
        assert_eq!((f1.negative, f1.positive), (1, 1));
        assert!((f1.negative_rate - 1.0 / 3.0).abs() < 1e-12);
        // c counts as right in round 1: its rejected revision does not stand.
        assert!((r1.accuracy - 2.0 / 3.0).abs() < 1e-12);
        let r2 = &m.per_round[2];
        assert_eq!(r2.reached, 2);
        let f2 = r2.flips.unwrap();
        assert_eq!((f2.negative, f2.positive), (0, 1));
        assert_eq!(r2.accuracy, 1.0);
        // First vs final: no right answer was lost.
        assert_eq!((m.flips.negative, m.flips.positive), (0, 1));
    }

    #[test]
    fn pass_at_k_matches_the_closed_form() {
        // n = 5, c = 2, k = 2: 1 − C(3,2)/C(5,2) = 1 − 3/10.
        assert!((pass_at_k(5, 2, 2) - 0.7).abs() < 1e-12);
        assert_eq!(pass_at_k(5, 0, 1), 0.0);
        assert_eq!(pass_at_k(5, 4, 2), 1.0);
        assert!((pass_at_k(10, 3, 1) - 0.3).abs() < 1e-12);
        assert!(pass_at_k(1, 1, 2).is_nan());
    }

    #[test]
    fn sampled_pass_at_k_averages_the_unbiased_estimate_per_candidate() {
        use crate::eval::SampleCount;
        let counts = [
            SampleCount { n: 4, passed: 1 },
            SampleCount { n: 4, passed: 0 },
            SampleCount { n: 8, passed: 8 },
        ];
        let m = sampled_pass_at_k(counts.into_iter());
        // pass@1 = mean of c/n; k stops at the fewest samples (4).
        assert!((m[&1] - (0.25 + 0.0 + 1.0) / 3.0).abs() < 1e-12);
        assert!((m[&4] - (1.0 + 0.0 + 1.0) / 3.0).abs() < 1e-12);
        assert_eq!(m.keys().copied().collect::<Vec<_>>(), [1, 2, 4]);
        assert!(sampled_pass_at_k(std::iter::empty()).is_empty());
    }

    #[test]
    fn per_round_pass_at_k_keeps_the_samples_of_items_that_stopped() {
        use crate::eval::SampleCount;
        // a revises once (1/4 → 4/4); b stops at round 0 with 2/4.
        let mut a = unit("a", 0, Some(false), true, &[10, 30]);
        let mut b = unit("b", 0, Some(true), true, &[10]);
        let set = |u: &mut UnitRecord, counts: &[u32]| {
            let r = u.result.as_mut().unwrap();
            for (c, passed) in r.candidates.iter_mut().zip(counts) {
                c.samples = Some(SampleCount {
                    n: 4,
                    passed: *passed,
                });
            }
        };
        set(&mut a, &[1, 4]);
        set(&mut b, &[2]);
        let m = compute(&[a, b]);
        assert_eq!(m.per_round[0].sampled_pass_at_k[&1], (0.25 + 0.5) / 2.0);
        assert_eq!(m.per_round[1].reached, 1);
        assert_eq!(m.per_round[1].sampled_pass_at_k[&1], (1.0 + 0.5) / 2.0);
    }

    #[test]
    fn each_output_node_is_scored_on_its_latest_answer() {
        // a: draft right, revised twice, last revision wrong; b: draft only.
        let a = unit("a", 0, Some(true), false, &[10, 20, 30]);
        let b = unit("b", 0, Some(false), false, &[12]);
        let m = compute(&[a, b]);
        let got: Vec<(&str, usize, f64, f64)> = m
            .per_node
            .iter()
            .map(|p| (p.node.as_str(), p.units, p.accuracy, p.tokens))
            .collect();
        assert_eq!(got, [("draft", 2, 0.5, 11.0), ("revise", 1, 0.0, 30.0)]);
        // One output node: nothing to set side by side.
        assert!(
            compute(&[unit("c", 0, Some(true), true, &[5])])
                .per_node
                .is_empty()
        );
    }

    #[test]
    fn mcnemar_is_exact_binomial() {
        // 0 vs 6 discordant pairs: 2 · 0.5^6.
        assert!((mcnemar_p(0, 6) - 2.0 / 64.0).abs() < 1e-12);
        assert_eq!(mcnemar_p(3, 3), 1.0);
        assert_eq!(mcnemar_p(0, 0), 1.0);
        // 1 vs 9: 2 · (1 + 10) / 1024.
        assert!((mcnemar_p(1, 9) - 22.0 / 1024.0).abs() < 1e-12);
    }

    #[test]
    fn first_and_final_answers_give_flips_cl_cs_and_rss() {
        // Four items: right→right, right→wrong, wrong→right, wrong→wrong.
        let units = vec![
            unit("a", 0, Some(true), true, &[10, 30]),
            unit("b", 0, Some(true), false, &[10, 30]),
            unit("c", 0, Some(false), true, &[10, 30]),
            unit("d", 0, Some(false), false, &[10]),
        ];
        let m = compute(&units);
        assert_eq!(
            (m.flips.negative, m.flips.positive, m.flips.units),
            (1, 1, 4)
        );
        assert_eq!(m.accuracy, Some(0.5));
        assert_eq!(m.first_accuracy, Some(0.5));
        assert_eq!((m.cl, m.cs), (Some(0.5), Some(0.5)));
        // Acc1 = Acc2 = 0.5: RSS = (0.5 − 0.25) / (2 · 0.25) = 0.5.
        assert_eq!(m.rss, Some(0.5));
        assert_eq!(m.per_round.len(), 2);
        assert_eq!(m.per_round[0].accuracy, 0.5);
        assert_eq!(m.per_round[1].reached, 3);
        // b's revision is wrong but its draft was right: the best so far stays 0.75.
        assert_eq!(m.per_round[1].best_so_far, 0.75);
        assert_eq!(
            m.score_vs_tokens.first().map(|p| (p.tokens, p.mean_score)),
            Some((10, 0.5))
        );
        assert_eq!(
            m.score_vs_tokens.last().map(|p| (p.tokens, p.mean_score)),
            Some((30, 0.75))
        );
        assert_eq!(m.pass_at_k.get(&1), Some(&0.5));
    }

    #[test]
    fn epochs_give_pass_at_k_per_item() {
        let mut units = Vec::new();
        for e in 0..5 {
            units.push(unit("x", e, None, e < 2, &[1]));
            units.push(unit("y", e, None, false, &[1]));
        }
        let m = compute(&units);
        assert!((m.pass_at_k[&2] - 0.35).abs() < 1e-12, "{:?}", m.pass_at_k);
        assert!((m.pass_at_k[&5] - 0.5).abs() < 1e-12);
        assert!(!m.pass_at_k.contains_key(&10));
        assert_eq!(m.items, 2);
    }

    #[test]
    fn comparison_pairs_units_and_lists_flips() {
        let a = vec![
            unit("a", 0, None, true, &[1]),
            unit("b", 0, None, true, &[1]),
            unit("c", 0, None, false, &[1]),
        ];
        let b = vec![
            unit("a", 0, None, true, &[1]),
            unit("b", 0, None, false, &[1]),
            unit("d", 0, None, true, &[1]),
        ];
        let c = compare(&a, &b, Pairing::Content);
        assert_eq!((c.paired, c.unpaired, c.negative, c.positive), (2, 2, 1, 0));
        assert_eq!(c.negative_flip_rate, Some(0.5));
        assert_eq!((c.both_right, c.consistency), (1, Some(0.5)));
        assert_eq!(c.flipped[0].item, "b");
        assert_eq!(c.p_value, 1.0);
    }
}
