//! How fast and how far `leases` goes, beside baselines run in the same process and the
//! same run. Prints a table; BENCHMARKS.md explains it.
//!
//!     cargo bench --all-features --bench leases                  # full run, a few minutes
//!     cargo bench --all-features --bench leases -- --smoke       # tiny sizes, a sanity check
//!     cargo bench --all-features --bench leases -- --only memory # one section
//!     cargo bench --all-features --bench leases -- --only service # the lease service
//!     cargo bench --all-features --bench leases -- --only held-many # 100k leases, one connection
//!
//! Baselines:
//! - (a) a bare `Mutex<HashMap>` lease table, no renewal: the floor;
//! - (b) the same table plus one `tokio::spawn`ed renewal task per lease: what users
//!   would otherwise write by hand;
//! - (c) PostgreSQL: the same SQL statements issued directly with the driver, no actors;
//! - (e) etcd: the same transactions sent with the bare gRPC client, no actors (the
//!   backend's own generated client, on one pre-granted etcd lease);
//! - (d) a bare ractor supervisor that spawns one linked child actor with a renewal
//!   timer and a watch channel per lease, and does nothing else: the floor of our own
//!   design, what the actor shape alone costs;
//! - (f) a bare tonic server of FTL's `LeaseService` that answers each request with an
//!   empty message and holds nothing: the floor of the lease service.
//!
//! One module a section: `throughput` (memory backend: pairs/s, latency, conflicts),
//! `scale` (leases held at once, each size in a child process), `postgres` (the
//! PostgreSQL backend beside (c)), `service` (the lease service over gRPC beside (f),
//! feature `server`), `held_many` (leases held by one `ClientLeaser` over one connection,
//! `HoldMany` beside `Hold` streams), `etcd` (the etcd backend on a 3-member cluster beside (e));
//! `contenders` holds ours and the in-memory baselines,
//! `args` the command line, `report` the shared printing helpers.

#[cfg(leases_alloc_profile)]
mod alloc_profile;
mod args;
mod contenders;
#[cfg(feature = "etcd")]
mod etcd;
#[cfg(feature = "server")]
mod held_many;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "postgres")]
mod postgres_renewals;
mod report;
mod scale;
#[cfg(feature = "server")]
mod service;
#[cfg(feature = "server")]
mod service_process;
mod throughput;

use args::{Args, Section};

fn main() {
    let args = Args::from_env();
    // The library's log events on stderr when `RUST_LOG` asks for them (a group call
    // given up, a renewal failed: what explains a lost lease in a row).
    #[cfg(feature = "server")]
    if let Ok(filter) = std::env::var("RUST_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    #[cfg(feature = "server")]
    if args.service_floor {
        service::floor_child();
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if let Some((kind, n, window)) = args.scale_child {
        rt.block_on(scale::scale_child(kind, n, window));
        return;
    }
    rt.block_on(run(&args));
}

async fn run(args: &Args) {
    let sizes = args.sizes();
    report::header();
    if args.wants(Section::Memory) {
        throughput::memory_section(&sizes).await;
    }
    if args.wants(Section::Profile) {
        throughput::profile_section(
            &sizes,
            args.kind.unwrap_or(contenders::Kind::Ours),
            args.clients.unwrap_or(64),
        )
        .await;
    }
    if args.wants(Section::Scale) {
        scale::scale_section(&sizes);
    }
    #[cfg(feature = "postgres")]
    if args.wants(Section::Postgres) {
        postgres::postgres_section(&sizes).await;
    }
    #[cfg(feature = "postgres")]
    if args.wants(Section::PgProfile) {
        postgres::profile_section(&sizes, args.raw, args.clients.unwrap_or(8)).await;
    }
    #[cfg(feature = "server")]
    if args.wants(Section::Service) {
        service::service_section(&sizes).await;
    }
    #[cfg(feature = "server")]
    if args.wants(Section::HeldMany) {
        let (mut n, mut window, mut base_window) = sizes.held_many;
        // `LEASES_HELD_MANY=N,WINDOW_S,BASE_WINDOW_S` runs another size.
        if let Ok(v) = std::env::var("LEASES_HELD_MANY") {
            let v: Vec<u64> = v.split(',').filter_map(|x| x.parse().ok()).collect();
            if let [a, b, c] = v[..] {
                n = a as usize;
                window = std::time::Duration::from_secs(b);
                base_window = std::time::Duration::from_secs(c);
            }
        }
        held_many::held_many_section(n, window, base_window).await;
    }
    #[cfg(feature = "etcd")]
    if args.wants(Section::Etcd) {
        etcd::etcd_section(&sizes).await;
    }
}
