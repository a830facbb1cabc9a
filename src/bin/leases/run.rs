//! `leases run`: hold a lease while a command runs, and stop the command when the
//! lease is lost.
//!
//! **A command is a holder until it is dead**: the command itself and every process it
//! started, also those that left its process group and those it left running when it
//! exited (tree.rs finds them: `leases` is their subreaper). The lease is acquired with
//! `keep_until_released`, so that however it ends its key stays taken until we let go of
//! the `Lease`; we renew it while we can and release it only when the whole tree is dead.
//!
//! On a loss the whole tree gets SIGTERM at once (frozen first, tree.rs: nothing forked
//! meanwhile escapes the signal), then SIGKILL, frozen first too, after the grace period,
//! but never later than the kill margin before the context's deadline (see kill_timing.rs):
//! dead before the key could be granted elsewhere, whatever `--grace` says. The context
//! ends *at* its deadline, too late to start killing, so a live lease whose renewal has
//! fallen behind (the deadline near without a confirmed renewal) is acted on earlier,
//! in the same way. Signals sent to `leases` (SIGINT, SIGTERM, SIGHUP, SIGQUIT) are
//! passed on to the tree, followed by SIGCONT so that a stopped command gets them too.
//!
//! A stop (SIGTSTP, Ctrl-Z) freezes the command's whole tree first and then stops
//! `leases` itself, never the other way round: a command must not run on while the
//! process renewing its lease is frozen. When `leases` is continued, the tree is
//! continued too if the lease is still safe; if not, the command is stopped for good as
//! on any loss.
//!
//! On Linux the command is started through a guardian (guardian.rs), which kills the
//! whole tree if `leases` itself dies (a `kill -9`): the tree must not run on without a
//! lease, which then simply expires within its TTL. Elsewhere only the command's
//! process group is known, and nothing kills it if `leases` dies.
//!
//! [`keep`] is that whole life of a command under an acquired lease; `elect` runs one
//! per term. Getting the lease (waiting, signals meanwhile, `--retry`) is acquire.rs.

use std::collections::HashSet;
use std::ffi::OsString;
use std::time::Duration;

use leases::{AcquireOptions, CancelReason, Key, Lease, LeaseContext};
use tokio::time::Instant;

use crate::acquire::{acquire, Acquired};
use crate::exit::{Failure, CANNOT_EXECUTE, INTERNAL, LOST, NOT_FOUND};
use crate::kill_timing::{before, kill_at, lease_is_safe, Timing};
use crate::retry::Retry;
use crate::signals::{status_code, stop_self, Watch};
use crate::source::Source;
use crate::tree::{self, Tree};

/// What `run` needs, parsed.
pub(crate) struct RunPlan {
    pub(crate) key: Key,
    pub(crate) ttl: Duration,
    pub(crate) wait: Option<Duration>,
    /// `--retry`: the tries left within the wait.
    pub(crate) retry: Option<Retry>,
    pub(crate) metadata: Option<String>,
    pub(crate) grace: Duration,
    pub(crate) command: Vec<OsString>,
}

