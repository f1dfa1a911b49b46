//! The zoned image: qcow2 storage + zone state machine + persistence ordering.
//!
//! `ZonedImage` is `Send + Sync`: all methods take `&self`, locking internally; data I/O
//! runs outside the metadata lock so several queues can do I/O at once.

use crate::create::{write_new_image, NewZoned};
use crate::dataio::{read_segments, total_len, total_len_mut, write_extents};
use crate::header::ZonedExt;
use crate::meta::{push_zero, read_full, write_back, Meta, Plan, ReadSeg};
use crate::storage::{FileStorage, Storage};
use crate::zone::{
    word, WriteTicket, ZoneAction, ZoneAttrs, ZoneError, ZoneGeometry, ZoneInfo, ZoneSet,
    ZoneState, ZoneType,
};
use std::collections::BTreeSet;
use std::io::{IoSlice, IoSliceMut};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Errors of the zoned image layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Host I/O failed.
    #[error("I/O error: {context}")]
    Io {
        /// What was being done.
        context: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A zone rule refused the request (maps to an exact NVMe status).
    #[error(transparent)]
    Zone(#[from] ZoneError),
    /// The image is malformed: names the field and the value.
    #[error("Invalid image: {0}")]
    Format(String),
    /// A qcow2 feature we refuse (backing file, compression, ...), named.
    #[error("Unsupported qcow2 feature: {0}")]
    Unsupported(String),
    /// Bad argument from the caller (size, option...).
    #[error("Invalid argument: {0}")]
    Invalid(String),
}

/// Result alias of this crate.
pub type ImgResult<T> = std::result::Result<T, Error>;

/// Cache mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// Writes are durable only after `flush` (volatile write cache).
    #[default]
    WriteBack,
    /// Every write/append/zone op is durable when it returns.
    WriteThrough,
}

/// Options for `ZonedImage::open`.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenOptions {
    /// Open read-only.
    pub read_only: bool,
    /// Cache mode.
    pub cache: CacheMode,
    /// O_DIRECT on the image file (bypass the host page cache).
    pub direct: bool,
    /// Zone Reset keeps the zone's host clusters mapped instead of turning them into zero
    /// clusters and freeing them. The zone reads as zeros either way (reads above a write
    /// pointer never look at the mapping, and Finish zeroes what it exposes); the next pass
    /// of writes then overwrites blocks the host file system already has, rather than
    /// allocating them again (with O_DIRECT on ext4 an allocating write also takes the
    /// inode lock exclusively, so writes to new blocks cannot run in parallel). The cost:
    /// the host file keeps the space of reset zones.
    pub keep_clusters_on_reset: bool,
    /// Read data with `pread` only. By default a buffered (not `direct`) image file is also
    /// mapped into memory, and reads of it are a copy from the page cache without a system
    /// call; a fault there (an I/O error, a file cut short by someone else) falls back to
    /// `pread` and its error.
    pub pread_only: bool,
}

/// Zone options at create time (mirrors `-o zone.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZoneOptions {
    /// zone.size, bytes (default 256 MiB).
    pub size: u64,
    /// zone.capacity, bytes (default = size).
    pub capacity: u64,
    /// zone.conventional_zones (default 0).
    pub conventional_zones: u32,
    /// zone.max_open_zones (0 = unlimited).
    pub max_open_zones: u32,
    /// zone.max_active_zones (0 = unlimited).
    pub max_active_zones: u32,
    /// zone.max_append_bytes (default 64 KiB).
    pub max_append_bytes: u32,
    /// zone.zd_extension_size (multiple of 64, <= 16320; 0 = none).
    pub zd_extension_size: u32,
}

/// Create options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreateOptions {
    /// Virtual size, bytes.
    pub size: u64,
    /// Cluster size (512 B .. 2 MiB, power of two; default 64 KiB).
    pub cluster_size: u64,
    /// Zone options.
    pub zone: ZoneOptions,
}

/// Static facts about an open image.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImageInfo {
    /// Virtual size in bytes.
    pub size: u64,
    /// Cluster size in bytes.
    pub cluster_size: u64,
    /// Zone geometry and limits.
    pub geometry: ZoneGeometry,
    /// Largest append payload, bytes.
    pub max_append_bytes: u32,
    /// Zone descriptor extension size, bytes (0 = none).
    pub zd_extension_size: u32,
}

/// Largest zone descriptor extension (255 × 64 bytes, the NVMe ZDES limit).
pub const MAX_ZD_EXTENSION_SIZE: u32 = 16320;

impl Default for ZoneOptions {
    fn default() -> Self {
        ZoneOptions {
            size: 256 << 20,
            capacity: 256 << 20,
            conventional_zones: 0,
            max_open_zones: 0,
            max_active_zones: 0,
            max_append_bytes: 64 << 10,
            zd_extension_size: 0,
        }
    }
}

/// Zone parameters to validate, whichever side they come from.
struct ZoneParams {
    disk_size: u64,
    zone_size: u64,
    capacity: u64,
    conventional: u32,
    max_open: u32,
    max_active: u32,
    max_append: u32,
    zdes: u32,
}

/// Field names as the user sees them: `-o zone.*` at create, extension fields at open.
#[derive(Clone, Copy)]
enum Names {
    Create,
    Image,
}

