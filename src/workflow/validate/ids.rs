//! Node ids: every reference to a node resolves through [`NodeIds`].

use super::*;

/// Node ids, collected before anything refers to them so that references
/// resolve in any order. A node without an id is `#N` (never resolvable).
pub(super) struct NodeIds {
    pub(super) ids: Vec<String>,
}

impl NodeIds {
    /// Invariant: ids are unique, valid template names, and clash with no
    /// input or built-in variable.
    pub(super) fn new(
        cx: &mut Ctx,
        raw: &RawWorkflow,
        names: &mut HashMap<String, (&'static str, Span)>,
    ) -> NodeIds {
        let mut node_ids: Vec<String> = Vec::new();
        for (i, n) in raw.nodes.iter().enumerate() {
            let Some(id) = &n.id else {
                node_ids.push(format!("#{}", i + 1));
                continue;
            };
            if BUILTINS.contains(&id.value.as_str()) {
                cx.err(
                    Diagnostic::new(
                        Code::DuplicateId,
                        id.span,
                        format!("node `{}` shadows a built-in variable", id.value),
                    )
                    .label("reserved name")
                    .help(format!("reserved: {}", BUILTINS.join(", "))),
                );
            } else if let Some(&(prev, first)) = names.get(&id.value) {
                let (msg, also) = if prev == "node" {
                    (
                        format!("node `{}` is defined twice", id.value),
                        "first defined here",
                    )
                } else {
                    (
                        format!("node `{}` has the same name as an input", id.value),
                        "the input",
                    )
                };
                cx.err(
                    Diagnostic::new(Code::DuplicateId, id.span, msg)
                        .label("duplicate")
                        .also(first, also)
                        .help("node ids and input names share one namespace in templates"),
                );
            } else if !id
                .value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
                || id.value.starts_with(|c: char| c.is_ascii_digit())
            {
                cx.err(Diagnostic::new(Code::InvalidValue, id.span, format!("node id `{}` is not a valid template name", id.value)).label("invalid id").help("use letters, digits and `_`, not starting with a digit (ids are template variables)"));
            }
            if !BUILTINS.contains(&id.value.as_str()) {
                names.entry(id.value.clone()).or_insert(("node", id.span));
            }
            node_ids.push(id.value.clone());
        }
        NodeIds { ids: node_ids }
    }

    /// The resolvable ids, sorted and unique ("did you mean" candidates).
    pub(super) fn refs(&self) -> Vec<&str> {
        let mut refs: Vec<&str> = self
            .ids
            .iter()
            .map(String::as_str)
            .filter(|s| !s.starts_with('#'))
            .collect();
        refs.sort_unstable();
        refs.dedup();
        refs
    }

    /// The node named `name`; an unknown name is reported (with the
    /// closest id) and resolves to nothing.
    pub(super) fn resolve(
        &self,
        cx: &mut Ctx,
        name: &Spanned<String>,
        what: &str,
    ) -> Option<usize> {
        let found = self.ids.iter().position(|n| *n == name.value);
        if found.is_none() {
            cx.err(unknown_name(
                Code::UnknownNode,
                name.span,
                format!("{what} `{}` is not a defined node", name.value),
                &name.value,
                &self.refs(),
            ));
        }
        found
    }
}
