//! Pure zone state machine: no I/O, no locks, no clock.
//!
//! Units are bytes on the virtual disk (the NVMe layer converts LBAs).
//! API CONTRACT (fixed; other crates code against it).
//!
//! # Model
//!
//! Every sequential zone keeps two write pointers: the *reserved* one, advanced when a
//! write or append is admitted (`begin_write`/`begin_append`), which orders submissions,
//! and the *committed* one, advanced by `complete_write` over the contiguous prefix of
//! finished reservations. Reports and the persisted word use the committed pointer, so a
//! persisted write pointer never runs ahead of data the storage layer has made durable.
//!
//! Open resources are implicitly + explicitly opened zones, active resources are open +
//! closed zones; a limit of 0 means unlimited. When the open limit is reached, the least
//! recently written implicitly opened zone is closed to make room (zones without writes in
//! flight are preferred); explicitly opened zones are never closed by the controller.
//!
//! # Decisions where the specification leaves a choice
//!
//! * Zero-length write or append: refused with [`ZoneError::InvalidWrite`] after the range
//!   checks; no reservation is created. NVMe cannot express one (NLB is 0's based), so only
//!   a caller bug gets here. A zero-length read is accepted if its offset is on the disk.
//! * Close of an opened zone whose write pointer is still at its start: it becomes Closed
//!   (as QEMU does) and keeps its active resource; the word carries the Closed nibble so
//!   it comes back Closed after a restart.
//! * An opened zone (implicit or explicit) is persisted like a Closed one: after a restart
//!   every opened zone is Closed, including one that was opened with nothing written.
//! * Failed write (`complete_write(.., false)`): if the reservation is the last one of its
//!   zone, the reserved pointer goes back to its offset. An implicitly opened zone that is
//!   back at its start with nothing in flight and no attributes returns to Empty. A zone
//!   that had become Full by that reservation returns to Empty (same condition) or Closed
//!   if an active resource is free; otherwise it stays Full and the range is handled as in
//!   the next case. A failed reservation that is not the last one cannot be undone (later
//!   data is already placed after it): the range counts as written (a hole that reads
//!   whatever the failed I/O left, normally zeros) and the committed pointer moves past it.
//! * Select All Open is atomic: it first checks that every Closed zone can be opened
//!   (evicting implicitly opened zones as needed) and fails with Too Many Open Zones
//!   without changing anything otherwise. Its scope is the set of zones Closed when the
//!   command starts; zones it evicts stay Closed.
//! * Management while writes are in flight to the zone:
//!   - Close keeps the reservations; they complete normally and advance the committed
//!     pointer of the now Closed zone; the next write goes at the reserved pointer.
//!   - Finish and Reset drop the zone's reservations: their later `complete_write` is a
//!     no-op returning false. Finish zeroes from the *reserved* pointer (equal to the
//!     committed one when nothing is in flight), so data already on its way is kept, and
//!     sets the write pointer to the end of the capacity. Reset asks to zero the whole zone;
//!     the storage layer must apply that zeroing after the zone's data writes have finished
//!     ([`ZoneSet::in_flight`] tells whether any are outstanding), or drain them first.
//!   - Forcing a zone read-only or offline also drops its reservations.
//! * A zone that becomes Full by reservation gives its resources back at once, while its
//!   durable word still shows it Closed until those writes complete. A power loss in that
//!   window can leave more Closed zones on disk than max_active, so `from_words` accepts
//!   that (new zones cannot become active until the count is back under the limit)
//!   rather than refusing to open the image.
//!
//! # Persisted word
//!
//! Bits 0-50: committed write pointer (absolute byte offset); bits 51-58: ZA byte; bit 59:
//! conventional zone; bits 60-63: a state nibble, non-zero only where the write pointer
//! alone cannot tell the state: 0x4 for an active zone whose write pointer is at its start,
//! 0xD read only, 0xF offline. Otherwise wp == start is Empty, wp >= start + capacity is
//! Full and anything between is Closed.

use bitflags::bitflags;

/// Zone state as NVMe ZNS names it; the discriminant is the ZS code (NVMe ZNS 1.1, fig. "Zone State").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[repr(u8)]
pub enum ZoneState {
    /// Conventional zone: no write pointer.
    NotWritePointer = 0x0,
    /// ZSE.
    Empty = 0x1,
    /// ZSIO.
    ImplicitlyOpened = 0x2,
    /// ZSEO.
    ExplicitlyOpened = 0x3,
    /// ZSC.
    Closed = 0x4,
    /// ZSRO.
    ReadOnly = 0xD,
    /// ZSF.
    Full = 0xE,
    /// ZSO.
    Offline = 0xF,
}

/// Zone type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum ZoneType {
    /// Random writes allowed, no write pointer.
    Conventional,
    /// Sequential Write Required (NVMe ZT 2h).
    SequentialWriteRequired,
}

bitflags! {
    /// Zone attributes, NVMe ZA byte bit numbering.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct ZoneAttrs: u8 {
        /// Zone Finished by Controller.
        const ZFC = 1 << 0;
        /// Finish Zone Recommended.
        const FZR = 1 << 1;
        /// Reset Zone Recommended.
        const RZR = 1 << 2;
        /// Zone Random Write Area Valid.
        const ZRWAV = 1 << 3;
        /// Zone Descriptor Extension Valid.
        const ZDEV = 1 << 7;
    }
}

/// Why the state machine refused an operation. Each maps to exactly one NVMe status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ZoneError {
    /// Range outside the disk (NVMe: LBA Out of Range, 0x80).
    #[error("Range outside the device")]
    OutOfRange,
    /// Offset is not the start of a zone where one is required (NVMe: Invalid Field, 0x02).
    #[error("Offset is not a zone start")]
    NotZoneStart,
    /// Operation not valid on a conventional zone (NVMe: Invalid Field, 0x02).
    #[error("Operation not valid on a conventional zone")]
    Conventional,
    /// Write/append crosses the zone capacity, or read crosses a zone boundary (0xB8).
    #[error("Zone boundary error")]
    Boundary,
    /// Zone Is Full (0xB9).
    #[error("Zone is full")]
    Full,
    /// Zone Is Read Only (0xBA).
    #[error("Zone is read only")]
    ReadOnly,
    /// Zone Is Offline (0xBB).
    #[error("Zone is offline")]
    Offline,
    /// Write not at the write pointer (0xBC).
    #[error("Write not at the write pointer")]
    InvalidWrite,
    /// Too Many Active Zones (0xBD).
    #[error("Too many active zones")]
    TooManyActive,
    /// Too Many Open Zones (0xBE).
    #[error("Too many open zones")]
    TooManyOpen,
    /// Invalid Zone State Transition (0xBF).
    #[error("Invalid zone state transition")]
    InvalidTransition,
}

/// Zone geometry and limits, validated (see `ZoneGeometry::validate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ZoneGeometry {
    /// Bytes per zone (power of two, multiple of 512).
    pub zone_size: u64,
    /// Writable bytes per zone, <= zone_size.
    pub zone_capacity: u64,
    /// Total zones (conventional first).
    pub nr_zones: u32,
    /// Number of conventional zones (zones 0..n).
    pub conventional_zones: u32,
    /// Max open zones, 0 = unlimited.
    pub max_open: u32,
    /// Max active zones, 0 = unlimited.
    pub max_active: u32,
}

/// One zone as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ZoneInfo {
    /// Zone index.
    pub index: u32,
    /// First byte of the zone.
    pub start: u64,
    /// Zone size in bytes (the last zone is never shorter: geometry requires whole zones).
    pub size: u64,
    /// Writable bytes.
    pub capacity: u64,
    /// Committed write pointer (absolute bytes); for conventional zones = start.
    pub wp: u64,
    /// Type.
    pub ztype: ZoneType,
    /// State.
    pub state: ZoneState,
    /// Attributes.
    #[serde(serialize_with = "ser_attrs")]
    pub attrs: ZoneAttrs,
}

fn ser_attrs<S: serde::Serializer>(a: &ZoneAttrs, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_u8(a.bits())
}

/// A reserved write range at a zone's write pointer, returned by `begin_write`/`begin_append`;
/// hand it back to `complete_write` once the data I/O has finished (or failed).
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct WriteTicket {
    /// Zone index.
    pub zone: u32,
    /// Absolute byte offset the data goes to (for append: the assigned offset).
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// Zone that was implicitly closed to make room (its word must be persisted), if any.
    pub evicted: Option<u32>,
    /// Reservation identifier (0 for conventional zones, which keep no reservations).
    seq: u64,
}

/// What a management operation changed, for the storage layer to persist / apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effects {
    /// Zones whose persisted word changed (write them after the data they cover is durable).
    pub changed: Vec<u32>,
    /// Byte ranges (start, len) whose data must now read as zeros (reset; finish above the WP).
    pub zero: Vec<(u64, u64)>,
}

/// Management actions (NVMe Zone Send Action).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZoneAction {
    /// ZSA 01h.
    Close,
    /// ZSA 02h.
    Finish,
    /// ZSA 03h.
    Open,
    /// ZSA 04h.
    Reset,
    /// ZSA 05h.
    Offline,
}

/// One admitted write whose data I/O has not been reported back yet.
#[derive(Debug, Clone, Copy)]
struct Reservation {
    seq: u64,
    offset: u64,
    len: u64,
    /// Completed (successfully, or failed but impossible to undo).
    done: bool,
}

#[derive(Debug, Clone)]
struct Zone {
    start: u64,
    conventional: bool,
    state: ZoneState,
    /// Write pointer covering only finished writes (reported and persisted).
    committed: u64,
    /// Write pointer where the next write must start.
    reserved: u64,
    attrs: ZoneAttrs,
    /// Admitted writes, in offset order, contiguous from `committed` to `reserved`.
    inflight: Vec<Reservation>,
    /// Stamp of the last admitted write, for least-recently-used eviction.
    last_write: u64,
}

/// The zones of one zoned device with their open/active accounting.
#[derive(Debug, Clone)]
pub struct ZoneSet {
    geom: ZoneGeometry,
    zones: Vec<Zone>,
    /// Implicitly + explicitly opened zones.
    nr_open: u32,
    /// Opened + closed zones.
    nr_active: u32,
    /// Source of `Zone::last_write` stamps.
    clock: u64,
    /// Source of reservation identifiers (never 0).
    next_seq: u64,
}

/// Persisted 64-bit zone word layout helpers (see docs/qcow2-zoned.md).
pub mod word {
    /// Write pointer mask, bits 0-50.
    pub const WP_MASK: u64 = (1 << 51) - 1;
    /// Attribute byte shift (bits 51-58).
    pub const ATTR_SHIFT: u32 = 51;
    /// Conventional flag, bit 59.
    pub const CONVENTIONAL: u64 = 1 << 59;
    /// State nibble shift (bits 60-63).
    pub const STATE_SHIFT: u32 = 60;
    /// State nibble values that are persisted.
    pub const STATE_CLOSED: u64 = 0x4;
    /// Read-only.
    pub const STATE_READ_ONLY: u64 = 0xD;
    /// Offline.
    pub const STATE_OFFLINE: u64 = 0xF;
}

/// Resources a state holds: (open, active).
fn holds(state: ZoneState) -> (bool, bool) {
    match state {
        ZoneState::ImplicitlyOpened | ZoneState::ExplicitlyOpened => (true, true),
        ZoneState::Closed => (false, true),
        _ => (false, false),
    }
}

