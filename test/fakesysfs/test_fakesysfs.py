#!/usr/bin/env python3
"""Self-tests of the fake sysfs kernel (docs/fakesysfs.md): the tree
mktree.py lays out, every store method libfakesysfs emulates with the
kernel's errnos, each fault, the log, pass-through of everything else, and
libudev (under umockdev) seeing what the fake kernel changed.

Writes go through udev-probe, i.e. the product's qv_sysroot_write(), so in
the sanitizer build they run in an ASan process with libasan first in
LD_PRELOAD; a few go through a python3 child (pwrite, writev, threads).
"""

import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fakesysfs  # noqa: E402
import mktree  # noqa: E402
from fakesysfs import FakeSys  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
MULT = max(1, int(os.environ.get("QVISOR_TEST_TIMEOUT_MULTIPLIER", "1")))
PROBE = os.environ.get("QVISOR_UDEV_PROBE") or os.path.join(os.environ.get("QVISOR_BUILD_ROOT", ""),
                                                            "test", "fakesysfs", "udev-probe")
HAVE_UMOCKDEV = fakesysfs.umockdev_available() and shutil.which("umockdev-run") is not None

GPU = "0000:01:00.0"        # nouveau, behind the bridge, group 1 with its audio
AUDIO = "0000:01:00.1"
BRIDGE = "0000:00:01.0"
AMD = "0000:02:00.0"        # amdgpu, group 2 shared with the NIC
NIC = "0000:03:00.0"
AST = "0000:04:00.0"        # no iommu_group
USB = "0000:05:00.0"        # unbound, xhci_hcd would claim it

# A python3 child that writes like the product would, but with the call
# chosen: python3 is not instrumented, so it never gets libasan.
WRITER = textwrap.dedent("""
    import errno, json, os, sys, threading
    out = []
    def one(path, value, how):
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            data = value.encode()
            if how == "pwrite":
                n = os.pwrite(fd, data, 7)
            elif how == "writev":
                half = len(data) // 2
                n = os.writev(fd, [data[:half], data[half:]])
            else:
                n = os.write(fd, data)
            return ["ok", n]
        except OSError as e:
            return [errno.errorcode[e.errno], 0]
        finally:
            os.close(fd)
    jobs = json.loads(sys.argv[1])
    if jobs and jobs[0] == "threads":
        _, path_fmt, bdfs, rounds = jobs
        def worker(bdf):
            for i in range(rounds):
                one(path_fmt % bdf, "vfio-pci" if i % 2 == 0 else "\\n", "write")
        ts = [threading.Thread(target=worker, args=(b,)) for b in bdfs]
        for t in ts: t.start()
        for t in ts: t.join()
    else:
        for path, value, how in jobs:
            out.append(one(path, value, how))
    print(json.dumps(out))
""")


class Base(unittest.TestCase):
    scenario = None

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="qv-fakesysfs-")
        self.fs = FakeSys(os.path.join(self.tmp, "root"), scenario=self.scenario)

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def probe(self, *args, umockdev=True, check=True):
        """Runs udev-probe under the fake kernel; returns its JSON lines."""
        p = self.fs.run([PROBE, *args], umockdev=umockdev and HAVE_UMOCKDEV, timeout=60 * MULT)
        if check:
            self.assertEqual(p.returncode, 0, f"udev-probe {args}: {p.stderr}")
        return [json.loads(line) for line in p.stdout.splitlines()]

    def write(self, *pairs):
        """(rel, value) pairs through qv_sysroot_write; returns the results."""
        args = []
        for rel, value in pairs:
            args += ["write", rel, value]
        return [o["result"] for o in self.probe(*args, umockdev=False)]

    def write1(self, rel, value):
        return self.write((rel, value))[0]

    def pywrite(self, jobs, env_extra=None, umockdev=False):
        env = self.fs.env(asan=False, umockdev=umockdev and HAVE_UMOCKDEV)
        env.update(env_extra or {})
        p = subprocess.run([sys.executable, "-c", WRITER, json.dumps(jobs)], env=env,
                           capture_output=True, text=True, timeout=60 * MULT)
        self.assertEqual(p.returncode, 0, p.stderr)
        return json.loads(p.stdout)

    def dev(self, bdf, *rest):
        return f"sys/bus/pci/devices/{bdf}" + "".join("/" + r for r in rest)

    def read(self, rel):
        with open(os.path.join(self.fs.root, rel)) as f:
            return f.read()


