//! ZonedImage behaviour: zone I/O, management, persistence across reopen.

mod common;
use common::*;
use qcow2zoned::*;
use std::io::{IoSlice, IoSliceMut};
use std::path::Path;

const MIB: u64 = 1 << 20;

fn opts(size: u64, zone: u64, cs: u64) -> CreateOptions {
    CreateOptions {
        size,
        cluster_size: cs,
        zone: ZoneOptions {
            size: zone,
            capacity: zone,
            ..Default::default()
        },
    }
}

fn open(p: &Path) -> ZonedImage {
    ZonedImage::open(p, OpenOptions::default()).unwrap()
}

fn read(img: &ZonedImage, off: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0xeeu8; len];
    img.read(off, &mut [IoSliceMut::new(&mut v)]).unwrap();
    v
}

fn write(img: &ZonedImage, off: u64, data: &[u8]) {
    img.write(off, &[IoSlice::new(data)], false).unwrap();
}

#[test]
fn sequential_write_read_and_zeros_above_the_write_pointer() {
    let d = tmp();
    let f = path_in(&d, "z.qcow2");
    ZonedImage::create(&f, &opts(8 * MIB, MIB, 65536)).unwrap();
    let img = open(&f);
    assert_eq!(img.info().geometry.nr_zones, 8);
    write(&img, MIB, &[0xab; 5000]);
    write(&img, MIB + 5000, &[0xcd; 100000]);
    let z = img.zones(1, 1)[0];
    assert_eq!(z.wp, MIB + 105000);
    assert_eq!(z.state, ZoneState::ImplicitlyOpened);
    let r = read(&img, MIB, 200000);
    assert!(r[..5000].iter().all(|&b| b == 0xab));
    assert!(r[5000..105000].iter().all(|&b| b == 0xcd));
    assert!(r[105000..].iter().all(|&b| b == 0));
    // Not at the write pointer.
    let e = img
        .write(MIB, &[IoSlice::new(&[1; 512])], false)
        .unwrap_err();
    assert!(matches!(e, Error::Zone(ZoneError::InvalidWrite)), "{e}");
    // Append goes to the write pointer and says where.
    let off = img
        .append(MIB, &[IoSlice::new(&[0x11; 4096])], false)
        .unwrap();
    assert_eq!(off, MIB + 105000);
    assert_eq!(read(&img, off, 4096), vec![0x11; 4096]);
    img.close().unwrap();
}

#[test]
fn reset_reads_zeros_and_frees_clusters() {
    let d = tmp();
    let f = path_in(&d, "r.qcow2");
    ZonedImage::create(&f, &opts(4 * MIB, MIB, 65536)).unwrap();
    let img = open(&f);
    write(&img, 0, &vec![0x55; MIB as usize]);
    assert_eq!(img.zones(0, 1)[0].state, ZoneState::Full);
    img.flush().unwrap();
    let before = std::fs::metadata(&f).unwrap().len();
    img.zone_action(Some(0), ZoneAction::Reset).unwrap();
    assert_eq!(img.zones(0, 1)[0].state, ZoneState::Empty);
    assert!(read(&img, 0, MIB as usize).iter().all(|&b| b == 0));
    // Clusters were given back: refilling the zone reuses them (file does not grow).
    write(&img, 0, &vec![0x66; MIB as usize]);
    img.close().unwrap();
    assert_eq!(std::fs::metadata(&f).unwrap().len(), before);
    let img = open(&f);
    assert_eq!(read(&img, 0, MIB as usize), vec![0x66; MIB as usize]);
    let rep = check_image(&FileStorage::open(&f, true, false).unwrap()).unwrap();
    assert_eq!(rep.exit_code(), 0, "{:?}", rep.messages);
}

#[test]
fn finish_zeroes_above_the_write_pointer_and_persists() {
    let d = tmp();
    let f = path_in(&d, "f.qcow2");
    ZonedImage::create(&f, &opts(4 * MIB, MIB, 4096)).unwrap();
    {
        let img = open(&f);
        write(&img, 2 * MIB, &[7; 10000]);
        img.zone_action(Some(2), ZoneAction::Finish).unwrap();
        let z = img.zones(2, 1)[0];
        assert_eq!(z.state, ZoneState::Full);
        let r = read(&img, 2 * MIB, MIB as usize);
        assert!(r[..10000].iter().all(|&b| b == 7));
        assert!(r[10000..].iter().all(|&b| b == 0));
        // no flush: zone_action is durable by itself
        std::mem::forget(img);
    }
    let img = open(&f);
    assert_eq!(img.zones(2, 1)[0].state, ZoneState::Full);
    let r = read(&img, 2 * MIB, MIB as usize);
    assert!(r[..10000].iter().all(|&b| b == 7));
    assert!(r[10000..].iter().all(|&b| b == 0));
}

