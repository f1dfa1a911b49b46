//! Admin commands over a real image: Identify values matching the image, log pages, features,
//! queue creation/deletion errors, AER, Abort, Keep Alive.

mod common;

use common::*;
use nvme::test_utils::Command;
use nvme::{Controller, ControllerConfig, Status};
use std::sync::Arc;

#[test]
fn identify_controller_fields() {
    let mut r = rig(Geo::default(), 4096);
    let d = &mut r.d;
    let (c, id) = d.identify(0x01, 0, 0);
    assert_eq!(c.status, Status::SUCCESS);
    assert_eq!(&id[4..12], b"ZNSD0001", "SN");
    assert_eq!(id[12], b' ', "SN space padded");
    assert!(id[24..64].starts_with(b"znsd"), "MN");
    assert_eq!(id[77], 7, "MDTS");
    assert_eq!(le32(&id, 80), 0x0002_0000, "VER");
    assert_eq!(
        le32(&id, 92) & (1 << 27),
        1 << 27,
        "OAES zone descriptor changed"
    );
    assert_eq!(id[111], 1, "CNTRLTYPE I/O");
    assert_eq!(id[259], 3, "AERL");
    assert_eq!(id[261] & 0x6, 0x6, "LPA effects log + extended data");
    assert_eq!((id[512], id[513]), (0x66, 0x44), "SQES/CQES");
    assert_eq!(le32(&id, 516), 1, "NN");
    assert_eq!(le16(&id, 520) & (1 << 3), 1 << 3, "ONCS Write Zeroes");
    assert_eq!(id[525], 0x07, "VWC present, flush broadcast");
    assert_eq!(le32(&id, 536), 1, "SGLS");
    assert!(id[768..].starts_with(b"nqn."), "SUBNQN");
    assert!(le16(&id, 2048) > 0, "PSD0 max power");
}

#[test]
fn identify_namespace_matches_image() {
    for (lba, lbads) in [(4096u32, 12u8), (512, 9)] {
        let geo = Geo {
            cap: 768 << 10,
            max_open: 3,
            max_active: 5,
            zde: 192,
            ..Geo::default()
        };
        let mut r = rig(geo, lba);
        let d = &mut r.d;
        let nlbas = (16u64 << 20) / u64::from(lba);
        let (c, ns) = d.identify(0x00, 1, 0);
        assert_eq!(c.status, Status::SUCCESS);
        assert_eq!(
            (le64(&ns, 0), le64(&ns, 8), le64(&ns, 16)),
            (nlbas, nlbas, nlbas),
            "NSZE/NCAP/NUSE"
        );
        assert_eq!((ns[25], ns[26] & 0xF), (0, 0), "NLBAF, FLBAS");
        assert_eq!(ns[33] & 0x7, 1, "DLFEAT zeros");
        assert_eq!((le16(&ns, 128), ns[130]), (0, lbads), "LBAF0");
        let (c, z) = d.identify(0x05, 1, 2);
        assert_eq!(c.status, Status::SUCCESS);
        assert_eq!(le16(&z, 0), 0, "ZOC must be 0 for Linux");
        assert_eq!(le16(&z, 2), 0, "OZCS: no RAZB");
        assert_eq!((le32(&z, 4), le32(&z, 8)), (4, 2), "MAR/MOR");
        let zsze = le64(&z, 2816);
        assert_eq!(zsze, (1u64 << 20) / u64::from(lba), "ZSZE");
        assert!(zsze.is_power_of_two());
        assert_eq!(z[2816 + 8], 3, "ZDES in 64-byte units");
        // Unlimited limits.
        let mut r = rig(Geo::default(), lba);
        let (_, z) = r.d.identify(0x05, 1, 2);
        assert_eq!((le32(&z, 4), le32(&z, 8)), (u32::MAX, u32::MAX));
    }
}

