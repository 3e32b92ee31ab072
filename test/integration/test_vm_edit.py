#!/usr/bin/env python3
"""vm edit and vm resize (issue 19) through the real CLI and daemon.

Edit: refused while the VM runs (75) and applied after a stop (QEMU's
command line in qemu.log has the new -smp and -m at the next start), NICs
that keep their MAC and nat address and a new one that gets a MAC the VM
never had, the admission of the new values on the fake two-node machine
(this VM's own reservation not counted; a refusal leaves the old spec), a
GPU another VM holds on the fake sysfs kernel, and a daemon killed before
and after the spec write (QVISOR_TEST_CRASH_AT) leaving the old or the new
spec, whole.

Resize: a shrink refused (65) naming both sizes, an offline grow
(qemu-img info shows the new virtual size, spec and state record it), a
start refused as busy while qemu-img runs, the storage pool's fit, and an
online grow of the tiny guest under TCG whose kernel reports the new
capacity of its virtio disk."""

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "guest"))
sys.path.insert(0, os.environ.get("QVISOR_FAKESYSFS_DIR", os.path.join(HERE, "..", "fakesysfs")))
from qvtest import QVISOR, Node, scaled, wait_for  # noqa: E402

MKFAKETOPO = os.environ.get("QVISOR_MKFAKETOPO")
MIB = 1 << 20
GIB = 1 << 30


def qemu_img_size(path):
    out = subprocess.run(["qemu-img", "info", "--output=json", "-U", path], capture_output=True, check=True,
                         text=True).stdout
    return json.loads(out)["virtual-size"]


class EditBase(unittest.TestCase):
    CONFIG = "vm_defaults:\n  memory: 256M\n  disk: 1G\n  stop_timeout: 10s\n  kill_timeout: 5s\n"

    def make_node(self, config="", env=None):
        self.node = Node(self.CONFIG + config)
        self.env = env or {}
        self.node.start_daemon(extra_env=self.env)
        base = os.path.join(self.node.dir, "blank.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", base, "1G"], check=True)
        self.node.qvisor("image", "import", base, "blank", check=0)

    def slow_qemu_img(self):
        """A qemu-img that takes 2 s to resize or snapshot: long enough to
        ask for something else meanwhile (qemu.img_binary)."""
        d = tempfile.mkdtemp(prefix="qv-img-")
        self.addCleanup(shutil.rmtree, d, ignore_errors=True)
        path = os.path.join(d, "slow-qemu-img")
        with open(path, "w") as f:
            f.write('#!/bin/sh\ncase "$1" in resize|snapshot) sleep 2;; esac\nexec qemu-img "$@"\n')
        os.chmod(path, 0o755)
        return path

    def tearDown(self):
        try:
            if self.node.proc and self.node.proc.poll() is None:
                self.assertEqual(self.node.stop_daemon(), 0, self.node.log()[-3000:])
                self.assertEqual(self.node.sanitizer_reports(), [], self.node.log()[-3000:])
        finally:
            self.node.cleanup()

    def create(self, name, *args, want=0):
        return self.node.qvisor("vm", "create", name, "--image", "blank", *args, check=want)

    def show(self, name):
        return self.node.qvisor_json("vm", "show", name)

    def spec_file(self, name):
        with open(os.path.join(self.node.state, "instances", name, "spec.json")) as f:
            return json.load(f)

    def state_file(self, name):
        with open(os.path.join(self.node.state, "instances", name, "state.json")) as f:
            return json.load(f)


