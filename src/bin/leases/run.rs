//! `leases run`: hold a lease while a command runs, and stop the command when the
//! lease is lost.
//!
//! The command runs in a process group of its own, so that a loss stops it and whatever
//! it started (SIGTERM to the group, SIGKILL after the grace period). Signals sent to
//! `leases` (SIGINT, SIGTERM, SIGHUP, SIGQUIT) are passed on to the group, followed by
//! SIGCONT so that a stopped command gets them too; the lease is released once the
//! command has exited.
//!
//! A stop (SIGTSTP, Ctrl-Z) stops the command's group first and then `leases` itself,
//! never the other way round: a command must not run on while the process renewing its
//! lease is frozen. When `leases` is continued, the command is continued too if the
//! lease is still live; if it ran out meanwhile, the command is stopped for good as on
//! any loss.
//!
//! On Linux the command also gets SIGKILL if
//! `leases` itself dies (a parent-death signal), so that a `kill -9` of `leases` does
//! not leave it running without a lease (its own children are not covered: the lease
//! then simply expires within its TTL).

use std::ffi::OsString;
use std::time::Duration;

use leases::{AcquireOptions, CancelReason, Key};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::time::Instant;

use crate::exit::{Failure, CANNOT_EXECUTE, INTERNAL, LOST, NOT_FOUND};
use crate::source::Source;
use crate::spinner::Spinner;

/// What `run` needs, parsed.
pub(crate) struct RunPlan {
    pub(crate) key: Key,
    pub(crate) ttl: Duration,
    pub(crate) wait: Option<Duration>,
    pub(crate) metadata: Option<String>,
    pub(crate) grace: Duration,
    pub(crate) command: Vec<OsString>,
}

/// The signals `leases run` passes on to the command's process group.
struct Signals(Vec<(i32, Signal)>);

impl Signals {
    fn install() -> Result<Signals, Failure> {
        let mut all = Vec::new();
        for (n, kind) in [
            (libc::SIGINT, SignalKind::interrupt()),
            (libc::SIGTERM, SignalKind::terminate()),
            (libc::SIGHUP, SignalKind::hangup()),
            (libc::SIGQUIT, SignalKind::quit()),
            (libc::SIGTSTP, SignalKind::from_raw(libc::SIGTSTP)),
        ] {
            let s = signal(kind)
                .map_err(|e| Failure::new(INTERNAL, format!("cannot handle signal {n}: {e}")))?;
            all.push((n, s));
        }
        Ok(Signals(all))
    }

    /// The next signal received.
    async fn recv(&mut self) -> i32 {
        let waits = self.0.iter_mut().map(|(n, s)| {
            let n = *n;
            Box::pin(async move {
                s.recv().await;
                n
            })
        });
        futures_select_all(waits).await
    }
}

/// The first of several futures to finish (a tiny `select_all`).
async fn futures_select_all<F>(futures: impl IntoIterator<Item = std::pin::Pin<Box<F>>>) -> i32
where
    F: std::future::Future<Output = i32>,
{
    let mut futures: Vec<_> = futures.into_iter().collect();
    std::future::poll_fn(|cx| {
        for f in futures.iter_mut() {
            if let std::task::Poll::Ready(n) = f.as_mut().poll(cx) {
                return std::task::Poll::Ready(n);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// The metadata a lease gets when `--metadata` is not given: who holds it.
fn default_metadata() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that much.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let host = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "unknown-host".into()
    };
    format!("{host} pid {}", std::process::id())
}

/// Sends `sig` to the process group `pgid`. Only called while the group's leader has
/// not been reaped, so the group id cannot have been reused.
fn signal_group(pgid: i32, sig: i32) {
    // SAFETY: killpg has no memory-safety preconditions.
    unsafe {
        libc::killpg(pgid, sig);
    }
}

/// Stops this process (as SIGTSTP would have) until a SIGCONT.
fn stop_self() {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGSTOP);
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTSTP => "SIGTSTP",
        _ => "a signal",
    }
}

/// The exit status as a shell reports it: the code, or 128 + the signal that killed it.
fn status_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(1),
        (None, Some(sig)) => u8::try_from(128 + sig).unwrap_or(255),
        (None, None) => 1,
    }
}

