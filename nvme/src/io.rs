//! I/O command execution: Read, Write, Write Zeroes, Flush, Zone Append, and dispatch of the
//! zone management commands. Data moves zero-copy: the data pointer is walked into guest
//! ranges, then the image reads or writes straight into/from those ranges.
//!
//! Error precedence (QEMU's order, reference doc 6.4): MDTS → LBA range → append ZSLBA/ZASL →
//! zone state → write pointer → zone capacity → resources → data transfer. Zone rules are
//! enforced by the image atomically; a snapshot of the zone is only consulted when the data
//! pointer or the transfer failed, so that a zone error still wins over a transfer error.

use crate::cmd::{IoCmd, Rw};
use crate::ctrl::{Ctrl, Outcome, Stats};
use crate::prp;
use crate::queue::SubQueue;
use crate::status::Status;
use crate::wire::Sqe;
use crate::HostEnv;
use qcow2zoned::{Error as ImgError, PendingWrite, ZoneState, ZonedImage};
use std::io::{IoSlice, IoSliceMut};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The only namespace.
pub const NSID: u32 = 1;
/// Broadcast NSID.
pub const NSID_ALL: u32 = 0xFFFF_FFFF;

/// What a data command does with the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Write,
    Append,
}

impl Ctrl {
    pub(crate) fn page(&self) -> u64 {
        self.page_size.load(Ordering::Acquire)
    }

    /// Execute one I/O command.
    pub(crate) fn exec_io(
        &self,
        env: &HostEnv<'_>,
        sqe: &Sqe,
        cmd: IoCmd,
        sq: &SubQueue,
    ) -> Outcome {
        let nsid = sqe.nsid.get();
        let out = self.exec_io_inner(env, sqe, cmd, sq);
        let (slba, nlb) = match cmd {
            IoCmd::Read(rw) | IoCmd::Write(rw) | IoCmd::WriteZeroes(rw) | IoCmd::ZoneAppend(rw) => {
                (rw.slba, rw.nlb)
            }
            IoCmd::ZoneSend(z) => (z.slba, 0),
            IoCmd::ZoneRecv(z) => (z.slba, 0),
            _ => (0, 0),
        };
        if let Outcome::Done { status, .. } = &out {
            if status.is_success() {
                tracing::trace!(cid = sqe.cid(), opc = sqe.opc(), nsid, slba, nlb, %status, "io");
            } else {
                tracing::debug!(cid = sqe.cid(), opc = sqe.opc(), nsid, slba, nlb, %status, "io failed");
            }
        }
        out
    }

    fn exec_io_inner(&self, env: &HostEnv<'_>, sqe: &Sqe, cmd: IoCmd, sq: &SubQueue) -> Outcome {
        if let IoCmd::Invalid(opc) = cmd {
            tracing::debug!(
                opc,
                reason = "opcode not supported under the selected command set",
                "rejected"
            );
            return Outcome::status(Status::INVALID_OPCODE);
        }
        if sqe.fuse() != 0 {
            tracing::debug!(reason = "fused operations not supported", "rejected");
            return Outcome::status(Status::INVALID_FIELD);
        }
        let nsid = sqe.nsid.get();
        let nsid_ok = nsid == NSID || (cmd == IoCmd::Flush && nsid == NSID_ALL);
        if !nsid_ok {
            tracing::debug!(nsid, reason = "no such namespace", "rejected");
            return Outcome::status(Status::INVALID_NS);
        }
        let origin = Origin { sq, cid: sqe.cid() };
        match cmd {
            IoCmd::Flush => self.flush(env, &origin),
            IoCmd::Read(rw) => self.read(env, rw, &origin).unwrap_or_else(Outcome::status),
            IoCmd::Write(rw) => self
                .write(env, rw, Op::Write, &origin)
                .unwrap_or_else(Outcome::status),
            IoCmd::WriteZeroes(rw) => self.write_zeroes(rw).into(),
            IoCmd::ZoneAppend(rw) => self
                .write(env, rw, Op::Append, &origin)
                .unwrap_or_else(Outcome::status),
            IoCmd::ZoneSend(z) => self.zone_send(env, z).into(),
            IoCmd::ZoneRecv(r) => self.zone_recv(env, r).into(),
            IoCmd::Invalid(_) => Outcome::status(Status::INVALID_OPCODE),
        }
    }

    /// The I/O threads, if this command should go to them: not when nothing else is queued
    /// or in flight on its SQ (QD1), where a hand-off would only add a thread wake-up to the
    /// command's latency. Either way commands are admitted in submission order.
    fn pool_for(&self, env: &HostEnv<'_>, sq: &SubQueue) -> Option<&crate::aio::Pool> {
        let pool = self.aio.as_ref()?;
        let more = env.doorbells.sq_tail(sq.qid) != sq.head || sq.inbox.outstanding() > 0;
        more.then_some(pool)
    }

