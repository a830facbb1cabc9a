//! A backend that stalls, panics or loses answers: the holder is told at its local
//! deadline, before anyone takes over; keys are never left stuck; a phantom grant holds
//! its key for at most one TTL.

use super::env::{free_now, leaser, ttls, Env};
use crate::backend::{AcquireFault, RenewFault};
use crate::{AcquireOptions, CancelReason, LeaseError, Leaser, LossCause};

/// A lease whose renewals stop is told at its local deadline, before anyone else is granted the key after it expires.
pub async fn expiry_and_takeover(env: &dyn Env) {
    let (m, faults) = env.faulty_manager().await;
    let other = env.manager().await;
    let key = env.key("takeover");
    let (lease, ctx) = leaser(&m)
        .acquire_lease(key.clone(), env.ttl())
        .await
        .unwrap();
    let watcher = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let reason = ctx.cancelled().await;
            (reason, tokio::time::Instant::now())
        })
    };
    faults.fail_renewals(&key, RenewFault::Stall);
    let opts = AcquireOptions::new(env.ttl()).wait(env.ttl() * 4);
    let (new, _) = leaser(&other)
        .acquire_lease_with(key.clone(), opts)
        .await
        .unwrap();
    let taken_at = tokio::time::Instant::now();
    assert!(new.token() > lease.token());
    // The old holder was told first, at its local deadline.
    let (reason, lost_at) = watcher.await.unwrap();
    assert_eq!(reason, CancelReason::Lost(LossCause::DeadlineExceeded));
    assert!(
        lost_at < taken_at,
        "told at {lost_at:?}, taken over at {taken_at:?}"
    );
    assert!(matches!(lease.release().await, Err(LeaseError::NotHeld)));
    new.release().await.unwrap();
    m.shutdown().await;
    other.shutdown().await;
}

/// Defect: a panic inside `Backend::acquire` killed the attempt task, left the key's
/// slot busy (every later acquire of the key was `Conflict`) and told the caller
/// `ManagerStopped` though the manager ran.
pub async fn panicking_acquire_frees_the_key(env: &dyn Env) {
    let (m, faults) = env.faulty_manager().await;
    let key = env.key("panicking-acquire");
    faults.fail_acquires(&key, AcquireFault::Panic);
    for wait in [None, Some(env.ttl())] {
        let mut opts = AcquireOptions::new(env.ttl());
        if let Some(w) = wait {
            opts = opts.wait(w);
        }
        match leaser(&m).acquire_lease_with(key.clone(), opts).await {
            Err(LeaseError::Backend(e)) => assert!(e.message().contains("panicked"), "{e}"),
            other => panic!("expected a backend error, got {other:?}"),
        }
        assert!(m.is_running());
    }
    faults.heal_acquires(&key);
    let (lease, ctx) = leaser(&m)
        .acquire_lease(key.clone(), env.ttl())
        .await
        .unwrap();
    assert!(!ctx.is_cancelled());
    lease.release().await.unwrap();
    m.shutdown().await;
}

/// An acquire whose answer is lost after the backend granted it (a phantom grant)
/// reports an error, and the phantom holds the key for at most one TTL: bounded, and
/// never a second holder.
pub async fn lost_acquire_answer_is_bounded(env: &dyn Env) {
    let (m, faults) = env.faulty_manager().await;
    let other = env.manager().await;
    let key = env.key("lost-answer");
    faults.fail_acquires(&key, AcquireFault::LoseAnswer);
    assert!(matches!(
        leaser(&m).acquire_lease(key.clone(), env.ttl()).await,
        Err(LeaseError::Backend(_))
    ));
    faults.heal_acquires(&key);
    // The backend granted it to nobody; it is taken until it expires...
    let info = other
        .lease_info(&key)
        .await
        .unwrap()
        .expect("a phantom grant");
    assert!(info.expires_in <= env.ttl());
    // ...and free after one TTL.
    ttls(env, 1.05).await;
    assert!(free_now(env, &other, &key).await);
    m.shutdown().await;
    other.shutdown().await;
}
