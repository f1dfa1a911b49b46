//! The `vfio_user::ServerBackend`: a thin adapter from vfio-user messages to device state.
//!
//! Rules (see the vfio-user notes, section 2): callbacks never block for long and never
//! return `Err` for conditions a guest or client can cause - the crate would send an error
//! reply with errno 0, which QEMU takes as success (or, for region reads, as a failed access
//! while its own client code then blocks for data that never comes). Bad accesses read as
//! all-ones / zero and writes are dropped, like hardware. Every access is checked for region
//! index, offset + length and width here, because the crate does not.

use crate::bar::{self, region, Bar0Access};
use crate::device::Device;
use crate::pci::{command, msix_ctl, ConfigSpace, CONFIG_SIZE};
use crate::poller::Pollers;
use std::fs::File;
use std::sync::Arc;
use vfio_bindings::bindings::vfio::VFIO_DMA_UNMAP_FLAG_ALL;
use vfio_user::{DmaMapFlags, DmaUnmapFlags, ServerBackend};

/// Backend state owned by the vfio-user thread.
pub struct Backend {
    dev: Arc<Device>,
    pollers: Arc<Pollers>,
    config: ConfigSpace,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Backend {
    /// Backend over `dev`, waking `pollers` on trapped doorbells.
    pub fn new(dev: Arc<Device>, pollers: Arc<Pollers>) -> Self {
        let config = ConfigSpace::new(dev.irq.vectors());
        Backend {
            dev,
            pollers,
            config,
        }
    }

    /// The shared device.
    pub fn device(&self) -> &Arc<Device> {
        &self.dev
    }

    fn sync_irq_from_config(&self) {
        let ctl = self.config.msix_control();
        self.dev
            .irq
            .set_msix_control(ctl & msix_ctl::ENABLE != 0, ctl & msix_ctl::MASK != 0);
        self.dev
            .irq
            .set_intx_disabled(self.config.command() & command::INTX_DISABLE != 0);
    }

    /// Controller reset with pollers stopped: DEVICE_RESET, FLR.
    fn device_reset(&mut self) {
        let quiet = self.pollers.quiesce();
        let env = self.dev.env();
        self.dev.ctrl.reset(&env);
        nvme::Doorbells::clear(&self.dev.doorbells);
        self.config.reset();
        self.sync_irq_from_config();
        if !quiet {
            tracing::warn!("Reset done while a poller was still busy");
        }
        self.pollers.resume();
    }

    /// The client went away: drop its DMA maps and eventfds, reset the controller, flush the
    /// image. Device state that belongs to the device (zones, data) stays.
    pub fn disconnect(&mut self) {
        let _ = self.pollers.quiesce();
        let maps = self.dev.ram.clear();
        self.dev.irq.clear();
        let env = self.dev.env();
        self.dev.ctrl.reset(&env);
        nvme::Doorbells::clear(&self.dev.doorbells);
        if let Err(e) = self.dev.ctrl.flush() {
            tracing::error!(error = %e, "Image flush after disconnect failed");
        }
        self.config.reset();
        self.pollers.resume();
        tracing::info!(
            maps,
            "Client state dropped, controller reset, image flushed"
        );
    }

    fn bar0_read(&self, offset: u64, data: &mut [u8]) {
        match bar::classify(offset, data.len()) {
            Bar0Access::Register => self.dev.ctrl.mmio_read(offset, data),
            Bar0Access::Doorbell { .. } => {
                data.copy_from_slice(&self.dev.doorbells.load(offset).to_le_bytes());
            }
            Bar0Access::Invalid(reason) => {
                tracing::debug!(offset, len = data.len(), reason, "BAR0 read refused");
                data.fill(0);
            }
        }
    }

    fn bar0_write(&self, offset: u64, data: &[u8]) {
        match bar::classify(offset, data.len()) {
            Bar0Access::Register => {
                let env = self.dev.env();
                let eff = self.dev.ctrl.mmio_write(&env, offset, data);
                // Any register write may enable the controller: let sleeping pollers look.
                if eff.queues_changed || offset == bar::REG_CC {
                    self.pollers.wake_all();
                }
            }
            Bar0Access::Doorbell { qid, .. } => {
                let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
                self.dev.doorbells.store(offset, v);
                self.pollers.wake_queue(qid);
            }
            Bar0Access::Invalid(reason) => {
                tracing::debug!(offset, len = data.len(), reason, "BAR0 write ignored");
            }
        }
    }
}

fn in_bounds(offset: u64, len: usize, size: u64) -> bool {
    offset
        .checked_add(len as u64)
        .is_some_and(|end| end <= size)
}

/// Largest access any client legitimately makes (QEMU's whole-config read at realize).
const MAX_ACCESS: usize = CONFIG_SIZE;

impl ServerBackend for Backend {
    fn region_read(&mut self, index: u32, offset: u64, data: &mut [u8]) -> std::io::Result<()> {
        if data.len() > MAX_ACCESS {
            // Leave the crate's zeroed buffer untouched rather than fault in a huge reply.
            tracing::debug!(
                region = index,
                offset,
                len = data.len(),
                reason = "access too large",
                "Region read refused"
            );
            return Ok(());
        }
        match index {
            region::CONFIG => self.config.read(offset, data),
            region::BAR0 => self.bar0_read(offset, data),
            region::BAR5 if in_bounds(offset, data.len(), bar::MSIX_BAR_SIZE) => {
                self.dev.irq.read_pba(offset, data);
            }
            region::BAR4 if in_bounds(offset, data.len(), bar::MSIX_BAR_SIZE) => data.fill(0),
            _ => {
                tracing::debug!(
                    region = index,
                    offset,
                    len = data.len(),
                    reason = "no such register",
                    "Region read refused"
                );
                data.fill(0xff);
            }
        }
        Ok(())
    }

    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> std::io::Result<()> {
        match index {
            region::CONFIG if in_bounds(offset, data.len(), CONFIG_SIZE as u64) => {
                let eff = self.config.write(offset, data);
                if eff.command_changed || eff.msix_changed {
                    tracing::debug!(
                        command = format_args!("{:#x}", self.config.command()),
                        msix = format_args!("{:#x}", self.config.msix_control()),
                        "Config changed"
                    );
                    self.sync_irq_from_config();
                }
                if eff.flr {
                    tracing::info!("Function level reset");
                    self.device_reset();
                }
            }
            region::BAR0 => self.bar0_write(offset, data),
            _ => {
                tracing::debug!(
                    region = index,
                    offset,
                    len = data.len(),
                    reason = "not writable",
                    "Region write ignored"
                );
            }
        }
        Ok(())
    }

