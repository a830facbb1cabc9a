//! The standard gRPC health service (`grpc.health.v1.Health`), kept in step with the
//! backend: `SERVING` while it answers, for the whole server and each lease service.

use tokio_util::sync::CancellationToken;

use super::probes::readiness;
use super::shared::Shared;
use super::{ftl, native};
use crate::proto;

/// Keeps the standard health service in step with the backend.
pub(super) async fn report_health(
    shared: Shared,
    reporter: tonic_health::server::HealthReporter,
    stopping: CancellationToken,
) {
    use proto::leases::v1::leases_server::LeasesServer;
    use proto::xyz::block::ftl::lease::v1::lease_service_server::LeaseServiceServer;
    loop {
        let ready = readiness(&shared.manager).await.is_none();
        let status = if ready {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        reporter.set_service_status("", status).await;
        if ready {
            reporter
                .set_serving::<LeaseServiceServer<ftl::FtlService>>()
                .await;
            reporter
                .set_serving::<LeasesServer<native::NativeService>>()
                .await;
        } else {
            reporter
                .set_not_serving::<LeaseServiceServer<ftl::FtlService>>()
                .await;
            reporter
                .set_not_serving::<LeasesServer<native::NativeService>>()
                .await;
        }
        tokio::select! {
            _ = stopping.cancelled() => {
                reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
                return;
            }
            _ = tokio::time::sleep(shared.options.health_interval) => {}
        }
    }
}
