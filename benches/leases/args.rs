//! The command line, parsed once into [`Args`], and the run sizes derived from it.
//!
//! Flags we do not know are ignored: `cargo bench` hands the binary `--bench`, and
//! other harnesses' flags may follow.

use std::str::FromStr;
use std::time::Duration;

use crate::contenders::Kind;

const USAGE: &str =
    "usage: leases [--smoke] [--secs SECONDS] [--pg-held LEASES] [--pg-ttl SECONDS] [--pg-window SECONDS] [--only memory|scale|postgres|service|held-many|etcd|profile|pg-profile]
       leases --only profile [--clients N] [--kind ours|a|b|d] [--secs SECONDS]
       leases --only pg-profile [--clients N] [--raw] [--secs SECONDS]
       leases --scale-child ours|a|b|d LEASES WINDOW_SECONDS
       leases --service-floor";

/// A section of the report, for `--only`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Section {
    Memory,
    /// One contender (ours unless `--kind`), 64 clients unless `--clients`: for
    /// `perf record`. Runs only when asked for.
    Profile,
    Scale,
    Postgres,
    /// The manager on PostgreSQL (or with `--raw`, (c): its SQL through the driver
    /// alone) on a throwaway server, 8 clients unless `--clients`: for `perf record`.
    /// Runs only when asked for.
    PgProfile,
    /// The lease service over gRPC beside a bare tonic service (feature `server`).
    Service,
    /// The etcd backend on a 3-member cluster beside the bare client (feature `etcd`).
    Etcd,
    /// Leases held by one `ClientLeaser` on one connection: `HoldMany` beside `Hold`
    /// streams (feature `server`).
    HeldMany,
}

impl FromStr for Section {
    type Err = String;
    fn from_str(s: &str) -> Result<Section, String> {
        match s {
            "memory" => Ok(Section::Memory),
            "profile" => Ok(Section::Profile),
            "scale" => Ok(Section::Scale),
            "postgres" => Ok(Section::Postgres),
            "pg-profile" => Ok(Section::PgProfile),
            "service" => Ok(Section::Service),
            "etcd" => Ok(Section::Etcd),
            "held-many" => Ok(Section::HeldMany),
            other => Err(format!(
                "unknown section `{other}` (memory | scale | postgres | service | held-many | etcd | profile | pg-profile)"
            )),
        }
    }
}

#[derive(Default, Debug)]
pub struct Args {
    /// `--only SECTION`: run that section alone.
    pub only: Option<Section>,
    /// `--smoke`: tiny sizes, a sanity check.
    pub smoke: bool,
    /// `--secs S`: the full run with S seconds per cell and the 100k scale size only.
    pub secs: Option<f64>,
    /// `--pg-held N`: leases held for the PostgreSQL statement count (default 100k).
    pub pg_held: Option<usize>,
    /// `--pg-ttl S`: the TTL of the leases held for the PostgreSQL statement count
    /// (default the benchmark's TTL, 30 s).
    pub pg_ttl: Option<Duration>,
    /// `--pg-window S`: how long the PostgreSQL statements and lost leases are counted
    /// (default 30 s).
    pub pg_window: Option<Duration>,
    /// `--clients N`: the profile section's clients (default 64).
    pub clients: Option<usize>,
    /// `--kind KIND`: the profile section's contender (default ours).
    pub kind: Option<Kind>,
    /// `--raw`: the PostgreSQL profile section runs (c), not the manager.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub raw: bool,
    /// `--scale-child KIND N WINDOW`: be one scale cell (see `scale.rs`), print its line.
    pub scale_child: Option<(Kind, usize, Duration)>,
    /// `--service-floor`: be the service section's floor server (see `service.rs`).
    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    pub service_floor: bool,
}

/// How much each section does.
pub struct Sizes {
    /// Runs of each throughput cell; the median is reported.
    pub rounds: usize,
    /// Seconds per throughput cell.
    pub secs: f64,
    /// Leases held at once, one scale table block each.
    pub scale: Vec<usize>,
    /// How long the scale children idle while their leases renew.
    pub window: Duration,
    /// Leases held to count PostgreSQL statements.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub pg_held: usize,
    /// Their TTL.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub pg_ttl: Duration,
    /// Leases held to count PostgreSQL statements with one statement per renewal.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub pg_held_unbatched: usize,
    /// How long those statements are counted.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub pg_window: Duration,
    /// Leases held at once through the lease service.
    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    pub service_held: usize,
    /// How long they heartbeat while the CPU is measured.
    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    pub service_window: Duration,
    /// Leases one `ClientLeaser` holds on one `HoldMany` stream, and for how long (the
    /// `Hold` baseline: at most 1000 leases, for `held_many_base_window`).
    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    pub held_many: (usize, Duration, Duration),
}