impl Names {
    fn n(self, create: &'static str, image: &'static str) -> &'static str {
        match self {
            Names::Create => create,
            Names::Image => image,
        }
    }
}

/// Every zone rule; errors name the field and the value.
fn zone_rules(p: &ZoneParams, names: Names) -> Result<ZoneGeometry, String> {
    let zs = names.n("zone.size", "zone_size");
    let cap = names.n("zone.capacity", "zone_capacity");
    let conv = names.n("zone.conventional_zones", "conventional_zones");
    let mo = names.n("zone.max_open_zones", "max_open_zones");
    let ma = names.n("zone.max_active_zones", "max_active_zones");
    let mab = names.n("zone.max_append_bytes", "max_append_bytes");
    let zdes = names.n("zone.zd_extension_size", "zd_extension_size");
    if p.zone_size < 512 || !p.zone_size.is_power_of_two() {
        return Err(format!(
            "{zs} {} must be a power of two and a multiple of 512",
            p.zone_size
        ));
    }
    if p.disk_size == 0 || !p.disk_size.is_multiple_of(p.zone_size) {
        return Err(format!(
            "size {} is not a non-zero multiple of {zs} {}",
            p.disk_size, p.zone_size
        ));
    }
    if p.disk_size > word::WP_MASK {
        return Err(format!(
            "size {} exceeds the {}-byte write pointer range",
            p.disk_size,
            word::WP_MASK
        ));
    }
    let nr = p.disk_size / p.zone_size;
    let nr = u32::try_from(nr).map_err(|_| format!("nr_zones {nr} exceeds 2^32-1"))?;
    if p.capacity == 0 || !p.capacity.is_multiple_of(512) || p.capacity > p.zone_size {
        return Err(format!(
            "{cap} {} must be a non-zero multiple of 512 no larger than {zs} {}",
            p.capacity, p.zone_size
        ));
    }
    if p.conventional >= nr {
        return Err(format!(
            "{conv} {} leaves no sequential zone ({nr} zones)",
            p.conventional
        ));
    }
    let seq = nr - p.conventional;
    if p.max_active > seq {
        return Err(format!(
            "{ma} {} exceeds the {seq} sequential zones",
            p.max_active
        ));
    }
    if p.max_open > seq {
        return Err(format!(
            "{mo} {} exceeds the {seq} sequential zones",
            p.max_open
        ));
    }
    if p.max_active != 0 && p.max_open > p.max_active {
        return Err(format!("{mo} {} exceeds {ma} {}", p.max_open, p.max_active));
    }
    if p.max_append == 0
        || !p.max_append.is_multiple_of(512)
        || u64::from(p.max_append) > p.capacity
    {
        return Err(format!(
            "{mab} {} must be a non-zero multiple of 512 no larger than {cap} {}",
            p.max_append, p.capacity
        ));
    }
    if !p.zdes.is_multiple_of(64) || p.zdes > MAX_ZD_EXTENSION_SIZE {
        return Err(format!(
            "{zdes} {} must be a multiple of 64 no larger than {MAX_ZD_EXTENSION_SIZE}",
            p.zdes
        ));
    }
    Ok(ZoneGeometry {
        zone_size: p.zone_size,
        zone_capacity: p.capacity,
        nr_zones: nr,
        conventional_zones: p.conventional,
        max_open: p.max_open,
        max_active: p.max_active,
    })
}

/// Validate create options; returns (cluster_bits, extension, geometry).
fn plan_create(opts: &CreateOptions) -> ImgResult<(u32, ZonedExt, ZoneGeometry)> {
    let cs = opts.cluster_size;
    if !cs.is_power_of_two() || !(512..=(2 << 20)).contains(&cs) {
        return Err(Error::Invalid(format!(
            "cluster_size {cs} must be a power of two between 512 and 2097152"
        )));
    }
    let z = &opts.zone;
    let max_open = if z.max_open_zones == 0 {
        z.max_active_zones
    } else {
        z.max_open_zones
    };
    let geom = zone_rules(
        &ZoneParams {
            disk_size: opts.size,
            zone_size: z.size,
            capacity: z.capacity,
            conventional: z.conventional_zones,
            max_open,
            max_active: z.max_active_zones,
            max_append: z.max_append_bytes,
            zdes: z.zd_extension_size,
        },
        Names::Create,
    )
    .map_err(Error::Invalid)?;
    let nr = u64::from(geom.nr_zones);
    let ext = ZonedExt {
        zoned: 1,
        zone_size: z.size,
        zone_capacity: z.capacity,
        conventional_zones: z.conventional_zones,
        nr_zones: geom.nr_zones,
        max_active_zones: z.max_active_zones,
        max_open_zones: max_open,
        max_append_bytes: z.max_append_bytes,
        zonedmeta_size: nr * 8 + nr * u64::from(z.zd_extension_size),
        zonedmeta_offset: 0,
        zd_extension_size: z.zd_extension_size,
    };
    Ok((cs.trailing_zeros(), ext, geom))
}

/// Initial word of zone `i`: write pointer at the zone start, conventional flag for the
/// first zones, no attributes, state nibble 0.
pub(crate) fn initial_word(geom: &ZoneGeometry, i: u32) -> u64 {
    let wp = u64::from(i) * geom.zone_size;
    if i < geom.conventional_zones {
        wp | word::CONVENTIONAL
    } else {
        wp
    }
}