#[test]
fn identify_other_cns() {
    let mut r = rig(
        Geo {
            max_append: 100 << 10,
            ..Geo::default()
        },
        4096,
    );
    let d = &mut r.d;
    // ZNS controller: ZASL = 64 KiB = 2^4 pages (100 KiB rounded down to a power of two).
    let (c, zc) = d.identify(0x06, 0, 2);
    assert_eq!((c.status, zc[0]), (Status::SUCCESS, 4));
    let (c, nvmc) = d.identify(0x06, 0, 0);
    assert_eq!(c.status, Status::SUCCESS);
    assert!(nvmc.iter().all(|&b| b == 0));
    assert_eq!(d.identify(0x06, 0, 1).0.status, Status::INVALID_FIELD);
    // NVM-specific namespace data: zeros; unknown CSI: Invalid Field.
    let (c, n) = d.identify(0x05, 1, 0);
    assert_eq!(c.status, Status::SUCCESS);
    assert!(n.iter().all(|&b| b == 0));
    assert_eq!(d.identify(0x05, 1, 3).0.status, Status::INVALID_FIELD);
    assert_eq!(d.identify(0x05, 2, 2).0.status, Status::INVALID_NS);
    // Active namespace lists.
    let (c, l) = d.identify(0x02, 0, 0);
    assert_eq!(
        (c.status, le32(&l, 0), le32(&l, 4)),
        (Status::SUCCESS, 1, 0)
    );
    let (_, l) = d.identify(0x02, 1, 0);
    assert_eq!(le32(&l, 0), 0, "only NSIDs above the given one");
    assert_eq!(
        d.identify(0x02, 0xFFFF_FFFE, 0).0.status,
        Status::INVALID_NS
    );
    let (_, l) = d.identify(0x07, 0, 2);
    assert_eq!(le32(&l, 0), 1);
    let (_, l) = d.identify(0x07, 0, 0);
    assert_eq!(le32(&l, 0), 0, "no NVM namespaces");
    assert_eq!(d.identify(0x07, 0, 5).0.status, Status::INVALID_FIELD);
    // Descriptor list: UUID then CSI = 2.
    let (c, desc) = d.identify(0x03, 1, 0);
    assert_eq!(c.status, Status::SUCCESS);
    assert_eq!((desc[0], desc[1]), (3, 16));
    assert_ne!(&desc[4..20], &[0u8; 16]);
    assert_eq!((desc[20], desc[21], desc[24]), (4, 1, 2));
    assert_eq!((desc[25], desc[26]), (0, 0), "terminated");
    assert_eq!(d.identify(0x03, 2, 0).0.status, Status::INVALID_NS);
    // CS-independent namespace: ready.
    let (c, ind) = d.identify(0x08, 1, 0);
    assert_eq!((c.status, ind[14] & 1), (Status::SUCCESS, 1));
    // I/O command set vectors: NVM + ZNS.
    let (c, v) = d.identify(0x1C, 0, 0);
    assert_eq!((c.status, le64(&v, 0)), (Status::SUCCESS, 0x5));
    // Broadcast namespace and missing ones.
    let (c, all) = d.identify(0x00, 0xFFFF_FFFF, 0);
    assert_eq!(
        (c.status, le64(&all, 0), all[130]),
        (Status::SUCCESS, 0, 12)
    );
    assert_eq!(d.identify(0x00, 2, 0).0.status, Status::INVALID_NS);
    assert_eq!(d.identify(0x00, 0, 0).0.status, Status::INVALID_NS);
    assert_eq!(d.identify(0x10, 0, 0).0.status, Status::INVALID_FIELD);
    assert_eq!(d.identify(0x04, 0, 0).0.status, Status::INVALID_FIELD);
}

