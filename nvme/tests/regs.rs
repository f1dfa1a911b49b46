//! Registers, controller enable/reset/shutdown, misprogramming, flow control, interrupts and
//! concurrency between the register thread and pollers.

mod common;

use common::*;
use nvme::test_utils::{cc_value, Command, Driver};
use nvme::{Controller, ControllerConfig, Doorbells, GuestMemory, Status};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

fn fresh(cfg: ControllerConfig) -> (tempfile::TempDir, Driver) {
    let (dir, img) = image(Geo::default());
    let ctrl = Arc::new(Controller::new(img, cfg).unwrap());
    (dir, Driver::new(ctrl, 64 << 20))
}

#[test]
fn capability_and_version_registers() {
    let (_dir, d) = fresh(ControllerConfig::default());
    let cap = d.reg64(0x00);
    assert_eq!(cap & 0xFFFF, 1023, "MQES");
    assert_eq!((cap >> 16) & 1, 1, "CQR");
    assert!((cap >> 24) & 0xFF > 0, "TO");
    assert_eq!((cap >> 32) & 0xF, 0, "DSTRD");
    assert_eq!((cap >> 37) & 1, 1, "CSS NVM");
    assert_eq!((cap >> 43) & 1, 1, "CSS I/O command sets");
    assert_eq!((cap >> 48) & 0xF, 0, "MPSMIN 4 KiB");
    assert_eq!(d.reg32(0x00), cap as u32);
    assert_eq!(d.reg32(0x04), (cap >> 32) as u32);
    assert_eq!(d.reg32(0x08), 0x0002_0000, "VS 2.0");
    assert_eq!(d.reg32(0x1C), 0, "CSTS at power-on");
    assert!(!d.ctrl.ready());
    // Odd sizes and reserved offsets read as zero; writes to read-only registers are ignored.
    let mut b = [0xFFu8; 2];
    d.ctrl.mmio_read(0x08, &mut b);
    assert_eq!(b, [0, 0]);
    assert_eq!(d.reg32(0x50), 0);
    d.set_reg64(0x00, 0);
    assert_eq!(d.reg64(0x00), cap);
    d.set_reg32(0x1C, 1);
    assert_eq!(d.reg32(0x1C), 0);
    let e = d.ctrl.mmio_write(&d.host.env(), 0x14, &[1, 0]);
    assert!(!e.queues_changed);
    assert_eq!(d.reg32(0x14), 0, "2-byte CC write ignored");
}

#[test]
fn enable_reports_queue_change_and_clears_doorbells() {
    let (_dir, mut d) = fresh(ControllerConfig::default());
    d.host.doorbells.set_sq_tail(0, 5);
    let clears = d.host.doorbells.clears();
    let asq = d.alloc(4096);
    let acq = d.alloc(4096);
    d.set_reg32(0x24, 0x000F_000F);
    d.set_reg64(0x28, asq);
    assert_eq!(d.reg64(0x28), asq);
    d.set_reg32(0x30, acq as u32);
    d.set_reg32(0x34, (acq >> 32) as u32);
    assert_eq!(d.reg64(0x30), acq);
    assert_eq!(d.reg32(0x24), 0x000F_000F);
    let e = d.set_reg32(0x14, cc_value(6));
    assert!(e.queues_changed);
    assert_eq!(d.reg32(0x1C) & 0x3, 1, "RDY");
    assert!(d.ctrl.ready());
    assert_eq!(d.host.doorbells.clears(), clears + 1);
    assert_eq!(
        d.host.doorbells.sq_tail(0),
        0,
        "stale admin tail cleared on enable"
    );
    let e = d.set_reg32(0x14, cc_value(6));
    assert!(!e.queues_changed, "same value: nothing happens");
    let e = d.set_reg32(0x14, cc_value(6) & !1);
    assert!(e.queues_changed, "reset");
    assert_eq!(d.reg32(0x1C) & 1, 0);
    assert_eq!(d.host.doorbells.clears(), clears + 2);
}

