//! CreateNetwork / RemoveNetwork latency: p50 and p95 over N runs (default
//! 50, `BENCH_RUNS` to change), printed as one JSON line. Needs root; uses
//! slots 260..270 and removes their leftovers first.
//!
//! `cargo run -p netns --example bench_network`

use std::time::{Duration, Instant};

use netns::{NetworkOptions, SlotAllocator, cleanup_stale, create_network, remove_network};

/// Nearest-rank percentile in milliseconds of sorted samples.
fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let d = sorted[rank.clamp(1, sorted.len()) - 1];
    (d.as_secs_f64() * 1e6).round() / 1e3
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let slots = SlotAllocator::new(260..270)?;
    cleanup_stale(slots.range()).await?;
    let options = NetworkOptions::default();
    let (mut create, mut remove) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for _ in 0..runs {
        let slot = slots.allocate()?;
        let start = Instant::now();
        let net = create_network(slot, &options).await?;
        create.push(start.elapsed());
        let start = Instant::now();
        remove_network(net).await?;
        remove.push(start.elapsed());
        slots.release(slot)?;
    }
    create.sort();
    remove.sort();
    let report = serde_json::json!({
        "bench": "network",
        "runs": runs,
        "create_network_ms": { "p50": percentile_ms(&create, 50.0), "p95": percentile_ms(&create, 95.0) },
        "remove_network_ms": { "p50": percentile_ms(&remove, 50.0), "p95": percentile_ms(&remove, 95.0) },
    });
    println!("{report}");
    Ok(())
}
