//! Request and response bodies of Firecracker's API, with the JSON field
//! names of its swagger definition (`src/firecracker/swagger/firecracker.yaml`,
//! read at version 1.17.0-dev).
//!
//! Firecracker parses most bodies with `deny_unknown_fields`, so every
//! optional field here is left out of the JSON when it is `None` (or an empty
//! list): a field this crate knows but an older Firecracker does not is only
//! sent when the caller sets it. Deprecated fields (`mem_file_path` and
//! `enable_diff_snapshots` on snapshot load, `vsock_id`, `cpu_template`) are
//! not modelled.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `PUT /boot-source`: the guest kernel, its command line and initrd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootSource {
    /// Host path of the kernel image (an uncompressed `vmlinux` on x86_64).
    pub kernel_image_path: PathBuf,
    /// Kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    /// Host path of an initrd image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<PathBuf>,
}

impl BootSource {
    /// A boot source with only the kernel set.
    pub fn new(kernel_image_path: impl Into<PathBuf>) -> Self {
        Self {
            kernel_image_path: kernel_image_path.into(),
            boot_args: None,
            initrd_path: None,
        }
    }
}

/// Caching strategy of a block device (`Drive::cache_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheType {
    /// Flushes are not forwarded to the host (Firecracker's default).
    Unsafe,
    /// Guest flushes are forwarded to the backing file with `fsync`.
    Writeback,
}

/// IO engine of a block device (`Drive::io_engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoEngine {
    /// Blocking IO on the VMM thread (Firecracker's default).
    Sync,
    /// io_uring; needs a host kernel newer than 5.10.51.
    Async,
}

/// A token bucket of a [`RateLimiter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenBucket {
    /// Capacity of the bucket, in tokens (bytes or operations).
    pub size: u64,
    /// Initial burst on top of `size`, consumed once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    /// Milliseconds it takes to refill the whole bucket.
    pub refill_time: u64,
}

/// An IO rate limiter with independent bandwidth and operations buckets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimiter {
    /// Bucket whose tokens are bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucket>,
    /// Bucket whose tokens are operations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucket>,
}

/// `PUT /drives/{drive_id}`: a virtio-block device backed by a host file.
///
/// The swagger marks `path_on_host` and `is_read_only` optional only because
/// vhost-user-block drives leave them out; this crate does not model those
/// drives, so both are required here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drive {
    /// Drive id; also the last segment of the request path. Firecracker only
    /// accepts ASCII letters, digits and `_` (no `-`).
    pub drive_id: String,
    /// Host path of the backing file.
    pub path_on_host: PathBuf,
    /// Whether the guest boots from this drive.
    pub is_root_device: bool,
    /// Whether the guest sees the drive read-only.
    pub is_read_only: bool,
    /// Partition UUID of the root partition; only used when
    /// `is_root_device` is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    /// Caching strategy; Firecracker defaults to `Unsafe`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_type: Option<CacheType>,
    /// IO engine; Firecracker defaults to `Sync`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<IoEngine>,
    /// Rate limiter of the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

impl Drive {
    /// A drive with only the required fields set.
    pub fn new(
        drive_id: impl Into<String>,
        path_on_host: impl Into<PathBuf>,
        is_root_device: bool,
        is_read_only: bool,
    ) -> Self {
        Self {
            drive_id: drive_id.into(),
            path_on_host: path_on_host.into(),
            is_root_device,
            is_read_only,
            partuuid: None,
            cache_type: None,
            io_engine: None,
            rate_limiter: None,
        }
    }
}

/// How guest memory is backed (`MachineConfiguration::huge_pages`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HugePages {
    /// Regular 4 KiB pages (`"None"` on the wire).
    #[serde(rename = "None")]
    Disabled,
    /// Transparent huge pages through `madvise(MADV_HUGEPAGE)`.
    Transparent,
    /// Explicit 2 MiB hugetlbfs pages; `mem_size_mib` must then be even.
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

/// `PUT /machine-config` (and the answer of `GET /machine-config`).
///
/// A `PUT` resets every optional field left out to Firecracker's default
/// (`smt` and `track_dirty_pages` false, no huge pages).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineConfiguration {
    /// Number of vCPUs, 1 to 32 (1 or even when `smt` is on).
    pub vcpu_count: u8,
    /// Guest memory in MiB.
    pub mem_size_mib: u64,
    /// Simultaneous multithreading; x86_64 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smt: Option<bool>,
    /// KVM dirty page tracking, needed for `Diff` snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// Huge page backing of guest memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<HugePages>,
}

