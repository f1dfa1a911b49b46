//! Guest memory: mmap of DMA_MAP file descriptors and the IOVA → host table.
//!
//! This is the only module of the crate with `unsafe` code. It owns two kinds of shared
//! mappings:
//!
//! * [`SharedMapping`]: one `mmap(MAP_SHARED)` of a file range (a DMA_MAP'd piece of guest
//!   RAM, or our own doorbell memfd). Access is copy-in/copy-out with bounds checks, plus
//!   aligned atomic `u32` loads/stores for doorbells. No `&T` into the mapping ever leaves
//!   this module except the byte slices handed to a [`GuestMemory::with_slices`] callback for
//!   the duration of that call.
//! * [`GuestRam`]: the sorted table of DMA maps, published as an `Arc<DmaTable>` behind a
//!   `RwLock` that is held only to clone or replace the `Arc`. Every guest access clones the
//!   current table, so the mappings it uses stay alive (and mapped) until the access ends.
//!   `unmap` publishes a table without the range, then waits until every older table that
//!   still holds the mapping has been dropped, i.e. until no I/O holds the old mapping.
//!
//! Soundness argument shared by every `unsafe` block below: a `SharedMapping` is created by
//! a successful `mmap` of exactly `len` bytes and unmapped only in `Drop`, which runs when the
//! last `Arc` is gone; all pointer arithmetic is checked against `len` first. The memory is
//! shared with another process (the VMM/guest) that may write it at any time, so we only
//! ever copy bytes (every bit pattern is a valid `u8`) or use atomics.

use nvme::{DmaError, GuestMemory, PinnedBuffers};
use std::io::IoSliceMut;
use std::num::NonZeroUsize;
use std::os::fd::AsFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

/// Granularity of file offsets for `mmap`.
const PAGE_SIZE: u64 = 4096;

/// How long `unmap` waits for in-flight I/O to drop an old mapping before giving up
/// (the mapping then lives on until the last user drops it; QEMU times out at 5 s).
const UNMAP_WAIT: Duration = Duration::from_secs(3);

/// Errors of this module (host-side failures; guest-caused ones are [`DmaError`]).
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// The requested range is empty or does not fit the address space.
    #[error("Invalid DMA range {iova:#x}+{size:#x}")]
    InvalidRange {
        /// Start.
        iova: u64,
        /// Length.
        size: u64,
    },
    /// The new map overlaps an existing one.
    #[error("DMA range {iova:#x}+{size:#x} overlaps an existing map")]
    Overlap {
        /// Start.
        iova: u64,
        /// Length.
        size: u64,
    },
    /// `mmap` failed.
    #[error("Cannot mmap {size:#x} bytes at file offset {offset:#x}")]
    Mmap {
        /// File offset.
        offset: u64,
        /// Length.
        size: u64,
        /// Cause.
        #[source]
        source: nix::Error,
    },
    /// The range ends beyond the end of the file (accesses would raise SIGBUS).
    #[error("DMA range at file offset {offset:#x}+{size:#x} ends beyond the file ({file_size:#x} bytes)")]
    BeyondFile {
        /// File offset.
        offset: u64,
        /// Length.
        size: u64,
        /// File size.
        file_size: u64,
    },
    /// A memfd could not be created or sized.
    #[error("Cannot create memfd {name}")]
    Memfd {
        /// memfd name.
        name: &'static str,
        /// Cause.
        #[source]
        source: nix::Error,
    },
}

impl From<MapError> for std::io::Error {
    fn from(e: MapError) -> Self {
        let kind = match e {
            MapError::Overlap { .. } => std::io::ErrorKind::AlreadyExists,
            MapError::InvalidRange { .. } => std::io::ErrorKind::InvalidInput,
            MapError::BeyondFile { .. } => std::io::ErrorKind::InvalidInput,
            MapError::Mmap { .. } | MapError::Memfd { .. } => std::io::ErrorKind::Other,
        };
        std::io::Error::new(kind, e)
    }
}

/// One `mmap(MAP_SHARED)` of a file range.
pub struct SharedMapping {
    /// Start of the bytes the caller asked for (inside the page-aligned mapping).
    ptr: NonNull<u8>,
    /// Bytes the caller asked for.
    len: usize,
    /// Start of the actual mapping (page aligned).
    map_ptr: NonNull<std::ffi::c_void>,
    /// Length of the actual mapping.
    map_len: usize,
    /// Whether the mapping is writable.
    writable: bool,
}

