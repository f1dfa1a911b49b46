//! Walk arbitrary PRP entries, PRP lists and SGL chains (held in fuzzer-chosen guest memory):
//! never panic, never loop, and on success describe exactly the transfer length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nvme::fuzzing::{walk_data_ptr, SliceMemory};

fn u64_at(d: &[u8], i: usize) -> u64 {
    let mut b = [0u8; 8];
    for (k, x) in b.iter_mut().enumerate() {
        *x = d.get(i + k).copied().unwrap_or(0);
    }
    u64::from_le_bytes(b)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 28 {
        return;
    }
    let flags = data[0];
    let psdt = data[1] % 4;
    let page = 4096u64 << (data[2] % 3);
    // Guest memory: the rest of the input, at a page-multiple base (or straddling address 0
    // and the top of the address space, to exercise overflow checks).
    let mem_bytes = data[28..].to_vec();
    let base = match flags & 0x3 {
        0 => 0,
        1 => u64::from(u16::from_le_bytes([data[3], data[4]])) * 4096,
        2 => 0u64.wrapping_sub(mem_bytes.len() as u64),
        _ => u64::from(data[3]) << 40,
    };
    let mem = SliceMemory {
        base,
        bytes: mem_bytes,
    };
    let span = mem.bytes.len() as u64 + 64;
    let mut prp1 = u64_at(data, 5);
    let mut prp2 = u64_at(data, 13);
    // Mostly point into the memory so lists and segments get walked.
    if flags & 0x4 == 0 {
        prp1 = base.wrapping_add(prp1 % span);
    }
    if flags & 0x8 == 0 && psdt == 0 {
        prp2 = base.wrapping_add(prp2 % span);
    }
    if flags & 0x8 == 0 && psdt != 0 {
        // SGL: the first qword is the address, keep the length/type qword as given.
        prp1 = base.wrapping_add(prp1 % span);
    }
    let len = u64::from(u32::from_le_bytes([data[21], data[22], data[23], data[24]]))
        % (if flags & 0x10 == 0 { 1 << 16 } else { 1 << 24 });
    match walk_data_ptr(&mem, psdt, prp1, prp2, len, page) {
        Ok(ranges) => {
            let total: u64 = ranges.iter().map(|&(_, l)| l).sum();
            assert_eq!(total, len, "ranges {ranges:?} do not cover {len} bytes");
            assert!(ranges.iter().all(|&(_, l)| l > 0), "empty range in {ranges:?}");
            assert!(
                ranges.iter().all(|&(a, l)| a.checked_add(l).is_some()),
                "range wraps the address space: {ranges:?}"
            );
        }
        Err(code) => assert_ne!(code, 0, "failure with a success status"),
    }
});
