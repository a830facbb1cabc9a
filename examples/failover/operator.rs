//! The operator's part: revoke the billing job, then look at the emails job; through the
//! manager or, with the lease service, a client.

use std::time::Duration;

use leases::{Key, LeaseError, LeaseManager};

use crate::story::{holder_name, jobs, Clock, Error};

/// What the operator uses: the manager, or (through the service) a client.
pub trait Operator {
    async fn info(&self, key: &Key) -> Result<Option<leases::LeaseInfo>, LeaseError>;
    async fn revoke(&self, key: &Key) -> Result<bool, LeaseError>;
}

impl Operator for LeaseManager {
    async fn info(&self, key: &Key) -> Result<Option<leases::LeaseInfo>, LeaseError> {
        self.lease_info(key).await
    }
    async fn revoke(&self, key: &Key) -> Result<bool, LeaseError> {
        LeaseManager::revoke(self, key).await
    }
}

#[cfg(feature = "server")]
impl Operator for leases::ClientLeaser {
    async fn info(&self, key: &Key) -> Result<Option<leases::LeaseInfo>, LeaseError> {
        self.lease_info(key).await
    }
    async fn revoke(&self, key: &Key) -> Result<bool, LeaseError> {
        leases::ClientLeaser::revoke(self, key).await
    }
}

/// The operator's part, the same in every mode: after two seconds revoke whoever holds
/// the billing job; after two more, report who holds the emails job.
pub async fn revoke_billing_then_look_at_emails(
    operator: &impl Operator,
    clock: &Clock,
) -> Result<leases::LeaseInfo, Error> {
    let (billing, emails) = jobs();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let info = operator
        .info(&billing)
        .await?
        .ok_or("billing is not held")?;
    clock.say(format!(
        "operator: revoking {billing} (held by {}, token {})",
        holder_name(&info),
        info.token
    ));
    operator.revoke(&billing).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(operator.info(&emails).await?.ok_or("emails is not held")?)
}
