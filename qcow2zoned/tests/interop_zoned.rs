//! Zoned images seen by stock qemu-img: refused as long as bit 5 is set; with bit 5
//! cleared in a copy, `qemu-img check` finds no corruption and exactly the zoned metadata
//! clusters as leaks, and `qemu-img compare` agrees with what we wrote.

mod common;
use common::*;
use qcow2zoned::*;
use std::io::IoSlice;
use std::path::Path;

const MIB: u64 = 1 << 20;

/// Copy `img`, clear incompatible bit 5 (byte 79, value 0x20) in the copy.
fn unzoned_copy(img: &Path, dir: &tempfile::TempDir) -> std::path::PathBuf {
    let copy = path_in(dir, "copy.qcow2");
    let mut b = std::fs::read(img).unwrap();
    assert_eq!(b[79] & 0x20, 0x20, "bit 5 must be set in our zoned images");
    b[79] &= !0x20;
    std::fs::write(&copy, b).unwrap();
    copy
}

fn json_num(v: &serde_json::Value, k: &str) -> u64 {
    v.get(k).and_then(|x| x.as_u64()).unwrap_or(0)
}

/// Exercise every data path, keeping a raw model of what the disk must read as.
fn workload(img: &ZonedImage, model: &mut [u8], seed: u64) {
    let g = img.info().geometry;
    let zs = g.zone_size;
    let mut rng = Rng(seed);
    let put = |model: &mut [u8], off: u64, data: &[u8]| {
        model[off as usize..off as usize + data.len()].copy_from_slice(data);
    };
    // Conventional zone 0: random writes and zeroes.
    for _ in 0..20 {
        let len = 1 + rng.below(20000);
        let off = rng.below(zs - len);
        let mut b = vec![0u8; len as usize];
        rng.fill(&mut b);
        img.write(off, &[IoSlice::new(&b)], false).unwrap();
        put(model, off, &b);
    }
    img.write_zeroes(1000, 70000, false).unwrap();
    model[1000..71000].fill(0);
    // Sequential zones: fill some, append, finish, reset.
    for z in 1..g.nr_zones.min(6) {
        let start = u64::from(z) * zs;
        let mut wp = start;
        let n = 1 + rng.below(6);
        for _ in 0..n {
            let len = (1 + rng.below(64)) * 512;
            if wp + len > start + g.zone_capacity {
                break;
            }
            let mut b = vec![0u8; len as usize];
            rng.fill(&mut b);
            if rng.below(2) == 0 {
                img.write(wp, &[IoSlice::new(&b)], false).unwrap();
            } else {
                let at = img.append(start, &[IoSlice::new(&b)], false).unwrap();
                assert_eq!(at, wp);
            }
            put(model, wp, &b);
            wp += len;
        }
        match z % 3 {
            0 => img.zone_action(Some(z), ZoneAction::Finish).unwrap(),
            1 => {
                img.zone_action(Some(z), ZoneAction::Reset).unwrap();
                model[start as usize..(start + zs) as usize].fill(0);
                let b = vec![z as u8; 4096];
                img.write(start, &[IoSlice::new(&b)], false).unwrap();
                put(model, start, &b);
            }
            _ => {}
        }
    }
}

