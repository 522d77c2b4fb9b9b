//! Generates the zone sync (KDS) and dataplane config (DPS) protocol code from `proto/` with protox, so no system protoc
//! is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    // KDS carries DPS's traffic report as it is: its types are those of `crate::dps`. DPS is
    // generated last, so its own file is the one that stays.
    let kds = protox::compile(["strait/kds/v1/kds.proto"], ["proto"])?;
    tonic_build::configure().build_client(true).build_server(true).extern_path(".strait.dps.v1", "crate::dps").compile_fds(kds)?;
    let dps = protox::compile(["strait/dps/v1/dps.proto"], ["proto"])?;
    // A service's endpoints, and the settings of sidecars configured alike, are encoded once
    // per change and shared by every sidecar that takes them: `Bytes`, which clone without
    // copying.
    tonic_build::configure()
        .build_client(true)
        .build_server(true)
        .codec_path("crate::dps_codec::DpsCodec")
        .bytes([".strait.dps.v1.ServiceEndpoints.json", ".strait.dps.v1.ConfigDelta.settings"])
        .compile_fds(dps)?;
    Ok(())
}
