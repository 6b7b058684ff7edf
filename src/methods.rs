//! The shipped methods: each a workflow with its prompts, scripted replies
//! and tools, built into the binary so that `redraft new METHOD` can write a
//! ready-to-edit copy anywhere (`new` in the CLI; [`write()`] here).

use std::path::{Path, PathBuf};

/// A shipped method and the files that make it up.
#[derive(Debug, Clone, Copy)]
pub struct Method {
    pub name: &'static str,
    pub summary: &'static str,
    /// What it needs beyond a chat model.
    pub needs: &'static str,
    /// `(path, contents)`, paths as in this repository.
    pub files: &'static [(&'static str, &'static str)],
}

macro_rules! shipped {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!("../", $path)))),*]
    };
}

pub const METHODS: &[Method] = &[
    Method {
        name: "self-refine",
        summary: "draft, check, critique and revise until the checks pass",
        needs: "nothing",
        files: shipped![
            "workflows/self-refine.yaml",
            "workflows/replies/self-refine.yaml",
            "prompts/self-refine/draft.j2",
            "prompts/self-refine/critique.j2",
            "prompts/self-refine/rewrite.j2",
        ],
    },
    Method {
        name: "self-refine-judged",
        summary: "self-refine with a model judge instead of fixed checks",
        needs: "logprobs (optional: else a verbalised verdict)",
        files: shipped![
            "workflows/self-refine-judged.yaml",
            "workflows/replies/self-refine-judged.yaml",
            "prompts/self-refine/draft.j2",
            "prompts/self-refine/critique.j2",
            "prompts/self-refine/revise.j2",
        ],
    },
    Method {
        name: "self-debug",
        summary: "code fixed from the failing public example's execution feedback, up to three times (self-debugging)",
        needs: "sandbox (bubblewrap); public tests (HumanEval's docstring examples)",
        files: shipped![
            "workflows/self-debug.yaml",
            "workflows/replies/self-debug.yaml",
            "prompts/self-debug/generate.j2",
            "prompts/self-debug/revise.j2",
        ],
    },
    Method {
        name: "vote",
        summary: "majority vote over sampled step-by-step solutions (self-consistency), the sampling baseline",
        needs: "nothing",
        files: shipped![
            "workflows/vote.yaml",
            "workflows/replies/vote.yaml",
            "prompts/guarded/solve.j2",
        ],
    },
    Method {
        name: "codechain",
        summary: "modular code through self-revision with clustered sub-modules (CodeChain)",
        needs: "sandbox (bubblewrap); embeddings optional (TF-IDF fallback)",
        files: shipped![
            "workflows/codechain.yaml",
            "workflows/replies/codechain.yaml",
            "prompts/codechain/generate.j2",
            "prompts/codechain/revise.j2",
        ],
    },
    Method {
        name: "revise",
        summary: "self-verification with logprob confidence, refine below tau, weighted vote (ReVISE)",
        needs: "logprobs (optional: else a verbalised confidence)",
        files: shipped![
            "workflows/revise.yaml",
            "workflows/replies/revise.yaml",
            "prompts/revise/solve.j2",
        ],
    },
    Method {
        name: "guarded",
        summary: "refinement that keeps a revision only if the verifier's confidence rises, and a changed answer only if it passes",
        needs: "logprobs (optional: else a verbalised confidence)",
        files: shipped![
            "workflows/guarded.yaml",
            "workflows/replies/guarded.yaml",
            "prompts/guarded/solve.j2",
            "prompts/guarded/judge.j2",
            "prompts/guarded/critique.j2",
            "prompts/guarded/revise.j2",
        ],
    },
    Method {
        name: "draft",
        summary: "tool documentation refined by exploring the tool (DRAFT)",
        needs: "a tool to call (ToolTalk's simulators by default); embeddings optional",
        files: shipped![
            "workflows/draft.yaml",
            "workflows/replies/draft.yaml",
            "workflows/tools/tooltalk-api",
            "prompts/draft/explore.j2",
            "prompts/draft/analyze.j2",
            "prompts/draft/rewrite.j2",
        ],
    },
    Method {
        name: "rbd",
        summary: "an LLM judge checked by a reasoning bias detector (RBD)",
        needs: "nothing",
        files: shipped![
            "workflows/rbd.yaml",
            "workflows/replies/rbd.yaml",
            "prompts/rbd/judge.j2",
            "prompts/rbd/judge-swapped.j2",
            "prompts/rbd/detect.j2",
            "prompts/rbd/reevaluate.j2",
        ],
    },
    Method {
        name: "r3",
        summary: "human-in-the-loop revision: accept or reject each edit (R3)",
        needs: "a person (or a decisions file)",
        files: shipped![
            "workflows/r3.yaml",
            "workflows/replies/r3.yaml",
            "workflows/replies/r3.decisions.yaml",
            "prompts/r3/propose.j2",
        ],
    },
];

/// The shipped method called `name`.
pub fn find(name: &str) -> Option<&'static Method> {
    METHODS.iter().find(|m| m.name == name)
}

#[derive(Debug, thiserror::Error)]
pub enum NewError {
    #[error("{} already exists (use --force to overwrite)", .0.display())]
    Exists(PathBuf),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Writes a copy of `method` into `dir`: `NAME.yaml` beside `prompts/`,
/// `replies/` and `tools/` (the workflow's `prompt_dir` rewritten to match).
/// Nothing is written when a file exists with other contents, unless
/// `force`. Returns the paths
/// written, the workflow first.
pub fn write(method: &Method, dir: &Path, force: bool) -> Result<Vec<PathBuf>, NewError> {
    let planned: Vec<(PathBuf, String)> = method
        .files
        .iter()
        .map(|(path, text)| {
            let rel = path.strip_prefix("workflows/").unwrap_or(path);
            let text = if rel.ends_with(".yaml") && !rel.contains('/') {
                text.replace("prompt_dir: ../prompts/", "prompt_dir: prompts/")
            } else {
                (*text).to_string()
            };
            (dir.join(rel), text)
        })
        .collect();
    // A file already there with the same text (prompts two methods share)
    // is no conflict.
    if !force {
        let differs = |(p, text): &&(PathBuf, String)| {
            p.exists() && std::fs::read_to_string(p).map_or(true, |t| t != *text)
        };
        if let Some((p, _)) = planned.iter().find(differs) {
            return Err(NewError::Exists(p.clone()));
        }
    }
    let mut written = Vec::with_capacity(planned.len());
    for (path, text) in planned {
        let err = |source| NewError::Write {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(err)?;
        }
        crate::file::write_atomic(&path, text).map_err(err)?;
        if path.parent().is_some_and(|p| p.ends_with("tools")) {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).map_err(err)?;
        }
        written.push(path);
    }
    Ok(written)
}
