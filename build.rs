//! Generates the gRPC code of the lease service from `proto/` when the `client` feature
//! is on, and the etcd client code (the subset of etcd's API in `proto/etcd/`) when the
//! `etcd` feature is on, with a pure-Rust protobuf compiler (`protox`): no `protoc` is
//! needed.

fn main() {
    #[cfg(feature = "client")]
    grpc::generate();
    #[cfg(feature = "etcd")]
    etcd::generate();
}

#[cfg(feature = "etcd")]
mod etcd {
    const PROTO: &str = "proto/etcd/kv_lease_watch.proto";

    pub fn generate() {
        println!("cargo:rerun-if-changed={PROTO}");
        let fds = match protox::compile([PROTO], ["proto"]) {
            Ok(fds) => fds,
            Err(e) => panic!("the etcd protocol subset does not compile: {e}"),
        };
        tonic_prost_build::configure()
            .build_client(true)
            .build_server(false)
            .compile_fds(fds)
            .expect("generating the etcd client code");
    }
}

#[cfg(feature = "client")]
mod grpc {
    use std::path::PathBuf;

    const PROTOS: [&str; 3] = [
        "proto/xyz/block/ftl/v1/ftl.proto",
        "proto/xyz/block/ftl/lease/v1/lease.proto",
        "proto/leases/v1/leases.proto",
    ];

    pub fn generate() {
        for p in PROTOS {
            println!("cargo:rerun-if-changed={p}");
        }
        let fds = match protox::compile(PROTOS, ["proto"]) {
            Ok(fds) => fds,
            Err(e) => panic!("the protocol files in proto/ do not compile: {e}"),
        };
        let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
        // The descriptors, for the server's reflection service.
        let bytes = prost::Message::encode_to_vec(&fds);
        std::fs::write(out.join("descriptors.bin"), bytes).expect("OUT_DIR is writable");
        tonic_prost_build::configure()
            .build_client(true)
            .build_server(true)
            .compile_fds(fds)
            .expect("generating the gRPC code");
    }
}
