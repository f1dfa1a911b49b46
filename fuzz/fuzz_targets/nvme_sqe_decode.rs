//! Decode arbitrary bytes as admin and I/O submission queue entries under every command set
//! selection: never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut sqe = [0u8; 64];
    let n = data.len().min(64);
    sqe[..n].copy_from_slice(&data[..n]);
    let css = data.get(64).copied().unwrap_or(0);
    for css in [css, 0, 6, 7] {
        let _ = nvme::fuzzing::decode_sqe(&sqe, css);
    }
});
