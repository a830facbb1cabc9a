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

use std::sync::Arc;
use std::time::Duration;

use leases::backend::{AcquireFault, Backend, FaultyBackend, MemoryBackend, RenewFault};
use leases::{
    AcquireOptions, CancelReason, Key, Lease, LeaseContext, LeaseError, LeaseManager, LossCause,
};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use ractor::{ActorCell, ActorStatus};

const TTL: Duration = Duration::from_secs(1);
const KEYS: usize = 3;
const MANAGERS: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Stall,
    Fail,
    Refuse,
    Panic,
}

/// A fault injected into the acquires of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AFault {
    Panic,
    LoseAnswer,
    Fail,
}

#[derive(Debug, Clone)]
enum Op {
    Acquire {
        mgr: usize,
        key: usize,
    },
    /// An acquire that waits for the key, whose caller gives up after `give_up_ms`.
    WaitAcquire {
        mgr: usize,
        key: usize,
        give_up_ms: u64,
    },
    /// A waiting acquire left running in the background (resolved at shutdown).
    Background {
        mgr: usize,
        key: usize,
    },
    AcquireFault {
        key: usize,
        fault: AFault,
    },
    HealAcquire {
        key: usize,
    },
    Release {
        handle: usize,
    },
    Drop {
        handle: usize,
    },
    Revoke {
        mgr: usize,
        key: usize,
    },
    Sleep {
        ms: u64,
    },
    Fault {
        key: usize,
        fault: Fault,
    },
    Heal {
        key: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let fault = prop_oneof![
        Just(Fault::Stall),
        Just(Fault::Fail),
        Just(Fault::Refuse),
        Just(Fault::Panic)
    ];
    let afault = prop_oneof![
        Just(AFault::Panic),
        Just(AFault::LoseAnswer),
        Just(AFault::Fail)
    ];
    prop_oneof![
        5 => (0..MANAGERS, 0..KEYS).prop_map(|(mgr, key)| Op::Acquire { mgr, key }),
        2 => (0..MANAGERS, 0..KEYS, 0u64..2500)
            .prop_map(|(mgr, key, give_up_ms)| Op::WaitAcquire { mgr, key, give_up_ms }),
        1 => (0..MANAGERS, 0..KEYS).prop_map(|(mgr, key)| Op::Background { mgr, key }),
        1 => (0..KEYS, afault).prop_map(|(key, fault)| Op::AcquireFault { key, fault }),
        1 => (0..KEYS).prop_map(|key| Op::HealAcquire { key }),
        2 => any::<usize>().prop_map(|handle| Op::Release { handle }),
        1 => any::<usize>().prop_map(|handle| Op::Drop { handle }),
        1 => (0..MANAGERS, 0..KEYS).prop_map(|(mgr, key)| Op::Revoke { mgr, key }),
        4 => (1u64..1500).prop_map(|ms| Op::Sleep { ms }),
        1 => (0..KEYS, fault).prop_map(|(key, fault)| Op::Fault { key, fault }),
        1 => (0..KEYS).prop_map(|key| Op::Heal { key }),
    ]
}

/// The reasons a context may end with, given what the test did to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Allowed {
    Released,
    Revoked,
    Lost(Fault),
    Shutdown,
}

fn permits(allowed: &[Allowed], reason: &CancelReason) -> bool {
    allowed.iter().any(|a| {
        matches!(
            (a, reason),
            (Allowed::Released, CancelReason::Released)
                | (Allowed::Revoked, CancelReason::Revoked)
                | (Allowed::Shutdown, CancelReason::Shutdown)
                | (
                    Allowed::Lost(Fault::Stall | Fault::Fail),
                    CancelReason::Lost(LossCause::DeadlineExceeded)
                )
                | (
                    Allowed::Lost(Fault::Refuse),
                    CancelReason::Lost(LossCause::RenewalRefused)
                )
                | (
                    Allowed::Lost(Fault::Panic),
                    CancelReason::Lost(LossCause::RenewerFailed(_))
                )
        )
    })
}

struct Handle {
    key: usize,
    token: u64,
    lease: Option<Lease>,
    ctx: LeaseContext,
    allowed: Vec<Allowed>,
}

/// A waiting acquire running in the background.
type Pending = tokio::task::JoinHandle<Result<(Lease, LeaseContext), LeaseError>>;