#[test]
fn header_rewrite_keeps_unknown_extensions_and_clears_autoclear_bits() {
    let d = tmp();
    let f = path_in(&d, "h.qcow2");
    ZonedImage::create(&f, &opts(4 * MIB, MIB, 65536)).unwrap();
    let mut b = std::fs::read(&f).unwrap();
    // Insert an unknown extension right before the end marker, set an autoclear bit.
    let mut off = 112;
    loop {
        let t = u32::from_be_bytes(b[off..off + 4].try_into().unwrap());
        if t == 0 {
            break;
        }
        let l = u32::from_be_bytes(b[off + 4..off + 8].try_into().unwrap()) as usize;
        off += 8 + l.div_ceil(8) * 8;
    }
    let ext = [
        0x12, 0x34, 0x56, 0x78, 0, 0, 0, 5, b'h', b'e', b'l', b'l', b'o', 0, 0, 0,
    ];
    b[off..off + 16].copy_from_slice(&ext);
    b[off + 16..off + 24].fill(0);
    b[95] |= 1;
    std::fs::write(&f, &b).unwrap();
    {
        let img = open(&f);
        write(&img, 0, &[1; 4096]);
        img.close().unwrap();
    }
    let a = std::fs::read(&f).unwrap();
    assert_eq!(
        a[95] & 1,
        0,
        "autoclear bits are cleared on a writable open"
    );
    assert!(
        a[..65536].windows(16).any(|w| w == ext),
        "unknown extension lost"
    );
    let img = open(&f);
    assert_eq!(read(&img, 0, 4096), vec![1; 4096]);
    let e = img.resize(8 * MIB).unwrap_err().to_string();
    assert!(e.contains("resize of a zoned image"), "{e}");
}

#[test]
fn image_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ZonedImage>();
    assert_send_sync::<Qcow2>();
}

/// With `direct`, aligned I/O goes through O_DIRECT and unaligned I/O and metadata through
/// the page cache; both views stay coherent.
#[test]
fn direct_io_round_trip() {
    let d = tmp();
    let f = path_in(&d, "d.qcow2");
    ZonedImage::create(&f, &opts(8 * MIB, MIB, 65536)).unwrap();
    // A 4 KiB-aligned buffer carved out of a larger allocation.
    let mut backing = vec![0u8; 3 * 65536];
    let a = backing.as_ptr().align_offset(4096);
    let buf = &mut backing[a..a + 131072];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i / 4096) as u8 ^ 0x5a;
    }
    let expect = buf.to_vec();
    {
        let img = ZonedImage::open(
            &f,
            OpenOptions {
                direct: true,
                ..Default::default()
            },
        )
        .unwrap();
        img.write(MIB, &[IoSlice::new(buf)], false).unwrap();
        img.write(MIB + 131072, &[IoSlice::new(&[7u8; 100])], false)
            .unwrap();
        buf.fill(0);
        img.read(MIB, &mut [IoSliceMut::new(buf)]).unwrap();
        assert!(buf[..] == expect[..]);
        assert_eq!(read(&img, MIB + 131072, 100), vec![7u8; 100]);
        img.close().unwrap();
    }
    let img = open(&f);
    assert!(read(&img, MIB, 131072) == expect);
    assert_eq!(img.zones(1, 1)[0].wp, MIB + 131172);
}

/// Zones smaller than a cluster share clusters: resetting or finishing one zone must not
/// disturb its neighbours, and fresh clusters must read as zeros outside the written zone.
#[test]
fn zones_smaller_than_a_cluster() {
    let d = tmp();
    let f = path_in(&d, "s.qcow2");
    let zone = 4096u64;
    ZonedImage::create(
        &f,
        &CreateOptions {
            size: 64 * zone,
            cluster_size: 65536,
            zone: ZoneOptions {
                size: zone,
                capacity: zone,
                max_append_bytes: 4096,
                ..Default::default()
            },
        },
    )
    .unwrap();
    let mut model = vec![0u8; 64 * zone as usize];
    {
        let img = open(&f);
        for z in 0..40u64 {
            let len = 512 * (1 + z % 8);
            let b = vec![z as u8 + 1; len as usize];
            img.write(z * zone, &[IoSlice::new(&b)], false).unwrap();
            model[(z * zone) as usize..(z * zone + len) as usize].copy_from_slice(&b);
        }
        for z in (0..40u32).step_by(3) {
            img.zone_action(Some(z), ZoneAction::Reset).unwrap();
            let s = u64::from(z) * zone;
            model[s as usize..(s + zone) as usize].fill(0);
        }
        for z in (1..40u32).step_by(5) {
            img.zone_action(Some(z), ZoneAction::Finish).unwrap();
        }
        // Refill a reset zone whose cluster is shared with live neighbours.
        let b = vec![0xaa; 4096];
        img.write(3 * zone, &[IoSlice::new(&b)], false).unwrap();
        model[(3 * zone) as usize..(4 * zone) as usize].copy_from_slice(&b);
        assert!(read(&img, 0, model.len()) == model);
        img.close().unwrap();
    }
    let img = open(&f);
    assert!(read(&img, 0, model.len()) == model);
    let rep = check_image(&FileStorage::open(&f, true, false).unwrap()).unwrap();
    assert_eq!(rep.exit_code(), 0, "{:?}", rep.messages);
}

