"""What the snapshot measurements (scripts/measure-snapshot.py, scripts/measure-diff-snapshot.py)
share: measure-api.py's Firecracker-API client and VMM processes (`ma`: HttpConn, api, Vmm,
Failure, stop_all), kvmkit's drop-in symlink and test guest, a VM booted to its guest's `tick=3`
and paused, and a timed `PUT /snapshot/create`.

Import it from a script in this folder (`import kvmkit_api`: Python puts the script's folder on
sys.path). Python 3 standard library only.
"""
import contextlib
import importlib.util
import os
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
# measure-api.py is a script (its name has a dash): loaded from its file.
_spec = importlib.util.spec_from_file_location("measure_api", os.path.join(HERE, "measure-api.py"))
ma = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ma)
now = ma.now

# kvmkit's test guest printing `tick=N` every 1 ms of TSC time.
TICKS_BOOT_ARGS = "console=ttyS0 reboot=k panic=1 kvmkit.workload=ticks:1"


def drop_in(kvmkit, tmp):
    """A symlink named `firecracker` to the kvmkit binary, in a new folder TMP/kvmkit-bin: kvmkit
    started through it runs in its Firecracker drop-in mode (`firecracker --api-sock S`)."""
    d = os.path.join(tmp, "kvmkit-bin")
    os.mkdir(d)
    exe = os.path.join(d, "firecracker")
    os.symlink(os.path.realpath(kvmkit), exe)
    return exe


def test_guest(kvmkit, tmp):
    """kvmkit's test guest (a PVH ELF both VMMs boot), written to TMP/guest.elf."""
    guest = os.path.join(tmp, "guest.elf")
    subprocess.run([kvmkit, "image", "guest", "--out", guest], check=True, capture_output=True)
    return guest


@contextlib.contextmanager
def paused_vm(argv, sock, errpath, machine_config, guest, boot_args, timeout):
    """Spawns ARGV (a VMM serving the API at SOCK, its stderr to ERRPATH), waits for its API,
    PUTs MACHINE_CONFIG and /boot-source {GUEST, BOOT_ARGS}, sends InstanceStart, waits for the
    guest's `tick=3` and pauses the VM. Yields (the ma.Vmm, an open ma.HttpConn to SOCK); on
    leaving, the connection is closed and the VMM killed (SIGKILL). Raises ma.Failure when the
    VMM or its guest does not come up within TIMEOUT seconds."""
    v = ma.Vmm(argv, sock, errpath)
    try:
        v.wait_ready(timeout, 0.002)
        c = ma.HttpConn(sock, timeout=timeout)
        try:
            ma.api(c, "PUT", "/machine-config", machine_config)
            ma.api(c, "PUT", "/boot-source", {"kernel_image_path": guest, "boot_args": boot_args})
            mark = v.out.offset()
            ma.api(c, "PUT", "/actions", {"action_type": "InstanceStart"})
            if v.out.wait_for(b"tick=3\n", mark, timeout) is None:
                raise ma.Failure("no tick=3 after InstanceStart\n" + v.diag())
            ma.api(c, "PATCH", "/vm", {"state": "Paused"})
            yield v, c
        finally:
            c.close()
    finally:
        v.stop()


def create_snapshot(conn, kind, state, mem):
    """`PUT /snapshot/create` of KIND ("Full" or "Diff") to the files STATE and MEM, on the open
    connection CONN to a paused VM: -> the ms from sending the request to its 204."""
    t = now()
    ma.api(conn, "PUT", "/snapshot/create", {"snapshot_type": kind, "snapshot_path": state, "mem_file_path": mem})
    return (now() - t) * 1e3
