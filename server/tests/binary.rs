//! The `znsd` binary: defaults with no arguments, CLI options reaching the controller,
//! SIGTERM handling (flush, socket removed, exit 0).

mod common;

use common::daemon::Daemon;
use common::nvme_host::{DoorbellPath, Host, Sqe};
use common::*;

#[test]
fn no_arguments_creates_default_image_and_prints_qemu_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::spawn(dir.path(), &[]);
    let out = d.wait_line("vfio-user-pci");
    let sock = dir.path().join("znsd.sock");
    assert!(
        dir.path().join("znsd.qcow2").exists(),
        "default image created"
    );
    assert!(sock.exists());
    assert!(
        out.contains("memory-backend-memfd,id=mem,size=2G,share=on"),
        "{out}"
    );
    assert!(out.contains(r#""socket":{"type":"unix","path":""#), "{out}");
    assert!(out.contains("znsd.sock"), "{out}");
    let mut c = vfio_user::Client::new(&sock).unwrap();
    assert_eq!(cfg_read32(&mut c, 0), 0x0010_1b36);
    drop(c);
    assert_eq!(d.terminate(), 0, "exit status after SIGTERM");
    assert!(!sock.exists(), "socket removed on SIGTERM");
    // Second start: the image exists and is reused; a stale socket file would be replaced.
    {
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    }
    let d = Daemon::spawn(dir.path(), &["serve"]);
    d.wait_line("vfio-user-pci");
    assert_eq!(d.terminate(), 0);
}

#[test]
fn serve_options_reach_the_controller() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let img = dir.path().join("z.qcow2");
    let d = Daemon::spawn(
        dir.path(),
        &[
            "serve",
            "--image",
            img.to_str().unwrap(),
            "--socket",
            sock.to_str().unwrap(),
            "--create",
            "256M",
            "-o",
            "zone.size=16M,zone.max_open_zones=3,zone.max_active_zones=5,zone.zd_extension_size=128",
            "--lba-size",
            "512",
            "--queues",
            "2",
            "--cache",
            "writethrough",
        ],
    );
    d.wait_line("vfio-user-pci");
    let mut h = Host::connect(&sock, DoorbellPath::Mapped, 3);
    let idc = h.init(2);
    assert_eq!(h.lba, 512);
    assert_eq!(idc[525] & 1, 0, "no volatile write cache with writethrough");
    let (c, zns) = h.admin_data(Sqe::identify(5, 1, 2), 4096);
    assert!(c.ok());
    let mar = u32::from_le_bytes(zns[4..8].try_into().unwrap());
    let mor = u32::from_le_bytes(zns[8..12].try_into().unwrap());
    assert_eq!((mar, mor), (4, 2), "0's based limits");
    let zsze = u64::from_le_bytes(zns[2816..2824].try_into().unwrap());
    assert_eq!(zsze, 16 * 1024 * 1024 / 512);
    assert_eq!(zns[2824], 2, "ZDES in 64-byte units");
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    assert!(h.write(1, 0, &data).ok());
    let (c, back) = h.read(2, 0, 8);
    assert!(c.ok());
    assert_eq!(back, data);
    drop(h);
    assert_eq!(d.terminate(), 0);
}
