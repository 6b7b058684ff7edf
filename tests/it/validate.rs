//! Workflow validation: diagnostics snapshots and hostile input.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;

use redraft::diagnostic::Code;
use redraft::workflow::{self, WorkflowError, keys as raw};

use crate::support::{fixtures, root};

fn load_fixture(path: &Path) -> Result<workflow::Workflow, WorkflowError> {
    let bytes = std::fs::read(path).expect("fixture readable");
    let name = format!("invalid/{}", path.file_name().unwrap().to_string_lossy());
    // A relative base keeps absolute paths out of the snapshots.
    workflow::load_bytes(&bytes, &name, Path::new("tests/fixtures/invalid"))
}

/// The code a fixture's first line promises: `# expect: E021`.
fn expected_code(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    let first = String::from_utf8_lossy(&bytes)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    first
        .strip_prefix("# expect: ")
        .map(str::to_string)
        .unwrap_or_else(|| panic!("{} lacks `# expect: CODE`", path.display()))
}

#[test]
fn invalid_fixtures_render_their_diagnostics() {
    insta::glob!("../fixtures/invalid", "*.yaml", |path| {
        let err = match load_fixture(path) {
            Ok(_) => panic!("{} loaded, but it is in invalid/", path.display()),
            Err(e) => e,
        };
        let rendered = err.render();
        // Every code the fixture promises (`# expect: E021 E022`).
        for code in expected_code(path).split_whitespace() {
            assert!(
                rendered.contains(&format!("error[{code}]")),
                "{} should report {code}:\n{rendered}",
                path.display()
            );
        }
        insta::assert_snapshot!(rendered);
    });
}

#[test]
fn at_least_25_distinct_mistakes_are_covered() {
    let dir = fixtures().join("invalid");
    let mut codes = BTreeSet::new();
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        codes.extend(expected_code(&path).split_whitespace().map(str::to_string));
        files += 1;
    }
    assert!(files >= 25, "only {files} invalid fixtures");
    assert!(
        codes.len() >= 20,
        "only {} distinct codes: {codes:?}",
        codes.len()
    );
}

#[test]
fn every_code_is_documented() {
    let reference = std::fs::read_to_string(root().join("docs/workflow-reference.md")).unwrap();
    for code in Code::ALL {
        assert!(
            reference.contains(code.as_str()),
            "{} is not in docs/workflow-reference.md",
            code.as_str()
        );
    }
}

