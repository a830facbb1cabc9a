//! The model's size, and the operations a run is made of (drawn by proptest).

use std::time::Duration;

use leases::backend::RenewFault;
use proptest::prelude::*;

pub(crate) const TTL: Duration = Duration::from_secs(1);
pub(crate) const KEYS: usize = 3;
pub(crate) const MANAGERS: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    Stall,
    Fail,
    Refuse,
    Panic,
}

/// A fault injected into the acquires of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AFault {
    Panic,
    LoseAnswer,
    Fail,
}

#[derive(Debug, Clone)]
pub(crate) enum Op {
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

pub(crate) fn op() -> impl Strategy<Value = Op> {
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

pub(crate) fn to_renew_fault(f: Fault) -> RenewFault {
    match f {
        Fault::Stall => RenewFault::Stall,
        Fault::Fail => RenewFault::Fail,
        Fault::Refuse => RenewFault::Refuse,
        Fault::Panic => RenewFault::Panic,
    }
}
