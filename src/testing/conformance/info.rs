//! What the backend tells: `lease_info` (token, metadata), `list`, and bad input refused
//! as typed errors.

use std::time::Duration;

use super::env::{leaser, Env};
use crate::{AcquireOptions, Key, LeaseError, Leaser, MAX_KEY_LEN, MAX_METADATA_LEN};

/// Metadata and the token are visible through `lease_info`.
pub async fn metadata_and_info(env: &dyn Env) {
    let m = env.manager().await;
    let key = env.key("metadata");
    assert_eq!(m.lease_info(&key).await.unwrap(), None);
    let meta = "host-1 'quoted' \"double\" \u{0} ünïcødé 🚀"
        .as_bytes()
        .to_vec();
    let opts = AcquireOptions::new(env.ttl()).metadata(meta.clone());
    let (lease, _) = leaser(&m)
        .acquire_lease_with(key.clone(), opts)
        .await
        .unwrap();
    let info = m.lease_info(&key).await.unwrap().unwrap();
    assert_eq!(info.key, key);
    assert_eq!(info.token, lease.token());
    assert_eq!(info.metadata, meta);
    assert_eq!(info.ttl, env.ttl());
    assert!(info.expires_in <= env.ttl() && !info.expires_in.is_zero());
    assert!(!info.revoked);
    // A backend that records the grant's time records a plausible one.
    if let Some(at) = info.acquired_at {
        let skew = match std::time::SystemTime::now().duration_since(at) {
            Ok(d) => d,
            Err(e) => e.duration(),
        };
        assert!(skew < Duration::from_secs(60), "acquired_at {at:?}");
    }
    lease.release().await.unwrap();
    assert_eq!(m.lease_info(&key).await.unwrap(), None);
    m.shutdown().await;
}

/// Bad input (TTL bounds, oversized keys and metadata) is a typed error, never a panic.
pub async fn bad_input(env: &dyn Env) {
    let m = env.manager().await;
    let l = leaser(&m);
    let key = env.key("bad-input");
    let short = env.ttl() - Duration::from_millis(1);
    assert!(matches!(
        l.acquire_lease(key.clone(), short).await,
        Err(LeaseError::TtlTooShort { ttl, min }) if ttl == short && min == env.ttl()
    ));
    assert!(matches!(
        l.acquire_lease(key.clone(), Duration::MAX).await,
        Err(LeaseError::TtlTooLong { .. })
    ));
    let big = AcquireOptions::new(env.ttl()).metadata(vec![0u8; MAX_METADATA_LEN + 1]);
    assert!(matches!(
        l.acquire_lease_with(key.clone(), big).await,
        Err(LeaseError::MetadataTooLarge { .. })
    ));
    let long = Key::system(["x".repeat(MAX_KEY_LEN)]);
    assert!(matches!(
        l.acquire_lease(long.clone(), env.ttl()).await,
        Err(LeaseError::InvalidKey(_))
    ));
    assert!(matches!(
        m.lease_info(&long).await,
        Err(LeaseError::InvalidKey(_))
    ));
    // Odd characters in keys are fine.
    let odd = Key::system([
        env.key("odd").to_string(),
        "'; DROP TABLE leases; --".into(),
        "\"\\%/\u{0}\u{202e}🚀".into(),
    ]);
    assert!(odd.check_len().is_ok());
    let (lease, _) = l.acquire_lease(odd.clone(), env.ttl()).await.unwrap();
    assert_eq!(
        m.lease_info(&odd).await.unwrap().unwrap().token,
        lease.token()
    );
    lease.release().await.unwrap();
    m.shutdown().await;
}

/// `list` (an optional capability: a backend without it answers `Unsupported`, and the
/// case ends there) shows exactly the live leases under a prefix, ordered by key string,
/// with their tokens, metadata and revocation, up to the limit; no character of the
/// prefix is special (`_` and `%` match only themselves).
pub async fn list_live_leases(env: &dyn Env) {
    let m = env.manager().await;
    let other = env.manager().await;
    let base = env.key("list");
    let key = |name: &str| {
        let mut segments = base.segments().to_vec();
        segments.push(name.to_owned());
        Key::from_segments(segments).expect("a key under the case's key")
    };
    let prefix = format!("{base}/");
    match m.list(&prefix, 100).await {
        Ok(none) => assert!(none.is_empty(), "nothing held yet: {none:?}"),
        Err(LeaseError::Backend(e)) if e.kind() == crate::BackendErrorKind::Unsupported => {
            m.shutdown().await;
            other.shutdown().await;
            return;
        }
        Err(e) => panic!("list: {e}"),
    }
    let opts = |meta: &str| AcquireOptions::new(env.ttl()).metadata(meta.as_bytes().to_vec());
    let mut held = Vec::new();
    // `a%b` is `a%25b` in string form: '%' sorts before '_', '_' before 'b'.
    for (name, manager) in [("b", &m), ("a_1", &other), ("ab1", &m), ("a%b", &other)] {
        let (lease, ctx) = leaser(manager)
            .acquire_lease_with(key(name), opts(&format!("holder of {name}")))
            .await
            .unwrap();
        held.push((name, lease, ctx));
    }
    // Released: no longer listed.
    let (gone, _) = leaser(&m)
        .acquire_lease(key("gone"), env.ttl())
        .await
        .unwrap();
    gone.release().await.unwrap();
    // Outside the prefix (a sibling whose name extends the case's last segment).
    let outside = Key::from_segments({
        let mut segments = base.segments().to_vec();
        if let Some(last) = segments.last_mut() {
            last.push_str("-outside");
        }
        segments
    })
    .unwrap();
    let (_outside, _) = leaser(&m).acquire_lease(outside, env.ttl()).await.unwrap();

    let names = |list: &[crate::LeaseInfo]| -> Vec<String> {
        list.iter()
            .map(|i| i.key.segments().last().cloned().unwrap_or_default())
            .collect()
    };
    let all = other.list(&prefix, 100).await.unwrap();
    assert_eq!(names(&all), ["a%b", "a_1", "ab1", "b"]);
    for info in &all {
        let (name, lease, _) = held
            .iter()
            .find(|(_, lease, _)| lease.key() == &info.key)
            .expect("a listed key is one of ours");
        assert_eq!(info.token, lease.token());
        assert_eq!(info.metadata, format!("holder of {name}").into_bytes());
        assert_eq!(info.ttl, env.ttl());
        assert!(!info.expires_in.is_zero() && info.expires_in <= env.ttl());
        assert!(!info.revoked);
    }
    assert_eq!(names(&m.list(&prefix, 2).await.unwrap()), ["a%b", "a_1"]);
    assert_eq!(
        names(&m.list(&format!("{base}/a_"), 100).await.unwrap()),
        ["a_1"]
    );
    assert_eq!(
        names(&m.list(&format!("{base}/a%"), 100).await.unwrap()),
        ["a%b"]
    );
    assert!(m.list(&format!("{base}/z"), 100).await.unwrap().is_empty());
    assert!(m.list(&prefix, 0).await.unwrap().is_empty());
    // Revoked (by a manager that does not hold it): listed, marked revoked, until the
    // holder gives it back.
    assert!(other.revoke(&key("b")).await.unwrap());
    let b = m.list(&format!("{base}/b"), 100).await.unwrap();
    if let [b] = b.as_slice() {
        assert!(b.revoked, "{b:?}");
    }
    for (_, lease, _) in held {
        let _ = lease.release().await;
    }
    assert!(m.list(&prefix, 100).await.unwrap().is_empty());
    m.shutdown().await;
    other.shutdown().await;
}
