//! Process-kill testing of the real `znsd` binary: a seeded workload of writes, appends,
//! flushes, FUA writes and zone management on two I/O queues, a SIGKILL at a random moment
//! (often with commands in flight, sometimes while the image is being opened or in the middle
//! of a SIGTERM shutdown), `check_image` on the image the dead process left, a
//! restart on the same image, and a check of every zone against a model of what was
//! acknowledged (docs/durability.md):
//!
//! * every write acknowledged before an acknowledged durability point (Flush, FUA write, zone
//!   management, any write in writethrough mode) reads back byte-exact at its place;
//! * the reported write pointer is at least the durable one and at most the end of what was
//!   issued, every block below it is a block the host wrote there (each 4 KiB block names
//!   its zone, reset generation, write and index, and its bytes are derived from those), and
//!   blocks at or above it read as zeros;
//! * no zone comes back opened, Empty only at its start, Closed strictly inside the capacity,
//!   and a zone whose Finish was acknowledged comes back Full; a completed Reset never shows
//!   old data again.
//!
//! A process kill keeps whatever the dead process had written into the page cache, so what
//! the restarted server reports is the floor for the next round.
//!
//! `cargo test --release -p znsd --test kill -- --nocapture`: 50 iterations;
//! `ZNSD_SOAK=1`: 1,000. `ZNSD_KILL_SEED=<n>` runs another seed.

mod common;

use common::daemon::{seed_from_env, soak_or, Daemon, Rng};
use common::nvme_host::{opc, zsa, Cqe, DoorbellPath, Host, Sqe};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

const LBA: u64 = 4096;
const NZ: usize = 16;
/// Zone size and capacity in blocks (1 MiB zones).
const CAP: u64 = 256;
const MAX_WRITE: u64 = 8;
/// Blocks per verification read.
const CHUNK: u64 = 32;
/// Write buffer slots (each MAX_WRITE blocks) reused round-robin; more than commands that can
/// be outstanding at once.
const SLOTS: usize = 48;
const ST_INVALID_TRANSITION: (u8, u8) = (1, 0xbf);

const MAGIC: &[u8; 8] = b"ZNSDKILL";

/// The 4 KiB block the host writes as block `idx` of write `wid` to zone `z` generation `g`.
fn block(z: u32, g: u32, wid: u64, idx: u32) -> Vec<u8> {
    let mut b = vec![0u8; LBA as usize];
    b[..8].copy_from_slice(MAGIC);
    b[8..12].copy_from_slice(&z.to_le_bytes());
    b[12..16].copy_from_slice(&g.to_le_bytes());
    b[16..24].copy_from_slice(&wid.to_le_bytes());
    b[24..28].copy_from_slice(&idx.to_le_bytes());
    Rng(wid.wrapping_mul(0x1_0000_0001) ^ u64::from(idx) ^ (u64::from(g) << 40)).fill(&mut b[28..]);
    b
}

/// What a block read back is: zeros, a valid host block (zone, generation, write, index), or
/// anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    Zero,
    Block(u32, u32, u64, u32),
    Garbage,
}

