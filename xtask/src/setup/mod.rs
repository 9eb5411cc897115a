//! `cargo xtask setup`: installs the host packages a task needs, when they
//! are missing, and says which and why.
//!
//! Each task needs some of [`Need`]s (compile Petrel's crates, build the
//! guest kernel, the rootfs, run VMs, ...): `cargo xtask demo` installs what
//! the demo needs and no more; `cargo xtask test` (and plain `setup`)
//! everything. On Debian 12, QEMU 10 and the 6.12 kernel source come from
//! `bookworm-backports` on the mirror the host's apt sources already use.
//! `--dry-run` prints each task's packages without touching anything
//! (`--bare`: as for a host with none of them installed).

mod apt;
mod host;
mod packages;

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

pub use packages::Task;
use packages::{Need, Package};

use xtask::env;

/// What setup would do for one task on this host.
#[derive(Debug)]
struct Plan {
    release: host::Release,
    /// The packages to install, with the need each serves.
    install: Vec<(Need, Package)>,
    backports: Backports,
}

/// Where the backports packages come from.
#[derive(Debug)]
enum Backports {
    /// None of the packages to install needs backports.
    NotNeeded,
    /// A source of the host already serves the backports suite.
    Present(PathBuf),
    /// This source is to be written (path under the apt dir, contents).
    Write { path: PathBuf, paragraph: String },
}

impl Plan {
    fn new(task: Task, bare: bool) -> Result<Self> {
        let release = host::release(&host::os_release_path())?;
        let wanted = task.packages();
        let names: Vec<&str> = wanted.iter().map(|(_, p)| p.name).collect();
        let missing = if bare {
            names.clone()
        } else {
            host::missing(&names)
        };
        let install: Vec<(Need, Package)> = wanted
            .into_iter()
            .filter(|(_, p)| missing.contains(&p.name))
            .collect();
        let backports =
            if release.needs_backports() && install.iter().any(|(_, p)| p.backports_on_bookworm) {
                backports_source(&release)?
            } else {
                Backports::NotNeeded
            };
        Ok(Self {
            release,
            install,
            backports,
        })
    }

    /// Whether `package` comes from the backports suite on this release.
    fn is_backported(&self, package: &Package) -> bool {
        package.backports_on_bookworm && self.release.needs_backports()
    }

    /// The packages to install from backports (`true`) or the main suite.
    fn names(&self, from_backports: bool) -> Vec<&'static str> {
        self.install
            .iter()
            .filter(|(_, p)| self.is_backported(p) == from_backports)
            .map(|(_, p)| p.name)
            .collect()
    }

    /// The packages, grouped by why, one line each.
    fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for need in Need::ALL {
            let names: Vec<String> = self
                .install
                .iter()
                .filter(|(n, _)| *n == need)
                .map(|(_, p)| {
                    if self.is_backported(p) {
                        format!("{} ({})", p.name, self.release.backports_suite())
                    } else {
                        p.name.to_string()
                    }
                })
                .collect();
            if !names.is_empty() {
                lines.push(format!("  to {}: {}", need.why(), names.join(" ")));
            }
        }
        lines
    }
}

/// The backports source to use: the host's own if it has one, else one on
/// the host's mirror.
fn backports_source(release: &host::Release) -> Result<Backports> {
    let apt_dir = host::apt_dir();
    let all = apt::sources(&apt_dir)?;
    let suite = release.backports_suite();
    let ours = apt_dir.join(apt::BACKPORTS_FILE);
    let theirs: Vec<apt::Source> = all
        .into_iter()
        .filter(|s| !apt::is_ours(s, &apt_dir))
        .collect();
    if apt::has_suite(&theirs, &suite) {
        let file = theirs
            .iter()
            .find(|s| s.suites.contains(&suite))
            .map_or_else(|| apt_dir.clone(), |s| s.file.clone());
        return Ok(Backports::Present(file));
    }
    let mirror = apt::mirror(&theirs, &release.codename).with_context(|| {
        format!(
            "no apt source in {} serves {} main: cannot tell which mirror to take {suite} from",
            apt_dir.display(),
            release.codename
        )
    })?;
    Ok(Backports::Write {
        path: ours,
        paragraph: apt::backports_paragraph(mirror, &suite),
    })
}

/// Installs what `task` needs and is missing (needs root then), and checks
/// QEMU's version where the task runs VMs.
pub fn run(task: Task) -> Result<()> {
    if std::env::var_os("PETREL_IN_VMTEST").is_some()
        || std::env::var("PETREL_SKIP_SETUP").as_deref() == Ok("1")
    {
        // Inside a vmtest guest (what the task needs is on its test disk),
        // or the operator installed the packages themselves.
        return Ok(());
    }
    let plan = Plan::new(task, false)?;
    if plan.install.is_empty() {
        eprintln!(
            "[setup] the {} host packages `{}` needs are installed",
            task.packages().len(),
            task.name()
        );
    } else {
        env::step(&format!(
            "setup for `{}`: installing {} missing host packages",
            task.name(),
            plan.install.len()
        ));
        for line in plan.describe() {
            eprintln!("{line}");
        }
        if !host::is_root() {
            bail!(
                "{} host packages are missing and installing them needs root: run `cargo xtask setup --task {}` as root",
                plan.install.len(),
                task.name()
            );
        }
        if !host::on_path("apt-get") {
            bail!("apt-get is not on PATH: setup installs packages with apt on Debian only");
        }
        install(&plan)?;
    }
    if task.needs().contains(&Need::Vm) {
        check_qemu_version()?;
    }
    Ok(())
}

