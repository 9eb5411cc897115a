//! The files `install` writes: the unit and the config of `packaging/`
//! (embedded, so they are the same text), with the installed binary's path,
//! the API keys and the images filled in.

use std::io::Read as _;
use std::path::Path;

use anyhow::{Context, Result, bail};

/// `packaging/petrel-host-agent.service`.
pub const UNIT_TEMPLATE: &str = include_str!("../../../../packaging/petrel-host-agent.service");

/// `packaging/host-agent.toml`: every key `serve` reads, commented, with
/// its default.
pub const CONFIG_TEMPLATE: &str = include_str!("../../../../packaging/host-agent.toml");

/// The binary the template's `ExecStart=` names.
pub const TEMPLATE_BINARY: &str = "/usr/local/bin/host-agent";

/// The unit, starting `binary` (a path on the installed system).
pub fn unit(binary: &Path) -> Result<String> {
    let text = binary
        .to_str()
        .with_context(|| format!("the binary path {} is not UTF-8", binary.display()))?;
    // Characters systemd would read as quoting, specifiers or separators.
    if let Some(bad) = text
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || "\"'\\%$;".contains(*c))
    {
        bail!("the binary path {text} contains {bad:?}, which ExecStart= would not take literally");
    }
    let exec = format!("\nExecStart={TEMPLATE_BINARY} serve ");
    if UNIT_TEMPLATE.matches(&exec).count() != 1 {
        bail!("the embedded unit has no single `ExecStart={TEMPLATE_BINARY} serve` line");
    }
    Ok(UNIT_TEMPLATE.replace(&exec, &format!("\nExecStart={text} serve ")))
}

/// What `install` puts into the config beyond the template's defaults.
#[derive(Debug)]
pub struct ConfigValues<'a> {
    pub api_keys: &'a [String],
    pub kernel: Option<&'a Path>,
    pub rootfs: Option<&'a Path>,
}

/// The config: the template with `api_keys` (and `kernel`, `rootfs` when
/// given) uncommented and set.
pub fn config(values: &ConfigValues<'_>) -> Result<String> {
    let keys = toml::Value::Array(
        values
            .api_keys
            .iter()
            .map(|k| toml::Value::String(k.clone()))
            .collect(),
    );
    let mut text = set_key(CONFIG_TEMPLATE, "api_keys", &keys.to_string())?;
    for (key, path) in [("kernel", values.kernel), ("rootfs", values.rootfs)] {
        if let Some(path) = path {
            let path = path
                .to_str()
                .with_context(|| format!("the {key} path {} is not UTF-8", path.display()))?;
            text = set_key(
                &text,
                key,
                &toml::Value::String(path.to_string()).to_string(),
            )?;
        }
    }
    Ok(text)
}

/// Replaces the one commented `#key = ...` line of `text` with
/// `key = value`.
fn set_key(text: &str, key: &str, value: &str) -> Result<String> {
    let commented = format!("#{key} = ");
    let mut found = 0;
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            if line.starts_with(&commented) {
                found += 1;
                format!("{key} = {value}")
            } else {
                line.to_string()
            }
        })
        .collect();
    if found != 1 {
        bail!("the embedded config has {found} `{commented}...` lines, not one");
    }
    Ok(lines.join("\n") + "\n")
}

