//! Transport-independent NVMe controller model with one Zoned Namespace backed by a
//! `qcow2zoned` image.
//!
//! API CONTRACT (fixed; the server codes against it). Internal modules, one per concern:
//! `regs` (BAR0), `wire` (on-the-wire structs), `cmd` (SQE decoding), `queue` (ring math),
//! `prp` (PRP/SGL walking), `admin`, `io`, `zns`, `identify`, `log`, `status`, `ctrl`
//! (queue tables, locking, fetch/complete loop; its header documents the lock order).
//!
//! Decisions worth knowing when driving the controller:
//! - SGLs are supported for I/O commands (Data Block, Segment, Last Segment with the
//!   Address sub type; SGLS = 1); admin commands take PRPs only. Data an SGL describes
//!   beyond the transfer length is ignored; less is Data SGL Length Invalid.
//! - Interrupt vectors 0..=max_io_queues are accepted at CQ creation
//!   ([`Controller::vectors_offered`]); the admin CQ uses vector 0.
//! - Commands execute on the poller that fetched them, except, when
//!   [`ControllerConfig::aio_threads`] is non-zero and the guest memory can be pinned
//!   ([`GuestMemory::pin`]), Read, Write, Zone Append and Flush: those are checked and
//!   admitted in submission order on the poller (writes reserve their zone range there),
//!   then their data transfer runs on a pool of I/O threads and the poller posts the
//!   completion when it ends (see the `aio` module); a command alone on its queue (QD1)
//!   still runs on the poller. An Abort never finds its target and
//!   completes with DW0 bit 0 set ("not aborted"); queue deletion, reset and shutdown wait
//!   for transfers in flight.
//! - Interrupts are raised once per processed batch per CQ (a natural coalescing); on I/O
//!   CQs the Interrupt Coalescing feature (08h) is honoured: with an aggregation time set, a
//!   vector is raised once more than THR entries wait or the oldest has waited TIME (the
//!   poller keeps polling meanwhile). Feature 09h (per-vector Coalescing Disable) is not
//!   supported, so coalescing applies to every I/O vector.
//! - Asynchronous Event Requests are held (up to AERL + 1 = 4) until an event: "Invalid
//!   Doorbell Write Value" (error type, log page 01h) and the SMART temperature warning when
//!   a host-set threshold is crossed (if enabled in Feature 0Bh). An event type stays masked
//!   until its log page is read without RAE. Zone descriptor changed notices are accepted in
//!   the configuration but never raised: the controller never changes zone attributes by
//!   itself, so the Changed Zone List is always empty.
//! - Zone state rules live in the image: Close of an opened zone with nothing written makes
//!   it Closed (as QEMU), Select All Open is atomic, implicit opens close the least recently
//!   used implicitly opened zone when the open limit is reached.
//! - A doorbell page outlives queues: the controller clears it through [`Doorbells`] on
//!   enable, reset, and I/O queue creation/deletion, and ignores a stale SQ tail found at
//!   creation until the host writes another value.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod admin;
mod aio;
mod cmd;
mod ctrl;
#[doc(hidden)]
pub mod fuzzing;
mod identify;
mod io;
mod log;
mod prp;
mod queue;
mod regs;
pub mod status;
#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;
mod wire;
mod zns;

pub use status::Status;

use qcow2zoned::ZonedImage;
use std::io::IoSliceMut;
use std::sync::Arc;

/// A guest-memory access that could not be done (unmapped or read-only address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("Guest address {addr:#x} (+{len}) is not mapped for this access")]
pub struct DmaError {
    /// Guest physical address.
    pub addr: u64,
    /// Length of the access.
    pub len: u64,
}