impl Args {
    /// The process's arguments; on a bad one, says what is wrong and exits with status 2.
    pub fn from_env() -> Args {
        Args::parse(std::env::args().skip(1)).unwrap_or_else(|e| {
            eprintln!("error: {e}\n{USAGE}");
            std::process::exit(2)
        })
    }

    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
        let mut parsed = Args::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--smoke" => parsed.smoke = true,
                "--secs" => parsed.secs = Some(seconds(&mut args, "--secs")?.as_secs_f64()),
                "--only" => parsed.only = Some(value(&mut args, "--only", "a section")?),
                "--pg-held" => {
                    parsed.pg_held = Some(value(&mut args, "--pg-held", "a number of leases")?)
                }
                "--pg-ttl" => parsed.pg_ttl = Some(seconds(&mut args, "--pg-ttl")?),
                "--pg-window" => parsed.pg_window = Some(seconds(&mut args, "--pg-window")?),
                "--scale-child" => {
                    let kind = value(&mut args, "--scale-child", "a kind")?;
                    let n = value(&mut args, "--scale-child", "a number of leases")?;
                    let window = seconds(&mut args, "--scale-child")?;
                    parsed.scale_child = Some((kind, n, window));
                }
                "--clients" => {
                    parsed.clients = Some(value(&mut args, "--clients", "a number of clients")?)
                }
                "--kind" => parsed.kind = Some(value(&mut args, "--kind", "a kind")?),
                "--raw" => parsed.raw = true,
                "--service-floor" => parsed.service_floor = true,
                _ => {}
            }
        }
        Ok(parsed)
    }

    /// Whether to run `section`: every section but the profiles when there is no
    /// `--only`.
    pub fn wants(&self, section: Section) -> bool {
        match self.only {
            None => !matches!(section, Section::Profile | Section::PgProfile),
            Some(only) => only == section,
        }
    }

    pub fn sizes(&self) -> Sizes {
        let mut sizes = self.base_sizes();
        if let Some(n) = self.pg_held {
            sizes.pg_held = n;
        }
        if let Some(ttl) = self.pg_ttl {
            sizes.pg_ttl = ttl;
        }
        if let Some(window) = self.pg_window {
            sizes.pg_window = window;
        }
        sizes
    }

    fn base_sizes(&self) -> Sizes {
        let full = Sizes {
            rounds: 3,
            secs: 2.0,
            scale: vec![100_000, 1_000_000],
            window: Duration::from_secs(12),
            pg_held: 100_000,
            pg_ttl: crate::contenders::TTL,
            pg_held_unbatched: 10_000,
            pg_window: Duration::from_secs(30),
            service_held: 10_000,
            service_window: Duration::from_secs(12),
            held_many: (100_000, Duration::from_secs(120), Duration::from_secs(30)),
        };
        match self.secs {
            Some(secs) => Sizes {
                secs,
                scale: vec![100_000],
                ..full
            },
            None if self.smoke => Sizes {
                rounds: 1,
                secs: 0.2,
                scale: vec![1000],
                window: Duration::from_millis(200),
                pg_held: 100,
                pg_ttl: crate::contenders::TTL,
                pg_held_unbatched: 50,
                pg_window: Duration::from_millis(500),
                service_held: 100,
                service_window: Duration::from_millis(300),
                held_many: (100, Duration::from_millis(300), Duration::from_millis(300)),
            },
            None => full,
        }
    }
}

/// The next argument as a `T`, which `flag` wants (`what` names it in the error).
fn value<T: FromStr>(
    args: &mut impl Iterator<Item = String>,
    flag: &str,
    what: &str,
) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    let v = args
        .next()
        .ok_or_else(|| format!("{flag} wants {what}, got nothing"))?;
    v.parse()
        .map_err(|e| format!("{flag} wants {what}, got `{v}`: {e}"))
}

/// The next argument as a duration in (fractional) seconds.
fn seconds(args: &mut impl Iterator<Item = String>, flag: &str) -> Result<Duration, String> {
    let s: f64 = value(args, flag, "a number of seconds")?;
    Duration::try_from_secs_f64(s)
        .map_err(|e| format!("{flag} wants a number of seconds, got `{s}`: {e}"))
}
