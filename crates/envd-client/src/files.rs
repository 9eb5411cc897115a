//! Files in the guest: contents over `GET`/`POST /files`, metadata and
//! directories over the `filesystem.Filesystem` service.

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use envd_proto::filesystem as pb;
use futures::stream::{BoxStream, Stream, StreamExt as _, TryStreamExt as _};
use http::{Method, header};
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::Frame;
use tracing::debug;

use crate::{BoxError, EnvdClient, EnvdError, transport::encode_query_value};

/// Largest file [`EnvdClient::read_file`] collects in memory; bigger files
/// fail with [`EnvdError::TooLarge`]. [`EnvdClient::read_file_stream`] has
/// no such cap.
pub const MAX_FILE_READ: usize = 64 * 1024 * 1024;

/// The contents of a file as it arrives from envd, chunk by chunk.
pub type FileStream = BoxStream<'static, Result<Bytes, EnvdError>>;

/// A file being read: its length when envd said it, and its contents.
pub struct FileDownload {
    /// `Content-Length` of envd's reply.
    pub len: Option<u64>,
    pub body: FileStream,
}

impl std::fmt::Debug for FileDownload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileDownload")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

const FILES_PATH: &str = "/files";
const STAT: &str = "filesystem.Filesystem/Stat";
const MAKE_DIR: &str = "filesystem.Filesystem/MakeDir";
const LIST_DIR: &str = "filesystem.Filesystem/ListDir";
const REMOVE: &str = "filesystem.Filesystem/Remove";

/// What kind of filesystem entry a [`FileEntry`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FileKind {
    File,
    Directory,
    Symlink,
    /// envd sent no type or one this client does not know.
    Unknown,
}

/// A file, directory or symlink as envd describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// The last path component.
    pub name: String,
    /// The absolute path in the guest.
    pub path: String,
    pub kind: FileKind,
    /// Size in bytes.
    pub size: u64,
    /// `st_mode` permission bits (e.g. `0o644`).
    pub mode: u32,
    /// `ls -l` style permissions, e.g. `-rw-r--r--`.
    pub permissions: String,
    pub owner: String,
    pub group: String,
    pub modified: Option<SystemTime>,
    /// Where a symlink points.
    pub symlink_target: Option<String>,
    /// `user.e2b.*` extended attributes, without the prefix.
    pub metadata: BTreeMap<String, String>,
}

impl From<pb::EntryInfo> for FileEntry {
    fn from(entry: pb::EntryInfo) -> Self {
        let kind = match pb::FileType::try_from(entry.r#type) {
            Ok(pb::FileType::File) => FileKind::File,
            Ok(pb::FileType::Directory) => FileKind::Directory,
            Ok(pb::FileType::Symlink) => FileKind::Symlink,
            Ok(pb::FileType::Unspecified) | Err(_) => FileKind::Unknown,
        };
        let modified = entry.modified_time.and_then(|time| {
            let secs = u64::try_from(time.seconds).ok()?;
            let nanos = u32::try_from(time.nanos).ok()?;
            UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
        });
        Self {
            name: entry.name,
            path: entry.path,
            kind,
            size: u64::try_from(entry.size).unwrap_or(0),
            mode: entry.mode,
            permissions: entry.permissions,
            owner: entry.owner,
            group: entry.group,
            modified,
            symlink_target: entry.symlink_target,
            metadata: entry.metadata.into_iter().collect(),
        }
    }
}

impl EnvdClient {
    /// The contents of `path` (`GET /files`), read as `user` (envd's default
    /// user when `None`). A relative path is relative to the user's home.
    /// A missing file fails with code `not_found`; one over
    /// [`MAX_FILE_READ`] with [`EnvdError::TooLarge`] (stream big files
    /// with [`read_file_stream`](Self::read_file_stream)).
    pub async fn read_file(&self, path: &str, user: Option<&str>) -> Result<Vec<u8>, EnvdError> {
        let target = files_target(path, user);
        debug!(addr = %self.addr(), path, ?user, "envd read file");
        let body = self
            .transport
            .plain(
                Method::GET,
                &target,
                None,
                self.transport.request_timeout(),
                MAX_FILE_READ,
            )
            .await?;
        Ok(Vec::from(body))
    }

    /// The contents of `path` as a stream, read from envd only as fast as
    /// the stream is polled (nothing is collected). Waiting for envd's
    /// reply is bounded by the request timeout; reading the body is not.
    pub async fn read_file_stream(
        &self,
        path: &str,
        user: Option<&str>,
    ) -> Result<FileDownload, EnvdError> {
        let target = files_target(path, user);
        let endpoint = format!("GET {target}");
        debug!(addr = %self.addr(), path, ?user, "envd read file (streamed)");
        let timeout = self.transport.request_timeout();
        let response = tokio::time::timeout(
            timeout,
            self.transport.plain_response(Method::GET, &target, None),
        )
        .await
        .map_err(|_| EnvdError::Timeout {
            addr: self.addr(),
            operation: endpoint.clone(),
            timeout,
            last_failure: None,
        })??;
        let len = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let addr = self.addr();
        let body = response
            .into_body()
            .into_data_stream()
            .map_err(move |err| EnvdError::Transport {
                addr,
                endpoint: endpoint.clone(),
                source: Box::new(err),
            })
            .boxed();
        Ok(FileDownload { len, body })
    }

