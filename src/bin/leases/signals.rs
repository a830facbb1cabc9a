//! The signals `leases run` and `leases elect` handle while they hold a lease for a
//! command: those passed on to the command's processes (SIGINT, SIGTERM, SIGHUP,
//! SIGQUIT), Ctrl-Z (SIGTSTP), and SIGCHLD, which tells that a process of the tree may
//! have ended.

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::exit::{Failure, INTERNAL};
use crate::tree;

/// What a command's keeper listens to: the signals it passes on, and SIGCHLD. Installing
/// it also makes this process the subreaper of the command's tree (see tree.rs).
pub(crate) struct Watch {
    pub(crate) signals: Signals,
    pub(crate) children: Signal,
}

impl Watch {
    /// Installs the handlers, first of all, so that a Ctrl-C while waiting for the
    /// lease is ours to handle.
    pub(crate) fn install() -> Result<Watch, Failure> {
        let signals = Signals::install()?;
        let children = signal(SignalKind::child())
            .map_err(|e| Failure::new(INTERNAL, format!("cannot handle SIGCHLD: {e}")))?;
        tree::become_subreaper()
            .map_err(|e| Failure::new(INTERNAL, format!("cannot become a subreaper: {e}")))?;
        Ok(Watch { signals, children })
    }
}

/// The signals passed on to the command's processes, and SIGTSTP.
pub(crate) struct Signals(Vec<(i32, Signal)>);

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
    pub(crate) async fn recv(&mut self) -> i32 {
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

/// Stops this process (as SIGTSTP would have) until a SIGCONT.
pub(crate) fn stop_self() {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGSTOP);
    }
}

pub(crate) fn signal_name(sig: i32) -> &'static str {
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
pub(crate) fn status_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(1),
        (None, Some(sig)) => u8::try_from(128 + sig).unwrap_or(255),
        (None, None) => 1,
    }
}