class Edit(EditBase):
    def setUp(self):
        self.make_node()

    def last_command_line(self, name):
        with open(os.path.join(self.node.state, "instances", name, "qemu.log")) as f:
            lines = [line for line in f if "qemu-system" in line and " -smp " in line]
        self.assertTrue(lines, "no command line in qemu.log")
        return lines[-1]

    def test_refused_while_running_applied_after_stop(self):
        self.create("web", "--cpus", "1", "--memory", "256M")
        p = self.node.qvisor("vm", "edit", "web", check=64)  # nothing to change
        self.assertIn("nothing to change", p.stderr)
        # no kernel: SeaBIOS finds nothing to boot and waits; QEMU runs all the same
        self.node.qvisor("vm", "start", "web", check=0, timeout=scaled(60))
        self.assertIn(" -smp 1 ", self.last_command_line("web"))
        p = self.node.qvisor("vm", "edit", "web", "--cpus", "2", check=75)
        self.assertIn("VM 'web' is running", p.stderr)
        self.assertEqual(self.spec_file("web")["cpus"], 1)
        self.node.qvisor("vm", "stop", "web", "--force", check=0, timeout=scaled(60))

        p = self.node.qvisor("vm", "edit", "web", "--cpus", "2", "--memory", "320M", "--restart", "on-failure",
                             check=0)
        self.assertRegex(p.stdout, r"(?m)^spec\.cpus: +2$")  # printed as vm show prints it
        self.assertRegex(p.stdout, r"(?m)^spec\.memory: +320M$")
        spec = self.spec_file("web")
        self.assertEqual((spec["cpus"], spec["memory"], spec["restart"]), (2, "320M", "on-failure"))
        self.assertEqual(spec["hostname"], "web")  # the rest is as it was
        j = self.show("web")
        self.assertEqual((j["cpus"], j["memory"], j["state"]), (2, 320 * MIB, "stopped"))
        self.node.qvisor("vm", "start", "web", check=0, timeout=scaled(60))
        line = self.last_command_line("web")
        self.assertIn(" -smp 2 ", line)
        self.assertIn(" -m 320M ", line)
        self.node.qvisor("vm", "stop", "web", "--force", check=0, timeout=scaled(60))
        # what cannot be edited, what is not valid, what does not exist
        p = self.node.qvisor("vm", "edit", "web", "--cpus", "0", check=65)
        self.assertIn("cpus", p.stderr)
        p = self.node.qvisor("vm", "edit", "nope", "--cpus", "2", check=66)
        # it survives a daemon restart
        self.assertEqual(self.node.stop_daemon(), 0)
        self.node.start_daemon(extra_env=self.env)
        self.assertEqual(self.show("web")["spec"]["cpus"], 2)

    def test_nics_keep_their_mac_and_address(self):
        self.create("n", "--net", "user", "--net", "nat")
        self.create("other", "--net", "nat")
        before = self.show("n")["nics"]
        other_ip = self.show("other")["nics"][0]["ip"]
        j = self.node.qvisor_json("vm", "edit", "n", "--net", "nat", "--net", "user", "--net", "nat")
        after = j["nics"]
        self.assertEqual([x["mode"] for x in after], ["nat", "user", "nat"])
        self.assertEqual((after[0]["mac"], after[0]["ip"]), (before[1]["mac"], before[1]["ip"]))
        self.assertEqual(after[1]["mac"], before[0]["mac"])
        # the new NIC: a MAC the VM never had, an address nobody has
        self.assertNotIn(after[2]["mac"], [x["mac"] for x in before])
        self.assertNotIn(after[2]["ip"], [before[1]["ip"], other_ip])
        # back to the default: one user NIC, with the MAC it had
        j = self.node.qvisor_json("vm", "edit", "n", "--default-net")
        self.assertEqual([(x["mode"], x["mac"]) for x in j["nics"]], [("user", before[0]["mac"])])
        # another VM's address is refused as at create
        p = self.node.qvisor("vm", "edit", "n", "--net", f"nat,ip={other_ip}", check=75)
        self.assertIn("other", p.stderr)

    def crash_at(self, point, cpus):
        """Edit with the daemon killed at `point`; a new daemon then loads
        the VM with a whole spec.json: returns its cpus."""
        self.assertEqual(self.node.stop_daemon(), 0)
        self.node.start_daemon(extra_env=dict(self.env, QVISOR_TEST_CRASH_AT=point))
        p = self.node.qvisor("vm", "edit", "c", "--cpus", str(cpus))
        self.assertNotEqual(p.returncode, 0)
        self.assertEqual(self.node.proc.wait(timeout=scaled(10)), -signal.SIGKILL)
        self.assertIn(f"test hook: crashing at {point}", self.node.log())
        d = os.path.join(self.node.state, "instances", "c")
        self.assertEqual([f for f in os.listdir(d) if f.endswith(".tmp")], [])  # no temp file left
        self.node.start_daemon(extra_env=self.env)
        spec = self.spec_file("c")  # whole JSON
        self.assertEqual(self.show("c")["spec"]["cpus"], spec["cpus"])
        self.assertEqual(self.show("c")["state"], "stopped")
        return spec["cpus"]

    def test_daemon_killed_around_the_spec_write(self):
        self.create("c", "--cpus", "1")
        self.assertEqual(self.crash_at("edit-before-spec", 2), 1)  # the old spec
        self.assertEqual(self.crash_at("edit-after-spec", 2), 2)   # the new one
        self.node.qvisor("vm", "edit", "c", "--cpus", "1", check=0)  # and it goes on as usual
        self.assertEqual(self.spec_file("c")["cpus"], 1)