/// Reservations: admitted in order, written in any order from other threads, given back
/// when dropped unwritten.
#[test]
fn reserved_writes_are_admitted_in_order_and_finished_in_any_order() {
    let d = tmp();
    let f = path_in(&d, "z.qcow2");
    ZonedImage::create(&f, &opts(8 * MIB, MIB, 65536)).unwrap();
    let img = std::sync::Arc::new(open(&f));
    let a = img.reserve_write(MIB, 8192).unwrap();
    let b = img.reserve_write(MIB + 8192, 4096).unwrap();
    let c = img.reserve_append(MIB, 4096).unwrap();
    assert_eq!(
        (a.offset(), b.offset(), c.offset()),
        (MIB, MIB + 8192, MIB + 12288)
    );
    // A write at the committed pointer is refused: the range is already reserved.
    let e = img
        .write(MIB, &[IoSlice::new(&[1; 4096])], false)
        .unwrap_err();
    assert!(matches!(e, Error::Zone(ZoneError::InvalidWrite)), "{e}");
    // Finish out of order, from another thread; the pointer moves once the prefix is done.
    let t = std::thread::spawn(move || {
        assert_eq!(
            c.finish(&[IoSlice::new(&[0xcc; 4096])], false).unwrap(),
            MIB + 12288
        );
        b.finish(&[IoSlice::new(&[0xbb; 4096])], false).unwrap();
    });
    t.join().unwrap();
    assert_eq!(
        img.zones(1, 1)[0].wp,
        MIB,
        "nothing committed before the first write"
    );
    a.finish(&[IoSlice::new(&[0xaa; 8192])], false).unwrap();
    assert_eq!(img.zones(1, 1)[0].wp, MIB + 16384);
    let r = read(&img, MIB, 16384);
    assert!(r[..8192].iter().all(|&x| x == 0xaa));
    assert!(r[8192..12288].iter().all(|&x| x == 0xbb));
    assert!(r[12288..].iter().all(|&x| x == 0xcc));
    // Dropped unwritten: the reservation is given back and the zone can be written there.
    let p = img.reserve_write(MIB + 16384, 4096).unwrap();
    drop(p);
    write(&img, MIB + 16384, &[0xdd; 4096]);
    // Wrong data length: refused and given back too.
    let p = img.reserve_write(MIB + 20480, 8192).unwrap();
    let e = p.finish(&[IoSlice::new(&[0; 4096])], false).unwrap_err();
    assert!(matches!(e, Error::Invalid(_)), "{e}");
    write(&img, MIB + 20480, &[0xee; 4096]);
    assert_eq!(img.zones(1, 1)[0].wp, MIB + 24576);
    // Zone rules apply at reservation: a full zone refuses.
    img.zone_action(Some(1), ZoneAction::Finish).unwrap();
    let e = img.reserve_append(MIB, 4096).unwrap_err();
    assert!(matches!(e, Error::Zone(ZoneError::Full)), "{e}");
    // A zone reset waits for reservations in flight (here: none left) and works.
    img.zone_action(Some(1), ZoneAction::Reset).unwrap();
    img.flush().unwrap();
    drop(img);
    let img = open(&f);
    assert_eq!(img.zones(1, 1)[0].state, ZoneState::Empty);
}

