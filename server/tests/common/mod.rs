//! Shared helpers for the in-process vfio-user tests: a server on a temp socket, memfd guest
//! RAM, a raw protocol writer for messages `vfio_user::Client` cannot send, and a fake
//! controller that exercises the transport without the real NVMe model.
#![allow(dead_code)]

pub mod daemon;
pub mod nvme_host;

use nix::sys::eventfd::{EfdFlags, EventFd};
use nvme::{HostEnv, RegEffect};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use znsd::dma::{memfd_mapping, SharedMapping};
use znsd::{NvmeDevice, Running, ServerOptions};

/// Guest RAM size used by the tests.
pub const RAM_SIZE: u64 = 32 << 20;

/// Memfd-backed guest RAM, like `memory-backend-memfd,share=on`.
pub struct GuestRam {
    pub fd: OwnedFd,
    pub mem: SharedMapping,
}

impl GuestRam {
    pub fn new() -> Self {
        let (fd, mem) = memfd_mapping(c"guest-ram", RAM_SIZE).unwrap();
        GuestRam { fd, mem }
    }
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
    pub fn write(&self, gpa: u64, data: &[u8]) {
        assert!(self.mem.write(gpa, data), "guest write {gpa:#x}");
    }
    pub fn read(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0; len];
        assert!(self.mem.read(gpa, &mut b), "guest read {gpa:#x}");
        b
    }
    pub fn r32(&self, gpa: u64) -> u32 {
        u32::from_le_bytes(self.read(gpa, 4).try_into().unwrap())
    }
    pub fn fill(&self, gpa: u64, len: usize, byte: u8) {
        self.write(gpa, &vec![byte; len]);
    }
}

/// A server on a temporary socket.
pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub running: Option<Running>,
}

impl TestServer {
    pub fn start(ctrl: Arc<dyn NvmeDevice>, vectors: u16) -> Self {
        init_tracing();
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("znsd.sock");
        let running = znsd::start(
            ctrl,
            &ServerOptions {
                socket: socket.clone(),
                io_pollers: 2,
                msix_vectors: vectors,
            },
        )
        .unwrap();
        TestServer {
            dir,
            socket,
            running: Some(running),
        }
    }
    pub fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }
    pub fn connect(&self) -> vfio_user::Client {
        vfio_user::Client::new(&self.socket).unwrap()
    }
    /// Wait until `n` clients have been served to completion (disconnect handled).
    pub fn wait_clients_done(&self, n: u64) {
        wait_for(Duration::from_secs(5), || {
            self.running().clients_done() >= n
        });
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            let _ = r.shutdown();
        }
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < timeout,
            "condition not met within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A non-blocking eventfd plus a helper to wait for a signal.
pub struct Irq(pub EventFd);