class Layout(Base):
    def test_devices_nested_behind_bridge(self):
        sysd = self.fs.sys
        self.assertEqual(os.readlink(f"{sysd}/bus/pci/devices/{GPU}"),
                         f"../../../devices/pci0000:00/{BRIDGE}/{GPU}")
        self.assertEqual(os.readlink(f"{sysd}/bus/pci/devices/{AMD}"), f"../../../devices/pci0000:00/{AMD}")
        self.assertEqual(self.fs.devices(), [BRIDGE, GPU, AUDIO, AMD, NIC, AST, USB])
        self.assertTrue(os.path.isdir(f"{sysd}/devices/pci0000:00/{BRIDGE}/pci_bus/0000:01"))
        self.assertFalse(os.path.exists(f"{sysd}/devices/pci0000:00/{BRIDGE}/{GPU}/pci_bus"))

    def test_every_link_is_relative_and_resolves(self):
        n = 0
        for dirpath, dirnames, filenames in os.walk(self.fs.sys):
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                if os.path.islink(p):
                    n += 1
                    target = os.readlink(p)
                    self.assertFalse(target.startswith("/"), p)
                    self.assertTrue(os.path.exists(p), f"{p} -> {target} dangles")
                    real = os.path.realpath(p)
                    self.assertTrue(real.startswith(os.path.realpath(self.fs.sys) + "/"), p)
        self.assertGreater(n, 30)

    def test_kernel_link_depths(self):
        d = f"{self.fs.sys}/devices/pci0000:00/{BRIDGE}/{GPU}"
        self.assertEqual(os.readlink(f"{d}/driver"), "../../../../bus/pci/drivers/nouveau")
        self.assertEqual(os.readlink(f"{d}/iommu_group"), "../../../../kernel/iommu_groups/1")
        self.assertEqual(os.readlink(f"{d}/subsystem"), "../../../../bus/pci")
        d = f"{self.fs.sys}/devices/pci0000:00/{AMD}"
        self.assertEqual(os.readlink(f"{d}/driver"), "../../../bus/pci/drivers/amdgpu")
        self.assertEqual(os.readlink(f"{d}/iommu_group"), "../../../kernel/iommu_groups/2")
        self.assertEqual(os.readlink(f"{self.fs.sys}/bus/pci/drivers/nouveau/{GPU}"),
                         f"../../../../devices/pci0000:00/{BRIDGE}/{GPU}")
        self.assertEqual(os.readlink(f"{self.fs.sys}/kernel/iommu_groups/1/devices/{AUDIO}"),
                         f"../../../../devices/pci0000:00/{BRIDGE}/{AUDIO}")

    def test_attributes(self):
        self.assertEqual(self.read(self.dev(GPU, "class")), "0x030000\n")
        self.assertEqual(self.read(self.dev(GPU, "vendor")), "0x10de\n")
        self.assertEqual(self.read(self.dev(GPU, "device")), "0x1eb8\n")
        self.assertEqual(self.read(self.dev(GPU, "numa_node")), "1\n")
        self.assertEqual(self.read(self.dev(AMD, "class")), "0x030200\n")
        self.assertEqual(self.read(self.dev(GPU, "driver_override")), "(null)\n")
        for f in ("subsystem_vendor", "subsystem_device", "modalias", "uevent"):
            self.assertTrue(os.path.isfile(os.path.join(self.fs.root, self.dev(GPU, f))), f)
        ue = self.read(self.dev(GPU, "uevent")).splitlines()
        self.assertEqual(ue[:6], ["DRIVER=nouveau", "PCI_CLASS=30000", "PCI_ID=10DE:1EB8",
                                  "PCI_SUBSYS_ID=10DE:12A2", f"PCI_SLOT_NAME={GPU}",
                                  "MODALIAS=pci:v000010DEd00001EB8sv000010DEsd000012A2bc03sc00i00"])
        self.assertNotIn("DRIVER=", self.read(self.dev(USB, "uevent")))

    def test_drivers_groups_modules(self):
        sysd = self.fs.sys
        for drv in ("nouveau", "snd_hda_intel", "amdgpu", "e1000e", "ast", "pcieport", "vfio-pci", "xhci_hcd"):
            for f in ("bind", "unbind", "new_id", "remove_id"):
                self.assertTrue(os.path.isfile(f"{sysd}/bus/pci/drivers/{drv}/{f}"), f"{drv}/{f}")
        self.assertTrue(os.path.isfile(f"{sysd}/bus/pci/drivers_probe"))
        self.assertEqual(self.fs.bound("nouveau"), [GPU])
        self.assertEqual(self.fs.bound("vfio-pci"), [])
        self.assertEqual(sorted(os.listdir(f"{sysd}/kernel/iommu_groups")), ["0", "1", "2", "3"])
        self.assertEqual(sorted(os.listdir(f"{sysd}/kernel/iommu_groups/1/devices")), [GPU, AUDIO])
        self.assertEqual(sorted(os.listdir(f"{sysd}/kernel/iommu_groups/2/devices")), [AMD, NIC])
        self.assertIsNone(self.fs.iommu_group(AST))
        self.assertEqual(self.fs.iommu_group(BRIDGE), 0)
        self.assertIsNone(self.fs.driver(USB))
        for mod in ("vfio", "vfio_pci"):
            self.assertTrue(os.path.isdir(f"{sysd}/module/{mod}"))

    def test_proc_and_hugepages(self):
        self.assertIn("intel_iommu=on", self.read("proc/cmdline"))
        hp = "sys/kernel/mm/hugepages/hugepages-2048kB"
        self.assertEqual(self.read(f"{hp}/nr_hugepages"), "0\n")
        self.assertEqual(self.read(f"{hp}/free_hugepages"), "0\n")

    def test_scenario_variants_and_cli(self):
        sc = mktree.load_scenario()
        sc["vfio_loaded"] = False
        sc["cmdline"] = "ro quiet"
        sc["hugepages"] = {"2048kB": {"nr": 512, "free": 500}}
        path = os.path.join(self.tmp, "sc.json")
        with open(path, "w") as f:
            json.dump(sc, f)
        root = os.path.join(self.tmp, "cli")
        tool = os.path.join(HERE, "mktree.py")
        p = subprocess.run([sys.executable, tool, root, "--scenario", path], capture_output=True, text=True)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertFalse(os.path.exists(f"{root}/sys/module/vfio_pci"))
        self.assertFalse(os.path.exists(f"{root}/sys/bus/pci/drivers/vfio-pci"))
        with open(f"{root}/proc/cmdline") as f:
            self.assertEqual(f.read(), "ro quiet\n")
        with open(f"{root}/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages") as f:
            self.assertEqual(f.read(), "500\n")
        p = subprocess.run([sys.executable, tool, root], capture_output=True, text=True)
        self.assertEqual(p.returncode, 1)
        self.assertIn("exists", p.stderr)
        p = subprocess.run([sys.executable, tool, root, "--force"], capture_output=True, text=True)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertTrue(os.path.exists(f"{root}/sys/module/vfio_pci"))


