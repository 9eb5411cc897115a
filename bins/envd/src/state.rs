//! State shared by all handlers: settings changed by `POST /init`, the
//! process table and the filesystem watchers.

use crate::config::Config;
use crate::error::EnvdError;
use crate::filesystem::watch::WatcherRegistry;
use crate::process::manager::ProcessManager;
use crate::user::UserInfo;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};

/// Settings that `POST /init` may change at run time.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Token every protected request must carry in `X-Access-Token`.
    pub access_token: Option<String>,
    /// Variables added to the environment of every process.
    pub env_vars: BTreeMap<String, String>,
    /// User for requests that name none.
    pub default_user: String,
    /// Working directory for processes that name none (home when unset).
    pub default_workdir: Option<PathBuf>,
}

/// Everything the handlers share.
#[derive(Debug)]
pub struct AppState {
    /// The configuration the server was started with.
    pub config: Config,
    settings: RwLock<Settings>,
    /// Running processes.
    pub processes: ProcessManager,
    /// Polling watchers (`CreateWatcher` & co).
    pub watchers: WatcherRegistry,
}

/// Shared handle on [`AppState`].
pub type SharedState = Arc<AppState>;

impl AppState {
    /// Builds the state, resolving the default user (falling back to the
    /// current user, with a warning, when it does not exist).
    pub fn new(config: Config) -> Self {
        let default_user = match UserInfo::lookup(&config.default_user) {
            Ok(_) => config.default_user.clone(),
            Err(err) => {
                let fallback = UserInfo::current().map_or_else(|_| "root".to_owned(), |u| u.name);
                tracing::warn!(
                    wanted = %config.default_user,
                    using = %fallback,
                    error = %err,
                    "default user not found, using the current user"
                );
                fallback
            }
        };
        let settings = Settings {
            access_token: config.access_token.clone(),
            env_vars: BTreeMap::new(),
            default_user,
            default_workdir: config.default_workdir.clone(),
        };
        Self {
            config,
            settings: RwLock::new(settings),
            processes: ProcessManager::default(),
            watchers: WatcherRegistry::default(),
        }
    }

    /// A snapshot of the current settings.
    pub fn settings(&self) -> Settings {
        self.settings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Changes the settings under the write lock; returns what `change`
    /// returns (so a check and the change it guards are one step).
    pub fn update_settings<R>(&self, change: impl FnOnce(&mut Settings) -> R) -> R {
        let mut guard = self
            .settings
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        change(&mut guard)
    }

    /// The current access token, if any.
    pub fn access_token(&self) -> Option<String> {
        self.settings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .access_token
            .clone()
    }

    /// Resolves the user a request acts as: `name` when given and not empty,
    /// otherwise the default user.
    pub fn user(&self, name: Option<&str>) -> Result<UserInfo, EnvdError> {
        match name.filter(|n| !n.is_empty()) {
            Some(name) => UserInfo::lookup(name),
            None => UserInfo::lookup(&self.settings().default_user),
        }
    }
}
