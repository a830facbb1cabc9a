//! The processes a command run by `leases run` started: its *tree*.
//!
//! A command is a holder of its lease until its last process is dead, and a process
//! group is not a process tree: a child can leave the group (`setsid`, `setpgid`), and a
//! double fork orphans it. So `leases run` makes itself a *child subreaper* (Linux
//! `PR_SET_CHILD_SUBREAPER`) before it starts the command: every orphan of the command's
//! tree is re-parented to `leases`, not to init, and stays its descendant. The tree is
//! then the command's process group (while its leader lives) and every descendant of
//! `leases`, found through `/proc`.
//!
//! A zombie counts as dead (it can no longer act). `leases` reaps the zombies among its
//! own children, except the command itself, which tokio waits for: reaping by specific
//! pid (`waitpid(pid)`), never `waitpid(-1)`, so tokio's wait is never stolen.
//!
//! A look at `/proc` is no snapshot: a process may fork (into a new session, say) after
//! it was read, and a signal sent to what was found misses that child. Where the whole
//! tree must get a signal at once (Ctrl-Z, the SIGTERM and SIGKILL of a stop), it is
//! first *frozen* to a fixpoint: SIGSTOP to every process found (the command's group at
//! once, the others as soon as the pass finds them), wait until each is seen stopped (a
//! stopped process cannot fork), look again, and again while new processes turn up.
//! Only then is the signal sent; a SIGKILL then reaches a tree in which nothing runs.
//!
//! Elsewhere than on Linux only the process group is known.

/// The command's tree, as `leases run` sees it.
pub(crate) struct Tree {
    /// `leases` itself.
    me: i32,
    /// The command's process group, whose id is the command's pid.
    pgid: i32,
    /// Whether tokio has not reaped the command yet: while it has not, the group id
    /// cannot have been reused, so signalling the group is safe.
    leader_unreaped: bool,
}

/// Makes this process the subreaper of its descendants (Linux), so that orphans of the
/// command's tree stay in view. Call before starting the command.
pub(crate) fn become_subreaper() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl with these arguments has no memory-safety preconditions.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// One line of `/proc/PID/stat`, the fields we need.
#[cfg(target_os = "linux")]
struct Stat {
    ppid: i32,
    pgrp: i32,
    /// A zombie (`Z`) or dead (`X`) process.
    dead: bool,
}

#[cfg(target_os = "linux")]
fn read_stat(pid: i32) -> Option<Stat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself contain ") ": the fields start
    // after the last one.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some(Stat {
        ppid,
        pgrp,
        dead: state == "Z" || state == "X",
    })
}

/// Whether a zombie thread-group leader still has live threads (a process whose main
/// thread exited while others run on): then the process is alive.
#[cfg(target_os = "linux")]
fn has_live_threads(pid: i32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|tasks| tasks.count() > 1)
}

/// How long [`Tree::freeze`] goes on at the most, and how long it waits in one round
/// for the processes it found to be stopped.
#[cfg(target_os = "linux")]
const FREEZE_LIMIT: std::time::Duration = std::time::Duration::from_secs(3);
#[cfg(target_os = "linux")]
const SETTLE_LIMIT: std::time::Duration = std::time::Duration::from_millis(200);

/// Whether every thread of `pid` is stopped (`T`, or `t` under a tracer), dead,
/// exiting, or about to die (SIGKILL pending): none of them can fork any more. A process
/// that is gone is settled.
#[cfg(target_os = "linux")]
fn settled(pid: i32) -> bool {
    /// The kernel's `PF_EXITING`, in the flags of `/proc/PID/stat`.
    const EXITING: u64 = 0x4;
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    let mut running = false;
    for task in tasks.flatten() {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        // state ppid pgrp session tty_nr tpgid flags
        let fields: Vec<&str> = rest.split_whitespace().take(7).collect();
        let stopped = fields
            .first()
            .is_some_and(|s| matches!(s, &"T" | &"t" | &"Z" | &"X"));
        let exiting = fields
            .get(6)
            .and_then(|f| f.parse::<u64>().ok())
            .is_some_and(|flags| flags & EXITING != 0);
        running |= !stopped && !exiting;
    }
    !running || kill_pending(pid)
}

