//! `host-agent install --uninstall [--purge]`: stop and disable the
//! service, remove what installs made; `--purge` also destroys the
//! sandboxes of the data dir (the agent leaves their VMs running when it
//! stops) and removes it.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use host_agent::AgentConfig;
use sandbox_core::{BackendKind, Hypervisor, ListFilter, Manager, ManagerConfig, QemuBackend};

use super::{
    CONFIG_DIR, CONFIG_PATH, DATA_DIR, Layout, MANIFEST_PATH, Made, Manifest, SAVED_CONFIG,
    SAVED_MANIFEST, SERVICE, UNIT_PATH, push_new, systemctl, systemd_running, write_file,
};

/// Directories a data dir must not be (nor be above): `--purge` removes
/// the data dir recursively.
const SYSTEM_DIRS: &[&str] = &[
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/home",
    "/lib",
    "/lib64",
    "/media",
    "/mnt",
    "/opt",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/srv",
    "/sys",
    "/tmp",
    "/usr",
    "/usr/local",
    "/var",
    "/var/cache",
    "/var/lib",
    "/var/log",
    "/var/tmp",
];

pub(super) async fn run(layout: &Layout, purge: bool) -> Result<()> {
    let manifest = Manifest::read(layout)?;
    let config = read_config(layout);
    let systemd = layout.live && systemd_running();
    if systemd && layout.host(UNIT_PATH).exists() {
        systemctl(&["disable", "--now", SERVICE])
            .context("stopping and disabling the service (nothing was removed)")?;
    } else if layout.live {
        println!(
            "systemd is not running here (no /run/systemd/system): stop any `host-agent serve` of this install yourself"
        );
    }

    let mut removed = Vec::new();
    if purge {
        purge_data(layout, &config, &mut removed).await?;
    } else {
        save_for_later(layout, &config, manifest.as_ref())?;
    }
    let mut errors = Vec::new();
    let mut files = match &manifest {
        Some(manifest) => manifest.files.clone(),
        None => vec![layout.binary()],
    };
    push_new(&mut files, PathBuf::from(UNIT_PATH));
    push_new(&mut files, PathBuf::from(CONFIG_PATH));
    push_new(&mut files, PathBuf::from(MANIFEST_PATH));
    for file in files {
        let here = layout.host(&file);
        match std::fs::remove_file(&here) {
            Ok(()) => removed.push(here),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => errors.push(format!("removing {}: {err}", here.display())),
        }
    }
    let mut dirs = manifest
        .as_ref()
        .map(|m| m.dirs.clone())
        .unwrap_or_default();
    push_new(&mut dirs, PathBuf::from(CONFIG_DIR));
    if purge && let Some(manifest) = &manifest {
        for dir in &manifest.data_dirs {
            push_new(&mut dirs, dir.clone());
        }
    }
    // Innermost first; only empty ones go (a parent may hold other things).
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for dir in dirs {
        let here = layout.host(&dir);
        match std::fs::remove_dir(&here) {
            Ok(()) => removed.push(here),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) if dir == Path::new(CONFIG_DIR) => {
                println!("kept {}: {err}", here.display());
            }
            Err(_) => {}
        }
    }
    if systemd {
        systemctl(&["daemon-reload"])?;
    }

    if removed.is_empty() {
        println!(
            "nothing to remove: the Petrel host agent is not installed below {}",
            layout.root.display()
        );
    } else {
        println!("removed:");
        for path in &removed {
            println!("  {}", path.display());
        }
    }
    if !purge {
        report_kept_data(layout, &config);
    }
    if !errors.is_empty() {
        bail!("uninstall incomplete: {}", errors.join("; "));
    }
    Ok(())
}

/// The installed config, else the one a plain uninstall saved in the data
/// dir, else the defaults (with a warning when a file is unreadable).
fn read_config(layout: &Layout) -> AgentConfig {
    let saved = layout.host(DATA_DIR).join(SAVED_CONFIG);
    for path in [layout.host(CONFIG_PATH), saved] {
        match std::fs::read_to_string(&path) {
            Ok(text) => match toml::from_str(&text) {
                Ok(config) => return config,
                Err(err) => println!("warning: {} does not parse ({err})", path.display()),
            },
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => println!("warning: cannot read {} ({err})", path.display()),
        }
    }
    AgentConfig::default()
}

/// Copies the installed config into the data dir that stays, and the
/// manifest's `data` lines (the data dir's parents the install made) into
/// the install's data dir.
fn save_for_later(
    layout: &Layout,
    config: &AgentConfig,
    manifest: Option<&Manifest>,
) -> Result<()> {
    let data_dir = layout.host(&config.data_dir);
    if let Ok(text) = std::fs::read(layout.host(CONFIG_PATH))
        && data_dir.is_dir()
    {
        write_file(
            &data_dir.join(SAVED_CONFIG),
            &text,
            0o600,
            &mut Made::default(),
        )?;
    }
    let own = layout.host(DATA_DIR);
    if let Some(manifest) = manifest.filter(|m| !m.data_dirs.is_empty())
        && own.is_dir()
    {
        let data = Manifest {
            data_dirs: manifest.data_dirs.clone(),
            ..Manifest::default()
        };
        write_file(
            &own.join(SAVED_MANIFEST),
            data.render()?.as_bytes(),
            0o600,
            &mut Made::default(),
        )?;
    }
    Ok(())
}

