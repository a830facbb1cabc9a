//! The in-process options at extremes, on paused time (cheap: many cases): the
//! manager's builder and acquires, elections, the command line's durations.

use std::time::Duration;

use leases::election::{Election, ElectionOptions, Leadership};
use leases::{AcquireOptions, Key, LeaseError, LeaseManager, MAX_METADATA_LEN, MAX_TTL};
use proptest::prelude::*;

use crate::duration;
use crate::panics::{panics, paused};
use crate::strategies::{config, duration, metadata_len, valid_ttl};

proptest! {
    #![proptest_config(config())]

    /// The manager's builder and acquire options: a typed refusal or a working manager.
    #[test]
    fn managers_and_acquires_at_extremes(
        min_ttl in duration(),
        margin in proptest::option::of(duration()),
        shutdown in duration(),
        ttl in duration(),
        meta in metadata_len(),
        wait in duration(),
    ) {
        let before = panics();
        paused().block_on(async {
            let mut builder = LeaseManager::builder().min_ttl(min_ttl).shutdown_timeout(shutdown);
            if let Some(margin) = margin {
                builder = builder.safety_margin(margin);
            }
            let manager = match builder.start().await {
                Ok(m) => m,
                Err(LeaseError::InvalidConfig(_)) => {
                    let min_ok = min_ttl >= Duration::from_millis(1) && min_ttl <= MAX_TTL;
                    let margin_ok = margin.is_none_or(|m| !m.is_zero() && m < min_ttl / 2);
                    prop_assert!(!(min_ok && margin_ok), "valid options refused");
                    return Ok(());
                }
                Err(e) => return Err(TestCaseError::fail(format!("untyped refusal {e:?}"))),
            };
            let key = Key::system(["extremes", "manager"]);
            let options = AcquireOptions::new(ttl).metadata(vec![7u8; meta]);
            let first = manager.acquire_lease_with(key.clone(), options.clone()).await;
            let valid = valid_ttl(ttl, min_ttl) && meta <= MAX_METADATA_LEN;
            match &first {
                Ok(_) => prop_assert!(valid),
                Err(LeaseError::TtlTooShort { .. }
                    | LeaseError::TtlTooLong { .. }
                    | LeaseError::MetadataTooLarge { .. }) => prop_assert!(!valid),
                Err(e) => return Err(TestCaseError::fail(format!("unexpected {e:?}"))),
            }
            // A second holder waits as long as it was told (or until we stop looking).
            let second = tokio::time::timeout(
                Duration::from_secs(600),
                manager.acquire_lease_with(key.clone(), options.wait(wait)),
            )
            .await;
            drop(second);
            drop(first);
            manager.shutdown().await;
            Ok(())
        })?;
        prop_assert_eq!(panics(), before, "something panicked (see above)");
    }

    /// Elections: a typed refusal, or a candidate that leads once the key is free (or
    /// stops with the leaser's refusal); never a candidate stuck as a follower.
    #[test]
    fn elections_at_extremes(
        identity_len in metadata_len(),
        ttl in duration(),
        retry in proptest::option::of(duration()),
        backoff in proptest::option::of((duration(), duration())),
        rival in any::<bool>(),
    ) {
        let before = panics();
        paused().block_on(async {
            let min = Duration::from_secs(1);
            let manager = LeaseManager::builder().min_ttl(min).start().await.unwrap();
            let key = Key::system(["extremes", "election"]);
            let held = if rival {
                Some(manager.hold(key.clone(), Duration::from_secs(10)).await.unwrap())
            } else {
                None
            };
            let mut options = ElectionOptions::new("i".repeat(identity_len), ttl).jitter_seed(7);
            if let Some(retry) = retry {
                options = options.retry(retry);
            }
            if let Some((lo, hi)) = backoff {
                options = options.backoff(lo, hi);
            }
            let election = match Election::campaign(manager.clone(), key.clone(), options) {
                Ok(e) => e,
                Err(LeaseError::MetadataTooLarge { .. }) => {
                    prop_assert!(identity_len > MAX_METADATA_LEN);
                    manager.shutdown().await;
                    return Ok(());
                }
                Err(LeaseError::TtlTooLong { .. }) => {
                    prop_assert!(ttl > MAX_TTL);
                    manager.shutdown().await;
                    return Ok(());
                }
                Err(LeaseError::InvalidConfig(_)) => {
                    manager.shutdown().await;
                    return Ok(());
                }
                Err(e) => return Err(TestCaseError::fail(format!("untyped refusal {e:?}"))),
            };
            tokio::time::sleep(Duration::from_secs(1)).await;
            if let Some(held) = held {
                let state = election.leadership();
                prop_assert!(
                    matches!(state, Leadership::Follower { .. } | Leadership::Stopped { .. }),
                    "{state:?} while another holds the key"
                );
                held.release().await.unwrap();
            }
            // The key is free: within a minute the candidate leads, or it has stopped
            // because the leaser refused its TTL.
            let mut state = election.leadership();
            for _ in 0..600 {
                if state.is_leader() || state.is_stopped() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                state = election.leadership();
            }
            if valid_ttl(ttl, min) {
                prop_assert!(state.is_leader(), "stuck as {state:?}");
            } else {
                prop_assert!(
                    matches!(state, Leadership::Stopped { error: Some(LeaseError::TtlTooShort { .. }) }),
                    "stuck as {state:?}"
                );
            }
            election.resign().await.unwrap();
            manager.shutdown().await;
            Ok(())
        })?;
        prop_assert_eq!(panics(), before, "something panicked (see above)");
    }

    /// The command line's durations: any text parses or is refused, and what parses
    /// is shown and used as a TTL without a panic.
    #[test]
    fn cli_durations_at_extremes(
        input in prop_oneof![
            any::<String>(),
            "[0-9.]{0,25}(ms|s|m|h|d| |x){0,2}",
            any::<u64>().prop_map(|n| format!("{n}d")),
            any::<u64>().prop_map(|n| format!("{n}s{n}ms")),
        ],
    ) {
        let before = panics();
        if let Ok(d) = duration::parse(&input) {
            let _ = duration::human(d);
            let _ = duration::rfc3339(std::time::UNIX_EPOCH + d.min(Duration::from_secs(1 << 40)));
            let key = Key::system(["extremes", "cli"]);
            let held = paused().block_on(async {
                let manager = LeaseManager::start().await.unwrap();
                let held = manager.acquire_lease_with(key, AcquireOptions::new(d).wait(d)).await;
                manager.shutdown().await;
                held.map(|_| ())
            });
            match held {
                Ok(()) => prop_assert!(valid_ttl(d, leases::MIN_TTL)),
                Err(LeaseError::TtlTooShort { .. } | LeaseError::TtlTooLong { .. }) => {}
                Err(e) => return Err(TestCaseError::fail(format!("unexpected {e:?}"))),
            }
        }
        prop_assert_eq!(panics(), before, "something panicked (see above)");
    }
}
