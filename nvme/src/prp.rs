//! Data pointers: PRP entries and lists, and SGL chains (NVMe Base 2.0 section 4.1), turned into
//! a list of guest ranges `(addr, len)` before any data moves.

use crate::status::Status;
use crate::wire::{sgl_type, SglDescriptor};
use crate::GuestMemory;
use zerocopy::FromBytes;

/// Upper bound on SGL descriptors walked for one command (guards against loops).
const MAX_SGL_DESCRIPTORS: usize = 4096;

/// The data pointer of one command, as found in the SQE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataPtr {
    /// PSDT (0 PRP, 1/2 SGL).
    pub psdt: u8,
    /// DPTR first qword (PRP1 / SGL address).
    pub prp1: u64,
    /// DPTR second qword (PRP2 / SGL length and type).
    pub prp2: u64,
}

/// Append a range, merging it with the previous one when contiguous. A range that runs past
/// the end of the 64-bit address space cannot be guest memory: Data Transfer Error, as for
/// any other address that is not mapped.
fn push(ranges: &mut Vec<(u64, u64)>, addr: u64, len: u64) -> Result<(), Status> {
    if len == 0 {
        return Ok(());
    }
    if addr.checked_add(len).is_none() {
        return Err(Status::DATA_TRANSFER);
    }
    if let Some(last) = ranges.last_mut() {
        if last.0.checked_add(last.1) == Some(addr) {
            last.1 += len;
            return Ok(());
        }
    }
    ranges.push((addr, len));
    Ok(())
}

/// Walk a data pointer describing `len` bytes. `page` is the memory page size (CC.MPS).
pub fn map(
    mem: &dyn GuestMemory,
    dptr: DataPtr,
    len: u64,
    page: u64,
) -> Result<Vec<(u64, u64)>, Status> {
    match dptr.psdt {
        0 => map_prp(mem, dptr.prp1, dptr.prp2, len, page),
        1 | 2 => map_sgl(mem, SglDescriptor::from_halves(dptr.prp1, dptr.prp2), len),
        _ => Err(Status::INVALID_FIELD),
    }
}

/// Walk PRP1/PRP2 (and PRP lists) for a transfer of `len` bytes.
pub fn map_prp(
    mem: &dyn GuestMemory,
    prp1: u64,
    prp2: u64,
    len: u64,
    page: u64,
) -> Result<Vec<(u64, u64)>, Status> {
    debug_assert!(page.is_power_of_two());
    let mut ranges = Vec::new();
    if len == 0 {
        return Ok(ranges);
    }
    // PRP1: any dword-aligned offset into its page.
    if prp1 & 0x3 != 0 {
        return Err(Status::PRP_INVALID_OFFSET);
    }
    let first = (page - (prp1 & (page - 1))).min(len);
    push(&mut ranges, prp1, first)?;
    let mut left = len - first;
    if left == 0 {
        return Ok(ranges);
    }
    if left <= page {
        // PRP2 is the second (and last) page.
        if prp2 & (page - 1) != 0 {
            return Err(Status::PRP_INVALID_OFFSET);
        }
        push(&mut ranges, prp2, left)?;
        return Ok(ranges);
    }
    // PRP2 points to a PRP list (qword aligned, may start inside its page).
    if prp2 & 0x7 != 0 {
        return Err(Status::PRP_INVALID_OFFSET);
    }
    let mut list = prp2;
    loop {
        let slots = (page - (list & (page - 1))) / 8;
        let needed = left.div_ceil(page);
        // The last slot of a list page chains to the next list page when more are needed.
        let chained = needed > slots;
        let take = if chained { slots - 1 } else { needed };
        let read = if chained { slots } else { take };
        let mut buf = vec![0u8; usize::try_from(read * 8).map_err(|_| Status::INVALID_FIELD)?];
        mem.read(list, &mut buf)
            .map_err(|_| Status::DATA_TRANSFER)?;
        let entries =
            <[zerocopy::little_endian::U64]>::ref_from_bytes(&buf).map_err(|_| Status::INTERNAL)?;
        for e in &entries[..usize::try_from(take).unwrap_or(0)] {
            let addr = e.get();
            if addr & (page - 1) != 0 {
                return Err(Status::PRP_INVALID_OFFSET);
            }
            let n = left.min(page);
            push(&mut ranges, addr, n)?;
            left -= n;
        }
        if !chained {
            break;
        }
        let next = entries[entries.len() - 1].get();
        if next & 0x7 != 0 || next & (page - 1) != 0 {
            return Err(Status::PRP_INVALID_OFFSET);
        }
        list = next;
    }
    debug_assert_eq!(left, 0);
    Ok(ranges)
}

