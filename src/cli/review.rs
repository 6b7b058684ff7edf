//! The terminal's reviewer: shows each proposed edit of a `human_review`
//! node with its context and reads a decision from stdin.

use std::io::{BufRead, IsTerminal, Write};

use futures_util::future::BoxFuture;

use crate::review::{Edit, ReviewError, ReviewRequest, Reviewer};

/// Asks the person at the terminal. Fails (the node fails, naming the
/// alternatives) when stdin is not a terminal. The blocking read runs on a
/// blocking thread; dropping the future (Ctrl-C) stops waiting for it.
pub struct TerminalReviewer;

impl Reviewer for TerminalReviewer {
    fn review<'a>(
        &'a self,
        req: ReviewRequest<'a>,
    ) -> BoxFuture<'a, Result<Vec<bool>, ReviewError>> {
        Box::pin(async move {
            if !std::io::stdin().is_terminal() {
                return Err(ReviewError(
                    "stdin is not a terminal; pass `--review accept-all`, `--review reject-all` or `--review FILE`, or set `decisions:` on the node".into(),
                ));
            }
            let (node, before, edits) = (
                req.node.to_string(),
                req.before.to_string(),
                req.edits.to_vec(),
            );
            tokio::task::spawn_blocking(move || ask(&node, &before, &edits))
                .await
                .map_err(|e| ReviewError(format!("the review prompt stopped: {e}")))?
                .map_err(|e| ReviewError(format!("the review prompt failed: {e}")))
        })
    }
}

/// Asks on the terminal, one edit at a time.
fn ask(node: &str, before: &str, proposals: &[Edit]) -> std::io::Result<Vec<bool>> {
    let stdin = std::io::stdin();
    ask_with(
        &mut stdin.lock(),
        &mut std::io::stderr().lock(),
        node,
        before,
        proposals,
    )
}

/// Shows each edit with 40 characters of context either side
/// (`[-old-]{+new+}`) and reads y/n, or a/r for all the rest.
fn ask_with(
    input: &mut impl BufRead,
    out: &mut impl Write,
    node: &str,
    before: &str,
    proposals: &[Edit],
) -> std::io::Result<Vec<bool>> {
    let chars: Vec<char> = before.chars().collect();
    let context = |from: usize, to: usize| -> String {
        chars[from.min(chars.len())..to.min(chars.len())]
            .iter()
            .collect()
    };
    writeln!(out, "\n{node}: {} proposed edits", proposals.len())?;
    let mut decisions = Vec::with_capacity(proposals.len());
    let mut rest: Option<bool> = None;
    for (i, e) in proposals.iter().enumerate() {
        if let Some(all) = rest {
            decisions.push(all);
            continue;
        }
        let lead = context(e.start.saturating_sub(40), e.start);
        let trail = context(e.end, e.end + 40);
        writeln!(
            out,
            "\n[{}/{}] {:?} ({})\n  …{lead}[-{}-]{{+{}+}}{trail}…",
            i + 1,
            proposals.len(),
            e.kind,
            e.intent,
            e.before,
            e.after
        )?;
        loop {
            write!(
                out,
                "  accept? [y]es / [n]o / [a]ccept all the rest / [r]eject all the rest: "
            )?;
            out.flush()?;
            let mut line = String::new();
            if input.read_line(&mut line)? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "input closed before every edit was decided",
                ));
            }
            let decision = match line.trim() {
                "y" | "yes" => true,
                "n" | "no" => false,
                "a" => {
                    rest = Some(true);
                    true
                }
                "r" => {
                    rest = Some(false);
                    false
                }
                _ => continue,
            };
            decisions.push(decision);
            break;
        }
    }
    Ok(decisions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::review;

    #[test]
    fn terminal_review_reads_a_decision_per_edit() {
        let before = "one two three four five";
        let edits = review::edits(before, "one 2 three 4 five six");
        assert_eq!(edits.len(), 3);
        // A typo is asked again; `r` rejects the rest.
        let mut input = std::io::Cursor::new("y\nmaybe\nr\n");
        let mut shown = Vec::new();
        let got = ask_with(&mut input, &mut shown, "review", before, &edits).unwrap();
        assert_eq!(got, [true, false, false]);
        let shown = String::from_utf8(shown).unwrap();
        assert!(shown.contains("[1/3] Replace (meaning-changed)"), "{shown}");
        assert!(
            shown.contains("…one [-two-]{+2+} three four five…"),
            "{shown}"
        );
        // Input that ends early is an error, not a guess.
        let mut short = std::io::Cursor::new("y\n");
        assert!(ask_with(&mut short, &mut Vec::new(), "review", before, &edits).is_err());
    }
}