#[test]
fn bad_configuration_sets_cfs() {
    let (_dir, mut d) = fresh(ControllerConfig::default());
    // IOSQES 5.
    let csts = d.enable_with(1 | (6 << 4) | (5 << 16) | (4 << 20), 16);
    assert_eq!(csts & 0x3, 0x2, "CFS, not ready");
    assert!(!d.ctrl.ready());
    assert_eq!(d.process(), 0);
    d.disable();
    assert_eq!(d.reg32(0x1C) & 0x2, 0, "reset clears CFS");
    // CSS 001b is reserved.
    assert_eq!(d.enable_with(cc_value(1), 16) & 0x3, 0x2);
    d.disable();
    // MPS above MPSMAX.
    assert_eq!(d.enable_with(cc_value(6) | (0xF << 7), 16) & 0x3, 0x2);
    d.disable();
    // Admin queue of one entry (AQA 0).
    d.set_reg32(0x24, 0);
    d.set_reg32(0x14, cc_value(6));
    assert_eq!(d.reg32(0x1C) & 0x3, 0x2);
    d.disable();
    // And a good configuration works afterwards.
    d.init_linux();
    assert_eq!(
        d.write(1, 0, &pattern(4096, 1), false).status,
        Status::SUCCESS
    );
}

#[test]
fn unaligned_admin_queue_for_page_size() {
    let (_dir, mut d) = fresh(ControllerConfig::default());
    // 8 KiB pages (MPS 1) with an ASQ that is only 4 KiB aligned.
    let asq = d.alloc(8192);
    let asq = if asq % 8192 == 0 { asq + 4096 } else { asq };
    let acq = d.alloc(16384) & !0x1FFF;
    d.set_reg32(0x24, 0x000F_000F);
    d.set_reg64(0x28, asq);
    d.set_reg64(0x30, acq + 8192);
    d.set_reg32(0x14, cc_value(6) | (1 << 7));
    assert_eq!(d.reg32(0x1C) & 0x3, 0x2);
}

#[test]
fn seabios_style_bringup_with_intx() {
    let (_dir, mut d) = fresh(ControllerConfig::default());
    // SeaBIOS: CC = 0x460001 (CSS 000b), Identify Controller, pin interrupt on vector 0.
    assert_eq!(d.enable_with(0x0046_0001, 2) & 1, 1);
    let (c, id) = d.identify(0x01, 0, 0);
    assert_eq!(c.status, Status::SUCCESS);
    assert_eq!(&id[4..8], b"ZNSD");
    assert!(d.host.irq.count(0) >= 1);
    // Identify Namespace also works in NVM mode (SeaBIOS reads the size).
    let (c, ns) = d.identify(0x00, 1, 0);
    assert_eq!((c.status, le64(&ns, 0)), (Status::SUCCESS, 4096));
    // The two-entry admin queue wraps correctly over several commands.
    for _ in 0..5 {
        assert_eq!(d.admin(Command::new(0x18)).status, Status::SUCCESS);
    }
    // Then Linux resets and starts over.
    d.disable();
    d.init_linux();
    assert_eq!(
        d.write(1, 0, &pattern(4096, 2), false).status,
        Status::SUCCESS
    );
}

#[test]
fn reset_drops_queues_and_pending_commands() {
    let mut r = rig(Geo::default(), 4096);
    let d = &mut r.d;
    assert_eq!(
        d.write(1, 0, &pattern(4096, 1), false).status,
        Status::SUCCESS
    );
    // Queue a write and an AER, then reset before processing them.
    let buf = d.alloc(4096);
    d.host.mem.write(buf, &pattern(4096, 9)).unwrap();
    d.submit(1, Command::rw(0x01, 1, 1, false).dptr(buf, 0));
    d.submit(0, Command::new(0x0C).nsid(0));
    let e = d.disable();
    assert!(e.queues_changed);
    assert_eq!(d.process(), 0, "nothing runs after reset");
    assert!(!d.ctrl.ready());
    d.init_linux();
    // The pending write never happened: WP is still 1.
    let (_, buf) = d.report(1, 0, 128, 0, 0, true);
    let z = &nvme::test_utils::parse_report(&buf, 0, 1).1[0];
    assert_eq!(z.wp, 1);
    // AER slots are free again: four can be outstanding.
    for _ in 0..4 {
        d.submit(0, Command::new(0x0C).nsid(0));
    }
    d.process();
    assert!(d.reap(0).is_none());
    assert_eq!(
        d.admin(Command::new(0x0C).nsid(0)).status,
        Status::AER_LIMIT
    );
}