#[test]
fn log_pages() {
    let mut r = rig(Geo::default(), 4096);
    let d = &mut r.d;
    // Effects per CSI.
    let (c, e) = d.get_log(0x05, 0, 4096, 0, 2);
    assert_eq!(c.status, Status::SUCCESS);
    for opc in [0x00usize, 0x01, 0x02, 0x08, 0x79, 0x7A, 0x7D] {
        assert_eq!(
            le32(&e, 1024 + opc * 4) & 1,
            1,
            "CSI 2 opcode {opc:#x} CSUPP"
        );
    }
    assert_eq!(le32(&e, 6 * 4) & 1, 1, "Identify in ACS");
    let (c, e0) = d.get_log(0x05, 0, 4096, 0, 0);
    assert_eq!(c.status, Status::SUCCESS);
    assert_eq!(le32(&e0, 1024 + 0x7D * 4), 0, "no Zone Append for CSI 0");
    assert_eq!(le32(&e0, 1024 + 0x02 * 4) & 1, 1);
    assert_eq!(
        d.get_log(0x05, 0, 4096, 0, 1).0.status,
        Status::INVALID_FIELD
    );
    // Offsets (LPA bit 2): the I/O table at 1024.
    let (c, part) = d.get_log(0x05, 0, 1024, 1024, 2);
    assert_eq!(c.status, Status::SUCCESS);
    assert_eq!(&part[..], &e[1024..2048]);
    assert_eq!(
        d.get_log(0x05, 0, 64, 4096, 2).0.status,
        Status::INVALID_FIELD,
        "beyond page"
    );
    assert_eq!(
        d.get_log(0x05, 0, 64, 2, 2).0.status,
        Status::INVALID_FIELD,
        "not dword aligned"
    );
    // SMART counts host commands and data units.
    assert_eq!(
        d.write(1, 0, &pattern(8192, 1), false).status,
        Status::SUCCESS
    );
    assert_eq!(d.read(1, 0, 2).0.status, Status::SUCCESS);
    let (c, s) = d.get_log(0x02, 0xFFFF_FFFF, 512, 0, 0);
    assert_eq!(c.status, Status::SUCCESS);
    assert!(le16(&s, 1) > 273, "temperature in Kelvin");
    assert_eq!(s[3], 100, "available spare");
    assert_eq!(
        (le64(&s, 32), le64(&s, 48)),
        (1, 1),
        "data units read/written"
    );
    assert_eq!(
        (le64(&s, 64), le64(&s, 80)),
        (1, 1),
        "host read/write commands"
    );
    // Firmware slot.
    let (c, f) = d.get_log(0x03, 0, 512, 0, 0);
    assert_eq!((c.status, f[0]), (Status::SUCCESS, 1));
    assert_ne!(&f[8..16], &[0u8; 8]);
    // Error information.
    let (c, _) = d.get_log(0x01, 0, 64, 0, 0);
    assert_eq!(c.status, Status::SUCCESS);
    // Changed zone list: CSI 2 only.
    let (c, z) = d.get_log(0xBF, 1, 4096, 0, 2);
    assert_eq!((c.status, le16(&z, 0)), (Status::SUCCESS, 0));
    assert_eq!(
        d.get_log(0xBF, 1, 4096, 0, 0).0.status,
        Status::INVALID_FIELD
    );
    assert_eq!(d.get_log(0xBF, 2, 4096, 0, 2).0.status, Status::INVALID_NS);
    // Unknown page, and more than MDTS.
    assert_eq!(
        d.get_log(0x80, 0, 512, 0, 0).0.status,
        Status::INVALID_LOG_PAGE
    );
    assert_eq!(
        d.get_log(0x05, 0, 1 << 20, 0, 2).0.status,
        Status::INVALID_FIELD
    );
}

