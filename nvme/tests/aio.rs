//! Data transfers on I/O threads (`ControllerConfig::aio_threads`): commands are admitted in
//! submission order and complete later, with the statuses and bytes of the inline path;
//! deleting a queue and resetting the controller wait for the transfers in flight.

mod common;

use common::*;
use nvme::test_utils::{Command, Completion, Driver};
use nvme::{ControllerConfig, GuestMemory, Status};
use qcow2zoned::{MemStorage, Storage};
use std::io::{self, IoSlice, IoSliceMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

fn aio(threads: usize) -> ControllerConfig {
    ControllerConfig {
        aio_threads: threads,
        ..Default::default()
    }
}

/// Run `cmd` (with a `len`-byte buffer holding `data`) on SQ 1 with a Flush queued behind
/// it, so that it is not alone on its queue and goes to the I/O threads (a command alone on
/// its queue runs on the poller). Returns its completion and the buffer afterwards.
fn queued(d: &mut Driver, cmd: Command, len: u64, data: Option<&[u8]>) -> (Completion, Vec<u8>) {
    let buf = d.alloc(len.max(4096));
    if let Some(b) = data {
        d.host.mem.write(buf, b).unwrap();
    }
    let (p1, p2) = d.prps(buf, len.max(4096));
    let cid = d.submit(1, cmd.dptr(p1, p2));
    let flush = d.submit(1, Command::new(0x00).nsid(1));
    let mut got = None;
    for _ in 0..2 {
        let c = d.wait_reap(1).expect("completion");
        if c.cid == cid {
            got = Some(c);
        } else {
            assert_eq!((c.cid, c.status), (flush, Status::SUCCESS));
        }
    }
    let mut out = vec![0u8; len as usize];
    d.host.mem.read(buf, &mut out).unwrap();
    (got.expect("completion of the command"), out)
}

fn write_q(d: &mut Driver, slba: u64, data: &[u8]) -> Status {
    let nlb = (data.len() / 4096) as u32;
    let cmd = Command::rw(0x01, slba, nlb, false);
    queued(d, cmd, data.len() as u64, Some(data)).0.status
}

#[test]
fn statuses_and_bytes_match_the_inline_path() {
    let mut r = rig_with(Geo::default(), aio(3));
    let d = &mut r.d;
    let z1 = 256; // 1 MiB zones of 4 KiB blocks
    let inline_before = d.host.mem.with_slices_calls();
    let data = pattern(8 * 4096, 1);
    assert_eq!(write_q(d, 0, &data), Status::SUCCESS);
    let (c, back) = queued(d, Command::rw(0x02, 0, 8, false), 8 * 4096, None);
    assert_eq!(c.status, Status::SUCCESS);
    assert!(back == data);
    // Refused at admission, on the poller: exact zone statuses.
    assert_eq!(write_q(d, 3, &pattern(4096, 2)), Status::ZONE_INVALID_WRITE);
    assert_eq!(write_q(d, 16 * 256, &pattern(4096, 2)), Status::LBA_RANGE);
    // Zone Append reports the LBA it wrote.
    let append = |n| Command::rw(0x7d, z1, n, false);
    let (c, _) = queued(d, append(2), 2 * 4096, Some(&pattern(2 * 4096, 3)));
    assert_eq!(c.status, Status::SUCCESS);
    assert_eq!(c.result64(), z1);
    let (c, _) = queued(d, append(1), 4096, Some(&pattern(4096, 4)));
    assert_eq!(c.result64(), z1 + 2);
    let (_, back) = queued(d, Command::rw(0x02, z1 + 2, 1, false), 4096, None);
    assert!(back == pattern(4096, 4));
    // A buffer the guest never mapped: Data Transfer Error, and the zone is not advanced.
    let buf = d.alloc(4096);
    d.host.mem.unmap(buf, 4096);
    let cid = d.submit(1, Command::rw(0x01, 8, 1, false).dptr(buf, 0));
    d.submit(1, Command::new(0x00).nsid(1));
    let c: Vec<_> = (0..2).map(|_| d.wait_reap(1).unwrap()).collect();
    let bad = c.iter().find(|c| c.cid == cid).unwrap();
    assert_eq!(bad.status, Status::DATA_TRANSFER);
    d.host.mem.remap_all();
    assert_eq!(write_q(d, 8, &pattern(4096, 5)), Status::SUCCESS);
    // Finished zone: Zone Is Full.
    let c = d.run(1, Command::zone_send(0, 0x02, false));
    assert_eq!(c.status, Status::SUCCESS);
    assert_eq!(write_q(d, 9, &pattern(4096, 6)), Status::ZONE_FULL);
    assert_eq!(
        d.host.mem.with_slices_calls(),
        inline_before,
        "every transfer above went through pinned buffers on the I/O threads"
    );
    // Alone on its queue a command runs on the poller, with the same result.
    assert_eq!(
        d.write(1, z1 + 3, &pattern(4096, 7), false).status,
        Status::SUCCESS
    );
    assert!(d.host.mem.with_slices_calls() > inline_before);
    let (_, back) = d.read(1, z1 + 3, 1);
    assert!(back == pattern(4096, 7));
}

#[test]
fn a_queue_of_writes_to_one_zone_is_admitted_in_submission_order() {
    let mut r = rig_with(Geo::default(), aio(4));
    let d = &mut r.d;
    let mut want = Vec::new();
    let mut cids = Vec::new();
    for k in 0..32u64 {
        let data = pattern(4096, k as u8);
        let buf = d.alloc(4096);
        d.host.mem.write(buf, &data).unwrap();
        cids.push(d.submit(1, Command::rw(0x01, 512 + k, 1, false).dptr(buf, 0)));
        want.extend_from_slice(&data);
    }
    let mut got = Vec::new();
    for _ in 0..32 {
        let c = d.wait_reap(1).expect("completion");
        assert_eq!(c.status, Status::SUCCESS, "cid {}", c.cid);
        got.push(c.cid);
    }
    got.sort_unstable();
    cids.sort_unstable();
    assert_eq!(got, cids);
    let (c, back) = d.read(1, 512, 32);
    assert_eq!(c.status, Status::SUCCESS);
    assert!(back == want);
}

/// Memory storage whose data writes can be held at a gate.
#[derive(Default)]
struct Gate {
    inner: MemStorage,
    closed: Mutex<bool>,
    cv: Condvar,
    /// Gathered writes (the data path) that went through.
    passed: AtomicU64,
}

impl Gate {
    fn set(&self, closed: bool) {
        *self.closed.lock().unwrap() = closed;
        self.cv.notify_all();
    }
    fn pass(&self) {
        let mut c = self.closed.lock().unwrap();
        while *c {
            c = self.cv.wait(c).unwrap();
        }
    }
}

impl Storage for Gate {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_at(buf, offset)
    }
    fn readv_at(&self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> io::Result<usize> {
        self.inner.readv_at(bufs, offset)
    }
    fn writev_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()> {
        self.pass();
        let r = self.inner.writev_at(bufs, offset);
        self.passed.fetch_add(1, Ordering::AcqRel);
        r
    }
    fn sync_data(&self) -> io::Result<()> {
        self.inner.sync_data()
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
}

fn gated() -> (Arc<Gate>, Driver) {
    let gate = Arc::new(Gate::default());
    let d = driver_on(&gate, aio(2));
    (gate, d)
}

/// Submit `n` one-block writes at LBAs 0.. of SQ 1 and let the poller hand them over.
fn queue_writes(d: &mut Driver, n: u64) -> Vec<u16> {
    let cids = (0..n)
        .map(|k| {
            let buf = d.alloc(4096);
            d.host.mem.write(buf, &pattern(4096, k as u8)).unwrap();
            d.submit(1, Command::rw(0x01, k, 1, false).dptr(buf, 0))
        })
        .collect();
    d.process();
    cids
}

/// Open the gate from another thread a little later (while the test thread waits inside
/// the controller).
fn open_later(gate: &Arc<Gate>) -> std::thread::JoinHandle<()> {
    let g = Arc::clone(gate);
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        g.set(false);
    })
}

