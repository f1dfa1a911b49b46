//! A fake host for tests (feature `test-utils`): Vec-backed guest memory, doorbell and
//! interrupt fakes, an SQE builder and a small synchronous "host driver" that programs the
//! controller the way Linux does and submits commands one at a time.
//!
//! ```text
//! let mut d = Driver::new(ctrl, 64 << 20);
//! d.init_linux();
//! let c = d.write(1, 0, &vec![0xAB; 4096], false);
//! assert_eq!(c.status, Status::SUCCESS);
//! ```

use crate::{Controller, DmaError, Doorbells, GuestMemory, HostEnv, Interrupts, Status};
use std::collections::HashMap;
use std::io::IoSliceMut;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Guest memory backed by a `Vec<u8>` starting at guest address 0. Addresses at or beyond
/// the size, and ranges punched with [`FakeMemory::unmap`], are not mapped.
pub struct FakeMemory {
    bytes: Arc<Mutex<Vec<u8>>>,
    holes: Mutex<Vec<(u64, u64)>>,
    slices_calls: AtomicU64,
}

impl FakeMemory {
    /// `size` bytes of zeroed memory.
    pub fn new(size: usize) -> FakeMemory {
        FakeMemory {
            bytes: Arc::new(Mutex::new(vec![0; size])),
            holes: Mutex::new(Vec::new()),
            slices_calls: AtomicU64::new(0),
        }
    }

    /// Make `[addr, addr+len)` unmapped.
    pub fn unmap(&self, addr: u64, len: u64) {
        self.holes.lock().unwrap().push((addr, len));
    }

    /// Remove every hole.
    pub fn remap_all(&self) {
        self.holes.lock().unwrap().clear();
    }

    /// Number of `with_slices` calls so far (zero-copy path used).
    pub fn with_slices_calls(&self) -> u64 {
        self.slices_calls.load(Ordering::Relaxed)
    }

    fn check(&self, addr: u64, len: u64, size: usize) -> Result<std::ops::Range<usize>, DmaError> {
        let err = DmaError { addr, len };
        let end = addr.checked_add(len).ok_or(err)?;
        if end > size as u64 {
            return Err(err);
        }
        for &(h, hl) in self.holes.lock().unwrap().iter() {
            if addr < h + hl && h < end {
                return Err(err);
            }
        }
        Ok(addr as usize..end as usize)
    }
}

