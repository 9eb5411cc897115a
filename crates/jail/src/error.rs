use std::path::PathBuf;

/// What went wrong while preparing a jail or managing a cgroup, naming the
/// resource involved.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("jail path {0} contains a NUL byte or is not absolute")]
    BadPath(PathBuf),
    #[error("no free VMM uid in {first}..{end} (all in use by running processes)")]
    NoFreeUid { first: u32, end: u32 },
    #[error("cgroups unusable: {0}")]
    NoCgroups(String),
}

impl JailError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            what,
            path: path.into(),
            source,
        }
    }
}
