//! A spinner on stderr while `run` waits for its lease: only on a terminal, and only
//! once the wait has lasted a moment (a quick grant draws nothing).

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

const FRAMES: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];
/// How long a wait lasts before the spinner shows.
const DELAY: Duration = Duration::from_millis(300);

/// A running spinner; dropping it stops it and clears its line.
pub(crate) struct Spinner {
    task: Option<JoinHandle<()>>,
    drawn: Arc<AtomicBool>,
}

impl Spinner {
    /// Starts a spinner showing `message` and the time waited, if stderr is a terminal.
    pub(crate) fn start(message: String) -> Spinner {
        let drawn = Arc::new(AtomicBool::new(false));
        if !std::io::stderr().is_terminal() {
            return Spinner { task: None, drawn };
        }
        let flag = drawn.clone();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            tokio::time::sleep(DELAY).await;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            for frame in FRAMES.iter().cycle() {
                tick.tick().await;
                let waited = crate::duration::human_approx(started.elapsed());
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r\x1b[K{frame} {message} ({waited})");
                let _ = err.flush();
                flag.store(true, Ordering::Relaxed);
            }
        });
        Spinner {
            task: Some(task),
            drawn,
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if self.drawn.load(Ordering::Relaxed) {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
        }
    }
}