#[test]
fn transport_reset_restores_power_on_registers() {
    let mut r = rig(Geo::default(), 4096);
    let d = &mut r.d;
    assert_eq!(
        d.write(1, 0, &pattern(4096, 1), false).status,
        Status::SUCCESS
    );
    d.ctrl.reset(&d.host.env());
    assert!(!d.ctrl.ready());
    assert_eq!((d.reg32(0x14), d.reg32(0x1C), d.reg32(0x24)), (0, 0, 0));
    assert_eq!((d.reg64(0x28), d.reg64(0x30)), (0, 0));
    assert_eq!(d.ctrl.max_vectors(), 1);
    d.init_linux();
    let (c, got) = d.read(1, 0, 1);
    assert_eq!((c.status, got), (Status::SUCCESS, pattern(4096, 1)));
}

#[test]
fn shutdown_notification() {
    let mut r = rig(Geo::default(), 4096);
    let d = &mut r.d;
    assert_eq!(
        d.write(1, 0, &pattern(4096, 1), false).status,
        Status::SUCCESS
    );
    let cc = d.reg32(0x14);
    d.set_reg32(0x14, cc | (1 << 14));
    assert_eq!((d.reg32(0x1C) >> 2) & 0x3, 0b10, "shutdown complete");
    d.set_reg32(0x14, cc & !1);
    d.init_linux();
    assert_eq!(
        (d.reg32(0x1C) >> 2) & 0x3,
        0,
        "SHST cleared by the next enable"
    );
    // Shutdown notification written together with EN = 0.
    let cc = d.reg32(0x14);
    d.set_reg32(0x14, (cc & !1) | (2 << 14));
    assert_eq!(
        d.reg32(0x1C) & 0xD,
        0b1000,
        "abrupt shutdown complete, not ready"
    );
}

#[test]
fn doorbell_values_beyond_queue_size_are_ignored() {
    let mut r = rig(Geo::default(), 4096);
    let d = &mut r.d;
    d.host.doorbells.set_sq_tail(1, 64);
    assert_eq!(d.process(), 0);
    d.host.doorbells.set_sq_tail(1, 0xFFFF_FFFF);
    assert_eq!(d.process(), 0);
    d.host.doorbells.set_sq_tail(0, 32);
    assert_eq!(d.process(), 0);
    d.host.doorbells.set_sq_tail(0, 0);
    d.host.doorbells.set_sq_tail(1, 0);
    // A CQ head beyond the queue or beyond what was posted is ignored too.
    d.host.doorbells.set_cq_head(1, 1000);
    assert_eq!(
        d.write(1, 0, &pattern(4096, 1), false).status,
        Status::SUCCESS
    );
    assert_eq!(
        d.write(1, 1, &pattern(4096, 2), false).status,
        Status::SUCCESS
    );
    assert!(d.ctrl.ready());
    assert_eq!(d.reg32(0x1C) & 0x2, 0, "no fatal status");
}

