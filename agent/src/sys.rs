//! The few raw calls std has no wrapper for: AF_VSOCK sockets, port I/O and power-off.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::raw::{c_int, c_void};
use std::os::unix::net::UnixStream;

const AF_VSOCK: c_int = 40;
const SOCK_STREAM: c_int = 1;
const SOCK_CLOEXEC: c_int = 0o2000000;
const VMADDR_CID_ANY: u32 = u32::MAX;
const RB_POWER_OFF: c_int = 0x4321_fedc_u32 as c_int;
/// kvmkit's exit-status port (kvmkit_images::EXIT_STATUS_PORT).
const EXIT_STATUS_PORT: u16 = 0x600;

/// `struct sockaddr_vm` (linux/vm_sockets.h).
#[repr(C)]
struct SockaddrVm {
    family: u16,
    reserved1: u16,
    port: u32,
    cid: u32,
    flags: u8,
    zero: [u8; 3],
}

extern "C" {
    fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int;
    fn bind(fd: c_int, addr: *const c_void, len: u32) -> c_int;
    fn listen(fd: c_int, backlog: c_int) -> c_int;
    fn accept4(fd: c_int, addr: *mut c_void, len: *mut u32, flags: c_int) -> c_int;
    fn iopl(level: c_int) -> c_int;
    fn reboot(cmd: c_int) -> c_int;
    fn sync();
}

/// A listening AF_VSOCK stream socket on `port` (any CID).
pub fn listen_vsock(port: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked.
    let fd = unsafe { socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nobody else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let addr = SockaddrVm {
        family: AF_VSOCK as u16,
        reserved1: 0,
        port,
        cid: VMADDR_CID_ANY,
        flags: 0,
        zero: [0; 3],
    };
    // SAFETY: `addr` is a valid sockaddr_vm of the size given.
    if unsafe {
        bind(
            fd,
            (&addr as *const SockaddrVm).cast(),
            std::mem::size_of::<SockaddrVm>() as u32,
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: plain listen(2) on our socket.
    if unsafe { listen(fd, 1024) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(owned)
}

/// A listening unix stream socket at `path` (for tests on the host).
pub fn listen_unix(path: &std::path::Path) -> io::Result<OwnedFd> {
    Ok(OwnedFd::from(std::os::unix::net::UnixListener::bind(path)?))
}

/// Accepts one connection. The connected vsock socket is wrapped in a `UnixStream`: its
/// read, write, shutdown and timeout calls are the generic socket calls, the same for any family.
pub fn accept(listener: &OwnedFd) -> io::Result<UnixStream> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: no address is asked for (null pointers are allowed).
        let fd = unsafe {
            accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                SOCK_CLOEXEC,
            )
        };
        if fd >= 0 {
            // SAFETY: accept4 returned a new descriptor we own.
            return Ok(UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) }));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Syncs, reports `status` on kvmkit's exit-status port (the VMM ends the VM with it) and,
/// should the VM still run (another VMM, or no port access), powers the guest off.
pub fn power_off(status: u8) -> ! {
    // SAFETY: sync(2) has no preconditions.
    unsafe { sync() };
    // SAFETY: iopl(2) only changes this process's I/O privilege; the result is checked.
    if unsafe { iopl(3) } == 0 {
        // SAFETY: with IOPL 3 this thread may write I/O ports; port 0x600 is kvmkit's
        // exit-status port and has no other effect on the guest.
        unsafe {
            std::arch::asm!("out dx, al", in("dx") EXIT_STATUS_PORT, in("al") status, options(nomem, nostack));
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    // SAFETY: reboot(2) with RB_POWER_OFF; the agent runs as root in the guest.
    unsafe { reboot(RB_POWER_OFF) };
    std::process::exit(i32::from(status));
}