#[test]
fn features() {
    let (_dir, img) = image(Geo::default());
    let ctrl = Arc::new(Controller::new(img, ControllerConfig::default()).unwrap());
    let mut d = nvme::test_utils::Driver::new(ctrl, 64 << 20);
    assert_eq!(d.enable(0b110) & 1, 1);
    // Number of Queues: 4 offered (0's based 3/3); 0xFFFF is invalid.
    let c = d.admin(Command::set_features(0x07, 0xFFFF));
    assert_eq!(c.status, Status::INVALID_FIELD);
    let c = d.admin(Command::set_features(0x07, 0x0007_0007));
    assert_eq!((c.status, c.dw0), (Status::SUCCESS, 0x0003_0003));
    let c = d.admin(Command::get_features(0x07, 0));
    assert_eq!((c.status, c.dw0), (Status::SUCCESS, 0x0003_0003));
    // Volatile write cache.
    assert_eq!(d.admin(Command::get_features(0x06, 0)).dw0, 1);
    assert_eq!(
        d.admin(Command::set_features(0x06, 0)).status,
        Status::SUCCESS
    );
    assert_eq!(d.admin(Command::get_features(0x06, 0)).dw0, 0);
    assert_eq!(d.admin(Command::get_features(0x06, 1)).dw0, 1, "default");
    // Temperature threshold: over and under for the composite sensor.
    assert_eq!(d.admin(Command::get_features(0x04, 0)).dw0, 0x157);
    assert_eq!(
        d.admin(Command::set_features(0x04, 0x160)).status,
        Status::SUCCESS
    );
    assert_eq!(
        d.admin(Command::set_features(0x04, (1 << 20) | 0x100))
            .status,
        Status::SUCCESS
    );
    assert_eq!(d.admin(Command::get_features(0x04, 0)).dw0, 0x160);
    assert_eq!(
        d.admin(Command::get_features(0x04, 0).cdw(11, 1 << 20)).dw0,
        0x100
    );
    assert_eq!(
        d.admin(Command::set_features(0x04, 1 << 16)).status,
        Status::INVALID_FIELD,
        "sensor 1"
    );
    // Arbitration, power management, interrupt coalescing.
    assert_eq!(
        d.admin(Command::set_features(0x01, 0x0302_0103)).status,
        Status::SUCCESS
    );
    assert_eq!(d.admin(Command::get_features(0x01, 0)).dw0, 0x0302_0103);
    assert_eq!(
        d.admin(Command::set_features(0x02, 1)).status,
        Status::INVALID_FIELD,
        "PS 1 > NPSS"
    );
    assert_eq!(
        d.admin(Command::set_features(0x02, 0)).status,
        Status::SUCCESS
    );
    assert_eq!(
        d.admin(Command::set_features(0x08, 0x0A05)).status,
        Status::SUCCESS
    );
    assert_eq!(d.admin(Command::get_features(0x08, 0)).dw0, 0x0A05);
    // Async event configuration keeps supported bits (SMART, zone descriptor changed).
    let c = d.admin(Command::set_features(0x0B, (1 << 27) | (1 << 8) | 0x1));
    assert_eq!(c.status, Status::SUCCESS);
    assert_eq!(d.admin(Command::get_features(0x0B, 0)).dw0, (1 << 27) | 0x1);
    // I/O command set profile: only index 0.
    assert_eq!(
        d.admin(Command::set_features(0x19, 0)).status,
        Status::SUCCESS
    );
    assert_eq!(
        d.admin(Command::set_features(0x19, 1)).status,
        Status::IOCS_COMBINATION_REJECTED
    );
    // Save, capabilities, unknown features.
    let c = d.admin(Command::set_features(0x01, 0).cdw(10, 0x8000_0001));
    assert_eq!(c.status, Status::FEATURE_NOT_SAVEABLE);
    assert_eq!(
        d.admin(Command::get_features(0x01, 3)).dw0,
        1 << 2,
        "changeable"
    );
    assert_eq!(
        d.admin(Command::get_features(0x01, 4)).status,
        Status::INVALID_FIELD
    );
    assert_eq!(
        d.admin(Command::set_features(0x7F, 0)).status,
        Status::INVALID_FIELD
    );
    assert_eq!(
        d.admin(Command::get_features(0x05, 0)).status,
        Status::INVALID_FIELD
    );
    // Number of Queues after queues exist: Command Sequence Error.
    let (c1, c2) = d.create_io_pair(1, 16);
    assert!(c1.status.is_success() && c2.status.is_success());
    assert_eq!(
        d.admin(Command::set_features(0x07, 0)).status,
        Status::CMD_SEQUENCE
    );
}