/// Validate a zoned extension read from an image (sizes in `meta`).
pub(crate) fn validate_ext(ext: &ZonedExt, size: u64) -> ImgResult<ZoneGeometry> {
    if ext.zoned != 1 {
        return Err(Error::Format(format!(
            "zoned {} (expected 1 = host-managed)",
            ext.zoned
        )));
    }
    let geom = zone_rules(
        &ZoneParams {
            disk_size: size,
            zone_size: ext.zone_size,
            capacity: ext.zone_capacity,
            conventional: ext.conventional_zones,
            max_open: ext.max_open_zones,
            max_active: ext.max_active_zones,
            max_append: ext.max_append_bytes,
            zdes: ext.zd_extension_size,
        },
        Names::Image,
    )
    .map_err(Error::Format)?;
    if geom.nr_zones != ext.nr_zones {
        return Err(Error::Format(format!(
            "nr_zones {} does not match size {size} / zone_size {} = {}",
            ext.nr_zones, ext.zone_size, geom.nr_zones
        )));
    }
    let nr = u64::from(ext.nr_zones);
    let want = nr * 8 + nr * u64::from(ext.zd_extension_size);
    if ext.zonedmeta_size != want {
        return Err(Error::Format(format!(
            "zonedmeta_size {} (expected {want} for {nr} zones with zd_extension_size {})",
            ext.zonedmeta_size, ext.zd_extension_size
        )));
    }
    Ok(geom)
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

struct Inner {
    meta: Meta,
    zones: ZoneSet,
    /// Zones whose persisted word is behind memory.
    dirty_words: BTreeSet<u32>,
    /// ZDED array as on disk.
    zded: Vec<u8>,
    /// Reserved writes and reads between planning and completion.
    inflight: u64,
    /// Threads blocked on the condition variable (skip the wake-up syscall when none).
    waiters: u32,
    /// Writes completed so far (numbers them for `flush_covering`).
    completed: u64,
    /// A management operation holds the device quiet.
    mgmt: bool,
}

/// An open zoned qcow2 image.
pub struct ZonedImage {
    st: Arc<dyn Storage>,
    inner: Mutex<Inner>,
    cond: Condvar,
    /// Serialises metadata write-back (lock order: persist, then inner); holds the number
    /// of completed writes the last successful write-back covered.
    persist: Mutex<u64>,
    zeros: Box<[u8]>,
    info: ImageInfo,
    cache: CacheMode,
    keep_on_reset: bool,
    read_only: bool,
    zm_offset: u64,
    closed: AtomicBool,
}

/// A write or append admitted by the zone rules whose data is not written yet
/// ([`ZonedImage::reserve_write`], [`ZonedImage::reserve_append`]). `finish` writes it;
/// dropping it unfinished gives the reservation back as a failed write.
#[must_use = "a reservation holds the zone's write pointer until finished or dropped"]
pub struct PendingWrite {
    img: Arc<ZonedImage>,
    ticket: Option<WriteTicket>,
}

impl std::fmt::Debug for PendingWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingWrite")
            .field("ticket", &self.ticket)
            .finish_non_exhaustive()
    }
}

impl PendingWrite {
    /// Byte offset the data goes to (for an append, the offset assigned at admission).
    pub fn offset(&self) -> u64 {
        self.ticket.as_ref().map_or(0, |t| t.offset)
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.ticket.as_ref().map_or(0, |t| t.len)
    }

    /// Whether the reservation is empty (never: zero-length writes are refused).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Write the data (`bufs` must total exactly [`PendingWrite::len`] bytes); with `fua`
    /// (or in write-through mode) data and write pointer are durable before this returns.
    /// Returns the offset written.
    pub fn finish(mut self, bufs: &[IoSlice<'_>], fua: bool) -> ImgResult<u64> {
        let Some(ticket) = self.ticket.take() else {
            return Err(Error::Invalid("reservation already used".into()));
        };
        self.img.complete_reserved(&ticket, bufs, fua)
    }
}

impl Drop for PendingWrite {
    fn drop(&mut self) {
        if let Some(t) = self.ticket.take() {
            let g = self.img.lock();
            self.img.cancel_locked(g, &t);
        }
    }
}

impl std::fmt::Debug for ZonedImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZonedImage")
            .field("info", &self.info)
            .field("cache", &self.cache)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

impl ZonedImage {
    /// Create a new zoned image at `path` (fails if it exists).
    pub fn create(path: &Path, opts: &CreateOptions) -> ImgResult<()> {
        let plan = plan_create(opts)?;
        let st = FileStorage::create_new(path).map_err(|source| Error::Io {
            context: format!("creating {}", path.display()),
            source,
        })?;
        let r = Self::write_new(&st, opts, plan);
        if r.is_err() {
            let _ = std::fs::remove_file(path);
        }
        r
    }

    /// Create a new zoned image on empty `storage` (e.g. an in-memory or recording one).
    pub fn create_with(storage: &dyn Storage, opts: &CreateOptions) -> ImgResult<()> {
        let plan = plan_create(opts)?;
        Self::write_new(storage, opts, plan)
    }

