//! Zone management over a real image: every transition through Zone Management Send with the
//! exact CQE status, reports (extended, partial, filters) and the write rules.

mod common;

use common::*;
use nvme::test_utils::{parse_report, Command, ReportedZone};
use nvme::{GuestMemory, Status};
use qcow2zoned::ZoneState;

const CLOSE: u8 = 1;
const FINISH: u8 = 2;
const OPEN: u8 = 3;
const RESET: u8 = 4;
const OFFLINE: u8 = 5;
const SET_ZDE: u8 = 0x10;

/// 16 zones of 256 LBAs (4 KiB LBAs).
const ZL: u64 = 256;

fn zone(d: &mut nvme::test_utils::Driver, idx: u64) -> ReportedZone {
    let (c, buf) = d.report(1, idx * ZL, 128, 0, 0, true);
    assert_eq!(c.status, Status::SUCCESS);
    let (nr, zs) = parse_report(&buf, 0, 1);
    assert_eq!(nr, 1);
    zs[0].clone()
}

fn state(d: &mut nvme::test_utils::Driver, idx: u64) -> u8 {
    zone(d, idx).zs
}

fn block(seed: u8) -> Vec<u8> {
    pattern(4096, seed)
}

#[test]
fn transitions_from_empty_open_close_finish_reset() {
    let mut r = rig(Geo::default(), 4096);
    let d = &mut r.d;
    assert_eq!(state(d, 0), 0x1, "fresh zone is Empty");
    assert_eq!(
        d.zone_send(1, 0, CLOSE, false).status,
        Status::INVALID_ZONE_TRANSITION
    );
    assert_eq!(
        d.zone_send(1, 0, OFFLINE, false).status,
        Status::INVALID_ZONE_TRANSITION
    );
    assert_eq!(
        d.zone_send(1, 0, RESET, false).status,
        Status::SUCCESS,
        "reset of Empty is a no-op"
    );
    assert_eq!(state(d, 0), 0x1);
    assert_eq!(d.zone_send(1, 0, OPEN, false).status, Status::SUCCESS);
    assert_eq!(state(d, 0), 0x3, "explicitly opened");
    assert_eq!(
        d.zone_send(1, 0, OPEN, false).status,
        Status::SUCCESS,
        "open of ZSEO"
    );
    assert_eq!(d.zone_send(1, 0, CLOSE, false).status, Status::SUCCESS);
    assert_eq!(state(d, 0), 0x4, "closed (even with nothing written)");
    assert_eq!(
        d.zone_send(1, 0, CLOSE, false).status,
        Status::SUCCESS,
        "close of ZSC"
    );
    assert_eq!(d.write(1, 0, &block(1), false).status, Status::SUCCESS);
    assert_eq!(state(d, 0), 0x2, "write implicitly opens a Closed zone");
    assert_eq!(zone(d, 0).wp, 1);
    assert_eq!(d.zone_send(1, 0, FINISH, false).status, Status::SUCCESS);
    let z = zone(d, 0);
    assert_eq!(z.zs, 0xE, "finished");
    assert_eq!(z.wp, u64::MAX, "WP of a Full zone is not valid");
    assert_eq!(
        d.zone_send(1, 0, FINISH, false).status,
        Status::SUCCESS,
        "finish of ZSF"
    );
    assert_eq!(
        d.zone_send(1, 0, OPEN, false).status,
        Status::INVALID_ZONE_TRANSITION
    );
    assert_eq!(
        d.zone_send(1, 0, CLOSE, false).status,
        Status::INVALID_ZONE_TRANSITION
    );
    assert_eq!(
        d.zone_send(1, 0, OFFLINE, false).status,
        Status::INVALID_ZONE_TRANSITION
    );
    assert_eq!(d.write(1, 0, &block(2), false).status, Status::ZONE_FULL);
    assert_eq!(d.append(1, 0, &block(2)).status, Status::ZONE_FULL);
    // Data of a finished zone stays readable.
    let (c, got) = d.read(1, 0, 1);
    assert_eq!(c.status, Status::SUCCESS);
    assert_eq!(got, block(1));
    assert_eq!(d.zone_send(1, 0, RESET, false).status, Status::SUCCESS);
    let z = zone(d, 0);
    assert_eq!((z.zs, z.wp), (0x1, 0));
    let (_, got) = d.read(1, 0, 1);
    assert!(got.iter().all(|&b| b == 0), "reset data reads as zeros");
}