#[test]
fn features_without_write_cache() {
    let (_dir, img) = image(Geo::default());
    let cfg = ControllerConfig {
        volatile_write_cache: false,
        ..Default::default()
    };
    let ctrl = Arc::new(Controller::new(img, cfg).unwrap());
    let mut d = nvme::test_utils::Driver::new(ctrl, 64 << 20);
    d.init_linux();
    let (_, id) = d.identify(0x01, 0, 0);
    assert_eq!(id[525] & 1, 0, "VWC not present");
    assert_eq!(
        d.admin(Command::set_features(0x06, 1)).status,
        Status::INVALID_FIELD
    );
    assert_eq!(
        d.admin(Command::get_features(0x06, 0)).status,
        Status::INVALID_FIELD
    );
    // Writes are durable without a cache; flush still succeeds.
    assert_eq!(
        d.write(1, 0, &pattern(4096, 1), false).status,
        Status::SUCCESS
    );
    assert_eq!(d.run(1, Command::new(0x00)).status, Status::SUCCESS);
}

#[test]
fn queue_creation_errors() {
    let mut r = rig(Geo::default(), 4096);
    let d = &mut r.d;
    let base = d.alloc(64 << 10);
    let cq = |qid, size, base, iv| Command::create_cq(qid, size, base, true, iv);
    assert_eq!(d.admin(cq(0, 16, base, 0)).status, Status::INVALID_QID);
    assert_eq!(
        d.admin(cq(5, 16, base, 0)).status,
        Status::INVALID_QID,
        "beyond max_io_queues"
    );
    assert_eq!(
        d.admin(cq(1, 16, base, 0)).status,
        Status::INVALID_QID,
        "in use"
    );
    assert_eq!(
        d.admin(cq(2, 1, base, 0)).status,
        Status::INVALID_QSIZE,
        "QSIZE 0"
    );
    assert_eq!(
        d.admin(cq(2, 1025, base, 0)).status,
        Status::INVALID_QSIZE,
        "above MQES"
    );
    assert_eq!(
        d.admin(cq(2, 16, base + 0x200, 0)).status,
        Status::PRP_INVALID_OFFSET
    );
    assert_eq!(d.admin(cq(2, 16, 0, 0)).status, Status::INVALID_FIELD);
    let not_pc = Command::create_cq(2, 16, base, true, 0).cdw(11, 2);
    assert_eq!(d.admin(not_pc).status, Status::INVALID_FIELD, "PC = 0");
    assert_eq!(d.admin(cq(2, 16, base, 5)).status, Status::INVALID_VECTOR);
    assert_eq!(d.admin(cq(2, 1024, base, 4)).status, Status::SUCCESS);
    assert_eq!(d.ctrl.max_vectors(), 5);
    let sq = |qid, size, base, cqid| Command::create_sq(qid, size, base, cqid);
    let sbase = d.alloc(64 << 10);
    assert_eq!(d.admin(sq(2, 16, sbase, 0)).status, Status::INVALID_CQ);
    assert_eq!(d.admin(sq(2, 16, sbase, 3)).status, Status::INVALID_CQ);
    assert_eq!(d.admin(sq(2, 16, sbase, 9)).status, Status::INVALID_CQ);
    assert_eq!(d.admin(sq(0, 16, sbase, 2)).status, Status::INVALID_QID);
    assert_eq!(
        d.admin(sq(1, 16, sbase, 2)).status,
        Status::INVALID_QID,
        "in use"
    );
    assert_eq!(d.admin(sq(5, 16, sbase, 2)).status, Status::INVALID_QID);
    assert_eq!(d.admin(sq(2, 1, sbase, 2)).status, Status::INVALID_QSIZE);
    assert_eq!(d.admin(sq(2, 1025, sbase, 2)).status, Status::INVALID_QSIZE);
    assert_eq!(
        d.admin(sq(2, 16, sbase + 8, 2)).status,
        Status::PRP_INVALID_OFFSET
    );
    assert_eq!(
        d.admin(sq(2, 16, sbase, 2).cdw(11, 2 << 16)).status,
        Status::INVALID_FIELD,
        "PC = 0"
    );
    assert_eq!(d.admin(sq(2, 16, sbase, 2)).status, Status::SUCCESS);
    assert_eq!(
        d.admin(sq(3, 16, sbase + 0x1000, 2)).status,
        Status::SUCCESS,
        "two SQs share CQ 2"
    );
    // Deletion order.
    assert_eq!(
        d.admin(Command::delete_cq(2)).status,
        Status::INVALID_QUEUE_DELETION
    );
    assert_eq!(d.admin(Command::delete_sq(2)).status, Status::SUCCESS);
    assert_eq!(
        d.admin(Command::delete_cq(2)).status,
        Status::INVALID_QUEUE_DELETION,
        "SQ 3 left"
    );
    assert_eq!(d.admin(Command::delete_sq(3)).status, Status::SUCCESS);
    assert_eq!(d.admin(Command::delete_cq(2)).status, Status::SUCCESS);
    assert_eq!(d.admin(Command::delete_sq(2)).status, Status::INVALID_QID);
    assert_eq!(d.admin(Command::delete_sq(0)).status, Status::INVALID_QID);
    assert_eq!(d.admin(Command::delete_cq(0)).status, Status::INVALID_QID);
    assert_eq!(d.admin(Command::delete_cq(4)).status, Status::INVALID_QID);
    assert_eq!(d.admin(Command::delete_sq(9)).status, Status::INVALID_QID);
    assert_eq!(d.admin(Command::delete_cq(300)).status, Status::INVALID_QID);
}