class Override(Base):
    def test_set_and_clear(self):
        rel = self.dev(GPU, "driver_override")
        self.assertEqual(self.write1(rel, "vfio-pci"), "ok")
        self.assertEqual(self.fs.override(GPU), "vfio-pci")
        self.assertEqual(self.read(rel), "vfio-pci\n")
        self.assertEqual(self.fs.driver(GPU), "nouveau", "an override does not rebind by itself")
        self.assertEqual(self.write1(rel, "\n"), "ok")
        self.assertIsNone(self.fs.override(GPU))
        self.assertEqual(self.read(rel), "(null)\n")
        self.assertEqual(self.write1(rel, "vfio-pci\n"), "ok")
        self.assertEqual(self.read(rel), "vfio-pci\n")

    def test_empty_write_changes_nothing(self):
        # sysfs never calls a store for zero bytes: "" does not clear.
        rel = self.dev(GPU, "driver_override")
        self.write1(rel, "vfio-pci")
        self.assertEqual(self.write1(rel, ""), "ok")
        self.assertEqual(self.fs.override(GPU), "vfio-pci")
        self.assertEqual(self.fs.log()[-1], f'override {GPU} "" ok')

    def test_through_the_bus_link_and_read_back(self):
        out = self.probe("write", self.dev(AMD, "driver_override"), "vfio-pci",
                         "read", self.dev(AMD, "driver_override"), umockdev=False)
        self.assertEqual(out[1]["value"], "vfio-pci")