    fn write_new(
        st: &dyn Storage,
        opts: &CreateOptions,
        (cb, ext, geom): (u32, ZonedExt, ZoneGeometry),
    ) -> ImgResult<()> {
        let words = (0..geom.nr_zones).map(|i| initial_word(&geom, i)).collect();
        write_new_image(st, opts.size, cb, Some(NewZoned { ext, words }))
    }

    /// Open and validate; open zones come back Closed; counters rebuilt.
    pub fn open(path: &Path, opts: OpenOptions) -> ImgResult<ZonedImage> {
        let st =
            FileStorage::open(path, opts.read_only, opts.direct).map_err(|source| Error::Io {
                context: format!("opening {}", path.display()),
                source,
            })?;
        let st = if opts.pread_only { st } else { st.map_reads() };
        Self::open_with(Arc::new(st), opts)
    }

    /// Open an image held by any [`Storage`] (`opts.direct` is the storage's business).
    pub fn open_with(storage: Arc<dyn Storage>, opts: OpenOptions) -> ImgResult<ZonedImage> {
        let st = &*storage;
        let read_only = opts.read_only;
        let mut meta = Meta::load(st, read_only, true)?;
        let ext = meta.header.zoned.ok_or_else(|| {
            Error::Format(
                "not a zoned image (no zoned extension 0x007a6264, incompatible bit 5 clear)"
                    .into(),
            )
        })?;
        let geom = validate_ext(&ext, meta.size)?;
        let cs = meta.cs;
        let file_len = st.len().map_err(io_err("reading the image length"))?;
        let zo = ext.zonedmeta_offset;
        let zl = ext.zonedmeta_size;
        if zo == 0 || zo % cs != 0 {
            return Err(Error::Format(format!(
                "zonedmeta_offset 0x{zo:x} is not a non-zero multiple of the cluster size {cs}"
            )));
        }
        if zo.checked_add(zl).is_none_or(|e| e > file_len) {
            return Err(Error::Format(format!(
                "zonedmeta_offset 0x{zo:x} with zonedmeta_size {zl} lies outside the file ({file_len} bytes)"
            )));
        }
        let overlaps = |o: u64, l: u64| l > 0 && zo < o + l && o < zo + zl;
        if overlaps(meta.rt_offset, meta.rt_clusters * cs)
            || overlaps(meta.l1_offset, meta.l1.len() as u64 * 8)
        {
            return Err(Error::Format(format!(
                "zonedmeta_offset 0x{zo:x} overlaps the L1 or refcount table"
            )));
        }
        if meta.rt.iter().any(|&b| b != 0 && overlaps(b, cs)) {
            return Err(Error::Format(format!(
                "zonedmeta_offset 0x{zo:x} overlaps a refcount block"
            )));
        }
        meta.expect_refcounted(st, zo, zl, "zoned metadata")?;
        let raw = read_full(st, zo, zl as usize, "zoned metadata")?;
        let nr = geom.nr_zones as usize;
        let words: Vec<u64> = raw[..nr * 8]
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        let zded = raw[nr * 8..].to_vec();
        let zones = ZoneSet::from_words(geom, &words)
            .map_err(|e| Error::Format(format!("zone words: {e}")))?;
        if !read_only && meta.header.raw.autoclear_features.get() != 0 {
            meta.header.raw.autoclear_features = 0.into();
            meta.write_header(st)?;
            st.sync_data().map_err(io_err("syncing the header"))?;
        }
        let info = ImageInfo {
            size: meta.size,
            cluster_size: cs,
            geometry: geom,
            max_append_bytes: ext.max_append_bytes,
            zd_extension_size: ext.zd_extension_size,
        };
        let zeros = vec![0u8; cs as usize].into_boxed_slice();
        tracing::debug!(size = info.size, zones = nr, "opened zoned image");
        Ok(ZonedImage {
            st: storage,
            inner: Mutex::new(Inner {
                meta,
                zones,
                dirty_words: BTreeSet::new(),
                zded,
                inflight: 0,
                waiters: 0,
                completed: 0,
                mgmt: false,
            }),
            cond: Condvar::new(),
            persist: Mutex::new(0),
            zeros,
            info,
            cache: opts.cache,
            keep_on_reset: opts.keep_clusters_on_reset,
            read_only,
            zm_offset: zo,
            closed: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, mut g: MutexGuard<'a, Inner>) -> MutexGuard<'a, Inner> {
        g.waiters += 1;
        let mut g = self.cond.wait(g).unwrap_or_else(|e| e.into_inner());
        g.waiters -= 1;
        g
    }

    /// Unlock, waking waiters if there are any.
    fn unlock(&self, g: MutexGuard<'_, Inner>) {
        let wake = g.waiters > 0;
        drop(g);
        if wake {
            self.cond.notify_all();
        }
    }

    /// Lock, waiting out any management operation.
    fn lock_io(&self) -> MutexGuard<'_, Inner> {
        let mut g = self.lock();
        while g.mgmt {
            g = self.wait(g);
        }
        g
    }

    /// Once a metadata write-back has failed, memory and disk may disagree (a reset that is
    /// live but not durable, say): refuse every further change until the image is reopened.
    fn healthy(g: &Inner) -> ImgResult<()> {
        if g.meta.failed {
            return Err(Error::Io {
                context: "an earlier metadata write-back failed; reopen the image".into(),
                source: std::io::Error::other("image metadata poisoned"),
            });
        }
        Ok(())
    }

    fn check_writable(&self) -> ImgResult<()> {
        if self.read_only {
            return Err(Error::Invalid("image opened read-only".into()));
        }
        Ok(())
    }

    fn check_range(&self, offset: u64, len: u64) -> ImgResult<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.info.size => Ok(()),
            _ => Err(Error::Zone(ZoneError::OutOfRange)),
        }
    }

