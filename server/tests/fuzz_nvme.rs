//! A seeded NVMe command fuzzer through a real vfio-user connection to the `znsd` binary:
//! random admin and I/O submission queue entries (opcodes, namespaces, LBA ranges, PRP
//! entries and lists, SGL descriptors and segments, zone actions, log pages, features, queue
//! creation with bogus parameters), then queue misprogramming (doorbells beyond the queue
//! size or for queues that do not exist, disabling with commands outstanding, bad CC and
//! AQA values). Every command on a well-programmed queue must complete with some status, or
//! the controller must report Controller Fatal Status; the process must never die; after a
//! clean shutdown the image must check clean (no corruption, no leak) and reopen with legal
//! zone states.
//!
//! `cargo test --release -p znsd --test fuzz_nvme -- --nocapture`; `ZNSD_SOAK=1` for the long
//! run, `ZNSD_FUZZ_SEED=<n>` for another seed.

mod common;

use common::daemon::{seed_from_env, soak_or, Daemon, Rng};
use common::nvme_host::{DoorbellPath, Host, Sqe};
use common::RAM_SIZE;
use qcow2zoned::{OpenOptions, ZoneState, ZonedImage};
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

/// Guest memory the fuzzer points data pointers at: the first 30 MiB of the host's RAM. The
/// host's own queues and buffers live in the last MiB, out of reach: fuzzed lists are
/// reinterpreted at odd offsets, so small numbers (lengths) become addresses, and one
/// transfer is at most MDTS (512 KiB), less than the gap between the two.
const DATA: u64 = 0;
const DATA_LEN: u64 = 30 << 20;
const HOST_AREA: u64 = RAM_SIZE - (1 << 20);
const IO_QUEUES: u16 = 4;
const ZONE_LBAS: u64 = 1024; // 4 MiB zones of 4 KiB blocks
const NSZE: u64 = 16 * ZONE_LBAS;

#[derive(Default)]
struct Counts {
    rounds: u64,
    submitted: u64,
    completed: u64,
    success: u64,
    statuses: BTreeMap<(u8, u8), u64>,
    fatal: u64,
    misprogramming: u64,
    aers: u64,
}

/// An address for a data pointer: mostly inside the data area, sometimes unmapped or odd.
fn addr(rng: &mut Rng) -> u64 {
    match rng.below(20) {
        0 => 0,
        1 => RAM_SIZE + rng.below(1 << 20) * 4096,
        2 => u64::MAX - rng.below(0x2000),
        3 => DATA + DATA_LEN - 4096 + rng.below(8) * 512,
        4 => rng.next_u64(),
        5 => DATA + rng.below(DATA_LEN / 4096) * 4096 + rng.below(4096),
        6 => DATA + rng.below(DATA_LEN / 4096) * 4096 + 4 * rng.below(1024),
        _ => DATA + rng.below(DATA_LEN / 4096) * 4096,
    }
}

/// Fill a page of the data area with PRP entries or SGL descriptors (or noise).
fn fill_list(h: &mut Host, rng: &mut Rng, at: u64, sgl: bool) {
    let page_base = at & !4095;
    let mut page = vec![0u8; 4096];
    if sgl {
        for d in page.chunks_mut(16) {
            d[..8].copy_from_slice(&addr(rng).to_le_bytes());
            let len = match rng.below(4) {
                0 => rng.next_u64() as u32,
                1 => 4096,
                _ => rng.below(70000) as u32,
            };
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[15] = if rng.chance(80) {
                [0x00, 0x00, 0x00, 0x20, 0x30][rng.below(5) as usize]
            } else {
                rng.next_u64() as u8
            };
            if d[15] & 0xF0 != 0 && rng.chance(70) {
                // A segment: point at another list in the data area, 16-byte multiple.
                let next = DATA + rng.below(DATA_LEN / 4096) * 4096;
                d[..8].copy_from_slice(&next.to_le_bytes());
                d[8..12].copy_from_slice(&(16 * rng.range(1, 256) as u32).to_le_bytes());
            }
        }
    } else if rng.chance(90) {
        for e in page.chunks_mut(8) {
            let a = if rng.chance(90) {
                DATA + rng.below(DATA_LEN / 4096) * 4096
            } else {
                addr(rng)
            };
            e.copy_from_slice(&a.to_le_bytes());
        }
    } else {
        rng.fill(&mut page);
    }
    if (DATA..DATA + DATA_LEN).contains(&page_base) {
        h.ram.write(page_base, &page);
    }
}

