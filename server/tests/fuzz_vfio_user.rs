//! A seeded vfio-user protocol fuzzer against the server with the real NVMe controller on a
//! zoned image: raw messages on the socket (well-formed ones with random fields, malformed
//! headers and sizes, truncated and mutated messages, out-of-range regions and offsets, bogus
//! DMA maps with and without fds, random IRQ sets with random fds, random register and
//! doorbell writes, and admin queues pointing at random SQEs in mapped memory). After every
//! round the connection is closed and a well-formed client must bring the controller up and
//! read. The server must never panic outside the vfio_user crate (whose panics on malformed
//! messages the server contains by dropping that client), never hang, and leave an image
//! `check_image` finds clean.
//!
//! `cargo test --release -p znsd --test fuzz_vfio_user -- --nocapture`; `ZNSD_SOAK=1` for the
//! long run, `ZNSD_FUZZ_SEED=<n>` for another seed.

mod common;

use common::daemon::{seed_from_env, soak_or, Rng};
use common::nvme_host::{DoorbellPath, Host};
use common::*;
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use qcow2zoned::{CreateOptions, OpenOptions, ZoneOptions, ZonedImage};
use std::io::{IoSlice, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
/// Guest memory the fuzzer maps (small: each round makes a new one).
const FUZZ_RAM: u64 = 2 * MIB;

static CRATE_PANICS: AtomicU64 = AtomicU64::new(0);
static OUR_PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Count panics: those raised inside the vfio_user crate (the innermost frame of a known crate
/// is the vfio_user crate's) are contained by the server, which drops that client; any
/// other is a bug.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let bt = std::backtrace::Backtrace::force_capture().to_string();
        let culprit = bt
            .lines()
            .filter_map(|l| {
                let l = l.trim_start();
                let (n, sym) = l.split_once(": ")?;
                n.parse::<u32>().ok().map(|_| sym.trim_start_matches('<'))
            })
            .find(|sym| {
                [
                    "vfio_user::",
                    "znsd::",
                    "nvme::",
                    "qcow2zoned::",
                    "fuzz_vfio_user::vfio",
                ]
                .iter()
                .any(|p| sym.starts_with(p))
            })
            .unwrap_or("")
            .to_string();
        if culprit.starts_with("vfio_user::") {
            CRATE_PANICS.fetch_add(1, Ordering::Relaxed);
        } else {
            let msg = format!("{info} (in {culprit})");
            eprintln!("panic: {msg}\n{bt}");
            OUR_PANICS.lock().unwrap().push(msg);
        }
    }));
}

fn create_image(path: &Path) {
    ZonedImage::create(
        path,
        &CreateOptions {
            size: 64 * MIB,
            cluster_size: 64 << 10,
            zone: ZoneOptions {
                size: 4 * MIB,
                capacity: 4 * MIB,
                conventional_zones: 0,
                max_open_zones: 4,
                max_active_zones: 6,
                max_append_bytes: 64 << 10,
                zd_extension_size: 64,
            },
        },
    )
    .unwrap();
}

/// A memfd of `size` bytes filled with random bytes.
fn memfd(rng: &mut Rng, size: u64) -> OwnedFd {
    let (fd, m) = znsd::dma::memfd_mapping(c"fuzz", size.max(4096)).unwrap();
    let mut page = vec![0u8; 4096];
    let mut off = 0;
    while off < size {
        rng.fill(&mut page);
        m.write(off, &page);
        off += 4096;
    }
    fd
}

/// One fuzz round's resources: guest RAM (memfd) the fuzzer writes SQEs into.
struct Round {
    ram_fd: OwnedFd,
    ram: znsd::dma::SharedMapping,
    id: u16,
}

struct Msg {
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
}

fn header(id: u16, cmd: u16, size: u32, flags: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(size as usize);
    h.extend_from_slice(&id.to_ne_bytes());
    h.extend_from_slice(&cmd.to_ne_bytes());
    h.extend_from_slice(&size.to_ne_bytes());
    h.extend_from_slice(&flags.to_ne_bytes());
    h.extend_from_slice(&0u32.to_ne_bytes());
    h
}

fn put32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_ne_bytes());
}
fn put64(v: &mut Vec<u8>, x: u64) {
    v.extend_from_slice(&x.to_ne_bytes());
}

