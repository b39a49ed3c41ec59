//! A writer for cpio archives in the "newc" (SVR4, no CRC) format, the format the Linux kernel
//! unpacks as an initramfs.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::ImageError;

/// Where the contents of a regular file in an initramfs come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileSource {
    /// The bytes themselves.
    Bytes(Vec<u8>),
    /// A file on the host, read when the archive is written.
    Host(PathBuf),
}

/// What kind of filesystem object an [`InitramfsEntry`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file.
    File(FileSource),
    /// A symbolic link pointing at the given target.
    Symlink(String),
    /// A character device node.
    CharDevice {
        /// The device's major number.
        major: u32,
        /// The device's minor number.
        minor: u32,
    },
}

/// One entry of an initramfs archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitramfsEntry {
    /// The path inside the archive, e.g. `/bin/busybox` (a leading `/` is optional).
    pub path: String,
    /// The permission bits (e.g. `0o755`); the file-type bits are taken from `kind`.
    pub mode: u32,
    /// What the entry is.
    pub kind: EntryKind,
}

impl InitramfsEntry {
    /// A directory with the given permission bits.
    pub fn dir(path: impl Into<String>, mode: u32) -> Self {
        Self {
            path: path.into(),
            mode,
            kind: EntryKind::Dir,
        }
    }

    /// A regular file holding `data`.
    pub fn file(path: impl Into<String>, mode: u32, data: impl Into<Vec<u8>>) -> Self {
        Self {
            path: path.into(),
            mode,
            kind: EntryKind::File(FileSource::Bytes(data.into())),
        }
    }

    /// A regular file whose contents are read from `source` on the host when the archive is written.
    pub fn host_file(path: impl Into<String>, mode: u32, source: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            mode,
            kind: EntryKind::File(FileSource::Host(source.into())),
        }
    }

    /// A symbolic link to `target`.
    pub fn symlink(path: impl Into<String>, target: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            mode: 0o777,
            kind: EntryKind::Symlink(target.into()),
        }
    }

    /// A character device node.
    pub fn char_device(path: impl Into<String>, mode: u32, major: u32, minor: u32) -> Self {
        Self {
            path: path.into(),
            mode,
            kind: EntryKind::CharDevice { major, minor },
        }
    }
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;
const TRAILER: &str = "TRAILER!!!";

/// Normalizes an archive path: no leading `/`, no empty or `.` components, no `..`.
fn normalize(path: &str) -> Result<String, ImageError> {
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(ImageError::InvalidEntry(format!("path {path:?} contains '..'"))),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(ImageError::InvalidEntry(format!(
            "path {path:?} names the archive root"
        )));
    }
    Ok(parts.join("/"))
}

/// Writes a cpio "newc" archive of `files` to `out` (uncompressed, as the kernel accepts it).
///
/// Entries are written in the order given; parent directories that are not listed before their
/// children are added (mode 0755) just before them. Timestamps and owners are zero (root), so the
/// output depends only on the input.
pub fn write_initramfs(out: &Path, files: &[InitramfsEntry]) -> Result<(), ImageError> {
    let file = File::create(out).map_err(|e| ImageError::io(format!("creating {}", out.display()), e))?;
    let mut w = CpioWriter {
        out: BufWriter::new(file),
        offset: 0,
        ino: 0,
    };
    let ctx = |e| ImageError::io(format!("writing {}", out.display()), e);
    let mut seen: BTreeSet<String> = BTreeSet::new();
    for entry in files {
        let path = normalize(&entry.path)?;
        // Add missing parents first: the kernel's unpacker does not create them.
        let mut parent = String::new();
        let components: Vec<&str> = path.split('/').collect();
        for component in &components[..components.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(component);
            if seen.insert(parent.clone()) {
                w.entry(&parent, S_IFDIR | 0o755, 2, 0, 0, &[]).map_err(ctx)?;
            }
        }
        if !seen.insert(path.clone()) && entry.kind == EntryKind::Dir {
            continue; // a directory that was already created implicitly
        }
        let perm = entry.mode & 0o7777;
        match &entry.kind {
            EntryKind::Dir => w.entry(&path, S_IFDIR | perm, 2, 0, 0, &[]).map_err(ctx)?,
            EntryKind::Symlink(target) => w
                .entry(&path, S_IFLNK | 0o777, 1, 0, 0, target.as_bytes())
                .map_err(ctx)?,
            EntryKind::CharDevice { major, minor } => {
                w.entry(&path, S_IFCHR | perm, 1, *major, *minor, &[]).map_err(ctx)?
            }
            EntryKind::File(FileSource::Bytes(data)) => w.entry(&path, S_IFREG | perm, 1, 0, 0, data).map_err(ctx)?,
            EntryKind::File(FileSource::Host(source)) => {
                // Streamed: a host file is never held in memory whole.
                let read = |e| ImageError::io(format!("reading {}", source.display()), e);
                let mut f = File::open(source).map_err(read)?;
                let len = f.metadata().map_err(read)?.len();
                w.entry_from(&path, S_IFREG | perm, 1, 0, 0, &mut f, len)
                    .map_err(read)?
            }
        }
    }
    w.entry(TRAILER, 0, 1, 0, 0, &[]).map_err(ctx)?;
    w.out.flush().map_err(ctx)?;
    w.out.get_ref().sync_all().map_err(ctx)?;
    Ok(())
}

