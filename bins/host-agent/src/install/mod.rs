//! `host-agent install`: the agent as a systemd service (the binary, a unit,
//! a documented config, the data dir), and `--uninstall` to take it away.
//!
//! Everything happens below `--root` (a filesystem prefix, `/` by default),
//! with paths as the installed system sees them; only with `--root /` and a
//! running systemd does it call `systemctl`, otherwise it prints the
//! commands. What an install created is listed in a manifest beside the
//! config, so `--uninstall` removes exactly that (directories only when it
//! made them and they are empty again).

mod render;
mod uninstall;

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The systemd service's name.
pub const SERVICE: &str = "petrel-host-agent";
const UNIT_PATH: &str = "/etc/systemd/system/petrel-host-agent.service";
const UNIT_DIR: &str = "/etc/systemd/system";
const CONFIG_DIR: &str = "/etc/petrel";
const CONFIG_PATH: &str = "/etc/petrel/host-agent.toml";
const MANIFEST_PATH: &str = "/etc/petrel/install.manifest";
const DATA_DIR: &str = "/var/lib/petrel";
/// What a plain uninstall leaves in the data dir it keeps, for a later
/// `--purge` or install: the config (its network slots) and the manifest's
/// `data` lines.
const SAVED_CONFIG: &str = "config-at-uninstall.toml";
const SAVED_MANIFEST: &str = "install.manifest";
const BINARY_NAME: &str = "host-agent";

#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// Stop and disable the service, remove the unit, the config and the
    /// binary; the data dir stays (see --purge).
    #[arg(long)]
    pub uninstall: bool,
    /// With --uninstall: also destroy the sandboxes recorded in the data dir
    /// (their VMs keep running when the service stops) and remove it.
    #[arg(long, requires = "uninstall")]
    pub purge: bool,
    /// Replace an existing config (its API keys and edits are lost).
    #[arg(long, conflicts_with = "uninstall")]
    pub force: bool,
    /// Filesystem prefix to install into; systemd is only used with `/`.
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// Where the binary goes, as the installed system sees it (--uninstall:
    /// where to look when no manifest says).
    #[arg(long, default_value = "/usr/local/bin")]
    pub bin_dir: PathBuf,
    /// The base template's kernel, written into the config (default:
    /// PETREL_KERNEL).
    #[arg(long, env = "PETREL_KERNEL")]
    pub kernel: Option<PathBuf>,
    /// The base template's rootfs, written into the config (default:
    /// PETREL_ROOTFS).
    #[arg(long, env = "PETREL_ROOTFS")]
    pub rootfs: Option<PathBuf>,
    /// E2B API key for the config (repeatable, e2b_<hex>; default: a new
    /// random one).
    #[arg(long = "api-key", conflicts_with = "uninstall")]
    pub api_keys: Vec<String>,
}

/// Runs `install` or `install --uninstall`.
pub async fn run(args: &InstallArgs) -> Result<()> {
    let layout = Layout::new(&args.root, &args.bin_dir)?;
    if layout.live && !nix::unistd::geteuid().is_root() {
        bail!(
            "installing into / needs root (it writes {UNIT_DIR}, {CONFIG_DIR}, {} and {DATA_DIR}): run it with sudo, or pass --root DIR",
            args.bin_dir.display()
        );
    }
    if args.uninstall {
        uninstall::run(&layout, args.purge).await
    } else {
        install(args, &layout)
    }
}

/// Where things go: paths of the installed system, below `root` here.
#[derive(Debug)]
struct Layout {
    root: PathBuf,
    bin_dir: PathBuf,
    /// `root` is this system's `/`.
    live: bool,
}

impl Layout {
    fn new(root: &Path, bin_dir: &Path) -> Result<Self> {
        let canonical = std::fs::canonicalize(root)
            .with_context(|| format!("--root {}: cannot resolve it", root.display()))?;
        if !canonical.is_dir() {
            bail!("--root {} is not a directory", root.display());
        }
        if !bin_dir.is_absolute() || bin_dir.components().any(|c| c == Component::ParentDir) {
            bail!(
                "--bin-dir {} must be an absolute path without `..`",
                bin_dir.display()
            );
        }
        Ok(Self {
            live: canonical == Path::new("/"),
            root: canonical,
            bin_dir: bin_dir.to_path_buf(),
        })
    }