#[test]
fn queue_creation_needs_entry_sizes() {
    let (_dir, img) = image(Geo::default());
    let ctrl = Arc::new(Controller::new(img, ControllerConfig::default()).unwrap());
    let mut d = nvme::test_utils::Driver::new(ctrl, 64 << 20);
    // Enabled without IOSQES/IOCQES (CC = EN | CSS 110b).
    assert_eq!(d.enable_with(1 | (6 << 4), 16) & 1, 1);
    let base = d.alloc(4096);
    assert_eq!(
        d.admin(Command::create_cq(1, 16, base, true, 1)).status,
        Status::INVALID_FIELD
    );
}

#[test]
fn deleted_queue_stops_and_commands_do_not_run() {
    let mut r = rig(Geo::default(), 4096);
    let d = &mut r.d;
    assert_eq!(d.admin(Command::delete_sq(1)).status, Status::SUCCESS);
    // A command left in the deleted SQ never executes.
    d.host.doorbells.set_sq_tail(1, 1);
    assert_eq!(d.process(), 0);
    assert_eq!(d.admin(Command::delete_cq(1)).status, Status::SUCCESS);
    let (c1, c2) = d.create_io_pair(1, 8);
    assert!(
        c1.status.is_success() && c2.status.is_success(),
        "qid reusable after delete"
    );
    assert_eq!(
        d.write(1, 0, &pattern(4096, 1), false).status,
        Status::SUCCESS
    );
}

#[test]
fn aer_held_until_limit() {
    let mut r = rig(Geo::default(), 4096);
    let d = &mut r.d;
    for _ in 0..4 {
        d.submit(0, Command::new(0x0C).nsid(0));
    }
    assert_eq!(d.process(), 0, "held AERs are not completions");
    assert!(d.reap(0).is_none(), "AERs are held");
    let c = d.admin(Command::new(0x0C).nsid(0));
    assert_eq!(c.status, Status::AER_LIMIT);
    // Other admin commands still complete around them.
    assert_eq!(
        d.admin(Command::new(0x18).nsid(0)).status,
        Status::SUCCESS,
        "keep alive"
    );
    let c = d.admin(Command::new(0x08).nsid(0).cdw(10, 1 << 16));
    assert_eq!(
        (c.status, c.dw0 & 1),
        (Status::SUCCESS, 1),
        "abort: not aborted"
    );
}

