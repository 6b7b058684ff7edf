//! Budgets: limits on tokens, calls, cost and wall time, enforced before each
//! model call.
//!
//! A call first *reserves* its worst case (prompt tokens + `n` × max tokens,
//! and the matching cost) in every scope it belongs to (workflow, enclosing
//! loops, node). The reservation fails, and the call is not made, when any
//! scope would cross a limit. After the call the reservation is *settled* with
//! the actual usage.
//!
//! **Invariant:** with concurrent calls, spent + reserved never exceeds a
//! limit at reservation time, so spending can only exceed a limit by the
//! difference between a call's estimate and its actual use (an under-counted
//! prompt). That difference is reported as `overrun`.

use std::sync::Mutex;
use std::time::Duration;

// tokio's clock, so that wall-time limits follow paused time in tests (and
// the real clock otherwise).
use tokio::time::Instant;

use serde::Serialize;

/// Limits for one scope. `None` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Limits {
    /// Prompt plus completion tokens.
    pub tokens: Option<u64>,
    pub calls: Option<u64>,
    pub cost_usd: Option<f64>,
    #[serde(serialize_with = "ser_duration_ms", rename = "wall_time_ms")]
    pub wall_time: Option<Duration>,
}

fn ser_duration_ms<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&(d.as_millis() as u64)),
        None => s.serialize_none(),
    }
}

impl Limits {
    pub fn is_unlimited(&self) -> bool {
        *self == Limits::default()
    }

    /// Overrides the limits that `other` sets.
    /// Reads `LIMIT=VALUE` items (`tokens=N`, `calls=N`, `cost_usd=X`,
    /// `wall_time=30s`); a message names `source` (a flag or a key) and
    /// the item when one is wrong.
    pub fn parse(items: &[String], source: &str) -> Result<Limits, String> {
        let mut l = Limits::default();
        for item in items {
            let (k, v) = item
                .split_once('=')
                .ok_or_else(|| format!("{source} {item:?}: expected LIMIT=VALUE"))?;
            let count = || match v.parse::<u64>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(format!("{source} {k}={v}: expected a whole number above 0")),
            };
            match k {
                "tokens" => l.tokens = Some(count()?),
                "calls" => l.calls = Some(count()?),
                "cost_usd" => match v.parse::<f64>() {
                    Ok(x) if x > 0.0 && x.is_finite() => l.cost_usd = Some(x),
                    _ => {
                        return Err(format!(
                            "{source} cost_usd={v}: expected a number of dollars above 0"
                        ));
                    }
                },
                "wall_time" => {
                    let d = crate::units::parse_duration(v)
                        .filter(|d| !d.is_zero())
                        .ok_or_else(|| {
                            format!(
                                "{source} wall_time={v}: expected a positive duration (500ms, 30s, 2m)"
                            )
                        })?;
                    l.wall_time = Some(d);
                }
                other => {
                    return Err(format!(
                        "{source} {other}: unknown limit (tokens, calls, cost_usd, wall_time)"
                    ));
                }
            }
        }
        Ok(l)
    }

    pub fn overlay(&mut self, other: &Limits) {
        self.tokens = other.tokens.or(self.tokens);
        self.calls = other.calls.or(self.calls);
        self.cost_usd = other.cost_usd.or(self.cost_usd);
        self.wall_time = other.wall_time.or(self.wall_time);
    }
}

/// Which limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKind {
    Tokens,
    Calls,
    CostUsd,
    WallTime,
}

impl std::fmt::Display for LimitKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LimitKind::Tokens => "tokens",
            LimitKind::Calls => "calls",
            LimitKind::CostUsd => "cost_usd",
            LimitKind::WallTime => "wall_time",
        })
    }
}

/// Where a limit applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "scope", content = "id", rename_all = "snake_case")]
pub enum Scope {
    Workflow,
    Loop(String),
    Node(String),
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Workflow => f.write_str("workflow"),
            Scope::Loop(id) => write!(f, "loop `{id}`"),
            Scope::Node(id) => write!(f, "node `{id}`"),
        }
    }
}

