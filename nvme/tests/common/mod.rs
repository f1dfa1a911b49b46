//! Shared set-up for the integration tests: a real zoned image in a temporary directory and a
//! controller driven by the fake host.
#![allow(dead_code)]

use nvme::test_utils::Driver;
use nvme::{Controller, ControllerConfig};
use qcow2zoned::{CacheMode, CreateOptions, OpenOptions, Storage, ZoneOptions, ZonedImage};
use std::sync::Arc;

/// Geometry of a test image.
#[derive(Debug, Clone, Copy)]
pub struct Geo {
    pub size: u64,
    pub zone: u64,
    pub cap: u64,
    pub max_open: u32,
    pub max_active: u32,
    pub zde: u32,
    pub max_append: u32,
}

impl Default for Geo {
    fn default() -> Geo {
        Geo {
            size: 16 << 20,
            zone: 1 << 20,
            cap: 1 << 20,
            max_open: 0,
            max_active: 0,
            zde: 0,
            max_append: 64 << 10,
        }
    }
}

/// Temp dir + image + controller + driver; the directory lives as long as the value.
pub struct Rig {
    pub dir: tempfile::TempDir,
    pub d: Driver,
}

pub fn image(geo: Geo) -> (tempfile::TempDir, Arc<ZonedImage>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zns.qcow2");
    let opts = CreateOptions {
        size: geo.size,
        cluster_size: 64 << 10,
        zone: ZoneOptions {
            size: geo.zone,
            capacity: geo.cap,
            conventional_zones: 0,
            max_open_zones: geo.max_open,
            max_active_zones: geo.max_active,
            max_append_bytes: geo.max_append,
            zd_extension_size: geo.zde,
        },
    };
    ZonedImage::create(&path, &opts).unwrap();
    let img = ZonedImage::open(&path, OpenOptions::default()).unwrap();
    (dir, Arc::new(img))
}

pub fn rig_with(geo: Geo, cfg: ControllerConfig) -> Rig {
    let (dir, img) = image(geo);
    let ctrl = Arc::new(Controller::new(img, cfg).unwrap());
    let mut d = Driver::new(ctrl, 64 << 20);
    d.init_linux();
    Rig { dir, d }
}

pub fn rig(geo: Geo, lba: u32) -> Rig {
    rig_with(
        geo,
        ControllerConfig {
            lba_size: lba,
            ..Default::default()
        },
    )
}

/// A Linux-initialised driver over a 16 MiB image (1 MiB zones, write-back) created on the
/// test's own storage `st` (fault injection, counting, gating).
pub fn driver_on<S: Storage + 'static>(st: &Arc<S>, cfg: ControllerConfig) -> Driver {
    let opts = CreateOptions {
        size: 16 << 20,
        cluster_size: 64 << 10,
        zone: ZoneOptions {
            size: 1 << 20,
            capacity: 1 << 20,
            ..Default::default()
        },
    };
    ZonedImage::create_with(&**st, &opts).unwrap();
    let open = OpenOptions {
        cache: CacheMode::WriteBack,
        ..Default::default()
    };
    let img = ZonedImage::open_with(st.clone(), open).unwrap();
    let ctrl = Arc::new(Controller::new(Arc::new(img), cfg).unwrap());
    let mut d = Driver::new(ctrl, 64 << 20);
    d.init_linux();
    d
}

/// Deterministic test pattern.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ ((i >> 8) as u8))
        .collect()
}

pub fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

pub fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

pub fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