#[test]
fn full_cq_pauses_fetching() {
    let mut r = rig(Geo::default(), 4096);
    let d = &mut r.d;
    // CQ 2 with 2 entries (one usable), SQ 2 with 8.
    let cqb = d.alloc(4096);
    let sqb = d.alloc(4096);
    assert_eq!(
        d.admin(Command::create_cq(2, 2, cqb, true, 2)).status,
        Status::SUCCESS
    );
    assert_eq!(
        d.admin(Command::create_sq(2, 8, sqb, 2)).status,
        Status::SUCCESS
    );
    let bufs: Vec<u64> = (0..3).map(|_| d.alloc(4096)).collect();
    for (i, &b) in bufs.iter().enumerate() {
        let cmd = Command::rw(0x02, 0, 1, false)
            .dptr(b, 0)
            .cid(100 + i as u16)
            .to_bytes();
        d.host.mem.write(sqb + 64 * i as u64, &cmd).unwrap();
    }
    d.host.doorbells.set_sq_tail(2, 3);
    assert_eq!(d.process(), 1, "one free CQ slot");
    assert_eq!(d.process(), 0, "CQ full: nothing fetched");
    let mut e = [0u8; 16];
    d.host.mem.read(cqb + 16, &mut e).unwrap();
    assert_eq!(e, [0; 16], "second slot untouched");
    d.host.mem.read(cqb, &mut e).unwrap();
    assert_eq!(
        (le16(&e, 12), le16(&e, 14) & 1, le16(&e, 8)),
        (100, 1, 1),
        "cid, phase, sqhd"
    );
    assert_eq!(d.host.irq.count(2), 1);
    // The host consumes the entry.
    d.host.doorbells.set_cq_head(2, 1);
    assert_eq!(d.process(), 1);
    d.host.mem.read(cqb + 16, &mut e).unwrap();
    assert_eq!((le16(&e, 12), le16(&e, 14) & 1), (101, 1));
    d.host.doorbells.set_cq_head(2, 0);
    assert_eq!(d.process(), 1);
    d.host.mem.read(cqb, &mut e).unwrap();
    assert_eq!(
        (le16(&e, 12), le16(&e, 14) & 1),
        (102, 0),
        "phase flipped after wrap"
    );
    assert_eq!(d.process(), 0);
}

#[test]
fn unreadable_sq_or_unwritable_cq_is_fatal() {
    let mut r = rig(Geo::default(), 4096);
    let d = &mut r.d;
    let cqb = d.alloc(4096);
    let sqb = d.alloc(4096);
    assert_eq!(
        d.admin(Command::create_cq(2, 16, cqb, true, 2)).status,
        Status::SUCCESS
    );
    assert_eq!(
        d.admin(Command::create_sq(2, 16, sqb, 2)).status,
        Status::SUCCESS
    );
    d.host.mem.unmap(sqb, 4096);
    d.host.doorbells.set_sq_tail(2, 1);
    assert_eq!(d.process(), 0);
    assert_eq!(d.reg32(0x1C) & 0x3, 0x3, "RDY and CFS");
    assert_eq!(d.process(), 0, "halted");
    d.host.mem.remap_all();
    d.disable();
    d.init_linux();
    let cqb = d.alloc(4096);
    let sqb = d.alloc(4096);
    assert_eq!(
        d.admin(Command::create_cq(2, 16, cqb, true, 2)).status,
        Status::SUCCESS
    );
    assert_eq!(
        d.admin(Command::create_sq(2, 16, sqb, 2)).status,
        Status::SUCCESS
    );
    d.host
        .mem
        .write(sqb, &Command::new(0x00).to_bytes())
        .unwrap();
    d.host.mem.unmap(cqb, 4096);
    d.host.doorbells.set_sq_tail(2, 1);
    d.process();
    assert_eq!(d.reg32(0x1C) & 0x2, 0x2, "CFS");
}

#[test]
fn interrupt_masks_and_ien() {
    let mut r = rig(Geo::default(), 4096);
    let d = &mut r.d;
    let before = d.host.irq.count(0);
    d.set_reg32(0x0C, 1);
    assert_eq!(d.reg32(0x0C), 1);
    assert_eq!(d.admin(Command::new(0x18)).status, Status::SUCCESS);
    assert_eq!(d.host.irq.count(0), before, "vector 0 masked");
    d.set_reg32(0x10, 1);
    assert_eq!(d.reg32(0x0C), 0);
    assert_eq!(d.admin(Command::new(0x18)).status, Status::SUCCESS);
    assert_eq!(d.host.irq.count(0), before + 1);
    // I/O CQ 1 uses vector 1.
    let v1 = d.host.irq.count(1);
    assert_eq!(
        d.write(1, 0, &pattern(4096, 1), false).status,
        Status::SUCCESS
    );
    assert_eq!(d.host.irq.count(1), v1 + 1);
    // A CQ without IEN never interrupts.
    let cqb = d.alloc(4096);
    let sqb = d.alloc(4096);
    assert_eq!(
        d.admin(Command::create_cq(3, 16, cqb, false, 3)).status,
        Status::SUCCESS
    );
    assert_eq!(
        d.admin(Command::create_sq(3, 16, sqb, 3)).status,
        Status::SUCCESS
    );
    d.host
        .mem
        .write(sqb, &Command::new(0x00).to_bytes())
        .unwrap();
    d.host.doorbells.set_sq_tail(3, 1);
    assert_eq!(d.process(), 1);
    assert_eq!(d.host.irq.count(3), 0);
    assert_eq!(d.ctrl.max_vectors(), 4);
}

