//! Calibration of a verify node's confidence: a monotone map from the raw
//! score (a judge's logprob or verbalized confidence, a share of checks) to
//! the probability that the judged answer is right, fitted on labelled
//! verdicts (`redraft eval --calibrate NODE`) and applied at run time
//! (`calibration: FILE` on the verify node).
//!
//! Two methods: Platt scaling (a logistic curve, two parameters, fine with
//! a few dozen verdicts) and isotonic regression (pool adjacent violators:
//! any non-decreasing step shape, needs more data). Both are monotone, so
//! they never reorder answers: AUROC is unchanged by Platt and can only
//! lose ties under isotonic; what they fix is the scale (ECE).
//!
//! **Invariants:** `apply` is defined for every input (NaN maps to the
//! lowest value), returns a value in [0, 1], and is non-decreasing; `fit`
//! refuses data it cannot calibrate against (no verdict, or only right or
//! only wrong answers) instead of returning a constant.

use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    #[error("cannot calibrate `{node}`: {reason}")]
    Data { node: String, reason: String },
    #[error("calibration file {path}: {message}")]
    File { path: String, message: String },
}

/// How to fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Platt,
    Isotonic,
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Method::Platt => "platt",
            Method::Isotonic => "isotonic",
        })
    }
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Method, String> {
        match s {
            "platt" => Ok(Method::Platt),
            "isotonic" => Ok(Method::Isotonic),
            other => Err(format!(
                "unknown calibration method {other:?}: platt or isotonic"
            )),
        }
    }
}

/// The fitted map.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "lowercase", deny_unknown_fields)]
pub enum Map {
    /// `1 / (1 + exp(-(a·x + b)))`.
    Platt { a: f64, b: f64 },
    /// Knots `[confidence, probability]`, both non-decreasing; constant
    /// before the first and after the last, linear between.
    Isotonic { knots: Vec<[f64; 2]> },
}

/// A calibration of one verify node, as stored beside the workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    /// The verify node it was fitted for.
    pub node: String,
    pub map: Map,
    /// Verdicts it was fitted on, and how many of them judged a right answer.
    pub fitted_on: usize,
    pub right: usize,
    /// Reliability on the held-out verdicts, before and after, when the fit
    /// had some (`redraft eval --calibrate` splits the items in two).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_out: Option<HeldOut>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeldOut {
    pub verdicts: usize,
    pub ece_before: f64,
    pub ece_after: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auroc_before: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auroc_after: Option<f64>,
}

impl Calibration {
    /// Fits `method` on `(confidence, right)` points.
    pub fn fit(
        node: &str,
        method: Method,
        points: &[(f64, bool)],
    ) -> Result<Calibration, CalibrationError> {
        let bad = |reason: String| CalibrationError::Data {
            node: node.to_string(),
            reason,
        };
        let points: Vec<(f64, bool)> = points
            .iter()
            .copied()
            .filter(|(x, _)| x.is_finite())
            .collect();
        let right = points.iter().filter(|p| p.1).count();
        if points.is_empty() {
            return Err(bad("no verdict of it on a scored item".into()));
        }
        if right == 0 || right == points.len() {
            return Err(bad(format!(
                "all {} of its verdicts judged {} answers: a calibration needs both right and wrong ones",
                points.len(),
                if right == 0 { "wrong" } else { "right" }
            )));
        }
        let map = match method {
            Method::Platt => platt(&points),
            Method::Isotonic => isotonic(&points),
        };
        Ok(Calibration {
            node: node.to_string(),
            map,
            fitted_on: points.len(),
            right,
            held_out: None,
        })
    }

