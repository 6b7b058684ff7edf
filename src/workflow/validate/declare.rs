//! The header, model and input passes: what the workflow declares before its nodes.

use super::*;

/// Version and prompt directory. Invariant: a workflow that loads says
/// `version: 1`, and its prompt directory exists (unless prompt texts were
/// given in place of its files).
pub(super) fn header_pass(cx: &mut Ctx, raw: &RawWorkflow) {
    match &raw.version {
        Some(v) if v.value == 1 => {}
        Some(v) => cx.err(
            Diagnostic::new(
                Code::BadVersion,
                v.span,
                format!("unsupported workflow version {}", v.value),
            )
            .label("unsupported")
            .help("this redraft reads `version: 1`"),
        ),
        None => cx.err(
            Diagnostic::new(
                Code::BadVersion,
                Span::point(1, 1),
                "the workflow has no `version`",
            )
            .label("`version: 1` is required")
            .help("add `version: 1` at the top"),
        ),
    }
    // Given prompt texts may stand for every file (a workflow built into
    // the binary); a file still missing is reported where it is named.
    if let Some(p) = &raw.prompt_dir {
        if !cx.prompt_dir.is_dir() && cx.prompt_overrides.is_empty() {
            cx.err(
                Diagnostic::new(
                    Code::MissingPrompt,
                    p.span,
                    format!("prompt directory `{}` does not exist", p.value),
                )
                .label("not a directory")
                .help(format!("resolved to {}", cx.prompt_dir.display())),
            );
        }
    }
}

/// Model declarations. Invariant: names are unique, specs parse, limits
/// are in range; a workflow that calls a model but declares none gets the
/// embedded default (`default` = `llama:default`).
pub(super) fn models_pass(cx: &mut Ctx, raw: &RawWorkflow) -> Vec<ModelDecl> {
    let mut models = Vec::new();
    let mut seen: HashMap<&str, Span> = HashMap::new();
    for m in &raw.models {
        if let Some(first) = seen.get(m.name.value.as_str()) {
            cx.err(
                Diagnostic::new(
                    Code::DuplicateId,
                    m.name.span,
                    format!("model `{}` is declared twice", m.name.value),
                )
                .label("duplicate")
                .also(*first, "first declared here"),
            );
        } else {
            seen.insert(&m.name.value, m.name.span);
        }
        let spec = m.spec.as_ref().map(|s| s.value.clone());
        if m.spec.is_none() {
            cx.err(
                Diagnostic::new(
                    Code::ModelSuppliedAtRun,
                    m.name.span,
                    format!("model `{}` has no `spec`", m.name.value),
                )
                .label("no spec")
                .help(format!(
                    "it must be supplied when the workflow runs (`--model {}=SPEC`, or `Engine::with_model` in a program)",
                    m.name.value
                )),
            );
        }
        if let Some(s) = &m.spec {
            if let Err(e) = crate::backend::ModelSpec::parse(&s.value) {
                cx.err(
                    Diagnostic::new(Code::BadModelSpec, s.span, e.to_string())
                        .label("invalid spec")
                        .help(crate::backend::ModelSpec::HELP),
                );
            }
        }
        let max_tokens = match &m.max_tokens {
            Some(t) if t.value == 0 || t.value > u32::MAX as u64 => {
                cx.err(
                    Diagnostic::new(
                        Code::InvalidValue,
                        t.span,
                        "`max_tokens` must be between 1 and 4294967295",
                    )
                    .label("out of range"),
                );
                DEFAULT_MAX_TOKENS
            }
            Some(t) => t.value as u32,
            None => DEFAULT_MAX_TOKENS,
        };
        for (price, key) in [(m.price_in, "input"), (m.price_out, "output")] {
            if price.is_some_and(|p| p < 0.0) {
                cx.err(
                    Diagnostic::new(
                        Code::InvalidValue,
                        m.name.span,
                        format!("model `{}` has a negative {key} price", m.name.value),
                    )
                    .label("negative price"),
                );
            }
        }
        let timeout = m
            .timeout
            .as_ref()
            .and_then(|t| match parse_duration(&t.value) {
                Some(d) if !d.is_zero() => Some(d),
                _ => {
                    cx.err(
                        Diagnostic::new(
                            Code::InvalidValue,
                            t.span,
                            format!(
                                "`timeout` of model `{}` is not a positive duration",
                                m.name.value
                            ),
                        )
                        .label("invalid duration")
                        .help("write a number with a unit: 500ms, 30s, 2m"),
                    );
                    None
                }
            });
        let mut retry = crate::layer::RetryPolicy::default();
        if let Some(r) = &m.retries {
            if r.value > 10 {
                cx.err(
                    Diagnostic::new(
                        Code::InvalidValue,
                        r.span,
                        format!("`retries` = {} is more than 10", r.value),
                    )
                    .label("out of range"),
                );
            }
            retry.max_retries = r.value.min(10) as u32;
        }
        if let Some(d) = &m.retry_delay {
            match parse_duration(&d.value) {
                Some(delay) => retry.base_delay = delay,
                None => cx.err(
                    Diagnostic::new(
                        Code::InvalidValue,
                        d.span,
                        format!(
                            "`retry_delay` of model `{}` is not a duration",
                            m.name.value
                        ),
                    )
                    .label("invalid duration")
                    .help("write a number with a unit: 100ms, 1s"),
                ),
            }
        }
        for limit in [&m.rpm, &m.tpm].into_iter().flatten() {
            if limit.value == 0 {
                cx.err(
                    Diagnostic::new(
                        Code::InvalidValue,
                        limit.span,
                        "a rate limit of 0 allows no call",
                    )
                    .label("zero"),
                );
            }
        }
        let rate_limit = crate::layer::RateLimits {
            requests_per_minute: m
                .rpm
                .as_ref()
                .map(|r| r.value.clamp(1, u32::MAX as u64) as u32),
            tokens_per_minute: m.tpm.as_ref().map(|t| t.value.max(1)),
        };
        models.push(ModelDecl {
            name: m.name.value.clone(),
            spec,
            max_tokens,
            price: Price {
                input_per_mtok: m.price_in.unwrap_or(0.0),
                output_per_mtok: m.price_out.unwrap_or(0.0),
            },
            retry,
            timeout,
            rate_limit,
            cache: m.cache.unwrap_or(true),
            settings: m.settings.clone(),
        });
    }
    // A workflow that declares no model but calls one gets the embedded
    // default model (SmolLM2 through llama.cpp) under the name `default`.
    let calls_a_model = raw.nodes.iter().any(|n| !n.calls().is_empty());
    if models.is_empty() && calls_a_model {
        models.push(ModelDecl {
            name: DEFAULT_MODEL_NAME.to_string(),
            spec: Some(DEFAULT_MODEL_SPEC.to_string()),
            max_tokens: DEFAULT_MAX_TOKENS,
            price: Price::default(),
            retry: crate::layer::RetryPolicy::default(),
            timeout: None,
            rate_limit: crate::layer::RateLimits::default(),
            cache: true,
            settings: serde_json::Value::Null,
        });
    }

    models
}

