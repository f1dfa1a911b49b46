//! The vfio-user layer without the real controller: config space, region info, BAR0 sparse
//! mmap, DMA map → guest memory, interrupts, reconnects, malformed messages.

mod common;

use common::*;
use nvme::{Doorbells, GuestMemory, Interrupts};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use vfio_bindings::bindings::vfio::*;

const EFD_TRIGGER: u32 = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;

#[test]
fn config_space_as_qemu_reads_it() {
    let srv = TestServer::start(FakeCtrl::new(), 5);
    let mut c = srv.connect();
    // QEMU reads the whole config space in one access at realize.
    let mut cfg = vec![0u8; 4096];
    c.region_read(7, 0, &mut cfg).unwrap();
    assert_eq!(&cfg[0..4], &[0x36, 0x1b, 0x10, 0x00]);
    assert_eq!(
        &cfg[8..12],
        &[0x02, 0x02, 0x08, 0x01],
        "rev 2, class 010802"
    );
    assert_eq!(&cfg[0x2c..0x30], &[0xf4, 0x1a, 0x00, 0x11]);
    assert_eq!(cfg[0x10] & 0x7, 0x4, "BAR0 64-bit memory");
    assert_eq!(cfg[0x3d], 1, "INTA");
    assert_ne!(cfg[6] & 0x10, 0, "capabilities list");
    // PM -> MSI-X -> PCIe.
    assert_eq!((cfg[0x40], cfg[0x41]), (0x01, 0x50));
    assert_eq!((cfg[0x50], cfg[0x51]), (0x11, 0x60));
    assert_eq!(
        u16::from_le_bytes([cfg[0x52], cfg[0x53]]) & 0x7ff,
        4,
        "5 vectors"
    );
    assert_eq!(cfg_read32(&mut c, 0x54), 4, "table BIR 4");
    assert_eq!(cfg_read32(&mut c, 0x58), 5, "PBA BIR 5");
    assert_eq!((cfg[0x60], cfg[0x61]), (0x10, 0x00));
    assert_eq!(cfg[0x62] & 0xf, 2, "PCIe cap version 2");
    assert_eq!((cfg[0x62] >> 4) & 0xf, 0, "endpoint");
    // BAR sizing writes are accepted and ignored; command register tracked.
    c.region_write(7, 0x10, &0xffff_ffffu32.to_le_bytes())
        .unwrap();
    assert_eq!(cfg_read32(&mut c, 0x10), 4);
    cfg_write16(&mut c, 4, 0x0406);
    assert_eq!(cfg_read32(&mut c, 4) & 0xffff, 0x0406);
    // Out-of-range config read: all-ones, connection still fine.
    let mut b = [0u8; 4];
    c.region_read(7, 4094, &mut b).unwrap();
    assert_eq!(b, [0, 0, 0xff, 0xff]);
}

#[test]
fn regions_and_irqs_declared_in_order() {
    let srv = TestServer::start(FakeCtrl::new(), 5);
    let c = srv.connect();
    let sizes: Vec<u64> = (0..9).map(|i| c.region(i).unwrap().size).collect();
    assert_eq!(sizes, vec![0x4000, 0, 0, 0, 0x1000, 0x1000, 0, 4096, 0]);
    let b0 = c.region(0).unwrap();
    assert_eq!(
        b0.flags
            & (VFIO_REGION_INFO_FLAG_READ
                | VFIO_REGION_INFO_FLAG_WRITE
                | VFIO_REGION_INFO_FLAG_MMAP),
        VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE | VFIO_REGION_INFO_FLAG_MMAP
    );
    assert_eq!(b0.sparse_areas.len(), 1);
    assert_eq!(
        (b0.sparse_areas[0].offset, b0.sparse_areas[0].size),
        (0x1000, 0x1000)
    );
    assert!(
        b0.file_offset.is_some(),
        "doorbell fd sent with the region info"
    );
    assert_eq!(c.region(4).unwrap().flags & VFIO_REGION_INFO_FLAG_MMAP, 0);
    let mut c = c;
    let irqs: Vec<(u32, u32)> = (0..5)
        .map(|i| {
            let x = c.get_irq_info(i).unwrap();
            assert_eq!(x.index, i);
            (x.count, x.flags)
        })
        .collect();
    assert_eq!(irqs[0].0, 1);
    assert_ne!(irqs[0].1 & VFIO_IRQ_INFO_AUTOMASKED, 0);
    assert_eq!(irqs[1].0, 0);
    assert_eq!(
        irqs[2],
        (5, VFIO_IRQ_INFO_EVENTFD),
        "MSI-X: no NORESIZE, not maskable"
    );
    assert_eq!(irqs[3].0, 1);
    assert_eq!(irqs[4].0, 0);
}

