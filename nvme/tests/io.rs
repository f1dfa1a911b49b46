//! Data path against a real image: byte-exact read/write at both LBA sizes, append, FUA,
//! write zeroes, flush, PRP lists and SGLs, and the write-rule statuses.

mod common;

use common::*;
use nvme::test_utils::Command;
use nvme::{GuestMemory, Status};

fn roundtrip(lba: u32) {
    let mut r = rig(Geo::default(), lba);
    let d = &mut r.d;
    assert_eq!(d.lba_size, lba);
    let zone_lbas = (1u64 << 20) / u64::from(lba);
    // Several writes at the write pointer, including a multi-page PRP list transfer.
    let a = pattern(lba as usize * 3, 1);
    let b = pattern(64 << 10, 2);
    assert_eq!(d.write(1, 0, &a, false).status, Status::SUCCESS);
    assert_eq!(d.write(1, 3, &b, true).status, Status::SUCCESS);
    let total = (a.len() + b.len()) as u32 / lba;
    let (c, got) = d.read(1, 0, total);
    assert_eq!(c.status, Status::SUCCESS);
    assert_eq!(&got[..a.len()], &a[..]);
    assert_eq!(&got[a.len()..], &b[..]);
    // Above the write pointer reads as zeros.
    let (c, got) = d.read(1, u64::from(total), 2);
    assert_eq!(c.status, Status::SUCCESS);
    assert!(got.iter().all(|&x| x == 0));
    // Another zone, unaligned in-page buffer offsets handled by PRP1 offset.
    let z2 = 2 * zone_lbas;
    let data = pattern(lba as usize * 2, 9);
    assert_eq!(d.write(1, z2, &data, false).status, Status::SUCCESS);
    let (c, got) = d.read(1, z2, 2);
    assert_eq!(c.status, Status::SUCCESS);
    assert_eq!(got, data);
    assert!(
        d.host.mem.with_slices_calls() >= 4,
        "data moves through with_slices"
    );
}

#[test]
fn write_read_byte_exact_4096() {
    roundtrip(4096);
}

#[test]
fn write_read_byte_exact_512() {
    roundtrip(512);
}

#[test]
fn append_returns_assigned_lba() {
    for lba in [512u32, 4096] {
        let mut r = rig(Geo::default(), lba);
        let d = &mut r.d;
        let zone_lbas = (1u64 << 20) / u64::from(lba);
        let z = 3 * zone_lbas;
        let one = pattern(lba as usize, 3);
        let two = pattern(lba as usize * 4, 4);
        let c = d.append(1, z, &one);
        assert_eq!(c.status, Status::SUCCESS);
        assert_eq!(c.result64(), z);
        let c = d.append(1, z, &two);
        assert_eq!(c.status, Status::SUCCESS);
        assert_eq!(c.result64(), z + 1);
        let (c, got) = d.read(1, z, 5);
        assert_eq!(c.status, Status::SUCCESS);
        assert_eq!(&got[..one.len()], &one[..]);
        assert_eq!(&got[one.len()..], &two[..]);
    }
}

#[test]
fn fua_write_zeroes_and_flush() {
    let mut r = rig(Geo::default(), 4096);
    let d = &mut r.d;
    let data = pattern(8192, 5);
    assert_eq!(
        d.write(1, 0, &data, true).status,
        Status::SUCCESS,
        "FUA write"
    );
    let c = d.run(1, Command::rw(0x08, 2, 3, true));
    assert_eq!(c.status, Status::SUCCESS, "write zeroes with FUA");
    assert_eq!(
        d.write(1, 5, &data, false).status,
        Status::SUCCESS,
        "WP moved past the zeroes"
    );
    let (_, got) = d.read(1, 0, 7);
    assert_eq!(&got[..8192], &data[..]);
    assert!(got[8192..5 * 4096].iter().all(|&b| b == 0));
    assert_eq!(&got[5 * 4096..], &data[..]);
    assert_eq!(
        d.run(1, Command::new(0x00)).status,
        Status::SUCCESS,
        "flush nsid 1"
    );
    assert_eq!(
        d.run(1, Command::new(0x00).nsid(0xFFFF_FFFF)).status,
        Status::SUCCESS,
        "flush all"
    );
    assert_eq!(
        d.run(1, Command::new(0x00).nsid(2)).status,
        Status::INVALID_NS
    );
    // Write zeroes is not bound by MDTS (512 KiB here): 1 MiB zone in one command.
    let c = d.run(1, Command::rw(0x08, 256, 256, false));
    assert_eq!(c.status, Status::SUCCESS);
    let (_, buf) = d.report(1, 256, 128, 0, 0, true);
    assert_eq!(
        nvme::test_utils::parse_report(&buf, 0, 1).1[0].zs,
        0xE,
        "zone filled"
    );
}