/// What was spent (or reserved).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Spend {
    pub tokens: u64,
    pub calls: u64,
    pub cost_usd: f64,
}

impl std::ops::AddAssign for Spend {
    fn add_assign(&mut self, o: Spend) {
        self.tokens += o.tokens;
        self.calls += o.calls;
        self.cost_usd += o.cost_usd;
    }
}

impl std::ops::SubAssign for Spend {
    fn sub_assign(&mut self, o: Spend) {
        self.tokens = self.tokens.saturating_sub(o.tokens);
        self.calls = self.calls.saturating_sub(o.calls);
        self.cost_usd = (self.cost_usd - o.cost_usd).max(0.0);
    }
}

/// A call refused because it would cross a limit.
#[derive(Debug, Clone, PartialEq, Serialize, thiserror::Error)]
#[error("{scope} budget exhausted: {limit} would reach {would_use} of {max}")]
pub struct Exhausted {
    pub scope: Scope,
    pub limit: LimitKind,
    /// Spent plus reserved plus this call's worst case (ms for wall time).
    pub would_use: f64,
    pub max: f64,
}

/// A limit crossed 80% of its value (emitted once per scope and limit).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Warning {
    pub scope: Scope,
    pub limit: LimitKind,
    pub used: f64,
    pub max: f64,
}

/// The fraction of a limit at which a warning is emitted.
pub const WARN_FRACTION: f64 = 0.8;

/// A live reservation; settle it with [`Meter::settle`].
#[derive(Debug)]
#[must_use = "a reservation must be settled"]
pub struct Reservation {
    scopes: Vec<usize>,
    amount: Spend,
}

struct ScopeState {
    scope: Scope,
    limits: Limits,
    spent: Spend,
    reserved: Spend,
    started: Option<Instant>,
    warned: [bool; 4],
}

/// Tracks spending in every scope of a run. Cheap to share (`Arc<Meter>`).
pub struct Meter {
    scopes: Mutex<Vec<ScopeState>>,
}

/// The state of one scope, for the run summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScopeReport {
    #[serde(flatten)]
    pub scope: Scope,
    pub limits: Limits,
    pub spent: Spend,
    /// How far spending went past a limit (estimate error), if at all.
    pub overrun: Spend,
}

impl Meter {
    /// Creates a meter. Scope 0 is the workflow; its clock starts now.
    pub fn new(scopes: Vec<(Scope, Limits)>) -> Meter {
        let now = Instant::now();
        let states = scopes
            .into_iter()
            .enumerate()
            .map(|(i, (scope, limits))| ScopeState {
                scope,
                limits,
                spent: Spend::default(),
                reserved: Spend::default(),
                started: (i == 0).then_some(now),
                warned: [false; 4],
            })
            .collect();
        Meter {
            scopes: Mutex::new(states),
        }
    }

    /// Reserves a call's worst case in the given scopes, or says which limit
    /// it would cross. Scopes with no limits are skipped cheaply.
    pub fn reserve(&self, scopes: &[usize], worst: Spend) -> Result<Reservation, Exhausted> {
        let mut states = self.scopes.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        for &i in scopes {
            let s = &mut states[i];
            let started = *s.started.get_or_insert(now);
            let l = s.limits;
            let used = |spent: u64, reserved: u64, add: u64| (spent + reserved + add) as f64;
            if let Some(max) = l.tokens {
                let would = used(s.spent.tokens, s.reserved.tokens, worst.tokens);
                if would > max as f64 {
                    return Err(exhausted(&s.scope, LimitKind::Tokens, would, max as f64));
                }
            }
            if let Some(max) = l.calls {
                let would = used(s.spent.calls, s.reserved.calls, worst.calls);
                if would > max as f64 {
                    return Err(exhausted(&s.scope, LimitKind::Calls, would, max as f64));
                }
            }
            if let Some(max) = l.cost_usd {
                let would = s.spent.cost_usd + s.reserved.cost_usd + worst.cost_usd;
                if would > max + 1e-12 {
                    return Err(exhausted(&s.scope, LimitKind::CostUsd, would, max));
                }
            }
            if let Some(max) = l.wall_time {
                let elapsed = now.duration_since(started);
                if elapsed >= max {
                    return Err(exhausted(
                        &s.scope,
                        LimitKind::WallTime,
                        elapsed.as_millis() as f64,
                        max.as_millis() as f64,
                    ));
                }
            }
        }
        for &i in scopes {
            states[i].reserved += worst;
        }
        Ok(Reservation {
            scopes: scopes.to_vec(),
            amount: worst,
        })
    }

