//! The guardian (Linux): a small process between `leases run` and its command, so that a
//! `kill -9` of `leases` does not leave the command's processes running without a lease.
//!
//! A parent-death signal reaches only a process's own children, and an orphan of the
//! command's tree is re-parented to its nearest subreaper. So `run` starts this binary
//! again as `leases __guardian RUNPID COMMAND...` (with SIGUSR1 as its parent-death
//! signal), and the guardian, a subreaper itself, starts the command. Every process of
//! the command's tree is then the guardian's descendant. The guardian:
//! - exits only once that tree is empty (no child left to wait for: every descendant
//!   that lives has a live parent chain up to the guardian), with the command's status
//!   (its code, or 128 + the signal that killed it, as a shell reports it), so that to
//!   `run` the guardian's life is the tree's;
//! - ignores the signals `run` passes on to the tree (SIGINT, SIGTERM, SIGHUP,
//!   SIGQUIT): the command's to handle. `run`'s SIGKILL kills it like any process of the
//!   tree; its children then go to `run`, also a subreaper;
//! - when `leases run` dies (its parent changes), sends SIGKILL to every process of the
//!   tree until none is left, then exits.
//!
//! Plain blocking code, no runtime: signals are blocked and taken with `sigtimedwait`,
//! so that none is missed between a look and a wait.

use std::ffi::OsString;
use std::time::Duration;

use crate::exit::{CANNOT_EXECUTE, INTERNAL, NOT_FOUND};
use crate::tree::Tree;

/// The hidden first argument that makes `leases` a guardian.
pub(crate) const ARG: &str = "__guardian";

/// The parent-death signal `run` gives the guardian.
pub(crate) const PARENT_DEATH: i32 = libc::SIGUSR1;

/// The signals the guardian blocks and takes with `sigtimedwait`.
fn blocked() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset write only to the set they are given.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [
            libc::SIGCHLD,
            PARENT_DEATH,
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
        ] {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// Runs the guardian: `args` are RUNPID COMMAND ARGS... Never returns.
pub(crate) fn main(args: Vec<OsString>) -> ! {
    let parent: Option<i32> = args.first().and_then(|a| a.to_str()?.parse().ok());
    let (Some(parent), Some(program)) = (parent, args.get(1)) else {
        eprintln!("leases: {ARG} is for `leases run` only");
        std::process::exit(INTERNAL.into());
    };
    let set = blocked();
    // SAFETY: plain system calls on valid arguments.
    unsafe {
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        // Set by `run` before exec already; again, in case it was not.
        libc::prctl(libc::PR_SET_PDEATHSIG, PARENT_DEATH, 0, 0, 0);
        if libc::getppid() != parent {
            // `run` died before we got here: start nothing.
            std::process::exit(INTERNAL.into());
        }
        if libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0 {
            eprintln!(
                "leases: cannot become a subreaper: {}",
                std::io::Error::last_os_error()
            );
            std::process::exit(INTERNAL.into());
        }
    }

    let mut cmd = std::process::Command::new(program);
    cmd.args(&args[2..]);
    let me = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions, allocating nothing.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            // The command starts with no signal blocked (ours are inherited).
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if u32::try_from(libc::getppid()).ok() != Some(me) {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let command = match cmd.spawn() {
        Ok(child) => i32::try_from(child.id()).unwrap_or(-1),
        Err(e) => {
            eprintln!("leases: cannot run {}: {e}", program.to_string_lossy());
            let code = match e.kind() {
                std::io::ErrorKind::NotFound => NOT_FOUND,
                _ => CANNOT_EXECUTE,
            };
            std::process::exit(code.into());
        }
    };

    let mut status: Option<i32> = None;
    let mut orphaned = false;
    let mut said_left_behind = false;
    let tree = Tree::descendants();
    loop {
        // Reap every child that has ended; with none left, the tree is empty.
        loop {
            let mut raw = 0;
            // SAFETY: waitpid writes only to `raw`.
            let pid = unsafe { libc::waitpid(-1, &mut raw, libc::WNOHANG) };
            if pid > 0 {
                if pid == command {
                    status = Some(exit_code(raw));
                }
            } else if pid == 0 {
                if let (Some(code), false) = (status, said_left_behind) {
                    said_left_behind = true;
                    let key = std::env::var("LEASES_KEY").unwrap_or_default();
                    eprintln!(
                        "leases: the command exited with status {code}, leaving processes \
                         running; holding the lease on {key} until they end"
                    );
                }
                break;
            } else {
                match std::io::Error::last_os_error().raw_os_error() {
                    Some(libc::EINTR) => continue,
                    _ => std::process::exit(status.unwrap_or(INTERNAL.into())),
                }
            }
        }
        // SAFETY: getppid has no preconditions.
        if orphaned || unsafe { libc::getppid() } != parent {
            // `leases run` is gone, and with it the lease: kill the whole tree (frozen
            // first, so that nothing forks past the kill), and again whatever joined it
            // meanwhile, until no child is left.
            orphaned = true;
            tree.kill();
        }
        let wait = if orphaned {
            Duration::from_millis(20)
        } else {
            Duration::from_secs(1)
        };
        let timeout = libc::timespec {
            tv_sec: wait.as_secs() as libc::time_t,
            tv_nsec: wait.subsec_nanos().into(),
        };
        // SAFETY: the set and timeout are valid; no siginfo is asked for.
        unsafe {
            libc::sigtimedwait(&set, std::ptr::null_mut(), &timeout);
        }
    }
}

/// A wait status as a shell reports it: the code, or 128 + the signal.
fn exit_code(raw: i32) -> i32 {
    if libc::WIFEXITED(raw) {
        libc::WEXITSTATUS(raw)
    } else if libc::WIFSIGNALED(raw) {
        128 + libc::WTERMSIG(raw)
    } else {
        INTERNAL.into()
    }
}