#[test]
fn finish_from_empty_and_implicit_open() {
    let mut r = rig(Geo::default(), 4096);
    let d = &mut r.d;
    assert_eq!(d.zone_send(1, ZL, FINISH, false).status, Status::SUCCESS);
    assert_eq!(state(d, 1), 0xE);
    assert_eq!(d.write(1, 2 * ZL, &block(3), false).status, Status::SUCCESS);
    assert_eq!(state(d, 2), 0x2);
    assert_eq!(d.zone_send(1, 2 * ZL, OPEN, false).status, Status::SUCCESS);
    assert_eq!(state(d, 2), 0x3, "implicit -> explicit open");
    assert_eq!(d.zone_send(1, 2 * ZL, RESET, false).status, Status::SUCCESS);
    assert_eq!(state(d, 2), 0x1);
}

#[test]
fn read_only_and_offline_zones() {
    let mut r = rig(Geo::default(), 4096);
    let d = &mut r.d;
    assert_eq!(d.write(1, 3 * ZL, &block(4), false).status, Status::SUCCESS);
    d.ctrl
        .namespace()
        .force_zone_state(3, ZoneState::ReadOnly)
        .unwrap();
    assert_eq!(state(d, 3), 0xD);
    assert_eq!(
        d.write(1, 3 * ZL + 1, &block(5), false).status,
        Status::ZONE_READ_ONLY
    );
    assert_eq!(
        d.append(1, 3 * ZL, &block(5)).status,
        Status::ZONE_READ_ONLY
    );
    for zsa in [OPEN, CLOSE, FINISH, RESET] {
        assert_eq!(
            d.zone_send(1, 3 * ZL, zsa, false).status,
            Status::INVALID_ZONE_TRANSITION,
            "zsa {zsa}"
        );
    }
    let (c, got) = d.read(1, 3 * ZL, 1);
    assert_eq!(c.status, Status::SUCCESS, "read-only zones are readable");
    assert_eq!(got, block(4));
    assert_eq!(
        d.zone_send(1, 3 * ZL, OFFLINE, false).status,
        Status::SUCCESS
    );
    let z = zone(d, 3);
    assert_eq!((z.zs, z.wp), (0xF, u64::MAX));
    assert_eq!(
        d.zone_send(1, 3 * ZL, OFFLINE, false).status,
        Status::SUCCESS,
        "offline of ZSO"
    );
    assert_eq!(d.read(1, 3 * ZL, 1).0.status, Status::ZONE_OFFLINE);
    assert_eq!(
        d.write(1, 3 * ZL, &block(5), false).status,
        Status::ZONE_OFFLINE
    );
    for zsa in [OPEN, CLOSE, FINISH, RESET] {
        assert_eq!(
            d.zone_send(1, 3 * ZL, zsa, false).status,
            Status::INVALID_ZONE_TRANSITION,
            "zsa {zsa}"
        );
    }
}

#[test]
fn select_all_scopes() {
    let mut r = rig(Geo::default(), 4096);
    let d = &mut r.d;
    // zone 0 implicitly open, 1 explicitly open, 2 closed, 3 full, 4 read-only.
    assert_eq!(d.write(1, 0, &block(1), false).status, Status::SUCCESS);
    assert_eq!(d.zone_send(1, ZL, OPEN, false).status, Status::SUCCESS);
    assert_eq!(d.write(1, 2 * ZL, &block(2), false).status, Status::SUCCESS);
    assert_eq!(d.zone_send(1, 2 * ZL, CLOSE, false).status, Status::SUCCESS);
    assert_eq!(
        d.zone_send(1, 3 * ZL, FINISH, false).status,
        Status::SUCCESS
    );
    d.ctrl
        .namespace()
        .force_zone_state(4, ZoneState::ReadOnly)
        .unwrap();
    // Close all: opened zones become Closed.
    assert_eq!(d.zone_send(1, 0, CLOSE, true).status, Status::SUCCESS);
    let s: Vec<u8> = (0..6).map(|i| state(d, i)).collect();
    assert_eq!(s, vec![0x4, 0x4, 0x4, 0xE, 0xD, 0x1]);
    // Open all: Closed zones become explicitly opened.
    assert_eq!(d.zone_send(1, 0, OPEN, true).status, Status::SUCCESS);
    let s: Vec<u8> = (0..6).map(|i| state(d, i)).collect();
    assert_eq!(s, vec![0x3, 0x3, 0x3, 0xE, 0xD, 0x1]);
    // Finish all: every open/closed zone becomes Full, Empty ones stay.
    assert_eq!(d.zone_send(1, 0, FINISH, true).status, Status::SUCCESS);
    let s: Vec<u8> = (0..6).map(|i| state(d, i)).collect();
    assert_eq!(s, vec![0xE, 0xE, 0xE, 0xE, 0xD, 0x1]);
    // Offline all: read-only zones go offline.
    assert_eq!(d.zone_send(1, 0, OFFLINE, true).status, Status::SUCCESS);
    assert_eq!(state(d, 4), 0xF);
    // Reset all: full zones become Empty; the slba is ignored with Select All.
    assert_eq!(d.zone_send(1, 5, RESET, true).status, Status::SUCCESS);
    let s: Vec<u8> = (0..6).map(|i| state(d, i)).collect();
    assert_eq!(s, vec![0x1, 0x1, 0x1, 0x1, 0xF, 0x1]);
}