    /// Map an image error to a status, logging host-side failures.
    fn host_error(&self, e: &ImgError) -> Status {
        image_status(self.id, e)
    }

    /// Flush: on an I/O thread when there are some (it waits for the disk), else here.
    fn flush(&self, env: &HostEnv<'_>, origin: &Origin<'_>) -> Outcome {
        let Some(pool) = self.pool_for(env, origin.sq) else {
            return self.ns.flush().map_err(|e| self.host_error(&e)).into();
        };
        let ns = Arc::clone(&self.ns);
        let id = self.id;
        pool.submit(origin.sq.qid, &origin.sq.inbox, origin.cid, move || {
            let st = ns
                .flush()
                .map_or_else(|e| image_status(id, &e), |()| Status::SUCCESS);
            (st, 0, 0)
        });
        Outcome::Queued
    }

    /// Common checks: transfer size against MDTS (when `data`), then the LBA range.
    fn check_range(&self, rw: &Rw, data: bool) -> Result<u64, Status> {
        let bytes = u64::from(rw.nlb) << self.geo.lba_shift;
        if data && self.geo.max_xfer.is_some_and(|m| bytes > m) {
            tracing::debug!(bytes, reason = "transfer larger than MDTS", "rejected");
            return Err(Status::INVALID_FIELD);
        }
        match rw.slba.checked_add(u64::from(rw.nlb)) {
            Some(end) if end <= self.geo.nsze => Ok(bytes),
            _ => {
                tracing::debug!(
                    slba = rw.slba,
                    nlb = rw.nlb,
                    reason = "beyond namespace size",
                    "rejected"
                );
                Err(Status::LBA_RANGE)
            }
        }
    }

    fn read(&self, env: &HostEnv<'_>, rw: Rw, origin: &Origin<'_>) -> Result<Outcome, Status> {
        let bytes = self.check_range(&rw, true)?;
        let first = self.geo.zone_of(rw.slba);
        let last = self.geo.zone_of(rw.slba + u64::from(rw.nlb) - 1);
        let offline = || {
            self.ns
                .zones(first, 1)
                .first()
                .is_some_and(|z| z.state == ZoneState::Offline)
        };
        if first != last {
            // QEMU's order: the state of the first zone, then the boundary.
            if offline() {
                return Err(Status::ZONE_OFFLINE);
            }
            tracing::debug!(
                slba = rw.slba,
                nlb = rw.nlb,
                reason = "read crosses a zone boundary (no RAZB)",
                "rejected"
            );
            return Err(Status::ZONE_BOUNDARY);
        }
        // The image refuses offline zones itself; the snapshot is only consulted on error
        // paths, so Zone Is Offline still wins over PRP and transfer errors.
        let ranges = match prp::map(env.mem, rw.dptr, bytes, self.page()) {
            Ok(r) => r,
            Err(_) if offline() => return Err(Status::ZONE_OFFLINE),
            Err(st) => return Err(st),
        };
        if self.null_io.load(Ordering::Relaxed) {
            return Ok(Outcome::status(Status::SUCCESS));
        }
        let offset = rw.slba << self.geo.lba_shift;
        if let Some(pool) = self.pool_for(env, origin.sq) {
            match env.mem.pin(&ranges, true) {
                Ok(Some(mut bufs)) => {
                    let ns = Arc::clone(&self.ns);
                    let stats = Arc::clone(&self.stats);
                    let id = self.id;
                    pool.submit(origin.sq.qid, &origin.sq.inbox, origin.cid, move || {
                        let st = read_into(&ns, id, &stats, offset, bytes, first, &mut *bufs);
                        (st, 0, 0)
                    });
                    return Ok(Outcome::Queued);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(error = %e, reason = "guest memory not mapped", "data transfer error");
                    return Err(if offline() {
                        Status::ZONE_OFFLINE
                    } else {
                        Status::DATA_TRANSFER
                    });
                }
            }
        }
        let mut lent = Lent {
            mem: env.mem,
            ranges: &ranges,
            for_write: true,
        };
        let st = read_into(
            &self.ns,
            self.id,
            &self.stats,
            offset,
            bytes,
            first,
            &mut lent,
        );
        if st.is_success() {
            Ok(Outcome::status(st))
        } else {
            Err(st)
        }
    }

