//! Builders of the refinement core's kinds (generate, critique, revise,
//! verify, select, vote): the raw node of pass 1 → its typed spec. Each is
//! registered in [`crate::workflow::KINDS`]; like every builder, it reports
//! each problem and returns `None` when the node cannot be built.

use super::library::Env;
use super::{
    CallRole, Ctx, DEFAULT_TARGET, SAMPLE_VAR, VarCheck, VarSource, answer_rule, check_expression,
    model_call, verify_check,
};
use crate::diagnostic::{Code, Diagnostic};
use crate::workflow::model::*;
use crate::workflow::raw::{RawBody, RawNode};

pub(crate) fn generate(cx: &mut Ctx, n: &RawNode, env: &Env) -> Option<NodeKind> {
    call(cx, n, env, CallRole::Generate).map(NodeKind::Generate)
}

pub(crate) fn revise(cx: &mut Ctx, n: &RawNode, env: &Env) -> Option<NodeKind> {
    call(cx, n, env, CallRole::Generate).map(NodeKind::Revise)
}

pub(crate) fn critique(cx: &mut Ctx, n: &RawNode, env: &Env) -> Option<NodeKind> {
    let call = call(cx, n, env, CallRole::Critique)?;
    if call.schema.is_none() {
        cx.err(
            Diagnostic::new(
                Code::MissingKey,
                n.span,
                format!("{} is a critique but has no `schema`", env.label),
            )
            .label("`schema` is required for critique")
            .help("give the JSON Schema of the feedback, e.g. {type: object, properties: {score: {type: number}, feedback: {type: string}}}"),
        );
    }
    Some(NodeKind::Critique(call))
}

fn call(cx: &mut Ctx, n: &RawNode, env: &Env, role: CallRole) -> Option<ModelCall> {
    let RawBody::Call(c) = &n.body else {
        return None;
    };
    model_call(
        cx,
        c,
        env.idx,
        env.id,
        env.label,
        env.model_names,
        env.models,
        role,
    )
}

pub(crate) fn verify(cx: &mut Ctx, node: &RawNode, env: &Env) -> Option<NodeKind> {
    let RawBody::Verify(n) = &node.body else {
        return None;
    };
    let (id, label) = (env.id, env.label);
    let target = match &n.target {
        Some(t) => cx.inline(
            format!("{id}.target"),
            &t.value,
            t.span,
            &format!("`target` of {label}"),
        ),
        None => cx.inline(
            format!("{id}.target"),
            DEFAULT_TARGET,
            node.span,
            "the default target",
        ),
    };
    if let Some(name) = &target {
        let span = n.target.as_ref().map_or(node.span, |t| t.span);
        cx.pending_vars.push(VarCheck {
            source: VarSource::Template(name.clone()),
            node: env.idx,
            span,
            extra: &[],
            what: match &n.target {
                Some(_) => format!("`target` of {label}"),
                None => format!("the default `target` of {label} (`{DEFAULT_TARGET}`)"),
            },
        });
    }
    let mut checks = Vec::new();
    for (ci, c) in n.checks.iter().enumerate() {
        if let Some(check) =
            verify_check(cx, c, env.idx, id, ci, label, env.model_names, env.models)
        {
            checks.push(check);
        }
    }
    let calibration = n.calibration.as_ref().and_then(|file| {
        let path = cx.base_dir.join(&file.value);
        let found = crate::calibration::Calibration::load(&path).and_then(|c| {
            if c.node == id {
                Ok(c)
            } else {
                Err(crate::calibration::CalibrationError::File {
                    path: path.display().to_string(),
                    message: format!("fitted for node `{}`, not `{id}`", c.node),
                })
            }
        });
        match found {
            Ok(c) => Some(std::sync::Arc::new(c)),
            Err(e) => {
                cx.err(
                    Diagnostic::new(
                        Code::BadCalibration,
                        file.span,
                        format!("`calibration` of {label}: {e}"),
                    )
                    .label("no usable calibration")
                    .help(format!(
                        "fit one with `redraft eval WORKFLOW --data DATA --calibrate {id}` (paths are relative to the workflow)"
                    )),
                );
                None
            }
        }
    });
    target.map(|target| {
        NodeKind::Verify(VerifySpec {
            target,
            checks,
            calibration_path: calibration
                .as_ref()
                .and(n.calibration.as_ref())
                .map(|f| cx.base_dir.join(&f.value)),
            calibration,
        })
    })
}

pub(crate) fn select(cx: &mut Ctx, node: &RawNode, env: &Env) -> Option<NodeKind> {
    let RawBody::Select(n) = &node.body else {
        return None;
    };
    let from = n.from.as_ref().and_then(|f| (env.resolve)(cx, f, "`from`"));
    if let Some(by) = &n.by {
        check_expression(
            cx,
            &by.value,
            by.span,
            env.idx,
            &[SAMPLE_VAR],
            &format!("`by` of {}", env.label),
        );
    }
    let order = match n.order.as_ref().map(|o| o.value.as_str()) {
        None | Some("max") => Order::Max,
        Some("min") => Order::Min,
        Some(other) => {
            let span = n.order.as_ref().map_or(node.span, |o| o.span);
            cx.err(
                Diagnostic::new(Code::InvalidValue, span, format!("unknown order `{other}`"))
                    .label("invalid")
                    .help("one of: max, min"),
            );
            Order::Max
        }
    };
    Some(NodeKind::Select(SelectSpec {
        from: from?,
        by: n.by.as_ref()?.value.clone(),
        order,
    }))
}

pub(crate) fn vote(cx: &mut Ctx, node: &RawNode, env: &Env) -> Option<NodeKind> {
    let RawBody::Vote(n) = &node.body else {
        return None;
    };
    let from = match (&n.from, &n.items) {
        (Some(f), None) => (env.resolve)(cx, f, "`from`").map(VoteFrom::Node),
        (None, Some(items)) => {
            let before = cx.diags.len();
            check_expression(
                cx,
                &items.value,
                items.span,
                env.idx,
                &[],
                &format!("`items` of {}", env.label),
            );
            (cx.diags.len() == before).then(|| VoteFrom::Items(items.value.clone()))
        }
        (Some(_), Some(items)) => {
            cx.err(
                Diagnostic::new(
                    Code::InvalidValue,
                    items.span,
                    format!("{} has both `from` and `items`", env.label),
                )
                .label("one of the two")
                .help("`from: NODE` votes over a node's samples; `items: EXPR` over a list of answers"),
            );
            None
        }
        (None, None) => None,
    };
    let extract = n.extract.as_ref().and_then(|e| answer_rule(cx, e));
    if let Some(w) = &n.weight {
        check_expression(
            cx,
            &w.value,
            w.span,
            env.idx,
            &[SAMPLE_VAR],
            &format!("`weight` of {}", env.label),
        );
    }
    Some(NodeKind::Vote(VoteSpec {
        from: from?,
        extract,
        weight: n.weight.as_ref().map(|w| w.value.clone()),
    }))
}
