//! Prompt templates and condition expressions (minijinja).
//!
//! **Invariants:** undefined variables are errors (strict mode); templates
//! cannot read files or the environment (no loader, no `env` global); every
//! render has a fuel limit, so a template cannot loop forever.

use std::collections::HashSet;

use minijinja::{Environment, UndefinedBehavior, Value};

/// Functions every template and expression may call.
const FUNCTIONS: &[&str] = &["bleu4", "cosine", "max_cosine"];

fn without_functions(mut vars: HashSet<String>) -> HashSet<String> {
    vars.retain(|v| !FUNCTIONS.contains(&v.split('.').next().unwrap_or(v)));
    vars
}

/// Fuel for one render or evaluation: enough for any sane prompt.
const FUEL: u64 = 2_000_000;

/// All templates of one workflow, compiled once at load time.
pub struct Templates {
    env: Environment<'static>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates").finish_non_exhaustive()
    }
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

/// A template that failed to render or an expression that failed to evaluate.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{what}: {detail}")]
pub struct TemplateError {
    pub what: String,
    pub detail: String,
}

impl Templates {
    pub fn new() -> Templates {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_fuel(Some(FUEL));
        env.set_recursion_limit(64);
        // Prompts are plain text, never HTML.
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        env.set_keep_trailing_newline(true);
        // Similarity helpers for stop rules (DRAFT's convergence δ).
        env.add_function("bleu4", |reference: String, hypothesis: String| {
            crate::similarity::bleu4(&reference, &hypothesis)
        });
        env.add_function("cosine", |a: Vec<f32>, b: Vec<f32>| {
            crate::similarity::cosine(&a, &b)
        });
        // DRAFT's diversity check: the closest of earlier vectors (0 if none).
        env.add_function("max_cosine", |a: Vec<f32>, others: Vec<Vec<f32>>| {
            others
                .iter()
                .map(|b| crate::similarity::cosine(&a, b))
                .fold(0.0_f64, f64::max)
        });
        Templates { env }
    }

    /// Compiles and stores a template under `name`.
    pub fn add(&mut self, name: &str, source: &str) -> Result<(), String> {
        self.env
            .add_template_owned(name.to_string(), source.to_string())
            .map_err(|e| describe(&e))
    }

    /// Every stored template's source by name (prompts as run, for the
    /// eval store), in name order.
    pub fn sources(&self) -> std::collections::BTreeMap<String, String> {
        self.env
            .templates()
            .map(|(name, t)| (name.to_string(), t.source().to_string()))
            .collect()
    }

    /// Checks that an expression parses, and compiles it once for
    /// [`eval`](Self::eval); returns its top-level variables.
    pub fn add_expression(&mut self, expr: &str) -> Result<HashSet<String>, String> {
        let vars = self.check_expression(expr)?;
        // Compiled as `{% set __value = (expr) %}` so evaluation skips parsing.
        // An expression that cannot be wrapped (a stray `%}` in a string)
        // is compiled at each evaluation instead.
        let _ = self.env.add_template_owned(
            expression_name(expr),
            format!("{{% set __value = ({expr}) %}}"),
        );
        Ok(vars)
    }

    /// The variables a template reads, with the attributes read from them
    /// (`history.critique`, `loop.round`, `inputs.task`).
    pub fn variable_paths(&self, name: &str) -> HashSet<String> {
        self.env
            .get_template(name)
            .map(|t| without_functions(t.undeclared_variables(true)))
            .unwrap_or_default()
    }

    /// Like [`variable_paths`](Self::variable_paths), for an expression.
    pub fn expression_paths(&self, expr: &str) -> HashSet<String> {
        self.env
            .compile_expression(expr)
            .map(|c| without_functions(c.undeclared_variables(true)))
            .unwrap_or_default()
    }

    /// Checks that an expression parses; returns its top-level variables.
    pub fn check_expression(&self, expr: &str) -> Result<HashSet<String>, String> {
        let compiled = self
            .env
            .compile_expression(expr)
            .map_err(|e| describe(&e))?;
        Ok(without_functions(compiled.undeclared_variables(false)))
    }