#[test]
fn geometry_refusals() {
    let cfg = |lba| ControllerConfig {
        lba_size: lba,
        ..Default::default()
    };
    let (_d, img) = image(Geo::default());
    let e = Controller::new(img, cfg(1024)).err().unwrap();
    assert!(e.to_string().contains("512 or 4096"), "{e}");
    let (_d, img) = image(Geo {
        cap: (1 << 20) - 512,
        ..Geo::default()
    });
    let e = Controller::new(img, cfg(4096)).err().unwrap();
    assert!(e.to_string().contains("capacity"), "{e}");
    let (_d, img) = image(Geo {
        cap: (1 << 20) - 512,
        ..Geo::default()
    });
    assert!(
        Controller::new(img, cfg(512)).is_ok(),
        "fine with 512-byte LBAs"
    );
    let (_d, img) = image(Geo {
        max_append: 4096,
        ..Geo::default()
    });
    let e = Controller::new(img, cfg(4096)).err().unwrap();
    assert!(e.to_string().contains("ZASL"), "{e}");
    let (_d, img) = image(Geo::default());
    let e = Controller::new(
        img,
        ControllerConfig {
            max_io_queues: 0,
            ..cfg(4096)
        },
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("max_io_queues"), "{e}");
    // Conventional zones.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("conv.qcow2");
    let mut opts = qcow2zoned::CreateOptions {
        size: 16 << 20,
        cluster_size: 64 << 10,
        zone: qcow2zoned::ZoneOptions {
            size: 1 << 20,
            capacity: 1 << 20,
            ..Default::default()
        },
    };
    opts.zone.conventional_zones = 2;
    qcow2zoned::ZonedImage::create(&path, &opts).unwrap();
    let img = qcow2zoned::ZonedImage::open(&path, Default::default()).unwrap();
    let e = Controller::new(Arc::new(img), cfg(4096)).err().unwrap();
    assert!(e.to_string().contains("conventional"), "{e}");
}