impl ZoneGeometry {
    /// Checks every rule (power of two, capacity, limits, counts) given the virtual disk size.
    /// Error text names the field and the value.
    pub fn validate(&self, disk_size: u64) -> std::result::Result<(), String> {
        let zs = self.zone_size;
        if zs < 512 || !zs.is_power_of_two() {
            return Err(format!(
                "zone_size {zs} must be a power of two and a multiple of 512"
            ));
        }
        let cap = self.zone_capacity;
        if cap < 512 || cap > zs || cap & 511 != 0 {
            return Err(format!(
                "zone_capacity {cap} must be a multiple of 512 between 512 and zone_size {zs}"
            ));
        }
        if disk_size & (zs - 1) != 0 {
            return Err(format!(
                "disk size {disk_size} is not a multiple of zone_size {zs}"
            ));
        }
        if disk_size > word::WP_MASK {
            return Err(format!(
                "disk size {disk_size} does not fit the 51-bit write pointer"
            ));
        }
        if disk_size / zs != u64::from(self.nr_zones) {
            return Err(format!(
                "nr_zones {} does not match disk size {disk_size} / zone_size {zs} = {}",
                self.nr_zones,
                disk_size / zs
            ));
        }
        if self.conventional_zones >= self.nr_zones {
            return Err(format!(
                "conventional_zones {} must be below nr_zones {}",
                self.conventional_zones, self.nr_zones
            ));
        }
        let seq = self.nr_zones - self.conventional_zones;
        if self.max_open > seq {
            return Err(format!(
                "max_open {} exceeds the {seq} sequential zones",
                self.max_open
            ));
        }
        if self.max_active > seq {
            return Err(format!(
                "max_active {} exceeds the {seq} sequential zones",
                self.max_active
            ));
        }
        if self.max_open != 0 && self.max_active != 0 && self.max_open > self.max_active {
            return Err(format!(
                "max_open {} exceeds max_active {}",
                self.max_open, self.max_active
            ));
        }
        Ok(())
    }

    /// Virtual disk size covered by the zones.
    fn disk_size(&self) -> u64 {
        u64::from(self.nr_zones).saturating_mul(self.zone_size)
    }
}

impl ZoneSet {
    /// Fresh set: every sequential zone Empty.
    ///
    /// The geometry should have passed [`ZoneGeometry::validate`]; a bad one never makes
    /// this type panic, but its answers are then meaningless.
    pub fn new(geom: ZoneGeometry) -> Self {
        let zones = (0..geom.nr_zones)
            .map(|i| {
                let start = u64::from(i).saturating_mul(geom.zone_size);
                let conventional = i < geom.conventional_zones;
                Zone {
                    start,
                    conventional,
                    state: if conventional {
                        ZoneState::NotWritePointer
                    } else {
                        ZoneState::Empty
                    },
                    committed: start,
                    reserved: start,
                    attrs: ZoneAttrs::empty(),
                    inflight: Vec::new(),
                    last_write: 0,
                }
            })
            .collect();
        ZoneSet {
            geom,
            zones,
            nr_open: 0,
            nr_active: 0,
            clock: 0,
            next_seq: 1,
        }
    }

    /// Rebuild from persisted words (one per zone). Open zones come back Closed; counters rebuilt.
    /// Errors name the zone and the bad value (wp outside its zone, conventional flag mismatch...).
    ///
    /// Refused: a word count other than nr_zones, an unusable geometry, a write pointer
    /// outside `[start, start + zone_size]`, a conventional flag on a sequential zone or a
    /// conventional word other than `start | CONVENTIONAL`, unknown attribute bits,
    /// attributes on an Empty zone, an unknown state nibble, and the Closed nibble with the
    /// write pointer away from the zone start. An active count above max_active is
    /// accepted (see the comment in the body); compare [`ZoneSet::counts`] with the limit to
    /// warn about it.
    pub fn from_words(geom: ZoneGeometry, words: &[u64]) -> std::result::Result<Self, String> {
        if geom.zone_size == 0
            || geom.zone_capacity > geom.zone_size
            || geom.conventional_zones > geom.nr_zones
            || !matches!(
                u64::from(geom.nr_zones).checked_mul(geom.zone_size),
                Some(d) if d <= word::WP_MASK
            )
        {
            return Err(format!("unusable zone geometry {geom:?}"));
        }
        if words.len() != geom.nr_zones as usize {
            return Err(format!(
                "{} zone words for nr_zones {}",
                words.len(),
                geom.nr_zones
            ));
        }
        let mut set = ZoneSet::new(geom);
        for (i, (zone, &w)) in set.zones.iter_mut().zip(words).enumerate() {
            let bad = |what: &str| format!("zone {i}: word {w:#018x}: {what}");
            let start = zone.start;
            let conv = w & word::CONVENTIONAL != 0;
            if zone.conventional {
                if w != start | word::CONVENTIONAL {
                    return Err(bad(&format!(
                        "conventional zone word must be {:#018x}",
                        start | word::CONVENTIONAL
                    )));
                }
                continue;
            }
            if conv {
                return Err(bad("conventional flag set on a sequential zone"));
            }
            let wp = w & word::WP_MASK;
            if wp < start || wp > start + geom.zone_size {
                return Err(bad(&format!("write pointer {wp:#x} outside the zone")));
            }
            let raw_attrs = ((w >> word::ATTR_SHIFT) & 0xFF) as u8;
            let Some(attrs) = ZoneAttrs::from_bits(raw_attrs) else {
                return Err(bad(&format!("unknown zone attributes {raw_attrs:#04x}")));
            };
            let full_at = start + geom.zone_capacity;
            let state = match w >> word::STATE_SHIFT {
                0 if wp == start => {
                    if !attrs.is_empty() {
                        return Err(bad("attributes set on an empty zone"));
                    }
                    ZoneState::Empty
                }
                0 if wp < full_at => ZoneState::Closed,
                0 => ZoneState::Full,
                word::STATE_CLOSED if wp == start => ZoneState::Closed,
                word::STATE_CLOSED => {
                    return Err(bad("closed-at-start nibble with the write pointer moved"))
                }
                word::STATE_READ_ONLY => ZoneState::ReadOnly,
                word::STATE_OFFLINE => ZoneState::Offline,
                n => return Err(bad(&format!("unknown state nibble {n:#x}"))),
            };
            zone.state = state;
            zone.committed = wp;
            zone.reserved = wp;
            zone.attrs = attrs;
            if state == ZoneState::Closed {
                set.nr_active += 1;
            }
        }
        // More Closed zones than max_active is accepted, not refused: a power loss while
        // the last write of a zone is in flight leaves that zone Closed on disk although its
        // active resource had already been handed to another zone. Refusing would make the
        // image unopenable; instead the count stays above the limit and no zone can become
        // active until enough zones are finished, reset or emptied (see `counts`).
        Ok(set)
    }

    /// Persisted word of zone `idx` (committed wp). Panics if idx >= nr_zones (caller bug).
    pub fn word(&self, idx: u32) -> u64 {
        let z = &self.zones[idx as usize];
        if z.conventional {
            return z.start | word::CONVENTIONAL;
        }
        let nibble = match z.state {
            ZoneState::Empty | ZoneState::NotWritePointer => 0,
            ZoneState::ReadOnly => word::STATE_READ_ONLY,
            ZoneState::Offline => word::STATE_OFFLINE,
            // The word shows what is durable. A zone holding a resource with nothing durable
            // yet needs the nibble to come back Closed rather than Empty.
            ZoneState::ImplicitlyOpened | ZoneState::ExplicitlyOpened | ZoneState::Closed => {
                if z.committed == z.start {
                    word::STATE_CLOSED
                } else {
                    0
                }
            }
            // Full by reservation while its writes are in flight: it holds no resource, so
            // with nothing durable it comes back Empty (Closed if it carries attributes,
            // which an Empty zone cannot). Once committed reaches the capacity the word is
            // plain Full.
            ZoneState::Full => {
                if z.committed == z.start && !z.attrs.is_empty() {
                    word::STATE_CLOSED
                } else {
                    0
                }
            }
        };
        (z.committed & word::WP_MASK)
            | (u64::from(z.attrs.bits()) << word::ATTR_SHIFT)
            | (nibble << word::STATE_SHIFT)
    }

    /// Geometry.
    pub fn geometry(&self) -> &ZoneGeometry {
        &self.geom
    }

    /// Zone info for `idx` (panics if idx >= nr_zones: caller bug).
    pub fn info(&self, idx: u32) -> ZoneInfo {
        let z = &self.zones[idx as usize];
        ZoneInfo {
            index: idx,
            start: z.start,
            size: self.geom.zone_size,
            capacity: if z.conventional {
                self.geom.zone_size
            } else {
                self.geom.zone_capacity
            },
            wp: z.committed,
            ztype: if z.conventional {
                ZoneType::Conventional
            } else {
                ZoneType::SequentialWriteRequired
            },
            state: z.state,
            attrs: z.attrs,
        }
    }

    /// Index of the zone holding byte `offset`, None past the end.
    pub fn zone_of(&self, offset: u64) -> Option<u32> {
        let idx = offset.checked_div(self.geom.zone_size)?;
        if idx < u64::from(self.geom.nr_zones) {
            u32::try_from(idx).ok()
        } else {
            None
        }
    }

    /// Open (implicit + explicit) and active (open + closed) counts.
    pub fn counts(&self) -> (u32, u32) {
        (self.nr_open, self.nr_active)
    }

    /// Reserved write pointer of zone `idx` (where the next write must start); equals the
    /// committed one when nothing is in flight. Panics if idx >= nr_zones (caller bug).
    pub fn reserved_wp(&self, idx: u32) -> u64 {
        self.zones[idx as usize].reserved
    }

    /// Number of admitted writes of zone `idx` not yet handed to `complete_write`.
    /// Panics if idx >= nr_zones (caller bug).
    pub fn in_flight(&self, idx: u32) -> usize {
        self.zones[idx as usize].inflight.len()
    }

    /// Checks a read of `len` bytes at `offset` (offline zones, range). Reads may cross
    /// zone boundaries only if `cross` is set.
    pub fn check_read(
        &self,
        offset: u64,
        len: u64,
        cross: bool,
    ) -> std::result::Result<(), ZoneError> {
        let end = offset.checked_add(len).ok_or(ZoneError::OutOfRange)?;
        if end > self.geom.disk_size() {
            return Err(ZoneError::OutOfRange);
        }
        let first = self.zone_of(offset).ok_or(ZoneError::OutOfRange)?;
        let last = self
            .zone_of(end.saturating_sub(1).max(offset))
            .ok_or(ZoneError::OutOfRange)?;
        if self.zones[first as usize].state == ZoneState::Offline {
            return Err(ZoneError::Offline);
        }
        if last != first && !cross {
            return Err(ZoneError::Boundary);
        }
        if self.zones[first as usize..=last as usize]
            .iter()
            .any(|z| z.state == ZoneState::Offline)
        {
            return Err(ZoneError::Offline);
        }
        Ok(())
    }

    /// Reserve a write at `offset` (must equal the zone's reserved write pointer for sequential
    /// zones; conventional zones accept any offset). Implicitly opens, evicting the LRU
    /// implicitly-opened zone when needed. Error precedence as NVMe (state, wp, boundary, resources).
    pub fn begin_write(
        &mut self,
        offset: u64,
        len: u64,
    ) -> std::result::Result<WriteTicket, ZoneError> {
        self.begin(offset, len, false)
    }

    /// Reserve an append of `len` bytes to the zone starting at `zone_start`.
    pub fn begin_append(
        &mut self,
        zone_start: u64,
        len: u64,
    ) -> std::result::Result<WriteTicket, ZoneError> {
        self.begin(zone_start, len, true)
    }