impl Irq {
    pub fn new() -> Self {
        Irq(EventFd::from_flags(EfdFlags::EFD_NONBLOCK).unwrap())
    }
    pub fn raw(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
    /// Count accumulated since the last take (0 if none).
    pub fn take(&self) -> u64 {
        self.0.read().unwrap_or(0)
    }
    pub fn wait(&self, timeout: Duration) -> u64 {
        let t0 = Instant::now();
        loop {
            let n = self.take();
            if n > 0 {
                return n;
            }
            assert!(t0.elapsed() < timeout, "no interrupt within {timeout:?}");
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// Map the BAR0 sparse area (doorbells) from the fd the server announced, as QEMU does.
pub fn map_doorbells(client: &vfio_user::Client) -> (SharedMapping, u64) {
    let r = client.region(0).expect("BAR0");
    let fo = r.file_offset.as_ref().expect("BAR0 fd");
    let area = r.sparse_areas.first().expect("sparse area");
    let m = SharedMapping::new(fo.file(), fo.start() + area.offset, area.size, true).unwrap();
    (m, area.offset)
}

pub fn cfg_read32(c: &mut vfio_user::Client, off: u64) -> u32 {
    let mut b = [0u8; 4];
    c.region_read(7, off, &mut b).unwrap();
    u32::from_le_bytes(b)
}

pub fn cfg_write16(c: &mut vfio_user::Client, off: u64, v: u16) {
    c.region_write(7, off, &v.to_le_bytes()).unwrap();
}

pub fn bar_read32(c: &mut vfio_user::Client, off: u64) -> u32 {
    let mut b = [0u8; 4];
    c.region_read(0, off, &mut b).unwrap();
    u32::from_le_bytes(b)
}

pub fn bar_read64(c: &mut vfio_user::Client, off: u64) -> u64 {
    let mut b = [0u8; 8];
    c.region_read(0, off, &mut b).unwrap();
    u64::from_le_bytes(b)
}

pub fn bar_write32(c: &mut vfio_user::Client, off: u64, v: u32) {
    c.region_write(0, off, &v.to_le_bytes()).unwrap();
}

pub fn bar_write64(c: &mut vfio_user::Client, off: u64, v: u64) {
    c.region_write(0, off, &v.to_le_bytes()).unwrap();
}

/// Raw vfio-user protocol writer for messages the crate's client cannot produce.
pub struct RawClient {
    pub s: UnixStream,
    id: u16,
}

pub const HDR: usize = 16;

impl RawClient {
    pub fn connect(path: &Path) -> Self {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        RawClient { s, id: 0 }
    }

    pub fn header(&mut self, cmd: u16, size: usize, flags: u32) -> Vec<u8> {
        let mut h = Vec::with_capacity(size);
        h.extend_from_slice(&self.id.to_ne_bytes());
        h.extend_from_slice(&cmd.to_ne_bytes());
        h.extend_from_slice(&u32::try_from(size).unwrap().to_ne_bytes());
        h.extend_from_slice(&flags.to_ne_bytes());
        h.extend_from_slice(&0u32.to_ne_bytes());
        self.id = self.id.wrapping_add(1);
        h
    }

    /// Send VERSION with the given JSON bytes (`nul` adds the terminator) and read the reply.
    pub fn version(&mut self, json: &[u8], nul: bool) -> std::io::Result<Vec<u8>> {
        let size = HDR + 4 + json.len() + usize::from(nul);
        let mut m = self.header(1, size, 0);
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(json);
        if nul {
            m.push(0);
        }
        self.s.write_all(&m)?;
        self.read_reply()
    }

    pub fn read_reply(&mut self) -> std::io::Result<Vec<u8>> {
        let mut h = [0u8; HDR];
        self.s.read_exact(&mut h)?;
        let size = u32::from_ne_bytes(h[4..8].try_into().unwrap()) as usize;
        let mut body = vec![0u8; size.saturating_sub(HDR)];
        self.s.read_exact(&mut body)?;
        let mut all = h.to_vec();
        all.extend(body);
        Ok(all)
    }

    /// DMA_MAP without an fd (like QEMU for ROM / anonymous RAM).
    pub fn dma_map_nofd(&mut self, iova: u64, size: u64, flags: u32) -> Vec<u8> {
        let mut m = self.header(2, HDR + 32, 0);
        m.extend_from_slice(&32u32.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&0u64.to_ne_bytes());
        m.extend_from_slice(&iova.to_ne_bytes());
        m.extend_from_slice(&size.to_ne_bytes());
        self.s.write_all(&m).unwrap();
        self.read_reply().unwrap()
    }

    /// DMA_UNMAP with raw flags.
    pub fn dma_unmap(&mut self, iova: u64, size: u64, flags: u32) -> Vec<u8> {
        let mut m = self.header(3, HDR + 24, 0);
        m.extend_from_slice(&24u32.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&iova.to_ne_bytes());
        m.extend_from_slice(&size.to_ne_bytes());
        self.s.write_all(&m).unwrap();
        self.read_reply().unwrap()
    }

    /// Posted (NO_REPLY) REGION_WRITE.
    pub fn region_write_posted(&mut self, region: u32, offset: u64, data: &[u8]) {
        let mut m = self.header(10, HDR + 16 + data.len(), 0x10);
        m.extend_from_slice(&offset.to_ne_bytes());
        m.extend_from_slice(&region.to_ne_bytes());
        m.extend_from_slice(&u32::try_from(data.len()).unwrap().to_ne_bytes());
        m.extend_from_slice(data);
        self.s.write_all(&m).unwrap();
    }

    pub fn region_read(&mut self, region: u32, offset: u64, count: u32) -> Vec<u8> {
        let mut m = self.header(9, HDR + 16, 0);
        m.extend_from_slice(&offset.to_ne_bytes());
        m.extend_from_slice(&region.to_ne_bytes());
        m.extend_from_slice(&count.to_ne_bytes());
        self.s.write_all(&m).unwrap();
        self.read_reply().unwrap()
    }
}

/// Flags of a reply header.
pub fn reply_flags(r: &[u8]) -> u32 {
    u32::from_ne_bytes(r[8..12].try_into().unwrap())
}

/// A minimal fake controller: registers as plain memory, CC.EN sets CSTS.RDY, the admin queue
/// echoes every command with a success CQE; opcode 0x06 (Identify) writes 4 KiB of 0xA5 to
/// PRP1 first and answers Data Transfer Error if that fails.
#[derive(Default)]
pub struct FakeCtrl {
    regs: Mutex<Vec<u8>>,
    q: Mutex<FakeQ>,
    pub resets: AtomicU32,
    pub flushes: AtomicU32,
}

#[derive(Default)]
struct FakeQ {
    sq_head: u32,
    cq_tail: u32,
    phase: bool,
}

impl FakeCtrl {
    pub fn new() -> Arc<Self> {
        Arc::new(FakeCtrl {
            regs: Mutex::new(vec![0; 0x1000]),
            ..Default::default()
        })
    }
    fn reg32(&self, off: usize) -> u32 {
        let r = self.regs.lock().unwrap();
        u32::from_le_bytes(r[off..off + 4].try_into().unwrap())
    }
    fn reg64(&self, off: usize) -> u64 {
        let r = self.regs.lock().unwrap();
        u64::from_le_bytes(r[off..off + 8].try_into().unwrap())
    }
    fn set32(&self, off: usize, v: u32) {
        self.regs.lock().unwrap()[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
}

impl NvmeDevice for FakeCtrl {
    fn mmio_read(&self, offset: u64, data: &mut [u8]) {
        let o = usize::try_from(offset).unwrap();
        data.copy_from_slice(&self.regs.lock().unwrap()[o..o + data.len()]);
    }
    fn mmio_write(&self, env: &HostEnv<'_>, offset: u64, data: &[u8]) -> RegEffect {
        let o = usize::try_from(offset).unwrap();
        self.regs.lock().unwrap()[o..o + data.len()].copy_from_slice(data);
        if o == 0x14 {
            let en = self.reg32(0x14) & 1 != 0;
            self.set32(0x1c, u32::from(en));
            env.doorbells.clear();
            *self.q.lock().unwrap() = FakeQ {
                phase: true,
                ..Default::default()
            };
            return RegEffect {
                queues_changed: true,
            };
        }
        RegEffect::default()
    }
    fn process_admin(&self, env: &HostEnv<'_>) -> usize {
        let tail = env.doorbells.sq_tail(0);
        let aqa = self.reg32(0x24);
        let (sqs, cqs) = ((aqa & 0xfff) + 1, ((aqa >> 16) & 0xfff) + 1);
        let (asq, acq) = (self.reg64(0x28), self.reg64(0x30));
        let mut q = self.q.lock().unwrap();
        let mut n = 0;
        while q.sq_head != tail && tail < sqs {
            let mut sqe = [0u8; 64];
            let mut status: u16 = 0;
            if env
                .mem
                .read(asq + u64::from(q.sq_head) * 64, &mut sqe)
                .is_err()
            {
                status = 0x4;
            }
            q.sq_head = (q.sq_head + 1) % sqs;
            if status == 0 && sqe[0] == 0x06 {
                let prp1 = u64::from_le_bytes(sqe[24..32].try_into().unwrap());
                if env.mem.write(prp1, &[0xa5; 4096]).is_err() {
                    status = 0x4;
                }
            }
            let mut cqe = [0u8; 16];
            cqe[8..10].copy_from_slice(&u16::try_from(q.sq_head).unwrap().to_le_bytes());
            cqe[12..14].copy_from_slice(&sqe[2..4]);
            let st = (status << 1) | u16::from(q.phase);
            cqe[14..16].copy_from_slice(&st.to_le_bytes());
            let _ = env.mem.write(acq + u64::from(q.cq_tail) * 16, &cqe);
            q.cq_tail += 1;
            if q.cq_tail == cqs {
                q.cq_tail = 0;
                q.phase = !q.phase;
            }
            env.irq.raise(0);
            n += 1;
        }
        n
    }
    fn process_io(&self, _env: &HostEnv<'_>, _poller: usize, _pollers: usize) -> usize {
        0
    }
    fn ready(&self) -> bool {
        self.reg32(0x1c) & 1 != 0
    }
    fn reset(&self, env: &HostEnv<'_>) {
        self.set32(0x14, 0);
        self.set32(0x1c, 0);
        env.doorbells.clear();
        self.resets.fetch_add(1, Ordering::SeqCst);
    }
    fn flush(&self) -> std::io::Result<()> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}
