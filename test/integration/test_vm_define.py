#!/usr/bin/env python3
"""Images and VM definitions through the real daemon, CLI and qemu-img:
import/list/rm of base images, vm create/list/show/rm with their exit codes,
spec files, and a daemon killed in the middle of create and remove (test
hook QVISOR_TEST_CRASH_AT) leaving no half-made VM or stray files."""

import json
import os
import socket
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from qvtest import Node, scaled, wait_for  # noqa: E402


class VmDefinition(unittest.TestCase):
    def setUp(self):
        self.node = Node()
        self.node.start_daemon()
        self.raw = os.path.join(self.node.dir, "base.raw")
        subprocess.run(["qemu-img", "create", "-q", "-f", "raw", self.raw, "1G"], check=True)
        self.node.qvisor("image", "import", self.raw, "base", "--format", "raw", check=0)

    def tearDown(self):
        self.node.cleanup()

    def instances(self):
        d = os.path.join(self.node.state, "instances")
        return sorted(os.listdir(d)) if os.path.isdir(d) else []

    def test_image_import_list_and_read_only(self):
        imgs = self.node.qvisor_json("image", "list")["images"]
        self.assertEqual([i["name"] for i in imgs], ["base"])
        self.assertEqual(imgs[0]["format"], "qcow2")
        self.assertEqual(imgs[0]["virtual_size"], 1 << 30)
        self.assertEqual(os.stat(imgs[0]["path"]).st_mode & 0o777, 0o444)
        # a qcow2 source and the default name from the file name
        src = os.path.join(self.node.dir, "debian-12.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", src, "2G"], check=True)
        j = self.node.qvisor_json("image", "import", src)
        self.assertEqual(j["name"], "debian-12")
        self.assertEqual(j["virtual_size"], 2 << 30)
        p = self.node.qvisor("image", "list", check=0)
        self.assertRegex(p.stdout, r"debian-12 +qcow2 +2\.0G")

    def test_image_errors(self):
        p = self.node.qvisor("image", "import", self.raw, "base", "--format", "raw")
        self.assertEqual(p.returncode, 73)
        p = self.node.qvisor("image", "import", os.path.join(self.node.dir, "missing.img"))
        self.assertEqual(p.returncode, 66)
        p = self.node.qvisor("image", "import", self.raw, "Bad_Name")
        self.assertEqual(p.returncode, 65)
        # any regular file is a raw image: raw is never assumed
        p = self.node.qvisor("image", "import", self.raw, "other")
        self.assertEqual(p.returncode, 65, p.stderr)
        self.assertIn("--format raw", p.stderr)
        p = self.node.qvisor("image", "import", self.node.dir, "dir")
        self.assertEqual(p.returncode, 65, p.stderr)
        p = self.node.qvisor("image", "rm", "nope")
        self.assertEqual(p.returncode, 66)

    def test_create_list_show_rm(self):
        j = self.node.qvisor_json("vm", "create", "web-1", "--image", "base", "--cpus", "3", "--memory", "512M",
                                  "--disk", "4G")
        self.assertEqual(j["state"], "stopped")
        disk = j["disk"]
        info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", "-U", disk], capture_output=True,
                                         check=True, text=True).stdout)
        self.assertEqual(info["virtual-size"], 4 << 30)
        self.assertTrue(info["backing-filename"].endswith("/images/base.qcow2"))
        self.assertEqual(info["backing-filename-format"], "qcow2")

        # defaults from the node config
        self.node.qvisor("vm", "create", "db", "--image", "base", check=0)
        vms = self.node.qvisor_json("vm", "list")["vms"]
        self.assertEqual([v["name"] for v in vms], ["db", "web-1"])
        db = vms[0]
        self.assertEqual((db["cpus"], db["memory"], db["disk_size"]), (2, 2 << 30, 20 << 30))
        for key in ("name", "state", "pid", "cpus", "memory", "disk", "ip", "gpus", "uptime_s", "image"):
            self.assertIn(key, db)

        show = self.node.qvisor_json("vm", "show", "web-1")
        self.assertEqual(show["spec"]["memory"], "512M")
        self.assertTrue(show["qemu_log"].startswith(show["dir"]))
        p = self.node.qvisor("vm", "list", check=0)
        self.assertRegex(p.stdout, r"web-1 +stopped +- +3 +512M +4G")
        # vm show: sizes as a user writes them (--json keeps bytes)
        self.assertEqual((show["memory"], show["disk_size"]), (512 << 20, 4 << 30))
        p = self.node.qvisor("vm", "show", "web-1", check=0)
        self.assertRegex(p.stdout, r"(?m)^memory: +512M$")
        self.assertRegex(p.stdout, r"(?m)^disk_size: +4G$")

        p = self.node.qvisor("image", "rm", "base")
        self.assertEqual(p.returncode, 75)
        self.assertIn("db, web-1", p.stderr)

        self.node.qvisor("vm", "rm", "web-1", check=0)
        self.assertFalse(os.path.exists(show["dir"]))
        p = self.node.qvisor("vm", "rm", "web-1")
        self.assertEqual(p.returncode, 66)
        p = self.node.qvisor("vm", "show", "web-1")
        self.assertEqual(p.returncode, 66)

    def test_create_errors(self):
        cases = [
            (["vm", "create", "../x", "--image", "base"], 65, "'../x' is not a valid name"),
            (["vm", "create", "ok", "--image", "../base"], 65, "'../base' is not a valid name"),
            (["vm", "create", "ok", "--image", "base", "--disk", "100"], 65, "expected a size with a unit"),
            (["vm", "create", "ok", "--image", "base", "--disk", "512M"], 65, "smaller than image 'base' (1G)"),
            (["vm", "create", "ok", "--image", "base", "--cpus", "0"], 65, "0 is out of range"),
            (["vm", "create", "ok", "--image", "nope"], 66, "no image 'nope'"),
            (["vm", "create", "ok"], 64, "needs --image"),
            (["vm", "create", "--image", "base"], 64, "needs a NAME"),
            # not UTF-8: refused, not dropped (the VM would get the default)
            (["vm", "create", "ok", "--image", "base", "--hostname", "h\udcff"], 65,
             "--hostname: the value is not valid UTF-8"),
            (["vm", "create", "ok", "--image", "base", "--net", "user\udcff"], 65, "--net: the value is not valid UTF-8"),
            (["vm", "create", "\udcffx", "--image", "base"], 65, "NAME: the value is not valid UTF-8"),
        ]
        for args, code, msg in cases:
            p = self.node.qvisor(*args)
            self.assertEqual(p.returncode, code, (args, p.stderr))
            self.assertIn(msg, p.stderr, args)
        self.node.qvisor("vm", "create", "ok", "--image", "base", check=0)
        p = self.node.qvisor("vm", "create", "ok", "--image", "base")
        self.assertEqual(p.returncode, 73)
        self.assertEqual(self.instances(), ["ok"])  # failed creates left nothing

    def test_boot_files_checked_at_create(self):
        """A spec whose kernel boot can never start is refused at create:
        missing files 66 (by the CLI, which opens them), anything else 65;
        nothing is left behind."""
        d = self.node.dir
        kernel = os.path.join(d, "vmlinuz")
        with open(kernel, "wb") as f:
            f.write(b"not really a kernel, but a readable regular file")
        empty = os.path.join(d, "empty")
        open(empty, "w").close()
        fifo = os.path.join(d, "fifo")
        os.mkfifo(fifo)
        k = ["vm", "create", "ok", "--image", "base", "--kernel"]
        cases = [
            ([*k, "/nonexistent"], 66, "kernel /nonexistent: no such file"),
            ([*k, kernel, "--initrd", "/nonexistent/initrd"], 66, "initrd /nonexistent/initrd: no such file"),
            ([*k, kernel + "\n"], 66, "no such file"),
            ([*k, "/"], 65, "kernel / is not a regular file"),
            ([*k, "/dev/zero"], 65, "kernel /dev/zero is not a regular file"),
            ([*k, fifo], 65, "is not a regular file"),
            ([*k, "/proc/self/environ"], 65, "/proc/self/environ is a /proc file"),
            ([*k, "/sys/kernel/uevent_seqnum"], 65, "is a /sys file"),
            ([*k, empty], 65, "is empty"),
            ([*k, "vmlinuz-nowhere"], 66, "no such file"),
            ([*k, kernel, "--append", "x" * 100000], 65, "append: 100000 bytes; the kernel takes at most 2047"),
            ([*k, kernel, "--append", "console=ttyS0\nquiet"], 65, "append: contains a control character"),
        ]
        for args, code, msg in cases:
            p = self.node.qvisor(*args)
            self.assertEqual(p.returncode, code, (args, p.stderr))
            self.assertIn(msg, p.stderr, args)
        self.assertEqual(self.instances(), [])
        # the same from a spec file
        spec = os.path.join(d, "vm.yaml")
        with open(spec, "w") as f:
            f.write("name: ok\nimage: base\nkernel: /nonexistent\n")
        self.assertEqual(self.node.qvisor("vm", "create", "-f", spec).returncode, 66)
        # a name only, without the file (an old client, a hand-written request): refused
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.node.socket)
        s.sendall(b'{"id": 1, "method": "vm.create", "params": {"spec": {"name": "ok", "image": "base", '
                  b'"kernel": "%s"}}}\n' % kernel.encode())
        reply = json.loads(s.makefile().readline())
        s.close()
        self.assertEqual(reply["error"]["code"], "EINVAL", reply)
        self.assertIn("kernel_fd", reply["error"]["message"])
        self.assertEqual(self.instances(), [])
        # the longest append the kernel takes, with commas (fine in -append)
        self.node.qvisor(*k, kernel, "--append", "a,b " + "x" * 2043, check=0)
        self.assertEqual(self.instances(), ["ok"])

    def test_boot_files_are_copied_at_create(self):
        """The VM boots the kernel it was created with: create copies the
        kernel and initrd into its directory (0640), the spec names the
        copies, `vm show` names the originals, `vm rm` removes the copies.
        A path with a comma is fine now: QEMU never sees it."""
        d = os.path.join(self.node.dir, "boot,files")
        os.makedirs(d)
        kernel, initrd = os.path.join(d, "vmlinuz"), os.path.join(d, "initrd.img")
        for path, data in ((kernel, b"kernel v1"), (initrd, b"initrd v1")):
            with open(path, "wb") as f:
                f.write(data)
        self.node.qvisor("vm", "create", "kb", "--image", "base", "--kernel", kernel, "--initrd", initrd, check=0)
        for path in (kernel, initrd):  # changed after create: not the VM's business
            with open(path, "wb") as f:
                f.write(b"replaced")
        vm = self.node.qvisor_json("vm", "show", "kb")
        inst = os.path.join(self.node.state, "instances", "kb")
        self.assertEqual(vm["spec"]["kernel"], os.path.join(inst, "kernel"))
        self.assertEqual(vm["spec"]["initrd"], os.path.join(inst, "initrd"))
        self.assertEqual(vm["kernel_source"], kernel)
        self.assertEqual(vm["initrd_source"], initrd)
        for name, data in (("kernel", b"kernel v1"), ("initrd", b"initrd v1")):
            path = os.path.join(inst, name)
            with open(path, "rb") as f:
                self.assertEqual(f.read(), data)
            self.assertEqual(os.stat(path).st_mode & 0o777, 0o640)
        with open(os.path.join(inst, "spec.json")) as f:
            self.assertEqual(json.load(f)["kernel"], os.path.join(inst, "kernel"))
        # the same after a daemon restart
        self.node.stop_daemon()
        self.node.start_daemon()
        vm = self.node.qvisor_json("vm", "show", "kb")
        self.assertEqual(vm["kernel_source"], kernel)
        self.assertEqual(vm["spec"]["kernel"], os.path.join(inst, "kernel"))
        self.node.qvisor("vm", "rm", "kb", check=0)
        self.assertFalse(os.path.exists(inst))

    def test_spec_file(self):
        spec = os.path.join(self.node.dir, "vm.yaml")
        with open(spec, "w") as f:
            f.write("name: from-file\nimage: base\nmemory: 1G\nrestart: on-failure\nstop_timeout: 30s\n")
        j = self.node.qvisor_json("vm", "create", "-f", spec, "--cpus", "4")
        self.assertEqual((j["cpus"], j["memory"]), (4, 1 << 30))
        self.assertEqual(j["spec"]["restart"], "on-failure")
        self.assertEqual(j["spec"]["stop_timeout"], "30s")
        with open(spec, "w") as f:
            f.write("name: bad\nimage: base\nmemory: lots\n")
        p = self.node.qvisor("vm", "create", "-f", spec)
        self.assertEqual(p.returncode, 65)
        self.assertIn(f"{spec}:3:9: memory: expected a size with a unit", p.stderr)

    def test_state_survives_daemon_restart(self):
        self.node.qvisor("vm", "create", "keep", "--image", "base", "--memory", "256M", check=0)
        self.assertEqual(self.node.stop_daemon(), 0)
        self.node.start_daemon()
        vms = self.node.qvisor_json("vm", "list")["vms"]
        self.assertEqual([(v["name"], v["state"], v["memory"]) for v in vms], [("keep", "stopped", 256 << 20)])

    def crash_during(self, point, args):
        self.node.stop_daemon()
        self.node.start_daemon(extra_env={"QVISOR_TEST_CRASH_AT": point})
        p = self.node.qvisor(*args)
        self.assertNotEqual(p.returncode, 0)
        self.assertEqual(self.node.proc.wait(timeout=scaled(10)), -9)  # SIGKILL: a crash, not an exit
        self.node.start_daemon()
        return self.node.qvisor_json("vm", "list")["vms"]

    def test_crash_mid_create_leaves_nothing(self):
        for point in ("create-after-disk", "create-before-rename"):
            vms = self.crash_during(point, ["vm", "create", "half", "--image", "base"])
            self.assertEqual(vms, [], point)
            self.assertEqual(self.instances(), [], point)  # the .half.creating dir is gone
            self.assertIn("left by an interrupted create", self.node.log())
        # and the name is free again
        self.node.qvisor("vm", "create", "half", "--image", "base", check=0)

    def test_crash_mid_remove_finishes_it(self):
        self.node.qvisor("vm", "create", "gone", "--image", "base", check=0)
        vms = self.crash_during("remove-after-rename", ["vm", "rm", "gone"])
        self.assertEqual(vms, [])
        self.assertEqual(self.instances(), [])


if __name__ == "__main__":
    unittest.main(verbosity=2)