    fn check_zone(&self, idx: u32) -> ImgResult<()> {
        if idx >= self.info.geometry.nr_zones {
            return Err(Error::Zone(ZoneError::OutOfRange));
        }
        Ok(())
    }

    fn durable_writes(&self, fua: bool) -> bool {
        fua || self.cache == CacheMode::WriteThrough
    }

    /// Static facts.
    pub fn info(&self) -> &ImageInfo {
        &self.info
    }
    /// Cache mode in force.
    pub fn cache_mode(&self) -> CacheMode {
        self.cache
    }

    /// Build the read plan: storage below each sequential zone's write pointer, zeros above.
    fn plan_zoned_read(
        &self,
        g: &mut Inner,
        offset: u64,
        len: u64,
        segs: &mut Vec<ReadSeg>,
    ) -> ImgResult<Plan<()>> {
        let zsz = self.info.geometry.zone_size;
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let z = (pos / zsz) as u32;
            let zs = u64::from(z) * zsz;
            let ze = (zs + zsz).min(end);
            let info = g.zones.info(z);
            let valid_end = match info.state {
                ZoneState::NotWritePointer | ZoneState::Full => ze,
                ZoneState::Empty | ZoneState::Offline => zs,
                _ => info.wp.clamp(zs, zs + zsz),
            };
            let split = valid_end.clamp(pos, ze);
            if split > pos {
                if let Plan::Wait = g.meta.plan_read(&*self.st, pos, split - pos, segs)? {
                    return Ok(Plan::Wait);
                }
            }
            push_zero(segs, ze - split);
            pos = ze;
        }
        Ok(Plan::Ready(()))
    }

