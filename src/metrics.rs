//! Run summaries and the revision metrics of refinement loops.
//!
//! Definitions follow `shared/design/methods.md` §6 (AdvGameBench), mapped to
//! loops: a *round* is one pass through a loop body; the round's
//! *configuration* is the artifact its verify node judged (or, with no
//! verify in the round, the latest artifact at its end); a *win* is a passing
//! verdict in the round; a *change* in round t ≥ 2 is a configuration that
//! differs from round t−1's.
//!
//! - over-correction risk rate  ORR = Σ_{t≥2} chg_t / (n − 1)
//! - correction success rate     CSR = Σ chg_t·win_t / Σ chg_t (0 without changes)
//! - improvement slope           β   = OLS slope of win_t on t = 0..n−1
//! - over-budget ratio           OBR = (1/n) Σ 1(tokens_t > round_tokens)

use crate::event::Event;
use crate::summary::{LoopReport, ReviewReport, RoundRecord, StopReason, UsageTotals};

impl LoopReport {
    pub fn compute(
        loop_id: &str,
        stop_reason: StopReason,
        rounds: &[RoundRecord],
        round_tokens: Option<u64>,
    ) -> Self {
        let n = rounds.len();
        let chg: Vec<bool> = (1..n)
            .map(|t| rounds[t].config != rounds[t - 1].config)
            .collect();
        let changes = chg.iter().filter(|c| **c).count();
        let guarded = rounds.iter().any(|r| r.accepted.is_some());
        let count = |accepted: bool| {
            rounds
                .iter()
                .filter(|r| r.accepted == Some(accepted))
                .count() as u32
        };
        let changed_wins = chg
            .iter()
            .zip(rounds.get(1..).unwrap_or_default())
            .filter(|(c, r)| **c && r.win)
            .count();
        let wins: Vec<f64> = rounds
            .iter()
            .map(|r| if r.win { 1.0 } else { 0.0 })
            .collect();
        LoopReport {
            loop_id: loop_id.to_string(),
            rounds: n as u32,
            stop_reason,
            changes: changes as u32,
            wins: rounds.iter().filter(|r| r.win).count() as u32,
            overcorrection_risk_rate: (n >= 2).then(|| changes as f64 / (n - 1) as f64),
            correction_success_rate: if changes == 0 {
                0.0
            } else {
                changed_wins as f64 / changes as f64
            },
            improvement_slope: ols_slope(&wins),
            over_budget_ratio: round_tokens
                .filter(|_| n > 0)
                .map(|b| rounds.iter().filter(|r| r.tokens > b).count() as f64 / n as f64),
            accepted: guarded.then(|| count(true)),
            rejected: guarded.then(|| count(false)),
            per_round: rounds.to_vec(),
        }
    }
}

/// Least-squares slope of `y` against its index 0..n−1 (0 for n < 2).
pub fn ols_slope(y: &[f64]) -> f64 {
    let n = y.len();
    if n < 2 {
        return 0.0;
    }
    let mean_x = (n - 1) as f64 / 2.0;
    let mean_y = y.iter().sum::<f64>() / n as f64;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (i, yi) in y.iter().enumerate() {
        let dx = i as f64 - mean_x;
        sxy += dx * (yi - mean_y);
        sxx += dx * dx;
    }
    sxy / sxx
}

/// Folds events into usage totals; the engine feeds it every event it emits,
/// so the summary and the event log can never disagree.
#[derive(Debug, Default)]
pub struct Tally {
    pub usage: UsageTotals,
    pub loops: Vec<LoopReport>,
    pub reviews: Vec<ReviewReport>,
}

impl Tally {
    pub fn observe(&mut self, event: &Event) {
        if let Event::Review {
            node,
            depth,
            proposed,
            accepted,
            ..
        } = event
        {
            self.reviews.push(ReviewReport {
                node: node.clone(),
                depth: *depth,
                proposed: *proposed,
                accepted: *accepted,
                acceptance_rate: (*proposed > 0).then(|| *accepted as f64 / *proposed as f64),
            });
        }
        if let Event::ModelCall(c) = event {
            self.usage.calls += 1;
            self.usage.prompt_tokens += c.prompt_tokens;
            self.usage.completion_tokens += c.completion_tokens;
            self.usage.total_tokens += c.prompt_tokens + c.completion_tokens;
            self.usage.reused_tokens += c.reused_tokens;
            if c.cached {
                self.usage.cached_calls += 1;
                self.usage.cached_tokens += c.cached_tokens;
            }
            self.usage.cost_usd += c.cost_usd;
            self.usage.estimated |= c.usage_estimated;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rounds(spec: &[(u64, bool, u64)]) -> Vec<RoundRecord> {
        spec.iter()
            .enumerate()
            .map(|(i, &(config, win, tokens))| RoundRecord {
                score: None,
                accepted: None,
                revision_score: None,
                round: i as u32 + 1,
                config: Some(config),
                win,
                tokens,
            })
            .collect()
    }

    #[test]
    fn hand_worked_loop() {
        // Configs A, B, B, C; wins 0, 1, 0, 1; tokens 50, 120, 80, 130; B = 100.
        // Changes at t=2 (A→B) and t=4 (B→C): ORR = 2/3.
        // Changed rounds won: t=2 yes, t=4 yes: CSR = 1.
        // Slope of [0,1,0,1] on [0,1,2,3]: mean_x 1.5, mean_y .5,
        // sxy = (-1.5)(-.5)+(-.5)(.5)+(.5)(-.5)+(1.5)(.5) = 1.0, sxx = 5 → 0.2.
        // OBR: rounds over 100 tokens: 2 of 4 = 0.5.
        let r = LoopReport::compute(
            "refine",
            StopReason::MaxRounds,
            &rounds(&[
                (1, false, 50),
                (2, true, 120),
                (2, false, 80),
                (3, true, 130),
            ]),
            Some(100),
        );
        assert_eq!(r.rounds, 4);
        assert_eq!(r.changes, 2);
        assert_eq!(r.wins, 2);
        assert!((r.overcorrection_risk_rate.unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(r.correction_success_rate, 1.0);
        assert!((r.improvement_slope - 0.2).abs() < 1e-12);
        assert_eq!(r.over_budget_ratio, Some(0.5));
    }

    #[test]
    fn a_change_that_loses_lowers_csr() {
        // A(win) → B(lose) → B(lose): one change, not successful; slope of [1,0,0] = -0.5.
        let r = LoopReport::compute(
            "l",
            StopReason::MaxRounds,
            &rounds(&[(1, true, 0), (2, false, 0), (2, false, 0)]),
            None,
        );
        assert_eq!(r.changes, 1);
        assert_eq!(r.overcorrection_risk_rate, Some(0.5));
        assert_eq!(r.correction_success_rate, 0.0);
        assert!((r.improvement_slope + 0.5).abs() < 1e-12);
        assert_eq!(r.over_budget_ratio, None);
    }

    #[test]
    fn no_rounds_is_all_zero() {
        let r = LoopReport::compute("l", StopReason::RunStopped, &[], Some(5));
        assert_eq!((r.rounds, r.changes, r.wins), (0, 0, 0));
        assert_eq!(r.over_budget_ratio, None);
    }

    #[test]
    fn single_round_has_no_rates() {
        let r = LoopReport::compute("l", StopReason::Exited, &rounds(&[(1, true, 10)]), Some(5));
        assert_eq!(r.overcorrection_risk_rate, None);
        assert_eq!(r.correction_success_rate, 0.0);
        assert_eq!(r.improvement_slope, 0.0);
        assert_eq!(r.over_budget_ratio, Some(1.0));
    }
}
