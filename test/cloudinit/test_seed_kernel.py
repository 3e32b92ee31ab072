#!/usr/bin/env python3
"""The judge that matters most: a real Linux kernel (the tiny test guest)
mounts seeds written by `qvisor cidata` with its iso9660 driver, as a
CD-ROM and as a virtio disk, and prints the Rock Ridge names and SHA-256 of
every file on its serial console.  Both must match what we wrote, for a
typical seed and for one with many files, an empty file and a large one."""

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "guest"))
import guestlib as gl  # noqa: E402

QVISOR = os.environ.get("QVISOR_BIN", "qvisor")


def write_seed(work, files, extra_args=()):
    """Writes `files` ({name: bytes}) with qvisor cidata; returns the ISO path."""
    src = os.path.join(work, "src")
    os.makedirs(src, exist_ok=True)
    args = [QVISOR, "cidata", "-o", os.path.join(work, "seed.iso")]
    flag = {"user-data": "--user-data", "meta-data": "--meta-data", "network-config": "--network-config",
            "vendor-data": "--vendor-data"}
    for name, data in files.items():
        with open(os.path.join(src, name), "wb") as f:
            f.write(data)
        args += [flag[name], os.path.join(src, name)]
    subprocess.run(args + list(extra_args), check=True, capture_output=True)
    return os.path.join(work, "seed.iso")


class SeedMountedByKernel(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not gl.have_qemu():
            raise unittest.SkipTest("qemu-system-x86_64 missing")
        cls.img = gl.build_tiny_guest()

    def boot_and_compare(self, iso, expected):
        extra = [
            "-drive", "file=%s,format=raw,media=cdrom,if=none,id=cd0,readonly=on" % iso,
            "-device", "ide-cd,drive=cd0,bus=ide.0",
            "-drive", "file=%s,format=raw,if=none,id=vd0,readonly=on" % iso,
            "-device", "virtio-blk-pci,drive=vd0",
        ]
        with gl.Guest(self.img, options=["qv.seed=print"], extra_args=extra, name="cidata") as g:
            g.start()
            g.wait_ready(gl.scaled(120))
            seeds = gl.parse_seed(g.markers())
            for dev in ("/dev/sr0", "/dev/vda"):
                seen = seeds.get(dev)
                self.assertIsNotNone(seen, "no seed on %s\n%s" % (dev, g.diagnostics()))
                self.assertIsNone(seen["error"], "%s: %s\n%s" % (dev, seen["error"], g.diagnostics()))
                self.assertEqual(seen["label"], "cidata", dev)
                self.assertEqual(seen["files"], expected, dev)
                self.assertTrue(seen["done"], dev)
            g.qmp.command("quit")
            g.wait_exit(gl.scaled(10))

    def test_typical_seed(self):
        work = tempfile.mkdtemp(prefix="qv-seedk-")
        try:
            files = {
                "user-data": b"#cloud-config\nhostname: vm1\nmanage_etc_hosts: true\n",
                "meta-data": b"instance-id: iid-1\nlocal-hostname: vm1\n",
                "network-config": b"version: 2\nethernets:\n  eth0:\n    dhcp4: true\n",
                "vendor-data": b"",
            }
            iso = write_seed(work, files)
            self.boot_and_compare(iso, {n: hashlib.sha256(d).hexdigest() for n, d in files.items()})
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def test_large_user_data(self):
        # a 5 MB user-data (a #! script padded with a comment) spans many
        # sectors and the continuation logic of the data area
        work = tempfile.mkdtemp(prefix="qv-seedk-")
        try:
            big = b"#!/bin/sh\n# " + os.urandom(5 << 20).hex().encode()[: 5 << 20] + b"\nexit 0\n"
            files = {"user-data": big, "meta-data": b"instance-id: big\n"}
            iso = write_seed(work, files)
            self.boot_and_compare(iso, {n: hashlib.sha256(d).hexdigest() for n, d in files.items()})
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    unittest.main(verbosity=2)
