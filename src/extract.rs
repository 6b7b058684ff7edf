//! Code and sub-modules from model output (CodeChain's extraction).
//!
//! [`blocks`] finds fenced code blocks (closed or cut off by the token limit);
//! [`program`] picks the final program from them; [`functions`] splits Python
//! source into its top-level functions with a real parser (tree-sitter's
//! Python grammar), so broken code still yields what parses.

use serde::Serialize;

/// A fenced block: its info string (language tag) and body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Block {
    pub lang: String,
    pub code: String,
    /// False when the reply ended inside the block.
    pub closed: bool,
}

/// Every fenced block (```` ``` ```` or `~~~`), in order. A reply whose only
/// fence is a bare one after unfenced code (models forget the opening fence)
/// has that code as its block, when what follows the fence is not code.
pub fn blocks(text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<(String, &str, Vec<&str>)> = None;
    let mut preamble: Vec<&str> = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        if open.is_none()
            && out.is_empty()
            && !trimmed.starts_with("```")
            && !trimmed.starts_with("~~~")
        {
            preamble.push(line);
        }
        match &mut open {
            None => {
                for fence in ["```", "~~~"] {
                    if let Some(info) = trimmed.strip_prefix(fence) {
                        let lang = info.split_whitespace().next().unwrap_or("");
                        open = Some((lang.to_lowercase(), fence, Vec::new()));
                        break;
                    }
                }
            }
            Some((lang, fence, body)) => {
                if trimmed.starts_with(*fence) && trimmed.trim_end() == *fence {
                    out.push(Block {
                        lang: std::mem::take(lang),
                        code: body.join("\n"),
                        closed: true,
                    });
                    open = None;
                } else {
                    body.push(line);
                }
            }
        }
    }
    if let Some((lang, _, body)) = open {
        // A lone bare fence closes the text before it when that text is
        // code (it parses as Python) and what follows is not.
        let before = preamble.join("\n");
        let after = body.join("\n");
        let parses = |t: &str| !t.trim().is_empty() && !functions(t).has_errors;
        let lone_closing = out.is_empty() && lang.is_empty() && parses(&before) && !parses(&after);
        if lone_closing {
            out.push(Block {
                lang,
                code: preamble.join("\n").trim_end().to_string(),
                closed: true,
            });
        } else {
            out.push(Block {
                lang,
                code: body.join("\n"),
                closed: false,
            });
        }
    }
    out
}

const PYTHON_TAGS: &[&str] = &["python", "py", "python3"];

/// The final program in a reply, following CodeChain: every Python-tagged
/// block joined; else the last untagged block; else (no fences) the whole
/// reply. Sub-module outlines (` ```module `) are never part of it.
pub fn program(text: &str) -> String {
    let all = blocks(text);
    let python: Vec<&str> = all
        .iter()
        .filter(|b| PYTHON_TAGS.contains(&b.lang.as_str()))
        .map(|b| b.code.as_str())
        .collect();
    if !python.is_empty() {
        return python.join("\n\n");
    }
    if let Some(b) = all.iter().rev().find(|b| b.lang.is_empty()) {
        return b.code.clone();
    }
    if all.is_empty() {
        return text.trim().to_string();
    }
    String::new()
}

/// A top-level function of a Python program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Function {
    pub name: String,
    /// The `def` line(s) up to and including the colon, decorators first.
    pub header: String,
    /// The docstring's text, if the body starts with one.
    pub docstring: Option<String>,
    /// The whole definition.
    pub code: String,
    /// 1-based lines.
    pub start_line: usize,
    pub end_line: usize,
}

/// The parse of a program: its functions and whether the parser had to
/// recover from errors (the functions are still those it could read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Parsed {
    pub functions: Vec<Function>,
    pub has_errors: bool,
}

