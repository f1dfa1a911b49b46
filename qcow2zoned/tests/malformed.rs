//! A corpus of malformed images, generated here, each refused with an error naming the
//! field (and no panic), plus random corruption that must never panic.

mod common;
use common::*;
use qcow2zoned::*;
use std::sync::Arc;

const MIB: u64 = 1 << 20;

fn base_opts() -> CreateOptions {
    CreateOptions {
        size: 8 * MIB,
        cluster_size: 65536,
        zone: ZoneOptions {
            size: MIB,
            capacity: MIB,
            conventional_zones: 1,
            max_open_zones: 2,
            max_active_zones: 3,
            ..Default::default()
        },
    }
}

fn base() -> Vec<u8> {
    let m = MemStorage::default();
    ZonedImage::create_with(&m, &base_opts()).unwrap();
    m.contents()
}

fn open(b: Vec<u8>) -> Result<ZonedImage, Error> {
    ZonedImage::open_with(Arc::new(MemStorage::new(b)), OpenOptions::default())
}

fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes(b[o..o + 4].try_into().unwrap())
}
fn be64(b: &[u8], o: usize) -> u64 {
    u64::from_be_bytes(b[o..o + 8].try_into().unwrap())
}
fn put32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_be_bytes());
}
fn put64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_be_bytes());
}

/// Offset of the header extension of type `t` (its 8-byte type/length header).
fn ext_at(b: &[u8], t: u32) -> usize {
    let mut o = be32(b, 100) as usize;
    loop {
        let ty = be32(b, o);
        assert_ne!(ty, 0, "extension {t:#x} not found");
        if ty == t {
            return o;
        }
        o += 8 + (be32(b, o + 4) as usize).div_ceil(8) * 8;
    }
}

const ZONED: u32 = 0x007a_6264;

fn refused(name: &str, b: Vec<u8>, want: &[&str]) {
    let e = match open(b) {
        Ok(_) => panic!("{name}: opened a malformed image"),
        Err(e) => e.to_string(),
    };
    for w in want {
        assert!(e.contains(w), "{name}: error {e:?} does not mention {w:?}");
    }
}

#[test]
fn base_image_opens() {
    let img = open(base()).unwrap();
    assert_eq!(img.info().geometry.nr_zones, 8);
}

#[test]
fn structural_corruption_is_refused_with_the_field_named() {
    let b = base();
    let l1 = be64(&b, 40) as usize;
    let rt = be64(&b, 48);
    let z = ext_at(&b, ZONED) + 8;
    let zmo = be64(&b, z + 48);

    refused("empty", vec![], &["too short"]);
    refused("truncated header", b[..50].to_vec(), &["too short"]);
    refused(
        "truncated before L1",
        b[..l1].to_vec(),
        &["l1_table_offset"],
    );
    let mut m = b.clone();
    m[0] = b'X';
    refused("magic", m, &["magic 0x58"]);
    let mut m = b.clone();
    put32(&mut m, 4, 4);
    refused("version", m, &["version 4"]);
    let mut m = b.clone();
    put32(&mut m, 4, 2);
    refused("version 2", m, &["version 2"]);
    let mut m = b.clone();
    put32(&mut m, 20, 31);
    refused(
        "cluster_bits",
        m,
        &["Invalid image: cluster_bits 31 out of range 9..=21"],
    );
    let mut m = b.clone();
    put32(&mut m, 20, 8);
    refused("cluster_bits small", m, &["cluster_bits 8"]);
    let mut m = b.clone();
    put32(&mut m, 100, 100);
    refused("header_length", m, &["header_length 100"]);
    let mut m = b.clone();
    put32(&mut m, 96, 7);
    refused("refcount_order", m, &["refcount_order 7"]);
    let mut m = b.clone();
    put64(&mut m, 40, 0x1000_0000);
    refused(
        "L1 outside",
        m,
        &["l1_table_offset 0x10000000", "outside the file"],
    );
    let mut m = b.clone();
    put64(&mut m, 40, l1 as u64 + 512);
    refused("L1 unaligned", m, &["l1_table_offset"]);
    let mut m = b.clone();
    put32(&mut m, 36, 0);
    refused("L1 too small", m, &["l1_size 0"]);
    let mut m = b.clone();
    put64(&mut m, 48, 0x4000_0000);
    refused(
        "refcount table outside",
        m,
        &["refcount_table_offset 0x40000000"],
    );
    let mut m = b.clone();
    put32(&mut m, 56, 0);
    refused("refcount table empty", m, &["refcount_table_clusters 0"]);
    let mut m = b.clone();
    put64(&mut m, 40, rt);
    refused("L1 overlaps refcount table", m, &["overlaps"]);
    let mut m = b.clone();
    put64(&mut m, rt as usize, 0x1234_0000_0000);
    refused("refcount block outside", m, &["refcount table entry 0"]);
    // Metadata clusters must be refcounted: drop the refcount of the zoned metadata.
    let mut m = b.clone();
    let rb = be64(&b, rt as usize) as usize;
    let c = (zmo / 65536) as usize;
    m[rb + 2 * c..rb + 2 * c + 2].copy_from_slice(&[0, 0]);
    refused(
        "zoned metadata not refcounted",
        m,
        &["zoned metadata", "refcount 0"],
    );
    let mut m = b.clone();
    let hl = be32(&b, 100) as usize;
    put32(&mut m, hl + 4, 0x00ff_ffff);
    refused("extension too long", m, &["runs past the end"]);
}