@unittest.skipUnless(MKFAKETOPO, "QVISOR_MKFAKETOPO not set (run through meson test)")
class EditAdmission(EditBase):
    """The fake two-node machine: 8 CPUs, 48 GiB (test/lib/faketopo.h)."""

    def setUp(self):
        self.root = tempfile.mkdtemp(prefix="qv-topo-")
        subprocess.run([MKFAKETOPO, self.root], check=True)
        self.make_node("resources:\n  cpu_overcommit: 1.0\n  memory_overcommit: 1.0\n",
                       env={"QVISOR_SYSROOT": self.root})

    def tearDown(self):
        super().tearDown()
        shutil.rmtree(self.root, ignore_errors=True)

    def test_admission_excludes_itself_and_keeps_the_old_spec(self):
        self.create("a", "--cpus", "4", "--memory", "1G")
        self.create("b", "--cpus", "4", "--memory", "1G")
        p = self.node.qvisor("vm", "edit", "b", "--cpus", "5", check=75)
        self.assertIn("CPU", p.stderr)
        self.assertEqual(self.spec_file("b")["cpus"], 4)
        self.assertEqual(self.show("b")["cpus"], 4)
        # its own 4 vCPUs are not counted against it: 4 + 4 = 8 fits
        self.node.qvisor("vm", "edit", "b", "--cpus", "4", "--memory", "2G", check=0)
        self.node.qvisor("vm", "edit", "a", "--cpus", "3", check=0)
        self.node.qvisor("vm", "edit", "b", "--cpus", "5", check=0)
        p = self.node.qvisor("vm", "edit", "a", "--memory", "47G", check=75)  # 47 + 2 > 48
        self.assertIn("not enough memory", p.stderr)
        self.assertEqual(self.spec_file("a")["memory"], "1G")


class EditGpus(EditBase):
    """GPUs on the fake sysfs kernel (test/fakesysfs); the VMs are only defined."""

    GPU = "0000:01:00.0"

    def setUp(self):
        from fakesysfs import FakeSys, asan_runtime
        from qvtest import can_raise_memlock
        self.tmp = tempfile.mkdtemp(prefix="qv-edit-")
        self.fs = FakeSys(os.path.join(self.tmp, "root"))
        # the daemon reads /proc through the same root (pid identity): the real one
        shutil.rmtree(os.path.join(self.fs.root, "proc"))
        os.symlink("/proc", os.path.join(self.fs.root, "proc"))
        env = self.fs.env(asan=False)
        if asan_runtime(QVISOR):
            opts = env.get("ASAN_OPTIONS", "")
            env["ASAN_OPTIONS"] = (opts + ":" if opts else "") + "verify_asan_link_order=0"
        env["FAKE_QEMU_LOG"] = os.path.join(self.tmp, "qemu-argv.jsonl")
        if not can_raise_memlock():
            env["QVISOR_TEST_MEMLOCK_BEST_EFFORT"] = "1"
        # test/vfio/fake-qemu.py: QEMU's vfio checks against the fake tree, then the real QEMU without the devices
        fake_qemu = os.path.join(HERE, "..", "vfio", "fake-qemu.py")
        self.make_node(f"qemu:\n  binary: {fake_qemu}\nvfio:\n  sysfs_timeout: 1s\n",
                       env={k: v for k, v in env.items() if os.environ.get(k) != v})

    def tearDown(self):
        self.fs.release()
        super().tearDown()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_another_vms_gpu_is_refused(self):
        self.create("a", "--gpu", self.GPU, "--no-agent")
        self.create("b", "--no-agent")
        p = self.node.qvisor("vm", "edit", "b", "--gpu", "0", check=75)
        self.assertIn("held by VM 'a'", p.stderr)
        self.assertNotIn("gpus", self.spec_file("b"))
        # its own GPU is not another VM's: a's edit keeps it
        j = self.node.qvisor_json("vm", "edit", "a", "--gpu", self.GPU, "--cpus", "3")
        self.assertEqual(j["spec"]["gpus"], [self.GPU])
        j = self.node.qvisor_json("vm", "edit", "a", "--no-gpus")
        self.assertNotIn("gpus", j["spec"])
        j = self.node.qvisor_json("vm", "edit", "b", "--gpu", "0")  # free now; the index became the address
        self.assertEqual(j["spec"]["gpus"], [self.GPU])
        p = self.node.qvisor("vm", "edit", "b", "--gpu", "7", check=66)
        self.assertIn("no such GPU", p.stderr)
        self.assertEqual(self.fs.log(), [])  # nothing was bound for any of this

    def test_a_kept_gpu_goes_back_when_edited_out(self):
        self.create("k", "--gpu", self.GPU + ",keep", "--no-agent")
        self.create("o", "--no-agent")
        self.node.qvisor("vm", "start", "k", check=0, timeout=scaled(60))
        self.node.qvisor("vm", "stop", "k", "--force", check=0, timeout=scaled(60))
        self.assertEqual(self.fs.driver(self.GPU), "vfio-pci")  # kept between runs
        p = self.node.qvisor("vm", "edit", "o", "--gpu", self.GPU, check=75)
        self.assertIn("held by VM 'k'", p.stderr)
        self.node.qvisor("vm", "edit", "k", "--no-gpus", check=0)
        # no longer k's: given back to its driver, its record gone, free for another VM
        wait_for(lambda: self.fs.driver(self.GPU) == "nouveau", scaled(10), "the GPU given back after the edit")
        wait_for(lambda: not os.listdir(os.path.join(self.node.state, "vfio")), scaled(10), "its record removed")
        j = self.node.qvisor_json("vm", "edit", "o", "--gpu", self.GPU)
        self.assertEqual(j["spec"]["gpus"], [self.GPU])


