//! Handshakes and setups that must fail with an error naming what is wrong.

mod common;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::{FakeVmm, Fixture, PAGE, PageField, file_bytes, join, send};
use uffd::{HandshakeError, LayoutError, ServerOptions, UffdError, UffdServer};

#[test]
fn handshake_without_fd_is_rejected() {
    let fixture = Fixture::new(8);
    let server = fixture.spawn(ServerOptions::default());
    let vmm = FakeVmm::mapped(&[(8, 0)]);
    let stream = UnixStream::connect(&fixture.socket).expect("connect");

    send(&stream, vmm.regions_json(PageField::Both).as_bytes(), None);
    let error = join(server).expect_err("no userfaultfd was sent");

    assert!(
        matches!(
            error,
            UffdError::Handshake {
                source: HandshakeError::NoFd,
                ..
            }
        ),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .contains(&fixture.socket.display().to_string()),
        "{error}"
    );
}

#[test]
fn handshake_with_bad_json_is_rejected() {
    let fixture = Fixture::new(8);
    let server = fixture.spawn(ServerOptions::default());
    let vmm = FakeVmm::mapped(&[(8, 0)]);
    let stream = UnixStream::connect(&fixture.socket).expect("connect");

    send(
        &stream,
        br#"[{"base_host_virt_addr": oops}]"#,
        Some(vmm.uffd_fd()),
    );
    let error = join(server).expect_err("the body is not JSON");

    assert!(
        matches!(
            error,
            UffdError::Handshake {
                source: HandshakeError::BadJson { .. },
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("oops"), "{error}");
}

#[test]
fn handshake_missing_region_field_names_it() {
    let fixture = Fixture::new(8);
    let server = fixture.spawn(ServerOptions::default());
    let vmm = FakeVmm::mapped(&[(8, 0)]);
    let stream = UnixStream::connect(&fixture.socket).expect("connect");

    send(
        &stream,
        br#"[{"base_host_virt_addr": 4096, "offset": 0, "page_size": 4096}]"#,
        Some(vmm.uffd_fd()),
    );
    let error = join(server).expect_err("size is missing");

    assert!(
        error.to_string().contains("missing field `size`"),
        "{error}"
    );
}

#[test]
fn handshake_with_a_non_uffd_fd_is_rejected() {
    let fixture = Fixture::new(8);
    let server = fixture.spawn(ServerOptions::default());
    let vmm = FakeVmm::mapped(&[(8, 0)]);
    let other = File::open(&fixture.mem_file).expect("open a regular file");
    let stream = UnixStream::connect(&fixture.socket).expect("connect");

    send(
        &stream,
        vmm.regions_json(PageField::Both).as_bytes(),
        Some(other.as_raw_fd()),
    );
    let error = join(server).expect_err("a regular file is not a userfaultfd");

    assert!(
        matches!(
            error,
            UffdError::Handshake {
                source: HandshakeError::NotUserfaultfd(_),
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn handshake_with_region_beyond_file_is_rejected() {
    let fixture = Fixture::new(8);
    let server = fixture.spawn(ServerOptions::default());
    let vmm = FakeVmm::mapped(&[(8, 4)]);
    let stream = UnixStream::connect(&fixture.socket).expect("connect");

    send(
        &stream,
        vmm.regions_json(PageField::Both).as_bytes(),
        Some(vmm.uffd_fd()),
    );
    let error = join(server).expect_err("the region reads past the file");

    assert!(
        matches!(
            error,
            UffdError::Layout {
                source: LayoutError::OutsideFile { .. },
                ..
            }
        ),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .contains(&fixture.mem_file.display().to_string()),
        "{error}"
    );
}

#[test]
fn handshake_closed_before_message_is_rejected() {
    let fixture = Fixture::new(8);
    let server = fixture.spawn(ServerOptions::default());

    drop(UnixStream::connect(&fixture.socket).expect("connect"));
    let error = join(server).expect_err("nothing was sent");

    assert!(
        matches!(
            error,
            UffdError::Handshake {
                source: HandshakeError::ClosedEarly { received: 0 },
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn handshake_silence_times_out() {
    let fixture = Fixture::new(8);
    let server = fixture.spawn(ServerOptions {
        handshake_timeout: Duration::from_millis(50),
        ..ServerOptions::default()
    });

    let _stream = UnixStream::connect(&fixture.socket).expect("connect");
    let error = join(server).expect_err("nothing was sent");

    assert!(
        matches!(
            error,
            UffdError::Handshake {
                source: HandshakeError::Timeout(_),
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn handshake_split_across_writes_is_accepted() {
    let fixture = Fixture::new(8);
    let server = fixture.spawn(ServerOptions::default());
    let mut vmm = FakeVmm::mapped(&[(8, 0)]);
    let body = vmm.regions_json(PageField::Both);
    let (head, tail) = body.split_at(body.len() / 2);
    let stream = UnixStream::connect(&fixture.socket).expect("connect");

    send(&stream, head.as_bytes(), Some(vmm.uffd_fd()));
    std::thread::sleep(Duration::from_millis(20));
    send(&stream, tail.as_bytes(), None);
    vmm.stream = Some(stream);
    let guest = vmm.read_region(0);

    assert!(
        guest == file_bytes(0..8),
        "guest memory differs from the memory file"
    );
    drop(vmm);
    assert_eq!(
        join(server)
            .expect("server ends cleanly")
            .stats
            .bytes_copied,
        8 * PAGE as u64
    );
}

#[test]
fn bind_on_an_existing_path_names_it() {
    let fixture = Fixture::new(8);
    let _first = UffdServer::bind(&fixture.socket, &fixture.mem_file).expect("first bind");

    let error = UffdServer::bind(&fixture.socket, &fixture.mem_file).expect_err("path in use");

    assert!(matches!(error, UffdError::Bind { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains(&fixture.socket.display().to_string()),
        "{error}"
    );
}

#[test]
fn missing_memory_file_is_named() {
    let fixture = Fixture::new(8);
    let missing = fixture.dir.path().join("no-such-mem");

    let error = UffdServer::bind(&fixture.socket, &missing).expect_err("no memory file");

    assert!(matches!(error, UffdError::OpenMemFile { .. }), "{error}");
    assert!(
        error.to_string().contains(&missing.display().to_string()),
        "{error}"
    );
}

#[test]
fn empty_memory_file_is_rejected() {
    let fixture = Fixture::new(0);

    let error = UffdServer::bind(&fixture.socket, &fixture.mem_file).expect_err("empty file");

    assert!(matches!(error, UffdError::EmptyMemFile { .. }), "{error}");
}
