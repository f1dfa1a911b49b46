//! Crash-state explorer for the zoned image layer.
//!
//! A workload runs on a `ZonedImage` whose storage records every write (offset + bytes),
//! every length change and every sync. The image file is then rebuilt as a power loss could
//! have left it: everything up to a sync is on disk, and of the writes issued since that
//! sync any subset may have reached the disk, in any order, possibly torn at sector
//! granularity. Each rebuilt file is checked (`check_image`), opened with
//! `ZonedImage::open_with` on a `MemStorage`, and compared with what the workload was told
//! was durable (see docs/durability.md for the contract and the rules checked here).
//!
//! `cargo test --release -p qcow2zoned --test crash_explorer -- --nocapture` runs a
//! deterministic sample; `ZNSD_SOAK=1` runs the soak size (at least 10,000 crash states).

use qcow2zoned::{
    check_image, CacheMode, CreateOptions, Error, MemStorage, OpenOptions, Storage, ZoneAction,
    ZoneAttrs, ZoneInfo, ZoneOptions, ZoneState, ZonedImage,
};
use std::collections::BTreeMap;
use std::io::{self, IoSlice, IoSliceMut};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const SECTOR: usize = 512;

// ------------------------------------------------------------------ deterministic randomness

/// xorshift64* — small, deterministic, good enough to pick operations and subsets.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

// ------------------------------------------------------------------ recording storage

/// One operation on the image file, in issue order.
#[derive(Clone, Debug)]
enum Op {
    Write { off: u64, data: Arc<Vec<u8>> },
    SetLen(u64),
    Sync,
}

/// Deliberate storage defects, to prove that the checker notices lost durability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    None,
    /// The `nth` write of at least `min_len` bytes is acknowledged but never reaches the
    /// disk (the process still reads it back from its cache).
    DropWrite {
        nth: usize,
        min_len: usize,
    },
    /// At every sync, the first write issued since the previous sync is only made durable
    /// after the sync (a sync that does not order the writes before it).
    DeferAcrossSync,
}

struct RecInner {
    /// What the running process sees (page cache).
    cur: Vec<u8>,
    ops: Vec<Op>,
    /// Writes of at least the DropWrite size seen so far.
    big_writes: usize,
    /// Index in `ops` of the first op after the last sync.
    window_start: usize,
}

/// Holds one write back before it reaches the page cache, to have it in flight while
/// something else runs.
#[derive(Default)]
struct Gate {
    /// Armed: the next write whose bytes contain this pattern waits for `open` (the
    /// pattern is the start of a write payload, so metadata writes never match).
    pattern: Option<Vec<u8>>,
    blocked: bool,
    open: bool,
}

/// `Storage` that serves reads from memory and records every write and sync.
struct Recorder {
    inner: Mutex<RecInner>,
    fault: Fault,
    gate: Mutex<Gate>,
    gate_cv: Condvar,
    /// The next write of exactly this many bytes fails with an I/O error (not stored).
    fail_len: Mutex<Option<usize>>,
    /// Writes to let through before one fails with an I/O error.
    fail_after: Mutex<Option<usize>>,
    /// The next write at exactly this offset fails with an I/O error.
    fail_offset: Mutex<Option<u64>>,
}

impl Recorder {
    fn new(base: Vec<u8>, fault: Fault) -> Recorder {
        Recorder {
            inner: Mutex::new(RecInner {
                cur: base,
                ops: Vec::new(),
                big_writes: 0,
                window_start: 0,
            }),
            fault,
            gate: Mutex::new(Gate::default()),
            gate_cv: Condvar::new(),
            fail_len: Mutex::new(None),
            fail_after: Mutex::new(None),
            fail_offset: Mutex::new(None),
        }
    }
    /// Make the next write of exactly `len` bytes fail.
    fn fail_next_write_of(&self, len: usize) {
        *self.fail_len.lock().unwrap_or_else(|e| e.into_inner()) = Some(len);
    }
    /// Let `n` writes through, then fail one.
    fn fail_after_writes(&self, n: usize) {
        *self.fail_after.lock().unwrap_or_else(|e| e.into_inner()) = Some(n);
    }
    /// Make the next write at `offset` fail.
    fn fail_next_write_at(&self, offset: u64) {
        *self.fail_offset.lock().unwrap_or_else(|e| e.into_inner()) = Some(offset);
    }
    fn injected_failure_at(&self, offset: u64) -> io::Result<()> {
        let mut f = self.fail_offset.lock().unwrap_or_else(|e| e.into_inner());
        if *f == Some(offset) {
            *f = None;
            return Err(io::Error::other("injected write error"));
        }
        Ok(())
    }
    fn injected_failure(&self, len: usize) -> io::Result<()> {
        let mut f = self.fail_len.lock().unwrap_or_else(|e| e.into_inner());
        if *f == Some(len) {
            *f = None;
            return Err(io::Error::other("injected write error"));
        }
        drop(f);
        let mut c = self.fail_after.lock().unwrap_or_else(|e| e.into_inner());
        match *c {
            Some(0) => {
                *c = None;
                Err(io::Error::other("injected write error"))
            }
            Some(n) => {
                *c = Some(n - 1);
                Ok(())
            }
            None => Ok(()),
        }
    }
    fn gate(&self) -> std::sync::MutexGuard<'_, Gate> {
        self.gate.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// Hold back the next write containing `pattern`.
    fn arm(&self, pattern: &[u8]) {
        *self.gate() = Gate {
            pattern: Some(pattern.to_vec()),
            blocked: false,
            open: false,
        };
    }
    /// Wait until the armed write is held back; false if `gave_up()` first.
    fn wait_blocked(&self, gave_up: impl Fn() -> bool) -> bool {
        let mut g = self.gate();
        while !g.blocked {
            if gave_up() {
                g.pattern = None;
                return false;
            }
            g = self
                .gate_cv
                .wait_timeout(g, std::time::Duration::from_millis(5))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
    fn open_gate(&self) {
        let mut g = self.gate();
        g.open = true;
        g.pattern = None;
        self.gate_cv.notify_all();
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, RecInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn op_count(&self) -> usize {
        self.lock().ops.len()
    }
    fn take_ops(&self) -> Vec<Op> {
        self.lock().ops.clone()
    }
    fn record_write(&self, off: u64, data: Vec<u8>) {
        {
            let mut g = self.gate();
            let hit = g
                .pattern
                .as_ref()
                .is_some_and(|p| data.windows(p.len()).any(|w| w == &p[..]));
            if hit {
                g.pattern = None;
                g.blocked = true;
                self.gate_cv.notify_all();
                while !g.open {
                    g = self.gate_cv.wait(g).unwrap_or_else(|e| e.into_inner());
                }
            }
        }
        let mut g = self.lock();
        let end = off as usize + data.len();
        if g.cur.len() < end {
            g.cur.resize(end, 0);
        }
        g.cur[off as usize..end].copy_from_slice(&data);
        if let Fault::DropWrite { nth, min_len } = self.fault {
            if data.len() >= min_len {
                g.big_writes += 1;
                if g.big_writes == nth + 1 {
                    return;
                }
            }
        }
        g.ops.push(Op::Write {
            off,
            data: Arc::new(data),
        });
    }
}

impl Storage for Recorder {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let g = self.lock();
        let off = offset as usize;
        if off >= g.cur.len() {
            return Ok(0);
        }
        let n = buf.len().min(g.cur.len() - off);
        buf[..n].copy_from_slice(&g.cur[off..off + n]);
        Ok(n)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.injected_failure(buf.len())?;
        self.injected_failure_at(offset)?;
        self.record_write(offset, buf.to_vec());
        Ok(())
    }
    fn writev_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()> {
        // One pwritev is one operation (and may be torn like one).
        let mut v = Vec::new();
        for b in bufs {
            v.extend_from_slice(b);
        }
        self.injected_failure(v.len())?;
        self.injected_failure_at(offset)?;
        self.record_write(offset, v);
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        let mut g = self.lock();
        let ws = g.window_start;
        let deferred = if self.fault == Fault::DeferAcrossSync {
            let first = g.ops[ws..]
                .iter()
                .position(|o| matches!(o, Op::Write { .. }));
            first.map(|p| g.ops.remove(ws + p))
        } else {
            None
        };
        g.ops.push(Op::Sync);
        g.window_start = g.ops.len();
        if let Some(op) = deferred {
            g.ops.push(op);
        }
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.lock().cur.len() as u64)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut g = self.lock();
        g.cur.resize(len as usize, 0);
        g.ops.push(Op::SetLen(len));
        Ok(())
    }
}

// ------------------------------------------------------------------ configurations

#[derive(Clone, Copy, Debug)]
struct Config {
    name: &'static str,
    cluster: u64,
    zones: u32,
    zone_size: u64,
    capacity: u64,
    max_open: u32,
    max_active: u32,
    max_append: u32,
    zdes: u32,
    cache: CacheMode,
    /// `OpenOptions::keep_clusters_on_reset`.
    keep_on_reset: bool,
}

impl Config {
    fn create_options(&self) -> CreateOptions {
        CreateOptions {
            size: u64::from(self.zones) * self.zone_size,
            cluster_size: self.cluster,
            zone: ZoneOptions {
                size: self.zone_size,
                capacity: self.capacity,
                conventional_zones: 0,
                max_open_zones: self.max_open,
                max_active_zones: self.max_active,
                max_append_bytes: self.max_append,
                zd_extension_size: self.zdes,
            },
        }
    }
}

const CONFIGS: &[Config] = &[
    Config {
        name: "4k-8x1M-nolimits-wb",
        cluster: 4 * KIB,
        zones: 8,
        zone_size: MIB,
        capacity: MIB,
        max_open: 0,
        max_active: 0,
        max_append: 16 * KIB as u32,
        zdes: 64,
        cache: CacheMode::WriteBack,
        keep_on_reset: false,
    },
    Config {
        name: "64k-8x1M-limits-wb",
        cluster: 64 * KIB,
        zones: 8,
        zone_size: MIB,
        capacity: MIB,
        max_open: 2,
        max_active: 3,
        max_append: 64 * KIB as u32,
        zdes: 128,
        cache: CacheMode::WriteBack,
        keep_on_reset: true,
    },
    Config {
        name: "4k-16x1M-cap768k-limits-wt",
        cluster: 4 * KIB,
        zones: 16,
        zone_size: MIB,
        capacity: 768 * KIB,
        max_open: 3,
        max_active: 4,
        max_append: 32 * KIB as u32,
        zdes: 64,
        cache: CacheMode::WriteThrough,
        keep_on_reset: false,
    },
    Config {
        name: "64k-8x4M-nolimits-wt",
        cluster: 64 * KIB,
        zones: 8,
        zone_size: 4 * MIB,
        capacity: 4 * MIB,
        max_open: 0,
        max_active: 0,
        max_append: 64 * KIB as u32,
        zdes: 0,
        cache: CacheMode::WriteThrough,
        keep_on_reset: true,
    },
    Config {
        name: "64k-16x2M-cap1M-limits-wb",
        cluster: 64 * KIB,
        zones: 16,
        zone_size: 2 * MIB,
        capacity: MIB,
        max_open: 2,
        max_active: 2,
        max_append: 32 * KIB as u32,
        zdes: 192,
        cache: CacheMode::WriteBack,
        keep_on_reset: false,
    },
    Config {
        name: "4k-8x2M-smallcap-wb",
        cluster: 4 * KIB,
        zones: 8,
        zone_size: 2 * MIB,
        capacity: 96 * KIB,
        max_open: 0,
        max_active: 4,
        max_append: 8 * KIB as u32,
        zdes: 64,
        cache: CacheMode::WriteBack,
        keep_on_reset: true,
    },
    Config {
        // Tiny clusters: every few writes need a new L2 table or refcount block.
        name: "512b-8x1M-cap-unaligned-wb",
        cluster: 512,
        zones: 8,
        zone_size: MIB,
        capacity: MIB - 1536,
        max_open: 3,
        max_active: 0,
        max_append: 4 * KIB as u32,
        zdes: 64,
        cache: CacheMode::WriteBack,
        keep_on_reset: false,
    },
    Config {
        // Capacity ends inside a cluster.
        name: "64k-8x1M-cap-unaligned-wt",
        cluster: 64 * KIB,
        zones: 8,
        zone_size: MIB,
        capacity: MIB - 8 * KIB,
        max_open: 0,
        max_active: 3,
        max_append: 64 * KIB as u32,
        zdes: 64,
        cache: CacheMode::WriteThrough,
        keep_on_reset: true,
    },
];

// ------------------------------------------------------------------ workload

/// One step of a workload. Writes go to the zone's current write pointer.
#[derive(Clone, Debug)]
enum Action {
    Write {
        zone: u32,
        len: u64,
        fua: bool,
    },
    Append {
        zone: u32,
        len: u64,
        fua: bool,
    },
    Zeroes {
        zone: u32,
        len: u64,
        fua: bool,
    },
    Flush,
    Mgmt {
        zone: Option<u32>,
        action: ZoneAction,
    },
    SetZde {
        zone: u32,
    },
    Force {
        zone: u32,
        state: ZoneState,
    },
    /// A write whose data I/O is still in flight while a Flush runs and completes.
    WriteRacingFlush {
        zone: u32,
        len: u64,
    },
    /// Two writes to one zone completing out of order: the second completes and a Flush
    /// runs while the first one's data is still in flight.
    OutOfOrderPair {
        zone: u32,
        first: u64,
        second: u64,
    },
    /// Like `OutOfOrderPair`, but the second write has FUA and no Flush is issued: when it
    /// completes it must be durable, so it cannot complete before the first one.
    FuaBehindInFlight {
        zone: u32,
        first: u64,
        second: u64,
    },
}

/// What the model expects of one zone after a step.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ZSnap {
    /// Index into `Run::gens`: the zone's data since its last reset.
    gen: usize,
    wp: u64,
    state: ZoneState,
    attrs: u8,
    zded: Option<Vec<u8>>,
}

