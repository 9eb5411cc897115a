//! `GET /files` (download) and `POST /files` (upload, multipart or raw).

use crate::auth::{FileCredentials, Operation, check_files_access};
use crate::error::EnvdError;
use crate::filesystem::ops::{chown_to, create_dirs};
use crate::state::SharedState;
use crate::user::UserInfo;
use crate::xattr::{clear_metadata, write_metadata};
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest as _, Multipart, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt as _};
use serde::{Deserialize, Serialize};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;

/// Size of the chunks a download is sent in.
const CHUNK: usize = 64 * 1024;

/// Header prefix of metadata stored on uploaded files.
const METADATA_HEADER_PREFIX: &str = "x-metadata-";

/// Query of both `/files` endpoints.
#[derive(Debug, Default, Deserialize)]
pub struct FilesQuery {
    path: Option<String>,
    username: Option<String>,
    signature: Option<String>,
    signature_expiration: Option<i64>,
}

/// One written file, as the upload reply lists it.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct WrittenFile {
    name: String,
    #[serde(rename = "type")]
    kind: &'static str,
    path: String,
    /// The metadata stored with the upload (keys lowercased), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<std::collections::BTreeMap<String, String>>,
}

fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

fn authorize(
    state: &SharedState,
    headers: &HeaderMap,
    operation: Operation,
    query: &FilesQuery,
) -> Result<UserInfo, EnvdError> {
    let creds = FileCredentials {
        path: query.path.as_deref().unwrap_or(""),
        username: query.username.as_deref().unwrap_or(""),
        signature: query.signature.as_deref(),
        expiration: query.signature_expiration,
    };
    check_files_access(state, headers, operation, creds, now_unix())?;
    state.user(query.username.as_deref())
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|enc| {
            let mut parts = enc.trim().split(';');
            let name = parts.next().unwrap_or("").trim();
            let disabled = parts.any(|p| p.trim().replace(' ', "") == "q=0");
            name.eq_ignore_ascii_case("gzip") && !disabled
        })
}

/// A `Write` that hands each buffer to an async body as a chunk.
struct ChannelWriter(mpsc::Sender<Result<Bytes, std::io::Error>>);

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Streams `file` through a reader thread, gzip-compressed when `gzip`.
fn file_body(mut file: std::fs::File, gzip: bool) -> Body {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    tokio::task::spawn_blocking(move || {
        let error_tx = tx.clone();
        let result = if gzip {
            let mut encoder =
                flate2::write::GzEncoder::new(ChannelWriter(tx), flate2::Compression::fast());
            std::io::copy(&mut file, &mut encoder).and_then(|_| encoder.finish().map(drop))
        } else {
            let mut buf = vec![0u8; CHUNK];
            loop {
                match file.read(&mut buf) {
                    Ok(0) => break Ok(()),
                    Ok(n) => {
                        if tx
                            .blocking_send(Ok(Bytes::copy_from_slice(&buf[..n])))
                            .is_err()
                        {
                            break Ok(());
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            }
        };
        if let Err(e) = result {
            let _ = error_tx.blocking_send(Err(e));
        }
    });
    let stream = async_stream::stream! {
        let mut rx = rx;
        while let Some(item) = rx.recv().await {
            yield item;
        }
    };
    Body::from_stream(stream)
}

/// `GET /files?path=&username=`: the raw bytes of a file.
pub async fn download(
    State(state): State<SharedState>,
    headers: HeaderMap,
    query: Result<Query<FilesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, EnvdError> {
    let Query(query) = query.map_err(|e| EnvdError::InvalidArgument(e.body_text()))?;
    let user = authorize(&state, &headers, Operation::Read, &query)?;
    let requested = query
        .path
        .as_deref()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| EnvdError::InvalidArgument("path is required".to_owned()))?;
    let path = user.resolve_path(requested);
    let shown = path.display().to_string();
    let (file, meta) = tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&path)
            .map_err(|e| EnvdError::io(format!("opening {}", path.display()), &e))?;
        let meta = file
            .metadata()
            .map_err(|e| EnvdError::io(format!("stat {}", path.display()), &e))?;
        Ok::<_, EnvdError>((file, meta))
    })
    .await
    .map_err(|e| EnvdError::Internal(format!("download task: {e}")))??;
    if meta.is_dir() {
        return Err(EnvdError::InvalidArgument(format!(
            "path {shown} is a directory"
        )));
    }
    let gzip = accepts_gzip(&headers);
    let name = Path::new(&shown)
        .file_name()
        .map(|n| n.to_string_lossy().replace('"', ""))
        .unwrap_or_default();
    let mut response = file_body(file, gzip).into_response();
    let out = response.headers_mut();
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(disposition) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        out.insert(header::CONTENT_DISPOSITION, disposition);
    }
    if gzip {
        out.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    } else {
        out.insert(header::CONTENT_LENGTH, HeaderValue::from(meta.len()));
    }
    Ok(response)
}

fn metadata_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter_map(|(name, value)| {
            let key = name.as_str().strip_prefix(METADATA_HEADER_PREFIX)?;
            let value = value.to_str().ok()?;
            Some((key.to_owned(), value.to_owned()))
        })
        .filter(|(key, _)| !key.is_empty())
        .collect()
}

