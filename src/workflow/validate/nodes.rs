//! The nodes pass (each node through its kind's builder) and the readers the builders share: model calls, checks, patterns, schemas, expressions.

use super::*;

/// Nodes: each raw node through its kind's builder (the kinds table).
/// Invariant: a node whose own keys failed keeps its place (`None`), so the
/// graph, variable and budget passes still check everything else.
pub(super) fn nodes_pass(
    cx: &mut Ctx,
    raw: &RawWorkflow,
    ids: &NodeIds,
    model_names: &[&str],
    models: &[ModelDecl],
    resolve: library::ResolveNode,
) -> Vec<Option<NodeSpec>> {
    let node_ids = &ids.ids;
    let mut nodes = Vec::new();
    for (idx, n) in raw.nodes.iter().enumerate() {
        let id = node_ids[idx].clone();
        let label = format!("node `{id}`");
        let budget = cx.limits(&n.budget, &format!("the budget of {label}"));
        let env = Env {
            idx,
            id: &id,
            label: &label,
            span: n.span,
            model_names,
            models,
            resolve,
        };
        let kind = n
            .kind
            .as_ref()
            .and_then(|k| Kind::parse(&k.value))
            .and_then(|k| (k.def().build)(cx, n, &env));
        nodes.push(kind.map(|kind| NodeSpec { id, kind, budget }));
    }

    nodes
}

/// What a model call is for; it decides the defaults of unset sampling keys.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum CallRole {
    /// generate, revise: some variety, the model's `max_tokens`.
    Generate,
    /// critique: structured feedback, little variety.
    Critique,
    /// a verify node's judge: deterministic, and only its first tokens are
    /// read (Yes/No, or their logprobs).
    Judge,
}

impl CallRole {
    /// The temperature when the workflow sets none. Fixed here rather than
    /// left to each backend (llama.cpp samples at 0.8, OpenAI at 1.0), so a
    /// workflow behaves the same on every backend.
    fn temperature(self) -> f32 {
        match self {
            CallRole::Generate => DEFAULT_TEMPERATURE,
            CallRole::Critique => DEFAULT_CRITIQUE_TEMPERATURE,
            CallRole::Judge => 0.0,
        }
    }