#[test]
fn aer_reports_invalid_doorbell_value() {
    let mut r = rig(Geo::default(), 4096);
    let d = &mut r.d;
    let cid = d.submit(0, Command::new(0x0C).nsid(0));
    d.process();
    assert!(d.reap(0).is_none());
    // SQ 1 has 64 entries: a tail of 200 is invalid.
    d.host.doorbells.set_sq_tail(1, 200);
    d.process();
    let c = d.reap(0).expect("AER completes");
    assert_eq!(c.cid, cid);
    assert_eq!(c.dw0 & 0x7, 0, "error status event");
    assert_eq!((c.dw0 >> 8) & 0xFF, 1, "invalid doorbell write value");
    assert_eq!((c.dw0 >> 16) & 0xFF, 1, "error log");
    d.host.doorbells.set_sq_tail(1, 0);
    assert_eq!(
        d.write(1, 0, &pattern(4096, 2), false).status,
        Status::SUCCESS
    );
    let (_, s) = d.get_log(0x02, 0, 512, 0, 0);
    assert_eq!(le64(&s, 176), 1, "error log entries counted");
}

#[test]
fn invalid_admin_commands() {
    let mut r = rig(Geo::default(), 4096);
    let d = &mut r.d;
    let c = d.admin(Command::new(0x80));
    assert_eq!(c.status, Status::INVALID_OPCODE);
    assert_eq!(c.status.field(), 0x4001);
    assert_eq!(
        d.admin(Command::new(0x7C)).status,
        Status::INVALID_OPCODE,
        "no doorbell buffer config"
    );
    assert_eq!(
        d.admin(Command::identify(1, 0, 0).fuse(1)).status,
        Status::INVALID_FIELD
    );
    assert_eq!(
        d.admin(Command::identify(1, 0, 0).psdt(1)).status,
        Status::INVALID_FIELD
    );
    // Identify into unmapped memory: Data Transfer Error.
    d.host.mem.unmap(0x380_0000, 0x1000);
    let c = d.admin(Command::identify(1, 0, 0).dptr(0x380_0000, 0));
    assert_eq!(c.status, Status::DATA_TRANSFER);
    // Identify with a PRP2 that has an offset.
    let c = d.admin(Command::identify(1, 0, 0).dptr(0x100_0800, 0x100_2100));
    assert_eq!(c.status, Status::PRP_INVALID_OFFSET);
    // Completion carries SQ id and head.
    let c = d.admin(Command::new(0x18));
    assert_eq!(c.sqid, 0);
}

#[test]
fn temperature_threshold_raises_smart_warning() {
    let mut r = rig(Geo::default(), 4096);
    let d = &mut r.d;
    let (_, s) = d.get_log(0x02, 0, 512, 0, 0);
    assert_eq!(
        s[0] & 0x2,
        0,
        "no temperature warning at default thresholds"
    );
    assert_eq!(
        d.admin(Command::set_features(0x0B, 0x2)).status,
        Status::SUCCESS
    );
    let cid = d.submit(0, Command::new(0x0C).nsid(0));
    d.process();
    assert!(d.reap(0).is_none());
    // Over-temperature threshold below the current temperature.
    let c = d.admin(Command::set_features(0x04, 0x100));
    assert_eq!(c.status, Status::SUCCESS);
    d.process();
    let ev = d.reap(0).expect("SMART event");
    assert_eq!(ev.cid, cid);
    assert_eq!(
        (ev.dw0 & 0x7, (ev.dw0 >> 8) & 0xFF, (ev.dw0 >> 16) & 0xFF),
        (1, 1, 2)
    );
    let (_, s) = d.get_log(0x02, 0, 512, 0, 0);
    assert_eq!(s[0] & 0x2, 0x2, "critical warning: temperature");
    // Back to normal.
    assert_eq!(
        d.admin(Command::set_features(0x04, 0x157)).status,
        Status::SUCCESS
    );
    let (_, s) = d.get_log(0x02, 0, 512, 0, 0);
    assert_eq!(s[0] & 0x2, 0);
}
