//! Compiles containerd's .proto files with the pure-Rust `protox`, so a fresh machine needs no
//! system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/types/mount.proto",
        "proto/types/descriptor.proto",
        "proto/services/snapshots/v1/snapshots.proto",
        "proto/services/content/v1/content.proto",
        "proto/services/diff/v1/diff.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
