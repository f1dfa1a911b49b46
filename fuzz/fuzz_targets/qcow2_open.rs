//! Open arbitrary bytes as a zoned image, a plain image, and check them: never panic,
//! never hang, never allocate without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qcow2zoned::{check_image, MemStorage, OpenOptions, Qcow2, ZonedImage};
use std::io::IoSliceMut;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    let ro = OpenOptions {
        read_only: true,
        ..Default::default()
    };
    if let Ok(img) = ZonedImage::open_with(Arc::new(MemStorage::new(data.to_vec())), ro) {
        let zones = img.zones(0, 64);
        let mut buf = vec![0u8; 64 << 10];
        for z in zones {
            let len = (buf.len() as u64).min(z.size) as usize;
            let _ = img.read(z.start, &mut [IoSliceMut::new(&mut buf[..len])]);
        }
    }
    if let Ok(q) = Qcow2::open_with(Arc::new(MemStorage::new(data.to_vec())), ro) {
        let mut buf = vec![0u8; 64 << 10];
        let len = (buf.len() as u64).min(q.size()) as usize;
        let _ = q.read_at(0, &mut buf[..len]);
    }
    let _ = check_image(&MemStorage::new(data.to_vec()));
});