    /// The wall time left in the tightest of the given scopes.
    pub fn time_left(&self, scopes: &[usize]) -> Option<(Duration, usize)> {
        let states = self.scopes.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::cell::OnceCell::new();
        scopes
            .iter()
            .filter_map(|&i| {
                let s = &states[i];
                let max = s.limits.wall_time?;
                let now = *now.get_or_init(Instant::now);
                let elapsed = now.duration_since(s.started.unwrap_or(now));
                Some((max.saturating_sub(elapsed), i))
            })
            .min_by_key(|(left, _)| *left)
    }

    /// The error for running out of wall time in scope `i`.
    pub fn out_of_time(&self, i: usize) -> Exhausted {
        let states = self.scopes.lock().unwrap_or_else(|e| e.into_inner());
        let s = &states[i];
        let max = s.limits.wall_time.unwrap_or_default().as_millis() as f64;
        let used = s.started.map_or(max, |t| t.elapsed().as_millis() as f64);
        exhausted(&s.scope, LimitKind::WallTime, used, max)
    }

    /// Replaces a reservation by what the call actually used, and returns the
    /// warnings this crossing of 80% of a limit produced.
    pub fn settle(&self, reservation: Reservation, actual: Spend) -> Vec<Warning> {
        let mut states = self.scopes.lock().unwrap_or_else(|e| e.into_inner());
        let mut warnings = Vec::new();
        for &i in &reservation.scopes {
            let s = &mut states[i];
            s.reserved -= reservation.amount;
            s.spent += actual;
            let l = s.limits;
            let checks = [
                (
                    LimitKind::Tokens,
                    s.spent.tokens as f64,
                    l.tokens.map(|m| m as f64),
                ),
                (
                    LimitKind::Calls,
                    s.spent.calls as f64,
                    l.calls.map(|m| m as f64),
                ),
                (LimitKind::CostUsd, s.spent.cost_usd, l.cost_usd),
            ];
            for (k, (kind, used, max)) in checks.into_iter().enumerate() {
                if let Some(max) = max {
                    if !s.warned[k] && used >= WARN_FRACTION * max {
                        s.warned[k] = true;
                        warnings.push(Warning {
                            scope: s.scope.clone(),
                            limit: kind,
                            used,
                            max,
                        });
                    }
                }
            }
        }
        warnings
    }

    /// Releases a reservation for a call that was never made or that failed
    /// before using anything.
    pub fn release(&self, reservation: Reservation) {
        let _ = self.settle(reservation, Spend::default());
    }

    /// Every scope that has limits or spending, for the summary.
    pub fn report(&self) -> Vec<ScopeReport> {
        let states = self.scopes.lock().unwrap_or_else(|e| e.into_inner());
        states
            .iter()
            .enumerate()
            .filter(|(i, s)| *i == 0 || !s.limits.is_unlimited())
            .map(|(_, s)| {
                let over =
                    |spent: u64, max: Option<u64>| max.map_or(0, |m| spent.saturating_sub(m));
                ScopeReport {
                    scope: s.scope.clone(),
                    limits: s.limits,
                    spent: s.spent,
                    overrun: Spend {
                        tokens: over(s.spent.tokens, s.limits.tokens),
                        calls: over(s.spent.calls, s.limits.calls),
                        cost_usd: s
                            .limits
                            .cost_usd
                            .map_or(0.0, |m| (s.spent.cost_usd - m).max(0.0)),
                    },
                }
            })
            .collect()
    }
}