struct CpioWriter<W: Write> {
    out: W,
    offset: u64,
    ino: u32,
}

impl<W: Write> CpioWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out.write_all(bytes)?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    fn pad4(&mut self) -> std::io::Result<()> {
        let pad = (4 - (self.offset % 4) as usize) % 4;
        self.write(&[0u8; 3][..pad])
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rmajor: u32,
        rminor: u32,
        data: &[u8],
    ) -> std::io::Result<()> {
        let mut data = data;
        let len = data.len() as u64;
        self.entry_from(name, mode, nlink, rmajor, rminor, &mut data, len)
    }

    /// One entry whose `len` bytes of contents are read from `data`.
    #[allow(clippy::too_many_arguments)]
    fn entry_from(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rmajor: u32,
        rminor: u32,
        data: &mut dyn Read,
        len: u64,
    ) -> std::io::Result<()> {
        let size = u32::try_from(len)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{name} is over 4 GiB")))?;
        let ino = if name == TRAILER {
            0
        } else {
            self.ino += 1;
            self.ino
        };
        let namesize = name.len() as u32 + 1;
        let header = format!(
            "070701{ino:08X}{mode:08X}{uid:08X}{gid:08X}{nlink:08X}{mtime:08X}{size:08X}\
             {maj:08X}{min:08X}{rmajor:08X}{rminor:08X}{namesize:08X}{check:08X}",
            uid = 0,
            gid = 0,
            mtime = 0,
            maj = 0,
            min = 0,
            check = 0,
        );
        self.write(header.as_bytes())?;
        self.write(name.as_bytes())?;
        self.write(&[0])?;
        self.pad4()?;
        let copied = std::io::copy(&mut data.take(len), &mut self.out)?;
        if copied != len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{name}: {copied} of {len} bytes (did it shrink while being read?)"),
            ));
        }
        self.offset += len;
        self.pad4()
    }
}

/// One entry read back from a newc archive (for tests).
#[cfg(test)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParsedEntry {
    pub name: String,
    pub mode: u32,
    pub rdev: (u32, u32),
    pub data: Vec<u8>,
}

