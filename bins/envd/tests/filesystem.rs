//! `filesystem.Filesystem` over the wire.

mod common;

use common::Envd;
use envd_proto::filesystem::{FileType, ListDirRequest, ListDirResponse};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn list_dir_returns_entries_sorted_by_name() {
    let envd = Envd::start().await;
    std::fs::write(envd.path("b.txt"), b"bb").unwrap();
    std::fs::write(envd.path("a.txt"), b"a").unwrap();
    std::fs::create_dir(envd.path("c")).unwrap();

    let (status, body) = envd
        .unary(
            "filesystem.Filesystem/ListDir",
            json!({"path": envd.dir_str(), "depth": 1}),
            &[],
        )
        .await;

    assert_eq!(status, 200);
    let names: Vec<&str> = body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a.txt", "b.txt", "c"]);
    assert_eq!(body["entries"][0]["type"], "FILE_TYPE_FILE");
    assert_eq!(body["entries"][1]["size"], "2");
    assert_eq!(body["entries"][2]["type"], "FILE_TYPE_DIRECTORY");
    assert_eq!(
        body["entries"][0]["path"],
        envd.path("a.txt").display().to_string()
    );
}

#[tokio::test]
async fn list_dir_with_binary_proto_codec() {
    let envd = Envd::start().await;
    std::fs::create_dir(envd.path("d")).unwrap();
    std::fs::write(envd.path("d/inner"), b"").unwrap();

    let response: ListDirResponse = envd
        .unary_proto(
            "filesystem.Filesystem/ListDir",
            &ListDirRequest {
                path: envd.dir_str(),
                depth: 2,
            },
        )
        .await;

    let names: Vec<&str> = response.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["d", "inner"]);
    assert_eq!(response.entries[0].r#type(), FileType::Directory);
}

#[tokio::test]
async fn stat_of_missing_path_is_not_found() {
    let envd = Envd::start().await;

    let (status, body) = envd
        .unary(
            "filesystem.Filesystem/Stat",
            json!({"path": envd.path("missing").display().to_string()}),
            &[],
        )
        .await;

    assert_eq!(status, 404);
    assert_eq!(body["code"], "not_found");
}

