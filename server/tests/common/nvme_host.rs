//! A small NVMe host driver speaking vfio-user, initialising the controller the way Linux
//! does: CC/AQA/ASQ/ACQ, Identify, Number of Queues, I/O CQ/SQ pairs with MSI-X vectors.

use super::{cfg_write16, map_doorbells, GuestRam, Irq, RAM_SIZE};
use std::time::{Duration, Instant};
use znsd::dma::SharedMapping;

/// Opcodes.
pub mod opc {
    pub const DELETE_SQ: u8 = 0x00;
    pub const CREATE_SQ: u8 = 0x01;
    pub const GET_LOG: u8 = 0x02;
    pub const CREATE_CQ: u8 = 0x05;
    pub const IDENTIFY: u8 = 0x06;
    pub const SET_FEATURES: u8 = 0x09;
    pub const FLUSH: u8 = 0x00;
    pub const WRITE: u8 = 0x01;
    pub const READ: u8 = 0x02;
    pub const ZONE_SEND: u8 = 0x79;
    pub const ZONE_RECV: u8 = 0x7a;
    pub const ZONE_APPEND: u8 = 0x7d;
}

/// Zone send actions.
pub mod zsa {
    pub const CLOSE: u8 = 1;
    pub const FINISH: u8 = 2;
    pub const OPEN: u8 = 3;
    pub const RESET: u8 = 4;
    pub const SET_ZDE: u8 = 0x10;
}

/// Submission queue entries come from the nvme crate's test builders.
pub use nvme::test_utils::Command as Sqe;

/// A completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cqe {
    pub dw0: u32,
    pub dw1: u32,
    pub sqhd: u16,
    pub sqid: u16,
    pub cid: u16,
    /// Status field without the phase bit: (sct, sc).
    pub sct: u8,
    pub sc: u8,
    pub dnr: bool,
}

impl Cqe {
    pub fn ok(&self) -> bool {
        self.sct == 0 && self.sc == 0
    }
    pub fn status(&self) -> (u8, u8) {
        (self.sct, self.sc)
    }
    pub fn result64(&self) -> u64 {
        u64::from(self.dw0) | (u64::from(self.dw1) << 32)
    }
}

/// Statuses used in the tests (sct, sc).
pub mod st {
    pub const SUCCESS: (u8, u8) = (0, 0);
    pub const INVALID_OPCODE: (u8, u8) = (0, 0x01);
    pub const INVALID_FIELD: (u8, u8) = (0, 0x02);
    pub const DATA_TRANSFER: (u8, u8) = (0, 0x04);
    pub const LBA_RANGE: (u8, u8) = (0, 0x80);
    pub const INVALID_QID: (u8, u8) = (1, 0x01);
    pub const ZONE_BOUNDARY: (u8, u8) = (1, 0xb8);
    pub const ZONE_FULL: (u8, u8) = (1, 0xb9);
    pub const ZONE_INVALID_WRITE: (u8, u8) = (1, 0xbc);
    pub const TOO_MANY_ACTIVE: (u8, u8) = (1, 0xbd);
    pub const TOO_MANY_OPEN: (u8, u8) = (1, 0xbe);
    pub const INVALID_TRANSITION: (u8, u8) = (1, 0xbf);
}

struct Queue {
    sq: u64,
    cq: u64,
    size: u32,
    tail: u32,
    head: u32,
    phase: bool,
}

/// How doorbells reach the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DoorbellPath {
    /// Stores into the mmapped sparse area (QEMU's fast path).
    Mapped,
    /// REGION_WRITE messages (QEMU with INTx pending).
    Trapped,
}

/// The host.
pub struct Host {
    pub c: vfio_user::Client,
    pub ram: GuestRam,
    db: SharedMapping,
    pub path: DoorbellPath,
    queues: Vec<Option<Queue>>,
    pub irqs: Vec<Irq>,
    next: u64,
    cid: u16,
    pub lba: u32,
    pub timeout: Duration,
}

pub const ADMIN_ENTRIES: u32 = 32;
pub const IO_ENTRIES: u32 = 64;

