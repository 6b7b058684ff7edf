//! `cluster`: seeded k-means over an embed node's vectors.

use super::*;

/// The kind's own keys (besides `id`, `kind`, `budget`).
pub(crate) const KEYS: &[&str] = &["from", "k", "seed"];

/// The kind's builder (named in the kinds table).
pub(crate) fn build(cx: &mut Ctx, n: &RawNode, env: &Env) -> Option<NodeKind> {
    super::build(cx, n, env, cluster, NodeKind::Cluster)
}

pub(super) fn cluster(cx: &mut Ctx, f: &Fields, env: &Env) -> Read<ClusterSpec> {
    let from = must(required(cx, f, "from", env)).and_then(|v| must(node_ref(cx, v, env)));
    let k = must(required(cx, f, "k", env)).and_then(|v| match &v.value {
        Value::Str(_) => must(expression(cx, v, env, "`k`", &[])).map(ClusterK::Expr),
        _ => must(ranged(cx, v, "`k`", 1, 10_000)).map(|k| ClusterK::Fixed(k as usize)),
    });
    let seed = optional(f.get("seed"), |v| {
        ranged(cx, v, "`seed`", 0, i64::MAX as u64)
    });
    Ok(ClusterSpec {
        from: from?,
        k: k?,
        seed: seed?.unwrap_or(0),
    })
}