/// Runs the command under the lease; returns the exit code `leases` should end with.
pub(crate) async fn run(source: &Source, plan: RunPlan) -> Result<u8, Failure> {
    let RunPlan {
        key,
        ttl,
        wait,
        metadata,
        grace,
        command,
    } = plan;
    // Installed first, so that a Ctrl-C while waiting for the lease is ours to handle.
    let mut signals = Signals::install()?;
    let mut options = AcquireOptions::new(ttl).metadata(metadata.unwrap_or_else(default_metadata));
    if let Some(wait) = wait {
        options = options.wait(wait);
    }

    let acquired = {
        let _spinner = Spinner::start(format!("waiting for the lease on {key}"));
        let acquire = source.acquire(key.clone(), options);
        tokio::pin!(acquire);
        loop {
            tokio::select! {
                acquired = &mut acquire => break acquired,
                sig = signals.recv() => {
                    if sig == libc::SIGTSTP {
                        stop_self();
                        continue;
                    }
                    // Dropping the acquire here is safe: the manager gives back a grant
                    // whose caller has gone.
                    eprintln!("leases: interrupted ({}) while waiting for {key}", signal_name(sig));
                    return Ok(u8::try_from(128 + sig).unwrap_or(255));
                }
            }
        }
    };
    let (lease, ctx) = acquired.map_err(|e| {
        let mut f = Failure::from_lease_error(&e);
        f.message = format!("{key}: {}", f.message);
        f
    })?;
    let token = lease.token();

    let mut cmd = tokio::process::Command::new(&command[0]);
    cmd.args(&command[1..])
        .env("LEASES_KEY", key.to_string())
        .env("LEASES_TOKEN", token.to_string())
        .process_group(0);
    #[cfg(target_os = "linux")]
    {
        let parent = std::process::id();
        // SAFETY: the closure runs in the forked child before exec and calls only
        // async-signal-safe functions (prctl, getppid), allocating nothing.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // `leases` died before the line above: do not run without a lease.
                if u32::try_from(libc::getppid()).ok() != Some(parent) {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
    }
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            let _ = lease.release().await;
            let program = command[0].to_string_lossy();
            let code = match e.kind() {
                std::io::ErrorKind::NotFound => NOT_FOUND,
                _ => CANNOT_EXECUTE,
            };
            return Err(Failure::new(code, format!("cannot run {program}: {e}")));
        }
    };
    let Some(pgid) = child.id().and_then(|id| i32::try_from(id).ok()) else {
        return Err(Failure::new(INTERNAL, "the command has no process id"));
    };

    // Loss: SIGTERM to the group, then SIGKILL after the grace period.
    let mut lost: Option<CancelReason> = None;
    let mut kill_at: Option<Instant> = None;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            reason = ctx.cancelled(), if lost.is_none() => {
                eprintln!(
                    "leases: the lease on {key} ended ({reason}); stopping the command \
                     (SIGTERM, then SIGKILL after {})",
                    crate::duration::human(grace)
                );
                signal_group(pgid, libc::SIGTERM);
                signal_group(pgid, libc::SIGCONT);
                lost = Some(reason);
                // A grace too long for the clock never ends: no SIGKILL.
                kill_at = Instant::now().checked_add(grace);
            }
            _ = tokio::time::sleep_until(kill_at.unwrap_or_else(Instant::now)), if kill_at.is_some() => {
                eprintln!("leases: the command outlived the grace period; SIGKILL");
                signal_group(pgid, libc::SIGKILL);
                kill_at = None;
            }
            sig = signals.recv() => {
                if sig == libc::SIGTSTP {
                    // The command first, then us; continued in the other order, and
                    // the command only while the lease lives (or to let it handle the
                    // SIGTERM of a loss).
                    signal_group(pgid, libc::SIGSTOP);
                    stop_self();
                    if !ctx.is_cancelled() || lost.is_some() {
                        signal_group(pgid, libc::SIGCONT);
                    }
                } else {
                    signal_group(pgid, sig);
                    signal_group(pgid, libc::SIGCONT);
                }
            }
        }
    };
    let status =
        status.map_err(|e| Failure::new(INTERNAL, format!("cannot wait for the command: {e}")))?;
    let code = status_code(status);
    // A lease that ended while the command ran, even at its very end, is a loss: the
    // command may have acted without it.
    if let Some(reason) = lost.or_else(|| ctx.reason()) {
        let _ = lease.release().await;
        if reason == CancelReason::Revoked {
            source.give_back_revoked(&key, token).await;
        }
        return Err(Failure::new(
            LOST,
            format!(
                "the lease on {key} (token {token}) ended while the command ran ({reason}); \
                 the command exited with status {code}"
            ),
        ));
    }
    match lease.release().await {
        // Ended right after the command exited: it ran under the lease all along.
        Ok(()) | Err(leases::LeaseError::NotHeld) => {}
        Err(e) => eprintln!(
            "leases: could not release the lease on {key} ({e}); it expires within {}",
            crate::duration::human(ttl)
        ),
    }
    Ok(code)
}