/// A value that is interesting as an address, offset or size.
fn wild64(rng: &mut Rng) -> u64 {
    match rng.below(8) {
        0 => 0,
        1 => u64::MAX - rng.below(0x1000),
        2 => 1 << rng.below(64),
        3 => rng.below(0x10000) * 4096,
        4 => rng.below(0x4000),
        5 => rng.next_u64(),
        6 => FUZZ_RAM - 4096 + rng.below(8192),
        _ => rng.below(FUZZ_RAM),
    }
}

fn wild32(rng: &mut Rng) -> u32 {
    match rng.below(6) {
        0 => 0,
        1 => u32::MAX - rng.below(16) as u32,
        2 => 1 << rng.below(32),
        3 => rng.below(16) as u32,
        4 => rng.below(0x1000) as u32,
        _ => rng.next_u64() as u32,
    }
}

fn eventfd() -> OwnedFd {
    OwnedFd::from(EventFd::from_flags(EfdFlags::EFD_NONBLOCK).unwrap())
}

/// BAR0 register offsets and values worth writing.
fn reg_write(rng: &mut Rng, r: &Round) -> (u32, u64, Vec<u8>) {
    let asq = rng.below(FUZZ_RAM / 4096) * 4096;
    let acq = rng.below(FUZZ_RAM / 4096) * 4096;
    let (off, val): (u64, u64) = match rng.below(10) {
        0 => (0x24, u64::from(wild32(rng) & 0x0fff_0fff)),
        1 => (0x28, if rng.chance(80) { asq } else { wild64(rng) }),
        2 => (0x30, if rng.chance(80) { acq } else { wild64(rng) }),
        3 => (
            0x14,
            if rng.chance(70) {
                (1u64 | (6 << 4) | (6 << 16) | (4 << 20)) | rng.below(2) << 14
            } else {
                u64::from(wild32(rng))
            },
        ),
        4 => (0x1000 + 4 * rng.below(16), rng.below(80)),
        5 => (0x1000 + 4 * rng.below(1024), u64::from(wild32(rng))),
        6 => (0x20, 0x4E56_4D65),
        7 => (rng.below(0x40) & !3, u64::from(wild32(rng))),
        8 => (rng.below(0x4000), rng.next_u64()),
        _ => (wild64(rng), rng.next_u64()),
    };
    // Random SQEs at the admin queue, now and then.
    if rng.chance(30) {
        let mut sqe = [0u8; 64];
        rng.fill(&mut sqe);
        sqe[0] = [
            0x00, 0x01, 0x02, 0x04, 0x05, 0x06, 0x08, 0x09, 0x0a, 0x0c, 0x18, 0x7f,
        ][rng.below(12) as usize];
        // Data pointers mostly inside the mapped memory.
        if rng.chance(70) {
            sqe[24..32].copy_from_slice(&(rng.below(FUZZ_RAM / 4096) * 4096).to_le_bytes());
            sqe[32..40].copy_from_slice(&(rng.below(FUZZ_RAM / 4096) * 4096).to_le_bytes());
        }
        let slot = rng.below(FUZZ_RAM / 64) * 64;
        r.ram.write(slot, &sqe);
    }
    let width = [4usize, 8, 4, 4, 1, 2, 3, 16][rng.below(8) as usize];
    let mut data = val.to_le_bytes().to_vec();
    data.resize(width, 0);
    let region = if rng.chance(90) { 0 } else { wild32(rng) };
    (region, off, data)
}