class Resize(EditBase):
    def setUp(self):
        self.make_node(f"qemu:\n  img_binary: {self.slow_qemu_img()}\n")

    def disk(self, name):
        return os.path.join(self.node.state, "instances", name, "disk.qcow2")

    def test_offline_grow_shrink_and_fit(self):
        self.create("r", "--disk", "1G")
        p = self.node.qvisor("vm", "resize", "r", "--disk", "512M", check=65)
        self.assertIn("512M", p.stderr)
        self.assertIn("1G", p.stderr)
        self.assertIn("never shrink", p.stderr)
        p = self.node.qvisor("vm", "resize", "r", check=64)
        # +1G on a worker; a start meanwhile is refused as busy
        resize = subprocess.Popen([QVISOR, "--config", self.node.config, "vm", "resize", "r", "--disk", "+1G"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: "growing its disk" in self.node.log(), scaled(10), "the resize to begin")
        p = self.node.qvisor("vm", "start", "r", check=75)
        self.assertIn("its disk is being resized", p.stderr)
        p = self.node.qvisor("vm", "edit", "r", "--cpus", "2", check=75)
        p = self.node.qvisor("vm", "snapshot", "r", "create", "s1", check=75)  # the same disk
        self.assertIn("its disk is being resized", p.stderr)
        out, err = resize.communicate(timeout=scaled(30))
        self.assertEqual(resize.returncode, 0, err)
        self.assertIn("disk grown from 1G to 2G (qemu-img resize)", out)
        self.assertEqual(qemu_img_size(self.disk("r")), 2 * GIB)
        self.assertEqual(self.spec_file("r")["disk"], "2G")
        self.assertEqual(self.state_file("r")["disk_size"], 2 * GIB)
        j = self.show("r")
        self.assertEqual((j["disk_size"], j["state"]), (2 * GIB, "stopped"))
        j = self.node.qvisor_json("vm", "resize", "r", "--disk", "2G")
        self.assertEqual(j["how"], "unchanged")
        # the storage pool's fit, as at create: no file system here holds 60T
        p = self.node.qvisor("vm", "resize", "r", "--disk", "60T", check=75)
        self.assertIn("thin", p.stderr)
        self.assertEqual(qemu_img_size(self.disk("r")), 2 * GIB)
        self.assertEqual(self.spec_file("r")["disk"], "2G")
        # a snapshot in flight holds the disk the other way round
        snap = subprocess.Popen([QVISOR, "--config", self.node.config, "vm", "snapshot", "r", "create", "s2"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: "snapshot s2: create (qemu-img)" in self.node.log(), scaled(10), "the snapshot to begin")
        p = self.node.qvisor("vm", "resize", "r", "--disk", "+1G", check=75)
        self.assertIn("snapshot 's2' is being taken", p.stderr)
        out, err = snap.communicate(timeout=scaled(30))
        self.assertEqual(snap.returncode, 0, err)
        self.assertEqual(qemu_img_size(self.disk("r")), 2 * GIB)
        # and the start goes on once nothing holds the VM
        self.assertEqual(self.node.qvisor_json("vm", "start", "r", timeout=scaled(60))["state"], "running")
        self.node.qvisor("vm", "stop", "r", "--force", check=0, timeout=scaled(60))


@unittest.skipUnless(os.geteuid() == 0, "mounts a tmpfs")
class ResizePool(EditBase):
    """A storage pool on a 2560 MiB tmpfs (nothing of it is used but the
    qcow2 headers): two 1 GiB disks fit, and 300 MiB more for one of them,
    not for both."""

    def setUp(self):
        self.pool = tempfile.mkdtemp(prefix="qv-pool-")
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2560m,mode=0750", "qv-it-pool", self.pool], check=True)
        self.addCleanup(shutil.rmtree, self.pool, ignore_errors=True)
        self.addCleanup(subprocess.run, ["umount", "-l", self.pool], check=False)
        self.make_node(f"qemu:\n  img_binary: {self.slow_qemu_img()}\nstorage_pools:\n  small:\n    path: {self.pool}\n")

    def test_two_resizes_cannot_share_free_space(self):
        self.create("a", "--storage-pool", "small")
        self.create("b", "--storage-pool", "small")
        first = subprocess.Popen([QVISOR, "--config", self.node.config, "vm", "resize", "a", "--disk", "+300M"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: "growing its disk" in self.node.log(), scaled(10), "the first resize to begin")
        # a's growth is claimed while qemu-img runs: b's does not fit beside it
        p = self.node.qvisor("vm", "resize", "b", "--disk", "+300M", check=75)
        self.assertIn("small", p.stderr)
        out, err = first.communicate(timeout=scaled(30))
        self.assertEqual(first.returncode, 0, err)
        self.assertEqual(qemu_img_size(os.path.join(self.pool, "a.qcow2")), GIB + 300 * MIB)
        self.assertEqual(qemu_img_size(os.path.join(self.pool, "b.qcow2")), GIB)
        self.node.qvisor("vm", "resize", "b", "--disk", "+300M", check=75)  # and not after it either
        self.node.qvisor("vm", "resize", "b", "--disk", "+200M", check=0)


class ResizeOnline(EditBase):
    """The tiny guest under TCG: its kernel reports the new capacity."""

    def setUp(self):
        import guestlib
        self.guestlib = guestlib
        self.guest = guestlib.build_tiny_guest()
        self.make_node()

    def test_running_guest_sees_the_new_size(self):
        gl = self.guestlib
        # loglevel=6 after quiet: the kernel's notice "[vda] new size: …" reaches the console
        self.create("on", "--disk", "1G", "--no-agent", "--kernel", self.guest.kernel, "--initrd", self.guest.initrd,
                    "--append", gl.cmdline(["qv.disk=marker", "loglevel=6"]))
        self.node.qvisor("vm", "start", "on", check=0, timeout=scaled(60))
        serial = os.path.join(self.node.state, "instances", "on", "serial.log")
        self.assertIsNotNone(gl.wait_marker_in_file(serial, r"^ready$", scaled(90)), "the guest did not boot")
        p = self.node.qvisor("vm", "resize", "on", "--disk", "512M", check=65)
        j = self.node.qvisor_json("vm", "resize", "on", "--disk", "+256M")
        self.assertEqual((j["how"], j["disk_size"], j["previous_size"]), ("block_resize", GIB + 256 * MIB, GIB))

        def new_size():
            with open(serial, errors="replace") as f:
                m = re.findall(r"\[vda\] new size: (\d+) 512-byte logical blocks", f.read())
            return int(m[-1]) if m else None
        wait_for(lambda: new_size() is not None, scaled(30), "the guest's kernel to report the new size")
        self.assertEqual(new_size() * 512, GIB + 256 * MIB)
        self.assertEqual(qemu_img_size(os.path.join(self.node.state, "instances", "on", "disk.qcow2")),
                         GIB + 256 * MIB)
        self.assertEqual(self.spec_file("on")["disk"], "1280M")
        self.assertEqual(self.show("on")["state"], "running")
        self.node.qvisor("vm", "stop", "on", "--force", check=0, timeout=scaled(60))


if __name__ == "__main__":
    unittest.main()
