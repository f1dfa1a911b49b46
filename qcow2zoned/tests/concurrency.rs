//! Many threads at once: data I/O runs outside the metadata lock, so allocations racing on
//! the same cluster, appends racing on the same zone, resets, flushes and reads must all
//! leave exactly the bytes each writer was acknowledged for.

mod common;
use common::*;
use qcow2zoned::*;
use std::io::{IoSlice, IoSliceMut};
use std::sync::{Arc, Mutex};

const ZONE: u64 = 1 << 20;

fn byte(off: u64, tag: u64) -> u8 {
    (off.wrapping_mul(31) ^ tag.wrapping_mul(0x9d)) as u8
}

fn fill(off: u64, len: u64, tag: u64) -> Vec<u8> {
    (off..off + len).map(|o| byte(o, tag)).collect()
}

#[test]
fn concurrent_writers_appenders_readers_and_resets() {
    let d = tmp();
    let f = path_in(&d, "c.qcow2");
    ZonedImage::create(
        &f,
        &CreateOptions {
            size: 16 * ZONE,
            cluster_size: 4096,
            zone: ZoneOptions {
                size: ZONE,
                capacity: ZONE,
                conventional_zones: 2,
                ..Default::default()
            },
        },
    )
    .unwrap();
    let img = Arc::new(ZonedImage::open(&f, OpenOptions::default()).unwrap());
    let appended: Arc<Mutex<Vec<(u64, u64, u64)>>> = Arc::default();
    let mut hs = Vec::new();
    // Two random writers on the conventional zones; their regions share a cluster at the
    // boundary (1 MiB + 100 bytes) so their allocations race.
    for t in 0..2u64 {
        let img = img.clone();
        hs.push(std::thread::spawn(move || {
            let (lo, hi) = if t == 0 {
                (0, ZONE + 100)
            } else {
                (ZONE + 100, 2 * ZONE)
            };
            let mut rng = Rng(t + 1);
            for _ in 0..300 {
                let len = 1 + rng.below(9000).min(hi - lo - 1);
                let off = lo + rng.below(hi - lo - len);
                img.write(off, &[IoSlice::new(&fill(off, len, 0))], false)
                    .unwrap();
            }
            // Leave the whole region with known content.
            let mut off = lo;
            while off < hi {
                let len = (hi - off).min(65536);
                img.write(off, &[IoSlice::new(&fill(off, len, 0))], false)
                    .unwrap();
                off += len;
            }
        }));
    }
    // Sequential writers, one zone each (zones 2..6).
    for z in 2..6u64 {
        let img = img.clone();
        hs.push(std::thread::spawn(move || {
            let mut rng = Rng(z * 7);
            let start = z * ZONE;
            let mut wp = start;
            while wp < start + ZONE {
                let len = ((1 + rng.below(40)) * 512).min(start + ZONE - wp);
                img.write(wp, &[IoSlice::new(&fill(wp, len, z))], false)
                    .unwrap();
                wp += len;
            }
        }));
    }
    // Four appenders sharing zones 6 and 7.
    for t in 0..4u64 {
        let img = img.clone();
        let appended = appended.clone();
        hs.push(std::thread::spawn(move || {
            let mut rng = Rng(100 + t);
            for i in 0..60 {
                let z = 6 + (i % 2);
                let len = (1 + rng.below(16)) * 512;
                let tag = 1000 + t * 1000 + i;
                // The payload depends on where it lands, which is known only afterwards:
                // write a tag-only pattern and record it.
                let data: Vec<u8> = (0..len).map(|k| byte(k, tag)).collect();
                match img.append(z * ZONE, &[IoSlice::new(&data)], false) {
                    Ok(at) => appended.lock().unwrap().push((at, len, tag)),
                    Err(Error::Zone(ZoneError::Boundary | ZoneError::Full)) => {}
                    Err(e) => panic!("append: {e}"),
                }
            }
        }));
    }
    // A zone that keeps being written and reset, a flusher and a reader.
    {
        let img = img.clone();
        hs.push(std::thread::spawn(move || {
            for round in 0..20u64 {
                let start = 8 * ZONE;
                for k in 0..8u64 {
                    let off = start + k * 8192;
                    img.write(off, &[IoSlice::new(&fill(off, 8192, round))], false)
                        .unwrap();
                }
                img.zone_action(Some(8), ZoneAction::Reset).unwrap();
                let mut b = vec![1u8; 65536];
                img.read(start, &mut [IoSliceMut::new(&mut b)]).unwrap();
                assert!(b.iter().all(|&x| x == 0), "reset zone must read zeros");
            }
        }));
    }
    {
        let img = img.clone();
        hs.push(std::thread::spawn(move || {
            for _ in 0..20 {
                img.flush().unwrap();
                std::thread::yield_now();
            }
        }));
    }
    {
        let img = img.clone();
        hs.push(std::thread::spawn(move || {
            let mut rng = Rng(5);
            let mut b = vec![0u8; 16384];
            for _ in 0..500 {
                let off = rng.below(16 * ZONE - 16384);
                img.read(off, &mut [IoSliceMut::new(&mut b)]).unwrap();
            }
        }));
    }
    for h in hs {
        h.join().unwrap();
    }
    let verify = |img: &ZonedImage| {
        let mut all = vec![0u8; (16 * ZONE) as usize];
        img.read(0, &mut [IoSliceMut::new(&mut all)]).unwrap();
        assert!(
            all[..2 * ZONE as usize] == fill(0, 2 * ZONE, 0)[..],
            "conventional zones"
        );
        for z in 2..6u64 {
            let s = (z * ZONE) as usize;
            assert!(
                all[s..s + ZONE as usize] == fill(z * ZONE, ZONE, z)[..],
                "zone {z}"
            );
        }
        let mut ap = appended.lock().unwrap().clone();
        ap.sort();
        for z in 6..8u64 {
            let mine: Vec<_> = ap.iter().filter(|a| a.0 / ZONE == z).collect();
            let mut wp = z * ZONE;
            for &&(at, len, tag) in &mine {
                assert_eq!(at, wp, "appends must be contiguous");
                let want: Vec<u8> = (0..len).map(|k| byte(k, tag)).collect();
                assert!(
                    all[at as usize..(at + len) as usize] == want[..],
                    "append at {at:#x}"
                );
                wp += len;
            }
            assert_eq!(img.zones(z as u32, 1)[0].wp, wp);
        }
        assert!(all[(8 * ZONE) as usize..(9 * ZONE) as usize]
            .iter()
            .all(|&b| b == 0));
    };
    verify(&img);
    Arc::try_unwrap(img).unwrap().close().unwrap();
    let rep = check_image(&FileStorage::open(&f, true, false).unwrap()).unwrap();
    assert_eq!(rep.exit_code(), 0, "{:?}", rep.messages);
    verify(&ZonedImage::open(&f, OpenOptions::default()).unwrap());
}