#[test]
fn stock_qemu_img_vouches_for_everything_it_knows() {
    for (cs, zone, zdes) in [
        (512u64, MIB / 2, 0u32),
        (4096, MIB, 64),
        (65536, MIB, 0),
        (2 * MIB, 2 * MIB, 128),
    ] {
        let d = tmp();
        let f = path_in(&d, "z.qcow2");
        let size = 8 * zone;
        let opts = CreateOptions {
            size,
            cluster_size: cs,
            zone: ZoneOptions {
                size: zone,
                capacity: zone - 4096,
                conventional_zones: 1,
                max_open_zones: 3,
                max_active_zones: 6,
                zd_extension_size: zdes,
                ..Default::default()
            },
        };
        ZonedImage::create(&f, &opts).unwrap();
        let mut model = vec![0u8; size as usize];
        {
            let img = ZonedImage::open(&f, OpenOptions::default()).unwrap();
            workload(&img, &mut model, cs);
            if zdes > 0 {
                img.set_zde(7, &vec![0x5e; zdes as usize]).unwrap();
            }
            img.close().unwrap();
        }
        // Stock qemu-img refuses the zoned image, naming the feature.
        let o = qemu_img(&["info", p(&f)]);
        assert!(!o.status.success(), "{}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("zoned format"),
            "{}",
            text(&o)
        );

        let copy = unzoned_copy(&f, &d);
        let o = qemu_img(&["check", "--output=json", p(&copy)]);
        assert_eq!(o.status.code(), Some(3), "cs {cs}: {}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let nr = size / zone;
        let zm = nr * 8 + nr * u64::from(zdes);
        assert_eq!(json_num(&v, "corruptions"), 0, "cs {cs}: {}", text(&o));
        assert_eq!(json_num(&v, "check-errors"), 0, "cs {cs}: {}", text(&o));
        assert_eq!(
            json_num(&v, "leaks"),
            zm.div_ceil(cs),
            "cs {cs}: {}",
            text(&o)
        );

        // Stock qemu reads the same bytes we modelled.
        let raw = path_in(&d, "model.raw");
        std::fs::write(&raw, &model).unwrap();
        let o = qemu_img(&["compare", "-f", "qcow2", "-F", "raw", p(&copy), p(&raw)]);
        assert_eq!(o.status.code(), Some(0), "cs {cs}: {}", text(&o));

        // Our own check accounts for the zoned clusters: clean.
        let rep = check_image(&FileStorage::open(&f, true, false).unwrap()).unwrap();
        assert_eq!(rep.exit_code(), 0, "cs {cs}: {:?}", rep.messages);
        assert_eq!(rep.zoned_metadata_clusters, zm.div_ceil(cs));
    }
}

#[test]
fn fresh_image_header_layout() {
    let d = tmp();
    let f = path_in(&d, "h.qcow2");
    ZonedImage::create(
        &f,
        &CreateOptions {
            size: 768 * MIB,
            cluster_size: 65536,
            zone: ZoneOptions {
                size: 64 * MIB,
                capacity: 64 * MIB,
                max_open_zones: 6,
                max_active_zones: 8,
                max_append_bytes: 4096,
                ..Default::default()
            },
        },
    )
    .unwrap();
    let b = std::fs::read(&f).unwrap();
    assert_eq!(&b[0..8], &[0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3]);
    assert_eq!(&b[72..80], &[0, 0, 0, 0, 0, 0, 0, 0x20]);
    // Find the zoned extension and compare with the reference's worked example.
    let mut off = 112;
    let ext = loop {
        let t = u32::from_be_bytes(b[off..off + 4].try_into().unwrap());
        let l = u32::from_be_bytes(b[off + 4..off + 8].try_into().unwrap()) as usize;
        assert_ne!(t, 0, "zoned extension missing");
        if t == 0x007a_6264 {
            break &b[off..off + 8 + l];
        }
        off += 8 + l.div_ceil(8) * 8;
    };
    assert_eq!(&ext[0..8], &[0, 0x7a, 0x62, 0x64, 0, 0, 0, 0x38]);
    assert_eq!(&ext[8..12], &[1, 0, 0, 0]);
    assert_eq!(&ext[12..20], &[0, 0, 0, 0, 4, 0, 0, 0]);
    assert_eq!(&ext[20..28], &[0, 0, 0, 0, 4, 0, 0, 0]);
    assert_eq!(&ext[28..36], &[0, 0, 0, 0, 0, 0, 0, 0x0c]);
    assert_eq!(&ext[36..48], &[0, 0, 0, 8, 0, 0, 0, 6, 0, 0, 0x10, 0]);
    assert_eq!(&ext[48..56], &[0, 0, 0, 0, 0, 0, 0, 0x60]);
    let zo = u64::from_be_bytes(ext[56..64].try_into().unwrap()) as usize;
    assert_eq!(zo % 65536, 0);
    // Words are little-endian: zone 1 starts at 64 MiB.
    assert_eq!(&b[zo + 8..zo + 16], &(64 * MIB).to_le_bytes());
}