// SAFETY: the mapping is plain shared memory owned by this value; it is only accessed through
// bounds-checked byte copies and atomics, which are fine from any thread.
unsafe impl Send for SharedMapping {}
// SAFETY: as above: `&SharedMapping` only allows copies and atomic accesses.
unsafe impl Sync for SharedMapping {}

impl std::fmt::Debug for SharedMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedMapping")
            .field("len", &self.len)
            .field("writable", &self.writable)
            .finish()
    }
}

impl SharedMapping {
    /// Map `len` bytes of `fd` starting at file offset `offset` (any alignment), shared,
    /// readable and, if `writable`, writable.
    pub fn new(fd: impl AsFd, offset: u64, len: u64, writable: bool) -> Result<Self, MapError> {
        let bad = || MapError::InvalidRange {
            iova: offset,
            size: len,
        };
        check_file_size(&fd, offset, len)?;
        let delta = offset % PAGE_SIZE;
        let map_off = offset - delta;
        let map_len = len.checked_add(delta).ok_or_else(bad)?;
        let map_len_usize = usize::try_from(map_len).map_err(|_| bad())?;
        let nz = NonZeroUsize::new(map_len_usize).ok_or_else(bad)?;
        let off = libc::off_t::try_from(map_off).map_err(|_| bad())?;
        let prot = if writable {
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE
        } else {
            ProtFlags::PROT_READ
        };
        // SAFETY: a fresh shared mapping chosen by the kernel (no fixed address), so it aliases
        // no Rust object; it is unmapped only in Drop. The file may be shrunk by its owner, in
        // which case accesses fault (SIGBUS) - the same contract every vfio-user server has
        // with its client; QEMU never truncates guest RAM while mapped.
        let map_ptr =
            unsafe { mmap(None, nz, prot, MapFlags::MAP_SHARED, fd, off) }.map_err(|source| {
                MapError::Mmap {
                    offset,
                    size: len,
                    source,
                }
            })?;
        let delta_usize = usize::try_from(delta).map_err(|_| bad())?;
        // SAFETY: `delta < PAGE_SIZE <= map_len`, so the result stays inside the mapping.
        let ptr = unsafe { map_ptr.cast::<u8>().add(delta_usize) };
        Ok(SharedMapping {
            ptr,
            len: map_len_usize - delta_usize,
            map_ptr,
            map_len: map_len_usize,
            writable,
        })
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never: mappings have at least one byte).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether stores are allowed.
    pub fn writable(&self) -> bool {
        self.writable
    }

    fn check(&self, offset: u64, len: usize) -> Option<usize> {
        let off = usize::try_from(offset).ok()?;
        let end = off.checked_add(len)?;
        (end <= self.len).then_some(off)
    }

