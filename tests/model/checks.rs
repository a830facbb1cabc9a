//! The invariants, checked after every step ([`World::check`]) and at the end of a run
//! ([`World::finish`]).

use std::time::Duration;

use leases::backend::Backend;
use leases::LeaseError;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use ractor::ActorStatus;

use crate::allowed::{permits, Allowed};
use crate::ops::{KEYS, TTL};
use crate::world::{settle, Handle, World};

impl World {
    pub(crate) async fn check(&mut self) -> Result<(), TestCaseError> {
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

    pub(crate) async fn finish(&mut self) -> Result<(), TestCaseError> {
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