struct World {
    memory: Arc<MemoryBackend>,
    faults: Arc<FaultyBackend>,
    managers: Vec<LeaseManager>,
    keys: Vec<Key>,
    active_fault: [Option<Fault>; KEYS],
    last_token: [u64; KEYS],
    handles: Vec<Handle>,
    renewers: Vec<ActorCell>,
    conflicts: usize,
    acquire_fault: [Option<AFault>; KEYS],
    /// Waiting acquires left running: their key and task.
    background: Vec<(usize, usize, Pending)>,
    /// When a waiting acquire's caller last gave up, per (manager, key): its attempt
    /// may hold the key's slot until it next looks at its caller (within 500 ms).
    gave_up_at: std::collections::HashMap<(usize, usize), tokio::time::Instant>,
    gave_up: usize,
}

fn to_renew_fault(f: Fault) -> RenewFault {
    match f {
        Fault::Stall => RenewFault::Stall,
        Fault::Fail => RenewFault::Fail,
        Fault::Refuse => RenewFault::Refuse,
        Fault::Panic => RenewFault::Panic,
    }
}

/// Lets every task run to idle; advances the paused clock by at most 1 ms.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

impl World {
    async fn new() -> World {
        let memory = Arc::new(MemoryBackend::new());
        let inner: Arc<dyn Backend> = memory.clone();
        let faults = Arc::new(FaultyBackend::new(inner));
        let mut managers = Vec::new();
        for _ in 0..MANAGERS {
            managers.push(
                LeaseManager::builder()
                    .min_ttl(TTL)
                    .backend(faults.clone())
                    .start()
                    .await
                    .unwrap(),
            );
        }
        World {
            memory,
            faults,
            managers,
            keys: (0..KEYS)
                .map(|i| Key::system(["model", &i.to_string()]))
                .collect(),
            active_fault: [None; KEYS],
            last_token: [0; KEYS],
            handles: Vec::new(),
            renewers: Vec::new(),
            conflicts: 0,
            acquire_fault: [None; KEYS],
            background: Vec::new(),
            gave_up_at: std::collections::HashMap::new(),
            gave_up: 0,
        }
    }

    fn pick(&self, n: usize) -> Option<usize> {
        let live: Vec<usize> = (0..self.handles.len())
            .filter(|&i| self.handles[i].lease.is_some())
            .collect();
        (!live.is_empty()).then(|| live[n % live.len()])
    }

    /// Records a lease the test now holds.
    /// A background grant is recorded only when the test looks at it, after grants that
    /// came later may have been recorded: for those, tokens must be new, not larger.
    fn hold(
        &mut self,
        mgr: usize,
        key: usize,
        lease: Lease,
        ctx: LeaseContext,
    ) -> Result<(), TestCaseError> {
        self.hold_as(mgr, key, lease, ctx, true)
    }

    fn hold_as(
        &mut self,
        mgr: usize,
        key: usize,
        lease: Lease,
        ctx: LeaseContext,
        in_order: bool,
    ) -> Result<(), TestCaseError> {
        if in_order {
            prop_assert!(lease.token() > self.last_token[key], "token did not grow");
        } else {
            prop_assert!(
                self.handles.iter().all(|h| h.token != lease.token()),
                "token reused"
            );
        }
        self.last_token[key] = self.last_token[key].max(lease.token());
        let mut allowed = Vec::new();
        if let Some(f) = self.active_fault[key] {
            allowed.push(Allowed::Lost(f));
        }
        self.handles.push(Handle {
            key,
            token: lease.token(),
            lease: Some(lease),
            ctx,
            allowed,
        });
        self.renewers
            .extend(self.managers[mgr].actor().get_cell().get_children());
        Ok(())
    }

    /// An acquire error the test expects: one it injected.
    fn expected_error(&self, key: usize, e: &LeaseError) -> bool {
        matches!(e, LeaseError::Backend(_)) && self.acquire_fault[key].is_some()
    }

