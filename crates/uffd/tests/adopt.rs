//! A page server taking over a VMM whose first server is gone (as after an
//! agent restart): the VMM's userfaultfd is taken from the process, the
//! regions come from the first server's record, and the pages the first
//! server never served read back as the memory file.
//!
//! Alone in its test binary: the server finds the VMM's userfaultfd among
//! the descriptors of this process, where other tests would add theirs.

mod common;

use common::{FakeVmm, Fixture, PageField, file_bytes, join, read_guest};
use uffd::{ExitReason, ServerOptions, UffdServer};

#[test]
fn an_adopted_server_serves_the_faults_its_stopped_predecessor_left() {
    // Arrange: a first server serves half the guest, records the regions,
    // then stops (its agent went away).
    let fixture = Fixture::new(64);
    let record = fixture.dir.path().join("regions.json");
    let first = fixture.spawn(ServerOptions {
        regions_record: Some(record.clone()),
        ..ServerOptions::default()
    });
    let vmm = FakeVmm::start(&fixture.socket, &[(64, 0)], PageField::Both);
    let base = vmm.regions[0].addr();
    let half = read_guest(base, 32 * common::PAGE);
    let stats = first.stats();
    first.stop_and_join().expect("first server stops");

    // Act: a new server takes over this process's faults.
    let adopted = UffdServer::spawn_adopted(
        std::process::id(),
        &fixture.socket,
        &fixture.mem_file,
        &record,
        ServerOptions::default(),
    )
    .expect("take over");
    let whole = read_guest(base, 64 * common::PAGE);
    adopted.stop_handle().stop();
    let report = join(adopted).expect("adopted server ends cleanly");

    // Assert
    assert!(record.exists(), "no regions record");
    assert!(
        half == file_bytes(0..32),
        "first half differs from the file"
    );
    assert!(whole == file_bytes(0..64), "guest differs from the file");
    assert!(stats.bytes_copied > 0);
    assert_eq!(report.exit, ExitReason::Stopped);
    assert!(
        report.stats.bytes_copied > 0,
        "the adopted server copied nothing: {report:?}"
    );
    drop(vmm);
}
