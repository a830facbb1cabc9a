//! Model-based test: random sequences of acquire, release, drop, revoke, time advances
//! and renewal faults, against two managers sharing one backend, on paused time. Since
//! the safety review it also cancels and interleaves single operations: waiting
//! acquires whose callers give up at a random moment (the future is dropped mid-wait),
//! acquires that panic in the backend or whose answer is lost after the backend
//! granted them (a phantom grant nobody holds), and shutdowns with waiters in flight.
//!
//! After every step it checks:
//! - at most one live context per key;
//! - every live context is the backend's current lease for its key (exclusion judged
//!   on the backend's clock);
//! - fencing tokens strictly increase per key;
//! - an acquire conflicts exactly when the backend holds the key;
//! - every ended context ended for a reason the test caused (no spurious loss), and
//!   releasing a lease that already ended is `NotHeld`;
//! - after shutdown, every context ended and no actor is left running.
//!
//! `ops.rs` draws the operations, `world.rs` is what they act on, `step.rs` runs one,
//! `checks.rs` holds the invariants above, `allowed.rs` the reasons a context may end
//! with, and `stats.rs` what the runs did.

mod allowed;
mod checks;
mod ops;
mod stats;
mod step;
mod world;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use ops::{op, Op};
use stats::{record, STATS};
use world::World;

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut world = World::new().await;
    for op in &ops {
        world.step(op).await?;
    }
    world.finish().await?;
    record(&world, ops.len());
    Ok(())
}

fn cases() -> u32 {
    std::env::var("LEASES_MODEL_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000)
}

/// Keeps the renewal panics this test injects (hundreds per run) out of the output.
fn quiet_injected_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let injected = info.payload().downcast_ref::<String>().is_some_and(|m| {
            m.starts_with("injected renewal panic") || m.starts_with("injected acquire panic")
        });
        if !injected {
            default(info);
        }
    }));
}

#[test]
fn lease_invariants_hold() {
    quiet_injected_panics();
    let config = ProptestConfig {
        cases: cases(),
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let result = runner.run(&prop::collection::vec(op(), 1..80), |ops| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(run(ops))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let stats = STATS.lock().unwrap();
    eprintln!("model test: {:#?}", stats.as_ref().unwrap());
}
