//! Pure zone state machine: no I/O, no locks, no clock.
//!
//! Units are bytes on the virtual disk (the NVMe layer converts LBAs).
//! API CONTRACT (fixed; other crates code against it). Bodies are to be written.

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

/// The zones of one zoned device with their open/active accounting.
#[derive(Debug, Clone)]
pub struct ZoneSet {
    // private fields chosen by the implementer
    _private: (),
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

impl ZoneGeometry {
    /// Checks every rule (power of two, capacity, limits, counts) given the virtual disk size.
    /// Error text names the field and the value.
    pub fn validate(&self, disk_size: u64) -> std::result::Result<(), String> {
        let _ = disk_size;
        todo!()
    }
}

impl ZoneSet {
    /// Fresh set: every sequential zone Empty.
    pub fn new(geom: ZoneGeometry) -> Self {
        let _ = geom;
        todo!()
    }
    /// Rebuild from persisted words (one per zone). Open zones come back Closed; counters rebuilt.
    /// Errors name the zone and the bad value (wp outside its zone, conventional flag mismatch...).
    pub fn from_words(geom: ZoneGeometry, words: &[u64]) -> std::result::Result<Self, String> {
        let _ = (geom, words);
        todo!()
    }
    /// Persisted word of zone `idx` (committed wp).
    pub fn word(&self, idx: u32) -> u64 {
        let _ = idx;
        todo!()
    }
    /// Geometry.
    pub fn geometry(&self) -> &ZoneGeometry {
        todo!()
    }
    /// Zone info for `idx` (panics if idx >= nr_zones: caller bug).
    pub fn info(&self, idx: u32) -> ZoneInfo {
        let _ = idx;
        todo!()
    }
    /// Index of the zone holding byte `offset`, None past the end.
    pub fn zone_of(&self, offset: u64) -> Option<u32> {
        let _ = offset;
        todo!()
    }
    /// Open (implicit + explicit) and active (open + closed) counts.
    pub fn counts(&self) -> (u32, u32) {
        todo!()
    }
    /// Checks a read of `len` bytes at `offset` (offline zones, range). Reads may cross
    /// zone boundaries only if `cross` is set.
    pub fn check_read(&self, offset: u64, len: u64, cross: bool) -> std::result::Result<(), ZoneError> {
        let _ = (offset, len, cross);
        todo!()
    }
    /// Reserve a write at `offset` (must equal the zone's reserved write pointer for sequential
    /// zones; conventional zones accept any offset). Implicitly opens, evicting the LRU
    /// implicitly-opened zone when needed. Error precedence as NVMe (state, wp, boundary, resources).
    pub fn begin_write(&mut self, offset: u64, len: u64) -> std::result::Result<WriteTicket, ZoneError> {
        let _ = (offset, len);
        todo!()
    }
    /// Reserve an append of `len` bytes to the zone starting at `zone_start`.
    pub fn begin_append(&mut self, zone_start: u64, len: u64) -> std::result::Result<WriteTicket, ZoneError> {
        let _ = (zone_start, len);
        todo!()
    }
    /// Finish a reservation. `ok == false`: the data I/O failed. Returns true when the committed
    /// write pointer moved (the zone word needs persisting). Zone becomes Full at capacity.
    pub fn complete_write(&mut self, ticket: &WriteTicket, ok: bool) -> bool {
        let _ = (ticket, ok);
        todo!()
    }
    /// Apply a management action to one zone (by index).
    pub fn action(&mut self, idx: u32, action: ZoneAction) -> std::result::Result<Effects, ZoneError> {
        let _ = (idx, action);
        todo!()
    }
    /// Apply a management action with NVMe Select All semantics (scope per action as the spec).
    pub fn action_all(&mut self, action: ZoneAction) -> std::result::Result<Effects, ZoneError> {
        let _ = action;
        todo!()
    }
    /// Set Zone Descriptor Extension: Empty -> Closed with ZDEV (needs an active resource).
    pub fn set_zde(&mut self, idx: u32) -> std::result::Result<Effects, ZoneError> {
        let _ = idx;
        todo!()
    }
    /// Force a zone read-only or offline (fault injection / admin tool).
    pub fn force_state(&mut self, idx: u32, state: ZoneState) -> std::result::Result<Effects, ZoneError> {
        let _ = (idx, state);
        todo!()
    }
}
