//! Building a [`LeaseManager`]: settings, the backend, and where its supervisor actor
//! sits in a supervision tree.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorCell};

use super::config::Config;
use super::handle::LeaseManager;
use super::supervisor::{Supervisor, SupervisorArgs};
use crate::backend::{Backend, MemoryBackend};
use crate::error::LeaseError;
use crate::leaser::MAX_TTL;

/// Builds a [`LeaseManager`]; see [`LeaseManager::builder`].
#[must_use]
pub struct LeaseManagerBuilder {
    config: Config,
    backend: Option<Arc<dyn Backend>>,
    name: Option<String>,
    supervisor: Option<ActorCell>,
    #[cfg(feature = "postgres")]
    postgres: Option<crate::backend::PostgresOptions>,
    #[cfg(feature = "etcd")]
    etcd: Option<crate::backend::EtcdOptions>,
}

impl std::fmt::Debug for LeaseManagerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseManagerBuilder")
            .field("config", &self.config)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl LeaseManagerBuilder {
    /// The smallest TTL the manager accepts (default [`MIN_TTL`](crate::MIN_TTL), 5 s; from 1 ms to
    /// [`MAX_TTL`]). Tests lower it.
    pub fn min_ttl(mut self, min_ttl: Duration) -> Self {
        self.config.min_ttl = min_ttl;
        self
    }

    /// A fixed safety margin for every lease, instead of the default TTL/5. It must be
    /// shorter than half the minimum TTL. Choose it larger than the worst pause you
    /// expect (GC, scheduling, network) plus the clock-rate drift over one TTL.
    pub fn safety_margin(mut self, margin: Duration) -> Self {
        self.config.safety_margin = Some(margin);
        self
    }

    /// How long [`LeaseManager::shutdown`] waits for the backend to release held leases
    /// (default 5 s). Leases not released by then expire after their TTL.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.config.shutdown_timeout = timeout;
        self
    }

    /// The storage backend (default: a new [`MemoryBackend`]). Setting both this and
    /// `postgres` is an [`InvalidConfig`](LeaseError::InvalidConfig) error at `start`.
    pub fn backend(mut self, backend: Arc<dyn Backend>) -> Self {
        self.backend = Some(backend);
        self
    }

    /// Stores leases in PostgreSQL (feature `postgres`), shared with every manager that
    /// uses the same database and table. The connection is made lazily; see
    /// [`PostgresBackend`](crate::backend::PostgresBackend).
    #[cfg(feature = "postgres")]
    pub fn postgres(mut self, options: crate::backend::PostgresOptions) -> Self {
        self.postgres = Some(options);
        self
    }

    /// Stores leases in an etcd cluster (feature `etcd`), shared with every manager that
    /// uses the same cluster and key prefix. Connections are made lazily; see
    /// [`EtcdBackend`](crate::backend::EtcdBackend). Setting it with another backend
    /// is an [`InvalidConfig`](LeaseError::InvalidConfig) error at `start`.
    #[cfg(feature = "etcd")]
    pub fn etcd(mut self, options: crate::backend::EtcdOptions) -> Self {
        self.etcd = Some(options);
        self
    }

    /// Registers the supervisor actor under this name in ractor's process-wide registry.
    /// Names must be unique per process; leave it unset unless you look the actor up by
    /// name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Spawns the supervisor linked under `supervisor`, so that it appears in the
    /// caller's supervision tree (and the caller sees it stop). Part of the
    /// [ractor-facing API](crate::actors).
    pub fn supervised_by(mut self, supervisor: ActorCell) -> Self {
        self.supervisor = Some(supervisor);
        self
    }

    /// Starts the supervisor actor and returns the handle.
    pub async fn start(self) -> Result<LeaseManager, LeaseError> {
        let config = self.config;
        // Below a millisecond, renewals (every TTL/3) would come without pause.
        if config.min_ttl < Duration::from_millis(1) || config.min_ttl > MAX_TTL {
            return Err(LeaseError::InvalidConfig(format!(
                "min_ttl must be between 1ms and {MAX_TTL:?}, not {:?}",
                config.min_ttl
            )));
        }
        if let Some(margin) = config.safety_margin {
            if margin.is_zero() || margin >= config.min_ttl / 2 {
                return Err(LeaseError::InvalidConfig(format!(
                    "safety_margin {margin:?} must be positive and shorter than half of min_ttl {:?}",
                    config.min_ttl
                )));
            }
        }
        #[cfg(feature = "postgres")]
        let backend = match (self.postgres, self.backend) {
            (Some(_), Some(_)) => {
                return Err(LeaseError::InvalidConfig(
                    "both .postgres(..) and .backend(..) were set: choose one".into(),
                ))
            }
            (Some(options), None) => {
                Some(Arc::new(crate::backend::PostgresBackend::new(options)?) as Arc<dyn Backend>)
            }
            (None, backend) => backend,
        };
        #[cfg(not(feature = "postgres"))]
        let backend = self.backend;
        #[cfg(feature = "etcd")]
        let backend = match (self.etcd, backend) {
            (Some(_), Some(_)) => {
                return Err(LeaseError::InvalidConfig(
                    "the etcd backend and another backend were both set: choose one".into(),
                ))
            }
            (Some(options), None) => {
                Some(Arc::new(crate::backend::EtcdBackend::new(options)?) as Arc<dyn Backend>)
            }
            (None, backend) => backend,
        };
        let backend = backend.unwrap_or_else(|| Arc::new(MemoryBackend::new()));
        let args = SupervisorArgs {
            backend: backend.clone(),
            config: config.clone(),
        };
        let spawned = match self.supervisor {
            Some(parent) => Actor::spawn_linked(self.name, Supervisor, args, parent).await,
            None => Actor::spawn(self.name, Supervisor, args).await,
        };
        let (actor, _join) = spawned.map_err(|e| {
            LeaseError::InvalidConfig(format!("could not start the supervisor actor: {e}"))
        })?;
        Ok(LeaseManager::new(actor, backend, config))
    }
}

impl LeaseManager {
    /// Starts a manager on a new in-memory backend with default settings.
    pub async fn start() -> Result<LeaseManager, LeaseError> {
        LeaseManager::builder().start().await
    }

    /// A builder for a manager with other settings or another backend.
    pub fn builder() -> LeaseManagerBuilder {
        LeaseManagerBuilder {
            config: Config::default(),
            backend: None,
            name: None,
            supervisor: None,
            #[cfg(feature = "postgres")]
            postgres: None,
            #[cfg(feature = "etcd")]
            etcd: None,
        }
    }
}
