//! [`FcClient`]: typed calls to Firecracker's API.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use crate::error::{FcError, fault_message};
use crate::models::{
    ActionType, BootSource, Drive, FirecrackerVersion, InstanceActionInfo, InstanceInfo, Logger,
    MachineConfiguration, Metrics, NetworkInterface, SnapshotCreateParams, SnapshotLoadParams, Vm,
    VmState, Vsock,
};
use crate::transport::exchange;

/// Pause between two polls of [`FcClient::wait_ready`].
const READY_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// A client of one Firecracker process's API socket.
///
/// Cheap to clone. Each call opens its own connection, so a client can be
/// built before the socket exists and outlives a restart of the process.
/// Calls have no timeout of their own (a snapshot of a large guest takes a
/// while); wrap them in [`tokio::time::timeout`] where needed.
#[derive(Debug, Clone)]
pub struct FcClient {
    socket: PathBuf,
}

impl FcClient {
    /// A client of the API socket at `socket_path`. Does not connect.
    pub fn new(socket_path: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket_path.into(),
        }
    }

    /// The API socket this client talks to.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// `GET /`: instance id, state and Firecracker version.
    pub async fn describe_instance(&self) -> Result<InstanceInfo, FcError> {
        self.get("/").await
    }

    /// `GET /version`.
    pub async fn version(&self) -> Result<FirecrackerVersion, FcError> {
        self.get("/version").await
    }

    /// `GET /machine-config`.
    pub async fn get_machine_config(&self) -> Result<MachineConfiguration, FcError> {
        self.get("/machine-config").await
    }

    /// `PUT /boot-source`. Pre-boot only.
    pub async fn put_boot_source(&self, boot_source: &BootSource) -> Result<(), FcError> {
        self.send(Method::PUT, "/boot-source", boot_source).await
    }

    /// `PUT /drives/{drive_id}`, the id taken from `drive`. Pre-boot only.
    pub async fn put_drive(&self, drive: &Drive) -> Result<(), FcError> {
        let id = checked_id("drive", &drive.drive_id)?;
        self.send(Method::PUT, &format!("/drives/{id}"), drive)
            .await
    }

    /// `PUT /machine-config`. Pre-boot only; unset options are reset to
    /// Firecracker's defaults.
    pub async fn put_machine_config(&self, config: &MachineConfiguration) -> Result<(), FcError> {
        self.send(Method::PUT, "/machine-config", config).await
    }

    /// `PUT /network-interfaces/{iface_id}`, the id taken from `iface`.
    /// Pre-boot only.
    pub async fn put_network_interface(&self, iface: &NetworkInterface) -> Result<(), FcError> {
        let id = checked_id("network interface", &iface.iface_id)?;
        self.send(Method::PUT, &format!("/network-interfaces/{id}"), iface)
            .await
    }

    /// `PUT /vsock`. Pre-boot only.
    pub async fn put_vsock(&self, vsock: &Vsock) -> Result<(), FcError> {
        self.send(Method::PUT, "/vsock", vsock).await
    }

    /// `PUT /logger`.
    pub async fn put_logger(&self, logger: &Logger) -> Result<(), FcError> {
        self.send(Method::PUT, "/logger", logger).await
    }

    /// `PUT /metrics`.
    pub async fn put_metrics(&self, metrics: &Metrics) -> Result<(), FcError> {
        self.send(Method::PUT, "/metrics", metrics).await
    }

    /// `PUT /actions` with `action_type`.
    pub async fn action(&self, action_type: ActionType) -> Result<(), FcError> {
        self.send(Method::PUT, "/actions", &InstanceActionInfo { action_type })
            .await
    }

    /// `PUT /actions` `InstanceStart`: boots the configured microVM.
    pub async fn start_instance(&self) -> Result<(), FcError> {
        self.action(ActionType::InstanceStart).await
    }

    /// `PATCH /vm` `Paused`.
    pub async fn pause(&self) -> Result<(), FcError> {
        self.send(
            Method::PATCH,
            "/vm",
            &Vm {
                state: VmState::Paused,
            },
        )
        .await
    }

    /// `PATCH /vm` `Resumed`.
    pub async fn resume(&self) -> Result<(), FcError> {
        self.send(
            Method::PATCH,
            "/vm",
            &Vm {
                state: VmState::Resumed,
            },
        )
        .await
    }

    /// `PUT /snapshot/create`. The microVM must be paused.
    pub async fn create_snapshot(&self, params: &SnapshotCreateParams) -> Result<(), FcError> {
        self.send(Method::PUT, "/snapshot/create", params).await
    }

    /// `PUT /snapshot/load`. Only on a fresh process; Firecracker exits if
    /// the load fails.
    pub async fn load_snapshot(&self, params: &SnapshotLoadParams) -> Result<(), FcError> {
        self.send(Method::PUT, "/snapshot/load", params).await
    }

    /// Polls `GET /` until it answers, or fails with
    /// [`FcError::NotReady`] at `deadline`.
    ///
    /// Covers the time between starting firecracker and its API server
    /// listening: a missing socket, a refused connection and a broken
    /// exchange are all retried. An answer with an error status is not a
    /// readiness problem and is returned at once.
    pub async fn wait_ready(&self, deadline: Instant) -> Result<InstanceInfo, FcError> {
        let started = Instant::now();
        loop {
            let last_error = match tokio::time::timeout_at(deadline, self.describe_instance()).await
            {
                Ok(Ok(info)) => return Ok(info),
                Ok(Err(err @ (FcError::Connect { .. } | FcError::Http { .. }))) => err.to_string(),
                Ok(Err(err)) => return Err(err),
                Err(_elapsed) => "GET / did not answer before the deadline".to_owned(),
            };
            if Instant::now() + READY_POLL_INTERVAL >= deadline {
                return Err(FcError::NotReady {
                    socket: self.socket.clone(),
                    waited: started.elapsed(),
                    last_error,
                });
            }
            tokio::time::sleep(READY_POLL_INTERVAL).await;
        }
    }

    /// Sends `body` as JSON and expects a success answer without content.
    async fn send<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<(), FcError> {
        let json = serde_json::to_vec(body).map_err(|source| FcError::Encode {
            method: method.clone(),
            path: path.to_owned(),
            source,
        })?;
        self.call(method, path, Some(Bytes::from(json))).await?;
        Ok(())
    }

    /// `GET path` and decodes the JSON answer.
    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, FcError> {
        let body = self.call(Method::GET, path, None).await?;
        serde_json::from_slice(&body).map_err(|source| FcError::Decode {
            method: Method::GET,
            path: path.to_owned(),
            source,
        })
    }

    /// One exchange; a non-success status becomes [`FcError::Api`].
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Bytes, FcError> {
        let answer = exchange(&self.socket, &method, path, body).await?;
        if answer.status.is_success() {
            return Ok(answer.body);
        }
        Err(FcError::Api {
            method,
            path: path.to_owned(),
            status: answer.status,
            fault_message: fault_message(&answer.body),
        })
    }
}