/// A fresh E2B API key: `e2b_` and 32 hex digits from the OS RNG.
pub fn generate_api_key() -> Result<String> {
    const RNG: &str = "/dev/urandom";
    let mut bytes = [0u8; 16];
    std::fs::File::open(RNG)
        .and_then(|mut rng| rng.read_exact(&mut bytes))
        .with_context(|| format!("reading {RNG} for an API key"))?;
    Ok(format!(
        "e2b_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

/// Whether `key` looks like an E2B API key (`e2b_<hex>`), as the SDKs
/// require.
pub fn valid_api_key(key: &str) -> bool {
    key.strip_prefix("e2b_")
        .is_some_and(|hex| !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use host_agent::AgentConfig;

    /// The template with every `#key = value` line uncommented.
    fn uncommented(text: &str) -> String {
        text.lines()
            .map(|line| match line.strip_prefix('#') {
                Some(rest) if rest.split_once(" = ").is_some_and(|(k, _)| is_key(k)) => rest,
                Some(rest)
                    if rest
                        .strip_prefix('[')
                        .and_then(|r| r.strip_suffix(']'))
                        .is_some_and(is_key) =>
                {
                    rest
                }
                _ => line,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn is_key(word: &str) -> bool {
        !word.is_empty() && word.chars().all(|c| c.is_ascii_lowercase() || c == '_')
    }

    #[test]
    fn template_documents_every_key_with_its_default() {
        let parsed: AgentConfig = toml::from_str(&uncommented(CONFIG_TEMPLATE)).unwrap();
        // Exhaustive: a new field does not compile until it is listed here
        // (and so documented in packaging/host-agent.toml).
        let AgentConfig {
            listen,
            sandbox_listen: _,
            sandbox_domain: _,
            data_dir,
            vmm,
            accel,
            default_vcpus,
            default_memory_mib,
            max_sandboxes,
            max_paused,
            paused_ttl_s,
            max_snapshots,
            max_snapshot_bytes,
            exec_output_limit,
            max_concurrent_uploads,
            network,
            net_slot_first,
            net_slot_count,
            net_max_connections,
            net_new_connections_per_sec,
            net_allow_smtp,
            net_spares,
            warm_templates,
            pool_size,
            template_pool_sizes: _,
            rootfs_provider: _,
            api_keys,
            api_key_sha256,
            allowed_hosts,
            allowed_origins,
            kernel: _,
            rootfs: _,
        } = AgentConfig::default();

        assert_eq!(parsed.listen, listen);
        assert_eq!(parsed.data_dir, data_dir);
        assert_eq!(parsed.vmm, vmm);
        assert_eq!(parsed.accel, accel);
        assert_eq!(parsed.default_vcpus, default_vcpus);
        assert_eq!(parsed.default_memory_mib, default_memory_mib);
        assert_eq!(parsed.max_sandboxes, max_sandboxes);
        assert_eq!(parsed.max_paused, max_paused);
        assert_eq!(parsed.paused_ttl_s, paused_ttl_s);
        assert_eq!(parsed.max_snapshots, max_snapshots);
        assert_eq!(parsed.max_snapshot_bytes, max_snapshot_bytes);
        assert_eq!(parsed.exec_output_limit, exec_output_limit);
        assert_eq!(parsed.max_concurrent_uploads, max_concurrent_uploads);
        assert_eq!(parsed.network, network);
        assert_eq!(parsed.net_slot_first, net_slot_first);
        assert_eq!(parsed.net_slot_count, net_slot_count);
        assert_eq!(parsed.net_spares, net_spares);
        assert_eq!(parsed.net_max_connections, net_max_connections);
        assert_eq!(
            parsed.net_new_connections_per_sec,
            net_new_connections_per_sec
        );
        assert_eq!(parsed.net_allow_smtp, net_allow_smtp);
        assert_eq!(parsed.warm_templates, warm_templates);
        assert_eq!(parsed.pool_size, pool_size);
        assert_eq!(parsed.template_pool_sizes.get("base"), Some(&4));
        assert_eq!(parsed.api_keys, api_keys);
        assert_eq!(parsed.api_key_sha256, api_key_sha256);
        assert_eq!(parsed.allowed_hosts, allowed_hosts);
        assert_eq!(parsed.allowed_origins, allowed_origins);
        // Keys without a default show an example.
        assert!(parsed.sandbox_listen.is_some());
        assert!(parsed.rootfs_provider.is_some());
        assert!(parsed.kernel.is_some() && parsed.rootfs.is_some());
    }

    #[test]
    fn template_as_shipped_is_the_default_config() {
        let parsed: AgentConfig = toml::from_str(CONFIG_TEMPLATE).unwrap();

        assert_eq!(
            format!("{parsed:?}"),
            format!("{:?}", AgentConfig::default())
        );
    }

    #[test]
    fn config_sets_keys_and_images_and_parses() {
        let keys = vec!["e2b_00ff".to_string(), "e2b_abcd".to_string()];
        let values = ConfigValues {
            api_keys: &keys,
            kernel: Some(Path::new("/images/vm linux \"1\"")),
            rootfs: Some(Path::new("/images/rootfs.ext4")),
        };

        let text = config(&values).unwrap();
        let parsed: AgentConfig = toml::from_str(&text).unwrap();

        assert_eq!(parsed.api_keys, keys);
        assert_eq!(
            parsed.kernel.as_deref(),
            Some(Path::new("/images/vm linux \"1\""))
        );
        assert_eq!(
            parsed.rootfs.as_deref(),
            Some(Path::new("/images/rootfs.ext4"))
        );
        assert_eq!(parsed.listen, AgentConfig::default().listen);
    }

    #[test]
    fn config_without_images_leaves_them_commented() {
        let keys = vec!["e2b_01".to_string()];
        let values = ConfigValues {
            api_keys: &keys,
            kernel: None,
            rootfs: None,
        };

        let parsed: AgentConfig = toml::from_str(&config(&values).unwrap()).unwrap();

        assert_eq!(parsed.kernel, None);
        assert_eq!(parsed.rootfs, None);
    }

    #[test]
    fn unit_names_the_installed_binary() {
        let text = unit(Path::new("/opt/petrel/bin/host-agent")).unwrap();

        assert!(text.contains(
            "\nExecStart=/opt/petrel/bin/host-agent serve --config /etc/petrel/host-agent.toml\n"
        ));
        assert!(!text.contains(TEMPLATE_BINARY));
        assert_eq!(unit(Path::new(TEMPLATE_BINARY)).unwrap(), UNIT_TEMPLATE);
    }

    #[test]
    fn unit_refuses_paths_systemd_would_reinterpret() {
        for bad in ["/opt/my bin/host-agent", "/opt/%h/host-agent", "/opt/a;b"] {
            let err = unit(Path::new(bad)).unwrap_err();

            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn unit_keeps_vms_running_at_stop() {
        let lines: Vec<&str> = UNIT_TEMPLATE.lines().collect();

        for wanted in [
            "Type=simple",
            "KillMode=process",
            "Restart=on-failure",
            "After=network-online.target",
            "StateDirectory=petrel",
            "StateDirectoryMode=0700",
            "TasksMax=infinity",
        ] {
            assert!(lines.contains(&wanted), "missing {wanted}");
        }
        for forbidden in [
            "ProtectSystem=",
            "PrivateTmp=",
            "PrivateDevices=",
            "PrivateNetwork=",
        ] {
            assert!(
                !lines.iter().any(|l| l.starts_with(forbidden)),
                "{forbidden} would break the agent"
            );
        }
    }

    #[test]
    fn generated_api_keys_are_fresh_and_well_formed() {
        let first = generate_api_key().unwrap();
        let second = generate_api_key().unwrap();

        assert_eq!(first.len(), 4 + 32);
        assert!(valid_api_key(&first), "{first}");
        assert_ne!(first, second);
    }

    #[test]
    fn api_key_validation() {
        assert!(valid_api_key("e2b_0123456789abcdef"));
        assert!(!valid_api_key("e2b_"));
        assert!(!valid_api_key("e2b_xyz"));
        assert!(!valid_api_key("0123abcd"));
    }
}