    /// Read `bufs` total bytes at `offset`. Never above the disk end (OutOfRange).
    /// Bytes at or above a sequential zone's write pointer read as zeros.
    /// Reads across zone boundaries are allowed (the NVMe layer enforces its own rule).
    pub fn read(&self, offset: u64, bufs: &mut [IoSliceMut<'_>]) -> ImgResult<()> {
        let len = total_len_mut(bufs);
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let mut g = self.lock_io();
        let segs = loop {
            g.zones.check_read(offset, len, true)?;
            let mut segs = Vec::new();
            match self.plan_zoned_read(&mut g, offset, len, &mut segs)? {
                Plan::Ready(()) => break segs,
                Plan::Wait => {
                    g = self.wait(g);
                    while g.mgmt {
                        g = self.wait(g);
                    }
                }
            }
        };
        g.inflight += 1;
        let seq = g.meta.begin_io();
        drop(g);
        let r = read_segments(&*self.st, &segs, bufs);
        let mut g = self.lock();
        g.meta.end_io(seq);
        g.inflight -= 1;
        self.unlock(g);
        r.map_err(|source| Error::Io {
            context: format!("reading {len} bytes at guest offset 0x{offset:x}"),
            source,
        })
    }

    /// Data I/O for a reserved ticket (the guard holds the reservation, inflight counted).
    fn run_write(
        &self,
        mut g: MutexGuard<'_, Inner>,
        ticket: &WriteTicket,
        bufs: &[IoSlice<'_>],
    ) -> ImgResult<u64> {
        if let Some(e) = ticket.evicted {
            g.dirty_words.insert(e);
        }
        let plan = loop {
            let r = {
                let inner = &mut *g;
                inner.meta.plan_write(&*self.st, ticket.offset, ticket.len)
            };
            match r {
                Ok(Plan::Ready(p)) => break p,
                Ok(Plan::Wait) => g = self.wait(g),
                Err(e) => {
                    let _ = g.zones.complete_write(ticket, false);
                    g.inflight -= 1;
                    self.unlock(g);
                    return Err(e);
                }
            }
        };
        drop(g);
        let res = write_extents(&*self.st, &self.zeros, &plan.extents, bufs);
        let mut g = self.lock();
        let ok = res.is_ok();
        let fin = {
            let inner = &mut *g;
            inner.meta.finish_write(&*self.st, plan, ok)
        };
        if g.zones.complete_write(ticket, ok && fin.is_ok()) {
            g.dirty_words.insert(ticket.zone);
        }
        g.completed += 1;
        let done = g.completed;
        g.inflight -= 1;
        self.unlock(g);
        res.map_err(|source| Error::Io {
            context: format!(
                "writing {} bytes at guest offset 0x{:x}",
                ticket.len, ticket.offset
            ),
            source,
        })?;
        fin.map(|()| done)
    }

    /// Write at `offset` (must be the zone's write pointer for sequential zones).
    /// `fua`: durable (data + write pointer) before returning.
    pub fn write(&self, offset: u64, bufs: &[IoSlice<'_>], fua: bool) -> ImgResult<()> {
        let ticket = self.reserve(offset, total_len(bufs), false)?;
        self.complete_reserved(&ticket, bufs, fua).map(|_| ())
    }

    /// Admit a write or append under the zone rules and reserve its range (the zone's
    /// reserved write pointer moves past it). The caller must run exactly one of
    /// `complete_reserved` or `cancel_reserved` for the ticket.
    fn reserve(&self, offset: u64, len: u64, append: bool) -> ImgResult<WriteTicket> {
        self.check_writable()?;
        if append && len > u64::from(self.info.max_append_bytes) {
            return Err(Error::Invalid(format!(
                "append of {len} bytes exceeds max_append_bytes {}",
                self.info.max_append_bytes
            )));
        }
        self.check_range(offset, len)?;
        let mut g = self.lock_io();
        Self::healthy(&g)?;
        let ticket = if append {
            g.zones.begin_append(offset, len)?
        } else {
            g.zones.begin_write(offset, len)?
        };
        g.inflight += 1;
        Ok(ticket)
    }

    /// Write the data of a reserved ticket; with `fua` (or write-through) durable before
    /// returning. Returns the offset written.
    fn complete_reserved(
        &self,
        ticket: &WriteTicket,
        bufs: &[IoSlice<'_>],
        fua: bool,
    ) -> ImgResult<u64> {
        let g = self.lock();
        if total_len(bufs) != ticket.len {
            self.cancel_locked(g, ticket);
            return Err(Error::Invalid(format!(
                "{} bytes of data for a reserved write of {}",
                total_len(bufs),
                ticket.len
            )));
        }
        let done = self.run_write(g, ticket, bufs)?;
        if self.durable_writes(fua) {
            self.flush_covering(self.settle(ticket, done))?;
        }
        Ok(ticket.offset)
    }

    /// Give a reservation back unwritten (a failed write: the zone's reserved write pointer
    /// returns if nothing was reserved after it).
    fn cancel_locked(&self, mut g: MutexGuard<'_, Inner>, ticket: &WriteTicket) {
        if let Some(e) = ticket.evicted {
            g.dirty_words.insert(e);
        }
        if g.zones.complete_write(ticket, false) {
            g.dirty_words.insert(ticket.zone);
        }
        g.inflight -= 1;
        self.unlock(g);
    }

    /// Admit a write of `len` bytes at `offset` now and write its data later, from any thread
    /// ([`PendingWrite::finish`]). Admission order is the write order the zone rules see: a
    /// second reservation in the same zone may start where this one ends before this one's
    /// data is written. Used for asynchronous execution: commands are admitted in
    /// submission order, their data I/O runs in parallel.
    pub fn reserve_write(self: &Arc<Self>, offset: u64, len: u64) -> ImgResult<PendingWrite> {
        let ticket = self.reserve(offset, len, false)?;
        Ok(PendingWrite {
            img: Arc::clone(self),
            ticket: Some(ticket),
        })
    }

    /// Like [`ZonedImage::reserve_write`] for a Zone Append of `len` bytes to the zone
    /// starting at `zone_start`; the assigned offset is [`PendingWrite::offset`].
    pub fn reserve_append(self: &Arc<Self>, zone_start: u64, len: u64) -> ImgResult<PendingWrite> {
        let ticket = self.reserve(zone_start, len, true)?;
        Ok(PendingWrite {
            img: Arc::clone(self),
            ticket: Some(ticket),
        })
    }

    /// Write `len` zero bytes at `offset` with the same zone rules as `write`.
    pub fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> ImgResult<()> {
        self.check_writable()?;
        self.check_range(offset, len)?;
        let mut g = self.lock_io();
        Self::healthy(&g)?;
        let ticket = g.zones.begin_write(offset, len)?;
        g.inflight += 1;
        if let Some(e) = ticket.evicted {
            g.dirty_words.insert(e);
        }
        let r = loop {
            let r = {
                let inner = &mut *g;
                inner
                    .meta
                    .zero_range(&*self.st, &self.zeros, ticket.offset, ticket.len, false)
            };
            match r {
                Ok(Plan::Wait) => g = self.wait(g),
                Ok(Plan::Ready(())) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        if g.zones.complete_write(&ticket, r.is_ok()) {
            g.dirty_words.insert(ticket.zone);
        }
        g.completed += 1;
        let done = g.completed;
        g.inflight -= 1;
        self.unlock(g);
        r?;
        if self.durable_writes(fua) {
            self.flush_covering(self.settle(&ticket, done))?;
        }
        Ok(())
    }

    /// Append to the zone starting at `zone_start`; returns the assigned byte offset.
    pub fn append(&self, zone_start: u64, bufs: &[IoSlice<'_>], fua: bool) -> ImgResult<u64> {
        let ticket = self.reserve(zone_start, total_len(bufs), true)?;
        self.complete_reserved(&ticket, bufs, fua)
    }

    /// Before a durable (FUA / write-through) write returns: wait until its zone's committed
    /// write pointer covers it — an earlier write to the zone may still be in flight, and a
    /// write pointer persisted before that one completes would stop short of this write —
    /// or until nothing is in flight in the zone any more (the reservation was dropped by a
    /// reset, finish or forced state). Returns the completion count to flush up to.
    fn settle(&self, ticket: &WriteTicket, done: u64) -> u64 {
        let mut g = self.lock();
        loop {
            let z = g.zones.info(ticket.zone);
            if z.ztype == ZoneType::Conventional {
                return done;
            }
            if z.wp >= ticket.offset + ticket.len || g.zones.in_flight(ticket.zone) == 0 {
                return g.completed.max(done);
            }
            g = self.wait(g);
        }
    }

    /// Make every completed write, and the zone state covering it, durable.
    pub fn flush(&self) -> ImgResult<()> {
        self.flush_covering(u64::MAX)
    }

    /// Make completed write number `done` (and everything before it) durable. A write-back
    /// that started after that write completed covers it, so concurrent FUA/write-through
    /// writers share one write-back instead of queueing one each.
    fn flush_covering(&self, done: u64) -> ImgResult<()> {
        if self.read_only {
            return Ok(());
        }
        let mut durable = self.persist.lock().unwrap_or_else(|e| e.into_inner());
        if *durable >= done {
            return Ok(());
        }
        let (snap, ids, extra, covered) = {
            let mut g = self.lock();
            Self::healthy(&g)?;
            let covered = g.completed;
            let snap = g.meta.take_dirty();
            let ids: Vec<u32> = std::mem::take(&mut g.dirty_words).into_iter().collect();
            let mut extra: Vec<(u64, Vec<u8>)> = Vec::new();
            let mut prev: Option<u32> = None;
            for &z in &ids {
                let w = g.zones.word(z).to_le_bytes();
                match (prev, extra.last_mut()) {
                    (Some(p), Some(last)) if p + 1 == z => last.1.extend_from_slice(&w),
                    _ => extra.push((self.zm_offset + u64::from(z) * 8, w.to_vec())),
                }
                prev = Some(z);
            }
            (snap, ids, extra, covered)
        };
        let mut release = |f: &[(u64, u64)]| {
            let mut g = self.lock();
            let inner = &mut *g;
            inner.meta.release(&*self.st, f)
        };
        let r = write_back(&*self.st, snap, &mut release, &extra);
        match &r {
            Ok(()) => *durable = covered,
            Err(e) => {
                tracing::error!(error = %e, "metadata write-back failed");
                let mut g = self.lock();
                g.meta.failed = true;
                g.dirty_words.extend(ids);
            }
        }
        r
    }

    /// Snapshot of zones `first..first+count` (clamped to the end).
    pub fn zones(&self, first: u32, count: u32) -> Vec<ZoneInfo> {
        let g = self.lock();
        let end = first.saturating_add(count).min(self.info.geometry.nr_zones);
        (first..end).map(|i| g.zones.info(i)).collect()
    }
    /// Zone index holding `offset`.
    pub fn zone_of(&self, offset: u64) -> Option<u32> {
        if offset >= self.info.size {
            return None;
        }
        u32::try_from(offset / self.info.geometry.zone_size).ok()
    }
    /// (open, active) counts.
    pub fn counts(&self) -> (u32, u32) {
        self.lock().zones.counts()
    }

    /// Run a management operation with the device quiet (no I/O in flight or starting).
    fn quiesced<T>(&self, f: impl FnOnce(MutexGuard<'_, Inner>) -> ImgResult<T>) -> ImgResult<T> {
        let mut g = self.lock();
        while g.mgmt {
            g = self.wait(g);
        }
        g.mgmt = true;
        while g.inflight > 0 {
            g = self.wait(g);
        }
        let r = match Self::healthy(&g) {
            Ok(()) => f(g),
            Err(e) => {
                drop(g);
                Err(e)
            }
        };
        let mut g = self.lock();
        g.mgmt = false;
        self.unlock(g);
        r
    }

    fn apply_zero<'a>(
        &'a self,
        mut g: MutexGuard<'a, Inner>,
        ranges: &[(u64, u64)],
    ) -> ImgResult<MutexGuard<'a, Inner>> {
        for &(s, l) in ranges {
            let end = s.saturating_add(l).min(self.info.size);
            if end <= s {
                continue;
            }
            loop {
                let r = {
                    let inner = &mut *g;
                    inner
                        .meta
                        .zero_range(&*self.st, &self.zeros, s, end - s, false)?
                };
                match r {
                    Plan::Ready(()) => break,
                    Plan::Wait => g = self.wait(g),
                }
            }
        }
        Ok(g)
    }

    /// Management action on one zone (`Some(idx)`) or with Select All (`None`).
    /// Persisted before returning (zone word durable; reset data reads as zeros).
    pub fn zone_action(&self, zone: Option<u32>, action: ZoneAction) -> ImgResult<()> {
        self.check_writable()?;
        if let Some(i) = zone {
            self.check_zone(i)?;
        }
        self.quiesced(|mut g| {
            let eff = match zone {
                Some(i) => g.zones.action(i, action),
                None => g.zones.action_all(action),
            }
            .inspect_err(|e| tracing::debug!(?zone, ?action, reason = %e, "zone action refused"))?;
            tracing::debug!(?zone, ?action, changed = eff.changed.len(), "zone action");
            g.dirty_words.extend(eff.changed.iter().copied());
            if action == ZoneAction::Reset && self.keep_on_reset {
                // The zone reads as zeros from its write pointer on; its clusters stay
                // mapped for the next pass of writes to overwrite (see OpenOptions).
                drop(g);
            } else if action == ZoneAction::Reset {
                // The word goes first: above the write pointer everything reads as zeros
                // anyway, so a crash before the clusters are zeroed loses nothing.
                drop(g);
                self.flush()?;
                let g = self.apply_zero(self.lock(), &eff.zero)?;
                drop(g);
            } else {
                // Finish & co: zeros above the old write pointer must be durable before a
                // word that exposes them.
                let g = self.apply_zero(g, &eff.zero)?;
                drop(g);
            }
            self.flush()
        })
    }

    /// Set Zone Descriptor Extension of zone `idx` with `data` (exactly zd_extension_size bytes).
    pub fn set_zde(&self, idx: u32, data: &[u8]) -> ImgResult<()> {
        self.check_writable()?;
        self.check_zone(idx)?;
        let zdes = self.info.zd_extension_size as usize;
        if zdes == 0 {
            return Err(Error::Invalid(
                "zone descriptor extensions are disabled (zd_extension_size 0)".into(),
            ));
        }
        if data.len() != zdes {
            return Err(Error::Invalid(format!(
                "zone descriptor extension of {} bytes (zd_extension_size {zdes})",
                data.len()
            )));
        }
        self.quiesced(|mut g| {
            // Decide on a copy: the zone changes only once the extension bytes are written.
            let mut trial = g.zones.clone();
            let eff = trial.set_zde(idx)?;
            let nr = u64::from(self.info.geometry.nr_zones);
            let off = self.zm_offset + nr * 8 + u64::from(idx) * zdes as u64;
            // The extension bytes are written before the word that marks them valid; the
            // flush below syncs them before writing the word.
            self.st.write_at(data, off).map_err(|source| Error::Io {
                context: format!("writing the descriptor extension of zone {idx}"),
                source,
            })?;
            g.zones = trial;
            let s = idx as usize * zdes;
            g.zded[s..s + zdes].copy_from_slice(data);
            g.dirty_words.extend(eff.changed.iter().copied());
            g.dirty_words.insert(idx);
            drop(g);
            self.flush()
        })
    }

    /// Zone descriptor extension bytes of zone `idx` (zd_extension_size bytes; zeros if ZDEV clear).
    pub fn zde(&self, idx: u32) -> Vec<u8> {
        let zdes = self.info.zd_extension_size as usize;
        if idx >= self.info.geometry.nr_zones {
            return vec![0; zdes];
        }
        let g = self.lock();
        if !g.zones.info(idx).attrs.contains(ZoneAttrs::ZDEV) {
            return vec![0; zdes];
        }
        let s = idx as usize * zdes;
        g.zded[s..s + zdes].to_vec()
    }

    /// Force a zone ReadOnly or Offline (admin / fault injection); persisted.
    pub fn force_zone_state(&self, idx: u32, state: ZoneState) -> ImgResult<()> {
        self.check_writable()?;
        self.check_zone(idx)?;
        self.quiesced(|mut g| {
            let eff = g.zones.force_state(idx, state)?;
            g.dirty_words.extend(eff.changed.iter().copied());
            let g = self.apply_zero(g, &eff.zero)?;
            drop(g);
            self.flush()
        })
    }

    /// Resizing a zoned image would change nr_zones under the zone words: always refused.
    pub fn resize(&self, new_size: u64) -> ImgResult<()> {
        Err(Error::Unsupported(format!(
            "resize of a zoned image (from {} to {new_size} bytes)",
            self.info.size
        )))
    }

    /// Flush and close.
    pub fn close(self) -> ImgResult<()> {
        let r = self.flush();
        self.closed.store(true, Ordering::SeqCst);
        r
    }
}

impl Drop for ZonedImage {
    fn drop(&mut self) {
        if !self.read_only && !self.closed.load(Ordering::SeqCst) {
            if let Err(e) = self.flush() {
                tracing::error!(error = %e, "flush on drop failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_words_are_what_the_zone_set_persists() {
        let g = ZoneGeometry {
            zone_size: 1 << 20,
            zone_capacity: 1 << 20,
            nr_zones: 8,
            conventional_zones: 2,
            max_open: 0,
            max_active: 0,
        };
        let set = ZoneSet::new(g);
        for i in 0..8 {
            assert_eq!(initial_word(&g, i), set.word(i), "zone {i}");
        }
        assert_eq!(initial_word(&g, 1), 0x0800_0000_0010_0000);
    }

    #[test]
    fn create_normalises_max_open_to_max_active() {
        let mut o = CreateOptions {
            size: 8 << 20,
            cluster_size: 65536,
            zone: ZoneOptions {
                size: 1 << 20,
                capacity: 1 << 20,
                max_active_zones: 5,
                ..Default::default()
            },
        };
        let (_, ext, geom) = plan_create(&o).unwrap();
        assert_eq!((ext.max_open_zones, geom.max_open), (5, 5));
        o.zone.max_open_zones = 3;
        let (_, ext, _) = plan_create(&o).unwrap();
        assert_eq!(ext.max_open_zones, 3);
        assert_eq!(ext.zonedmeta_size, 64);
    }
}