/// Guest memory as the transport sees it (implemented by the server over DMA maps, and by a
/// Vec-backed fake under the `test-utils` feature).
pub trait GuestMemory: Send + Sync {
    /// Copy `buf.len()` bytes from guest address `addr`.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), DmaError>;
    /// Copy `data` to guest address `addr`.
    fn write(&self, addr: u64, data: &[u8]) -> Result<(), DmaError>;
    /// Zero-copy I/O: call `f` with host slices covering the guest ranges `(addr, len)`, in
    /// order. `for_write` is true when the device will write into guest memory (a Read command).
    /// Returns what `f` returned, or a DmaError if a range is not mapped.
    fn with_slices(
        &self,
        ranges: &[(u64, u64)],
        for_write: bool,
        f: &mut dyn FnMut(&mut [IoSliceMut<'_>]) -> std::io::Result<()>,
    ) -> Result<std::io::Result<()>, DmaError>;
    /// Pin the guest ranges `(addr, len)` for a transfer that runs later on another thread:
    /// every range is checked now (a DmaError if one is not mapped, or not writable when
    /// `for_write`). `Ok(None)` (the default) means this memory cannot be pinned; the
    /// controller then executes the command on the poller with `with_slices`.
    fn pin(
        &self,
        ranges: &[(u64, u64)],
        for_write: bool,
    ) -> Result<Option<Box<dyn PinnedBuffers>>, DmaError> {
        let _ = (ranges, for_write);
        Ok(None)
    }
}

/// Guest buffers pinned for a transfer that finishes later, on another thread
/// ([`GuestMemory::pin`]). Holding it keeps the memory mapped.
pub trait PinnedBuffers: Send {
    /// Call `f` with host slices covering the pinned ranges, in order (as
    /// [`GuestMemory::with_slices`]); bytes `f` leaves in them reach guest memory if the
    /// buffers were pinned `for_write`. Returns what `f` returned, or the error of copying
    /// data back to guest memory.
    fn with(
        &mut self,
        f: &mut dyn FnMut(&mut [IoSliceMut<'_>]) -> std::io::Result<()>,
    ) -> std::io::Result<()>;
}

/// Doorbell values written by the guest (the server reads them from its shared doorbell page).
pub trait Doorbells: Send + Sync {
    /// Current SQ `qid` tail doorbell value.
    fn sq_tail(&self, qid: u16) -> u32;
    /// Current CQ `qid` head doorbell value.
    fn cq_head(&self, qid: u16) -> u32;
    /// Clear every doorbell (on controller enable/reset).
    fn clear(&self);
    /// Zero SQ `qid`'s tail doorbell. Called when an I/O SQ is created (before its completion
    /// is posted) and deleted: a doorbell page outlives queues, and a tail left by a deleted
    /// queue must not look like new submissions. The default does nothing; the controller
    /// then ignores a stale tail until its value changes.
    fn clear_sq_tail(&self, qid: u16) {
        let _ = qid;
    }
    /// Zero CQ `qid`'s head doorbell (I/O CQ created or deleted). The default does nothing;
    /// a stale head is then rejected as invalid until the host writes a valid one.
    fn clear_cq_head(&self, qid: u16) {
        let _ = qid;
    }
}

/// Interrupt delivery.
pub trait Interrupts: Send + Sync {
    /// Raise MSI-X vector `vector` (or the pin interrupt when MSI-X is disabled; vector 0).
    fn raise(&self, vector: u16);
}

/// Everything a controller needs from its host, bundled for calls.
pub struct HostEnv<'a> {
    /// Guest memory.
    pub mem: &'a dyn GuestMemory,
    /// Doorbells.
    pub doorbells: &'a dyn Doorbells,
    /// Interrupts.
    pub irq: &'a dyn Interrupts,
    /// The most completions a pass posts to a CQ before it raises the CQ's vector without
    /// waiting for the pass to end (0: once per pass only), so that the host can reap and
    /// resubmit while the pass goes on. Each SQ raises after three quarters of its host's
    /// depth, up to this (`queue::HostDepth`), and only while its host answers in time
    /// (`queue::EarlyRaise`).
    pub raise_every: usize,
}

/// The largest early-interrupt batch (see [`HostEnv::raise_every`]): 4 KiB reads at depth 32 on one
/// queue pair of the load generator ran at 1.7x the IOPS of one raise per pass with 8, 1.5x
/// with 4 or 16. docs/performance.md has the figures.
pub const RAISE_EVERY: usize = 8;

/// Controller configuration.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Namespace LBA size: 512 or 4096.
    pub lba_size: u32,
    /// Max I/O queue pairs offered (1..=255 with a 4 KiB doorbell page).
    pub max_io_queues: u16,
    /// MDTS as a power of two of 4 KiB pages (e.g. 7 = 512 KiB).
    pub mdts: u8,
    /// Serial number (ASCII).
    pub serial: String,
    /// Advertise a volatile write cache (writeback cache mode).
    pub volatile_write_cache: bool,
    /// I/O threads that run data transfers asynchronously (0: every command runs on the
    /// poller that fetched it). Worth it when transfers wait for a disk (O_DIRECT); with
    /// the page cache a transfer is a copy and running it in place is cheaper.
    pub aio_threads: usize,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            lba_size: 4096,
            max_io_queues: 4,
            mdts: 7,
            serial: "ZNSD0001".into(),
            volatile_write_cache: true,
            aio_threads: 0,
        }
    }
}