#[test]
fn zone_send_field_checks() {
    let mut r = rig(Geo::default(), 4096);
    let d = &mut r.d;
    assert_eq!(
        d.zone_send(1, 1, OPEN, false).status,
        Status::INVALID_FIELD,
        "not a zone start"
    );
    assert_eq!(
        d.zone_send(1, 16 * ZL, OPEN, false).status,
        Status::LBA_RANGE
    );
    assert_eq!(d.zone_send(1, 0, 0x00, false).status, Status::INVALID_FIELD);
    assert_eq!(
        d.zone_send(1, 0, 0x11, false).status,
        Status::INVALID_FIELD,
        "no ZRWA"
    );
    assert_eq!(d.zone_send(1, 0, 0x06, false).status, Status::INVALID_FIELD);
    let c = d.run(
        1,
        Command::zone_send(0, OPEN, false).cdw(13, u32::from(OPEN) | (1 << 9)),
    );
    assert_eq!(c.status, Status::INVALID_FIELD, "ZSASO: no ZRWA");
    let c = d.run(1, Command::zone_send(0, OPEN, false).nsid(2));
    assert_eq!(c.status, Status::INVALID_NS);
}

#[test]
fn set_zone_descriptor_extension_and_extended_report() {
    let mut r = rig(
        Geo {
            zde: 128,
            ..Geo::default()
        },
        4096,
    );
    let d = &mut r.d;
    let ext = pattern(128, 7);
    let (c, _) = d.run_with_buffer(
        1,
        Command::zone_send(2 * ZL, SET_ZDE, false),
        128,
        Some(&ext),
    );
    assert_eq!(c.status, Status::SUCCESS);
    // Empty -> Closed with ZDEV.
    let z = zone(d, 2);
    assert_eq!((z.zs, z.za), (0x4, 0x80));
    // Not Empty any more.
    let (c, _) = d.run_with_buffer(
        1,
        Command::zone_send(2 * ZL, SET_ZDE, false),
        128,
        Some(&ext),
    );
    assert_eq!(c.status, Status::INVALID_ZONE_TRANSITION);
    // Select All is not allowed for this action.
    let (c, _) = d.run_with_buffer(1, Command::zone_send(0, SET_ZDE, true), 128, Some(&ext));
    assert_eq!(c.status, Status::INVALID_FIELD);
    // Extended report: each descriptor followed by 128 bytes of extension.
    let (c, buf) = d.report(1, 0, 64 + 4 * 192, 1, 0, false);
    assert_eq!(c.status, Status::SUCCESS);
    let (nr, zs) = parse_report(&buf, 128, 4);
    assert_eq!(nr, 16);
    assert_eq!(zs[2].ext, ext);
    assert!(zs[1].ext.iter().all(|&b| b == 0), "no ZDEV: zeros");
    assert_eq!(zs[2].zslba, 2 * ZL);
    // Reset clears ZDEV and the data.
    assert_eq!(d.zone_send(1, 2 * ZL, RESET, false).status, Status::SUCCESS);
    let (_, buf) = d.report(1, 2 * ZL, 64 + 192, 1, 0, true);
    let (_, zs) = parse_report(&buf, 128, 1);
    assert_eq!((zs[0].zs, zs[0].za), (0x1, 0));
    assert!(zs[0].ext.iter().all(|&b| b == 0));
}