/// `keep_clusters_on_reset`: a reset zone reads as zeros, its clusters stay mapped and the
/// next pass overwrites them in place; stale bytes never show, not after a reopen, not
/// after a Finish.
#[test]
fn reset_keeping_clusters_never_shows_old_data_and_rewrites_in_place() {
    let d = tmp();
    let f = path_in(&d, "k.qcow2");
    ZonedImage::create(&f, &opts(4 * MIB, MIB, 65536)).unwrap();
    let keep = OpenOptions {
        keep_clusters_on_reset: true,
        ..Default::default()
    };
    let img = ZonedImage::open(&f, keep).unwrap();
    write(&img, 0, &vec![0x55; MIB as usize]);
    write(&img, MIB, &vec![0x77; MIB as usize]);
    img.flush().unwrap();
    let size = std::fs::metadata(&f).unwrap().len();
    img.zone_action(Some(0), ZoneAction::Reset).unwrap();
    img.zone_action(Some(1), ZoneAction::Reset).unwrap();
    assert_eq!(img.zones(0, 1)[0].state, ZoneState::Empty);
    assert!(read(&img, 0, 2 * MIB as usize).iter().all(|&b| b == 0));
    // Zone 0: a partial rewrite; zone 1: a partial rewrite, then Finish.
    write(&img, 0, &[0x66; 4096]);
    write(&img, MIB, &[0x88; 8192]);
    img.zone_action(Some(1), ZoneAction::Finish).unwrap();
    let r = read(&img, 0, 2 * MIB as usize);
    assert!(r[..4096].iter().all(|&b| b == 0x66));
    assert!(
        r[4096..MIB as usize].iter().all(|&b| b == 0),
        "stale bytes above the WP"
    );
    assert!(r[MIB as usize..MIB as usize + 8192]
        .iter()
        .all(|&b| b == 0x88));
    assert!(
        r[MIB as usize + 8192..].iter().all(|&b| b == 0),
        "Finish exposes zeros, not the old pass"
    );
    img.close().unwrap();
    assert_eq!(
        std::fs::metadata(&f).unwrap().len(),
        size,
        "the rewrite used the kept clusters"
    );
    // Reopened (with the default options): the same view, and a clean image.
    let img = open(&f);
    assert_eq!(img.zones(0, 1)[0].state, ZoneState::Closed);
    assert_eq!(img.zones(0, 1)[0].wp, 4096);
    assert_eq!(img.zones(1, 1)[0].state, ZoneState::Full);
    let r = read(&img, 0, 2 * MIB as usize);
    assert!(r[..4096].iter().all(|&b| b == 0x66));
    assert!(r[4096..MIB as usize].iter().all(|&b| b == 0));
    assert!(r[MIB as usize..MIB as usize + 8192]
        .iter()
        .all(|&b| b == 0x88));
    assert!(r[MIB as usize + 8192..].iter().all(|&b| b == 0));
    drop(img);
    let rep = check_image(&FileStorage::open(&f, true, false).unwrap()).unwrap();
    assert_eq!(rep.exit_code(), 0, "{:?}", rep.messages);
}

/// Reads copy from a mapping of the image file by default. Interleaved with writes that
/// grow the file (so the mapping must follow) and with a reset that keeps the clusters,
/// they must return what `pread` returns, byte for byte, and match the written data.
#[test]
fn mapped_reads_follow_growth_and_resets_and_match_pread() {
    let d = tmp();
    let f = path_in(&d, "m.qcow2");
    ZonedImage::create(&f, &opts(8 * MIB, MIB, 65536)).unwrap();
    let pread = OpenOptions {
        pread_only: true,
        ..Default::default()
    };
    let keep = OpenOptions {
        keep_clusters_on_reset: true,
        ..Default::default()
    };
    let img = ZonedImage::open(&f, keep).unwrap();
    let mut expect = vec![0u8; (8 * MIB) as usize];
    // Each chunk lands in a new cluster; read it (and the neighbours) right away.
    for (i, z) in [1u64, 3, 1, 5, 3, 1].into_iter().enumerate() {
        let wp = img.zones(z as u32, 1)[0].wp;
        let data: Vec<u8> = (0..70000u32).map(|k| (k * 13 + i as u32) as u8).collect();
        write(&img, wp, &data);
        expect[wp as usize..wp as usize + data.len()].copy_from_slice(&data);
        assert!(
            read(&img, wp - 1000.min(wp - z * MIB), 72000)
                == expect[(wp - 1000.min(wp - z * MIB)) as usize..][..72000]
        );
    }
    // Reset zone 3 (clusters kept) and rewrite less than before: the old tail reads zeros.
    img.zone_action(Some(3), ZoneAction::Reset).unwrap();
    expect[(3 * MIB) as usize..(4 * MIB) as usize].fill(0);
    write(&img, 3 * MIB, &[0x77; 4096]);
    expect[(3 * MIB) as usize..(3 * MIB + 4096) as usize].fill(0x77);
    assert!(read(&img, 0, (8 * MIB) as usize) == expect);
    img.flush().unwrap();
    let ro = OpenOptions {
        read_only: true,
        ..pread
    };
    let other = ZonedImage::open(&f, ro).unwrap();
    assert!(
        read(&other, 0, (8 * MIB) as usize) == expect,
        "pread sees the same bytes"
    );
    drop(other);
    img.close().unwrap();
    let img = ZonedImage::open(&f, pread).unwrap();
    assert!(read(&img, 0, (8 * MIB) as usize) == expect);
}