#[test]
fn doorbells_mapped_and_trapped_share_one_page() {
    let srv = TestServer::start(FakeCtrl::new(), 5);
    let mut c = srv.connect();
    let (db, base) = map_doorbells(&c);
    assert_eq!(base, 0x1000);
    let dev = Arc::clone(srv.running().device());
    // Guest store through the mapping (no message).
    db.store_u32_release(8 * 2, 9);
    assert_eq!(dev.doorbells.sq_tail(2), 9);
    // Trapped write (QEMU with INTx pending).
    bar_write32(&mut c, 0x1000 + 8 * 3 + 4, 7);
    assert_eq!(dev.doorbells.cq_head(3), 7);
    assert_eq!(db.load_u32_acquire(8 * 3 + 4), 7);
    // Misaligned / wrong-width doorbell writes are dropped; reserved space reads zero.
    c.region_write(0, 0x1001, &[1, 2, 3, 4]).unwrap();
    c.region_write(0, 0x1010, &[1, 2]).unwrap();
    assert_eq!(dev.doorbells.sq_tail(2), 9);
    assert_eq!(dev.doorbells.sq_tail(0), 0);
    assert_eq!(bar_read32(&mut c, 0x3000), 0);
    // Posted (NO_REPLY) doorbell write through the raw protocol.
    drop(c);
    srv.wait_clients_done(1);
    let mut raw = RawClient::connect(&srv.socket);
    raw.version(br#"{"capabilities":{}}"#, true).unwrap();
    raw.region_write_posted(0, 0x1000 + 8 * 4, &5u32.to_le_bytes());
    let r = raw.region_read(0, 0x1000 + 8 * 4, 4);
    assert_eq!(&r[HDR + 16..], &5u32.to_le_bytes());
}

#[test]
fn dma_map_gives_guest_memory_and_unmap_removes_it() {
    let srv = TestServer::start(FakeCtrl::new(), 5);
    let mut c = srv.connect();
    let ram = GuestRam::new();
    // Two maps of the same fd, like QEMU splitting low RAM.
    c.dma_map(0, 0, 0xc0000, ram.raw_fd()).unwrap();
    c.dma_map(0x100000, 0x100000, RAM_SIZE - 0x100000, ram.raw_fd())
        .unwrap();
    let dev = Arc::clone(srv.running().device());
    ram.write(0x200000, b"hello guest");
    let mut b = [0u8; 11];
    dev.ram.read(0x200000, &mut b).unwrap();
    assert_eq!(&b, b"hello guest");
    dev.ram.write(0x1000, b"from device").unwrap();
    assert_eq!(ram.read(0x1000, 11), b"from device");
    assert!(dev.ram.read(0xc0000, &mut b).is_err(), "hole");
    c.dma_unmap(0x100000, RAM_SIZE - 0x100000).unwrap();
    assert!(dev.ram.read(0x200000, &mut b).is_err());
    dev.ram.read(0x1000, &mut b).unwrap();
    // Overlapping map refused; the connection keeps working.
    c.dma_map(0, 0x1000, 0x1000, ram.raw_fd()).unwrap();
    assert_eq!(dev.ram.snapshot().entries().len(), 1);
    assert_eq!(cfg_read32(&mut c, 0) & 0xffff, 0x1b36);
}

#[test]
fn fdless_map_is_inaccessible_and_unmap_all_uses_bit_1() {
    let srv = TestServer::start(FakeCtrl::new(), 5);
    let mut raw = RawClient::connect(&srv.socket);
    raw.version(br#"{"capabilities":{"max_msg_fds":16}}"#, true)
        .unwrap();
    let r = raw.dma_map_nofd(0xfffc0000, 0x40000, 1);
    assert_eq!(reply_flags(&r) & 0x20, 0, "no error reply");
    let dev = Arc::clone(srv.running().device());
    let e = dev.ram.snapshot();
    assert_eq!(e.entries().len(), 1);
    assert!(e.entries()[0].map.is_none());
    let mut b = [0u8; 4];
    assert!(dev.ram.read(0xfffc0000, &mut b).is_err());
    drop(e);
    let r = raw.dma_unmap(0, 0, VFIO_DMA_UNMAP_FLAG_ALL);
    assert_eq!(r.len(), HDR + 24);
    assert!(dev.ram.snapshot().entries().is_empty());
}

#[test]
fn msix_and_intx_interrupts() {
    let srv = TestServer::start(FakeCtrl::new(), 5);
    let mut c = srv.connect();
    let dev = Arc::clone(srv.running().device());
    let (v0, v1, intx) = (Irq::new(), Irq::new(), Irq::new());
    // INTx while MSI-X is off.
    c.set_irqs(0, EFD_TRIGGER, 0, 1, &[intx.raw()]).unwrap();
    dev.irq.raise(0);
    assert_eq!(intx.take(), 1);
    dev.irq.raise(0);
    assert_eq!(intx.take(), 0, "automasked until unmask");
    c.set_irqs(
        0,
        VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK,
        0,
        1,
        &[],
    )
    .unwrap();
    assert_eq!(intx.take(), 1, "pending INTx delivered on unmask");
    // MSI-X: QEMU first sends vector 0 with no fd to switch modes, then real vectors.
    c.set_irqs(2, EFD_TRIGGER, 0, 1, &[]).unwrap();
    cfg_write16(&mut c, 0x52, 0xc000);
    cfg_write16(&mut c, 0x52, 0x8000);
    c.set_irqs(2, EFD_TRIGGER, 0, 1, &[v0.raw()]).unwrap();
    c.set_irqs(2, EFD_TRIGGER, 1, 1, &[v1.raw()]).unwrap();
    dev.irq.raise(1);
    assert_eq!(v1.take(), 1);
    assert_eq!(intx.take(), 0);
    // Function mask: pending, then delivered on unmask; PBA shows the bit meanwhile.
    cfg_write16(&mut c, 0x52, 0xc000);
    dev.irq.raise(0);
    assert_eq!(v0.take(), 0);
    let mut pba = [0u8; 8];
    c.region_read(5, 0, &mut pba).unwrap();
    assert_eq!(pba[0], 1);
    cfg_write16(&mut c, 0x52, 0x8000);
    assert_eq!(v0.take(), 1);
    // De-assign with zero fds; disable the index.
    c.set_irqs(2, EFD_TRIGGER, 1, 1, &[]).unwrap();
    dev.irq.raise(1);
    assert_eq!(v1.take(), 0);
    c.set_irqs(
        2,
        VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
        0,
        0,
        &[],
    )
    .unwrap();
    dev.irq.raise(0);
    assert_eq!(v0.take(), 0);
    // ERR eventfd accepted; unknown index ignored without breaking the connection.
    let err = Irq::new();
    c.set_irqs(3, EFD_TRIGGER, 0, 1, &[err.raw()]).unwrap();
    c.set_irqs(1, EFD_TRIGGER, 0, 1, &[]).unwrap();
    assert_eq!(cfg_read32(&mut c, 0) & 0xffff, 0x1b36);
}

/// Admin submission through the fake controller: SQE read from DMA-mapped guest RAM, CQE
/// written back, MSI-X vector 0 fired; both doorbell paths.
#[test]
fn admin_roundtrip_through_fake_controller() {
    let fake = FakeCtrl::new();
    let srv = TestServer::start(fake.clone(), 5);
    let mut c = srv.connect();
    let ram = GuestRam::new();
    c.dma_map(0, 0, RAM_SIZE, ram.raw_fd()).unwrap();
    let v0 = Irq::new();
    cfg_write16(&mut c, 0x52, 0x8000);
    c.set_irqs(2, EFD_TRIGGER, 0, 1, &[v0.raw()]).unwrap();
    let (db, _) = map_doorbells(&c);
    let (asq, acq, data) = (0x10000u64, 0x20000u64, 0x30000u64);
    bar_write32(&mut c, 0x24, (3 << 16) | 3);
    bar_write64(&mut c, 0x28, asq);
    bar_write64(&mut c, 0x30, acq);
    bar_write32(&mut c, 0x14, 1);
    assert_eq!(bar_read32(&mut c, 0x1c) & 1, 1);
    for (i, mapped) in [(0u16, true), (1, false), (2, true), (3, false), (4, true)] {
        let slot = u64::from(i % 4);
        let mut sqe = [0u8; 64];
        sqe[0] = 0x06;
        sqe[2..4].copy_from_slice(&(0x100 + i).to_le_bytes());
        sqe[24..32].copy_from_slice(&data.to_le_bytes());
        ram.write(asq + slot * 64, &sqe);
        ram.fill(data, 4096, 0);
        let tail = u32::from((i + 1) % 4);
        if mapped {
            db.store_u32_release(0, tail);
        } else {
            bar_write32(&mut c, 0x1000, tail);
        }
        v0.wait(Duration::from_secs(2));
        let cqe = ram.read(acq + slot * 16, 16);
        assert_eq!(u16::from_le_bytes([cqe[12], cqe[13]]), 0x100 + i, "cid");
        let phase = u16::from(i < 4);
        assert_eq!(
            u16::from_le_bytes([cqe[14], cqe[15]]),
            phase,
            "success, phase"
        );
        assert_eq!(ram.read(data, 4096), vec![0xa5; 4096]);
    }
    // PRP outside every DMA map: Data Transfer Error (status 0x4), controller keeps going.
    let mut sqe = [0u8; 64];
    sqe[0] = 0x06;
    sqe[2..4].copy_from_slice(&0x200u16.to_le_bytes());
    sqe[24..32].copy_from_slice(&(1u64 << 40).to_le_bytes());
    ram.write(asq + 64, &sqe);
    db.store_u32_release(0, 2);
    v0.wait(Duration::from_secs(2));
    let cqe = ram.read(acq + 16, 16);
    assert_eq!(u16::from_le_bytes([cqe[12], cqe[13]]), 0x200);
    assert_eq!(u16::from_le_bytes([cqe[14], cqe[15]]) >> 1, 0x4);
    drop(c);
    srv.wait_clients_done(1);
    assert!(fake.resets.load(Ordering::SeqCst) >= 1);
    assert!(
        fake.flushes.load(Ordering::SeqCst) >= 1,
        "image flushed on disconnect"
    );
    assert!(srv.running().device().ram.snapshot().entries().is_empty());
}

#[test]
fn reconnect_drops_client_state_and_serves_next_client() {
    let fake = FakeCtrl::new();
    let srv = TestServer::start(fake.clone(), 3);
    let ram = GuestRam::new();
    for round in 1..=3u64 {
        let mut c = srv.connect();
        c.dma_map(0, 0, RAM_SIZE, ram.raw_fd()).unwrap();
        let v = Irq::new();
        c.set_irqs(2, EFD_TRIGGER, 0, 1, &[v.raw()]).unwrap();
        assert_eq!(srv.running().device().ram.snapshot().entries().len(), 1);
        drop(c);
        srv.wait_clients_done(round);
        assert!(srv.running().device().ram.snapshot().entries().is_empty());
        assert_eq!(
            fake.flushes.load(Ordering::SeqCst),
            u32::try_from(round).unwrap()
        );
    }
}

#[test]
fn stale_socket_replaced_live_socket_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    {
        let _l = std::os::unix::net::UnixListener::bind(&path).unwrap();
    }
    assert!(path.exists(), "stale socket file left behind");
    let r = znsd::start(
        FakeCtrl::new(),
        &znsd::ServerOptions {
            socket: path.clone(),
            io_pollers: 1,
            msix_vectors: 2,
        },
    )
    .unwrap();
    let err = znsd::start(
        FakeCtrl::new(),
        &znsd::ServerOptions {
            socket: path.clone(),
            io_pollers: 1,
            msix_vectors: 2,
        },
    )
    .unwrap_err();
    assert!(matches!(err, znsd::ServeError::SocketInUse(_)), "{err}");
    let c = vfio_user::Client::new(&path).unwrap();
    drop(c);
    r.shutdown().unwrap();
    assert!(!path.exists(), "socket removed on shutdown");
    std::fs::write(&path, b"not a socket").unwrap();
    let err = znsd::start(
        FakeCtrl::new(),
        &znsd::ServerOptions {
            socket: path.clone(),
            io_pollers: 1,
            msix_vectors: 2,
        },
    )
    .unwrap_err();
    assert!(matches!(err, znsd::ServeError::NotASocket(_)));
}

#[test]
fn malformed_version_is_a_disconnect_not_a_crash() {
    let srv = TestServer::start(FakeCtrl::new(), 3);
    // No NUL terminator: the crate panics inside run(); we treat it as a disconnect.
    let mut raw = RawClient::connect(&srv.socket);
    assert!(raw.version(br#"{"capabilities":{}}"#, false).is_err());
    srv.wait_clients_done(1);
    // Garbage JSON: error reply, connection stays.
    let mut raw = RawClient::connect(&srv.socket);
    let r = raw.version(b"not json", true).unwrap();
    assert_ne!(reply_flags(&r) & 0x20, 0);
    drop(raw);
    srv.wait_clients_done(2);
    let mut c = srv.connect();
    assert_eq!(cfg_read32(&mut c, 0), 0x0010_1b36);
}

#[test]
fn device_reset_keeps_dma_maps() {
    let fake = FakeCtrl::new();
    let srv = TestServer::start(fake.clone(), 3);
    let mut c = srv.connect();
    let ram = GuestRam::new();
    c.dma_map(0, 0, RAM_SIZE, ram.raw_fd()).unwrap();
    bar_write32(&mut c, 0x14, 1);
    let (db, _) = map_doorbells(&c);
    db.store_u32_release(0, 3);
    c.reset().unwrap();
    assert_eq!(fake.resets.load(Ordering::SeqCst), 1);
    assert_eq!(bar_read32(&mut c, 0x1c), 0, "not ready after reset");
    assert_eq!(db.load_u32_acquire(0), 0, "doorbells zeroed");
    assert_eq!(srv.running().device().ram.snapshot().entries().len(), 1);
}

#[test]
fn malformed_headers_do_not_take_the_server_down() {
    use std::io::Write;
    let srv = TestServer::start(FakeCtrl::new(), 3);
    // VERSION whose size is smaller than its own header (the crate underflows and panics).
    let mut raw = RawClient::connect(&srv.socket);
    let m = raw.header(1, 8, 0);
    raw.s.write_all(&m).unwrap();
    let _ = raw.s.write_all(&[0u8; 4]);
    let _ = raw.read_reply();
    drop(raw);
    srv.wait_clients_done(1);
    // Unknown command without payload: error reply, the connection stays usable.
    let mut raw = RawClient::connect(&srv.socket);
    raw.version(br#"{"capabilities":{}}"#, true).unwrap();
    let m = raw.header(99, HDR, 0);
    raw.s.write_all(&m).unwrap();
    let r = raw.read_reply().unwrap();
    assert_ne!(reply_flags(&r) & 0x20, 0, "error reply");
    // Oversized region read: answered (zeros), nothing touched.
    let r = raw.region_read(7, 0, 1 << 20);
    assert_eq!(r.len(), HDR + 16 + (1 << 20));
    let r = raw.region_read(7, 0, 4);
    assert_eq!(&r[HDR + 16..], &[0x36, 0x1b, 0x10, 0x00]);
    // Truncated header then EOF.
    let mut raw2 = RawClient::connect(&srv.socket);
    drop(raw);
    srv.wait_clients_done(2);
    raw2.s.write_all(&[1, 0, 1]).unwrap();
    drop(raw2);
    srv.wait_clients_done(3);
    let mut c = srv.connect();
    assert_eq!(cfg_read32(&mut c, 0), 0x0010_1b36);
}