/// The metadata a lease gets when `--metadata` is not given: who holds it.
pub(crate) fn default_metadata() -> String {
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

/// How often the tree is looked at while it is being stopped, and while processes the
/// command left behind run on after it exited.
const STOPPING_POLL: Duration = Duration::from_millis(50);
const LEFT_BEHIND_POLL: Duration = Duration::from_millis(200);
/// How often the deadline is looked at again at the least: tokio's timers do not count
/// time the machine spent suspended, the deadline does.
const RECHECK: Duration = Duration::from_secs(1);

/// Why the command is being stopped.
enum Why {
    /// The lease ended (lost, revoked, shut down).
    Ended(CancelReason),
    /// The lease is still live, but its renewal fell behind: the deadline is near.
    FellBehind,
}

/// A command being stopped.
struct Stopping {
    why: Why,
    /// When SIGTERM went out.
    since: Instant,
    /// The processes that got SIGTERM.
    termed: HashSet<i32>,
    /// SIGKILL went out.
    killed: bool,
}

/// Runs the command under the lease; returns the exit code `leases` should end with.
pub(crate) async fn run(source: &Source, plan: RunPlan) -> Result<u8, Failure> {
    let RunPlan {
        key,
        ttl,
        wait,
        mut retry,
        metadata,
        grace,
        command,
    } = plan;
    let mut watch = Watch::install()?;
    // The key stays taken after the lease ends until we let go of the `Lease`, which we
    // do only once every process of the command is dead.
    let options = AcquireOptions::new(ttl)
        .metadata(metadata.unwrap_or_else(default_metadata))
        .keep_until_released();
    let acquired = acquire(
        source,
        &key,
        options,
        wait,
        retry.as_mut(),
        &mut watch.signals,
    )
    .await?;
    let (lease, ctx) = match acquired {
        Acquired::Held(lease, ctx) => (lease, ctx),
        Acquired::Interrupted(code) => return Ok(code),
    };
    let term = Term {
        ttl,
        grace,
        command: &command,
        env: &[],
    };
    let held = keep(source, &key, lease, ctx, term, &mut watch).await?;
    match held.lost {
        Some(message) => Err(Failure::new(LOST, message)),
        None => Ok(held.code),
    }
}

/// A command to run under a lease that was acquired (with `keep_until_released`).
pub(crate) struct Term<'a> {
    pub(crate) ttl: Duration,
    pub(crate) grace: Duration,
    pub(crate) command: &'a [OsString],
    /// Variables for the command besides `LEASES_KEY` and `LEASES_TOKEN`.
    pub(crate) env: &'a [(String, String)],
}

/// How a command run under a lease ended: every one of its processes is dead, and the
/// lease was given back.
pub(crate) struct Held {
    /// The command's exit code (128 + N for a signal).
    pub(crate) code: u8,
    /// Why the command was stopped, if the lease ended (or its renewal fell behind)
    /// while it ran.
    pub(crate) lost: Option<String>,
    /// The first stop signal (SIGINT, SIGTERM, SIGHUP, SIGQUIT) sent to `leases` while
    /// the command ran, which was passed on to it: `elect` ends its candidacy with it.
    pub(crate) interrupted: Option<i32>,
}

