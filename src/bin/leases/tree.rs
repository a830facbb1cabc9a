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
    #[cfg(target_os = "linux")]
    pub(crate) fn scan(&self) -> Vec<i32> {
        use std::collections::{HashMap, HashSet};
        let mut stats = HashMap::new();
        let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                    continue;
                };
                if let Some(stat) = read_stat(pid) {
                    children.entry(stat.ppid).or_default().push(pid);
                    stats.insert(pid, stat);
                }
            }
        }
        // Our descendants; then the command's group, which could hold a process that
        // joined it from outside (while the group id is surely the command's).
        let mut tree = HashSet::new();
        let mut todo = vec![self.me];
        while let Some(parent) = todo.pop() {
            for &child in children.get(&parent).into_iter().flatten() {
                if tree.insert(child) {
                    todo.push(child);
                }
            }
        }
        if self.leader_unreaped {
            tree.extend(
                stats
                    .iter()
                    .filter(|(_, s)| s.pgrp == self.pgid)
                    .map(|(&pid, _)| pid),
            );
        }
        tree.remove(&self.me);
        let mut alive = Vec::new();
        for pid in tree {
            let Some(stat) = stats.get(&pid) else {
                continue;
            };
            if !stat.dead || has_live_threads(pid) {
                alive.push(pid);
            } else if stat.ppid == self.me && !(self.leader_unreaped && pid == self.pgid) {
                // An orphan handed to us that has died: reap it, by its pid (ours to
                // wait for, so the pid cannot have been reused).
                let mut status = 0;
                // SAFETY: waitpid writes only to `status`.
                unsafe {
                    libc::waitpid(pid, &mut status, libc::WNOHANG);
                }
            }
        }
        alive.sort_unstable();
        alive
    }

    /// Elsewhere than on Linux: the command's group, while it is known to be the command's.
    #[cfg(not(target_os = "linux"))]
    pub(crate) fn scan(&self) -> Vec<i32> {
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
    /// A process that a scanned one forks after the scan is not signalled by this call;
    /// callers scan again until the tree is empty. A descendant that is not our own
    /// child could in principle die, be reaped by its parent and have its pid reused
    /// between the scan and the signal: a window of microseconds, in which pids would
    /// have to wrap around.
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