#[tokio::test]
async fn stat_reports_entry_details() {
    let envd = Envd::start().await;
    std::fs::write(envd.path("f"), b"hello").unwrap();

    let (status, body) = envd
        .unary(
            "filesystem.Filesystem/Stat",
            json!({"path": envd.path("f").display().to_string()}),
            &[],
        )
        .await;

    assert_eq!(status, 200);
    let entry = &body["entry"];
    assert_eq!(entry["name"], "f");
    assert_eq!(entry["size"], "5");
    assert_eq!(entry["owner"], "root");
    assert_eq!(entry["group"], "root");
    assert!(entry["permissions"].as_str().unwrap().starts_with('-'));
    assert!(entry["modifiedTime"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn make_dir_twice_is_already_exists() {
    let envd = Envd::start().await;
    let path = envd.path("new/nested").display().to_string();

    let (first_status, first) = envd
        .unary("filesystem.Filesystem/MakeDir", json!({"path": path}), &[])
        .await;
    let (second_status, second) = envd
        .unary("filesystem.Filesystem/MakeDir", json!({"path": path}), &[])
        .await;

    assert_eq!(first_status, 200);
    assert_eq!(first["entry"]["type"], "FILE_TYPE_DIRECTORY");
    assert_eq!(second_status, 409);
    assert_eq!(second["code"], "already_exists");
}

#[tokio::test]
async fn make_dir_as_nobody_gives_the_directory_to_nobody() {
    let envd = Envd::start().await;
    let auth = common::basic("nobody");
    let path = envd.path("owned").display().to_string();

    let (status, body) = envd
        .unary(
            "filesystem.Filesystem/MakeDir",
            json!({"path": path}),
            &[("authorization", &auth)],
        )
        .await;

    assert_eq!(status, 200);
    assert_eq!(body["entry"]["owner"], "nobody");
}

#[tokio::test]
async fn move_renames_an_entry() {
    let envd = Envd::start().await;
    std::fs::write(envd.path("from"), b"x").unwrap();
    let destination = envd.path("sub/to").display().to_string();

    let (status, body) = envd
        .unary(
            "filesystem.Filesystem/Move",
            json!({"source": envd.path("from").display().to_string(), "destination": destination}),
            &[],
        )
        .await;

    assert_eq!(status, 200);
    assert_eq!(body["entry"]["path"], destination);
    assert!(!common::exists(&envd.path("from")));
    assert_eq!(std::fs::read(envd.path("sub/to")).unwrap(), b"x");
}

#[tokio::test]
async fn move_of_missing_source_is_not_found() {
    let envd = Envd::start().await;

    let (status, body) = envd
        .unary(
            "filesystem.Filesystem/Move",
            json!({"source": envd.path("nope").display().to_string(),
                   "destination": envd.path("x").display().to_string()}),
            &[],
        )
        .await;

    assert_eq!(status, 404);
    assert_eq!(body["code"], "not_found");
}

#[tokio::test]
async fn remove_deletes_a_directory_tree() {
    let envd = Envd::start().await;
    std::fs::create_dir_all(envd.path("tree/deep")).unwrap();
    std::fs::write(envd.path("tree/deep/f"), b"").unwrap();

    let (status, _) = envd
        .unary(
            "filesystem.Filesystem/Remove",
            json!({"path": envd.path("tree").display().to_string()}),
            &[],
        )
        .await;

    assert_eq!(status, 200);
    assert!(!common::exists(&envd.path("tree")));
}

#[tokio::test]
async fn watch_dir_starts_then_reports_create_and_write() {
    let envd = Envd::start().await;
    let mut reader = envd
        .stream(
            "filesystem.Filesystem/WatchDir",
            json!({"path": envd.dir_str(), "includeEntry": true}),
            &[],
        )
        .await;
    let first = reader.next().await.unwrap().json();
    std::fs::write(envd.path("new.txt"), b"data").unwrap();

    let created = reader.next().await.unwrap().json();
    let written = reader.next().await.unwrap().json();

    assert_eq!(first, json!({"start": {}}));
    assert_eq!(created["filesystem"]["name"], "new.txt");
    assert_eq!(created["filesystem"]["type"], "EVENT_TYPE_CREATE");
    assert_eq!(created["filesystem"]["entry"]["name"], "new.txt");
    assert_eq!(written["filesystem"]["type"], "EVENT_TYPE_WRITE");
}

#[tokio::test]
async fn recursive_watch_names_events_relative_to_the_root() {
    let envd = Envd::start().await;
    std::fs::create_dir(envd.path("sub")).unwrap();
    let mut reader = envd
        .stream(
            "filesystem.Filesystem/WatchDir",
            json!({"path": envd.dir_str(), "recursive": true}),
            &[],
        )
        .await;
    reader.next().await.unwrap();

    std::fs::write(envd.path("sub/inner"), b"").unwrap();
    let created = reader.next().await.unwrap().json();

    assert_eq!(created["filesystem"]["name"], "sub/inner");
    assert_eq!(created["filesystem"]["type"], "EVENT_TYPE_CREATE");
}

#[tokio::test]
async fn watch_of_missing_directory_is_not_found() {
    let envd = Envd::start().await;

    let frames = envd
        .stream(
            "filesystem.Filesystem/WatchDir",
            json!({"path": envd.path("missing").display().to_string()}),
            &[],
        )
        .await
        .collect()
        .await;

    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].json()["error"]["code"], "not_found");
}

#[tokio::test]
async fn polling_watcher_buffers_events_until_fetched() {
    let envd = Envd::start().await;
    let (_, created) = envd
        .unary(
            "filesystem.Filesystem/CreateWatcher",
            json!({"path": envd.dir_str()}),
            &[],
        )
        .await;
    let id = created["watcherId"].as_str().unwrap().to_owned();
    std::fs::write(envd.path("polled"), b"").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (status, events) = envd
        .unary(
            "filesystem.Filesystem/GetWatcherEvents",
            json!({"watcherId": id}),
            &[],
        )
        .await;
    let (removed, _) = envd
        .unary(
            "filesystem.Filesystem/RemoveWatcher",
            json!({"watcherId": id}),
            &[],
        )
        .await;
    let (after, gone) = envd
        .unary(
            "filesystem.Filesystem/GetWatcherEvents",
            json!({"watcherId": id}),
            &[],
        )
        .await;

    assert_eq!(status, 200);
    assert_eq!(events["events"][0]["name"], "polled");
    assert_eq!(events["events"][0]["type"], "EVENT_TYPE_CREATE");
    assert_eq!(removed, 200);
    assert_eq!((after, gone["code"].as_str()), (404, Some("not_found")));
}

#[tokio::test]
async fn uploading_a_new_file_yields_create_chmod_write() {
    let envd = Envd::start().await;
    let mut reader = envd
        .stream(
            "filesystem.Filesystem/WatchDir",
            json!({"path": envd.dir_str()}),
            &[],
        )
        .await;
    reader.next().await.unwrap();
    let path = envd.path("uploaded").display().to_string();

    let upload = envd
        .http
        .post(envd.url("/files"))
        .query(&[("path", path.as_str())])
        .header("content-type", "application/octet-stream")
        .body("payload")
        .send()
        .await
        .unwrap();
    let mut types = Vec::new();
    for _ in 0..3 {
        types.push(reader.next().await.unwrap().json()["filesystem"]["type"].clone());
    }

    assert_eq!(upload.status().as_u16(), 200);
    assert_eq!(
        types,
        [
            json!("EVENT_TYPE_CREATE"),
            json!("EVENT_TYPE_CHMOD"),
            json!("EVENT_TYPE_WRITE")
        ]
    );
}
