//! `AcquireOptions::resume` at the manager, which the service's re-attaching builds on:
//! a lease moves between managers of a shared store with its token, never revived once
//! it has ended, and never resumed from a store that dies with its process.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use leases::backend::{Backend, MemoryBackend};
use leases::{AcquireOptions, CancelReason, Key, LeaseError, LeaseManager};

use crate::support::shared_store::SharedStore;

const TTL: Duration = Duration::from_secs(10);

async fn manager(store: &Arc<dyn Backend>) -> LeaseManager {
    LeaseManager::builder()
        .backend(store.clone())
        .start()
        .await
        .unwrap()
}

/// Another manager of a shared store resumes a live lease: same token, renewed by it from
/// then on, for many TTLs after the first manager stopped renewing.
#[tokio::test(start_paused = true)]
async fn another_manager_resumes_a_live_lease() {
    let store: Arc<dyn Backend> = Arc::new(SharedStore::default());
    let (a, b) = (manager(&store).await, manager(&store).await);
    let key = Key::system(["resume", "live"]);
    // Held as the lease server holds its clients' leases: its manager's shutdown then
    // leaves the lease in the store instead of releasing it.
    let kept = AcquireOptions::new(TTL).keep_until_released();
    let (lease, _ctx) = a.acquire_lease_with(key.clone(), kept).await.unwrap();
    let token = lease.token();
    let options = AcquireOptions::new(TTL).resume(token).keep_until_released();
    let (again, ctx) = b.acquire_lease_with(key.clone(), options).await.unwrap();
    assert_eq!(again.token(), token, "a resumed lease keeps its token");
    // The first manager goes away without releasing (as a server does).
    a.shutdown().await;
    drop(lease);
    tokio::time::sleep(TTL * 5).await;
    assert_eq!(ctx.reason(), None);
    let info = store.info(&key).await.unwrap().expect("still held");
    assert_eq!(info.token, token);
    again.release().await.unwrap();
    assert!(store.info(&key).await.unwrap().is_none());
}

/// A lease that expired, was released or is revoked is never resumed.
#[tokio::test(start_paused = true)]
async fn an_ended_lease_is_never_resumed() {
    let store: Arc<dyn Backend> = Arc::new(SharedStore::default());
    let b = manager(&store).await;
    let key = Key::system(["resume", "ended"]);
    let resume = |token| AcquireOptions::new(TTL).resume(token);
    // Expired: granted in the store directly, never renewed.
    let leases::backend::AcquireOutcome::Granted { token } =
        store.acquire(&key, TTL, b"").await.unwrap()
    else {
        panic!("free key");
    };
    tokio::time::sleep(TTL + Duration::from_millis(1)).await;
    let err = b.acquire_lease_with(key.clone(), resume(token)).await;
    assert!(matches!(err, Err(LeaseError::NotHeld)), "{err:?}");
    // Released.
    let leases::backend::AcquireOutcome::Granted { token } =
        store.acquire(&key, TTL, b"").await.unwrap()
    else {
        panic!("free key");
    };
    assert!(store.release(&key, token).await.unwrap());
    let err = b.acquire_lease_with(key.clone(), resume(token)).await;
    assert!(matches!(err, Err(LeaseError::NotHeld)), "{err:?}");
    // Revoked.
    let leases::backend::AcquireOutcome::Granted { token } =
        store.acquire(&key, TTL, b"").await.unwrap()
    else {
        panic!("free key");
    };
    store.revoke(&key).await.unwrap();
    let err = b.acquire_lease_with(key.clone(), resume(token)).await;
    assert!(matches!(err, Err(LeaseError::NotHeld)), "{err:?}");
    // None of these took the key: the revoked lease still holds it.
    assert_eq!(
        store.info(&key).await.unwrap().map(|i| i.token),
        Some(token)
    );
}

/// The memory backend shares no lease between processes: another manager's resume is
/// refused, even of a live lease, and the lease is untouched.
#[tokio::test(start_paused = true)]
async fn a_memory_lease_is_not_resumed_elsewhere() {
    let store: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let (a, b) = (manager(&store).await, manager(&store).await);
    let key = Key::system(["resume", "memory"]);
    let (lease, ctx) = a.acquire_lease(key.clone(), TTL).await.unwrap();
    let options = AcquireOptions::new(TTL).resume(lease.token());
    let err = b.acquire_lease_with(key.clone(), options).await;
    assert!(matches!(err, Err(LeaseError::NotHeld)), "{err:?}");
    assert_eq!(ctx.reason(), None);
    lease.release().await.unwrap();
    assert_eq!(ctx.reason(), Some(CancelReason::Released));
}

/// Polls `inner` until it is first woken, then drops it without polling it again: a
/// caller that goes away just as its answer arrives (a client that hangs up while its
/// re-attach is answered, which drops the server's request future). `inner` waits on
/// one channel only (the manager's answer), so its first wake is that answer.
struct DroppedWhenAnswered<F: Future> {
    inner: Option<Pin<Box<F>>>,
    woken: Arc<AtomicBool>,
}

impl<F: Future> Future for DroppedWhenAnswered<F> {
    /// `Some` if `inner` was ready at its first poll.
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.woken.load(Ordering::SeqCst) {
            self.inner = None;
            return Poll::Ready(None);
        }
        struct Flag(Arc<AtomicBool>, Waker);
        impl Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::SeqCst);
                self.1.wake_by_ref();
            }
        }
        let waker = Waker::from(Arc::new(Flag(self.woken.clone(), cx.waker().clone())));
        let inner = self.inner.as_mut().expect("polled after the end");
        inner
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .map(Some)
    }
}

/// A re-attach whose caller went away as its answer arrived must leave the lease in the
/// store, never release it: its holder may act until the deadline it had before (the
/// lease server's client, whose re-attach the server's dropped request future carried).
/// Dropping the undelivered lease released it, and a third manager was granted the key
/// while the first holder's context was live.
#[tokio::test(start_paused = true)]
async fn a_resume_whose_caller_went_away_leaves_the_lease_in_the_store() {
    let store: Arc<dyn Backend> = Arc::new(SharedStore::default());
    let (a, b, c) = (
        manager(&store).await,
        manager(&store).await,
        manager(&store).await,
    );
    let key = Key::system(["resume", "caller-gone"]);
    let kept = AcquireOptions::new(TTL).keep_until_released();
    let (lease, ctx) = a
        .acquire_lease_with(key.clone(), kept.clone())
        .await
        .unwrap();
    let token = lease.token();
    let resume = b.acquire_lease_with(key.clone(), kept.clone().resume(token));
    let gone = DroppedWhenAnswered {
        inner: Some(Box::pin(resume)),
        woken: Arc::default(),
    }
    .await;
    assert!(gone.is_none(), "answered at the first poll: {gone:?}");
    // Whatever the manager does with the lease it could not deliver, the key stays
    // taken while its first holder may act.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(ctx.reason(), None);
    assert_eq!(
        store.info(&key).await.unwrap().map(|i| i.token),
        Some(token),
        "the store still holds the lease"
    );
    let other = c.acquire_lease(key.clone(), TTL).await;
    assert!(matches!(other, Err(LeaseError::Conflict)), "{other:?}");
    lease.release().await.unwrap();
}