/// Top-level (and decorated) function definitions of Python source.
pub fn functions(source: &str) -> Parsed {
    let mut parser = tree_sitter::Parser::new();
    let language: tree_sitter::Language = tree_sitter_python::LANGUAGE.into();
    if parser.set_language(&language).is_err() {
        return Parsed {
            functions: Vec::new(),
            has_errors: true,
        };
    }
    let Some(tree) = parser.parse(source, None) else {
        return Parsed {
            functions: Vec::new(),
            has_errors: true,
        };
    };
    let root = tree.root_node();
    let mut out = Vec::new();
    let mut cursor = root.walk();
    for child in root.children(&mut cursor) {
        let (outer, def) = match child.kind() {
            "function_definition" => (child, child),
            "decorated_definition" => match child.child_by_field_name("definition") {
                Some(d) if d.kind() == "function_definition" => (child, d),
                _ => continue,
            },
            _ => continue,
        };
        if def.has_error() && def.child_by_field_name("body").is_none() {
            continue;
        }
        let text = |n: tree_sitter::Node| source[n.byte_range()].to_string();
        let Some(name) = def.child_by_field_name("name").map(text) else {
            continue;
        };
        // The header ends at the colon after the parameters (and return
        // type), found from the signature so that a broken body cannot
        // leak into it.
        let signature_end = ["return_type", "parameters", "name"]
            .iter()
            .find_map(|f| def.child_by_field_name(f))
            .map_or(def.start_byte(), |n| n.end_byte());
        let header_end = source[signature_end..def.end_byte()]
            .find(':')
            .map_or(def.end_byte(), |i| signature_end + i + 1);
        let header = source[outer.start_byte()..header_end]
            .trim_end()
            .to_string();
        let docstring = def.child_by_field_name("body").and_then(|body| {
            let first = body.named_child(0)?;
            let string = match first.kind() {
                "expression_statement" => first.named_child(0)?,
                _ => return None,
            };
            (string.kind() == "string").then(|| {
                let raw = text(string);
                strip_quotes(&raw).trim().to_string()
            })
        });
        out.push(Function {
            name,
            header,
            docstring,
            code: text(outer),
            start_line: outer.start_position().row + 1,
            end_line: outer.end_position().row + 1,
        });
    }
    Parsed {
        functions: out,
        has_errors: root.has_error(),
    }
}

/// CodeChain's sub-modules of one reply: the final program's functions,
/// each described by its outline in the reply's ` ```module ` blocks.
///
/// A function is kept when an outline names it; its docstring is then the
/// outline's (the description the model wrote before implementing it),
/// or its own when the outline has none. Outlines come from the
/// ` ```module ` blocks, else from the Python blocks before "STEP 2"
/// (CodeChain's fallback); outlines of classes and of `main` are dropped.
/// When there is no outline at all, every function of the program is a
/// sub-module with its own docstring (or none). `main` is never one.
pub fn sub_modules(reply: &str) -> Vec<Function> {
    let code = functions(&program(reply)).functions;
    let all = blocks(reply);
    let mut outlines: Vec<&Block> = all.iter().filter(|b| b.lang == "module").collect();
    if outlines.is_empty() {
        if let Some(step2) = reply.find("STEP 2") {
            let before = &reply[..step2];
            outlines = all
                .iter()
                .filter(|b| PYTHON_TAGS.contains(&b.lang.as_str()) && before.contains(&b.code))
                .collect();
        }
    }
    let mut described: Vec<(String, Option<String>)> = Vec::new();
    for block in outlines {
        if block.code.contains("class ") {
            continue;
        }
        for f in functions(&block.code).functions {
            if f.name != "main" && !described.iter().any(|(n, _)| *n == f.name) {
                described.push((f.name, f.docstring));
            }
        }
    }
    // A name defined twice (an outline joined into the program) is its
    // last definition, as in Python.
    let mut code = code;
    let mut seen = std::collections::HashSet::new();
    code.reverse();
    code.retain(|f| seen.insert(f.name.clone()));
    code.reverse();
    code.into_iter()
        .filter(|f| f.name != "main")
        .filter_map(|mut f| {
            if described.is_empty() {
                return Some(f);
            }
            let (_, doc) = described.iter().find(|(n, _)| *n == f.name)?;
            if doc.is_some() {
                f.docstring = doc.clone();
            }
            Some(f)
        })
        .collect()
}

/// Whether Python source parses without errors (tree-sitter's grammar).
pub fn parses_as_python(source: &str) -> bool {
    let mut parser = tree_sitter::Parser::new();
    let language: tree_sitter::Language = tree_sitter_python::LANGUAGE.into();
    parser.set_language(&language).is_ok()
        && parser
            .parse(source, None)
            .is_some_and(|t| !t.root_node().has_error())
}