fn report_kept_data(layout: &Layout, config: &AgentConfig) {
    let mut dirs = vec![PathBuf::from(DATA_DIR)];
    push_new(&mut dirs, config.data_dir.clone());
    for dir in dirs {
        let here = layout.host(&dir);
        if !here.is_dir() {
            continue;
        }
        let sandboxes = std::fs::read_dir(here.join("sandboxes")).map_or(0, Iterator::count);
        let saved = if here.join(SAVED_CONFIG).is_file() {
            format!("; the config is saved there as {SAVED_CONFIG}")
        } else {
            String::new()
        };
        println!(
            "kept the data dir {} (templates, snapshots, {sandboxes} sandbox dir(s): the VMs of running ones keep running{saved})",
            here.display()
        );
        println!(
            "  to destroy its sandboxes and remove it: host-agent install --uninstall --purge{}",
            root_flag(layout)
        );
    }
}

fn root_flag(layout: &Layout) -> String {
    if layout.live {
        String::new()
    } else {
        format!(" --root {}", layout.root.display())
    }
}

/// Destroys the sandboxes of the data dirs (the install's and the config's)
/// and removes them.
async fn purge_data(
    layout: &Layout,
    config: &AgentConfig,
    removed: &mut Vec<PathBuf>,
) -> Result<()> {
    let mut dirs = vec![PathBuf::from(DATA_DIR)];
    push_new(&mut dirs, config.data_dir.clone());
    for dir in dirs {
        let here = layout.host(&dir);
        if here.symlink_metadata().is_err() {
            continue;
        }
        check_purgeable(&dir, &here)?;
        if here.join("petrel.db").exists() {
            let destroyed = destroy_sandboxes(&here, config).await?;
            println!(
                "destroyed {destroyed} sandbox(es) recorded in {}",
                here.display()
            );
        }
        std::fs::remove_dir_all(&here)
            .with_context(|| format!("removing the data dir {}", here.display()))?;
        removed.push(here);
    }
    Ok(())
}

/// Refuses to remove, recursively, a data dir that is not clearly the
/// agent's: the install's own, or one holding `petrel.db` that is no
/// system directory (nor above one).
fn check_purgeable(dir: &Path, here: &Path) -> Result<()> {
    if dir == Path::new(DATA_DIR) {
        return Ok(());
    }
    let normal = dir
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .count();
    let system = SYSTEM_DIRS.iter().any(|s| Path::new(s).starts_with(dir));
    let parent = dir.components().any(|c| c == Component::ParentDir);
    if !dir.is_absolute() || normal < 2 || system || parent {
        bail!(
            "refusing to remove data_dir {} (too close to the filesystem root); nothing of the data was removed",
            here.display()
        );
    }
    if !here.join("petrel.db").exists() {
        bail!(
            "refusing to remove data_dir {}: it has no petrel.db, so it may not be the agent's",
            here.display()
        );
    }
    Ok(())
}

/// Takes over the sandboxes recorded in `data_dir` (as the next agent
/// start would) and destroys every one: VM, network, disk, files.
async fn destroy_sandboxes(data_dir: &Path, config: &AgentConfig) -> Result<usize> {
    let rootfs_provider = config.rootfs_provider.and_then(|choice| {
        sandbox_core::choose_provider(BackendKind::Qemu, Some(choice.as_str()))
            .ok()
            .map(|(provider, _)| provider)
    });
    let manager_config = ManagerConfig {
        // The slots `serve` used, so their namespaces are taken over and removed.
        network: host_agent::server::network_pool(config)?,
        rootfs_provider,
        ..ManagerConfig::new(data_dir)
    };
    // Adopting a running QEMU does not depend on its accelerator.
    let hypervisor: Arc<dyn Hypervisor> = Arc::new(QemuBackend::new(qemu_vmm::Accel::Tcg));
    let manager = Manager::open(manager_config, hypervisor)
        .await
        .with_context(|| format!("opening the sandboxes of {}", data_dir.display()))?;
    let sandboxes = manager.list(&ListFilter::default());
    let mut failures = Vec::new();
    for info in &sandboxes {
        if let Err(err) = manager.destroy(&info.id).await {
            failures.push(format!("{}: {err}", info.id));
        }
    }
    manager
        .shutdown()
        .await
        .with_context(|| format!("closing the sandbox store of {}", data_dir.display()))?;
    if !failures.is_empty() {
        bail!(
            "destroying the sandboxes of {} failed ({}); the data dir was kept",
            data_dir.display(),
            failures.join("; ")
        );
    }
    Ok(sandboxes.len())
}
