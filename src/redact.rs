//! Secrets out of everything redraft prints or stores.
//!
//! A store URL (`postgres://user:PASSWORD@host/db`), a model endpoint
//! (`openai:m@https://user:TOKEN@host/v1?api_key=KEY`) or a command line
//! holding either can reach stderr, `--json`, the eval's stored record, the
//! HTML report and error messages. Every one of those goes through [`text`]
//! (or [`url`] for a lone URL) first.
//!
//! What counts as a secret: the password of a URL's userinfo, and the value
//! of a query parameter whose name says it holds one (`password`, `key`,
//! `token`, `secret`, `signature`, `auth`, `credential`, ... in any case).
//! Both become `***`; the user name, host, path and other parameters stay,
//! so a message still says where.
//!
//! **Invariant:** a leaf (imports nothing of redraft's); idempotent
//! (`text(text(s)) == text(s)`); a string without `://` is returned as it is.

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

/// Every URL in `s` with its secrets masked.
pub fn text(s: &str) -> Cow<'_, str> {
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
