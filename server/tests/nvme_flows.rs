//! Full NVMe flows through vfio-user against the real controller and a zoned qcow2 image:
//! Linux-like bring-up, I/O with byte checks and exact statuses, zone management, guest
//! misprogramming, reconnects.

mod common;

use common::nvme_host::{opc, st, zsa, DoorbellPath, Host, Sqe};
use common::*;
use qcow2zoned::{CreateOptions, OpenOptions, ZoneOptions, ZonedImage};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const MIB: u64 = 1 << 20;
/// Zone size in bytes and in 4 KiB LBAs.
const ZONE: u64 = 16 * MIB;
const ZLBAS: u64 = ZONE / 4096;

fn create_image(path: &Path) {
    ZonedImage::create(
        path,
        &CreateOptions {
            size: 256 * MIB,
            cluster_size: 64 << 10,
            zone: ZoneOptions {
                size: ZONE,
                capacity: ZONE,
                conventional_zones: 0,
                max_open_zones: 4,
                max_active_zones: 6,
                max_append_bytes: 64 << 10,
                zd_extension_size: 64,
            },
        },
    )
    .unwrap();
}

fn controller(path: &Path, lba_size: u32) -> Arc<nvme::Controller> {
    controller_with(path, lba_size, 0)
}

/// A controller with `aio_threads` I/O threads (0: transfers run on the pollers).
fn controller_with(path: &Path, lba_size: u32, aio_threads: usize) -> Arc<nvme::Controller> {
    let img = ZonedImage::open(path, OpenOptions::default()).unwrap();
    let cfg = nvme::ControllerConfig {
        lba_size,
        max_io_queues: 4,
        aio_threads,
        ..Default::default()
    };
    Arc::new(nvme::Controller::new(Arc::new(img), cfg).unwrap())
}

struct Setup {
    _img_dir: tempfile::TempDir,
    srv: TestServer,
}

fn setup() -> Setup {
    setup_with(0)
}

/// Transfers on I/O threads: what `znsd serve --direct` runs.
const AIO: usize = 4;

fn setup_with(aio_threads: usize) -> Setup {
    let img_dir = tempfile::tempdir().unwrap();
    let path = img_dir.path().join("zns.qcow2");
    create_image(&path);
    let srv = TestServer::start(controller_with(&path, 4096, aio_threads), 5);
    Setup {
        _img_dir: img_dir,
        srv,
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i / 4096) as u8).wrapping_mul(31) ^ (i as u8))
        .collect()
}

#[test]
fn linux_bringup_identifies_zns_and_delivers_msix() {
    let s = setup();
    let mut h = Host::connect(&s.srv.socket, DoorbellPath::Mapped, 5);
    let idc = h.init(4);
    assert_eq!(u16::from_le_bytes([idc[0], idc[1]]), 0x1b36, "VID");
    assert!(
        h.irqs[0].take() > 0,
        "admin completions interrupt on vector 0"
    );
    // ZNS namespace (CNS 05h, CSI 02h): LBA format 0 zone size.
    let (c, zns) = h.admin_data(Sqe::identify(5, 1, 2), 4096);
    assert!(c.ok(), "{c:?}");
    let zsze = u64::from_le_bytes(zns[2816..2824].try_into().unwrap());
    assert_eq!(zsze, ZLBAS);
    // An I/O completion raises the CQ's own vector.
    let c = h.write(2, 0, &pattern(1, 4096));
    assert!(c.ok(), "{c:?}");
    assert!(h.irqs[2].wait(Duration::from_secs(2)) > 0);
}

