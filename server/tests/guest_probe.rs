//! Live check of the transport with QEMU (`vfio-user-pci`) and a Linux guest, using the fake
//! controller. Ignored by default (needs the guest harness, takes a minute under TCG):
//! `cargo test -p znsd --test guest_probe -- --ignored --nocapture`.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

#[test]
#[ignore = "boots a VM through tests/guest/run-guest"]
fn qemu_enumerates_the_function_and_reaches_the_admin_queue() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let run_guest = root.join("tests/guest/run-guest");
    let fake = FakeCtrl::new();
    let srv = TestServer::start(fake.clone(), 5);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guest/probe.sh");
    let out = Command::new(&run_guest)
        .arg("--vfio-user")
        .arg(&srv.socket)
        .args(["--timeout", "300"])
        .arg(&script)
        .output()
        .expect("run-guest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("0x1b36 0x0010 0x010802"),
        "function not enumerated"
    );
    assert!(
        srv.running().device().irq.raised() > 0,
        "no interrupt delivered"
    );
}
