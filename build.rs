//! Generates the `sidelog.v1` gRPC services (servers and clients) and the descriptor set that
//! server reflection serves. Their messages are `sidelog-proto`'s (`extern_path`): the journal
//! and the core use those without the gRPC stack. protoc comes from `protoc-bin-vendored`
//! unless `PROTOC` is set, so a fresh machine needs no system package.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    match std::env::var_os("PROTOC") {
        Some(protoc) => config.protoc_executable(protoc),
        None => config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?),
    };
    config.extern_path(".sidelog.v1", "::sidelog_proto::v1");
    config.extern_path(".sidelog.journal.v1", "::sidelog_proto::journal");
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = "crates/proto/proto";
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("sidelog_descriptor.bin"))
        .compile_with_config(
            config,
            &[
                format!("{protos}/sidelog/v1/sidelog.proto"),
                format!("{protos}/sidelog/v1/admin.proto"),
            ],
            &[protos.to_string()],
        )?;
    println!("cargo:rerun-if-changed={protos}");
    Ok(())
}
