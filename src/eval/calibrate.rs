//! Calibrating a verify node's confidence from an eval's stored verdicts
//! (`redraft eval --calibrate NODE`): fitted on one half of the items (a
//! stable hash of the id), measured on the other.

use std::path::{Path, PathBuf};

use super::store::UnitRecord;
use super::{EvalError, ItemStatus};
use crate::calibration::{Calibration, CalibrationError, HeldOut, Method, ece};
use crate::workflow::{NodeKind, Workflow};

/// What to fit, and where the fitted calibration goes.
#[derive(Debug, Clone, PartialEq)]
pub struct CalibrateTarget {
    /// The verify node whose confidence is calibrated.
    pub node: String,
    pub method: Method,
    pub out: PathBuf,
}

impl CalibrateTarget {
    /// Reads `NODE[=METHOD]` (`platt` by default) against the workflow at
    /// `path`: NODE must be one of its verify nodes. The file goes to `out`,
    /// else the node's `calibration:` file, else
    /// `WORKFLOW.NODE.calibration.yaml` beside the workflow.
    pub fn parse(
        flag: &str,
        workflow: &Workflow,
        path: &Path,
        out: Option<&Path>,
    ) -> Result<CalibrateTarget, EvalError> {
        let (node, method) = match flag.split_once('=') {
            Some((n, m)) => (
                n,
                m.parse().map_err(|e: String| {
                    EvalError::Invalid(format!("--calibrate {flag:?}: {e}"))
                })?,
            ),
            None => (flag, Method::Platt),
        };
        let verify = workflow.nodes().iter().find_map(|n| match &n.kind {
            NodeKind::Verify(v) if n.id == node => Some(v),
            _ => None,
        });
        let Some(v) = verify else {
            let names: Vec<&str> = workflow
                .nodes()
                .iter()
                .filter(|n| matches!(n.kind, NodeKind::Verify(_)))
                .map(|n| n.id.as_str())
                .collect();
            return Err(EvalError::Invalid(format!(
                "--calibrate {flag:?}: `{node}` is not a verify node of {} (verify nodes: {})",
                path.display(),
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            )));
        };
        let out = match (out, &v.calibration_path) {
            (Some(out), _) => out.to_path_buf(),
            (None, Some(p)) => p.clone(),
            (None, None) => {
                let stem = path
                    .file_stem()
                    .map_or("workflow".into(), |s| s.to_string_lossy().into_owned());
                path.parent()
                    .unwrap_or(Path::new(""))
                    .join(format!("{stem}.{node}.calibration.yaml"))
            }
        };
        Ok(CalibrateTarget {
            node: node.to_string(),
            method,
            out,
        })
    }

    /// Fits the calibration on the held-in half of the finished units'
    /// verdicts of the node, and measures it on the held-out half.
    pub fn fit(&self, units: &[UnitRecord]) -> Result<Calibration, CalibrationError> {
        let (mut held_in, mut held_out) = (Vec::new(), Vec::new());
        for u in units {
            let Some(r) = u.result.as_ref().filter(|r| r.status == ItemStatus::Done) else {
                continue;
            };
            let half = if held_in_half(&u.item.id) {
                &mut held_in
            } else {
                &mut held_out
            };
            half.extend(
                r.verdicts
                    .iter()
                    .filter(|v| v.node == self.node)
                    .map(|v| (v.confidence, v.passed)),
            );
        }
        let mut c = Calibration::fit(&self.node, self.method, &held_in)?;
        if !held_out.is_empty() {
            let after: Vec<(f64, bool)> = held_out.iter().map(|&(x, r)| (c.apply(x), r)).collect();
            let auroc = |pts: &[(f64, bool)]| {
                let (right, wrong): (Vec<_>, Vec<_>) = pts.iter().partition(|p| p.1);
                let f = |v: Vec<&(f64, bool)>| v.into_iter().map(|p| p.0).collect::<Vec<f64>>();
                super::stats::auroc(&f(right), &f(wrong))
            };
            c.held_out = Some(HeldOut {
                verdicts: held_out.len(),
                ece_before: ece(&held_out).unwrap_or(0.0),
                ece_after: ece(&after).unwrap_or(0.0),
                auroc_before: auroc(&held_out),
                auroc_after: auroc(&after),
            });
        }
        Ok(c)
    }
}

/// Items whose id hashes even (FNV-1a) are the held-in half.
fn held_in_half(id: &str) -> bool {
    crate::hash::fnv1a(id.as_bytes()) % 2 == 0
}
