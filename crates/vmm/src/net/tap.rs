//! A tap device from `/dev/net/tun`: non-blocking, one frame per read or
//! write, each frame preceded by a 12-byte `virtio_net_hdr_v1`
//! (IFF_VNET_HDR with TUNSETVNETHDRSZ 12), which is exactly what a virtio 1.x
//! driver puts in front of its frames, so headers pass through unchanged.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::NetError;

/// Size of `virtio_net_hdr_v1` (with `num_buffers`), used on the tap and on the queues.
pub const VNET_HDR_LEN: usize = 12;
/// Longest name of a network interface (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;

const IFF_TAP: u16 = 0x0002;
const IFF_NO_PI: u16 = 0x1000;
const IFF_VNET_HDR: u16 = 0x4000;
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;

/// TUNSETOFFLOAD: the tap may hand us frames with a partial checksum.
pub const TUN_F_CSUM: u32 = 0x01;
/// TUNSETOFFLOAD: the tap may hand us TCPv4 GSO frames.
pub const TUN_F_TSO4: u32 = 0x02;

/// `struct ifreq` as TUNSETIFF reads and writes it (name, flags, padding).
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: u16,
    _pad: [u8; 22],
}

/// An open tap device.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    offloads_supported: bool,
}

/// Why `name` cannot be an interface name.
pub fn check_ifname(name: &str) -> Result<(), NetError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_IFNAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.%".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(NetError::Config(format!(
            "'{name}' is not a usable interface name (1 to {MAX_IFNAME} characters: letters, digits, - _ .)"
        )))
    }
}

impl Tap {
    /// Opens (or creates, when it does not exist) the tap `name`; a name with
    /// `%d` lets the kernel pick the number. Non-blocking, IFF_NO_PI,
    /// IFF_VNET_HDR with 12-byte headers; offloads probed and left off.
    pub fn open(name: &str) -> Result<Self, NetError> {
        check_ifname(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::ENXIO) | Some(libc::ENODEV) => NetError::Host(format!(
                    "/dev/net/tun is missing ({e}): load the tun module (modprobe tun) or create the node"
                )),
                Some(libc::EACCES) | Some(libc::EPERM) => NetError::Permission(format!(
                    "cannot open /dev/net/tun ({e}): run as root or make the node accessible"
                )),
                _ => NetError::Host(format!("cannot open /dev/net/tun: {e}")),
            })?;
        let mut req = IfReq {
            name: [0; 16],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `IfReq`
        // lays out (40 bytes); the fd is a /dev/net/tun file.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => NetError::Permission(format!(
                    "tap {name}: TUNSETIFF refused ({e}): creating or opening a tap needs CAP_NET_ADMIN; run kvmkit \
                     as root (or with cap_net_admin), or create the tap beforehand for your user \
                     (ip tuntap add dev {name} mode tap vnet_hdr user $USER) and pass --net tap={name}"
                )),
                Some(libc::EBUSY) => NetError::Busy(format!(
                    "tap {name} is busy ({e}): another process (another VM?) has it open; stop it or use another \
                     tap"
                )),
                Some(libc::EINVAL) => NetError::Host(format!(
                    "tap {name}: TUNSETIFF failed ({e}): an interface of that name exists and is not a tap (or is \
                     a multi-queue tap)"
                )),
                _ => NetError::Host(format!("tap {name}: TUNSETIFF failed: {e}")),
            });
        }
        let end = req.name.iter().position(|&b| b == 0).unwrap_or(req.name.len());
        let actual = String::from_utf8_lossy(&req.name[..end]).into_owned();
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ, &hdr_len as *const libc::c_int) } < 0 {
            return Err(NetError::Host(format!(
                "tap {actual}: TUNSETVNETHDRSZ {VNET_HDR_LEN}: {}",
                io::Error::last_os_error()
            )));
        }
        let mut tap = Self {
            file,
            name: actual,
            offloads_supported: false,
        };
        tap.offloads_supported = tap.set_offload(TUN_F_CSUM | TUN_F_TSO4).is_ok();
        tap.set_offload(0)
            .map_err(|e| NetError::Host(format!("tap {}: TUNSETOFFLOAD 0: {e}", tap.name)))?;
        Ok(tap)
    }

    /// The interface name (as the kernel gave it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether TUNSETOFFLOAD accepted checksum and TSOv4 offload.
    pub fn offloads_supported(&self) -> bool {
        self.offloads_supported
    }

    /// Sets the offloads (TUN_F_*) the tap may use in frames it gives us.
    pub fn set_offload(&self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes the flags as the ioctl argument itself.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), TUNSETOFFLOAD, flags as libc::c_ulong) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Reads one frame (header included) into `buf`; `WouldBlock` when none is queued.
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: reads at most `buf.len()` bytes into `buf`.
            let n = unsafe { libc::read(self.file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Writes one frame (header included).
    pub fn write_frame(&self, frame: &[u8]) -> io::Result<usize> {
        loop {
            // SAFETY: reads `frame.len()` bytes from `frame`.
            let n = unsafe { libc::write(self.file.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// Whether an I/O error means the tap is gone for good (deleted, detached).
pub fn is_fatal(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBADFD) | Some(libc::EIO) | Some(libc::EBADF) | Some(libc::ENODEV) | Some(libc::ENXIO)
    )
}