/// Writes a body stream to `path` as `user`: parents and the file are
/// created owned by the user (create, chown, then write: watchers see
/// CREATE, CHMOD, WRITE), optionally gunzipping on the way.
async fn write_file<S, E>(
    path: PathBuf,
    user: UserInfo,
    gzip: bool,
    metadata: Vec<(String, String)>,
    body: S,
) -> Result<WrittenFile, EnvdError>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: std::fmt::Display,
{
    let stored = (!metadata.is_empty()).then(|| {
        metadata
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect()
    });
    let mut body = std::pin::pin!(body);
    let (tx, mut rx) = mpsc::channel::<Bytes>(8);
    let target = path.clone();
    let writer = tokio::task::spawn_blocking(move || {
        let shown = target.display().to_string();
        if let Some(parent) = target.parent() {
            create_dirs(parent, &user)?;
        }
        if target.is_dir() {
            return Err(EnvdError::InvalidArgument(format!(
                "path {shown} is a directory"
            )));
        }
        let file = std::fs::File::create(&target)
            .map_err(|e| EnvdError::io(format!("creating {shown}"), &e))?;
        chown_to(&target, &user)?;
        let mut sink: Box<dyn std::io::Write> = if gzip {
            Box::new(flate2::write::GzDecoder::new(file))
        } else {
            Box::new(file)
        };
        while let Some(chunk) = rx.blocking_recv() {
            sink.write_all(&chunk)
                .map_err(|e| EnvdError::io(format!("writing {shown}"), &e))?;
        }
        sink.flush()
            .map_err(|e| EnvdError::io(format!("writing {shown}"), &e))?;
        drop(sink);
        // An overwritten file keeps its old attributes: the upload's
        // metadata replaces them, none clears them.
        clear_metadata(&target)?;
        if !metadata.is_empty() {
            write_metadata(
                &target,
                metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            )?;
        }
        Ok(())
    });
    let mut read_error = None;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(chunk) => {
                if tx.send(chunk).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                read_error = Some(EnvdError::InvalidArgument(format!("reading upload: {e}")));
                break;
            }
        }
    }
    drop(tx);
    writer
        .await
        .map_err(|e| EnvdError::Internal(format!("upload task: {e}")))??;
    if let Some(err) = read_error {
        return Err(err);
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(WrittenFile {
        name,
        kind: "file",
        path: path.display().to_string(),
        metadata: stored,
    })
}

/// `POST /files`: multipart (field `file`, filename = path when the query
/// has none) or a raw `application/octet-stream` body to `path`.
pub async fn upload(
    State(state): State<SharedState>,
    query: Result<Query<FilesQuery>, axum::extract::rejection::QueryRejection>,
    request: Request,
) -> Result<Response, EnvdError> {
    let Query(query) = query.map_err(|e| EnvdError::InvalidArgument(e.body_text()))?;
    let headers = request.headers().clone();
    let user = authorize(&state, &headers, Operation::Write, &query)?;
    let metadata = metadata_headers(&headers);
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let query_path = query.path.as_deref().filter(|p| !p.is_empty());
    let mut written = Vec::new();
    if content_type.starts_with("multipart/form-data") {
        let mut multipart = Multipart::from_request(request, &())
            .await
            .map_err(|e| EnvdError::InvalidArgument(e.body_text()))?;
        while let Some(field) = multipart
            .next_field()
            .await
            .map_err(|e| EnvdError::InvalidArgument(e.body_text()))?
        {
            if field.name() != Some("file") {
                continue;
            }
            let target = match (query_path, field.file_name()) {
                (Some(path), _) => path.to_owned(),
                (None, Some(name)) if !name.is_empty() => name.to_owned(),
                _ => {
                    return Err(EnvdError::InvalidArgument(
                        "path is required (query or part filename)".to_owned(),
                    ));
                }
            };
            let path = user.resolve_path(&target);
            let stream = field.map(|chunk| chunk.map_err(|e| e.body_text()));
            written.push(write_file(path, user.clone(), false, metadata.clone(), stream).await?);
        }
        if written.is_empty() {
            return Err(EnvdError::InvalidArgument(
                "multipart body has no 'file' part".to_owned(),
            ));
        }
    } else {
        let target =
            query_path.ok_or_else(|| EnvdError::InvalidArgument("path is required".to_owned()))?;
        let gzip = headers
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("gzip"));
        let path = user.resolve_path(target);
        let stream = request.into_body().into_data_stream();
        written.push(write_file(path, user, gzip, metadata, stream).await?);
    }
    Ok((StatusCode::OK, Json(written)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_is_accepted_from_a_list() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("br, gzip;q=0.8"),
        );

        let accepted = accepts_gzip(&headers);

        assert!(accepted);
    }

    #[test]
    fn gzip_with_zero_quality_is_refused() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip;q=0"),
        );

        let accepted = accepts_gzip(&headers);

        assert!(!accepted);
    }

    #[test]
    fn metadata_headers_lose_their_prefix() {
        let mut headers = HeaderMap::new();
        headers.insert("X-Metadata-Owner", HeaderValue::from_static("team-a"));
        headers.insert("X-Other", HeaderValue::from_static("x"));

        let metadata = metadata_headers(&headers);

        assert_eq!(metadata, [("owner".to_owned(), "team-a".to_owned())]);
    }
}
