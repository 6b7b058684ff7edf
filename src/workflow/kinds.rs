//! The table of node kinds: one entry per kind, the only place a kind's
//! name, keys, builder and properties are written down.
//!
//! Adding a kind: write its builder (`validate/`), its spec variant in
//! [`NodeKind`] and its runner (`engine/`), then add one line here. The
//! compiler then points at every `match` that must learn the kind (the
//! engine's runner dispatch, the pass-1 reader), and tests check that the
//! kind is in the JSON Schema (`docs/workflow.schema.json`) with exactly
//! these keys and has a section in `docs/workflow-reference.md`.

use serde::Serialize;

use super::model::NodeKind;
use super::raw;
use super::validate::library;
use super::validate::{self, Builder};

/// The closed set of node kinds, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Generate,
    Critique,
    Verify,
    Revise,
    Select,
    Vote,
    Execute,
    Extract,
    Tool,
    Embed,
    Cluster,
    HumanReview,
}

/// Everything the format knows about one kind.
pub struct KindDef {
    pub kind: Kind,
    /// The name written in `kind:`.
    pub name: &'static str,
    /// What a node of this kind does, in a line.
    pub summary: &'static str,
    /// Its own keys (besides `id`, `kind`, `budget`).
    pub keys: &'static [&'static str],
    /// Its output is a verdict on the artifact (`passed`, `score`): loop
    /// metrics and best-output selection read it.
    pub verdict: bool,
    /// Reads the kind's keys of a node (pass 1: shape and types).
    pub(crate) read: raw::RawReader,
    /// Builds the kind's typed spec from what `read` read (pass 2: names,
    /// templates, values).
    pub(crate) build: Builder,
}

impl std::fmt::Debug for KindDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KindDef").field("name", &self.name).finish()
    }
}

/// Every kind, in [`Kind`] order.
pub static KINDS: [KindDef; 12] = [
    def(
        Kind::Generate,
        "generate",
        "sample `n` completions of a prompt",
        raw::MODEL_CALL_KEYS,
        false,
        raw::read_call,
        validate::generate,
    ),
    def(
        Kind::Critique,
        "critique",
        "structured feedback from a model, checked against a JSON Schema",
        raw::MODEL_CALL_KEYS,
        false,
        raw::read_call,
        validate::critique,
    ),
    def(
        Kind::Verify,
        "verify",
        "check the artifact; passes when every check passes",
        raw::VERIFY_KEYS,
        true,
        raw::read_verify,
        validate::verify,
    ),
    def(
        Kind::Revise,
        "revise",
        "rewrite the artifact (a generate tracked as a change)",
        raw::MODEL_CALL_KEYS,
        false,
        raw::read_call,
        validate::revise,
    ),
    def(
        Kind::Select,
        "select",
        "pick one sample of another node by a score expression",
        raw::SELECT_KEYS,
        false,
        raw::read_select,
        validate::select,
    ),
    def(
        Kind::Vote,
        "vote",
        "majority or weighted vote over the answers in another node's samples",
        raw::VOTE_KEYS,
        false,
        raw::read_vote,
        validate::vote,
    ),
    def(
        Kind::Execute,
        "execute",
        "run a program against tests in the sandbox",
        library::execute::KEYS,
        true,
        raw::read_keys,
        library::execute::build,
    ),
    def(
        Kind::Extract,
        "extract",
        "pull code and functions out of replies",
        library::extract::KEYS,
        false,
        raw::read_keys,
        library::extract::build,
    ),
    def(
        Kind::Tool,
        "tool",
        "call a command or an HTTP endpoint and capture what it did",
        library::tool::KEYS,
        false,
        raw::read_keys,
        library::tool::build,
    ),
    def(
        Kind::Embed,
        "embed",
        "embed a list of texts (model embeddings or lexical TF-IDF)",
        library::embed::KEYS,
        false,
        raw::read_keys,
        library::embed::build,
    ),
    def(
        Kind::Cluster,
        "cluster",
        "seeded k-means over an embed node's vectors, with representatives",
        library::cluster::KEYS,
        false,
        raw::read_keys,
        library::cluster::build,
    ),
    def(
        Kind::HumanReview,
        "human_review",
        "accept or reject the edits between two texts (R3)",
        library::human_review::KEYS,
        false,
        raw::read_keys,
        library::human_review::build,
    ),
];

const fn def(
    kind: Kind,
    name: &'static str,
    summary: &'static str,
    keys: &'static [&'static str],
    verdict: bool,
    read: raw::RawReader,
    build: Builder,
) -> KindDef {
    KindDef {
        kind,
        name,
        summary,
        keys,
        verdict,
        read,
        build,
    }
}

impl Kind {
    /// The kind named `name` (as written in `kind:`).
    pub fn parse(name: &str) -> Option<Kind> {
        KINDS.iter().find(|d| d.name == name).map(|d| d.kind)
    }

    /// Its entry in [`KINDS`].
    pub fn def(self) -> &'static KindDef {
        &KINDS[self as usize]
    }

    pub fn name(self) -> &'static str {
        self.def().name
    }

    /// Every kind's name, in table order.
    pub fn names() -> impl Iterator<Item = &'static str> {
        KINDS.iter().map(|d| d.name)
    }
}

impl NodeKind {
    /// Which kind this spec is.
    pub fn kind(&self) -> Kind {
        match self {
            NodeKind::Generate(_) => Kind::Generate,
            NodeKind::Critique(_) => Kind::Critique,
            NodeKind::Verify(_) => Kind::Verify,
            NodeKind::Revise(_) => Kind::Revise,
            NodeKind::Select(_) => Kind::Select,
            NodeKind::Vote(_) => Kind::Vote,
            NodeKind::Execute(_) => Kind::Execute,
            NodeKind::Extract(_) => Kind::Extract,
            NodeKind::Tool(_) => Kind::Tool,
            NodeKind::Embed(_) => Kind::Embed,
            NodeKind::Cluster(_) => Kind::Cluster,
            NodeKind::HumanReview(_) => Kind::HumanReview,
        }
    }

    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// Whether the node's output is a verdict on the artifact (`passed`,
    /// `score`): verify, and execute (tests passed, pass rate).
    pub fn is_verdict(&self) -> bool {
        self.kind().def().verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_in_kind_order_with_unique_names() {
        for (i, d) in KINDS.iter().enumerate() {
            assert_eq!(d.kind as usize, i, "{}", d.name);
            assert_eq!(Kind::parse(d.name), Some(d.kind));
            assert_eq!(serde_json::to_value(d.kind).unwrap(), d.name);
        }
        assert_eq!(Kind::parse("generat"), None);
    }
}