fn gen(rng: &mut Rng, r: &mut Round) -> Msg {
    r.id = r.id.wrapping_add(1);
    let id = r.id;
    let mut fds = Vec::new();
    let mut flags = if rng.chance(8) { 0x10 } else { 0 };
    let mut bytes = match rng.below(100) {
        0..=7 => {
            let json: &[u8] = match rng.below(5) {
                0 => br#"{"capabilities":{}}"#,
                1 => br#"{"capabilities":{"max_msg_fds":16,"max_data_xfer_size":1048576}}"#,
                2 => b"{",
                3 => b"",
                _ => br#"{"capabilities":{"migration":{"pgsize":4096}}}"#,
            };
            let nul = rng.chance(85);
            let size = 16 + 4 + json.len() + usize::from(nul);
            let mut m = header(id, 1, size as u32, flags);
            m.extend_from_slice(&[0, 0, rng.below(3) as u8, 0]);
            m.extend_from_slice(json);
            if nul {
                m.push(0);
            }
            m
        }
        8..=19 => {
            // DMA_MAP
            let size = match rng.below(4) {
                0 => FUZZ_RAM,
                1 => rng.range(1, FUZZ_RAM / 4096) * 4096,
                _ => wild64(rng),
            };
            let offset = if rng.chance(60) { 0 } else { wild64(rng) };
            let iova = if rng.chance(50) { 0 } else { wild64(rng) };
            match rng.below(6) {
                0 => {}
                1 => fds.push(eventfd()),
                2 => {
                    let size = rng.range(1, 16) * 4096;
                    fds.push(memfd(rng, size));
                }
                3 => {
                    fds.push(r.ram_fd.try_clone().unwrap());
                    fds.push(eventfd());
                }
                _ => fds.push(r.ram_fd.try_clone().unwrap()),
            }
            let mut m = header(id, 2, 16 + 32, flags);
            put32(&mut m, if rng.chance(90) { 32 } else { wild32(rng) });
            put32(&mut m, if rng.chance(80) { 3 } else { wild32(rng) });
            put64(&mut m, offset);
            put64(&mut m, iova);
            put64(&mut m, size);
            m
        }
        20..=25 => {
            let mut m = header(id, 3, 16 + 24, flags);
            put32(&mut m, 24);
            put32(&mut m, [0, 2, 1, wild32(rng)][rng.below(4) as usize]);
            put64(&mut m, wild64(rng));
            put64(&mut m, wild64(rng));
            m
        }
        26..=29 => {
            flags = 0;
            let mut m = header(id, 4, 16 + 16, flags);
            put32(&mut m, wild32(rng));
            put32(&mut m, 0);
            put32(&mut m, 0);
            put32(&mut m, 0);
            m
        }
        30..=35 => {
            flags = if rng.chance(90) { 0 } else { 0x10 };
            let mut m = header(id, 5, 16 + 32, flags);
            put32(&mut m, [32u32, 64, 256, wild32(rng)][rng.below(4) as usize]);
            put32(&mut m, 0);
            put32(
                &mut m,
                if rng.chance(70) {
                    rng.below(12) as u32
                } else {
                    wild32(rng)
                },
            );
            put32(&mut m, 0);
            put64(&mut m, 0);
            put64(&mut m, 0);
            m
        }
        36..=39 => {
            let mut m = header(id, 7, 16 + 16, flags);
            put32(&mut m, 16);
            put32(&mut m, 0);
            put32(
                &mut m,
                if rng.chance(70) {
                    rng.below(8) as u32
                } else {
                    wild32(rng)
                },
            );
            put32(&mut m, 0);
            m
        }
        40..=51 => {
            // SET_IRQS
            let n = [0usize, 1, 1, 2, 3][rng.below(5) as usize];
            for _ in 0..n {
                fds.push(if rng.chance(85) {
                    eventfd()
                } else {
                    memfd(rng, 4096)
                });
            }
            let data = [1u32, 2, 4][rng.below(3) as usize];
            let action = [8u32, 16, 32][rng.below(3) as usize];
            let f = if rng.chance(80) {
                data | action
            } else {
                wild32(rng)
            };
            let mut m = header(id, 8, 16 + 20, flags);
            put32(&mut m, 20);
            put32(&mut m, f);
            put32(
                &mut m,
                if rng.chance(80) {
                    rng.below(5) as u32
                } else {
                    wild32(rng)
                },
            );
            put32(
                &mut m,
                if rng.chance(80) {
                    rng.below(40) as u32
                } else {
                    wild32(rng)
                },
            );
            put32(
                &mut m,
                if rng.chance(80) {
                    n as u32 + rng.below(3) as u32
                } else {
                    wild32(rng)
                },
            );
            m
        }
        52..=61 => {
            // REGION_READ (replies are drained by the reader thread).
            flags = if rng.chance(95) { 0 } else { 0x10 };
            let count = match rng.below(6) {
                0 => 4,
                1 => 8,
                2 => rng.below(5000) as u32,
                3 => (rng.below(16) as u32) << 20,
                _ => rng.below(9) as u32,
            };
            let region = if rng.chance(80) {
                rng.below(10) as u32
            } else {
                wild32(rng)
            };
            let mut m = header(id, 9, 16 + 16, flags);
            put64(
                &mut m,
                wild64(rng) % if rng.chance(70) { 0x4000 } else { u64::MAX },
            );
            put32(&mut m, region);
            put32(&mut m, count);
            m
        }
        62..=89 => {
            // REGION_WRITE: registers, doorbells, config space.
            let (region, off, data) = if rng.chance(75) {
                reg_write(rng, r)
            } else {
                let off = match rng.below(5) {
                    0 => 4,
                    1 => 0x52,
                    2 => 0x10 + 4 * rng.below(6),
                    3 => 0x44,
                    _ => wild64(rng) % 0x1100,
                };
                let mut d = vec![0u8; [1usize, 2, 4, 8, 4096][rng.below(5) as usize]];
                rng.fill(&mut d);
                if off == 0x52 && rng.chance(70) {
                    d = [0x00u16, 0x8000, 0xc000][rng.below(3) as usize]
                        .to_le_bytes()
                        .to_vec();
                }
                (
                    if rng.chance(90) {
                        7
                    } else {
                        rng.below(10) as u32
                    },
                    off,
                    d,
                )
            };
            let mut m = header(id, 10, (16 + 16 + data.len()) as u32, flags);
            put64(&mut m, off);
            put32(&mut m, region);
            put32(&mut m, data.len() as u32);
            m.extend_from_slice(&data);
            m
        }
        90..=92 => header(id, 13, 16, flags),
        93..=95 => {
            let cmd = [0u16, 6, 11, 12, 14, 15, 99, u16::MAX][rng.below(8) as usize];
            let mut m = header(id, cmd, 16 + 16, flags);
            m.extend_from_slice(&[0u8; 16]);
            m
        }
        _ => {
            // Header with a wrong size: too small, too big, or random.
            let size = [0u32, 8, 15, 16, 17, 48, 1 << 20, u32::MAX][rng.below(8) as usize];
            let cmd = rng.range(1, 14) as u16;
            let mut m = header(id, cmd, size, flags);
            let extra = rng.below(64) as usize;
            let mut tail = vec![0u8; extra];
            rng.fill(&mut tail);
            m.extend_from_slice(&tail);
            m
        }
    };
    // Mutations: flip bytes, truncate, or lie about the size.
    match rng.below(100) {
        0..=5 => {
            for _ in 0..rng.range(1, 4) {
                let i = rng.below(bytes.len() as u64) as usize;
                bytes[i] ^= 1 << rng.below(8);
            }
        }
        6 => {
            let n = rng.below(bytes.len() as u64) as usize;
            bytes.truncate(n);
        }
        7 if bytes.len() >= 8 => {
            let s = (bytes.len() as u32)
                .wrapping_add(rng.below(64) as u32)
                .wrapping_sub(32);
            bytes[4..8].copy_from_slice(&s.to_ne_bytes());
        }
        _ => {}
    }
    Msg { bytes, fds }
}

