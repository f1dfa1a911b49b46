//! I/O command execution: Read, Write, Write Zeroes, Flush, Zone Append, and dispatch of the
//! zone management commands. Data moves zero-copy: the data pointer is walked into guest
//! ranges, then the image reads or writes straight into/from those ranges.
//!
//! Error precedence (QEMU's order, reference doc 6.4): MDTS → LBA range → append ZSLBA/ZASL →
//! zone state → write pointer → zone capacity → resources → data transfer. Zone rules are
//! enforced by the image atomically; a snapshot of the zone is only consulted when the data
//! pointer or the transfer failed, so that a zone error still wins over a transfer error.

use crate::cmd::{IoCmd, Rw};
use crate::ctrl::{Ctrl, Outcome};
use crate::prp;
use crate::status::Status;
use crate::wire::Sqe;
use crate::HostEnv;
use qcow2zoned::{Error as ImgError, ZoneState};
use std::io::{IoSlice, IoSliceMut};
use std::sync::atomic::Ordering;

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
    pub(crate) fn exec_io(&self, env: &HostEnv<'_>, sqe: &Sqe, cmd: IoCmd) -> Outcome {
        let nsid = sqe.nsid.get();
        let out = self.exec_io_inner(env, sqe, cmd);
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

    fn exec_io_inner(&self, env: &HostEnv<'_>, sqe: &Sqe, cmd: IoCmd) -> Outcome {
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
        match cmd {
            IoCmd::Flush => self.ns.flush().map_err(|e| self.host_error(&e)).into(),
            IoCmd::Read(rw) => self.read(env, rw).into(),
            IoCmd::Write(rw) => self.write(env, rw, Op::Write).map(|_| ()).into(),
            IoCmd::WriteZeroes(rw) => self.write_zeroes(rw).into(),
            IoCmd::ZoneAppend(rw) => match self.write(env, rw, Op::Append) {
                Ok(lba) => Outcome::Done {
                    status: Status::SUCCESS,
                    dw0: (lba & 0xFFFF_FFFF) as u32,
                    dw1: (lba >> 32) as u32,
                },
                Err(st) => Outcome::status(st),
            },
            IoCmd::ZoneSend(z) => self.zone_send(env, z).into(),
            IoCmd::ZoneRecv(r) => self.zone_recv(env, r).into(),
            IoCmd::Invalid(_) => Outcome::status(Status::INVALID_OPCODE),
        }
    }

    /// Map an image error to a status, logging host-side failures.
    fn host_error(&self, e: &ImgError) -> Status {
        let st = Status::from(e);
        match e {
            ImgError::Zone(_) => tracing::debug!(%st, reason = %e, "zone rule refused command"),
            _ => tracing::warn!(ctrl = self.id, %st, error = %e, "image I/O failed"),
        }
        st
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

    fn read(&self, env: &HostEnv<'_>, rw: Rw) -> Result<(), Status> {
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
            return Ok(());
        }
        let offset = rw.slba << self.geo.lba_shift;
        let mut img_err = None;
        let r = env
            .mem
            .with_slices(&ranges, true, &mut |bufs: &mut [IoSliceMut<'_>]| {
                self.ns.read(offset, bufs).map_err(|e| {
                    img_err = Some(e);
                    std::io::Error::other("image read failed")
                })
            });
        if let Some(e) = img_err {
            return Err(self.host_error(&e));
        }
        match r {
            Ok(Ok(())) => {
                self.stats.host_reads.fetch_add(1, Ordering::Relaxed);
                self.stats.bytes_read.fetch_add(bytes, Ordering::Relaxed);
                Ok(())
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, reason = "guest memory access failed", "data transfer error");
                Err(if offline() {
                    Status::ZONE_OFFLINE
                } else {
                    Status::DATA_TRANSFER
                })
            }
            Err(e) => {
                tracing::debug!(error = %e, reason = "guest memory not mapped", "data transfer error");
                Err(if offline() {
                    Status::ZONE_OFFLINE
                } else {
                    Status::DATA_TRANSFER
                })
            }
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

    /// Write or Zone Append. Returns the first LBA written.
    fn write(&self, env: &HostEnv<'_>, rw: Rw, op: Op) -> Result<u64, Status> {
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
            return Ok(rw.slba);
        }
        let offset = rw.slba << self.geo.lba_shift;
        let fua = rw.fua || !self.wce.load(Ordering::Acquire);
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
                Ok(at >> self.geo.lba_shift)
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
