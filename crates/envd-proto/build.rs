//! Generates the envd protocol types from `proto/envd/*.proto` at build time.
//!
//! Uses the system `protoc` (via prost-build). The connectrpc-axum server
//! builders are generated only when the `server` feature is enabled, so
//! client-only users do not compile axum.

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let manifest_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").map_err(std::io::Error::other)?);
    let proto_dir = manifest_dir.join("../../proto/envd");
    let protos = [
        proto_dir.join("process.proto"),
        proto_dir.join("filesystem.proto"),
    ];
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", proto.display());
    }
    println!("cargo:rerun-if-env-changed=PROTOC");
    println!("cargo:rerun-if-env-changed=CARGO_FEATURE_SERVER");

    let includes = [proto_dir.clone()];
    // Like connect-go's protojson codec: unknown fields and enum values are
    // ignored, so newer SDKs keep working against this envd.
    let builder = connectrpc_axum_build::builder()
        .compile_protos(&protos, &includes)
        // Our own Timestamp, for canonical (`Z`) JSON; see src/wkt.rs.
        .extern_module("google.protobuf", "crate::wkt")
        .with_pbjson_config(|pbjson| {
            pbjson
                .ignore_unknown_fields()
                .ignore_unknown_enum_variants();
        });
    if std::env::var_os("CARGO_FEATURE_SERVER").is_some() {
        builder.compile()
    } else {
        builder.no_connect_server().compile()
    }
}