    /// The calibrated confidence of a raw score.
    pub fn apply(&self, x: f64) -> f64 {
        let p = match &self.map {
            Map::Platt { a, b } => sigmoid(a * x + b),
            Map::Isotonic { knots } => interpolate(knots, x),
        };
        if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) }
    }

    pub fn method(&self) -> Method {
        match self.map {
            Map::Platt { .. } => Method::Platt,
            Map::Isotonic { .. } => Method::Isotonic,
        }
    }

    /// Reads and checks a stored calibration.
    pub fn load(path: &Path) -> Result<Calibration, CalibrationError> {
        let err = |message: String| CalibrationError::File {
            path: path.display().to_string(),
            message,
        };
        let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
        if meta.len() > 1 << 20 {
            return Err(err(format!("{} bytes: over the 1 MiB limit", meta.len())));
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let c: Calibration = serde_saphyr::from_str(&text).map_err(|e| err(e.to_string()))?;
        c.check().map_err(err)?;
        Ok(c)
    }

    /// A map that `apply` can use: finite parameters, knots that agree in
    /// number, sorted, with y in [0, 1].
    fn check(&self) -> Result<(), String> {
        match &self.map {
            Map::Platt { a, b } if !(a.is_finite() && b.is_finite()) => {
                Err("platt parameters must be finite numbers".into())
            }
            Map::Platt { .. } => Ok(()),
            Map::Isotonic { knots } => {
                if knots.is_empty() {
                    return Err("isotonic needs at least one knot".into());
                }
                if knots.iter().flatten().any(|v| !v.is_finite()) {
                    return Err("isotonic knots must be finite numbers".into());
                }
                if knots
                    .windows(2)
                    .any(|w| w[1][0] < w[0][0] || w[1][1] < w[0][1])
                {
                    return Err(
                        "isotonic knots must be non-decreasing in confidence and probability"
                            .into(),
                    );
                }
                if knots.iter().any(|k| !(0.0..=1.0).contains(&k[1])) {
                    return Err("isotonic probabilities must be between 0 and 1".into());
                }
                Ok(())
            }
        }
    }

    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self).expect("a calibration serialises")
    }

    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        crate::file::write_atomic(path, self.to_yaml())
    }
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// `ln(1 + e^z)` without overflow.
fn log1p_exp(z: f64) -> f64 {
    if z > 0.0 {
        z + (-z).exp().ln_1p()
    } else {
        z.exp().ln_1p()
    }
}

/// Platt scaling with his smoothed targets (`(N₊+1)/(N₊+2)` for right,
/// `1/(N₋+2)` for wrong, so that a separable set does not send the slope
/// to infinity), fitted by Newton's method with a backtracking line search
/// on the cross-entropy (Lin, Lin and Weng's formulation).
fn platt(points: &[(f64, bool)]) -> Map {
    let pos = points.iter().filter(|p| p.1).count() as f64;
    let neg = points.len() as f64 - pos;
    let (hi, lo) = ((pos + 1.0) / (pos + 2.0), 1.0 / (neg + 2.0));
    let data: Vec<(f64, f64)> = points
        .iter()
        .map(|&(x, right)| (x, if right { hi } else { lo }))
        .collect();
    let loss = |a: f64, b: f64| -> f64 {
        data.iter()
            .map(|&(x, t)| {
                let z = a * x + b;
                log1p_exp(z) - t * z
            })
            .sum()
    };
    let (mut a, mut b) = (0.0, ((pos + 1.0) / (neg + 1.0)).ln());
    let mut f = loss(a, b);
    for _ in 0..100 {
        let (mut ga, mut gb) = (0.0, 0.0);
        let (mut haa, mut hab, mut hbb) = (1e-12, 0.0, 1e-12);
        for &(x, t) in &data {
            let p = sigmoid(a * x + b);
            let d = p - t;
            ga += d * x;
            gb += d;
            let w = p * (1.0 - p);
            haa += w * x * x;
            hab += w * x;
            hbb += w;
        }
        if ga.abs() < 1e-9 && gb.abs() < 1e-9 {
            break;
        }
        let det = haa * hbb - hab * hab;
        if det.abs() < 1e-300 {
            break;
        }
        let da = -(hbb * ga - hab * gb) / det;
        let db = -(haa * gb - hab * ga) / det;
        let slope = ga * da + gb * db;
        let mut step = 1.0;
        let mut moved = false;
        while step > 1e-10 {
            let (na, nb) = (a + step * da, b + step * db);
            let nf = loss(na, nb);
            if nf <= f + 1e-4 * step * slope {
                (a, b, f) = (na, nb, nf);
                moved = true;
                break;
            }
            step /= 2.0;
        }
        if !moved {
            break;
        }
    }
    Map::Platt { a, b }
}

/// Isotonic regression by pool adjacent violators over the points sorted
/// by confidence (equal confidences pooled first), as knots at each
/// block's lowest and highest confidence.
fn isotonic(points: &[(f64, bool)]) -> Map {
    let mut sorted: Vec<(f64, f64)> = points
        .iter()
        .map(|&(x, r)| (x, f64::from(u8::from(r))))
        .collect();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Blocks: (sum of y, weight, lowest x, highest x).
    let mut blocks: Vec<(f64, f64, f64, f64)> = Vec::new();
    for (x, y) in sorted {
        match blocks.last_mut() {
            Some(last) if last.3 == x => {
                last.0 += y;
                last.1 += 1.0;
            }
            _ => blocks.push((y, 1.0, x, x)),
        }
        while blocks.len() > 1 {
            let n = blocks.len();
            let (cur, prev) = (blocks[n - 1], blocks[n - 2]);
            if prev.0 / prev.1 <= cur.0 / cur.1 {
                break;
            }
            blocks[n - 2] = (prev.0 + cur.0, prev.1 + cur.1, prev.2, cur.3);
            blocks.pop();
        }
    }
    let mut knots = Vec::new();
    for (sum, w, lo, hi) in blocks {
        let y = sum / w;
        knots.push([lo, y]);
        if hi > lo {
            knots.push([hi, y]);
        }
    }
    Map::Isotonic { knots }
}

