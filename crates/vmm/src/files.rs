//! Host files a VM reads (kernel, initrd, disk images): what may be opened.

/// Checks, without opening it, that `path` is something a VM may read an
/// image from: a regular file or a block device. A FIFO would block in
/// open(2) (before any time limit is armed), a socket or character device
/// gives a stream, a directory nothing.
pub fn check_input_file(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let t = std::fs::metadata(path)?.file_type();
    let what = if t.is_file() || t.is_block_device() {
        return Ok(());
    } else if t.is_dir() {
        "it is a directory"
    } else if t.is_fifo() {
        "it is a FIFO, not a regular file or block device"
    } else if t.is_socket() {
        "it is a socket, not a regular file or block device"
    } else if t.is_char_device() {
        "it is a character device, not a regular file or block device"
    } else {
        "it is not a regular file or block device"
    };
    Err(std::io::Error::other(what))
}
