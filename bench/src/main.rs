//! `znsd-loadgen`: a host-side load generator that acts as the guest's NVMe driver over
//! vfio-user, the way QEMU plus Linux would, without a VM in between.
//!
//! Guest RAM is a memfd DMA-mapped into the server; SQEs are written into it and the SQ tail
//! doorbells are stored into the BAR0 sparse area (the shared doorbell page, mmapped from the
//! fd the server announces, as QEMU does). Completions are reaped by polling the CQ phase
//! bits (CQs created without interrupts, like Linux poll queues) or, with `--irq`, by waiting
//! on one MSI-X eventfd per queue. Polling yields the CPU after `--yield-after` empty rounds
//! (on a 2-CPU host a spinning generator otherwise takes the CPU the server needs).
//!
//! Jobs (fio-like, one thread driving every queue pair):
//! * `randread`: random reads of `--bs` over the first `--region` bytes;
//! * `seqwrite`: resets the zones covering `--size` bytes from `--zone-first`, then writes
//!   them sequentially, each queue pair owning every `queues`-th zone;
//! * `append`: resets `--zones` zones from `--zone-first`, then Zone Appends round-robin
//!   across them (stops when they are full or at `--runtime`);
//! * `report`: Zone Management Receive of the whole namespace, one at a time;
//! * `idle`: controller enabled, queues created, nothing submitted (znsd's idle CPU).
//!
//! Output: a human summary and one `RESULT key=value ...` line for scripts.

use clap::{Parser, ValueEnum};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nvme::test_utils::{parse_report, Command as Sqe};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use znsd::cli::parse_size;
use znsd::dma::{memfd_mapping, SharedMapping};

const PAGE: u64 = 4096;
const ADMIN_ENTRIES: u32 = 32;
const DB_BASE: u64 = 0x1000;

mod opc {
    pub const WRITE: u8 = 0x01;
    pub const READ: u8 = 0x02;
    pub const ZONE_RECV: u8 = 0x7a;
    pub const ZONE_APPEND: u8 = 0x7d;
}
const ZSA_RESET: u8 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Job {
    Randread,
    Seqwrite,
    Append,
    Report,
    Idle,
}

/// Host-side NVMe load generator for znsd over vfio-user.
#[derive(Debug, Parser)]
#[command(name = "znsd-loadgen", version, about)]
struct Args {
    /// vfio-user socket of the znsd to drive.
    #[arg(long)]
    socket: PathBuf,
    /// The job.
    #[arg(long, value_enum)]
    job: Job,
    /// Block size in bytes (K/M suffixes).
    #[arg(long, default_value = "4K", value_parser = parse_size)]
    bs: u64,
    /// Commands in flight per queue pair.
    #[arg(long, default_value_t = 1)]
    qd: u32,
    /// I/O queue pairs.
    #[arg(long, default_value_t = 1)]
    queues: u16,
    /// Seconds to run (size-based jobs stop earlier when done).
    #[arg(long, default_value_t = 3.0)]
    runtime: f64,
    /// Seconds to run before measuring (randread and report only).
    #[arg(long, default_value_t = 0.0)]
    ramp: f64,
    /// randread: bytes from LBA 0 to read from (default: the whole namespace).
    #[arg(long, value_parser = parse_size)]
    region: Option<u64>,
    /// seqwrite: bytes to write (whole zones, default: 1 GiB).
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    size: u64,
    /// seqwrite: once every queue has written its zones, reset them all and write them
    /// again, until `--runtime`. The resets (each one a durability point, which flushes the
    /// pass just written) are left out of the elapsed time and of both CPU times: the
    /// figures are those of the writes.
    #[arg(long = "loop")]
    repeat: bool,
    /// seqwrite/append: first zone used.
    #[arg(long, default_value_t = 0)]
    zone_first: u64,
    /// append: zones appended to.
    #[arg(long, default_value_t = 8)]
    zones: u64,
    /// Reap completions from MSI-X eventfds (CQs with interrupts) instead of polling.
    #[arg(long)]
    irq: bool,
    /// Polling: yield the CPU after this many rounds without a completion (0: pure spin).
    #[arg(long, default_value_t = 256)]
    yield_after: u32,
    /// Interrupt Coalescing (Feature 08h) to set: THRESHOLD,TIME (TIME in 100 µs units).
    #[arg(long, value_name = "THR,TIME")]
    coalesce: Option<String>,
    /// znsd's pid, for its CPU time per I/O and memory (from /proc).
    #[arg(long)]
    pid: Option<u32>,
    /// Label printed in the RESULT line.
    #[arg(long, default_value = "")]
    label: String,
}