class Unbind(Base):
    def test_unbind_from_bound_driver(self):
        self.assertEqual(self.write1(self.dev(GPU, "driver/unbind"), GPU), "ok")
        self.assertIsNone(self.fs.driver(GPU))
        self.assertEqual(self.fs.bound("nouveau"), [])
        self.assertNotIn("DRIVER=", self.read(self.dev(GPU, "uevent")))
        self.assertIn(f"PCI_SLOT_NAME={GPU}", self.read(self.dev(GPU, "uevent")))

    def test_trailing_newline_accepted(self):
        self.assertEqual(self.write1("sys/bus/pci/drivers/amdgpu/unbind", AMD + "\n"), "ok")
        self.assertIsNone(self.fs.driver(AMD))

    def test_enodev_cases(self):
        self.assertEqual(self.write1("sys/bus/pci/drivers/amdgpu/unbind", GPU), "ENODEV")      # other driver
        self.assertEqual(self.write1("sys/bus/pci/drivers/xhci_hcd/unbind", USB), "ENODEV")    # unbound
        self.assertEqual(self.write1("sys/bus/pci/drivers/nouveau/unbind", "0000:09:00.0"), "ENODEV")
        self.assertEqual(self.write1("sys/bus/pci/drivers/nouveau/unbind", "../../x"), "ENODEV")
        self.assertEqual(self.write1("sys/bus/pci/drivers/nouveau/unbind", GPU + " "), "ENODEV")
        self.assertEqual(self.fs.driver(GPU), "nouveau")


class Bind(Base):
    def test_bound_is_ebusy(self):
        self.assertEqual(self.write1("sys/bus/pci/drivers/nouveau/bind", GPU), "EBUSY")
        self.assertEqual(self.fs.driver(GPU), "nouveau")

    def test_native_bind_of_unbound(self):
        self.assertEqual(self.write1("sys/bus/pci/drivers/xhci_hcd/bind", USB), "ok")
        self.assertEqual(self.fs.driver(USB), "xhci_hcd")
        self.assertEqual(self.fs.bound("xhci_hcd"), [USB])
        self.assertTrue(self.read(self.dev(USB, "uevent")).startswith("DRIVER=xhci_hcd\n"))

    def test_not_native_is_enodev(self):
        self.assertEqual(self.write1("sys/bus/pci/drivers/nouveau/bind", USB), "ENODEV")
        self.assertEqual(self.write1("sys/bus/pci/drivers/vfio-pci/bind", USB), "ENODEV")  # no id table
        self.assertEqual(self.write1("sys/bus/pci/drivers/xhci_hcd/bind", "0000:0a:00.0"), "ENODEV")
        self.assertIsNone(self.fs.driver(USB))

    def test_override_decides(self):
        self.write1(self.dev(USB, "driver_override"), "vfio-pci")
        self.assertEqual(self.write1("sys/bus/pci/drivers/xhci_hcd/bind", USB), "ENODEV")  # kernel refuses
        self.assertEqual(self.write1("sys/bus/pci/drivers/vfio-pci/bind", USB), "ok")
        self.assertEqual(self.fs.driver(USB), "vfio-pci")
        # Matching comes before "already bound" (bind_store()): a
        # mismatching driver is ENODEV even for a bound device.
        self.assertEqual(self.write1("sys/bus/pci/drivers/xhci_hcd/bind", USB), "ENODEV")
        self.assertEqual(self.write1("sys/bus/pci/drivers/vfio-pci/bind", USB), "EBUSY")


class Probe(Base):
    def test_override_then_probe_binds_vfio(self):
        self.write1(self.dev(USB, "driver_override"), "vfio-pci")
        self.assertEqual(self.write1("sys/bus/pci/drivers_probe", USB), "ok")
        self.assertEqual(self.fs.driver(USB), "vfio-pci")
        self.assertEqual(self.fs.log()[-1], f"probe {USB} vfio-pci ok")

    def test_native_probe(self):
        self.assertEqual(self.write1("sys/bus/pci/drivers_probe", USB + "\n"), "ok")
        self.assertEqual(self.fs.driver(USB), "xhci_hcd")

    def test_bound_is_noop_and_unknown_enodev(self):
        self.assertEqual(self.write1("sys/bus/pci/drivers_probe", GPU), "ok")
        self.assertEqual(self.fs.driver(GPU), "nouveau")
        self.assertEqual(self.write1("sys/bus/pci/drivers_probe", "0000:0b:00.0"), "ENODEV")

    def test_override_to_missing_driver_stays_unbound(self):
        self.write1(self.dev(USB, "driver_override"), "no-such-driver")
        self.assertEqual(self.write1("sys/bus/pci/drivers_probe", USB), "ok")
        self.assertIsNone(self.fs.driver(USB))
        self.assertEqual(self.fs.log()[-1], f"probe {USB} - ok")


