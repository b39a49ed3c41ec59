#!/usr/bin/env python3
"""Regenerate link/run-path.ld: the functions `kvmkit run` executes, placed together
in the release binary (issue 15, a VMM smaller than Firecracker).

Peak RSS follows the text pages a run touches, and every code page touched maps its
page-cache neighbours too (fault-around: 64 KiB windows). The ~0.75 MiB of code a run
executes was spread over the 5 MiB of text (CLI, bench, images, web console ...), so
nearly all of it became resident. build.rs passes link/run-path.ld to the release link;
it gathers those functions into one output section, `.text.run`, before `.text`.

This script finds them exactly: it builds the release binary with symbols and a linker
map, runs the commands below with every thread single-stepped (scripts/steptrace.c,
seccomp filters on, about a minute each on kvm_pvm), maps each executed address to its
input section and writes one pattern per function. Names are matched as mangled, with
or without LTO's `.llvm.<hash>` suffix (it comes and goes with every edit of the module);
the legacy `17h<hash>E` suffix is kept, so an instance of a generic function is not
confused with its siblings. Those hashes change with a dependency or toolchain update:
then the run path falls apart again (measure-rss.py warns when `.text.run` is much
smaller than recorded here) and this script is rerun. A function renamed or newly
inlined just falls back to the ordinary layout. The static release binary (build.rs) holds
glibc's and libgcc's objects too: those executed are listed by archive member
(`*libc.a:malloc.o(.text)`), as glibc is built without -ffunction-sections.

Usage (x86_64, rust-lld, gcc):
    scripts/layout-run-path.py [--guest ELF] [--sizes 256,2048] [--keep DIR] [--merge]
                               [--map MAP --rips FILE ...]
It leaves target/release/kvmkit unstripped: `cargo build --release` afterwards.
"""
import argparse, bisect, os, re, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
OUT = os.path.join(ROOT, "link/run-path.ld")
PREFIXES = (".text.unlikely.", ".text.hot.", ".text.startup.", ".text.")


def parse_map(path):
    """Input sections of lld's map, as (address, size, output section, input section, file)."""
    secs, out = [], None
    with open(path) as f:
        for line in f:
            head, body = line[:49].split(), line[49:].rstrip("\n")
            if len(head) < 4 or head[0] == "VMA":
                continue
            try:
                vma, size = int(head[0], 16), int(head[2], 16)
            except ValueError:
                continue
            lead = len(body) - len(body.lstrip(" "))
            if lead == 0:
                out = body.strip()
            elif lead == 8:
                m = re.match(r"(.*):\((.*)\)$", body.strip())
                secs.append((vma, size, out, m.group(2) if m else body.strip(), m.group(1) if m else ""))
    return secs


def executed(secs, rip_files):
    """Input sections of executable output sections that hold an executed address."""
    text = sorted(s for s in secs if s[2] and s[2].startswith(".text") and s[1])
    starts = [s[0] for s in text]
    hit = set()
    for path in rip_files:
        with open(path) as f:
            for line in f:
                a = int(line, 16)
                i = bisect.bisect_right(starts, a) - 1
                if i >= 0 and a < text[i][0] + text[i][1]:
                    hit.add(i)
    return [text[i] for i in sorted(hit)]


def function_name(section):
    """The function an input section holds, without LTO's `.llvm.<hash>` suffix (it comes
    and goes with every edit of the module), or None for a whole object's `.text` (crt)."""
    name = next((section[len(p):] for p in PREFIXES if section.startswith(p)), None)
    return re.sub(r"\.llvm\.\d+$", "", name) if name else None


def archive_member(file, section):
    """The linker-script pattern of a C archive member's text section (`*libc.a:memcpy.o(.text)`:
    glibc's and libgcc's objects, built without -ffunction-sections, hold one function or a few
    in `.text`; the static release binary, build.rs), or None for anything else."""
    m = re.match(r"(?:.*/)?([^/()]+\.a)\(([^()]+)\)$", file)
    if not m or not (section == ".text" or section.startswith(".text.")):
        return None
    return f"*{m.group(1)}:{m.group(2)}({section})"


