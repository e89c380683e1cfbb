//! Generates the services' Rust code from `proto/` with protox, a protobuf compiler written in
//! Rust: a fresh machine builds the crate with nothing installed beside the toolchain.

use std::error::Error;

fn main() -> Result<(), Box<dyn Error>> {
    let protos = [
        "proto/strata/v1/failure.proto",
        "proto/strata/v1/cluster.proto",
        "proto/strata/v1/log.proto",
        "proto/strata/v1/sequencer.proto",
        "proto/strata/v1/resolver.proto",
        "proto/strata/v1/storage.proto",
        "proto/strata/v1/proxy.proto",
        "proto/strata/v1/worker.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        // Payloads stay `Bytes` from the socket to the log, without a copy into a `Vec`.
        .bytes(".")
        .compile_fds(descriptors)?;
    // The part of etcd's API the coordinated state uses: a client only.
    let etcd = "proto/etcd/kv.proto";
    println!("cargo:rerun-if-changed={etcd}");
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(protox::compile([etcd], ["proto"])?)?;
    Ok(())
}