fn io_and_zone_flow(path: DoorbellPath, aio_threads: usize) {
    let s = setup_with(aio_threads);
    let mut h = Host::connect(&s.srv.socket, path, 5);
    h.init(2);
    // Write at the write pointer, read back byte for byte.
    let data = pattern(7, 8 * 4096);
    assert_eq!(h.write(1, 0, &data).status(), st::SUCCESS);
    let (c, back) = h.read(1, 0, 8);
    assert_eq!(c.status(), st::SUCCESS);
    assert_eq!(back, data);
    // Not at the write pointer: Zone Invalid Write.
    assert_eq!(
        h.write(1, 100, &pattern(1, 4096)).status(),
        st::ZONE_INVALID_WRITE
    );
    // Beyond the namespace: LBA Out of Range.
    let nlbas = 256 * MIB / 4096;
    assert_eq!(h.write(1, nlbas, &pattern(1, 4096)).status(), st::LBA_RANGE);
    // Append to zone 1 returns the assigned LBA; twice.
    let z1 = ZLBAS;
    let c = h.append(2, z1, &pattern(2, 2 * 4096));
    assert_eq!(c.status(), st::SUCCESS);
    assert_eq!(c.result64(), z1);
    let c = h.append(2, z1, &pattern(3, 4096));
    assert_eq!(c.result64(), z1 + 2);
    let (_, back) = h.read(2, z1 + 2, 1);
    assert_eq!(back, pattern(3, 4096));
    // Report zones: zone 0 implicitly open with WP 8, zone 1 WP +3, zone 2 empty.
    let (n, z) = h.report(1, 0, 3);
    assert_eq!(n, 256 * MIB / ZONE);
    assert_eq!((z[0].0, z[0].1, z[0].2), (0x2, 0, 8));
    assert_eq!((z[1].1, z[1].2), (z1, z1 + 3));
    assert_eq!((z[2].0, z[2].2), (0x1, 2 * ZLBAS));
    // Finish zone 0 -> Full; writes then fail with Zone Is Full.
    let c = h.cmd(1, Sqe::zone_send(0, zsa::FINISH, false));
    assert!(c.ok(), "{c:?}");
    let (_, z) = h.report(1, 0, 1);
    assert_eq!(z[0].0, 0xe);
    assert_eq!(h.append(1, 0, &pattern(1, 4096)).status(), st::ZONE_FULL);
    // Reset zone 0: data reads as zeros, WP back at the start.
    assert!(h.cmd(1, Sqe::zone_send(0, zsa::RESET, false)).ok());
    let (c, back) = h.read(1, 0, 8);
    assert!(c.ok());
    assert_eq!(back, vec![0; 8 * 4096]);
    // Reads crossing a zone boundary: allowed only when OZCS.RAZB says so.
    let (c, zns) = h.admin_data(Sqe::identify(5, 1, 2), 4096);
    assert!(c.ok());
    let razb = zns[2] & 1 != 0;
    let (c, _) = h.read(1, z1 - 1, 2);
    let want = if razb { st::SUCCESS } else { st::ZONE_BOUNDARY };
    assert_eq!(c.status(), want, "{c:?}");
    // Flush succeeds.
    assert!(h.cmd(1, Sqe::new(opc::FLUSH)).ok());
    // Reset all zones.
    assert!(h.cmd(1, Sqe::zone_send(0, zsa::RESET, true)).ok());
    let (_, z) = h.report(1, 0, 2);
    assert_eq!((z[1].0, z[1].2), (0x1, z1));
}

#[test]
fn io_and_zones_with_mapped_doorbells() {
    io_and_zone_flow(DoorbellPath::Mapped, 0);
}

#[test]
fn io_and_zones_with_trapped_doorbells() {
    io_and_zone_flow(DoorbellPath::Trapped, 0);
}

#[test]
fn io_and_zones_on_io_threads() {
    io_and_zone_flow(DoorbellPath::Mapped, AIO);
    io_and_zone_flow(DoorbellPath::Trapped, AIO);
}

#[test]
fn large_transfer_uses_prp_list() {
    large_transfer(0);
}

#[test]
fn large_transfer_on_io_threads() {
    large_transfer(AIO);
}

fn large_transfer(aio_threads: usize) {
    let s = setup_with(aio_threads);
    let mut h = Host::connect(&s.srv.socket, DoorbellPath::Mapped, 5);
    h.init(1);
    let data = pattern(9, 64 * 4096);
    assert!(h.write(1, ZLBAS * 3, &data).ok());
    let (c, back) = h.read(1, ZLBAS * 3, 64);
    assert!(c.ok());
    assert_eq!(back, data);
}

#[test]
fn queues_work_in_parallel() {
    let s = setup();
    let mut h = Host::connect(&s.srv.socket, DoorbellPath::Mapped, 5);
    h.init(4);
    let mut bufs = vec![];
    for q in 1..=4u16 {
        let data = pattern(q as u8, 4 * 4096);
        let buf = h.alloc(data.len() as u64);
        h.ram.write(buf, &data);
        let (p1, p2) = h.prps(buf, data.len() as u64);
        let zslba = u64::from(q) * ZLBAS;
        h.submit(q, Sqe::rw(opc::ZONE_APPEND, zslba, 4, false).dptr(p1, p2));
        bufs.push((q, zslba, data));
    }
    for (q, zslba, data) in bufs {
        let c = h.reap(q);
        assert!(c.ok(), "queue {q}: {c:?}");
        assert_eq!(c.result64(), zslba);
        let (_, back) = h.read(q, zslba, 4);
        assert_eq!(back, data);
    }
}