#[test]
fn zoned_extension_corruption_is_refused_with_the_field_named() {
    let b = base();
    let zx = ext_at(&b, ZONED);
    let z = zx + 8;
    let zmo = be64(&b, z + 48);
    let case = |name: &str, f: &dyn Fn(&mut Vec<u8>), want: &[&str]| {
        let mut m = b.clone();
        f(&mut m);
        refused(name, m, want);
    };
    case("zoned byte", &|m| m[z] = 2, &["zoned 2"]);
    case("zoned 0", &|m| m[z] = 0, &["zoned 0"]);
    case("reserved", &|m| m[z + 2] = 1, &["reserved bytes"]);
    case(
        "zone_size pow2",
        &|m| put64(m, z + 4, 3 * MIB),
        &["zone_size 3145728", "power of two"],
    );
    case("zone_size 0", &|m| put64(m, z + 4, 0), &["zone_size 0"]);
    case(
        "capacity",
        &|m| put64(m, z + 12, 2 * MIB),
        &["zone_capacity 2097152"],
    );
    case("capacity 0", &|m| put64(m, z + 12, 0), &["zone_capacity 0"]);
    case(
        "conventional",
        &|m| put32(m, z + 20, 8),
        &["conventional_zones 8"],
    );
    case("nr_zones", &|m| put32(m, z + 24, 9), &["nr_zones 9"]);
    case(
        "max_active",
        &|m| put32(m, z + 28, 8),
        &["max_active_zones 8"],
    );
    case(
        "max_open > max_active",
        &|m| put32(m, z + 32, 3 + 1),
        &["max_open_zones 4"],
    );
    case(
        "max_append",
        &|m| put32(m, z + 36, 1000),
        &["max_append_bytes 1000"],
    );
    case(
        "max_append 0",
        &|m| put32(m, z + 36, 0),
        &["max_append_bytes 0"],
    );
    case(
        "zonedmeta_size",
        &|m| put64(m, z + 40, 7),
        &["zonedmeta_size 7"],
    );
    case(
        "zonedmeta_offset unaligned",
        &|m| put64(m, z + 48, zmo + 8),
        &["zonedmeta_offset"],
    );
    case(
        "zonedmeta_offset outside",
        &|m| put64(m, z + 48, 1 << 40),
        &["zonedmeta_offset 0x10000000000"],
    );
    case(
        "zonedmeta_offset zero",
        &|m| put64(m, z + 48, 0),
        &["zonedmeta_offset 0x0"],
    );
    case(
        "zonedmeta over refcount table",
        &|m| {
            let rt = be64(m, 48);
            put64(m, z + 48, rt)
        },
        &["zonedmeta_offset", "overlaps"],
    );
    case(
        "extension length 60",
        &|m| put32(m, zx + 4, 60),
        &["zoned extension length 60"],
    );
    case(
        "extension length 40",
        &|m| put32(m, zx + 4, 40),
        &["zoned extension length 40"],
    );
    case(
        "bit 5 without extension",
        &|m| put32(m, zx, 0x1234_5678),
        &["bit 5", "missing"],
    );
    case(
        "extension without bit 5",
        &|m| m[79] &= !0x20,
        &["incompatible bit 5", "clear"],
    );
    case(
        "zone word outside its zone",
        &|m| {
            let o = zmo as usize + 3 * 8;
            m[o..o + 8].copy_from_slice(&(7 * MIB).to_le_bytes());
        },
        &["zone words", "zone 3"],
    );
    case(
        "conventional flag on sequential zone",
        &|m| {
            let o = zmo as usize + 2 * 8;
            m[o..o + 8].copy_from_slice(&((2 * MIB) | 1 << 59).to_le_bytes());
        },
        &["zone words", "zone 2"],
    );
    case(
        "unknown state nibble",
        &|m| {
            let o = zmo as usize + 2 * 8;
            m[o..o + 8].copy_from_slice(&((2 * MIB) | 0x7 << 60).to_le_bytes());
        },
        &["zone words", "zone 2"],
    );
}

