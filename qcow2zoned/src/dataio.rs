//! Executing read/write plans against the storage, outside any lock.
//!
//! The caller's buffers are never copied: they are cut into sub-slices that line up with
//! the host extents and handed to one `preadv`/`pwritev` per extent.

use crate::meta::{ReadSeg, WriteExtent};
use crate::storage::Storage;
use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};

/// Total bytes of a gather list.
pub fn total_len(bufs: &[IoSlice<'_>]) -> u64 {
    bufs.iter().map(|b| b.len() as u64).sum()
}

/// Total bytes of a scatter list.
pub fn total_len_mut(bufs: &[IoSliceMut<'_>]) -> u64 {
    bufs.iter().map(|b| b.len() as u64).sum()
}

/// Take the next `n` bytes of `bufs` (cursor `idx`, `pos`) as sub-slices.
fn take<'a>(
    bufs: &'a [IoSlice<'a>],
    idx: &mut usize,
    pos: &mut usize,
    mut n: u64,
    out: &mut Vec<IoSlice<'a>>,
) {
    while n > 0 && *idx < bufs.len() {
        let b: &'a [u8] = &bufs[*idx];
        let avail = (b.len() - *pos) as u64;
        let t = avail.min(n) as usize;
        if t > 0 {
            out.push(IoSlice::new(&b[*pos..*pos + t]));
        }
        *pos += t;
        n -= t as u64;
        if *pos == b.len() {
            *idx += 1;
            *pos = 0;
        }
    }
}

/// Write `bufs` along `extents` (in guest order), padding with `zeros`.
pub fn write_extents(
    st: &dyn Storage,
    zeros: &[u8],
    extents: &[WriteExtent],
    bufs: &[IoSlice<'_>],
) -> io::Result<()> {
    // The hot path: one extent, no padding: hand the caller's slices over as they are.
    if let [e] = extents {
        if e.pad_before == 0 && e.pad_after == 0 && total_len(bufs) == e.len {
            return st.writev_at(bufs, e.host);
        }
    }
    let (mut idx, mut pos) = (0usize, 0usize);
    let mut v: Vec<IoSlice<'_>> = Vec::with_capacity(bufs.len() + 2);
    for e in extents {
        v.clear();
        if e.pad_before > 0 {
            v.push(IoSlice::new(&zeros[..e.pad_before as usize]));
        }
        take(bufs, &mut idx, &mut pos, e.len, &mut v);
        if e.pad_after > 0 {
            v.push(IoSlice::new(&zeros[..e.pad_after as usize]));
        }
        st.writev_at(&v, e.host)?;
    }
    Ok(())
}

/// Read along `segs` into `bufs`; zero segments and any short read are filled with zeros.
pub fn read_segments(
    st: &dyn Storage,
    segs: &[ReadSeg],
    bufs: &mut [IoSliceMut<'_>],
) -> io::Result<()> {
    // The hot path: one host extent covering the whole request.
    if let [ReadSeg { host: Some(h), len }] = segs {
        if *len == total_len_mut(bufs) {
            let got = st.readv_at(bufs, *h)? as u64;
            if got < *len {
                let mut skip = got as usize;
                for b in bufs.iter_mut() {
                    if skip >= b.len() {
                        skip -= b.len();
                        continue;
                    }
                    b[skip..].fill(0);
                    skip = 0;
                }
            }
            return Ok(());
        }
    }
    let mut q: VecDeque<&mut [u8]> = bufs.iter_mut().map(|b| &mut **b).collect();
    for s in segs {
        let mut pieces: Vec<&mut [u8]> = Vec::new();
        let mut n = s.len;
        while n > 0 {
            let Some(front) = q.pop_front() else { break };
            if (front.len() as u64) <= n {
                n -= front.len() as u64;
                pieces.push(front);
            } else {
                let (a, b) = front.split_at_mut(n as usize);
                n = 0;
                pieces.push(a);
                q.push_front(b);
            }
        }
        match s.host {
            None => pieces.iter_mut().for_each(|p| p.fill(0)),
            Some(h) => {
                let want = s.len as usize;
                let got = {
                    let mut iov: Vec<IoSliceMut<'_>> =
                        pieces.iter_mut().map(|p| IoSliceMut::new(p)).collect();
                    st.readv_at(&mut iov, h)?
                };
                if got < want {
                    let mut skip = got;
                    for p in pieces.iter_mut() {
                        if skip >= p.len() {
                            skip -= p.len();
                            continue;
                        }
                        p[skip..].fill(0);
                        skip = 0;
                    }
                }
            }
        }
    }
    Ok(())
}