class ProbeScenario(Base):
    scenario = copy.deepcopy(mktree.load_scenario())
    scenario["vfio_loaded"] = False
    scenario["drivers"] = ["nouveau", "snd_hda_intel", "amdgpu", "e1000e", "ast", "pcieport", "xhci_hcd"]
    scenario["devices"][-1]["native"] = ["xhci_pci_renesas", "xhci_hcd"]
    scenario["devices"].append({"bdf": "0000:06:00.0", "parent": None, "class": "0x118000", "vendor": "0x1234",
                                "device": "0x5678", "driver": None, "native": [], "iommu_group": 4,
                                "numa_node": None})

    def test_first_loaded_native_driver_wins(self):
        self.assertEqual(self.write1("sys/bus/pci/drivers_probe", USB), "ok")
        self.assertEqual(self.fs.driver(USB), "xhci_hcd")

    def test_no_native_driver_stays_unbound(self):
        self.assertEqual(self.read(self.dev("0000:06:00.0", "numa_node")), "-1\n")
        self.assertEqual(self.write1("sys/bus/pci/drivers_probe", "0000:06:00.0"), "ok")
        self.assertIsNone(self.fs.driver("0000:06:00.0"))

    def test_vfio_not_loaded(self):
        self.assertFalse(os.path.exists(os.path.join(self.fs.sys, "module", "vfio")))
        self.assertEqual(self.write((self.dev(GPU, "driver_override"), "vfio-pci"),
                                    (self.dev(GPU, "driver/unbind"), GPU),
                                    ("sys/bus/pci/drivers_probe", GPU)), ["ok", "ok", "ok"])
        self.assertIsNone(self.fs.driver(GPU))


class Sequences(Base):
    def test_libvirt_bind_and_give_back(self):
        res = self.write((self.dev(GPU, "driver_override"), "vfio-pci"),
                         (self.dev(GPU, "driver/unbind"), GPU),
                         ("sys/bus/pci/drivers_probe", GPU),
                         (self.dev(AUDIO, "driver_override"), "vfio-pci"),
                         (self.dev(AUDIO, "driver/unbind"), AUDIO),
                         ("sys/bus/pci/drivers_probe", AUDIO))
        self.assertEqual(res, ["ok"] * 6)
        self.assertEqual(self.fs.bound("vfio-pci"), [GPU, AUDIO])
        self.assertEqual(self.fs.bound("nouveau"), [])
        # Give back: one by drivers_probe, one by binding the recorded driver.
        res = self.write((self.dev(GPU, "driver/unbind"), GPU),
                         (self.dev(GPU, "driver_override"), "\n"),
                         ("sys/bus/pci/drivers_probe", GPU),
                         (self.dev(AUDIO, "driver/unbind"), AUDIO),
                         (self.dev(AUDIO, "driver_override"), "\n"),
                         ("sys/bus/pci/drivers/snd_hda_intel/bind", AUDIO))
        self.assertEqual(res, ["ok"] * 6)
        self.assertEqual((self.fs.driver(GPU), self.fs.driver(AUDIO)), ("nouveau", "snd_hda_intel"))
        self.assertEqual((self.fs.override(GPU), self.fs.override(AUDIO)), (None, None))
        self.assertEqual(self.fs.log(), [
            f"override {GPU} vfio-pci ok",
            f"unbind {GPU} nouveau ok",
            f"probe {GPU} vfio-pci ok",
            f"override {AUDIO} vfio-pci ok",
            f"unbind {AUDIO} snd_hda_intel ok",
            f"probe {AUDIO} vfio-pci ok",
            f"unbind {GPU} vfio-pci ok",
            f"override {GPU} \\n ok",
            f"probe {GPU} nouveau ok",
            f"unbind {AUDIO} vfio-pci ok",
            f"override {AUDIO} \\n ok",
            f"bind {AUDIO} snd_hda_intel ok",
        ])


