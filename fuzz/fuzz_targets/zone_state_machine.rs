//! Drive the zone state machine (`qcow2zoned::ZoneSet`) with arbitrary geometries and
//! operation sequences: writes and appends completed out of order or failed, management on
//! one zone or all, Set ZDE, forced states, and restarts from the persisted words. Never
//! panic, and after every step: counters match the states, limits hold (beyond them only as
//! the documented restart exception allows), write pointers stay inside their zones with
//! the committed one behind the reserved one, and the words always reload into a state with
//! no opened zone.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qcow2zoned::{ZoneAction, ZoneGeometry, ZoneSet, ZoneState, WriteTicket};

struct Input<'a>(&'a [u8], usize);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let b = self.0.get(self.1).copied();
        self.1 += 1;
        b
    }
}

fn counts_from_states(zs: &ZoneSet) -> (u32, u32) {
    let g = zs.geometry();
    let (mut open, mut active) = (0, 0);
    for i in 0..g.nr_zones {
        match zs.info(i).state {
            ZoneState::ImplicitlyOpened | ZoneState::ExplicitlyOpened => {
                open += 1;
                active += 1;
            }
            ZoneState::Closed => active += 1,
            _ => {}
        }
    }
    (open, active)
}

fn check(zs: &ZoneSet, prev_active: u32) {
    let g = *zs.geometry();
    let (open, active) = zs.counts();
    assert_eq!((open, active), counts_from_states(zs), "counters vs states");
    if g.max_open != 0 {
        assert!(open <= g.max_open, "{open} open zones over {}", g.max_open);
    }
    if g.max_active != 0 && active > g.max_active {
        // Only a restart may leave more; it never grows while over the limit.
        assert!(
            active <= prev_active,
            "active {active} grew over the limit {} (was {prev_active})",
            g.max_active
        );
    }
    for i in 0..g.nr_zones {
        let z = zs.info(i);
        assert_eq!(z.start, u64::from(i) * g.zone_size);
        if z.ztype == qcow2zoned::ZoneType::Conventional {
            assert_eq!(z.state, ZoneState::NotWritePointer);
            continue;
        }
        let reserved = zs.reserved_wp(i);
        assert!(z.wp >= z.start && z.wp <= reserved, "zone {i}: {z:?} reserved {reserved}");
        assert!(reserved <= z.start + g.zone_capacity, "zone {i} reserved {reserved}");
        match z.state {
            ZoneState::Empty => assert_eq!(z.wp, z.start, "zone {i}: {z:?}"),
            ZoneState::Full | ZoneState::ReadOnly | ZoneState::Offline => {}
            ZoneState::NotWritePointer => panic!("sequential zone {i} without write pointer"),
            _ => assert!(z.wp < z.start + g.zone_capacity, "zone {i}: {z:?}"),
        }
    }
}

/// Reload from the persisted words, as after a power loss, and check what comes back.
fn reload(zs: &ZoneSet) -> ZoneSet {
    let g = *zs.geometry();
    let words: Vec<u64> = (0..g.nr_zones).map(|i| zs.word(i)).collect();
    let back = ZoneSet::from_words(g, &words)
        .unwrap_or_else(|e| panic!("words of a live zone set do not reload: {e}"));
    for i in 0..g.nr_zones {
        let (before, after) = (zs.info(i), back.info(i));
        assert!(
            !matches!(
                after.state,
                ZoneState::ImplicitlyOpened | ZoneState::ExplicitlyOpened
            ),
            "zone {i} comes back opened"
        );
        assert_eq!(after.wp, before.wp, "zone {i}: committed write pointer persisted");
        assert_eq!(after.attrs, before.attrs, "zone {i} attributes");
        let expect = match before.state {
            ZoneState::ImplicitlyOpened | ZoneState::ExplicitlyOpened => ZoneState::Closed,
            s => s,
        };
        // A zone made Full by writes still in flight persists as Closed (or Empty).
        if zs.in_flight(i) == 0 {
            assert_eq!(after.state, expect, "zone {i} state after reload ({before:?})");
        }
    }
    assert_eq!(back.counts().0, 0, "no open zone after reload");
    back
}

