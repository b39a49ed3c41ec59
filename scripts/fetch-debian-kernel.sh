#!/usr/bin/env bash
# Fetches Debian's stock cloud kernel into kvmkit's cache without installing it:
# apt-get download + dpkg-deb -x. Prints the cache directory holding
#   vmlinuz  (the bzImage as Debian ships it)
#   vmlinux  (the ELF kernel, unpacked from the bzImage payload)
#   version  (the kernel release, e.g. 6.1.0-56-cloud-amd64)
# Idempotent: a complete cache is reused; a partial one is rebuilt.
# Needs: apt-get, dpkg-deb, python3, lz4 (Debian compresses with LZ4).
set -euo pipefail

cache="${KVMKIT_CACHE:-$HOME/.cache/kvmkit}/debian-kernel"
if [ -s "$cache/vmlinux" ] && [ -s "$cache/vmlinuz" ] && [ -s "$cache/version" ]; then
  echo "$cache"
  exit 0
fi

command -v lz4 >/dev/null || { apt-get update -qq >&2; apt-get install -y -qq lz4 >&2; }
rm -rf "$cache.tmp"
mkdir -p "$cache.tmp"
cd "$cache.tmp"
pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}')
if [ -z "$pkg" ]; then
  apt-get update -qq >&2
  pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
fi
[ -n "$pkg" ] || { echo "cannot resolve linux-image-cloud-amd64 (is apt configured?)" >&2; exit 1; }
apt-get download -q "$pkg" >&2
dpkg-deb -x ./*.deb root
vmlinuz=$(ls root/boot/vmlinuz-* | head -n1)
version=${vmlinuz##*/vmlinuz-}
cp "$vmlinuz" vmlinuz
# The bzImage payload (offset/length in the setup header at 0x248/0x24c) is the
# compressed ELF vmlinux.
python3 - vmlinuz vmlinux <<'PY'
import lzma, gzip, struct, sys, zlib
data = open(sys.argv[1], "rb").read()
setup_sects = data[0x1f1] or 4
off, length = struct.unpack_from("<II", data, 0x248)
payload = data[(setup_sects + 1) * 512 + off:][:length]
if payload[:6] == b"\xfd7zXZ\x00":
    elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
elif payload[:2] == b"\x1f\x8b":
    elf = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(payload)
elif payload[:4] == b"\x02\x21\x4c\x18":  # LZ4 legacy frame (Debian's choice)
    import subprocess
    elf = subprocess.run(["lz4", "-d", "-c"], input=payload, capture_output=True).stdout
else:
    sys.exit("unsupported bzImage payload compression: %r" % payload[:6])
assert elf[:4] == b"\x7fELF", "payload is not an ELF"
open(sys.argv[2], "wb").write(elf)
PY
echo "$version" > version
rm -rf root ./*.deb
cd ..
rm -rf "$cache"
mv "$cache.tmp" "$cache"
echo "$cache"