/// Whether SIGKILL is pending for `pid` (sent, not yet acted on: a process asleep in
/// the kernel acts on it only when it wakes).
#[cfg(target_os = "linux")]
fn kill_pending(pid: i32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return true;
    };
    let bit = 1u64 << (libc::SIGKILL - 1);
    status.lines().any(|line| {
        let Some(mask) = line
            .strip_prefix("SigPnd:")
            .or_else(|| line.strip_prefix("ShdPnd:"))
        else {
            return false;
        };
        u64::from_str_radix(mask.trim(), 16).is_ok_and(|mask| mask & bit != 0)
    })
}

/// Waits up to `limit` for every one of `pids` to be [settled]; whether they all are.
#[cfg(target_os = "linux")]
fn wait_settled(pids: &[i32], limit: std::time::Duration) -> bool {
    let until = std::time::Instant::now() + limit;
    let mut left: Vec<i32> = pids.to_vec();
    loop {
        left.retain(|&pid| !settled(pid));
        if left.is_empty() {
            return true;
        }
        if std::time::Instant::now() >= until {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
}

/// Sends `sig` to each of `pids` (from a fresh [`Tree::scan`]), and to nothing else:
/// not to the whole group, whose other members may have had it already.
pub(crate) fn signal_each(sig: i32, pids: &[i32]) {
    for &pid in pids {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

impl Tree {
    /// The tree of the command whose pid (and process group id) is `pgid`, not yet
    /// waited for.
    pub(crate) fn new(pgid: i32) -> Tree {
        Tree {
            // SAFETY: getpid has no preconditions.
            me: unsafe { libc::getpid() },
            pgid,
            leader_unreaped: true,
        }
    }

    /// The descendants of this process, without any process group: the guardian's view
    /// (its group is the command's, but it leads it itself).
    #[cfg(target_os = "linux")]
    pub(crate) fn descendants() -> Tree {
        let mut tree = Tree::new(0);
        tree.leader_unreaped = false;
        tree
    }

    /// Tokio has waited for the command: its pid, and so its group id, may be reused
    /// once the group is empty, so the group is no longer signalled as a whole.
    pub(crate) fn leader_reaped(&mut self) {
        self.leader_unreaped = false;
    }

    /// The live processes of the tree (never `leases` itself), after reaping the zombies
    /// among `leases`'s own children (other than the command, tokio's to wait for).
    ///
    /// One pass over `/proc` is not atomic: a process may fork after it was read. The
    /// children it forks during the pass get larger pids and are found later in the same
    /// pass (until pids wrap around); those forked after the pass are not. Where that
    /// matters, [`freeze`](Self::freeze) scans again until nothing new turns up.
    pub(crate) fn scan(&self) -> Vec<i32> {
        self.scan_with(|_| {})
    }

    /// [`scan`](Self::scan), calling `found` with each live process of the tree as soon
    /// as it is known to be one (its parent is, or it is in the command's group), in the
    /// middle of the pass: so that a freeze stops it before it can fork much further.
    #[cfg(target_os = "linux")]
    fn scan_with(&self, mut found: impl FnMut(i32)) -> Vec<i32> {
        use std::collections::{HashMap, HashSet};
        let mut stats = HashMap::new();
        // Processes whose parent is not known to be of the tree (yet), by parent: a
        // parent with a larger pid (pids wrapped around) is read after its children.
        let mut waiting: HashMap<i32, Vec<i32>> = HashMap::new();
        // Our descendants, and the command's group, which could hold a process that
        // joined it from outside (while the group id is surely the command's); the dead
        // among them too, whose children may have been read before they were handed on.
        let mut tree = HashSet::new();
        let mut alive = Vec::new();
        let mut dead_orphans = Vec::new();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                    continue;
                };
                let Some(stat) = read_stat(pid) else {
                    continue;
                };
                let member = stat.ppid == self.me
                    || tree.contains(&stat.ppid)
                    || (self.leader_unreaped && stat.pgrp == self.pgid);
                let ppid = stat.ppid;
                stats.insert(pid, stat);
                if pid == self.me {
                    continue;
                }
                if !member {
                    waiting.entry(ppid).or_default().push(pid);
                    continue;
                }
                let mut todo = vec![pid];
                while let Some(p) = todo.pop() {
                    if p == self.me || !tree.insert(p) {
                        continue;
                    }
                    todo.extend(waiting.remove(&p).into_iter().flatten());
                    let Some(stat) = stats.get(&p) else {
                        continue;
                    };
                    if !stat.dead || has_live_threads(p) {
                        alive.push(p);
                        found(p);
                    } else if stat.ppid == self.me && !(self.leader_unreaped && p == self.pgid) {
                        dead_orphans.push(p);
                    }
                }
            }
        }
        for pid in dead_orphans {
            // An orphan handed to us that has died: reap it, by its pid (ours to wait
            // for, so the pid cannot have been reused).
            let mut status = 0;
            // SAFETY: waitpid writes only to `status`.
            unsafe {
                libc::waitpid(pid, &mut status, libc::WNOHANG);
            }
        }
        alive.sort_unstable();
        alive
    }

    /// Stops (SIGSTOP) every process of the tree, then scans again and stops the new
    /// ones, until a scan made once every process found was seen stopped finds nothing
    /// new: a stopped process cannot fork, so nothing of the tree runs on or escapes.
    /// Returns the processes of that last scan. Gives up after [`FREEZE_LIMIT`] (a
    /// process that sleeps uninterruptibly stops only when it wakes).
    #[cfg(target_os = "linux")]
    pub(crate) fn freeze(&self) -> Vec<i32> {
        use std::collections::HashSet;
        let start = std::time::Instant::now();
        // The processes of the last scan, if every one of them was seen stopped since.
        let mut settled: Option<HashSet<i32>> = None;
        loop {
            if self.leader_unreaped {
                // SAFETY: killpg has no memory-safety preconditions.
                unsafe {
                    libc::killpg(self.pgid, libc::SIGSTOP);
                }
            }
            let alive = self.scan_with(|pid| signal_each(libc::SIGSTOP, &[pid]));
            if let Some(before) = &settled {
                if alive.iter().all(|pid| before.contains(pid)) {
                    return alive;
                }
            }
            let left = FREEZE_LIMIT.saturating_sub(start.elapsed());
            if left.is_zero() {
                return alive;
            }
            let all = wait_settled(&alive, left.min(SETTLE_LIMIT));
            settled = all.then(|| alive.iter().copied().collect());
        }
    }

    /// Elsewhere than on Linux: the command's group is stopped at once.
    #[cfg(not(target_os = "linux"))]
    pub(crate) fn freeze(&self) -> Vec<i32> {
        if self.leader_unreaped {
            // SAFETY: killpg has no memory-safety preconditions.
            unsafe {
                libc::killpg(self.pgid, libc::SIGSTOP);
            }
        }
        self.scan()
    }

    /// SIGKILL to the whole tree at once: [frozen](Self::freeze) first, so that no
    /// process forks past it. Returns the processes signalled (still alive until the
    /// kernel has killed them; scan again to see them gone).
    pub(crate) fn kill(&self) -> Vec<i32> {
        let alive = self.freeze();
        self.signal(libc::SIGKILL, &alive);
        alive
    }

    /// Elsewhere than on Linux: the command's group, while it is known to be the command's.
    #[cfg(not(target_os = "linux"))]
    fn scan_with(&self, _found: impl FnMut(i32)) -> Vec<i32> {
        // SAFETY: killpg with signal 0 only checks that the group exists.
        if self.leader_unreaped && unsafe { libc::killpg(self.pgid, 0) } == 0 {
            vec![self.pgid]
        } else {
            Vec::new()
        }
    }

    /// Sends `sig` to the whole tree at once: the command's group (atomically, while it
    /// is surely the command's), then every live process of `alive` (a fresh
    /// [`scan`](Self::scan)), the ones that left the group among them.
    ///
    /// A process that a scanned one forks after the scan is not signalled by this call,
    /// unless the tree was [frozen](Self::freeze) (as [`kill`](Self::kill) does). A
    /// descendant that is not our own child could in principle die, be reaped by its
    /// parent and have its pid reused between the scan and the signal: a window of
    /// microseconds, in which pids would have to wrap around.
    pub(crate) fn signal(&self, sig: i32, alive: &[i32]) {
        if self.leader_unreaped {
            // SAFETY: killpg has no memory-safety preconditions.
            unsafe {
                libc::killpg(self.pgid, sig);
            }
        }
        signal_each(sig, alive);
    }
}