fn dptr(h: &mut Host, rng: &mut Rng, sqe: Sqe, admin: bool) -> Sqe {
    let psdt = if admin || rng.chance(65) {
        if rng.chance(95) {
            0
        } else {
            rng.below(4) as u8
        }
    } else {
        1 + rng.below(2) as u8
    };
    let (p1, p2) = if psdt == 0 {
        let p1 = addr(rng);
        let p2 = addr(rng);
        if rng.chance(60) {
            fill_list(h, rng, p2, false);
        }
        (p1, p2)
    } else {
        // First descriptor in the SQE.
        let a = addr(rng);
        let len = match rng.below(3) {
            0 => rng.next_u64() as u32,
            1 => 16 * rng.range(1, 64) as u32,
            _ => rng.below(300_000) as u32,
        };
        let ty =
            [0x00u8, 0x20, 0x30, 0x20, 0x30, 0x10, rng.next_u64() as u8][rng.below(7) as usize];
        if ty != 0 {
            fill_list(h, rng, a, true);
        }
        (a, u64::from(len) | (u64::from(ty) << 56))
    };
    sqe.psdt(psdt).dptr(p1, p2)
}

fn nsid(rng: &mut Rng) -> u32 {
    if rng.chance(85) {
        1
    } else {
        [0, 2, 0xFFFF_FFFF, rng.next_u64() as u32][rng.below(4) as usize]
    }
}

fn slba(rng: &mut Rng) -> u64 {
    match rng.below(10) {
        0..=5 => rng.below(16) * ZONE_LBAS + if rng.chance(50) { 0 } else { rng.below(64) },
        6 | 7 => rng.below(NSZE),
        8 => NSZE - rng.below(4),
        _ => rng.next_u64(),
    }
}

fn io_sqe(h: &mut Host, rng: &mut Rng) -> Sqe {
    let opc = [
        0x00u8, 0x01, 0x01, 0x02, 0x02, 0x08, 0x79, 0x79, 0x7a, 0x7d, 0x7d,
    ][rng.below(11) as usize];
    let opc = if rng.chance(4) {
        rng.next_u64() as u8
    } else {
        opc
    };
    let nlb = match rng.below(10) {
        0 => rng.below(65536) as u32,
        1 => 0,
        _ => rng.below(32) as u32,
    };
    let fua = if rng.chance(20) { 1 << 30 } else { 0 };
    let mut sqe = Sqe::new(opc)
        .nsid(nsid(rng))
        .slba(slba(rng))
        .cdw(12, nlb | fua);
    match opc {
        0x79 => {
            let zsa =
                [1u32, 2, 3, 4, 4, 5, 0x10, rng.next_u64() as u8 as u32][rng.below(8) as usize];
            let all = if rng.chance(15) { 1 << 8 } else { 0 };
            sqe = sqe.cdw(13, zsa | all);
        }
        0x7a => {
            let numd = [15u32, 31, 1023, 0, rng.below(70000) as u32][rng.below(5) as usize];
            sqe = sqe.cdw(12, numd).cdw(
                13,
                (rng.below(3) as u32)
                    | ((rng.below(8) as u32) << 8)
                    | ((rng.below(2) as u32) << 16),
            );
        }
        _ => {}
    }
    if rng.chance(5) {
        sqe = sqe.fuse(rng.below(4) as u8);
    }
    if rng.chance(5) {
        sqe = sqe.cdw(rng.range(2, 15) as usize, rng.next_u64() as u32);
    }
    if opc == 0x00 {
        sqe
    } else {
        dptr(h, rng, sqe, false)
    }
}