    /// Where the installed system's `path` (absolute) is here.
    fn host(&self, path: impl AsRef<Path>) -> PathBuf {
        let path = path.as_ref();
        self.root.join(path.strip_prefix("/").unwrap_or(path))
    }

    fn binary(&self) -> PathBuf {
        self.bin_dir.join(BINARY_NAME)
    }
}

/// What installs made (paths of the installed system), kept in
/// [`MANIFEST_PATH`]: `dir`, `data` (the data dir and its parents, kept by
/// a plain uninstall) and `file` lines.
#[derive(Debug, Default, PartialEq, Eq)]
struct Manifest {
    dirs: Vec<PathBuf>,
    data_dirs: Vec<PathBuf>,
    files: Vec<PathBuf>,
}

impl Manifest {
    /// The install's manifest, else the one a plain uninstall saved in
    /// the data dir.
    fn read(layout: &Layout) -> Result<Option<Self>> {
        match Self::read_from(&layout.host(MANIFEST_PATH))? {
            Some(manifest) => Ok(Some(manifest)),
            None => Self::read_from(&layout.host(DATA_DIR).join(SAVED_MANIFEST)),
        }
    }

    fn read_from(path: &Path) -> Result<Option<Self>> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        };
        let mut manifest = Self::default();
        for line in text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (kind, entry) = line
                .split_once(' ')
                .with_context(|| format!("{}: bad line {line:?}", path.display()))?;
            let list = match kind {
                "dir" => &mut manifest.dirs,
                "data" => &mut manifest.data_dirs,
                "file" => &mut manifest.files,
                _ => bail!("{}: bad line {line:?}", path.display()),
            };
            push_new(list, PathBuf::from(entry));
        }
        Ok(Some(manifest))
    }

    fn render(&self) -> Result<String> {
        let mut text = String::from(
            "# Made by `host-agent install`; `host-agent install --uninstall` removes it.\n",
        );
        for (kind, list) in [
            ("dir", &self.dirs),
            ("data", &self.data_dirs),
            ("file", &self.files),
        ] {
            for path in list {
                let entry = path
                    .to_str()
                    .filter(|s| !s.contains('\n'))
                    .with_context(|| format!("cannot record the path {}", path.display()))?;
                text.push_str(&format!("{kind} {entry}\n"));
            }
        }
        Ok(text)
    }
}

fn push_new(list: &mut Vec<PathBuf>, path: PathBuf) {
    if !list.contains(&path) {
        list.push(path);
    }
}

/// What this run made, undone if a later step fails.
#[derive(Debug, Default)]
struct Made {
    dirs: Vec<PathBuf>,
    files: Vec<PathBuf>,
}

impl Made {
    fn undo(&self) {
        for path in self.files.iter().rev() {
            let _ = std::fs::remove_file(path);
        }
        for path in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(path);
        }
    }
}

