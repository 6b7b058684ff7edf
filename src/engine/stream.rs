//! Events as an async stream, for embedders ([`Engine::run_streaming`]).
//!
//! **Invariant:** the scheduler never waits for the consumer. Events go into
//! an unbounded queue; the back-pressure is applied where work is made, not
//! where it is reported: while more than `buffer` events are unread, a node
//! waits before it sends its next model call (the scheduler keeps applying
//! results meanwhile). So a slow consumer slows the run down instead of
//! letting the queue grow with every call, and a dropped stream releases
//! every waiter.
//!
//! [`Engine::run_streaming`]: super::Engine::run_streaming

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::sync::{Notify, mpsc};

use crate::event::Event;

/// The events of one run, in the order the engine emitted them; ends after
/// `run_finished` (or when the run could not start).
///
/// Read it with [`next`](EventStream::next), or as a
/// [`futures_util::Stream`]. Keep reading while the summary future runs:
/// model calls wait while more than `RunOptions::event_buffer` events are
/// unread. Dropping the stream lets the run go on without it.
pub struct EventStream {
    rx: mpsc::UnboundedReceiver<Event>,
    gate: Arc<Gate>,
}

/// The engine's end of an [`EventStream`].
pub(crate) struct EventSink {
    tx: mpsc::UnboundedSender<Event>,
    gate: Arc<Gate>,
    buffer: usize,
}

struct Gate {
    unread: AtomicUsize,
    read: Notify,
}

/// A connected sink and stream; model calls wait while more than `buffer`
/// events are unread.
pub(crate) fn channel(buffer: usize) -> (EventSink, EventStream) {
    let (tx, rx) = mpsc::unbounded_channel();
    let gate = Arc::new(Gate {
        unread: AtomicUsize::new(0),
        read: Notify::new(),
    });
    (
        EventSink {
            tx,
            gate: gate.clone(),
            buffer: buffer.max(1),
        },
        EventStream { rx, gate },
    )
}

impl EventSink {
    /// Queues a copy of the event; never waits.
    pub fn send(&self, event: &Event) {
        if self.tx.send(event.clone()).is_ok() {
            self.gate.unread.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Resolves when the consumer has caught up to at most `buffer` unread
    /// events, or has gone away.
    pub async fn room(&self) {
        loop {
            let read = self.gate.read.notified();
            tokio::pin!(read);
            // Registered before the check, so a read between the check and
            // the wait is not missed.
            read.as_mut().enable();
            if self.gate.unread.load(Ordering::Acquire) <= self.buffer || self.tx.is_closed() {
                return;
            }
            read.await;
        }
    }
}

impl EventStream {
    /// The next event; `None` after the last one.
    pub async fn next(&mut self) -> Option<Event> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let polled = self.rx.poll_recv(cx);
        if let Poll::Ready(Some(_)) = &polled {
            self.gate.unread.fetch_sub(1, Ordering::AcqRel);
            self.gate.read.notify_waiters();
        }
        polled
    }
}

impl futures_util::Stream for EventStream {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.get_mut().poll_event(cx)
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        // Wake calls waiting for room: `room` sees the closed channel.
        self.rx.close();
        self.gate.read.notify_waiters();
    }
}