fn interpolate(knots: &[[f64; 2]], x: f64) -> f64 {
    let (Some(first), Some(last)) = (knots.first(), knots.last()) else {
        return 0.0;
    };
    if x.is_nan() || x <= first[0] {
        return first[1];
    }
    if x >= last[0] {
        return last[1];
    }
    // The first knot above x; x lies in [knots[i-1], knots[i]).
    let i = knots.partition_point(|k| k[0] <= x);
    let ([xa, ya], [xb, yb]) = (knots[i - 1], knots[i]);
    if xb == xa {
        yb
    } else {
        ya + (yb - ya) * (x - xa) / (xb - xa)
    }
}

/// One bin of a reliability diagram.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Bin {
    pub lo: f64,
    pub hi: f64,
    pub verdicts: usize,
    pub mean_confidence: f64,
    /// Share of the bin's verdicts that judged a right answer.
    pub accuracy: f64,
}

/// Reliability over `bins` equal-width confidence bins (empty bins left out).
pub fn reliability(points: &[(f64, bool)], bins: usize) -> Vec<Bin> {
    let bins = bins.max(1);
    let mut acc = vec![(0usize, 0.0f64, 0usize); bins];
    for &(c, right) in points.iter().filter(|p| p.0.is_finite()) {
        let i = ((c.clamp(0.0, 1.0) * bins as f64) as usize).min(bins - 1);
        acc[i].0 += 1;
        acc[i].1 += c;
        acc[i].2 += usize::from(right);
    }
    acc.into_iter()
        .enumerate()
        .filter(|(_, a)| a.0 > 0)
        .map(|(i, (n, sum, right))| Bin {
            lo: i as f64 / bins as f64,
            hi: (i + 1) as f64 / bins as f64,
            verdicts: n,
            mean_confidence: sum / n as f64,
            accuracy: right as f64 / n as f64,
        })
        .collect()
}