#[derive(Clone, Debug)]
struct StepRec {
    /// Ops issued by the step: `ops[start..end]`.
    start: usize,
    end: usize,
    desc: String,
    /// Completed successfully with a durability guarantee (flush, FUA / write-through
    /// write, management command, close).
    durable: bool,
    /// A management command that may change zone words wholesale (not just advance a WP).
    mgmt: bool,
    /// Failed with a host I/O error: its effect, and that of every step up to the next
    /// completed durability point, is uncertain (merged into one step by `finish`).
    io_error: bool,
}

#[derive(Clone)]
struct Run {
    cfg: Config,
    seed: u64,
    base: Vec<u8>,
    ops: Vec<Op>,
    steps: Vec<StepRec>,
    /// `snaps[0]` before the first step, `snaps[i + 1]` after step `i`.
    snaps: Vec<Vec<ZSnap>>,
    /// Generation contents (bytes from the zone start), append-only within a generation.
    gens: Vec<Vec<u8>>,
    /// Zone of each generation.
    gen_zone: Vec<u32>,
    /// Per zone: highest byte offset (relative to the zone start) ever written with data.
    hwm: Vec<u64>,
    /// Problems seen while running the workload itself (live image disagreeing with the model).
    live_errors: Vec<String>,
    /// Leaked clusters in `base` (non-zero when starting from a crash image).
    base_leaks: u64,
}

struct Exec {
    cfg: Config,
    img: ZonedImage,
    rec: Arc<Recorder>,
    cur_gen: Vec<usize>,
    gens: Vec<Vec<u8>>,
    gen_zone: Vec<u32>,
    hwm: Vec<u64>,
    zded: Vec<Vec<u8>>,
    steps: Vec<StepRec>,
    snaps: Vec<Vec<ZSnap>>,
    live_errors: Vec<String>,
    data_rng: Rng,
    /// Host I/O errors are part of the workload (injected), not a failure of the run.
    io_errors_expected: bool,
    /// The current step failed with an I/O error.
    step_io_error: bool,
}

fn zone_start(cfg: &Config, z: u32) -> u64 {
    u64::from(z) * cfg.zone_size
}

impl Exec {
    /// Start on a freshly created image, or on `from` (an image recovered from a crash).
    fn new(cfg: Config, seed: u64, fault: Fault, from: Option<Vec<u8>>) -> (Exec, Vec<u8>) {
        let base = from.unwrap_or_else(|| {
            let mem = MemStorage::default();
            ZonedImage::create_with(&mem, &cfg.create_options()).expect("create");
            mem.contents()
        });
        let rec = Arc::new(Recorder::new(base.clone(), fault));
        let img = ZonedImage::open_with(
            rec.clone(),
            OpenOptions {
                cache: cfg.cache,
                keep_clusters_on_reset: cfg.keep_on_reset,
                ..Default::default()
            },
        )
        .expect("open");
        let nz = cfg.zones as usize;
        let mut e = Exec {
            cfg,
            img,
            rec,
            cur_gen: (0..nz).collect(),
            gens: vec![Vec::new(); nz],
            gen_zone: (0..cfg.zones).collect(),
            hwm: vec![0; nz],
            zded: vec![vec![0; cfg.zdes as usize]; nz],
            steps: Vec::new(),
            snaps: Vec::new(),
            live_errors: Vec::new(),
            data_rng: Rng::new(seed ^ 0xDA7A),
            io_errors_expected: false,
            step_io_error: false,
        };
        // What a recovered image holds is the starting point of the model.
        for z in 0..cfg.zones {
            let i = e.zinfo(z);
            let len = (i.wp - i.start) as usize;
            e.gens[z as usize] = if i.state == ZoneState::Offline || len == 0 {
                vec![0; len]
            } else {
                io_read(&e.img, i.start, len).expect("read recovered zone")
            };
            e.hwm[z as usize] = len as u64;
            e.zded[z as usize] = e.img.zde(z);
        }
        let n = e.rec.op_count();
        if n > 0 {
            // Opening wrote something (header): a step of its own, durable (open syncs).
            e.steps.push(StepRec {
                start: 0,
                end: n,
                desc: "open".into(),
                durable: true,
                mgmt: false,
                io_error: false,
            });
            let s = e.snapshot();
            e.snaps.push(s.clone());
            e.snaps.push(s);
        } else {
            let s = e.snapshot();
            e.snaps.push(s);
        }
        (e, base)
    }

    fn zinfo(&self, z: u32) -> ZoneInfo {
        self.img.zones(z, 1)[0]
    }

    fn snapshot(&mut self) -> Vec<ZSnap> {
        let (infos, zdes) = live_state(&self.img, self.cfg.zones);
        self.make_snap(&infos, &zdes)
    }

    fn make_snap(&mut self, infos: &[ZoneInfo], zdes: &[Vec<u8>]) -> Vec<ZSnap> {
        let mut out = Vec::with_capacity(infos.len());
        for (z, i) in infos.iter().enumerate() {
            let model_wp =
                zone_start(&self.cfg, z as u32) + self.gens[self.cur_gen[z]].len() as u64;
            if i.wp != model_wp {
                self.live_errors.push(format!(
                    "live zone {z}: wp 0x{:x}, model 0x{model_wp:x} ({:?})",
                    i.wp, i.state
                ));
            }
            let zded = if i.attrs.contains(ZoneAttrs::ZDEV) {
                let live = zdes[z].clone();
                if live != self.zded[z] {
                    self.live_errors
                        .push(format!("live zone {z}: descriptor extension differs"));
                }
                Some(live)
            } else {
                None
            };
            out.push(ZSnap {
                gen: self.cur_gen[z],
                wp: i.wp,
                state: i.state,
                attrs: i.attrs.bits(),
                zded,
            });
        }
        out
    }

    fn new_gen(&mut self, z: u32) {
        self.gens.push(Vec::new());
        self.gen_zone.push(z);
        self.cur_gen[z as usize] = self.gens.len() - 1;
    }

    fn push_data(&mut self, z: u32, data: &[u8]) {
        let g = self.cur_gen[z as usize];
        self.gens[g].extend_from_slice(data);
        let end = self.gens[g].len() as u64;
        let h = &mut self.hwm[z as usize];
        *h = (*h).max(end);
    }

    /// Record an error; returns true for a host I/O error (after which the live image may
    /// have changed although the command failed).
    fn note_err(&mut self, what: &str, e: &Error) -> bool {
        if matches!(e, Error::Io { .. }) && self.io_errors_expected {
            self.step_io_error = true;
            return true;
        }
        if !matches!(e, Error::Zone(_) | Error::Invalid(_)) {
            self.live_errors
                .push(format!("{what}: unexpected error {e}"));
        }
        false
    }

    /// Execute one action; returns (description, durable, mgmt).
    fn exec(&mut self, a: &Action) -> (String, bool, bool) {
        let wt = self.cfg.cache == CacheMode::WriteThrough;
        match *a {
            Action::Write { zone, len, fua } | Action::Append { zone, len, fua } => {
                let append = matches!(a, Action::Append { .. });
                let data = self.data_rng.bytes(len as usize);
                let wp = self.zinfo(zone).wp;
                let start = zone_start(&self.cfg, zone);
                // Split the buffer in two iovecs now and then (gather writes).
                let cut = if len > 1024 && self.data_rng.chance(30) {
                    (self.data_rng.below(len / 512) * 512) as usize
                } else {
                    0
                };
                let bufs = [IoSlice::new(&data[..cut]), IoSlice::new(&data[cut..])];
                let r = if append {
                    self.img.append(start, &bufs, fua).map(|off| {
                        if off != wp {
                            self.live_errors.push(format!(
                                "append to zone {zone} went to 0x{off:x}, wp was 0x{wp:x}"
                            ));
                        }
                    })
                } else {
                    self.img.write(wp, &bufs, fua)
                };
                let name = if append { "append" } else { "write" };
                let desc = format!(
                    "{name}{} zone {zone} at +0x{:x} len {len}",
                    if fua { " fua" } else { "" },
                    wp - start
                );
                match r {
                    Ok(()) => {
                        self.push_data(zone, &data);
                        (desc, fua || wt, false)
                    }
                    Err(e) => {
                        if self.note_err(&desc, &e) && self.zinfo(zone).wp == wp + len {
                            // The data is in; only the flush after it failed.
                            self.push_data(zone, &data);
                        }
                        (format!("{desc} (refused: {e})"), false, false)
                    }
                }
            }
            Action::Zeroes { zone, len, fua } => {
                let wp = self.zinfo(zone).wp;
                let desc = format!(
                    "write_zeroes{} zone {zone} at +0x{:x} len {len}",
                    if fua { " fua" } else { "" },
                    wp - zone_start(&self.cfg, zone)
                );
                match self.img.write_zeroes(wp, len, fua) {
                    Ok(()) => {
                        self.push_data(zone, &vec![0; len as usize]);
                        (desc, fua || wt, false)
                    }
                    Err(e) => {
                        if self.note_err(&desc, &e) && self.zinfo(zone).wp == wp + len {
                            self.push_data(zone, &vec![0; len as usize]);
                        }
                        (format!("{desc} (refused: {e})"), false, false)
                    }
                }
            }
            Action::Flush => match self.img.flush() {
                Ok(()) => ("flush".into(), true, false),
                Err(e) => {
                    self.note_err("flush", &e);
                    ("flush (failed)".into(), false, false)
                }
            },
            Action::Mgmt { zone, action } => {
                let before = self.img.zones(0, self.cfg.zones);
                let desc = match zone {
                    Some(z) => format!("{action:?} zone {z}"),
                    None => format!("{action:?} all"),
                };
                match self.img.zone_action(zone, action) {
                    Ok(()) => {
                        let after = self.img.zones(0, self.cfg.zones);
                        self.apply_mgmt(&before, &after);
                        (desc, true, true)
                    }
                    Err(e) => {
                        if self.note_err(&desc, &e) {
                            let after = self.img.zones(0, self.cfg.zones);
                            self.apply_mgmt(&before, &after);
                        }
                        (format!("{desc} (refused: {e})"), false, false)
                    }
                }
            }
            Action::SetZde { zone } => {
                let data = self.data_rng.bytes(self.cfg.zdes as usize);
                let desc = format!("set_zde zone {zone}");
                match self.img.set_zde(zone, &data) {
                    Ok(()) => {
                        self.zded[zone as usize] = data;
                        (desc, true, true)
                    }
                    Err(e) => {
                        if self.note_err(&desc, &e)
                            && self.zinfo(zone).attrs.contains(ZoneAttrs::ZDEV)
                        {
                            // The live zone claims the extension although the command failed.
                            self.zded[zone as usize] = data;
                        }
                        (format!("{desc} (refused: {e})"), false, false)
                    }
                }
            }
            Action::WriteRacingFlush { .. }
            | Action::OutOfOrderPair { .. }
            | Action::FuaBehindInFlight { .. } => {
                unreachable!("handled by step_racing / step_out_of_order")
            }
            Action::Force { zone, state } => {
                let desc = format!("force zone {zone} {state:?}");
                match self.img.force_zone_state(zone, state) {
                    Ok(()) => (desc, true, true),
                    Err(e) => {
                        self.note_err(&desc, &e);
                        (format!("{desc} (refused: {e})"), false, false)
                    }
                }
            }
        }
    }

    /// Model effects of a completed management command, from the zone states around it.
    fn apply_mgmt(&mut self, before: &[ZoneInfo], after: &[ZoneInfo]) {
        for (b, a) in before.iter().zip(after) {
            let z = a.index;
            if a.state == ZoneState::Empty && b.state != ZoneState::Empty {
                self.new_gen(z);
            } else if a.state == ZoneState::Full && b.state != ZoneState::Full {
                let cap = self.cfg.capacity as usize;
                let g = self.cur_gen[z as usize];
                self.gens[g].resize(cap, 0);
            }
        }
    }