/// Why a namespace image cannot be served as an NVMe ZNS namespace a Linux host accepts.
#[derive(Debug, thiserror::Error)]
#[error("Image cannot be served as a ZNS namespace: {0}")]
pub struct GeometryError(pub String);

/// What a register write asks the transport to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RegEffect {
    /// The controller was enabled (CC.EN 0->1) or reset: pollers should re-read queue state.
    pub queues_changed: bool,
}

/// The controller: BAR0 registers, admin and I/O queues, the zoned namespace.
/// Shared as `Arc<Controller>` between the transport thread (registers) and queue pollers.
pub struct Controller {
    inner: ctrl::Ctrl,
}

impl Controller {
    /// Build a controller over `ns`; refuses geometries Linux cannot use as ZNS.
    pub fn new(ns: Arc<ZonedImage>, cfg: ControllerConfig) -> Result<Controller, GeometryError> {
        Ok(Controller {
            inner: ctrl::Ctrl::new(ns, cfg)?,
        })
    }
    /// The namespace image.
    pub fn namespace(&self) -> &Arc<ZonedImage> {
        &self.inner.ns
    }
    /// Read a BAR0 register (offset < 0x1000, size 4 or 8; other sizes/offsets read as 0).
    pub fn mmio_read(&self, offset: u64, data: &mut [u8]) {
        self.inner.mmio_read(offset, data)
    }
    /// Write a BAR0 register (offset < 0x1000). CC.EN 1->0 resets: drops every I/O queue and
    /// pending command (waits for commands being executed by pollers). `env.doorbells.clear()`
    /// is called on enable and reset.
    pub fn mmio_write(&self, env: &HostEnv<'_>, offset: u64, data: &[u8]) -> RegEffect {
        self.inner.mmio_write(env, offset, data)
    }
    /// Process the admin queue: fetch new SQEs up to the tail doorbell, execute, post CQEs,
    /// raise interrupts. Returns the number of commands completed.
    pub fn process_admin(&self, env: &HostEnv<'_>) -> usize {
        self.inner.process_admin(env)
    }
    /// Process the I/O queue pairs `qid` with `qid % pollers == poller` (qid >= 1). Also
    /// re-reads CQ heads so posting resumes when the guest frees CQ slots. Returns the number
    /// of commands completed (0 = idle, the poller may back off).
    pub fn process_io(&self, env: &HostEnv<'_>, poller: usize, pollers: usize) -> usize {
        self.inner.process_io(env, poller, pollers)
    }
    /// Set the function called with a submission queue id when a command of that queue
    /// finished on an I/O thread: it must make the poller owning the queue call
    /// [`Controller::process_io`] soon (which posts the completion). Without I/O threads it
    /// is never called.
    pub fn set_completion_notifier(&self, f: Box<dyn Fn(u16) + Send + Sync>) {
        if let Some(pool) = &self.inner.aio {
            pool.set_notify(f);
        }
    }
    /// I/O threads running data transfers (0: none, commands run on the pollers).
    pub fn io_threads(&self) -> usize {
        self.inner.cfg.aio_threads
    }
    /// Make every completed write durable, after waiting (bounded) for transfers in flight.
    pub fn flush(&self) -> Result<(), qcow2zoned::Error> {
        self.inner.wait_transfers("flush");
        self.inner.ns.flush()
    }
    /// Null data path, for measuring the command path alone: Read, Write, Write Zeroes and
    /// Zone Append are decoded and checked (opcode, namespace, MDTS, LBA range, append ZSLBA
    /// and ZASL, data pointer walked) and then complete successfully without touching the
    /// image and without moving data; zone state is not tracked (an append reports its
    /// ZSLBA). Flush, zone management and reports still go to the image.
    pub fn set_null_io(&self, on: bool) {
        self.inner
            .null_io
            .store(on, std::sync::atomic::Ordering::Release);
    }
    /// Whether the controller is enabled and ready (CSTS.RDY).
    pub fn ready(&self) -> bool {
        self.inner.ready.load(std::sync::atomic::Ordering::Acquire)
    }
    /// Interrupt vectors in use by CQs (for the transport's MSI-X bookkeeping).
    pub fn max_vectors(&self) -> u16 {
        self.inner.max_vectors()
    }
    /// Interrupt vectors a CQ may use: 0 (admin) ..= `max_io_queues`. Size the MSI-X table
    /// at least this large.
    pub fn vectors_offered(&self) -> u16 {
        self.inner.vectors_offered()
    }
    /// Controller-level reset from the transport (device reset / client gone): like CC.EN 1->0
    /// then registers back to power-on values. Flushes the namespace.
    pub fn reset(&self, env: &HostEnv<'_>) {
        self.inner.reset(env)
    }
}