def patterns(name):
    """Input-section patterns for a function, with and without a `.llvm.*` suffix. A legacy
    name ends in its hash (`17h<16 hex>E`), so `NAME*` cannot reach another function."""
    if name.startswith("_ZN") and name.endswith("E"):
        forms = [name + "*"]
    else:
        forms = [name, name + ".llvm.*"]
    return " ".join(f"{p}{n}" for p in (".text.", ".text.unlikely.") for n in forms)


def recorded(path):
    """The function names an existing run-path.ld lists (for --merge)."""
    try:
        with open(path) as f:
            found = re.finditer(r"\*\(\.text\.(\S+?)\*? ", f.read())
            return [re.sub(r"\.llvm\.$", "", m.group(1)) for m in found]
    except OSError:
        return []


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--guest", default=os.path.join(SHARED, "peers/tinyguest/tiny.elf"))
    ap.add_argument("--sizes", default="256,2048", help="guest RAM sizes in MiB to trace")
    ap.add_argument("--keep", help="keep the map, binary and traces in this folder")
    ap.add_argument("--map", help="use this linker map and --rips instead of building and tracing")
    ap.add_argument("--rips", action="append", default=[], help="a steptrace output of the --map binary")
    ap.add_argument("--merge", action="store_true",
                    help="keep the functions link/run-path.ld lists already (a function that one build "
                         "inlines and the next does not stays covered)")
    a = ap.parse_args()
    mapfile, rips = a.map, a.rips
    if not mapfile:
        tmp = a.keep or tempfile.mkdtemp(prefix="run-path-")
        os.makedirs(tmp, exist_ok=True)
        mapfile = os.path.join(tmp, "kvmkit.map")
        subprocess.run(["cargo", "rustc", "--release", "--bin", "kvmkit", "--", "-C", "strip=none",
                        "-C", f"link-arg=-Wl,-Map={mapfile}"], cwd=ROOT, check=True)
        binary = os.path.join(tmp, "kvmkit")
        subprocess.run(["cp", os.path.join(ROOT, "target/release/kvmkit"), binary], check=True)
        tracer = os.path.join(tmp, "steptrace")
        subprocess.run(["gcc", "-O2", "-o", tracer, os.path.join(ROOT, "scripts/steptrace.c")], check=True)
        for mib in a.sizes.split(","):
            out = os.path.join(tmp, f"rips-{mib}.txt")
            t0 = time.monotonic()
            subprocess.run([tracer, out, binary, "run", "--kernel", a.guest, "--no-stdin", "--memory", mib],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True)
            print(f"traced {mib} MiB in {time.monotonic() - t0:.0f} s", file=sys.stderr)
            rips.append(out)
    hot = executed(parse_map(mapfile), rips)
    names = [n for n in (function_name(s[3]) for s in hot) if n]
    members = list(dict.fromkeys(m for m in (archive_member(s[4], s[3]) for s in hot) if m))
    if a.merge:
        names = recorded(OUT) + names
    names = list(dict.fromkeys(names))
    size = sum(s[1] for s in hot)
    rustc = subprocess.run(["rustc", "-V"], capture_output=True, text=True).stdout.strip()
    with open(OUT, "w") as f:
        f.write(f"/* Generated by scripts/layout-run-path.py ({time.strftime('%Y-%m-%d')}, {rustc}): the {len(names)}\n"
                f" * functions and {len(members)} C library objects `kvmkit run` executed for the tiny PVH guest,\n"
                f" * placed together so that the pages\n"
                f" * a run touches are few (docs/architecture.md, 'Where the peak RSS goes').\n"
                f" * Passed to the release link by build.rs. run-path-bytes: {size}\n */\n")
        f.write("SECTIONS\n{\n  .text.run : {\n")
        for n in names:
            f.write(f"    *({patterns(n)})\n")
        for m in members:
            f.write(f"    {m}\n")
        f.write("  }\n}\nINSERT BEFORE .text;\n")
    print(f"{OUT}: {len(names)} functions, {len(members)} C archive members, {size} bytes of {len(hot)} "
          "executed sections", file=sys.stderr)


if __name__ == "__main__":
    main()