fn parse(b: &[u8]) -> Found {
    if b.iter().all(|&x| x == 0) {
        return Found::Zero;
    }
    if &b[..8] != MAGIC {
        return Found::Garbage;
    }
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
    let (z, g, idx) = (u32_at(8), u32_at(12), u32_at(24));
    let wid = u64::from_le_bytes(b[16..24].try_into().unwrap());
    if block(z, g, wid, idx) == b {
        Found::Block(z, g, wid, idx)
    } else {
        Found::Garbage
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Empty,
    /// Submitted, no completion seen.
    Issued(u64, u32),
    Acked(u64, u32),
}

/// The model of one zone.
#[derive(Debug, Clone)]
struct Zone {
    gen: u32,
    slots: Vec<Slot>,
    /// Where the host's next write goes (end of everything issued with a known place).
    wp: u64,
    /// Blocks below this must survive.
    durable: u64,
    /// A Finish was acknowledged (durably Full).
    full: bool,
    maybe_full: bool,
    maybe_reset: bool,
    /// Appends in flight without a completion: (write id, blocks).
    floating: Vec<(u64, u32)>,
}

impl Zone {
    fn new(gen: u32) -> Zone {
        Zone {
            gen,
            slots: vec![Slot::Empty; CAP as usize],
            wp: 0,
            durable: 0,
            full: false,
            maybe_full: false,
            maybe_reset: false,
            floating: Vec::new(),
        }
    }
    fn acked_prefix(&self) -> u64 {
        self.slots
            .iter()
            .take_while(|s| matches!(s, Slot::Acked(..)))
            .count() as u64
    }
    fn floating_blocks(&self) -> u64 {
        self.floating.iter().map(|&(_, n)| u64::from(n)).sum()
    }
    fn room(&self) -> u64 {
        if self.full {
            0
        } else {
            CAP - self.wp - self.floating_blocks()
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Write {
        z: usize,
        pos: u64,
        n: u32,
        wid: u64,
        fua: bool,
    },
    Append {
        z: usize,
        n: u32,
        wid: u64,
    },
    Flush,
    Mgmt {
        z: usize,
        action: u8,
    },
}

struct Pending {
    op: Op,
    /// (generation, acknowledged prefix) per zone when a durability point was submitted.
    snapshot: Vec<(u32, u64)>,
}

#[derive(Default)]
struct Stats {
    iterations: u64,
    kills: u64,
    commands: u64,
    in_flight_at_kill: u64,
    completed_after_kill: u64,
    durable_verified: u64,
    term_then_kill: u64,
    shutdown_completed: u64,
    startup_kills: u64,
    /// Iterations whose server ran transfers on I/O threads (`--aio-threads`).
    aio_iterations: u64,
    blocks_checked: u64,
    violations: Vec<String>,
}

struct Model {
    zones: Vec<Zone>,
    next_wid: u64,
    /// Writes made durable by an acknowledged durability point, not yet verified.
    durable_unverified: HashSet<u64>,
    writethrough: bool,
}

impl Model {
    /// Issue a write of `n` blocks at zone `z`'s write pointer (the host's view moves on).
    fn issue_write(&mut self, z: usize, n: u32, fua: bool) -> Op {
        let wid = self.next_wid;
        self.next_wid += 1;
        let zone = &mut self.zones[z];
        let pos = zone.wp;
        for i in 0..n {
            zone.slots[(pos + u64::from(i)) as usize] = Slot::Issued(wid, i);
        }
        zone.wp += u64::from(n);
        Op::Write {
            z,
            pos,
            n,
            wid,
            fua,
        }
    }

    /// Issue an append of `n` blocks to zone `z` (placed when it completes).
    fn issue_append(&mut self, z: usize, n: u32) -> Op {
        let wid = self.next_wid;
        self.next_wid += 1;
        self.zones[z].floating.push((wid, n));
        Op::Append { z, n, wid }
    }

    fn snapshot(&self) -> Vec<(u32, u64)> {
        self.zones
            .iter()
            .map(|z| (z.gen, z.acked_prefix()))
            .collect()
    }

    fn make_durable(&mut self, z: usize, end: u64) {
        let zone = &mut self.zones[z];
        if end <= zone.durable {
            return;
        }
        for s in &zone.slots[zone.durable as usize..end as usize] {
            if let Slot::Acked(wid, _) = s {
                self.durable_unverified.insert(*wid);
            }
        }
        zone.durable = end;
    }

    fn apply_snapshot(&mut self, snap: &[(u32, u64)]) {
        for (z, &(g, end)) in snap.iter().enumerate() {
            if self.zones[z].gen == g {
                self.make_durable(z, end);
            }
        }
    }

    /// A completion arrived for `p`.
    fn complete(&mut self, p: &Pending, c: &Cqe, zslba: impl Fn(usize) -> u64, st: &mut Stats) {
        match p.op {
            Op::Write {
                z,
                pos,
                n,
                wid,
                fua,
            } => {
                if !c.ok() {
                    st.violations
                        .push(format!("write zone {z} +{pos} x{n} failed: {c:?}"));
                    return;
                }
                for i in 0..n {
                    self.zones[z].slots[(pos + u64::from(i)) as usize] = Slot::Acked(wid, i);
                }
                if fua {
                    self.apply_snapshot(&p.snapshot);
                }
                if fua || self.writethrough {
                    // The write and everything below it in the zone. A later write to the
                    // zone that was acknowledged first (completions of I/O threads come in
                    // any order) is not covered: it asked for no durability of its own.
                    let end = self.zones[z].acked_prefix().min(pos + u64::from(n));
                    self.make_durable(z, end);
                }
            }
            Op::Append { z, n, wid } => {
                self.zones[z].floating.retain(|&(w, _)| w != wid);
                if !c.ok() {
                    st.violations
                        .push(format!("append zone {z} x{n} failed: {c:?}"));
                    return;
                }
                let pos = c.result64().wrapping_sub(zslba(z));
                if pos + u64::from(n) > CAP {
                    st.violations.push(format!(
                        "append zone {z} x{n} assigned LBA {:#x} outside the zone",
                        c.result64()
                    ));
                    return;
                }
                let zone = &mut self.zones[z];
                for i in 0..n {
                    let s = &mut zone.slots[(pos + u64::from(i)) as usize];
                    if *s != Slot::Empty {
                        st.violations
                            .push(format!("append zone {z} x{n} at +{pos} overlaps {s:?}"));
                    }
                    *s = Slot::Acked(wid, i);
                }
                zone.wp = zone.wp.max(pos + u64::from(n));
                if self.writethrough {
                    let end = self.zones[z].acked_prefix();
                    self.make_durable(z, end);
                }
            }
            Op::Flush => {
                if !c.ok() {
                    st.violations.push(format!("flush failed: {c:?}"));
                    return;
                }
                self.apply_snapshot(&p.snapshot);
            }
            Op::Mgmt { z, action } => {
                if !c.ok() {
                    if (action == zsa::OPEN || action == zsa::CLOSE)
                        && c.status() == ST_INVALID_TRANSITION
                    {
                        return;
                    }
                    st.violations
                        .push(format!("zone action {action} on zone {z} failed: {c:?}"));
                    return;
                }
                self.apply_snapshot(&p.snapshot);
                match action {
                    zsa::RESET => {
                        let g = self.zones[z].gen + 1;
                        self.zones[z] = Zone::new(g);
                    }
                    zsa::FINISH => {
                        let end = self.zones[z].acked_prefix();
                        self.make_durable(z, end);
                        let zone = &mut self.zones[z];
                        zone.full = true;
                        zone.wp = CAP;
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Guest memory layout of one connection: write slots, a read buffer and a report buffer,
/// each with its own PRP list page.
struct Bufs {
    slots: Vec<(u64, u64)>,
    next_slot: usize,
    read: (u64, u64),
    report: u64,
}

impl Bufs {
    fn new(h: &mut Host) -> Bufs {
        let mut mk = |blocks: u64| {
            let data = h.alloc(blocks * LBA);
            let list = h.alloc(LBA);
            for i in 1..blocks {
                h.ram
                    .write(list + (i - 1) * 8, &(data + i * LBA).to_le_bytes());
            }
            (data, list)
        };
        let slots = (0..SLOTS).map(|_| mk(MAX_WRITE)).collect();
        let read = mk(CHUNK);
        let report = h.alloc(64 + 64 * NZ as u64);
        Bufs {
            slots,
            next_slot: 0,
            read,
            report,
        }
    }
}

fn prp(buf: (u64, u64), blocks: u64) -> (u64, u64) {
    match blocks {
        1 => (buf.0, 0),
        2 => (buf.0, buf.0 + LBA),
        _ => (buf.0, buf.1),
    }
}

struct Conn {
    h: Host,
    bufs: Bufs,
    pending: HashMap<(u16, u16), Pending>,
    zslba: Vec<u64>,
}

impl Conn {
    fn open(socket: &Path) -> Conn {
        let mut h = Host::connect(socket, DoorbellPath::Mapped, 3);
        h.timeout = Duration::from_secs(60);
        h.init(2);
        assert_eq!(h.lba, LBA as u32);
        let bufs = Bufs::new(&mut h);
        Conn {
            h,
            bufs,
            pending: HashMap::new(),
            zslba: (0..NZ as u64).map(|z| z * CAP).collect(),
        }
    }

    fn submit(&mut self, m: &Model, qid: u16, op: Op) -> u16 {
        let sqe = match op {
            Op::Write {
                z,
                pos,
                n,
                wid,
                fua,
            } => self.data_sqe(m, opc::WRITE, z, self.zslba[z] + pos, n, wid, fua),
            Op::Append { z, n, wid } => {
                self.data_sqe(m, opc::ZONE_APPEND, z, self.zslba[z], n, wid, false)
            }
            Op::Flush => Sqe::new(opc::FLUSH),
            Op::Mgmt { z, action } => Sqe::zone_send(self.zslba[z], action, false),
        };
        let durability_point = match op {
            Op::Write { fua, .. } => fua,
            Op::Append { .. } => false,
            Op::Flush | Op::Mgmt { .. } => true,
        };
        let snapshot = if durability_point {
            m.snapshot()
        } else {
            Vec::new()
        };
        let cid = self.h.submit(qid, sqe);
        self.pending.insert((qid, cid), Pending { op, snapshot });
        cid
    }

    #[allow(clippy::too_many_arguments)]
    fn data_sqe(
        &mut self,
        m: &Model,
        op: u8,
        z: usize,
        slba: u64,
        n: u32,
        wid: u64,
        fua: bool,
    ) -> Sqe {
        let slot = self.bufs.slots[self.bufs.next_slot];
        self.bufs.next_slot = (self.bufs.next_slot + 1) % SLOTS;
        let g = m.zones[z].gen;
        for i in 0..n {
            self.h
                .ram
                .write(slot.0 + u64::from(i) * LBA, &block(z as u32, g, wid, i));
        }
        let (p1, p2) = prp(slot, u64::from(n));
        Sqe::rw(op, slba, n, fua).dptr(p1, p2)
    }

    /// Wait for the completion of the command just submitted on `qid`.
    fn wait(&mut self, m: &mut Model, qid: u16, st: &mut Stats) {
        let c = self.h.reap(qid);
        self.complete(m, qid, &c, st);
    }

    fn complete(&mut self, m: &mut Model, qid: u16, c: &Cqe, st: &mut Stats) {
        let Some(p) = self.pending.remove(&(qid, c.cid)) else {
            st.violations.push(format!(
                "completion for an unknown command on queue {qid}: {c:?}"
            ));
            return;
        };
        st.commands += 1;
        let zslba = self.zslba.clone();
        m.complete(&p, c, |z| zslba[z], st);
    }

    fn report(&mut self) -> Vec<(u8, u64, u64, u64)> {
        let len = 64 + 64 * NZ as u64;
        let c = self.h.cmd(
            1,
            Sqe::zone_recv(0, u32::try_from(len).unwrap(), 0, 0, false).dptr(self.bufs.report, 0),
        );
        assert!(c.ok(), "report zones: {c:?}");
        let b = self.h.ram.read(self.bufs.report, len as usize);
        let (n, zones) = nvme::test_utils::parse_report(&b, 0, NZ);
        assert_eq!(n, NZ as u64);
        zones
            .into_iter()
            .map(|z| (z.zs, z.zslba, z.wp, z.zcap))
            .collect()
    }

    fn read_zone(&mut self, z: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity((CAP * LBA) as usize);
        for c in 0..CAP / CHUNK {
            let (p1, p2) = prp(self.bufs.read, CHUNK);
            let slba = self.zslba[z] + c * CHUNK;
            let cq = self.h.cmd(
                2,
                Sqe::rw(opc::READ, slba, CHUNK as u32, false).dptr(p1, p2),
            );
            assert!(cq.ok(), "read zone {z} chunk {c}: {cq:?}");
            out.extend(self.h.ram.read(self.bufs.read.0, (CHUNK * LBA) as usize));
        }
        out
    }
}

/// Check every zone after a restart against the model, then make the model match what the
/// server reports (the floor for the next round).
fn verify(conn: &mut Conn, m: &mut Model, st: &mut Stats, it: u64) {
    let report = conn.report();
    for (z, &(zs, zslba, wp, zcap)) in report.iter().enumerate() {
        let mut bad = |msg: String| {
            st.violations
                .push(format!("iteration {it} zone {z}: {msg}"))
        };
        if zslba != conn.zslba[z] || zcap != CAP {
            bad(format!("descriptor zslba {zslba:#x} zcap {zcap}"));
            continue;
        }
        let eff = match zs {
            0x1 => {
                if wp != zslba {
                    bad(format!("Empty with wp {wp:#x}"));
                }
                0
            }
            0x4 => {
                if wp < zslba || wp >= zslba + CAP {
                    bad(format!("Closed with wp {wp:#x}"));
                }
                wp.saturating_sub(zslba).min(CAP)
            }
            0xE => CAP,
            other => {
                bad(format!("state {other:#x} after restart (wp {wp:#x})"));
                wp.saturating_sub(zslba).min(CAP)
            }
        };
        let zone = m.zones[z].clone();
        let reset_taken = zone.maybe_reset && eff == 0 && zs != 0xE;
        let finished = zs == 0xE && (zone.full || zone.maybe_full);
        if !reset_taken {
            if eff < zone.durable {
                bad(format!(
                    "write pointer +{eff} below the durable +{} (state {zs:#x})",
                    zone.durable
                ));
            }
            if zone.full && zs != 0xE {
                bad(format!("finished zone came back in state {zs:#x}"));
            }
        }
        if !finished && !reset_taken {
            let issued = zone.wp + zone.floating_blocks();
            if eff > issued {
                bad(format!(
                    "write pointer +{eff} ahead of the data issued (+{issued})"
                ));
            }
        }
        let data = conn.read_zone(z);
        let mut found = vec![Slot::Empty; CAP as usize];
        for b in 0..CAP as usize {
            let blk = &data[b * LBA as usize..(b + 1) * LBA as usize];
            st.blocks_checked += 1;
            let f = parse(blk);
            if (b as u64) >= eff {
                if f != Found::Zero {
                    bad(format!(
                        "block +{b} at or above the write pointer +{eff} is {f:?}"
                    ));
                }
                continue;
            }
            match f {
                Found::Zero if finished && zone.slots[b] == Slot::Empty => {}
                Found::Block(fz, fg, wid, idx) if fz == z as u32 && fg == zone.gen => {
                    let known = match zone.slots[b] {
                        Slot::Issued(w, i) | Slot::Acked(w, i) => w == wid && i == idx,
                        Slot::Empty => zone
                            .floating
                            .iter()
                            .any(|&(w, n)| w == wid && idx < n),
                    };
                    if known {
                        found[b] = Slot::Acked(wid, idx);
                    } else {
                        bad(format!(
                            "block +{b} below the write pointer +{eff} holds write {wid} block {idx}, expected {:?}",
                            zone.slots[b]
                        ));
                    }
                }
                other => bad(format!(
                    "block +{b} below the write pointer +{eff} is {other:?}, expected {:?} of generation {}",
                    zone.slots[b], zone.gen
                )),
            }
        }
        if !reset_taken {
            let (mut verified, mut broken) = (HashSet::new(), HashSet::new());
            let durable = zone.durable.min(CAP) as usize;
            for (slot, got) in zone.slots[..durable].iter().zip(&found[..durable]) {
                if let Slot::Acked(wid, _) = *slot {
                    if got == slot {
                        verified.insert(wid);
                    } else {
                        broken.insert(wid);
                    }
                }
            }
            verified.retain(|w| !broken.contains(w));
            for wid in verified {
                if m.durable_unverified.remove(&wid) {
                    st.durable_verified += 1;
                }
            }
        }
        // The model follows the server from here.
        let mut nz = if eff == 0 && zs != 0xE {
            Zone::new(zone.gen + 1)
        } else {
            let mut nz = Zone::new(zone.gen);
            nz.slots = found;
            nz.wp = eff;
            nz.full = zs == 0xE;
            nz.durable = eff;
            nz
        };
        nz.floating.clear();
        m.zones[z] = nz;
    }
    // Writes of generations that are gone can never be verified now.
    m.durable_unverified.retain(|w| {
        m.zones.iter().any(|z| {
            z.slots
                .iter()
                .any(|s| matches!(s, Slot::Acked(x, _) if x == w))
        })
    });
}

fn pick_zone(rng: &mut Rng, ok: impl Fn(usize) -> bool) -> Option<usize> {
    let start = rng.below(NZ as u64) as usize;
    (0..NZ).map(|i| (start + i) % NZ).find(|&z| ok(z))
}

/// Synchronous phase: each command completes before the next.
fn sync_ops(conn: &mut Conn, m: &mut Model, rng: &mut Rng, st: &mut Stats, n: u64) {
    for _ in 0..n {
        let qid = 1 + rng.below(2) as u16;
        let r = rng.below(100);
        let op = if r < 8 {
            Op::Flush
        } else {
            let z = rng.below(NZ as u64) as usize;
            let room = m.zones[z].room();
            if room == 0 {
                let action = if rng.chance(85) {
                    zsa::RESET
                } else {
                    zsa::FINISH
                };
                Op::Mgmt { z, action }
            } else if r < 50 {
                let n = rng.range(1, MAX_WRITE.min(room)) as u32;
                let fua = rng.chance(15);
                m.issue_write(z, n, fua)
            } else if r < 85 {
                let n = rng.range(1, MAX_WRITE.min(room)) as u32;
                m.issue_append(z, n)
            } else {
                let action = match rng.below(10) {
                    0 => zsa::RESET,
                    1 => zsa::FINISH,
                    2..=5 => zsa::OPEN,
                    _ => zsa::CLOSE,
                };
                Op::Mgmt { z, action }
            }
        };
        conn.submit(m, qid, op);
        conn.wait(m, qid, st);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Writes,
    Appends,
    Mgmt,
}

/// Submit a batch without waiting, reap some of it, then kill at a random moment.
fn batch_and_kill(conn: &mut Conn, d: Daemon, m: &mut Model, rng: &mut Rng, st: &mut Stats) {
    let k = rng.below(17);
    let mut modes: HashMap<usize, Mode> = HashMap::new();
    let mut submitted: Vec<u16> = Vec::new();
    for _ in 0..k {
        if rng.chance(15) {
            let qid = 1 + rng.below(2) as u16;
            conn.submit(m, qid, Op::Flush);
            submitted.push(qid);
            continue;
        }
        let Some(z) = pick_zone(rng, |z| modes.get(&z) != Some(&Mode::Mgmt)) else {
            continue;
        };
        let room = m.zones[z].room();
        let mode = *modes.entry(z).or_insert_with(|| match rng.below(20) {
            _ if room == 0 => Mode::Mgmt,
            0..=9 => Mode::Writes,
            10..=16 => Mode::Appends,
            _ => Mode::Mgmt,
        });
        match mode {
            Mode::Writes | Mode::Appends if room == 0 => continue,
            Mode::Writes => {
                let n = rng.range(1, MAX_WRITE.min(room)) as u32;
                // One queue per zone keeps the writes of a zone in order.
                let qid = 1 + (z % 2) as u16;
                let fua = rng.chance(20);
                let op = m.issue_write(z, n, fua);
                conn.submit(m, qid, op);
                submitted.push(qid);
            }
            Mode::Appends => {
                let n = rng.range(1, MAX_WRITE.min(room)) as u32;
                let op = m.issue_append(z, n);
                let qid = 1 + rng.below(2) as u16;
                conn.submit(m, qid, op);
                submitted.push(qid);
            }
            Mode::Mgmt => {
                let action = if room == 0 || rng.chance(50) {
                    zsa::RESET
                } else {
                    [zsa::FINISH, zsa::OPEN, zsa::CLOSE][rng.below(3) as usize]
                };
                match action {
                    zsa::RESET => m.zones[z].maybe_reset = true,
                    zsa::FINISH => m.zones[z].maybe_full = true,
                    _ => {}
                }
                let qid = 1 + rng.below(2) as u16;
                conn.submit(m, qid, Op::Mgmt { z, action });
                submitted.push(qid);
                // Nothing else goes to this zone in this batch.
                modes.insert(z, Mode::Mgmt);
            }
        }
    }
    // Reap a random prefix of what completes, per queue, the way a guest would.
    let reap = rng.below(submitted.len() as u64 + 1) as usize;
    for &qid in &submitted[..reap] {
        if conn.h.cq_pending(qid) || rng.chance(50) {
            let c = conn.h.reap(qid);
            conn.complete(m, qid, &c, st);
        }
    }
    match rng.below(4) {
        0 => {}
        1 => std::thread::yield_now(),
        _ => std::thread::sleep(Duration::from_micros(rng.below(3000))),
    }
    st.in_flight_at_kill += conn.pending.len() as u64;
    // Now and then the kill lands in the middle of a clean shutdown (SIGTERM: quiesce, flush).
    let term = rng.chance(10);
    if term {
        d.signal(nix::sys::signal::Signal::SIGTERM);
        std::thread::sleep(Duration::from_micros(rng.below(5000)));
        st.term_then_kill += 1;
    }
    match d.kill9() {
        Some(status) if term && status.success() => st.shutdown_completed += 1,
        Some(status) => st
            .violations
            .push(format!("znsd was already gone before the kill: {status}")),
        None => {}
    }
    st.kills += 1;
    // Completions the dead controller posted count as acknowledged: a guest may have seen
    // them.
    for qid in 1..=2u16 {
        while conn.h.cq_pending(qid) {
            let c = conn.h.reap_quiet(qid);
            st.completed_after_kill += 1;
            conn.complete(m, qid, &c, st);
        }
    }
    // Whatever is left had no completion: it may or may not have happened.
    conn.pending.clear();
}

fn check_file(image: &Path, st: &mut Stats, it: u64) {
    let s = qcow2zoned::FileStorage::open(image, true, false).unwrap();
    match qcow2zoned::check_image(&s) {
        Ok(r) if r.corruptions == 0 => {}
        Ok(r) => st
            .violations
            .push(format!("iteration {it}: check_image after the kill: {r:?}")),
        Err(e) => st.violations.push(format!(
            "iteration {it}: check_image after the kill failed: {e}"
        )),
    }
}

#[test]
fn kill_test() {
    let iterations = soak_or(50, 1000);
    let seed = seed_from_env("ZNSD_KILL_SEED", 0x6b11);
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("kill.qcow2");
    let socket = dir.path().join("kill.sock");
    let create = [
        "--create",
        "16M",
        "-o",
        "zone.size=1M,zone.max_open_zones=0,zone.max_active_zones=0,zone.max_append_bytes=64K",
        "--queues",
        "2",
    ];
    let mut m = Model {
        zones: (0..NZ).map(|_| Zone::new(0)).collect(),
        next_wid: 1,
        durable_unverified: HashSet::new(),
        writethrough: false,
    };
    let mut st = Stats::default();
    let t0 = Instant::now();
    let mut first = true;
    for it in 0..iterations {
        m.writethrough = rng.chance(20);
        let cache = if m.writethrough {
            "writethrough"
        } else {
            "writeback"
        };
        let mut args = vec!["--cache", cache, "--queues", "2"];
        if first {
            args = create.to_vec();
            args.extend(["--cache", cache]);
            first = false;
        }
        // Half the servers complete commands from I/O threads, out of submission order.
        let aio = it % 2 == 1;
        if aio {
            args.extend(["--aio-threads", "4"]);
        }
        if it > 0 && rng.chance(5) {
            // Killed while opening the image (or just after).
            let d = Daemon::serve_nowait(&image, &socket, &args);
            std::thread::sleep(Duration::from_micros(rng.below(20_000)));
            if let Some(status) = d.kill9() {
                st.violations
                    .push(format!("znsd exited by itself at startup: {status}"));
            }
            st.kills += 1;
            st.startup_kills += 1;
            check_file(&image, &mut st, it);
        }
        let d = Daemon::serve(&image, &socket, &args);
        let mut conn = Conn::open(&socket);
        if it > 0 {
            verify(&mut conn, &mut m, &mut st, it);
        }
        let n = rng.below(40);
        sync_ops(&mut conn, &mut m, &mut rng, &mut st, n);
        batch_and_kill(&mut conn, d, &mut m, &mut rng, &mut st);
        drop(conn);
        check_file(&image, &mut st, it);
        st.iterations += 1;
        st.aio_iterations += u64::from(aio);
        if !st.violations.is_empty() && st.violations.len() > 20 {
            break;
        }
    }
    // Final restart: verify, then a clean shutdown must leave a clean image.
    let d = Daemon::serve(&image, &socket, &["--queues", "2"]);
    let mut conn = Conn::open(&socket);
    verify(&mut conn, &mut m, &mut st, iterations);
    drop(conn);
    assert_eq!(d.terminate(), 0, "exit status after SIGTERM");
    let s = qcow2zoned::FileStorage::open(&image, true, false).unwrap();
    let rep = qcow2zoned::check_image(&s).unwrap();
    assert_eq!(rep.corruptions, 0, "{rep:?}");
    // Straight to stderr: the test harness does not capture it, so the counts show in
    // every run, passing or not.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "kill-test: {} iterations, {} kills, {} acknowledged-durable writes verified, {} violations \
         (seed {seed:#x}, {} commands completed, {} in flight at a kill, {} completed by the dying server, \
         {} kills during startup, {} during a SIGTERM shutdown ({} shutdowns finished first), \
         {} iterations with I/O threads, {} blocks checked, {} leaked clusters at the end, {:.1} s)",
        st.iterations,
        st.kills,
        st.durable_verified,
        st.violations.len(),
        st.commands,
        st.in_flight_at_kill,
        st.completed_after_kill,
        st.startup_kills,
        st.term_then_kill,
        st.shutdown_completed,
        st.aio_iterations,
        st.blocks_checked,
        rep.leaks,
        t0.elapsed().as_secs_f64()
    );
    for v in st.violations.iter().take(20) {
        println!("  violation: {v}");
    }
    assert!(
        st.violations.is_empty(),
        "{} violations",
        st.violations.len()
    );
}
