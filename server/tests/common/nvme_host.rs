//! NVMe host helpers (filled when the nvme crate lands).
