//! Interrupt Coalescing (Feature 08h) on I/O completion queues.

mod common;

use common::*;
use nvme::test_utils::Command;
use nvme::Status;
use std::time::Duration;

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