    pub fn render(&self, name: &str, ctx: &Value) -> Result<String, TemplateError> {
        let tmpl = self.env.get_template(name).map_err(|e| TemplateError {
            what: format!("template `{name}`"),
            detail: describe(&e),
        })?;
        tmpl.render(ctx).map_err(|e| TemplateError {
            what: format!("rendering `{name}`"),
            detail: explain(&e, || self.variable_paths(name), ctx),
        })
    }

    /// Evaluates an expression against a context.
    pub fn eval(&self, expr: &str, ctx: &Value) -> Result<Value, TemplateError> {
        let err = |e: minijinja::Error| TemplateError {
            what: format!("evaluating `{expr}`"),
            detail: explain(&e, || self.expression_paths(expr), ctx),
        };
        if let Ok(tmpl) = self.env.get_template(&expression_name(expr)) {
            let captured = tmpl.render_captured(ctx).map_err(err)?;
            return Ok(captured
                .state()
                .lookup("__value")
                .unwrap_or(Value::UNDEFINED));
        }
        let compiled = self.env.compile_expression(expr).map_err(err)?;
        compiled.eval(ctx).map_err(err)
    }

    /// Evaluates an expression as a condition (truthiness).
    pub fn condition(&self, expr: &str, ctx: &Value) -> Result<bool, TemplateError> {
        self.eval(expr, ctx).map(|v| v.is_true())
    }

    /// Evaluates an expression that must give a number.
    pub fn number(&self, expr: &str, ctx: &Value) -> Result<f64, TemplateError> {
        let v = self.eval(expr, ctx)?;
        f64::try_from(v.clone()).map_err(|_| TemplateError {
            what: format!("evaluating `{expr}`"),
            detail: format!("expected a number, got `{v}`"),
        })
    }
}

fn expression_name(expr: &str) -> String {
    format!("expression:{expr}")
}

/// [`describe`], and for an undefined value also which attribute was
/// missing and what the value it was read from does have:
/// "`check.confidence` is undefined; `check` has: feedback, passed, score".
fn explain(e: &minijinja::Error, paths: impl FnOnce() -> HashSet<String>, ctx: &Value) -> String {
    let base = describe(e);
    if e.kind() != minijinja::ErrorKind::UndefinedError {
        return base;
    }
    let mut paths: Vec<String> = paths().into_iter().collect();
    paths.sort();
    for path in paths {
        let mut parts = path.split('.');
        let Some(first) = parts.next() else { continue };
        let mut value = ctx.get_attr(first).unwrap_or(Value::UNDEFINED);
        if value.is_undefined() {
            return format!("{base}: `{first}` is undefined here");
        }
        let mut read = first.to_string();
        for attr in parts {
            let next = value.get_attr(attr).unwrap_or(Value::UNDEFINED);
            if next.is_undefined() {
                let mut fields: Vec<String> = value
                    .try_iter()
                    .map(|keys| keys.map(|k| k.to_string()).collect())
                    .unwrap_or_default();
                fields.sort();
                let has = if fields.is_empty() {
                    "no fields".to_string()
                } else {
                    format!("fields {}", fields.join(", "))
                };
                return format!("{base}: `{read}.{attr}` is undefined; `{read}` has {has}");
            }
            read = format!("{read}.{attr}");
            value = next;
        }
    }
    base
}

