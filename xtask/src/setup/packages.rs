//! What each task needs from the host, as Debian packages, and why.

use std::fmt;

/// One thing a task needs from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Need {
    /// Compile Petrel's crates beyond `xtask` itself.
    Build,
    /// Build the guest kernel.
    Kernel,
    /// Build the guest root filesystem.
    Rootfs,
    /// Run VMs.
    Vm,
    /// Give sandboxes network namespaces.
    Network,
    /// Programs the tests run on the host.
    TestTools,
    /// The E2B Python SDK suite.
    SdkTests,
    /// The test UI's browser test.
    Browser,
}

impl Need {
    /// Every need, in the order they are reported.
    pub const ALL: [Need; 8] = [
        Need::Build,
        Need::Kernel,
        Need::Rootfs,
        Need::Vm,
        Need::Network,
        Need::TestTools,
        Need::SdkTests,
        Need::Browser,
    ];

    /// Why the packages are installed.
    pub fn why(self) -> &'static str {
        match self {
            Need::Build => {
                "compile Petrel's crates (bindgen for userfaultfd/devicemapper, protoc for envd's .proto files, SQLite)"
            }
            Need::Kernel => "build the guest kernel from Debian's 6.12 source",
            Need::Rootfs => "build the guest root filesystem",
            Need::Vm => "run VMs (QEMU 10)",
            Need::Network => "give each sandbox a network namespace with NAT and egress rules",
            Need::TestTools => "let the tests call curl and pgrep on the host",
            Need::SdkTests => "run the E2B Python SDK suite in a venv",
            Need::Browser => "drive the test UI in headless Chromium",
        }
    }

    /// The Debian packages.
    pub fn packages(self) -> &'static [Package] {
        const BUILD: &[Package] = &[
            Package::main("build-essential"),
            Package::main("pkg-config"),
            Package::main("libclang-dev"),
            Package::main("libdevmapper-dev"),
            Package::main("libsqlite3-dev"),
            Package::main("protobuf-compiler"),
            // protoc's well-known types (google/protobuf/timestamp.proto):
            // a recommend of protobuf-compiler, which setup does not take.
            Package::main("libprotobuf-dev"),
        ];
        const KERNEL: &[Package] = &[
            Package::new_in_backports("linux-source-6.12"),
            Package::main("build-essential"),
            Package::main("bc"),
            Package::main("flex"),
            Package::main("bison"),
            Package::main("libelf-dev"),
            Package::main("libssl-dev"),
            Package::main("cpio"),
            Package::main("xz-utils"),
        ];
        const ROOTFS: &[Package] = &[Package::main("debootstrap"), Package::main("e2fsprogs")];
        const VM: &[Package] = &[
            Package::new_in_backports("qemu-system-x86"),
            Package::new_in_backports("qemu-utils"),
        ];
        const NETWORK: &[Package] = &[Package::main("iproute2"), Package::main("nftables")];
        const TEST_TOOLS: &[Package] = &[Package::main("curl"), Package::main("procps")];
        // openssl: the SDK suite's TLS server for domain rules gets a
        // self-signed certificate from it.
        const SDK_TESTS: &[Package] = &[Package::main("python3-venv"), Package::main("openssl")];
        const BROWSER: &[Package] = &[Package::main("chromium"), Package::main("chromium-driver")];
        match self {
            Need::Build => BUILD,
            Need::Kernel => KERNEL,
            Need::Rootfs => ROOTFS,
            Need::Vm => VM,
            Need::Network => NETWORK,
            Need::TestTools => TEST_TOOLS,
            Need::SdkTests => SDK_TESTS,
            Need::Browser => BROWSER,
        }
    }
}

impl fmt::Display for Need {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Need::Build => "build",
            Need::Kernel => "kernel",
            Need::Rootfs => "rootfs",
            Need::Vm => "vm",
            Need::Network => "network",
            Need::TestTools => "test-tools",
            Need::SdkTests => "sdk-tests",
            Need::Browser => "browser",
        })
    }
}

/// A Debian package and where it comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Package {
    pub name: &'static str,
    /// Debian 12 has it (or a new enough version) only in its backports
    /// suite; later releases have it in the main suite.
    pub backports_on_bookworm: bool,
}

impl Package {
    const fn main(name: &'static str) -> Self {
        Self {
            name,
            backports_on_bookworm: false,
        }
    }

    const fn new_in_backports(name: &'static str) -> Self {
        Self {
            name,
            backports_on_bookworm: true,
        }
    }
}

/// The tasks of `cargo xtask` that need host packages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Task {
    Images,
    Doctor,
    Demo,
    Serve,
    Bench,
    Vmtest,
    Test,
    /// Everything any task needs (`cargo xtask setup`).
    All,
}

impl Task {
    /// The tasks `setup --dry-run` reports, in order.
    pub const REPORTED: [Task; 7] = [
        Task::Images,
        Task::Doctor,
        Task::Demo,
        Task::Serve,
        Task::Bench,
        Task::Vmtest,
        Task::Test,
    ];

    /// What the task needs.
    pub fn needs(self) -> &'static [Need] {
        use Need::{Build, Kernel, Network, Rootfs, Vm};
        match self {
            Task::Images => &[Build, Kernel, Rootfs],
            Task::Doctor | Task::Demo | Task::Vmtest => &[Build, Kernel, Rootfs, Vm],
            Task::Serve | Task::Bench => &[Build, Kernel, Rootfs, Vm, Network],
            Task::Test | Task::All => &Need::ALL,
        }
    }

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Task::Images => "images",
            Task::Doctor => "doctor",
            Task::Demo => "demo",
            Task::Serve => "serve",
            Task::Bench => "bench",
            Task::Vmtest => "vmtest",
            Task::Test => "test",
            Task::All => "all",
        }
    }

    /// Its packages, each once, in the order of its needs.
    pub fn packages(self) -> Vec<(Need, Package)> {
        let mut out: Vec<(Need, Package)> = Vec::new();
        for &need in self.needs() {
            for &package in need.packages() {
                if !out.iter().any(|(_, p)| p.name == package.name) {
                    out.push((need, package));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(task: Task) -> Vec<&'static str> {
        task.packages().into_iter().map(|(_, p)| p.name).collect()
    }

    #[test]
    fn demo_needs_no_test_tooling() {
        let demo = names(Task::Demo);
        for absent in ["chromium", "chromium-driver", "python3-venv", "nftables"] {
            assert!(!demo.contains(&absent), "demo installs {absent}");
        }
        for present in ["qemu-system-x86", "linux-source-6.12", "libdevmapper-dev"] {
            assert!(demo.contains(&present), "demo lacks {present}");
        }
    }

    #[test]
    fn test_needs_every_package_once() {
        let test = names(Task::Test);
        let mut sorted = test.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), test.len());
        for need in Need::ALL {
            for package in need.packages() {
                assert!(test.contains(&package.name), "test lacks {}", package.name);
            }
        }
    }
}