    fn step(&mut self, a: &Action) {
        if let Action::WriteRacingFlush { zone, len } = *a {
            self.step_racing(zone, len);
            return;
        }
        if let Action::OutOfOrderPair {
            zone,
            first,
            second,
        } = *a
        {
            self.step_out_of_order(zone, first, second);
            return;
        }
        if let Action::FuaBehindInFlight {
            zone,
            first,
            second,
        } = *a
        {
            self.step_fua_behind(zone, first, second);
            return;
        }
        let start = self.rec.op_count();
        let (desc, durable, mgmt) = self.exec(a);
        let end = self.rec.op_count();
        self.steps.push(StepRec {
            start,
            end,
            desc,
            durable,
            mgmt,
            io_error: std::mem::take(&mut self.step_io_error),
        });
        let s = self.snapshot();
        self.snaps.push(s);
    }

    /// Write A is held back before its data reaches the page cache; write B, right after it
    /// in the same zone, is issued with FUA. If B completes while A is still held, B was
    /// acknowledged durable although the durable write pointer cannot cover it before A's
    /// data is there: the model records B (and so A's range) as durable at that point, and
    /// the crash states after it show whether the image kept that promise. If B waits for
    /// A, the pair is one durable step.
    fn step_fua_behind(&mut self, zone: u32, first: u64, second: u64) {
        let wp = self.zinfo(zone).wp;
        let cs = self.cfg.cluster;
        let first = (wp + first).div_ceil(cs) * cs - wp;
        let room = zone_start(&self.cfg, zone) + self.cfg.capacity - wp;
        let second = second.min(room.saturating_sub(first));
        let a = self.data_rng.bytes(first as usize);
        let b = self.data_rng.bytes(second as usize);
        let desc = format!(
            "write zone {zone} at +0x{:x} len {first} in flight, then FUA write len {second}",
            wp - zone_start(&self.cfg, zone)
        );
        let start = self.rec.op_count();
        let (img, rec) = (&self.img, &self.rec);
        rec.arm(&a[..16.min(a.len())]);
        let (held, early, mid, ra, rb) = std::thread::scope(|sc| {
            let ha = sc.spawn(|| img.write(wp, &[IoSlice::new(&a)], false));
            let held = rec.wait_blocked(|| ha.is_finished());
            let bref = &b;
            let hb = sc.spawn(move || {
                if held {
                    img.write(wp + first, &[IoSlice::new(bref)], true)
                } else {
                    Err(Error::Invalid("first write did not start".into()))
                }
            });
            let t = Instant::now();
            while !hb.is_finished() && t.elapsed() < std::time::Duration::from_secs(1) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            let early = held && hb.is_finished();
            let mid = rec.op_count();
            rec.open_gate();
            let ra = ha.join().expect("writer thread");
            let rb = hb.join().expect("writer thread");
            (held, early, mid, ra, rb)
        });
        let ok = held && ra.is_ok() && rb.is_ok();
        if !ok {
            if let Err(e) = &ra {
                self.note_err(&desc, e);
            }
            if let Err(e) = &rb {
                self.note_err(&desc, e);
            }
            if ra.is_ok() {
                self.push_data(zone, &a);
            }
            if ra.is_ok() && rb.is_ok() {
                self.push_data(zone, &b);
            }
            let end = self.rec.op_count();
            self.steps.push(StepRec {
                start,
                end,
                desc: format!("{desc} (refused)"),
                durable: false,
                mgmt: false,
                io_error: false,
            });
            let s = self.snapshot();
            self.snaps.push(s);
            return;
        }
        self.push_data(zone, &a);
        self.push_data(zone, &b);
        if early {
            // B was acknowledged durable while A was in flight: from here on the model
            // holds the image to B's promise.
            let mut snap = self.snaps.last().cloned().unwrap_or_default();
            let z = zone as usize;
            snap[z].gen = self.cur_gen[z];
            snap[z].wp = wp + first + second;
            snap[z].state = if snap[z].wp == zone_start(&self.cfg, zone) + self.cfg.capacity {
                ZoneState::Full
            } else {
                ZoneState::Closed
            };
            self.steps.push(StepRec {
                start,
                end: mid,
                desc: format!("{desc}: FUA write acknowledged while the first is in flight"),
                durable: true,
                mgmt: false,
                io_error: false,
            });
            self.snaps.push(snap);
            let end = self.rec.op_count();
            self.steps.push(StepRec {
                start: mid,
                end,
                desc: format!("{desc}: first done"),
                durable: false,
                mgmt: false,
                io_error: false,
            });
        } else {
            let end = self.rec.op_count();
            self.steps.push(StepRec {
                start,
                end,
                desc: format!("{desc}: FUA write waited for the first"),
                durable: true,
                mgmt: false,
                io_error: false,
            });
        }
        let s = self.snapshot();
        self.snaps.push(s);
    }

    /// Write A is issued and held back before its data reaches the page cache; write B,
    /// right after it in the same zone, completes; a Flush completes; then A is let go.
    /// Recorded as two steps: "B done and flushed while A is in flight" (durable: the
    /// committed write pointer must stay before A) and "A done".
    fn step_out_of_order(&mut self, zone: u32, first: u64, second: u64) {
        let wp = self.zinfo(zone).wp;
        // B starts on a cluster boundary, so it never waits for a cluster A is allocating.
        let cs = self.cfg.cluster;
        let first = (wp + first).div_ceil(cs) * cs - wp;
        let room = zone_start(&self.cfg, zone) + self.cfg.capacity - wp;
        let second = second.min(room.saturating_sub(first));
        let a = self.data_rng.bytes(first as usize);
        let b = self.data_rng.bytes(second as usize);
        let desc = format!(
            "writes zone {zone} at +0x{:x} len {first} then len {second}, completing out of order",
            wp - zone_start(&self.cfg, zone)
        );
        let start = self.rec.op_count();
        let (img, rec, nz) = (&self.img, &self.rec, self.cfg.zones);
        rec.arm(&a[..16.min(a.len())]);
        let (held, rb, flushed, mid, mid_state, ra) = std::thread::scope(|sc| {
            let ha = sc.spawn(|| img.write(wp, &[IoSlice::new(&a)], false));
            let held = rec.wait_blocked(|| ha.is_finished());
            // B may legitimately wait for A (it shares a cluster being allocated for A):
            // give it a moment, and only flush if it completed while A is held.
            let bref = &b;
            let hb = sc.spawn(move || {
                if held {
                    img.write(wp + first, &[IoSlice::new(bref)], false)
                } else {
                    Err(Error::Invalid("first write did not start".into()))
                }
            });
            let t = Instant::now();
            while !hb.is_finished() && t.elapsed() < std::time::Duration::from_secs(2) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            let b_done = hb.is_finished();
            let fr = if b_done {
                img.flush()
            } else {
                Err(Error::Invalid("second write waits for the first".into()))
            };
            let mid = rec.op_count();
            let mid_state = live_state(img, nz);
            rec.open_gate();
            let ra = ha.join().expect("writer thread");
            let rb = hb.join().expect("writer thread");
            (held && b_done, rb, fr, mid, mid_state, ra)
        });
        if let Err(e) = &flushed {
            self.note_err("flush between out-of-order writes", e);
        }
        let ok = held && rb.is_ok();
        self.steps.push(StepRec {
            start,
            end: mid,
            desc: format!("second of {desc} done, flushed, first in flight"),
            durable: flushed.is_ok() && ok,
            mgmt: false,
            io_error: false,
        });
        let snap = self.make_snap(&mid_state.0, &mid_state.1);
        self.snaps.push(snap);
        let end = self.rec.op_count();
        let desc = match (&ra, &rb) {
            (Ok(()), Ok(())) => {
                self.push_data(zone, &a);
                self.push_data(zone, &b);
                format!("first of {desc} done")
            }
            (Ok(()), Err(e)) => {
                self.push_data(zone, &a);
                format!("{desc}: second refused: {e}")
            }
            (Err(e), _) => {
                self.note_err(&desc, e);
                format!("{desc} (refused: {e})")
            }
        };
        self.steps.push(StepRec {
            start: mid,
            end,
            desc,
            durable: false,
            mgmt: false,
            io_error: false,
        });
        let s = self.snapshot();
        self.snaps.push(s);
    }

    /// Issue a write, hold its data back before it reaches the page cache, flush from
    /// this thread meanwhile, then let the write finish. Recorded as two steps: the flush
    /// (durable, the write still in flight) and the write's completion.
    fn step_racing(&mut self, zone: u32, len: u64) {
        let data = self.data_rng.bytes(len as usize);
        let wp = self.zinfo(zone).wp;
        let desc = format!(
            "write zone {zone} at +0x{:x} len {len} racing a flush",
            wp - zone_start(&self.cfg, zone)
        );
        let start = self.rec.op_count();
        let (img, rec, nz) = (&self.img, &self.rec, self.cfg.zones);
        rec.arm(&data[..16.min(data.len())]);
        let (held, flushed, mid, mid_state, wr) = std::thread::scope(|sc| {
            let h = sc.spawn(|| img.write(wp, &[IoSlice::new(&data)], false));
            let held = rec.wait_blocked(|| h.is_finished());
            let fr = img.flush();
            let mid = rec.op_count();
            let mid_state = live_state(img, nz);
            rec.open_gate();
            let wr = h.join().expect("writer thread");
            (held, fr, mid, mid_state, wr)
        });
        if let Err(e) = &flushed {
            self.note_err("flush racing a write", e);
        }
        self.steps.push(StepRec {
            start,
            end: mid,
            desc: format!("flush while the data of '{desc}' is in flight"),
            durable: flushed.is_ok() && held,
            mgmt: false,
            io_error: false,
        });
        let snap = self.make_snap(&mid_state.0, &mid_state.1);
        self.snaps.push(snap);
        let end = self.rec.op_count();
        let (desc, durable) = match wr {
            Ok(()) => {
                self.push_data(zone, &data);
                (desc, self.cfg.cache == CacheMode::WriteThrough)
            }
            Err(e) => {
                self.note_err(&desc, &e);
                (format!("{desc} (refused: {e})"), false)
            }
        };
        self.steps.push(StepRec {
            start: mid,
            end,
            desc,
            durable,
            mgmt: false,
            io_error: false,
        });
        let s = self.snapshot();
        self.snaps.push(s);
    }

    /// A step that failed with an I/O error may have changed the image anyway, and so may
    /// every step after it until a durability point completes: merge them into one step
    /// whose effect is either entirely absent or present (per zone).
    fn merge_uncertain(&mut self) {
        let Some(u) = self.steps.iter().position(|s| s.io_error) else {
            return;
        };
        let v = (u..self.steps.len())
            .find(|&j| j > u && self.steps[j].durable)
            .unwrap_or(self.steps.len() - 1);
        let merged = StepRec {
            start: self.steps[u].start,
            end: self.steps[v].end,
            desc: format!(
                "{} and the {} steps after it (I/O error)",
                self.steps[u].desc,
                v - u
            ),
            durable: self.steps[v].durable,
            mgmt: true,
            io_error: true,
        };
        self.steps.splice(u..=v, [merged]);
        self.snaps.drain(u + 1..v + 1);
    }

    fn finish(mut self, seed: u64, base: Vec<u8>) -> Run {
        let start = self.rec.op_count();
        let r = std::mem::replace(&mut self.img, dummy_image()).close();
        let closed = r.is_ok();
        if let Err(e) = r {
            self.note_err("close", &e);
        }
        let end = self.rec.op_count();
        self.steps.push(StepRec {
            start,
            end,
            desc: "close".into(),
            durable: closed,
            mgmt: false,
            io_error: std::mem::take(&mut self.step_io_error),
        });
        let last = self.snaps.last().cloned().unwrap_or_default();
        self.snaps.push(last);
        self.merge_uncertain();
        Run {
            cfg: self.cfg,
            seed,
            ops: self.rec.take_ops(),
            steps: self.steps,
            snaps: self.snaps,
            gens: self.gens,
            gen_zone: self.gen_zone,
            hwm: self.hwm,
            live_errors: self.live_errors,
            base_leaks: check_image(&MemStorage::new(base.clone()))
                .map(|r| r.leaks)
                .unwrap_or(0),
            base,
        }
    }
}

/// Zone infos and descriptor extensions as the live image reports them.
fn live_state(img: &ZonedImage, nz: u32) -> (Vec<ZoneInfo>, Vec<Vec<u8>>) {
    let infos = img.zones(0, nz);
    let zdes = (0..nz).map(|z| img.zde(z)).collect();
    (infos, zdes)
}

