#!/usr/bin/env python3
"""Builds a fake sysfs tree for vfio tests (docs/fakesysfs.md).

Usage: mktree.py ROOT [--scenario FILE.json] [--force]

ROOT/sys is laid out as the kernel's sysfs is, with relative symlinks:
sys/devices/pci0000:00/BDF (nested below bridges), sys/bus/pci/devices/BDF,
sys/bus/pci/drivers/DRV/{bind,unbind,new_id,remove_id,BDF},
sys/bus/pci/drivers_probe, sys/kernel/iommu_groups/N/devices/BDF,
sys/module/{vfio,vfio_pci,vfio_iommu_type1}, hugepage pools.  ROOT/proc/cmdline
holds the scenario's command line.  ROOT/fake/ is the fake kernel's own
state: native/BDF (drivers a probe would try, in order), faults, log.

Without --scenario the default scenario (scenario-default.json beside this
file) is used.  ROOT must not hold a tree already unless --force is given,
which removes ROOT/sys, ROOT/proc and ROOT/fake first.  Standard library only.
"""

import argparse
import json
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SCENARIO = os.path.join(HERE, "scenario-default.json")

# Drivers built into the kernel have no module link (pcieport is).
BUILTIN_DRIVERS = {"pcieport"}


def load_scenario(scenario=None):
    """A scenario dict from None (the default), a dict, or a JSON path."""
    if scenario is None:
        scenario = DEFAULT_SCENARIO
    if isinstance(scenario, dict):
        return scenario
    with open(scenario) as f:
        return json.load(f)


def _hex(v):
    """"0x10de", 0x10de or "10de" as an int."""
    return v if isinstance(v, int) else int(str(v), 16)


def _write(path, content, mode=0o644):
    with open(path, "w") as f:
        f.write(content)
    os.chmod(path, mode)


def _rel(link_dir, target, sys_dir):
    """The kernel's relative link: one ../ per component of link_dir below
    sys/, then target below sys/."""
    depth = len(os.path.relpath(link_dir, sys_dir).split(os.sep))
    return "../" * depth + os.path.relpath(target, sys_dir)


def _symlink(target, link):
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(target, link)


def uevent_text(dev, driver):
    """uevent as the kernel writes it (pci_uevent), plus the udev hwdb
    properties that umockdev keeps in the same file."""
    cls = _hex(dev["class"])
    ven, did = _hex(dev["vendor"]), _hex(dev["device"])
    sven = _hex(dev.get("subsystem_vendor", dev["vendor"]))
    sdid = _hex(dev.get("subsystem_device", "0x0000"))
    lines = []
    if driver:
        lines.append(f"DRIVER={driver}")
    lines += [
        f"PCI_CLASS={cls:04X}",
        f"PCI_ID={ven:04X}:{did:04X}",
        f"PCI_SUBSYS_ID={sven:04X}:{sdid:04X}",
        f"PCI_SLOT_NAME={dev['bdf']}",
        f"MODALIAS={modalias(dev)}",
    ]
    if dev.get("vendor_name"):
        lines.append(f"ID_VENDOR_FROM_DATABASE={dev['vendor_name']}")
    if dev.get("model_name"):
        lines.append(f"ID_MODEL_FROM_DATABASE={dev['model_name']}")
    return "".join(line + "\n" for line in lines)


def modalias(dev):
    cls = _hex(dev["class"])
    ven, did = _hex(dev["vendor"]), _hex(dev["device"])
    sven = _hex(dev.get("subsystem_vendor", dev["vendor"]))
    sdid = _hex(dev.get("subsystem_device", "0x0000"))
    return (f"pci:v{ven:08X}d{did:08X}sv{sven:08X}sd{sdid:08X}"
            f"bc{cls >> 16:02X}sc{(cls >> 8) & 0xff:02X}i{cls & 0xff:02X}")


def is_bridge(dev):
    return bool(dev.get("bridge", _hex(dev["class"]) >> 8 == 0x0604))


