//! znsd: a vfio-user server exposing an [`nvme::Controller`] (one Zoned Namespace backed by a
//! zoned qcow2 image) as a PCI NVMe function to a VMM such as QEMU (`vfio-user-pci`).
//!
//! Modules, one concern each:
//! * [`dma`]: guest memory (the only `unsafe` code): DMA_MAP mmaps and the IOVA table.
//! * [`pci`]: config space.
//! * [`bar`]: BAR0 layout, the doorbell page, region table.
//! * [`irq`]: SET_IRQS and interrupt delivery.
//! * [`poller`]: admin and I/O poller threads.
//! * [`device`]: shared device state and the controller interface.
//! * [`backend`]: the `vfio_user::ServerBackend` adapter.
//! * [`server`]: listener thread, reconnects, shutdown.
//! * [`cli`]: command line.
#![deny(missing_docs)]

pub mod backend;
pub mod bar;
pub mod cli;
pub mod device;
pub mod dma;
pub mod irq;
pub mod pci;
pub mod poller;
pub mod server;

pub use device::{Device, NvmeDevice};
pub use server::{start, Running, ServeError, ServerOptions};
