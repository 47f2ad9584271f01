//! Compiles keygate's own KeyAdmin API. Envoy's types come from `envoy-types`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc, so a fresh machine needs nothing downloaded.
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // Undecodable requests are INVALID_ARGUMENT, not INTERNAL.
        .codec_path("crate::grpc::codec::KeyAdminCodec")
        .file_descriptor_set_path(out_dir.join("keygate_admin_descriptor.bin"))
        .compile_protos(&["proto/keygate/admin/v1/key_admin.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    // `sqlx::migrate!` embeds the migrations at compile time; without this a
    // new migration file would not rebuild the crate.
    println!("cargo:rerun-if-changed=migrations");
    Ok(())
}