impl MachineConfiguration {
    /// A machine configuration with only vCPUs and memory set.
    pub fn new(vcpu_count: u8, mem_size_mib: u64) -> Self {
        Self {
            vcpu_count,
            mem_size_mib,
            smt: None,
            track_dirty_pages: None,
            huge_pages: None,
        }
    }
}

/// `PUT /network-interfaces/{iface_id}`: a virtio-net device on a host TAP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInterface {
    /// Interface id; also the last segment of the request path. Firecracker
    /// only accepts ASCII letters, digits and `_` (no `-`).
    pub iface_id: String,
    /// Name of the host TAP device.
    pub host_dev_name: String,
    /// Guest MAC address, `xx:xx:xx:xx:xx:xx`; Firecracker picks one if unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// MTU advertised to the guest (68 to 65535). Newer than most deployed
    /// Firecracker releases, which reject the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// Rate limiter of received traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiter>,
    /// Rate limiter of transmitted traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiter>,
}

impl NetworkInterface {
    /// A network interface with only the required fields set.
    pub fn new(iface_id: impl Into<String>, host_dev_name: impl Into<String>) -> Self {
        Self {
            iface_id: iface_id.into(),
            host_dev_name: host_dev_name.into(),
            guest_mac: None,
            mtu: None,
            rx_rate_limiter: None,
            tx_rate_limiter: None,
        }
    }
}

/// `PUT /vsock`: a virtio-vsock device proxied through a host Unix socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vsock {
    /// Guest context id, 3 or more.
    pub guest_cid: u32,
    /// Host Unix socket Firecracker listens on for host-initiated
    /// connections; guest-initiated ones go to `{uds_path}_{port}`.
    pub uds_path: PathBuf,
}

/// Level of Firecracker's logger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warning,
    /// Informational messages and above (Firecracker's default).
    Info,
    /// Debug messages and above.
    Debug,
    /// Everything.
    Trace,
    /// Nothing.
    Off,
}

/// `PUT /logger`: where and how Firecracker logs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logger {
    /// Named pipe or file for the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<PathBuf>,
    /// Log level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<LogLevel>,
    /// Whether each line shows its level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    /// Whether each line shows the source file and line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    /// Only log messages from this module path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

/// `PUT /metrics`: where Firecracker flushes its JSON metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metrics {
    /// Named pipe or file for the metrics.
    pub metrics_path: PathBuf,
}

/// The action of a `PUT /actions` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    /// Boot the configured microVM.
    InstanceStart,
    /// Send Ctrl+Alt+Del to the guest (x86_64 only).
    SendCtrlAltDel,
    /// Flush the metrics to the metrics file now.
    FlushMetrics,
}

/// `PUT /actions` body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceActionInfo {
    /// The action to run.
    pub action_type: ActionType,
}

/// The state a `PATCH /vm` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// Stop the vCPUs.
    Paused,
    /// Run the vCPUs again.
    Resumed,
}

/// `PATCH /vm` body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vm {
    /// The requested state.
    pub state: VmState,
}

/// Kind of snapshot to create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotType {
    /// All of guest memory.
    Full,
    /// Only the pages dirtied since the last snapshot; needs dirty page
    /// tracking.
    Diff,
}

/// `PUT /snapshot/create` body. The microVM must be paused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotCreateParams {
    /// Full or diff. Optional in the swagger (default `Full`); always sent
    /// here.
    pub snapshot_type: SnapshotType,
    /// File that receives the microVM state.
    pub snapshot_path: PathBuf,
    /// File that receives guest memory.
    pub mem_file_path: PathBuf,
}

/// How guest memory is served after a snapshot load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemoryBackendType {
    /// Firecracker maps the memory file `MAP_PRIVATE`.
    File,
    /// A userfaultfd page-fault handler listening on a Unix socket serves it.
    Uffd,
}

/// The memory backend of a snapshot load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryBackend {
    /// File or userfaultfd handler.
    pub backend_type: MemoryBackendType,
    /// The memory file (`File`) or the handler's Unix socket (`Uffd`).
    pub backend_path: PathBuf,
}

/// Moves a network interface onto another host TAP during a snapshot load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkOverride {
    /// The interface to change, as configured when the snapshot was taken.
    pub iface_id: String,
    /// The new host TAP device.
    pub host_dev_name: String,
}

/// Moves the vsock device onto another host Unix socket during a snapshot
/// load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockOverride {
    /// The new host Unix socket.
    pub uds_path: PathBuf,
}

