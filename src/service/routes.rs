//! Every route of one port as one router: FTL's and the native lease services behind
//! the bearer-token check, the health service, reflection, the HTTP probes and the
//! HTTP/JSON API (`http/`), the console (`console/`, when on), all
//! wrapped by the layer that tells a reset request stream from a clean end.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

use super::auth::Auth;
use super::console::with_console;
use super::health::report_health;
use super::http::Api;
use super::probes::with_probes;
use super::shared::Shared;
use super::{ftl, native, resets};
use crate::proto;

/// Every service and the HTTP probes, as one router.
pub(super) fn routes(shared: &Shared, api: &Api, stopping: CancellationToken) -> Routes {
    let limit = shared.options.max_message_bytes;
    let auth = Auth(shared.options.auth_token.clone().map(Arc::from));
    let ftl = proto::xyz::block::ftl::lease::v1::lease_service_server::LeaseServiceServer::new(
        ftl::FtlService::new(shared.clone()),
    )
    .max_decoding_message_size(limit);
    let native = proto::leases::v1::leases_server::LeasesServer::new(native::NativeService::new(
        shared.clone(),
    ))
    .max_decoding_message_size(limit);
    let (health_reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(report_health(shared.clone(), health_reporter, stopping));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::DESCRIPTORS)
        .build_v1()
        .expect("the descriptors built from proto/ are valid");
    let grpc = Routes::new(tonic::service::interceptor::InterceptedService::new(
        ftl,
        auth.clone(),
    ))
    .add_service(tonic::service::interceptor::InterceptedService::new(
        native, auth,
    ))
    .add_service(health)
    .add_service(reflection);
    let router = with_probes(grpc.into_axum_router(), shared.manager.clone()).merge(api.router());
    let router = with_console(router, shared.options.console);
    // Last, so that it wraps every route: a reset request stream reads as broken.
    Routes::from(router.layer(axum::middleware::map_request(resets::mark_resets)))
}
