//! Zone sync latency: the time from a policy write on the global to its acknowledgement by
//! every zone, over real TLS streams on loopback, against the write alone as the baseline.
//!
//! `cargo run --release -p strait-bench --bin kds_sync -- --zones 3 --writes 200`

use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{json, Value};
use strait_bench::control::ControlPlane;
use strait_bench::{ms, percentile};

#[derive(Parser)]
struct Args {
    /// Zones to sync to.
    #[arg(long, default_value_t = 3)]
    zones: usize,
    /// Policy writes measured.
    #[arg(long, default_value_t = 200)]
    writes: usize,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let cp = ControlPlane::start(args.zones).await.map_err(|e| e.to_string())?;
    let (http, base, token) = (cp.http.clone(), cp.base.clone(), cp.token.clone());
    wait_all_acked(&http, &base, 1, args.zones).await?;

    let mut write_only = Vec::with_capacity(args.writes);
    let mut all_acked = Vec::with_capacity(args.writes);
    for i in 0..args.writes {
        let body = json!({"type": "MeshTimeout", "name": "bench", "mesh": "default",
            "spec": {"to": [{"targetRef": {"kind": "Mesh"}, "default": {"idleTimeout": format!("{}s", i + 1)}}]}});
        let start = Instant::now();
        let stored: Value = http
            .put(format!("{base}/meshes/default/meshtimeouts/bench"))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        write_only.push(start.elapsed());
        let version = stored["version"].as_u64().unwrap_or(u64::MAX);
        wait_all_acked(&http, &base, version, args.zones).await?;
        all_acked.push(start.elapsed());
    }
    let (w50, w99) = (percentile(&mut write_only, 50.0), percentile(&mut write_only, 99.0));
    let (a50, a99) = (percentile(&mut all_acked, 50.0), percentile(&mut all_acked, 99.0));
    println!("zone sync: {} writes, {} zones, loopback TLS", args.writes, args.zones);
    println!("  baseline (write acknowledged by the global): p50 {}  p99 {}", ms(w50), ms(w99));
    println!("  write -> every zone ACKed:                   p50 {}  p99 {}", ms(a50), ms(a99));
    println!(
        "  ratio to baseline:                           p50 {:.1}x  p99 {:.1}x",
        a50.as_secs_f64() / w50.as_secs_f64(),
        a99.as_secs_f64() / w99.as_secs_f64()
    );
    println!("  target: p99 <= 100 ms -> {}", if a99 <= Duration::from_millis(100) { "met" } else { "NOT met" });
    cp.stop().await;
    Ok(())
}

/// Polls the global's zone status until every zone acknowledged `version`.
async fn wait_all_acked(http: &reqwest::Client, base: &str, version: u64, zones: usize) -> Result<(), Box<dyn std::error::Error>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list: Value = http.get(format!("{base}/zones")).send().await?.json().await?;
        let acked = list["items"]
            .as_array()
            .map(|items| items.iter().filter(|z| z["status"]["ackedRevision"].as_u64() >= Some(version)).count())
            .unwrap_or(0);
        if acked >= zones {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("zones did not acknowledge revision {version} within 30 s").into());
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
}