impl GuestMemory for FakeMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        let mem = self.bytes.lock().unwrap();
        let r = self.check(addr, buf.len() as u64, mem.len())?;
        buf.copy_from_slice(&mem[r]);
        Ok(())
    }

    fn write(&self, addr: u64, data: &[u8]) -> Result<(), DmaError> {
        let mut mem = self.bytes.lock().unwrap();
        let len = mem.len();
        let r = self.check(addr, data.len() as u64, len)?;
        mem[r].copy_from_slice(data);
        Ok(())
    }

    fn with_slices(
        &self,
        ranges: &[(u64, u64)],
        for_write: bool,
        f: &mut dyn FnMut(&mut [IoSliceMut<'_>]) -> std::io::Result<()>,
    ) -> Result<std::io::Result<()>, DmaError> {
        self.slices_calls.fetch_add(1, Ordering::Relaxed);
        // Bounce buffers keep the fake free of aliasing even for overlapping ranges.
        let mut bufs = Vec::with_capacity(ranges.len());
        for &(addr, len) in ranges {
            let mut b = vec![0u8; usize::try_from(len).map_err(|_| DmaError { addr, len })?];
            self.read(addr, &mut b)?;
            bufs.push(b);
        }
        let mut slices: Vec<IoSliceMut<'_>> = bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        let r = f(&mut slices);
        drop(slices);
        if for_write && r.is_ok() {
            for (&(addr, _), b) in ranges.iter().zip(&bufs) {
                self.write(addr, b)?;
            }
        }
        Ok(r)
    }

    fn pin(
        &self,
        ranges: &[(u64, u64)],
        for_write: bool,
    ) -> Result<Option<Box<dyn crate::PinnedBuffers>>, DmaError> {
        // Bounce buffers as in `with_slices`: checked now, copied out after the transfer.
        let mut bufs = Vec::with_capacity(ranges.len());
        for &(addr, len) in ranges {
            let mut b = vec![0u8; usize::try_from(len).map_err(|_| DmaError { addr, len })?];
            self.read(addr, &mut b)?;
            bufs.push(b);
        }
        Ok(Some(Box::new(FakePinned {
            bytes: Arc::clone(&self.bytes),
            ranges: ranges.to_vec(),
            bufs,
            for_write,
        })))
    }
}

/// [`FakeMemory`] buffers pinned for a transfer on an I/O thread.
struct FakePinned {
    bytes: Arc<Mutex<Vec<u8>>>,
    ranges: Vec<(u64, u64)>,
    bufs: Vec<Vec<u8>>,
    for_write: bool,
}

impl crate::PinnedBuffers for FakePinned {
    fn with(
        &mut self,
        f: &mut dyn FnMut(&mut [IoSliceMut<'_>]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let r = {
            let mut slices: Vec<IoSliceMut<'_>> =
                self.bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            f(&mut slices)
        };
        if self.for_write && r.is_ok() {
            let mut mem = self.bytes.lock().unwrap();
            for (&(addr, len), b) in self.ranges.iter().zip(&self.bufs) {
                mem[addr as usize..(addr + len) as usize].copy_from_slice(b);
            }
        }
        r
    }
}

/// Doorbell values as the transport would store them (queue pairs 0..=255).
pub struct FakeDoorbells {
    values: Vec<AtomicU32>,
    clears: AtomicU32,
    per_queue_clear: std::sync::atomic::AtomicBool,
}

impl Default for FakeDoorbells {
    fn default() -> Self {
        FakeDoorbells {
            values: (0..512).map(|_| AtomicU32::new(0)).collect(),
            clears: AtomicU32::new(0),
            per_queue_clear: std::sync::atomic::AtomicBool::new(true),
        }
    }
}

impl FakeDoorbells {
    /// Set SQ `qid`'s tail doorbell.
    pub fn set_sq_tail(&self, qid: u16, v: u32) {
        self.values[usize::from(qid) * 2].store(v, Ordering::Release);
    }
    /// Set CQ `qid`'s head doorbell.
    pub fn set_cq_head(&self, qid: u16, v: u32) {
        self.values[usize::from(qid) * 2 + 1].store(v, Ordering::Release);
    }
    /// Whether `clear_sq_tail`/`clear_cq_head` act (true by default); false behaves like a
    /// transport that keeps the provided no-op methods.
    pub fn set_per_queue_clear(&self, on: bool) {
        self.per_queue_clear.store(on, Ordering::Release);
    }
    /// How many times `clear` was called.
    pub fn clears(&self) -> u32 {
        self.clears.load(Ordering::Relaxed)
    }
}

impl Doorbells for FakeDoorbells {
    fn sq_tail(&self, qid: u16) -> u32 {
        self.values
            .get(usize::from(qid) * 2)
            .map_or(0, |v| v.load(Ordering::Acquire))
    }
    fn cq_head(&self, qid: u16) -> u32 {
        self.values
            .get(usize::from(qid) * 2 + 1)
            .map_or(0, |v| v.load(Ordering::Acquire))
    }
    fn clear_sq_tail(&self, qid: u16) {
        if self.per_queue_clear.load(Ordering::Acquire) {
            self.set_sq_tail(qid, 0);
        }
    }
    fn clear_cq_head(&self, qid: u16) {
        if self.per_queue_clear.load(Ordering::Acquire) {
            self.set_cq_head(qid, 0);
        }
    }
    fn clear(&self) {
        self.clears.fetch_add(1, Ordering::Relaxed);
        for v in &self.values {
            v.store(0, Ordering::Release);
        }
    }
}

/// Counts raised interrupts per vector.
pub struct FakeInterrupts {
    counts: Vec<AtomicU64>,
}

impl Default for FakeInterrupts {
    fn default() -> Self {
        FakeInterrupts {
            counts: (0..=256).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl FakeInterrupts {
    /// Interrupts raised on `vector` so far.
    pub fn count(&self, vector: u16) -> u64 {
        self.counts
            .get(usize::from(vector))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

impl Interrupts for FakeInterrupts {
    fn raise(&self, vector: u16) {
        if let Some(c) = self.counts.get(usize::from(vector)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Memory, doorbells and interrupts of one fake host.
pub struct FakeHost {
    /// Guest memory.
    pub mem: FakeMemory,
    /// Doorbells.
    pub doorbells: FakeDoorbells,
    /// Interrupts.
    pub irq: FakeInterrupts,
    /// `HostEnv::raise_every` of the environments it hands out.
    pub raise_every: usize,
}

impl FakeHost {
    /// A host with `mem_size` bytes of memory.
    pub fn new(mem_size: usize) -> FakeHost {
        FakeHost {
            mem: FakeMemory::new(mem_size),
            doorbells: FakeDoorbells::default(),
            irq: FakeInterrupts::default(),
            raise_every: crate::RAISE_EVERY,
        }
    }
    /// The environment to pass to the controller.
    pub fn env(&self) -> HostEnv<'_> {
        HostEnv {
            mem: &self.mem,
            doorbells: &self.doorbells,
            irq: &self.irq,
            raise_every: self.raise_every,
        }
    }
}

/// A 64-byte submission queue entry under construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command {
    /// The 16 dwords.
    pub dw: [u32; 16],
}

impl Command {
    /// A command with opcode `opc`, namespace 1.
    pub fn new(opc: u8) -> Command {
        let mut dw = [0u32; 16];
        dw[0] = u32::from(opc);
        dw[1] = 1;
        Command { dw }
    }
    /// Set the CID.
    pub fn cid(mut self, cid: u16) -> Command {
        self.dw[0] = (self.dw[0] & 0xFFFF) | (u32::from(cid) << 16);
        self
    }
    /// Set PSDT.
    pub fn psdt(mut self, psdt: u8) -> Command {
        self.dw[0] = (self.dw[0] & !(0x3 << 14)) | (u32::from(psdt & 3) << 14);
        self
    }
    /// Set the raw FUSE bits.
    pub fn fuse(mut self, fuse: u8) -> Command {
        self.dw[0] = (self.dw[0] & !(0x3 << 8)) | (u32::from(fuse & 3) << 8);
        self
    }
    /// Set NSID.
    pub fn nsid(mut self, nsid: u32) -> Command {
        self.dw[1] = nsid;
        self
    }
    /// Set command dword `n` (10..=15 are the command specific ones).
    pub fn cdw(mut self, n: usize, v: u32) -> Command {
        self.dw[n] = v;
        self
    }
    /// Set the data pointer qwords.
    pub fn dptr(mut self, prp1: u64, prp2: u64) -> Command {
        self.dw[6] = prp1 as u32;
        self.dw[7] = (prp1 >> 32) as u32;
        self.dw[8] = prp2 as u32;
        self.dw[9] = (prp2 >> 32) as u32;
        self
    }
    /// Set CDW10/11 to a 64-bit LBA.
    pub fn slba(self, slba: u64) -> Command {
        self.cdw(10, slba as u32).cdw(11, (slba >> 32) as u32)
    }
    /// Read/Write/Append/Write Zeroes with `nlb` blocks (not 0's based here) and FUA.
    pub fn rw(opc: u8, slba: u64, nlb: u32, fua: bool) -> Command {
        Command::new(opc)
            .slba(slba)
            .cdw(12, (nlb - 1) | if fua { 1 << 30 } else { 0 })
    }
    /// Identify.
    pub fn identify(cns: u8, nsid: u32, csi: u8) -> Command {
        Command::new(0x06)
            .nsid(nsid)
            .cdw(10, u32::from(cns))
            .cdw(11, u32::from(csi) << 24)
    }
    /// Get Log Page of `len` bytes (multiple of 4) at `offset`.
    pub fn get_log(lid: u8, nsid: u32, len: u32, offset: u64, csi: u8) -> Command {
        let numd = len / 4 - 1;
        Command::new(0x02)
            .nsid(nsid)
            .cdw(10, u32::from(lid) | ((numd & 0xFFFF) << 16))
            .cdw(11, numd >> 16)
            .cdw(12, offset as u32)
            .cdw(13, (offset >> 32) as u32)
            .cdw(14, u32::from(csi) << 24)
    }
    /// Create I/O CQ (`size` entries, physically contiguous).
    pub fn create_cq(qid: u16, size: u32, base: u64, ien: bool, iv: u16) -> Command {
        Command::new(0x05)
            .nsid(0)
            .dptr(base, 0)
            .cdw(10, u32::from(qid) | ((size - 1) << 16))
            .cdw(11, 1 | if ien { 2 } else { 0 } | (u32::from(iv) << 16))
    }
    /// Create I/O SQ (`size` entries, physically contiguous).
    pub fn create_sq(qid: u16, size: u32, base: u64, cqid: u16) -> Command {
        Command::new(0x01)
            .nsid(0)
            .dptr(base, 0)
            .cdw(10, u32::from(qid) | ((size - 1) << 16))
            .cdw(11, 1 | (u32::from(cqid) << 16))
    }
    /// Delete I/O SQ.
    pub fn delete_sq(qid: u16) -> Command {
        Command::new(0x00).nsid(0).cdw(10, u32::from(qid))
    }
    /// Delete I/O CQ.
    pub fn delete_cq(qid: u16) -> Command {
        Command::new(0x04).nsid(0).cdw(10, u32::from(qid))
    }
    /// Set Features.
    pub fn set_features(fid: u8, dw11: u32) -> Command {
        Command::new(0x09)
            .nsid(0)
            .cdw(10, u32::from(fid))
            .cdw(11, dw11)
    }
    /// Get Features.
    pub fn get_features(fid: u8, sel: u8) -> Command {
        Command::new(0x0A)
            .nsid(0)
            .cdw(10, u32::from(fid) | (u32::from(sel) << 8))
    }
    /// Zone Management Send.
    pub fn zone_send(slba: u64, zsa: u8, select_all: bool) -> Command {
        Command::new(0x79)
            .slba(slba)
            .cdw(13, u32::from(zsa) | if select_all { 1 << 8 } else { 0 })
    }
    /// Zone Management Receive into a `len`-byte buffer.
    pub fn zone_recv(slba: u64, len: u32, zra: u8, zrasf: u8, partial: bool) -> Command {
        Command::new(0x7A).slba(slba).cdw(12, len / 4 - 1).cdw(
            13,
            u32::from(zra) | (u32::from(zrasf) << 8) | if partial { 1 << 16 } else { 0 },
        )
    }
    /// Little-endian bytes.
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        for (i, d) in self.dw.iter().enumerate() {
            b[i * 4..i * 4 + 4].copy_from_slice(&d.to_le_bytes());
        }
        b
    }
}

/// A completion as read back from a CQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// DW0.
    pub dw0: u32,
    /// DW1.
    pub dw1: u32,
    /// SQ head pointer.
    pub sqhd: u16,
    /// SQ identifier.
    pub sqid: u16,
    /// Command identifier.
    pub cid: u16,
    /// Phase tag.
    pub phase: bool,
    /// Status.
    pub status: Status,
}

impl Completion {
    fn parse(b: &[u8; 16]) -> Completion {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let st = u16_at(14);
        Completion {
            dw0: u32_at(0),
            dw1: u32_at(4),
            sqhd: u16_at(8),
            sqid: u16_at(10),
            cid: u16_at(12),
            phase: st & 1 != 0,
            status: Status::from_field(st >> 1),
        }
    }
    /// DW0 | DW1 << 32 (Zone Append assigned LBA).
    pub fn result64(&self) -> u64 {
        u64::from(self.dw0) | (u64::from(self.dw1) << 32)
    }
}

/// One zone descriptor of a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedZone {
    /// Zone type.
    pub zt: u8,
    /// Zone state (ZS code, 4 bits).
    pub zs: u8,
    /// Zone attributes.
    pub za: u8,
    /// Capacity (LBAs).
    pub zcap: u64,
    /// Start LBA.
    pub zslba: u64,
    /// Write pointer (LBA).
    pub wp: u64,
    /// Extension bytes (extended report).
    pub ext: Vec<u8>,
}

/// Parse a zone report: (number of zones in the header, the descriptors present). Descriptors
/// are read up to `count` (or as many as fit the buffer).
pub fn parse_report(buf: &[u8], ext_bytes: usize, count: usize) -> (u64, Vec<ReportedZone>) {
    let u64_at = |i: usize| u64::from_le_bytes(buf[i..i + 8].try_into().unwrap());
    let nr = u64_at(0);
    let dsize = 64 + ext_bytes;
    let fit = (buf.len() - 64) / dsize;
    let zones = (0..count.min(fit))
        .map(|i| {
            let at = 64 + i * dsize;
            ReportedZone {
                zt: buf[at] & 0xF,
                zs: buf[at + 1] >> 4,
                za: buf[at + 2],
                zcap: u64_at(at + 8),
                zslba: u64_at(at + 16),
                wp: u64_at(at + 24),
                ext: buf[at + 64..at + dsize].to_vec(),
            }
        })
        .collect();
    (nr, zones)
}

#[derive(Debug, Clone)]
struct SqState {
    base: u64,
    size: u32,
    tail: u32,
    cqid: u16,
}

#[derive(Debug, Clone)]
struct CqState {
    base: u64,
    size: u32,
    head: u32,
    phase: bool,
}

/// A synchronous host driver: programs the controller, submits one command at a time and
/// runs the controller's processing functions itself (no threads).
pub struct Driver {
    /// The controller.
    pub ctrl: Arc<Controller>,
    /// The fake host.
    pub host: FakeHost,
    next: u64,
    mem_size: u64,
    sqs: HashMap<u16, SqState>,
    cqs: HashMap<u16, CqState>,
    cid: u16,
    /// LBA size learned from Identify Namespace (4096 until `init_linux`).
    pub lba_size: u32,
}

/// CC value Linux writes (EN, CSS, MPS 4 KiB, IOSQES 6, IOCQES 4).
pub fn cc_value(css: u8) -> u32 {
    1 | (u32::from(css) << 4) | (6 << 16) | (4 << 20)
}

impl Driver {
    /// A driver with `mem_size` bytes of guest memory.
    pub fn new(ctrl: Arc<Controller>, mem_size: usize) -> Driver {
        Driver {
            ctrl,
            host: FakeHost::new(mem_size),
            next: 0x10000,
            mem_size: mem_size as u64,
            sqs: HashMap::new(),
            cqs: HashMap::new(),
            cid: 0,
            lba_size: 4096,
        }
    }

    /// Allocate `len` bytes of zeroed, page-aligned guest memory.
    pub fn alloc(&mut self, len: u64) -> u64 {
        let addr = self.next;
        let len = len.max(1).div_ceil(4096) * 4096;
        assert!(addr + len <= self.mem_size, "fake guest memory exhausted");
        self.next += len;
        self.host.mem.write(addr, &vec![0u8; len as usize]).unwrap();
        addr
    }

    /// Read a 32-bit register.
    pub fn reg32(&self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.ctrl.mmio_read(off, &mut b);
        u32::from_le_bytes(b)
    }

    /// Read a 64-bit register.
    pub fn reg64(&self, off: u64) -> u64 {
        let mut b = [0u8; 8];
        self.ctrl.mmio_read(off, &mut b);
        u64::from_le_bytes(b)
    }

    /// Write a 32-bit register.
    pub fn set_reg32(&self, off: u64, v: u32) -> crate::RegEffect {
        self.ctrl
            .mmio_write(&self.host.env(), off, &v.to_le_bytes())
    }

    /// Write a 64-bit register.
    pub fn set_reg64(&self, off: u64, v: u64) -> crate::RegEffect {
        self.ctrl
            .mmio_write(&self.host.env(), off, &v.to_le_bytes())
    }

    /// Program the admin queue (`entries` each) and write CC with `cc`. Returns CSTS.
    pub fn enable_with(&mut self, cc: u32, entries: u32) -> u32 {
        let asq = self.alloc(u64::from(entries) * 64);
        let acq = self.alloc(u64::from(entries) * 16);
        self.set_reg32(0x24, (entries - 1) | ((entries - 1) << 16));
        self.set_reg64(0x28, asq);
        self.set_reg64(0x30, acq);
        self.sqs.clear();
        self.cqs.clear();
        self.sqs.insert(
            0,
            SqState {
                base: asq,
                size: entries,
                tail: 0,
                cqid: 0,
            },
        );
        self.cqs.insert(
            0,
            CqState {
                base: acq,
                size: entries,
                head: 0,
                phase: true,
            },
        );
        self.set_reg32(0x14, cc);
        self.reg32(0x1C)
    }

    /// Enable with the command set selection `css` (0 NVM, 6 all). Returns CSTS.
    pub fn enable(&mut self, css: u8) -> u32 {
        self.enable_with(cc_value(css), 32)
    }

    /// Clear CC.EN (controller reset); host-side queues are forgotten.
    pub fn disable(&mut self) -> crate::RegEffect {
        let cc = self.reg32(0x14) & !1;
        self.sqs.clear();
        self.cqs.clear();
        self.set_reg32(0x14, cc)
    }

    /// Write a command into SQ `sqid` and ring its doorbell (without processing). Returns CID.
    pub fn submit(&mut self, sqid: u16, cmd: Command) -> u16 {
        self.cid = self.cid.wrapping_add(1);
        let cid = self.cid;
        let sq = self.sqs.get_mut(&sqid).expect("no such SQ");
        let at = sq.base + u64::from(sq.tail) * 64;
        self.host.mem.write(at, &cmd.cid(cid).to_bytes()).unwrap();
        sq.tail = (sq.tail + 1) % sq.size;
        self.host.doorbells.set_sq_tail(sqid, sq.tail);
        cid
    }

    /// Run the controller's admin and I/O processing once (single poller).
    pub fn process(&self) -> usize {
        let env = self.host.env();
        self.ctrl.process_admin(&env) + self.ctrl.process_io(&env, 0, 1)
    }

    /// Take the next completion from CQ `cqid`, if one was posted, and ring its head doorbell.
    pub fn reap(&mut self, cqid: u16) -> Option<Completion> {
        let cq = self.cqs.get_mut(&cqid).expect("no such CQ");
        let mut b = [0u8; 16];
        self.host
            .mem
            .read(cq.base + u64::from(cq.head) * 16, &mut b)
            .unwrap();
        let c = Completion::parse(&b);
        if c.phase != cq.phase {
            return None;
        }
        cq.head += 1;
        if cq.head == cq.size {
            cq.head = 0;
            cq.phase = !cq.phase;
        }
        self.host.doorbells.set_cq_head(cqid, cq.head);
        Some(c)
    }

    /// Process until a completion appears on CQ `cqid` (commands on I/O threads complete a
    /// little later); panics after 10 s without one.
    pub fn wait_reap(&mut self, cqid: u16) -> Option<Completion> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            self.process();
            if let Some(c) = self.reap(cqid) {
                return Some(c);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
    }

    /// Submit to SQ `sqid`, process, and return the completion (panics if none was posted).
    pub fn run(&mut self, sqid: u16, cmd: Command) -> Completion {
        let cid = self.submit(sqid, cmd);
        self.process();
        let cqid = self.sqs[&sqid].cqid;
        let c = match self.reap(cqid) {
            Some(c) => Some(c),
            None if self.ctrl.io_threads() > 0 => self.wait_reap(cqid),
            None => None,
        }
        .unwrap_or_else(|| panic!("no completion for {cmd:?}"));
        assert_eq!(c.cid, cid, "completion for another command");
        c
    }

    /// Run an admin command.
    pub fn admin(&mut self, cmd: Command) -> Completion {
        self.run(0, cmd)
    }

    /// Build a PRP pair (and list pages) for the contiguous buffer `[addr, addr+len)`.
    pub fn prps(&mut self, addr: u64, len: u64) -> (u64, u64) {
        let first = (4096 - (addr % 4096)).min(len);
        let rest = len - first;
        if rest == 0 {
            return (addr, 0);
        }
        let second = addr + first;
        if rest <= 4096 {
            return (addr, second);
        }
        let pages: Vec<u64> = (0..rest.div_ceil(4096))
            .map(|i| second + i * 4096)
            .collect();
        // A list page holds 512 entries; when more remain, its last slot chains onward.
        let first_list = self.alloc(4096);
        let mut list = first_list;
        let mut idx = 0;
        loop {
            let left = pages.len() - idx;
            let mut bytes = Vec::new();
            if left <= 512 {
                for p in &pages[idx..] {
                    bytes.extend_from_slice(&p.to_le_bytes());
                }
                self.host.mem.write(list, &bytes).unwrap();
                break;
            }
            for p in &pages[idx..idx + 511] {
                bytes.extend_from_slice(&p.to_le_bytes());
            }
            let next = self.alloc(4096);
            bytes.extend_from_slice(&next.to_le_bytes());
            self.host.mem.write(list, &bytes).unwrap();
            idx += 511;
            list = next;
        }
        (addr, first_list)
    }

    /// Run `cmd` with a fresh `len`-byte buffer as its data (PRPs); returns the completion
    /// and the buffer contents afterwards.
    pub fn run_with_buffer(
        &mut self,
        sqid: u16,
        cmd: Command,
        len: u64,
        data: Option<&[u8]>,
    ) -> (Completion, Vec<u8>) {
        let buf = self.alloc(len);
        if let Some(d) = data {
            self.host.mem.write(buf, d).unwrap();
        }
        let (p1, p2) = self.prps(buf, len);
        let c = self.run(sqid, cmd.dptr(p1, p2));
        let mut out = vec![0u8; len as usize];
        self.host.mem.read(buf, &mut out).unwrap();
        (c, out)
    }

    /// Identify (4096 bytes).
    pub fn identify(&mut self, cns: u8, nsid: u32, csi: u8) -> (Completion, Vec<u8>) {
        self.run_with_buffer(0, Command::identify(cns, nsid, csi), 4096, None)
    }

    /// Get Log Page.
    pub fn get_log(
        &mut self,
        lid: u8,
        nsid: u32,
        len: u32,
        offset: u64,
        csi: u8,
    ) -> (Completion, Vec<u8>) {
        self.run_with_buffer(
            0,
            Command::get_log(lid, nsid, len, offset, csi),
            u64::from(len),
            None,
        )
    }

    /// Create I/O CQ `qid` and SQ `qid` (bound to it) with `size` entries and vector `qid`.
    pub fn create_io_pair(&mut self, qid: u16, size: u32) -> (Completion, Completion) {
        let cq = self.alloc(u64::from(size) * 16);
        let c1 = self.admin(Command::create_cq(qid, size, cq, true, qid));
        if c1.status.is_success() {
            self.cqs.insert(
                qid,
                CqState {
                    base: cq,
                    size,
                    head: 0,
                    phase: true,
                },
            );
        }
        let sq = self.alloc(u64::from(size) * 64);
        let c2 = self.admin(Command::create_sq(qid, size, sq, qid));
        if c2.status.is_success() {
            self.sqs.insert(
                qid,
                SqState {
                    base: sq,
                    size,
                    tail: 0,
                    cqid: qid,
                },
            );
        }
        (c1, c2)
    }

    /// Linux-like bring-up: enable with CSS 110b, Identify Controller, Number of Queues,
    /// Identify Namespace (learns the LBA size), one I/O queue pair (qid 1, 64 entries).
    pub fn init_linux(&mut self) {
        let csts = self.enable(0b110);
        assert_eq!(
            csts & 1,
            1,
            "controller not ready after enable (CSTS {csts:#x})"
        );
        let (c, _) = self.identify(0x01, 0, 0);
        assert!(c.status.is_success(), "identify controller: {:?}", c.status);
        let c = self.admin(Command::set_features(0x07, 0x0000_0000));
        assert!(c.status.is_success(), "number of queues: {:?}", c.status);
        let (c, ns) = self.identify(0x00, 1, 0);
        assert!(c.status.is_success(), "identify namespace: {:?}", c.status);
        self.lba_size = 1 << ns[128 + 2];
        let (c1, c2) = self.create_io_pair(1, 64);
        assert!(
            c1.status.is_success() && c2.status.is_success(),
            "queue creation failed"
        );
    }

    /// Read `nlb` blocks at `slba` on SQ `qid`.
    pub fn read(&mut self, qid: u16, slba: u64, nlb: u32) -> (Completion, Vec<u8>) {
        let len = u64::from(nlb) * u64::from(self.lba_size);
        self.run_with_buffer(qid, Command::rw(0x02, slba, nlb, false), len, None)
    }

    /// Write `data` (whole blocks) at `slba` on SQ `qid`.
    pub fn write(&mut self, qid: u16, slba: u64, data: &[u8], fua: bool) -> Completion {
        let nlb = u32::try_from(data.len() / self.lba_size as usize).unwrap();
        self.run_with_buffer(
            qid,
            Command::rw(0x01, slba, nlb, fua),
            data.len() as u64,
            Some(data),
        )
        .0
    }

    /// Zone Append `data` to the zone starting at `zslba` on SQ `qid`.
    pub fn append(&mut self, qid: u16, zslba: u64, data: &[u8]) -> Completion {
        let nlb = u32::try_from(data.len() / self.lba_size as usize).unwrap();
        self.run_with_buffer(
            qid,
            Command::rw(0x7D, zslba, nlb, false),
            data.len() as u64,
            Some(data),
        )
        .0
    }

    /// Zone Management Send without data.
    pub fn zone_send(&mut self, qid: u16, slba: u64, zsa: u8, select_all: bool) -> Completion {
        self.run(qid, Command::zone_send(slba, zsa, select_all))
    }

    /// Zone Management Receive into a `len`-byte buffer.
    pub fn report(
        &mut self,
        qid: u16,
        slba: u64,
        len: u32,
        zra: u8,
        zrasf: u8,
        partial: bool,
    ) -> (Completion, Vec<u8>) {
        self.run_with_buffer(
            qid,
            Command::zone_recv(slba, len, zra, zrasf, partial),
            u64::from(len),
            None,
        )
    }
}
