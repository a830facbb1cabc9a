//! `--retry`: keep trying while the store or the lease service cannot be reached,
//! instead of exiting 69 at once (Consul's `lock -monitor-retry`), within `--wait`.
//!
//! Only an unreachable or failing backend (exit code 69) is tried again: a refused token
//! (77) or a usage error (2) would fail the same way every time, and a held key is what
//! `--wait` already waits for. The pause between tries starts at 1 s and doubles up to
//! 30 s; the tries end when the wait is over (never with `--wait forever`).

use std::time::Duration;

use tokio::time::Instant;

use crate::exit::{Failure, BACKEND};

/// The first pause after a failed try.
const FIRST_PAUSE: Duration = Duration::from_secs(1);
/// The longest pause between two tries.
const LONGEST_PAUSE: Duration = Duration::from_secs(30);

/// Tries still allowed, and the next pause.
#[derive(Debug)]
pub(crate) struct Retry {
    /// When the wait is over; `None`: never (`--wait forever`).
    deadline: Option<Instant>,
    pause: Duration,
}

impl Retry {
    /// Tries within `wait` from now (`Duration::MAX`: for ever).
    pub(crate) fn within(wait: Duration) -> Retry {
        Retry {
            deadline: Instant::now().checked_add(wait),
            pause: FIRST_PAUSE,
        }
    }

    /// What is left of the wait (`Duration::MAX` for ever).
    pub(crate) fn remaining(&self) -> Duration {
        match self.deadline {
            Some(d) => d.saturating_duration_since(Instant::now()),
            None => Duration::MAX,
        }
    }

    /// After `failure`: the pause before the next try, if it is worth one (the backend
    /// could not be reached, and the wait is not over); says so on stderr.
    pub(crate) fn after(&mut self, failure: &Failure) -> Option<Duration> {
        if failure.code != BACKEND {
            return None;
        }
        let left = self.remaining();
        if left.is_zero() {
            return None;
        }
        let pause = self.pause.min(left);
        self.pause = (self.pause * 2).min(LONGEST_PAUSE);
        eprintln!(
            "leases: {}\nleases: trying again in {} (--retry)",
            failure.message,
            crate::duration::human_approx(pause)
        );
        Some(pause)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::{AUTH, USAGE};

    #[tokio::test]
    async fn only_an_unreachable_backend_is_tried_again_with_growing_pauses() {
        let mut r = Retry::within(Duration::MAX);
        assert_eq!(r.after(&Failure::new(AUTH, "refused")), None);
        assert_eq!(r.after(&Failure::new(USAGE, "bad")), None);
        let pauses: Vec<_> = (0..7)
            .map(|_| r.after(&Failure::new(BACKEND, "down")).unwrap().as_secs())
            .collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 30, 30]);
        let mut r = Retry::within(Duration::ZERO);
        assert_eq!(r.after(&Failure::new(BACKEND, "down")), None);
    }
}