fn install(plan: &Plan) -> Result<()> {
    if let Backports::Write { path, paragraph } = &plan.backports {
        let changed = apt::write_backports(&host::apt_dir(), paragraph)?;
        if changed {
            eprintln!("[setup] wrote {}", path.display());
        }
    }
    apt_update()?;
    let backports = plan.names(true);
    if !backports.is_empty() {
        let suite = plan.release.backports_suite();
        let mut args = vec![
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "-t",
            suite.as_str(),
        ];
        args.extend(&backports);
        apt_get(&args)?;
    }
    let main = plan.names(false);
    if !main.is_empty() {
        let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
        args.extend(&main);
        apt_get(&args)?;
    }
    let still = host::missing(&plan.install.iter().map(|(_, p)| p.name).collect::<Vec<_>>());
    if !still.is_empty() {
        bail!(
            "apt-get finished but these are still not installed: {}",
            still.join(" ")
        );
    }
    Ok(())
}

/// `apt-get update`, turning an unreachable mirror into one clear line.
fn apt_update() -> Result<()> {
    eprintln!("[setup] apt-get update");
    let mut child = Command::new("apt-get")
        .args(["update", "-q"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running apt-get update")?;
    let stderr = child.stderr.take().context("apt-get's stderr")?;
    let mut failures = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.context("reading apt-get's stderr")?;
        eprintln!("{line}");
        let unreachable = [
            "Failed to fetch",
            "Could not resolve",
            "Temporary failure resolving",
            "Unable to connect",
            "Could not connect",
            "Connection failed",
        ];
        if unreachable.iter().any(|s| line.contains(s)) {
            failures.push(line);
        }
    }
    let status = child.wait().context("waiting for apt-get update")?;
    if let Some(first) = failures.first() {
        // apt-get exits 0 when it could not fetch (it keeps old lists).
        bail!(
            "cannot reach the package mirror: apt-get update says {}",
            first.trim()
        );
    }
    if !status.success() {
        bail!("apt-get update failed ({status})");
    }
    Ok(())
}

fn apt_get(args: &[&str]) -> Result<()> {
    eprintln!("[setup] apt-get {}", args.join(" "));
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?;
    if !status.success() {
        bail!("apt-get {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Prints, per task (or for `only`), the packages setup would install on
/// this host (`bare`: on a host with none of them), and the backports
/// source it would write. Touches nothing; needs no root.
pub fn dry_run(only: Option<Task>, bare: bool) -> Result<()> {
    let release = host::release(&host::os_release_path())?;
    println!(
        "host: {} ({}; apt sources in {})",
        release.pretty,
        if bare {
            "as if bare: nothing installed"
        } else {
            "what is missing now"
        },
        host::apt_dir().display()
    );
    let tasks: Vec<Task> = only.map_or_else(|| Task::REPORTED.to_vec(), |t| vec![t]);
    let mut backports = None;
    for task in tasks {
        let plan = Plan::new(task, bare)?;
        let names: Vec<&str> = plan.install.iter().map(|(_, p)| p.name).collect();
        if names.is_empty() {
            println!("{}: nothing to install", task.name());
        } else {
            println!("{}: {}", task.name(), names.join(" "));
            for line in plan.describe() {
                println!("{line}");
            }
        }
        if !matches!(plan.backports, Backports::NotNeeded) {
            backports = Some(plan.backports);
        }
    }
    match backports {
        Some(Backports::Write { path, paragraph }) => {
            println!("backports: would write {}:", path.display());
            for line in paragraph.lines() {
                println!("  {line}");
            }
        }
        Some(Backports::Present(file)) => {
            println!("backports: already served by {}", file.display());
        }
        Some(Backports::NotNeeded) | None => println!("backports: not needed"),
    }
    println!(
        "not installed by setup: Node.js >= 20.18.1 with npm (the npm SDK smoke test skips without it); \
         firecracker (in no registry; its tests skip without it)"
    );
    Ok(())
}

fn check_qemu_version() -> Result<()> {
    let output = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .context("qemu-system-x86_64 is not runnable (cargo xtask setup installs it)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let major = text
        .split_whitespace()
        .nth(3)
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse::<u32>().ok())
        .unwrap_or(0);
    if major < 8 {
        bail!(
            "QEMU 8 or newer is needed (microvm with PVH boot); found {:?}",
            text.lines().next()
        );
    }
    Ok(())
}

/// The host's Debian mirror (the URI of its `<codename> main` source), for
/// debootstrap; `None` where the host is not Debian or names none.
pub fn debian_mirror() -> Option<String> {
    let release = host::release(&host::os_release_path()).ok()?;
    let apt_dir = host::apt_dir();
    let sources = apt::sources(&apt_dir).ok()?;
    apt::mirror(&sources, &release.codename).map(|s| s.uri.clone())
}