#[test]
fn deleting_a_queue_waits_for_its_transfers_and_posts_their_completions() {
    let (gate, mut d) = gated();
    gate.set(true);
    let cids = queue_writes(&mut d, 3);
    assert!(d.reap(1).is_none(), "writes are held at the storage");
    let opener = open_later(&gate);
    let c = d.admin(Command::delete_sq(1));
    opener.join().unwrap();
    assert_eq!(c.status, Status::SUCCESS);
    assert!(gate.passed.load(Ordering::Acquire) >= 3);
    // The CQ survives the SQ: the three completions were posted before the deletion.
    let mut got: Vec<u16> = (0..3)
        .map(|_| {
            let c = d.reap(1).expect("completion posted at deletion");
            assert_eq!(c.status, Status::SUCCESS);
            c.cid
        })
        .collect();
    got.sort_unstable();
    assert_eq!(got, cids);
    assert!(d.reap(1).is_none());
    assert_eq!(
        d.admin(Command::delete_cq(1)).status,
        Status::SUCCESS,
        "no reservation left behind"
    );
}

#[test]
fn a_controller_reset_returns_only_after_transfers_in_flight_ended() {
    let (gate, mut d) = gated();
    gate.set(true);
    queue_writes(&mut d, 2);
    let before = gate.passed.load(Ordering::Acquire);
    let opener = open_later(&gate);
    d.disable();
    assert!(
        gate.passed.load(Ordering::Acquire) >= before + 2,
        "CC.EN=0 completed while writes were still held"
    );
    opener.join().unwrap();
    // Written data stays: after re-enabling, it reads back.
    d.init_linux();
    let (c, back) = d.read(1, 0, 2);
    assert_eq!(c.status, Status::SUCCESS);
    let mut want = pattern(4096, 0);
    want.extend_from_slice(&pattern(4096, 1));
    assert!(back == want);
}