/// Parses a newc archive up to its trailer; errors on any malformed header or misalignment.
#[cfg(test)]
pub(crate) fn parse_newc(bytes: &[u8]) -> Result<Vec<ParsedEntry>, String> {
    let mut entries = Vec::new();
    let mut off = 0usize;
    let field = |off: usize, i: usize| -> Result<u32, String> {
        let s = bytes.get(off + 6 + i * 8..off + 14 + i * 8).ok_or("truncated header")?;
        let s = std::str::from_utf8(s).map_err(|e| e.to_string())?;
        u32::from_str_radix(s, 16).map_err(|e| format!("bad hex field {s:?}: {e}"))
    };
    loop {
        if off & 3 != 0 {
            return Err(format!("header at {off} is not 4-byte aligned"));
        }
        if bytes.get(off..off + 6) != Some(b"070701") {
            return Err(format!("bad magic at {off}"));
        }
        let mode = field(off, 1)?;
        let size = field(off, 6)? as usize;
        let rdev = (field(off, 9)?, field(off, 10)?);
        let namesize = field(off, 11)? as usize;
        let name_start = off + 110;
        let name = bytes.get(name_start..name_start + namesize).ok_or("truncated name")?;
        if name.last() != Some(&0) {
            return Err("name is not NUL-terminated".into());
        }
        let name = String::from_utf8(name[..namesize - 1].to_vec()).map_err(|e| e.to_string())?;
        let data_start = (name_start + namesize).next_multiple_of(4);
        let data = bytes
            .get(data_start..data_start + size)
            .ok_or("truncated data")?
            .to_vec();
        off = (data_start + size).next_multiple_of(4);
        if name == TRAILER {
            return Ok(entries);
        }
        entries.push(ParsedEntry { name, mode, rdev, data });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("kvmkit-images-cpio-{}-{name}", std::process::id()))
    }

    #[test]
    fn writes_newc_with_file_dir_symlink_and_device() {
        let out = temp_path("basic.cpio");
        let entries = vec![
            InitramfsEntry::dir("/bin", 0o755),
            InitramfsEntry::file("/bin/hello", 0o755, b"hello!\n".to_vec()),
            InitramfsEntry::symlink("/bin/sh", "hello"),
            InitramfsEntry::char_device("/dev/console", 0o600, 5, 1),
            InitramfsEntry::file("/etc/deep/x", 0o644, b"x".to_vec()),
        ];
        write_initramfs(&out, &entries).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        std::fs::remove_file(&out).unwrap();
        assert_eq!(bytes.len() % 4, 0);
        assert!(bytes.starts_with(b"070701"));
        let trailer = b"TRAILER!!!\0";
        assert!(bytes.windows(trailer.len()).any(|w| w == trailer));
        let parsed = parse_newc(&bytes).unwrap();
        let names: Vec<&str> = parsed.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/hello",
                "bin/sh",
                "dev",
                "dev/console",
                "etc",
                "etc/deep",
                "etc/deep/x"
            ]
        );
        assert_eq!(parsed[0].mode, 0o040755);
        assert_eq!(parsed[1].mode, 0o100755);
        assert_eq!(parsed[1].data, b"hello!\n");
        assert_eq!(parsed[2].mode, 0o120777);
        assert_eq!(parsed[2].data, b"hello");
        assert_eq!(parsed[4].mode, 0o020600);
        assert_eq!(parsed[4].rdev, (5, 1));
        assert_eq!(parsed[3].mode, 0o040755, "implicit parent directory");
        // The first header, field by field.
        let first = std::str::from_utf8(&bytes[..110]).unwrap();
        assert_eq!(&first[6..14], "00000001", "ino");
        assert_eq!(&first[14..22], "000041ED", "mode");
        assert_eq!(&first[94..102], "00000004", "namesize of 'bin\\0'");
    }

    #[test]
    fn debian_cpio_reads_the_archive_when_installed() {
        let Ok(status) = std::process::Command::new("cpio").arg("--version").output() else {
            eprintln!("skipping: cpio is not installed");
            return;
        };
        assert!(status.status.success());
        let out = temp_path("gnu.cpio");
        let entries = vec![
            InitramfsEntry::dir("/bin", 0o755),
            InitramfsEntry::file("/bin/hello", 0o755, b"hello".to_vec()),
            InitramfsEntry::symlink("/bin/sh", "hello"),
        ];
        write_initramfs(&out, &entries).unwrap();
        let listing = std::process::Command::new("cpio")
            .args(["-t", "--quiet", "-F"])
            .arg(&out)
            .output()
            .unwrap();
        std::fs::remove_file(&out).unwrap();
        assert!(listing.status.success(), "{listing:?}");
        assert_eq!(String::from_utf8_lossy(&listing.stdout), "bin\nbin/hello\nbin/sh\n");
    }

    #[test]
    fn host_files_and_bad_paths() {
        let src = temp_path("src.bin");
        std::fs::write(&src, [1u8, 2, 3, 4, 5]).unwrap();
        let out = temp_path("host.cpio");
        write_initramfs(&out, &[InitramfsEntry::host_file("data", 0o600, &src)]).unwrap();
        let parsed = parse_newc(&std::fs::read(&out).unwrap()).unwrap();
        assert_eq!(parsed[0].data, [1, 2, 3, 4, 5]);
        assert!(matches!(
            write_initramfs(&out, &[InitramfsEntry::dir("/a/../b", 0o755)]),
            Err(ImageError::InvalidEntry(_))
        ));
        std::fs::remove_file(&out).unwrap();
        std::fs::remove_file(&src).unwrap();
    }
}