/// Walk an SGL starting with the descriptor held in the SQE, for `len` bytes. Data beyond
/// `len` described by the SGL is ignored; fewer bytes than `len` is Data SGL Length Invalid.
pub fn map_sgl(
    mem: &dyn GuestMemory,
    first: SglDescriptor,
    len: u64,
) -> Result<Vec<(u64, u64)>, Status> {
    let mut ranges = Vec::new();
    let mut left = len;
    let mut seen = 0usize;
    fn take_data(
        ranges: &mut Vec<(u64, u64)>,
        left: &mut u64,
        d: &SglDescriptor,
    ) -> Result<(), Status> {
        if d.subtype() != 0 {
            return Err(Status::SGL_INVALID_TYPE);
        }
        let n = u64::from(d.len.get()).min(*left);
        push(ranges, d.addr.get(), n)?;
        *left -= n;
        Ok(())
    }
    match first.dtype() {
        sgl_type::DATA_BLOCK => {
            take_data(&mut ranges, &mut left, &first)?;
            return if left == 0 {
                Ok(ranges)
            } else {
                Err(Status::SGL_INVALID_DATA_LEN)
            };
        }
        sgl_type::SEGMENT | sgl_type::LAST_SEGMENT => {}
        _ => return Err(Status::SGL_INVALID_TYPE),
    }
    let mut seg = first;
    loop {
        if seg.subtype() != 0 {
            return Err(Status::SGL_INVALID_TYPE);
        }
        let seg_len = u64::from(seg.len.get());
        if seg_len == 0 || seg_len % 16 != 0 {
            return Err(Status::SGL_INVALID_SEGMENT);
        }
        let count = usize::try_from(seg_len / 16).map_err(|_| Status::SGL_INVALID_COUNT)?;
        seen += count;
        if seen > MAX_SGL_DESCRIPTORS {
            return Err(Status::SGL_INVALID_COUNT);
        }
        let mut buf = vec![0u8; count * 16];
        mem.read(seg.addr.get(), &mut buf)
            .map_err(|_| Status::DATA_TRANSFER)?;
        let descs =
            <[SglDescriptor]>::ref_from_bytes(&buf).map_err(|_| Status::SGL_INVALID_SEGMENT)?;
        let is_last_segment = seg.dtype() == sgl_type::LAST_SEGMENT;
        let mut next = None;
        for (i, d) in descs.iter().enumerate() {
            match d.dtype() {
                sgl_type::DATA_BLOCK => take_data(&mut ranges, &mut left, d)?,
                sgl_type::SEGMENT | sgl_type::LAST_SEGMENT => {
                    // Only the last descriptor of a (non-last) segment may chain.
                    if is_last_segment || i + 1 != descs.len() {
                        return Err(Status::SGL_INVALID_SEGMENT);
                    }
                    next = Some(*d);
                }
                _ => return Err(Status::SGL_INVALID_TYPE),
            }
        }
        match next {
            Some(n) if left > 0 => seg = n,
            Some(_) | None => break,
        }
        if is_last_segment {
            break;
        }
    }
    if left == 0 {
        Ok(ranges)
    } else {
        Err(Status::SGL_INVALID_DATA_LEN)
    }
}

/// Copy `data` into the guest ranges (device-to-host transfer of a small admin payload).
pub fn copy_to_guest(
    mem: &dyn GuestMemory,
    ranges: &[(u64, u64)],
    data: &[u8],
) -> Result<(), Status> {
    let mut off = 0usize;
    for &(addr, len) in ranges {
        let n = usize::try_from(len)
            .map_err(|_| Status::INVALID_FIELD)?
            .min(data.len() - off);
        mem.write(addr, &data[off..off + n])
            .map_err(|_| Status::DATA_TRANSFER)?;
        off += n;
        if off == data.len() {
            break;
        }
    }
    Ok(())
}

