//! Reviews in the browser: a [`Reviewer`] whose requests wait in the
//! viewer until a person decides them on `/review`.
//!
//! Each pending review goes to one reviewer: the first to claim it (or to
//! submit it unclaimed) holds it; the others see that it is taken. A
//! review leaves the list when it is decided, or when the workflow stops
//! waiting (its node timed out, the run was cancelled): dropping the
//! reviewer's future removes it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::future::BoxFuture;
use http::StatusCode;
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};

use crate::review::{Edit, ReviewError, ReviewRequest, Reviewer};

/// Decided reviews kept for the page (the newest).
const KEEP_DECIDED: usize = 100;
/// The longest reviewer name and comment kept.
const MAX_NAME: usize = 100;
const MAX_COMMENT: usize = 4000;

struct Pending {
    /// Whose review it is (an eval's item id), when known.
    label: Option<String>,
    node: String,
    round: u32,
    depth: u32,
    before: String,
    after: String,
    edits: Vec<Edit>,
    reviewer: Option<String>,
    reply: oneshot::Sender<Vec<bool>>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    pending: BTreeMap<u64, Pending>,
    decided: Vec<Value>,
}

/// The pending reviews of one viewer.
pub struct Reviews {
    inner: Mutex<Inner>,
    version: watch::Sender<u64>,
}

impl Default for Reviews {
    fn default() -> Self {
        Reviews {
            inner: Mutex::default(),
            version: watch::channel(0).0,
        }
    }
}

impl Reviews {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes whenever a review arrives, is claimed or leaves.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    fn add(
        &self,
        label: Option<&str>,
        req: &ReviewRequest<'_>,
        reply: oneshot::Sender<Vec<bool>>,
    ) -> u64 {
        let id = {
            let mut inner = self.lock();
            inner.next += 1;
            let id = inner.next;
            inner.pending.insert(
                id,
                Pending {
                    label: label.map(str::to_string),
                    node: req.node.to_string(),
                    round: req.round,
                    depth: req.depth,
                    before: req.before.to_string(),
                    after: req.after.to_string(),
                    edits: req.edits.to_vec(),
                    reviewer: None,
                    reply,
                },
            );
            id
        };
        self.bump();
        id
    }

    fn remove(&self, id: u64) {
        if self.lock().pending.remove(&id).is_some() {
            self.bump();
        }
    }

    /// What reviewer `me` sees: the reviews free or held by `me` in full,
    /// the others' as taken, and the latest decisions.
    pub fn listing(&self, me: &str) -> Value {
        let inner = self.lock();
        let pending: Vec<Value> = inner
            .pending
            .iter()
            .map(|(id, p)| match &p.reviewer {
                Some(r) if r != me => {
                    json!({"id": id, "item": p.label, "node": p.node, "taken_by": r})
                }
                _ => json!({
                    "id": id, "item": p.label, "node": p.node, "round": p.round, "depth": p.depth,
                    "before": p.before, "after": p.after, "edits": p.edits,
                    "mine": p.reviewer.as_deref() == Some(me),
                }),
            })
            .collect();
        json!({ "pending": pending, "decided": inner.decided })
    }

    /// `claim` (`{reviewer}`) or `submit` (`{reviewer, decisions, comment?}`)
    /// review `id`; the status and the answer's JSON.
    pub fn act(&self, id: u64, action: &str, body: &Value) -> (StatusCode, Value) {
        let bad = |status: StatusCode, m: &str| (status, json!({ "error": m }));
        let reviewer = match body.get("reviewer").and_then(Value::as_str).map(str::trim) {
            Some(r) if !r.is_empty() && r.chars().count() <= MAX_NAME => r.to_string(),
            _ => {
                return bad(
                    StatusCode::BAD_REQUEST,
                    "`reviewer` must be a name of 1 to 100 characters",
                );
            }
        };
        let mut inner = self.lock();
        let Some(p) = inner.pending.get_mut(&id) else {
            return bad(
                StatusCode::NOT_FOUND,
                "no such review waiting (decided, or the workflow stopped waiting)",
            );
        };
        if let Some(holder) = &p.reviewer
            && *holder != reviewer
        {
            return bad(StatusCode::CONFLICT, &format!("taken by {holder}"));
        }
        match action {
            "claim" => {
                p.reviewer = Some(reviewer);
                drop(inner);
                self.bump();
                (StatusCode::OK, json!({ "claimed": id }))
            }
            "submit" => {
                let decisions: Option<Vec<bool>> = body
                    .get("decisions")
                    .and_then(Value::as_array)
                    .and_then(|d| d.iter().map(Value::as_bool).collect());
                let Some(decisions) = decisions.filter(|d| d.len() == p.edits.len()) else {
                    return bad(
                        StatusCode::BAD_REQUEST,
                        &format!(
                            "`decisions` must be {} booleans, one per edit",
                            p.edits.len()
                        ),
                    );
                };
                let comment: String = body
                    .get("comment")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .chars()
                    .take(MAX_COMMENT)
                    .collect();
                // Still there: the lock has been held since the lookup.
                let p = inner
                    .pending
                    .remove(&id)
                    .expect("looked up under this lock");
                let (accepted, proposed) =
                    (decisions.iter().filter(|d| **d).count(), decisions.len());
                // The workflow may have stopped waiting a moment ago.
                let delivered = p.reply.send(decisions).is_ok();
                if delivered {
                    tracing::info!(
                        node = %p.node, round = p.round, reviewer = %reviewer, accepted,
                        proposed, comment = %comment, "web review decided"
                    );
                    inner.decided.push(json!({
                        "id": id, "item": p.label, "node": p.node, "round": p.round, "reviewer": reviewer,
                        "accepted": accepted, "proposed": proposed, "comment": comment,
                    }));
                    let over = inner.decided.len().saturating_sub(KEEP_DECIDED);
                    inner.decided.drain(..over);
                }
                drop(inner);
                self.bump();
                if delivered {
                    (
                        StatusCode::OK,
                        json!({ "decided": id, "accepted": accepted }),
                    )
                } else {
                    bad(
                        StatusCode::GONE,
                        "the workflow stopped waiting for this review",
                    )
                }
            }
            other => bad(
                StatusCode::NOT_FOUND,
                &format!("unknown action `{other}` (claim, submit)"),
            ),
        }
    }
}

