//! `GET /metrics`: CPU, memory and disk usage read from `/proc` and `statvfs`.

use crate::error::EnvdError;
use axum::Json;
use serde::Serialize;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// The `/metrics` reply (byte counts; CPU in percent of all CPUs).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Metrics {
    /// Unix time of the sample, in seconds.
    pub ts: i64,
    /// Number of CPUs.
    pub cpu_count: u32,
    /// CPU use since the previous call (or over the last 100 ms), percent.
    pub cpu_used_pct: f64,
    /// Total memory, bytes.
    pub mem_total: u64,
    /// Used memory (total - available), bytes.
    pub mem_used: u64,
    /// Page cache, bytes.
    pub mem_cache: u64,
    /// Used space of `/`, bytes.
    pub disk_used: u64,
    /// Size of `/`, bytes.
    pub disk_total: u64,
}

#[derive(Debug, Clone, Copy)]
struct CpuSample {
    busy: u64,
    total: u64,
}

static LAST_CPU: Mutex<Option<CpuSample>> = Mutex::new(None);

/// Parses the aggregate `cpu` line of `/proc/stat`.
fn parse_cpu(stat: &str) -> Option<CpuSample> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Some(CpuSample {
        busy: total.saturating_sub(idle),
        total,
    })
}

fn cpu_count(stat: &str) -> u32 {
    let count = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count();
    u32::try_from(count.max(1)).unwrap_or(1)
}

/// Reads a `Key: N kB` field of `/proc/meminfo`, in bytes.
fn meminfo_field(meminfo: &str, key: &str) -> u64 {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn read(path: &str) -> Result<String, EnvdError> {
    std::fs::read_to_string(path).map_err(|e| EnvdError::io(format!("reading {path}"), &e))
}

async fn cpu_percent() -> Result<(f64, u32), EnvdError> {
    let stat = read("/proc/stat")?;
    let count = cpu_count(&stat);
    let mut current = parse_cpu(&stat)
        .ok_or_else(|| EnvdError::Internal("no cpu line in /proc/stat".to_owned()))?;
    let previous = *LAST_CPU.lock().unwrap_or_else(PoisonError::into_inner);
    let previous = match previous {
        Some(prev) if current.total > prev.total => prev,
        _ => {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let prev = current;
            current = parse_cpu(&read("/proc/stat")?).unwrap_or(prev);
            prev
        }
    };
    *LAST_CPU.lock().unwrap_or_else(PoisonError::into_inner) = Some(current);
    let total = current.total.saturating_sub(previous.total);
    let busy = current.busy.saturating_sub(previous.busy);
    let pct = if total == 0 {
        0.0
    } else {
        (busy as f64 / total as f64 * 10_000.0).round() / 100.0
    };
    Ok((pct, count))
}

/// Collects a sample.
pub async fn collect() -> Result<Metrics, EnvdError> {
    let (cpu_used_pct, cpu_count) = cpu_percent().await?;
    let meminfo = read("/proc/meminfo")?;
    let mem_total = meminfo_field(&meminfo, "MemTotal");
    let available = meminfo_field(&meminfo, "MemAvailable");
    let fs = nix::sys::statvfs::statvfs("/")
        .map_err(|e| EnvdError::Internal(format!("statvfs /: {e}")))?;
    let fragment = fs.fragment_size();
    let disk_total = fs.blocks() * fragment;
    let disk_used = fs.blocks().saturating_sub(fs.blocks_free()) * fragment;
    Ok(Metrics {
        ts: chrono::Utc::now().timestamp(),
        cpu_count,
        cpu_used_pct,
        mem_total,
        mem_used: mem_total.saturating_sub(available),
        mem_cache: meminfo_field(&meminfo, "Cached"),
        disk_used,
        disk_total,
    })
}

/// `GET /metrics`.
pub async fn metrics() -> Result<Json<Metrics>, EnvdError> {
    collect().await.map(Json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_line_is_split_into_busy_and_total() {
        let stat = "cpu  10 0 10 70 10 0 0 0 0 0\ncpu0 5 0 5 35 5 0 0 0 0 0\n";

        let sample = parse_cpu(stat).unwrap();

        assert_eq!((sample.busy, sample.total), (20, 100));
        assert_eq!(cpu_count(stat), 1);
    }

    #[test]
    fn meminfo_values_are_converted_to_bytes() {
        let meminfo = "MemTotal:       2048 kB\nMemAvailable:   1024 kB\nCached:  512 kB\n";

        let total = meminfo_field(meminfo, "MemTotal");

        assert_eq!(total, 2048 * 1024);
        assert_eq!(meminfo_field(meminfo, "Cached"), 512 * 1024);
    }
}