#[test]
fn unsupported_features_are_refused_by_name() {
    let b = base();
    let case = |name: &str, f: &dyn Fn(&mut Vec<u8>), want: &[&str]| {
        let mut m = b.clone();
        f(&mut m);
        let e = open(m).err().map(|e| e.to_string()).unwrap_or_default();
        for w in want {
            assert!(e.contains(w), "{name}: {e:?} does not mention {w:?}");
        }
        assert!(e.starts_with("Unsupported qcow2 feature"), "{name}: {e}");
    };
    case(
        "unknown incompatible bit",
        &|m| m[79] |= 0x40,
        &["incompatible_features 0x60", "bit 6"],
    );
    case("backing file", &|m| put64(m, 8, 0x1000), &["backing file"]);
    case("encryption", &|m| put32(m, 32, 2), &["encryption"]);
    case("snapshots", &|m| put32(m, 60, 1), &["internal snapshots"]);
    case(
        "compression type",
        &|m| m[79] |= 0x08,
        &["compression type"],
    );
    case(
        "external data file",
        &|m| m[79] |= 0x04,
        &["external data file"],
    );
    case("extended L2", &|m| m[79] |= 0x10, &["extended L2"]);
    case("dirty", &|m| m[79] |= 0x01, &["dirty bit"]);
    case("corrupt", &|m| m[79] |= 0x02, &["corrupt bit"]);
    // A compressed cluster descriptor in an L2 table.
    case(
        "compressed cluster",
        &|m| {
            let l1 = be64(m, 40) as usize;
            // Give zone 1 an L2 table holding one compressed entry: reuse the first free
            // cluster at the file end and refcount it.
            let l2 = m.len();
            m.resize(l2 + 65536, 0);
            put64(m, l2, 1 << 62 | 0x1000);
            put64(m, l1, l2 as u64 | 1 << 63);
            let rt = be64(m, 48) as usize;
            let rb = be64(m, rt) as usize;
            let c = l2 / 65536;
            m[rb + 2 * c..rb + 2 * c + 2].copy_from_slice(&[0, 1]);
        },
        &["compressed clusters"],
    );
}