    /// Copy `buf.len()` bytes from `offset`. Returns false if out of bounds.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> bool {
        let Some(off) = self.check(offset, buf.len()) else {
            return false;
        };
        // SAFETY: `off + buf.len() <= self.len` (checked) and the mapping is live while `self`
        // is; `copy` tolerates overlap (should `buf` be a slice lent by `with_slices`), and u8
        // has no invalid values.
        unsafe { std::ptr::copy(self.ptr.as_ptr().add(off), buf.as_mut_ptr(), buf.len()) };
        true
    }

    /// Copy `data` to `offset`. Returns false if out of bounds or read-only.
    pub fn write(&self, offset: u64, data: &[u8]) -> bool {
        if !self.writable {
            return false;
        }
        let Some(off) = self.check(offset, data.len()) else {
            return false;
        };
        // SAFETY: bounds checked above, mapping writable and live; `copy` tolerates overlap
        // (see `read`).
        unsafe { std::ptr::copy(data.as_ptr(), self.ptr.as_ptr().add(off), data.len()) };
        true
    }

    fn atomic_u32(&self, offset: u64) -> Option<&AtomicU32> {
        let off = self.check(offset, 4)?;
        // SAFETY: in bounds (checked); the pointer is derived from a page-aligned mapping, so
        // `off % 4 == 0` makes it 4-byte aligned.
        let p = unsafe { self.ptr.as_ptr().add(off) };
        if p.align_offset(std::mem::align_of::<AtomicU32>()) != 0 {
            return None;
        }
        // SAFETY: `p` is in bounds, aligned for AtomicU32 and valid for the lifetime of
        // `&self`; the other side of the shared memory (the guest through the VMM) only does
        // aligned 4-byte stores there, so every access to these bytes is atomic and there is
        // no mixed-size race. The returned reference is used for one atomic op at a time.
        Some(unsafe { AtomicU32::from_ptr(p.cast::<u32>()) })
    }

    /// Atomic aligned `u32` load with acquire ordering (0 if out of bounds or misaligned).
    pub fn load_u32_acquire(&self, offset: u64) -> u32 {
        self.atomic_u32(offset)
            .map_or(0, |a| a.load(Ordering::Acquire))
    }

    /// Atomic aligned `u32` store with release ordering (ignored if out of bounds,
    /// misaligned or read-only).
    pub fn store_u32_release(&self, offset: u64, value: u32) {
        if !self.writable {
            return;
        }
        if let Some(a) = self.atomic_u32(offset) {
            a.store(value, Ordering::Release);
        }
    }

    /// Raw slice for `with_slices`.
    ///
    /// # Safety
    ///
    /// The caller must ensure no other live reference overlaps the returned slice while it
    /// is used, and must not let it outlive `self`.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice_mut(&self, offset: u64, len: usize) -> Option<&mut [u8]> {
        let off = self.check(offset, len)?;
        // SAFETY: in bounds, live for `&self`; exclusivity is the caller's contract. The
        // guest may change the bytes concurrently; they are plain bytes consumed by
        // read(2)/write(2)-style calls, where any value is valid.
        Some(unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(off), len) })
    }
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        // SAFETY: `map_ptr/map_len` is exactly what mmap returned; no reference into it can
        // outlive `self` (the API lends slices only for the duration of a borrow).
        if let Err(e) = unsafe { munmap(self.map_ptr, self.map_len) } {
            tracing::error!(error = %e, "munmap failed");
        }
    }
}

/// Refuse ranges past the end of a regular file (memfd, tmpfs, hugetlbfs): touching them
/// would kill the process with SIGBUS.
fn check_file_size(fd: &impl AsFd, offset: u64, len: u64) -> Result<(), MapError> {
    use std::os::fd::AsRawFd;
    let Ok(st) = nix::sys::stat::fstat(fd.as_fd().as_raw_fd()) else {
        return Ok(());
    };
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Ok(());
    }
    let file_size = u64::try_from(st.st_size).unwrap_or(0);
    match offset.checked_add(len) {
        Some(end) if end <= file_size => Ok(()),
        _ => Err(MapError::BeyondFile {
            offset,
            size: len,
            file_size,
        }),
    }
}

/// A memfd of `size` bytes, mapped read/write: the doorbell page backing store.
pub fn memfd_mapping(
    name: &'static std::ffi::CStr,
    size: u64,
) -> Result<(std::os::fd::OwnedFd, SharedMapping), MapError> {
    use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
    let err = |source| MapError::Memfd {
        name: name.to_str().unwrap_or("memfd"),
        source,
    };
    let fd = memfd_create(name, MemFdCreateFlag::MFD_CLOEXEC).map_err(err)?;
    let len = libc::off_t::try_from(size).map_err(|_| err(nix::Error::EINVAL))?;
    nix::unistd::ftruncate(&fd, len).map_err(err)?;
    let map = SharedMapping::new(&fd, 0, size, true)?;
    Ok((fd, map))
}

/// A piece of a guest range: mapping, offset in it, length.
type Piece<'a> = (&'a Arc<SharedMapping>, u64, usize);

/// One DMA map.
#[derive(Debug, Clone)]
pub struct DmaEntry {
    /// First IOVA.
    pub iova: u64,
    /// Length in bytes.
    pub size: u64,
    /// Host mapping; `None` for fd-less maps (present but not reachable: DMA fails).
    pub map: Option<Arc<SharedMapping>>,
    /// Client allowed device writes (DMA_MAP flag WRITE).
    pub writable: bool,
}

impl DmaEntry {
    fn end(&self) -> u64 {
        self.iova + self.size
    }
}