impl Host {
    /// Connect, DMA-map all guest RAM (memfd), switch to MSI-X with one eventfd per vector.
    pub fn connect(socket: &std::path::Path, path: DoorbellPath, vectors: u16) -> Host {
        let mut c = vfio_user::Client::new(socket).unwrap();
        let ram = GuestRam::new();
        c.dma_map(0, 0, RAM_SIZE, ram.raw_fd()).unwrap();
        let (db, _) = map_doorbells(&c);
        let irqs = Self::setup_msix(&mut c, vectors);
        Host {
            c,
            ram,
            db,
            path,
            queues: Vec::new(),
            irqs,
            next: 0x10000,
            cid: 0,
            lba: 4096,
            timeout: Duration::from_secs(10),
        }
    }

    /// Like firmware (SeaBIOS): no MSI-X, one INTx eventfd (returned as `irqs[0]`), doorbells
    /// trapped as QEMU does while INTx is in use.
    pub fn connect_intx(socket: &std::path::Path) -> Host {
        use vfio_bindings::bindings::vfio::*;
        let mut c = vfio_user::Client::new(socket).unwrap();
        let ram = GuestRam::new();
        c.dma_map(0, 0, RAM_SIZE, ram.raw_fd()).unwrap();
        let (db, _) = map_doorbells(&c);
        cfg_write16(&mut c, 4, 0x0006);
        let intx = Irq::new();
        c.set_irqs(
            0,
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            0,
            1,
            &[intx.raw()],
        )
        .unwrap();
        Host {
            c,
            ram,
            db,
            path: DoorbellPath::Trapped,
            queues: Vec::new(),
            irqs: vec![intx],
            next: 0x10000,
            cid: 0,
            lba: 4096,
            timeout: Duration::from_secs(10),
        }
    }

    /// INTx end of interrupt as QEMU without KVM reports it (DATA_NONE | UNMASK).
    pub fn intx_eoi(&mut self) {
        use vfio_bindings::bindings::vfio::*;
        self.c
            .set_irqs(
                0,
                VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK,
                0,
                1,
                &[],
            )
            .unwrap();
    }

    /// Bus master + memory, MSI-X enable (as Linux does and QEMU forwards), one eventfd per
    /// vector (one SET_IRQS each, like QEMU without NORESIZE).
    pub fn setup_msix(c: &mut vfio_user::Client, vectors: u16) -> Vec<Irq> {
        cfg_write16(c, 4, 0x0006);
        cfg_write16(c, 0x52, 0x8000);
        let irqs: Vec<Irq> = (0..vectors).map(|_| Irq::new()).collect();
        for (v, irq) in irqs.iter().enumerate() {
            c.set_irqs(
                2,
                vfio_bindings::bindings::vfio::VFIO_IRQ_SET_DATA_EVENTFD
                    | vfio_bindings::bindings::vfio::VFIO_IRQ_SET_ACTION_TRIGGER,
                u32::try_from(v).unwrap(),
                1,
                &[irq.raw()],
            )
            .unwrap();
        }
        irqs
    }

    /// What QEMU does on a system reset (guest reboot): interrupts off, command register
    /// cleared, DEVICE_RESET, INTx back on, BAR registers zeroed. DMA maps stay. Host-side
    /// queues are forgotten.
    pub fn system_reset(&mut self) {
        use vfio_bindings::bindings::vfio::*;
        let none_trigger = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER;
        self.c.set_irqs(2, none_trigger, 0, 0, &[]).unwrap();
        self.c.set_irqs(0, none_trigger, 0, 0, &[]).unwrap();
        cfg_write16(&mut self.c, 0x52, 0);
        cfg_write16(&mut self.c, 4, 0);
        self.c.reset().unwrap();
        let intx = Irq::new();
        self.c
            .set_irqs(
                0,
                VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
                0,
                1,
                &[intx.raw()],
            )
            .unwrap();
        for bar in 0..6u64 {
            self.c
                .region_write(7, 0x10 + 4 * bar, &0u32.to_le_bytes())
                .unwrap();
        }
        self.queues.clear();
        let n = u16::try_from(self.irqs.len()).unwrap();
        self.irqs = Self::setup_msix(&mut self.c, n);
    }