class Faults(Base):
    def test_ebusy_changes_nothing_and_persists(self):
        self.fs.fault(GPU, "unbind", "ebusy")
        self.assertEqual(self.write1(self.dev(GPU, "driver/unbind"), GPU), "EBUSY")
        self.assertEqual(self.write1(self.dev(GPU, "driver/unbind"), GPU), "EBUSY")
        self.assertEqual(self.fs.driver(GPU), "nouveau")
        self.assertEqual(self.fs.log(), [f"fault {GPU} unbind ebusy", f"unbind {GPU} nouveau EBUSY"] * 2)
        self.assertEqual(self.write1("sys/bus/pci/drivers/amdgpu/unbind", AMD), "ok", "other devices unaffected")

    def test_once_fires_once(self):
        self.fs.fault(GPU, "override", "enodev", once=True)
        self.fs.fault(AMD, "probe", "eio")
        self.assertEqual(self.write1(self.dev(GPU, "driver_override"), "vfio-pci"), "ENODEV")
        self.assertIsNone(self.fs.override(GPU))
        self.assertEqual(self.fs.faults(), [f"{AMD} probe eio"])
        self.assertEqual(self.write1(self.dev(GPU, "driver_override"), "vfio-pci"), "ok")
        self.assertEqual(self.fs.override(GPU), "vfio-pci")

    def test_bind_fault_and_wildcard(self):
        self.fs.fault("*", "bind", "ebusy", once=True)
        self.assertEqual(self.write1("sys/bus/pci/drivers/xhci_hcd/bind", USB), "EBUSY")
        self.assertEqual(self.write1("sys/bus/pci/drivers/xhci_hcd/bind", USB), "ok")

    def test_hang_until_release(self):
        self.fs.fault(GPU, "unbind", "hang", once=True)
        env = self.fs.env(binary=PROBE, umockdev=False)
        p = subprocess.Popen([PROBE, "write", self.dev(GPU, "driver/unbind"), GPU], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 20 * MULT
            while f"fault {GPU} unbind hang" not in self.fs.log():
                self.assertLess(time.monotonic(), deadline, "the hanging write never started")
                self.assertIsNone(p.poll(), p.stderr.read() if p.poll() is not None else "")
                time.sleep(0.02)
            time.sleep(0.3)
            self.assertIsNone(p.poll(), "the write returned before release")
            self.assertEqual(self.fs.driver(GPU), "nouveau")
            # Other writers are not blocked by the stuck one.
            self.assertEqual(self.write1(self.dev(AMD, "driver_override"), "vfio-pci"), "ok")
            self.fs.release()
            out, err = p.communicate(timeout=20 * MULT)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.assertEqual(p.returncode, 0, err)
        self.assertEqual(json.loads(out)["result"], "ok")
        self.assertIsNone(self.fs.driver(GPU))
        self.assertEqual(self.fs.log(), [f"fault {GPU} unbind hang", f"override {AMD} vfio-pci ok",
                                         f"unbind {GPU} nouveau ok"])

    def test_vanish(self):
        self.fs.fault(GPU, "unbind", "vanish")
        self.assertEqual(self.write1(self.dev(GPU, "driver/unbind"), GPU), "ENODEV")
        self.assertFalse(self.fs.exists(GPU))
        sysd = self.fs.sys
        self.assertFalse(os.path.lexists(f"{sysd}/bus/pci/devices/{GPU}"))
        self.assertFalse(os.path.lexists(f"{sysd}/bus/pci/drivers/nouveau/{GPU}"))
        self.assertFalse(os.path.lexists(f"{sysd}/kernel/iommu_groups/1/devices/{GPU}"))
        self.assertFalse(os.path.lexists(f"{sysd}/devices/pci0000:00/{BRIDGE}/{GPU}"))
        self.assertTrue(self.fs.exists(AUDIO))
        self.assertEqual(self.fs.log(), [f"fault {GPU} unbind vanish", f"unbind {GPU} nouveau ENODEV"])
        self.assertEqual(self.write1("sys/bus/pci/drivers_probe", GPU), "ENODEV")

    def test_vanishing_bridge_takes_its_children(self):
        self.fs.fault(BRIDGE, "probe", "vanish")
        self.assertEqual(self.write1("sys/bus/pci/drivers_probe", BRIDGE), "ENODEV")
        self.assertEqual(self.fs.devices(), [AMD, NIC, AST, USB])
        self.assertEqual(self.fs.bound("snd_hda_intel"), [])
        self.assertEqual(os.listdir(f"{self.fs.sys}/kernel/iommu_groups/1/devices"), [])


class PassThrough(Base):
    def test_outside_root_untouched(self):
        outside = os.path.join(self.tmp, "plain.txt")
        inside_fake = os.path.join(self.fs.fake, "note")
        for p in (outside, inside_fake):
            with open(p, "w") as f:
                f.write("0123456789\n")
        res = self.pywrite([[outside, "vfio-pci", "write"], [inside_fake, "abc", "write"],
                            [outside, "XY", "pwrite"]], umockdev=True)
        self.assertEqual(res, [["ok", 8], ["ok", 3], ["ok", 2]])
        self.assertEqual(self.read(outside), "vfio-pcXY9\n")
        self.assertEqual(self.read(inside_fake), "abc3456789\n")
        self.assertEqual(self.fs.log(), [])

    def test_pipes_and_stdout_pass(self):
        env = self.fs.env(asan=False, umockdev=False)
        p = subprocess.run([sys.executable, "-c", "import os; os.write(1, b'hello\\n')"], env=env,
                           capture_output=True, text=True, timeout=30 * MULT)
        self.assertEqual(p.stdout, "hello\n")

    def test_without_fakesysfs_root_nothing_emulated(self):
        path = os.path.join(self.fs.root, self.dev(GPU, "driver_override"))
        env = self.fs.env(asan=False, umockdev=False)
        del env["FAKESYSFS_ROOT"]
        p = subprocess.run([sys.executable, "-c", WRITER, json.dumps([[path, "vfio-pci", "write"]])], env=env,
                           capture_output=True, text=True, timeout=30 * MULT)
        self.assertEqual(json.loads(p.stdout), [["ok", 8]])
        self.assertEqual(self.read(self.dev(GPU, "driver_override")), "vfio-pci")   # plain file write
        self.assertEqual(self.fs.log(), [])

    def test_pwrite_writev_and_generic_attributes(self):
        sysd = self.fs.sys
        hp = f"{sysd}/kernel/mm/hugepages/hugepages-2048kB"
        res = self.pywrite([[f"{sysd}/bus/pci/devices/{AMD}/driver_override", "vfio-pci", "pwrite"],
                            [f"{sysd}/bus/pci/devices/{AMD}/driver/unbind", AMD, "writev"],
                            [f"{sysd}/bus/pci/drivers_probe", AMD, "write"],
                            [f"{hp}/nr_hugepages", "16", "write"],
                            [f"{sysd}/bus/pci/devices/{AMD}/class", "0x0", "write"],
                            [f"{sysd}/bus/pci/devices/{AMD}/uevent", "change", "write"]])
        self.assertEqual(res, [["ok", 8], ["ok", 12], ["ok", 12], ["ok", 2], ["EACCES", 0], ["ok", 6]])
        self.assertEqual(self.fs.driver(AMD), "vfio-pci")
        self.assertEqual(self.read("sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"), "16")
        self.assertEqual(self.read("sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages"), "16\n")
        self.assertEqual(self.read(self.dev(AMD, "class")), "0x030200\n")
        self.assertTrue(self.read(self.dev(AMD, "uevent")).startswith("DRIVER=vfio-pci\n"))
        self.assertEqual(self.fs.log()[3:], ["write kernel/mm/hugepages/hugepages-2048kB/nr_hugepages 16 ok",
                                             f"write devices/pci0000:00/{AMD}/class 0x0 EACCES",
                                             f"uevent {AMD} change ok"])

    def test_threads_are_serialised(self):
        bdfs = [GPU, AUDIO, AMD, NIC, AST, USB]
        rounds = 41
        self.pywrite(["threads", f"{self.fs.sys}/bus/pci/devices/%s/driver_override", bdfs, rounds])
        log = self.fs.log()
        self.assertEqual(len(log), len(bdfs) * rounds)
        self.assertTrue(all(line.startswith("override ") and line.endswith(" ok") for line in log))
        for bdf in bdfs:
            self.assertEqual(self.fs.override(bdf), "vfio-pci")


class Env(Base):
    def test_preload_order_and_variables(self):
        env = self.fs.env(binary=PROBE)
        libs = env["LD_PRELOAD"].split(":")
        runtime = fakesysfs.asan_runtime(PROBE)
        # The default binary (qvisor) is built like udev-probe.
        self.assertEqual(bool(fakesysfs.asan_runtime(fakesysfs.default_binary())), bool(runtime))
        if runtime:
            self.assertEqual(libs.pop(0), runtime)
        self.assertEqual(libs[:2], [self.fs.lib, fakesysfs.UMOCKDEV_PRELOAD])
        for var in ("FAKESYSFS_ROOT", "UMOCKDEV_DIR", "QVISOR_SYSROOT"):
            self.assertEqual(env[var], self.fs.root)
        self.assertEqual(self.fs.env(asan=False)["LD_PRELOAD"].split(":")[0], self.fs.lib)
        env = self.fs.env(base={"LD_PRELOAD": "libfoo.so"}, asan=False, umockdev=False)
        self.assertEqual(env, {"LD_PRELOAD": f"{self.fs.lib}:libfoo.so", "FAKESYSFS_ROOT": self.fs.root,
                               "QVISOR_SYSROOT": self.fs.root})


@unittest.skipUnless(HAVE_UMOCKDEV, "umockdev not installed (Debian: umockdev)")
class Udev(Base):
    def test_libudev_sees_the_tree(self):
        devs = {d["bdf"]: d for d in self.probe("list")}
        self.assertEqual(sorted(devs), [BRIDGE, GPU, AUDIO, AMD, NIC, AST, USB])
        g = devs[GPU]
        self.assertEqual((g["class"], g["vendor"], g["device"], g["driver"], g["iommu_group"], g["numa_node"]),
                         ("0x030000", "0x10de", "0x1eb8", "nouveau", 1, 1))
        self.assertEqual(g["syspath"], f"/sys/devices/pci0000:00/{BRIDGE}/{GPU}")
        self.assertEqual((g["vendor_db"], g["model_db"]), ("NVIDIA Corporation", "TU104GL [Tesla T4]"))
        self.assertTrue(devs[BRIDGE]["bridge"])

        self.assertIsNone(devs[AST]["iommu_group"])
        self.assertIsNone(devs[USB]["driver"])

    def test_libudev_sees_binding(self):
        out = self.probe("write", self.dev(GPU, "driver_override"), "vfio-pci",
                         "write", self.dev(GPU, "driver/unbind"), GPU,
                         "list",
                         "write", "sys/bus/pci/drivers_probe", GPU,
                         "list")
        lists = [[o for o in out[2:9]], [o for o in out[10:]]]
        self.assertEqual([o["result"] for o in (out[0], out[1], out[9])], ["ok", "ok", "ok"])
        self.assertIsNone({o["bdf"]: o for o in lists[0]}[GPU]["driver"])
        self.assertEqual({o["bdf"]: o for o in lists[1]}[GPU]["driver"], "vfio-pci")
        self.assertEqual({o["bdf"]: o for o in lists[1]}[AUDIO]["driver"], "snd_hda_intel")

    def test_libudev_after_vanish(self):
        self.fs.fault(AMD, "override", "vanish")
        out = self.probe("write", self.dev(AMD, "driver_override"), "vfio-pci", "list",
                         "write", self.dev(AMD, "driver_override"), "vfio-pci")
        self.assertEqual(out[0]["result"], "ENODEV")
        self.assertNotIn(AMD, [o["bdf"] for o in out[1:-1]])
        self.assertIn(NIC, [o["bdf"] for o in out[1:-1]])
        self.assertEqual(out[-1]["result"], "ENOENT")     # the path itself is gone now

    def test_umockdev_run_with_description(self):
        argv = fakesysfs.umockdev_run_argv(os.path.join(HERE, "gpus.umockdev"), [PROBE, "list"])
        p = subprocess.run(argv, capture_output=True, text=True, timeout=60 * MULT)
        self.assertEqual(p.returncode, 0, p.stderr)
        devs = {d["bdf"]: d for d in map(json.loads, p.stdout.splitlines())}
        self.assertEqual(sorted(devs), [BRIDGE, GPU, AUDIO])
        self.assertEqual((devs[GPU]["driver"], devs[GPU]["iommu_group"], devs[GPU]["class"]),
                         ("nouveau", 1, "0x030000"))
        self.assertEqual(devs[GPU]["vendor_db"], "NVIDIA Corporation")
        self.assertEqual(devs[AUDIO]["model_db"], "TU104 HD Audio Controller")
        self.assertTrue(devs[BRIDGE]["bridge"])

    def test_product_discovery_under_umockdev_description(self):
        # vfio_gpu_list_get(), the code behind `qvisor gpu list`, on described devices
        argv = fakesysfs.umockdev_run_argv(os.path.join(HERE, "gpus.umockdev"), [PROBE, "gpus"])
        p = subprocess.run(argv, capture_output=True, text=True, timeout=60 * MULT)
        self.assertEqual(p.returncode, 0, p.stderr)
        gpus = [json.loads(line) for line in p.stdout.splitlines()]
        self.assertEqual([g["gpu"] for g in gpus], [GPU])
        g = gpus[0]
        self.assertEqual((g["index"], g["driver"], g["iommu_group"]), (0, "nouveau", 1))
        self.assertEqual((g["vendor"], g["device"]), ("NVIDIA Corporation", "TU104GL [Tesla T4]"))
        self.assertEqual(g["companions"], [AUDIO])
        self.assertEqual(g["group"], [GPU, AUDIO])  # the bridge has a group of its own


if __name__ == "__main__":
    unittest.main(verbosity=2)