/// Write-through writers on several threads share write-backs; every write that returned
/// is durable without any flush or close.
#[test]
fn concurrent_write_through_is_durable_on_return() {
    let d = tmp();
    let f = path_in(&d, "wt.qcow2");
    ZonedImage::create(
        &f,
        &CreateOptions {
            size: 8 * ZONE,
            cluster_size: 4096,
            zone: ZoneOptions {
                size: ZONE,
                capacity: ZONE,
                ..Default::default()
            },
        },
    )
    .unwrap();
    let img = Arc::new(
        ZonedImage::open(
            &f,
            OpenOptions {
                cache: CacheMode::WriteThrough,
                ..Default::default()
            },
        )
        .unwrap(),
    );
    let hs: Vec<_> = (0..4u64)
        .map(|z| {
            let img = img.clone();
            std::thread::spawn(move || {
                let start = z * ZONE;
                for i in 0..40u64 {
                    let off = start + i * 8192;
                    img.write(off, &[IoSlice::new(&fill(off, 8192, z))], false)
                        .unwrap();
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    // Simulate a crash: no flush, no close, no destructor.
    std::mem::forget(img);
    let img = ZonedImage::open(&f, OpenOptions::default()).unwrap();
    for z in 0..4u64 {
        assert_eq!(img.zones(z as u32, 1)[0].wp, z * ZONE + 40 * 8192);
        let mut b = vec![0u8; 40 * 8192];
        img.read(z * ZONE, &mut [IoSliceMut::new(&mut b)]).unwrap();
        assert!(b == fill(z * ZONE, 40 * 8192, z), "zone {z}");
    }
}
