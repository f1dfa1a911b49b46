//! A read-only shared mapping of the image file.
//!
//! A 4 KiB read of data in the host page cache through `pread` costs a system call, a
//! page-cache lookup and the copy; through a `MAP_SHARED` mapping of the file it is the copy
//! alone once the page is mapped (about 2.5x fewer CPU cycles per read on the machines we
//! measured). Writes keep going through `pwrite`: the page cache is shared, so the mapping
//! sees them at once, and the write ordering the durability contract depends on stays with
//! explicit system calls.
//!
//! This is the only module of the crate with `unsafe` code.
//!
//! # Layout
//! Each [`FileMap`] reserves [`RESERVE`] bytes of address space (`PROT_NONE`, no memory
//! behind it) and maps the file over the front of it, up to the file's length rounded down
//! to a page. A read that ends beyond the mapped part first extends the mapping to the
//! file's current length, under the map's mutex; what is still beyond goes back to the
//! caller, which uses `pread`.
//!
//! # Faults
//! Touching a mapped page can raise `SIGBUS` where `pread` returns an error: an I/O error
//! while the kernel reads the page in, or a page beyond the end of a file someone else
//! truncated. A process-wide handler turns that into a fallback:
//! * when the faulting address lies in one of our maps, it replaces that page with a private
//!   zero page (`mmap(MAP_FIXED)` is a plain system call, safe in a signal handler), counts
//!   the fault in [`FAULTS`] and in the thread's own counter and in [`POISONED`], and
//!   returns; the copy resumes and reads zeros;
//! * otherwise it restores the handler that was installed before ours and returns, so the
//!   fault repeats and is handled (or kills the process) exactly as without us.
//!
//! A read whose copy faulted, or that ran while any page was replaced ([`POISONED`] > 0) or
//! while a fault happened anywhere ([`FAULTS`] moved), reports failure and the caller
//! repeats it with `pread`, which returns the real bytes or the real error. So no read ever
//! returns the stand-in zeros. The faulting reader then maps the file back over its range
//! and lowers [`POISONED`].
//!
//! # Soundness
//! Every `unsafe` block here relies on the same facts:
//! * the reservation is created by a successful `mmap` of [`RESERVE`] bytes and unmapped
//!   only in `Drop`, after the map left the handler's table; every address we form is
//!   checked to lie inside it;
//! * file pages are only ever mapped below `mapped`, which never exceeds the file length we
//!   read under the mutex, and the only access to them is `ptr::copy_nonoverlapping` into the
//!   caller's `&mut [u8]` (any bit pattern is a valid `u8`; no reference into the mapping
//!   is ever created, because other writers, `pwrite` from any thread or process, change the
//!   bytes underneath);
//! * the signal handler touches only atomics, a `const`-initialised thread-local `Cell`
//!   without destructor, and async-signal-safe system calls (`mmap`, `sigaction`).

use std::cell::Cell;
use std::ffi::c_void;
use std::fs::File;
use std::io::{self, IoSliceMut};
use std::num::NonZeroUsize;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Mutex, OnceLock};

use nix::sys::mman::{mmap, mmap_anonymous, munmap, MapFlags, ProtFlags};

/// Address space reserved per image: 1 TiB. Host offsets above it are read with `pread`.
pub const RESERVE: usize = 1 << 40;

/// How many maps may exist at once in the process; later ones fall back to `pread`.
const SLOTS: usize = 64;

/// The handler's table of live maps: start address and length (0 = free slot).
static BASES: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
static LENS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];

/// Pages currently replaced by the handler's zero page (in any map).
static POISONED: AtomicUsize = AtomicUsize::new(0);
/// Faults handled since start; a read that saw it move retries with `pread`.
static FAULTS: AtomicU64 = AtomicU64::new(0);
/// Page size, set once when the handler is installed.
static PAGE: AtomicUsize = AtomicUsize::new(4096);
/// The `SIGBUS` action installed before ours (`None`: installation failed).
static PREVIOUS: OnceLock<Option<libc::sigaction>> = OnceLock::new();

thread_local! {
    /// Faults this thread took in our maps during its current copy.
    static MY_FAULTS: Cell<usize> = const { Cell::new(0) };
}