def build(root, scenario=None, force=False):
    """Builds the tree under root from a scenario (see load_scenario).
    Returns the scenario dict used."""
    sc = load_scenario(scenario)
    root = os.path.abspath(root)
    if os.path.realpath(root) == "/":
        raise ValueError("refusing to build a fake tree over /")
    for sub in ("sys", "proc", "fake"):
        p = os.path.join(root, sub)
        if os.path.lexists(p):
            if not force:
                raise FileExistsError(f"{p} exists (use --force to rebuild)")
            shutil.rmtree(p)
    sysd = os.path.join(root, "sys")
    fake = os.path.join(root, "fake")
    devs = sc.get("devices", [])
    by_bdf = {d["bdf"]: d for d in devs}
    vfio = sc.get("vfio_loaded", True)

    drivers = set(sc.get("drivers") or
                  [n for d in devs for n in d.get("native", [])] + [d["driver"] for d in devs if d.get("driver")])
    drivers |= {d["driver"] for d in devs if d.get("driver")}
    if vfio:
        drivers.add("vfio-pci")
    else:
        drivers.discard("vfio-pci")

    bus = os.path.join(sysd, "bus", "pci")
    for p in (os.path.join(bus, "devices"), os.path.join(bus, "drivers"), os.path.join(sysd, "kernel", "iommu_groups"),
              os.path.join(sysd, "module"), os.path.join(sysd, "class"), os.path.join(fake, "native")):
        os.makedirs(p, exist_ok=True)
    _write(os.path.join(bus, "drivers_probe"), "", 0o200)
    _write(os.path.join(bus, "drivers_autoprobe"), "1\n")
    _write(os.path.join(bus, "rescan"), "", 0o200)
    _write(os.path.join(bus, "uevent"), "", 0o200)

    for drv in sorted(drivers):
        dd = os.path.join(bus, "drivers", drv)
        os.makedirs(dd)
        for f in ("bind", "unbind", "new_id", "remove_id", "uevent"):
            _write(os.path.join(dd, f), "", 0o200)
        if drv not in BUILTIN_DRIVERS:
            mod = os.path.join(sysd, "module", drv.replace("-", "_"))
            os.makedirs(mod, exist_ok=True)
            _symlink(_rel(dd, mod, sysd), os.path.join(dd, "module"))
    if vfio:
        for mod in ("vfio", "vfio_pci", "vfio_iommu_type1"):
            os.makedirs(os.path.join(sysd, "module", mod), exist_ok=True)

    host = os.path.join(sysd, "devices", "pci0000:00")
    os.makedirs(os.path.join(host, "pci_bus", "0000:00"))
    _write(os.path.join(host, "uevent"), "")

    def dev_dir(bdf, seen=()):
        d = by_bdf[bdf]
        parent = d.get("parent")
        if parent in seen:
            raise ValueError(f"parent loop at {bdf}")
        base = dev_dir(parent, seen + (bdf,)) if parent else host
        return os.path.join(base, bdf)

    # Parents before children, so a bridge's directory exists first.
    for dev in sorted(devs, key=lambda d: len(dev_dir(d["bdf"]))):
        bdf = dev["bdf"]
        dd = dev_dir(bdf)
        os.makedirs(dd)
        drv = dev.get("driver")
        attrs = {
            "class": f"0x{_hex(dev['class']):06x}\n",
            "vendor": f"0x{_hex(dev['vendor']):04x}\n",
            "device": f"0x{_hex(dev['device']):04x}\n",
            "subsystem_vendor": f"0x{_hex(dev.get('subsystem_vendor', dev['vendor'])):04x}\n",
            "subsystem_device": f"0x{_hex(dev.get('subsystem_device', '0x0000')):04x}\n",
            "revision": f"0x{_hex(dev.get('revision', '0xa1')):02x}\n",
            "numa_node": f"{-1 if dev.get('numa_node') is None else dev['numa_node']}\n",
            "modalias": modalias(dev) + "\n",
        }
        for name, value in attrs.items():
            _write(os.path.join(dd, name), value, 0o444)
        _write(os.path.join(dd, "driver_override"), "(null)\n")
        _write(os.path.join(dd, "uevent"), uevent_text(dev, drv))
        for name in ("remove", "rescan", "reset"):
            _write(os.path.join(dd, name), "", 0o200)
        _symlink(_rel(dd, bus, sysd), os.path.join(dd, "subsystem"))
        _symlink(_rel(os.path.join(bus, "devices"), dd, sysd), os.path.join(bus, "devices", bdf))
        if is_bridge(dev):
            children = [c for c in devs if c.get("parent") == bdf]
            secondary = min((int(c["bdf"][5:7], 16) for c in children), default=None)
            os.makedirs(os.path.join(dd, "pci_bus"))
            if secondary is not None:
                os.makedirs(os.path.join(dd, "pci_bus", f"{bdf[:4]}:{secondary:02x}"))
        if drv:
            ddrv = os.path.join(bus, "drivers", drv)
            _symlink(_rel(dd, ddrv, sysd), os.path.join(dd, "driver"))
            _symlink(_rel(ddrv, dd, sysd), os.path.join(ddrv, bdf))
        group = dev.get("iommu_group")
        if group is not None:
            gd = os.path.join(sysd, "kernel", "iommu_groups", str(group))
            os.makedirs(os.path.join(gd, "devices"), exist_ok=True)
            if not os.path.exists(os.path.join(gd, "type")):
                _write(os.path.join(gd, "type"), "DMA\n")
                _write(os.path.join(gd, "reserved_regions"), "0x00000000fee00000 0x00000000feefffff msi\n", 0o444)
            _symlink(_rel(dd, gd, sysd), os.path.join(dd, "iommu_group"))
            _symlink(_rel(os.path.join(gd, "devices"), dd, sysd), os.path.join(gd, "devices", bdf))
        _write(os.path.join(fake, "native", bdf), "".join(n + "\n" for n in dev.get("native", [])))

    if any(d.get("iommu_group") is not None for d in devs):
        iommu = os.path.join(sysd, "devices", "virtual", "iommu", "dmar0")
        os.makedirs(iommu)
        os.makedirs(os.path.join(sysd, "class", "iommu"))
        _symlink(_rel(os.path.join(sysd, "class", "iommu"), iommu, sysd), os.path.join(sysd, "class", "iommu", "dmar0"))

    nodes = sorted({d["numa_node"] for d in devs if d.get("numa_node") is not None and d["numa_node"] >= 0} | {0})
    nd = os.path.join(sysd, "devices", "system", "node")
    os.makedirs(nd)
    _write(os.path.join(nd, "online"), f"0-{nodes[-1]}\n" if nodes[-1] else "0\n", 0o444)
    # like a kernel, each node has CPUs and memory: two CPUs (2n, 2n+1) and
    # 16 GiB each, so capacity reads and admission work on this tree
    for n in nodes:
        os.makedirs(os.path.join(nd, f"node{n}"))
        _write(os.path.join(nd, f"node{n}", "cpulist"), f"{2 * n}-{2 * n + 1}\n", 0o444)
        _write(os.path.join(nd, f"node{n}", "meminfo"),
               f"Node {n} MemTotal:       16777216 kB\nNode {n} MemFree:        15728640 kB\n", 0o444)
    cpud = os.path.join(sysd, "devices", "system", "cpu")
    os.makedirs(cpud, exist_ok=True)
    _write(os.path.join(cpud, "online"), f"0-{2 * nodes[-1] + 1}\n", 0o444)

    pools = sc.get("hugepages", {"2048kB": {"nr": 0, "free": 0}})
    for size, pool in pools.items():
        hp = os.path.join(sysd, "kernel", "mm", "hugepages", f"hugepages-{size}")
        os.makedirs(hp)
        _write(os.path.join(hp, "nr_hugepages"), f"{pool.get('nr', 0)}\n")
        _write(os.path.join(hp, "free_hugepages"), f"{pool.get('free', pool.get('nr', 0))}\n", 0o444)
        for f in ("resv_hugepages", "surplus_hugepages"):
            _write(os.path.join(hp, f), "0\n", 0o444)

    os.makedirs(os.path.join(root, "proc"))
    _write(os.path.join(root, "proc", "cmdline"), sc.get("cmdline", "BOOT_IMAGE=/vmlinuz ro") + "\n", 0o444)

    _write(os.path.join(fake, "faults"), "")
    _write(os.path.join(fake, "log"), "")
    with open(os.path.join(fake, "scenario.json"), "w") as f:
        json.dump(sc, f, indent=2)
    return sc


def main(argv=None):
    ap = argparse.ArgumentParser(description="Build a fake sysfs tree for vfio tests.")
    ap.add_argument("root")
    ap.add_argument("--scenario", help="scenario JSON (default: scenario-default.json)")
    ap.add_argument("--force", action="store_true", help="replace an existing tree under ROOT")
    args = ap.parse_args(argv)
    try:
        build(args.root, args.scenario, args.force)
    except (OSError, ValueError, KeyError) as e:
        print(f"mktree: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