/// Expected calibration error over 10 equal-width bins: the verdict-weighted
/// mean gap between confidence and accuracy. None without verdicts.
pub fn ece(points: &[(f64, bool)]) -> Option<f64> {
    let bins = reliability(points, 10);
    let n: usize = bins.iter().map(|b| b.verdicts).sum();
    (n > 0).then(|| {
        bins.iter()
            .map(|b| b.verdicts as f64 * (b.accuracy - b.mean_confidence).abs())
            .sum::<f64>()
            / n as f64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn platt_reproduces_the_smoothed_frequencies_at_two_confidences() {
        // At 0: 1 of 4 right; at 1: 3 of 4. With 4 right and 4 wrong,
        // Platt's targets are 5/6 and 1/6, so the smoothed frequencies are
        // (5/6 + 3/6) / 4 = 1/3 and 2/3, and two parameters fit two points
        // exactly.
        let mut pts = vec![(0.0, true), (0.0, false), (0.0, false), (0.0, false)];
        pts.extend([(1.0, true), (1.0, true), (1.0, true), (1.0, false)]);
        let c = Calibration::fit("check", Method::Platt, &pts).unwrap();
        assert!(close(c.apply(0.0), 1.0 / 3.0), "{}", c.apply(0.0));
        assert!(close(c.apply(1.0), 2.0 / 3.0), "{}", c.apply(1.0));
        assert!(close(c.apply(0.5), 0.5));
        assert_eq!((c.fitted_on, c.right), (8, 4));
    }

    #[test]
    fn platt_on_separable_data_stays_finite_and_monotone() {
        let pts = [(0.1, false), (0.2, false), (0.8, true), (0.9, true)];
        let c = Calibration::fit("check", Method::Platt, &pts).unwrap();
        let Map::Platt { a, b } = c.map else { panic!() };
        assert!(a.is_finite() && b.is_finite() && a > 0.0);
        let ys: Vec<f64> = (0..=10).map(|i| c.apply(i as f64 / 10.0)).collect();
        assert!(ys.windows(2).all(|w| w[1] >= w[0]));
        assert!(ys[0] < 0.5 && ys[10] > 0.5);
    }

    #[test]
    fn isotonic_pools_violators_and_interpolates_between_blocks() {
        // 1, 0, 0, 1 by confidence: the first three pool to 1/3.
        let pts = [(0.1, true), (0.2, false), (0.3, false), (0.9, true)];
        let c = Calibration::fit("check", Method::Isotonic, &pts).unwrap();
        assert_eq!(
            c.map,
            Map::Isotonic {
                knots: vec![[0.1, 1.0 / 3.0], [0.3, 1.0 / 3.0], [0.9, 1.0]]
            }
        );
        assert!(close(c.apply(0.0), 1.0 / 3.0));
        assert!(close(c.apply(0.2), 1.0 / 3.0));
        assert!(close(c.apply(0.6), 2.0 / 3.0));
        assert!(close(c.apply(5.0), 1.0));
        assert_eq!(c.apply(f64::NAN), 1.0 / 3.0);
        // Equal confidences pool before anything else.
        let c = Calibration::fit(
            "check",
            Method::Isotonic,
            &[(0.5, true), (0.5, false), (0.7, true)],
        )
        .unwrap();
        assert_eq!(
            c.map,
            Map::Isotonic {
                knots: vec![[0.5, 0.5], [0.7, 1.0]]
            }
        );
    }

    #[test]
    fn data_it_cannot_calibrate_against_is_refused() {
        for pts in [vec![], vec![(0.3, true), (0.9, true)], vec![(0.2, false)]] {
            let e = Calibration::fit("check", Method::Platt, &pts).unwrap_err();
            assert!(e.to_string().starts_with("cannot calibrate `check`"), "{e}");
        }
        assert!("sigmoid".parse::<Method>().is_err());
    }

    #[test]
    fn ece_and_reliability_bins() {
        let nine_of_ten: Vec<(f64, bool)> = (0..10).map(|i| (0.9, i < 9)).collect();
        assert!(close(ece(&nine_of_ten).unwrap(), 0.0));
        let wrong: Vec<(f64, bool)> = (0..4).map(|_| (0.9, false)).collect();
        assert!(close(ece(&wrong).unwrap(), 0.9));
        // Half the verdicts at 0.25 (all right), half at 0.75 (all wrong).
        let pts = [(0.25, true), (0.25, true), (0.75, false), (0.75, false)];
        assert!(close(ece(&pts).unwrap(), 0.75));
        let bins = reliability(&pts, 4);
        assert_eq!(bins.len(), 2);
        assert_eq!(
            (bins[0].lo, bins[0].accuracy, bins[0].verdicts),
            (0.25, 1.0, 2)
        );
        assert_eq!((bins[1].lo, bins[1].accuracy), (0.75, 0.0));
        assert_eq!(ece(&[]), None);
        // A confidence of exactly 1 falls in the last bin.
        assert_eq!(reliability(&[(1.0, true)], 10)[0].lo, 0.9);
    }

    #[test]
    fn a_stored_calibration_round_trips_and_a_broken_one_is_refused() {
        let dir = std::env::temp_dir().join(format!("redraft-cal-{}", std::process::id()));
        let c = Calibration::fit(
            "check",
            Method::Isotonic,
            &[(0.2, false), (0.4, true), (0.6, true)],
        )
        .unwrap();
        let path = dir.join("c.yaml");
        c.save(&path).unwrap();
        assert_eq!(Calibration::load(&path).unwrap(), c);
        for (text, needle) in [
            (
                "node: c\nmap: {method: isotonic, knots: []}\nfitted_on: 1\nright: 1\n",
                "at least one knot",
            ),
            (
                "node: c\nmap: {method: isotonic, knots: [[0.3, 0.1], [0.2, 0.5]]}\nfitted_on: 1\nright: 1\n",
                "non-decreasing",
            ),
            (
                "node: c\nmap: {method: isotonic, knots: [[0.1, 1.5]]}\nfitted_on: 1\nright: 1\n",
                "between 0 and 1",
            ),
            (
                "node: c\nmap: {method: isotonic, knots: [[0.1]]}\nfitted_on: 1\nright: 1\n",
                "c.yaml",
            ),
            (
                "node: c\nmap: {method: cubic}\nfitted_on: 1\nright: 1\n",
                "cubic",
            ),
            (
                "node: c\nmap: {method: platt, a: 1, b: 0}\nfitted_on: 1\nright: 1\nextra: 1\n",
                "extra",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let e = Calibration::load(&path).unwrap_err().to_string();
            assert!(e.contains("c.yaml") && e.contains(needle), "{e}");
        }
        assert!(Calibration::load(&dir.join("missing.yaml")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