fn install(args: &InstallArgs, layout: &Layout) -> Result<()> {
    // Everything is checked before anything is written.
    let config_path = layout.host(CONFIG_PATH);
    let replacing = config_path.symlink_metadata().is_ok();
    if replacing && !args.force {
        bail!(
            "{} exists: not overwriting it (it holds the API keys and any edits), nothing was changed; pass --force to replace it, or run `host-agent install --uninstall` first",
            config_path.display()
        );
    }
    let kernel = args.kernel.as_deref().map(absolute).transpose()?;
    let rootfs = args.rootfs.as_deref().map(absolute).transpose()?;
    if kernel.is_some() != rootfs.is_some() {
        bail!("--kernel and --rootfs (PETREL_KERNEL, PETREL_ROOTFS) go together");
    }
    let api_keys = if args.api_keys.is_empty() {
        vec![render::generate_api_key()?]
    } else {
        if let Some(bad) = args.api_keys.iter().find(|k| !render::valid_api_key(k)) {
            bail!("--api-key {bad:?} is not e2b_<hex>, which the E2B SDKs require");
        }
        args.api_keys.clone()
    };
    let unit = render::unit(&layout.binary())?;
    let config = render::config(&render::ConfigValues {
        api_keys: &api_keys,
        kernel: kernel.as_deref(),
        rootfs: rootfs.as_deref(),
    })?;
    let mut manifest = Manifest::read(layout)?.unwrap_or_default();
    let systemd = layout.live && systemd_running();
    let was_active = systemd && service_active();

    let mut made = Made::default();
    let written = write_all(layout, &unit, &config, &mut manifest, &mut made);
    if let Err(err) = written {
        made.undo();
        return Err(err.context("installing failed; what this run had made was removed"));
    }
    // Merged into the new manifest; the config is the new one.
    for saved in [SAVED_MANIFEST, SAVED_CONFIG] {
        let _ = std::fs::remove_file(layout.host(DATA_DIR).join(saved));
    }

    println!("installed the Petrel host agent:");
    let written = [
        (layout.binary(), "the binary (0755)"),
        (PathBuf::from(UNIT_PATH), "the systemd unit (0644)"),
        (
            PathBuf::from(CONFIG_PATH),
            "the config (0600): every key, documented",
        ),
        (PathBuf::from(DATA_DIR), "the data dir (0700)"),
    ]
    .map(|(path, what)| (layout.host(path).display().to_string(), what));
    let width = written
        .iter()
        .map(|(path, _)| path.len())
        .max()
        .unwrap_or(0);
    for (path, what) in written {
        println!("  {path:<width$}  {what}");
    }
    if replacing {
        println!("  (--force: the earlier config was replaced)");
    }
    if args.api_keys.is_empty() {
        println!(
            "the config's api_keys holds a new random E2B API key (readable by root only): grep api_keys {}",
            config_path.display()
        );
    }
    match (&kernel, &rootfs) {
        (Some(kernel), Some(rootfs)) => {
            for image in [kernel, rootfs] {
                if !image.exists() && !layout.host(image).exists() {
                    println!(
                        "warning: {} does not exist (the agent will refuse to start without it)",
                        image.display()
                    );
                }
            }
        }
        _ => println!(
            "note: no --kernel/--rootfs (nor PETREL_KERNEL/PETREL_ROOTFS): the agent has no `base` template until kernel and rootfs are set in {}",
            config_path.display()
        ),
    }
    if systemd {
        systemctl(&["daemon-reload"])?;
        systemctl(&["enable", "--now", SERVICE])
            .context("starting the service (the files are installed)")?;
        if was_active {
            // enable --now leaves a running service as it was.
            systemctl(&["restart", SERVICE])
                .context("restarting the service (the files are installed)")?;
        }
        println!("the service is enabled and started (its sandboxes survive restarts)");
    } else {
        if layout.live {
            println!("systemd is not running here (no /run/systemd/system); on a systemd host:");
        } else {
            println!(
                "installed below {}; on the system that boots from it:",
                layout.root.display()
            );
        }
        println!("  systemctl daemon-reload");
        println!("  systemctl enable --now {SERVICE}");
        println!(
            "or run it in the foreground: {} serve --config {CONFIG_PATH}",
            layout.binary().display()
        );
    }
    println!("status: systemctl status {SERVICE}");
    println!("logs:   journalctl -u {SERVICE} -f");
    println!("API:    http://127.0.0.1:8080 (`listen` in the config)");
    Ok(())
}

/// Makes the directories, then the binary, the unit, the config and the
/// manifest, recording in `made` what did not exist before.
fn write_all(
    layout: &Layout,
    unit: &str,
    config: &str,
    manifest: &mut Manifest,
    made: &mut Made,
) -> Result<()> {
    for dir in [
        layout.bin_dir.as_path(),
        Path::new(UNIT_DIR),
        Path::new(CONFIG_DIR),
    ] {
        for created in create_dirs(layout, dir, 0o755, made)? {
            push_new(&mut manifest.dirs, created);
        }
    }
    for created in create_dirs(layout, Path::new(DATA_DIR), 0o700, made)? {
        push_new(&mut manifest.data_dirs, created);
    }
    let data_dir = layout.host(DATA_DIR);
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} mode 0700", data_dir.display()))?;
    copy_binary(&layout.host(layout.binary()), made)?;
    write_file(&layout.host(UNIT_PATH), unit.as_bytes(), 0o644, made)?;
    write_file(&layout.host(CONFIG_PATH), config.as_bytes(), 0o600, made)?;
    for file in [
        layout.binary(),
        PathBuf::from(UNIT_PATH),
        PathBuf::from(CONFIG_PATH),
    ] {
        push_new(&mut manifest.files, file);
    }
    write_file(
        &layout.host(MANIFEST_PATH),
        manifest.render()?.as_bytes(),
        0o644,
        made,
    )
}

