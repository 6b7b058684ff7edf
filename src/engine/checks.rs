//! The bodies of the kinds that judge or choose among outputs: verify
//! (rule checks and model judges), select and vote.

use minijinja::Value;
use serde_json::json;

use super::NodeError;
use super::nodes::{Task, object, parse_structured};
use super::state::{NodeOutput, Typed, Verdict};
use crate::backend::Completion;
use crate::event::Event;
use crate::workflow::{Check, Order, SelectSpec, VerifySpec, VoteFrom, VoteSpec};

impl Task {
    pub(super) async fn verify(&self, v: &VerifySpec) -> Result<NodeOutput, NodeError> {
        let t = &self.shared.wf.templates;
        let scope = self.scope(None);
        let target = t.render(&v.target, &scope)?;
        let mut results = Vec::with_capacity(v.checks.len());
        let mut tokens = 0;
        let mut confidence_source = None;
        for check in &v.checks {
            let (score, detail) = match check {
                Check::Exact {
                    expected,
                    ignore_case,
                } => {
                    let expected = t.render(expected, &scope)?;
                    let (a, b) = (target.trim(), expected.trim());
                    let ok = if *ignore_case {
                        a.to_lowercase() == b.to_lowercase()
                    } else {
                        a == b
                    };
                    (
                        ok as u8 as f64,
                        if ok {
                            "matches".to_string()
                        } else {
                            format!("expected {b:?}, got {a:?}")
                        },
                    )
                }
                Check::Contains {
                    expected,
                    ignore_case,
                } => {
                    let needle = t.render(expected, &scope)?;
                    let needle = needle.trim();
                    let ok = crate::answer::mentions(&target, needle, *ignore_case);
                    (
                        ok as u8 as f64,
                        if ok {
                            format!("mentions {needle:?}")
                        } else {
                            format!("does not mention {needle:?}, which it must")
                        },
                    )
                }
                Check::Lines { expected } => {
                    let want_text = t.render(expected, &scope)?;
                    let Ok(want) = want_text.trim().parse::<usize>() else {
                        return Err(NodeError::Data(format!(
                            "lines check of `{}`: {want_text:?} is not a number of lines",
                            self.id()
                        )));
                    };
                    let got = target.lines().filter(|l| !l.trim().is_empty()).count();
                    (
                        (got == want) as u8 as f64,
                        if got == want {
                            format!("{got} lines")
                        } else {
                            format!(
                                "has {got} non-empty lines; it must have exactly {want}, each on a line of its own"
                            )
                        },
                    )
                }
                Check::Regex(re) => {
                    let ok = re.is_match(&target);
                    (
                        ok as u8 as f64,
                        if ok {
                            "matches".into()
                        } else {
                            format!("does not match /{}/", re.as_str())
                        },
                    )
                }
                Check::Numeric {
                    expected,
                    tolerance,
                } => {
                    let expected_text = t.render(expected, &scope)?;
                    match (
                        crate::answer::number(&target),
                        crate::answer::number(&expected_text),
                    ) {
                        (Some(got), Some(want)) => {
                            let ok = crate::answer::numbers_match(got, want, *tolerance);
                            (
                                ok as u8 as f64,
                                if ok {
                                    format!("{got} is within {tolerance} of {want}")
                                } else {
                                    format!("expected {want}, got {got}")
                                },
                            )
                        }
                        (None, _) => (0.0, "no number in the answer".to_string()),
                        (_, None) => {
                            return Err(NodeError::Data(format!(
                                "numeric check of `{}`: the expected value {expected_text:?} holds no number",
                                self.id()
                            )));
                        }
                    }
                }
                Check::JsonSchema(schema) => match parse_structured(&target, schema) {
                    Ok(_) => (1.0, "valid JSON for the schema".to_string()),
                    Err(e) => (0.0, e),
                },
                Check::Judge(call) => {
                    let scope = self.scope(Some(("target", Value::from(target.clone()))));
                    let messages = self.messages(call, &scope)?;
                    let completion = self.call(call, messages, 0).await?;
                    tokens += completion.usage.total();
                    let (confidence, source) = judge_confidence(&completion);
                    confidence_source = Some(source);
                    let text = completion.choices[0]
                        .text
                        .trim()
                        .chars()
                        .take(200)
                        .collect::<String>();
                    (
                        confidence,
                        format!("judge confidence {confidence:.3} ({source}): {text}"),
                    )
                }
            };
            results.push((check.name(), score, detail));
        }
        let passed = results.iter().all(|(_, score, _)| *score >= 0.5);
        let raw_score = if results.is_empty() {
            0.0
        } else {
            results.iter().map(|(_, s, _)| s).sum::<f64>() / results.len() as f64
        };
        // A calibration rescales the confidence; the checks still decide
        // whether it passed.
        let score = v
            .calibration
            .as_ref()
            .map_or(raw_score, |c| c.apply(raw_score));
        let feedback: Vec<String> = results
            .iter()
            .filter(|(_, score, _)| *score < 0.5)
            .map(|(name, _, detail)| format!("{name}: {detail}"))
            .collect();
        self.shared.emit(Event::Verdict {
            node: self.id().to_string(),
            round: self.round,
            passed,
            score,
            raw_score: v.calibration.is_some().then_some(raw_score),
            confidence_source,
        });
        let checks = results
            .into_iter()
            .map(|(name, score, detail)| {
                object([
                    ("check", name.into()),
                    ("passed", (score >= 0.5).into()),
                    ("score", score.into()),
                    ("detail", detail.into()),
                ])
            })
            .collect::<Vec<_>>();
        let mut out = object([
            ("passed", passed.into()),
            ("score", score.into()),
            ("checks", checks.into()),
            ("feedback", feedback.join("\n").into()),
            ("target", target.into()),
            ("round", self.round.into()),
        ]);
        if v.calibration.is_some() {
            out["raw_score"] = raw_score.into();
        }
        Ok(NodeOutput::new(out, tokens).with_typed(Typed::Verdict(Verdict { passed, score })))
    }

