//! The world a run acts on: two managers sharing one (faulty) memory backend, the
//! leases the test holds, and what it did to them.

use std::sync::Arc;
use std::time::Duration;

use leases::backend::{Backend, FaultyBackend, MemoryBackend};
use leases::{Key, Lease, LeaseContext, LeaseError, LeaseManager};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use ractor::ActorCell;

use crate::allowed::Allowed;
use crate::ops::{AFault, Fault, KEYS, MANAGERS, TTL};

pub(crate) struct Handle {
    pub(crate) key: usize,
    pub(crate) token: u64,
    pub(crate) lease: Option<Lease>,
    pub(crate) ctx: LeaseContext,
    pub(crate) allowed: Vec<Allowed>,
}

/// A waiting acquire running in the background.
pub(crate) type Pending = tokio::task::JoinHandle<Result<(Lease, LeaseContext), LeaseError>>;

pub(crate) struct World {
    pub(crate) memory: Arc<MemoryBackend>,
    pub(crate) faults: Arc<FaultyBackend>,
    pub(crate) managers: Vec<LeaseManager>,
    pub(crate) keys: Vec<Key>,
    pub(crate) active_fault: [Option<Fault>; KEYS],
    pub(crate) last_token: [u64; KEYS],
    pub(crate) handles: Vec<Handle>,
    pub(crate) renewers: Vec<ActorCell>,
    pub(crate) conflicts: usize,
    pub(crate) acquire_fault: [Option<AFault>; KEYS],
    /// Waiting acquires left running: their key and task.
    pub(crate) background: Vec<(usize, usize, Pending)>,
    /// When a waiting acquire's caller last gave up, per (manager, key): its attempt
    /// may hold the key's slot until it next looks at its caller (within 500 ms).
    pub(crate) gave_up_at: std::collections::HashMap<(usize, usize), tokio::time::Instant>,
    pub(crate) gave_up: usize,
}

/// Lets every task run to idle; advances the paused clock by at most 1 ms.
pub(crate) async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

impl World {
    pub(crate) async fn new() -> World {
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

    pub(crate) fn pick(&self, n: usize) -> Option<usize> {
        let live: Vec<usize> = (0..self.handles.len())
            .filter(|&i| self.handles[i].lease.is_some())
            .collect();
        (!live.is_empty()).then(|| live[n % live.len()])
    }

    /// Records a lease the test now holds.
    /// A background grant is recorded only when the test looks at it, after grants that
    /// came later may have been recorded: for those, tokens must be new, not larger.
    pub(crate) fn hold(
        &mut self,
        mgr: usize,
        key: usize,
        lease: Lease,
        ctx: LeaseContext,
    ) -> Result<(), TestCaseError> {
        self.hold_as(mgr, key, lease, ctx, true)
    }

    pub(crate) fn hold_as(
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
    pub(crate) fn expected_error(&self, key: usize, e: &LeaseError) -> bool {
        matches!(e, LeaseError::Backend(_)) && self.acquire_fault[key].is_some()
    }
}