/// Creates `dir` (of the installed system) with `mode`, and its missing
/// parents with 0755; the ones it created, outermost first.
fn create_dirs(layout: &Layout, dir: &Path, mode: u32, made: &mut Made) -> Result<Vec<PathBuf>> {
    let mut created = Vec::new();
    let mut path = PathBuf::from("/");
    for component in dir.components().skip(1) {
        path.push(component);
        let here = layout.host(&path);
        if here.symlink_metadata().is_ok() {
            if !here.is_dir() {
                bail!("{} exists and is not a directory", here.display());
            }
            continue;
        }
        let mode = if path == dir { mode } else { 0o755 };
        std::fs::DirBuilder::new()
            .mode(mode)
            .create(&here)
            .with_context(|| format!("creating {}", here.display()))?;
        made.dirs.push(here.clone());
        // Not narrowed by the umask.
        std::fs::set_permissions(&here, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", here.display()))?;
        created.push(path.clone());
    }
    Ok(created)
}

/// Writes `path` atomically (a new file renamed over it), with `mode` from
/// the start.
fn write_file(path: &Path, contents: &[u8], mode: u32, made: &mut Made) -> Result<()> {
    let existed = path.symlink_metadata().is_ok();
    let temp = temp_beside(path)?;
    let written = write_new(&temp, contents, mode).and_then(|()| std::fs::rename(&temp, path));
    if let Err(err) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(err).with_context(|| format!("writing {}", path.display()));
    }
    if !existed {
        made.files.push(path.to_path_buf());
    }
    Ok(())
}

fn write_new(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Copies the running binary to `target` (atomically: a running agent's
/// binary can be replaced), unless it is already that file.
fn copy_binary(target: &Path, made: &mut Made) -> Result<()> {
    let current = std::env::current_exe().context("finding the running binary")?;
    if let (Ok(a), Ok(b)) = (
        std::fs::canonicalize(&current),
        std::fs::canonicalize(target),
    ) && a == b
    {
        return Ok(());
    }
    let existed = target.symlink_metadata().is_ok();
    let temp = temp_beside(target)?;
    // /proc/self/exe: the binary even if its file was replaced meanwhile.
    let copied = std::fs::copy("/proc/self/exe", &temp)
        .and_then(|_| std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o755)))
        .and_then(|()| std::fs::rename(&temp, target));
    if let Err(err) = copied {
        let _ = std::fs::remove_file(&temp);
        return Err(err)
            .with_context(|| format!("copying {} to {}", current.display(), target.display()));
    }
    if !existed {
        made.files.push(target.to_path_buf());
    }
    Ok(())
}

fn temp_beside(path: &Path) -> Result<PathBuf> {
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let mut temp = std::ffi::OsString::from(".");
    temp.push(name);
    temp.push(format!(".new-{}", std::process::id()));
    Ok(path.with_file_name(temp))
}

/// `path` made absolute (the service does not run in this directory).
fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))
}

/// Whether systemd is this system's init (as sd_booted(3) decides).
fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

fn service_active() -> bool {
    Command::new("systemctl")
        .args(["is-active", "--quiet", SERVICE])
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `systemctl ARGS`, saying so first.
fn systemctl(args: &[&str]) -> Result<()> {
    let shown = format!("systemctl {}", args.join(" "));
    println!("running: {shown}");
    let status = Command::new("systemctl")
        .args(args)
        .status()
        .with_context(|| format!("running {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status}); see systemctl status {SERVICE}");
    }
    Ok(())
}
