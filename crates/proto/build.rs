//! Compiles every .proto under /proto with protox (pure Rust, no system protoc) and
//! generates prost messages plus tonic clients and servers for them.

use std::path::PathBuf;

use prost::Message as _;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("manifest dir"));
    let root = manifest
        .join("../../proto")
        .canonicalize()
        .expect("proto dir");
    println!("cargo:rerun-if-changed={}", root.display());

    let mut files = Vec::new();
    collect(&root, &mut files);
    files.sort();
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }

    let fds = protox::compile(&files, [&root]).unwrap_or_else(|e| panic!("protos: {e}"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("out dir"));
    std::fs::write(out.join("spm_descriptor.bin"), fds.encode_to_vec()).expect("write fds");

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .codec_path("crate::codec::Codec")
        // Ordered maps: the same message always encodes to the same bytes (replays are
        // byte-identical).
        .btree_map(".")
        .compile_fds(fds)
        .unwrap_or_else(|e| panic!("codegen: {e}"));
}

fn collect(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read proto dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
}