fn shipped_and_valid() -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for dir in [
        root().join("workflows"),
        fixtures().join("valid"),
        fixtures().join("library"),
    ] {
        for entry in std::fs::read_dir(dir).unwrap() {
            let p = entry.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            if name.ends_with(".yaml")
                && !name.ends_with(".replies.yaml")
                && !name.ends_with(".decisions.yaml")
            {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn valid_fixtures_and_shipped_workflows_load() {
    let files = shipped_and_valid();
    assert!(files.len() >= 3);
    for path in files {
        if let Err(e) = workflow::load(&path) {
            panic!("{} is invalid:\n{}", path.display(), e.render());
        }
    }
}

fn code_of(result: Result<workflow::Workflow, WorkflowError>) -> Code {
    result.expect_err("must be rejected").diagnostics()[0].code
}

#[test]
fn hostile_inputs_fail_with_a_clear_error() {
    let dir = fixtures();
    // A 10 MB file.
    let big = "x: 1\n".repeat(2 * 1024 * 1024);
    assert_eq!(
        code_of(workflow::load_bytes(big.as_bytes(), "big.yaml", &dir)),
        Code::YamlLimit
    );
    // Deep nesting far past the limit, in both YAML styles.
    let deep = "[".repeat(100_000);
    assert!(matches!(
        code_of(workflow::load_str(&deep, "deep.yaml", &dir)),
        Code::YamlLimit | Code::YamlSyntax
    ));
    let mut block = String::new();
    for i in 0..500 {
        block.push_str(&" ".repeat(i));
        block.push_str("a:\n");
    }
    assert!(matches!(
        code_of(workflow::load_str(&block, "deep2.yaml", &dir)),
        Code::YamlLimit | Code::YamlSyntax
    ));
    // Binary garbage, with and without valid UTF-8.
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    assert_eq!(
        code_of(workflow::load_bytes(&garbage, "g.bin", &dir)),
        Code::NotUtf8
    );
    let text_garbage = "}{][:,,-?&*!|>'\"%@`\n\t\u{0}";
    assert!(workflow::load_str(text_garbage, "t.yaml", &dir).is_err());
    // Scalars and lists at the top.
    for doc in ["42", "null", "[1, 2]", "'text'", "~"] {
        assert!(workflow::load_str(doc, "s.yaml", &dir).is_err(), "{doc}");
    }
}

#[test]
fn a_large_file_is_refused_without_reading_it_all() {
    let dir = std::env::temp_dir().join(format!("redraft-big-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("big.yaml");
    std::fs::write(&path, "# padding\n".repeat(1_100_000)).unwrap();
    let err = workflow::load(&path).unwrap_err();
    assert_eq!(err.diagnostics()[0].code, Code::YamlLimit);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn diagnostics_come_sorted_and_all_at_once() {
    let text = std::fs::read_to_string(fixtures().join("invalid/many-mistakes.yaml")).unwrap();
    let err = workflow::load_str(&text, "m.yaml", &fixtures().join("invalid")).unwrap_err();
    let d = err.diagnostics();
    assert!(d.len() >= 5, "{}", err.render());
    let lines: Vec<u32> = d.iter().map(|d| d.span.line).collect();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted);
}

// --- The JSON Schema of the format must agree with the parser. ---

fn schema() -> serde_json::Value {
    serde_json::from_str(redraft::workflow::SCHEMA).expect("schema is JSON")
}

fn keys(v: &serde_json::Value) -> HashSet<String> {
    v["properties"]
        .as_object()
        .expect("properties")
        .keys()
        .cloned()
        .collect()
}

fn set(list: &[&[&str]]) -> HashSet<String> {
    list.iter()
        .flat_map(|l| l.iter().map(|s| s.to_string()))
        .collect()
}

#[test]
fn schema_keys_match_the_parser() {
    let s = schema();
    let defs = &s["$defs"];
    assert_eq!(keys(&s), set(&[raw::TOP_KEYS]));
    assert_eq!(keys(&defs["budget"]), set(&[raw::BUDGET_KEYS]));
    let model = &s["properties"]["models"]["additionalProperties"]["oneOf"][1];
    assert_eq!(keys(model), set(&[raw::MODEL_KEYS]));
    assert_eq!(
        keys(&model["properties"]["rate_limit"]),
        set(&[raw::RATE_LIMIT_KEYS])
    );
    assert_eq!(keys(&defs["sampling"]), set(&[raw::SAMPLING_KEYS]));
    assert_eq!(
        keys(&s["properties"]["loops"]["items"]),
        set(&[raw::LOOP_KEYS])
    );
    assert_eq!(
        keys(&s["properties"]["edges"]["items"]),
        set(&[raw::EDGE_KEYS])
    );
    let node_variants = defs["node"]["oneOf"].as_array().unwrap();
    let variant = |name: &str| {
        node_variants
            .iter()
            .find(|v| {
                let kind = &v["properties"]["kind"];
                kind["const"] == name
                    || kind["enum"]
                        .as_array()
                        .is_some_and(|e| e.iter().any(|k| k == name))
            })
            .unwrap_or_else(|| panic!("kind `{name}` is not in the JSON Schema"))
    };
    for def in &redraft::workflow::KINDS {
        assert_eq!(
            keys(variant(def.name)),
            set(&[raw::NODE_COMMON_KEYS, def.keys]),
            "the keys of kind `{}`",
            def.name
        );
    }
    // No variant for a kind the table lacks.
    assert_eq!(
        node_variants.len(),
        10,
        "generate, critique and revise share one variant"
    );
    assert_eq!(
        keys(&variant("execute")["properties"]["limits"]),
        set(&[raw::EXECUTE_LIMIT_KEYS])
    );
    assert_eq!(
        keys(&variant("tool")["properties"]["http"]),
        set(&[raw::TOOL_HTTP_KEYS])
    );
    // One schema variant per check kind, each required by name.
    let checks = defs["check"]["oneOf"].as_array().unwrap();
    let kinds: HashSet<String> = checks
        .iter()
        .map(|c| c["required"][0].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, set(&[raw::CHECK_KINDS]));
    let judge = checks.iter().find(|c| c["required"][0] == "judge").unwrap();
    assert_eq!(keys(&judge["properties"]["judge"]), set(&[raw::JUDGE_KEYS]));
}

/// YAML file → JSON, for checking files against the schema.
fn yaml_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap();
    redraft::yaml::parse(&text, Default::default())
        .unwrap()
        .to_json()
}

#[test]
fn shipped_workflows_satisfy_the_schema() {
    let validator = jsonschema::validator_for(&schema()).expect("schema compiles");
    for path in shipped_and_valid() {
        let doc = yaml_json(&path);
        let errors: Vec<String> = validator
            .iter_errors(&doc)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
    }
    // And the schema rejects a misspelled key, as an editor would flag it.
    let bad = yaml_json(&fixtures().join("invalid/unknown-top-key.yaml"));
    assert!(!validator.is_valid(&bad));
}

#[test]
fn a_workflow_without_models_gets_the_embedded_default() {
    let wf = workflow::load_str(
        "version: 1\nnodes:\n  - { id: draft, kind: generate, template: hi }\noutput: draft\n",
        "w.yaml",
        &fixtures(),
    )
    .map_err(|e| e.render())
    .unwrap();
    assert_eq!(wf.models().len(), 1);
    assert_eq!(
        (
            wf.models()[0].name.as_str(),
            wf.models()[0].spec.as_deref().unwrap()
        ),
        ("default", "llama:default")
    );
    // A workflow that calls no model declares none.
    let wf = workflow::load_str(
        "version: 1\ninputs: { x: string }\nnodes:\n  - { id: check, kind: verify, target: '{{ x }}', checks: [ { regex: a } ] }\noutput: { from: check, field: passed }\n",
        "v.yaml",
        &fixtures(),
    )
    .map_err(|e| e.render())
    .unwrap();
    assert!(wf.models().is_empty());
}

#[test]
fn unset_sampling_keys_get_deliberate_defaults_per_role() {
    use redraft::workflow::{Check, NodeKind};
    let wf = crate::support::workflow(
        r#"
version: 1
models:
  m: scripted:../scripts/echo.yaml
nodes:
  - { id: draft, kind: generate, template: "Say hi." }
  - id: judge
    kind: verify
    target: "{{ draft.text }}"
    checks: [ { judge: {} } ]
  - id: critique
    kind: critique
    template: "Critique {{ draft.text }}"
    schema: { type: object, properties: { feedback: { type: string } } }
  - { id: tuned, kind: generate, template: "x", sampling: { temperature: 1.3, max_tokens: 9 } }
edges:
  - { from: draft, to: judge }
  - { from: judge, to: critique }
  - { from: critique, to: tuned }
output: draft
"#,
    );
    let sampling = |i: usize| match &wf.nodes()[i].kind {
        NodeKind::Generate(c) | NodeKind::Critique(c) => c.sampling.clone(),
        NodeKind::Verify(v) => match &v.checks[0] {
            Check::Judge(c) => c.sampling.clone(),
            other => panic!("{other:?}"),
        },
        other => panic!("{}", other.name()),
    };
    // generate: 0.7 and the model's max_tokens (None here).
    assert_eq!(
        (sampling(0).temperature, sampling(0).max_tokens),
        (Some(0.7), None)
    );
    // A judge: deterministic, and only a few tokens (its first is what counts).
    assert_eq!(
        (sampling(1).temperature, sampling(1).max_tokens),
        (Some(0.0), Some(16))
    );
    // critique: low variety.
    assert_eq!(sampling(2).temperature, Some(0.2));
    // Written values win.
    assert_eq!(
        (sampling(3).temperature, sampling(3).max_tokens),
        (Some(1.3), Some(9))
    );
}

#[test]
fn a_schema_that_cannot_fit_max_tokens_is_a_warning_not_an_error() {
    let text = |max_length: u32, min_length: u32| {
        let max_tokens = if max_length == 400 { 160 } else { 100 };
        format!(
            r#"
version: 1
models:
  m: scripted:../scripts/echo.yaml
nodes:
  - id: critique
    kind: critique
    template: "Critique."
    sampling: {{ max_tokens: {max_tokens} }}
    schema:
      type: object
      required: [feedback]
      properties:
        score: {{ type: integer }}
        feedback: {{ type: string, minLength: {min_length}, maxLength: {max_length} }}
output: critique
"#
        )
    };
    let base = fixtures().join("valid");
    // Bounded well inside 100 tokens: nothing to say.
    let wf = workflow::load_str(&text(200, 0), "fits.yaml", &base).unwrap();
    assert!(wf.warnings().is_empty());
    // Up to 2,000 characters: a reply may be cut at 100 tokens.
    let wf = workflow::load_str(&text(2000, 0), "may.yaml", &base).unwrap();
    assert_eq!(wf.warnings().len(), 1);
    assert_eq!(wf.warnings()[0].code, Code::ReplyMayNotFit);
    assert!(
        wf.warnings_rendered().contains("warning[W001]"),
        "{}",
        wf.warnings_rendered()
    );
    assert!(
        wf.warnings_rendered().contains("may not fit"),
        "{}",
        wf.warnings_rendered()
    );
    assert!(
        wf.warnings_rendered().contains("may.yaml: 1 warning"),
        "{}",
        wf.warnings_rendered()
    );
    // At least 1,000 characters can never fit in 100 tokens.
    let wf = workflow::load_str(&text(2000, 1000), "never.yaml", &base).unwrap();
    assert!(
        wf.warnings_rendered().contains("cannot fit"),
        "{}",
        wf.warnings_rendered()
    );
    // 400 characters at 2.5 a token (digits, punctuation) overrun 160.
    let wf = workflow::load_str(&text(400, 0), "digits.yaml", &base).unwrap();
    assert_eq!(wf.warnings().len(), 1, "{}", wf.warnings_rendered());
}

/// Every shape a schema can bound or leave open: strings, arrays, objects
/// with named or extra properties, alternatives. Unbounded is a warning
/// too; bounded everywhere and small enough is none.
#[test]
fn a_schema_without_bounds_is_flagged_and_every_bound_counts() {
    let with = |parameters: &str| {
        format!(
            r#"
version: 1
models:
  m: scripted:../scripts/echo.yaml
nodes:
  - id: call
    kind: generate
    template: "Call."
    sampling: {{ max_tokens: 200 }}
    schema:
      type: object
      required: [parameters]
      properties:
        parameters: {parameters}
output: call
"#
        )
    };
    let base = fixtures().join("valid");
    let warns = |parameters: &str| -> String {
        let wf = workflow::load_str(&with(parameters), "w.yaml", &base).unwrap();
        wf.warnings_rendered().to_string()
    };
    for open in [
        "{ type: object }",
        "{ type: string }",
        "{ type: array, items: { type: string, maxLength: 5 } }",
        "{ type: object, maxProperties: 3, additionalProperties: { type: string } }",
        "{ type: object, additionalProperties: { type: string, maxLength: 5 } }",
        // Decoders ignore maxProperties: keys repeat until max_tokens.
        "{ type: object, maxProperties: 3, additionalProperties: { type: string, maxLength: 5 } }",
        "{ anyOf: [{ type: number }, { type: string }] }",
        "{ type: object, properties: { a: { type: number } }, additionalProperties: { type: string } }",
        "{ type: object, properties: { a: { type: number } }, additionalProperties: true }",
    ] {
        let w = warns(open);
        assert!(w.contains("puts no bound"), "{open}: {w}");
    }
    for bounded in [
        "{ type: object, properties: { a: { anyOf: [{ type: number }, { type: string, maxLength: 20 }] } } }",
        "{ type: array, maxItems: 4, items: { type: string, maxLength: 20 } }",
        "{ type: string, maxLength: 300 }",
        "{ type: object, additionalProperties: false }",
        "{ type: object, properties: { a: { type: number } } }",
    ] {
        let w = warns(bounded);
        assert!(w.is_empty(), "{bounded}: {w}");
    }
    // Bounded, but too long: 2,000 characters in 200 tokens.
    let w = warns("{ type: string, maxLength: 2000 }");
    assert!(w.contains("may not fit"), "{w}");
}

/// Every kind in the table has a section in the reference (a `###`
/// heading naming it) and is listed in `redraft validate`'s help for an
/// unknown kind.
#[test]
fn every_kind_is_documented() {
    let reference = std::fs::read_to_string(root().join("docs/workflow-reference.md")).unwrap();
    let headings: Vec<&str> = reference
        .lines()
        .filter(|l| l.starts_with("### "))
        .collect();
    for def in &redraft::workflow::KINDS {
        let named = |h: &&str| {
            h.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .any(|w| w == def.name)
        };
        assert!(
            headings.iter().any(named),
            "kind `{}` has no section in docs/workflow-reference.md",
            def.name
        );
    }
}

/// A prompt file an editor saved with a byte-order mark: the mark is not
/// part of the prompt the model is sent.
#[test]
fn a_byte_order_mark_is_not_part_of_a_prompt() {
    let dir = std::env::temp_dir().join(format!("redraft-bom-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ask.j2"), "\u{feff}Q: {{ task }}").unwrap();
    let source = "version: 1\nname: bom\nmodels:\n  m: { spec: \"scripted:r.yaml\" }\ninputs:\n  task: string\nnodes:\n  - id: ask\n    kind: generate\n    prompt: ask.j2\noutput: { from: [ask] }\n";
    let wf = redraft::workflow::load_str(source, "bom.yaml", &dir).unwrap();
    assert_eq!(wf.prompt_files()[0].text, "Q: {{ task }}");
    std::fs::remove_dir_all(&dir).unwrap();
}
