//! Resolves kernel modules and their dependencies from an unpacked kernel package.
//!
//! Debian's kernel package ships no `modules.dep`, and this host may have no `depmod`; the
//! dependency data lives in each module's `.modinfo` ELF section (`depends=`, `softdep=`), which
//! is exactly what `depmod` reads. Built-in modules are listed in `modules.builtin`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::ImageError;

/// The modules a kvmkit Linux guest wants: virtio-mmio transport, block, net, rng, ext4, and
/// virtio-vsock (`vmw_vsock_virtio_transport`, which pulls in `vsock` and
/// `vmw_vsock_virtio_transport_common`) for kvmkit's guest agent.
pub const GUEST_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_blk",
    "virtio_net",
    "virtio_rng",
    "ext4",
    VSOCK_MODULE,
];

/// The virtio-vsock transport module the guest agent needs.
pub const VSOCK_MODULE: &str = "vmw_vsock_virtio_transport";

/// A module to load, in dependency order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Module {
    /// The module name (underscores).
    pub name: String,
    /// Path relative to `/lib/modules/<version>/`, e.g. `kernel/drivers/virtio/virtio.ko`.
    pub rel_path: String,
}

/// The outcome of resolving the guest's module list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Resolution {
    /// Modules to `insmod`, dependencies first.
    pub load: Vec<Module>,
    /// Requested modules (or dependencies) built into the kernel.
    pub builtin: Vec<String>,
    /// Requested modules found neither as a `.ko` nor built in.
    pub missing: Vec<String>,
}

fn canon(name: &str) -> String {
    name.replace('-', "_")
}

/// Reads the NUL-separated `key=value` strings of an ELF64 module's `.modinfo` section.
pub(crate) fn modinfo(elf: &[u8]) -> Result<Vec<(String, String)>, String> {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as usize)
    };
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        return Err("not a little-endian ELF64 file".into());
    }
    let shoff = u64_at(0x28).ok_or("truncated ELF header")?;
    let shentsize = u16_at(0x3a).ok_or("truncated ELF header")?;
    let shnum = u16_at(0x3c).ok_or("truncated ELF header")?;
    let shstrndx = u16_at(0x3e).ok_or("truncated ELF header")?;
    let section = |i: usize| -> Option<(usize, usize, usize)> {
        let base = shoff.checked_add(i.checked_mul(shentsize)?)?;
        let name = elf
            .get(base..base + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)?;
        Some((name, u64_at(base + 0x18)?, u64_at(base + 0x20)?))
    };
    let (_, strtab_off, strtab_size) = section(shstrndx).ok_or("bad section string table")?;
    let strtab = elf
        .get(strtab_off..strtab_off + strtab_size)
        .ok_or("bad section string table")?;
    for i in 0..shnum {
        let (name, off, size) = section(i).ok_or("bad section header")?;
        let name_bytes = strtab.get(name..).ok_or("bad section name")?;
        let name_end = name_bytes.iter().position(|&b| b == 0).unwrap_or(name_bytes.len());
        if &name_bytes[..name_end] == b".modinfo" {
            let data = elf.get(off..off + size).ok_or("truncated .modinfo")?;
            return Ok(data
                .split(|&b| b == 0)
                .filter_map(|kv| {
                    let kv = String::from_utf8_lossy(kv);
                    let (k, v) = kv.split_once('=')?;
                    Some((k.to_string(), v.to_string()))
                })
                .collect());
        }
    }
    Err("no .modinfo section".into())
}

