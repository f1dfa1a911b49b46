//! Interrupt Coalescing (Feature 08h) on I/O completion queues.

mod common;

use common::*;
use nvme::test_utils::Command;
use nvme::Status;
use std::time::Duration;

/// One pass of `n` one-block reads of queue 1 into `buf`: submits them all, lets the
/// controller run once, checks that every one completed successfully and in order, and
/// returns the interrupts raised on vector 1 meanwhile.
fn read_pass(d: &mut nvme::test_utils::Driver, buf: u64, n: usize) -> u64 {
    let before = d.host.irq.count(1);
    let cids: Vec<u16> = (0..n)
        .map(|_| d.submit(1, Command::rw(0x02, 0, 1, false).dptr(buf, 0)))
        .collect();
    d.process();
    let got: Vec<u16> = std::iter::from_fn(|| d.reap(1))
        .map(|c| {
            assert_eq!(c.status, Status::SUCCESS);
            c.cid
        })
        .collect();
    assert_eq!(got, cids, "one pass runs them all");
    d.host.irq.count(1) - before
}

#[test]
fn interrupt_coalescing_aggregates_io_completions() {
    let mut r = rig(Geo::default(), 4096);
    let d = &mut r.d;
    let read = |d: &mut nvme::test_utils::Driver| {
        assert_eq!(d.read(1, 0, 1).0.status, Status::SUCCESS);
    };
    // Without coalescing every completion batch raises the vector.
    let before = d.host.irq.count(1);
    read(d);
    assert_eq!(d.host.irq.count(1), before + 1);
    // THR = 3 (four entries), TIME = 255 (25.5 ms).
    assert_eq!(
        d.admin(Command::set_features(0x08, 0xFF03)).status,
        Status::SUCCESS
    );
    let admin_irqs = d.host.irq.count(0);
    let before = d.host.irq.count(1);
    for _ in 0..3 {
        read(d);
    }
    assert_eq!(d.host.irq.count(1), before, "three entries wait");
    read(d);
    assert_eq!(
        d.host.irq.count(1),
        before + 1,
        "the fourth raises the vector"
    );
    // A lone entry is signalled once the aggregation time has passed.
    read(d);
    assert_eq!(d.host.irq.count(1), before + 1);
    std::thread::sleep(Duration::from_millis(30));
    d.process();
    assert_eq!(d.host.irq.count(1), before + 2, "raised after TIME");
    // The admin CQ is never coalesced.
    assert_eq!(
        d.admin(Command::get_features(0x08, 0)).status,
        Status::SUCCESS
    );
    assert!(d.host.irq.count(0) > admin_irqs);
    // TIME = 0 means no delay.
    assert_eq!(
        d.admin(Command::set_features(0x08, 0x0003)).status,
        Status::SUCCESS
    );
    read(d);
    assert_eq!(d.host.irq.count(1), before + 3);
}

/// A pass over many commands raises the vector every `raise_every` completions (8 here), so
/// the host can reap while the pass goes on, plus once at its end for the rest; every
/// completion is posted. With 0, once per pass. With coalescing on, those raises go through
/// the aggregation rules like any other.
#[test]
fn a_long_pass_raises_the_vector_every_eight_completions() {
    let mut r = rig(Geo::default(), 4096);
    let d = &mut r.d;
    let buf = d.alloc(4096);
    let pass = |d: &mut nvme::test_utils::Driver, n: usize| read_pass(d, buf, n);
    assert_eq!(pass(d, 20), 3, "after 8, after 16, and at the end for 4");
    assert_eq!(pass(d, 16), 2, "nothing left over at the end");
    assert_eq!(pass(d, 1), 1);
    d.host.raise_every = 0;
    assert_eq!(pass(d, 20), 1, "once per pass");
    d.host.raise_every = nvme::RAISE_EVERY;
    // THR = 31 (32 entries), TIME = 255: twenty entries raise nothing yet ...
    assert_eq!(
        d.admin(Command::set_features(0x08, 0xFF1F)).status,
        Status::SUCCESS
    );
    assert_eq!(pass(d, 20), 0);
    // ... and the next twenty cross the threshold once (at the 33rd entry's raise, the 40th).
    assert_eq!(pass(d, 20), 1);
}

/// The early batch follows the host's depth: three quarters of what a pass finds
/// outstanding (up to 8), so a host that keeps 8 commands in flight hears after 6 and can
/// refill while the other 2 run.
#[test]
fn a_depth_eight_host_gets_its_early_interrupt_after_six() {
    let mut r = rig(Geo::default(), 4096);
    let d = &mut r.d;
    let buf = d.alloc(4096);
    let pass = |d: &mut nvme::test_utils::Driver, n: usize| read_pass(d, buf, n);
    assert_eq!(pass(d, 8), 2, "after 6 and after 8");
    // The estimate falls slowly (to 7: a batch of 5), so a pass of 5 raises once, at its
    // last completion; half the depth would have raised after 3 and again at the end.
    assert_eq!(pass(d, 5), 1, "after 5, which is also the end");
    assert_eq!(pass(d, 1), 1);
}

/// A host that never answers an early interrupt within the pass (here: nothing is submitted
/// while a pass runs) gets them for a few passes, then only one per pass.
#[test]
fn early_interrupts_pause_for_a_host_that_does_not_answer() {
    let mut r = rig(Geo::default(), 4096);
    let d = &mut r.d;
    let buf = d.alloc(4096);
    let irqs: Vec<u64> = (0..10).map(|_| read_pass(d, buf, 20)).collect();
    assert_eq!(
        irqs,
        [3, 3, 3, 3, 3, 3, 3, 3, 1, 1],
        "8 unanswered passes, then paused"
    );
}
