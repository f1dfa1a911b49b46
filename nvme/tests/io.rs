//! Data path against a real image: byte-exact read/write at both LBA sizes, append, FUA,
//! write zeroes, flush, PRP lists and SGLs, and the write-rule statuses.

mod common;

use common::*;
use nvme::test_utils::Command;
use nvme::Status;

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