/// `PUT /snapshot/load` body. Only accepted by a fresh Firecracker process
/// (nothing configured but the logger and metrics); a failed load ends the
/// process.
///
/// Always uses `mem_backend`; the deprecated `mem_file_path` alternative is
/// not modelled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotLoadParams {
    /// File holding the microVM state.
    pub snapshot_path: PathBuf,
    /// Where guest memory comes from.
    pub mem_backend: MemoryBackend,
    /// KVM dirty page tracking after the load, for later `Diff` snapshots.
    /// Firecracker before 1.13 knows this only as `enable_diff_snapshots`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// Resume the microVM once loaded (it stays paused otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_vm: Option<bool>,
    /// Host TAP devices to swap in, per interface (Firecracker 1.12 and
    /// later).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_overrides: Vec<NetworkOverride>,
    /// Host Unix socket to swap in for the vsock device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_override: Option<VsockOverride>,
    /// Advance kvmclock by the wall-clock time since the snapshot (x86_64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_realtime: Option<bool>,
}

impl SnapshotLoadParams {
    /// A load from a memory file, with every option left to Firecracker.
    pub fn from_file(snapshot_path: impl Into<PathBuf>, mem_file_path: impl Into<PathBuf>) -> Self {
        Self {
            snapshot_path: snapshot_path.into(),
            mem_backend: MemoryBackend {
                backend_type: MemoryBackendType::File,
                backend_path: mem_file_path.into(),
            },
            track_dirty_pages: None,
            resume_vm: None,
            network_overrides: Vec::new(),
            vsock_override: None,
            clock_realtime: None,
        }
    }
}

/// Run state of a Firecracker instance, as `GET /` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceState {
    /// Configured or being configured, not booted (`"Not started"` on the
    /// wire).
    #[serde(rename = "Not started")]
    NotStarted,
    /// Booted and running.
    Running,
    /// Booted and paused.
    Paused,
}

/// Answer of `GET /`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// Application name, `"Firecracker"`.
    pub app_name: String,
    /// Instance id given with `--id`.
    pub id: String,
    /// Current run state.
    pub state: InstanceState,
    /// Firecracker version.
    pub vmm_version: String,
}

/// Answer of `GET /version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirecrackerVersion {
    /// Firecracker build version, such as `"1.12.0"`.
    pub firecracker_version: String,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn boot_source_omits_unset_options() {
        let boot = BootSource::new("/k/vmlinux");

        let value = serde_json::to_value(&boot).unwrap();

        assert_eq!(value, json!({"kernel_image_path": "/k/vmlinux"}));
    }

    #[test]
    fn huge_pages_use_swagger_names() {
        let values = [
            HugePages::Disabled,
            HugePages::Transparent,
            HugePages::Hugetlbfs2M,
        ];

        let encoded = serde_json::to_value(values).unwrap();

        assert_eq!(encoded, json!(["None", "Transparent", "2M"]));
    }

    #[test]
    fn instance_state_decodes_not_started_with_space() {
        let body = r#"{"app_name":"Firecracker","id":"vm-1","state":"Not started","vmm_version":"1.12.0"}"#;

        let info: InstanceInfo = serde_json::from_str(body).unwrap();

        assert_eq!(info.state, InstanceState::NotStarted);
    }

    #[test]
    fn instance_info_ignores_unknown_fields() {
        let body =
            r#"{"app_name":"Firecracker","id":"a","state":"Paused","vmm_version":"1","extra":1}"#;

        let info: InstanceInfo = serde_json::from_str(body).unwrap();

        assert_eq!(info.state, InstanceState::Paused);
    }

    #[test]
    fn machine_configuration_decodes_get_answer_with_extra_fields() {
        let body = r#"{"vcpu_count":2,"mem_size_mib":256,"smt":false,"track_dirty_pages":true,"cpu_template":"None","huge_pages":"None"}"#;

        let config: MachineConfiguration = serde_json::from_str(body).unwrap();

        assert_eq!(
            config,
            MachineConfiguration {
                vcpu_count: 2,
                mem_size_mib: 256,
                smt: Some(false),
                track_dirty_pages: Some(true),
                huge_pages: Some(HugePages::Disabled),
            }
        );
    }

    #[test]
    fn token_bucket_omits_unset_burst() {
        let limiter = RateLimiter {
            bandwidth: Some(TokenBucket {
                size: 1_048_576,
                one_time_burst: None,
                refill_time: 1000,
            }),
            ops: None,
        };

        let value = serde_json::to_value(limiter).unwrap();

        assert_eq!(
            value,
            json!({"bandwidth": {"size": 1_048_576, "refill_time": 1000}})
        );
    }
}