/// A throwaway read-only image to move the real one out of `Exec` for `close`.
fn dummy_image() -> ZonedImage {
    let mem = MemStorage::default();
    let cfg = CONFIGS[0];
    ZonedImage::create_with(&mem, &cfg.create_options()).expect("create");
    ZonedImage::open_with(
        Arc::new(MemStorage::new(mem.contents())),
        OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .expect("open")
}

/// Pick a plausible next action from the live zone states.
fn random_action(rng: &mut Rng, e: &Exec, forced: &mut u32) -> Action {
    let cfg = &e.cfg;
    let nz = cfg.zones;
    let zone = if rng.chance(70) {
        rng.below(u64::from(nz.min(3))) as u32
    } else {
        rng.below(u64::from(nz)) as u32
    };
    let info = e.zinfo(zone);
    let room = (zone_start(cfg, zone) + cfg.capacity).saturating_sub(info.wp);
    let cs = cfg.cluster;
    let pick_len = |rng: &mut Rng, max: u64| -> u64 {
        let l = match rng.below(7) {
            0 => 512,
            1 => 4 * KIB,
            2 => cs,
            3 => cs + 512,
            4 => 2 * cs + 1536,
            5 => (1 + rng.below(8)) * 512,
            _ => (1 + rng.below((3 * cs).min(160 * KIB) / 512)) * 512,
        };
        l.min(max).max(512)
    };
    let fua = rng.chance(15);
    match rng.below(100) {
        0..=29 if room >= 512 => Action::Write {
            zone,
            len: pick_len(rng, room),
            fua,
        },
        30..=39 if room >= 512 => Action::Append {
            zone,
            len: pick_len(rng, room.min(u64::from(cfg.max_append))),
            fua,
        },
        40..=45 if room >= 512 => Action::Zeroes {
            zone,
            len: pick_len(rng, room),
            fua,
        },
        46..=57 => Action::Flush,
        58..=62 => Action::Mgmt {
            zone: Some(zone),
            action: ZoneAction::Open,
        },
        63..=67 => Action::Mgmt {
            zone: Some(zone),
            action: ZoneAction::Close,
        },
        68..=71 => Action::Mgmt {
            zone: Some(zone),
            action: ZoneAction::Finish,
        },
        72..=78 => Action::Mgmt {
            zone: Some(zone),
            action: ZoneAction::Reset,
        },
        79..=80 => Action::Mgmt {
            zone: None,
            action: match rng.below(4) {
                0 => ZoneAction::Close,
                1 => ZoneAction::Open,
                2 => ZoneAction::Finish,
                _ => ZoneAction::Reset,
            },
        },
        81..=85 if cfg.zdes > 0 => {
            // Prefer an Empty zone (the only state that accepts an extension).
            let zs = e.img.zones(0, nz);
            let empty: Vec<u32> = zs
                .iter()
                .filter(|z| z.state == ZoneState::Empty)
                .map(|z| z.index)
                .collect();
            let zone = if empty.is_empty() {
                zone
            } else {
                empty[rng.below(empty.len() as u64) as usize]
            };
            Action::SetZde { zone }
        }
        87 if room >= 512 => Action::WriteRacingFlush {
            zone,
            len: pick_len(rng, room),
        },
        88..=89 if room >= 1024 => Action::OutOfOrderPair {
            zone,
            first: pick_len(rng, room / 2),
            second: pick_len(rng, room / 2),
        },
        86 if *forced < 2 => {
            *forced += 1;
            // Keep the hot zones usable: force one of the others.
            let zone = (3 + rng.below(u64::from(nz - 3))) as u32;
            Action::Force {
                zone,
                state: if rng.chance(50) {
                    ZoneState::ReadOnly
                } else {
                    ZoneState::Offline
                },
            }
        }
        _ if room >= 512 => Action::Write {
            zone,
            len: pick_len(rng, room),
            fua,
        },
        _ => Action::Mgmt {
            zone: Some(zone),
            action: ZoneAction::Reset,
        },
    }
}

fn run_random(cfg: Config, seed: u64, nsteps: usize, from: Option<Vec<u8>>) -> Run {
    let (mut e, base) = Exec::new(cfg, seed, Fault::None, from);
    let mut rng = Rng::new(seed);
    let mut forced = 0;
    for _ in 0..nsteps {
        let a = random_action(&mut rng, &e, &mut forced);
        e.step(&a);
    }
    e.finish(seed, base)
}

/// A random workload in which one host write fails: at step `at`, `after` more writes go
/// through and the next one fails with an I/O error.
fn run_random_with_io_error(cfg: Config, seed: u64, nsteps: usize, at: usize, after: usize) -> Run {
    let (mut e, base) = Exec::new(cfg, seed, Fault::None, None);
    e.io_errors_expected = true;
    let mut rng = Rng::new(seed);
    let mut forced = 0;
    for i in 0..nsteps {
        if i == at {
            e.rec.fail_after_writes(after);
        }
        let a = match random_action(&mut rng, &e, &mut forced) {
            Action::WriteRacingFlush { zone, len } => Action::Write {
                zone,
                len,
                fua: false,
            },
            Action::OutOfOrderPair { zone, first, .. } => Action::Write {
                zone,
                len: first,
                fua: false,
            },
            a => a,
        };
        e.step(&a);
    }
    e.finish(seed, base)
}

fn run_script(cfg: Config, seed: u64, script: &[Action], fault: Fault) -> Run {
    run_script_from(cfg, seed, script, fault, None)
}

fn run_script_from(
    cfg: Config,
    seed: u64,
    script: &[Action],
    fault: Fault,
    from: Option<Vec<u8>>,
) -> Run {
    let (mut e, base) = Exec::new(cfg, seed, fault, from);
    for a in script {
        e.step(a);
    }
    e.finish(seed, base)
}

// ------------------------------------------------------------------ crash images

/// A piece of a pending write that reached the disk.
#[derive(Clone, Debug)]
struct Piece {
    op: usize,
    /// Byte range within the write.
    from: usize,
    to: usize,
}

fn apply_write(img: &mut Vec<u8>, off: u64, data: &[u8]) {
    let off = off as usize;
    let end = off + data.len();
    if img.len() < end {
        img.resize(end, 0);
    }
    img[off..end].copy_from_slice(data);
}

fn apply_op(img: &mut Vec<u8>, op: &Op) {
    match op {
        Op::Write { off, data } => apply_write(img, *off, data),
        Op::SetLen(l) => img.resize(*l as usize, 0),
        Op::Sync => {}
    }
}

fn apply_piece(img: &mut Vec<u8>, ops: &[Op], p: &Piece) {
    match &ops[p.op] {
        Op::Write { off, data } => apply_write(img, off + p.from as u64, &data[p.from..p.to]),
        op => apply_op(img, op),
    }
}

/// How the pending writes of one window are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    /// Nothing since the last sync reached the disk.
    None,
    /// Everything issued reached the disk, in order.
    All,
    /// An in-order prefix reached the disk (an ordered disk losing its tail).
    Prefix,
    /// A random subset, applied in issue order.
    Subset,
    /// A random subset, applied in random order.
    Reorder,
    /// Writes split into sectors (512 B or 4 KiB), a random subset in random order.
    Torn,
}

const VARIANTS: [Variant; 6] = [
    Variant::None,
    Variant::All,
    Variant::Prefix,
    Variant::Subset,
    Variant::Reorder,
    Variant::Torn,
];

fn choose_pieces(rng: &mut Rng, ops: &[Op], pending: &[usize], v: Variant) -> Vec<Piece> {
    let whole = |i: usize| Piece {
        op: i,
        from: 0,
        to: match &ops[i] {
            Op::Write { data, .. } => data.len(),
            _ => 0,
        },
    };
    match v {
        Variant::None => Vec::new(),
        Variant::All => pending.iter().map(|&i| whole(i)).collect(),
        Variant::Prefix => {
            let n = rng.below(pending.len() as u64 + 1) as usize;
            pending[..n].iter().map(|&i| whole(i)).collect()
        }
        Variant::Subset | Variant::Reorder => {
            let keep = 20 + rng.below(61);
            let mut out: Vec<Piece> = pending
                .iter()
                .filter(|_| rng.chance(keep))
                .map(|&i| whole(i))
                .collect();
            if v == Variant::Reorder {
                rng.shuffle(&mut out);
            }
            out
        }
        Variant::Torn => {
            let sec = if rng.chance(50) { SECTOR } else { 8 * SECTOR };
            let keep = 20 + rng.below(61);
            let mut out = Vec::new();
            for &i in pending {
                match &ops[i] {
                    Op::Write { off, data } => {
                        // Cut at absolute sector boundaries.
                        let mut from = 0usize;
                        while from < data.len() {
                            let abs = *off as usize + from;
                            let to = ((abs / sec + 1) * sec - *off as usize).min(data.len());
                            if rng.chance(keep) {
                                out.push(Piece { op: i, from, to });
                            }
                            from = to;
                        }
                    }
                    _ => {
                        if rng.chance(keep) {
                            out.push(whole(i));
                        }
                    }
                }
            }
            rng.shuffle(&mut out);
            out
        }
    }
}

/// A crash image of `run` at a random sync window with a random subset of its pending
/// writes on disk (to continue working on a recovered image).
fn random_crash_image(run: &Run, rng: &mut Rng) -> (usize, Vec<u8>) {
    let syncs: Vec<usize> = (0..run.ops.len())
        .filter(|&i| matches!(run.ops[i], Op::Sync))
        .collect();
    // Crashes inside a Reset are the interesting ones to continue from (the zone word is
    // durable before the old clusters are unmapped): prefer them.
    let in_reset: Vec<usize> = syncs
        .iter()
        .copied()
        .filter(|&i| {
            run.steps
                .iter()
                .any(|s| s.mgmt && s.desc.starts_with("Reset") && s.start <= i && i < s.end)
        })
        .collect();
    let pool = if !in_reset.is_empty() && rng.chance(60) {
        &in_reset
    } else {
        &syncs
    };
    let at = if pool.is_empty() {
        run.ops.len()
    } else {
        pool[rng.below(pool.len() as u64) as usize]
    };
    let mut img = run.base.clone();
    let mut pending = Vec::new();
    for (i, op) in run.ops[..at].iter().enumerate() {
        if let Op::Sync = op {
            for &p in &pending {
                apply_op(&mut img, &run.ops[p]);
            }
            pending.clear();
        } else {
            pending.push(i);
        }
    }
    let v = VARIANTS[2 + rng.below(4) as usize];
    let pieces = choose_pieces(rng, &run.ops, &pending, v);
    (at, build(&img, &run.ops, &pieces))
}

// ------------------------------------------------------------------ checking one crash state

/// What the model allows at a crash point: the durable floor, the state before the step in
/// flight and the state after it.
struct Expect<'a> {
    floor: &'a [ZSnap],
    prev: &'a [ZSnap],
    post: &'a [ZSnap],
    inflight: Option<usize>,
    mgmt_inflight: bool,
    /// The step in flight failed with an I/O error (merged with the steps after it).
    uncertain: bool,
}

fn expectations(run: &Run, pos: usize) -> Expect<'_> {
    let k = run.steps.partition_point(|s| s.end <= pos);
    let mut inflight =
        (k < run.steps.len() && run.steps[k].start <= pos && pos < run.steps[k].end).then_some(k);
    // A step that failed with an I/O error and was never followed by a completed
    // durability point stays uncertain to the end of the log.
    if inflight.is_none()
        && k > 0
        && k == run.steps.len()
        && run.steps[k - 1].io_error
        && !run.steps[k - 1].durable
    {
        inflight = Some(k - 1);
    }
    let floor = match run.steps[..k].iter().rposition(|s| s.durable) {
        Some(d) => &run.snaps[d + 1],
        None => &run.snaps[0],
    };
    let prev = &run.snaps[inflight.unwrap_or(k)];
    let post = match inflight {
        Some(j) => &run.snaps[j + 1],
        None => prev,
    };
    Expect {
        floor,
        prev,
        post,
        inflight,
        mgmt_inflight: inflight.is_some_and(|j| run.steps[j].mgmt),
        uncertain: inflight.is_some_and(|j| run.steps[j].io_error),
    }
}

/// The outcome of one zone as the reopened image reports it.
struct Outcome<'a> {
    info: ZoneInfo,
    /// Bytes read from the zone start (None for an Offline zone).
    data: Option<&'a [u8]>,
    zde: Vec<u8>,
}

fn is_opened(s: ZoneState) -> bool {
    matches!(s, ZoneState::ImplicitlyOpened | ZoneState::ExplicitlyOpened)
}