/// Fill `buf` from the guest ranges (host-to-device transfer of a small payload).
pub fn copy_from_guest(
    mem: &dyn GuestMemory,
    ranges: &[(u64, u64)],
    buf: &mut [u8],
) -> Result<(), Status> {
    let mut off = 0usize;
    for &(addr, len) in ranges {
        let n = usize::try_from(len)
            .map_err(|_| Status::INVALID_FIELD)?
            .min(buf.len() - off);
        mem.read(addr, &mut buf[off..off + n])
            .map_err(|_| Status::DATA_TRANSFER)?;
        off += n;
        if off == buf.len() {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::FakeMemory;

    const PAGE: u64 = 4096;

    fn write_list(mem: &FakeMemory, at: u64, entries: &[u64]) {
        let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
        mem.write(at, &bytes).unwrap();
    }

    #[test]
    fn prp1_only_with_offset() {
        let mem = FakeMemory::new(1 << 20);
        let r = map_prp(&mem, 0x1100, 0, 0x100, PAGE).unwrap();
        assert_eq!(r, vec![(0x1100, 0x100)]);
        // Up to the end of the page.
        let r = map_prp(&mem, 0x1100, 0, 0xF00, PAGE).unwrap();
        assert_eq!(r, vec![(0x1100, 0xF00)]);
    }

    #[test]
    fn prp2_second_page() {
        let mem = FakeMemory::new(1 << 20);
        let r = map_prp(&mem, 0x1800, 0x5000, 0x1000, PAGE).unwrap();
        assert_eq!(r, vec![(0x1800, 0x800), (0x5000, 0x800)]);
        // Contiguous pages merge.
        let r = map_prp(&mem, 0x1000, 0x2000, 0x2000, PAGE).unwrap();
        assert_eq!(r, vec![(0x1000, 0x2000)]);
    }

    #[test]
    fn prp2_with_offset_is_invalid() {
        let mem = FakeMemory::new(1 << 20);
        assert_eq!(
            map_prp(&mem, 0x1000, 0x5008, 0x2000, PAGE),
            Err(Status::PRP_INVALID_OFFSET)
        );
    }

    #[test]
    fn prp1_not_dword_aligned_is_invalid() {
        let mem = FakeMemory::new(1 << 20);
        assert_eq!(
            map_prp(&mem, 0x1002, 0, 0x200, PAGE),
            Err(Status::PRP_INVALID_OFFSET)
        );
    }

    #[test]
    fn prp_list_single_page() {
        let mem = FakeMemory::new(1 << 20);
        write_list(&mem, 0x8000, &[0x20000, 0x30000, 0x40000]);
        let r = map_prp(&mem, 0x10000, 0x8000, 4 * PAGE, PAGE).unwrap();
        assert_eq!(
            r,
            vec![
                (0x10000, PAGE),
                (0x20000, PAGE),
                (0x30000, PAGE),
                (0x40000, PAGE)
            ]
        );
        // Partial last page and offset first page.
        let r = map_prp(&mem, 0x10200, 0x8000, 2 * PAGE, PAGE).unwrap();
        assert_eq!(r, vec![(0x10200, 0xE00), (0x20000, PAGE), (0x30000, 0x200)]);
    }

    #[test]
    fn prp_list_entry_with_offset_is_invalid() {
        let mem = FakeMemory::new(1 << 20);
        write_list(&mem, 0x8000, &[0x20000, 0x30010]);
        assert_eq!(
            map_prp(&mem, 0x10000, 0x8000, 3 * PAGE, PAGE),
            Err(Status::PRP_INVALID_OFFSET)
        );
    }

    #[test]
    fn prp_list_pointer_misaligned_is_invalid() {
        let mem = FakeMemory::new(1 << 20);
        assert_eq!(
            map_prp(&mem, 0x10000, 0x8004, 3 * PAGE, PAGE),
            Err(Status::PRP_INVALID_OFFSET)
        );
    }

    #[test]
    fn prp_list_chains_across_pages() {
        let mem = FakeMemory::new(8 << 20);
        // List starts 16 bytes before the end of its page: one data entry, then a chain.
        let first_list = 0x8000 + PAGE - 16;
        write_list(&mem, first_list, &[0x100000, 0x9000]);
        // Second list page: 511 data entries + chain; third page: the rest.
        let mut second: Vec<u64> = (0..511).map(|i| 0x200000 + i * PAGE).collect();
        second.push(0xA000);
        write_list(&mem, 0x9000, &second);
        write_list(&mem, 0xA000, &[0x600000, 0x700000]);
        let total = 1 + 1 + 511 + 2; // prp1 + first list + second list + third list
        let r = map_prp(&mem, 0x50000, first_list, total * PAGE, PAGE).unwrap();
        let bytes: u64 = r.iter().map(|x| x.1).sum();
        assert_eq!(bytes, total * PAGE);
        assert_eq!(r[0], (0x50000, PAGE));
        assert_eq!(r[1], (0x100000, PAGE));
        assert_eq!(r[2], (0x200000, 511 * PAGE));
        assert_eq!(r[3], (0x600000, PAGE));
        assert_eq!(r[4], (0x700000, PAGE));
    }

    #[test]
    fn prp_list_exactly_filling_page_does_not_chain() {
        let mem = FakeMemory::new(8 << 20);
        let entries: Vec<u64> = (0..512).map(|i| 0x200000 + i * PAGE).collect();
        write_list(&mem, 0x9000, &entries);
        let r = map_prp(&mem, 0x100000, 0x9000, 513 * PAGE, PAGE).unwrap();
        assert_eq!(r, vec![(0x100000, PAGE), (0x200000, 512 * PAGE)]);
    }

    #[test]
    fn prp_list_unmapped_is_data_transfer_error() {
        let mem = FakeMemory::new(1 << 20);
        assert_eq!(
            map_prp(&mem, 0x10000, 0x4000_0000, 3 * PAGE, PAGE),
            Err(Status::DATA_TRANSFER)
        );
    }

    #[test]
    fn prp_bigger_page_size() {
        let mem = FakeMemory::new(1 << 20);
        let r = map_prp(&mem, 0x10000, 0x30000, 0x10000 + 0x100, 0x10000).unwrap();
        assert_eq!(r, vec![(0x10000, 0x10000), (0x30000, 0x100)]);
    }

    #[test]
    fn sgl_single_data_block() {
        let mem = FakeMemory::new(1 << 20);
        let d = SglDescriptor::new(0x1234, 0x1000, sgl_type::DATA_BLOCK);
        assert_eq!(map_sgl(&mem, d, 0x1000).unwrap(), vec![(0x1234, 0x1000)]);
        // Longer than needed: truncated.
        assert_eq!(map_sgl(&mem, d, 0x800).unwrap(), vec![(0x1234, 0x800)]);
        // Shorter than needed.
        assert_eq!(map_sgl(&mem, d, 0x2000), Err(Status::SGL_INVALID_DATA_LEN));
    }

    fn write_descs(mem: &FakeMemory, at: u64, descs: &[SglDescriptor]) {
        use zerocopy::IntoBytes;
        let bytes: Vec<u8> = descs.iter().flat_map(|d| d.as_bytes().to_vec()).collect();
        mem.write(at, &bytes).unwrap();
    }

    #[test]
    fn sgl_segment_chain() {
        let mem = FakeMemory::new(1 << 20);
        write_descs(
            &mem,
            0x1000,
            &[
                SglDescriptor::new(0x10000, 0x200, sgl_type::DATA_BLOCK),
                SglDescriptor::new(0x20000, 0x300, sgl_type::DATA_BLOCK),
                SglDescriptor::new(0x2000, 32, sgl_type::LAST_SEGMENT),
            ],
        );
        write_descs(
            &mem,
            0x2000,
            &[
                SglDescriptor::new(0x20300, 0x100, sgl_type::DATA_BLOCK),
                SglDescriptor::new(0x30000, 0x400, sgl_type::DATA_BLOCK),
            ],
        );
        let first = SglDescriptor::new(0x1000, 48, sgl_type::SEGMENT);
        let r = map_sgl(&mem, first, 0xA00).unwrap();
        assert_eq!(
            r,
            vec![(0x10000, 0x200), (0x20000, 0x400), (0x30000, 0x400)]
        );
        // Stops as soon as enough data is described.
        let r = map_sgl(&mem, first, 0x300).unwrap();
        assert_eq!(r, vec![(0x10000, 0x200), (0x20000, 0x100)]);
        // One byte more than the chain describes.
        assert_eq!(
            map_sgl(&mem, first, 0xA04),
            Err(Status::SGL_INVALID_DATA_LEN)
        );
    }

    #[test]
    fn sgl_segment_in_last_segment_is_invalid() {
        let mem = FakeMemory::new(1 << 20);
        write_descs(
            &mem,
            0x1000,
            &[
                SglDescriptor::new(0x10000, 0x200, sgl_type::DATA_BLOCK),
                SglDescriptor::new(0x2000, 16, sgl_type::SEGMENT),
            ],
        );
        let first = SglDescriptor::new(0x1000, 32, sgl_type::LAST_SEGMENT);
        assert_eq!(
            map_sgl(&mem, first, 0x400),
            Err(Status::SGL_INVALID_SEGMENT)
        );
    }

    #[test]
    fn sgl_segment_not_last_descriptor_is_invalid() {
        let mem = FakeMemory::new(1 << 20);
        write_descs(
            &mem,
            0x1000,
            &[
                SglDescriptor::new(0x2000, 16, sgl_type::LAST_SEGMENT),
                SglDescriptor::new(0x10000, 0x200, sgl_type::DATA_BLOCK),
            ],
        );
        let first = SglDescriptor::new(0x1000, 32, sgl_type::SEGMENT);
        assert_eq!(
            map_sgl(&mem, first, 0x200),
            Err(Status::SGL_INVALID_SEGMENT)
        );
    }

    #[test]
    fn sgl_bad_segment_length_and_types() {
        let mem = FakeMemory::new(1 << 20);
        let seg = SglDescriptor::new(0x1000, 20, sgl_type::LAST_SEGMENT);
        assert_eq!(map_sgl(&mem, seg, 0x200), Err(Status::SGL_INVALID_SEGMENT));
        let bucket = SglDescriptor::new(0x1000, 0x200, sgl_type::BIT_BUCKET);
        assert_eq!(map_sgl(&mem, bucket, 0x200), Err(Status::SGL_INVALID_TYPE));
        let mut offset_sub = SglDescriptor::new(0x1000, 0x200, sgl_type::DATA_BLOCK);
        offset_sub.id |= 1;
        assert_eq!(
            map_sgl(&mem, offset_sub, 0x200),
            Err(Status::SGL_INVALID_TYPE)
        );
        let far = SglDescriptor::new(0x4000_0000, 16, sgl_type::LAST_SEGMENT);
        assert_eq!(map_sgl(&mem, far, 0x200), Err(Status::DATA_TRANSFER));
    }

    #[test]
    fn sgl_self_loop_is_bounded() {
        let mem = FakeMemory::new(1 << 20);
        write_descs(
            &mem,
            0x1000,
            &[
                SglDescriptor::new(0x10000, 0, sgl_type::DATA_BLOCK),
                SglDescriptor::new(0x1000, 32, sgl_type::SEGMENT),
            ],
        );
        let first = SglDescriptor::new(0x1000, 32, sgl_type::SEGMENT);
        assert_eq!(map_sgl(&mem, first, 0x200), Err(Status::SGL_INVALID_COUNT));
    }

    /// Found by the `nvme_data_ptr` fuzz target: an SGL Data Block near the top of the address
    /// space came back as a range wrapping past 2^64.
    #[test]
    fn sgl_data_block_wrapping_the_address_space_is_data_transfer_error() {
        let mem = FakeMemory::new(1 << 20);
        let d = SglDescriptor::new(u64::MAX - 9, 917_504, sgl_type::DATA_BLOCK);
        assert_eq!(map_sgl(&mem, d, 4096), Err(Status::DATA_TRANSFER));
        // Ending exactly at 2^64 wraps too.
        let d = SglDescriptor::new(u64::MAX - 4095, 4096, sgl_type::DATA_BLOCK);
        assert_eq!(map_sgl(&mem, d, 4096), Err(Status::DATA_TRANSFER));
    }

    #[test]
    fn prp_wrapping_the_address_space_is_data_transfer_error() {
        let mem = FakeMemory::new(1 << 20);
        assert_eq!(
            map_prp(&mem, u64::MAX - 3, 0, 4, PAGE),
            Err(Status::DATA_TRANSFER)
        );
        assert_eq!(
            map_prp(&mem, 0x1000, u64::MAX - 4095, 0x2000, PAGE),
            Err(Status::DATA_TRANSFER)
        );
    }

    #[test]
    fn map_dispatches_on_psdt() {
        let mem = FakeMemory::new(1 << 20);
        let d = SglDescriptor::new(0x3000, 0x200, sgl_type::DATA_BLOCK);
        let (lo, hi) = d.halves();
        let r = map(
            &mem,
            DataPtr {
                psdt: 1,
                prp1: lo,
                prp2: hi,
            },
            0x200,
            PAGE,
        )
        .unwrap();
        assert_eq!(r, vec![(0x3000, 0x200)]);
        let r = map(
            &mem,
            DataPtr {
                psdt: 0,
                prp1: 0x3000,
                prp2: 0,
            },
            0x200,
            PAGE,
        )
        .unwrap();
        assert_eq!(r, vec![(0x3000, 0x200)]);
        assert_eq!(
            map(
                &mem,
                DataPtr {
                    psdt: 3,
                    prp1: 0,
                    prp2: 0
                },
                0x200,
                PAGE
            ),
            Err(Status::INVALID_FIELD)
        );
    }

    #[test]
    fn copy_helpers_scatter_and_gather() {
        let mem = FakeMemory::new(1 << 20);
        let ranges = [(0x1000u64, 3u64), (0x3000, 5)];
        copy_to_guest(&mem, &ranges, b"abcdefgh").unwrap();
        let mut out = [0u8; 8];
        copy_from_guest(&mem, &ranges, &mut out).unwrap();
        assert_eq!(&out, b"abcdefgh");
        let mut b = [0u8; 3];
        mem.read(0x1000, &mut b).unwrap();
        assert_eq!(&b, b"abc");
        assert_eq!(
            copy_to_guest(&mem, &[(0x4000_0000, 8)], b"abcdefgh"),
            Err(Status::DATA_TRANSFER)
        );
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        /// Reference model: the bytes each data page contributes, in order.
        fn expected(prp1: u64, pages: &[u64], len: u64) -> Vec<(u64, u64)> {
            let mut out = Vec::new();
            let first = (PAGE - prp1 % PAGE).min(len);
            push(&mut out, prp1, first).unwrap();
            let mut left = len - first;
            for &p in pages {
                if left == 0 {
                    break;
                }
                let n = left.min(PAGE);
                push(&mut out, p, n).unwrap();
                left -= n;
            }
            out
        }

        proptest! {
            #[test]
            fn prp_walk_matches_model(
                off in (0u64..1024).prop_map(|d| d * 4),
                len in 1u64..(1100 * PAGE),
                list_off in (0u64..512).prop_map(|q| q * 8),
                shuffle in any::<u64>(),
            ) {
                let mem = FakeMemory::new(16 << 20);
                let data_pages = (len + off).div_ceil(PAGE) - 1;
                // Data pages scattered in a 8 MiB window (deterministic permutation).
                let pages: Vec<u64> = (0..data_pages)
                    .map(|i| 0x80_0000 + ((i * 7919 + shuffle % 2048) % 2048) * PAGE)
                    .collect();
                let prp1 = 0x10_0000 + off;
                let prp2 = if data_pages == 0 {
                    0
                } else if data_pages == 1 {
                    pages[0]
                } else {
                    // Build lists from 0x20_0000 on, the first starting at `list_off`.
                    let mut list = 0x20_0000 + list_off;
                    let start = list;
                    let mut idx = 0usize;
                    let mut next_page = 0x20_0000 + PAGE;
                    loop {
                        let slots = ((PAGE - list % PAGE) / 8) as usize;
                        let left = pages.len() - idx;
                        let mut bytes = Vec::new();
                        if left <= slots {
                            for p in &pages[idx..] { bytes.extend_from_slice(&p.to_le_bytes()); }
                            mem.write(list, &bytes).unwrap();
                            break;
                        }
                        for p in &pages[idx..idx + slots - 1] { bytes.extend_from_slice(&p.to_le_bytes()); }
                        bytes.extend_from_slice(&next_page.to_le_bytes());
                        mem.write(list, &bytes).unwrap();
                        idx += slots - 1;
                        list = next_page;
                        next_page += PAGE;
                    }
                    start
                };
                let got = map_prp(&mem, prp1, prp2, len, PAGE).unwrap();
                prop_assert_eq!(got, expected(prp1, &pages, len));
            }
        }
    }
}
