//! Timed faults: a [`FaultSchedule`] of [`Step`]s, fixed or random (the same for the
//! same seed), and the task that applies one to a proxy.

use std::sync::Weak;
use std::time::Duration;

use tokio::time::{sleep_until, Instant};

use super::super::rng::XorShift;
use super::fault::{Fault, Shared};

/// One step of a fault schedule: at `at` (from the schedule's start) switch to `fault`
/// for `hold`, then back to Pass unless the next step starts right then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// When the fault starts, from the start of the schedule.
    pub at: Duration,
    /// The fault injected.
    pub fault: Fault,
    /// How long it lasts.
    pub hold: Duration,
}

/// A list of timed faults for `FaultProxy::run_schedule`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultSchedule {
    /// Steps, in order of `at`, not overlapping.
    pub steps: Vec<Step>,
}

/// Shortest fault hold and Pass gap in a random schedule.
const MIN_HOLD: Duration = Duration::from_millis(50);

impl FaultSchedule {
    /// A schedule of the given steps.
    pub fn new(steps: Vec<Step>) -> Self {
        FaultSchedule { steps }
    }

    /// A random schedule of faults that slow a link without breaking it (delays of
    /// 1..30 ms, and a slow drip of a few KiB per couple of milliseconds), switched every
    /// 50..400 ms for `total`: operations stay well within their timeouts, so a test's
    /// assertions about outcomes still hold while every await point sees latency.
    pub fn latency(seed: u64, total: Duration) -> Self {
        let mut rng = XorShift::new(seed);
        let mut steps = Vec::new();
        let mut t = Duration::ZERO;
        while t < total {
            let hold = rng.millis(MIN_HOLD, Duration::from_millis(400));
            let fault = match rng.below(3) {
                0 => Fault::Pass,
                1 => Fault::Delay(rng.millis(Duration::from_millis(1), Duration::from_millis(30))),
                _ => Fault::SlowDrip {
                    bytes: 1024 + rng.below(4096) as usize,
                    every: rng.millis(Duration::from_millis(1), Duration::from_millis(3)),
                },
            };
            steps.push(Step { at: t, fault, hold });
            t += hold;
        }
        FaultSchedule { steps }
    }

    /// A random schedule fitting in `total`, the same for the same arguments: Pass gaps
    /// of 50 ms..`max_hold` (a quarter of them zero, so faults also follow each other
    /// directly), then a fault of any kind held 50 ms..`max_hold`.
    pub fn random(seed: u64, total: Duration, max_hold: Duration) -> Self {
        let mut rng = XorShift::new(seed);
        let max_hold = max_hold.max(MIN_HOLD);
        let mut steps = Vec::new();
        let mut t = Duration::ZERO;
        loop {
            if rng.below(4) != 0 || steps.is_empty() {
                t += rng.millis(MIN_HOLD, max_hold);
            }
            let fault = match rng.below(5) {
                0 => Fault::Delay(rng.millis(Duration::from_millis(10), max_hold)),
                1 => Fault::Blackhole,
                2 => Fault::Reset,
                3 => Fault::HalfOpen,
                _ => Fault::SlowDrip {
                    bytes: 1 + rng.below(512) as usize,
                    every: rng.millis(Duration::from_millis(5), Duration::from_millis(50)),
                },
            };
            let hold = rng.millis(MIN_HOLD, max_hold);
            if t + hold > total {
                break;
            }
            steps.push(Step { at: t, fault, hold });
            t += hold;
        }
        FaultSchedule { steps }
    }
}

/// Applies `schedule` to the proxy of `shared` while it lives; the log of what it did.
pub(super) async fn run_schedule(shared: Weak<Shared>, schedule: FaultSchedule) -> Vec<String> {
    let start = Instant::now();
    let stamp = |start: Instant| format!("t={:.2}s", start.elapsed().as_secs_f64());
    let set = |fault: Fault| match shared.upgrade() {
        Some(shared) => {
            shared.mode.send_replace(fault);
            true
        }
        None => false,
    };
    let mut log = Vec::new();
    let steps = &schedule.steps;
    for (i, step) in steps.iter().enumerate() {
        sleep_until(start + step.at).await;
        if !set(step.fault) {
            log.push(format!("{} proxy dropped, schedule ends", stamp(start)));
            return log;
        }
        log.push(format!(
            "{} {} for {:.2}s",
            stamp(start),
            step.fault,
            step.hold.as_secs_f64()
        ));
        let end = step.at + step.hold;
        sleep_until(start + end).await;
        let next_at = steps.get(i + 1).map(|next| next.at);
        if next_at.is_none_or(|at| at > end) && !set(Fault::Pass) {
            log.push(format!("{} proxy dropped, schedule ends", stamp(start)));
            return log;
        }
    }
    set(Fault::Pass);
    log.push(format!("{} pass (end)", stamp(start)));
    log
}