/// Check one zone against one scenario: the model snapshot `s`, the write pointer allowed
/// in `[lo, hi]`. Returns the rule broken and a detail.
fn check_scenario(
    run: &Run,
    z: u32,
    s: &ZSnap,
    lo: u64,
    hi: u64,
    closed_at_start_ok: bool,
    o: &Outcome<'_>,
) -> Result<(), (&'static str, String)> {
    let cfg = &run.cfg;
    let start = zone_start(cfg, z);
    let cap = start + cfg.capacity;
    let i = &o.info;
    let rel = |x: u64| x - start;
    let forced = matches!(s.state, ZoneState::ReadOnly | ZoneState::Offline);
    if forced {
        if i.state != s.state {
            return Err((
                "forced-state-lost",
                format!("expected {:?}, found {:?}", s.state, i.state),
            ));
        }
    } else if matches!(i.state, ZoneState::ReadOnly | ZoneState::Offline) {
        return Err((
            "forced-state-from-nowhere",
            format!("found {:?}, expected {:?}", i.state, s.state),
        ));
    }
    if i.wp < lo {
        return Err((
            "flushed-wp-lost",
            format!(
                "wp +0x{:x} below the durable wp +0x{:x}",
                rel(i.wp),
                rel(lo)
            ),
        ));
    }
    if i.wp > hi {
        return Err((
            "wp-ahead-of-data",
            format!(
                "wp +0x{:x} above the highest issued wp +0x{:x}",
                rel(i.wp),
                rel(hi)
            ),
        ));
    }
    if !forced {
        let ok = match i.state {
            ZoneState::Empty => i.wp == start && i.attrs.is_empty(),
            ZoneState::Closed => i.wp < cap && (i.wp > start || closed_at_start_ok),
            ZoneState::Full => i.wp == cap,
            _ => false,
        };
        if !ok {
            return Err((
                if is_opened(i.state) {
                    "opened-after-open"
                } else {
                    "illegal-state"
                },
                format!(
                    "{:?} with wp +0x{:x} attrs 0x{:02x} (capacity 0x{:x})",
                    i.state,
                    rel(i.wp),
                    i.attrs.bits(),
                    cfg.capacity
                ),
            ));
        }
    }
    if i.attrs.bits() != s.attrs {
        return Err((
            "attrs-mismatch",
            format!("attrs 0x{:02x}, expected 0x{:02x}", i.attrs.bits(), s.attrs),
        ));
    }
    if i.attrs.contains(ZoneAttrs::ZDEV) && s.zded.as_deref() != Some(&o.zde[..]) {
        return Err(("zded-mismatch", "descriptor extension bytes differ".into()));
    }
    if let Some(data) = o.data {
        let model = &run.gens[s.gen];
        let n = (rel(i.wp) as usize).min(data.len());
        let below_ok = n <= model.len() && data[..n] == model[..n];
        if !below_ok {
            let at = (0..n)
                .find(|&k| model.get(k) != Some(&data[k]))
                .unwrap_or(n);
            // Whose data is it? An older generation of this zone means a completed reset
            // did not hide the old contents.
            let older = run.gen_zone.iter().enumerate().any(|(g, &gz)| {
                gz == z && g != s.gen && run.gens[g].get(at) == Some(&data[at]) && {
                    let m = &run.gens[g];
                    let e = n.min(m.len());
                    e > at && data[at..e] == m[at..e]
                }
            });
            return Err((
                if older {
                    "pre-reset-data-visible"
                } else {
                    "data-mismatch-below-wp"
                },
                format!(
                    "byte +0x{at:x} below wp +0x{:x} differs from what was written (model has {} bytes)",
                    rel(i.wp),
                    model.len()
                ),
            ));
        }
        if let Some(k) = data[n..].iter().position(|&b| b != 0) {
            return Err((
                "nonzero-above-wp",
                format!("byte +0x{:x} at/above wp +0x{:x}", n + k, rel(i.wp)),
            ));
        }
    }
    Ok(())
}

fn check_zone(run: &Run, z: u32, ex: &Expect<'_>, o: &Outcome<'_>) -> Result<(), String> {
    let zi = z as usize;
    let (f, p, q) = (&ex.floor[zi], &ex.prev[zi], &ex.post[zi]);
    let start = zone_start(&run.cfg, z);
    let closed_at_start_ok = [f, p, q].iter().any(|s| {
        s.wp == start
            && (s.attrs != 0 || matches!(s.state, ZoneState::Closed) || is_opened(s.state))
    });
    let lo_of = |s: &ZSnap| if f.gen == s.gen { f.wp } else { start };
    let mut scen: Vec<(&ZSnap, u64, u64)> = Vec::new();
    if ex.mgmt_inflight && p != q {
        scen.push((p, lo_of(p), p.wp));
        // A completed command lands exactly; the steps after an I/O error may have left
        // their last writes out.
        scen.push((q, if ex.uncertain { lo_of(q) } else { q.wp }, q.wp));
    } else {
        scen.push((q, lo_of(q), q.wp));
    }
    let mut why = Vec::new();
    for (s, lo, hi) in scen {
        match check_scenario(run, z, s, lo, hi, closed_at_start_ok, o) {
            Ok(()) => return Ok(()),
            Err((rule, d)) => why.push(format!("{rule}: {d}")),
        }
    }
    Err(format!(
        "zone {z}: {}",
        why.join(" / or, with the command in flight applied: ")
    ))
}

#[derive(Default)]
struct Verdict {
    violations: Vec<String>,
    leaks: bool,
    over_active: bool,
}

fn io_read(img: &ZonedImage, off: u64, len: usize) -> Result<Vec<u8>, Error> {
    let mut v = vec![0xA5u8; len];
    img.read(off, &mut [IoSliceMut::new(&mut v)])?;
    Ok(v)
}

/// Open, check and use the image `bytes` as found after a crash at op `pos`.
fn check_state(run: &Run, pos: usize, bytes: Vec<u8>, clean: bool, rng: &mut Rng) -> Verdict {
    let cfg = &run.cfg;
    let mut v = Verdict::default();
    let st = Arc::new(MemStorage::new(bytes));
    match check_image(&*st) {
        Err(e) => v.violations.push(format!("check-failed: {e}")),
        Ok(rep) => {
            if rep.corruptions > 0 {
                let m: Vec<&str> = rep.messages.iter().take(3).map(|s| s.as_str()).collect();
                v.violations.push(format!(
                    "check-corruption: {} corruptions: {}",
                    rep.corruptions,
                    m.join("; ")
                ));
            }
            v.leaks = rep.leaks > 0;
            // A clean shutdown leaves no corruption and no leak it did not start with (a
            // workload continuing on a recovered image inherits that crash's leaks).
            if clean && (rep.corruptions > 0 || rep.leaks > run.base_leaks) {
                v.violations.push(format!(
                    "clean-shutdown-not-clean: check exit code {} ({:?})",
                    rep.exit_code(),
                    rep.messages.iter().take(3).collect::<Vec<_>>()
                ));
            }
        }
    }
    let img = match ZonedImage::open_with(
        st.clone(),
        OpenOptions {
            cache: cfg.cache,
            ..Default::default()
        },
    ) {
        Ok(i) => i,
        Err(e) => {
            v.violations.push(format!("open-failed: {e}"));
            return v;
        }
    };
    let ex = expectations(run, pos);
    let infos = img.zones(0, cfg.zones);
    let (open, active) = img.counts();
    let closed = infos
        .iter()
        .filter(|i| i.state == ZoneState::Closed)
        .count() as u32;
    if open != 0 {
        v.violations
            .push(format!("open-zones-after-open: {open} zones counted open"));
    }
    if active != closed {
        v.violations.push(format!(
            "active-count-mismatch: {active} counted active, {closed} zones Closed"
        ));
    }
    if cfg.max_active != 0 && active > cfg.max_active {
        // Documented exception: a zone whose active resource the model had already given
        // back (it went Full, or Empty) may still be Closed on disk. Only such zones can
        // explain going over the limit.
        v.over_active = true;
        let ex = expectations(run, pos);
        let explained = infos
            .iter()
            .filter(|i| {
                let q = &ex.post[i.index as usize];
                i.state == ZoneState::Closed
                    && !matches!(q.state, ZoneState::Closed)
                    && !is_opened(q.state)
            })
            .count() as u32;
        if active - cfg.max_active > explained {
            v.violations.push(format!(
                "over-active-unexplained: {active} active zones with max_active {}, only {explained} of them released in the model",
                cfg.max_active
            ));
        }
    }
    for i in &infos {
        let z = i.index;
        let start = zone_start(cfg, z);
        let win = (run.hwm[z as usize].div_ceil(cfg.cluster) * cfg.cluster).min(cfg.zone_size);
        let data = if i.state == ZoneState::Offline || win == 0 {
            None
        } else {
            match io_read(&img, start, win as usize) {
                Ok(d) => Some(d),
                Err(e) => {
                    v.violations.push(format!("read-failed: zone {z}: {e}"));
                    continue;
                }
            }
        };
        let o = Outcome {
            info: *i,
            data: data.as_deref(),
            zde: img.zde(z),
        };
        if let Err(e) = check_zone(run, z, &ex, &o) {
            v.violations.push(e);
        }
        if clean {
            let want = &ex.post[z as usize];
            let want_state = if is_opened(want.state) {
                ZoneState::Closed
            } else {
                want.state
            };
            if i.wp != want.wp || i.state != want_state || i.attrs.bits() != want.attrs {
                v.violations.push(format!(
                    "clean-shutdown-lost-state: zone {z}: {:?} wp 0x{:x} attrs 0x{:02x}, expected {:?} wp 0x{:x} attrs 0x{:02x}",
                    i.state, i.wp, i.attrs.bits(), want_state, want.wp, want.attrs
                ));
            }
        }
    }
    if v.violations.is_empty() {
        if let Err(e) = use_recovered(&img, &st, cfg, rng) {
            v.violations.push(format!("recovered-image-unusable: {e}"));
        }
    }
    drop(img);
    v
}

/// The recovered image must keep working: write at a write pointer, read it back, finish
/// the zone, and stay free of corruption.
fn use_recovered(
    img: &ZonedImage,
    st: &MemStorage,
    cfg: &Config,
    rng: &mut Rng,
) -> Result<(), String> {
    let infos = img.zones(0, cfg.zones);
    let mut done = 0;
    for i in infos {
        if done == 2 || !matches!(i.state, ZoneState::Empty | ZoneState::Closed) {
            continue;
        }
        let room = i.start + cfg.capacity - i.wp;
        let len = room.min(4 * KIB + 512 * rng.below(8)) as usize;
        if len < 512 {
            continue;
        }
        let data = rng.bytes(len);
        match img.write(i.wp, &[IoSlice::new(&data)], false) {
            Ok(()) => {}
            Err(Error::Zone(_)) => continue,
            Err(e) => return Err(format!("write at zone {} wp: {e}", i.index)),
        }
        done += 1;
        let back = io_read(img, i.wp, len).map_err(|e| format!("read back: {e}"))?;
        if back != data {
            return Err(format!(
                "zone {}: data written after recovery reads back wrong",
                i.index
            ));
        }
        let end = i.wp + len as u64;
        let tail = (i.start + cfg.zone_size - end).min(2 * cfg.cluster) as usize;
        if done == 1 {
            img.zone_action(Some(i.index), ZoneAction::Finish)
                .map_err(|e| format!("finish zone {}: {e}", i.index))?;
            let z = io_read(img, end, tail).map_err(|e| format!("read after finish: {e}"))?;
            if let Some(k) = z.iter().position(|&b| b != 0) {
                return Err(format!(
                    "zone {}: byte 0x{:x} above the old wp is not zero after Finish",
                    i.index,
                    end + k as u64
                ));
            }
        }
    }
    img.flush().map_err(|e| format!("flush: {e}"))?;
    let rep = check_image(st).map_err(|e| format!("check after use: {e}"))?;
    if rep.corruptions > 0 {
        return Err(format!("check after use: {:?}", rep.messages.first()));
    }
    Ok(())
}

// ------------------------------------------------------------------ exploring a run

#[derive(Default)]
struct Stats {
    states: u64,
    violating: u64,
    leaky: u64,
    over_active: u64,
    rules: BTreeMap<String, u64>,
    reports: Vec<String>,
    /// Successful steps per kind, to make sure the workloads exercise everything.
    kinds: BTreeMap<String, u64>,
}

impl Stats {
    fn add_run_kinds(&mut self, run: &Run) {
        for s in &run.steps {
            if s.desc.contains("refused") || s.desc.contains("failed") {
                continue;
            }
            let kind = s
                .desc
                .split(" zone")
                .next()
                .unwrap_or("")
                .split(" all")
                .next()
                .unwrap_or("")
                .to_string();
            *self.kinds.entry(kind).or_default() += 1;
        }
    }
}

struct Budget {
    /// Percentage of sync windows explored.
    window_pct: u64,
    /// Crash states per explored window (with pending writes).
    variants: usize,
    /// Shrink failing states to a minimal set of pending pieces.
    minimize: bool,
}