#[test]
fn set_zde_and_extended_report_need_zdes() {
    let mut r = rig(Geo::default(), 4096);
    let d = &mut r.d;
    let (c, _) = d.run_with_buffer(1, Command::zone_send(0, SET_ZDE, false), 64, Some(&[1; 64]));
    assert_eq!(c.status, Status::INVALID_FIELD);
    assert_eq!(
        d.report(1, 0, 4096, 1, 0, false).0.status,
        Status::INVALID_FIELD
    );
}

#[test]
fn report_all_partial_and_offsets() {
    let mut r = rig(
        Geo {
            cap: 768 << 10,
            ..Geo::default()
        },
        4096,
    );
    let d = &mut r.d;
    assert_eq!(d.write(1, ZL, &block(1), false).status, Status::SUCCESS);
    let (c, buf) = d.report(1, 0, 4096, 0, 0, false);
    assert_eq!(c.status, Status::SUCCESS);
    let (nr, zs) = parse_report(&buf, 0, 16);
    assert_eq!(nr, 16);
    for (i, z) in zs.iter().enumerate() {
        let i = i as u64;
        assert_eq!(z.zt, 2, "sequential write required");
        assert_eq!(z.zslba, i * ZL);
        assert_eq!(z.zcap, 192, "768 KiB capacity in LBAs");
        assert_eq!(z.wp, i * ZL + u64::from(i == 1));
    }
    // Buffer for 2 descriptors: without Partial the header counts every matching zone.
    let (c, buf) = d.report(1, 0, 64 + 128, 0, 0, false);
    assert_eq!(c.status, Status::SUCCESS);
    assert_eq!(parse_report(&buf, 0, 2).0, 16);
    let (_, buf) = d.report(1, 0, 64 + 128, 0, 0, true);
    let (nr, zs) = parse_report(&buf, 0, 2);
    assert_eq!(nr, 2, "Partial: descriptors returned");
    assert_eq!(zs[1].zslba, ZL);
    // Starting inside zone 5: zones 5..16.
    let (_, buf) = d.report(1, 5 * ZL + 17, 4096, 0, 0, false);
    let (nr, zs) = parse_report(&buf, 0, 1);
    assert_eq!((nr, zs[0].zslba), (11, 5 * ZL));
    // Header only.
    let (c, buf) = d.report(1, 0, 64, 0, 0, false);
    assert_eq!(c.status, Status::SUCCESS);
    assert_eq!(parse_report(&buf, 0, 0).0, 16);
    // Errors.
    assert_eq!(
        d.report(1, 0, 32, 0, 0, false).0.status,
        Status::INVALID_FIELD,
        "below 64 bytes"
    );
    assert_eq!(
        d.report(1, 16 * ZL, 4096, 0, 0, false).0.status,
        Status::LBA_RANGE
    );
    assert_eq!(
        d.report(1, 0, 4096, 2, 0, false).0.status,
        Status::INVALID_FIELD,
        "ZRA"
    );
    assert_eq!(
        d.report(1, 0, 4096, 0, 8, false).0.status,
        Status::INVALID_FIELD,
        "ZRASF"
    );
}

