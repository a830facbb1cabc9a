//! The story in one process, on the in-memory backend, optionally through a lease
//! service.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use leases::backend::{Backend, FaultyBackend, MemoryBackend, RenewFault};
use leases::{LeaseManager, Leaser};

use crate::ledger::{print_history, Ledger};
use crate::operator::revoke_billing_then_look_at_emails;
use crate::story::{holder_name, jobs, Clock, Error, TTL};
use crate::worker::{worker, STOPPING};

/// The whole story in one process, on the in-memory backend; with `service`, the
/// workers and the operator reach the leases through a lease service (`leases serve`
/// in-process, on port 0) with `ClientLeaser`s, as programs in other processes or
/// languages would.
pub async fn in_process(service: bool) -> Result<(), Error> {
    let clock = Clock {
        start_ms: Clock::now_ms(),
    };
    let memory: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    // The fault injector lets the story stall one job's renewals.
    let faults = Arc::new(FaultyBackend::new(memory));
    let manager = LeaseManager::builder()
        .min_ttl(TTL)
        .backend(faults.clone())
        .start()
        .await?;
    let ledger = Arc::new(Ledger::Memory(Mutex::default()));
    let (billing, emails) = jobs();
    clock.say(format!(
        "manager started: in-memory backend, TTL {TTL:?}, renewal every {:?}, safety margin {:?}",
        TTL / 3,
        manager.safety_margin(TTL)
    ));
    #[cfg(feature = "server")]
    let served = if service {
        let options = leases::service::ServeOptions {
            bind: "127.0.0.1:0".parse()?,
            ..Default::default()
        };
        let server = leases::service::LeaseServer::start(manager.clone(), options).await?;
        let url = format!("http://{}", server.local_addr());
        clock.say(format!(
            "lease service listening on {url}; workers connect to it"
        ));
        Some((server, client(&url).await?, url))
    } else {
        None
    };
    #[cfg(not(feature = "server"))]
    if service {
        return Err("this build has no lease service: run with --features server".into());
    }
    let mut workers = Vec::new();
    for (i, job) in [&billing, &billing, &emails, &emails]
        .into_iter()
        .enumerate()
    {
        let name = format!("worker-{}", i + 1);
        let leaser: Arc<dyn Leaser> = match () {
            #[cfg(feature = "server")]
            () if served.is_some() => {
                let url = served.as_ref().map(|s| s.2.clone()).unwrap_or_default();
                Arc::new(client(&url).await?)
            }
            () => Arc::new(manager.clone()),
        };
        workers.push(tokio::spawn(worker(
            name,
            job.clone(),
            leaser,
            ledger.clone(),
            clock,
        )));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    #[cfg(feature = "server")]
    let info = match &served {
        Some((_, operator, _)) => revoke_billing_then_look_at_emails(operator, &clock).await?,
        None => revoke_billing_then_look_at_emails(&manager, &clock).await?,
    };
    #[cfg(not(feature = "server"))]
    let info = revoke_billing_then_look_at_emails(&manager, &clock).await?;
    clock.say(format!(
        "fault: renewals of {emails} stall (held by {}, token {})",
        holder_name(&info),
        info.token
    ));
    faults.fail_renewals(&emails, RenewFault::Stall);
    tokio::time::sleep(TTL / 2).await;
    // The stalled renewal is still hanging; later holders' renewals work again.
    faults.heal_renewals(&emails);

    tokio::time::sleep(Duration::from_secs(3)).await;
    clock.say("shutting down");
    STOPPING.store(true, std::sync::atomic::Ordering::SeqCst);
    #[cfg(feature = "server")]
    if let Some((server, _, _)) = served {
        server.shutdown().await?;
    }
    manager.shutdown().await;
    for w in workers {
        w.await??;
    }
    print_history(&ledger).await
}

/// A client of the lease service at `url`, which accepts the story's short TTL.
#[cfg(feature = "server")]
async fn client(url: &str) -> Result<leases::ClientLeaser, Error> {
    let options = leases::ClientOptions::new(url).min_ttl(TTL);
    Ok(leases::ClientLeaser::connect_with(options).await?)
}
