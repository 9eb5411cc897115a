//! Where the agent is and which API key to send: the flags, then the
//! environment (`PETREL_URL`; `PETREL_API_KEY`, else `E2B_API_KEY`), then
//! the config file, then the default URL `http://127.0.0.1:8080` and no
//! key.
//!
//! The config file is TOML with the keys `url` and `api_key`, at
//! `--config FILE` or else `$XDG_CONFIG_HOME/petrel/config.toml` (or
//! `~/.config/petrel/config.toml`). A missing default file is fine; a
//! missing `--config` file, a file that does not parse or an unknown key is
//! an error.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::Deserialize;

/// The URL used when nothing else names one.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// The keys of the config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub url: Option<String>,
    pub api_key: Option<String>,
}

/// What the CLI talks to, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub url: String,
    pub api_key: Option<String>,
}

/// What the flags and the environment said (clap reads `PETREL_URL` and
/// `PETREL_API_KEY` into the flags' values).
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub url: Option<String>,
    pub api_key: Option<String>,
    /// `E2B_API_KEY`.
    pub e2b_api_key: Option<String>,
    /// `--config`.
    pub config: Option<PathBuf>,
    /// `XDG_CONFIG_HOME`.
    pub xdg_config_home: Option<PathBuf>,
    /// `HOME`.
    pub home: Option<PathBuf>,
}

impl Sources {
    /// `E2B_API_KEY`, `XDG_CONFIG_HOME` and `HOME` from the environment.
    #[must_use]
    pub fn with_environment(mut self) -> Self {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        self.e2b_api_key = var("E2B_API_KEY").and_then(|v| v.into_string().ok());
        self.xdg_config_home = var("XDG_CONFIG_HOME").map(PathBuf::from);
        self.home = var("HOME").map(PathBuf::from);
        self
    }

    /// The config file to read and whether it must exist.
    fn config_file(&self) -> Option<(PathBuf, bool)> {
        if let Some(path) = &self.config {
            return Some((path.clone(), true));
        }
        let dir = self
            .xdg_config_home
            .clone()
            .or_else(|| self.home.as_ref().map(|home| home.join(".config")))?;
        Some((dir.join("petrel").join("config.toml"), false))
    }

    /// Flag > environment > file > default.
    pub fn resolve(self) -> Result<Settings> {
        let file = match self.config_file() {
            Some((path, required)) => read_file(&path, required)?,
            None => FileConfig::default(),
        };
        let non_empty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
        Ok(Settings {
            url: non_empty(self.url)
                .or_else(|| non_empty(file.url))
                .unwrap_or_else(|| DEFAULT_URL.to_owned()),
            api_key: non_empty(self.api_key)
                .or_else(|| non_empty(self.e2b_api_key))
                .or_else(|| non_empty(file.api_key)),
        })
    }
}

fn read_file(path: &Path, required: bool) -> Result<FileConfig> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound && !required => {
            return Ok(FileConfig::default());
        }
        Err(err) => {
            return Err(err).with_context(|| format!("reading config file {}", path.display()));
        }
    };
    toml::from_str(&text).map_err(|err| {
        anyhow::anyhow!(
            "config file {}: {}",
            path.display(),
            err.message().trim_end()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("config.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn flag_beats_environment_beats_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            dir.path(),
            "url = \"http://file:1\"\napi_key = \"file-key\"\n",
        );
        let sources = Sources {
            url: Some("http://flag:1".into()),
            api_key: None,
            e2b_api_key: Some("e2b-key".into()),
            config: Some(file),
            ..Sources::default()
        };

        let settings = sources.resolve().unwrap();

        assert_eq!(
            settings,
            Settings {
                url: "http://flag:1".into(),
                api_key: Some("e2b-key".into()),
            }
        );
    }

    #[test]
    fn petrel_api_key_beats_e2b_api_key() {
        let sources = Sources {
            api_key: Some("petrel-key".into()),
            e2b_api_key: Some("e2b-key".into()),
            ..Sources::default()
        };

        let settings = sources.resolve().unwrap();

        assert_eq!(settings.api_key.as_deref(), Some("petrel-key"));
    }

    #[test]
    fn file_under_xdg_config_home_fills_what_flags_leave_out() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("petrel")).unwrap();
        write(
            &dir.path().join("petrel"),
            "url = \"http://file:2\"\napi_key = \"k\"\n",
        );
        let sources = Sources {
            xdg_config_home: Some(dir.path().to_path_buf()),
            home: Some("/nonexistent".into()),
            ..Sources::default()
        };

        let settings = sources.resolve().unwrap();

        assert_eq!(settings.url, "http://file:2");
        assert_eq!(settings.api_key.as_deref(), Some("k"));
    }

    #[test]
    fn nothing_configured_means_the_default_url_and_no_key() {
        let sources = Sources {
            home: Some("/nonexistent".into()),
            ..Sources::default()
        };

        let settings = sources.resolve().unwrap();

        assert_eq!(
            settings,
            Settings {
                url: DEFAULT_URL.into(),
                api_key: None
            }
        );
    }

    #[test]
    fn missing_explicit_config_file_is_an_error() {
        let sources = Sources {
            config: Some("/nonexistent/petrel.toml".into()),
            ..Sources::default()
        };

        let err = sources.resolve().unwrap_err();

        assert!(
            format!("{err:#}").contains("/nonexistent/petrel.toml"),
            "{err:#}"
        );
    }

    #[test]
    fn unknown_key_in_the_config_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "uri = \"http://typo:1\"\n");
        let sources = Sources {
            config: Some(file),
            ..Sources::default()
        };

        let err = sources.resolve().unwrap_err();

        assert!(format!("{err:#}").contains("uri"), "{err:#}");
    }
}