/// Runs the command while `lease` lives, and stops its whole tree when the lease is in
/// danger; gives the lease back once every process of the tree is dead. `Err` only when
/// the command could not be started (126, 127) or waited for.
pub(crate) async fn keep(
    source: &Source,
    key: &Key,
    lease: Lease,
    ctx: LeaseContext,
    term: Term<'_>,
    watch: &mut Watch,
) -> Result<Held, Failure> {
    let token = lease.token();

    // On Linux the command is started by a guardian (guardian.rs): this binary again,
    // which kills the whole tree if `leases` dies. The guardian lives exactly as long
    // as the tree and exits with the command's status.
    #[cfg(target_os = "linux")]
    let mut cmd = {
        let mut cmd = tokio::process::Command::new("/proc/self/exe");
        cmd.arg(crate::guardian::ARG)
            .arg(std::process::id().to_string())
            .args(term.command);
        cmd
    };
    #[cfg(not(target_os = "linux"))]
    let mut cmd = {
        let mut cmd = tokio::process::Command::new(&term.command[0]);
        cmd.args(&term.command[1..]);
        cmd
    };
    cmd.env("LEASES_KEY", key.to_string())
        .env("LEASES_TOKEN", token.to_string())
        .envs(term.env.iter().map(|(k, v)| (k, v)))
        .process_group(0);
    #[cfg(target_os = "linux")]
    {
        let parent = std::process::id();
        // SAFETY: the closure runs in the forked child before exec and calls only
        // async-signal-safe functions (prctl, getppid), allocating nothing.
        unsafe {
            cmd.pre_exec(move || {
                let death = crate::guardian::PARENT_DEATH;
                if libc::prctl(libc::PR_SET_PDEATHSIG, death, 0, 0, 0) != 0 {
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
            let command = term.command;
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

    // Until every process of the tree is dead: the lease is kept (renewed while it
    // can be, never released). On a loss, or when the deadline draws near without a
    // confirmed renewal, the whole tree gets SIGTERM at once, then SIGKILL after the
    // grace period but at the latest the kill margin before the deadline.
    let timing = Timing::for_ttl(term.ttl);
    let grace = term.grace;
    let mut tree = Tree::new(pgid);
    let mut status: Option<std::io::Result<std::process::ExitStatus>> = None;
    let mut stopping: Option<Stopping> = None;
    let mut look = false;
    let mut said_left_behind = false;
    let mut interrupted: Option<i32> = None;
    loop {
        let now = Instant::now();
        if stopping.is_none() && !lease_is_safe(&ctx, timing) {
            let why = match ctx.reason() {
                Some(reason) => Why::Ended(reason),
                None => Why::FellBehind,
            };
            let kill = kill_at(&ctx, timing, now, grace);
            let what = match &why {
                Why::Ended(reason) => format!("the lease on {key} ended ({reason})"),
                Why::FellBehind => format!(
                    "no renewal of the lease on {key} was confirmed until {} before its deadline",
                    crate::duration::human_approx(timing.stop_ahead)
                ),
            };
            // Frozen first (tree.rs), so that the whole tree gets the signal at once and
            // nothing forked meanwhile escapes it.
            let killed = now >= kill;
            let alive = if killed {
                eprintln!(
                    "leases: {what}; no time is left before the key could be granted \
                     elsewhere: SIGKILL to the command"
                );
                tree.kill()
            } else {
                eprintln!(
                    "leases: {what}; stopping the command (SIGTERM, then SIGKILL after {})",
                    crate::duration::human_approx(kill - now)
                );
                let alive = tree.freeze();
                tree.signal(libc::SIGTERM, &alive);
                tree.signal(libc::SIGCONT, &alive);
                alive
            };
            stopping = Some(Stopping {
                why,
                since: now,
                termed: alive.into_iter().collect(),
                killed,
            });
            look = true;
        }
        if look || status.is_some() || stopping.is_some() {
            look = false;
            let alive = match &mut stopping {
                Some(s) => {
                    if !s.killed && now >= kill_at(&ctx, timing, s.since, grace) {
                        eprintln!("leases: the command is still running; SIGKILL");
                        s.killed = true;
                    }
                    if s.killed {
                        // Again at every look: whatever joined the tree meanwhile.
                        tree.kill()
                    } else {
                        // Started after the SIGTERM: it gets one too.
                        let alive = tree.scan();
                        let new: Vec<i32> = alive
                            .iter()
                            .copied()
                            .filter(|pid| s.termed.insert(*pid))
                            .collect();
                        tree::signal_each(libc::SIGTERM, &new);
                        tree::signal_each(libc::SIGCONT, &new);
                        alive
                    }
                }
                None => tree.scan(),
            };
            if status.is_some() {
                if alive.is_empty() {
                    break;
                }
                if !said_left_behind && stopping.is_none() {
                    said_left_behind = true;
                    eprintln!(
                        "leases: the command exited, leaving {} process(es) running; \
                         holding the lease on {key} until they end",
                        alive.len()
                    );
                }
            }
        }

        // The next time to look without being woken.
        let mut next = now + RECHECK;
        match &stopping {
            None => {
                if let Some(deadline) = ctx.deadline() {
                    next = next.min(before(Instant::from_std(deadline), timing.stop_ahead));
                }
                if status.is_some() {
                    next = next.min(now + LEFT_BEHIND_POLL);
                }
            }
            Some(s) => {
                next = next.min(now + STOPPING_POLL);
                if !s.killed {
                    next = next.min(kill_at(&ctx, timing, s.since, grace));
                }
            }
        }
        tokio::select! {
            waited = child.wait(), if status.is_none() => {
                status = Some(waited);
                tree.leader_reaped();
            }
            _ = watch.children.recv() => look = true,
            _ = ctx.cancelled(), if stopping.is_none() => {}
            _ = tokio::time::sleep_until(next) => {}
            sig = watch.signals.recv() => {
                look = true;
                let past_kill = |s: &Stopping| {
                    s.killed || Instant::now() >= kill_at(&ctx, timing, s.since, grace)
                };
                if sig == libc::SIGTSTP {
                    // The command first (frozen whole: nothing it forks meanwhile runs
                    // on), then us; continued in the other order, and the command only
                    // while the lease is safe, or to let it handle the SIGTERM of a stop
                    // before its kill time: otherwise it is killed as it is, stopped,
                    // here or above. A tree being killed is dying: left alone.
                    if !stopping.as_ref().is_some_and(|s| s.killed) {
                        tree.freeze();
                    }
                    stop_self();
                    match &mut stopping {
                        Some(s) if past_kill(s) => {
                            if !s.killed {
                                eprintln!("leases: continued past the kill time; SIGKILL");
                                s.killed = true;
                                tree.kill();
                            }
                        }
                        None if !lease_is_safe(&ctx, timing) => {}
                        Some(_) | None => {
                            let alive = tree.scan();
                            tree.signal(libc::SIGCONT, &alive);
                        }
                    }
                } else {
                    interrupted = interrupted.or(Some(sig));
                    // Passed on, unless the tree is being killed (or should be by now):
                    // the look above does that, without continuing it.
                    if !stopping.as_ref().is_some_and(past_kill) {
                        let alive = tree.scan();
                        tree.signal(sig, &alive);
                        tree.signal(libc::SIGCONT, &alive);
                    }
                }
            }
        }
    }

    // Every process of the command is dead: now the key may go.
    let code = match status {
        Some(Ok(status)) => status_code(status),
        Some(Err(e)) => {
            eprintln!("leases: cannot wait for the command: {e}");
            INTERNAL
        }
        None => INTERNAL,
    };
    // A lease that ended while the command ran, even at its very end, is a loss: the
    // command may have acted without it.
    let fell_behind = matches!(stopping.as_ref().map(|s| &s.why), Some(Why::FellBehind));
    let ended = match stopping.map(|s| s.why) {
        Some(Why::Ended(reason)) => Some(reason),
        Some(Why::FellBehind) | None => ctx.reason(),
    };
    if let Some(reason) = ended {
        let _ = lease.release().await;
        if reason == CancelReason::Revoked {
            source.give_back_revoked(key, token).await;
        }
        return Ok(Held {
            code,
            interrupted,
            lost: Some(format!(
                "the lease on {key} (token {token}) ended while the command ran ({reason}); \
                 the command exited with status {code}"
            )),
        });
    }
    // Bounded by the TTL: after renewal fell behind, the store may be out of reach, and
    // the lease then expires by itself within that time anyway.
    let ttl = term.ttl;
    match tokio::time::timeout(ttl, lease.release()).await {
        // Ended right after the command exited: it ran under the lease all along.
        Ok(Ok(()) | Err(leases::LeaseError::NotHeld)) => {}
        Ok(Err(e)) => eprintln!(
            "leases: could not release the lease on {key} ({e}); it expires within {}",
            crate::duration::human(ttl)
        ),
        Err(_) => eprintln!(
            "leases: the release of the lease on {key} did not finish in time; it expires \
             within {}",
            crate::duration::human(ttl)
        ),
    }
    let lost = fell_behind.then(|| {
        format!(
            "the lease on {key} (token {token}) was about to run out without a confirmed \
             renewal while the command ran; the command was stopped and exited with \
             status {code}"
        )
    });
    Ok(Held {
        code,
        lost,
        interrupted,
    })
}
