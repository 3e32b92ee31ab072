#!/usr/bin/env python3
"""Stands in for qemu-system-x86_64 in the passthrough tests.

A fake vfio device cannot work in a real QEMU (there is no /dev/vfio here), so
this wrapper does what QEMU's vfio code checks at start, against the fake
sysfs tree (FAKESYSFS_ROOT), and then runs the real QEMU without those
devices:

- every `-device vfio-pci,host=BDF` must be bound to vfio-pci, and every
  other member of its IOMMU group must be on vfio-pci or unbound (bridges
  excepted): QEMU's "group N is not viable";
- RLIMIT_MEMLOCK must cover guest RAM (VFIO pins it all);
- its argv is appended to FAKE_QEMU_LOG (one JSON line per start).

With FAKE_QEMU_FAIL=1 it exits like QEMU does when the device cannot be
opened.  Without vfio devices (the daemon's capability probe) it is the real
QEMU untouched."""

import json
import os
import resource
import sys

REAL = os.environ.get("FAKE_QEMU_REAL", "qemu-system-x86_64")


def die(msg):
    sys.stderr.write(f"qemu-system-x86_64: {msg}\n")
    sys.exit(1)


def option_value(opts, key):
    for part in opts.split(","):
        if part.startswith(key + "="):
            return part[len(key) + 1:]
    return None


def memory_bytes(argv):
    for i, a in enumerate(argv[:-1]):
        if a == "-m":
            v = argv[i + 1]
            unit = {"M": 1 << 20, "G": 1 << 30}.get(v[-1], 1 << 20)
            return int(v.rstrip("MG")) * unit
    return 128 << 20


def memlock_requested():
    """What the daemon asked for, from the header it wrote into qemu.log
    (our stderr): machines without CAP_SYS_RESOURCE cannot grant it."""
    try:
        with open(os.readlink("/proc/self/fd/2")) as f:
            lines = [line for line in f if line.startswith("RLIMIT_MEMLOCK ")]
        return int(lines[-1].split()[1]) if lines else None
    except (OSError, ValueError):
        return None


def check_viable(root, bdf):
    dev = os.path.join(root, "sys/bus/pci/devices", bdf)
    if not os.path.exists(dev):
        die(f"-device vfio-pci,host={bdf}: vfio {bdf}: no such host device")
    drv = os.path.join(dev, "driver")
    if not os.path.islink(drv) or os.path.basename(os.readlink(drv)) != "vfio-pci":
        die(f"-device vfio-pci,host={bdf}: vfio {bdf}: failed to open /dev/vfio: not bound to vfio-pci")
    grp = os.path.join(dev, "iommu_group")
    if not os.path.islink(grp):
        die(f"-device vfio-pci,host={bdf}: vfio {bdf}: no iommu_group found")
    members = os.path.join(os.path.realpath(grp), "devices")
    for m in sorted(os.listdir(members)):
        mdev = os.path.join(root, "sys/bus/pci/devices", m)
        if os.path.isdir(os.path.join(mdev, "pci_bus")):
            continue
        mdrv = os.path.join(mdev, "driver")
        name = os.path.basename(os.readlink(mdrv)) if os.path.islink(mdrv) else ""
        if name not in ("", "vfio-pci", "pci-stub"):
            die(f"-device vfio-pci,host={bdf}: vfio {bdf}: group {os.path.basename(os.path.realpath(grp))} "
                f"is not viable: {m} is bound to {name}")


def main():
    argv = sys.argv[1:]
    root = os.environ.get("FAKESYSFS_ROOT", "")
    kept, hostdevs, i = [], [], 0
    while i < len(argv):
        a = argv[i]
        if a == "-device" and i + 1 < len(argv) and argv[i + 1].split(",")[0] in ("vfio-pci", "pcie-root-port"):
            opts = argv[i + 1]
            if opts.startswith("vfio-pci"):
                hostdevs.append(option_value(opts, "host"))
            i += 2
            continue
        kept.append(a)
        i += 1
    if hostdevs:
        log = os.environ.get("FAKE_QEMU_LOG")
        soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
        wanted = memlock_requested()
        if log:
            with open(log, "a") as f:
                f.write(json.dumps({"argv": argv, "hostdevs": hostdevs, "memlock": soft,
                                    "memlock_requested": wanted}) + "\n")
        need = memory_bytes(argv)
        if not os.environ.get("QVISOR_TEST_MEMLOCK_BEST_EFFORT"):
            wanted = soft
        if wanted is None or (wanted != resource.RLIM_INFINITY and wanted < need):
            die(f"vfio: memory listener initialization failed: RLIMIT_MEMLOCK {wanted} < guest RAM {need}")
        for bdf in hostdevs:
            check_viable(root, bdf)
        if os.environ.get("FAKE_QEMU_FAIL") == "1":
            die(f"-device vfio-pci,host={hostdevs[0]}: vfio {hostdevs[0]}: error getting device from group: "
                "Invalid argument")
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", "UMOCKDEV_DIR", "FAKESYSFS_ROOT")}
    os.execvpe(REAL, [REAL] + kept, env)


if __name__ == "__main__":
    main()