fn build(durable: &[u8], ops: &[Op], pieces: &[Piece]) -> Vec<u8> {
    let mut img = durable.to_vec();
    for p in pieces {
        apply_piece(&mut img, ops, p);
    }
    img
}

fn describe_piece(ops: &[Op], p: &Piece) -> String {
    match &ops[p.op] {
        Op::Write { off, data } if p.from == 0 && p.to == data.len() => {
            format!("op {} write 0x{:x}+{}", p.op, off, data.len())
        }
        Op::Write { off, .. } => format!(
            "op {} write 0x{:x}+{} (torn piece)",
            p.op,
            off + p.from as u64,
            p.to - p.from
        ),
        Op::SetLen(l) => format!("op {} set_len {l}", p.op),
        Op::Sync => format!("op {} sync", p.op),
    }
}

#[allow(clippy::too_many_arguments)]
fn explore_window(
    run: &Run,
    durable: &[u8],
    pending: &[usize],
    pos: usize,
    end: bool,
    rng: &mut Rng,
    budget: &Budget,
    stats: &mut Stats,
) {
    let mut variants = vec![Variant::None];
    if !pending.is_empty() {
        variants.push(Variant::All);
        while variants.len() < budget.variants {
            variants.push(VARIANTS[2 + rng.below(4) as usize]);
        }
        variants.truncate(budget.variants.max(1));
    }
    for var in variants {
        let pieces = choose_pieces(rng, &run.ops, pending, var);
        let clean = end && var == Variant::None && run.steps.last().is_some_and(|s| s.durable);
        let mut crng = rng.clone();
        let v = check_state(
            run,
            pos,
            build(durable, &run.ops, &pieces),
            clean,
            &mut crng,
        );
        rng.next();
        stats.states += 1;
        stats.leaky += u64::from(v.leaks);
        stats.over_active += u64::from(v.over_active);
        if v.violations.is_empty() {
            continue;
        }
        stats.violating += 1;
        for m in &v.violations {
            let rule = m.split(':').next().unwrap_or("").to_string();
            let rule = if rule.starts_with("zone ") {
                m.split(": ").nth(1).unwrap_or("").to_string()
            } else {
                rule
            };
            *stats.rules.entry(rule).or_default() += 1;
        }
        if stats.reports.len() >= 8 {
            continue;
        }
        let mut pieces = pieces;
        let mut first = v.violations[0].clone();
        if budget.minimize {
            let mut i = 0;
            let mut tries = 0;
            while i < pieces.len() && tries < 300 {
                tries += 1;
                let mut fewer = pieces.clone();
                fewer.remove(i);
                let mut crng = rng.clone();
                let w = check_state(run, pos, build(durable, &run.ops, &fewer), clean, &mut crng);
                if w.violations.is_empty() {
                    i += 1;
                } else {
                    first = w.violations[0].clone();
                    pieces = fewer;
                }
            }
        }
        let ex = expectations(run, pos);
        let step = match ex.inflight {
            Some(j) => format!("during step {j} ({})", run.steps[j].desc),
            None => {
                let k = run.steps.partition_point(|s| s.end <= pos);
                format!("after step {} (all issued ops done)", k.saturating_sub(1))
            }
        };
        let on_disk: Vec<String> = pieces.iter().map(|p| describe_piece(&run.ops, p)).collect();
        stats.reports.push(format!(
            "seed {} config {} crash at op {pos} of {} {step}; {:?} variant, pending ops {:?}, on disk of them: [{}]: {first}",
            run.seed,
            run.cfg.name,
            run.ops.len(),
            var,
            pending.first().zip(pending.last()),
            on_disk.join(", ")
        ));
    }
}

fn explore_run(run: &Run, seed: u64, budget: &Budget, stats: &mut Stats) {
    let mut rng = Rng::new(seed ^ 0xC0FFEE);
    let mut durable = run.base.clone();
    let mut pending: Vec<usize> = Vec::new();
    for (i, op) in run.ops.iter().enumerate() {
        if let Op::Sync = op {
            if rng.chance(budget.window_pct) {
                explore_window(run, &durable, &pending, i, false, &mut rng, budget, stats);
            }
            for &p in &pending {
                apply_op(&mut durable, &run.ops[p]);
            }
            pending.clear();
        } else {
            pending.push(i);
        }
    }
    explore_window(
        run,
        &durable,
        &pending,
        run.ops.len(),
        true,
        &mut rng,
        budget,
        stats,
    );
    for e in &run.live_errors {
        stats.violating += 1;
        *stats.rules.entry("live-model-mismatch".into()).or_default() += 1;
        if stats.reports.len() < 8 {
            stats.reports.push(format!(
                "seed {} config {}: live image disagrees with the model: {e}",
                run.seed, run.cfg.name
            ));
        }
    }
}

/// Seeds of the main test; `ZNSD_CRASH_SEED=<n>` explores other workloads.
fn seed_base() -> u64 {
    std::env::var("ZNSD_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0x5EED_0000, |n| 0x5EED_0000 + (n << 20))
}

fn soak() -> bool {
    std::env::var("ZNSD_SOAK").is_ok_and(|v| v == "1")
}

// ------------------------------------------------------------------ tests

#[test]
fn crash_states_keep_the_durability_contract() {
    let t0 = Instant::now();
    let (seeds, nsteps, budget) = if soak() {
        (
            4u64,
            70usize,
            Budget {
                window_pct: 100,
                variants: 6,
                minimize: true,
            },
        )
    } else {
        (
            1u64,
            45usize,
            Budget {
                window_pct: 100,
                variants: 4,
                minimize: true,
            },
        )
    };
    let mut stats = Stats::default();
    for (ci, cfg) in CONFIGS.iter().enumerate() {
        for s in 0..seeds {
            let seed = seed_base() + (ci as u64) * 100 + s;
            let before = stats.states;
            let run = run_random(*cfg, seed, nsteps, None);
            stats.add_run_kinds(&run);
            explore_run(&run, seed, &budget, &mut stats);
            // Crash, recover, keep working, and crash again.
            let mut rng = Rng::new(seed ^ 0xAF7E);
            let (pos, img) = random_crash_image(&run, &mut rng);
            let v = check_state(&run, pos, img.clone(), false, &mut rng.clone());
            stats.states += 1;
            let chained = if v.violations.is_empty() {
                let again = run_random(*cfg, seed ^ 0xA6A1, nsteps / 2, Some(img));
                stats.add_run_kinds(&again);
                explore_run(&again, seed ^ 0xA6A1, &budget, &mut stats);
                format!(
                    ", then {} steps after a crash at op {pos}",
                    again.steps.len()
                )
            } else {
                stats.violating += 1;
                stats.reports.push(format!(
                    "seed {seed} config {}: crash image at op {pos}: {:?}",
                    cfg.name, v.violations
                ));
                String::new()
            };
            println!(
                "crash-explorer: config {} seed {seed:#x}: {} steps, {} ops{chained}, {} states",
                cfg.name,
                run.steps.len(),
                run.ops.len(),
                stats.states - before
            );
        }
    }
    // Straight to stderr: the test harness does not capture it, so the counts show in
    // every run, passing or not.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "crash-explorer: {} states explored, {} violations ({:.1}s; {} states with leaked clusters, {} with more Closed zones than max_active)",
        stats.states,
        stats.violating,
        t0.elapsed().as_secs_f64(),
        stats.leaky,
        stats.over_active
    );
    println!("crash-explorer: steps executed by kind: {:?}", stats.kinds);
    for r in &stats.reports {
        println!("VIOLATION {r}");
    }
    if !stats.rules.is_empty() {
        println!("crash-explorer: violations by rule: {:?}", stats.rules);
    }
    // The sample must exercise every kind of step, or it proves little.
    for kind in [
        "write",
        "write fua",
        "append",
        "write_zeroes",
        "flush",
        "Open",
        "Close",
        "Finish",
        "Reset",
        "set_zde",
        "force",
        "flush while the data of 'write",
        "second of writes",
    ] {
        assert!(
            stats.kinds.get(kind).copied().unwrap_or(0) > 0,
            "no successful '{kind}' step in the workloads: {:?}",
            stats.kinds
        );
    }
    let min = if soak() { 10_000 } else { 500 };
    assert!(stats.states >= min, "only {} states explored", stats.states);
    assert_eq!(
        stats.violating, 0,
        "crash states violate the durability contract"
    );
}

/// Two flushed writes to zone 0, then a third one left in the cache.
fn small_script() -> Vec<Action> {
    vec![
        Action::Write {
            zone: 0,
            len: 8 * KIB,
            fua: false,
        },
        Action::Flush,
        Action::Write {
            zone: 0,
            len: 6 * KIB,
            fua: false,
        },
        Action::Flush,
        Action::Write {
            zone: 0,
            len: 4 * KIB,
            fua: false,
        },
    ]
}

fn explore_all(run: &Run) -> Stats {
    let mut stats = Stats::default();
    let budget = Budget {
        window_pct: 100,
        variants: 6,
        minimize: false,
    };
    explore_run(run, run.seed, &budget, &mut stats);
    stats
}

#[test]
fn checker_accepts_a_correct_storage_on_the_small_script() {
    let run = run_script(CONFIGS[0], 1, &small_script(), Fault::None);
    let stats = explore_all(&run);
    assert!(stats.states > 5, "{} states", stats.states);
    assert_eq!(stats.violating, 0, "{:#?}", stats.reports);
}

#[test]
fn checker_reports_a_synced_write_that_never_reached_the_disk() {
    // The first data write (8 KiB) is acknowledged, synced, and lost: the flushed write
    // pointer then covers bytes that are not there.
    let fault = Fault::DropWrite {
        nth: 0,
        min_len: 4096,
    };
    let run = run_script(CONFIGS[0], 1, &small_script(), fault);
    let stats = explore_all(&run);
    println!("dropped write: {} states, {:?}", stats.states, stats.rules);
    assert!(stats.violating > 0, "a lost synced write went unnoticed");
    assert!(
        stats.rules.contains_key("data-mismatch-below-wp"),
        "{:?}",
        stats.rules
    );
}

#[test]
fn checker_reports_a_write_reordered_across_a_sync() {
    // Every sync leaves the first write issued before it pending: the zone word can reach
    // the disk before the data it covers.
    let run = run_script(CONFIGS[0], 1, &small_script(), Fault::DeferAcrossSync);
    let stats = explore_all(&run);
    println!(
        "reordered write: {} states, {:?}",
        stats.states, stats.rules
    );
    assert!(
        stats.violating > 0,
        "a write reordered across a sync went unnoticed"
    );
}

#[test]
fn checker_reports_a_lost_reset() {
    // The model believes a reset completed; the image never got it (all its writes are
    // dropped by a storage that loses every write after the first flush).
    let script = vec![
        Action::Write {
            zone: 1,
            len: 12 * KIB,
            fua: true,
        },
        Action::Mgmt {
            zone: Some(1),
            action: ZoneAction::Reset,
        },
    ];
    let mut run = run_script(CONFIGS[0], 2, &script, Fault::None);
    // Pretend the storage lost everything the reset and the close wrote.
    let reset_start = run.steps[run.steps.len() - 2].start;
    run.ops.truncate(reset_start);
    for s in run.steps.iter_mut() {
        s.start = s.start.min(reset_start);
        s.end = s.end.min(reset_start);
    }
    let stats = explore_all(&run);
    println!("lost reset: {} states, {:?}", stats.states, stats.rules);
    assert!(stats.violating > 0, "a lost reset went unnoticed");
}

/// The durable image up to the last sync before op `at`, plus the ops in `extra`.
fn image_before(run: &Run, at: usize, extra: &[usize]) -> Vec<u8> {
    let q = run.ops[..at]
        .iter()
        .rposition(|o| matches!(o, Op::Sync))
        .unwrap_or(0);
    let mut img = run.base.clone();
    for op in &run.ops[..q] {
        apply_op(&mut img, op);
    }
    for &i in extra {
        apply_op(&mut img, &run.ops[i]);
    }
    img
}

/// Index of the 8-byte write that stores `word` (a zone word).
fn word_write(run: &Run, word: u64) -> usize {
    run.ops
        .iter()
        .rposition(|o| match o {
            Op::Write { data, .. } => data.len() == 8 && data[..] == word.to_le_bytes(),
            _ => false,
        })
        .expect("zone word write")
}

