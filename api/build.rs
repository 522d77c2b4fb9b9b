//! Generates the zone sync (KDS) and dataplane config (DPS) protocol code from `proto/` with protox, so no system protoc
//! is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["strait/kds/v1/kds.proto", "strait/dps/v1/dps.proto"], ["proto"])?;
    tonic_build::configure().build_client(true).build_server(true).compile_fds(descriptors)?;
    Ok(())
}
