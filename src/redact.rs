//! Secrets out of everything redraft prints or stores.
//!
//! A store URL (`postgres://user:PASSWORD@host/db`), a model endpoint
//! (`openai:m@https://user:TOKEN@host/v1?api_key=KEY`) or a command line
//! holding either can reach stderr, `--json`, the eval's stored record, the
//! HTML report and error messages. Every one of those goes through [`text`]
//! (or [`url`] for a lone URL) first.
//!
//! What counts as a secret: the password of a URL's userinfo, the value of
//! a query parameter whose name says it holds one (`password`, `key`,
//! `token`, `secret`, `signature`, `auth`, `credential`, ... in any case),
//! the credential after `Bearer`/`Basic`, and the value of a `name: value`
//! or `"name": "value"` pair whose name is a credential's (`Authorization`,
//! `api-key`, `x-api-key`, `token`, `password`, `secret`, `cookie`, or
//! ending in `_api_key`, `_token`, `_secret`, `_password`): a workflow's
//! `headers:` written with a literal key. All become `***`; the user name,
//! host, path, other parameters and names stay, so a message still says
//! where. A value that names an environment variable (`${VAR}`) is no
//! secret and stays.
//!
//! **Invariant:** a leaf (imports nothing of redraft's); idempotent
//! (`text(text(s)) == text(s)`); a string with nothing to mask is returned
//! as it is (borrowed).

use std::borrow::Cow;

/// What a secret is replaced by.
pub const MASK: &str = "***";

/// Query parameter names (lowercased substrings) whose values are secrets.
const SECRET_PARAMS: &[&str] = &[
    "pass",
    "pwd",
    "key",
    "token",
    "secret",
    "sig",
    "auth",
    "credential",
    "session",
];

/// Every URL in `s` with its secrets masked, and every credential.
pub fn text(s: &str) -> Cow<'_, str> {
    match urls(s) {
        Cow::Borrowed(_) => credentials(s),
        Cow::Owned(o) => match credentials(&o) {
            Cow::Borrowed(_) => Cow::Owned(o),
            Cow::Owned(c) => Cow::Owned(c),
        },
    }
}

/// `Bearer`/`Basic` credentials and the values of credential-named pairs.
fn credentials(s: &str) -> Cow<'_, str> {
    use std::sync::LazyLock;
    if !s.contains(':') && !s.contains('=') && !s.contains("earer ") && !s.contains("asic ") {
        return Cow::Borrowed(s);
    }
    static SCHEME: LazyLock<regex::Regex> = LazyLock::new(|| {
        regex::Regex::new(r"(?i)\b(bearer|basic)\s+([A-Za-z0-9._~+/=-]{6,})").expect("valid")
    });
    static PAIR: LazyLock<regex::Regex> = LazyLock::new(|| {
        regex::Regex::new(
            r#"(?P<name>["']?[A-Za-z][A-Za-z0-9_-]*["']?)(?P<sep>[ \t]*[:=][ \t]*)(?:"(?P<dq>[^"\n]*)"|'(?P<sq>[^'\n]*)'|(?P<bare>[^\s"',}\]#{\[&;][^\s,}\]#&;]*))"#,
        )
        .expect("valid")
    });
    let after_scheme = SCHEME.replace_all(s, |c: &regex::Captures| {
        // A credential has a digit, a symbol or mixed case; a word after
        // "Basic" in prose ("Basic arithmetic") has none.
        let v = &c[2];
        let tail = v.get(1..).unwrap_or("");
        let credential = v.chars().any(|ch| !ch.is_ascii_alphabetic())
            || (tail.chars().any(|ch| ch.is_ascii_uppercase())
                && tail.chars().any(|ch| ch.is_ascii_lowercase()));
        if v == MASK || !credential {
            c[0].to_string()
        } else {
            format!("{} {MASK}", &c[1])
        }
    });
    let masked = PAIR.replace_all(&after_scheme, |c: &regex::Captures| {
        let name = c["name"].trim_matches(['"', '\'']);
        let value = c
            .name("dq")
            .or_else(|| c.name("sq"))
            .or_else(|| c.name("bare"))
            .map_or("", |m| m.as_str());
        let value = value.trim_end();
        if !is_credential_name(name) {
            // What it took in may hold a pair of its own (`task=x key=y`).
            let head = c["name"].len() + c["sep"].len();
            return format!("{}{}", &c[0][..head], credentials(&c[0][head..]));
        }
        // `Authorization: Bearer ***`: the scheme is no secret, and what
        // follows it was masked above.
        let scheme = ["bearer", "basic", "token", "digest"]
            .iter()
            .any(|w| value.eq_ignore_ascii_case(w));
        if value.is_empty()
            || scheme
            || value.starts_with("${")
            || value == MASK
            || value.ends_with(&format!(" {MASK}"))
        {
            return c[0].to_string();
        }
        let quote = if c.name("dq").is_some() {
            "\""
        } else if c.name("sq").is_some() {
            "'"
        } else {
            ""
        };
        format!("{}{}{quote}{MASK}{quote}", &c["name"], &c["sep"])
    });
    // A pair whose name is no credential is written back as it was: only a
    // text that changed is a new one.
    if masked == s {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(masked.into_owned())
    }
}

