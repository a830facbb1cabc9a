//! Acquiring the lease for a command (`run`, `elect`): waiting with a spinner, handling
//! the signals that arrive meanwhile, saying who holds a refused key, and trying again
//! while the store cannot be reached (`--retry`).

use std::time::Duration;

use leases::{AcquireOptions, Key, Lease, LeaseContext};

use crate::exit::Failure;
use crate::retry::Retry;
use crate::signals::{signal_name, stop_self, Signals};
use crate::source::Source;
use crate::spinner::Spinner;

/// How an acquire ended, when it did not fail.
pub(crate) enum Acquired {
    /// Granted.
    Held(Lease, LeaseContext),
    /// A signal interrupted the wait: exit with this code (128 + the signal).
    Interrupted(u8),
}

/// Acquires `key` with `options`, waiting up to `wait` for a held key (`Duration::MAX`:
/// for ever); with `retry`, tries again after failures that are worth it.
pub(crate) async fn acquire(
    source: &Source,
    key: &Key,
    options: AcquireOptions,
    wait: Option<Duration>,
    mut retry: Option<&mut Retry>,
    signals: &mut Signals,
) -> Result<Acquired, Failure> {
    loop {
        let mut this_try = options.clone();
        if let Some(w) = retry.as_ref().map(|r| r.remaining()).or(wait) {
            this_try = this_try.wait(w);
        }
        let attempt = {
            let _spinner = Spinner::start(format!("waiting for the lease on {key}"));
            let acquire = source.acquire(key.clone(), this_try);
            tokio::pin!(acquire);
            loop {
                tokio::select! {
                    acquired = &mut acquire => break acquired,
                    sig = signals.recv() => {
                        // Dropping the acquire is safe: the manager gives back a grant
                        // whose caller has gone.
                        if let Some(code) = interrupted(sig, key) {
                            return Ok(Acquired::Interrupted(code));
                        }
                    }
                }
            }
        };
        let e = match attempt {
            Ok((lease, ctx)) => return Ok(Acquired::Held(lease, ctx)),
            Err(e) => e,
        };
        let failure = crate::refusal::acquire_failure(source, key, e).await;
        let Some(pause) = retry.as_mut().and_then(|r| r.after(&failure)) else {
            return Err(failure);
        };
        let sleep = tokio::time::sleep(pause);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                sig = signals.recv() => {
                    if let Some(code) = interrupted(sig, key) {
                        return Ok(Acquired::Interrupted(code));
                    }
                }
            }
        }
    }
}

/// A signal while waiting for `key`: Ctrl-Z stops us (`None`: go on waiting once
/// continued); any other ends the wait with 128 + the signal.
fn interrupted(sig: i32, key: &Key) -> Option<u8> {
    if sig == libc::SIGTSTP {
        stop_self();
        return None;
    }
    eprintln!(
        "leases: interrupted ({}) while waiting for {key}",
        signal_name(sig)
    );
    Some(u8::try_from(128 + sig).unwrap_or(255))
}
