//! The page server against a fake Firecracker: guest memory must read back
//! exactly as the memory file, under concurrency, across regions, after
//! remove events; and the server must end when the VMM goes.

mod common;

use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::{FakeVmm, Fixture, PAGE, PageField, file_bytes, join, read_pages, within};
use uffd::{DEFAULT_CHUNK_SIZE, ExitReason, ServerOptions, UffdError};
use userfaultfd::FeatureFlags;

fn options_with_chunk(chunk_size: usize) -> ServerOptions {
    ServerOptions {
        chunk_size,
        ..ServerOptions::default()
    }
}

#[test]
fn fault_serves_memory_file_bytes() {
    let fixture = Fixture::new(64);
    let server = fixture.spawn(ServerOptions::default());
    let vmm = FakeVmm::start(&fixture.socket, &[(64, 0)], PageField::Both);

    let guest = vmm.read_region(0);

    assert!(
        guest == file_bytes(0..64),
        "guest memory differs from the memory file"
    );
    drop(vmm);
    let report = join(server).expect("server ends cleanly");
    assert_eq!(report.stats.bytes_copied, 64 * PAGE as u64);
}

#[test]
fn single_page_chunks_serve_one_page_per_fault() {
    let fixture = Fixture::new(16);
    let server = fixture.spawn(options_with_chunk(PAGE));
    let vmm = FakeVmm::start(&fixture.socket, &[(16, 0)], PageField::Both);

    let guest = vmm.read_region(0);
    drop(vmm);
    let report = join(server).expect("server ends cleanly");

    assert!(
        guest == file_bytes(0..16),
        "guest memory differs from the memory file"
    );
    assert_eq!(
        (report.stats.faults_served, report.stats.bytes_copied),
        (16, 16 * PAGE as u64)
    );
}

/// Faults `PAGES` pages from `THREADS` threads at once, each thread reading
/// every page from its own starting point, so threads fault on neighbouring
/// and on the same pages at the same time; returns every page read and the
/// server's report.
#[allow(
    clippy::expect_used,
    reason = "test helper: a failed step fails the test"
)]
fn fault_concurrently(chunk_size: usize) -> (Vec<(usize, Vec<u8>)>, uffd::ServeReport) {
    const PAGES: usize = 512;
    const THREADS: usize = 8;
    let fixture = Fixture::new(PAGES);
    let server = fixture.spawn(options_with_chunk(chunk_size));
    let vmm = FakeVmm::start(&fixture.socket, &[(PAGES, 0)], PageField::Both);
    let base = vmm.regions[0].addr();
    let barrier = Arc::new(Barrier::new(THREADS));

    let seen = within(move || {
        let readers: Vec<_> = (0..THREADS)
            .map(|thread| {
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    barrier.wait();
                    read_pages(base, (0..PAGES).map(|i| (thread * 61 + i) % PAGES))
                })
            })
            .collect();
        readers
            .into_iter()
            .flat_map(|reader| reader.join().expect("reader thread"))
            .collect::<Vec<_>>()
    });
    drop(vmm);
    (seen, join(server).expect("server ends cleanly"))
}

fn wrong_pages(seen: &[(usize, Vec<u8>)]) -> Vec<usize> {
    seen.iter()
        .filter(|(page, bytes)| *bytes != file_bytes(*page..*page + 1))
        .map(|(page, _)| *page)
        .collect()
}

#[test]
fn concurrent_faults_from_threads_get_file_bytes() {
    let (seen, report) = fault_concurrently(DEFAULT_CHUNK_SIZE);

    assert_eq!(seen.len(), 512 * 8);
    assert_eq!(wrong_pages(&seen), Vec::<usize>::new());
    assert_eq!(report.stats.bytes_copied, 512 * PAGE as u64);
}

#[test]
fn concurrent_single_page_faults_get_file_bytes() {
    let (seen, report) = fault_concurrently(PAGE);

    assert_eq!(seen.len(), 512 * 8);
    assert_eq!(wrong_pages(&seen), Vec::<usize>::new());
    assert_eq!(report.stats.bytes_copied, 512 * PAGE as u64);
}

#[test]
fn two_regions_are_served_from_their_file_offsets() {
    let fixture = Fixture::new(24);
    let server = fixture.spawn(ServerOptions::default());
    let vmm = FakeVmm::start(&fixture.socket, &[(8, 16), (12, 2)], PageField::Both);

    let guest = (vmm.read_region(0), vmm.read_region(1));

    assert!(
        guest.0 == file_bytes(16..24),
        "region 0 differs from file pages 16..24"
    );
    assert!(
        guest.1 == file_bytes(2..14),
        "region 1 differs from file pages 2..14"
    );
    drop(vmm);
    let report = join(server).expect("server ends cleanly");
    assert_eq!(report.regions.len(), 2);
}

#[test]
fn legacy_page_size_kib_handshake_is_served() {
    let fixture = Fixture::new(8);
    let server = fixture.spawn(ServerOptions::default());
    let vmm = FakeVmm::start(&fixture.socket, &[(8, 0)], PageField::LegacyKib);

    let guest = vmm.read_region(0);
    drop(vmm);
    let report = join(server).expect("server ends cleanly");

    assert!(
        guest == file_bytes(0..8),
        "guest memory differs from the memory file"
    );
    assert_eq!(report.regions[0].page_size, PAGE);
}