/// The error text without minijinja's source dump, one line.
fn describe(e: &minijinja::Error) -> String {
    let mut s = e.kind().to_string();
    if let Some(detail) = e.detail() {
        s.push_str(": ");
        s.push_str(detail);
    }
    if let Some(line) = e.line() {
        s.push_str(&format!(" (template line {line})"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use minijinja::context;

    #[test]
    fn an_undefined_attribute_is_named_with_the_fields_that_exist() {
        let mut t = Templates::new();
        t.add_expression("check.confidence > 0.5").unwrap();
        let ctx = context! { check => context! { passed => true, score => 0.7, feedback => "" } };
        let e = t.condition("check.confidence > 0.5", &ctx).unwrap_err();
        assert!(
            e.detail.contains(
                "`check.confidence` is undefined; `check` has fields feedback, passed, score"
            ),
            "{}",
            e.detail
        );
        t.add("p", "Score: {{ critique.score }}").unwrap();
        let e = t.render("p", &context! { task => "x" }).unwrap_err();
        assert!(
            e.detail.contains("`critique` is undefined here"),
            "{}",
            e.detail
        );
    }

    #[test]
    fn undefined_variables_are_errors() {
        let mut t = Templates::new();
        t.add("p", "Hello {{ name }}").unwrap();
        let err = t.render("p", &context! {}).unwrap_err();
        assert!(err.detail.contains("undefined"), "{err}");
        assert_eq!(t.render("p", &context! { name => "x" }).unwrap(), "Hello x");
    }

    #[test]
    fn similarity_functions_serve_stop_rules() {
        let mut t = Templates::new();
        let expr = "(bleu4(old, new) + cosine(u, v)) / 2 >= 0.75";
        let vars = t.add_expression(expr).unwrap();
        assert_eq!(vars.len(), 4, "functions are not variables: {vars:?}");
        let same =
            context! { old => "a b c d e", new => "a b c d e", u => [1.0, 0.0], v => [2.0, 0.0] };
        assert!(t.condition(expr, &same).unwrap());
        let apart =
            context! { old => "a b c d e", new => "v w x y z", u => [1.0, 0.0], v => [0.0, 1.0] };
        assert!(!t.condition(expr, &apart).unwrap());
        let short = t
            .number("bleu4('the cat sat', 'the cat sat')", &context! {})
            .unwrap();
        // No 4-grams in three words: smoothed as NLTK does, (ln 3 / 10)^(1/4).
        assert!((short - 0.5757197301274735).abs() < 1e-12, "{short}");
        let max = t
            .number(
                "max_cosine([1.0, 0.0], [[0.0, 1.0], [1.0, 1.0]])",
                &context! {},
            )
            .unwrap();
        assert!(
            (max - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-6,
            "{max}"
        );
        let none = t
            .number("max_cosine([1.0, 0.0], [])", &context! {})
            .unwrap();
        assert_eq!(none, 0.0);
    }

    #[test]
    fn templates_cannot_include_files() {
        let mut t = Templates::new();
        t.add("p", "{% include '/etc/passwd' %}").unwrap();
        assert!(t.render("p", &context! {}).is_err());
    }

    #[test]
    fn fuel_stops_runaway_loops() {
        let mut t = Templates::new();
        t.add(
            "p",
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
        )
        .unwrap();
        assert!(t.render("p", &context! {}).is_err());
    }

    #[test]
    fn compiled_and_uncompiled_expressions_agree() {
        let mut t = Templates::new();
        let ctx = context! { a => 2, s => "x" };
        for expr in [
            "a > 1",
            "a * 3",
            "s ~ '%}'",
            "[a, a] | length",
            "undefined_name.x",
        ] {
            let fresh = t
                .eval(expr, &ctx)
                .map(|v| v.to_string())
                .map_err(|e| e.detail);
            t.add_expression(expr).unwrap();
            let compiled = t
                .eval(expr, &ctx)
                .map(|v| v.to_string())
                .map_err(|e| e.detail);
            assert_eq!(
                fresh.is_ok(),
                compiled.is_ok(),
                "{expr}: {fresh:?} vs {compiled:?}"
            );
            if let (Ok(a), Ok(b)) = (&fresh, &compiled) {
                assert_eq!(a, b, "{expr}");
            }
        }
    }

    #[test]
    fn expressions_report_their_variables() {
        let t = Templates::new();
        let vars = t
            .check_expression("not check.passed and round < 3")
            .unwrap();
        assert_eq!(
            vars,
            HashSet::from(["check".to_string(), "round".to_string()])
        );
        assert!(t.check_expression("check.passed and").is_err());
        assert!(t.condition("a > 1", &context! { a => 2 }).unwrap());
    }
}