    /// The zone error a write/append would get from the current zone state, if any (used to
    /// order zone errors before transfer errors).
    fn zone_precheck(&self, rw: &Rw, op: Op) -> Option<Status> {
        let idx = self.geo.zone_of(rw.slba);
        let z = *self.ns.zones(idx, 1).first()?;
        match z.state {
            ZoneState::Full => return Some(Status::ZONE_FULL),
            ZoneState::ReadOnly => return Some(Status::ZONE_READ_ONLY),
            ZoneState::Offline => return Some(Status::ZONE_OFFLINE),
            _ => {}
        }
        let start = rw.slba << self.geo.lba_shift;
        let len = u64::from(rw.nlb) << self.geo.lba_shift;
        let at = if op == Op::Append { z.wp } else { start };
        if op == Op::Write && start != z.wp {
            return Some(Status::ZONE_INVALID_WRITE);
        }
        if at + len > z.start + z.capacity {
            return Some(Status::ZONE_BOUNDARY);
        }
        None
    }

    /// Write or Zone Append (an append reports the first LBA written in DW0/DW1).
    fn write(
        &self,
        env: &HostEnv<'_>,
        rw: Rw,
        op: Op,
        origin: &Origin<'_>,
    ) -> Result<Outcome, Status> {
        let bytes = self.check_range(&rw, true)?;
        if op == Op::Append {
            if rw.slba & (self.geo.zone_lbas - 1) != 0 {
                tracing::debug!(
                    slba = rw.slba,
                    reason = "append ZSLBA is not a zone start",
                    "rejected"
                );
                return Err(Status::INVALID_FIELD);
            }
            if bytes > self.geo.max_append {
                tracing::debug!(bytes, reason = "append larger than ZASL", "rejected");
                return Err(Status::INVALID_FIELD);
            }
        }
        let ranges = match prp::map(env.mem, rw.dptr, bytes, self.page()) {
            Ok(r) => r,
            Err(st) => return Err(self.zone_precheck(&rw, op).unwrap_or(st)),
        };
        if self.null_io.load(Ordering::Relaxed) {
            return Ok(written(op, rw.slba));
        }
        let offset = rw.slba << self.geo.lba_shift;
        let fua = rw.fua || !self.wce.load(Ordering::Acquire);
        if let Some(pool) = self.pool_for(env, origin.sq) {
            match env.mem.pin(&ranges, false) {
                Ok(Some(bufs)) => {
                    // Admitted here, in submission order; the data goes on an I/O thread.
                    let _order = pool.ordered();
                    let pending = match op {
                        Op::Write => self.ns.reserve_write(offset, bytes),
                        Op::Append => self.ns.reserve_append(offset, bytes),
                    }
                    .map_err(|e| self.host_error(&e))?;
                    let stats = Arc::clone(&self.stats);
                    let (id, shift) = (self.id, self.geo.lba_shift);
                    pool.submit(origin.sq.qid, &origin.sq.inbox, origin.cid, move || {
                        match write_pinned(pending, id, &stats, fua, bufs) {
                            Ok(at) => {
                                let (dw0, dw1) = result_dws(op, at >> shift);
                                (Status::SUCCESS, dw0, dw1)
                            }
                            Err(st) => (st, 0, 0),
                        }
                    });
                    return Ok(Outcome::Queued);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(error = %e, reason = "guest memory not mapped", "data transfer error");
                    return Err(self.zone_precheck(&rw, op).unwrap_or(Status::DATA_TRANSFER));
                }
            }
        }
        let mut img: Option<Result<u64, ImgError>> = None;
        let r = env
            .mem
            .with_slices(&ranges, false, &mut |bufs: &mut [IoSliceMut<'_>]| {
                let slices: Vec<IoSlice<'_>> = bufs.iter().map(|b| IoSlice::new(b)).collect();
                let res = match op {
                    Op::Write => self.ns.write(offset, &slices, fua).map(|()| offset),
                    Op::Append => self.ns.append(offset, &slices, fua),
                };
                let failed = res.is_err();
                img = Some(res);
                if failed {
                    Err(std::io::Error::other("image write failed"))
                } else {
                    Ok(())
                }
            });
        match img {
            Some(Ok(at)) => {
                self.stats.host_writes.fetch_add(1, Ordering::Relaxed);
                self.stats.bytes_written.fetch_add(bytes, Ordering::Relaxed);
                Ok(written(op, at >> self.geo.lba_shift))
            }
            Some(Err(e)) => Err(self.host_error(&e)),
            None => {
                let why = match r {
                    Err(e) => e.to_string(),
                    Ok(Err(e)) => e.to_string(),
                    Ok(Ok(())) => "transport skipped the transfer".into(),
                };
                tracing::debug!(error = %why, reason = "guest memory not mapped", "data transfer error");
                Err(self.zone_precheck(&rw, op).unwrap_or(Status::DATA_TRANSFER))
            }
        }
    }