    pub(super) fn select(&self, s: &SelectSpec) -> Result<NodeOutput, NodeError> {
        let samples = self.samples_of(s.from)?;
        let mut best: Option<(usize, f64)> = None;
        let mut scores = Vec::with_capacity(samples.len());
        for (i, sample) in samples.iter().enumerate() {
            let bound = Value::from_serialize(json!({ "text": sample, "index": i }));
            let score = self
                .shared
                .wf
                .templates
                .number(&s.by, &self.scope(Some(("sample", bound))))?;
            scores.push(score);
            let better = match best {
                None => true,
                Some((_, b)) => match s.order {
                    Order::Max => score > b,
                    Order::Min => score < b,
                },
            };
            if better {
                best = Some((i, score));
            }
        }
        let (index, score) = best.ok_or_else(|| {
            NodeError::Data(format!("`{}` has no samples to select from", self.id()))
        })?;
        Ok(NodeOutput::new(
            json!({ "text": samples[index], "index": index, "score": score, "scores": scores, "round": self.round }),
            0,
        ))
    }

    pub(super) fn vote(&self, v: &VoteSpec) -> Result<NodeOutput, NodeError> {
        let samples = match &v.from {
            VoteFrom::Node(from) => self.samples_of(*from)?,
            VoteFrom::Items(expr) => self
                .eval_list(expr, "items")?
                .into_iter()
                .map(|i| match i {
                    serde_json::Value::String(_) | serde_json::Value::Null => i,
                    other => other.to_string().into(),
                })
                .collect(),
        };
        // (answer, total weight, votes), in order of first appearance.
        let mut counts: Vec<(String, f64, u32)> = Vec::new();
        let mut weights = Vec::with_capacity(samples.len());
        for (i, s) in samples.iter().enumerate() {
            let text = s.as_str().unwrap_or_default();
            let answer = match &v.extract {
                Some(rule) => rule.read(text),
                None => Some(text.trim().to_string()),
            };
            let weight = match &v.weight {
                Some(expr) => {
                    let bound = Value::from_serialize(json!({ "text": s, "index": i }));
                    let w = self
                        .shared
                        .wf
                        .templates
                        .number(expr, &self.scope(Some(("sample", bound))))?;
                    if !w.is_finite() || w < 0.0 {
                        return Err(NodeError::Data(format!(
                            "`{}`: the weight of sample {i} is {w}; weights must be finite and not negative",
                            self.id()
                        )));
                    }
                    w
                }
                None => 1.0,
            };
            weights.push(weight);
            if let Some(a) = answer {
                match counts.iter_mut().find(|(k, _, _)| *k == a) {
                    Some((_, w, n)) => {
                        *w += weight;
                        *n += 1;
                    }
                    None => counts.push((a, weight, 1)),
                }
            }
        }
        // Ties go to the answer seen first.
        let winner = counts
            .iter()
            .fold(None::<&(String, f64, u32)>, |best, c| match best {
                Some(b) if b.1 >= c.1 => Some(b),
                _ => Some(c),
            });
        // No sample held an answer (a model that never wrote one): the vote
        // is empty rather than a failed run, so a scorer counts it wrong and
        // the rest of the run is kept.
        let (answer, weight, _) = winner.cloned().unwrap_or_default();
        let total: f64 = weights.iter().sum();
        let tally: serde_json::Map<String, serde_json::Value> = counts
            .iter()
            .map(|(k, w, n)| {
                (
                    k.clone(),
                    if v.weight.is_some() {
                        json!(w)
                    } else {
                        json!(n)
                    },
                )
            })
            .collect();
        let agreement = if total > 0.0 { weight / total } else { 0.0 };
        Ok(NodeOutput::new(
            json!({
                "text": answer,
                "votes": tally,
                "agreement": agreement,
                "weights": weights,
                "method": if v.weight.is_some() { "weighted" } else { "majority" },
                "round": self.round,
            }),
            0,
        ))
    }
}

