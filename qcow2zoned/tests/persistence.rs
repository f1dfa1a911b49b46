//! Everything a zoned image promises to keep survives close/reopen, a flush without close,
//! and a SIGKILL of the writing process after a flush.

mod common;
use common::*;
use qcow2zoned::*;
use std::io::{BufRead, BufReader, IoSlice, IoSliceMut};
use std::path::Path;
use std::process::{Command, Stdio};

const MIB: u64 = 1 << 20;
const ZONE: u64 = MIB;

fn create(f: &Path) {
    ZonedImage::create(
        f,
        &CreateOptions {
            size: 12 * ZONE,
            cluster_size: 65536,
            zone: ZoneOptions {
                size: ZONE,
                capacity: ZONE - 64 * 1024,
                conventional_zones: 1,
                max_open_zones: 4,
                max_active_zones: 6,
                zd_extension_size: 64,
                ..Default::default()
            },
        },
    )
    .unwrap();
}

fn pat(z: u32, len: u64) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8) ^ (z as u8).wrapping_mul(37))
        .collect()
}

fn read(img: &ZonedImage, off: u64, len: u64) -> Vec<u8> {
    let mut v = vec![0xeeu8; len as usize];
    img.read(off, &mut [IoSliceMut::new(&mut v)]).unwrap();
    v
}

fn zone(img: &ZonedImage, z: u32) -> ZoneInfo {
    img.zones(z, 1)[0]
}

fn clean_check(f: &Path) {
    let rep = check_image(&FileStorage::open(f, true, false).unwrap()).unwrap();
    assert_eq!(rep.exit_code(), 0, "{:?}", rep.messages);
}

/// Build every kind of zone state; returns nothing, the caller inspects.
fn populate(img: &ZonedImage) {
    let start = |z: u32| u64::from(z) * ZONE;
    let cap = img.info().geometry.zone_capacity;
    // 0: conventional data.
    img.write(4096, &[IoSlice::new(&pat(0, 10000))], false)
        .unwrap();
    // 1: implicitly open with data.
    img.write(start(1), &[IoSlice::new(&pat(1, 70000))], false)
        .unwrap();
    // 2: explicitly open, no data.
    img.zone_action(Some(2), ZoneAction::Open).unwrap();
    // 3: written then closed.
    img.append(start(3), &[IoSlice::new(&pat(3, 8192))], false)
        .unwrap();
    img.zone_action(Some(3), ZoneAction::Close).unwrap();
    // 4: written to capacity (full).
    for i in 0..cap / 65536 {
        let off = start(4) + i * 65536;
        let p = pat(4, cap);
        img.write(
            off,
            &[IoSlice::new(
                &p[(i * 65536) as usize..((i + 1) * 65536) as usize],
            )],
            false,
        )
        .unwrap();
    }
    // 5: finished early.
    img.write(start(5), &[IoSlice::new(&pat(5, 4096))], false)
        .unwrap();
    img.zone_action(Some(5), ZoneAction::Finish).unwrap();
    // 6: descriptor extension on an empty zone.
    img.set_zde(6, &[0x6d; 64]).unwrap();
    // 7: read-only with data, 8: offline.
    img.write(start(7), &[IoSlice::new(&pat(7, 512))], false)
        .unwrap();
    img.force_zone_state(7, ZoneState::ReadOnly).unwrap();
    img.force_zone_state(8, ZoneState::Offline).unwrap();
    // 9: written, reset.
    img.write(start(9), &[IoSlice::new(&pat(9, 100000))], false)
        .unwrap();
    img.zone_action(Some(9), ZoneAction::Reset).unwrap();
}

fn verify(img: &ZonedImage) {
    let start = |z: u32| u64::from(z) * ZONE;
    let cap = img.info().geometry.zone_capacity;
    assert_eq!(read(img, 4096, 10000), pat(0, 10000));
    let z1 = zone(img, 1);
    assert_eq!((z1.state, z1.wp), (ZoneState::Closed, start(1) + 70000));
    assert_eq!(read(img, start(1), 70000), pat(1, 70000));
    let z2 = zone(img, 2);
    assert_eq!((z2.state, z2.wp), (ZoneState::Closed, start(2)));
    let z3 = zone(img, 3);
    assert_eq!((z3.state, z3.wp), (ZoneState::Closed, start(3) + 8192));
    assert_eq!(read(img, start(3), 8192), pat(3, 8192));
    assert_eq!(zone(img, 4).state, ZoneState::Full);
    assert_eq!(read(img, start(4), cap), pat(4, cap));
    assert_eq!(zone(img, 5).state, ZoneState::Full);
    let r = read(img, start(5), ZONE);
    assert_eq!(&r[..4096], &pat(5, 4096)[..]);
    assert!(r[4096..].iter().all(|&b| b == 0));
    let z6 = zone(img, 6);
    assert_eq!(z6.state, ZoneState::Closed);
    assert!(z6.attrs.contains(ZoneAttrs::ZDEV));
    assert_eq!(img.zde(6), vec![0x6d; 64]);
    assert_eq!(img.zde(5), vec![0; 64]);
    let z7 = zone(img, 7);
    assert_eq!((z7.state, z7.wp), (ZoneState::ReadOnly, start(7) + 512));
    assert_eq!(read(img, start(7), 512), pat(7, 512));
    assert_eq!(zone(img, 8).state, ZoneState::Offline);
    let mut b = [0u8; 512];
    assert!(matches!(
        img.read(start(8), &mut [IoSliceMut::new(&mut b)]),
        Err(Error::Zone(ZoneError::Offline))
    ));
    assert_eq!(zone(img, 9).state, ZoneState::Empty);
    assert!(read(img, start(9), ZONE).iter().all(|&b| b == 0));
    // Active: 1, 2, 3, 6 closed.
    assert_eq!(img.counts(), (0, 4));
}