fn strip_quotes(s: &str) -> &str {
    let s = s.trim_start_matches(|c: char| "rRbBuUfF".contains(c));
    for q in ["\"\"\"", "'''", "\"", "'"] {
        if let Some(inner) = s.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return inner;
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_closed_and_cut_off_blocks() {
        let text = "Intro\n```python\nx = 1\n```\ntext\n~~~\nplain\n~~~\n```py\ny = 2";
        let b = blocks(text);
        assert_eq!(b.len(), 3);
        assert_eq!(
            (b[0].lang.as_str(), b[0].code.as_str(), b[0].closed),
            ("python", "x = 1", true)
        );
        assert_eq!((b[1].lang.as_str(), b[1].code.as_str()), ("", "plain"));
        assert_eq!((b[2].code.as_str(), b[2].closed), ("y = 2", false));
    }

    #[test]
    fn a_lone_bare_fence_closes_the_text_before_it() {
        let b = blocks("def f():\n    return 1\n```\n\nThis returns one.");
        assert_eq!(b.len(), 1);
        assert_eq!(
            (b[0].code.as_str(), b[0].closed),
            ("def f():\n    return 1", true)
        );
        // A bare fence at the start, or after prose, opens a block as usual.
        let b = blocks("```\nx = 1");
        assert_eq!((b[0].code.as_str(), b[0].closed), ("x = 1", false));
        let b = blocks("Here is the code:\n```\nx = 1");
        assert_eq!((b[0].code.as_str(), b[0].closed), ("x = 1", false));
    }

    #[test]
    fn the_program_follows_codechain() {
        // Python blocks are joined; module outlines are not code.
        let text = "```module\ndef f(x):\n    \"\"\"Doubles.\"\"\"\n```\n```python\ndef f(x):\n    return 2 * x\n```\n```python\nprint(f(2))\n```";
        assert_eq!(program(text), "def f(x):\n    return 2 * x\n\nprint(f(2))");
        // The last untagged block.
        assert_eq!(program("```\na\n```\n```\nb\n```"), "b");
        // No fences: the whole reply.
        assert_eq!(program("  print(1)\n"), "print(1)");
        // Only non-code blocks: nothing.
        assert_eq!(program("```text\nhello\n```"), "");
    }

    #[test]
    fn sub_modules_follow_the_outlines() {
        let reply = "STEP 1: GENERATE SUB-MODULES:\n```module\ndef is_even(n):\n    \"\"\"Description: whether n is even.\"\"\"\n```\n```module\nclass Helper:\n    pass\n```\nSTEP 2: GENERATE PYTHON CODE\n```python\ndef is_even(n):\n    return n % 2 == 0\n\ndef count_even(xs):\n    return sum(1 for x in xs if is_even(x))\n\ndef main():\n    print(count_even([1, 2]))\n```";
        let subs = sub_modules(reply);
        // Only the outlined function, with the outline's description.
        assert_eq!(subs.len(), 1);
        assert_eq!(subs[0].name, "is_even");
        assert_eq!(
            subs[0].docstring.as_deref(),
            Some("Description: whether n is even.")
        );
        assert!(subs[0].code.contains("return n % 2 == 0"));
        // Without outlines: every function but main.
        let plain = "```python\ndef a():\n    return 1\n\ndef main():\n    a()\n```";
        let names: Vec<String> = sub_modules(plain).into_iter().map(|f| f.name).collect();
        assert_eq!(names, ["a"]);
        // The fallback: Python blocks before STEP 2 are the outlines.
        let fallback = "```python\ndef b(x):\n    \"\"\"Doubles x.\"\"\"\n```\nSTEP 2\n```python\ndef b(x):\n    return 2 * x\n\ndef c():\n    return b(1)\n```";
        let subs = sub_modules(fallback);
        assert_eq!(subs.len(), 1);
        assert_eq!(subs[0].docstring.as_deref(), Some("Doubles x."));
    }

    #[test]
    fn splits_functions_with_docstrings_and_decorators() {
        let src = "import math\n\n@cache\ndef area(r):\n    '''Area of a circle.'''\n    return math.pi * r * r\n\ndef main():\n    print(area(2))\n\nclass A:\n    def m(self):\n        pass\n";
        let p = functions(src);
        assert!(!p.has_errors);
        let names: Vec<_> = p.functions.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["area", "main"]);
        let area = &p.functions[0];
        assert_eq!(area.header, "@cache\ndef area(r):");
        assert_eq!(area.docstring.as_deref(), Some("Area of a circle."));
        assert_eq!((area.start_line, area.end_line), (3, 6));
        assert!(area.code.ends_with("return math.pi * r * r"));
        assert_eq!(p.functions[1].docstring, None);
    }

    #[test]
    fn broken_code_keeps_what_parses() {
        let src = "def good(a):\n    return a + 1\n\ndef bad(:\n    return (\n";
        let p = functions(src);
        assert!(p.has_errors);
        assert_eq!(p.functions.first().map(|f| f.name.as_str()), Some("good"));
        // A body cut off mid-expression stays out of the header.
        let p = functions("def f(x: int) -> int:\n    return g(x");
        assert_eq!(p.functions[0].header, "def f(x: int) -> int:");
    }
}