/// A completion entry.
#[derive(Debug, Clone, Copy)]
struct Cqe {
    dw0: u32,
    cid: u16,
    status: u16,
}

impl Cqe {
    fn ok(&self) -> bool {
        self.status == 0
    }
}

struct Ring {
    sq: u64,
    cq: u64,
    size: u32,
    tail: u32,
    head: u32,
    phase: bool,
}

/// The driver: client, guest RAM, doorbell page, queues.
struct Host {
    c: vfio_user::Client,
    _ram_fd: OwnedFd,
    ram: SharedMapping,
    ram_size: u64,
    db: SharedMapping,
    irqs: Vec<EventFd>,
    next: u64,
    admin: Ring,
    cid: u16,
}

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("znsd-loadgen: {msg}");
    std::process::exit(1)
}

impl Host {
    fn connect(socket: &std::path::Path, ram_size: u64, vectors: u16) -> Host {
        let mut c = vfio_user::Client::new(socket)
            .unwrap_or_else(|e| fail(format!("connect {}: {e:?}", socket.display())));
        let (fd, ram) = memfd_mapping(c"loadgen-ram", ram_size)
            .unwrap_or_else(|e| fail(format!("guest RAM: {e}")));
        c.dma_map(0, 0, ram_size, fd.as_raw_fd())
            .unwrap_or_else(|e| fail(format!("DMA_MAP: {e:?}")));
        let r = c.region(0).unwrap_or_else(|| fail("no BAR0"));
        let fo = r
            .file_offset
            .as_ref()
            .unwrap_or_else(|| fail("BAR0 has no fd"));
        let area = r
            .sparse_areas
            .first()
            .unwrap_or_else(|| fail("BAR0 has no sparse area"));
        if area.offset != DB_BASE {
            fail(format!("doorbells at {:#x}, expected 0x1000", area.offset));
        }
        let db = SharedMapping::new(fo.file(), fo.start() + area.offset, area.size, true)
            .unwrap_or_else(|e| fail(format!("mmap doorbells: {e}")));
        // Bus master + memory, MSI-X enable, one eventfd per vector (as QEMU does).
        c.region_write(7, 4, &0x0006u16.to_le_bytes())
            .unwrap_or_else(|e| fail(format!("config write: {e:?}")));
        c.region_write(7, 0x52, &0x8000u16.to_le_bytes())
            .unwrap_or_else(|e| fail(format!("config write: {e:?}")));
        let mut irqs = Vec::new();
        for v in 0..vectors {
            let e = EventFd::from_flags(EfdFlags::EFD_NONBLOCK)
                .unwrap_or_else(|e| fail(format!("eventfd: {e}")));
            c.set_irqs(
                2,
                vfio_bindings::bindings::vfio::VFIO_IRQ_SET_DATA_EVENTFD
                    | vfio_bindings::bindings::vfio::VFIO_IRQ_SET_ACTION_TRIGGER,
                u32::from(v),
                1,
                &[e.as_fd().as_raw_fd()],
            )
            .unwrap_or_else(|e| fail(format!("SET_IRQS: {e:?}")));
            irqs.push(e);
        }
        Host {
            c,
            _ram_fd: fd,
            ram,
            ram_size,
            db,
            irqs,
            next: PAGE,
            admin: Ring {
                sq: 0,
                cq: 0,
                size: ADMIN_ENTRIES,
                tail: 0,
                head: 0,
                phase: true,
            },
            cid: 0,
        }
    }

    fn alloc(&mut self, len: u64) -> u64 {
        let a = self.next;
        self.next += len.max(1).div_ceil(PAGE) * PAGE;
        if self.next > self.ram_size {
            fail("guest RAM exhausted");
        }
        a
    }

    fn reg32(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.c
            .region_read(0, off, &mut b)
            .unwrap_or_else(|e| fail(format!("register read: {e:?}")));
        u32::from_le_bytes(b)
    }

    fn set_reg(&mut self, off: u64, v: &[u8]) {
        self.c
            .region_write(0, off, v)
            .unwrap_or_else(|e| fail(format!("register write: {e:?}")));
    }

