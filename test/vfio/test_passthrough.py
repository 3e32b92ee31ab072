#!/usr/bin/env python3
"""GPU passthrough end to end: the real daemon and CLI against the fake sysfs
kernel (test/fakesysfs: libudev sees it through umockdev, writes go through
the sysfs root), with test/vfio/fake-qemu.py standing in for QEMU: it checks
what QEMU's vfio code checks (bound to vfio-pci, group viable, RLIMIT_MEMLOCK),
records its argv, and runs the real QEMU without the vfio devices."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
sys.path.insert(0, os.path.join(HERE, "..", "guest"))
sys.path.insert(0, os.environ.get("QVISOR_FAKESYSFS_DIR", os.path.join(HERE, "..", "fakesysfs")))
from qvtest import QVISOR, Node, Subscriber, can_raise_memlock, scaled, wait_for  # noqa: E402
import guestlib  # noqa: E402
from fakesysfs import FakeSys, asan_runtime  # noqa: E402

GUEST = None
GPU = "0000:01:00.0"      # with its audio function .1 in group 1 (a bridge in group 0)
AUDIO = "0000:01:00.1"
SHARED = "0000:02:00.0"   # shares group 2 with the NIC
NIC = "0000:03:00.0"
NOGROUP = "0000:04:00.0"  # no IOMMU group


def setUpModule():
    global GUEST
    GUEST = guestlib.build_tiny_guest()


class Passthrough(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="qv-pt-")
        self.fs = FakeSys(os.path.join(self.tmp, "root"))
        # the daemon reads /proc through the same root (pid identity): the real one
        shutil.rmtree(os.path.join(self.fs.root, "proc"))
        os.symlink("/proc", os.path.join(self.fs.root, "proc"))
        self.qemu_log = os.path.join(self.tmp, "qemu-argv.jsonl")
        self.node = Node("vm_defaults:\n  memory: 256M\n  disk: 1G\n  stop_timeout: 20s\n  kill_timeout: 3s\n"
                         f"qemu:\n  binary: {os.path.join(HERE, 'fake-qemu.py')}\n"
                         "vfio:\n  sysfs_timeout: 1s\n")
        self.start_daemon()
        base = os.path.join(self.node.dir, "blank.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", base, "1G"], check=True)
        self.node.qvisor("image", "import", base, "blank", check=0)

    def tearDown(self):
        self.fs.release()  # no write may stay blocked past the test
        self.node.cleanup()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- helpers --------------------------------------------------------------

    def daemon_env(self, **extra):
        # The sanitizer runtime must not be preloaded into the daemon's
        # children (qemu-img hangs under it); the daemon links it anyway and
        # is told not to insist on coming first.
        env = self.fs.env(asan=False)
        if asan_runtime(QVISOR):
            opts = env.get("ASAN_OPTIONS", "")
            env["ASAN_OPTIONS"] = (opts + ":" if opts else "") + "verify_asan_link_order=0"
        env["FAKE_QEMU_LOG"] = self.qemu_log
        if not can_raise_memlock():
            env["QVISOR_TEST_MEMLOCK_BEST_EFFORT"] = "1"
        env.update(extra)
        return env

    def start_daemon(self, **extra):
        self.node.start_daemon(extra_env={k: v for k, v in self.daemon_env(**extra).items()
                                          if os.environ.get(k) != v})

    def create(self, name, *gpus, check=0):
        args = ["vm", "create", name, "--image", "blank", "--kernel", GUEST.kernel, "--initrd", GUEST.initrd,
                "--append", guestlib.cmdline([]), "--no-agent"]
        for g in gpus:
            args += ["--gpu", g]
        return self.node.qvisor(*args, check=check)

    def show(self, name):
        return self.node.qvisor_json("vm", "show", name)

    def records(self):
        d = os.path.join(self.node.state, "vfio")
        return sorted(f[:-5] for f in os.listdir(d) if f.endswith(".json")) if os.path.isdir(d) else []

    def record(self, bdf):
        with open(os.path.join(self.node.state, "vfio", bdf + ".json")) as f:
            return json.load(f)

    def qemu_starts(self):
        try:
            with open(self.qemu_log) as f:
                return [json.loads(line) for line in f]
        except FileNotFoundError:
            return []

    def assert_host_has(self, *pairs):
        for bdf, drv in pairs:
            self.assertEqual(self.fs.driver(bdf), drv, f"{bdf}: driver")
            self.assertIsNone(self.fs.override(bdf), f"{bdf}: driver_override left set")

    # -- discovery ------------------------------------------------------------

    def test_gpu_list(self):
        gpus = self.node.qvisor_json("gpu", "list")["gpus"]
        self.assertEqual([g["address"] for g in gpus], [GPU, SHARED, NOGROUP])
        g = gpus[0]
        self.assertEqual((g["index"], g["class"], g["vendor_id"], g["device_id"]), (0, "0x030000", "10de", "1eb8"))
        self.assertEqual((g["vendor"], g["device"]), ("NVIDIA Corporation", "TU104GL [Tesla T4]"))
        self.assertEqual((g["driver"], g["iommu_group"], g["numa_node"], g["vm"]), ("nouveau", 1, 1, None))
        self.assertEqual([c["address"] for c in g["companions"]], [AUDIO])
        self.assertEqual([(m["address"], m["class_name"]) for m in gpus[1]["group"]],
                         [(SHARED, "3D controller"), (NIC, "Ethernet controller")])
        self.assertIsNone(gpus[2]["iommu_group"])
        out = self.node.qvisor("gpu", "list", check=0).stdout
        self.assertRegex(out, r"(?m)^INDEX +ADDRESS +IDS")
        self.assertIn("NVIDIA Corporation TU104GL [Tesla T4]", out)
        self.assertIn(f"  {NIC}  Ethernet controller", out)

    def test_create_refuses_what_cannot_be_passed(self):
        p = self.create("a", AUDIO, check=65)
        self.assertIn("not a display device", p.stderr)
        p = self.create("b", "2", check=69)
        self.assertIn("no IOMMU group", p.stderr)
        p = self.create("c", SHARED, check=75)
        self.assertIn(f"{NIC} (Ethernet controller, driver e1000e)", p.stderr)
        self.assertIn("take-group", p.stderr)
        p = self.create("d", "7", check=66)
        self.assertIn("no such GPU", p.stderr)
        self.create("e", "0")
        self.assertEqual(self.show("e")["spec"]["gpus"], [GPU])  # the index became the address
        p = self.create("f", GPU, check=75)
        self.assertIn("held by VM 'e'", p.stderr)
        self.assertEqual(self.node.qvisor_json("gpu", "list")["gpus"][0]["vm"], "e")
        self.assertEqual(self.fs.log(), [])  # nothing was written for any of this

    # -- start, stop, crash -------------------------------------------------------

    def test_start_binds_the_group_stop_gives_it_back(self):
        self.create("ml", GPU)
        events = Subscriber(self.node.socket, vms=["ml"])
        self.addCleanup(events.close)
        j = self.node.qvisor_json("vm", "start", "ml", timeout=scaled(60))
        self.assertEqual(j["state"], "running")
        for bdf in (GPU, AUDIO):
            self.assertEqual(self.fs.driver(bdf), "vfio-pci")
            self.assertEqual(self.fs.override(bdf), "vfio-pci")
            rec = self.record(bdf)
            self.assertEqual((rec["vm"], rec["state"]), ("ml", "bound"))
        self.assertEqual(self.record(GPU)["driver"], "nouveau")
        self.assertEqual(self.record(AUDIO)["driver"], "snd_hda_intel")
        self.assertEqual(self.fs.driver("0000:00:01.0"), "pcieport")  # the bridge stays
        # libvirt's order: override, unbind, probe
        ops = [line.split()[:2] for line in self.fs.log() if line.split()[1] == GPU]
        self.assertEqual(ops, [["override", GPU], ["unbind", GPU], ["probe", GPU]])
        start = self.qemu_starts()[-1]
        self.assertEqual(start["hostdevs"], [GPU, AUDIO])
        self.assertEqual(start["memlock_requested"], (256 << 20) + (1 << 30))
        if can_raise_memlock():
            self.assertEqual(start["memlock"], (256 << 20) + (1 << 30))
        self.assertIn(f"vfio-pci,host={GPU},id=hostpci0.0,bus=qv-hostport0,addr=0x0.0,multifunction=on",
                      start["argv"])
        gl = self.node.qvisor_json("gpu", "list")["gpus"][0]
        self.assertEqual((gl["vm"], gl["binding"], gl["driver"]), ("ml", "bound", "vfio-pci"))

        self.node.qvisor("vm", "stop", "ml", "--force", check=0, timeout=scaled(60))
        self.assert_host_has((GPU, "nouveau"), (AUDIO, "snd_hda_intel"))
        self.assertEqual(self.records(), [])
        self.assertIn("VM ml: GPUs given back to the host", self.node.log())
        # the event stream: bound before it ran, given back after it stopped
        gpu = [(e["action"], e["result"], e.get("devices"))
               for e in events.events_until(lambda e: e["type"] == "gpu" and e["action"] == "give-back", scaled(20))
               if e["type"] == "gpu"]
        self.assertEqual(gpu, [("bind", "ok", [GPU, AUDIO]), ("give-back", "ok", None)])

    def test_kill9_of_qemu_gives_the_gpu_back(self):
        self.create("ml", GPU)
        pid = self.node.qvisor_json("vm", "start", "ml", timeout=scaled(60))["pid"]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: self.show("ml")["state"] == "crashed", scaled(20), "the crash noticed")
        self.assert_host_has((GPU, "nouveau"), (AUDIO, "snd_hda_intel"))
        self.assertEqual(self.records(), [])

    def test_take_group_holds_the_nic_without_passing_it(self):
        self.create("net", SHARED + ",take-group")
        self.node.qvisor("vm", "start", "net", check=0, timeout=scaled(60))
        self.assertEqual((self.fs.driver(SHARED), self.fs.driver(NIC)), ("vfio-pci", "vfio-pci"))
        self.assertEqual(self.qemu_starts()[-1]["hostdevs"], [SHARED])
        self.node.qvisor("vm", "stop", "net", "--force", check=0, timeout=scaled(60))
        self.assert_host_has((SHARED, "amdgpu"), (NIC, "e1000e"))

    def test_keep_stays_on_vfio_until_the_vm_is_removed(self):
        self.create("kept", GPU + ",keep")
        for _ in range(2):  # the second start finds it on vfio-pci and keeps its origin
            self.node.qvisor("vm", "start", "kept", check=0, timeout=scaled(60))
            self.node.qvisor("vm", "stop", "kept", "--force", check=0, timeout=scaled(60))
            self.assertEqual(self.fs.driver(GPU), "vfio-pci")
            self.assertEqual(self.record(GPU)["driver"], "nouveau")
        self.node.qvisor("vm", "rm", "kept", check=0)
        wait_for(lambda: self.fs.driver(GPU) == "nouveau", scaled(10), "the kept GPU given back after rm")
        # the record goes after the give-back (the worker's last step): under
        # load the driver can be seen back a moment before the record is gone
        wait_for(lambda: self.records() == [], scaled(10), "the kept GPU's record removed after rm")

    # -- failures roll back -----------------------------------------------------------

    def test_ebusy_during_bind_rolls_everything_back(self):
        self.create("ml", GPU)
        self.fs.fault(AUDIO, "probe", "ebusy", once=True)
        p = self.node.qvisor("vm", "start", "ml", timeout=scaled(60))
        self.assertEqual(p.returncode, 75, p.stderr)
        self.assertIn(f"{AUDIO}: writing '{AUDIO}' to /sys/bus/pci/drivers_probe failed: Device or resource busy",
                      p.stderr)
        self.assert_host_has((GPU, "nouveau"), (AUDIO, "snd_hda_intel"))
        self.assertEqual(self.records(), [])
        self.assertEqual(self.qemu_starts(), [])
        self.assertEqual(self.show("ml")["state"], "stopped")

    def test_device_that_vanishes(self):
        self.create("ml", GPU)
        self.fs.fault(AUDIO, "unbind", "vanish")
        p = self.node.qvisor("vm", "start", "ml", timeout=scaled(60))
        self.assertNotEqual(p.returncode, 0)
        self.assertIn(AUDIO, p.stderr)
        self.assertFalse(self.fs.exists(AUDIO))
        self.assert_host_has((GPU, "nouveau"))
        self.assertEqual(self.show("ml")["state"], "stopped")

    def test_qemu_that_fails_gives_the_devices_back(self):
        self.node.stop_daemon()
        self.start_daemon(FAKE_QEMU_FAIL="1")
        self.create("ml", GPU)
        p = self.node.qvisor("vm", "start", "ml", timeout=scaled(60))
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("error getting device from group", p.stderr)  # QEMU's own words
        self.assert_host_has((GPU, "nouveau"), (AUDIO, "snd_hda_intel"))
        self.assertEqual(self.records(), [])

    def test_hung_write_marks_the_device_stuck_and_the_daemon_answers(self):
        self.create("ml", GPU)
        events = Subscriber(self.node.socket, vms=["ml"])
        self.addCleanup(events.close)
        self.fs.fault(GPU, "unbind", "hang")
        t0 = time.monotonic()
        p = self.node.qvisor("vm", "start", "ml", timeout=scaled(60))
        self.assertEqual(p.returncode, 75, p.stderr)  # ETIMEDOUT
        self.assertIn("did not finish within", p.stderr)
        bind = events.events_until(lambda e: e["type"] == "gpu", scaled(10))[-1]
        self.assertEqual((bind["action"], bind["result"]), ("bind", "failed"))
        self.assertIn("did not finish within", bind["error"])
        self.assertIn(f"{GPU}/driver/unbind", p.stderr)
        self.assertLess(time.monotonic() - t0, scaled(30))
        # the write is still blocked; the daemon is not
        self.assertTrue(any(line.startswith(f"fault {GPU} unbind hang") for line in self.fs.log()))
        self.assertEqual(self.show("ml")["state"], "stopped")
        gl = self.node.qvisor_json("gpu", "list")["gpus"][0]
        self.assertEqual(gl["binding"], "stuck")
        self.assertIn("driver/unbind did not finish", gl["stuck_reason"])
        p = self.node.qvisor("vm", "start", "ml", timeout=scaled(60))
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("stuck", p.stderr)
        # the card answers again: cleanup tries again and gives it back
        self.fs.release()
        self.fs.clear_faults()
        wait_for(lambda: self.fs.driver(GPU) is None, scaled(10), "the hung unbind to finish")
        out = self.node.qvisor("cleanup", check=0, timeout=scaled(60)).stdout
        self.assertIn(f"vfio device {GPU}: given back", out)
        self.assert_host_has((GPU, "nouveau"), (AUDIO, "snd_hda_intel"))
        self.assertEqual(self.records(), [])

    # -- crashes of the daemon, cleanup -----------------------------------------------

    def test_daemon_crash_between_bind_and_qemu_is_repaired_at_restart(self):
        self.node.stop_daemon()
        self.start_daemon(QVISOR_TEST_CRASH_AT="start-after-bind")
        self.create("ml", GPU)
        self.node.qvisor("vm", "start", "ml", timeout=scaled(60))
        wait_for(lambda: self.node.proc.poll() is not None, scaled(30), "the daemon crash")
        self.assertEqual(self.fs.driver(GPU), "vfio-pci")
        self.assertEqual(self.node.qemu_pids(), [])
        self.start_daemon()
        wait_for(lambda: self.fs.driver(GPU) == "nouveau", scaled(10), "the GPU given back at restart")
        # the group's other function and the records follow (vfio/take.c give_back_one)
        wait_for(lambda: self.fs.driver(AUDIO) == "snd_hda_intel" and self.records() == [], scaled(10),
                 "the whole group given back and its records removed")
        self.assert_host_has((GPU, "nouveau"), (AUDIO, "snd_hda_intel"))
        self.assertEqual(self.records(), [])
        self.assertEqual(self.show("ml")["state"], "stopped")

    def test_restart_repair_gives_back_what_is_not_kept(self):
        # one GPU kept on vfio-pci by choice, one not: a crash after binding
        # both must give the second back even though the first stays
        self.node.stop_daemon()
        self.start_daemon(QVISOR_TEST_CRASH_AT="start-after-bind")
        self.create("mix", GPU + ",keep", SHARED + ",take-group")
        self.node.qvisor("vm", "start", "mix", timeout=scaled(60))
        wait_for(lambda: self.node.proc.poll() is not None, scaled(30), "the daemon crash")
        self.assertEqual([self.fs.driver(b) for b in (GPU, AUDIO, SHARED, NIC)], ["vfio-pci"] * 4)
        self.start_daemon()
        wait_for(lambda: self.fs.driver(SHARED) == "amdgpu", scaled(10), "the unkept GPU given back at restart")
        self.assert_host_has((SHARED, "amdgpu"), (NIC, "e1000e"))
        self.assertEqual((self.fs.driver(GPU), self.fs.driver(AUDIO)), ("vfio-pci", "vfio-pci"))
        # the record goes once the device is back (vfio/take.c give_back_one)
        wait_for(lambda: self.records() == [GPU, AUDIO], scaled(10), "the unkept GPU's record removed")
        self.assertEqual(self.records(), [GPU, AUDIO])

    def test_cleanup_gives_back_recorded_and_leaves_unrecorded(self):
        # a record left by a VM that is gone, with its device still on vfio-pci,
        # and a device someone else put on vfio-pci
        os.makedirs(os.path.join(self.node.state, "vfio"))
        with open(os.path.join(self.node.state, "vfio", SHARED + ".json"), "w") as f:
            json.dump({"bdf": SHARED, "vm": "gone", "driver": "amdgpu", "keep": False, "state": "bound"}, f)
        for bdf in (SHARED, NOGROUP):
            p = self.fs.run([os.environ["QVISOR_UDEV_PROBE"], "write", f"sys/bus/pci/devices/{bdf}/driver_override",
                             "vfio-pci", "write", f"sys/bus/pci/devices/{bdf}/driver/unbind", bdf, "write",
                             "sys/bus/pci/drivers_probe", bdf])
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertEqual(self.fs.driver(bdf), "vfio-pci")
        out = self.node.qvisor("cleanup", "--dry-run", check=0).stdout
        self.assertIn(f"vfio device {SHARED}: would give back", out)
        self.assertIn(f"vfio device {NOGROUP}: left alone", out)
        self.assertEqual(self.fs.driver(SHARED), "vfio-pci")
        out = self.node.qvisor("cleanup", check=0, timeout=scaled(60)).stdout
        self.assertIn(f"vfio device {SHARED}: given back", out)
        self.assertIn(f"vfio device {NOGROUP}: left alone (on vfio-pci, but qvisor has no record", out)
        self.assert_host_has((SHARED, "amdgpu"))
        self.assertEqual(self.fs.driver(NOGROUP), "vfio-pci")
        self.assertEqual(self.records(), [])


if __name__ == "__main__":
    unittest.main(verbosity=2)
