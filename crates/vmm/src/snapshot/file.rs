//! The state file: a fixed header (magic, format version, kvmkit version,
//! body length, CRC-32 of the body) and a JSON body; and the memory file,
//! guest RAM regions back to back.

use std::io::Write;
use std::path::Path;

use super::{SnapshotError, SnapshotState};

/// First bytes of every kvmkit state file.
pub const MAGIC: [u8; 8] = *b"KVMKSNAP";
/// Version of the layout of the header and body; bumped on any change.
pub const FORMAT_VERSION: u32 = 2;
/// Bytes of the kvmkit version field (NUL padded).
const VERSION_LEN: usize = 16;
/// Header bytes: magic, format version, kvmkit version, body length, CRC.
pub const HEADER_LEN: usize = 8 + 4 + VERSION_LEN + 8 + 4;
/// Largest body accepted (a state is a few hundred KiB at most).
const MAX_BODY: u64 = 64 << 20;

/// This build's version, as written into the header.
pub fn kvmkit_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

static CRC_TABLE: [u32; 256] = crc_table();

/// CRC-32 (IEEE 802.3, as zlib and gzip compute it).
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c = CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

/// Encodes `state` as a state file's bytes.
pub fn encode(state: &SnapshotState) -> Result<Vec<u8>, SnapshotError> {
    let body = serde_json::to_vec(state).map_err(|e| SnapshotError::Invalid(format!("encoding the state: {e}")))?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    let mut version = [0u8; VERSION_LEN];
    let v = kvmkit_version().as_bytes();
    let n = v.len().min(VERSION_LEN);
    version[..n].copy_from_slice(&v[..n]);
    out.extend_from_slice(&version);
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

fn field<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&bytes[at..at + N]);
    a
}

/// Decodes a state file's bytes, checking magic, versions, length and CRC
/// before the body is parsed. Never panics, whatever the input.
pub fn decode(bytes: &[u8]) -> Result<SnapshotState, SnapshotError> {
    if bytes.len() < HEADER_LEN {
        if bytes.len() >= MAGIC.len() && bytes[..MAGIC.len()] != MAGIC {
            return Err(SnapshotError::Invalid("not a kvmkit state file (bad magic)".into()));
        }
        return Err(SnapshotError::Invalid(format!(
            "truncated state file: {} bytes, the header alone is {HEADER_LEN}",
            bytes.len()
        )));
    }
    if bytes[..8] != MAGIC {
        return Err(SnapshotError::Invalid("not a kvmkit state file (bad magic)".into()));
    }
    let format = u32::from_le_bytes(field(bytes, 8));
    let version_bytes: [u8; VERSION_LEN] = field(bytes, 12);
    let end = version_bytes.iter().position(|&b| b == 0).unwrap_or(VERSION_LEN);
    let version = String::from_utf8_lossy(&version_bytes[..end]).into_owned();
    if format != FORMAT_VERSION || version != kvmkit_version() {
        return Err(SnapshotError::Version {
            format,
            version,
            ours: FORMAT_VERSION,
        });
    }
    let len = u64::from_le_bytes(field(bytes, 12 + VERSION_LEN));
    let crc = u32::from_le_bytes(field(bytes, 20 + VERSION_LEN));
    let body = &bytes[HEADER_LEN..];
    if len > MAX_BODY || body.len() as u64 != len {
        return Err(SnapshotError::Invalid(format!(
            "truncated or overlong state file: the header says {len} body bytes, the file has {}",
            body.len()
        )));
    }
    if crc32(body) != crc {
        return Err(SnapshotError::Invalid("corrupted state file (CRC mismatch)".into()));
    }
    let state: SnapshotState =
        serde_json::from_slice(body).map_err(|e| SnapshotError::Invalid(format!("state file body: {e}")))?;
    state.validate()?;
    Ok(state)
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename).
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> Result<(), SnapshotError> {
    let io = |e: std::io::Error| SnapshotError::Io(format!("{}: {e}", path.display()));
    // The rename would replace a device, FIFO or socket (/dev/null
    // included) with a regular file: refuse anything but a regular file.
    if let Ok(meta) = std::fs::metadata(path) {
        if !meta.is_file() {
            return Err(SnapshotError::Io(format!(
                "{}: it exists and is not a regular file; give a file path",
                path.display()
            )));
        }
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    let r = write(&mut f).and_then(|_| f.flush()).and_then(|_| f.sync_data());
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    std::fs::rename(&tmp, path).map_err(io)
}

/// Reads and decodes the state file at `path`.
pub fn read_state(path: &Path) -> Result<SnapshotState, SnapshotError> {
    let meta = std::fs::metadata(path).map_err(|e| SnapshotError::Io(format!("{}: {e}", path.display())))?;
    if meta.len() > MAX_BODY + HEADER_LEN as u64 {
        // Say "not a state file" for the usual mistake (the memory file given as the state).
        let mut head = [0u8; MAGIC.len()];
        let magic_ok = std::fs::File::open(path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
            .is_ok_and(|()| head == MAGIC);
        let why = if magic_ok {
            "too large for a state file"
        } else {
            "not a kvmkit state file (bad magic)"
        };
        return Err(SnapshotError::Invalid(format!("{}: {why}", path.display())));
    }
    let bytes = std::fs::read(path).map_err(|e| SnapshotError::Io(format!("{}: {e}", path.display())))?;
    decode(&bytes).map_err(|e| e.in_file(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_zlib() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn bad_files_are_refused_with_a_reason() {
        let e = decode(b"KVMK").unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        let e = decode(&[0u8; 100]).unwrap_err().to_string();
        assert!(e.contains("magic"), "{e}");
        let mut h = Vec::new();
        h.extend_from_slice(&MAGIC);
        h.extend_from_slice(&99u32.to_le_bytes());
        h.resize(HEADER_LEN, 0);
        let e = decode(&h).unwrap_err().to_string();
        assert!(e.contains("format 99"), "{e}");
    }
}