#[test]
fn report_filters() {
    let mut r = rig(Geo::default(), 4096);
    let d = &mut r.d;
    // 0 ZSIO, 1 ZSEO, 2 ZSC, 3 ZSF, 4 ZSRO, 5 ZSO, 6.. Empty.
    assert_eq!(d.write(1, 0, &block(1), false).status, Status::SUCCESS);
    assert_eq!(d.zone_send(1, ZL, OPEN, false).status, Status::SUCCESS);
    assert_eq!(d.zone_send(1, 2 * ZL, OPEN, false).status, Status::SUCCESS);
    assert_eq!(d.zone_send(1, 2 * ZL, CLOSE, false).status, Status::SUCCESS);
    assert_eq!(
        d.zone_send(1, 3 * ZL, FINISH, false).status,
        Status::SUCCESS
    );
    d.ctrl
        .namespace()
        .force_zone_state(4, ZoneState::ReadOnly)
        .unwrap();
    d.ctrl
        .namespace()
        .force_zone_state(5, ZoneState::Offline)
        .unwrap();
    let expect: [(u8, u64, Option<u64>); 7] = [
        (1, 10, Some(6)),
        (2, 1, Some(0)),
        (3, 1, Some(1)),
        (4, 1, Some(2)),
        (5, 1, Some(3)),
        (6, 1, Some(4)),
        (7, 1, Some(5)),
    ];
    for (zrasf, count, first) in expect {
        let (c, buf) = d.report(1, 0, 4096, 0, zrasf, false);
        assert_eq!(c.status, Status::SUCCESS);
        let (nr, zs) = parse_report(&buf, 0, 1);
        assert_eq!(nr, count, "filter {zrasf}");
        if let Some(f) = first {
            assert_eq!(zs[0].zslba, f * ZL, "filter {zrasf}");
        }
    }
    // Filter with Partial and a start past the only match.
    let (_, buf) = d.report(1, 4 * ZL, 4096, 0, 2, true);
    assert_eq!(parse_report(&buf, 0, 0).0, 0);
}

#[test]
fn write_rules_statuses() {
    let mut r = rig(
        Geo {
            cap: 768 << 10,
            ..Geo::default()
        },
        4096,
    );
    let d = &mut r.d;
    assert_eq!(
        d.write(1, 1, &block(1), false).status,
        Status::ZONE_INVALID_WRITE,
        "not at WP"
    );
    assert_eq!(d.write(1, 0, &block(1), false).status, Status::SUCCESS);
    assert_eq!(
        d.write(1, 0, &block(1), false).status,
        Status::ZONE_INVALID_WRITE,
        "behind WP"
    );
    // Up to capacity (192 LBAs): a write crossing it is a boundary error.
    let big = pattern(191 * 4096, 3);
    let c = d.write(1, 1, &big[..64 * 4096], false);
    assert_eq!(c.status, Status::SUCCESS);
    let c = d.write(1, 65, &pattern(128 * 4096, 4)[..], false);
    assert_eq!(c.status, Status::ZONE_BOUNDARY, "crosses ZCAP");
    let c = d.write(1, 65, &pattern(127 * 4096, 4)[..], false);
    assert_eq!(c.status, Status::SUCCESS);
    assert_eq!(state(d, 0), 0xE, "zone becomes Full at capacity");
    // Past the namespace.
    assert_eq!(
        d.write(1, 16 * ZL - 1, &pattern(2 * 4096, 5), false).status,
        Status::LBA_RANGE
    );
    assert_eq!(
        d.write(1, 16 * ZL, &block(5), false).status,
        Status::LBA_RANGE
    );
    let c = d.run(1, Command::rw(0x01, u64::MAX, 1, false).dptr(0x10000, 0));
    assert_eq!(c.status, Status::LBA_RANGE, "no overflow on SLBA + NLB");
    // Reads crossing a zone boundary.
    let (c, _) = d.read(1, ZL - 1, 2);
    assert_eq!(c.status, Status::ZONE_BOUNDARY);
    // Write zeroes follows the same rules.
    let c = d.run(1, Command::rw(0x08, ZL + 3, 1, false));
    assert_eq!(c.status, Status::ZONE_INVALID_WRITE);
    let c = d.run(1, Command::rw(0x08, ZL, 4, false));
    assert_eq!(c.status, Status::SUCCESS);
    assert_eq!(zone(d, 1).wp, ZL + 4);
}

