//! `forward_backend!`: a test's wrapper around a store, written as only what it changes.
//!
//! Tests wrap a backend to count, delay, fail or record some of its calls. The wrapper
//! must still implement every required method of [`Backend`](leases::backend::Backend),
//! and most of them only pass the call on. This macro writes those: name the methods to
//! pass to the inner store, then write the changed ones as usual.
//!
//! ```ignore
//! forward_backend! {
//!     Recording => inner;
//!     forward: acquire, release, revoke, info, subscribe_freed;
//!     async fn renew(&self, key: &Key, token: u64, ttl: Duration)
//!         -> Result<RenewOutcome, BackendError> { /* … */ }
//! }
//! ```
//!
//! Only the named methods are passed on: the others keep the trait's defaults, as a
//! hand-written wrapper's did (for instance `renew_many` calling the wrapper's own
//! `renew`, so that a wrapper that changes `renew` also sees a group's renewals).
//!
//! Include it with `#[macro_use] #[path = "support/forward.rs"] mod forward;` where the
//! rest of `support` is not needed, or through `support` (`#[macro_use] mod support;`).

#[allow(unused_macros)]
macro_rules! forward_backend {
    ($ty:ty => $field:tt; forward: $($m:ident),* $(,)?; $($own:tt)*) => {
        forward_backend!(@go [$ty, $field] [$($own)*] $($m)*);
    };
    (@go [$ty:ty, $field:tt] [$($acc:tt)*]) => {
        #[async_trait::async_trait]
        impl leases::backend::Backend for $ty {
            $($acc)*
        }
    };
    (@go [$ty:ty, $field:tt] [$($acc:tt)*] acquire $($rest:ident)*) => {
        forward_backend!(@go [$ty, $field] [$($acc)*
            async fn acquire(
                &self,
                key: &leases::Key,
                ttl: std::time::Duration,
                metadata: &[u8],
            ) -> Result<leases::backend::AcquireOutcome, leases::BackendError> {
                self.$field.acquire(key, ttl, metadata).await
            }
        ] $($rest)*);
    };
    (@go [$ty:ty, $field:tt] [$($acc:tt)*] renew $($rest:ident)*) => {
        forward_backend!(@go [$ty, $field] [$($acc)*
            async fn renew(
                &self,
                key: &leases::Key,
                token: u64,
                ttl: std::time::Duration,
            ) -> Result<leases::backend::RenewOutcome, leases::BackendError> {
                self.$field.renew(key, token, ttl).await
            }
        ] $($rest)*);
    };
    (@go [$ty:ty, $field:tt] [$($acc:tt)*] renew_many $($rest:ident)*) => {
        forward_backend!(@go [$ty, $field] [$($acc)*
            async fn renew_many(
                &self,
                leases: &[(leases::Key, u64)],
                ttl: std::time::Duration,
            ) -> Vec<Result<leases::backend::RenewOutcome, leases::BackendError>> {
                self.$field.renew_many(leases, ttl).await
            }
        ] $($rest)*);
    };
    (@go [$ty:ty, $field:tt] [$($acc:tt)*] release $($rest:ident)*) => {
        forward_backend!(@go [$ty, $field] [$($acc)*
            async fn release(&self, key: &leases::Key, token: u64)
                -> Result<bool, leases::BackendError> {
                self.$field.release(key, token).await
            }
        ] $($rest)*);
    };
    (@go [$ty:ty, $field:tt] [$($acc:tt)*] leave $($rest:ident)*) => {
        forward_backend!(@go [$ty, $field] [$($acc)*
            async fn leave(&self, key: &leases::Key, token: u64)
                -> Result<(), leases::BackendError> {
                self.$field.leave(key, token).await
            }
        ] $($rest)*);
    };
    (@go [$ty:ty, $field:tt] [$($acc:tt)*] revoke $($rest:ident)*) => {
        forward_backend!(@go [$ty, $field] [$($acc)*
            async fn revoke(&self, key: &leases::Key)
                -> Result<Option<u64>, leases::BackendError> {
                self.$field.revoke(key).await
            }
        ] $($rest)*);
    };
    (@go [$ty:ty, $field:tt] [$($acc:tt)*] info $($rest:ident)*) => {
        forward_backend!(@go [$ty, $field] [$($acc)*
            async fn info(&self, key: &leases::Key)
                -> Result<Option<leases::backend::LeaseInfo>, leases::BackendError> {
                self.$field.info(key).await
            }
        ] $($rest)*);
    };
    (@go [$ty:ty, $field:tt] [$($acc:tt)*] list $($rest:ident)*) => {
        forward_backend!(@go [$ty, $field] [$($acc)*
            async fn list(&self, prefix: &str, limit: usize)
                -> Result<Vec<leases::backend::LeaseInfo>, leases::BackendError> {
                self.$field.list(prefix, limit).await
            }
        ] $($rest)*);
    };
    (@go [$ty:ty, $field:tt] [$($acc:tt)*] subscribe_freed $($rest:ident)*) => {
        forward_backend!(@go [$ty, $field] [$($acc)*
            fn subscribe_freed(&self) -> leases::backend::FreedKeys {
                self.$field.subscribe_freed()
            }
        ] $($rest)*);
    };
    (@go [$ty:ty, $field:tt] [$($acc:tt)*] shared $($rest:ident)*) => {
        forward_backend!(@go [$ty, $field] [$($acc)*
            fn shared(&self) -> bool {
                self.$field.shared()
            }
        ] $($rest)*);
    };
}