#[test]
fn guest_misprogramming_gets_status_and_server_keeps_serving() {
    let s = setup();
    let mut h = Host::connect(&s.srv.socket, DoorbellPath::Mapped, 5);
    h.init(2);
    // PRP to memory the client never mapped: Data Transfer Error.
    let c = h.cmd(1, Sqe::rw(opc::WRITE, 0, 1, false).dptr(1 << 40, 0));
    assert_eq!(c.status(), st::DATA_TRANSFER);
    let c = h.cmd(1, Sqe::rw(opc::READ, 0, 1, false).dptr(1 << 40, 0));
    assert_eq!(c.status(), st::DATA_TRANSFER);
    // Unknown opcode, bad queue id at creation.
    assert_eq!(h.cmd(1, Sqe::new(0x7f)).status(), st::INVALID_OPCODE);
    let c = h.cmd(0, Sqe::create_cq(200, 16, 0x100000, false, 0));
    assert_eq!(c.status(), st::INVALID_QID);
    // SQ tail doorbell beyond the queue size: ignored (reported as an asynchronous event, no
    // command fetched); the queue keeps working with valid values. A reset clears it anyway.
    h.ring_sq(1, 10_000);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(h.reg32(0x1c) & 2, 0, "no CFS for an invalid doorbell value");
    let c = h.write(1, 0, &pattern(4, 4096));
    assert!(c.ok(), "{c:?}");
    h.disable();
    h.init(2);
    let (c, back) = h.read(1, 0, 1);
    assert!(c.ok());
    assert_eq!(back, pattern(4, 4096));
    // Admin queue in memory that is not mapped: commands cannot be fetched.
    h.disable();
    h.set_reg32(0x24, (7 << 16) | 7);
    h.set_reg64(0x28, 1 << 40);
    h.set_reg64(0x30, 1 << 41);
    h.set_reg32(0x14, 1 | (6 << 4) | (6 << 16) | (4 << 20));
    std::thread::sleep(Duration::from_millis(20));
    h.ring_sq(0, 1);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(
        h.reg32(0x1c) & 2,
        2,
        "admin queue fetch failure: Controller Fatal Status"
    );
    h.disable();
    h.init(2);
    let (c, back) = h.read(1, 0, 1);
    assert!(c.ok());
    assert_eq!(back, pattern(4, 4096));
}

#[test]
fn reconnect_keeps_zones_and_data() {
    let s = setup();
    let data = pattern(5, 3 * 4096);
    {
        let mut h = Host::connect(&s.srv.socket, DoorbellPath::Mapped, 5);
        h.init(2);
        assert!(h.write(1, ZLBAS * 2, &data).ok());
        // The client goes away without shutting the controller down.
    }
    s.srv.wait_clients_done(1);
    let mut h = Host::connect(&s.srv.socket, DoorbellPath::Trapped, 5);
    assert_eq!(
        h.reg32(0x1c) & 1,
        0,
        "controller reset after the previous client"
    );
    h.init(2);
    let (c, back) = h.read(1, ZLBAS * 2, 3);
    assert!(c.ok());
    assert_eq!(back, data);
    let (_, z) = h.report(1, ZLBAS * 2, 1);
    assert_eq!(z[0].2, ZLBAS * 2 + 3, "write pointer kept");
}

#[test]
fn server_restart_reopens_image_with_zones_kept() {
    let img_dir = tempfile::tempdir().unwrap();
    let path = img_dir.path().join("zns.qcow2");
    create_image(&path);
    let data = pattern(6, 2 * 4096);
    {
        let srv = TestServer::start(controller(&path, 4096), 5);
        let mut h = Host::connect(&srv.socket, DoorbellPath::Mapped, 5);
        h.init(1);
        assert!(h.append(1, ZLBAS * 5, &data).ok());
        drop(h);
        srv.wait_clients_done(1);
    }
    // The image was flushed on disconnect/shutdown; reopen it in a fresh server.
    std::thread::sleep(Duration::from_millis(50));
    let srv = TestServer::start(controller(&path, 4096), 5);
    let mut h = Host::connect(&srv.socket, DoorbellPath::Mapped, 5);
    h.init(1);
    let (_, z) = h.report(1, ZLBAS * 5, 1);
    assert_eq!(z[0].2, ZLBAS * 5 + 2);
    let (c, back) = h.read(1, ZLBAS * 5, 2);
    assert!(c.ok());
    assert_eq!(back, data);
}