#[test]
fn documented_exception_more_closed_zones_than_max_active_after_a_crash() {
    // max_open 2, max_active 3.
    let cfg = CONFIGS[1];
    assert_eq!((cfg.max_open, cfg.max_active), (2, 3));
    let w = |zone, len| Action::Write {
        zone,
        len,
        fua: false,
    };
    let script = vec![
        w(0, 4 * KIB),
        w(3, 4 * KIB),
        w(5, 4 * KIB), // zone 0 implicitly closed: zones 0, 3, 5 active
        Action::Flush,
        w(0, MIB - 4 * KIB), // zone 0 Full: its active resource is free again
        Action::Mgmt {
            zone: Some(6),
            action: ZoneAction::Open,
        },
    ];
    let run = run_script(cfg, 3, &script, Fault::None);
    assert!(run.live_errors.is_empty(), "{:?}", run.live_errors);
    // The Open's flush writes zone 0's Full word and zone 6's Closed-at-start word; the
    // power fails when only zone 6's has reached the disk.
    let z6 = word_write(&run, (6 * MIB) | (4 << 60));
    let z0 = word_write(&run, MIB);
    let sync = z6
        + run.ops[z6..]
            .iter()
            .position(|o| matches!(o, Op::Sync))
            .expect("sync after the words");
    assert!(z0 < sync && image_before(&run, z0, &[]) == image_before(&run, z6, &[]));
    let img = image_before(&run, z6, &[z6]);
    let v = check_state(&run, sync, img.clone(), false, &mut Rng::new(1));
    assert!(v.violations.is_empty(), "{:?}", v.violations);
    assert!(v.over_active, "expected 4 Closed zones with max_active 3");
    // Only a zone the model had released explains it: if zone 0 had stayed Closed in the
    // model, the same image is a violation.
    let mut tampered = run.clone();
    for s in tampered.snaps.iter_mut() {
        if s[0].state == ZoneState::Full {
            s[0].state = ZoneState::Closed;
        }
    }
    let w = check_state(&tampered, sync, img.clone(), false, &mut Rng::new(1));
    assert!(
        w.violations
            .iter()
            .any(|m| m.starts_with("over-active-unexplained")),
        "{:?}",
        w.violations
    );
    // The image opens, reports four Closed zones, and admits no new active zone.
    let img = ZonedImage::open_with(Arc::new(MemStorage::new(img)), OpenOptions::default())
        .expect("open");
    assert_eq!(img.counts(), (0, 4));
    let e = img
        .write(7 * MIB, &[IoSlice::new(&[1; 512])], false)
        .unwrap_err();
    assert!(
        matches!(e, Error::Zone(qcow2zoned::ZoneError::TooManyActive)),
        "{e}"
    );
    // Finishing one zone brings the count back to the limit; still no room for a new one.
    img.zone_action(Some(3), ZoneAction::Finish)
        .expect("finish");
    assert_eq!(img.counts(), (0, 3));
    let e = img
        .write(7 * MIB, &[IoSlice::new(&[1; 512])], false)
        .unwrap_err();
    assert!(
        matches!(e, Error::Zone(qcow2zoned::ZoneError::TooManyActive)),
        "{e}"
    );
}

#[test]
fn flush_with_a_write_in_flight_persists_only_completed_writes() {
    // A write whose data is still on its way when a Flush completes: the flushed write
    // pointer must not cover it, in either cache mode, including the write that fills the
    // zone (Full by reservation while its data is in flight).
    for cfg in [CONFIGS[1], CONFIGS[3]] {
        let script = vec![
            Action::Write {
                zone: 0,
                len: 8 * KIB,
                fua: false,
            },
            Action::WriteRacingFlush {
                zone: 0,
                len: 3 * cfg.cluster + 1024,
            },
            Action::WriteRacingFlush {
                zone: 1,
                len: cfg.capacity,
            },
            Action::Write {
                zone: 2,
                len: 4 * KIB,
                fua: false,
            },
            Action::WriteRacingFlush {
                zone: 2,
                len: cfg.capacity - 4 * KIB,
            },
        ];
        let run = run_script(cfg, 4, &script, Fault::None);
        assert!(run.live_errors.is_empty(), "{:?}", run.live_errors);
        let racing: Vec<&StepRec> = run
            .steps
            .iter()
            .filter(|s| s.desc.starts_with("flush while"))
            .collect();
        assert_eq!(racing.len(), 3);
        assert!(
            racing.iter().all(|s| s.durable),
            "a write was not in flight during its flush: {racing:?}"
        );
        let stats = explore_all(&run);
        assert!(stats.states > 20, "{} states", stats.states);
        assert_eq!(stats.violating, 0, "{}: {:#?}", cfg.name, stats.reports);
    }
}

/// Regression: a Set Zone Descriptor Extension whose extension write fails must leave the
/// zone as it was. `ZonedImage::set_zde` used to move the zone to Closed with ZDEV in memory
/// (`ZoneSet::set_zde`) before writing the extension bytes and return the write error
/// without undoing it, so the live device reported a Closed zone with ZDEV and an extension
/// that was never stored (holding an active resource), although the command failed.
#[test]
fn set_zde_whose_write_fails_leaves_the_zone_unchanged() {
    let cfg = CONFIGS[1];
    let (e, _) = Exec::new(cfg, 5, Fault::None, None);
    let before = e.zinfo(4);
    let counts = e.img.counts();
    assert_eq!(before.state, ZoneState::Empty);
    e.rec.fail_next_write_of(cfg.zdes as usize);
    let r = e.img.set_zde(4, &vec![0x5A; cfg.zdes as usize]);
    assert!(matches!(r, Err(Error::Io { .. })), "{r:?}");
    let after = e.zinfo(4);
    assert_eq!(
        (after.state, after.attrs, e.img.counts()),
        (before.state, before.attrs, counts),
        "a failed Set ZDE changed the zone"
    );
    assert_eq!(e.img.zde(4), vec![0; cfg.zdes as usize]);
}

/// Regression, durable side of the bug above: after a Reset cleared a zone's extension, a
/// Set ZDE whose write failed, followed by a write to the zone and a Flush, persisted the
/// zone word with ZDEV set; after a restart the zone showed the extension from *before* the
/// Reset (the failed command never stored new bytes), although the Reset had completed.
#[test]
fn failed_set_zde_never_resurrects_a_reset_extension() {
    let cfg = CONFIGS[1];
    let (e, _) = Exec::new(cfg, 5, Fault::None, None);
    let zdes = cfg.zdes as usize;
    e.img.set_zde(4, &vec![0x11; zdes]).expect("set_zde");
    e.img
        .zone_action(Some(4), ZoneAction::Reset)
        .expect("reset");
    e.rec.fail_next_write_of(zdes);
    assert!(e.img.set_zde(4, &vec![0x5A; zdes]).is_err());
    // Whatever the live zone looks like now, writing to it and flushing is legitimate.
    let z = e.zinfo(4);
    if matches!(z.state, ZoneState::Empty | ZoneState::Closed) {
        e.img
            .write(z.wp, &[IoSlice::new(&[7u8; 4096])], false)
            .expect("write");
    }
    e.img.flush().expect("flush");
    let bytes = e.rec.lock().cur.clone();
    let img = ZonedImage::open_with(Arc::new(MemStorage::new(bytes)), OpenOptions::default())
        .expect("open");
    let z = img.zones(4, 1)[0];
    assert!(
        !z.attrs.contains(ZoneAttrs::ZDEV),
        "zone 4 came back {:?} with ZDEV and extension {:02x?}...",
        z.state,
        &img.zde(4)[..4]
    );
}

/// Regression: when the flush inside a Reset fails (the zone word cannot be written), the
/// live image already shows the zone Empty while the disk still has the old write pointer
/// and the old clusters mapped. Writes used to be accepted after the failed flush: the next
/// write at the zone start went in place into the old, durable cluster, and after a power
/// loss the zone came back with its old write pointer and its first bytes replaced (flushed
/// data lost; neither the old contents nor a reset). A failed metadata write-back must make
/// the image refuse changes until it is reopened.
#[test]
fn writes_after_a_failed_reset_never_overwrite_flushed_data() {
    let cfg = CONFIGS[1];
    let (e, _) = Exec::new(cfg, 6, Fault::None, None);
    let start = cfg.zone_size;
    let old: Vec<u8> = (0..64 * KIB).map(|i| (i % 251) as u8).collect();
    e.img
        .write(start, &[IoSlice::new(&old)], true)
        .expect("fua write");
    // The Reset's flush fails on the zone word (the only 8-byte write it issues).
    e.rec.fail_next_write_of(8);
    assert!(e.img.zone_action(Some(1), ZoneAction::Reset).is_err());
    let r = e.img.write(start, &[IoSlice::new(&[0xEE; 4096])], false);
    // Power loss with everything issued on disk.
    let bytes = e.rec.lock().cur.clone();
    let img = ZonedImage::open_with(Arc::new(MemStorage::new(bytes)), OpenOptions::default())
        .expect("open");
    let z = img.zones(1, 1)[0];
    let got = io_read(&img, start, old.len()).expect("read");
    assert!(
        z.wp == start || (z.wp == start + old.len() as u64 && got == old),
        "write after the failed reset returned {r:?}; zone 1 came back {:?} wp +0x{:x} with \
         its first bytes {:02x?} instead of {:02x?}",
        z.state,
        z.wp - start,
        &got[..4],
        &old[..4]
    );
}

#[test]
fn recovery_from_a_crash_inside_a_reset_never_exposes_old_data() {
    // A Reset makes the zone word durable first and unmaps the old clusters afterwards. A
    // crash in between leaves an Empty zone with its old clusters still mapped; everything
    // done to that zone afterwards (in-place writes, write zeroes, finish, reset, more
    // crashes) must never show the old bytes.
    for cfg in [CONFIGS[1], CONFIGS[0], CONFIGS[6]] {
        let w = |len, fua| Action::Write { zone: 1, len, fua };
        let script = vec![
            w(200 * KIB + 512, true),
            Action::Mgmt {
                zone: Some(1),
                action: ZoneAction::Reset,
            },
        ];
        let run = run_script(cfg, 7, &script, Fault::None);
        let word = word_write(&run, cfg.zone_size);
        let sync = word
            + run.ops[word..]
                .iter()
                .position(|o| matches!(o, Op::Sync))
                .expect("sync after the word");
        let img = image_before(&run, sync + 1, &[]);
        // The scenario is the intended one: zone 1 Empty, its old bytes still in the file.
        let old = &run.gens[run.snaps[1][1].gen];
        let probe = &old[100 * KIB as usize..100 * KIB as usize + 64];
        assert!(
            img.windows(64).any(|w| w == probe),
            "{}: old data gone",
            cfg.name
        );
        let reopened = ZonedImage::open_with(
            Arc::new(MemStorage::new(img.clone())),
            OpenOptions::default(),
        )
        .expect("open");
        assert_eq!(reopened.zones(1, 1)[0].state, ZoneState::Empty);
        drop(reopened);
        let z = |len, fua| Action::Zeroes { zone: 1, len, fua };
        let more = vec![
            w(4 * KIB, false),
            Action::Flush,
            z(cfg.cluster, false),
            w(10 * KIB, true),
            Action::Mgmt {
                zone: Some(1),
                action: ZoneAction::Finish,
            },
            Action::Mgmt {
                zone: Some(1),
                action: ZoneAction::Reset,
            },
            w(70 * KIB, false),
            Action::Flush,
            w(3 * KIB, false),
        ];
        let again = run_script_from(cfg, 8, &more, Fault::None, Some(img));
        assert!(again.live_errors.is_empty(), "{:?}", again.live_errors);
        let stats = explore_all(&again);
        assert!(stats.states > 20, "{} states", stats.states);
        assert_eq!(stats.violating, 0, "{}: {:#?}", cfg.name, stats.reports);
    }
}

/// Crash states after a host write error somewhere in a random workload: what was durable
/// before the error must survive, and a failed command may have taken effect or not, but
/// nothing else. (Before the fixes pinned by the regression tests above, this found writes
/// accepted after a failed write-back overwriting flushed data.)
#[test]
fn io_error_then_crash_states_keep_the_contract() {
    let t0 = Instant::now();
    let mut stats = Stats::default();
    let budget = Budget {
        window_pct: 100,
        variants: 3,
        minimize: false,
    };
    let mut failed_steps = 0;
    let runs = if soak() { 6 } else { 2 };
    for (ci, cfg) in CONFIGS.iter().enumerate() {
        for k in 0..runs {
            let seed = seed_base() + 0xE000 + (ci as u64) * 100 + k;
            let mut rng = Rng::new(seed);
            let at = 5 + rng.below(20) as usize;
            let after = rng.below(8) as usize;
            let run = run_random_with_io_error(*cfg, seed, 35, at, after);
            failed_steps += run.steps.iter().filter(|s| s.io_error).count();
            explore_run(&run, seed, &budget, &mut stats);
        }
    }
    println!(
        "crash-explorer (I/O errors): {} states explored, {} violations ({:.1}s; {failed_steps} runs with a failed step)",
        stats.states,
        stats.violating,
        t0.elapsed().as_secs_f64()
    );
    for r in &stats.reports {
        println!("VIOLATION {r}");
    }
    if !stats.rules.is_empty() {
        println!(
            "crash-explorer (I/O errors): violations by rule: {:?}",
            stats.rules
        );
    }
    assert!(failed_steps > 0, "no injected error hit a step");
    assert_eq!(
        stats.violating, 0,
        "crash states after an I/O error violate the contract"
    );
}

