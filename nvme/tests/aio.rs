//! Data transfers on I/O threads (`ControllerConfig::aio_threads`): commands are admitted in
//! submission order and complete later, with the statuses and bytes of the inline path;
//! deleting a queue and resetting the controller wait for the transfers in flight.

mod common;

use common::*;
use nvme::test_utils::{Command, Driver};
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

#[test]
fn statuses_and_bytes_match_the_inline_path() {
    let mut r = rig_with(Geo::default(), aio(3));
    let d = &mut r.d;
    let z1 = 256; // 1 MiB zones of 4 KiB blocks
    let data = pattern(8 * 4096, 1);
    assert_eq!(d.write(1, 0, &data, false).status, Status::SUCCESS);
    let (c, back) = d.read(1, 0, 8);
    assert_eq!(c.status, Status::SUCCESS);
    assert!(back == data);
    // Refused at admission, on the poller: exact zone statuses.
    assert_eq!(
        d.write(1, 3, &pattern(4096, 2), false).status,
        Status::ZONE_INVALID_WRITE
    );
    assert_eq!(
        d.write(1, 16 * 256, &pattern(4096, 2), false).status,
        Status::LBA_RANGE
    );
    // Zone Append reports the LBA it wrote.
    let (c, _) = d.run_with_buffer(
        1,
        Command::rw(0x7d, z1, 2, false),
        2 * 4096,
        Some(&pattern(2 * 4096, 3)),
    );
    assert_eq!(c.status, Status::SUCCESS);
    assert_eq!(c.result64(), z1);
    let (c, _) = d.run_with_buffer(
        1,
        Command::rw(0x7d, z1, 1, true),
        4096,
        Some(&pattern(4096, 4)),
    );
    assert_eq!(c.result64(), z1 + 2);
    let (_, back) = d.read(1, z1 + 2, 1);
    assert!(back == pattern(4096, 4));
    // A buffer the guest never mapped: Data Transfer Error, and the zone is not advanced.
    let buf = d.alloc(4096);
    d.host.mem.unmap(buf, 4096);
    let (p1, p2) = d.prps(buf, 4096);
    let c = d.run(1, Command::rw(0x01, 8, 1, false).dptr(p1, p2));
    assert_eq!(c.status, Status::DATA_TRANSFER);
    d.host.mem.remap_all();
    assert_eq!(
        d.write(1, 8, &pattern(4096, 5), false).status,
        Status::SUCCESS
    );
    // Finished zone: Zone Is Full; Flush completes.
    let c = d.run(1, Command::zone_send(0, 0x02, false));
    assert_eq!(c.status, Status::SUCCESS);
    assert_eq!(
        d.write(1, 9, &pattern(4096, 6), false).status,
        Status::ZONE_FULL
    );
    assert_eq!(d.run(1, Command::new(0x00).nsid(1)).status, Status::SUCCESS);
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
