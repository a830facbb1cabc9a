//! Every public options type with extreme values (0, 1 ns, `u64::MAX` seconds,
//! `Duration::MAX`, `usize::MAX` sizes and counts, empty and huge strings): building
//! and using each one returns `Ok` or a typed error and never panics, and an election
//! never gets stuck. Plus one regression test per papercut of issue #19.
//!
//! In-process TTLs run on paused tokio time; the service's cases use real sockets and
//! real (short) time. A panic anywhere in this process, spawned tasks included, is
//! counted by a panic hook and fails the test that checks for it.
//!
//! - `panics`: the panic hook and the runtimes every case runs on;
//! - `strategies`: the extreme values;
//! - `in_process`: properties of the manager, elections and the CLI's durations;
//! - `networked`: properties of the stores' and the service's options;
//! - `papercuts`: one regression test per papercut of issue #19;
//! - `silent_streams`: a stream that never speaks, on both protocols;
//! - `servers`: the lease service those cases start.

/// The command line's duration parser, as the binary compiles it.
#[path = "../../src/bin/leases/duration.rs"]
#[allow(dead_code)]
mod duration;

mod in_process;
mod networked;
mod panics;
mod papercuts;
mod servers;
mod silent_streams;
mod strategies;