/// A judge's confidence in "yes": p(Yes)/(p(Yes)+p(No)) from the first
/// token's top logprobs when present, else parsed from the text.
pub(crate) fn judge_confidence(c: &Completion) -> (f64, &'static str) {
    let choice = &c.choices[0];
    if let Some(first) = choice.logprobs.as_ref().and_then(|l| l.first()) {
        let mut candidates = first.top.clone();
        candidates.push((first.token.clone(), first.logprob));
        let p = |word: &str| -> f64 {
            let mut seen = std::collections::HashSet::new();
            candidates
                .iter()
                .filter(|(t, _)| t.trim().eq_ignore_ascii_case(word) && seen.insert(t.clone()))
                .map(|(_, lp)| (*lp as f64).exp())
                .sum()
        };
        let (yes, no) = (p("yes"), p("no"));
        if yes + no > 0.0 {
            return (yes / (yes + no), "logprobs");
        }
    }
    let text = choice.text.trim();
    if let Some(v) = crate::answer::json(text) {
        let verdict = v
            .get("verdict")
            .or_else(|| v.get("answer"))
            .and_then(|x| x.as_str())
            .and_then(crate::answer::yes_no);
        let confidence = v
            .get("confidence")
            .and_then(|x| x.as_f64())
            .map(|c| c.clamp(0.0, 1.0));
        match (verdict, confidence) {
            (Some(true), Some(c)) => return (c, "verbalized"),
            (Some(false), Some(c)) => return (1.0 - c, "verbalized"),
            (Some(yes), None) => return (f64::from(u8::from(yes)), "verbalized"),
            (None, _) => {}
        }
    }
    let yes = crate::answer::yes_no(text) == Some(true);
    (f64::from(u8::from(yes)), "verbalized")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Choice, FinishReason, TokenLogprob, Usage};

    fn completion(text: &str, logprobs: Option<Vec<TokenLogprob>>) -> Completion {
        Completion {
            choices: vec![Choice {
                text: text.into(),
                finish: FinishReason::Stop,
                logprobs,
            }],
            usage: Usage::default(),
            usage_estimated: false,
        }
    }

    #[test]
    fn confidence_from_logprobs() {
        let lp = TokenLogprob {
            token: "Yes".into(),
            logprob: (0.6f32).ln(),
            top: vec![("Yes".into(), (0.6f32).ln()), (" No".into(), (0.2f32).ln())],
        };
        let (c, src) = judge_confidence(&completion("Yes", Some(vec![lp])));
        assert_eq!(src, "logprobs");
        assert!((c - 0.75).abs() < 1e-6, "{c}");
    }

    #[test]
    fn confidence_verbalized() {
        assert_eq!(
            judge_confidence(&completion(
                "{\"verdict\": \"no\", \"confidence\": 0.9}",
                None
            ))
            .0,
            1.0 - 0.9
        );
        assert_eq!(
            judge_confidence(&completion("Yes, it is right.", None)),
            (1.0, "verbalized")
        );
        assert_eq!(
            judge_confidence(&completion("Nope", None)),
            (0.0, "verbalized")
        );
    }
}