const ACTIONS: [ZoneAction; 5] = [
    ZoneAction::Close,
    ZoneAction::Finish,
    ZoneAction::Open,
    ZoneAction::Reset,
    ZoneAction::Offline,
];

fuzz_target!(|data: &[u8]| {
    let mut inp = Input(data, 0);
    let Some(hdr) = (0..6).map(|_| inp.byte()).collect::<Option<Vec<u8>>>() else {
        return;
    };
    let zone_size = 512u64 << (hdr[0] % 5);
    let capacity = 512 * (1 + u64::from(hdr[1]) % (zone_size / 512));
    let nr_zones = 1 + u32::from(hdr[2] % 8);
    let conventional = u32::from(hdr[3]) % nr_zones;
    let seq = nr_zones - conventional;
    let mut max_open = u32::from(hdr[4]) % (seq + 1);
    let mut max_active = u32::from(hdr[5]) % (seq + 1);
    if max_open != 0 && max_active != 0 && max_open > max_active {
        std::mem::swap(&mut max_open, &mut max_active);
    }
    let g = ZoneGeometry {
        zone_size,
        zone_capacity: capacity,
        nr_zones,
        conventional_zones: conventional,
        max_open,
        max_active,
    };
    if g.validate(u64::from(nr_zones) * zone_size).is_err() {
        return;
    }
    let mut zs = ZoneSet::new(g);
    let mut tickets: Vec<WriteTicket> = Vec::new();
    let mut steps = 0;
    while let Some(op) = inp.byte() {
        steps += 1;
        if steps > 2000 {
            break;
        }
        let arg = inp.byte().unwrap_or(0);
        let idx = u32::from(arg) % (nr_zones + 1);
        let prev_active = zs.counts().1;
        let start = u64::from(idx) * zone_size;
        match op % 10 {
            0 | 1 => {
                let len = 512 * (1 + u64::from(inp.byte().unwrap_or(0) % 8));
                let off = if op & 0x80 == 0 && idx < nr_zones {
                    zs.reserved_wp(idx)
                } else {
                    start + 512 * u64::from(inp.byte().unwrap_or(0))
                };
                if let Ok(t) = zs.begin_write(off, len) {
                    assert_eq!(t.offset, off);
                    assert_eq!(t.len, len);
                    tickets.push(t);
                }
            }
            2 => {
                let len = 512 * (1 + u64::from(inp.byte().unwrap_or(0) % 8));
                if let Ok(t) = zs.begin_append(start, len) {
                    assert!(t.offset >= start && t.offset + len <= start + capacity);
                    tickets.push(t);
                }
            }
            3 | 4 => {
                if !tickets.is_empty() {
                    let t = tickets.swap_remove(usize::from(arg) % tickets.len());
                    let _ = zs.complete_write(&t, op & 0x40 == 0);
                }
            }
            5 => {
                let a = ACTIONS[usize::from(op >> 4) % ACTIONS.len()];
                let _ = zs.action(idx, a);
            }
            6 => {
                let a = ACTIONS[usize::from(op >> 4) % ACTIONS.len()];
                let _ = zs.action_all(a);
            }
            7 => {
                let _ = zs.set_zde(idx);
            }
            8 => {
                let s = [ZoneState::ReadOnly, ZoneState::Offline, ZoneState::Full][usize::from(op >> 4) % 3];
                let _ = zs.force_state(idx, s);
            }
            _ => {
                let _ = zs.check_read(start, 512 * u64::from(arg), op & 0x10 != 0);
                if op & 0x20 != 0 {
                    // Power loss: in-flight writes are gone.
                    zs = reload(&zs);
                    tickets.clear();
                    check(&zs, u32::MAX);
                    continue;
                }
            }
        }
        check(&zs, prev_active);
    }
    let _ = reload(&zs);
});