/// `id` if Firecracker would accept it as a resource id in a request path:
/// one or more ASCII letters, digits or `_`. Firecracker itself allows any
/// Unicode alphanumeric; this client stays with ASCII so the path needs no
/// encoding.
fn checked_id<'a>(kind: &'static str, id: &'a str) -> Result<&'a str, FcError> {
    let valid = !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if valid {
        Ok(id)
    } else {
        Err(FcError::InvalidResourceId {
            kind,
            id: id.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use http::StatusCode;
    use serde_json::json;

    use super::*;
    use crate::models::{
        CacheType, HugePages, InstanceState, IoEngine, LogLevel, MemoryBackend, MemoryBackendType,
        NetworkOverride, RateLimiter, SnapshotType, TokenBucket, VsockOverride,
    };
    use crate::testing::{Recorded, Reply, TestServer};

    const INSTANCE_INFO: &str =
        r#"{"app_name":"Firecracker","id":"vm-1","state":"Not started","vmm_version":"1.12.0"}"#;

    fn bucket(size: u64, refill_time: u64) -> TokenBucket {
        TokenBucket {
            size,
            one_time_burst: None,
            refill_time,
        }
    }

    #[tokio::test]
    async fn put_boot_source_sends_put_boot_source() {
        let server = TestServer::start(Reply::no_content());
        let client = FcClient::new(server.socket());
        let boot = BootSource {
            kernel_image_path: "/images/vmlinux".into(),
            boot_args: Some("console=ttyS0 reboot=k panic=1".to_owned()),
            initrd_path: Some("/images/initrd".into()),
        };

        client.put_boot_source(&boot).await.unwrap();

        let request = server.single_request();
        assert_eq!(
            (&request.method, request.path.as_str()),
            (&Method::PUT, "/boot-source")
        );
        assert_eq!(
            request.json(),
            json!({
                "kernel_image_path": "/images/vmlinux",
                "boot_args": "console=ttyS0 reboot=k panic=1",
                "initrd_path": "/images/initrd"
            })
        );
    }

    #[tokio::test]
    async fn requests_carry_json_content_type_length_and_host() {
        let server = TestServer::start(Reply::no_content());
        let client = FcClient::new(server.socket());

        client.start_instance().await.unwrap();

        let request = server.single_request();
        assert_eq!(request.content_type.as_deref(), Some("application/json"));
        assert_eq!(request.content_length, Some(request.body.len().to_string()));
        assert_eq!(request.host.as_deref(), Some("localhost"));
    }

    #[tokio::test]
    async fn put_drive_sends_put_drives_id_with_all_fields() {
        let server = TestServer::start(Reply::no_content());
        let client = FcClient::new(server.socket());
        let drive = Drive {
            partuuid: Some("0eaa91a0-01".to_owned()),
            cache_type: Some(CacheType::Writeback),
            io_engine: Some(IoEngine::Async),
            rate_limiter: Some(RateLimiter {
                bandwidth: Some(TokenBucket {
                    size: 10_485_760,
                    one_time_burst: Some(1_048_576),
                    refill_time: 1000,
                }),
                ops: Some(bucket(1000, 1000)),
            }),
            ..Drive::new("rootfs", "/vm/rootfs.ext4", true, false)
        };

        client.put_drive(&drive).await.unwrap();

        let request = server.single_request();
        assert_eq!(
            (&request.method, request.path.as_str()),
            (&Method::PUT, "/drives/rootfs")
        );
        assert_eq!(
            request.json(),
            json!({
                "drive_id": "rootfs",
                "path_on_host": "/vm/rootfs.ext4",
                "is_root_device": true,
                "is_read_only": false,
                "partuuid": "0eaa91a0-01",
                "cache_type": "Writeback",
                "io_engine": "Async",
                "rate_limiter": {
                    "bandwidth": {"size": 10_485_760, "one_time_burst": 1_048_576, "refill_time": 1000},
                    "ops": {"size": 1000, "refill_time": 1000}
                }
            })
        );
    }

    #[tokio::test]
    async fn put_drive_sends_only_required_fields_by_default() {
        let server = TestServer::start(Reply::no_content());
        let client = FcClient::new(server.socket());
        let drive = Drive::new("scratch_1", "/vm/scratch.ext4", false, true);

        client.put_drive(&drive).await.unwrap();

        assert_eq!(
            server.single_request().json(),
            json!({
                "drive_id": "scratch_1",
                "path_on_host": "/vm/scratch.ext4",
                "is_root_device": false,
                "is_read_only": true
            })
        );
    }

    #[tokio::test]
    async fn put_drive_rejects_traversal_id() {
        let server = TestServer::start(Reply::no_content());
        let client = FcClient::new(server.socket());
        let drive = Drive::new("../actions", "/vm/rootfs.ext4", true, false);

        let result = client.put_drive(&drive).await;

        assert!(matches!(
            result,
            Err(FcError::InvalidResourceId { kind: "drive", ref id }) if id == "../actions"
        ));
        assert!(server.requests().is_empty());
    }

    #[tokio::test]
    async fn put_drive_rejects_hyphenated_id() {
        let server = TestServer::start(Reply::no_content());
        let client = FcClient::new(server.socket());
        let drive = Drive::new("root-fs", "/vm/rootfs.ext4", true, false);

        let result = client.put_drive(&drive).await;

        assert!(matches!(result, Err(FcError::InvalidResourceId { .. })));
        assert!(server.requests().is_empty());
    }

    #[tokio::test]
    async fn put_machine_config_sends_put_machine_config() {
        let server = TestServer::start(Reply::no_content());
        let client = FcClient::new(server.socket());
        let config = MachineConfiguration {
            smt: Some(false),
            track_dirty_pages: Some(true),
            huge_pages: Some(HugePages::Hugetlbfs2M),
            ..MachineConfiguration::new(2, 512)
        };

        client.put_machine_config(&config).await.unwrap();

        let request = server.single_request();
        assert_eq!(
            (&request.method, request.path.as_str()),
            (&Method::PUT, "/machine-config")
        );
        assert_eq!(
            request.json(),
            json!({
                "vcpu_count": 2,
                "mem_size_mib": 512,
                "smt": false,
                "track_dirty_pages": true,
                "huge_pages": "2M"
            })
        );
    }

    #[tokio::test]
    async fn put_machine_config_omits_unset_options() {
        let server = TestServer::start(Reply::no_content());
        let client = FcClient::new(server.socket());

        client
            .put_machine_config(&MachineConfiguration::new(1, 128))
            .await
            .unwrap();

        assert_eq!(
            server.single_request().json(),
            json!({"vcpu_count": 1, "mem_size_mib": 128})
        );
    }

    #[tokio::test]
    async fn put_network_interface_sends_put_network_interfaces_id() {
        let server = TestServer::start(Reply::no_content());
        let client = FcClient::new(server.socket());
        let iface = NetworkInterface {
            guest_mac: Some("06:00:ac:10:00:02".to_owned()),
            rx_rate_limiter: Some(RateLimiter {
                bandwidth: Some(bucket(1_000_000, 100)),
                ops: None,
            }),
            ..NetworkInterface::new("eth0", "tap0")
        };

        client.put_network_interface(&iface).await.unwrap();

        let request = server.single_request();
        assert_eq!(
            (&request.method, request.path.as_str()),
            (&Method::PUT, "/network-interfaces/eth0")
        );
        assert_eq!(
            request.json(),
            json!({
                "iface_id": "eth0",
                "host_dev_name": "tap0",
                "guest_mac": "06:00:ac:10:00:02",
                "rx_rate_limiter": {"bandwidth": {"size": 1_000_000, "refill_time": 100}}
            })
        );
    }

    #[tokio::test]
    async fn put_network_interface_rejects_empty_id() {
        let server = TestServer::start(Reply::no_content());
        let client = FcClient::new(server.socket());
        let iface = NetworkInterface::new("", "tap0");

        let result = client.put_network_interface(&iface).await;

        assert!(matches!(
            result,
            Err(FcError::InvalidResourceId {
                kind: "network interface",
                ..
            })
        ));
        assert!(server.requests().is_empty());
    }

    #[tokio::test]
    async fn put_vsock_sends_put_vsock() {
        let server = TestServer::start(Reply::no_content());
        let client = FcClient::new(server.socket());
        let vsock = Vsock {
            guest_cid: 3,
            uds_path: "/run/petrel/vm-1/vsock.sock".into(),
        };

        client.put_vsock(&vsock).await.unwrap();

        let request = server.single_request();
        assert_eq!(
            (&request.method, request.path.as_str()),
            (&Method::PUT, "/vsock")
        );
        assert_eq!(
            request.json(),
            json!({"guest_cid": 3, "uds_path": "/run/petrel/vm-1/vsock.sock"})
        );
    }

    #[tokio::test]
    async fn put_logger_sends_put_logger() {
        let server = TestServer::start(Reply::no_content());
        let client = FcClient::new(server.socket());
        let logger = Logger {
            log_path: Some("/run/petrel/vm-1/fc.log".into()),
            level: Some(LogLevel::Warning),
            show_level: Some(true),
            ..Logger::default()
        };

        client.put_logger(&logger).await.unwrap();

        let request = server.single_request();
        assert_eq!(
            (&request.method, request.path.as_str()),
            (&Method::PUT, "/logger")
        );
        assert_eq!(
            request.json(),
            json!({"log_path": "/run/petrel/vm-1/fc.log", "level": "Warning", "show_level": true})
        );
    }

    #[tokio::test]
    async fn put_metrics_sends_put_metrics() {
        let server = TestServer::start(Reply::no_content());
        let client = FcClient::new(server.socket());
        let metrics = Metrics {
            metrics_path: "/run/petrel/vm-1/metrics.fifo".into(),
        };

        client.put_metrics(&metrics).await.unwrap();

        let request = server.single_request();
        assert_eq!(
            (&request.method, request.path.as_str()),
            (&Method::PUT, "/metrics")
        );
        assert_eq!(
            request.json(),
            json!({"metrics_path": "/run/petrel/vm-1/metrics.fifo"})
        );
    }

    #[tokio::test]
    async fn start_instance_sends_instance_start_action() {
        let server = TestServer::start(Reply::no_content());
        let client = FcClient::new(server.socket());

        client.start_instance().await.unwrap();

        let request = server.single_request();
        assert_eq!(
            (&request.method, request.path.as_str()),
            (&Method::PUT, "/actions")
        );
        assert_eq!(request.json(), json!({"action_type": "InstanceStart"}));
    }

    #[tokio::test]
    async fn action_sends_each_action_type() {
        let server = TestServer::start(Reply::no_content());
        let client = FcClient::new(server.socket());

        client.action(ActionType::SendCtrlAltDel).await.unwrap();
        client.action(ActionType::FlushMetrics).await.unwrap();

        let bodies: Vec<_> = server.requests().iter().map(Recorded::json).collect();
        assert_eq!(
            bodies,
            vec![
                json!({"action_type": "SendCtrlAltDel"}),
                json!({"action_type": "FlushMetrics"})
            ]
        );
    }

    #[tokio::test]
    async fn pause_sends_patch_vm_paused() {
        let server = TestServer::start(Reply::no_content());
        let client = FcClient::new(server.socket());

        client.pause().await.unwrap();

        let request = server.single_request();
        assert_eq!(
            (&request.method, request.path.as_str()),
            (&Method::PATCH, "/vm")
        );
        assert_eq!(request.json(), json!({"state": "Paused"}));
    }

    #[tokio::test]
    async fn resume_sends_patch_vm_resumed() {
        let server = TestServer::start(Reply::no_content());
        let client = FcClient::new(server.socket());

        client.resume().await.unwrap();

        let request = server.single_request();
        assert_eq!(
            (&request.method, request.path.as_str()),
            (&Method::PATCH, "/vm")
        );
        assert_eq!(request.json(), json!({"state": "Resumed"}));
    }

    #[tokio::test]
    async fn create_snapshot_sends_put_snapshot_create() {
        let server = TestServer::start(Reply::no_content());
        let client = FcClient::new(server.socket());
        let params = SnapshotCreateParams {
            snapshot_type: SnapshotType::Diff,
            snapshot_path: "/snap/base/vmstate".into(),
            mem_file_path: "/snap/base/mem".into(),
        };

        client.create_snapshot(&params).await.unwrap();

        let request = server.single_request();
        assert_eq!(
            (&request.method, request.path.as_str()),
            (&Method::PUT, "/snapshot/create")
        );
        assert_eq!(
            request.json(),
            json!({
                "snapshot_type": "Diff",
                "snapshot_path": "/snap/base/vmstate",
                "mem_file_path": "/snap/base/mem"
            })
        );
    }

    #[tokio::test]
    async fn load_snapshot_sends_file_backend_only_by_default() {
        let server = TestServer::start(Reply::no_content());
        let client = FcClient::new(server.socket());
        let params = SnapshotLoadParams::from_file("/snap/base/vmstate", "/snap/base/mem");

        client.load_snapshot(&params).await.unwrap();

        let request = server.single_request();
        assert_eq!(
            (&request.method, request.path.as_str()),
            (&Method::PUT, "/snapshot/load")
        );
        assert_eq!(
            request.json(),
            json!({
                "snapshot_path": "/snap/base/vmstate",
                "mem_backend": {"backend_type": "File", "backend_path": "/snap/base/mem"}
            })
        );
    }

    #[tokio::test]
    async fn load_snapshot_sends_uffd_backend_and_overrides() {
        let server = TestServer::start(Reply::no_content());
        let client = FcClient::new(server.socket());
        let params = SnapshotLoadParams {
            snapshot_path: "/snap/base/vmstate".into(),
            mem_backend: MemoryBackend {
                backend_type: MemoryBackendType::Uffd,
                backend_path: "/run/petrel/uffd.sock".into(),
            },
            track_dirty_pages: Some(true),
            resume_vm: Some(true),
            network_overrides: vec![NetworkOverride {
                iface_id: "eth0".to_owned(),
                host_dev_name: "tap7".to_owned(),
            }],
            vsock_override: Some(VsockOverride {
                uds_path: "/run/petrel/vm-7/vsock.sock".into(),
            }),
            clock_realtime: Some(true),
        };

        client.load_snapshot(&params).await.unwrap();

        assert_eq!(
            server.single_request().json(),
            json!({
                "snapshot_path": "/snap/base/vmstate",
                "mem_backend": {"backend_type": "Uffd", "backend_path": "/run/petrel/uffd.sock"},
                "track_dirty_pages": true,
                "resume_vm": true,
                "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap7"}],
                "vsock_override": {"uds_path": "/run/petrel/vm-7/vsock.sock"},
                "clock_realtime": true
            })
        );
    }

    #[tokio::test]
    async fn describe_instance_sends_get_root_without_body() {
        let server = TestServer::start(Reply::ok(INSTANCE_INFO));
        let client = FcClient::new(server.socket());

        let info = client.describe_instance().await.unwrap();

        let request = server.single_request();
        assert_eq!(
            (&request.method, request.path.as_str()),
            (&Method::GET, "/")
        );
        assert_eq!(
            (
                request.body.len(),
                request.content_length,
                request.content_type
            ),
            (0, None, None)
        );
        assert_eq!(
            info,
            InstanceInfo {
                app_name: "Firecracker".to_owned(),
                id: "vm-1".to_owned(),
                state: InstanceState::NotStarted,
                vmm_version: "1.12.0".to_owned(),
            }
        );
    }

    #[tokio::test]
    async fn version_sends_get_version() {
        let server = TestServer::start(Reply::ok(r#"{"firecracker_version":"1.12.1"}"#));
        let client = FcClient::new(server.socket());

        let version = client.version().await.unwrap();

        assert_eq!(server.single_request().path, "/version");
        assert_eq!(version.firecracker_version, "1.12.1");
    }

    #[tokio::test]
    async fn get_machine_config_sends_get_machine_config() {
        let server = TestServer::start(Reply::ok(
            r#"{"vcpu_count":1,"mem_size_mib":128,"smt":false,"track_dirty_pages":false}"#,
        ));
        let client = FcClient::new(server.socket());

        let config = client.get_machine_config().await.unwrap();

        let request = server.single_request();
        assert_eq!(
            (&request.method, request.path.as_str()),
            (&Method::GET, "/machine-config")
        );
        assert_eq!((config.vcpu_count, config.mem_size_mib), (1, 128));
    }

    #[tokio::test]
    async fn bad_request_decodes_fault_message() {
        let server = TestServer::start(Reply::error(
            StatusCode::BAD_REQUEST,
            r#"{"fault_message":"The kernel file cannot be opened: No such file or directory (os error 2)"}"#,
        ));
        let client = FcClient::new(server.socket());

        let result = client
            .put_boot_source(&BootSource::new("/missing/vmlinux"))
            .await;

        let FcError::Api {
            method,
            path,
            status,
            fault_message,
        } = result.unwrap_err()
        else {
            panic!("expected FcError::Api");
        };
        assert_eq!(
            (method, path.as_str(), status, fault_message.as_str()),
            (
                Method::PUT,
                "/boot-source",
                StatusCode::BAD_REQUEST,
                "The kernel file cannot be opened: No such file or directory (os error 2)"
            )
        );
    }

    #[tokio::test]
    async fn error_without_fault_object_keeps_raw_body() {
        let server = TestServer::start(Reply::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal failure",
        ));
        let client = FcClient::new(server.socket());

        let err = client.pause().await.unwrap_err();

        assert_eq!(
            err.to_string(),
            "PATCH /vm: Firecracker answered 500 Internal Server Error: internal failure"
        );
    }

    #[tokio::test]
    async fn describe_instance_reports_malformed_answer() {
        let server = TestServer::start(Reply::ok(r#"{"state":"Exploded"}"#));
        let client = FcClient::new(server.socket());

        let result = client.describe_instance().await;

        assert!(matches!(
            result,
            Err(FcError::Decode { method: Method::GET, ref path, .. }) if path == "/"
        ));
    }

    #[tokio::test]
    async fn missing_socket_error_names_socket() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("absent.sock");
        let client = FcClient::new(&socket);

        let err = client.start_instance().await.unwrap_err();

        assert!(matches!(err, FcError::Connect { .. }));
        assert!(
            err.to_string().contains(&socket.display().to_string()),
            "{err}"
        );
    }

    #[tokio::test]
    async fn wait_ready_returns_instance_info_when_api_answers() {
        let server = TestServer::start(Reply::ok(INSTANCE_INFO));
        let client = FcClient::new(server.socket());

        let info = client
            .wait_ready(Instant::now() + Duration::from_secs(5))
            .await
            .unwrap();

        assert_eq!(info.id, "vm-1");
    }

    #[tokio::test]
    async fn wait_ready_waits_for_socket_to_appear() {
        let dir = tempfile::tempdir().unwrap();
        let client = FcClient::new(dir.path().join("api.sock"));
        let late_server = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            TestServer::start_in(dir, Reply::ok(INSTANCE_INFO))
        });

        let info = client
            .wait_ready(Instant::now() + Duration::from_secs(5))
            .await;

        let server = late_server.await.unwrap();
        assert_eq!(info.unwrap().state, InstanceState::NotStarted);
        assert_eq!(server.requests().len(), 1);
    }

    #[tokio::test]
    async fn wait_ready_times_out_naming_socket() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("never.sock");
        let client = FcClient::new(&socket);

        let err = client
            .wait_ready(Instant::now() + Duration::from_millis(100))
            .await
            .unwrap_err();

        assert!(matches!(err, FcError::NotReady { socket: ref s, .. } if *s == socket));
    }

    #[tokio::test]
    async fn wait_ready_returns_api_error_at_once() {
        let server = TestServer::start(Reply::error(
            StatusCode::BAD_REQUEST,
            r#"{"fault_message":"nope"}"#,
        ));
        let client = FcClient::new(server.socket());

        let result = client
            .wait_ready(Instant::now() + Duration::from_secs(5))
            .await;

        assert!(matches!(result, Err(FcError::Api { .. })));
        assert_eq!(server.requests().len(), 1);
    }

    #[test]
    fn checked_id_accepts_letters_digits_underscore() {
        let result = checked_id("drive", "Root_fs1");

        assert_eq!(result.unwrap(), "Root_fs1");
    }

    #[test]
    fn checked_id_rejects_url_metacharacters() {
        let rejected =
            ["a/b", "a?b", "a#b", "a%20", "a b", "é"].map(|id| checked_id("drive", id).is_err());

        assert_eq!(rejected, [true; 6]);
    }
}
