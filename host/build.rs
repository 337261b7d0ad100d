//! Generates the gRPC service of the control plane between `weir coordinator` and its
//! workers (`src/cluster/proto.rs` holds its messages). tonic's manual builder needs no
//! `.proto` file and no protoc.

fn main() {
    let attach = tonic_build::manual::Method::builder()
        .name("attach")
        .route_name("Attach")
        .input_type("crate::cluster::proto::WorkerMessage")
        .output_type("crate::cluster::proto::CoordinatorCommand")
        .codec_path("tonic_prost::ProstCodec")
        .client_streaming()
        .server_streaming()
        .build();
    let service = tonic_build::manual::Service::builder()
        .name("Coordinator")
        .package("weir.cluster")
        .comment("The coordinator of a job: workers attach to it and run what it assigns.")
        .method(attach)
        .build();
    tonic_build::manual::Builder::new()
        .build_transport(false)
        .compile(&[service]);
    println!("cargo::rerun-if-changed=build.rs");
}