fn send(s: &UnixStream, m: &Msg) -> bool {
    let raw: Vec<RawFd> = m.fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &cmsg };
    let iov = [IoSlice::new(&m.bytes)];
    if m.bytes.is_empty() {
        return true;
    }
    let mut sent = match sendmsg::<()>(s.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
        Ok(n) => n,
        Err(_) => return false,
    };
    while sent < m.bytes.len() {
        let iov = [IoSlice::new(&m.bytes[sent..])];
        match sendmsg::<()>(s.as_raw_fd(), &iov, &[], MsgFlags::MSG_NOSIGNAL, None) {
            Ok(n) => sent += n,
            Err(_) => return false,
        }
    }
    true
}

#[derive(Default)]
struct Counts {
    rounds: u64,
    messages: u64,
    replies: u64,
    error_replies: u64,
    dropped_by_server: u64,
    well_formed_clients: u64,
}

/// Read replies until EOF: (replies, error replies, EOF came before we shut down).
fn drain(mut s: UnixStream) -> (u64, u64) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    let (mut replies, mut errors) = (0, 0);
    let mut at = 0usize;
    let mut skip = 0u64;
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let mut data = &chunk[..n];
                if skip > 0 {
                    let k = (skip as usize).min(data.len());
                    skip -= k as u64;
                    data = &data[k..];
                }
                buf.extend_from_slice(data);
                // Parse whole headers, skipping bodies (which may be large).
                while buf.len() - at >= 16 {
                    let size = u32::from_ne_bytes(buf[at + 4..at + 8].try_into().unwrap()) as u64;
                    let flags = u32::from_ne_bytes(buf[at + 8..at + 12].try_into().unwrap());
                    replies += 1;
                    if flags & 0x20 != 0 {
                        errors += 1;
                    }
                    let body = size.saturating_sub(16);
                    let have = (buf.len() - at - 16) as u64;
                    if have >= body {
                        at += 16 + body as usize;
                    } else {
                        skip = body - have;
                        at = buf.len();
                    }
                }
                buf.drain(..at);
                at = 0;
            }
        }
    }
    (replies, errors)
}