fn exhausted(scope: &Scope, limit: LimitKind, would_use: f64, max: f64) -> Exhausted {
    Exhausted {
        scope: scope.clone(),
        limit,
        would_use,
        max,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meter(tokens: u64) -> Meter {
        Meter::new(vec![
            (
                Scope::Workflow,
                Limits {
                    tokens: Some(tokens),
                    calls: Some(3),
                    ..Limits::default()
                },
            ),
            (Scope::Node("a".into()), Limits::default()),
        ])
    }

    fn spend(tokens: u64) -> Spend {
        Spend {
            tokens,
            calls: 1,
            cost_usd: 0.0,
        }
    }

    #[test]
    fn a_call_that_would_cross_a_limit_is_refused_before_it_is_made() {
        let m = meter(100);
        let r = m.reserve(&[0, 1], spend(60)).unwrap();
        // A concurrent call sees the reservation.
        let err = m.reserve(&[0, 1], spend(50)).unwrap_err();
        assert_eq!(err.limit, LimitKind::Tokens);
        assert_eq!(err.would_use, 110.0);
        // Settling with less than the worst case frees room.
        m.settle(r, spend(30));
        let r2 = m.reserve(&[0, 1], spend(50)).unwrap();
        m.settle(r2, spend(50));
        let rep = m.report();
        assert_eq!(rep[0].spent.tokens, 80);
        assert_eq!(rep[0].overrun.tokens, 0);
    }

    #[test]
    fn call_limits_count_calls() {
        let m = meter(1000);
        for _ in 0..3 {
            let r = m.reserve(&[0], spend(1)).unwrap();
            m.settle(r, spend(1));
        }
        assert_eq!(
            m.reserve(&[0], spend(1)).unwrap_err().limit,
            LimitKind::Calls
        );
    }

    #[test]
    fn warnings_fire_once_at_eighty_percent() {
        let m = meter(100);
        let r = m.reserve(&[0], spend(70)).unwrap();
        assert!(m.settle(r, spend(70)).is_empty());
        let r = m.reserve(&[0], spend(10)).unwrap();
        let w = m.settle(r, spend(10));
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].limit, LimitKind::Tokens);
        let r = m.reserve(&[0], spend(10)).unwrap();
        assert!(
            m.settle(r, spend(10))
                .iter()
                .all(|w| w.limit != LimitKind::Tokens)
        );
    }

    #[test]
    fn overrun_reports_estimate_errors() {
        let m = meter(100);
        let r = m.reserve(&[0], spend(90)).unwrap();
        m.settle(r, spend(104));
        assert_eq!(m.report()[0].overrun.tokens, 4);
    }

    #[test]
    fn wall_time_is_checked_before_a_call() {
        let m = Meter::new(vec![(
            Scope::Workflow,
            Limits {
                wall_time: Some(Duration::ZERO),
                ..Limits::default()
            },
        )]);
        assert_eq!(
            m.reserve(&[0], spend(1)).unwrap_err().limit,
            LimitKind::WallTime
        );
    }

    #[test]
    fn cost_limits_use_dollars() {
        let m = Meter::new(vec![(
            Scope::Workflow,
            Limits {
                cost_usd: Some(0.01),
                ..Limits::default()
            },
        )]);
        let big = Spend {
            tokens: 0,
            calls: 1,
            cost_usd: 0.02,
        };
        assert_eq!(m.reserve(&[0], big).unwrap_err().limit, LimitKind::CostUsd);
    }
}