    /// Writes `data` to `path` as it comes (`POST /files`,
    /// `application/octet-stream`, chunked): nothing is collected, and the
    /// stream is read only as fast as envd takes it. A failure of `data`
    /// aborts the upload. Not bounded in time: the caller bounds it.
    pub async fn write_file_stream<S>(
        &self,
        path: &str,
        user: Option<&str>,
        data: S,
    ) -> Result<(), EnvdError>
    where
        S: Stream<Item = Result<Bytes, BoxError>> + Send + 'static,
    {
        let target = files_target(path, user);
        debug!(addr = %self.addr(), path, ?user, "envd write file (streamed)");
        let body = StreamBody::new(data.map_ok(Frame::data)).boxed_unsync();
        self.transport
            .plain_response(
                Method::POST,
                &target,
                Some(("application/octet-stream", body)),
            )
            .await
            .map(drop)
    }

    /// Writes `data` to `path` (`POST /files`, `application/octet-stream`),
    /// as `user`, creating missing parent directories and replacing an
    /// existing file.
    pub async fn write_file(
        &self,
        path: &str,
        user: Option<&str>,
        data: impl Into<Bytes>,
    ) -> Result<(), EnvdError> {
        let data = data.into();
        let target = files_target(path, user);
        debug!(addr = %self.addr(), path, ?user, len = data.len(), "envd write file");
        self.transport
            .plain(
                Method::POST,
                &target,
                Some(("application/octet-stream", data)),
                self.transport.request_timeout(),
                crate::transport::MAX_UNARY_REPLY,
            )
            .await
            .map(drop)
    }

    /// Metadata of `path` (`Filesystem/Stat`); `not_found` when missing.
    pub async fn stat(&self, path: &str, user: Option<&str>) -> Result<FileEntry, EnvdError> {
        let reply: pb::StatResponse = self
            .transport
            .unary(STAT, &pb::StatRequest { path: path.into() }, user)
            .await?;
        self.entry_of(STAT, reply.entry)
    }

    /// Creates directory `path` and its parents (`Filesystem/MakeDir`);
    /// `already_exists` when it exists.
    pub async fn make_dir(&self, path: &str, user: Option<&str>) -> Result<FileEntry, EnvdError> {
        let reply: pb::MakeDirResponse = self
            .transport
            .unary(MAKE_DIR, &pb::MakeDirRequest { path: path.into() }, user)
            .await?;
        self.entry_of(MAKE_DIR, reply.entry)
    }

    /// The entries under directory `path` down to `depth` levels (at least
    /// 1), sorted by name (`Filesystem/ListDir`).
    pub async fn list_dir(
        &self,
        path: &str,
        depth: u32,
        user: Option<&str>,
    ) -> Result<Vec<FileEntry>, EnvdError> {
        let request = pb::ListDirRequest {
            path: path.into(),
            depth: depth.max(1),
        };
        let reply: pb::ListDirResponse = self.transport.unary(LIST_DIR, &request, user).await?;
        Ok(reply.entries.into_iter().map(FileEntry::from).collect())
    }

    /// Removes the file or directory tree at `path` (`Filesystem/Remove`).
    pub async fn remove(&self, path: &str, user: Option<&str>) -> Result<(), EnvdError> {
        let _: pb::RemoveResponse = self
            .transport
            .unary(REMOVE, &pb::RemoveRequest { path: path.into() }, user)
            .await?;
        Ok(())
    }

    fn entry_of(&self, method: &str, entry: Option<pb::EntryInfo>) -> Result<FileEntry, EnvdError> {
        entry
            .map(FileEntry::from)
            .ok_or_else(|| EnvdError::Protocol {
                addr: self.addr(),
                endpoint: method.to_owned(),
                detail: "reply has no entry".to_owned(),
            })
    }
}

/// `/files?path=..[&username=..]`, percent-encoded.
fn files_target(path: &str, user: Option<&str>) -> String {
    let mut target = format!("{FILES_PATH}?path={}", encode_query_value(path));
    if let Some(user) = user {
        target.push_str("&username=");
        target.push_str(&encode_query_value(user));
    }
    target
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_target_encodes_path_and_user() {
        let target = files_target("/tmp/a b.txt", Some("root"));

        assert_eq!(target, "/files?path=/tmp/a%20b.txt&username=root");
    }

    #[test]
    fn entry_info_converts_to_file_entry() {
        let info = pb::EntryInfo {
            name: "hosts".into(),
            r#type: pb::FileType::File.into(),
            path: "/etc/hosts".into(),
            size: 12,
            mode: 0o644,
            permissions: "-rw-r--r--".into(),
            owner: "root".into(),
            group: "root".into(),
            modified_time: Some(envd_proto::wkt::Timestamp {
                seconds: 10,
                nanos: 5,
            }),
            symlink_target: None,
            metadata: std::collections::HashMap::new(),
            is_symlink: false,
        };

        let entry = FileEntry::from(info);

        assert_eq!(
            entry,
            FileEntry {
                name: "hosts".into(),
                path: "/etc/hosts".into(),
                kind: FileKind::File,
                size: 12,
                mode: 0o644,
                permissions: "-rw-r--r--".into(),
                owner: "root".into(),
                group: "root".into(),
                modified: Some(UNIX_EPOCH + Duration::new(10, 5)),
                symlink_target: None,
                metadata: BTreeMap::new(),
            }
        );
    }
}