/// Sends each review to the viewer's review page and waits for a person.
/// Timeouts and cancellation are the engine's (they drop the future, and
/// the review leaves the page).
#[derive(Clone)]
pub struct WebReviewer {
    reviews: Arc<Reviews>,
    label: Option<String>,
}

impl WebReviewer {
    pub(super) fn new(reviews: Arc<Reviews>) -> WebReviewer {
        WebReviewer {
            reviews,
            label: None,
        }
    }

    /// The same page, its reviews marked as `label`'s (an eval's item).
    pub fn for_item(&self, label: &str) -> WebReviewer {
        WebReviewer {
            reviews: self.reviews.clone(),
            label: Some(label.to_string()),
        }
    }
}

/// Removes a review from the page when its future ends, however it ends.
struct Leave<'a>(&'a Reviews, u64);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.remove(self.1);
    }
}

impl Reviewer for WebReviewer {
    fn review<'a>(
        &'a self,
        req: ReviewRequest<'a>,
    ) -> BoxFuture<'a, Result<Vec<bool>, ReviewError>> {
        let (tx, rx) = oneshot::channel();
        let id = self.reviews.add(self.label.as_deref(), &req, tx);
        Box::pin(async move {
            let _leave = Leave(&self.reviews, id);
            rx.await
                .map_err(|_| ReviewError("the review page stopped waiting".into()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::review::EditKind;

    fn edit(before: &str, after: &str) -> Edit {
        Edit {
            kind: EditKind::Replace,
            start: 0,
            end: before.len(),
            before: before.into(),
            after: after.into(),
            intent: "clarity".into(),
        }
    }

    /// A review of `edits` turning `before` into `after`, at depth 1.
    fn request<'a>(before: &'a str, after: &'a str, edits: &'a [Edit]) -> ReviewRequest<'a> {
        ReviewRequest {
            node: "review",
            round: 1,
            depth: 1,
            before,
            after,
            edits,
        }
    }

    #[tokio::test]
    async fn one_reviewer_holds_a_review_and_its_decisions_reach_the_workflow() {
        let reviews = Arc::new(Reviews::default());
        let reviewer = WebReviewer::new(reviews.clone());
        let waiting = tokio::spawn({
            let reviewer = reviewer.clone();
            async move {
                let edits = [edit("a", "b"), edit("c", "d")];
                reviewer.review(request("a c", "b d", &edits)).await
            }
        });
        let mut version = reviews.subscribe();
        version.wait_for(|v| *v > 0).await.unwrap();
        let id = reviews.listing("ann")["pending"][0]["id"].as_u64().unwrap();
        let claim = |who: &str| reviews.act(id, "claim", &json!({"reviewer": who})).0;
        assert_eq!(claim("ann"), StatusCode::OK);
        assert_eq!(claim("bob"), StatusCode::CONFLICT);
        assert_eq!(reviews.listing("bob")["pending"][0]["taken_by"], "ann");
        assert!(reviews.listing("bob")["pending"][0].get("before").is_none());
        let submit = |who: &str, d: Value| {
            reviews.act(
                id,
                "submit",
                &json!({"reviewer": who, "decisions": d, "comment": "ok"}),
            )
        };
        assert_eq!(submit("ann", json!([true])).0, StatusCode::BAD_REQUEST);
        assert_eq!(submit("bob", json!([true, false])).0, StatusCode::CONFLICT);
        assert_eq!(submit("ann", json!([true, false])).0, StatusCode::OK);
        assert_eq!(waiting.await.unwrap().unwrap(), vec![true, false]);
        let after = reviews.listing("ann");
        assert!(after["pending"].as_array().unwrap().is_empty());
        assert_eq!(after["decided"][0]["accepted"], 1);
        assert_eq!(
            reviews
                .act(
                    id,
                    "submit",
                    &json!({"reviewer": "ann", "decisions": [true, true]})
                )
                .0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            reviews.act(id, "claim", &json!({"reviewer": ""})).0,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn a_decision_the_workflow_no_longer_waits_for_is_not_counted() {
        let reviews = Reviews::default();
        let edits = [edit("a", "b")];
        let req = request("a", "b", &edits);
        let (tx, rx) = oneshot::channel();
        let id = reviews.add(Some("item-1"), &req, tx);
        drop(rx);
        let (status, _) = reviews.act(
            id,
            "submit",
            &json!({"reviewer": "ann", "decisions": [true]}),
        );
        assert_eq!(status, StatusCode::GONE);
        let after = reviews.listing("ann");
        assert!(after["pending"].as_array().unwrap().is_empty());
        assert!(after["decided"].as_array().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_review_the_workflow_stops_waiting_for_leaves_the_page() {
        let reviews = Arc::new(Reviews::default());
        let reviewer = WebReviewer::new(reviews.clone());
        let edits = [edit("a", "b")];
        let req = request("a", "b", &edits);
        let cut =
            tokio::time::timeout(std::time::Duration::from_millis(20), reviewer.review(req)).await;
        assert!(cut.is_err(), "timed out");
        assert!(
            reviews.listing("x")["pending"]
                .as_array()
                .unwrap()
                .is_empty()
        );
    }
}