#[test]
fn data_survives_reopen() {
    let (dir, img) = image(Geo::default());
    let path = dir.path().join("zns.qcow2");
    {
        let ctrl = std::sync::Arc::new(nvme::Controller::new(img, Default::default()).unwrap());
        let mut d = nvme::test_utils::Driver::new(ctrl.clone(), 64 << 20);
        d.init_linux();
        assert_eq!(
            d.write(1, 256, &pattern(8192, 8), false).status,
            Status::SUCCESS
        );
        assert_eq!(d.run(1, Command::new(0x00)).status, Status::SUCCESS);
        ctrl.reset(&d.host.env());
    }
    let img = qcow2zoned::ZonedImage::open(&path, Default::default()).unwrap();
    let ctrl = std::sync::Arc::new(
        nvme::Controller::new(std::sync::Arc::new(img), Default::default()).unwrap(),
    );
    let mut d = nvme::test_utils::Driver::new(ctrl, 64 << 20);
    d.init_linux();
    let (c, got) = d.read(1, 256, 2);
    assert_eq!(c.status, Status::SUCCESS);
    assert_eq!(got, pattern(8192, 8));
    let (_, buf) = d.report(1, 256, 128, 0, 0, true);
    let z = &nvme::test_utils::parse_report(&buf, 0, 1).1[0];
    assert_eq!((z.wp, z.zs), (258, 0x4), "opened zone comes back Closed");
}

#[test]
fn large_transfers_prp_lists_and_mdts() {
    let mut r = rig(
        Geo {
            zone: 4 << 20,
            cap: 4 << 20,
            size: 16 << 20,
            ..Geo::default()
        },
        512,
    );
    let d = &mut r.d;
    // 512 KiB = MDTS: PRP1 + a 127-entry list.
    let data = pattern(512 << 10, 6);
    assert_eq!(d.write(1, 0, &data, false).status, Status::SUCCESS);
    let (c, got) = d.read(1, 0, 1024);
    assert_eq!(c.status, Status::SUCCESS);
    assert!(got == data, "512 KiB round trip");
    // Above MDTS: Invalid Field, for reads, writes and appends.
    let c = d.run(1, Command::rw(0x02, 0, 1025, false).dptr(0x10000, 0));
    assert_eq!(c.status, Status::INVALID_FIELD);
    let c = d.run(1, Command::rw(0x01, 1024, 1025, false).dptr(0x10000, 0));
    assert_eq!(c.status, Status::INVALID_FIELD);
    // A buffer starting mid-page with a PRP1 offset.
    let buf = d.alloc(3 * 4096);
    d.host.mem.write(buf + 0x200, &data[..8192]).unwrap();
    let (p1, p2) = d.prps(buf + 0x200, 8192);
    let c = d.run(1, Command::rw(0x01, 1024, 16, false).dptr(p1, p2));
    assert_eq!(c.status, Status::SUCCESS);
    let (_, got) = d.read(1, 1024, 16);
    assert_eq!(&got[..], &data[..8192]);
}

