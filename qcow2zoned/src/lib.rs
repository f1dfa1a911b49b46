//! Zoned qcow2 images: a qcow2 v3 implementation with the zoned-format extension,
//! a pure zone state machine, and the persistence ordering that keeps write pointers
//! behind durable data.
#![deny(missing_docs)]

pub mod image;
pub mod zone;

pub use image::{
    CacheMode, CreateOptions, Error, ImageInfo, ImgResult, OpenOptions, ZoneOptions, ZonedImage,
};
pub use zone::{
    Effects, WriteTicket, ZoneAction, ZoneAttrs, ZoneError, ZoneGeometry, ZoneInfo, ZoneSet,
    ZoneState, ZoneType,
};