fn well_formed_client(srv: &TestServer) {
    let mut h = Host::connect(&srv.socket, DoorbellPath::Mapped, 2);
    h.timeout = Duration::from_secs(60);
    h.init(1);
    let (c, _) = h.read(1, 0, 2);
    assert!(c.ok(), "read after fuzzing: {c:?}");
}

fn wait_done(srv: &TestServer, n: u64, what: &str) {
    let t0 = Instant::now();
    while srv.running().clients_done() < n {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "server did not finish with the {what} client (hang)"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn vfio_user_protocol_fuzz() {
    install_panic_hook();
    // Thousands of expected "malformed message" errors: logging stays off unless RUST_LOG asks.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_test_writer()
        .try_init();
    let rounds = soak_or(1000, 20000);
    let seed = seed_from_env("ZNSD_FUZZ_SEED", 0xf022);
    let img_dir = tempfile::tempdir().unwrap();
    let path = img_dir.path().join("fuzz.qcow2");
    create_image(&path);
    let img = Arc::new(ZonedImage::open(&path, OpenOptions::default()).unwrap());
    let ctrl = nvme::Controller::new(
        Arc::clone(&img),
        nvme::ControllerConfig {
            max_io_queues: 4,
            ..Default::default()
        },
    )
    .unwrap();
    let srv = TestServer::start(Arc::new(ctrl), 5);
    let mut n = Counts::default();
    let t0 = Instant::now();
    let mut done = 0;
    for round in 0..rounds {
        let mut rng = Rng(seed ^ round.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let ram_fd = memfd(&mut rng, FUZZ_RAM);
        let ram = znsd::dma::SharedMapping::new(ram_fd.as_fd(), 0, FUZZ_RAM, true).unwrap();
        let mut r = Round { ram_fd, ram, id: 0 };
        let s = UnixStream::connect(&srv.socket).unwrap();
        // Hang detectors: a server that stops reading or never closes fails the round.
        s.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
        let reader = {
            let s2 = s.try_clone().unwrap();
            s2.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            std::thread::spawn(move || drain(s2))
        };
        // Mostly start like a client would, so later messages are understood.
        if rng.chance(85) {
            let m = Msg {
                bytes: {
                    let json = br#"{"capabilities":{}}"#;
                    let mut m = header(0, 1, (16 + 4 + json.len() + 1) as u32, 0);
                    m.extend_from_slice(&[0, 0, 0, 0]);
                    m.extend_from_slice(json);
                    m.push(0);
                    m
                },
                fds: Vec::new(),
            };
            send(&s, &m);
        }
        let msgs = rng.range(1, 40);
        let mut dropped = false;
        for _ in 0..msgs {
            let m = gen(&mut rng, &mut r);
            n.messages += 1;
            if !send(&s, &m) {
                dropped = true;
                break;
            }
        }
        let _ = s.shutdown(std::net::Shutdown::Write);
        let (replies, errors) = reader.join().unwrap();
        n.replies += replies;
        n.error_replies += errors;
        n.dropped_by_server += u64::from(dropped);
        drop(s);
        done += 1;
        wait_done(&srv, done, "fuzzing");
        // A well-formed client right after.
        well_formed_client(&srv);
        done += 1;
        wait_done(&srv, done, "well-formed");
        n.well_formed_clients += 1;
        n.rounds += 1;
        assert!(
            OUR_PANICS.lock().unwrap().is_empty(),
            "panic outside the vfio_user crate in round {round} (seed {seed:#x})"
        );
    }
    let running = srv.running.as_ref().unwrap();
    assert_eq!(running.clients_done(), done);
    drop(srv);
    drop(img);
    let st = qcow2zoned::FileStorage::open(&path, true, false).unwrap();
    let rep = qcow2zoned::check_image(&st).unwrap();
    let panics = OUR_PANICS.lock().unwrap().len();
    // Straight to stderr: the test harness does not capture it, so the counts show in
    // every run, passing or not.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "vfio-user-fuzz: {} rounds, {} messages, {} replies ({} errors), {} clients dropped by the server mid-round, \
         {} contained vfio_user crate panics, {} well-formed clients served after a fuzz round, {} violations \
         (seed {seed:#x}, image check: {} corruptions, {} leaks, {:.1} s)",
        n.rounds,
        n.messages,
        n.replies,
        n.error_replies,
        n.dropped_by_server,
        CRATE_PANICS.load(Ordering::Relaxed),
        n.well_formed_clients,
        panics,
        rep.corruptions,
        rep.leaks,
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(rep.corruptions, 0, "{rep:?}");
    assert_eq!(panics, 0);
}