#[test]
fn idle_pollers_wake_quickly_on_a_mapped_doorbell() {
    let s = setup();
    let mut h = Host::connect(&s.srv.socket, DoorbellPath::Mapped, 5);
    h.init(1);
    let mut best = Duration::MAX;
    for i in 0..3u64 {
        // Long enough for every poller to stop polling and leave it to the watcher.
        std::thread::sleep(Duration::from_millis(120));
        let t0 = std::time::Instant::now();
        assert!(h.write(1, i, &pattern(8, 4096)).ok());
        best = best.min(t0.elapsed());
    }
    assert!(best < Duration::from_millis(30), "wake-up took {best:?}");
}

/// Rings wrap many times; with the CQ full the controller holds completions back until the
/// host's CQ head doorbell frees slots (which must wake the poller on either doorbell path).
fn full_cq_flow_control(path: DoorbellPath, aio_threads: usize) {
    let s = setup_with(aio_threads);
    let mut h = Host::connect(&s.srv.socket, path, 5);
    h.init(1);
    h.create_io_queue(2, 8);
    let zslba = ZLBAS * 7;
    let mut lbas = Vec::new();
    for round in 0..6u8 {
        // 7 commands fill the 8-entry CQ (one slot always stays empty).
        let mut cids = Vec::new();
        for k in 0..7u8 {
            let data = pattern(round.wrapping_mul(7).wrapping_add(k), 4096);
            let buf = h.alloc(4096);
            h.ram.write(buf, &data);
            cids.push(h.submit(2, Sqe::rw(opc::ZONE_APPEND, zslba, 1, false).dptr(buf, 0)));
        }
        let first: Vec<_> = (0..7).map(|_| h.reap_quiet(2)).collect();
        // CQ full from the controller's view: 7 more submissions must wait.
        for k in 0..7u8 {
            let data = pattern(
                100u8.wrapping_add(round.wrapping_mul(7)).wrapping_add(k),
                4096,
            );
            let buf = h.alloc(4096);
            h.ram.write(buf, &data);
            cids.push(h.submit(2, Sqe::rw(opc::ZONE_APPEND, zslba, 1, false).dptr(buf, 0)));
        }
        std::thread::sleep(Duration::from_millis(20));
        assert!(!h.cq_pending(2), "completion posted into a full CQ");
        h.ring_cq_head(2);
        let second: Vec<_> = (0..7).map(|_| h.reap(2)).collect();
        let mut got: Vec<u16> = Vec::new();
        for c in first.iter().chain(second.iter()) {
            assert!(c.ok(), "{c:?}");
            got.push(c.cid);
            lbas.push(c.result64());
        }
        if aio_threads == 0 {
            assert_eq!(got, cids, "completions in submission order on one queue");
        } else {
            // I/O threads finish in any order; every command still completes once.
            got.sort_unstable();
            let mut want = cids.clone();
            want.sort_unstable();
            assert_eq!(got, want);
        }
    }
    let mut sorted = lbas.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), lbas.len(), "every append got its own LBA");
    assert_eq!(sorted, (zslba..zslba + 84).collect::<Vec<_>>());
}

#[test]
fn full_cq_flow_control_mapped() {
    full_cq_flow_control(DoorbellPath::Mapped, 0);
}

#[test]
fn full_cq_flow_control_trapped() {
    full_cq_flow_control(DoorbellPath::Trapped, 0);
}

#[test]
fn full_cq_flow_control_on_io_threads() {
    full_cq_flow_control(DoorbellPath::Mapped, AIO);
}

