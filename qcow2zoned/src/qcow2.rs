//! A plain (non-zoned) qcow2 v3 image: random read/write, zeroes, discard, flush.
//!
//! Used for interoperability with images made by `qemu-img`, and as the model of what the
//! zoned layer adds (zone rules and the write-pointer words).

use crate::create::write_new_image;
use crate::dataio::{read_segments, total_len, total_len_mut, write_extents};
use crate::image::{CacheMode, Error, ImgResult, OpenOptions};
use crate::meta::{write_back, Meta, Plan};
use crate::storage::{FileStorage, Storage};
use std::io::{IoSlice, IoSliceMut};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// An open plain qcow2 v3 image (no backing file, compression, encryption, snapshots).
pub struct Qcow2 {
    st: Arc<dyn Storage>,
    meta: Mutex<Meta>,
    cond: Condvar,
    persist: Mutex<()>,
    zeros: Box<[u8]>,
    size: u64,
    cluster_size: u64,
    cache: CacheMode,
    read_only: bool,
    closed: AtomicBool,
}

impl std::fmt::Debug for Qcow2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2")
            .field("size", &self.size)
            .field("cluster_size", &self.cluster_size)
            .finish_non_exhaustive()
    }
}

impl Qcow2 {
    /// Create a plain qcow2 v3 image (16-bit refcounts) at `path`; fails if it exists.
    pub fn create(path: &Path, size: u64, cluster_size: u64) -> ImgResult<()> {
        if !cluster_size.is_power_of_two() || !(512..=(2 << 20)).contains(&cluster_size) {
            return Err(Error::Invalid(format!(
                "cluster_size {cluster_size} must be a power of two between 512 and 2097152"
            )));
        }
        let st = FileStorage::create_new(path).map_err(|source| Error::Io {
            context: format!("creating {}", path.display()),
            source,
        })?;
        let r = write_new_image(&st, size, cluster_size.trailing_zeros(), None);
        if r.is_err() {
            let _ = std::fs::remove_file(path);
        }
        r
    }

    /// Open the image at `path`.
    pub fn open(path: &Path, opts: OpenOptions) -> ImgResult<Qcow2> {
        let st =
            FileStorage::open(path, opts.read_only, opts.direct).map_err(|source| Error::Io {
                context: format!("opening {}", path.display()),
                source,
            })?;
        Self::open_with(Arc::new(st), opts)
    }

    /// Open an image held by any [`Storage`].
    pub fn open_with(storage: Arc<dyn Storage>, opts: OpenOptions) -> ImgResult<Qcow2> {
        let mut meta = Meta::load(&*storage, opts.read_only, false)?;
        if !opts.read_only && meta.header.raw.autoclear_features.get() != 0 {
            // We do not maintain bitmaps: clearing the autoclear bits marks them stale.
            meta.header.raw.autoclear_features = 0.into();
            meta.write_header(&*storage)?;
            storage.sync_data().map_err(io_err("syncing the header"))?;
        }
        let cs = meta.cs;
        Ok(Qcow2 {
            size: meta.size,
            cluster_size: cs,
            meta: Mutex::new(meta),
            st: storage,
            cond: Condvar::new(),
            persist: Mutex::new(()),
            zeros: vec![0u8; cs as usize].into_boxed_slice(),
            cache: opts.cache,
            read_only: opts.read_only,
            closed: AtomicBool::new(false),
        })
    }

