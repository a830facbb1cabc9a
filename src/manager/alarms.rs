//! One alarm clock for every renewer of a manager.
//!
//! A renewer needs a [`Tick`] at the instant it sets (the next renewal, a retry, or its
//! deadline). Rather than a timer task per renewer (a task, a sleep and two wake-ups of
//! that task per renewal, besides the renewer's own), one task per manager keeps every
//! renewer's next instant in a heap and, when it wakes, rings every renewer that is due:
//! renewals that fall due together share one wake-up, and a held lease costs a heap
//! entry rather than a task. Setting an alarm is a lock and a heap push; the clock's task
//! is woken only when the new alarm is earlier than the one it sleeps until.
//!
//! An alarm reaches its renewer through a [`Bell`], which the renewer silences when its
//! state is dropped (however the actor ends: stop, kill, panic), so a stale alarm never
//! ticks a stopped renewer nor keeps its mailboxes alive. The clock's task ends when the
//! last [`Alarms`] handle is dropped.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex, Weak};

use ractor::ActorRef;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::renewer::Tick;

/// A handle on a manager's alarm clock (cheap to clone).
#[derive(Clone)]
pub(crate) struct Alarms {
    inner: Arc<Inner>,
}

struct Inner {
    heap: Mutex<Heap>,
    wake: Arc<Notify>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: let the clock's task see it and end.
        self.wake.notify_one();
    }
}

#[derive(Default)]
struct Heap {
    alarms: BinaryHeap<Reverse<Alarm>>,
    /// The instant the clock's task sleeps until (`None`: until woken).
    armed: Option<Instant>,
}

struct Alarm {
    at: Instant,
    bell: Arc<Bell>,
}

impl PartialEq for Alarm {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}
impl Eq for Alarm {}
impl PartialOrd for Alarm {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Alarm {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.at.cmp(&other.at)
    }
}

/// How an alarm reaches one renewer; silenced when the renewer is gone.
pub(crate) struct Bell(Mutex<Option<ActorRef<Tick>>>);

impl Bell {
    pub(crate) fn new(renewer: ActorRef<Tick>) -> Arc<Bell> {
        Arc::new(Bell(Mutex::new(Some(renewer))))
    }

    /// Never rings again (and lets go of the renewer).
    pub(crate) fn silence(&self) {
        crate::sync::lock(&self.0).take();
    }

    fn ring(&self) {
        if let Some(renewer) = crate::sync::lock(&self.0).as_ref() {
            let _ = renewer.send_message(Tick);
        }
    }
}

impl Alarms {
    /// Starts a clock (its task runs on the current runtime).
    pub(crate) fn start() -> Alarms {
        let wake = Arc::new(Notify::new());
        let inner = Arc::new(Inner {
            heap: Mutex::new(Heap::default()),
            wake: wake.clone(),
        });
        tokio::spawn(run(Arc::downgrade(&inner), wake));
        Alarms { inner }
    }

    /// Rings `bell` at `at` (at once if `at` has passed).
    pub(crate) fn set(&self, at: Instant, bell: &Arc<Bell>) {
        let wake = {
            let mut heap = crate::sync::lock(&self.inner.heap);
            heap.alarms.push(Reverse(Alarm {
                at,
                bell: bell.clone(),
            }));
            match heap.armed {
                Some(armed) if armed <= at => false,
                _ => {
                    heap.armed = Some(at);
                    true
                }
            }
        };
        if wake {
            self.inner.wake.notify_one();
        }
    }
}

/// The clock's task: rings what is due, then sleeps until the next alarm or until an
/// earlier one is set.
async fn run(inner: Weak<Inner>, wake: Arc<Notify>) {
    let mut due = Vec::new();
    loop {
        let next = {
            let Some(inner) = inner.upgrade() else {
                return;
            };
            let now = Instant::now();
            let mut heap = crate::sync::lock(&inner.heap);
            while heap.alarms.peek().is_some_and(|a| a.0.at <= now) {
                if let Some(Reverse(alarm)) = heap.alarms.pop() {
                    due.push(alarm.bell);
                }
            }
            let next = heap.alarms.peek().map(|a| a.0.at);
            heap.armed = next;
            next
        };
        for bell in due.drain(..) {
            bell.ring();
        }
        match next {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    () = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}