/// Each rule of the checker names itself when the model and the image disagree on it: the
/// model is tampered with, the image is not.
#[test]
fn checker_names_each_broken_rule() {
    let cfg = CONFIGS[0];
    let script = vec![
        Action::Write {
            zone: 0,
            len: 8 * KIB,
            fua: true,
        },
        Action::SetZde { zone: 3 },
        Action::Mgmt {
            zone: Some(4),
            action: ZoneAction::Open,
        },
        Action::Force {
            zone: 5,
            state: ZoneState::ReadOnly,
        },
        Action::Write {
            zone: 1,
            len: 4 * KIB,
            fua: false,
        },
        Action::Flush,
    ];
    let run = run_script(cfg, 9, &script, Fault::None);
    assert!(run.live_errors.is_empty(), "{:?}", run.live_errors);
    let mut img = run.base.clone();
    for op in &run.ops {
        apply_op(&mut img, op);
    }
    let verdict = |r: &Run| check_state(r, r.ops.len(), img.clone(), true, &mut Rng::new(1));
    assert!(verdict(&run).violations.is_empty());
    let last = run.snaps.len() - 1;
    type Tamper = fn(&mut Run, usize);
    let cases: [(&str, Tamper); 9] = [
        ("flushed-wp-lost", |r, l| r.snaps[l][0].wp += 512),
        ("wp-ahead-of-data", |r, l| r.snaps[l][1].wp -= 512),
        ("data-mismatch-below-wp", |r, _| {
            let g = r.snaps[1][0].gen;
            r.gens[g][100] ^= 1;
        }),
        ("attrs-mismatch", |r, l| r.snaps[l][1].attrs = 0x02),
        ("zded-mismatch", |r, l| {
            if let Some(z) = r.snaps[l][3].zded.as_mut() {
                z[0] ^= 1;
            }
        }),
        ("forced-state-lost", |r, l| {
            r.snaps[l][6].state = ZoneState::Offline;
        }),
        ("forced-state-from-nowhere", |r, l| {
            r.snaps[l][5].state = ZoneState::Empty;
        }),
        ("illegal-state", |r, _| {
            // The model says zone 4 (opened, so Closed at its start) was never active.
            for s in r.snaps.iter_mut() {
                s[4].state = ZoneState::Empty;
            }
        }),
        ("clean-shutdown-lost-state", |r, l| {
            r.snaps[l][1].attrs = 0x02
        }),
    ];
    for (rule, tamper) in cases {
        let mut r = run.clone();
        tamper(&mut r, last);
        let v = verdict(&r);
        assert!(
            v.violations.iter().any(|m| m.contains(rule)),
            "tampering for {rule}: {:?}",
            v.violations
        );
    }
}

/// An image as a crash can leave it after every zone was filled: the flush had made the
/// refcounts durable but not the mappings or zone words, so every data cluster leaked and
/// refilling the zones needs more clusters than the refcount table covers.
fn leaky_image(cfg: Config, rng: &mut Rng) -> Vec<u8> {
    let (e, base) = Exec::new(cfg, rng.next(), Fault::None, None);
    for z in 0..cfg.zones {
        let data = rng.bytes(cfg.capacity as usize);
        e.img
            .write(zone_start(&cfg, z), &[IoSlice::new(&data)], false)
            .expect("fill");
    }
    let before = e.rec.op_count();
    e.img.flush().expect("flush");
    let ops = e.rec.take_ops();
    // The second sync of the flush: refcount blocks, then the refcount table entries that
    // reach them, are durable; L2 tables are not.
    let sync = (before..ops.len())
        .filter(|&i| matches!(ops[i], Op::Sync))
        .nth(1)
        .expect("two syncs");
    let mut img = base;
    for op in &ops[..sync] {
        apply_op(&mut img, op);
    }
    let rep = check_image(&MemStorage::new(img.clone())).expect("check");
    assert_eq!(rep.corruptions, 0, "{:?}", rep.messages.first());
    assert!(rep.leaks > 16_000, "only {} leaked clusters", rep.leaks);
    img
}

#[test]
fn refcount_table_growth_is_crash_safe() {
    // Refill a leaky image: the refcount table grows (new blocks, new table, header switch,
    // old table freed) in the middle of the writes. Every crash state on the way must keep
    // the contract.
    let cfg = CONFIGS[6];
    let mut rng = Rng::new(11);
    let img = leaky_image(cfg, &mut rng);
    let mut script: Vec<Action> = (0..cfg.zones)
        .map(|zone| Action::Write {
            zone,
            len: cfg.capacity,
            fua: zone % 3 == 2,
        })
        .collect();
    script.push(Action::Flush);
    let run = run_script_from(cfg, 13, &script, Fault::None, Some(img));
    assert!(run.live_errors.is_empty(), "{:?}", run.live_errors);
    assert!(
        run.ops
            .iter()
            .any(|o| matches!(o, Op::Write { off: 0, .. })),
        "the refcount table did not grow (no header rewrite)"
    );
    let t0 = Instant::now();
    let mut stats = Stats::default();
    let budget = Budget {
        window_pct: 100,
        variants: if soak() { 6 } else { 3 },
        minimize: false,
    };
    explore_run(&run, 13, &budget, &mut stats);
    println!(
        "refcount table growth: {} states, {} violations ({:.1}s)",
        stats.states,
        stats.violating,
        t0.elapsed().as_secs_f64()
    );
    assert!(stats.states > 20, "{} states", stats.states);
    assert_eq!(stats.violating, 0, "{:#?}", stats.reports);
}

/// A failed header write while the refcount table grows must not leave the image pointing
/// at a table that lacks the new refcount blocks. Scenario: a crash leaks a whole image's
/// worth of clusters (refcounts durable, mappings not), so refilling the zones needs more
/// clusters than the refcount table covers; the table grows, and the header write that
/// switches to the new table fails. Whatever the library does then (refuse further
/// changes, or carry on), the image as found after a restart must be free of corruption and
/// hold every flushed byte.
///
/// Regression test for a library bug, now fixed: `Meta::grow_refcount_table` (meta.rs) resized
/// `rt`, installed
/// the new blocks, cleared `rb_dirty`, then switched `rt_offset` and the header fields in
/// memory before the header write and its sync succeed, and an error on the way returns
/// without setting `Meta::failed`. Here the header write fails: the write that needed the
/// cluster fails, but the next flush succeeds and writes new refcounts only into the new
/// table, which the header on disk does not point to. After a restart 28,000+ clusters
/// referenced by L2 tables have refcount 0 (`check_image` corruption; the allocator would
/// hand them out again). Fix: set `self.failed = true` on any error inside
/// `grow_refcount_table` (the image then refuses changes until reopened), or keep the old
/// `rt`/`rt_offset`/header in memory until the header sync has succeeded.
#[test]
fn failed_refcount_table_growth_never_corrupts_the_image() {
    let cfg = CONFIGS[6];
    assert_eq!(cfg.cluster, 512);
    let fill = |e: &mut Exec, data_rng: &mut Rng| -> Vec<(u32, Result<(), String>)> {
        let mut out = Vec::new();
        for z in 0..cfg.zones {
            let i = e.zinfo(z);
            let len = (i.start + cfg.capacity - i.wp) as usize;
            if len == 0 {
                continue;
            }
            let data = data_rng.bytes(len);
            let r = e.img.write(i.wp, &[IoSlice::new(&data)], false);
            if r.is_ok() {
                e.push_data(z, &data);
            }
            out.push((z, r.map_err(|e| e.to_string())));
        }
        out
    };
    let mut rng = Rng::new(11);
    let img = leaky_image(cfg, &mut rng);
    // Phase 2: refill; the refcount table must grow, and its header write fails once.
    let (mut e, _) = Exec::new(cfg, 12, Fault::None, Some(img));
    e.io_errors_expected = true;
    e.rec.fail_next_write_at(0);
    let results = fill(&mut e, &mut rng);
    let failed: Vec<u32> = results
        .iter()
        .filter(|(_, r)| r.is_err())
        .map(|(z, _)| *z)
        .collect();
    assert!(
        !failed.is_empty(),
        "no write failed: the refcount table did not grow ({results:?})"
    );
    let flushed = e.img.flush().is_ok();
    // Restart with everything issued on disk.
    let disk = e.rec.lock().cur.clone();
    let rep = check_image(&MemStorage::new(disk.clone())).expect("check");
    assert_eq!(
        rep.corruptions,
        0,
        "after a failed refcount table growth (writes to zones {failed:?} failed, later flush {}): {:?}",
        if flushed { "succeeded" } else { "refused" },
        rep.messages.iter().take(3).collect::<Vec<_>>()
    );
    if flushed {
        let img = ZonedImage::open_with(Arc::new(MemStorage::new(disk)), OpenOptions::default())
            .expect("open");
        for z in 0..cfg.zones {
            let i = img.zones(z, 1)[0];
            let want = &e.gens[e.cur_gen[z as usize]];
            assert_eq!(i.wp - i.start, want.len() as u64, "zone {z}");
            let got = io_read(&img, i.start, want.len()).expect("read");
            assert!(&got == want, "zone {z}: flushed data differs after restart");
        }
    }
}

#[test]
fn out_of_order_completions_never_expose_a_hole() {
    // Two writes to one zone; the second completes and a Flush completes while the first
    // is still in flight. The durable write pointer must stay before the first write (the
    // second's data is on disk but must not be covered), then move past both only at the
    // next durability point.
    for cfg in [CONFIGS[0], CONFIGS[1], CONFIGS[6]] {
        let script = vec![
            Action::Write {
                zone: 2,
                len: 3 * KIB,
                fua: false,
            },
            Action::OutOfOrderPair {
                zone: 2,
                first: 2 * cfg.cluster + 1024,
                second: 5 * KIB,
            },
            Action::OutOfOrderPair {
                zone: 3,
                first: 4 * KIB,
                second: cfg.capacity - 4 * KIB,
            },
            Action::Flush,
        ];
        let run = run_script(cfg, 14, &script, Fault::None);
        assert!(run.live_errors.is_empty(), "{:?}", run.live_errors);
        let mids: Vec<&StepRec> = run
            .steps
            .iter()
            .filter(|s| s.desc.starts_with("second of"))
            .collect();
        assert_eq!(mids.len(), 2);
        assert!(
            mids.iter().all(|s| s.durable),
            "the pair did not complete out of order: {mids:?}"
        );
        let stats = explore_all(&run);
        assert!(stats.states > 20, "{} states", stats.states);
        assert_eq!(stats.violating, 0, "{}: {:#?}", cfg.name, stats.reports);
    }
}

///
/// Regression test for a library bug, now fixed: `ZonedImage::write` / `append` /
/// `write_zeroes` (image.rs) called `flush_covering(done)` as soon as their own data I/O had
/// finished. The flush
/// persists the zone's *committed* write pointer, which stops before the earlier write
/// still in flight, so the FUA write returns success while a power loss would leave the
/// zone's write pointer before it (its data unreadable: reads above the write pointer
/// return zeros). The same holds in write-through mode, and for Zone Append with FUA from
/// two queues. Fix: before the flush, wait (on the image's condition variable) until the
/// zone's committed write pointer covers the ticket's end, or the reservation was dropped
/// by Finish/Reset/forced state, then flush covering the completion count at that moment
/// (not the write's own number, since the write that closed the gap completed later).
#[test]
fn fua_write_behind_a_write_in_flight_is_durable_when_it_completes() {
    // A FUA write completes only once it is durable, data and write pointer. When an
    // earlier write to the same zone is still in flight, the write pointer cannot cover
    // the FUA write yet, so the FUA write must not complete before the earlier one.
    for cfg in [CONFIGS[3], CONFIGS[0], CONFIGS[1]] {
        let script = vec![
            Action::Write {
                zone: 2,
                len: 3 * KIB,
                fua: false,
            },
            Action::FuaBehindInFlight {
                zone: 2,
                first: 8 * KIB,
                second: 5 * KIB,
            },
        ];
        let run = run_script(cfg, 15, &script, Fault::None);
        assert!(run.live_errors.is_empty(), "{:?}", run.live_errors);
        let early = run
            .steps
            .iter()
            .any(|s| s.desc.contains("acknowledged while"));
        let stats = explore_all(&run);
        assert_eq!(
            stats.violating,
            0,
            "{}: FUA write {} the write in flight before it: {:#?}",
            cfg.name,
            if early {
                "completed before"
            } else {
                "waited for"
            },
            stats.reports
        );
    }
}