/// An immutable snapshot of all DMA maps, sorted by IOVA, non-overlapping.
#[derive(Debug, Default, Clone)]
pub struct DmaTable {
    entries: Vec<DmaEntry>,
}

impl DmaTable {
    /// Maps in IOVA order.
    pub fn entries(&self) -> &[DmaEntry] {
        &self.entries
    }

    fn find(&self, addr: u64) -> Option<&DmaEntry> {
        let i = self.entries.partition_point(|e| e.end() <= addr);
        self.entries.get(i).filter(|e| e.iova <= addr)
    }

    /// Split `[addr, addr+len)` into `(entry, offset in entry, chunk len)` pieces, each
    /// inside one accessible mapping that allows the access.
    fn pieces(&self, addr: u64, len: u64, write: bool) -> Result<Vec<Piece<'_>>, DmaError> {
        let err = DmaError { addr, len };
        let end = addr.checked_add(len).ok_or(err)?;
        let mut out = Vec::with_capacity(1);
        let mut cur = addr;
        while cur < end {
            let e = self.find(cur).ok_or(err)?;
            let map = e.map.as_ref().ok_or(err)?;
            if write && !(e.writable && map.writable()) {
                return Err(err);
            }
            let chunk = (end.min(e.end()) - cur).min(usize::MAX as u64);
            let chunk = usize::try_from(chunk).map_err(|_| err)?;
            out.push((map, cur - e.iova, chunk));
            cur += chunk as u64;
        }
        Ok(out)
    }
}

/// The published DMA table, shared between the vfio-user thread (writer) and the pollers.
#[derive(Debug, Default)]
pub struct GuestRam {
    table: RwLock<Arc<DmaTable>>,
}

impl GuestRam {
    /// Empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Current snapshot (the lock is held only to clone the Arc).
    pub fn snapshot(&self) -> Arc<DmaTable> {
        match self.table.read() {
            Ok(g) => Arc::clone(&g),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }

    fn publish(&self, t: DmaTable) {
        let new = Arc::new(t);
        match self.table.write() {
            Ok(mut g) => *g = new,
            Err(p) => *p.into_inner() = new,
        }
    }

    /// DMA_MAP: record `[iova, iova+size)`; mmap `fd` at `offset` when given (read-only
    /// unless `writable`, the map's WRITE flag). Overlaps are refused. Maps and unmaps come
    /// from the vfio-user thread only (single writer), so check-then-publish is not racy.
    pub fn map(
        &self,
        iova: u64,
        size: u64,
        offset: u64,
        fd: Option<impl AsFd>,
        writable: bool,
    ) -> Result<(), MapError> {
        if size == 0 || iova.checked_add(size).is_none() {
            return Err(MapError::InvalidRange { iova, size });
        }
        let cur = self.snapshot();
        let end = iova + size;
        if cur.entries.iter().any(|e| e.iova < end && iova < e.end()) {
            return Err(MapError::Overlap { iova, size });
        }
        let map = match fd {
            Some(fd) => Some(Arc::new(SharedMapping::new(fd, offset, size, writable)?)),
            None => None,
        };
        let mut t = (*cur).clone();
        let pos = t.entries.partition_point(|e| e.iova < iova);
        t.entries.insert(
            pos,
            DmaEntry {
                iova,
                size,
                map,
                writable,
            },
        );
        self.publish(t);
        Ok(())
    }

    /// DMA_UNMAP: remove every map inside `[iova, iova+size)` (or all maps when `all`), then
    /// wait until no in-flight access still uses them. Returns the number of maps removed.
    pub fn unmap(&self, iova: u64, size: u64, all: bool) -> usize {
        let cur = self.snapshot();
        let end = iova.saturating_add(size);
        let (gone, kept): (Vec<DmaEntry>, Vec<DmaEntry>) = cur
            .entries
            .iter()
            .cloned()
            .partition(|e| all || (e.iova >= iova && e.end() <= end));
        for e in &kept {
            if e.iova < end && iova < e.end() {
                tracing::warn!(
                    iova = format_args!("{iova:#x}"),
                    size = format_args!("{size:#x}"),
                    map_iova = format_args!("{:#x}", e.iova),
                    "DMA_UNMAP covers only part of a map; keeping it"
                );
            }
        }
        if gone.is_empty() {
            return 0;
        }
        drop(cur);
        self.publish(DmaTable { entries: kept });
        let n = gone.len();
        let deadline = Instant::now() + UNMAP_WAIT;
        for e in gone {
            if let Some(m) = e.map {
                wait_unique(m, deadline);
            }
        }
        n
    }

    /// Drop every map (client gone).
    pub fn clear(&self) -> usize {
        self.unmap(0, u64::MAX, true)
    }
}

/// Wait (bounded) until `m` is the last reference, then drop it (munmap).
fn wait_unique(m: Arc<SharedMapping>, deadline: Instant) {
    let mut pause = Duration::from_micros(10);
    while Arc::strong_count(&m) > 1 {
        if Instant::now() >= deadline {
            tracing::warn!(
                "DMA unmap: mapping still in use after timeout; it is unmapped when released"
            );
            return;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(1));
    }
}

impl GuestMemory for GuestRam {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        let t = self.snapshot();
        let pieces = t.pieces(addr, buf.len() as u64, false)?;
        let mut done = 0usize;
        for (m, off, n) in pieces {
            if !m.read(off, &mut buf[done..done + n]) {
                return Err(DmaError {
                    addr,
                    len: buf.len() as u64,
                });
            }
            done += n;
        }
        Ok(())
    }