    async fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Acquire { mgr, key } => {
                let held = self.memory.info(&self.keys[key]).await.unwrap();
                let got = self.managers[mgr]
                    .acquire_lease(self.keys[key].clone(), TTL)
                    .await;
                match got {
                    Ok((lease, ctx)) => {
                        prop_assert!(
                            held.is_none(),
                            "granted while the backend holds it: {:?}",
                            held
                        );
                        self.hold(mgr, key, lease, ctx)?;
                    }
                    Err(LeaseError::Conflict) => {
                        self.conflicts += 1;
                        // A waiter of the same manager queued before us has the key
                        // promised (first come, first served), held or not; and a
                        // background waiter may have been granted it while we asked.
                        let promised = self
                            .background
                            .iter()
                            .any(|(m, k, _)| *m == mgr && *k == key)
                            || self.gave_up_at.get(&(mgr, key)).is_some_and(|at| {
                                tokio::time::Instant::now() - *at <= Duration::from_millis(600)
                            });
                        let held_after = self.memory.info(&self.keys[key]).await.unwrap();
                        prop_assert!(
                            held.is_some() || held_after.is_some() || promised,
                            "conflict on a key the backend does not hold"
                        )
                    }
                    Err(e) if self.expected_error(key, &e) => {}
                    Err(e) => prop_assert!(false, "unexpected acquire error {:?}", e),
                }
            }
            Op::WaitAcquire {
                mgr,
                key,
                give_up_ms,
            } => {
                let opts = AcquireOptions::new(TTL).wait(TTL * 3);
                let acquire = self.managers[mgr].acquire_lease_with(self.keys[key].clone(), opts);
                match tokio::time::timeout(Duration::from_millis(give_up_ms), acquire).await {
                    Ok(Ok((lease, ctx))) => self.hold(mgr, key, lease, ctx)?,
                    Ok(Err(LeaseError::Conflict | LeaseError::WaitTimedOut { .. })) => {
                        self.conflicts += 1
                    }
                    Ok(Err(e)) if self.expected_error(key, &e) => {}
                    Ok(Err(e)) => prop_assert!(false, "unexpected acquire error {:?}", e),
                    // The caller gave up: whatever the manager was doing for it must
                    // leave no holder behind (checked by `check`).
                    Err(_) => {
                        self.gave_up += 1;
                        self.gave_up_at
                            .insert((mgr, key), tokio::time::Instant::now());
                    }
                }
            }
            Op::Background { mgr, key } => {
                let m = self.managers[mgr].clone();
                let k = self.keys[key].clone();
                self.background.push((
                    mgr,
                    key,
                    tokio::spawn(async move {
                        m.acquire_lease_with(k, AcquireOptions::new(TTL).wait(TTL * 100))
                            .await
                    }),
                ));
            }
            Op::AcquireFault { key, fault } => {
                self.acquire_fault[key] = Some(fault);
                let f = match fault {
                    AFault::Panic => AcquireFault::Panic,
                    AFault::LoseAnswer => AcquireFault::LoseAnswer,
                    AFault::Fail => AcquireFault::Fail,
                };
                self.faults.fail_acquires(&self.keys[key], f);
            }
            Op::HealAcquire { key } => {
                self.acquire_fault[key] = None;
                self.faults.heal_acquires(&self.keys[key]);
            }
            Op::Release { handle } => {
                if let Some(i) = self.pick(handle) {
                    let h = &mut self.handles[i];
                    let was_live = !h.ctx.is_cancelled();
                    h.allowed.push(Allowed::Released);
                    let result = h.lease.take().unwrap().release().await;
                    if was_live {
                        prop_assert!(result.is_ok(), "release of a live lease: {:?}", result);
                        prop_assert_eq!(h.ctx.reason(), Some(CancelReason::Released));
                    } else {
                        prop_assert!(matches!(result, Err(LeaseError::NotHeld)), "{:?}", result);
                    }
                }
            }
            Op::Drop { handle } => {
                if let Some(i) = self.pick(handle) {
                    let h = &mut self.handles[i];
                    h.allowed.push(Allowed::Released);
                    drop(h.lease.take());
                }
            }
            Op::Revoke { mgr, key } => {
                let held = self.memory.info(&self.keys[key]).await.unwrap();
                for h in self.handles.iter_mut().filter(|h| h.key == key) {
                    h.allowed.push(Allowed::Revoked);
                }
                let revoked = self.managers[mgr].revoke(&self.keys[key]).await.unwrap();
                // Paused time runs on while the revoke is in flight: a lease may expire
                // (or a background waiter be granted) between the look and the revoke.
                let after = self.memory.info(&self.keys[key]).await.unwrap();
                if revoked {
                    prop_assert!(held.is_some() || after.is_some(), "revoked a free key");
                } else {
                    prop_assert!(
                        held.is_none() || after.is_none() || !self.background.is_empty(),
                        "revoke missed a held key"
                    );
                }
            }
            Op::Sleep { ms } => tokio::time::sleep(Duration::from_millis(ms)).await,
            Op::Fault { key, fault } => {
                self.active_fault[key] = Some(fault);
                self.faults
                    .fail_renewals(&self.keys[key], to_renew_fault(fault));
                for h in self.handles.iter_mut().filter(|h| h.key == key) {
                    h.allowed.push(Allowed::Lost(fault));
                }
            }
            Op::Heal { key } => {
                self.active_fault[key] = None;
                self.faults.heal_renewals(&self.keys[key]);
            }
        }
        settle().await;
        self.check().await
    }

    async fn check(&mut self) -> Result<(), TestCaseError> {
        // Background acquires that have finished become ordinary handles.
        let mut i = 0;
        while i < self.background.len() {
            if self.background[i].2.is_finished() {
                let (_, key, task) = self.background.remove(i);
                match task.await.unwrap() {
                    Ok((lease, ctx)) => {
                        prop_assert_eq!(lease.key(), &self.keys[key]);
                        self.hold_as(0, key, lease, ctx, false)?;
                        self.renewers
                            .extend(self.managers[1].actor().get_cell().get_children());
                    }
                    Err(
                        LeaseError::Conflict
                        | LeaseError::WaitTimedOut { .. }
                        | LeaseError::ManagerStopped,
                    ) => {}
                    Err(e) if self.expected_error(key, &e) => {}
                    Err(e) => prop_assert!(false, "unexpected background error {:?}", e),
                }
            } else {
                i += 1;
            }
        }
        for key in 0..KEYS {
            let live: Vec<&Handle> = self
                .handles
                .iter()
                .filter(|h| h.key == key && !h.ctx.is_cancelled())
                .collect();
            prop_assert!(live.len() <= 1, "two live holders of key {}", key);
            if let Some(h) = live.first() {
                let info = self.memory.info(&self.keys[key]).await.unwrap();
                prop_assert_eq!(
                    info.map(|i| i.token),
                    Some(h.token),
                    "a live context that is not the backend's lease"
                );
            }
        }
        for h in &self.handles {
            if let Some(reason) = h.ctx.reason() {
                prop_assert!(
                    permits(&h.allowed, &reason),
                    "context ended with {:?}, allowed {:?}",
                    reason,
                    h.allowed
                );
            }
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<(), TestCaseError> {
        // Background acquires may end up holding (until shutdown).
        settle().await;
        self.check().await?;
        for h in &mut self.handles {
            h.allowed.push(Allowed::Shutdown);
        }
        for m in &self.managers {
            m.shutdown().await;
        }
        settle().await;
        // Waiters still in flight are told the manager stopped.
        for (_, key, task) in std::mem::take(&mut self.background) {
            let r = task.await.unwrap();
            prop_assert!(
                matches!(r, Err(LeaseError::ManagerStopped))
                    || r.as_ref().is_err_and(|e| self.expected_error(key, e))
                    || r.as_ref().is_ok_and(|(_, c)| c.is_cancelled()),
                "a waiter outlived shutdown: {:?}",
                r.map(|(l, _)| l.token())
            );
        }
        self.check().await?;
        // Nothing is left leased by nobody beyond phantom grants (lost answers), which
        // expire within a TTL: after one, the backend holds nothing.
        tokio::time::sleep(TTL + Duration::from_millis(10)).await;
        for k in &self.keys {
            let info = self.memory.info(k).await.unwrap();
            prop_assert!(
                info.is_none(),
                "a key left leased after shutdown: {:?}",
                info
            );
        }
        for h in &self.handles {
            prop_assert!(h.ctx.is_cancelled(), "a context outlived shutdown");
        }
        for m in &self.managers {
            prop_assert_eq!(m.actor().get_status(), ActorStatus::Stopped);
        }
        for r in &self.renewers {
            prop_assert_eq!(r.get_status(), ActorStatus::Stopped, "renewer left running");
        }
        Ok(())
    }
}

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

/// What the runs did, so that a quiet pass can be told from a vacuous one.
#[derive(Debug, Default)]
struct Stats {
    cases: usize,
    steps: usize,
    grants: usize,
    conflicts: usize,
    gave_up: usize,
    ended: std::collections::BTreeMap<String, usize>,
}

static STATS: std::sync::Mutex<Option<Stats>> = std::sync::Mutex::new(None);

fn record(world: &World, ops: usize) {
    let mut guard = STATS.lock().unwrap();
    let stats = guard.get_or_insert_with(Stats::default);
    stats.cases += 1;
    stats.steps += ops;
    stats.grants += world.handles.len();
    stats.conflicts += world.conflicts;
    stats.gave_up += world.gave_up;
    for h in &world.handles {
        let name = match h.ctx.reason() {
            Some(CancelReason::Lost(c)) => {
                format!("Lost({})", format!("{c:?}").split('(').next().unwrap_or(""))
            }
            Some(r) => format!("{r:?}"),
            None => "live".into(),
        };
        *stats.ended.entry(name).or_default() += 1;
    }
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
