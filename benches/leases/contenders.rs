//! The contenders of the in-memory sections, behind [`Subject`], the one interface the
//! harnesses drive: our manager and the baselines (a), (b) and (d) that `main.rs`
//! describes. Baseline (c), PostgreSQL without actors, lives in `postgres.rs`.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use leases::backend::MemoryBackend;
use leases::{Key, Lease, LeaseContext, LeaseError, LeaseManager};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub const TTL: Duration = Duration::from_secs(30);

/// The in-memory contenders, by the name a scale child is given on its command line.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Ours,
    A,
    B,
    D,
}

impl Kind {
    /// The name on the command line of a scale child.
    pub fn arg(self) -> &'static str {
        match self {
            Kind::Ours => "ours",
            Kind::A => "a",
            Kind::B => "b",
            Kind::D => "d",
        }
    }

    /// The name in the report's tables.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Ours => "leases (memory)",
            Kind::A => "(a) Mutex<HashMap>, no renewal",
            Kind::B => "(b) table + spawned renewal task",
            Kind::D => "(d) bare ractor supervisor + child",
        }
    }
}

impl FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Kind, String> {
        [Kind::Ours, Kind::A, Kind::B, Kind::D]
            .into_iter()
            .find(|k| k.arg() == s)
            .ok_or_else(|| format!("unknown scale kind `{s}` (ours | a | b | d)"))
    }
}

/// Our manager on a fresh memory backend.
pub async fn memory_manager() -> LeaseManager {
    LeaseManager::builder()
        .backend(Arc::new(MemoryBackend::new()))
        .start()
        .await
        .unwrap()
}

/// What the throughput harness needs from a lease implementation.
#[async_trait]
pub trait Subject: Send + Sync + 'static {
    type Held: Send + 'static;
    /// `None` on conflict.
    async fn acquire(&self, key: &Key) -> Option<Self::Held>;
    async fn release(&self, held: Self::Held);
    /// `true` while the lease is still held (for the scale runs).
    fn alive(held: &Self::Held) -> bool;
}

/// Our manager.
pub struct Ours(pub LeaseManager);

#[async_trait]
impl Subject for Ours {
    type Held = (Lease, LeaseContext);
    async fn acquire(&self, key: &Key) -> Option<Self::Held> {
        match self.0.acquire_lease(key.clone(), TTL).await {
            Ok(held) => Some(held),
            Err(LeaseError::Conflict) => None,
            Err(e) => panic!("acquire failed: {e}"),
        }
    }
    async fn release(&self, (lease, _): Self::Held) {
        lease.release().await.unwrap();
    }
    fn alive(held: &Self::Held) -> bool {
        !held.1.is_cancelled()
    }
}

/// (a) and (b): a mutex-guarded table; (b) adds a renewal task per lease.
pub struct Table {
    map: Arc<Mutex<HashMap<Key, (u64, tokio::time::Instant)>>>,
    next: AtomicU64,
    renew: bool,
}

impl Table {
    pub fn new(renew: bool) -> Table {
        Table {
            map: Arc::default(),
            next: AtomicU64::new(1),
            renew,
        }
    }
}

pub struct TableHeld {
    key: Key,
    token: u64,
    renewer: Option<JoinHandle<()>>,
    ctx: watch::Receiver<bool>,
}

#[async_trait]
impl Subject for Table {
    type Held = TableHeld;
    async fn acquire(&self, key: &Key) -> Option<TableHeld> {
        let now = tokio::time::Instant::now();
        let token = {
            let mut map = self.map.lock().unwrap();
            if map.get(key).is_some_and(|(_, exp)| *exp > now) {
                return None;
            }
            let token = self.next.fetch_add(1, Ordering::Relaxed);
            map.insert(key.clone(), (token, now + TTL));
            token
        };
        let (tx, ctx) = watch::channel(true);
        let renewer = self.renew.then(|| {
            let map = self.map.clone();
            let key = key.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(TTL / 3).await;
                    let now = tokio::time::Instant::now();
                    let mut map = map.lock().unwrap();
                    match map.get_mut(&key) {
                        Some((t, exp)) if *t == token && *exp > now => *exp = now + TTL,
                        _ => {
                            let _ = tx.send(false);
                            return;
                        }
                    }
                }
            })
        });
        Some(TableHeld {
            key: key.clone(),
            token,
            renewer,
            ctx,
        })
    }
    async fn release(&self, held: TableHeld) {
        if let Some(r) = held.renewer {
            r.abort();
        }
        let mut map = self.map.lock().unwrap();
        if map.get(&held.key).is_some_and(|(t, _)| *t == held.token) {
            map.remove(&held.key);
        }
    }
    fn alive(held: &TableHeld) -> bool {
        *held.ctx.borrow()
    }
}

/// (d): a bare ractor supervisor with one linked child per lease.
pub struct BareSupervisor;
pub struct BareChild;
pub struct Tick;

pub enum BareMsg {
    Acquire(RpcReplyPort<(ActorRef<Tick>, watch::Receiver<bool>)>),
}

pub struct AbortOnDrop(JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Actor for BareChild {
    type Msg = Tick;
    type State = (watch::Sender<bool>, AbortOnDrop);
    type Arguments = watch::Sender<bool>;
    async fn pre_start(
        &self,
        myself: ActorRef<Tick>,
        tx: watch::Sender<bool>,
    ) -> Result<Self::State, ActorProcessingErr> {
        let timer = myself.send_interval(TTL / 3, || Tick);
        Ok((tx, AbortOnDrop(timer)))
    }
    async fn handle(
        &self,
        _: ActorRef<Tick>,
        _: Tick,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.0.send_replace(true);
        Ok(())
    }
}

impl Actor for BareSupervisor {
    type Msg = BareMsg;
    type State = ();
    type Arguments = ();
    async fn pre_start(&self, _: ActorRef<BareMsg>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
    async fn handle(
        &self,
        myself: ActorRef<BareMsg>,
        BareMsg::Acquire(reply): BareMsg,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        let (tx, rx) = watch::channel(true);
        let (child, _) = Actor::spawn_linked(None, BareChild, tx, myself.get_cell()).await?;
        let _ = reply.send((child, rx));
        Ok(())
    }
    async fn handle_supervisor_evt(
        &self,
        _: ActorRef<BareMsg>,
        _: SupervisionEvent,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}

pub struct Bare(pub ActorRef<BareMsg>);

#[async_trait]
impl Subject for Bare {
    type Held = (ActorRef<Tick>, watch::Receiver<bool>);
    async fn acquire(&self, _key: &Key) -> Option<Self::Held> {
        Some(ractor::call!(self.0, BareMsg::Acquire).unwrap())
    }
    async fn release(&self, (child, _): Self::Held) {
        child.kill();
    }
    fn alive(held: &Self::Held) -> bool {
        *held.1.borrow()
    }
}

impl Bare {
    /// A fresh bare supervisor.
    pub async fn start() -> Bare {
        let (sup, _) = Actor::spawn(None, BareSupervisor, ()).await.unwrap();
        Bare(sup)
    }
}
