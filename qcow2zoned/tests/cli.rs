//! The `qcow2zoned` command line: options spelled like qemu-img, qemu-io style commands,
//! qemu-img check exit codes.

mod common;
use common::*;
use std::path::Path;

fn q(args: &[&str]) -> std::process::Output {
    std::process::Command::new(cli())
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let o = q(args);
    assert!(o.status.success(), "{args:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn create(f: &Path) {
    ok(&[
        "create",
        "-o",
        "zone.mode=host-managed,cluster_size=4K,zone.size=1M,zone.conventional_zones=1",
        "-o",
        "zone.max_active_zones=3,zone.zd_extension_size=64",
        p(f),
        "8M",
    ]);
}

#[test]
fn create_info_zones_and_io() {
    let d = tmp();
    let f = path_in(&d, "c.qcow2");
    create(&f);
    let info: serde_json::Value =
        serde_json::from_str(&ok(&["info", "--output", "json", p(&f)])).unwrap();
    assert_eq!(info["virtual-size"], 8 << 20);
    assert_eq!(info["cluster-size"], 4096);
    assert_eq!(info["zone-size"], 1 << 20);
    assert_eq!(info["nr-zones"], 8);
    assert_eq!(info["max-active-zones"], 3);
    assert_eq!(info["max-open-zones"], 3);
    assert_eq!(info["max-append-bytes"], 65536);
    assert_eq!(info["zd-extension-size"], 64);
    assert!(ok(&["info", p(&f)]).contains("zones: 8 (1 conventional)"));

    let out = ok(&[
        "io",
        p(&f),
        "-c",
        "write -P 0xab 1M 64k",
        "-c",
        "zap -P 0x11 1M 4k",
        "-c",
        "read -P 0xab 1M 64k",
        "-c",
        "read -P 0x11 0x110000 4k",
        "-c",
        "read -P 0 0x111000 4k",
        "-c",
        "write -P 7 100 1000",
        "-c",
        "zo 2M",
        "-c",
        "zf 3M",
        "-c",
        "write 4M 4k",
        "-c",
        "zc 4M",
        "-c",
        "zrp 0 8",
        "-c",
        "flush",
    ]);
    assert!(
        out.contains("appended 4096 bytes at offset 1114112"),
        "{out}"
    );
    assert!(
        out.contains("start: 0x100000, len 0x100000, cap 0x100000, wptr 0x111000"),
        "{out}"
    );
    let zones: serde_json::Value =
        serde_json::from_str(&ok(&["zones", "--output", "json", p(&f)])).unwrap();
    let z = zones.as_array().unwrap();
    assert_eq!(z.len(), 8);
    let keys: Vec<&str> = z[1]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    for k in [
        "index", "start", "size", "capacity", "wp", "type", "state", "attrs",
    ] {
        assert!(keys.contains(&k), "missing {k}");
    }
    assert_eq!(z[0]["type"], "conventional");
    assert_eq!(z[1]["state"], "closed");
    assert_eq!(z[1]["wp"], 0x111000);
    assert_eq!(z[2]["state"], "closed"); // explicitly opened, comes back closed
    assert_eq!(z[3]["state"], "full");
    assert_eq!(z[4]["state"], "closed");
    assert_eq!(z[5]["state"], "empty");
    assert!(ok(&["zones", p(&f)]).contains("sequential-write-required"));
    // Reset brings zone 1 back to empty and zeros.
    ok(&["io", p(&f), "-c", "zrs 1M 1M", "-c", "read -P 0 1M 1M"]);
    let o = q(&["check", p(&f)]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn io_errors_exit_non_zero_with_the_reason() {
    let d = tmp();
    let f = path_in(&d, "e.qcow2");
    create(&f);
    for (cmd, want) in [
        ("write 1M+512 512", "invalid number"),
        ("write 0x100200 512", "Write not at the write pointer"),
        (
            "read -P 0x55 0 512",
            "pattern verification failed at offset 0",
        ),
        ("zo 0", "conventional"),
        ("zap 1M 128k", "max_append_bytes"),
        ("read 8M 512", "outside the device"),
        ("bogus 1", "unknown command"),
    ] {
        let o = q(&["io", p(&f), "-c", cmd]);
        assert_eq!(o.status.code(), Some(1), "{cmd}: {}", text(&o));
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains(want), "{cmd}: {e}");
    }
    // Too many active zones: 3 allowed.
    let o = q(&[
        "io",
        p(&f),
        "-c",
        "zo 1M",
        "-c",
        "zo 2M",
        "-c",
        "zo 3M",
        "-c",
        "zo 4M",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Too many"),
        "{}",
        text(&o)
    );
    let o = q(&[
        "create",
        "-o",
        "zone.mode=host-aware",
        p(&path_in(&d, "x")),
        "8M",
    ]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("zone.mode"),
        "{}",
        text(&o)
    );
    let o = q(&["create", "-o", "zone.size=3M", p(&path_in(&d, "y")), "9M"]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("zone.size 3145728"),
        "{}",
        text(&o)
    );
    let o = q(&[
        "create",
        "-o",
        "zone.size=1M",
        p(&path_in(&d, "z")),
        "1536K",
    ]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("multiple of zone.size"),
        "{}",
        text(&o)
    );
    let o = q(&["create", p(&f), "8M"]);
    assert!(!o.status.success(), "create must not overwrite");
}

fn rb16(b: &mut [u8], rt: usize, cluster: usize, v: u16) {
    let rb = u64::from_be_bytes(b[rt..rt + 8].try_into().unwrap()) as usize;
    b[rb + 2 * cluster..rb + 2 * cluster + 2].copy_from_slice(&v.to_be_bytes());
}

#[test]
fn check_exit_codes_follow_qemu_img() {
    let d = tmp();
    let f = path_in(&d, "k.qcow2");
    create(&f);
    ok(&["io", p(&f), "-c", "write 1M 64k"]);
    let o = q(&["check", "--output", "json", p(&f)]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["corruptions"], 0);
    assert_eq!(v["leaks"], 0);
    assert_eq!(v["zoned-metadata-clusters"], 1);
    let good = std::fs::read(&f).unwrap();
    let rt = u64::from_be_bytes(good[48..56].try_into().unwrap()) as usize;
    let nclusters = good.len() / 4096;

    // A leak: refcount on a cluster past everything in use.
    let mut b = good.clone();
    b.resize(good.len() + 4096, 0);
    rb16(&mut b, rt, nclusters, 1);
    let leak = path_in(&d, "leak.qcow2");
    std::fs::write(&leak, &b).unwrap();
    let o = q(&["check", p(&leak)]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("Leaked cluster"));

    // A corruption: the data cluster holding guest offset 1 MiB loses its refcount.
    let mut b = good.clone();
    let be = |o: usize| u64::from_be_bytes(good[o..o + 8].try_into().unwrap());
    let mask = 0x00ff_ffff_ffff_fe00u64;
    let l2 = (be(be(40) as usize) & mask) as usize;
    let host = be(l2 + 8 * ((1 << 20) / 4096)) & mask;
    assert_ne!(host, 0);
    rb16(&mut b, rt, (host / 4096) as usize, 0);
    let bad = path_in(&d, "bad.qcow2");
    std::fs::write(&bad, &b).unwrap();
    let o = q(&["check", "--output", "json", p(&bad)]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));

    // A zone word out of its zone is a corruption too.
    let z = 0x3000usize; // zone words follow header, refcount table and block (4 KiB clusters)
    let mut b = good.clone();
    let zmo = {
        let mut off = 112;
        loop {
            let t = u32::from_be_bytes(b[off..off + 4].try_into().unwrap());
            let l = u32::from_be_bytes(b[off + 4..off + 8].try_into().unwrap()) as usize;
            if t == 0x007a_6264 {
                break u64::from_be_bytes(b[off + 8 + 48..off + 8 + 56].try_into().unwrap())
                    as usize;
            }
            off += 8 + l.div_ceil(8) * 8;
        }
    };
    assert_eq!(zmo, z);
    b[zmo + 16..zmo + 24].copy_from_slice(&(5u64 << 20).to_le_bytes());
    let wbad = path_in(&d, "word.qcow2");
    std::fs::write(&wbad, &b).unwrap();
    let o = q(&["check", p(&wbad)]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("zone 2"),
        "{}",
        text(&o)
    );

    // Cannot open at all: exit 1.
    let junk = path_in(&d, "junk");
    std::fs::write(&junk, b"not an image").unwrap();
    let o = q(&["check", p(&junk)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}
