//! Entry points for the fuzz targets in `fuzz/` (not a stable API): SQE decoding and the
//! PRP/SGL walk, which are otherwise private to the crate.

use crate::cmd::{AdminCmd, IoCmd};
use crate::prp::{self, DataPtr};
use crate::status::Status;
use crate::wire::Sqe;
use crate::{DmaError, GuestMemory};
use std::io::IoSliceMut;
use zerocopy::FromBytes;

/// Decode 64 bytes as an admin SQE and as an I/O SQE under CC.CSS `css`; returns the decoded
/// commands' debug text (never panics on any input).
pub fn decode_sqe(bytes: &[u8; 64], css: u8) -> (String, String) {
    let sqe = Sqe::read_from_bytes(bytes).unwrap_or_default();
    (
        format!("{:?}", AdminCmd::decode(&sqe)),
        format!("{:?}", IoCmd::decode(&sqe, css)),
    )
}

/// Guest memory made of one buffer mapped at guest address `base`.
#[derive(Debug)]
pub struct SliceMemory {
    /// Guest address of `bytes[0]`.
    pub base: u64,
    /// The memory.
    pub bytes: Vec<u8>,
}

impl SliceMemory {
    fn range(&self, addr: u64, len: u64) -> Result<std::ops::Range<usize>, DmaError> {
        let err = DmaError { addr, len };
        let off = addr.checked_sub(self.base).ok_or(err)?;
        let end = off.checked_add(len).ok_or(err)?;
        if end > self.bytes.len() as u64 {
            return Err(err);
        }
        Ok(off as usize..end as usize)
    }
}

impl GuestMemory for SliceMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        let r = self.range(addr, buf.len() as u64)?;
        buf.copy_from_slice(&self.bytes[r]);
        Ok(())
    }
    fn write(&self, addr: u64, data: &[u8]) -> Result<(), DmaError> {
        self.range(addr, data.len() as u64).map(|_| ())
    }
    fn with_slices(
        &self,
        ranges: &[(u64, u64)],
        _for_write: bool,
        f: &mut dyn FnMut(&mut [IoSliceMut<'_>]) -> std::io::Result<()>,
    ) -> Result<std::io::Result<()>, DmaError> {
        let mut bufs = Vec::with_capacity(ranges.len());
        for &(a, l) in ranges {
            let r = self.range(a, l)?;
            bufs.push(self.bytes[r].to_vec());
        }
        let mut slices: Vec<IoSliceMut<'_>> = bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        Ok(f(&mut slices))
    }
}

/// Walk the data pointer of an SQE (`psdt`, `prp1`, `prp2`) for a transfer of `len` bytes
/// with memory page size `page` (a power of two, 4 KiB or more) over `mem`. On success the
/// ranges cover exactly `len` bytes; on failure the NVMe status field value (SCT << 8 | SC).
pub fn walk_data_ptr(
    mem: &dyn GuestMemory,
    psdt: u8,
    prp1: u64,
    prp2: u64,
    len: u64,
    page: u64,
) -> Result<Vec<(u64, u64)>, u16> {
    prp::map(mem, DataPtr { psdt, prp1, prp2 }, len, page).map_err(Status::code)
}