/// `SIGBUS` handler; see the module documentation.
extern "C" fn on_sigbus(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut c_void) {
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    let page = PAGE.load(SeqCst);
    for i in 0..SLOTS {
        let (base, len) = (BASES[i].load(SeqCst), LENS[i].load(SeqCst));
        if base == 0 || addr < base || addr - base >= len {
            continue;
        }
        let at = addr & !(page - 1);
        POISONED.fetch_add(1, SeqCst);
        FAULTS.fetch_add(1, SeqCst);
        // SAFETY: `at` is a page inside our own reservation (checked above); replacing it
        // with an anonymous read-only page affects nothing outside the map.
        let p = unsafe {
            libc::mmap(
                at as *mut c_void,
                page,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED {
            MY_FAULTS.with(|c| c.set(c.get() + 1));
            return;
        }
        POISONED.fetch_sub(1, SeqCst);
        break;
    }
    // Not ours, or the page could not be replaced: hand the signal back to the previous
    // action; returning repeats the faulting access under it.
    if let Some(Some(prev)) = PREVIOUS.get() {
        // SAFETY: `prev` is the action the kernel returned when we installed ours.
        unsafe { libc::sigaction(libc::SIGBUS, prev, ptr::null_mut()) };
    } else {
        // SAFETY: resetting to the default action is always valid.
        unsafe { libc::signal(libc::SIGBUS, libc::SIG_DFL) };
    }
}

/// Install the handler once per process; false if that failed.
fn install_handler() -> bool {
    PREVIOUS
        .get_or_init(|| {
            // SAFETY: sysconf only reads a system constant.
            let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
            if p > 0 {
                PAGE.store(p as usize, SeqCst);
            }
            // SAFETY: a zeroed sigaction is a valid value to fill in; the handler has the
            // SA_SIGINFO signature and is async-signal-safe (module documentation).
            unsafe {
                let mut act: libc::sigaction = std::mem::zeroed();
                act.sa_sigaction = on_sigbus as *const () as usize;
                act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                libc::sigemptyset(&mut act.sa_mask);
                let mut prev: libc::sigaction = std::mem::zeroed();
                (libc::sigaction(libc::SIGBUS, &act, &mut prev) == 0).then_some(prev)
            }
        })
        .is_some()
}

/// A read-only mapping of one image file (see the module documentation).
#[derive(Debug)]
pub struct FileMap {
    base: NonNull<c_void>,
    slot: usize,
    /// Bytes of the file mapped at `base` (a page multiple, at most the file length).
    mapped: AtomicUsize,
    /// Serialises changes to the mapping.
    change: Mutex<()>,
}

// SAFETY: the map is a region of address space plus atomics and a mutex; all access to its
// bytes is by copy (module documentation), from any thread.
unsafe impl Send for FileMap {}
// SAFETY: as for Send; shared use only copies out and changes the mapping under `change`.
unsafe impl Sync for FileMap {}

impl FileMap {
    /// Map `file` for reading; `None` when the process cannot (no address space, no free
    /// slot, no handler), in which case every read goes through `pread`.
    pub fn new(file: &File) -> Option<FileMap> {
        if !install_handler() {
            return None;
        }
        let len = NonZeroUsize::new(RESERVE)?;
        // SAFETY: a fresh anonymous reservation at an address of the kernel's choosing
        // aliases nothing.
        let base = unsafe {
            mmap_anonymous(
                None,
                len,
                ProtFlags::PROT_NONE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_NORESERVE,
            )
        }
        .map_err(|e| tracing::debug!("no read mapping of the image file: {e}"))
        .ok()?;
        let slot = (0..SLOTS).find(|&i| {
            BASES[i]
                .compare_exchange(0, base.as_ptr() as usize, SeqCst, SeqCst)
                .is_ok()
        });
        let Some(slot) = slot else {
            // SAFETY: the reservation was made above and nothing refers to it.
            let _ = unsafe { munmap(base, RESERVE) };
            tracing::debug!("no read mapping of the image file: {SLOTS} maps exist already");
            return None;
        };
        LENS[slot].store(RESERVE, SeqCst);
        let map = FileMap {
            base,
            slot,
            mapped: AtomicUsize::new(0),
            change: Mutex::new(()),
        };
        if let Err(e) = map.extend(file) {
            tracing::debug!("no read mapping of the image file: {e}");
            return None;
        }
        Some(map)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.change.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn page(&self) -> usize {
        PAGE.load(SeqCst)
    }

    /// Map the file up to its current length; returns the mapped length.
    fn extend(&self, file: &File) -> io::Result<usize> {
        let _g = self.lock();
        let len = usize::try_from(file.metadata()?.len()).unwrap_or(usize::MAX);
        let want = (len & !(self.page() - 1)).min(RESERVE);
        let cur = self.mapped.load(SeqCst);
        if want > cur {
            self.map_file(file, cur, want - cur)?;
            self.mapped.store(want, SeqCst);
        }
        Ok(want.max(cur))
    }

    /// Map file bytes `[off, off+len)` at the same offset of the reservation (page aligned,
    /// inside it; the caller holds the mutex).
    fn map_file(&self, file: &File, off: usize, len: usize) -> io::Result<()> {
        let (Some(n), Ok(foff)) = (NonZeroUsize::new(len), libc::off_t::try_from(off)) else {
            return Ok(());
        };
        let at = NonZeroUsize::new(self.base.as_ptr() as usize + off);
        // SAFETY: `[off, off+len)` lies in our reservation (callers keep below RESERVE) and
        // MAP_FIXED only replaces pages of that reservation.
        unsafe {
            mmap(
                at,
                n,
                ProtFlags::PROT_READ,
                MapFlags::MAP_SHARED | MapFlags::MAP_FIXED,
                file,
                foff,
            )
        }?;
        Ok(())
    }

    /// The file is about to shrink to `len`: stop reading beyond it through the map.
    pub fn shrink(&self, len: u64) {
        let _g = self.lock();
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        let want = len & !(self.page() - 1);
        if want < self.mapped.load(SeqCst) {
            self.mapped.store(want, SeqCst);
        }
    }

    /// Copy file bytes at `offset` into `bufs`. `None` when the range is not mapped or the
    /// copy met a fault: the caller then reads with `pread`.
    pub fn read(&self, file: &File, bufs: &mut [IoSliceMut<'_>], offset: u64) -> Option<usize> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(total)?;
        if end > RESERVE {
            return None;
        }
        if end > self.mapped.load(SeqCst) && self.extend(file).ok()? < end {
            return None;
        }
        let faults = FAULTS.load(SeqCst);
        if POISONED.load(SeqCst) != 0 {
            return None;
        }
        MY_FAULTS.with(|c| c.set(0));
        let mut src = self.base.as_ptr() as usize + start;
        for b in bufs.iter_mut() {
            // SAFETY: `[src, src+len)` lies inside `[base+start, base+end)`, which is mapped
            // from the file (end <= mapped) and stays mapped while `self` lives; the
            // destination is a distinct `&mut [u8]` of exactly that length.
            unsafe { ptr::copy_nonoverlapping(src as *const u8, b.as_mut_ptr(), b.len()) };
            src += b.len();
        }
        let mine = MY_FAULTS.with(|c| c.replace(0));
        if mine != 0 {
            self.restore(file, start, end, mine);
            return None;
        }
        (FAULTS.load(SeqCst) == faults).then_some(total)
    }

    /// Put the file back over `[start, end)` after this thread's copy there faulted `n`
    /// times, then lower the poison count.
    fn restore(&self, file: &File, start: usize, end: usize, n: usize) {
        let _g = self.lock();
        let page = self.page();
        if let Ok(md) = file.metadata() {
            // A file cut short by someone else: stop mapping what is gone.
            let len = usize::try_from(md.len()).unwrap_or(usize::MAX) & !(page - 1);
            if len < self.mapped.load(SeqCst) {
                self.mapped.store(len, SeqCst);
            }
        }
        let lo = start & !(page - 1);
        let hi = end.div_ceil(page) * page;
        let mapped = self.mapped.load(SeqCst);
        let file_hi = hi.min(mapped).max(lo);
        if let Err(e) = self.map_file(file, lo, file_hi - lo) {
            // The zero pages stay; keep them poisoned so the map is no longer trusted.
            tracing::warn!("image read mapping could not be restored: {e}; reading with pread");
            return;
        }
        if hi > file_hi {
            // Beyond the file's end (it shrank): back to inaccessible reservation.
            let at = NonZeroUsize::new(self.base.as_ptr() as usize + file_hi);
            if let Some(len) = NonZeroUsize::new(hi - file_hi) {
                // SAFETY: inside our reservation, as above.
                let r = unsafe {
                    mmap_anonymous(
                        at,
                        len,
                        ProtFlags::PROT_NONE,
                        MapFlags::MAP_PRIVATE | MapFlags::MAP_NORESERVE | MapFlags::MAP_FIXED,
                    )
                };
                if let Err(e) = r {
                    tracing::warn!("image read mapping: {e}; reading with pread");
                    return;
                }
            }
        }
        POISONED.fetch_sub(n, SeqCst);
        tracing::warn!(
            "image file: {n} page fault(s) reading host bytes 0x{start:x}..0x{end:x} through the \
             mapping (I/O error or truncated file); the read was repeated with pread"
        );
    }
}

impl Drop for FileMap {
    fn drop(&mut self) {
        LENS[self.slot].store(0, SeqCst);
        BASES[self.slot].store(0, SeqCst);
        // SAFETY: the reservation was made in `new` and no copy can be running (`&mut self`).
        let _ = unsafe { munmap(self.base, RESERVE) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A fault anywhere makes concurrent map reads fall back, so these tests run one at a time.
    static SERIAL: Mutex<()> = Mutex::new(());

    fn file_with(bytes: &[u8]) -> (tempfile::TempDir, File) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        (d, f)
    }

    fn read(m: &FileMap, f: &File, off: u64, len: usize) -> Option<Vec<u8>> {
        let mut v = vec![0xeeu8; len];
        let (a, b) = v.split_at_mut(len / 3);
        let n = m.read(f, &mut [IoSliceMut::new(a), IoSliceMut::new(b)], off)?;
        assert_eq!(n, len);
        Some(v)
    }

    #[test]
    fn reads_what_the_file_holds_and_follows_writes_and_growth() {
        let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        use std::os::unix::fs::FileExt;
        let data: Vec<u8> = (0..3 * 4096u32).map(|i| (i * 7 % 251) as u8).collect();
        let (_d, f) = file_with(&data);
        let m = FileMap::new(&f).unwrap();
        assert_eq!(read(&m, &f, 100, 5000).unwrap(), data[100..5100]);
        // A pwrite is visible through the mapping at once.
        f.write_all_at(&[0xab; 10], 4090).unwrap();
        assert_eq!(read(&m, &f, 4090, 10).unwrap(), vec![0xab; 10]);
        // Growth: the mapping extends on the first read beyond it.
        f.write_all_at(&[0x5a; 8192], 3 * 4096).unwrap();
        assert_eq!(read(&m, &f, 3 * 4096 + 1, 8191).unwrap(), vec![0x5a; 8191]);
        // Beyond the end of the file: not served by the map.
        assert!(read(&m, &f, 5 * 4096 - 10, 20).is_none());
    }

    #[test]
    fn a_truncated_file_gives_a_fallback_not_a_crash() {
        let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let data = vec![0x11u8; 8 * 4096];
        let (_d, f) = file_with(&data);
        let m = FileMap::new(&f).unwrap();
        assert_eq!(read(&m, &f, 0, 8 * 4096).unwrap(), data);
        // Someone else cuts the file: the mapped pages beyond the new end now raise SIGBUS.
        f.set_len(2 * 4096).unwrap();
        assert!(read(&m, &f, 4 * 4096, 4096).is_none());
        assert_eq!(POISONED.load(SeqCst), 0, "the zero page was put back");
        // Pages still inside the file read as before, through the map.
        assert_eq!(read(&m, &f, 4096, 4096).unwrap(), vec![0x11; 4096]);
        // And the file growing again is seen.
        f.set_len(8 * 4096).unwrap();
        assert_eq!(read(&m, &f, 4 * 4096, 4096).unwrap(), vec![0; 4096]);
    }
}