#[test]
fn pollers_and_register_thread_run_concurrently() {
    let cfg = ControllerConfig {
        max_io_queues: 4,
        ..Default::default()
    };
    let (_dir, img) = image(Geo::default());
    let ctrl = Arc::new(Controller::new(img, cfg).unwrap());
    let mut d = Driver::new(ctrl, 64 << 20);
    d.init_linux();
    for q in 2..=4 {
        let (a, b) = d.create_io_pair(q, 64);
        assert!(a.status.is_success() && b.status.is_success());
    }
    // Each queue writes 32 blocks sequentially into its own zone.
    let mut expected = Vec::new();
    for q in 1..=4u16 {
        let zslba = u64::from(q) * 256;
        for i in 0..32u64 {
            let data = pattern(4096, (q as u8) * 40 + i as u8);
            let buf = d.alloc(4096);
            d.host.mem.write(buf, &data).unwrap();
            d.submit(q, Command::rw(0x01, zslba + i, 1, false).dptr(buf, 0));
            expected.push((zslba + i, data));
        }
    }
    // Two pollers split the four queues; the register thread reads CSTS meanwhile.
    let stop = AtomicBool::new(false);
    let completed = AtomicUsize::new(0);
    let host = &d.host;
    let ctrl = &d.ctrl;
    let done: usize = std::thread::scope(|s| {
        let pollers: Vec<_> = (0..2)
            .map(|p| {
                let (stop, completed) = (&stop, &completed);
                s.spawn(move || {
                    let env = host.env();
                    let mut n = 0;
                    while !stop.load(Ordering::Acquire) {
                        let k = ctrl.process_io(&env, p, 2);
                        completed.fetch_add(k, Ordering::AcqRel);
                        n += k;
                    }
                    n
                })
            })
            .collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while completed.load(Ordering::Acquire) < 128 && std::time::Instant::now() < deadline {
            let mut b = [0u8; 4];
            ctrl.mmio_read(0x1C, &mut b);
            assert_eq!(b[0] & 0x3, 1, "ready, no fatal status");
        }
        stop.store(true, Ordering::Release);
        pollers.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(done, 128);
    for q in 1..=4u16 {
        for _ in 0..32 {
            let c = d.reap(q).expect("completion");
            assert_eq!(c.status, Status::SUCCESS);
        }
    }
    for (lba, data) in expected {
        let (c, got) = d.read(1, lba, 1);
        assert_eq!(c.status, Status::SUCCESS);
        assert!(got == data, "lba {lba}");
    }
}

#[test]
fn reset_while_pollers_run_does_not_deadlock() {
    let mut r = rig(Geo::default(), 4096);
    let d = &mut r.d;
    for q in 2..=3 {
        let (a, b) = d.create_io_pair(q, 64);
        assert!(a.status.is_success() && b.status.is_success());
    }
    for q in 1..=3u16 {
        for i in 0..16u64 {
            let buf = d.alloc(4096);
            d.submit(
                q,
                Command::rw(0x02, u64::from(q) * 256 + i, 1, false).dptr(buf, 0),
            );
        }
    }
    let stop = AtomicBool::new(false);
    let host = &d.host;
    let ctrl = &d.ctrl;
    std::thread::scope(|s| {
        for p in 0..2 {
            let stop = &stop;
            s.spawn(move || {
                let env = host.env();
                while !stop.load(Ordering::Acquire) {
                    ctrl.process_io(&env, p, 2);
                    ctrl.process_admin(&env);
                }
            });
        }
        let env = host.env();
        let mut b = [0u8; 4];
        ctrl.mmio_read(0x14, &mut b);
        let cc = u32::from_le_bytes(b);
        ctrl.mmio_write(&env, 0x14, &(cc & !1).to_le_bytes());
        assert!(!ctrl.ready());
        ctrl.reset(&env);
        stop.store(true, Ordering::Release);
    });
    assert_eq!(d.process(), 0);
    d.init_linux();
    assert_eq!(
        d.write(1, 0, &pattern(4096, 3), false).status,
        Status::SUCCESS
    );
}

#[test]
fn recreated_queue_ignores_stale_doorbells() {
    for per_queue_clear in [true, false] {
        let mut r = rig(Geo::default(), 4096);
        let d = &mut r.d;
        d.host.doorbells.set_per_queue_clear(per_queue_clear);
        let (a, b) = d.create_io_pair(2, 8);
        assert!(a.status.is_success() && b.status.is_success());
        for i in 0..3 {
            assert_eq!(
                d.write(2, 256 + i, &pattern(4096, i as u8), false).status,
                Status::SUCCESS
            );
        }
        assert_eq!(d.admin(Command::delete_sq(2)).status, Status::SUCCESS);
        assert_eq!(d.admin(Command::delete_cq(2)).status, Status::SUCCESS);
        let stale = if per_queue_clear { 0 } else { 3 };
        assert_eq!(d.host.doorbells.sq_tail(2), stale);
        assert_eq!(d.host.doorbells.cq_head(2), stale);
        // A new queue pair 2 (4 entries) over fresh memory: nothing runs until submitted.
        let (a, b) = d.create_io_pair(2, 4);
        assert!(a.status.is_success() && b.status.is_success());
        assert_eq!(d.process(), 0, "stale tail is not a submission");
        for i in 3..9 {
            let c = d.write(2, 256 + i, &pattern(4096, i as u8), false);
            assert_eq!(
                c.status,
                Status::SUCCESS,
                "write {i} (per-queue clear {per_queue_clear})"
            );
        }
        let (c, got) = d.read(1, 256, 9);
        assert_eq!(c.status, Status::SUCCESS);
        for i in 0..9usize {
            assert!(
                got[i * 4096..(i + 1) * 4096] == pattern(4096, i as u8)[..],
                "block {i}"
            );
        }
    }
}