/// Features made by the real qemu-img on plain images are refused by name too.
#[test]
fn qemu_made_unsupported_images_are_refused() {
    let d = tmp();
    let raw = path_in(&d, "r.raw");
    std::fs::write(&raw, vec![0x33u8; 1 << 20]).unwrap();
    let compressed = {
        let f = path_in(&d, "c.qcow2");
        let o = qemu_img(&["convert", "-c", "-O", "qcow2", p(&raw), p(&f)]);
        assert!(o.status.success(), "{}", text(&o));
        f
    };
    let e = Qcow2::open(&compressed, OpenOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("compressed clusters"), "{e}");
    let base = path_in(&d, "base.qcow2");
    let o = qemu_img(&["create", "-q", "-f", "qcow2", p(&base), "1M"]);
    assert!(o.status.success(), "{}", text(&o));
    let overlay = path_in(&d, "o.qcow2");
    let o = qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "qcow2",
        "-b",
        p(&base),
        p(&overlay),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let e = Qcow2::open(&overlay, OpenOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("backing file"), "{e}");
    let o = qemu_img(&["snapshot", "-c", "snap1", p(&base)]);
    assert!(o.status.success(), "{}", text(&o));
    let e = Qcow2::open(&base, OpenOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("internal snapshots"), "{e}");
    let zstd = path_in(&d, "z.qcow2");
    let o = qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "compression_type=zstd",
        p(&zstd),
        "1M",
    ]);
    if o.status.success() {
        let e = Qcow2::open(&zstd, OpenOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("compression type"), "{e}");
    }
    let ext = path_in(&d, "x.qcow2");
    let o = qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        &format!("data_file={}", p(&path_in(&d, "x.data"))),
        p(&ext),
        "1M",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let e = Qcow2::open(&ext, OpenOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("external data file"), "{e}");
    let ext2 = path_in(&d, "l2.qcow2");
    let o = qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "extended_l2=on",
        p(&ext2),
        "1M",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let e = Qcow2::open(&ext2, OpenOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("extended L2"), "{e}");
    let enc = path_in(&d, "e.qcow2");
    let o = qemu_img(&[
        "create",
        "-q",
        "--object",
        "secret,id=s0,data=abc",
        "-f",
        "qcow2",
        "-o",
        "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10",
        p(&enc),
        "1M",
    ]);
    if o.status.success() {
        let e = Qcow2::open(&enc, OpenOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("encryption"), "{e}");
    }
    // A zoned image is not opened as a plain one, and a plain one not as zoned.
    let zf = path_in(&d, "zoned.qcow2");
    ZonedImage::create(&zf, &base_opts()).unwrap();
    let e = Qcow2::open(&zf, OpenOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("zoned format"), "{e}");
    let e = ZonedImage::open(&overlay, OpenOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("backing file"), "{e}");
    let e = ZonedImage::open(&compressed, OpenOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("compressed"), "{e}");
}

/// Random byte corruption in the metadata never panics (errors are fine).
#[test]
fn random_corruption_never_panics() {
    let b = base();
    let meta_end = 0x50000.min(b.len());
    let mut rng = Rng(0xdead_beef);
    for _ in 0..1500 {
        let mut m = b.clone();
        for _ in 0..1 + rng.below(4) {
            let region = rng.below(4);
            let o = match region {
                0 => rng.below(256) as usize,
                _ => rng.below(meta_end as u64) as usize,
            };
            m[o] = (rng.next() >> 8) as u8;
        }
        if let Ok(img) = open(m.clone()) {
            // Anything that opens must also survive a report and a read of the whole disk.
            let _ = img.zones(0, u32::MAX);
            let mut buf = vec![0u8; img.info().size as usize];
            let _ = img.read(0, &mut [std::io::IoSliceMut::new(&mut buf)]);
        }
        let _ = check_image(&MemStorage::new(m));
    }
}

#[test]
fn create_refuses_bad_options_by_name() {
    let bad = |f: &dyn Fn(&mut CreateOptions), want: &str| {
        let mut o = base_opts();
        f(&mut o);
        let e = ZonedImage::create_with(&MemStorage::default(), &o)
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{e:?} does not mention {want:?}");
    };
    bad(&|o| o.cluster_size = 1000, "cluster_size 1000");
    bad(&|o| o.cluster_size = 4 << 20, "cluster_size 4194304");
    bad(&|o| o.zone.size = 3 * MIB, "zone.size 3145728");
    bad(
        &|o| o.size = 9 * MIB / 2,
        "not a non-zero multiple of zone.size",
    );
    bad(&|o| o.zone.capacity = 2 * MIB, "zone.capacity 2097152");
    bad(&|o| o.zone.max_open_zones = 4, "zone.max_open_zones 4");
    bad(&|o| o.zone.max_active_zones = 9, "zone.max_active_zones 9");
    bad(
        &|o| o.zone.conventional_zones = 8,
        "zone.conventional_zones 8",
    );
    bad(
        &|o| o.zone.max_append_bytes = 100,
        "zone.max_append_bytes 100",
    );
    bad(
        &|o| o.zone.zd_extension_size = 100,
        "zone.zd_extension_size 100",
    );
    bad(
        &|o| o.zone.zd_extension_size = 16384,
        "zone.zd_extension_size 16384",
    );
}