    fn wait_ready(&mut self, rdy: bool) {
        let t0 = Instant::now();
        loop {
            let csts = self.reg32(0x1c);
            if csts & 2 != 0 {
                fail("controller fatal status");
            }
            if (csts & 1 != 0) == rdy {
                return;
            }
            if t0.elapsed() > Duration::from_secs(10) {
                fail(format!("CSTS.RDY never became {rdy}"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn enable(&mut self) {
        if self.reg32(0x14) & 1 != 0 {
            self.set_reg(0x14, &0u32.to_le_bytes());
            self.wait_ready(false);
        }
        self.admin.sq = self.alloc(u64::from(ADMIN_ENTRIES) * 64);
        self.admin.cq = self.alloc(u64::from(ADMIN_ENTRIES) * 16);
        self.set_reg(
            0x24,
            &((ADMIN_ENTRIES - 1) | ((ADMIN_ENTRIES - 1) << 16)).to_le_bytes(),
        );
        self.set_reg(0x28, &self.admin.sq.to_le_bytes());
        self.set_reg(0x30, &self.admin.cq.to_le_bytes());
        // CSS = all I/O command sets, MPS 4 KiB, SQES 6, CQES 4, EN.
        self.set_reg(
            0x14,
            &(1u32 | (6 << 4) | (6 << 16) | (4 << 20)).to_le_bytes(),
        );
        self.wait_ready(true);
    }

    /// Synchronous admin command.
    fn admin_cmd(&mut self, sqe: Sqe) -> Cqe {
        self.cid = self.cid.wrapping_add(1);
        let cid = self.cid;
        let q = &mut self.admin;
        self.ram
            .write(q.sq + u64::from(q.tail) * 64, &sqe.cid(cid).to_bytes());
        q.tail = (q.tail + 1) % q.size;
        self.db.store_u32_release(0, q.tail);
        let t0 = Instant::now();
        loop {
            if let Some(c) = reap_one(&self.ram, &mut self.admin) {
                self.db.store_u32_release(4, self.admin.head);
                if c.cid != cid {
                    fail("admin completion for another command");
                }
                return c;
            }
            if t0.elapsed() > Duration::from_secs(10) {
                fail("admin command timed out");
            }
            std::thread::yield_now();
        }
    }

    fn read_ram(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0; len];
        if !self.ram.read(gpa, &mut b) {
            fail("guest RAM read out of bounds");
        }
        b
    }

    /// PRP entries for a page-aligned buffer: (prp1, prp2), building a list if needed.
    fn prps(&mut self, addr: u64, len: u64) -> (u64, u64) {
        let pages = len.div_ceil(PAGE);
        match pages {
            0 | 1 => (addr, 0),
            2 => (addr, addr + PAGE),
            _ => {
                let list = self.alloc((pages - 1) * 8);
                for i in 1..pages {
                    self.ram
                        .write(list + (i - 1) * 8, &(addr + i * PAGE).to_le_bytes());
                }
                (addr, list)
            }
        }
    }
}

/// Take the completion at the ring's head if its phase says it is new.
fn reap_one(ram: &SharedMapping, q: &mut Ring) -> Option<Cqe> {
    let slot = q.cq + u64::from(q.head) * 16;
    let dw3 = ram.load_u32_acquire(slot + 12);
    let status = (dw3 >> 16) as u16;
    if (status & 1 != 0) != q.phase {
        return None;
    }
    let dw0 = ram.load_u32_acquire(slot);
    q.head += 1;
    if q.head == q.size {
        q.head = 0;
        q.phase = !q.phase;
    }
    Some(Cqe {
        dw0,
        cid: dw3 as u16,
        status: status >> 1,
    })
}

/// Namespace geometry as the driver learns it.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    nsze: u64,
    zone_lbas: u64,
    zcap_lbas: u64,
    nzones: u64,
}

/// One I/O queue pair with its per-slot data buffers and PRPs.
struct IoQueue {
    qid: u16,
    ring: Ring,
    inflight: u32,
    free: Vec<u16>,
    slot_prp: Vec<(u64, u64)>,
    slot_start: Vec<Instant>,
    slot_zone: Vec<u64>,
    pending_db: bool,
}

/// What `--loop`'s resets between passes took: wall time, znsd's CPU ticks and the
/// generator's CPU time, all left out of the job's figures.
#[derive(Debug, Clone, Copy, Default)]
struct Excluded {
    wall: Duration,
    znsd_ticks: u64,
    gen_cpu: Duration,
}

/// Per-queue state of a job.
enum Gen {
    Rand {
        region_lbas: u64,
        rng: u64,
    },
    Seq {
        zones: Vec<u64>,
        at: usize,
        off: u64,
    },
    Append {
        zones: Vec<u64>,
        left: Vec<u64>,
        rr: usize,
    },
    Report,
}

impl Gen {
    /// The next command (opcode, slba, nlb, zone tag), or None when the job is done for
    /// this queue.
    fn next(&mut self, g: &Geometry, bs_lbas: u64) -> Option<(u8, u64, u64)> {
        match self {
            Gen::Rand { region_lbas, rng } => {
                *rng ^= *rng << 13;
                *rng ^= *rng >> 7;
                *rng ^= *rng << 17;
                let slots = (*region_lbas / bs_lbas).max(1);
                let mut slba = (*rng % slots) * bs_lbas;
                // Never cross a zone boundary.
                if slba % g.zone_lbas + bs_lbas > g.zone_lbas {
                    slba -= slba % g.zone_lbas;
                }
                Some((opc::READ, slba, 0))
            }
            Gen::Seq { zones, at, off } => {
                while *at < zones.len() && *off + bs_lbas > g.zcap_lbas {
                    *at += 1;
                    *off = 0;
                }
                let z = *zones.get(*at)?;
                let slba = z * g.zone_lbas + *off;
                *off += bs_lbas;
                Some((opc::WRITE, slba, z))
            }
            Gen::Append { zones, left, rr } => {
                for _ in 0..zones.len() {
                    let i = *rr % zones.len();
                    *rr += 1;
                    if left[i] >= bs_lbas {
                        left[i] -= bs_lbas;
                        return Some((opc::ZONE_APPEND, zones[i] * g.zone_lbas, zones[i]));
                    }
                }
                None
            }
            Gen::Report => Some((opc::ZONE_RECV, 0, 0)),
        }
    }
}

/// CPU ticks (utime + stime) of a process, all threads.
fn proc_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// RssAnon: the process's own memory. VmRSS would also count the shared pages it maps,
/// the guest RAM a command's data went through and the image file pages reads copied from,
/// which grow with the data moved, not with znsd's memory.
fn proc_anon_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("RssAnon:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn self_cpu() -> Duration {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF);
    u.map_or(Duration::ZERO, |u| {
        let t = |tv: nix::sys::time::TimeVal| {
            Duration::from_secs(u64::try_from(tv.tv_sec()).unwrap_or(0))
                + Duration::from_micros(u64::try_from(tv.tv_usec()).unwrap_or(0))
        };
        t(u.user_time()) + t(u.system_time())
    })
}

fn clk_tck() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .unwrap_or(100)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)]) / 1000.0
}

