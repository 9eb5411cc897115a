//! Names of Petrel's dm devices: `petrel-<sandbox>`.
//!
//! The sandbox id must be a [`SafeName`] (1-64 ASCII letters, digits, `.`,
//! `_`, `-`, starting with a letter or digit, no `..`), which keeps the dm
//! name well under the kernel's 127 bytes and free of `/`.

use safename::SafeName;

use crate::error::{DmSnapError, Result};

/// Every dm device this crate makes starts with this; `cleanup_stale`
/// removes every device that does.
pub const DEVICE_PREFIX: &str = "petrel-";

/// The dm device name of a sandbox's root disk: `petrel-<sandbox>`.
pub fn device_name(sandbox: &str) -> Result<String> {
    let id = SafeName::new(sandbox).map_err(|source| DmSnapError::InvalidSandboxId {
        id: sandbox.to_string(),
        source,
    })?;
    Ok(format!("{DEVICE_PREFIX}{}", id.as_str()))
}

/// Whether a dm device name is one of ours.
pub fn is_petrel_device(name: &str) -> bool {
    name.len() > DEVICE_PREFIX.len() && name.starts_with(DEVICE_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_name_prefixes_the_sandbox_id() {
        let name = device_name("sbx-1").unwrap();

        assert_eq!(name, "petrel-sbx-1");
    }

    #[test]
    fn device_name_rejects_a_slash() {
        let err = device_name("a/b").unwrap_err();

        assert!(
            matches!(err, DmSnapError::InvalidSandboxId { ref id, .. } if id == "a/b"),
            "{err}"
        );
    }

    #[test]
    fn device_name_rejects_the_empty_id() {
        let result = device_name("");

        assert!(result.is_err());
    }

    #[test]
    fn device_name_rejects_ids_too_long_for_dm() {
        let result = device_name(&"a".repeat(200));

        assert!(result.is_err());
    }

    #[test]
    fn only_prefixed_names_are_ours() {
        let names = [
            "petrel-a",
            "petrel-",
            "petrelx",
            "other-petrel-a",
            "docker-1",
        ];

        let ours: Vec<bool> = names.iter().map(|n| is_petrel_device(n)).collect();

        assert_eq!(ours, [true, false, false, false, false]);
    }
}