    /// Make the next allocations start at `addr` (page aligned): keeps the host's own queues
    /// and buffers away from memory a test lets the device write anywhere in.
    pub fn alloc_from(&mut self, addr: u64) {
        assert_eq!(addr % 4096, 0);
        self.next = addr;
    }

    /// Allocate zeroed page-aligned guest memory.
    pub fn alloc(&mut self, len: u64) -> u64 {
        let a = self.next;
        let len = len.max(1).div_ceil(4096) * 4096;
        assert!(a + len <= RAM_SIZE, "guest RAM exhausted");
        self.next += len;
        self.ram.fill(a, usize::try_from(len).unwrap(), 0);
        a
    }

    pub fn reg32(&mut self, off: u64) -> u32 {
        super::bar_read32(&mut self.c, off)
    }
    pub fn reg64(&mut self, off: u64) -> u64 {
        super::bar_read64(&mut self.c, off)
    }
    pub fn set_reg32(&mut self, off: u64, v: u32) {
        super::bar_write32(&mut self.c, off, v);
    }
    pub fn set_reg64(&mut self, off: u64, v: u64) {
        super::bar_write64(&mut self.c, off, v);
    }

    fn ring(&mut self, off: u64, v: u32) {
        match self.path {
            DoorbellPath::Mapped => self.db.store_u32_release(off - 0x1000, v),
            DoorbellPath::Trapped => self.set_reg32(off, v),
        }
    }

    /// Host view of a queue: (SQ base, CQ base, entries, SQ tail, CQ head, CQ phase).
    pub fn queue_state(&self, qid: u16) -> Option<(u64, u64, u32, u32, u32, bool)> {
        let q = self.queues.get(usize::from(qid))?.as_ref()?;
        Some((q.sq, q.cq, q.size, q.tail, q.head, q.phase))
    }

    /// Raw doorbell write (for misprogramming tests).
    pub fn ring_sq(&mut self, qid: u16, v: u32) {
        self.ring(0x1000 + 8 * u64::from(qid), v);
    }