#[test]
fn prp_lists_chained_across_list_pages() {
    let cfg = nvme::ControllerConfig {
        mdts: 10,
        lba_size: 4096,
        ..Default::default()
    };
    let mut r = rig_with(
        Geo {
            zone: 8 << 20,
            cap: 8 << 20,
            size: 32 << 20,
            ..Geo::default()
        },
        cfg,
    );
    let d = &mut r.d;
    // 4 MiB = 1024 pages: PRP1 + 1023 list entries over two list pages.
    let data = pattern(4 << 20, 11);
    assert_eq!(d.write(1, 0, &data, false).status, Status::SUCCESS);
    let (c, got) = d.read(1, 0, 1024);
    assert_eq!(c.status, Status::SUCCESS);
    assert!(got == data, "4 MiB through chained PRP lists");
}

#[test]
fn sgl_data_paths() {
    let mut r = rig(Geo::default(), 4096);
    let d = &mut r.d;
    let data = pattern(12288, 12);
    // Three scattered 4 KiB pieces described by a Last Segment of three Data Blocks.
    let pieces: Vec<u64> = (0..3).map(|_| d.alloc(4096)).collect();
    for (i, &p) in pieces.iter().enumerate() {
        d.host
            .mem
            .write(p, &data[i * 4096..(i + 1) * 4096])
            .unwrap();
    }
    let seg = d.alloc(48);
    let mut descs = Vec::new();
    for &p in &pieces {
        descs.extend_from_slice(&p.to_le_bytes());
        descs.extend_from_slice(&4096u32.to_le_bytes());
        descs.extend_from_slice(&[0, 0, 0, 0x00]);
    }
    d.host.mem.write(seg, &descs).unwrap();
    let last_segment = |addr: u64, len: u32| (addr, u64::from(len) | (0x30u64 << 56));
    let (lo, hi) = last_segment(seg, 48);
    let c = d.run(1, Command::rw(0x01, 0, 3, false).psdt(1).dptr(lo, hi));
    assert_eq!(c.status, Status::SUCCESS);
    let (_, got) = d.read(1, 0, 3);
    assert_eq!(got, data);
    // Read back through a single Data Block descriptor.
    let out = d.alloc(12288);
    let c = d.run(1, Command::rw(0x02, 0, 3, false).psdt(1).dptr(out, 12288));
    assert_eq!(c.status, Status::SUCCESS);
    let mut back = vec![0u8; 12288];
    d.host.mem.read(out, &mut back).unwrap();
    assert_eq!(back, data);
    // Too short an SGL, a bad segment length, a bit bucket.
    let c = d.run(1, Command::rw(0x02, 0, 3, false).psdt(1).dptr(out, 8192));
    assert_eq!(c.status, Status::SGL_INVALID_DATA_LEN);
    let (lo, hi) = last_segment(seg, 40);
    let c = d.run(1, Command::rw(0x02, 0, 3, false).psdt(1).dptr(lo, hi));
    assert_eq!(c.status, Status::SGL_INVALID_SEGMENT);
    let c = d.run(
        1,
        Command::rw(0x02, 0, 1, false)
            .psdt(1)
            .dptr(out, 4096 | (0x10u64 << 56)),
    );
    assert_eq!(c.status, Status::SGL_INVALID_TYPE);
    // Zone append and report through SGLs.
    let c = d.run(1, Command::rw(0x7D, 256, 1, false).psdt(2).dptr(out, 4096));
    assert_eq!((c.status, c.result64()), (Status::SUCCESS, 256));
    let c = d.run(
        1,
        Command::zone_recv(0, 4096, 0, 0, false)
            .psdt(1)
            .dptr(out, 4096),
    );
    assert_eq!(c.status, Status::SUCCESS);
    d.host.mem.read(out, &mut back[..8]).unwrap();
    assert_eq!(le64(&back, 0), 16);
}