/// Hard (`depends=`) and soft `pre:` (`softdep=`) dependencies from a module's modinfo.
pub(crate) fn dependencies(info: &[(String, String)]) -> Vec<String> {
    let mut deps = Vec::new();
    for (k, v) in info {
        match k.as_str() {
            "depends" => deps.extend(v.split(',').filter(|d| !d.is_empty()).map(canon)),
            "softdep" => {
                // "pre: a b post: c": load the pre ones first.
                let mut pre = false;
                for word in v.split_whitespace() {
                    match word {
                        "pre:" => pre = true,
                        "post:" => pre = false,
                        w if pre => deps.push(canon(w)),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    deps
}

fn collect_ko(dir: &Path, root: &Path, out: &mut BTreeMap<String, PathBuf>) -> Result<(), ImageError> {
    let entries = std::fs::read_dir(dir).map_err(|e| ImageError::io(format!("listing {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| ImageError::io(format!("listing {}", dir.display()), e))?;
        let path = entry.path();
        let ft = entry
            .file_type()
            .map_err(|e| ImageError::io(format!("stat {}", path.display()), e))?;
        if ft.is_dir() {
            collect_ko(&path, root, out)?;
        } else if let Some(stem) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".ko"))
        {
            if let Ok(rel) = path.strip_prefix(root) {
                out.insert(canon(stem), rel.to_path_buf());
            }
        }
    }
    Ok(())
}

/// Resolves `wanted` against the modules directory `moddir` (`.../lib/modules/<version>`):
/// a depth-first walk of dependencies gives a load order with dependencies first.
pub(crate) fn resolve(moddir: &Path, wanted: &[&str]) -> Result<Resolution, ImageError> {
    let mut files = BTreeMap::new();
    let kernel_dir = moddir.join("kernel");
    if kernel_dir.is_dir() {
        collect_ko(&kernel_dir, moddir, &mut files)?;
    }
    let builtin: BTreeSet<String> = std::fs::read_to_string(moddir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.rsplit('/').next()?.strip_suffix(".ko").map(canon))
        .collect();
    let mut res = Resolution::default();
    let mut done = BTreeSet::new();
    for name in wanted {
        visit(&canon(name), moddir, &files, &builtin, &mut done, &mut res, 0)?;
    }
    Ok(res)
}

fn visit(
    name: &str,
    moddir: &Path,
    files: &BTreeMap<String, PathBuf>,
    builtin: &BTreeSet<String>,
    done: &mut BTreeSet<String>,
    res: &mut Resolution,
    depth: usize,
) -> Result<(), ImageError> {
    if depth > 64 || !done.insert(name.to_string()) {
        return Ok(());
    }
    let Some(rel) = files.get(name) else {
        if builtin.contains(name) {
            res.builtin.push(name.to_string());
        } else {
            res.missing.push(name.to_string());
        }
        return Ok(());
    };
    let path = moddir.join(rel);
    let elf = std::fs::read(&path).map_err(|e| ImageError::io(format!("reading {}", path.display()), e))?;
    let info = modinfo(&elf).map_err(|e| ImageError::BadKernel(format!("{}: {e}", path.display())))?;
    for dep in dependencies(&info) {
        visit(&dep, moddir, files, builtin, done, res, depth + 1)?;
    }
    res.load.push(Module {
        name: name.to_string(),
        rel_path: rel.to_string_lossy().into_owned(),
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 with a section string table and a `.modinfo` section.
    pub(crate) fn fake_module(modinfo: &str) -> Vec<u8> {
        let shstrtab = b"\0.modinfo\0.shstrtab\0";
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let info_off = elf.len();
        elf.extend_from_slice(modinfo.as_bytes());
        let str_off = elf.len();
        elf.extend_from_slice(shstrtab);
        while elf.len() & 7 != 0 {
            elf.push(0);
        }
        let shoff = elf.len();
        let mut sh = |name: u32, off: usize, size: usize| {
            let mut h = vec![0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            elf.extend_from_slice(&h);
        };
        sh(0, 0, 0);
        sh(1, info_off, modinfo.len());
        sh(10, str_off, shstrtab.len());
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
        elf
    }

    #[test]
    fn parses_modinfo_and_dependencies() {
        let elf = fake_module(
            "license=GPL\0depends=virtio_ring,virtio,net_failover\0softdep=pre: crc32c post: x\0name=virtio_net\0",
        );
        let info = modinfo(&elf).unwrap();
        assert!(info.contains(&("name".into(), "virtio_net".into())));
        assert_eq!(dependencies(&info), ["virtio_ring", "virtio", "net_failover", "crc32c"]);
        assert!(modinfo(b"not elf").is_err());
    }

    #[test]
    fn resolves_in_dependency_order() {
        let dir = std::env::temp_dir().join(format!("kvmkit-images-mods-{}", std::process::id()));
        let k = dir.join("kernel/drivers");
        std::fs::create_dir_all(&k).unwrap();
        std::fs::write(k.join("virtio.ko"), fake_module("name=virtio\0depends=\0")).unwrap();
        std::fs::write(k.join("virtio_ring.ko"), fake_module("depends=virtio\0")).unwrap();
        std::fs::write(k.join("virtio-rng.ko"), fake_module("depends=virtio,virtio_ring\0")).unwrap();
        std::fs::write(k.join("virtio_blk.ko"), fake_module("depends=virtio_ring,virtio\0")).unwrap();
        std::fs::write(dir.join("modules.builtin"), "kernel/fs/ext4/ext4.ko\n").unwrap();
        let res = resolve(&dir, &["virtio_rng", "virtio_blk", "ext4", "nosuch"]).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let names: Vec<&str> = res.load.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["virtio", "virtio_ring", "virtio_rng", "virtio_blk"]);
        assert_eq!(res.load[2].rel_path, "kernel/drivers/virtio-rng.ko");
        assert_eq!(res.builtin, ["ext4"]);
        assert_eq!(res.missing, ["nosuch"]);
    }
}