fn main() {
    let a = Args::parse();
    if a.queues == 0 || a.qd == 0 {
        fail("--queues and --qd must be at least 1");
    }
    let qd = if a.job == Job::Report { 1 } else { a.qd };
    let entries = (qd + 1).next_power_of_two().clamp(16, 1024);
    if qd >= entries {
        fail("--qd too large (at most 1023)");
    }
    let bs = a.bs;
    if bs == 0 || bs % PAGE != 0 {
        fail("--bs must be a multiple of 4 KiB");
    }
    // Guest RAM: rings, per-slot buffers and PRP lists, the report buffer, slack.
    let per_queue =
        u64::from(entries) * (64 + 16) + u64::from(qd) * (bs + bs / PAGE * 8 + 2 * PAGE);
    let ram_size = (64 << 20) + u64::from(a.queues) * per_queue.div_ceil(PAGE) * PAGE * 2;
    let mut h = Host::connect(&a.socket, ram_size, a.queues + 1);
    h.enable();

    // Identify: LBA size and namespace size.
    let idbuf = h.alloc(PAGE);
    let c = h.admin_cmd(Sqe::identify(0, 1, 0).dptr(idbuf, 0));
    if !c.ok() {
        fail(format!("Identify Namespace failed: status {:#x}", c.status));
    }
    let idns = h.read_ram(idbuf, 4096);
    let nsze = u64::from_le_bytes(idns[0..8].try_into().unwrap_or_default());
    let flbas = usize::from(idns[26] & 0xf);
    let lbaf = u32::from_le_bytes(
        idns[128 + 4 * flbas..132 + 4 * flbas]
            .try_into()
            .unwrap_or_default(),
    );
    let lba = 1u64 << ((lbaf >> 16) & 0xff);
    // Identify Controller: the largest transfer (MDTS, in units of the 4 KiB minimum page).
    let c = h.admin_cmd(Sqe::identify(1, 0, 0).dptr(idbuf, 0));
    if !c.ok() {
        fail(format!(
            "Identify Controller failed: status {:#x}",
            c.status
        ));
    }
    let mdts = h.read_ram(idbuf, 4096)[77];
    let max_transfer = if mdts == 0 { u64::MAX } else { PAGE << mdts };
    let n = u32::from(a.queues) - 1;
    let c = h.admin_cmd(Sqe::set_features(7, n | (n << 16)));
    if !c.ok() || c.dw0 & 0xffff < n || c.dw0 >> 16 < n {
        fail(format!(
            "Number of Queues: status {:#x}, granted {:#x}",
            c.status, c.dw0
        ));
    }
    if let Some(co) = &a.coalesce {
        let (thr, time) = co
            .split_once(',')
            .and_then(|(t, m)| Some((t.parse::<u32>().ok()?, m.parse::<u32>().ok()?)))
            .unwrap_or_else(|| fail("--coalesce wants THRESHOLD,TIME"));
        let c = h.admin_cmd(Sqe::set_features(8, (thr & 0xff) | ((time & 0xff) << 8)));
        if !c.ok() {
            fail(format!("Interrupt Coalescing: status {:#x}", c.status));
        }
    }

    // I/O queues with per-slot buffers.
    let mut queues = Vec::new();
    for qid in 1..=a.queues {
        let cq = h.alloc(u64::from(entries) * 16);
        let sq = h.alloc(u64::from(entries) * 64);
        let c = h.admin_cmd(Sqe::create_cq(qid, entries, cq, a.irq, qid));
        if !c.ok() {
            fail(format!("Create CQ {qid}: status {:#x}", c.status));
        }
        let c = h.admin_cmd(Sqe::create_sq(qid, entries, sq, qid));
        if !c.ok() {
            fail(format!("Create SQ {qid}: status {:#x}", c.status));
        }
        let mut slot_prp = Vec::new();
        for _ in 0..qd {
            let buf = h.alloc(bs);
            slot_prp.push(h.prps(buf, bs));
        }
        queues.push(IoQueue {
            qid,
            ring: Ring {
                sq,
                cq,
                size: entries,
                tail: 0,
                head: 0,
                phase: true,
            },
            inflight: 0,
            free: (0..u16::try_from(qd).unwrap_or(u16::MAX)).rev().collect(),
            slot_prp,
            slot_start: vec![Instant::now(); qd as usize],
            slot_zone: vec![0; qd as usize],
            pending_db: false,
        });
    }

    // Zone geometry from a report of the whole namespace (on queue 1, synchronously).
    let bs_lbas = bs / lba;
    let report_len = {
        // Upper bound on zones: namespace / smallest plausible zone (1 MiB), at least 64;
        // no more than one transfer holds (a report then covers the first zones only).
        let max_zones = (nsze * lba / (1 << 20)).clamp(64, 1 << 16);
        let fit = max_transfer.saturating_sub(64) / 64;
        64 + 64 * max_zones.min(fit)
    };
    let report_buf = h.alloc(report_len);
    let report_prp = h.prps(report_buf, report_len);
    let report_sqe = |prp: (u64, u64)| {
        Sqe::zone_recv(
            0,
            u32::try_from(report_len).unwrap_or(u32::MAX),
            0,
            0,
            false,
        )
        .dptr(prp.0, prp.1)
    };
    let sync_io = |h: &mut Host, q: &mut IoQueue, sqe: Sqe| -> Cqe {
        let slot = q.ring.sq + u64::from(q.ring.tail) * 64;
        h.ram.write(slot, &sqe.cid(0xffff).to_bytes());
        q.ring.tail = (q.ring.tail + 1) % q.ring.size;
        h.db.store_u32_release(8 * u64::from(q.qid), q.ring.tail);
        let t0 = Instant::now();
        loop {
            if let Some(c) = reap_one(&h.ram, &mut q.ring) {
                h.db.store_u32_release(8 * u64::from(q.qid) + 4, q.ring.head);
                return c;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                fail("I/O command timed out");
            }
            std::thread::yield_now();
        }
    };
    let c = sync_io(&mut h, &mut queues[0], report_sqe(report_prp));
    if !c.ok() {
        fail(format!("Zone report failed: status {:#x}", c.status));
    }
    let rep = h.read_ram(report_buf, usize::try_from(report_len).unwrap_or(0));
    let max = usize::try_from((report_len - 64) / 64).unwrap_or(0);
    let (nr, zones) = parse_report(&rep, 0, max);
    let Some(z0) = zones.first() else {
        fail("the namespace reports no zones")
    };
    let zone_lbas = zones.get(1).map_or(nsze, |z1| z1.zslba - z0.zslba);
    let g = Geometry {
        nsze,
        zone_lbas,
        zcap_lbas: z0.zcap,
        nzones: nr,
    };

    // Per-queue generators; zone resets first for the writing jobs.
    let qn = u64::from(a.queues);
    let mut gens: Vec<Gen> = Vec::new();
    match a.job {
        Job::Randread => {
            let region = a.region.map_or(g.nsze, |r| r / lba).min(g.nsze);
            for (i, _) in queues.iter().enumerate() {
                gens.push(Gen::Rand {
                    region_lbas: region,
                    rng: 0x9e37_79b9_7f4a_7c15 ^ ((i as u64 + 1) << 32),
                });
            }
        }
        Job::Seqwrite | Job::Append => {
            let count = if a.job == Job::Seqwrite {
                (a.size / lba).div_ceil(g.zone_lbas)
            } else {
                a.zones
            };
            if a.zone_first + count > g.nzones {
                fail(format!(
                    "zones {}..{} beyond the namespace's {}",
                    a.zone_first,
                    a.zone_first + count,
                    g.nzones
                ));
            }
            let zs: Vec<u64> = (a.zone_first..a.zone_first + count).collect();
            for &z in &zs {
                let c = sync_io(
                    &mut h,
                    &mut queues[0],
                    Sqe::zone_send(z * g.zone_lbas, ZSA_RESET, false),
                );
                if !c.ok() {
                    fail(format!("Zone reset of zone {z}: status {:#x}", c.status));
                }
            }
            for i in 0..qn {
                let mine: Vec<u64> = zs
                    .iter()
                    .copied()
                    .filter(|z| (z - a.zone_first) % qn == i)
                    .collect();
                gens.push(if a.job == Job::Seqwrite {
                    Gen::Seq {
                        zones: mine,
                        at: 0,
                        off: 0,
                    }
                } else {
                    let left = vec![g.zcap_lbas; mine.len()];
                    Gen::Append {
                        zones: mine,
                        left,
                        rr: 0,
                    }
                });
            }
        }
        Job::Report => {
            for _ in &queues {
                gens.push(Gen::Report);
            }
        }
        Job::Idle => {}
    }
    // Report jobs: one buffer per queue (QD1).
    let report_prps: Vec<(u64, u64)> = queues
        .iter()
        .map(|_| {
            let b = h.alloc(report_len);
            h.prps(b, report_len)
        })
        .collect();

    let tck = clk_tck();
    let t_znsd0 = a.pid.and_then(proc_ticks);
    let rss0 = a.pid.and_then(proc_anon_kib);
    let cpu0 = self_cpu();

    if a.job == Job::Idle {
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(a.runtime));
        let secs = t0.elapsed().as_secs_f64();
        let znsd_cpu = match (t_znsd0, a.pid.and_then(proc_ticks)) {
            (Some(x), Some(y)) => (y - x) as f64 / tck as f64,
            _ => f64::NAN,
        };
        println!(
            "idle: znsd used {:.3} s CPU in {secs:.1} s ({:.2}% of one core)",
            znsd_cpu,
            100.0 * znsd_cpu / secs
        );
        println!(
            "RESULT label={} job=idle secs={secs:.2} znsd_cpu_pct={:.3} anon_kib={}",
            a.label,
            100.0 * znsd_cpu / secs,
            a.pid.and_then(proc_anon_kib).unwrap_or(0)
        );
        return;
    }

    // The run loop.
    let nlb0 = u32::try_from(bs_lbas - 1).unwrap_or_else(|_| fail("--bs too large"));
    let mut lat: Vec<u32> = Vec::with_capacity(1 << 22);
    let mut ios: u64 = 0;
    let mut errors: u64 = 0;
    let mut first_error: Option<(u8, u16)> = None;
    let mut done = vec![false; queues.len()];
    // --loop: queues whose pass is written, passes started again, what the resets took
    // (left out of the figures), and that when measuring began.
    let mut pass_done = vec![false; queues.len()];
    let mut passes: u64 = 0;
    let mut paused = Excluded::default();
    let mut paused0 = Excluded::default();
    let runtime = Duration::from_secs_f64(a.runtime);
    let ramp = Duration::from_secs_f64(a.ramp);
    let start = Instant::now();
    let mut measuring = ramp.is_zero();
    let mut t_meas = start;
    let mut znsd_meas0 = t_znsd0;
    let mut cpu_meas0 = cpu0;
    let mut stopping = false;
    let mut iter: u32 = 0;
    let mut empty_rounds: u32 = 0;
    // No completion for this long while commands are out: the server died or hung.
    const STALL: Duration = Duration::from_secs(30);
    let mut progress = Instant::now();
    let slot_opc = |g: &Gen| match g {
        Gen::Rand { .. } => opc::READ,
        Gen::Seq { .. } => opc::WRITE,
        Gen::Append { .. } => opc::ZONE_APPEND,
        Gen::Report => opc::ZONE_RECV,
    };
    loop {
        iter = iter.wrapping_add(1);
        if iter & 63 == 0 {
            let el = start.elapsed().saturating_sub(paused.wall);
            if !measuring && el >= ramp {
                measuring = true;
                t_meas = Instant::now();
                paused0 = paused;
                znsd_meas0 = a.pid.and_then(proc_ticks);
                cpu_meas0 = self_cpu();
                lat.clear();
                ios = 0;
            }
            if el >= ramp + runtime {
                stopping = true;
            }
        }
        // Submit.
        for (qi, q) in queues.iter_mut().enumerate() {
            if stopping || done[qi] || pass_done[qi] {
                continue;
            }
            let mut now = None;
            while q.inflight < qd {
                let Some((op, slba, zone)) = gens[qi].next(&g, bs_lbas) else {
                    match &gens[qi] {
                        Gen::Seq { zones, .. } if a.repeat && !zones.is_empty() => {
                            pass_done[qi] = true
                        }
                        _ => done[qi] = true,
                    }
                    break;
                };
                let Some(slot) = q.free.pop() else { break };
                let (p1, p2) = if op == opc::ZONE_RECV {
                    report_prps[qi]
                } else {
                    q.slot_prp[usize::from(slot)]
                };
                let sqe = if op == opc::ZONE_RECV {
                    report_sqe((p1, p2))
                } else {
                    Sqe::new(op).slba(slba).cdw(12, nlb0).dptr(p1, p2)
                };
                let pos = q.ring.sq + u64::from(q.ring.tail) * 64;
                h.ram.write(pos, &sqe.cid(slot).to_bytes());
                q.ring.tail = (q.ring.tail + 1) % q.ring.size;
                let t = *now.get_or_insert_with(Instant::now);
                q.slot_start[usize::from(slot)] = t;
                q.slot_zone[usize::from(slot)] = zone;
                q.inflight += 1;
                q.pending_db = true;
            }
            if q.pending_db {
                h.db.store_u32_release(8 * u64::from(q.qid), q.ring.tail);
                q.pending_db = false;
            }
        }
        // Reap.
        let mut reaped = 0;
        for (qi, q) in queues.iter_mut().enumerate() {
            let mut any = false;
            let mut now = None;
            while let Some(c) = reap_one(&h.ram, &mut q.ring) {
                any = true;
                let slot = usize::from(c.cid);
                if slot >= q.slot_start.len() {
                    fail(format!("completion with unknown CID {}", c.cid));
                }
                let t = *now.get_or_insert_with(Instant::now);
                let ns = t.duration_since(q.slot_start[slot]).as_nanos();
                lat.push(u32::try_from(ns).unwrap_or(u32::MAX));
                if !c.ok() {
                    errors += 1;
                    first_error.get_or_insert((slot_opc(&gens[qi]), c.status));
                    if matches!(gens[qi], Gen::Append { .. } | Gen::Seq { .. }) {
                        // A zone that refuses writes stops this queue's job.
                        done[qi] = true;
                    }
                } else {
                    ios += 1;
                }
                q.free.push(c.cid);
                q.inflight -= 1;
                reaped += 1;
            }
            if any {
                h.db.store_u32_release(8 * u64::from(q.qid) + 4, q.ring.head);
            }
        }
        let inflight: u32 = queues.iter().map(|q| q.inflight).sum();
        if !stopping
            && inflight == 0
            && pass_done.iter().any(|p| *p)
            && pass_done.iter().zip(&done).all(|(p, d)| *p || *d)
        {
            // --loop: every pass is written and complete; reset and start over.
            let t = Instant::now();
            let ticks = a.pid.and_then(proc_ticks);
            let cpu = self_cpu();
            for (qi, q) in queues.iter_mut().enumerate() {
                let Gen::Seq { zones, at, off } = &mut gens[qi] else {
                    continue;
                };
                if !std::mem::take(&mut pass_done[qi]) {
                    continue;
                }
                for &z in zones.iter() {
                    let c = sync_io(&mut h, q, Sqe::zone_send(z * g.zone_lbas, ZSA_RESET, false));
                    if !c.ok() {
                        fail(format!("Zone reset of zone {z}: status {:#x}", c.status));
                    }
                }
                (*at, *off) = (0, 0);
            }
            paused.wall += t.elapsed();
            paused.gen_cpu += self_cpu().saturating_sub(cpu);
            if let (Some(x), Some(y)) = (ticks, a.pid.and_then(proc_ticks)) {
                paused.znsd_ticks += y - x;
            }
            passes += 1;
            progress = Instant::now();
            continue;
        }
        let all_done = done.iter().all(|d| *d);
        if inflight == 0 && (stopping || all_done) {
            break;
        }
        if reaped == 0 && a.irq {
            let mut fds: Vec<PollFd<'_>> = h.irqs[1..]
                .iter()
                .map(|e| PollFd::new(e.as_fd(), PollFlags::POLLIN))
                .collect();
            let _ = poll(&mut fds, PollTimeout::from(10u8));
            for e in &h.irqs[1..] {
                let _ = e.read();
            }
            if progress.elapsed() > STALL {
                fail("commands never completed");
            }
        } else if reaped == 0 {
            empty_rounds += 1;
            // Hybrid polling: give the CPU away after a while without completions, so that
            // on a small host the generator does not starve the server it measures.
            if a.yield_after > 0 && empty_rounds >= a.yield_after {
                std::thread::yield_now();
            }
            if iter & 63 == 0 && progress.elapsed() > STALL {
                fail("commands never completed");
            }
        } else {
            empty_rounds = 0;
            progress = Instant::now();
        }
    }
    let secs = t_meas
        .elapsed()
        .saturating_sub(paused.wall - paused0.wall)
        .as_secs_f64();
    let gen_cpu = (self_cpu() - cpu_meas0)
        .saturating_sub(paused.gen_cpu - paused0.gen_cpu)
        .as_secs_f64();
    let znsd_cpu = match (znsd_meas0, a.pid.and_then(proc_ticks)) {
        (Some(x), Some(y)) => {
            Some((y - x).saturating_sub(paused.znsd_ticks - paused0.znsd_ticks) as f64 / tck as f64)
        }
        _ => None,
    };
    let rss1 = a.pid.and_then(proc_anon_kib);
    lat.sort_unstable();
    let iops = ios as f64 / secs;
    let bytes_per = if a.job == Job::Report { report_len } else { bs };
    let mbps = iops * bytes_per as f64 / 1e6;
    let (p50, p99, p999) = (
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        percentile(&lat, 0.999),
    );
    let per_io = |cpu: f64| {
        if ios > 0 {
            cpu * 1e6 / ios as f64
        } else {
            f64::NAN
        }
    };
    let job = format!("{:?}", a.job).to_lowercase();
    println!(
        "{job} bs={bs} qd={qd} queues={}: {ios} I/Os in {secs:.2} s, {:.0} IOPS, {:.1} MB/s, \
         latency p50 {p50:.1} us p99 {p99:.1} us p99.9 {p999:.1} us",
        a.queues, iops, mbps
    );
    if let Some(z) = znsd_cpu {
        println!(
            "  znsd CPU {z:.2} s ({:.2} us per I/O, {:.0}% of a core); generator CPU {gen_cpu:.2} s",
            per_io(z),
            100.0 * z / secs
        );
    }
    if passes > 0 {
        println!(
            "  --loop: {} passes; the resets between them took {:.2} s (not counted above)",
            passes + 1,
            paused.wall.as_secs_f64()
        );
    }
    if errors > 0 {
        let (op, st) = first_error.unwrap_or((0, 0));
        println!("  {errors} commands failed (first: opcode {op:#x} status {st:#x})");
    }
    println!(
        "RESULT label={} job={job} bs={bs} qd={qd} queues={} ios={ios} errors={errors} secs={secs:.3} \
         iops={iops:.0} mbps={mbps:.1} p50_us={p50:.2} p99_us={p99:.2} p999_us={p999:.2} \
         znsd_cpu_us_per_io={:.3} znsd_core_pct={:.1} gen_cpu_us_per_io={:.3} anon_kib_before={} anon_kib_after={}{}",
        a.label,
        a.queues,
        znsd_cpu.map_or(f64::NAN, per_io),
        znsd_cpu.map_or(f64::NAN, |z| 100.0 * z / secs),
        per_io(gen_cpu),
        rss0.unwrap_or(0),
        rss1.unwrap_or(0),
        if a.repeat {
            format!(" passes={} reset_secs={:.3}", passes + 1, paused.wall.as_secs_f64())
        } else {
            String::new()
        },
    );
    if errors > 0 && ios == 0 {
        std::process::exit(1);
    }
    // Leave the controller disabled so the next client starts clean.
    h.set_reg(0x14, &0u32.to_le_bytes());
    h.wait_ready(false);
}