    fn write_zeroes(&self, rw: Rw) -> Result<(), Status> {
        self.check_range(&rw, false)?;
        if self.null_io.load(Ordering::Relaxed) {
            return Ok(());
        }
        let offset = rw.slba << self.geo.lba_shift;
        let len = u64::from(rw.nlb) << self.geo.lba_shift;
        let fua = rw.fua || !self.wce.load(Ordering::Acquire);
        self.ns
            .write_zeroes(offset, len, fua)
            .map_err(|e| self.host_error(&e))?;
        self.stats.host_writes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// The queue and command a completion belongs to.
pub(crate) struct Origin<'a> {
    sq: &'a SubQueue,
    cid: u16,
}

/// CQE DW0/DW1 of a successful write: Zone Append reports `lba`, the first LBA written.
fn result_dws(op: Op, lba: u64) -> (u32, u32) {
    match op {
        Op::Write => (0, 0),
        Op::Append => ((lba & 0xFFFF_FFFF) as u32, (lba >> 32) as u32),
    }
}

/// Successful completion of a write (see [`result_dws`]).
fn written(op: Op, lba: u64) -> Outcome {
    let (dw0, dw1) = result_dws(op, lba);
    Outcome::Done {
        status: Status::SUCCESS,
        dw0,
        dw1,
    }
}

/// Guest memory lent for the duration of one call ([`GuestMemory::with_slices`]), seen as
/// [`PinnedBuffers`](crate::PinnedBuffers), so that a transfer run on the poller and one run
/// on an I/O thread share their code.
struct Lent<'a> {
    mem: &'a dyn crate::GuestMemory,
    ranges: &'a [(u64, u64)],
    for_write: bool,
}

impl crate::PinnedBuffers for Lent<'_> {
    fn with(
        &mut self,
        f: &mut dyn FnMut(&mut [IoSliceMut<'_>]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        self.mem
            .with_slices(self.ranges, self.for_write, f)
            .map_err(std::io::Error::other)?
    }
}

/// Map an image error to a status, logging host-side failures.
fn image_status(ctrl: u32, e: &ImgError) -> Status {
    let st = Status::from(e);
    match e {
        ImgError::Zone(_) => tracing::debug!(%st, reason = %e, "zone rule refused command"),
        _ => tracing::warn!(ctrl, %st, error = %e, "image I/O failed"),
    }
    st
}

/// A Read's transfer, on the poller or an I/O thread: image into the guest buffers.
fn read_into(
    ns: &ZonedImage,
    ctrl: u32,
    stats: &Stats,
    offset: u64,
    bytes: u64,
    zone: u32,
    bufs: &mut dyn crate::PinnedBuffers,
) -> Status {
    let mut img_err = None;
    let r = bufs.with(&mut |s: &mut [IoSliceMut<'_>]| {
        ns.read(offset, s).map_err(|e| {
            img_err = Some(e);
            std::io::Error::other("image read failed")
        })
    });
    if let Some(e) = img_err {
        return image_status(ctrl, &e);
    }
    match r {
        Ok(()) => {
            stats.host_reads.fetch_add(1, Ordering::Relaxed);
            stats.bytes_read.fetch_add(bytes, Ordering::Relaxed);
            Status::SUCCESS
        }
        Err(e) => {
            tracing::debug!(error = %e, reason = "guest memory not mapped or not accessible", "data transfer error");
            let offline = ns
                .zones(zone, 1)
                .first()
                .is_some_and(|z| z.state == ZoneState::Offline);
            if offline {
                Status::ZONE_OFFLINE
            } else {
                Status::DATA_TRANSFER
            }
        }
    }
}

/// A Write's or Zone Append's transfer on an I/O thread: the pinned guest buffers into the
/// reserved range. Returns the byte offset written.
fn write_pinned(
    pending: PendingWrite,
    ctrl: u32,
    stats: &Stats,
    fua: bool,
    mut bufs: Box<dyn crate::PinnedBuffers>,
) -> Result<u64, Status> {
    let bytes = pending.len();
    let mut pending = Some(pending);
    let mut img: Option<Result<u64, ImgError>> = None;
    let r = bufs.with(&mut |s: &mut [IoSliceMut<'_>]| {
        let slices: Vec<IoSlice<'_>> = s.iter().map(|b| IoSlice::new(b)).collect();
        if let Some(p) = pending.take() {
            img = Some(p.finish(&slices, fua));
        }
        Ok(())
    });
    match img {
        Some(Ok(at)) => {
            stats.host_writes.fetch_add(1, Ordering::Relaxed);
            stats.bytes_written.fetch_add(bytes, Ordering::Relaxed);
            Ok(at)
        }
        Some(Err(e)) => Err(image_status(ctrl, &e)),
        None => {
            // The buffers could not be lent: the reservation is given back unwritten.
            tracing::debug!(error = ?r.err(), reason = "guest memory not mapped", "data transfer error");
            Err(Status::DATA_TRANSFER)
        }
    }
}