    fn dma_map(
        &mut self,
        flags: DmaMapFlags,
        offset: u64,
        address: u64,
        size: u64,
        fd: Option<File>,
    ) -> std::io::Result<()> {
        let writable = flags.contains(DmaMapFlags::WRITE);
        let has_fd = fd.is_some();
        tracing::debug!(
            iova = format_args!("{address:#x}"),
            size = format_args!("{size:#x}"),
            offset = format_args!("{offset:#x}"),
            flags = flags.bits(),
            fd = has_fd,
            "DMA_MAP"
        );
        if !has_fd {
            tracing::debug!(
                iova = format_args!("{address:#x}"),
                "DMA map without fd: not reachable by the device"
            );
        }
        self.dev
            .ram
            .map(address, size, offset, fd.as_ref(), writable)
            .map_err(|e| {
                tracing::warn!(error = %e, "DMA_MAP refused");
                std::io::Error::from(e)
            })
    }

    fn dma_unmap(&mut self, flags: DmaUnmapFlags, address: u64, size: u64) -> std::io::Result<()> {
        let all = flags.bits() & VFIO_DMA_UNMAP_FLAG_ALL != 0;
        let n = self.dev.ram.unmap(address, size, all);
        tracing::debug!(
            iova = format_args!("{address:#x}"),
            size = format_args!("{size:#x}"),
            all,
            removed = n,
            "DMA_UNMAP"
        );
        Ok(())
    }

    fn reset(&mut self) -> std::io::Result<()> {
        tracing::info!("DEVICE_RESET");
        self.device_reset();
        Ok(())
    }

    fn set_irqs(
        &mut self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: Vec<File>,
    ) -> std::io::Result<()> {
        self.dev.irq.set_irqs(index, flags, start, count, fds);
        Ok(())
    }
}