    fn write(&self, addr: u64, data: &[u8]) -> Result<(), DmaError> {
        let t = self.snapshot();
        let pieces = t.pieces(addr, data.len() as u64, true)?;
        let mut done = 0usize;
        for (m, off, n) in pieces {
            if !m.write(off, &data[done..done + n]) {
                return Err(DmaError {
                    addr,
                    len: data.len() as u64,
                });
            }
            done += n;
        }
        Ok(())
    }

    fn with_slices(
        &self,
        ranges: &[(u64, u64)],
        for_write: bool,
        f: &mut dyn FnMut(&mut [IoSliceMut<'_>]) -> std::io::Result<()>,
    ) -> Result<std::io::Result<()>, DmaError> {
        let t = self.snapshot();
        let mut pieces = Vec::with_capacity(ranges.len());
        for &(addr, len) in ranges {
            pieces.extend(t.pieces(addr, len, for_write)?);
        }
        if overlapping(&pieces) {
            return bounce(self, ranges, for_write, f);
        }
        let r =
            lend(pieces.iter().map(|&(m, off, n)| (&**m, off, n)), f).map_err(|_| DmaError {
                addr: ranges.first().map_or(0, |r| r.0),
                len: ranges.iter().map(|r| r.1).sum(),
            })?;
        drop(t);
        Ok(r)
    }

    fn pin(
        &self,
        ranges: &[(u64, u64)],
        for_write: bool,
    ) -> Result<Option<Box<dyn PinnedBuffers>>, DmaError> {
        let t = self.snapshot();
        let mut groups = Vec::with_capacity(ranges.len());
        let mut all = Vec::with_capacity(ranges.len());
        for &(addr, len) in ranges {
            let p = t.pieces(addr, len, for_write)?;
            groups.push(
                p.iter()
                    .map(|&(m, off, n)| (Arc::clone(m), off, n))
                    .collect::<Vec<_>>(),
            );
            all.extend(p);
        }
        let bounce = if overlapping(&all) {
            let mut bufs = Vec::with_capacity(ranges.len());
            for &(addr, len) in ranges {
                let mut b = vec![0u8; usize::try_from(len).map_err(|_| DmaError { addr, len })?];
                if !for_write {
                    self.read(addr, &mut b)?;
                }
                bufs.push(b);
            }
            Some(bufs)
        } else {
            None
        };
        Ok(Some(Box::new(Pinned {
            groups,
            bounce,
            for_write,
        })))
    }
}

/// Hand `f` mutable slices of the pieces `(mapping, offset, len)`, in order. Fails (without
/// calling `f`) if a piece is out of its mapping's bounds.
///
/// The caller guarantees what makes the slices sound: the pieces are pairwise disjoint,
/// every mapping stays alive for the call, and read-only mappings are only passed when `f`
/// only reads (a device-to-guest transfer asks for writable pieces).
fn lend<'a>(
    pieces: impl Iterator<Item = (&'a SharedMapping, u64, usize)>,
    f: &mut dyn FnMut(&mut [IoSliceMut<'_>]) -> std::io::Result<()>,
) -> std::io::Result<std::io::Result<()>> {
    let mut slices = Vec::with_capacity(2);
    for (m, off, n) in pieces {
        // SAFETY: the pieces are pairwise disjoint (the caller checked), so the slices do
        // not alias each other; nothing else in this process references guest RAM (every
        // other access is a copy into a distinct buffer); the slices live only inside this
        // call, while the caller keeps every mapping alive. Read-only mappings are only lent
        // for guest-to-device transfers, where `f` only reads (trait contract).
        let s = unsafe { m.slice_mut(off, n) }
            .ok_or_else(|| std::io::Error::other("guest range outside its mapping"))?;
        slices.push(IoSliceMut::new(s));
    }
    Ok(f(&mut slices))
}

/// Guest buffers pinned for a transfer finishing on an I/O thread ([`GuestMemory::pin`]).
/// It holds the mappings it uses, so a DMA_UNMAP waits for it (as for any in-flight access)
/// and the memory stays mapped until it is dropped.
struct Pinned {
    /// Per guest range, its `(mapping, offset, len)` pieces.
    groups: Vec<Vec<(Arc<SharedMapping>, u64, usize)>>,
    /// Bounce buffers (one per range) when ranges overlap: filled at pin time for
    /// guest-to-device transfers, copied to the guest after device-to-guest ones.
    bounce: Option<Vec<Vec<u8>>>,
    /// Device-to-guest transfer (the pieces were checked writable).
    for_write: bool,
}

impl PinnedBuffers for Pinned {
    fn with(
        &mut self,
        f: &mut dyn FnMut(&mut [IoSliceMut<'_>]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let Some(bufs) = &mut self.bounce else {
            // Disjoint pieces (checked at pin time), mappings held by `self`.
            let pieces = self.groups.iter().flatten();
            return lend(pieces.map(|(m, off, n)| (&**m, *off, *n)), f)?;
        };
        let r = {
            let mut slices: Vec<IoSliceMut<'_>> =
                bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            f(&mut slices)
        };
        if self.for_write && r.is_ok() {
            for (pieces, b) in self.groups.iter().zip(bufs.iter()) {
                let mut done = 0usize;
                for (m, off, n) in pieces {
                    if !m.write(*off, &b[done..done + n]) {
                        return Err(std::io::Error::other("guest range outside its mapping"));
                    }
                    done += n;
                }
            }
        }
        r
    }
}

/// Whether any two pieces share host bytes (same mapping and overlapping offsets).
fn overlapping(pieces: &[Piece<'_>]) -> bool {
    if pieces.len() < 2 {
        return false;
    }
    let mut v: Vec<(usize, u64, u64)> = pieces
        .iter()
        .map(|&(m, off, n)| (Arc::as_ptr(m) as usize, off, off + n as u64))
        .collect();
    v.sort_unstable();
    v.windows(2).any(|w| w[0].0 == w[1].0 && w[1].1 < w[0].2)
}

/// Slow path for overlapping ranges (a guest PRP list naming the same page twice): go through
/// a bounce buffer so no two live slices alias.
fn bounce(
    mem: &GuestRam,
    ranges: &[(u64, u64)],
    for_write: bool,
    f: &mut dyn FnMut(&mut [IoSliceMut<'_>]) -> std::io::Result<()>,
) -> Result<std::io::Result<()>, DmaError> {
    let mut bufs: Vec<Vec<u8>> = Vec::with_capacity(ranges.len());
    for &(addr, len) in ranges {
        let n = usize::try_from(len).map_err(|_| DmaError { addr, len })?;
        let mut b = vec![0u8; n];
        if !for_write {
            mem.read(addr, &mut b)?;
        }
        bufs.push(b);
    }
    let r = {
        let mut slices: Vec<IoSliceMut<'_>> = bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        f(&mut slices)
    };
    if for_write && r.is_ok() {
        for (&(addr, _), b) in ranges.iter().zip(&bufs) {
            mem.write(addr, b)?;
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;

    fn memfd(size: u64) -> OwnedFd {
        let (fd, _m) = memfd_mapping(c"test", size).unwrap();
        fd
    }

    #[test]
    fn read_write_through_map_at_offset() {
        let fd = memfd(0x4000);
        let ram = GuestRam::new();
        ram.map(0x10000, 0x2000, 0x1000, Some(&fd), true).unwrap();
        ram.write(0x10ff0, &[1; 0x20]).unwrap();
        let mut b = [0u8; 0x20];
        ram.read(0x10ff0, &mut b).unwrap();
        assert_eq!(b, [1; 0x20]);
        // Same bytes seen through the file at offset 0x1000 + 0xff0.
        let view = SharedMapping::new(&fd, 0, 0x4000, false).unwrap();
        let mut c = [0u8; 4];
        assert!(view.read(0x1ff0, &mut c));
        assert_eq!(c, [1; 4]);
        assert!(
            ram.read(0x11ff0, &mut b).is_err(),
            "crosses the end of the map"
        );
        assert!(ram.read(0xfff0, &mut b).is_err(), "starts before the map");
    }

    #[test]
    fn access_across_adjacent_maps() {
        let fd = memfd(0x4000);
        let ram = GuestRam::new();
        ram.map(0, 0x1000, 0, Some(&fd), true).unwrap();
        ram.map(0x1000, 0x1000, 0x1000, Some(&fd), true).unwrap();
        let data: Vec<u8> = (0..64u8).collect();
        ram.write(0xfe0, &data).unwrap();
        let mut b = vec![0; 64];
        ram.read(0xfe0, &mut b).unwrap();
        assert_eq!(b, data);
    }

    #[test]
    fn fdless_and_readonly_maps_fail() {
        let fd = memfd(0x2000);
        let ram = GuestRam::new();
        ram.map(0x0, 0x1000, 0, None::<&OwnedFd>, true).unwrap();
        ram.map(0x1000, 0x1000, 0, Some(&fd), false).unwrap();
        let mut b = [0u8; 8];
        assert_eq!(ram.read(0x10, &mut b), Err(DmaError { addr: 0x10, len: 8 }));
        ram.read(0x1010, &mut b).unwrap();
        assert!(ram.write(0x1010, &b).is_err());
    }

    #[test]
    fn overlap_refused_and_unmap() {
        let fd = memfd(0x2000);
        let ram = GuestRam::new();
        ram.map(0x1000, 0x1000, 0, Some(&fd), true).unwrap();
        assert!(matches!(
            ram.map(0x1800, 0x1000, 0, Some(&fd), true),
            Err(MapError::Overlap { .. })
        ));
        assert_eq!(ram.unmap(0x1000, 0x1000, false), 1);
        assert_eq!(ram.snapshot().entries().len(), 0);
        ram.map(0x1000, 0x1000, 0, Some(&fd), true).unwrap();
        ram.map(0x3000, 0x1000, 0, None::<&OwnedFd>, true).unwrap();
        assert_eq!(ram.clear(), 2);
    }

    #[test]
    fn unmap_waits_for_users() {
        let fd = memfd(0x1000);
        let ram = Arc::new(GuestRam::new());
        ram.map(0, 0x1000, 0, Some(&fd), true).unwrap();
        let snap = ram.snapshot();
        let r2 = Arc::clone(&ram);
        let t0 = Instant::now();
        let h = std::thread::spawn(move || r2.unmap(0, 0x1000, false));
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !h.is_finished(),
            "unmap returned while a snapshot still used the map"
        );
        drop(snap);
        assert_eq!(h.join().unwrap(), 1);
        assert!(t0.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    fn pinned_buffers_outlive_the_call_and_hold_the_mapping() {
        let fd = memfd(0x3000);
        let ram = GuestRam::new();
        ram.map(0, 0x3000, 0, Some(&fd), true).unwrap();
        ram.write(0x2000, &[5; 8]).unwrap();
        // Guest to device: the bytes are seen when the transfer runs, on another thread.
        let mut out = ram.pin(&[(0x2000, 8)], false).unwrap().unwrap();
        // Device to guest over two disjoint ranges.
        let mut into = ram.pin(&[(0x10, 4), (0x1000, 4)], true).unwrap().unwrap();
        let t = std::thread::spawn(move || {
            let mut seen = Vec::new();
            out.with(&mut |s| {
                seen.extend_from_slice(&s[0]);
                Ok(())
            })
            .unwrap();
            into.with(&mut |s| {
                s[0].copy_from_slice(&[1, 2, 3, 4]);
                s[1].copy_from_slice(&[5, 6, 7, 8]);
                Ok(())
            })
            .unwrap();
            (seen, into)
        });
        let (seen, into) = t.join().unwrap();
        assert_eq!(seen, vec![5; 8]);
        let mut b = [0u8; 4];
        ram.read(0x1000, &mut b).unwrap();
        assert_eq!(b, [5, 6, 7, 8]);
        // An unmap waits for the pinned buffers: release them from another thread later.
        let released = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let r = Arc::clone(&released);
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            r.store(true, Ordering::Release);
            drop(into);
        });
        assert_eq!(ram.clear(), 1);
        assert!(
            released.load(Ordering::Acquire),
            "DMA unmap returned while buffers were pinned"
        );
        release.join().unwrap();
        // Nothing mapped: pinning fails like any access.
        assert!(ram.pin(&[(0x10, 4)], true).is_err());
    }

    #[test]
    fn pinned_overlapping_ranges_go_through_bounce_buffers() {
        let fd = memfd(0x2000);
        let ram = GuestRam::new();
        ram.map(0, 0x2000, 0, Some(&fd), true).unwrap();
        let mut p = ram.pin(&[(0x10, 4), (0x10, 4)], true).unwrap().unwrap();
        p.with(&mut |s| {
            s[0].copy_from_slice(&[9; 4]);
            s[1].copy_from_slice(&[7; 4]);
            Ok(())
        })
        .unwrap();
        let mut b = [0u8; 4];
        ram.read(0x10, &mut b).unwrap();
        assert_eq!(b, [7; 4], "last range wins, as with_slices");
        // Read-only map: refused for a device-to-guest transfer, fine the other way.
        let ro = memfd(0x1000);
        ram.map(0x10000, 0x1000, 0, Some(&ro), false).unwrap();
        assert!(ram.pin(&[(0x10000, 8)], true).is_err());
        assert!(ram.pin(&[(0x10000, 8)], false).unwrap().is_some());
    }

    #[test]
    fn with_slices_direct_and_bounced() {
        let fd = memfd(0x2000);
        let ram = GuestRam::new();
        ram.map(0, 0x2000, 0, Some(&fd), true).unwrap();
        let r = ram
            .with_slices(&[(0x10, 4), (0x1000, 4)], true, &mut |s| {
                s[0].copy_from_slice(&[1, 2, 3, 4]);
                s[1].copy_from_slice(&[5, 6, 7, 8]);
                Ok(())
            })
            .unwrap();
        r.unwrap();
        let mut b = [0u8; 4];
        ram.read(0x1000, &mut b).unwrap();
        assert_eq!(b, [5, 6, 7, 8]);
        // Same page twice: goes through the bounce buffer, last write wins.
        ram.with_slices(&[(0x10, 4), (0x10, 4)], true, &mut |s| {
            s[0].copy_from_slice(&[9; 4]);
            s[1].copy_from_slice(&[7; 4]);
            Ok(())
        })
        .unwrap()
        .unwrap();
        ram.read(0x10, &mut b).unwrap();
        assert_eq!(b, [7; 4]);
        assert!(ram
            .with_slices(&[(0x3000, 1)], false, &mut |_| Ok(()))
            .is_err());
    }

    #[test]
    fn map_beyond_file_end_refused() {
        let fd = memfd(0x2000);
        let ram = GuestRam::new();
        assert!(matches!(
            ram.map(0, 0x2000, 0x1000, Some(&fd), true),
            Err(MapError::BeyondFile { .. })
        ));
        ram.map(0, 0x1000, 0x1000, Some(&fd), true).unwrap();
    }

    #[test]
    fn doorbell_atomics() {
        let (_fd, m) = memfd_mapping(c"db", 0x1000).unwrap();
        m.store_u32_release(8, 7);
        assert_eq!(m.load_u32_acquire(8), 7);
        assert_eq!(m.load_u32_acquire(9), 0, "misaligned");
        assert_eq!(m.load_u32_acquire(0x1000), 0, "out of bounds");
    }
}