    /// `max_tokens` when the workflow sets none (`None`: the model's).
    fn max_tokens(self) -> Option<u32> {
        (self == CallRole::Judge).then_some(DEFAULT_JUDGE_MAX_TOKENS)
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn model_call(
    cx: &mut Ctx,
    c: &RawCall,
    node: usize,
    id: &str,
    label: &str,
    model_names: &[&str],
    models: &[ModelDecl],
    role: CallRole,
) -> Option<ModelCall> {
    let needs_prompt = role != CallRole::Judge;
    let model = match &c.model {
        Some(m) => {
            let found = model_names.iter().position(|n| *n == m.value);
            if found.is_none() {
                cx.err(unknown_name(
                    Code::UnknownModel,
                    m.span,
                    format!("{label} uses model `{}`, which is not declared", m.value),
                    &m.value,
                    model_names,
                ));
            }
            found
        }
        None if models.len() == 1 => Some(0),
        None => {
            let help = if models.is_empty() {
                "declare one under `models:`".to_string()
            } else {
                format!("name one of: {}", model_names.join(", "))
            };
            cx.err(
                Diagnostic::new(
                    Code::MissingKey,
                    c.span,
                    format!("{label} names no `model`"),
                )
                .label("`model` is required")
                .help(help),
            );
            None
        }
    };
    let prompt = match (&c.prompt_file, &c.template) {
        (Some(file), _) => {
            cx.prompt_file(format!("{id}.prompt"), file, &format!("prompt of {label}"))
        }
        (None, Some(t)) => cx.inline(
            format!("{id}.prompt"),
            &t.value,
            t.span,
            &format!("`template` of {label}"),
        ),
        (None, None) if needs_prompt => {
            cx.err(
                Diagnostic::new(Code::MissingKey, c.span, format!("{label} has no prompt"))
                    .label("`prompt` or `template` is required")
                    .help(
                        "`prompt: file.j2` (under the prompt directory) or `template: inline text`",
                    ),
            );
            None
        }
        (None, None) => cx.inline(
            format!("{id}.prompt"),
            DEFAULT_JUDGE_PROMPT,
            c.span,
            "the default judge prompt",
        ),
    };
    let extra: &'static [&'static str] = if needs_prompt { &[] } else { &[TARGET_VAR] };
    if let Some(p) = &prompt {
        let span = c
            .prompt_file
            .as_ref()
            .or(c.template.as_ref())
            .map_or(c.span, |s| s.span);
        cx.pending_vars.push(VarCheck {
            source: VarSource::Template(p.clone()),
            node,
            span,
            extra,
            what: format!("the prompt of {label}"),
        });
    }
    let system = c.system.as_ref().and_then(|s| {
        let name = cx.inline(
            format!("{id}.{}system", if needs_prompt { "" } else { "judge." }),
            &s.value,
            s.span,
            &format!("`system` of {label}"),
        )?;
        cx.pending_vars.push(VarCheck {
            source: VarSource::Template(name.clone()),
            node,
            span: s.span,
            extra,
            what: format!("`system` of {label}"),
        });
        Some(name)
    });
    let s = &c.sampling;
    if let Some(t) = &s.temperature {
        if !(0.0..=2.0).contains(&t.value) {
            cx.err(
                Diagnostic::new(
                    Code::InvalidValue,
                    t.span,
                    format!("temperature {} is outside 0..=2", t.value),
                )
                .label("out of range"),
            );
        }
    }
    if let Some(t) = &s.top_p {
        if !(t.value > 0.0 && t.value <= 1.0) {
            cx.err(
                Diagnostic::new(
                    Code::InvalidValue,
                    t.span,
                    format!("top_p {} is outside (0, 1]", t.value),
                )
                .label("out of range"),
            );
        }
    }
    if let Some(m) = &s.max_tokens {
        if m.value == 0 || m.value > u32::MAX as u64 {
            cx.err(
                Diagnostic::new(
                    Code::InvalidValue,
                    m.span,
                    "`max_tokens` must be at least 1",
                )
                .label("out of range"),
            );
        }
    }
    let n = match &c.n {
        Some(n) if n.value == 0 || n.value > 128 => {
            cx.err(
                Diagnostic::new(
                    Code::InvalidValue,
                    n.span,
                    format!("`n` = {} is outside 1..=128", n.value),
                )
                .label("out of range"),
            );
            1
        }
        Some(n) => n.value as u32,
        None => 1,
    };
    let logprobs = match &c.logprobs {
        Some(l) if l.value > 20 => {
            cx.err(
                Diagnostic::new(
                    Code::InvalidValue,
                    l.span,
                    format!("`logprobs` = {} is more than 20", l.value),
                )
                .label("out of range"),
            );
            None
        }
        Some(l) => Some(l.value as u8),
        None => None,
    };
    let schema = c
        .schema
        .as_ref()
        .and_then(|(src, span)| compile_schema(cx, src, *span));
    if let (Some(schema), Some(m), Some((_, span))) = (&schema, model, &c.schema) {
        let max_tokens = s
            .max_tokens
            .as_ref()
            .map(|m| m.value.min(u32::MAX as u64) as u32)
            .or(role.max_tokens())
            .unwrap_or(models[m].max_tokens);
        if let Some(d) = reply_fit(&schema.source, max_tokens, *span, label) {
            cx.err(d);
        }
    }
    let model = model?;
    let prompt = prompt?;
    Some(ModelCall {
        model,
        prompt,
        system,
        sampling: Sampling {
            temperature: Some(
                s.temperature
                    .as_ref()
                    .map_or(role.temperature(), |t| t.value as f32),
            ),
            top_p: s.top_p.as_ref().map(|t| t.value as f32),
            seed: s.seed,
            max_tokens: s
                .max_tokens
                .as_ref()
                .map(|m| m.value.clamp(1, u32::MAX as u64) as u32)
                .or(role.max_tokens()),
            stop: s.stop.clone(),
        },
        n,
        logprobs,
        schema,
        repair_attempts: c
            .repair_attempts
            .as_ref()
            .map_or(1, |r| r.value.min(5) as u32),
        // Resolved by `conversation_checks`, once every node is known.
        continues: None,
    })
}

/// Characters of the shortest and (if bounded) the longest JSON text a
/// schema accepts, roughly: string lengths, numbers, nesting and keys.
pub(super) fn reply_chars(schema: &serde_json::Value) -> (usize, Option<usize>) {
    let get = |k: &str| {
        schema
            .get(k)
            .and_then(serde_json::Value::as_u64)
            .map(|v| v as usize)
    };
    if let Some(options) = schema.get("enum").and_then(|e| e.as_array()) {
        let lens = options.iter().map(|o| o.to_string().len());
        return (lens.clone().min().unwrap_or(0), lens.max());
    }
    // One of several shapes: the shortest of their shortest, the longest of
    // their longest (unbounded if any is).
    for key in ["anyOf", "oneOf"] {
        if let Some(options) = schema.get(key).and_then(|e| e.as_array()) {
            let all: Vec<(usize, Option<usize>)> = options.iter().map(reply_chars).collect();
            let min = all.iter().map(|a| a.0).min().unwrap_or(0);
            let max = all
                .iter()
                .try_fold(0, |acc: usize, a| a.1.map(|m| acc.max(m)));
            return (min, max);
        }
    }
    match schema.get("type").and_then(|t| t.as_str()) {
        Some("string") => (
            get("minLength").unwrap_or(0) + 2,
            get("maxLength").map(|m| m + 2),
        ),
        Some("integer") | Some("number") => (1, Some(24)),
        Some("boolean") => (4, Some(5)),
        Some("null") => (4, Some(4)),
        Some("array") => {
            let (item_min, item_max) = schema.get("items").map_or((1, None), reply_chars);
            let min = get("minItems").unwrap_or(0) * (item_min + 1) + 2;
            let max = match (get("maxItems"), item_max) {
                (Some(n), Some(m)) => Some(n * (m + 1) + 2),
                _ => None,
            };
            (min, max)
        }
        Some("object") => {
            // Properties beyond the named ones, as a schema: unbounded, even
            // with `maxProperties`, which grammar-constrained decoding
            // (llama.cpp, OpenAI) does not enforce: a small model repeats
            // keys until max_tokens.
            let additional = schema.get("additionalProperties");
            let free = matches!(
                additional,
                Some(serde_json::Value::Object(_) | serde_json::Value::Bool(true))
            );
            let Some(props) = schema.get("properties").and_then(|p| p.as_object()) else {
                // No named properties: `{}` only when extras are closed.
                let closed = additional == Some(&serde_json::Value::Bool(false));
                return (2, closed.then_some(2));
            };
            let required: Vec<&str> = schema
                .get("required")
                .and_then(|r| r.as_array())
                .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
                .unwrap_or_default();
            let (mut min, mut max) = (2, Some(2));
            for (key, sub) in props {
                let (lo, hi) = reply_chars(sub);
                let entry = key.len() + 4; // "key": and a comma
                if required.contains(&key.as_str()) {
                    min += entry + lo;
                }
                max = max.zip(hi).map(|(a, b)| a + entry + b);
            }
            (min, max.filter(|_| !free))
        }
        _ => (0, None),
    }
}

/// A warning when a structured reply cannot, or may not, fit `max_tokens`:
/// a reply cut at `max_tokens` is invalid JSON, and the node then fails
/// after its repair attempts. Tokens are estimated from characters: at
/// most 4 a token for the shortest reply, 2.5 for the longest (digits and
/// punctuation are often a token each: a small model's 390-character
/// critique of a GSM8K solution took 160 tokens). A schema with no bound
/// at all (a string without `maxLength`, an object with free properties,
/// `maxProperties` or not) is flagged too.
pub(super) fn reply_fit(
    schema: &serde_json::Value,
    max_tokens: u32,
    span: Span,
    label: &str,
) -> Option<Diagnostic> {
    let (min, max) = reply_chars(schema);
    let (message, help) = if min / 4 > max_tokens as usize {
        (
            format!(
                "the shortest reply the schema of {label} accepts (~{} tokens) cannot fit its `max_tokens` ({max_tokens})",
                min / 4
            ),
            "raise `max_tokens`, or lower the schema's `minLength`/`minItems`",
        )
    } else if let Some(max) = max.filter(|m| m * 2 / 5 > max_tokens as usize) {
        (
            format!(
                "the longest reply the schema of {label} accepts (~{} tokens) may not fit its `max_tokens` ({max_tokens}); a reply cut short is invalid JSON",
                max * 2 / 5
            ),
            "raise `max_tokens`, or bound the fields tighter (`maxLength`, `maxItems`)",
        )
    } else if max.is_none() {
        (
            format!(
                "the schema of {label} puts no bound on a reply's length (a string without `maxLength`, an array without `maxItems`, or an object with free properties), so a reply may run past its `max_tokens` ({max_tokens}) and be cut, invalid JSON"
            ),
            "bound every field (`maxLength`, `maxItems`) and name an object's properties: grammar-constrained decoding then keeps replies inside the bound (it ignores `maxProperties`; free-form data fits in a string with `maxLength`)",
        )
    } else {
        return None;
    };
    Some(
        Diagnostic::new(Code::ReplyMayNotFit, span, message)
            .label("schema and max_tokens disagree")
            .help(help),
    )
}

#[allow(clippy::too_many_arguments)]
pub(super) fn verify_check(
    cx: &mut Ctx,
    c: &RawCheck,
    node: usize,
    id: &str,
    index: usize,
    label: &str,
    model_names: &[&str],
    models: &[ModelDecl],
) -> Option<Check> {
    let expected = |cx: &mut Ctx, e: &Spanned<String>| {
        let name = cx.inline(
            format!("{id}.checks.{index}"),
            &e.value,
            e.span,
            &format!("check {} of {label}", index + 1),
        )?;
        cx.pending_vars.push(VarCheck {
            source: VarSource::Template(name.clone()),
            node,
            span: e.span,
            extra: &[],
            what: format!("check {} of {label}", index + 1),
        });
        Some(name)
    };
    match c {
        RawCheck::Exact {
            expected: e,
            ignore_case,
        } => expected(cx, e).map(|expected| Check::Exact {
            expected,
            ignore_case: *ignore_case,
        }),
        RawCheck::Numeric {
            expected: e,
            tolerance,
        } => expected(cx, e).map(|expected| Check::Numeric {
            expected,
            tolerance: *tolerance,
        }),
        RawCheck::Contains {
            expected: e,
            ignore_case,
        } => expected(cx, e).map(|expected| Check::Contains {
            expected,
            ignore_case: *ignore_case,
        }),
        RawCheck::Lines(e) => expected(cx, e).map(|expected| Check::Lines { expected }),
        RawCheck::Regex(r) => compile_regex(cx, r).map(Check::Regex),
        RawCheck::JsonSchema(src, span) => compile_schema(cx, src, *span).map(Check::JsonSchema),
        RawCheck::Judge(call) => {
            let judge_id = format!("{id}.checks.{index}.judge");
            model_call(
                cx,
                call,
                node,
                &judge_id,
                &format!("the judge of {label}"),
                model_names,
                models,
                CallRole::Judge,
            )
            .map(Check::Judge)
        }
    }
}

/// An answer-reading key (`extract`, `answer`): `number` (the numeric
/// scorer's reading), else a regex.
pub(super) fn answer_rule(cx: &mut Ctx, r: &Spanned<String>) -> Option<crate::answer::Rule> {
    if r.value == "number" {
        Some(crate::answer::Rule::Number)
    } else {
        compile_regex(cx, r).map(crate::answer::Rule::Pattern)
    }
}

pub(super) fn compile_regex(cx: &mut Ctx, r: &Spanned<String>) -> Option<regex::Regex> {
    match regex::RegexBuilder::new(&r.value)
        .size_limit(1 << 20)
        .build()
    {
        Ok(re) => Some(re),
        Err(e) => {
            let detail = e
                .to_string()
                .lines()
                .last()
                .unwrap_or("")
                .trim()
                .to_string();
            cx.err(
                Diagnostic::new(
                    Code::BadRegex,
                    r.span,
                    format!("invalid regular expression: {detail}"),
                )
                .label("invalid regex"),
            );
            None
        }
    }
}

pub(super) fn compile_schema(
    cx: &mut Ctx,
    src: &serde_json::Value,
    span: Span,
) -> Option<Arc<Schema>> {
    match Schema::compile(src.clone()) {
        Ok(s) => Some(Arc::new(s)),
        Err(e) => {
            cx.err(
                Diagnostic::new(Code::BadSchema, span, format!("invalid JSON Schema: {e}"))
                    .label("invalid schema"),
            );
            None
        }
    }
}

pub(super) fn check_expression(
    cx: &mut Ctx,
    expr: &str,
    span: Span,
    node: usize,
    extra: &'static [&'static str],
    what: &str,
) {
    match cx.templates.add_expression(expr) {
        Ok(_) => cx.pending_vars.push(VarCheck {
            source: VarSource::Expression(expr.to_string()),
            node,
            span,
            extra,
            what: what.to_string(),
        }),
        Err(e) => cx.err(
            Diagnostic::new(
                Code::InvalidCondition,
                span,
                format!("{what} does not parse: {e}"),
            )
            .label("invalid expression"),
        ),
    }
}