/// Whether a header, setting or field of this name holds a credential.
fn is_credential_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase().replace('-', "_");
    matches!(
        n.as_str(),
        "authorization"
            | "proxy_authorization"
            | "cookie"
            | "set_cookie"
            | "api_key"
            | "apikey"
            | "x_api_key"
            | "token"
            | "access_token"
            | "auth_token"
            | "secret"
            | "client_secret"
            | "password"
            | "passwd"
            | "private_key"
    ) || ["_api_key", "_apikey", "_token", "_secret", "_password"]
        .iter()
        .any(|suffix| n.ends_with(suffix))
}

/// Every URL in `s` with its secrets masked.
fn urls(s: &str) -> Cow<'_, str> {
    if !s.contains("://") {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find("://") {
        // The scheme: the letters, digits and `+-.` right before `://`.
        let start = rest[..at]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |i| i + 1);
        // The URL runs to the first character that cannot be in one.
        let end = rest[at + 3..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`'))
            .map_or(rest.len(), |i| at + 3 + i);
        out.push_str(&rest[..start]);
        out.push_str(&url(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// One URL (`scheme://[user[:password]@]host[/path][?query][#fragment]`)
/// with its password and secret query values masked.
pub fn url(u: &str) -> Cow<'_, str> {
    let Some((scheme, rest)) = u.split_once("://") else {
        return Cow::Borrowed(u);
    };
    // The authority ends at the first `/`, `?` or `#`; userinfo is before
    // its last `@`.
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(auth_end);
    let authority: Cow<str> = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, pw)) if pw != MASK => format!("{user}:{MASK}@{host}").into(),
            _ => authority.into(),
        },
        None => authority.into(),
    };
    let tail = query(tail);
    if matches!((&authority, &tail), (Cow::Borrowed(_), Cow::Borrowed(_))) {
        return Cow::Borrowed(u);
    }
    Cow::Owned(format!("{scheme}://{authority}{tail}"))
}

/// `path?a=1&api_key=K#f` → `path?a=1&api_key=***#f`.
fn query(tail: &str) -> Cow<'_, str> {
    let Some(q) = tail.find('?') else {
        return Cow::Borrowed(tail);
    };
    let (path, rest) = tail.split_at(q + 1);
    let (params, fragment) = match rest.find('#') {
        Some(h) => rest.split_at(h),
        None => (rest, ""),
    };
    let mut changed = false;
    let masked: Vec<String> = params
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((name, value)) if value != MASK && is_secret(name) => {
                changed = true;
                format!("{name}={MASK}")
            }
            _ => p.to_string(),
        })
        .collect();
    if !changed {
        return Cow::Borrowed(tail);
    }
    Cow::Owned(format!("{path}{}{fragment}", masked.join("&")))
}

fn is_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_PARAMS.iter().any(|s| name.contains(s))
}

/// Whether `s` holds a secret that [`text`] would mask.
pub fn has_secret(s: &str) -> bool {
    matches!(text(s), Cow::Owned(o) if o != s)
}

