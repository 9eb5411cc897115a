//! A hostile caller against a running envd: `/init` cannot replace or remove
//! the access token without the current one, and huge numeric headers are
//! clamped instead of overflowing (the server keeps answering).

mod common;

use common::{Envd, finish};
use serde_json::json;

/// `POST /init` with `body`, optionally showing `token`; returns the status.
#[allow(clippy::unwrap_used)] // test helper
async fn init(envd: &Envd, body: serde_json::Value, token: Option<&str>) -> u16 {
    let mut request = envd.http.post(envd.url("/init")).json(&body);
    if let Some(token) = token {
        request = request.header("x-access-token", token);
    }
    request.send().await.unwrap().status().as_u16()
}

/// Status of `GET /files` for a file in the workdir, showing `token`.
#[allow(clippy::unwrap_used)] // test helper
async fn read_status(envd: &Envd, token: Option<&str>) -> u16 {
    std::fs::write(envd.path("secret.txt"), b"guest secret").unwrap();
    let path = envd.path("secret.txt").display().to_string();
    let mut request = envd
        .http
        .get(envd.url("/files"))
        .query(&[("path", path.as_str())]);
    if let Some(token) = token {
        request = request.header("x-access-token", token);
    }
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn init_rejects_new_token_without_the_current_one() {
    let envd = Envd::start().await;
    let first = init(&envd, json!({"accessToken": "secret"}), None).await;

    let takeover = init(&envd, json!({"accessToken": "attacker"}), None).await;
    let wrong = init(&envd, json!({"accessToken": "attacker"}), Some("guess")).await;
    let with_attacker_token = read_status(&envd, Some("attacker")).await;
    let with_secret = read_status(&envd, Some("secret")).await;

    assert_eq!(first, 204);
    assert_eq!(takeover, 401);
    assert_eq!(wrong, 401);
    assert_eq!(with_attacker_token, 401);
    assert_eq!(with_secret, 200);
}

#[tokio::test]
async fn init_with_empty_token_never_turns_auth_off() {
    let envd = Envd::start().await;
    init(&envd, json!({"accessToken": "secret"}), None).await;

    let anonymous = init(&envd, json!({"accessToken": ""}), None).await;
    let authorized = init(&envd, json!({"accessToken": ""}), Some("secret")).await;
    let read_without_token = read_status(&envd, None).await;
    let read_with_token = read_status(&envd, Some("secret")).await;

    assert_eq!(anonymous, 401);
    assert_eq!(authorized, 400);
    assert_eq!(read_without_token, 401);
    assert_eq!(read_with_token, 200);
}

#[tokio::test]
async fn init_without_token_cannot_change_env_after_auth_is_on() {
    let envd = Envd::start().await;
    init(&envd, json!({"accessToken": "secret"}), None).await;

    let anonymous = init(&envd, json!({"envVars": {"LD_PRELOAD": "/tmp/x.so"}}), None).await;
    let envs = envd
        .http
        .get(envd.url("/envs"))
        .header("x-access-token", "secret")
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();

    assert_eq!(anonymous, 401);
    assert_eq!(envs, json!({}));
}

#[tokio::test]
async fn init_with_the_current_token_rotates_it() {
    let envd = Envd::start().await;
    init(&envd, json!({"accessToken": "old"}), None).await;

    let rotated = init(&envd, json!({"accessToken": "new"}), Some("old")).await;
    let same_again = init(&envd, json!({"accessToken": "new"}), None).await;
    let with_old = read_status(&envd, Some("old")).await;
    let with_new = read_status(&envd, Some("new")).await;

    assert_eq!(rotated, 204);
    assert_eq!(same_again, 204);
    assert_eq!(with_old, 401);
    assert_eq!(with_new, 200);
}

#[tokio::test]
async fn huge_connect_timeout_and_keepalive_do_not_crash_envd() {
    let envd = Envd::start().await;
    let max = u64::MAX.to_string();

    // The largest timeout Connect allows (10 digits) and a keepalive period
    // that overflowed `now + period` before.
    let run = finish(
        envd.run(
            "echo alive",
            json!({}),
            &[
                ("connect-timeout-ms", "9999999999"),
                ("keepalive-ping-interval", max.as_str()),
            ],
        )
        .await,
    )
    .await;
    // Longer than Connect allows: refused cleanly, not a dropped connection.
    let too_long = finish(
        envd.run(
            "echo never",
            json!({}),
            &[("connect-timeout-ms", max.as_str())],
        )
        .await,
    )
    .await;
    let health = envd.http.get(envd.url("/health")).send().await.unwrap();

    assert_eq!(run.stdout, "alive\n");
    assert_eq!(run.exit_code(), 0);
    assert_eq!(too_long.stdout, "");
    assert_eq!(
        too_long.trailer["error"]["code"], "invalid_argument",
        "{}",
        too_long.trailer
    );
    assert_eq!(health.status().as_u16(), 204);
}
