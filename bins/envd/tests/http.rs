//! The plain HTTP endpoints: health, files, init, auth, envs, metrics.

mod common;

use common::Envd;
use envd::auth::{Operation, signature};
use serde_json::{Value, json};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::MetadataExt as _;

#[allow(clippy::unwrap_used)] // test helper
async fn init_token(envd: &Envd, token: &str) -> u16 {
    envd.http
        .post(envd.url("/init"))
        .json(&json!({"accessToken": token}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn health_returns_204() {
    let envd = Envd::start().await;

    let response = envd.http.get(envd.url("/health")).send().await.unwrap();

    assert_eq!(response.status().as_u16(), 204);
}

#[tokio::test]
async fn multipart_upload_then_download_round_trips() {
    let envd = Envd::start().await;
    let path = envd.path("up/load.txt").display().to_string();
    let part = reqwest::multipart::Part::bytes(b"multipart body".to_vec()).file_name(path.clone());
    let form = reqwest::multipart::Form::new().part("file", part);

    let upload = envd
        .http
        .post(envd.url("/files"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let upload_status = upload.status().as_u16();
    let written: Value = upload.json().await.unwrap();
    let download = envd
        .http
        .get(envd.url("/files"))
        .query(&[("path", path.as_str())])
        .send()
        .await
        .unwrap();

    assert_eq!(upload_status, 200);
    assert_eq!(
        written,
        json!([{"name": "load.txt", "type": "file", "path": path}])
    );
    assert_eq!(download.status().as_u16(), 200);
    assert_eq!(download.bytes().await.unwrap().as_ref(), b"multipart body");
}

#[tokio::test]
async fn octet_stream_upload_as_nobody_creates_a_file_owned_by_nobody() {
    let envd = Envd::start().await;
    let path = envd.path("raw.bin").display().to_string();

    let upload = envd
        .http
        .post(envd.url("/files"))
        .query(&[("path", path.as_str()), ("username", "nobody")])
        .header("content-type", "application/octet-stream")
        .body(vec![0u8, 1, 2, 255])
        .send()
        .await
        .unwrap();
    let status = upload.status().as_u16();

    assert_eq!(status, 200);
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
    assert_eq!(std::fs::read(&path).unwrap(), [0u8, 1, 2, 255]);
}

#[tokio::test]
async fn gzip_upload_and_gzip_download_round_trip() {
    let envd = Envd::start().await;
    let path = envd.path("zipped.txt").display().to_string();
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(b"compressed content").unwrap();
    let gz = encoder.finish().unwrap();

    let upload = envd
        .http
        .post(envd.url("/files"))
        .query(&[("path", path.as_str())])
        .header("content-type", "application/octet-stream")
        .header("content-encoding", "gzip")
        .body(gz)
        .send()
        .await
        .unwrap();
    let download = envd
        .http
        .get(envd.url("/files"))
        .query(&[("path", path.as_str())])
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    let encoding = download.headers()["content-encoding"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = download.bytes().await.unwrap();
    let mut decoded = String::new();
    flate2::read::GzDecoder::new(body.as_ref())
        .read_to_string(&mut decoded)
        .unwrap();

    assert_eq!(upload.status().as_u16(), 200);
    assert_eq!(std::fs::read(&path).unwrap(), b"compressed content");
    assert_eq!(encoding, "gzip");
    assert_eq!(decoded, "compressed content");
}

#[tokio::test]
async fn upload_metadata_headers_show_up_in_stat() {
    let envd = Envd::start().await;
    let path = envd.path("tagged").display().to_string();

    envd.http
        .post(envd.url("/files"))
        .query(&[("path", path.as_str())])
        .header("content-type", "application/octet-stream")
        .header("X-Metadata-Owner", "team-a")
        .body("x")
        .send()
        .await
        .unwrap();
    let (_, stat) = envd
        .unary("filesystem.Filesystem/Stat", json!({"path": path}), &[])
        .await;

    assert_eq!(stat["entry"]["metadata"], json!({"owner": "team-a"}));
}

#[tokio::test]
async fn upload_returns_its_metadata_and_an_overwrite_clears_it() {
    let envd = Envd::start().await;
    let path = envd.path("retagged").display().to_string();
    let upload = |metadata: Option<(&'static str, &'static str)>| {
        let mut request = envd
            .http
            .post(envd.url("/files"))
            .query(&[("path", path.as_str())])
            .header("content-type", "application/octet-stream")
            .body("x");
        if let Some((name, value)) = metadata {
            request = request.header(name, value);
        }
        async move {
            let response = request.send().await.unwrap();
            response.json::<serde_json::Value>().await.unwrap()
        }
    };

    let first = upload(Some(("X-Metadata-Stage", "One"))).await;
    let second = upload(None).await;
    let (_, stat) = envd
        .unary("filesystem.Filesystem/Stat", json!({"path": path}), &[])
        .await;

    assert_eq!(first[0]["metadata"], json!({"stage": "One"}), "{first}");
    assert!(second[0].get("metadata").is_none(), "{second}");
    let left = &stat["entry"]["metadata"];
    assert!(
        left.is_null() || left == &json!({}),
        "stale metadata after an overwrite: {stat}"
    );
}

#[tokio::test]
async fn download_of_missing_file_is_404_json() {
    let envd = Envd::start().await;

    let response = envd
        .http
        .get(envd.url("/files"))
        .query(&[("path", "/definitely/not/here")])
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();

    assert_eq!(status, 404);
    assert_eq!(body["code"], 404);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("/definitely/not/here")
    );
}

#[tokio::test]
async fn token_is_required_after_init() {
    let envd = Envd::start().await;
    let init_status = init_token(&envd, "secret").await;

    let (without, without_body) = envd.unary("process.Process/List", json!({}), &[]).await;
    let (with, _) = envd
        .unary(
            "process.Process/List",
            json!({}),
            &[("x-access-token", "secret")],
        )
        .await;
    let (wrong, _) = envd
        .unary(
            "process.Process/List",
            json!({}),
            &[("x-access-token", "nope")],
        )
        .await;
    let envs = envd.http.get(envd.url("/envs")).send().await.unwrap();
    let health = envd.http.get(envd.url("/health")).send().await.unwrap();

    assert_eq!(init_status, 204);
    assert_eq!(without, 401);
    assert_eq!(without_body["code"], "unauthenticated");
    assert_eq!(with, 200);
    assert_eq!(wrong, 401);
    assert_eq!(envs.status().as_u16(), 401);
    assert_eq!(health.status().as_u16(), 204);
}

#[tokio::test]
async fn files_accept_the_token_header() {
    let envd = Envd::start().await;
    init_token(&envd, "secret").await;
    std::fs::write(envd.path("f"), b"content").unwrap();
    let path = envd.path("f").display().to_string();

    let without = envd
        .http
        .get(envd.url("/files"))
        .query(&[("path", path.as_str())])
        .send()
        .await
        .unwrap();
    let with = envd
        .http
        .get(envd.url("/files"))
        .query(&[("path", path.as_str())])
        .header("x-access-token", "secret")
        .send()
        .await
        .unwrap();

    assert_eq!(without.status().as_u16(), 401);
    assert_eq!(with.status().as_u16(), 200);
}

#[tokio::test]
async fn files_accept_a_valid_signature() {
    let envd = Envd::start().await;
    init_token(&envd, "secret").await;
    std::fs::write(envd.path("signed"), b"signed content").unwrap();
    let path = envd.path("signed").display().to_string();
    let expiration = chrono::Utc::now().timestamp() + 60;
    let sig = signature(&path, Operation::Read, "root", "secret", Some(expiration));

    let response = envd
        .http
        .get(envd.url("/files"))
        .query(&[
            ("path", path.as_str()),
            ("username", "root"),
            ("signature", sig.as_str()),
            ("signature_expiration", expiration.to_string().as_str()),
        ])
        .send()
        .await
        .unwrap();

    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.bytes().await.unwrap().as_ref(), b"signed content");
}

#[tokio::test]
async fn expired_signature_is_rejected() {
    let envd = Envd::start().await;
    init_token(&envd, "secret").await;
    let path = envd.path("late").display().to_string();
    let expiration = chrono::Utc::now().timestamp() - 10;
    let sig = signature(&path, Operation::Write, "", "secret", Some(expiration));

    let response = envd
        .http
        .post(envd.url("/files"))
        .query(&[
            ("path", path.as_str()),
            ("signature", sig.as_str()),
            ("signature_expiration", expiration.to_string().as_str()),
        ])
        .header("content-type", "application/octet-stream")
        .body("x")
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();

    assert_eq!(status, 401);
    assert_eq!(
        body,
        json!({"code": 401, "message": "signature is already expired"})
    );
    assert!(!common::exists(&envd.path("late")));
}

#[tokio::test]
async fn signature_for_another_path_is_rejected() {
    let envd = Envd::start().await;
    init_token(&envd, "secret").await;
    let sig = signature("/etc/other", Operation::Read, "", "secret", None);

    let response = envd
        .http
        .get(envd.url("/files"))
        .query(&[("path", "/etc/hostname"), ("signature", sig.as_str())])
        .send()
        .await
        .unwrap();

    assert_eq!(response.status().as_u16(), 401);
}

#[tokio::test]
async fn envs_lists_the_init_variables() {
    let envd = Envd::start().await;
    envd.http
        .post(envd.url("/init"))
        .json(&json!({"envVars": {"A": "1", "B": "2"}}))
        .send()
        .await
        .unwrap();

    let envs: Value = envd
        .http
        .get(envd.url("/envs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    assert_eq!(envs, json!({"A": "1", "B": "2"}));
}

#[tokio::test]
async fn init_refuses_an_identity_it_cannot_apply_and_changes_nothing() {
    // An envd on a host does not own its system: it must not rename it.
    let envd = Envd::start().await;
    let seed = "B".repeat(44); // 33 bytes of base64
    let post = |body: Value| envd.http.post(envd.url("/init")).json(&body).send();

    let bad_name = post(json!({"accessToken": "t1", "hostname": "a b"}))
        .await
        .unwrap();
    let short_seed = post(json!({"accessToken": "t1", "entropySeed": "AAAA"}))
        .await
        .unwrap();
    let unmanaged = post(json!({"accessToken": "t1", "hostname": "clone", "entropySeed": seed}))
        .await
        .unwrap();
    let unmanaged_status = unmanaged.status().as_u16();
    let unmanaged_body: Value = unmanaged.json().await.unwrap();
    let plain = post(json!({"envVars": {"A": "1"}})).await.unwrap();

    assert_eq!(bad_name.status().as_u16(), 400);
    assert_eq!(short_seed.status().as_u16(), 400);
    assert_eq!(unmanaged_status, 400);
    assert!(
        unmanaged_body["message"]
            .as_str()
            .unwrap()
            .contains("does not manage"),
        "{unmanaged_body}"
    );
    // None of the refused inits set the token: a plain one still needs none.
    assert_eq!(plain.status().as_u16(), 204);
    assert!(plain.headers().get("x-petrel-identity").is_none());
}

#[tokio::test]
async fn metrics_report_memory_and_disk() {
    let envd = Envd::start().await;

    let metrics: Value = envd
        .http
        .get(envd.url("/metrics"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    assert!(metrics["cpu_count"].as_u64().unwrap() >= 1);
    assert!(metrics["mem_total"].as_u64().unwrap() > metrics["mem_used"].as_u64().unwrap());
    assert!(metrics["disk_total"].as_u64().unwrap() > 0);
    assert!(metrics["ts"].as_i64().unwrap() > 1_700_000_000);
    assert!(metrics["cpu_used_pct"].as_f64().is_some());
}
