//! The pieces of device state shared by the vfio-user thread and the pollers, and the
//! controller interface the transport drives.
//!
//! Lock order (outer to inner): backend config (owned by the vfio-user thread, no lock) →
//! `GuestRam` table lock (held only to clone/replace an `Arc`) → `IrqState` mutexes. Pollers
//! never hold a lock while calling into the controller except what the controller takes
//! internally.

use crate::bar::DoorbellPage;
use crate::dma::GuestRam;
use crate::irq::IrqState;
use nvme::{HostEnv, RegEffect};
use std::sync::Arc;

/// What the transport needs from an NVMe controller. Implemented by [`nvme::Controller`];
/// tests may plug in a fake to exercise the transport alone.
pub trait NvmeDevice: Send + Sync {
    /// Read a BAR0 register (offset < 0x1000).
    fn mmio_read(&self, offset: u64, data: &mut [u8]);
    /// Write a BAR0 register (offset < 0x1000).
    fn mmio_write(&self, env: &HostEnv<'_>, offset: u64, data: &[u8]) -> RegEffect;
    /// Process the admin queue; number of commands completed.
    fn process_admin(&self, env: &HostEnv<'_>) -> usize;
    /// Process I/O queues of poller `poller` out of `pollers`; number of commands completed.
    fn process_io(&self, env: &HostEnv<'_>, poller: usize, pollers: usize) -> usize;
    /// CSTS.RDY.
    fn ready(&self) -> bool;
    /// Controller-level reset (device reset / client gone).
    fn reset(&self, env: &HostEnv<'_>);
    /// Make completed writes durable (flush the image).
    fn flush(&self) -> std::io::Result<()>;
    /// Register the function that wakes the poller owning an I/O queue when a command of
    /// that queue finished on an I/O thread (controllers without I/O threads ignore it).
    fn set_completion_notifier(&self, f: Box<dyn Fn(u16) + Send + Sync>) {
        let _ = f;
    }
}

impl NvmeDevice for nvme::Controller {
    fn mmio_read(&self, offset: u64, data: &mut [u8]) {
        nvme::Controller::mmio_read(self, offset, data);
    }
    fn mmio_write(&self, env: &HostEnv<'_>, offset: u64, data: &[u8]) -> RegEffect {
        nvme::Controller::mmio_write(self, env, offset, data)
    }
    fn process_admin(&self, env: &HostEnv<'_>) -> usize {
        nvme::Controller::process_admin(self, env)
    }
    fn process_io(&self, env: &HostEnv<'_>, poller: usize, pollers: usize) -> usize {
        nvme::Controller::process_io(self, env, poller, pollers)
    }
    fn ready(&self) -> bool {
        nvme::Controller::ready(self)
    }
    fn reset(&self, env: &HostEnv<'_>) {
        nvme::Controller::reset(self, env);
    }
    fn flush(&self) -> std::io::Result<()> {
        nvme::Controller::flush(self).map_err(std::io::Error::other)
    }
    fn set_completion_notifier(&self, f: Box<dyn Fn(u16) + Send + Sync>) {
        nvme::Controller::set_completion_notifier(self, f);
    }
}

/// Shared device state.
pub struct Device {
    /// The controller.
    pub ctrl: Arc<dyn NvmeDevice>,
    /// Guest memory (DMA maps).
    pub ram: GuestRam,
    /// BAR0 doorbell page.
    pub doorbells: DoorbellPage,
    /// Interrupts.
    pub irq: IrqState,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("doorbells", &self.doorbells)
            .field("irq", &self.irq)
            .finish_non_exhaustive()
    }
}

impl Device {
    /// The host environment to pass to controller calls.
    pub fn env(&self) -> HostEnv<'_> {
        HostEnv {
            mem: &self.ram,
            doorbells: &self.doorbells,
            irq: &self.irq,
            raise_every: nvme::RAISE_EVERY,
        }
    }
}
