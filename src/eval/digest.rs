//! What an eval's results depend on beyond the workflow's text: the files
//! it reads and the data's contents, as digests for the eval's id.
//!
//! Change a calibration file, a tool program, a scripted model's replies,
//! a judge workflow or a data row, and the same command starts a new eval
//! instead of resuming one whose results no longer follow from its inputs.
//!
//! **Invariant:** every digest is a function of file contents (never of
//! times or absolute paths), so shards on other machines compute the same
//! id from the same files.

use std::collections::BTreeMap;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::data::Item;
use crate::backend::ModelSpec;
use crate::hash::fnv1a;
use crate::workflow::{NodeKind, ToolAction, Workflow};

/// Files above this size (model weights) are digested from their size
/// and [`SAMPLES`] evenly spaced blocks instead of every byte.
const WHOLE_UP_TO: u64 = 64 << 20;
const SAMPLES: u64 = 16;
const BLOCK: usize = 64 << 10;

/// A file's digest: 16 hex digits, or `missing` / `unreadable: …`.
pub fn file(path: &Path) -> String {
    match digest_file(path) {
        Ok(h) => format!("{h:016x}"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "missing".into(),
        Err(e) => format!("unreadable: {}", e.kind()),
    }
}

fn digest_file(path: &Path) -> std::io::Result<u64> {
    let mut f = std::fs::File::open(path)?;
    let size = f.metadata()?.len();
    if size <= WHOLE_UP_TO {
        let mut bytes = Vec::with_capacity(size as usize);
        f.read_to_end(&mut bytes)?;
        return Ok(fnv1a(&bytes));
    }
    let mut bytes = size.to_le_bytes().to_vec();
    let mut block = vec![0u8; BLOCK];
    for i in 0..SAMPLES {
        f.seek(SeekFrom::Start((size - BLOCK as u64) / (SAMPLES - 1) * i))?;
        f.read_exact(&mut block)?;
        bytes.extend_from_slice(&block);
    }
    Ok(fnv1a(&bytes))
}

/// The data set's items as loaded and mapped (every item, before any
/// selection: `--limit` and shards never change the id).
pub fn items(items: &[Item]) -> String {
    let mut h = Vec::new();
    for i in items {
        let row = serde_json::json!([i.id, i.inputs, i.answer, i.hidden]);
        h.extend_from_slice(row.to_string().as_bytes());
        h.push(b'\n');
    }
    format!("{:016x}", fnv1a(&h))
}

/// One item's content (inputs and answer), for pairing items of two evals
/// that share an id only when they are the same question.
pub fn item(item: &Item) -> u64 {
    fnv1a(
        serde_json::json!([item.inputs, item.answer])
            .to_string()
            .as_bytes(),
    )
}

/// The files a workflow reads besides its own text and prompts, by role:
/// verify nodes' calibrations, the programs of tool and execute nodes
/// (literal arguments that name a file beside the workflow), and the
/// files of its models (`scripted:`, `replay:` and `llama:` paths), each
/// resolved as the engine resolves it. `models` are the specs as run.
pub fn workflow_files(
    wf: &Workflow,
    models: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let dir = wf.path().and_then(Path::parent).unwrap_or(Path::new(""));
    let mut out = BTreeMap::new();
    for n in wf.nodes() {
        let program: Vec<&String> = match &n.kind {
            NodeKind::Verify(v) => {
                if let Some(p) = &v.calibration_path {
                    out.insert(format!("calibration:{}", n.id), file(p));
                }
                Vec::new()
            }
            NodeKind::Tool(t) => match &t.action {
                ToolAction::Command { argv, .. } => argv.iter().collect(),
                ToolAction::Http { .. } => Vec::new(),
            },
            NodeKind::Execute(e) => e.command.iter().collect(),
            _ => Vec::new(),
        };
        for arg in program
            .into_iter()
            // Literal arguments only: templates and `{file}` are filled at run time.
            .filter(|a| !a.contains('{'))
        {
            let p = dir.join(arg);
            if p.is_file() {
                out.insert(format!("program:{}:{arg}", n.id), file(&p));
            }
        }
    }
    for (name, spec) in models {
        let path: Option<PathBuf> = match ModelSpec::parse(spec) {
            Ok(ModelSpec::Scripted { path } | ModelSpec::Replay { path }) => Some(dir.join(path)),
            Ok(ModelSpec::Llama { path }) => {
                Some(crate::backend::named_model(&path).map_or_else(|| dir.join(&path), |(p, _)| p))
            }
            _ => None,
        };
        if let Some(p) = path {
            out.insert(format!("model:{name}"), file(&p));
        }
    }
    out
}

/// A scorer's own files: a judge workflow's text, prompts and files; an
/// external command's program. `None` for the built-in scorers.
pub fn scorer_files(scorer: &str) -> Option<Value> {
    if let Some(path) = scorer.strip_prefix("judge:") {
        let path = Path::new(path);
        return Some(match crate::workflow::load(path) {
            Ok(wf) => {
                let models = wf
                    .models()
                    .iter()
                    .filter_map(|m| Some((m.name.clone(), m.spec.clone()?)))
                    .collect();
                serde_json::json!({
                    "workflow": file(path),
                    "prompts": wf.templates.sources(),
                    "files": workflow_files(&wf, &models),
                })
            }
            Err(_) => Value::String(file(path)),
        });
    }
    if let Some(cmd) = scorer.strip_prefix("command:") {
        let program = cmd.split_whitespace().next().unwrap_or_default();
        let p = Path::new(program);
        return p.is_file().then(|| Value::String(file(p)));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_digest_follows_its_contents_only() {
        let dir = std::env::temp_dir().join(format!("redraft-digest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::fs::write(&a, "x: 1\n").unwrap();
        std::fs::write(&b, "x: 1\n").unwrap();
        assert_eq!(file(&a), file(&b), "same contents, same digest");
        std::fs::write(&b, "x: 2\n").unwrap();
        assert_ne!(file(&a), file(&b));
        assert_eq!(file(&dir.join("none")), "missing");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