/// The URL without its password (the user name stays): a form to print in
/// a command someone may copy, where the password must come from
/// elsewhere (`PGPASSWORD`, `~/.pgpass`). Secret query values are masked.
pub fn without_password(u: &str) -> String {
    let masked = url(u);
    masked.replacen(&format!(":{MASK}@"), "@", 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_secret_parameters_are_masked() {
        let cases = [
            (
                "postgres://u:hunter2@db.example:5432/evals",
                "postgres://u:***@db.example:5432/evals",
            ),
            (
                "postgresql://u:p%40ss@h/db?sslmode=require&password=x2",
                "postgresql://u:***@h/db?sslmode=require&password=***",
            ),
            ("postgres://u@h/db", "postgres://u@h/db"),
            (
                "postgres://h/db?connect_timeout=5",
                "postgres://h/db?connect_timeout=5",
            ),
            (
                "https://api.x/v1?api_key=K&model=m#frag",
                "https://api.x/v1?api_key=***&model=m#frag",
            ),
            (
                "http://a:b@127.0.0.1:8080?X-Amz-Signature=s&Token=t",
                "http://a:***@127.0.0.1:8080?X-Amz-Signature=***&Token=***",
            ),
            // The password may hold `@` (unencoded): the last one ends it.
            ("postgres://u:p@ss@h/db", "postgres://u:***@h/db"),
            ("runs/redraft.db", "runs/redraft.db"),
        ];
        for (given, want) in cases {
            assert_eq!(url(given), want, "{given}");
            assert_eq!(text(given), want, "{given}");
            assert_eq!(text(want), want, "idempotent: {want}");
        }
    }

    #[test]
    fn credentials_in_headers_settings_and_flags_are_masked() {
        let cases = [
            (
                r#"headers: { Authorization: "Bearer sk-abc123def", x-api-key: "k-secret-xyz" }"#,
                r#"headers: { Authorization: "Bearer ***", x-api-key: "***" }"#,
            ),
            (
                "    headers:\n      api-key: 0123456789abcdef\n      X-Trace: on\n",
                "    headers:\n      api-key: ***\n      X-Trace: on\n",
            ),
            (
                r#"{"Authorization":"Basic dXNlcjpwYXNz","model":"m"}"#,
                r#"{"Authorization":"Basic ***","model":"m"}"#,
            ),
            (
                "--input task=hello password=hunter2 --input tau=0",
                "--input task=hello password=*** --input tau=0",
            ),
            (
                "OPENAI_API_KEY=sk-live-1 redraft run",
                "OPENAI_API_KEY=*** redraft run",
            ),
            // Not credentials: token counts, a variable's name, prose.
            (
                "max_tokens: 320, prompt_tokens: 12",
                "max_tokens: 320, prompt_tokens: 12",
            ),
            (
                r#"headers: { Authorization: "${AZURE_AUTH}" }"#,
                r#"headers: { Authorization: "${AZURE_AUTH}" }"#,
            ),
            ("Basic arithmetic: 2 + 2", "Basic arithmetic: 2 + 2"),
        ];
        for (given, want) in cases {
            assert_eq!(text(given), want, "{given}");
            assert_eq!(text(want), want, "idempotent: {want}");
        }
        assert!(matches!(text("no pairs here"), Cow::Borrowed(_)));
        assert!(matches!(text("max_tokens: 320"), Cow::Borrowed(_)));
    }

    #[test]
    fn urls_inside_text_are_masked_and_the_rest_kept() {
        let line = "redraft eval w.yaml --store=postgres://u:s3cr3t@h/db -m writer=openai:m@http://k:t0k@127.0.0.1:9/v1 'x'";
        let got = text(line);
        assert_eq!(
            got,
            "redraft eval w.yaml --store=postgres://u:***@h/db -m writer=openai:m@http://k:***@127.0.0.1:9/v1 'x'"
        );
        assert!(!got.contains("s3cr3t") && !got.contains("t0k"));
        assert!(has_secret(line));
        assert!(!has_secret("no urls here"));
        assert!(matches!(text("no urls here"), Cow::Borrowed(_)));
        assert_eq!(
            without_password("postgres://u:s@h/db?password=p"),
            "postgres://u@h/db?password=***"
        );
    }
}