#[test]
fn open_and_active_limits() {
    let mut r = rig(
        Geo {
            max_open: 2,
            max_active: 3,
            ..Geo::default()
        },
        4096,
    );
    let d = &mut r.d;
    let (_, ns) = d.identify(0x05, 1, 2);
    assert_eq!(
        (le32(&ns, 4), le32(&ns, 8)),
        (2, 1),
        "MAR, MOR are 0's based"
    );
    assert_eq!(d.zone_send(1, 0, OPEN, false).status, Status::SUCCESS);
    assert_eq!(d.zone_send(1, ZL, OPEN, false).status, Status::SUCCESS);
    assert_eq!(
        d.zone_send(1, 2 * ZL, OPEN, false).status,
        Status::TOO_MANY_OPEN
    );
    assert_eq!(
        d.write(1, 2 * ZL, &block(1), false).status,
        Status::TOO_MANY_OPEN,
        "no implicitly opened zone to close"
    );
    assert_eq!(d.zone_send(1, ZL, CLOSE, false).status, Status::SUCCESS);
    assert_eq!(d.write(1, 2 * ZL, &block(1), false).status, Status::SUCCESS);
    // Active: 0 (ZSEO), 1 (ZSC), 2 (ZSIO) = 3 = limit.
    assert_eq!(
        d.write(1, 3 * ZL, &block(2), false).status,
        Status::TOO_MANY_ACTIVE
    );
    assert_eq!(
        d.append(1, 3 * ZL, &block(2)).status,
        Status::TOO_MANY_ACTIVE
    );
    assert_eq!(
        d.zone_send(1, 3 * ZL, OPEN, false).status,
        Status::TOO_MANY_ACTIVE
    );
    // Opening zone 1 again evicts the implicitly opened zone 2 (auto close).
    assert_eq!(d.zone_send(1, ZL, OPEN, false).status, Status::SUCCESS);
    assert_eq!(state(d, 2), 0x4);
    // Finishing a zone frees its resources.
    assert_eq!(d.zone_send(1, 0, FINISH, false).status, Status::SUCCESS);
    assert_eq!(
        d.write(1, 2 * ZL + 1, &block(3), false).status,
        Status::SUCCESS
    );
}

#[test]
fn implicit_open_evicts_lru_implicit_zone() {
    let mut r = rig(
        Geo {
            max_open: 2,
            max_active: 0,
            ..Geo::default()
        },
        4096,
    );
    let d = &mut r.d;
    assert_eq!(d.write(1, 0, &block(1), false).status, Status::SUCCESS);
    assert_eq!(d.write(1, ZL, &block(1), false).status, Status::SUCCESS);
    assert_eq!(
        d.write(1, 1, &block(1), false).status,
        Status::SUCCESS,
        "zone 0 used most recently"
    );
    assert_eq!(d.write(1, 2 * ZL, &block(1), false).status, Status::SUCCESS);
    assert_eq!((state(d, 0), state(d, 1), state(d, 2)), (0x2, 0x4, 0x2));
}

#[test]
fn append_rules() {
    let mut r = rig(
        Geo {
            cap: 768 << 10,
            ..Geo::default()
        },
        4096,
    );
    let d = &mut r.d;
    assert_eq!(
        d.append(1, 1, &block(1)).status,
        Status::INVALID_FIELD,
        "ZSLBA not a zone start"
    );
    let c = d.append(1, 0, &pattern(128 << 10, 1));
    assert_eq!(c.status, Status::INVALID_FIELD, "above ZASL (64 KiB)");
    let c = d.append(1, 0, &pattern(64 << 10, 1));
    assert_eq!((c.status, c.result64()), (Status::SUCCESS, 0));
    for i in 1..11u64 {
        let c = d.append(1, 0, &pattern(64 << 10, 2));
        assert_eq!((c.status, c.result64()), (Status::SUCCESS, i * 16));
    }
    // 176 of 192 LBAs used; then 184: 8 LBAs more fit, 9 do not.
    let c = d.append(1, 0, &pattern(8 * 4096, 3));
    assert_eq!((c.status, c.result64()), (Status::SUCCESS, 176));
    let c = d.append(1, 0, &pattern(9 * 4096, 3));
    assert_eq!(c.status, Status::ZONE_BOUNDARY);
    let c = d.append(1, 0, &pattern(8 * 4096, 3));
    assert_eq!((c.status, c.result64()), (Status::SUCCESS, 184));
    assert_eq!(state(d, 0), 0xE);
    assert_eq!(d.append(1, 0, &block(4)).status, Status::ZONE_FULL);
    // Append in the last zone returns an LBA > 32 bits only on huge devices; check DW1 = 0.
    let c = d.append(1, 15 * ZL, &block(5));
    assert_eq!((c.dw0, c.dw1), ((15 * ZL) as u32, 0));
}

