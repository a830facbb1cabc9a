//! One alarm clock for every renewer of a manager.
//!
//! A renewer needs a [`Tick`] at the instant it sets (the next renewal, a retry, or its
//! deadline). Rather than a timer task per renewer (a task, a sleep and two wake-ups of
//! that task per renewal, besides the renewer's own), one task per manager keeps every
//! renewer's next instant (in buckets of a millisecond) and, when it wakes, rings every
//! renewer that is due:
//! renewals that fall due together share one wake-up, and a held lease costs a pointer in
//! a list rather than a task. Setting an alarm is a lock and a push; the clock's task
//! is woken only when the new alarm is earlier than the one it sleeps until.
//!
//! An alarm reaches its renewer through a [`Bell`], which the renewer silences when its
//! state is dropped (however the actor ends: stop, kill, panic), so a stale alarm never
//! ticks a stopped renewer nor keeps its mailboxes alive. The clock's task ends when the
//! last [`Alarms`] handle is dropped.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use ractor::{ActorRef, Message};
use tokio::sync::Notify;
use tokio::time::Instant;

/// What an alarm sends when it rings: time to act (for a renewer, to renew or to check
/// its deadline). The clock rings any actor whose message can be made from it.
pub(crate) struct Tick;

/// A handle on a manager's alarm clock (cheap to clone), ringing actors whose message
/// is `M`.
pub(crate) struct Alarms<M> {
    inner: Arc<Inner<M>>,
}

impl<M> Clone for Alarms<M> {
    fn clone(&self) -> Self {
        Alarms {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<M> {
    alarms: Mutex<Buckets<M>>,
    wake: Arc<Notify>,
}

impl<M> Drop for Inner<M> {
    fn drop(&mut self) {
        // The last handle is gone: let the clock's task see it and end.
        self.wake.notify_one();
    }
}

/// The alarms, in buckets of one millisecond: setting an alarm pushes one pointer on its
/// millisecond's list, and the clock rings a whole list at once. (A binary heap of a
/// million alarms spent its time on cache misses.)
struct Buckets<M> {
    /// The instant bucket 0 is due.
    base: Instant,
    /// Bells by the whole milliseconds after `base` their alarm is due, rounded up.
    due: BTreeMap<u64, Vec<Arc<Bell<M>>>>,
    /// The instant the clock's task sleeps until (`None`: until woken).
    armed: Option<Instant>,
}

impl<M> Buckets<M> {
    /// The bucket of `at`: never due before `at`, so an alarm never rings early.
    fn bucket(&self, at: Instant) -> u64 {
        let after = at.saturating_duration_since(self.base);
        u64::try_from(after.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
    }

    /// When `bucket` is due.
    fn instant(&self, bucket: u64) -> Instant {
        self.base
            .checked_add(Duration::from_millis(bucket))
            .unwrap_or_else(|| self.base + Duration::from_secs(86_400 * 365))
    }
}

/// How an alarm reaches one renewer; silenced when the renewer is gone.
pub(crate) struct Bell<M>(Mutex<Option<ActorRef<M>>>);

impl<M: Message + From<Tick>> Bell<M> {
    pub(crate) fn new(renewer: ActorRef<M>) -> Arc<Bell<M>> {
        Arc::new(Bell(Mutex::new(Some(renewer))))
    }

    /// Never rings again (and lets go of the renewer).
    pub(crate) fn silence(&self) {
        crate::sync::lock(&self.0).take();
    }

    fn ring(&self) {
        if let Some(renewer) = crate::sync::lock(&self.0).as_ref() {
            let _ = renewer.send_message(M::from(Tick));
        }
    }
}

impl<M: Message + From<Tick>> Alarms<M> {
    /// Starts a clock (its task runs on the current runtime).
    pub(crate) fn start() -> Alarms<M> {
        let wake = Arc::new(Notify::new());
        let inner = Arc::new(Inner {
            alarms: Mutex::new(Buckets {
                base: Instant::now(),
                due: BTreeMap::new(),
                armed: None,
            }),
            wake: wake.clone(),
        });
        tokio::spawn(run(Arc::downgrade(&inner), wake));
        Alarms { inner }
    }

    /// Rings `bell` at `at` (at once if `at` has passed), or within a millisecond after.
    pub(crate) fn set(&self, at: Instant, bell: &Arc<Bell<M>>) {
        let wake = {
            let mut alarms = crate::sync::lock(&self.inner.alarms);
            let bucket = alarms.bucket(at);
            alarms.due.entry(bucket).or_default().push(bell.clone());
            let when = alarms.instant(bucket);
            match alarms.armed {
                Some(armed) if armed <= when => false,
                _ => {
                    alarms.armed = Some(when);
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
async fn run<M: Message + From<Tick>>(inner: Weak<Inner<M>>, wake: Arc<Notify>) {
    let mut ringing = Vec::new();
    loop {
        let next = {
            let Some(inner) = inner.upgrade() else {
                return;
            };
            let now = Instant::now();
            let mut alarms = crate::sync::lock(&inner.alarms);
            let base = alarms.base;
            while let Some(first) = alarms.due.first_entry() {
                let when = base
                    .checked_add(Duration::from_millis(*first.key()))
                    .unwrap_or(now + Duration::from_secs(1));
                if when > now {
                    break;
                }
                ringing.append(&mut first.remove());
            }
            let next = alarms.due.first_key_value().map(|(b, _)| *b);
            let next = next.map(|b| alarms.instant(b));
            alarms.armed = next;
            next
        };
        for bell in ringing.drain(..) {
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
