//! FUA, Flush and the Volatile Write Cache feature reach the storage as syncs; host I/O
//! failures complete with Internal Error (retryable) and leave the controller running.

mod common;

use common::*;
use nvme::test_utils::{Command, Driver};
use nvme::{ControllerConfig, Status};
use qcow2zoned::{MemStorage, Storage};
use std::io::{self, IoSlice, IoSliceMut};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Memory storage that counts syncs and can be told to fail.
#[derive(Default)]
struct Probe {
    inner: MemStorage,
    syncs: AtomicU64,
    fail_writes: AtomicBool,
    fail_reads: AtomicBool,
}

fn broken() -> io::Error {
    io::Error::other("injected failure")
}

impl Storage for Probe {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if self.fail_reads.load(Ordering::Acquire) {
            return Err(broken());
        }
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.fail_writes.load(Ordering::Acquire) {
            return Err(broken());
        }
        self.inner.write_at(buf, offset)
    }
    fn readv_at(&self, bufs: &mut [IoSliceMut<'_>], offset: u64) -> io::Result<usize> {
        if self.fail_reads.load(Ordering::Acquire) {
            return Err(broken());
        }
        self.inner.readv_at(bufs, offset)
    }
    fn writev_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()> {
        if self.fail_writes.load(Ordering::Acquire) {
            return Err(broken());
        }
        self.inner.writev_at(bufs, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.syncs.fetch_add(1, Ordering::AcqRel);
        self.inner.sync_data()
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
}

fn setup(cfg: ControllerConfig) -> (Arc<Probe>, Driver) {
    let probe = Arc::new(Probe::default());
    let d = driver_on(&probe, cfg);
    (probe, d)
}

#[test]
fn fua_flush_and_write_cache_reach_storage() {
    let (probe, mut d) = setup(ControllerConfig::default());
    let syncs = || probe.syncs.load(Ordering::Acquire);
    let s0 = syncs();
    assert_eq!(
        d.write(1, 0, &pattern(4096, 1), false).status,
        Status::SUCCESS
    );
    assert_eq!(syncs(), s0, "cached write: no sync");
    assert_eq!(
        d.write(1, 1, &pattern(4096, 2), true).status,
        Status::SUCCESS
    );
    let s1 = syncs();
    assert!(s1 > s0, "FUA write syncs");
    assert_eq!(d.run(1, Command::new(0x00)).status, Status::SUCCESS);
    let s2 = syncs();
    assert!(s2 > s1, "flush syncs");
    let c = d.run(1, Command::rw(0x7D, 256, 1, true).dptr(0x10000, 0));
    assert_eq!(c.status, Status::SUCCESS);
    let s3 = syncs();
    assert!(s3 > s2, "FUA append syncs");
    // Volatile write cache disabled: every write is durable.
    assert_eq!(
        d.admin(Command::set_features(0x06, 0)).status,
        Status::SUCCESS
    );
    assert_eq!(
        d.write(1, 2, &pattern(4096, 3), false).status,
        Status::SUCCESS
    );
    let s4 = syncs();
    assert!(s4 > s3, "write with the cache disabled syncs");
    assert_eq!(
        d.admin(Command::set_features(0x06, 1)).status,
        Status::SUCCESS
    );
    assert_eq!(
        d.write(1, 3, &pattern(4096, 4), false).status,
        Status::SUCCESS
    );
    assert_eq!(syncs(), s4, "cache enabled again");
    // Shutdown flushes.
    let cc = d.reg32(0x14);
    d.set_reg32(0x14, cc | (1 << 14));
    assert!(syncs() > s4);
}

#[test]
fn host_io_errors_are_internal_errors() {
    let (probe, mut d) = setup(ControllerConfig::default());
    assert_eq!(
        d.write(1, 0, &pattern(4096, 1), false).status,
        Status::SUCCESS
    );
    probe.fail_reads.store(true, Ordering::Release);
    let (c, _) = d.read(1, 0, 1);
    assert_eq!(c.status, Status::INTERNAL);
    assert!(!c.status.dnr, "retryable");
    probe.fail_reads.store(false, Ordering::Release);
    probe.fail_writes.store(true, Ordering::Release);
    assert_eq!(
        d.write(1, 1, &pattern(4096, 2), true).status,
        Status::INTERNAL
    );
    probe.fail_writes.store(false, Ordering::Release);
    // The failed write did not move the write pointer; the next one at the WP works.
    assert_eq!(
        d.write(1, 1, &pattern(4096, 3), false).status,
        Status::SUCCESS
    );
    let (c, got) = d.read(1, 0, 2);
    assert_eq!(c.status, Status::SUCCESS);
    assert_eq!(&got[4096..], &pattern(4096, 3)[..]);
    assert!(d.ctrl.ready());
}