/// Input declarations. Invariant: names are unique, shadow no built-in,
/// and defaults have the declared type.
pub(super) fn inputs_pass(
    cx: &mut Ctx,
    raw: &RawWorkflow,
    names: &mut HashMap<String, (&'static str, Span)>,
) -> Vec<InputDecl> {
    let mut inputs = Vec::new();
    for i in &raw.inputs {
        let name = &i.name.value;
        if BUILTINS.contains(&name.as_str()) {
            cx.err(
                Diagnostic::new(
                    Code::DuplicateId,
                    i.name.span,
                    format!("input `{name}` shadows a built-in variable"),
                )
                .label("reserved name")
                .help(format!("reserved: {}", BUILTINS.join(", "))),
            );
        } else if let Some(&(_, first)) = names.get(name) {
            cx.err(
                Diagnostic::new(
                    Code::DuplicateId,
                    i.name.span,
                    format!("input `{name}` is declared twice"),
                )
                .label("duplicate")
                .also(first, "first declared here"),
            );
        } else {
            names.insert(name.clone(), ("input", i.name.span));
        }
        let ty = match &i.ty {
            None => InputType::String,
            Some(t) => InputType::parse(&t.value).unwrap_or_else(|| {
                let d = Diagnostic::new(
                    Code::InvalidValue,
                    t.span,
                    format!("unknown input type `{}`", t.value),
                )
                .label("unknown type");
                let d = match did_you_mean(&t.value, InputType::NAMES.iter().copied()) {
                    Some(b) => d.help(format!("did you mean `{b}`?")),
                    None => d.help(format!("one of: {}", InputType::NAMES.join(", "))),
                };
                cx.err(d);
                InputType::Any
            }),
        };
        if let Some((default, span)) = &i.default {
            if !ty.accepts(default) {
                cx.err(
                    Diagnostic::new(
                        Code::WrongType,
                        *span,
                        format!("the default of input `{name}` is not of type {}", ty.name()),
                    )
                    .label("wrong type"),
                );
            }
        }
        inputs.push(InputDecl {
            name: name.clone(),
            ty,
            default: i.default.as_ref().map(|d| d.0.clone()),
            description: i.description.clone(),
        });
    }

    inputs
}