/// A deep queue of sequential writes to one zone and of appends to another, submitted
/// before any completes: admitted in submission order (every write lands at the write
/// pointer), transferred in parallel on the I/O threads, every byte reads back.
fn deep_queue_to_one_zone(aio_threads: usize) {
    let s = setup_with(aio_threads);
    let mut h = Host::connect(&s.srv.socket, DoorbellPath::Mapped, 5);
    h.init(1);
    const DEPTH: u64 = 24;
    let zw = ZLBAS * 4;
    let mut want = Vec::new();
    let mut cids = Vec::new();
    for k in 0..DEPTH {
        let data = pattern(k as u8, 2 * 4096);
        let buf = h.alloc(data.len() as u64);
        h.ram.write(buf, &data);
        let (p1, p2) = h.prps(buf, data.len() as u64);
        cids.push(h.submit(1, Sqe::rw(opc::WRITE, zw + 2 * k, 2, false).dptr(p1, p2)));
        want.extend_from_slice(&data);
    }
    let mut done: Vec<u16> = (0..DEPTH)
        .map(|_| {
            let c = h.reap(1);
            assert!(c.ok(), "{c:?}");
            c.cid
        })
        .collect();
    done.sort_unstable();
    cids.sort_unstable();
    assert_eq!(done, cids);
    let (c, back) = h.read(1, zw, (2 * DEPTH) as u32);
    assert!(c.ok());
    assert!(back == want, "sequential writes read back");
    let (_, z) = h.report(1, zw, 1);
    assert_eq!(
        (z[0].0, z[0].2),
        (0x2, zw + 2 * DEPTH),
        "implicitly open, WP moved"
    );
    // Appends: each gets its own LBA, and its data is at that LBA.
    let za = ZLBAS * 5;
    let mut sent = Vec::new();
    for k in 0..DEPTH {
        let data = pattern(100 + k as u8, 4096);
        let buf = h.alloc(4096);
        h.ram.write(buf, &data);
        let cid = h.submit(1, Sqe::rw(opc::ZONE_APPEND, za, 1, false).dptr(buf, 0));
        sent.push((cid, data));
    }
    let done: Vec<_> = (0..DEPTH).map(|_| h.reap(1)).collect();
    let mut lbas = Vec::new();
    for c in done {
        assert!(c.ok(), "{c:?}");
        let (_, data) = sent.iter().find(|(cid, _)| *cid == c.cid).unwrap();
        let (rc, back) = h.read(1, c.result64(), 1);
        assert!(rc.ok());
        assert!(&back == data, "append data at its reported LBA");
        lbas.push(c.result64());
    }
    lbas.sort_unstable();
    assert_eq!(lbas, (za..za + DEPTH).collect::<Vec<_>>());
    // A write not at the write pointer is refused when admitted, with the exact status.
    assert_eq!(
        h.write(1, zw + 1, &pattern(1, 4096)).status(),
        st::ZONE_INVALID_WRITE
    );
}

#[test]
fn deep_queue_to_one_zone_on_the_poller() {
    deep_queue_to_one_zone(0);
}

#[test]
fn deep_queue_to_one_zone_on_io_threads() {
    deep_queue_to_one_zone(AIO);
}

#[test]
fn guest_reboot_sequence_resets_controller_and_keeps_data() {
    guest_reboot(0);
}

#[test]
fn guest_reboot_with_io_threads() {
    guest_reboot(AIO);
}

fn guest_reboot(aio_threads: usize) {
    let s = setup_with(aio_threads);
    let mut h = Host::connect(&s.srv.socket, DoorbellPath::Mapped, 5);
    h.init(2);
    let data = pattern(11, 2 * 4096);
    assert!(h.write(2, ZLBAS * 9, &data).ok());
    h.system_reset();
    assert_eq!(h.reg32(0x1c) & 1, 0, "not ready after DEVICE_RESET");
    assert_eq!(h.reg32(0x14), 0, "CC back to its reset value");
    h.init(2);
    let (c, back) = h.read(1, ZLBAS * 9, 2);
    assert!(c.ok());
    assert_eq!(back, data);
    let (_, z) = h.report(1, ZLBAS * 9, 1);
    assert_eq!(z[0].2, ZLBAS * 9 + 2);
    assert!(h.irqs[1].take() > 0, "MSI-X works again after the reset");
}

#[test]
fn firmware_style_intx_with_trapped_doorbells() {
    let s = setup();
    let mut h = Host::connect_intx(&s.srv.socket);
    let csts = h.enable();
    assert_eq!(csts & 3, 1);
    let (c, idc) = h.admin_data(Sqe::identify(1, 0, 0), 4096);
    assert!(c.ok());
    assert_eq!(u16::from_le_bytes([idc[0], idc[1]]), 0x1b36);
    assert_eq!(h.irqs[0].wait(Duration::from_secs(2)), 1, "INTx fired");
    // Automasked: the next completion does not fire until the VMM reports the EOI.
    let (c, _) = h.admin_data(Sqe::identify(0, 1, 0), 4096);
    assert!(c.ok());
    std::thread::sleep(Duration::from_millis(10));
    assert_eq!(h.irqs[0].take(), 0, "masked until EOI");
    h.intx_eoi();
    assert_eq!(
        h.irqs[0].wait(Duration::from_secs(2)),
        1,
        "pending INTx after EOI"
    );
}
