//! Zoned qcow2 images: a qcow2 v3 implementation with the zoned-format extension,
//! a pure zone state machine, and the persistence ordering that keeps write pointers
//! behind durable data.
#![deny(missing_docs)]

pub mod check;
mod create;
mod dataio;
pub mod header;
pub mod image;
mod mapped;
mod meta;
pub mod options;
pub mod qcow2;
pub mod storage;
pub mod zone;

pub use check::{check_image, CheckReport};
pub use image::{
    CacheMode, CreateOptions, Error, ImageInfo, ImgResult, OpenOptions, PendingWrite, ZoneOptions,
    ZonedImage,
};
pub use qcow2::Qcow2;
pub use storage::{FileStorage, MemStorage, Storage};
pub use zone::{
    Effects, WriteTicket, ZoneAction, ZoneAttrs, ZoneError, ZoneGeometry, ZoneInfo, ZoneSet,
    ZoneState, ZoneType,
};