#[test]
fn io_field_and_namespace_checks() {
    let mut r = rig(Geo::default(), 4096);
    let d = &mut r.d;
    let buf = d.alloc(4096);
    assert_eq!(
        d.run(1, Command::rw(0x02, 0, 1, false).nsid(2).dptr(buf, 0))
            .status,
        Status::INVALID_NS
    );
    assert_eq!(
        d.run(1, Command::rw(0x02, 0, 1, false).nsid(0).dptr(buf, 0))
            .status,
        Status::INVALID_NS
    );
    assert_eq!(
        d.run(1, Command::rw(0x02, 0, 1, false).fuse(1).dptr(buf, 0))
            .status,
        Status::INVALID_FIELD
    );
    assert_eq!(
        d.run(1, Command::rw(0x02, 0, 1, false).psdt(3).dptr(buf, 0))
            .status,
        Status::INVALID_FIELD
    );
    for opc in [0x04u8, 0x05, 0x09, 0x0C, 0x19, 0x7C, 0xFF] {
        assert_eq!(
            d.run(1, Command::new(opc)).status,
            Status::INVALID_OPCODE,
            "opcode {opc:#x}"
        );
    }
    // PRP1 not dword aligned.
    let c = d.run(1, Command::rw(0x02, 0, 1, false).dptr(buf + 2, 0));
    assert_eq!(c.status, Status::PRP_INVALID_OFFSET);
    // Reads into unmapped memory.
    d.host.mem.unmap(buf, 4096);
    assert_eq!(
        d.run(1, Command::rw(0x02, 0, 1, false).dptr(buf, 0)).status,
        Status::DATA_TRANSFER
    );
    // Past the end of guest memory entirely.
    let c = d.run(1, Command::rw(0x02, 0, 1, false).dptr(0xFFFF_FFFF_F000, 0));
    assert_eq!(c.status, Status::DATA_TRANSFER);
}

#[test]
fn nvm_only_command_set_table() {
    let (_dir, img) = image(Geo::default());
    let ctrl = std::sync::Arc::new(nvme::Controller::new(img, Default::default()).unwrap());
    let mut d = nvme::test_utils::Driver::new(ctrl, 64 << 20);
    assert_eq!(d.enable(0b000) & 1, 1, "CSS 000b accepted");
    let (c1, c2) = d.create_io_pair(1, 16);
    assert!(c1.status.is_success() && c2.status.is_success());
    assert_eq!(
        d.write(1, 0, &pattern(4096, 1), false).status,
        Status::SUCCESS
    );
    assert_eq!(d.read(1, 0, 1).0.status, Status::SUCCESS);
    assert_eq!(
        d.append(1, 0, &pattern(4096, 1)).status,
        Status::INVALID_OPCODE
    );
    assert_eq!(d.zone_send(1, 0, 4, false).status, Status::INVALID_OPCODE);
    assert_eq!(
        d.report(1, 0, 4096, 0, 0, false).0.status,
        Status::INVALID_OPCODE
    );
    // Admin-only: no I/O command at all.
    d.disable();
    assert_eq!(d.enable(0b111) & 1, 1);
    let (c1, c2) = d.create_io_pair(1, 16);
    assert!(c1.status.is_success() && c2.status.is_success());
    assert_eq!(d.read(1, 0, 1).0.status, Status::INVALID_OPCODE);
    assert_eq!(d.run(1, Command::new(0x00)).status, Status::INVALID_OPCODE);
}

#[test]
fn null_io_completes_without_touching_the_image() {
    let mut r = rig(Geo::default(), 4096);
    let d = &mut r.d;
    d.ctrl.set_null_io(true);
    let data = pattern(8192, 5);
    // Accepted anywhere, nothing stored, the append reports its ZSLBA.
    assert_eq!(d.write(1, 7, &data, false).status, Status::SUCCESS);
    let c = d.append(1, 0, &data);
    assert_eq!(c.status, Status::SUCCESS);
    assert_eq!(c.result64(), 0);
    let (c, got) = d.read(1, 0, 2);
    assert_eq!(c.status, Status::SUCCESS);
    assert!(got.iter().all(|&b| b == 0), "no data moved");
    // The command checks still apply.
    let (c, _) = d.read(1, u64::MAX - 1, 2);
    assert_eq!(c.status, Status::LBA_RANGE);
    // Back on the image: zone 0 is still empty, so a write at LBA 0 is at its write pointer.
    d.ctrl.set_null_io(false);
    assert_eq!(d.write(1, 0, &data, false).status, Status::SUCCESS);
    let (c, got) = d.read(1, 0, 2);
    assert_eq!(c.status, Status::SUCCESS);
    assert_eq!(got, data);
}
