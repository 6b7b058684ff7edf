//! `embed`: a list of texts to vectors (a model, or lexical TF-IDF).

use super::*;

/// The kind's own keys (besides `id`, `kind`, `budget`).
pub(crate) const KEYS: &[&str] = &["items", "text", "model", "dims"];

/// The kind's builder (named in the kinds table).
pub(crate) fn build(cx: &mut Ctx, n: &RawNode, env: &Env) -> Option<NodeKind> {
    super::build(cx, n, env, embed, NodeKind::Embed)
}

pub(super) fn embed(cx: &mut Ctx, f: &Fields, env: &Env) -> Read<EmbedSpec> {
    let items = must(required(cx, f, "items", env))
        .and_then(|v| must(expression(cx, v, env, "`items`", &[])));
    let text = optional(f.get("text"), |v| template(cx, v, env, "text", ITEM_VAR));
    let model = optional(f.get("model"), |v| {
        let name = string(cx, v, "`model`")?;
        let found = env.model_names.iter().position(|m| *m == name);
        if found.is_none() {
            cx.err(unknown_name(
                Code::UnknownModel,
                v.span,
                format!("{} uses model `{name}`, which is not declared", env.label),
                &name,
                env.model_names,
            ));
        }
        found
    });
    let dims = optional(f.get("dims"), |v| ranged(cx, v, "`dims`", 1, 1 << 16));
    Ok(EmbedSpec {
        items: items?,
        text: text?,
        model: model?,
        dims: dims?.map_or(crate::similarity::TFIDF_DIMS, |d| d as usize),
    })
}