#[test]
fn removed_pages_fault_back_as_zero_pages() {
    let fixture = Fixture::new(32);
    let server = fixture.spawn(ServerOptions::default());
    let vmm = FakeVmm::start(&fixture.socket, &[(32, 0)], PageField::Both);
    let before = vmm.read_region(0);

    vmm.remove(0, 4..12);
    let after = vmm.read_region(0);
    drop(vmm);
    let report = join(server).expect("server ends cleanly");

    let expected = [file_bytes(0..4), vec![0; 8 * PAGE], file_bytes(12..32)].concat();
    assert!(
        before == file_bytes(0..32),
        "first read differs from the memory file"
    );
    assert!(
        after == expected,
        "removed pages did not read back as zeroes"
    );
    assert_eq!(
        (report.stats.remove_events, report.stats.bytes_zeroed),
        (1, 8 * PAGE as u64)
    );
}

#[test]
fn pages_removed_before_first_touch_read_as_zero() {
    let fixture = Fixture::new(32);
    let server = fixture.spawn(options_with_chunk(16 * PAGE));
    let vmm = FakeVmm::start(&fixture.socket, &[(32, 0)], PageField::Both);

    vmm.remove(0, 5..9);
    let guest = vmm.read_region(0);
    drop(vmm);
    let report = join(server).expect("server ends cleanly");

    let expected = [file_bytes(0..5), vec![0; 4 * PAGE], file_bytes(9..32)].concat();
    assert!(
        guest == expected,
        "removed pages must be zero, the rest file bytes"
    );
    assert_eq!(report.stats.bytes_copied, 28 * PAGE as u64);
}

#[test]
fn chunk_copy_stopped_by_a_present_page_still_serves_the_fault() {
    // Without remove events, MADV_DONTNEED makes pages missing again while
    // their neighbours stay: the refault's chunk copy stops at the first
    // present page (page 1), before the faulting page 5, which must then be
    // copied on its own.
    let fixture = Fixture::new(16);
    let server = fixture.spawn(options_with_chunk(16 * PAGE));
    let vmm = FakeVmm::start_with(
        &fixture.socket,
        &[(16, 0)],
        PageField::Both,
        FeatureFlags::empty(),
    );
    let _ = vmm.read_region(0);
    vmm.remove(0, 0..1);
    vmm.remove(0, 5..6);

    let base = vmm.regions[0].addr();
    let page5 = within(move || read_pages(base, std::iter::once(5)));
    let guest = vmm.read_region(0);
    drop(vmm);
    let report = join(server).expect("server ends cleanly");

    assert!(
        page5[0].1 == file_bytes(5..6),
        "page 5 differs from the file"
    );
    assert!(
        guest == file_bytes(0..16),
        "guest memory differs from the file"
    );
    assert_eq!(report.stats.bytes_copied, 18 * PAGE as u64);
}

#[test]
fn server_exits_when_peer_closes_socket_and_uffd() {
    let fixture = Fixture::new(8);
    let server = fixture.spawn(ServerOptions::default());
    let vmm = FakeVmm::start(&fixture.socket, &[(8, 0)], PageField::Both);
    let _ = vmm.read_region(0);

    drop(vmm);
    let report = join(server).expect("server ends cleanly");

    assert_eq!(report.exit, ExitReason::PeerClosed);
    assert!(!fixture.socket.exists(), "socket file left behind");
}

#[test]
fn server_exits_when_socket_closes_while_uffd_stays_open() {
    let fixture = Fixture::new(8);
    let server = fixture.spawn(ServerOptions::default());
    let mut vmm = FakeVmm::start(&fixture.socket, &[(8, 0)], PageField::Both);
    let _ = vmm.read_region(0);

    drop(vmm.stream.take());
    let report = join(server).expect("server ends cleanly");

    assert_eq!(report.exit, ExitReason::PeerClosed);
}

#[test]
fn report_names_the_peer_process() {
    let fixture = Fixture::new(8);
    let server = fixture.spawn(ServerOptions::default());
    let vmm = FakeVmm::start(&fixture.socket, &[(8, 0)], PageField::Both);

    drop(vmm);
    let report = join(server).expect("server ends cleanly");

    assert_eq!(
        report.peer.map(|peer| peer.pid),
        Some(std::process::id() as i32)
    );
}

#[test]
fn stop_handle_ends_wait_for_connection() {
    let fixture = Fixture::new(8);
    let server = fixture.spawn(ServerOptions::default());

    server.stop_handle().stop();
    let report = join(server).expect("server ends cleanly");

    assert_eq!(
        (report.exit, report.regions.len()),
        (ExitReason::Stopped, 0)
    );
}

#[test]
fn stop_handle_ends_serving_session() {
    let fixture = Fixture::new(8);
    let server = fixture.spawn(ServerOptions::default());
    let vmm = FakeVmm::start(&fixture.socket, &[(8, 0)], PageField::Both);
    let _ = vmm.read_region(0);

    server.stop_handle().stop();
    let report = join(server).expect("server ends cleanly");

    assert_eq!(report.exit, ExitReason::Stopped);
}

#[test]
fn accept_timeout_names_the_socket() {
    let fixture = Fixture::new(8);
    let server = fixture.spawn(ServerOptions {
        accept_timeout: Some(Duration::from_millis(50)),
        ..ServerOptions::default()
    });

    let error = join(server).expect_err("nobody connects");

    assert!(matches!(error, UffdError::AcceptTimeout { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains(&fixture.socket.display().to_string()),
        "{error}"
    );
}