fn admin_sqe(h: &mut Host, rng: &mut Rng) -> Sqe {
    let qid = |rng: &mut Rng| -> u16 {
        [0u16, 5, 6, 8, 255, 0xFFFF, rng.next_u64() as u16][rng.below(7) as usize]
    };
    let base = |rng: &mut Rng| -> u64 {
        if rng.chance(80) {
            DATA + rng.below(DATA_LEN / 4096 - 64) * 4096
        } else {
            addr(rng)
        }
    };
    let sqe = match rng.below(14) {
        0 | 1 => Sqe::identify(
            [0u8, 1, 2, 3, 5, 6, 8, 0x10, 0x1c, rng.next_u64() as u8][rng.below(10) as usize],
            nsid(rng),
            [0u8, 2, rng.next_u64() as u8][rng.below(3) as usize],
        )
        .cdw(
            11,
            rng.next_u64() as u32 & if rng.chance(80) { 0xFF00_0000 } else { !0 },
        ),
        2 | 3 => {
            let lid = [1u8, 2, 3, 5, 0xbf, 0x0d, rng.next_u64() as u8][rng.below(7) as usize];
            let max = [16, 1024, 4096, 100_000][rng.below(4) as usize];
            let len = 4 * rng.range(1, max) as u32;
            let off = [0u64, 4, 512, 4096, rng.next_u64()][rng.below(5) as usize] & !3;
            Sqe::get_log(lid, nsid(rng), len, off, [0u8, 2][rng.below(2) as usize])
        }
        4 => Sqe::set_features(
            [
                1u8,
                2,
                4,
                6,
                7,
                8,
                9,
                0x0a,
                0x0b,
                0x0f,
                0x19,
                rng.next_u64() as u8,
            ][rng.below(12) as usize],
            rng.next_u64() as u32,
        )
        .cdw(14, rng.next_u64() as u32 & 0xFF),
        5 => Sqe::get_features(rng.next_u64() as u8, rng.below(4) as u8)
            .cdw(11, rng.next_u64() as u32),
        6 => Sqe::new(0x08).nsid(0).cdw(10, rng.next_u64() as u32),
        7 => Sqe::new(0x18).nsid(0),
        8 => {
            let size = [1u32, 2, 64, 4096, 65536][rng.below(5) as usize];
            Sqe::create_cq(
                qid(rng),
                size,
                base(rng),
                rng.chance(50),
                rng.below(8) as u16,
            )
            .cdw(
                11,
                if rng.chance(20) {
                    rng.next_u64() as u32
                } else {
                    1 | 2
                },
            )
        }
        9 => {
            let size = [1u32, 2, 64, 4096, 65536][rng.below(5) as usize];
            let cqid = [0u16, 1, 4, 5, rng.next_u64() as u16][rng.below(5) as usize];
            Sqe::create_sq(qid(rng), size, base(rng), cqid)
        }
        10 => Sqe::delete_sq(qid(rng)),
        11 => Sqe::delete_cq(qid(rng)),
        12 => Sqe::new(rng.next_u64() as u8).nsid(nsid(rng)),
        _ => Sqe::identify(1, 0, 0).cdw(10, rng.next_u64() as u32 & 0xFFFF),
    };
    let sqe = if rng.chance(5) {
        sqe.cdw(rng.range(2, 15) as usize, rng.next_u64() as u32)
    } else {
        sqe
    };
    // Create queue commands carry their base in PRP1; keep it.
    match sqe.dw[0] & 0xFF {
        0x01 | 0x05 => sqe,
        _ => dptr(h, rng, sqe, true),
    }
}

