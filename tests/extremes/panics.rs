//! Every panic in this process, spawned tasks included, is counted by a panic hook, per
//! thread; each case runs its runtime on the test's own thread, so that the test that
//! checks for panics sees its own and no other's.

use std::cell::Cell;
use std::sync::Once;

thread_local! {
    /// Panics on this thread so far. Every case runs its runtime on the test's own
    /// thread (current-thread runtimes), so a panic of any task it spawned counts here
    /// and nowhere else.
    static PANICS: Cell<usize> = const { Cell::new(0) };
}

/// Counts every panic, per thread, from now on.
pub fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|n| n.set(n.get() + 1));
            default(info);
        }));
    });
}

/// Panics on this thread so far.
pub fn panics() -> usize {
    PANICS.with(Cell::get)
}

pub fn paused() -> tokio::runtime::Runtime {
    count_panics();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

pub fn real() -> tokio::runtime::Runtime {
    count_panics();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
