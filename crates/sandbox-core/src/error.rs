use std::path::PathBuf;

/// A failed sandbox or VMM operation, naming the sandbox or resource.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("guest images: {0}")]
    Images(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("disk for sandbox {sandbox}: {message}")]
    Disk { sandbox: String, message: String },
    #[error("rootfs provider {provider}: {message}")]
    Rootfs { provider: String, message: String },
    #[error("QEMU backend, vm {vm}: {source}")]
    Qemu {
        vm: String,
        #[source]
        source: qemu_vmm::QemuError,
    },
    #[error("confining the VMM of vm {vm}: {source}")]
    Confine {
        vm: String,
        #[source]
        source: jail::JailError,
    },
    #[error("Firecracker backend, vm {vm}: {message}")]
    Firecracker { vm: String, message: String },
    #[error("network: {0}")]
    Network(String),
    #[error("backend {backend} cannot {what}")]
    Unsupported { backend: &'static str, what: String },
    #[error(
        "sandbox {sandbox}: envd did not become ready: {message}\nguest console ends with:\n{console}"
    )]
    EnvdNotReady {
        sandbox: String,
        message: String,
        console: String,
    },
    #[error("sandbox {sandbox}: envd: {source}")]
    Envd {
        sandbox: String,
        #[source]
        source: Box<envd_client::EnvdError>,
    },
    #[error("sandbox {sandbox} cannot {operation} while {state:?}")]
    InvalidState {
        sandbox: String,
        operation: String,
        state: crate::sandbox::SandboxState,
    },
    /// A resume failed after the guest ran; `outcome` says what became of
    /// the sandbox.
    #[error("resume of sandbox {sandbox} failed after the guest ran ({outcome}): {source}")]
    ResumeFailed {
        sandbox: String,
        outcome: &'static str,
        source: Box<SandboxError>,
    },
    #[error("teardown of {resource} left {} error(s): {}", .errors.len(), .errors.join("; "))]
    Teardown {
        resource: String,
        errors: Vec<String>,
    },
}
