//! Compiles keygate's own KeyAdmin and KeyFeed APIs. Envoy's types come from `envoy-types`;
//! for server reflection on the Check listener, Envoy's `external_auth.proto`
//! (shipped in the `envoy-types` crate with its imports) is compiled into a
//! descriptor set here, so grpcurl can call Check by name.

use std::{
    error::Error,
    path::{Path, PathBuf},
    process::Command,
};

/// The Check service's proto inside `envoy-types`' `proto/data-plane-api`.
const ENVOY_AUTHZ_PROTO: &str = "envoy/service/auth/v3/external_auth.proto";
/// The folders of `envoy-types/proto` that `external_auth.proto` imports from.
const ENVOY_PROTO_ROOTS: [&str; 4] = ["data-plane-api", "googleapis", "protoc-gen-validate", "xds"];

fn main() -> Result<(), Box<dyn Error>> {
    // A vendored protoc, so a fresh machine needs nothing downloaded.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", &protoc);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // Undecodable requests are INVALID_ARGUMENT, not INTERNAL.
        .codec_path("crate::grpc::codec::KeyAdminCodec")
        .file_descriptor_set_path(out_dir.join("keygate_admin_descriptor.bin"))
        .compile_protos(
            &[
                "proto/keygate/admin/v1/key_admin.proto",
                "proto/keygate/feed/v1/key_feed.proto",
            ],
            &["proto"],
        )?;
    envoy_authz_descriptor_set(&protoc, &out_dir.join("envoy_authz_descriptor.bin"))?;
    println!("cargo:rerun-if-changed=proto");
    // A new envoy-types version brings new Envoy protos.
    println!("cargo:rerun-if-changed=Cargo.lock");
    // `sqlx::migrate!` embeds the migrations at compile time; without this a
    // new migration file would not rebuild the crate.
    println!("cargo:rerun-if-changed=migrations");
    Ok(())
}

/// Writes the descriptor set of Envoy's `external_auth.proto` and every file
/// it imports, from the sources of the `envoy-types` version in Cargo.lock.
fn envoy_authz_descriptor_set(protoc: &Path, out: &Path) -> Result<(), Box<dyn Error>> {
    let envoy_protos = envoy_types_dir()?.join("proto");
    let mut command = Command::new(protoc);
    for root in ENVOY_PROTO_ROOTS {
        command.arg("-I").arg(envoy_protos.join(root));
    }
    let status = command
        .arg("-I")
        .arg(protoc_bin_vendored::include_path()?)
        .arg("--include_imports")
        .arg("--descriptor_set_out")
        .arg(out)
        .arg(ENVOY_AUTHZ_PROTO)
        .status()?;
    if !status.success() {
        return Err(format!("protoc failed on {ENVOY_AUTHZ_PROTO}: {status}").into());
    }
    Ok(())
}

/// Where cargo unpacked `envoy-types`: build scripts are not told where
/// their package's dependencies live, so ask `cargo metadata`.
fn envoy_types_dir() -> Result<PathBuf, Box<dyn Error>> {
    let cargo = std::env::var("CARGO")?;
    let target = std::env::var("TARGET")?;
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--filter-platform"])
        .arg(&target)
        .current_dir(std::env::var("CARGO_MANIFEST_DIR")?)
        .output()?;
    if !output.status.success() {
        return Err(format!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let manifest = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|package| package["name"] == "envoy-types")
        .and_then(|package| package["manifest_path"].as_str())
        .ok_or("envoy-types is not among the resolved packages")?;
    let dir = Path::new(manifest)
        .parent()
        .ok_or("envoy-types' manifest has no folder")?;
    Ok(dir.to_path_buf())
}