    fn begin(&mut self, offset: u64, len: u64, append: bool) -> Result<WriteTicket, ZoneError> {
        let end = offset.checked_add(len).ok_or(ZoneError::OutOfRange)?;
        if end > self.geom.disk_size() {
            return Err(ZoneError::OutOfRange);
        }
        let idx = self.zone_of(offset).ok_or(ZoneError::OutOfRange)?;
        let z = &self.zones[idx as usize];
        if append && offset != z.start {
            return Err(ZoneError::NotZoneStart);
        }
        if len == 0 {
            return Err(ZoneError::InvalidWrite);
        }
        if z.conventional {
            if append {
                return Err(ZoneError::Conventional);
            }
            if end > z.start.saturating_add(self.geom.zone_size) {
                return Err(ZoneError::Boundary);
            }
            return Ok(WriteTicket {
                zone: idx,
                offset,
                len,
                evicted: None,
                seq: 0,
            });
        }
        match z.state {
            ZoneState::Full => return Err(ZoneError::Full),
            ZoneState::ReadOnly => return Err(ZoneError::ReadOnly),
            ZoneState::Offline => return Err(ZoneError::Offline),
            _ => {}
        }
        let at = if append { z.reserved } else { offset };
        if at != z.reserved {
            return Err(ZoneError::InvalidWrite);
        }
        let full_at = z.start.saturating_add(self.geom.zone_capacity);
        if at.saturating_add(len) > full_at {
            return Err(ZoneError::Boundary);
        }
        let evicted = match z.state {
            ZoneState::Empty => {
                self.check_active()?;
                self.make_open_room()?
            }
            ZoneState::Closed => self.make_open_room()?,
            _ => None,
        };
        if matches!(
            self.zones[idx as usize].state,
            ZoneState::Empty | ZoneState::Closed
        ) {
            self.set_state(idx, ZoneState::ImplicitlyOpened);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.clock += 1;
        let clock = self.clock;
        let z = &mut self.zones[idx as usize];
        z.inflight.push(Reservation {
            seq,
            offset: at,
            len,
            done: false,
        });
        z.reserved = at + len;
        z.last_write = clock;
        if z.reserved == full_at {
            self.set_state(idx, ZoneState::Full);
        }
        Ok(WriteTicket {
            zone: idx,
            offset: at,
            len,
            evicted,
            seq,
        })
    }

    /// Finish a reservation. `ok == false`: the data I/O failed. Returns true when the committed
    /// write pointer moved (the zone word needs persisting). Zone becomes Full at capacity.
    ///
    /// More precisely, true whenever the zone's word changed, which also covers a rollback
    /// that changes the state without moving the committed pointer (for instance a zone
    /// going back to Closed or Empty); the committed pointer never moves without the word
    /// changing.
    ///
    /// A ticket that is unknown (conventional zone, or dropped by Finish/Reset/force_state)
    /// is ignored and returns false.
    pub fn complete_write(&mut self, ticket: &WriteTicket, ok: bool) -> bool {
        if ticket.seq == 0 {
            return false;
        }
        let idx = ticket.zone;
        let active_free = self.active_free();
        let Some(z) = self.zones.get_mut(idx as usize) else {
            return false;
        };
        let Some(pos) = z.inflight.iter().position(|r| r.seq == ticket.seq) else {
            return false;
        };
        let word_before = self.word(idx);
        let z = &mut self.zones[idx as usize];
        let last = pos + 1 == z.inflight.len();
        let resv = z.inflight[pos];
        let back_to_empty = resv.offset == z.start && z.attrs.is_empty();
        let undo = !ok
            && last
            && match z.state {
                ZoneState::ImplicitlyOpened | ZoneState::ExplicitlyOpened | ZoneState::Closed => {
                    true
                }
                ZoneState::Full => back_to_empty || active_free,
                _ => false,
            };
        if undo {
            z.inflight.pop();
            z.reserved = resv.offset;
            let new_state = match z.state {
                ZoneState::ImplicitlyOpened if back_to_empty => Some(ZoneState::Empty),
                ZoneState::Full if back_to_empty => Some(ZoneState::Empty),
                ZoneState::Full => Some(ZoneState::Closed),
                _ => None,
            };
            if let Some(s) = new_state {
                self.set_state(idx, s);
            }
        } else {
            z.inflight[pos].done = true;
        }
        self.advance_committed(idx);
        self.word(idx) != word_before
    }

    /// Moves the committed pointer over the finished prefix of reservations.
    fn advance_committed(&mut self, idx: u32) {
        let z = &mut self.zones[idx as usize];
        let finished = z.inflight.iter().take_while(|r| r.done).count();
        if let Some(r) = z.inflight[..finished].last() {
            z.committed = r.offset + r.len;
        }
        z.inflight.drain(..finished);
    }

    /// Apply a management action to one zone (by index).
    pub fn action(
        &mut self,
        idx: u32,
        action: ZoneAction,
    ) -> std::result::Result<Effects, ZoneError> {
        let z = self.zones.get(idx as usize).ok_or(ZoneError::OutOfRange)?;
        if z.conventional {
            return Err(ZoneError::Conventional);
        }
        let mut fx = Effects::default();
        let before = self.word(idx);
        match action {
            ZoneAction::Open => {
                if let Some(ev) = self.open_zone(idx)? {
                    fx.changed.push(ev);
                }
            }
            ZoneAction::Close => self.close_zone(idx)?,
            ZoneAction::Finish => self.finish_zone(idx, &mut fx)?,
            ZoneAction::Reset => self.reset_zone(idx, &mut fx)?,
            ZoneAction::Offline => match self.zones[idx as usize].state {
                ZoneState::ReadOnly => self.set_state(idx, ZoneState::Offline),
                ZoneState::Offline => {}
                _ => return Err(ZoneError::InvalidTransition),
            },
        }
        if self.word(idx) != before {
            fx.changed.push(idx);
        }
        Ok(fx)
    }

    /// Explicit open; returns the zone evicted to make room.
    fn open_zone(&mut self, idx: u32) -> Result<Option<u32>, ZoneError> {
        let evicted = match self.zones[idx as usize].state {
            ZoneState::Empty => {
                self.check_active()?;
                self.make_open_room()?
            }
            ZoneState::Closed => self.make_open_room()?,
            ZoneState::ImplicitlyOpened => None,
            ZoneState::ExplicitlyOpened => return Ok(None),
            _ => return Err(ZoneError::InvalidTransition),
        };
        self.set_state(idx, ZoneState::ExplicitlyOpened);
        Ok(evicted)
    }

    fn close_zone(&mut self, idx: u32) -> Result<(), ZoneError> {
        match self.zones[idx as usize].state {
            ZoneState::ImplicitlyOpened | ZoneState::ExplicitlyOpened => {
                self.set_state(idx, ZoneState::Closed);
                Ok(())
            }
            ZoneState::Closed => Ok(()),
            _ => Err(ZoneError::InvalidTransition),
        }
    }

    fn finish_zone(&mut self, idx: u32, fx: &mut Effects) -> Result<(), ZoneError> {
        match self.zones[idx as usize].state {
            ZoneState::Empty
            | ZoneState::ImplicitlyOpened
            | ZoneState::ExplicitlyOpened
            | ZoneState::Closed => {}
            ZoneState::Full => return Ok(()),
            _ => return Err(ZoneError::InvalidTransition),
        }
        self.set_state(idx, ZoneState::Full);
        let zone_end = self.zones[idx as usize]
            .start
            .saturating_add(self.geom.zone_size);
        let full_at = self.zones[idx as usize]
            .start
            .saturating_add(self.geom.zone_capacity);
        let z = &mut self.zones[idx as usize];
        if zone_end > z.reserved {
            fx.zero.push((z.reserved, zone_end - z.reserved));
        }
        z.inflight.clear();
        z.committed = full_at;
        z.reserved = full_at;
        Ok(())
    }

    fn reset_zone(&mut self, idx: u32, fx: &mut Effects) -> Result<(), ZoneError> {
        match self.zones[idx as usize].state {
            ZoneState::Empty => return Ok(()),
            ZoneState::ImplicitlyOpened
            | ZoneState::ExplicitlyOpened
            | ZoneState::Closed
            | ZoneState::Full => {}
            _ => return Err(ZoneError::InvalidTransition),
        }
        self.set_state(idx, ZoneState::Empty);
        let z = &mut self.zones[idx as usize];
        z.inflight.clear();
        z.committed = z.start;
        z.reserved = z.start;
        z.attrs = ZoneAttrs::empty();
        fx.zero.push((z.start, self.geom.zone_size));
        Ok(())
    }

    /// Apply a management action with NVMe Select All semantics (scope per action as the spec).
    pub fn action_all(&mut self, action: ZoneAction) -> std::result::Result<Effects, ZoneError> {
        use ZoneState::*;
        let in_scope = |s: ZoneState| match action {
            ZoneAction::Close => matches!(s, ImplicitlyOpened | ExplicitlyOpened),
            ZoneAction::Finish => matches!(s, ImplicitlyOpened | ExplicitlyOpened | Closed),
            ZoneAction::Open => s == Closed,
            ZoneAction::Reset => matches!(s, ImplicitlyOpened | ExplicitlyOpened | Closed | Full),
            ZoneAction::Offline => s == ReadOnly,
        };
        let targets: Vec<u32> = (0..self.geom.nr_zones)
            .filter(|&i| {
                let z = &self.zones[i as usize];
                !z.conventional && in_scope(z.state)
            })
            .collect();
        if action == ZoneAction::Open && self.geom.max_open != 0 {
            // Implicitly opened zones can all be closed to make room; explicitly opened
            // ones stay. Closed zones already hold their active resource.
            let explicit = self.count_state(ExplicitlyOpened);
            let wanted = u32::try_from(targets.len()).unwrap_or(u32::MAX);
            if explicit.saturating_add(wanted) > self.geom.max_open {
                return Err(ZoneError::TooManyOpen);
            }
        }
        let mut fx = Effects::default();
        for idx in targets {
            let step = self.action(idx, action)?;
            fx.changed.extend(step.changed);
            fx.zero.extend(step.zero);
        }
        Ok(fx)
    }

    /// Set Zone Descriptor Extension: Empty -> Closed with ZDEV (needs an active resource).
    pub fn set_zde(&mut self, idx: u32) -> std::result::Result<Effects, ZoneError> {
        let z = self.zones.get(idx as usize).ok_or(ZoneError::OutOfRange)?;
        if z.conventional {
            return Err(ZoneError::Conventional);
        }
        if z.state != ZoneState::Empty {
            return Err(ZoneError::InvalidTransition);
        }
        self.check_active()?;
        self.set_state(idx, ZoneState::Closed);
        self.zones[idx as usize].attrs.insert(ZoneAttrs::ZDEV);
        Ok(Effects {
            changed: vec![idx],
            zero: Vec::new(),
        })
    }

    /// Force a zone read-only or offline (fault injection / admin tool).
    ///
    /// ReadOnly is reachable from every sequential state except Offline (which is final);
    /// Offline from every sequential state. Writes in flight to the zone are dropped (their
    /// completion is ignored). Other target states: InvalidTransition.
    pub fn force_state(
        &mut self,
        idx: u32,
        state: ZoneState,
    ) -> std::result::Result<Effects, ZoneError> {
        let z = self.zones.get(idx as usize).ok_or(ZoneError::OutOfRange)?;
        if z.conventional {
            return Err(ZoneError::Conventional);
        }
        match (z.state, state) {
            (s, t) if s == t && matches!(t, ZoneState::ReadOnly | ZoneState::Offline) => {
                return Ok(Effects::default())
            }
            (ZoneState::Offline, ZoneState::ReadOnly) => return Err(ZoneError::InvalidTransition),
            (_, ZoneState::ReadOnly | ZoneState::Offline) => {}
            _ => return Err(ZoneError::InvalidTransition),
        }
        let before = self.word(idx);
        self.set_state(idx, state);
        let z = &mut self.zones[idx as usize];
        z.inflight.clear();
        z.reserved = z.committed;
        let mut fx = Effects::default();
        if self.word(idx) != before {
            fx.changed.push(idx);
        }
        Ok(fx)
    }

    /// Moves zone `idx` to `new`, keeping the open/active counters in step.
    fn set_state(&mut self, idx: u32, new: ZoneState) {
        let z = &mut self.zones[idx as usize];
        let (was_open, was_active) = holds(z.state);
        let (is_open, is_active) = holds(new);
        z.state = new;
        self.nr_open = self.nr_open + u32::from(is_open) - u32::from(was_open);
        self.nr_active = self.nr_active + u32::from(is_active) - u32::from(was_active);
    }

    fn active_free(&self) -> bool {
        self.geom.max_active == 0 || self.nr_active < self.geom.max_active
    }

    fn check_active(&self) -> Result<(), ZoneError> {
        if self.active_free() {
            Ok(())
        } else {
            Err(ZoneError::TooManyActive)
        }
    }

    fn count_state(&self, state: ZoneState) -> u32 {
        let n = self.zones.iter().filter(|z| z.state == state).count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Makes sure one more zone may be opened, closing the least recently written
    /// implicitly opened zone if the open limit is reached (zones with nothing in flight
    /// first). The zone being opened is never ImplicitlyOpened here, so it is never picked.
    /// Closing a zone keeps it active, so the active count is unchanged by the eviction.
    fn make_open_room(&mut self) -> Result<Option<u32>, ZoneError> {
        if self.geom.max_open == 0 || self.nr_open < self.geom.max_open {
            return Ok(None);
        }
        let victim = self
            .zones
            .iter()
            .enumerate()
            .filter(|(_, z)| z.state == ZoneState::ImplicitlyOpened)
            .min_by_key(|(_, z)| (!z.inflight.is_empty(), z.last_write))
            .map(|(i, _)| i);
        let Some(victim) = victim.and_then(|v| u32::try_from(v).ok()) else {
            return Err(ZoneError::TooManyOpen);
        };
        self.set_state(victim, ZoneState::Closed);
        Ok(Some(victim))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ZoneState::*;

    const ZS: u64 = 4096;
    const CAP: u64 = 3072;
    const NZ: u32 = 8;

    fn geom(max_open: u32, max_active: u32) -> ZoneGeometry {
        ZoneGeometry {
            zone_size: ZS,
            zone_capacity: CAP,
            nr_zones: NZ,
            conventional_zones: 1,
            max_open,
            max_active,
        }
    }

    fn set(max_open: u32, max_active: u32) -> ZoneSet {
        let g = geom(max_open, max_active);
        g.validate(ZS * u64::from(NZ)).unwrap();
        ZoneSet::new(g)
    }

    fn start(i: u32) -> u64 {
        u64::from(i) * ZS
    }

    fn st(s: &ZoneSet, i: u32) -> ZoneState {
        s.info(i).state
    }

    /// Admits and completes a write of `len` bytes at the zone's write pointer.
    fn write(s: &mut ZoneSet, i: u32, len: u64) -> Result<Option<u32>, ZoneError> {
        let t = s.begin_write(s.reserved_wp(i), len)?;
        s.complete_write(&t, true);
        check(s);
        Ok(t.evicted)
    }

    /// Invariants that hold after every operation.
    fn check(s: &ZoneSet) {
        check_with(s, s.geometry().max_active);
    }

    /// Same, with an active limit raised by a rebuild above max_active.
    fn check_with(s: &ZoneSet, max_active: u32) {
        let g = *s.geometry();
        let mut open = 0;
        let mut active = 0;
        for i in 0..g.nr_zones {
            let z = &s.zones[i as usize];
            let inf = s.info(i);
            let (o, a) = holds(inf.state);
            open += u32::from(o);
            active += u32::from(a);
            assert!(z.committed <= z.reserved, "zone {i}: committed > reserved");
            if z.conventional {
                assert_eq!(inf.state, NotWritePointer);
                assert_eq!(z.committed, z.start);
                continue;
            }
            assert!(z.committed >= z.start && z.reserved <= z.start + g.zone_size);
            match inf.state {
                Empty => {
                    assert_eq!(z.reserved, z.start);
                    assert!(z.attrs.is_empty());
                }
                ImplicitlyOpened | ExplicitlyOpened | Closed => {
                    assert!(z.reserved < z.start + g.zone_capacity)
                }
                Full => assert!(z.reserved >= z.start + g.zone_capacity),
                _ => assert!(z.inflight.is_empty()),
            }
            let mut at = z.committed;
            for r in &z.inflight {
                assert_eq!(r.offset, at, "zone {i}: reservations not contiguous");
                at += r.len;
            }
            assert_eq!(at, z.reserved);
            assert!(!matches!(z.inflight.first(), Some(r) if r.done));
        }
        assert_eq!(s.counts(), (open, active), "counters drifted");
        if g.max_open != 0 {
            assert!(open <= g.max_open);
        }
        if max_active != 0 {
            assert!(active <= max_active);
        }
        let quiet = s.zones.iter().all(|z| z.inflight.is_empty());
        if quiet {
            round_trip(s);
        }
    }

    /// Rebuilding from the words gives the same zones, opened ones as Closed.
    fn round_trip(s: &ZoneSet) {
        let g = *s.geometry();
        let words: Vec<u64> = (0..g.nr_zones).map(|i| s.word(i)).collect();
        let r = ZoneSet::from_words(g, &words).unwrap();
        for i in 0..g.nr_zones {
            let (a, b) = (s.info(i), r.info(i));
            let expect = match a.state {
                ImplicitlyOpened | ExplicitlyOpened => Closed,
                x => x,
            };
            assert_eq!(b.state, expect, "zone {i} after restart");
            assert_eq!((b.wp, b.attrs), (a.wp, a.attrs), "zone {i} after restart");
            assert_eq!(r.word(i), words[i as usize]);
        }
        assert_eq!(r.counts(), (0, s.counts().1));
    }

    /// Puts zone `i` of a fresh-ish set into `state`.
    fn make(s: &mut ZoneSet, i: u32, state: ZoneState) {
        match state {
            Empty => {}
            ImplicitlyOpened => {
                write(s, i, 512).unwrap();
            }
            ExplicitlyOpened => {
                s.action(i, ZoneAction::Open).unwrap();
            }
            Closed => {
                write(s, i, 512).unwrap();
                s.action(i, ZoneAction::Close).unwrap();
            }
            Full => {
                s.action(i, ZoneAction::Finish).unwrap();
            }
            ReadOnly | Offline => {
                s.force_state(i, state).unwrap();
            }
            NotWritePointer => unreachable!(),
        }
        assert_eq!(st(s, i), state);
        check(s);
    }

    const SEQ_STATES: [ZoneState; 7] = [
        Empty,
        ImplicitlyOpened,
        ExplicitlyOpened,
        Closed,
        Full,
        ReadOnly,
        Offline,
    ];

    /// Runs `op` on zone 1 in every state and compares with the expected cell.
    fn table_row(
        op: impl Fn(&mut ZoneSet) -> Result<(), ZoneError>,
        cells: [Result<ZoneState, ZoneError>; 7],
    ) {
        for (from, cell) in SEQ_STATES.iter().zip(cells) {
            let mut s = set(0, 0);
            make(&mut s, 1, *from);
            let got = op(&mut s).map(|()| st(&s, 1));
            assert_eq!(got, cell, "from {from:?}");
            if got.is_err() {
                assert_eq!(st(&s, 1), *from, "failed op changed the state");
            }
            check(&s);
        }
    }

    // ---- Transition table (nvme essentials 6.2), one test per row ----

    #[test]
    fn table_6_2_write_row() {
        table_row(
            |s| s.begin_write(s.reserved_wp(1), 512).map(|_| ()),
            [
                Ok(ImplicitlyOpened),
                Ok(ImplicitlyOpened),
                Ok(ExplicitlyOpened),
                Ok(ImplicitlyOpened),
                Err(ZoneError::Full),
                Err(ZoneError::ReadOnly),
                Err(ZoneError::Offline),
            ],
        );
    }

    #[test]
    fn table_6_2_append_row() {
        table_row(
            |s| s.begin_append(start(1), 512).map(|_| ()),
            [
                Ok(ImplicitlyOpened),
                Ok(ImplicitlyOpened),
                Ok(ExplicitlyOpened),
                Ok(ImplicitlyOpened),
                Err(ZoneError::Full),
                Err(ZoneError::ReadOnly),
                Err(ZoneError::Offline),
            ],
        );
    }

    #[test]
    fn table_6_2_read_row() {
        let ok = |s: &mut ZoneSet| s.check_read(start(1), 512, false);
        table_row(
            ok,
            [
                Ok(Empty),
                Ok(ImplicitlyOpened),
                Ok(ExplicitlyOpened),
                Ok(Closed),
                Ok(Full),
                Ok(ReadOnly),
                Err(ZoneError::Offline),
            ],
        );
    }

    fn act(a: ZoneAction) -> impl Fn(&mut ZoneSet) -> Result<(), ZoneError> {
        move |s| s.action(1, a).map(|_| ())
    }

    #[test]
    fn table_6_2_open_row() {
        table_row(
            act(ZoneAction::Open),
            [
                Ok(ExplicitlyOpened),
                Ok(ExplicitlyOpened),
                Ok(ExplicitlyOpened),
                Ok(ExplicitlyOpened),
                Err(ZoneError::InvalidTransition),
                Err(ZoneError::InvalidTransition),
                Err(ZoneError::InvalidTransition),
            ],
        );
    }

    #[test]
    fn table_6_2_close_row() {
        table_row(
            act(ZoneAction::Close),
            [
                Err(ZoneError::InvalidTransition),
                Ok(Closed),
                Ok(Closed),
                Ok(Closed),
                Err(ZoneError::InvalidTransition),
                Err(ZoneError::InvalidTransition),
                Err(ZoneError::InvalidTransition),
            ],
        );
    }

    #[test]
    fn table_6_2_finish_row() {
        table_row(
            act(ZoneAction::Finish),
            [
                Ok(Full),
                Ok(Full),
                Ok(Full),
                Ok(Full),
                Ok(Full),
                Err(ZoneError::InvalidTransition),
                Err(ZoneError::InvalidTransition),
            ],
        );
    }

    #[test]
    fn table_6_2_reset_row() {
        table_row(
            act(ZoneAction::Reset),
            [
                Ok(Empty),
                Ok(Empty),
                Ok(Empty),
                Ok(Empty),
                Ok(Empty),
                Err(ZoneError::InvalidTransition),
                Err(ZoneError::InvalidTransition),
            ],
        );
    }

    #[test]
    fn table_6_2_offline_row() {
        let e = Err(ZoneError::InvalidTransition);
        table_row(
            act(ZoneAction::Offline),
            [e, e, e, e, e, Ok(Offline), Ok(Offline)],
        );
    }

    #[test]
    fn table_6_2_set_zde_row() {
        let e = Err(ZoneError::InvalidTransition);
        table_row(|s| s.set_zde(1).map(|_| ()), [Ok(Closed), e, e, e, e, e, e]);
    }

    #[test]
    fn force_read_only_from_every_state_but_offline() {
        let e = Err(ZoneError::InvalidTransition);
        let ro = Ok(ReadOnly);
        table_row(
            |s| s.force_state(1, ReadOnly).map(|_| ()),
            [ro, ro, ro, ro, ro, ro, e],
        );
        let off = Ok(Offline);
        table_row(
            |s| s.force_state(1, Offline).map(|_| ()),
            [off, off, off, off, off, off, off],
        );
        table_row(|s| s.force_state(1, Closed).map(|_| ()), [e; 7]);
    }

    #[test]
    fn wp_reaching_capacity_makes_zone_full_and_releases_resources() {
        let mut s = set(2, 3);
        write(&mut s, 1, 1024).unwrap();
        assert_eq!(s.counts(), (1, 1));
        let t = s.begin_write(start(1) + 1024, CAP - 1024).unwrap();
        // Full as soon as the reservation reaches the capacity.
        assert_eq!(st(&s, 1), Full);
        assert_eq!(s.counts(), (0, 0));
        assert_eq!(s.begin_write(start(1) + CAP, 512), Err(ZoneError::Full));
        assert_eq!(s.begin_append(start(1), 512), Err(ZoneError::Full));
        assert_eq!(s.info(1).wp, start(1) + 1024);
        assert!(s.complete_write(&t, true));
        assert_eq!(s.info(1).wp, start(1) + CAP);
        assert_eq!(s.word(1), start(1) + CAP);
        check(&s);
    }

    // ---- Write checks and their precedence (nvme essentials 6.4) ----

    #[test]
    fn write_6_4_out_of_range_first() {
        let mut s = set(0, 0);
        let end = start(NZ);
        assert_eq!(s.begin_write(end, 512), Err(ZoneError::OutOfRange));
        assert_eq!(s.begin_write(end - 512, 1024), Err(ZoneError::OutOfRange));
        assert_eq!(s.begin_write(u64::MAX, 2), Err(ZoneError::OutOfRange));
        assert_eq!(s.begin_append(end + ZS, 512), Err(ZoneError::OutOfRange));
        assert_eq!(s.begin_append(end - 512, 1024), Err(ZoneError::OutOfRange));
    }

    #[test]
    fn append_6_4_zslba_must_be_zone_start_before_state() {
        let mut s = set(0, 0);
        make(&mut s, 1, Full);
        assert_eq!(
            s.begin_append(start(1) + 512, 512),
            Err(ZoneError::NotZoneStart)
        );
        assert_eq!(s.begin_append(start(1), 512), Err(ZoneError::Full));
    }

    #[test]
    fn write_6_4_state_before_wp_check() {
        let mut s = set(0, 0);
        make(&mut s, 1, ReadOnly);
        make(&mut s, 2, Offline);
        assert_eq!(s.begin_write(start(1) + 512, 512), Err(ZoneError::ReadOnly));
        assert_eq!(s.begin_write(start(2) + 512, 512), Err(ZoneError::Offline));
    }

    #[test]
    fn write_6_4_wp_before_boundary() {
        let mut s = set(0, 0);
        write(&mut s, 1, 512).unwrap();
        assert_eq!(s.begin_write(start(1), 512), Err(ZoneError::InvalidWrite));
        assert_eq!(
            s.begin_write(start(1) + 1024, CAP),
            Err(ZoneError::InvalidWrite)
        );
        assert_eq!(s.begin_write(start(1) + 512, CAP), Err(ZoneError::Boundary));
        assert_eq!(s.begin_append(start(1), CAP), Err(ZoneError::Boundary));
    }

    #[test]
    fn write_6_4_boundary_before_resources() {
        let mut s = set(1, 1);
        write(&mut s, 1, 512).unwrap();
        s.action(1, ZoneAction::Open).unwrap();
        assert_eq!(s.begin_write(start(2), CAP + 512), Err(ZoneError::Boundary));
        assert_eq!(s.begin_write(start(2), 512), Err(ZoneError::TooManyActive));
    }

    #[test]
    fn write_must_stay_inside_capacity_and_zone() {
        let mut s = set(0, 0);
        assert_eq!(s.begin_write(start(1), CAP + 512), Err(ZoneError::Boundary));
        assert_eq!(s.begin_write(start(1), ZS + 512), Err(ZoneError::Boundary));
        assert_eq!(st(&s, 1), Empty);
        assert_eq!(s.counts(), (0, 0));
    }

    #[test]
    fn zero_length_write_is_refused_as_invalid_write() {
        let mut s = set(0, 0);
        assert_eq!(s.begin_write(start(1), 0), Err(ZoneError::InvalidWrite));
        assert_eq!(s.begin_append(start(1), 0), Err(ZoneError::InvalidWrite));
        assert_eq!(s.begin_write(start(NZ), 0), Err(ZoneError::OutOfRange));
        assert_eq!(st(&s, 1), Empty);
        check(&s);
    }

    #[test]
    fn append_lands_at_reserved_wp() {
        let mut s = set(0, 0);
        let a = s.begin_append(start(2), 512).unwrap();
        let b = s.begin_append(start(2), 1024).unwrap();
        assert_eq!((a.offset, b.offset), (start(2), start(2) + 512));
        assert_eq!(s.reserved_wp(2), start(2) + 1536);
        assert_eq!(s.info(2).wp, start(2));
        assert!(s.complete_write(&a, true));
        assert!(s.complete_write(&b, true));
        assert_eq!(s.info(2).wp, start(2) + 1536);
        check(&s);
    }

    #[test]
    fn conventional_zone_accepts_any_offset_and_refuses_management() {
        let mut s = set(1, 1);
        let t = s.begin_write(1024, 512).unwrap();
        assert!(!s.complete_write(&t, true));
        let t = s.begin_write(0, 512).unwrap();
        assert!(!s.complete_write(&t, false));
        assert_eq!(s.begin_write(ZS - 512, 1024), Err(ZoneError::Boundary));
        assert_eq!(s.begin_append(0, 512), Err(ZoneError::Conventional));
        assert_eq!(s.counts(), (0, 0));
        let i = s.info(0);
        assert_eq!(
            (i.state, i.ztype, i.wp),
            (NotWritePointer, ZoneType::Conventional, 0)
        );
        for a in [
            ZoneAction::Open,
            ZoneAction::Close,
            ZoneAction::Finish,
            ZoneAction::Reset,
            ZoneAction::Offline,
        ] {
            assert_eq!(s.action(0, a), Err(ZoneError::Conventional));
        }
        assert_eq!(s.set_zde(0), Err(ZoneError::Conventional));
        assert_eq!(s.force_state(0, ReadOnly), Err(ZoneError::Conventional));
        assert_eq!(s.word(0), word::CONVENTIONAL);
        check(&s);
    }

    #[test]
    fn bad_zone_index_is_out_of_range_for_actions() {
        let mut s = set(0, 0);
        assert_eq!(s.action(NZ, ZoneAction::Open), Err(ZoneError::OutOfRange));
        assert_eq!(s.set_zde(NZ), Err(ZoneError::OutOfRange));
        assert_eq!(s.force_state(NZ, Offline), Err(ZoneError::OutOfRange));
    }

    // ---- Resources (nvme essentials 6.3, bugs Z-15, Z-17, Z-18, Z-27, Z-28) ----

    #[test]
    fn z27_empty_zone_write_checks_active_even_with_open_slots() {
        let mut s = set(2, 2);
        write(&mut s, 1, 512).unwrap();
        s.action(1, ZoneAction::Close).unwrap();
        write(&mut s, 2, 512).unwrap();
        assert_eq!(s.counts(), (1, 2));
        assert_eq!(s.begin_write(start(3), 512), Err(ZoneError::TooManyActive));
        assert_eq!(s.action(3, ZoneAction::Open), Err(ZoneError::TooManyActive));
        // A Closed zone needs no new active resource.
        write(&mut s, 1, 512).unwrap();
        assert_eq!(s.counts(), (2, 2));
    }

    #[test]
    fn z28_closed_zone_write_evicts_when_active_limit_is_reached() {
        let mut s = set(1, 2);
        write(&mut s, 1, 512).unwrap();
        s.action(1, ZoneAction::Close).unwrap();
        write(&mut s, 2, 512).unwrap();
        assert_eq!(s.counts(), (1, 2));
        // Re-opening zone 1 keeps two active zones: zone 2 is evicted.
        assert_eq!(write(&mut s, 1, 512), Ok(Some(2)));
        assert_eq!((st(&s, 1), st(&s, 2)), (ImplicitlyOpened, Closed));
        assert_eq!(s.counts(), (1, 2));
        // Same for an explicit Open.
        assert_eq!(s.action(2, ZoneAction::Open).unwrap().changed, vec![1]);
        assert_eq!((st(&s, 1), st(&s, 2)), (Closed, ExplicitlyOpened));
        check(&s);
    }

    #[test]
    fn z17_only_explicitly_opened_zones_gives_too_many_open() {
        let mut s = set(2, 0);
        s.action(1, ZoneAction::Open).unwrap();
        s.action(2, ZoneAction::Open).unwrap();
        assert_eq!(s.begin_write(start(3), 512), Err(ZoneError::TooManyOpen));
        assert_eq!(s.action(3, ZoneAction::Open), Err(ZoneError::TooManyOpen));
        make(&mut s, 4, Empty);
        assert_eq!(s.set_zde(4).map(|_| st(&s, 4)), Ok(Closed));
        assert_eq!(s.begin_write(start(4), 512), Err(ZoneError::TooManyOpen));
        assert_eq!(s.counts(), (2, 3));
        assert_eq!(
            (st(&s, 1), st(&s, 2), st(&s, 3)),
            (ExplicitlyOpened, ExplicitlyOpened, Empty)
        );
        check(&s);
    }

    #[test]
    fn z15_explicit_open_of_empty_checks_the_open_limit() {
        let mut s = set(1, 0);
        s.action(1, ZoneAction::Open).unwrap();
        assert_eq!(s.action(2, ZoneAction::Open), Err(ZoneError::TooManyOpen));
        make(&mut s, 3, Full);
        assert_eq!(
            s.action(3, ZoneAction::Open),
            Err(ZoneError::InvalidTransition)
        );
        assert_eq!(s.counts(), (1, 1));
    }

    #[test]
    fn z18_finish_needs_no_resources() {
        let mut s = set(1, 1);
        s.action(1, ZoneAction::Open).unwrap();
        // Empty zone with no active resource left, then a Closed zone with no open one.
        assert_eq!(s.action(2, ZoneAction::Finish).map(|_| st(&s, 2)), Ok(Full));
        s.action(1, ZoneAction::Close).unwrap();
        s.action(1, ZoneAction::Finish).unwrap();
        assert_eq!(s.counts(), (0, 0));
        check(&s);
    }

    #[test]
    fn eviction_closes_least_recently_written_implicit_zone() {
        let mut s = set(2, 0);
        write(&mut s, 1, 512).unwrap();
        write(&mut s, 2, 512).unwrap();
        write(&mut s, 1, 512).unwrap();
        assert_eq!(write(&mut s, 3, 512), Ok(Some(2)));
        assert_eq!(write(&mut s, 4, 512), Ok(Some(1)));
        assert_eq!(write(&mut s, 3, 512), Ok(None));
        assert_eq!(write(&mut s, 2, 512), Ok(Some(4)));
        assert_eq!(
            (1..5).map(|i| st(&s, i)).collect::<Vec<_>>(),
            [Closed, ImplicitlyOpened, ImplicitlyOpened, Closed]
        );
        assert_eq!(s.counts(), (2, 4));
    }

    #[test]
    fn eviction_prefers_zones_without_writes_in_flight() {
        let mut s = set(2, 0);
        let t1 = s.begin_write(start(1), 512).unwrap();
        write(&mut s, 2, 512).unwrap();
        // Zone 1 is older but busy: zone 2 goes.
        let t3 = s.begin_write(start(3), 512).unwrap();
        assert_eq!(t3.evicted, Some(2));
        // Both remaining ones busy: the least recently written (zone 1) goes.
        let t4 = s.begin_write(start(4), 512).unwrap();
        assert_eq!(t4.evicted, Some(1));
        // The evicted zone stays Closed while its write completes.
        assert!(s.complete_write(&t1, true));
        assert_eq!((st(&s, 1), s.info(1).wp), (Closed, start(1) + 512));
        for t in [t3, t4] {
            assert!(s.complete_write(&t, true));
        }
        check(&s);
    }

    #[test]
    fn explicit_open_evicts_implicit_zone_but_never_explicit() {
        let mut s = set(2, 0);
        s.action(1, ZoneAction::Open).unwrap();
        write(&mut s, 2, 512).unwrap();
        let fx = s.action(3, ZoneAction::Open).unwrap();
        assert!(fx.changed.contains(&2));
        assert!(fx.changed.contains(&3));
        assert_eq!(
            (st(&s, 1), st(&s, 2), st(&s, 3)),
            (ExplicitlyOpened, Closed, ExplicitlyOpened)
        );
        assert_eq!(s.action(4, ZoneAction::Open), Err(ZoneError::TooManyOpen));
        assert_eq!(s.counts(), (2, 3));
    }

    #[test]
    fn implicit_to_explicit_open_uses_no_new_resource() {
        let mut s = set(1, 1);
        write(&mut s, 1, 512).unwrap();
        assert_eq!(s.action(1, ZoneAction::Open).unwrap(), Effects::default());
        assert_eq!((st(&s, 1), s.counts()), (ExplicitlyOpened, (1, 1)));
        // And explicitly opened zones do not go back to implicit on write.
        write(&mut s, 1, 512).unwrap();
        assert_eq!(st(&s, 1), ExplicitlyOpened);
    }

    // ---- Reserved vs committed write pointer ----

    #[test]
    fn completions_out_of_order_commit_contiguous_prefix() {
        let mut s = set(0, 0);
        let a = s.begin_write(start(1), 512).unwrap();
        let b = s.begin_write(start(1) + 512, 512).unwrap();
        let c = s.begin_write(start(1) + 1024, 512).unwrap();
        assert!(!s.complete_write(&c, true));
        assert!(!s.complete_write(&b, true));
        assert_eq!(s.info(1).wp, start(1));
        assert!(s.complete_write(&a, true));
        assert_eq!(s.info(1).wp, start(1) + 1536);
        // A second completion of the same ticket is ignored.
        assert!(!s.complete_write(&a, true));
        check(&s);
    }

    #[test]
    fn failed_last_write_rolls_back_and_returns_zone_to_empty() {
        let mut s = set(1, 1);
        let t = s.begin_write(start(1), 512).unwrap();
        assert_eq!(s.counts(), (1, 1));
        // The word changes (opened-at-start back to Empty) although the wp did not move.
        assert!(s.complete_write(&t, false));
        assert_eq!(s.word(1), start(1));
        assert_eq!(
            (st(&s, 1), s.reserved_wp(1), s.counts()),
            (Empty, start(1), (0, 0))
        );
        check(&s);
    }

    #[test]
    fn failed_last_write_rolls_back_reserved_wp_only() {
        let mut s = set(0, 0);
        write(&mut s, 1, 512).unwrap();
        let a = s.begin_write(start(1) + 512, 512).unwrap();
        let b = s.begin_write(start(1) + 1024, 512).unwrap();
        assert!(!s.complete_write(&b, false));
        assert_eq!(s.reserved_wp(1), start(1) + 1024);
        assert!(s.complete_write(&a, true));
        assert_eq!(
            (st(&s, 1), s.info(1).wp),
            (ImplicitlyOpened, start(1) + 1024)
        );
        // The next write goes where the failed one was.
        write(&mut s, 1, 512).unwrap();
        check(&s);
    }

    #[test]
    fn failed_write_that_is_not_last_becomes_committed_hole() {
        let mut s = set(0, 0);
        let a = s.begin_write(start(1), 512).unwrap();
        let b = s.begin_write(start(1) + 512, 512).unwrap();
        assert!(s.complete_write(&a, false));
        assert_eq!(s.info(1).wp, start(1) + 512);
        assert!(s.complete_write(&b, true));
        assert_eq!(s.info(1).wp, start(1) + 1024);
        check(&s);
    }

    #[test]
    fn failed_write_that_filled_zone_reopens_as_closed() {
        let mut s = set(0, 2);
        write(&mut s, 1, 512).unwrap();
        let t = s.begin_write(start(1) + 512, CAP - 512).unwrap();
        assert_eq!((st(&s, 1), s.counts()), (Full, (0, 0)));
        assert!(!s.complete_write(&t, false));
        assert_eq!((st(&s, 1), s.counts()), (Closed, (0, 1)));
        assert_eq!(s.reserved_wp(1), start(1) + 512);
        write(&mut s, 1, 512).unwrap();
        check(&s);
    }

    #[test]
    fn failed_write_that_filled_empty_zone_returns_it_to_empty() {
        let mut s = set(0, 1);
        let t = s.begin_write(start(1), CAP).unwrap();
        write(&mut s, 2, 512).unwrap();
        assert!(!s.complete_write(&t, false));
        assert_eq!((st(&s, 1), s.counts()), (Empty, (1, 1)));
        check(&s);
    }

    #[test]
    fn failed_write_that_filled_zone_stays_full_without_active_resource() {
        let mut s = set(0, 1);
        write(&mut s, 1, 512).unwrap();
        let t = s.begin_write(start(1) + 512, CAP - 512).unwrap();
        write(&mut s, 2, 512).unwrap();
        assert!(s.complete_write(&t, false));
        assert_eq!(
            (st(&s, 1), s.info(1).wp, s.counts()),
            (Full, start(1) + CAP, (1, 1))
        );
        check(&s);
    }

    // ---- Management side effects and decisions ----

    #[test]
    fn n4_close_with_wp_at_start_stays_closed_and_persists() {
        let mut s = set(0, 0);
        let fx = s.action(1, ZoneAction::Open).unwrap();
        assert_eq!(fx.changed, vec![1]);
        let fx = s.action(1, ZoneAction::Close).unwrap();
        assert_eq!(fx, Effects::default());
        assert_eq!((st(&s, 1), s.counts()), (Closed, (0, 1)));
        assert_eq!(
            s.word(1),
            start(1) | word::STATE_CLOSED << word::STATE_SHIFT
        );
        check(&s);
    }

    #[test]
    fn finish_zeroes_above_committed_wp_and_reports_word() {
        let mut s = set(0, 0);
        write(&mut s, 1, 1024).unwrap();
        let fx = s.action(1, ZoneAction::Finish).unwrap();
        assert_eq!(fx.zero, vec![(start(1) + 1024, ZS - 1024)]);
        assert_eq!(fx.changed, vec![1]);
        assert_eq!(s.info(1).wp, start(1) + CAP);
        assert_eq!(s.counts(), (0, 0));
        assert_eq!(s.action(1, ZoneAction::Finish).unwrap(), Effects::default());
        let fx = s.action(2, ZoneAction::Finish).unwrap();
        assert_eq!(fx.zero, vec![(start(2), ZS)]);
        check(&s);
    }

    #[test]
    fn reset_clears_wp_attributes_and_zeroes_zone() {
        let mut s = set(0, 0);
        s.set_zde(1).unwrap();
        write(&mut s, 1, 512).unwrap();
        let fx = s.action(1, ZoneAction::Reset).unwrap();
        assert_eq!(fx.zero, vec![(start(1), ZS)]);
        assert_eq!(fx.changed, vec![1]);
        let i = s.info(1);
        assert_eq!(
            (i.state, i.wp, i.attrs),
            (Empty, start(1), ZoneAttrs::empty())
        );
        assert_eq!(s.word(1), start(1));
        assert_eq!(s.action(1, ZoneAction::Reset).unwrap(), Effects::default());
        check(&s);
    }

    #[test]
    fn offline_action_and_forced_states_release_resources() {
        let mut s = set(0, 0);
        write(&mut s, 1, 512).unwrap();
        let fx = s.force_state(1, ReadOnly).unwrap();
        assert_eq!(fx.changed, vec![1]);
        assert_eq!(s.counts(), (0, 0));
        s.action(1, ZoneAction::Offline).unwrap();
        assert_eq!(s.word(1) >> word::STATE_SHIFT, word::STATE_OFFLINE);
        assert_eq!(s.check_read(start(1), 512, false), Err(ZoneError::Offline));
        check(&s);
    }

    #[test]
    fn close_keeps_writes_in_flight() {
        let mut s = set(0, 0);
        let t = s.begin_write(start(1), 512).unwrap();
        s.action(1, ZoneAction::Close).unwrap();
        assert!(s.complete_write(&t, true));
        assert_eq!((st(&s, 1), s.info(1).wp), (Closed, start(1) + 512));
        write(&mut s, 1, 512).unwrap();
        assert_eq!(s.info(1).wp, start(1) + 1024);
    }

    #[test]
    fn finish_and_reset_drop_writes_in_flight() {
        let mut s = set(0, 0);
        write(&mut s, 1, 512).unwrap();
        let t = s.begin_write(start(1) + 512, 512).unwrap();
        let fx = s.action(1, ZoneAction::Finish).unwrap();
        // Data already on its way is not zeroed.
        assert_eq!(fx.zero, vec![(start(1) + 1024, ZS - 1024)]);
        assert_eq!(s.in_flight(1), 0);
        assert!(!s.complete_write(&t, true));
        assert!(!s.complete_write(&t, false));
        assert_eq!((st(&s, 1), s.info(1).wp), (Full, start(1) + CAP));

        let t = s.begin_write(start(2), 512).unwrap();
        s.action(2, ZoneAction::Reset).unwrap();
        let u = s.begin_write(start(2), 512).unwrap();
        // The old ticket names the same range but is not mistaken for the new one.
        assert!(!s.complete_write(&t, true));
        assert_eq!(s.info(2).wp, start(2));
        assert!(s.complete_write(&u, true));
        check(&s);
    }

    #[test]
    fn set_zde_needs_an_active_resource() {
        let mut s = set(0, 1);
        let fx = s.set_zde(1).unwrap();
        assert_eq!(fx.changed, vec![1]);
        assert_eq!(s.info(1).attrs, ZoneAttrs::ZDEV);
        assert_eq!(
            s.word(1),
            start(1) | 1 << 58 | word::STATE_CLOSED << word::STATE_SHIFT
        );
        assert_eq!(s.set_zde(2), Err(ZoneError::TooManyActive));
        assert_eq!(s.counts(), (0, 1));
        check(&s);
    }

    // ---- Select All ----

    #[test]
    fn select_all_scopes_skip_conventional_and_other_states() {
        let mut s = set(0, 0);
        make(&mut s, 1, ImplicitlyOpened);
        make(&mut s, 2, ExplicitlyOpened);
        make(&mut s, 3, Closed);
        make(&mut s, 4, Full);
        make(&mut s, 5, ReadOnly);
        let fx = s.action_all(ZoneAction::Close).unwrap();
        let states = |s: &ZoneSet| (0..NZ).map(|i| st(s, i)).collect::<Vec<_>>();
        assert_eq!(states(&s)[1..6], [Closed, Closed, Closed, Full, ReadOnly]);
        // Zone 2 (opened, nothing written) already persisted as closed-at-start.
        assert_eq!(fx.changed, Vec::<u32>::new());
        s.action_all(ZoneAction::Open).unwrap();
        assert_eq!(states(&s)[1..4], [ExplicitlyOpened; 3]);
        let fx = s.action_all(ZoneAction::Finish).unwrap();
        assert_eq!(states(&s)[1..7], [Full, Full, Full, Full, ReadOnly, Empty]);
        assert_eq!(fx.changed, vec![1, 2, 3]);
        let fx = s.action_all(ZoneAction::Reset).unwrap();
        assert_eq!(states(&s)[1..6], [Empty, Empty, Empty, Empty, ReadOnly]);
        assert_eq!(fx.zero.len(), 4);
        s.action_all(ZoneAction::Offline).unwrap();
        assert_eq!(st(&s, 5), Offline);
        assert_eq!(st(&s, 0), NotWritePointer);
        check(&s);
    }

    #[test]
    fn select_all_open_is_atomic() {
        let mut s = set(2, 0);
        for i in 1..4 {
            make(&mut s, i, Closed);
        }
        let before: Vec<u64> = (0..NZ).map(|i| s.word(i)).collect();
        assert_eq!(s.action_all(ZoneAction::Open), Err(ZoneError::TooManyOpen));
        assert_eq!((1..4).map(|i| st(&s, i)).collect::<Vec<_>>(), [Closed; 3]);
        assert_eq!((0..NZ).map(|i| s.word(i)).collect::<Vec<_>>(), before);
        s.action(1, ZoneAction::Reset).unwrap();
        // Two Closed zones fit once the implicitly opened zone 4 is evicted.
        write(&mut s, 4, 512).unwrap();
        let fx = s.action_all(ZoneAction::Open).unwrap();
        assert!(fx.changed.contains(&4));
        assert_eq!(
            (1..5).map(|i| st(&s, i)).collect::<Vec<_>>(),
            [Empty, ExplicitlyOpened, ExplicitlyOpened, Closed]
        );
        check(&s);
    }

    #[test]
    fn select_all_open_counts_explicitly_opened_zones_before_changing_anything() {
        let mut s = set(2, 0);
        s.action(1, ZoneAction::Open).unwrap();
        make(&mut s, 2, Closed);
        make(&mut s, 3, Closed);
        assert_eq!(s.action_all(ZoneAction::Open), Err(ZoneError::TooManyOpen));
        assert_eq!(
            (1..4).map(|i| st(&s, i)).collect::<Vec<_>>(),
            [ExplicitlyOpened, Closed, Closed]
        );
        assert_eq!(s.counts(), (1, 3));
        check(&s);
    }

    // ---- Reads ----

    #[test]
    fn read_across_zones_needs_cross_and_no_offline_zone() {
        let mut s = set(0, 0);
        assert_eq!(
            s.check_read(ZS - 512, 1024, false),
            Err(ZoneError::Boundary)
        );
        assert_eq!(s.check_read(ZS - 512, 1024, true), Ok(()));
        make(&mut s, 2, Offline);
        assert_eq!(s.check_read(ZS, 2 * ZS, true), Err(ZoneError::Offline));
        assert_eq!(s.check_read(2 * ZS, 512, true), Err(ZoneError::Offline));
        assert_eq!(
            s.check_read(start(NZ) - 512, 1024, true),
            Err(ZoneError::OutOfRange)
        );
        assert_eq!(s.check_read(u64::MAX, 1, true), Err(ZoneError::OutOfRange));
        assert_eq!(s.check_read(ZS, 0, false), Ok(()));
    }

    // ---- Words (format B.6, B.7) ----

    #[test]
    fn word_encoding_b6() {
        let mut s = set(0, 0);
        assert_eq!(s.word(0), word::CONVENTIONAL);
        assert_eq!(s.word(1), start(1));
        write(&mut s, 1, 512).unwrap();
        assert_eq!(s.word(1), start(1) + 512);
        make(&mut s, 2, Full);
        assert_eq!(s.word(2), start(2) + CAP);
        make(&mut s, 3, ReadOnly);
        assert_eq!(s.word(3), start(3) | 0xD << 60);
        make(&mut s, 4, Offline);
        assert_eq!(s.word(4), start(4) | 0xF << 60);
        s.zones[5].attrs = ZoneAttrs::ZFC | ZoneAttrs::ZDEV;
        s.zones[5].state = Closed;
        s.zones[5].committed = start(5) + 512;
        assert_eq!(s.word(5), (start(5) + 512) | (1 << 51) | (1 << 58));
    }

    #[test]
    fn from_words_b7_derives_states_and_rebuilds_counters_z14() {
        let g = geom(0, 0);
        let words = [
            word::CONVENTIONAL,
            start(1),
            start(2) + 512,
            start(3) + CAP,
            start(4) + ZS,
            start(5) | 4 << 60 | 1 << 58,
            (start(6) + 1024) | (0xD << 60),
            start(7) | 0xF << 60,
        ];
        let s = ZoneSet::from_words(g, &words).unwrap();
        assert_eq!(
            (0..NZ).map(|i| st(&s, i)).collect::<Vec<_>>(),
            [
                NotWritePointer,
                Empty,
                Closed,
                Full,
                Full,
                Closed,
                ReadOnly,
                Offline
            ]
        );
        assert_eq!(s.counts(), (0, 2));
        assert_eq!(s.info(5).attrs, ZoneAttrs::ZDEV);
        assert_eq!(s.info(6).wp, start(6) + 1024);
        for i in 0..NZ {
            assert_eq!(s.word(i), words[i as usize]);
        }
        check(&s);
    }

    #[test]
    fn from_words_over_max_active_after_power_loss_opens_but_refuses_new_zones() {
        // Zone 1's last write was in flight (its resource went to zone 2) when power failed.
        let mut s = set(1, 1);
        write(&mut s, 1, 512).unwrap();
        let t = s.begin_write(start(1) + 512, CAP - 512).unwrap();
        write(&mut s, 2, 512).unwrap();
        let words: Vec<u64> = (0..NZ).map(|i| s.word(i)).collect();
        let _ = t;
        let mut r = ZoneSet::from_words(*s.geometry(), &words).unwrap();
        assert_eq!((st(&r, 1), st(&r, 2), r.counts()), (Closed, Closed, (0, 2)));
        assert_eq!(r.begin_write(start(3), 512), Err(ZoneError::TooManyActive));
        assert_eq!(r.set_zde(3), Err(ZoneError::TooManyActive));
        // Closed zones may still be written (one open at a time), and finishing frees room.
        let t = r.begin_write(start(1) + 512, 512).unwrap();
        assert!(r.complete_write(&t, true));
        assert_eq!(r.counts(), (1, 2));
        check_with(&r, 2);
        r.action(1, ZoneAction::Finish).unwrap();
        r.action(2, ZoneAction::Finish).unwrap();
        write(&mut r, 3, 512).unwrap();
        assert_eq!(r.counts(), (1, 1));
    }

    #[test]
    fn from_words_rejects_bad_words() {
        let g = geom(0, 0);
        let good: Vec<u64> = (0..NZ).map(|i| ZoneSet::new(g).word(i)).collect();
        let cases: [(usize, u64, &str); 9] = [
            (0, 0, "conventional"),
            (0, word::CONVENTIONAL | 512, "conventional"),
            (1, start(1) | word::CONVENTIONAL, "conventional flag"),
            (1, start(1) - 512, "outside"),
            (1, start(1) + ZS + 512, "outside"),
            (1, (start(1) + 512) | (4 << 60), "nibble"),
            (1, start(1) | 7 << 60, "unknown state nibble 0x7"),
            (1, start(1) | 1 << 58, "empty zone"),
            (1, (start(1) + 512) | (1 << 55), "attributes"),
        ];
        for (i, w, msg) in cases {
            let mut words = good.clone();
            words[i] = w;
            let err = ZoneSet::from_words(g, &words).unwrap_err();
            assert!(err.contains(&format!("zone {i}")), "{err}");
            assert!(err.contains(msg), "{err}");
        }
        assert!(ZoneSet::from_words(g, &good[1..]).is_err());
        let mut bad = g;
        bad.zone_size = 0;
        assert!(ZoneSet::from_words(bad, &good).is_err());
    }

    // ---- Geometry ----

    #[test]
    fn geometry_validation_names_field_and_value() {
        let disk = ZS * u64::from(NZ);
        let g = geom(2, 3);
        assert_eq!(g.validate(disk), Ok(()));
        let cases: [(ZoneGeometry, u64, &str); 12] = [
            (
                ZoneGeometry {
                    zone_size: 3 * 1024,
                    ..g
                },
                disk,
                "zone_size 3072",
            ),
            (
                ZoneGeometry {
                    zone_size: 256,
                    ..g
                },
                disk,
                "zone_size 256",
            ),
            (
                ZoneGeometry {
                    zone_capacity: 0,
                    ..g
                },
                disk,
                "zone_capacity 0",
            ),
            (
                ZoneGeometry {
                    zone_capacity: ZS + 512,
                    ..g
                },
                disk,
                "zone_capacity 4608",
            ),
            (
                ZoneGeometry {
                    zone_capacity: 1000,
                    ..g
                },
                disk,
                "zone_capacity 1000",
            ),
            (g, disk + 512, "not a multiple"),
            (g, disk + ZS, "nr_zones 8"),
            (
                ZoneGeometry {
                    conventional_zones: NZ,
                    ..g
                },
                disk,
                "conventional_zones 8",
            ),
            (ZoneGeometry { max_open: NZ, ..g }, disk, "max_open 8"),
            (
                ZoneGeometry {
                    max_active: NZ,
                    ..g
                },
                disk,
                "max_active 8",
            ),
            (
                ZoneGeometry { max_open: 4, ..g },
                disk,
                "max_open 4 exceeds max_active 3",
            ),
            (
                ZoneGeometry {
                    nr_zones: 1 << 31,
                    zone_size: 1 << 30,
                    ..g
                },
                1 << 61,
                "51-bit",
            ),
        ];
        for (g, disk, msg) in cases {
            let err = g.validate(disk).unwrap_err();
            assert!(err.contains(msg), "{err} (wanted {msg})");
        }
        assert_eq!(
            ZoneGeometry {
                max_open: 4,
                max_active: 0,
                ..g
            }
            .validate(disk),
            Ok(())
        );
        assert_eq!(
            ZoneGeometry {
                max_open: 0,
                max_active: 7,
                ..g
            }
            .validate(disk),
            Ok(())
        );
        assert_eq!(
            ZoneGeometry {
                zone_capacity: 512,
                ..g
            }
            .validate(disk),
            Ok(())
        );
    }

    #[test]
    fn zone_of_maps_offsets() {
        let s = set(0, 0);
        assert_eq!(s.zone_of(0), Some(0));
        assert_eq!(s.zone_of(ZS - 1), Some(0));
        assert_eq!(s.zone_of(ZS), Some(1));
        assert_eq!(s.zone_of(start(NZ)), None);
        let i = s.info(3);
        assert_eq!(
            (i.start, i.size, i.capacity, i.ztype),
            (start(3), ZS, CAP, ZoneType::SequentialWriteRequired)
        );
    }

    // ---- Property tests ----

    mod prop {
        use super::super::*;
        use super::{check_with, round_trip};
        use proptest::prelude::*;
        use ZoneState::*;

        const PZS: u64 = 4096;
        const PNZ: u32 = 6;
        const PCONV: u32 = 1;

        #[derive(Debug, Clone)]
        enum Op {
            /// Write of `blocks` sectors at: 0-1 the reserved wp, 2 wp + 512, 3 the zone start.
            Write {
                zone: u32,
                at: u8,
                blocks: u64,
            },
            Append {
                zone: u32,
                blocks: u64,
                misaligned: bool,
            },
            Action {
                zone: u32,
                action: ZoneAction,
            },
            All {
                action: ZoneAction,
            },
            SetZde {
                zone: u32,
            },
            Force {
                zone: u32,
                read_only: bool,
            },
            Restart,
        }

        fn action() -> impl Strategy<Value = ZoneAction> {
            prop_oneof![
                Just(ZoneAction::Close),
                Just(ZoneAction::Finish),
                Just(ZoneAction::Open),
                Just(ZoneAction::Reset),
                Just(ZoneAction::Offline),
            ]
        }

        fn op() -> impl Strategy<Value = Op> {
            let zone = 0..=PNZ;
            prop_oneof![
                6 => (zone.clone(), 0u8..4, 1u64..=4)
                    .prop_map(|(zone, at, blocks)| Op::Write { zone, at, blocks }),
                3 => (zone.clone(), 1u64..=4, prop::bool::weighted(0.1))
                    .prop_map(|(zone, blocks, misaligned)| Op::Append { zone, blocks, misaligned }),
                4 => (zone.clone(), action()).prop_map(|(zone, action)| Op::Action { zone, action }),
                2 => action().prop_map(|action| Op::All { action }),
                1 => zone.clone().prop_map(|zone| Op::SetZde { zone }),
                1 => (zone, prop::bool::weighted(0.7))
                    .prop_map(|(zone, read_only)| Op::Force { zone, read_only }),
                1 => Just(Op::Restart),
            ]
        }

        fn geometry() -> impl Strategy<Value = ZoneGeometry> {
            let seq = PNZ - PCONV;
            (0..=seq, 0..=seq, prop_oneof![Just(2048u64), Just(PZS)]).prop_map(
                move |(a, b, cap)| {
                    let (max_open, max_active) = if a != 0 && b != 0 {
                        (a.min(b), a.max(b))
                    } else {
                        (a, b)
                    };
                    ZoneGeometry {
                        zone_size: PZS,
                        zone_capacity: cap,
                        nr_zones: PNZ,
                        conventional_zones: PCONV,
                        max_open,
                        max_active,
                    }
                },
            )
        }

        /// Reference model: writes complete at once; counts are recomputed by scanning.
        #[derive(Debug, Clone)]
        struct Model {
            g: ZoneGeometry,
            st: Vec<ZoneState>,
            wp: Vec<u64>,
            zdev: Vec<bool>,
            lru: Vec<u64>,
            tick: u64,
        }

        impl Model {
            fn new(g: ZoneGeometry) -> Self {
                let n = g.nr_zones as usize;
                let st = (0..g.nr_zones)
                    .map(|i| {
                        if i < g.conventional_zones {
                            NotWritePointer
                        } else {
                            Empty
                        }
                    })
                    .collect();
                Model {
                    g,
                    st,
                    wp: (0..g.nr_zones)
                        .map(|i| u64::from(i) * g.zone_size)
                        .collect(),
                    zdev: vec![false; n],
                    lru: vec![0; n],
                    tick: 0,
                }
            }

            fn start(&self, i: usize) -> u64 {
                i as u64 * self.g.zone_size
            }

            fn count(&self, f: impl Fn(ZoneState) -> bool) -> u32 {
                self.st.iter().filter(|s| f(**s)).count() as u32
            }

            fn open(&self) -> u32 {
                self.count(|s| matches!(s, ImplicitlyOpened | ExplicitlyOpened))
            }

            fn active(&self) -> u32 {
                self.count(|s| matches!(s, ImplicitlyOpened | ExplicitlyOpened | Closed))
            }

            /// Resources for opening one more zone (and activating it if `activate`).
            fn room(&mut self, activate: bool) -> Result<(), ZoneError> {
                if activate && self.g.max_active != 0 && self.active() >= self.g.max_active {
                    return Err(ZoneError::TooManyActive);
                }
                if self.g.max_open != 0 && self.open() >= self.g.max_open {
                    let victim = (0..self.st.len())
                        .filter(|&i| self.st[i] == ImplicitlyOpened)
                        .min_by_key(|&i| self.lru[i])
                        .ok_or(ZoneError::TooManyOpen)?;
                    self.st[victim] = Closed;
                }
                Ok(())
            }

            fn write(&mut self, off: u64, len: u64, append: bool) -> Result<u64, ZoneError> {
                let disk = u64::from(self.g.nr_zones) * self.g.zone_size;
                if off + len > disk {
                    return Err(ZoneError::OutOfRange);
                }
                let i = (off / self.g.zone_size) as usize;
                let start = self.start(i);
                if append && off != start {
                    return Err(ZoneError::NotZoneStart);
                }
                if self.st[i] == NotWritePointer {
                    if append {
                        return Err(ZoneError::Conventional);
                    }
                    if off + len > start + self.g.zone_size {
                        return Err(ZoneError::Boundary);
                    }
                    return Ok(off);
                }
                match self.st[i] {
                    Full => return Err(ZoneError::Full),
                    ReadOnly => return Err(ZoneError::ReadOnly),
                    Offline => return Err(ZoneError::Offline),
                    _ => {}
                }
                let at = if append { self.wp[i] } else { off };
                if at != self.wp[i] {
                    return Err(ZoneError::InvalidWrite);
                }
                if at + len > start + self.g.zone_capacity {
                    return Err(ZoneError::Boundary);
                }
                match self.st[i] {
                    Empty => self.room(true)?,
                    Closed => self.room(false)?,
                    _ => {}
                }
                if matches!(self.st[i], Empty | Closed) {
                    self.st[i] = ImplicitlyOpened;
                }
                self.tick += 1;
                self.lru[i] = self.tick;
                self.wp[i] += len;
                if self.wp[i] == start + self.g.zone_capacity {
                    self.st[i] = Full;
                }
                Ok(at)
            }

            fn action(&mut self, i: usize, a: ZoneAction) -> Result<(), ZoneError> {
                if i >= self.st.len() {
                    return Err(ZoneError::OutOfRange);
                }
                if self.st[i] == NotWritePointer {
                    return Err(ZoneError::Conventional);
                }
                let s = self.st[i];
                let bad = Err(ZoneError::InvalidTransition);
                match a {
                    ZoneAction::Open => match s {
                        Empty => self.room(true)?,
                        Closed => self.room(false)?,
                        ImplicitlyOpened | ExplicitlyOpened => {}
                        _ => return bad,
                    },
                    ZoneAction::Close => match s {
                        ImplicitlyOpened | ExplicitlyOpened | Closed => {}
                        _ => return bad,
                    },
                    ZoneAction::Finish => match s {
                        Empty | ImplicitlyOpened | ExplicitlyOpened | Closed | Full => {}
                        _ => return bad,
                    },
                    ZoneAction::Reset => match s {
                        Empty | ImplicitlyOpened | ExplicitlyOpened | Closed | Full => {}
                        _ => return bad,
                    },
                    ZoneAction::Offline => match s {
                        ReadOnly | Offline => {}
                        _ => return bad,
                    },
                }
                let start = self.start(i);
                match a {
                    ZoneAction::Open => self.st[i] = ExplicitlyOpened,
                    ZoneAction::Close => self.st[i] = Closed,
                    ZoneAction::Finish => {
                        self.st[i] = Full;
                        self.wp[i] = self.wp[i].max(start + self.g.zone_capacity);
                    }
                    ZoneAction::Reset => {
                        self.st[i] = Empty;
                        self.wp[i] = start;
                        self.zdev[i] = false;
                    }
                    ZoneAction::Offline => self.st[i] = Offline,
                }
                Ok(())
            }

            fn all(&mut self, a: ZoneAction) -> Result<(), ZoneError> {
                let scope: &[ZoneState] = match a {
                    ZoneAction::Close => &[ImplicitlyOpened, ExplicitlyOpened],
                    ZoneAction::Finish => &[ImplicitlyOpened, ExplicitlyOpened, Closed],
                    ZoneAction::Open => &[Closed],
                    ZoneAction::Reset => &[ImplicitlyOpened, ExplicitlyOpened, Closed, Full],
                    ZoneAction::Offline => &[ReadOnly],
                };
                let targets: Vec<usize> = (0..self.st.len())
                    .filter(|&i| scope.contains(&self.st[i]))
                    .collect();
                if a == ZoneAction::Open
                    && self.g.max_open != 0
                    && self.count(|s| s == ExplicitlyOpened) + targets.len() as u32
                        > self.g.max_open
                {
                    return Err(ZoneError::TooManyOpen);
                }
                for i in targets {
                    self.action(i, a).expect("select all step");
                }
                Ok(())
            }

            fn set_zde(&mut self, i: usize) -> Result<(), ZoneError> {
                match self.st.get(i) {
                    None => Err(ZoneError::OutOfRange),
                    Some(NotWritePointer) => Err(ZoneError::Conventional),
                    Some(Empty) => {
                        if self.g.max_active != 0 && self.active() >= self.g.max_active {
                            return Err(ZoneError::TooManyActive);
                        }
                        self.st[i] = Closed;
                        self.zdev[i] = true;
                        Ok(())
                    }
                    Some(_) => Err(ZoneError::InvalidTransition),
                }
            }

            fn force(&mut self, i: usize, to: ZoneState) -> Result<(), ZoneError> {
                match self.st.get(i) {
                    None => Err(ZoneError::OutOfRange),
                    Some(NotWritePointer) => Err(ZoneError::Conventional),
                    Some(Offline) if to == ReadOnly => Err(ZoneError::InvalidTransition),
                    Some(_) => {
                        self.st[i] = to;
                        Ok(())
                    }
                }
            }

            fn restart(&mut self) {
                for s in &mut self.st {
                    if matches!(s, ImplicitlyOpened | ExplicitlyOpened) {
                        *s = Closed;
                    }
                }
            }
        }

        fn compare(s: &ZoneSet, m: &Model) {
            for i in 0..m.g.nr_zones {
                let inf = s.info(i);
                let k = i as usize;
                assert_eq!(inf.state, m.st[k], "zone {i} state");
                assert_eq!(inf.wp, m.wp[k], "zone {i} wp");
                assert_eq!(
                    inf.attrs.contains(ZoneAttrs::ZDEV),
                    m.zdev[k],
                    "zone {i} zdev"
                );
            }
            assert_eq!(s.counts(), (m.open(), m.active()));
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            /// Synchronous I/O: the state machine agrees with the reference model step by step.
            #[test]
            fn matches_reference_model(g in geometry(), ops in prop::collection::vec(op(), 1..60)) {
                let mut s = ZoneSet::new(g);
                let mut m = Model::new(g);
                for op in ops {
                    match op {
                        Op::Write { zone, at, blocks } => {
                            let base = if zone < g.nr_zones { s.reserved_wp(zone) } else { u64::from(zone) * PZS };
                            let off = match at {
                                0 | 1 => base,
                                2 => base + 512,
                                _ => u64::from(zone) * PZS,
                            };
                            let len = blocks * 512;
                            let want = m.write(off, len, false);
                            let got = s.begin_write(off, len);
                            prop_assert_eq!(got.as_ref().map(|t| t.offset).map_err(|e| *e), want);
                            if let Ok(t) = got {
                                s.complete_write(&t, true);
                            }
                        }
                        Op::Append { zone, blocks, misaligned } => {
                            let off = u64::from(zone) * PZS + if misaligned { 512 } else { 0 };
                            let len = blocks * 512;
                            let want = m.write(off, len, true);
                            let got = s.begin_append(off, len);
                            prop_assert_eq!(got.as_ref().map(|t| t.offset).map_err(|e| *e), want);
                            if let Ok(t) = got {
                                s.complete_write(&t, true);
                            }
                        }
                        Op::Action { zone, action } => {
                            let want = m.action(zone as usize, action);
                            prop_assert_eq!(s.action(zone, action).map(|_| ()), want);
                        }
                        Op::All { action } => {
                            let want = m.all(action);
                            prop_assert_eq!(s.action_all(action).map(|_| ()), want);
                        }
                        Op::SetZde { zone } => {
                            let want = m.set_zde(zone as usize);
                            prop_assert_eq!(s.set_zde(zone).map(|_| ()), want);
                        }
                        Op::Force { zone, read_only } => {
                            let to = if read_only { ReadOnly } else { Offline };
                            let want = m.force(zone as usize, to);
                            prop_assert_eq!(s.force_state(zone, to).map(|_| ()), want);
                        }
                        Op::Restart => {
                            let words: Vec<u64> = (0..g.nr_zones).map(|i| s.word(i)).collect();
                            s = ZoneSet::from_words(g, &words).unwrap();
                            m.restart();
                        }
                    }
                    compare(&s, &m);
                    check_with(&s, g.max_active);
                }
            }

            /// Writes in flight, completed out of order, some failing, mixed with management
            /// and power losses: invariants hold, and every word set rebuilds.
            #[test]
            fn invariants_with_writes_in_flight(
                g in geometry(),
                ops in prop::collection::vec((op(), any::<prop::sample::Index>(), 0u8..8), 1..80),
            ) {
                let mut s = ZoneSet::new(g);
                let mut tickets: Vec<WriteTicket> = Vec::new();
                // A rebuild may come back above max_active; the machine never adds to that.
                let mut limit = g.max_active;
                for (op, pick, roll) in ops {
                    let before = s.counts().1;
                    let mut restarted = false;
                    // roll 0-2: complete a ticket instead (roll 0: as a failure).
                    if roll < 3 && !tickets.is_empty() {
                        let t = tickets.remove(pick.index(tickets.len()));
                        let (wp, word) = (s.info(t.zone).wp, s.word(t.zone));
                        let moved = s.complete_write(&t, roll != 0);
                        let new_wp = s.info(t.zone).wp;
                        prop_assert!(new_wp >= wp, "committed wp went back");
                        prop_assert_eq!(moved, s.word(t.zone) != word);
                        if new_wp != wp {
                            prop_assert!(moved);
                        }
                        if moved && new_wp == wp {
                            // Only a rollback changes the word without moving the wp.
                            prop_assert_eq!(roll, 0);
                        }
                    } else {
                        match op {
                            Op::Write { zone, at, blocks } if zone < g.nr_zones => {
                                let off = if at == 3 { u64::from(zone) * PZS } else { s.reserved_wp(zone) };
                                if let Ok(t) = s.begin_write(off, blocks * 512) {
                                    tickets.push(t);
                                }
                            }
                            Op::Write { .. } => {}
                            Op::Append { zone, blocks, .. } => {
                                if let Ok(t) = s.begin_append(u64::from(zone) * PZS, blocks * 512) {
                                    tickets.push(t);
                                }
                            }
                            Op::Action { zone, action } => {
                                let _ = s.action(zone, action);
                            }
                            Op::All { action } => {
                                let _ = s.action_all(action);
                            }
                            Op::SetZde { zone } => {
                                let _ = s.set_zde(zone);
                            }
                            Op::Force { zone, read_only } => {
                                let _ = s.force_state(zone, if read_only { ReadOnly } else { Offline });
                            }
                            Op::Restart => {
                                let words: Vec<u64> = (0..g.nr_zones).map(|i| s.word(i)).collect();
                                s = ZoneSet::from_words(g, &words).unwrap();
                                tickets.clear();
                                restarted = true;
                                if g.max_active != 0 {
                                    limit = limit.max(s.counts().1);
                                }
                            }
                        }
                    }
                    let after = s.counts().1;
                    if g.max_active != 0 && after > g.max_active && !restarted {
                        prop_assert!(after <= before.max(g.max_active), "active grew past the limit");
                    }
                    check_with(&s, limit);
                    // A power loss right now must leave an image that opens.
                    let words: Vec<u64> = (0..g.nr_zones).map(|i| s.word(i)).collect();
                    prop_assert!(ZoneSet::from_words(g, &words).is_ok());
                    if tickets.is_empty() {
                        round_trip(&s);
                    }
                }
            }
        }
    }
}
