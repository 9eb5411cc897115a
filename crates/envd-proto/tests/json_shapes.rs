//! The proto3-JSON shapes the E2B SDKs rely on.

use envd_proto::filesystem::{EntryInfo, FileType, ListDirRequest};
use envd_proto::process::{
    ProcessEvent, StartRequest, StartResponse, process_event, process_event::data_event,
};
use prost::Message as _;

#[test]
fn start_event_serializes_as_camel_case_json() {
    let response = StartResponse {
        event: Some(ProcessEvent {
            event: Some(process_event::Event::Start(process_event::StartEvent {
                pid: 7,
            })),
        }),
    };

    let json = serde_json::to_string(&response).unwrap();

    assert_eq!(json, r#"{"event":{"start":{"pid":7}}}"#);
}

#[test]
fn end_event_uses_exit_code_json_name() {
    let event = process_event::EndEvent {
        exit_code: 3,
        exited: true,
        status: "exit status 3".to_owned(),
        error: None,
    };

    let json = serde_json::to_value(&event).unwrap();

    assert_eq!(
        json,
        serde_json::json!({"exitCode": 3, "exited": true, "status": "exit status 3"})
    );
}

#[test]
fn data_event_bytes_are_base64() {
    let event = process_event::DataEvent {
        output: Some(data_event::Output::Stdout(b"hello\n".to_vec())),
    };

    let json = serde_json::to_string(&event).unwrap();

    assert_eq!(json, r#"{"stdout":"aGVsbG8K"}"#);
}

#[test]
fn start_request_accepts_snake_case_and_unknown_fields() {
    let body = r#"{"process":{"cmd":"/bin/bash","args":["-l","-c","echo hi"],"envs":{"A":"1"}},"stdin":false,"future_field":1}"#;

    let request: StartRequest = serde_json::from_str(body).unwrap();

    assert_eq!(request.process.unwrap().args, ["-l", "-c", "echo hi"]);
    assert_eq!(request.stdin, Some(false));
}

#[test]
fn list_dir_request_round_trips_through_binary_codec() {
    let request = ListDirRequest {
        path: "/tmp".to_owned(),
        depth: 2,
    };

    let decoded = ListDirRequest::decode(request.encode_to_vec().as_slice()).unwrap();

    assert_eq!(decoded, request);
}

#[test]
fn entry_info_type_serializes_by_enum_name() {
    let entry = EntryInfo {
        name: "a".to_owned(),
        r#type: FileType::Directory.into(),
        ..EntryInfo::default()
    };

    let json = serde_json::to_value(&entry).unwrap();

    assert_eq!(json["type"], "FILE_TYPE_DIRECTORY");
}
