//! One step of a run: the operation, then the checks.

use std::time::Duration;

use leases::backend::{AcquireFault, Backend};
use leases::{AcquireOptions, CancelReason, LeaseError};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use crate::allowed::Allowed;
use crate::ops::{to_renew_fault, AFault, Op, TTL};
use crate::world::{settle, World};

impl World {
    pub(crate) async fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
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
}