    /// Wait for CSTS.RDY == `rdy` (or CFS); returns CSTS.
    pub fn wait_ready(&mut self, rdy: bool) -> u32 {
        let t0 = Instant::now();
        loop {
            let csts = self.reg32(0x1c);
            if (csts & 1 != 0) == rdy || csts & 2 != 0 {
                return csts;
            }
            assert!(t0.elapsed() < self.timeout, "CSTS.RDY never became {rdy}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// CC.EN = 0 and wait for RDY = 0; host queues forgotten.
    pub fn disable(&mut self) {
        let cc = self.reg32(0x14);
        self.set_reg32(0x14, cc & !1);
        self.wait_ready(false);
        self.queues.clear();
    }

    /// Program admin queues and enable (CSS = all I/O command sets, like Linux with ZNS).
    pub fn enable(&mut self) -> u32 {
        let asq = self.alloc(u64::from(ADMIN_ENTRIES) * 64);
        let acq = self.alloc(u64::from(ADMIN_ENTRIES) * 16);
        self.set_reg32(0x24, (ADMIN_ENTRIES - 1) | ((ADMIN_ENTRIES - 1) << 16));
        self.set_reg64(0x28, asq);
        self.set_reg64(0x30, acq);
        self.queues.clear();
        self.queues.push(Some(Queue {
            sq: asq,
            cq: acq,
            size: ADMIN_ENTRIES,
            tail: 0,
            head: 0,
            phase: true,
        }));
        self.set_reg32(0x14, 1 | (6 << 4) | (6 << 16) | (4 << 20));
        self.wait_ready(true)
    }

    /// Submit on `qid` without waiting; returns the CID.
    pub fn submit(&mut self, qid: u16, sqe: Sqe) -> u16 {
        self.cid = self.cid.wrapping_add(1);
        let cid = self.cid;
        let q = self.queues[usize::from(qid)]
            .as_mut()
            .expect("queue exists");
        let slot = q.sq + u64::from(q.tail) * 64;
        q.tail = (q.tail + 1) % q.size;
        let tail = q.tail;
        self.ram.write(slot, &sqe.cid(cid).to_bytes());
        self.ring(0x1000 + 8 * u64::from(qid), tail);
        cid
    }

    /// Wait for the next completion on `qid` and ring the CQ head doorbell.
    pub fn reap(&mut self, qid: u16) -> Cqe {
        self.reap_opt(qid, true)
    }

    /// Wait for the next completion on `qid` without telling the controller (the CQ head
    /// doorbell is left alone; see [`Host::ring_cq_head`]).
    pub fn reap_quiet(&mut self, qid: u16) -> Cqe {
        self.reap_opt(qid, false)
    }

    /// Ring the CQ head doorbell with the host's current head.
    pub fn ring_cq_head(&mut self, qid: u16) {
        let head = self.queues[usize::from(qid)].as_ref().expect("queue").head;
        self.ring(0x1000 + 8 * u64::from(qid) + 4, head);
    }

    /// Whether a completion is visible at the host's CQ head.
    pub fn cq_pending(&self, qid: u16) -> bool {
        let q = self.queues[usize::from(qid)].as_ref().expect("queue");
        let b = self.ram.read(q.cq + u64::from(q.head) * 16, 16);
        (b[14] & 1 != 0) == q.phase
    }

    fn reap_opt(&mut self, qid: u16, ring: bool) -> Cqe {
        let t0 = Instant::now();
        loop {
            let q = self.queues[usize::from(qid)]
                .as_mut()
                .expect("queue exists");
            let slot = q.cq + u64::from(q.head) * 16;
            let b = self.ram.read(slot, 16);
            let status = u16::from_le_bytes([b[14], b[15]]);
            if (status & 1 != 0) == q.phase {
                q.head += 1;
                if q.head == q.size {
                    q.head = 0;
                    q.phase = !q.phase;
                }
                let head = q.head;
                if ring {
                    self.ring(0x1000 + 8 * u64::from(qid) + 4, head);
                }
                let w = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
                return Cqe {
                    dw0: w(0),
                    dw1: w(4),
                    sqhd: u16::from_le_bytes([b[8], b[9]]),
                    sqid: u16::from_le_bytes([b[10], b[11]]),
                    cid: u16::from_le_bytes([b[12], b[13]]),
                    sc: ((status >> 1) & 0xff) as u8,
                    sct: ((status >> 9) & 0x7) as u8,
                    dnr: status & 0x8000 != 0,
                };
            }
            assert!(
                t0.elapsed() < self.timeout,
                "no completion on queue {qid} (CSTS {:#x})",
                super::bar_read32(&mut self.c, 0x1c)
            );
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// Submit and wait.
    pub fn cmd(&mut self, qid: u16, sqe: Sqe) -> Cqe {
        let cid = self.submit(qid, sqe);
        let c = self.reap(qid);
        assert_eq!(c.cid, cid, "completion for another command");
        c
    }

    /// Admin command with a data buffer of `len` bytes (≤ 8 KiB); returns (cqe, data).
    pub fn admin_data(&mut self, sqe: Sqe, len: usize) -> (Cqe, Vec<u8>) {
        let buf = self.alloc(len as u64);
        let prp2 = if len > 4096 { buf + 4096 } else { 0 };
        let c = self.cmd(0, sqe.dptr(buf, prp2));
        (c, self.ram.read(buf, len))
    }

    /// Build PRPs for a buffer at `addr` of `len` bytes (page aligned).
    pub fn prps(&mut self, addr: u64, len: u64) -> (u64, u64) {
        let pages = len.div_ceil(4096);
        match pages {
            0 | 1 => (addr, 0),
            2 => (addr, addr + 4096),
            _ => {
                let list = self.alloc((pages - 1) * 8);
                for i in 1..pages {
                    self.ram
                        .write(list + (i - 1) * 8, &(addr + i * 4096).to_le_bytes());
                }
                (addr, list)
            }
        }
    }

    /// Linux-like bring-up: enable, Identify controller, Identify ZNS namespace, Number of
    /// Queues, then `io` I/O queue pairs (vector = qid). Returns Identify Controller data.
    pub fn init(&mut self, io: u16) -> Vec<u8> {
        let csts = self.enable();
        assert_eq!(csts & 3, 1, "ready without CFS");
        let (c, idc) = self.admin_data(Sqe::identify(1, 0, 0), 4096);
        assert!(c.ok(), "identify controller: {c:?}");
        let (c, idns) = self.admin_data(Sqe::identify(0, 1, 0), 4096);
        assert!(c.ok(), "identify namespace: {c:?}");
        let flbas = usize::from(idns[26] & 0xf);
        let lbaf = u32::from_le_bytes(idns[128 + 4 * flbas..132 + 4 * flbas].try_into().unwrap());
        self.lba = 1 << ((lbaf >> 16) & 0xff);
        let n = u32::from(io) - 1;
        let c = self.cmd(0, Sqe::set_features(7, n | (n << 16)));
        assert!(c.ok(), "number of queues: {c:?}");
        assert!(
            c.dw0 & 0xffff >= n && c.dw0 >> 16 >= n,
            "granted {:#x}",
            c.dw0
        );
        for qid in 1..=io {
            self.create_io_queue(qid, IO_ENTRIES);
        }
        idc
    }

    /// Create I/O CQ `qid` (vector `qid`) and SQ `qid`.
    pub fn create_io_queue(&mut self, qid: u16, entries: u32) {
        let cq = self.alloc(u64::from(entries) * 16);
        let sq = self.alloc(u64::from(entries) * 64);
        let c = self.cmd(0, Sqe::create_cq(qid, entries, cq, true, qid));
        assert!(c.ok(), "create CQ {qid}: {c:?}");
        let c = self.cmd(0, Sqe::create_sq(qid, entries, sq, qid));
        assert!(c.ok(), "create SQ {qid}: {c:?}");
        let i = usize::from(qid);
        if self.queues.len() <= i {
            self.queues.resize_with(i + 1, || None);
        }
        self.queues[i] = Some(Queue {
            sq,
            cq,
            size: entries,
            tail: 0,
            head: 0,
            phase: true,
        });
    }

    /// Write `data` (multiple of the LBA size) at `slba` on queue `qid`.
    pub fn write(&mut self, qid: u16, slba: u64, data: &[u8]) -> Cqe {
        self.data_cmd(qid, opc::WRITE, slba, data)
    }

    /// Zone Append `data` to the zone starting at `zslba`.
    pub fn append(&mut self, qid: u16, zslba: u64, data: &[u8]) -> Cqe {
        self.data_cmd(qid, opc::ZONE_APPEND, zslba, data)
    }

    fn data_cmd(&mut self, qid: u16, op: u8, slba: u64, data: &[u8]) -> Cqe {
        let buf = self.alloc(data.len() as u64);
        self.ram.write(buf, data);
        let nlb = u32::try_from(data.len() / self.lba as usize).unwrap();
        let (p1, p2) = self.prps(buf, data.len() as u64);
        self.cmd(qid, Sqe::rw(op, slba, nlb, false).dptr(p1, p2))
    }

    /// Read `nlb` blocks at `slba`.
    pub fn read(&mut self, qid: u16, slba: u64, nlb: u32) -> (Cqe, Vec<u8>) {
        let len = u64::from(nlb) * u64::from(self.lba);
        let buf = self.alloc(len);
        self.ram.fill(buf, usize::try_from(len).unwrap(), 0xee);
        let (p1, p2) = self.prps(buf, len);
        let c = self.cmd(qid, Sqe::rw(opc::READ, slba, nlb, false).dptr(p1, p2));
        (c, self.ram.read(buf, usize::try_from(len).unwrap()))
    }

    /// Report zones from `slba`: (nr_zones reported, [(state, zslba, wp, zcap)]).
    pub fn report(&mut self, qid: u16, slba: u64, max: usize) -> (u64, Vec<(u8, u64, u64, u64)>) {
        let len = 64 + 64 * max;
        let buf = self.alloc(len as u64);
        let (p1, p2) = self.prps(buf, len as u64);
        let c = self.cmd(
            qid,
            Sqe::zone_recv(slba, u32::try_from(len).unwrap(), 0, 0, false).dptr(p1, p2),
        );
        assert!(c.ok(), "report zones: {c:?}");
        let b = self.ram.read(buf, len);
        let (n, zones) = nvme::test_utils::parse_report(&b, 0, max);
        let zones = zones
            .into_iter()
            .map(|z| (z.zs, z.zslba, z.wp, z.zcap))
            .collect();
        (n, zones)
    }
}
