//! A connection's events, handled one at a time in the order they arrived.
//!
//! socketioxide runs each event handler as a task of its own, so two events
//! of one connection could otherwise be handled in either order. The
//! handlers only [`push`](Queue::push) the event (socketioxide calls them in
//! packet order); the first push onto an idle queue starts a task that
//! drains it and ends when it is empty. An idle connection holds no task and
//! no channel: only this small struct (memory per session matters here).

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::time::Instant;

/// The events of one connection not handled yet.
pub(super) struct Queue<T> {
    state: Mutex<State<T>>,
    capacity: usize,
}

struct State<T> {
    items: VecDeque<T>,
    /// A drain task is running (it alone pops).
    draining: bool,
    /// When the store last answered `unavailable` to an event of this connection.
    store_failed_at: Option<Instant>,
}

/// What [`Queue::push`] did.
pub(super) enum Pushed<T> {
    /// Queued behind a drain that is running.
    Queued,
    /// Queued, and the caller must start the drain.
    StartDrain,
    /// The queue is full: the item is handed back.
    Full(T),
}

impl<T> Queue<T> {
    /// A queue of at most `capacity` waiting items.
    pub fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State {
                items: VecDeque::new(),
                draining: false,
                store_failed_at: None,
            }),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `item` (`always`: even past the capacity, for the close).
    pub fn push(&self, item: T, always: bool) -> Pushed<T> {
        let mut st = self.lock();
        if !always && st.items.len() >= self.capacity {
            return Pushed::Full(item);
        }
        st.items.push_back(item);
        if st.draining {
            Pushed::Queued
        } else {
            st.draining = true;
            Pushed::StartDrain
        }
    }

    /// The next item for the drain; `None` ends the drain (the next push
    /// starts another).
    pub fn pop(&self) -> Option<T> {
        let mut st = self.lock();
        let next = st.items.pop_front();
        if next.is_none() {
            st.draining = false;
            // Give the memory of a burst back.
            st.items = VecDeque::new();
        }
        next
    }

    /// The store answered `unavailable` now.
    pub fn store_failed(&self) {
        self.lock().store_failed_at = Some(Instant::now());
    }

    /// Whether the store failed after `queued_at` (the event waited through
    /// a failure: answer it at once).
    pub fn failed_since(&self, queued_at: Instant) -> bool {
        self.lock()
            .store_failed_at
            .is_some_and(|failed| queued_at < failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_drain_at_a_time_in_order_and_bounded() {
        let q = Queue::new(2);
        assert!(matches!(q.push(1, false), Pushed::StartDrain));
        assert!(matches!(q.push(2, false), Pushed::Queued));
        assert!(matches!(q.push(3, false), Pushed::Full(3)));
        assert!(
            matches!(q.push(4, true), Pushed::Queued),
            "the close always fits"
        );
        assert_eq!(q.pop(), Some(1));
        assert_eq!(q.pop(), Some(2));
        assert_eq!(q.pop(), Some(4));
        assert_eq!(q.pop(), None);
        assert!(
            matches!(q.push(5, false), Pushed::StartDrain),
            "a new drain after the end"
        );
    }

    #[test]
    fn events_queued_before_a_store_failure_are_known() {
        let q: Queue<()> = Queue::new(1);
        let before = Instant::now();
        assert!(!q.failed_since(before));
        std::thread::sleep(std::time::Duration::from_millis(2));
        q.store_failed();
        assert!(q.failed_since(before));
        assert!(!q.failed_since(Instant::now()));
    }
}