/// Wait for the completions of `cids` on `qid` (AER completions may arrive too). Returns
/// false if the controller reported a fatal status instead.
fn collect(
    h: &mut Host,
    qid: u16,
    mut cids: HashSet<u16>,
    sqes: &BTreeMap<u16, Sqe>,
    n: &mut Counts,
    what: &str,
) -> bool {
    let t0 = Instant::now();
    let mut last_csts = Instant::now();
    while !cids.is_empty() {
        if h.cq_pending(qid) {
            let c = h.reap(qid);
            if cids.remove(&c.cid) {
                n.completed += 1;
                if c.ok() {
                    n.success += 1;
                }
                *n.statuses.entry(c.status()).or_default() += 1;
            }
            continue;
        }
        if last_csts.elapsed() > Duration::from_millis(50) {
            last_csts = Instant::now();
            let csts = h.reg32(0x1c);
            if csts & 2 != 0 {
                n.fatal += 1;
                return false;
            }
        }
        if t0.elapsed() >= Duration::from_secs(60) {
            if let Some((sq, cq, size, tail, head, phase)) = h.queue_state(qid) {
                let ring = h.ram.read(cq, size as usize * 16);
                let cqes: Vec<String> = ring
                    .chunks(16)
                    .map(|e| {
                        format!(
                            "cid {} st {:#x}",
                            u16::from_le_bytes([e[12], e[13]]),
                            u16::from_le_bytes([e[14], e[15]])
                        )
                    })
                    .collect();
                eprintln!(
                    "queue {qid}: sq {sq:#x} cq {cq:#x} size {size} tail {tail} head {head} phase {phase}; CQ ring: {cqes:?}"
                );
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{what}: commands {cids:?} on queue {qid} never completed (CSTS {:#x}): {:x?}",
            h.reg32(0x1c),
            cids.iter().map(|c| sqes[c].dw).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_micros(50));
    }
    true
}

fn misprogram(h: &mut Host, rng: &mut Rng, n: &mut Counts) {
    for _ in 0..rng.range(1, 6) {
        n.misprogramming += 1;
        match rng.below(8) {
            0 => {
                let q = rng.below(u64::from(IO_QUEUES) + 1) as u16;
                h.ring_sq(
                    q,
                    [64u32, 65, 4096, 0xFFFF, u32::MAX][rng.below(5) as usize],
                );
            }
            1 => {
                let q = rng.below(u64::from(IO_QUEUES) + 1) as u16;
                h.set_reg32(0x1000 + 8 * u64::from(q) + 4, rng.range(64, 70000) as u32);
            }
            2 => {
                let q = rng.range(5, 511) as u16;
                h.set_reg32(
                    0x1000 + 8 * u64::from(q) + 4 * rng.below(2),
                    rng.next_u64() as u32,
                );
            }
            3 => {
                // Commands outstanding, then the queue goes away.
                for _ in 0..rng.range(1, 8) {
                    let s = io_sqe(h, rng);
                    h.submit(1 + rng.below(u64::from(IO_QUEUES)) as u16, s);
                }
                let q = 1 + rng.below(u64::from(IO_QUEUES)) as u16;
                h.submit(0, Sqe::delete_sq(q));
            }
            4 => {
                for _ in 0..rng.range(1, 8) {
                    let s = io_sqe(h, rng);
                    h.submit(1 + rng.below(u64::from(IO_QUEUES)) as u16, s);
                }
                let cc = h.reg32(0x14);
                h.set_reg32(0x14, cc & !1);
            }
            5 => {
                let cc = h.reg32(0x14);
                h.set_reg32(0x14, cc & !1);
                h.set_reg32(
                    0x24,
                    [0u32, 0x0fff_0fff, rng.next_u64() as u32][rng.below(3) as usize],
                );
                h.set_reg32(0x14, rng.next_u64() as u32 | 1);
            }
            6 => {
                h.set_reg64(0x28, addr(rng));
                h.set_reg64(0x30, addr(rng));
                let cc = h.reg32(0x14);
                h.set_reg32(0x14, cc ^ 1);
            }
            _ => {
                let cc = h.reg32(0x14);
                h.set_reg32(0x14, (cc & !(3 << 14)) | (1 << 14));
            }
        }
    }
    // The controller still answers register reads.
    let _ = h.reg32(0x1c);
}

#[test]
fn nvme_command_fuzz() {
    fuzz("nvme-fuzz", &[], soak_or(300, 6000));
}

/// The same with transfers on I/O threads: completions out of submission order, queue
/// deletion and resets while transfers are in flight, DMA unmaps under pinned buffers.
#[test]
fn nvme_command_fuzz_io_threads() {
    fuzz(
        "nvme-fuzz-io-threads",
        &["--aio-threads", "4"],
        soak_or(150, 3000),
    );
}

fn fuzz(name: &str, extra: &[&str], rounds: u64) {
    let seed = seed_from_env("ZNSD_FUZZ_SEED", 0x5eed);
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("nvme-fuzz.qcow2");
    let socket = dir.path().join("nvme-fuzz.sock");
    let mut args = vec![
        "--create",
        "64M",
        "-o",
        "zone.size=4M,zone.max_open_zones=4,zone.max_active_zones=6,zone.zd_extension_size=64",
        "--queues",
        "4",
    ];
    args.extend_from_slice(extra);
    let d = Daemon::serve(&image, &socket, &args);
    let mut d = d;
    let mut n = Counts::default();
    let t0 = Instant::now();
    // ZNSD_FUZZ_FIRST_ROUND=<n> replays from round n (each round has its own generator).
    let first = seed_from_env("ZNSD_FUZZ_FIRST_ROUND", 0);
    for round in first..rounds {
        let mut rng = Rng(seed ^ round.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let path = if rng.chance(70) {
            DoorbellPath::Mapped
        } else {
            DoorbellPath::Trapped
        };
        let mut h = Host::connect(&socket, path, IO_QUEUES + 1);
        h.timeout = Duration::from_secs(60);
        h.alloc_from(HOST_AREA);
        h.init(IO_QUEUES);
        // Some noise in the data area.
        let mut page = vec![0u8; 4096];
        for _ in 0..64 {
            rng.fill(&mut page);
            h.ram.write(DATA + rng.below(DATA_LEN / 4096) * 4096, &page);
        }
        let batches = rng.range(5, 25);
        let mut fatal = false;
        'round: for _ in 0..batches {
            let qid = if rng.chance(25) {
                0
            } else {
                1 + rng.below(u64::from(IO_QUEUES)) as u16
            };
            let k = rng.range(1, 12);
            let mut cids = HashSet::new();
            let mut sqes = BTreeMap::new();
            for _ in 0..k {
                let sqe = if qid == 0 {
                    if rng.chance(3) {
                        // Held until an event: not waited for.
                        n.aers += 1;
                        n.submitted += 1;
                        h.submit(0, Sqe::new(0x0c).nsid(0));
                        continue;
                    }
                    admin_sqe(&mut h, &mut rng)
                } else {
                    io_sqe(&mut h, &mut rng)
                };
                let cid = h.submit(qid, sqe);
                if qid == 0 && sqe.dw[0] & 0xFF == 0x0c {
                    // A random opcode that is Asynchronous Event Request: held, not waited for.
                    n.aers += 1;
                    n.submitted += 1;
                    continue;
                }
                cids.insert(cid);
                sqes.insert(cid, sqe);
                n.submitted += 1;
            }
            if !collect(&mut h, qid, cids, &sqes, &mut n, &format!("round {round}")) {
                fatal = true;
                break 'round;
            }
        }
        if !fatal && rng.chance(40) {
            misprogram(&mut h, &mut rng, &mut n);
        }
        drop(h);
        if let Some(st) = d.exited() {
            panic!("znsd died in round {round} (seed {seed:#x}): {st}");
        }
        n.rounds += 1;
    }
    // A well-formed client still works.
    let mut h = Host::connect(&socket, DoorbellPath::Mapped, 2);
    h.init(1);
    let (c, _) = h.read(1, 0, 1);
    assert!(c.ok(), "read after fuzzing: {c:?}");
    drop(h);
    assert_eq!(d.terminate(), 0, "exit status after SIGTERM");
    let st = qcow2zoned::FileStorage::open(&image, true, false).unwrap();
    let rep = qcow2zoned::check_image(&st).unwrap();
    let img = ZonedImage::open(&image, OpenOptions::default()).unwrap();
    let info = img.info();
    let zones = img.zones(0, info.geometry.nr_zones);
    let mut bad_zones = Vec::new();
    for z in &zones {
        let ok = match z.state {
            ZoneState::Empty => z.wp == z.start,
            ZoneState::Closed => z.wp >= z.start && z.wp < z.start + z.capacity,
            ZoneState::Full | ZoneState::ReadOnly | ZoneState::Offline => true,
            _ => false,
        };
        if !ok {
            bad_zones.push(*z);
        }
    }
    let states: BTreeMap<String, usize> = zones.iter().fold(BTreeMap::new(), |mut m, z| {
        *m.entry(format!("{:?}", z.state)).or_default() += 1;
        m
    });
    // Straight to stderr: the test harness does not capture it, so the counts show in
    // every run, passing or not.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "{name}: {} rounds, {} commands submitted, {} completed ({} successful, {} distinct statuses), \
         {} fatal-status rounds, {} misprogramming actions, {} AERs held, server alive, \
         image check: {} corruptions, {} leaks; zones after reopen {:?}; {} violations (seed {seed:#x}, {:.1} s)",
        n.rounds,
        n.submitted,
        n.completed,
        n.success,
        n.statuses.len(),
        n.fatal,
        n.misprogramming,
        n.aers,
        rep.corruptions,
        rep.leaks,
        states,
        bad_zones.len() + usize::from(rep.corruptions != 0) + usize::from(rep.leaks != 0),
        t0.elapsed().as_secs_f64()
    );
    println!("{name} statuses (sct, sc) -> count: {:?}", n.statuses);
    assert_eq!(rep.corruptions, 0, "{rep:?}");
    assert_eq!(rep.leaks, 0, "a clean shutdown leaves no leak: {rep:?}");
    assert!(
        bad_zones.is_empty(),
        "illegal zones after reopen: {bad_zones:?}"
    );
}
