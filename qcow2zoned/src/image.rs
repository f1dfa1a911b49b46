//! The zoned image: qcow2 storage + zone state machine + persistence ordering.
//!
//! API CONTRACT (fixed; nvme and server code against it). Bodies are to be written.
//! `ZonedImage` is `Send + Sync`: all methods take `&self`, locking internally; data I/O
//! runs outside the metadata lock so several queues can do I/O at once.

use crate::zone::{Effects, ZoneAction, ZoneError, ZoneGeometry, ZoneInfo, ZoneState};
use std::io::{IoSlice, IoSliceMut};
use std::path::Path;

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

/// An open zoned qcow2 image.
pub struct ZonedImage {
    _private: (),
}

impl ZonedImage {
    /// Create a new zoned image at `path` (fails if it exists).
    pub fn create(path: &Path, opts: &CreateOptions) -> ImgResult<()> {
        let _ = (path, opts);
        todo!()
    }
    /// Open and validate; open zones come back Closed; counters rebuilt.
    pub fn open(path: &Path, opts: OpenOptions) -> ImgResult<ZonedImage> {
        let _ = (path, opts);
        todo!()
    }
    /// Static facts.
    pub fn info(&self) -> &ImageInfo {
        todo!()
    }
    /// Cache mode in force.
    pub fn cache_mode(&self) -> CacheMode {
        todo!()
    }
    /// Read `bufs` total bytes at `offset`. Never above the disk end (OutOfRange).
    /// Bytes at or above a sequential zone's write pointer read as zeros.
    /// Reads across zone boundaries are allowed (the NVMe layer enforces its own rule).
    pub fn read(&self, offset: u64, bufs: &mut [IoSliceMut<'_>]) -> ImgResult<()> {
        let _ = (offset, bufs);
        todo!()
    }
    /// Write at `offset` (must be the zone's write pointer for sequential zones).
    /// `fua`: durable (data + write pointer) before returning.
    pub fn write(&self, offset: u64, bufs: &[IoSlice<'_>], fua: bool) -> ImgResult<()> {
        let _ = (offset, bufs, fua);
        todo!()
    }
    /// Write `len` zero bytes at `offset` with the same zone rules as `write`.
    pub fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> ImgResult<()> {
        let _ = (offset, len, fua);
        todo!()
    }
    /// Append to the zone starting at `zone_start`; returns the assigned byte offset.
    pub fn append(&self, zone_start: u64, bufs: &[IoSlice<'_>], fua: bool) -> ImgResult<u64> {
        let _ = (zone_start, bufs, fua);
        todo!()
    }
    /// Make every completed write, and the zone state covering it, durable.
    pub fn flush(&self) -> ImgResult<()> {
        todo!()
    }
    /// Snapshot of zones `first..first+count` (clamped to the end).
    pub fn zones(&self, first: u32, count: u32) -> Vec<ZoneInfo> {
        let _ = (first, count);
        todo!()
    }
    /// Zone index holding `offset`.
    pub fn zone_of(&self, offset: u64) -> Option<u32> {
        let _ = offset;
        todo!()
    }
    /// (open, active) counts.
    pub fn counts(&self) -> (u32, u32) {
        todo!()
    }
    /// Management action on one zone (`Some(idx)`) or with Select All (`None`).
    /// Persisted before returning (zone word durable; reset data reads as zeros).
    pub fn zone_action(&self, zone: Option<u32>, action: ZoneAction) -> ImgResult<()> {
        let _ = (zone, action);
        todo!()
    }
    /// Set Zone Descriptor Extension of zone `idx` with `data` (exactly zd_extension_size bytes).
    pub fn set_zde(&self, idx: u32, data: &[u8]) -> ImgResult<()> {
        let _ = (idx, data);
        todo!()
    }
    /// Zone descriptor extension bytes of zone `idx` (zd_extension_size bytes; zeros if ZDEV clear).
    pub fn zde(&self, idx: u32) -> Vec<u8> {
        let _ = idx;
        todo!()
    }
    /// Force a zone ReadOnly or Offline (admin / fault injection); persisted.
    pub fn force_zone_state(&self, idx: u32, state: ZoneState) -> ImgResult<()> {
        let _ = (idx, state);
        todo!()
    }
    /// Flush and close.
    pub fn close(self) -> ImgResult<()> {
        todo!()
    }
}

#[allow(dead_code)]
fn _effects_used(_: Effects) {}
