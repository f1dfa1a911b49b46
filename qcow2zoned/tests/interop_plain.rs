//! Plain qcow2 interoperability with the real qemu-img / qemu-io.

mod common;
use common::*;
use qcow2zoned::{OpenOptions, Qcow2};

fn check_clean(img: &std::path::Path) {
    let o = qemu_img(&["check", "--output=json", p(img)]);
    assert_eq!(o.status.code(), Some(0), "qemu-img check: {}", text(&o));
}

/// Images made by `qemu-img create`, written by us (random offsets, partial clusters,
/// zeroes, discards), must compare equal to the same writes applied to a raw buffer.
#[test]
fn our_writes_to_qemu_images_compare_equal() {
    for (cs, size) in [
        (512u64, 4u64 << 20),
        (4096, 16 << 20),
        (65536, 64 << 20),
        (2 << 20, 64 << 20),
    ] {
        let d = tmp();
        let img = path_in(&d, "a.qcow2");
        let raw = path_in(&d, "a.raw");
        let o = qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &format!("cluster_size={cs}"),
            p(&img),
            &size.to_string(),
        ]);
        assert!(o.status.success(), "{}", text(&o));
        let mut model = vec![0u8; size as usize];
        let mut rng = Rng(cs ^ 0x9e37_79b9);
        {
            let q = Qcow2::open(&img, OpenOptions::default()).unwrap();
            for i in 0..200 {
                let len = 1 + rng.below(3 * cs.min(1 << 17));
                let off = rng.below(size - len);
                match i % 10 {
                    8 => {
                        q.write_zeroes(off, len).unwrap();
                        model[off as usize..(off + len) as usize].fill(0);
                    }
                    9 => {
                        q.discard(off, len).unwrap();
                        model[off as usize..(off + len) as usize].fill(0);
                    }
                    _ => {
                        let mut buf = vec![0u8; len as usize];
                        rng.fill(&mut buf);
                        // Split into a few slices to exercise the gather path.
                        let (a, b) = buf.split_at(buf.len() / 3);
                        q.write(off, &[std::io::IoSlice::new(a), std::io::IoSlice::new(b)])
                            .unwrap();
                        model[off as usize..(off + len) as usize].copy_from_slice(&buf);
                    }
                }
                if i % 50 == 0 {
                    q.flush().unwrap();
                }
            }
            // Read back through us too.
            let mut back = vec![0u8; size as usize];
            q.read_at(0, &mut back).unwrap();
            assert!(back == model, "cluster size {cs}: our read-back differs");
            q.close().unwrap();
        }
        std::fs::write(&raw, &model).unwrap();
        let o = qemu_img(&["compare", "-f", "qcow2", "-F", "raw", p(&img), p(&raw)]);
        assert_eq!(o.status.code(), Some(0), "cluster size {cs}: {}", text(&o));
        check_clean(&img);
    }
}

/// Images written by qemu-io read back byte-exact through us.
#[test]
fn qemu_io_writes_read_back_exact() {
    for cs in [512u64, 65536] {
        let d = tmp();
        let img = path_in(&d, "b.qcow2");
        let raw = path_in(&d, "b.raw");
        let size = 8u64 << 20;
        let o = qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &format!("cluster_size={cs}"),
            p(&img),
            &size.to_string(),
        ]);
        assert!(o.status.success(), "{}", text(&o));
        let o = run(
            "qemu-io",
            &[
                "-f",
                "qcow2",
                "-c",
                "write -P 0xa5 0 4096",
                "-c",
                "write -P 0x5a 70000 300000",
                "-c",
                "write -z 100000 8192",
                "-c",
                "write -P 0x11 7340032 1048576",
                "-c",
                "discard 7340032 65536",
                p(&img),
            ],
        );
        assert!(o.status.success(), "{}", text(&o));
        let o = qemu_img(&["convert", "-O", "raw", p(&img), p(&raw)]);
        assert!(o.status.success(), "{}", text(&o));
        let expect = std::fs::read(&raw).unwrap();
        let q = Qcow2::open(
            &img,
            OpenOptions {
                read_only: true,
                ..Default::default()
            },
        )
        .unwrap();
        let mut back = vec![0u8; size as usize];
        q.read_at(0, &mut back).unwrap();
        assert!(back == expect, "cluster size {cs}: read-back differs");
    }
}