#[test]
fn zone_errors_win_over_transfer_errors() {
    let mut r = rig(Geo::default(), 4096);
    let d = &mut r.d;
    assert_eq!(d.zone_send(1, 0, FINISH, false).status, Status::SUCCESS);
    // Unmapped buffer, Full zone: Zone Is Full.
    d.host.mem.unmap(0x300_0000, 0x10000);
    let c = d.run(1, Command::rw(0x01, 0, 1, false).dptr(0x300_0000, 0));
    assert_eq!(c.status, Status::ZONE_FULL);
    // Not at the write pointer with a bad PRP offset: Zone Invalid Write.
    let c = d.run(1, Command::rw(0x01, ZL + 5, 2, false).dptr(0x20_0002, 0));
    assert_eq!(c.status, Status::ZONE_INVALID_WRITE);
    // A valid write with an unmapped buffer: Data Transfer Error, WP unchanged.
    let c = d.run(1, Command::rw(0x01, ZL, 1, false).dptr(0x300_0000, 0));
    assert_eq!(c.status, Status::DATA_TRANSFER);
    assert_eq!(zone(d, 1).wp, ZL);
    let c = d.run(1, Command::rw(0x7D, ZL, 1, false).dptr(0x300_0000, 0));
    assert_eq!(c.status, Status::DATA_TRANSFER);
    assert_eq!(zone(d, 1).wp, ZL);
    let c = d.run(1, Command::rw(0x02, ZL, 1, false).dptr(0x300_0000, 0));
    assert_eq!(c.status, Status::DATA_TRANSFER);
    // Reads of an offline zone: Zone Is Offline before transfer or PRP errors.
    d.ctrl
        .namespace()
        .force_zone_state(2, ZoneState::Offline)
        .unwrap();
    let c = d.run(1, Command::rw(0x02, 2 * ZL, 1, false).dptr(0x300_0000, 0));
    assert_eq!(c.status, Status::ZONE_OFFLINE);
    let c = d.run(1, Command::rw(0x02, 2 * ZL, 1, false).dptr(0x20_0002, 0));
    assert_eq!(c.status, Status::ZONE_OFFLINE);
    // ... and before a zone boundary error when the read starts in the offline zone.
    let (c, _) = d.read(1, 3 * ZL - 1, 2);
    assert_eq!(c.status, Status::ZONE_OFFLINE);
    let (c, _) = d.read(1, 2 * ZL - 1, 2);
    assert_eq!(c.status, Status::ZONE_BOUNDARY);
}

#[test]
fn zones_512_byte_lbas() {
    let mut r = rig(Geo::default(), 512);
    let d = &mut r.d;
    let zl = 2048u64;
    assert_eq!(
        d.write(1, zl, &pattern(1024, 1), false).status,
        Status::SUCCESS
    );
    let (c, buf) = d.report(1, zl, 128, 0, 0, true);
    assert_eq!(c.status, Status::SUCCESS);
    let (_, zs) = parse_report(&buf, 0, 1);
    assert_eq!(
        (zs[0].zslba, zs[0].zcap, zs[0].wp, zs[0].zs),
        (zl, zl, zl + 2, 0x2)
    );
    assert_eq!(
        d.zone_send(1, zl + 1, RESET, false).status,
        Status::INVALID_FIELD
    );
    assert_eq!(d.zone_send(1, zl, RESET, false).status, Status::SUCCESS);
}

#[test]
fn huge_report_buffer_without_mdts_is_bounded() {
    let cfg = nvme::ControllerConfig {
        mdts: 0,
        ..Default::default()
    };
    let mut r = rig_with(Geo::default(), cfg);
    let d = &mut r.d;
    let (_, id) = d.identify(0x01, 0, 0);
    assert_eq!(id[77], 0, "MDTS unlimited");
    // NUMD = 0xFFFFFFFF (16 GiB) with a 4 KiB buffer: only 64 + 16 × 64 bytes are written.
    let buf = d.alloc(8192);
    d.host.mem.write(buf + 64 + 16 * 64, &[0xAA; 16]).unwrap();
    let c = d.run(
        1,
        Command::zone_recv(0, 4, 0, 0, false)
            .cdw(12, u32::MAX)
            .dptr(buf, 0),
    );
    assert_eq!(c.status, Status::SUCCESS);
    let mut out = vec![0u8; 64 + 16 * 64 + 16];
    d.host.mem.read(buf, &mut out).unwrap();
    let (nr, zs) = parse_report(&out[..64 + 16 * 64], 0, 16);
    assert_eq!((nr, zs[15].zslba), (16, 15 * ZL));
    assert_eq!(
        &out[64 + 16 * 64..],
        &[0xAA; 16],
        "nothing written past the last descriptor"
    );
}