#[test]
fn states_attributes_and_zded_survive_close_and_reopen() {
    let d = tmp();
    let f = path_in(&d, "p.qcow2");
    create(&f);
    {
        let img = ZonedImage::open(&f, OpenOptions::default()).unwrap();
        populate(&img);
        img.flush().unwrap();
        img.close().unwrap();
    }
    clean_check(&f);
    let img = ZonedImage::open(&f, OpenOptions::default()).unwrap();
    verify(&img);
    // Limits are enforced right after reopen (counters rebuilt): two more zones may become
    // active, the third one is refused.
    img.write(10 * ZONE, &[IoSlice::new(&[1; 512])], false)
        .unwrap();
    img.write(11 * ZONE, &[IoSlice::new(&[1; 512])], false)
        .unwrap();
    img.zone_action(Some(9), ZoneAction::Open).unwrap_err();
    drop(img);
    let img = ZonedImage::open(
        &f,
        OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(matches!(
        img.write(9 * ZONE, &[IoSlice::new(&[1; 512])], false),
        Err(Error::Invalid(_))
    ));
}

#[test]
fn write_through_needs_no_flush() {
    let d = tmp();
    let f = path_in(&d, "wt.qcow2");
    create(&f);
    {
        let img = ZonedImage::open(
            &f,
            OpenOptions {
                cache: CacheMode::WriteThrough,
                ..Default::default()
            },
        )
        .unwrap();
        populate(&img);
        // No flush, no close: drop the handle without running its destructor.
        std::mem::forget(img);
    }
    clean_check(&f);
    verify(&ZonedImage::open(&f, OpenOptions::default()).unwrap());
}

#[test]
fn fua_write_is_durable_without_flush() {
    let d = tmp();
    let f = path_in(&d, "fua.qcow2");
    create(&f);
    {
        let img = ZonedImage::open(&f, OpenOptions::default()).unwrap();
        img.write(ZONE, &[IoSlice::new(&pat(1, 5000))], true)
            .unwrap();
        let at = img
            .append(2 * ZONE, &[IoSlice::new(&pat(2, 4096))], true)
            .unwrap();
        assert_eq!(at, 2 * ZONE);
        std::mem::forget(img);
    }
    let img = ZonedImage::open(&f, OpenOptions::default()).unwrap();
    assert_eq!(zone(&img, 1).wp, ZONE + 5000);
    assert_eq!(zone(&img, 2).wp, 2 * ZONE + 4096);
    assert_eq!(read(&img, ZONE, 5000), pat(1, 5000));
    assert_eq!(read(&img, 2 * ZONE, 4096), pat(2, 4096));
}

const CHILD_ENV: &str = "QCOW2ZONED_TEST_CHILD_IMAGE";

/// The child: write, flush, keep writing without flushing, announce, wait to be killed.
fn child(path: &str) {
    let img = ZonedImage::open(Path::new(path), OpenOptions::default()).unwrap();
    populate(&img);
    img.flush().unwrap();
    // Unflushed work that may or may not survive.
    img.write(ZONE + 70000, &[IoSlice::new(&[0xfe; 30000])], false)
        .unwrap();
    img.write(10 * ZONE, &[IoSlice::new(&[0xfd; 200000])], false)
        .unwrap();
    img.write(0, &[IoSlice::new(&[0xfc; 4096])], false).unwrap();
    println!("READY");
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

#[test]
fn sigkill_after_flush_loses_nothing_flushed() {
    if let Ok(p) = std::env::var(CHILD_ENV) {
        child(&p);
        return;
    }
    let d = tmp();
    let f = path_in(&d, "k.qcow2");
    create(&f);
    let mut c = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sigkill_after_flush_loses_nothing_flushed",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &f)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = c.stdout.take().unwrap();
    let mut ready = false;
    for line in BufReader::new(out).lines() {
        if line.unwrap().contains("READY") {
            ready = true;
            break;
        }
    }
    assert!(ready, "child did not get ready");
    c.kill().unwrap(); // SIGKILL
    let st = c.wait().unwrap();
    assert!(!st.success());
    clean_check(&f);
    let img = ZonedImage::open(&f, OpenOptions::default()).unwrap();
    // Zone 1 may have kept the unflushed tail (the write pointer never runs ahead of the
    // data), everything else is exactly as flushed.
    let z1 = zone(&img, 1);
    assert!(z1.wp == ZONE + 70000 || z1.wp == ZONE + 100000, "{z1:?}");
    assert_eq!(read(&img, ZONE, 70000), pat(1, 70000));
    let z10 = zone(&img, 10);
    assert!(
        z10.wp == 10 * ZONE || z10.wp == 10 * ZONE + 200000,
        "{z10:?}"
    );
    let r = read(&img, 4096, 10000);
    assert_eq!(r, pat(0, 10000));
    // Everything else as flushed.
    let start = |z: u32| u64::from(z) * ZONE;
    assert_eq!(zone(&img, 3).wp, start(3) + 8192);
    assert_eq!(zone(&img, 4).state, ZoneState::Full);
    assert_eq!(zone(&img, 5).state, ZoneState::Full);
    assert_eq!(img.zde(6), vec![0x6d; 64]);
    assert_eq!(zone(&img, 7).state, ZoneState::ReadOnly);
    assert_eq!(zone(&img, 8).state, ZoneState::Offline);
    assert_eq!(zone(&img, 9).state, ZoneState::Empty);
}
