//! `kvmkit serve` keeps a copy of each watched VM's console output in
//! `console.log`, so `vm logs` can show a VM's last lines after it ended (the
//! console's ring lives in the VMM process and goes with it). The recorder
//! is a read-only console client: at attach it gets the ring (the last 64
//! KiB), then live output. Each attach starts the file anew (the ring holds
//! what an earlier recorder of the same run wrote last, so nothing is
//! written twice); past [`MAX_LOG`] it moves to `console.log.1`. Without the
//! daemon there is no recorder: `vm logs` of a running VM reads the ring.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;

use super::console;
use super::store::VmDir;

/// The console log's size before it moves to `console.log.1`.
pub const MAX_LOG: u64 = 1 << 20;
/// The recorder's file.
pub const CONSOLE_LOG: &str = "console.log";

fn open_new(vm: &VmDir) -> std::io::Result<File> {
    let path = vm.file(CONSOLE_LOG);
    let _ = fs::rename(&path, vm.file(&format!("{CONSOLE_LOG}.1")));
    OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

/// Starts recording `vm`'s console in a thread of its own, until the VM ends.
pub fn spawn(vm: VmDir) {
    let _ = std::thread::Builder::new()
        .name(format!("console-{}", vm.name))
        .spawn(move || {
            let Ok(mut c) = console::connect(&vm, false) else {
                return;
            };
            let Ok(mut file) = open_new(&vm) else { return };
            let mut written = 0u64;
            let mut buf = vec![0u8; 16 << 10];
            loop {
                let n = match c.stream.read(&mut buf) {
                    Ok(0) | Err(_) => return, // the VM ended
                    Ok(n) => n,
                };
                if written + n as u64 > MAX_LOG {
                    match open_new(&vm) {
                        Ok(f) => file = f,
                        Err(_) => return,
                    }
                    written = 0;
                }
                if file.write_all(&buf[..n]).is_err() {
                    return; // a full disk: stop recording, the VM goes on
                }
                written += n as u64;
            }
        });
}