/// `qemu-img convert` output (fully allocated, different layout) reads back exactly, and we can
/// keep writing to it without qemu-img check finding anything.
#[test]
fn converted_image_reads_back_and_stays_clean() {
    let d = tmp();
    let src = path_in(&d, "src.raw");
    let img = path_in(&d, "c.qcow2");
    let mut data = vec![0u8; 3 << 20];
    Rng(7).fill(&mut data[..1 << 20]);
    Rng(8).fill(&mut data[2 << 20..]);
    std::fs::write(&src, &data).unwrap();
    let o = qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        "-o",
        "cluster_size=4096",
        p(&src),
        p(&img),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let q = Qcow2::open(&img, OpenOptions::default()).unwrap();
    let mut back = vec![0u8; data.len()];
    q.read_at(0, &mut back).unwrap();
    assert!(back == data);
    q.write_at(1 << 20, &[0x77; 10000]).unwrap();
    data[1 << 20..(1 << 20) + 10000].fill(0x77);
    q.close().unwrap();
    check_clean(&img);
    let raw = path_in(&d, "expect.raw");
    std::fs::write(&raw, &data).unwrap();
    let o = qemu_img(&["compare", "-f", "qcow2", "-F", "raw", p(&img), p(&raw)]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

/// Our own plain images pass qemu-img check and read back what qemu-io wrote.
#[test]
fn our_plain_images_work_with_qemu() {
    let d = tmp();
    let img = path_in(&d, "ours.qcow2");
    Qcow2::create(&img, 32 << 20, 65536).unwrap();
    check_clean(&img);
    {
        let q = Qcow2::open(&img, OpenOptions::default()).unwrap();
        q.write_at(12345, &[0x42; 200000]).unwrap();
        q.close().unwrap();
    }
    check_clean(&img);
    let o = run(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "read -P 0x42 12345 200000",
            "-c",
            "read -P 0 0 12345",
            p(&img),
        ],
    );
    assert!(
        o.status.success() && !String::from_utf8_lossy(&o.stdout).contains("fail"),
        "{}",
        text(&o)
    );
}

/// Filling a qemu-img image with 512-byte clusters needs far more refcount blocks than its
/// one-cluster refcount table can point at: the table must grow (and move) and qemu-img must
/// still find the image clean and identical.
#[test]
fn refcount_table_grows_on_small_clusters() {
    let d = tmp();
    let img = path_in(&d, "g.qcow2");
    let raw = path_in(&d, "g.raw");
    let size = 24u64 << 20;
    let o = qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=512",
        p(&img),
        &size.to_string(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let rt_before = u64::from_be_bytes(std::fs::read(&img).unwrap()[48..56].try_into().unwrap());
    let mut model = vec![0u8; size as usize];
    Rng(99).fill(&mut model);
    {
        let q = Qcow2::open(&img, OpenOptions::default()).unwrap();
        for (i, chunk) in model.chunks(1 << 20).enumerate() {
            q.write_at(i as u64 * (1 << 20), chunk).unwrap();
        }
        q.close().unwrap();
    }
    let hdr = std::fs::read(&img).unwrap();
    let rt_after = u64::from_be_bytes(hdr[48..56].try_into().unwrap());
    assert_ne!(rt_before, rt_after, "refcount table did not move");
    check_clean(&img);
    std::fs::write(&raw, &model).unwrap();
    let o = qemu_img(&["compare", "-f", "qcow2", "-F", "raw", p(&img), p(&raw)]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let q = Qcow2::open(
        &img,
        OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    let mut back = vec![0u8; size as usize];
    q.read_at(0, &mut back).unwrap();
    assert!(back == model);
}

/// Refcount widths other than the default 16 bits (1 and 64 here) are read and written.
#[test]
fn other_refcount_widths() {
    for bits in [1u32, 2, 8, 32, 64] {
        let d = tmp();
        let img = path_in(&d, "w.qcow2");
        let raw = path_in(&d, "w.raw");
        let size = 4u64 << 20;
        let o = qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &format!("cluster_size=4096,refcount_bits={bits}"),
            p(&img),
            &size.to_string(),
        ]);
        assert!(o.status.success(), "{}", text(&o));
        let mut model = vec![0u8; size as usize];
        {
            let q = Qcow2::open(&img, OpenOptions::default()).unwrap();
            let mut rng = Rng(u64::from(bits));
            for i in 0..60 {
                let len = 1 + rng.below(50000);
                let off = rng.below(size - len);
                if i % 7 == 6 {
                    q.discard(off, len).unwrap();
                    model[off as usize..(off + len) as usize].fill(0);
                } else {
                    let mut b = vec![0u8; len as usize];
                    rng.fill(&mut b);
                    q.write_at(off, &b).unwrap();
                    model[off as usize..(off + len) as usize].copy_from_slice(&b);
                }
            }
            q.close().unwrap();
        }
        check_clean(&img);
        std::fs::write(&raw, &model).unwrap();
        let o = qemu_img(&["compare", "-f", "qcow2", "-F", "raw", p(&img), p(&raw)]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "refcount_bits {bits}: {}",
            text(&o)
        );
    }
}

/// Preallocated images (every cluster mapped up front) read as zeros and take our writes.
#[test]
fn preallocated_images() {
    for prealloc in ["metadata", "falloc"] {
        let d = tmp();
        let img = path_in(&d, "p.qcow2");
        let raw = path_in(&d, "p.raw");
        let size = 4u64 << 20;
        let o = qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &format!("cluster_size=65536,preallocation={prealloc}"),
            p(&img),
            &size.to_string(),
        ]);
        assert!(o.status.success(), "{}", text(&o));
        let mut model = vec![0u8; size as usize];
        {
            let q = Qcow2::open(&img, OpenOptions::default()).unwrap();
            let mut back = vec![1u8; size as usize];
            q.read_at(0, &mut back).unwrap();
            assert!(
                back.iter().all(|&b| b == 0),
                "{prealloc}: fresh image must read zeros"
            );
            q.write_at(100_000, &[9u8; 5000]).unwrap();
            model[100_000..105_000].fill(9);
            q.write_zeroes(0, 200_000).unwrap();
            model[..200_000].fill(0);
            q.write_at(150_000, &[3u8; 70_000]).unwrap();
            model[150_000..220_000].fill(3);
            q.close().unwrap();
        }
        check_clean(&img);
        std::fs::write(&raw, &model).unwrap();
        let o = qemu_img(&["compare", "-f", "qcow2", "-F", "raw", p(&img), p(&raw)]);
        assert_eq!(o.status.code(), Some(0), "{prealloc}: {}", text(&o));
    }
}
