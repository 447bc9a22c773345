//! Generates the `sidelog.v1` gRPC code, the journal's record types, and the descriptor set that
//! server reflection serves. protoc comes from `protoc-bin-vendored` unless `PROTOC` is set, so a
//! fresh machine needs no system package.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    match std::env::var_os("PROTOC") {
        Some(protoc) => config.protoc_executable(protoc),
        None => config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?),
    };
    // Payloads as `bytes::Bytes`: handed from request to journal to sink without copying.
    config.bytes(["."]);
    // Maps as BTreeMap: headers encode in one order, so a simulated run is reproducible.
    config.btree_map(["."]);
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("sidelog_descriptor.bin"))
        .compile_with_config(
            config,
            &[
                "proto/sidelog/v1/sidelog.proto",
                "proto/sidelog/v1/journal.proto",
                "proto/sidelog/v1/admin.proto",
            ],
            &["proto"],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