    /// Virtual size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        self.cluster_size
    }

    fn lock(&self) -> MutexGuard<'_, Meta> {
        self.meta.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, g: MutexGuard<'a, Meta>) -> MutexGuard<'a, Meta> {
        self.cond.wait(g).unwrap_or_else(|e| e.into_inner())
    }

    fn check_range(&self, offset: u64, len: u64) -> ImgResult<()> {
        match offset.checked_add(len) {
            Some(e) if e <= self.size => Ok(()),
            _ => Err(Error::Invalid(format!(
                "range 0x{offset:x}+{len} beyond the virtual size {}",
                self.size
            ))),
        }
    }

    /// Read at `offset` into `bufs`.
    pub fn read(&self, offset: u64, bufs: &mut [IoSliceMut<'_>]) -> ImgResult<()> {
        let len = total_len_mut(bufs);
        self.check_range(offset, len)?;
        let mut g = self.lock();
        let segs = loop {
            let mut segs = Vec::new();
            match g.plan_read(&*self.st, offset, len, &mut segs)? {
                Plan::Ready(()) => break segs,
                Plan::Wait => g = self.wait(g),
            }
        };
        let seq = g.begin_io();
        drop(g);
        let r = read_segments(&*self.st, &segs, bufs);
        self.lock().end_io(seq);
        r.map_err(|source| Error::Io {
            context: format!("reading {len} bytes at 0x{offset:x}"),
            source,
        })
    }

    /// Read into one buffer.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> ImgResult<()> {
        self.read(offset, &mut [IoSliceMut::new(buf)])
    }

    /// Write `bufs` at `offset`.
    pub fn write(&self, offset: u64, bufs: &[IoSlice<'_>]) -> ImgResult<()> {
        let len = total_len(bufs);
        self.check_range(offset, len)?;
        let mut g = self.lock();
        let plan = loop {
            match g.plan_write(&*self.st, offset, len)? {
                Plan::Ready(p) => break p,
                Plan::Wait => g = self.wait(g),
            }
        };
        drop(g);
        let res = write_extents(&*self.st, &self.zeros, &plan.extents, bufs);
        let fin = self.lock().finish_write(&*self.st, plan, res.is_ok());
        // Cheap enough here: the plain image is for tools and tests.
        self.cond.notify_all();
        res.map_err(|source| Error::Io {
            context: format!("writing {len} bytes at 0x{offset:x}"),
            source,
        })?;
        fin?;
        if self.cache == CacheMode::WriteThrough {
            self.flush()?;
        }
        Ok(())
    }

    /// Write one buffer.
    pub fn write_at(&self, offset: u64, buf: &[u8]) -> ImgResult<()> {
        self.write(offset, &[IoSlice::new(buf)])
    }

    fn zero(&self, offset: u64, len: u64, discard: bool) -> ImgResult<()> {
        self.check_range(offset, len)?;
        let mut g = self.lock();
        loop {
            match g.zero_range(&*self.st, &self.zeros, offset, len, discard)? {
                Plan::Ready(()) => break,
                Plan::Wait => g = self.wait(g),
            }
        }
        drop(g);
        if self.cache == CacheMode::WriteThrough {
            self.flush()?;
        }
        Ok(())
    }

    /// Make `[offset, offset+len)` read as zeros (whole clusters become zero clusters).
    pub fn write_zeroes(&self, offset: u64, len: u64) -> ImgResult<()> {
        self.zero(offset, len, false)
    }

    /// Deallocate `[offset, offset+len)` (whole clusters are unmapped and freed; partial
    /// clusters are zeroed). Reads return zeros afterwards.
    pub fn discard(&self, offset: u64, len: u64) -> ImgResult<()> {
        self.zero(offset, len, true)
    }

    /// Make all completed writes durable.
    pub fn flush(&self) -> ImgResult<()> {
        if self.read_only {
            return Ok(());
        }
        let _p = self.persist.lock().unwrap_or_else(|e| e.into_inner());
        let snap = {
            let mut g = self.lock();
            if g.failed {
                return Err(Error::Io {
                    context: "an earlier metadata write-back failed; reopen the image".into(),
                    source: std::io::Error::other("image metadata poisoned"),
                });
            }
            g.take_dirty()
        };
        let mut release = |f: &[(u64, u64)]| self.lock().release(&*self.st, f);
        let r = write_back(&*self.st, snap, &mut release, &[]);
        if r.is_err() {
            let mut g = self.lock();
            g.failed = true;
        }
        r
    }

    /// Flush and close.
    pub fn close(self) -> ImgResult<()> {
        let r = self.flush();
        self.closed.store(true, Ordering::SeqCst);
        r
    }
}

impl Drop for Qcow2 {
    fn drop(&mut self) {
        if !self.read_only && !self.closed.load(Ordering::SeqCst) {
            if let Err(e) = self.flush() {
                tracing::error!(error = %e, "flush on drop failed");
            }
        }
    }
}
