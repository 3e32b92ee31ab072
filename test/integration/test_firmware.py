#!/usr/bin/env python3
"""Firmware and CPU model through the real CLI, daemon and QEMU: --firmware
and --cpu-model refusals at create (65 unknown, 69 no OVMF on the node or
host without KVM), the resolved values stored in the spec, each UEFI VM's
own variable store (made at create, kept across stop/start, made again when
deleted by hand, gone with vm rm), and real boots of the tiny guest's
bzImage under OVMF, plain and with Secure Boot."""

import hashlib
import json
import os
import re
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "guest"))
from qvtest import Node, scaled  # noqa: E402
import guestlib  # noqa: E402

GUEST = None
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"
OVMF_VARS_MS = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"


def setUpModule():
    global GUEST
    GUEST = guestlib.build_tiny_guest()


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class Firmware(unittest.TestCase):
    CONFIG = ("qemu:\n  accelerator: tcg\n"
              "vm_defaults:\n  memory: 256M\n  disk: 1G\n  stop_timeout: 30s\n  kill_timeout: 5s\n")

    def setUp(self):
        if not os.path.exists(OVMF_VARS):
            self.skipTest("no OVMF here (apt-get install ovmf)")
        self.node = Node(self.CONFIG)
        self.node.start_daemon()
        base = os.path.join(self.node.dir, "blank.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", base, "1G"], check=True)
        self.node.qvisor("image", "import", base, "blank", check=0)

    def tearDown(self):
        try:
            if self.node.proc and self.node.proc.poll() is None:
                self.assertEqual(self.node.stop_daemon(), 0, self.node.log()[-4000:])
                self.assertEqual(self.node.sanitizer_reports(), [], self.node.log()[-4000:])
        finally:
            self.node.cleanup()

    def instance(self, name, *rel):
        return os.path.join(self.node.state, "instances", name, *rel)

    def instances(self):
        d = os.path.join(self.node.state, "instances")
        return sorted(os.listdir(d)) if os.path.isdir(d) else []

    def create(self, name, *extra, want=0, options=("qv.agent=on",)):
        # not quiet: the kernel's EFI lines are what the tests look for
        append = guestlib.cmdline(options).replace(" quiet", "")
        return self.node.qvisor("vm", "create", name, "--image", "blank", "--kernel", GUEST.vmlinuz,
                                "--initrd", GUEST.initrd, "--append", append, *extra,
                                timeout=scaled(60), check=want)

    def start(self, name):
        j = self.node.qvisor_json("vm", "start", name, timeout=scaled(60))
        m = guestlib.wait_marker_in_file(self.instance(name, "serial.log"), r"^ready$", scaled(120))
        self.assertIsNotNone(m, f"{name} did not boot:\n{self.serial(name)[-3000:]}")
        return j

    def stop(self, name):
        p = self.node.qvisor("--json", "vm", "stop", name, timeout=scaled(120), check=0)
        return json.loads(p.stdout)

    def serial(self, name):
        with open(self.instance(name, "serial.log"), "rb") as f:
            return f.read().decode("utf-8", "replace").replace("\r", "")

    def qemu_log(self, name):
        with open(self.instance(name, "qemu.log")) as f:
            return f.read()

    # -- refusals at create -----------------------------------------------------

    def test_unknown_firmware_and_cpu_model(self):
        p = self.create("bad", "--firmware", "efi", want=65)
        self.assertIn("firmware: expected one of bios, uefi, uefi-secure, got 'efi'", p.stderr)
        p = self.create("bad", "--cpu-model", "skylake-client", want=65)
        self.assertIn("cpu_model 'skylake-client': QEMU", p.stderr)
        self.assertIn("has no such CPU model; similar: Skylake-Client", p.stderr)
        p = self.create("bad", "--cpu-model", "Pentium9000", want=65)
        self.assertIn("cpu_model 'Pentium9000'", p.stderr)
        p = self.create("bad", "--cpu-model", "max,+vmx", want=65)
        self.assertIn("is not a CPU model name", p.stderr)
        # host on a TCG node: QEMU would refuse it at every start
        p = self.create("bad", "--cpu-model", "host", want=69)
        self.assertIn("cpu_model host needs KVM, and VMs on this node run under TCG", p.stderr)
        self.assertEqual(self.instances(), [])

    def test_uefi_on_a_node_without_ovmf(self):
        empty = os.path.join(self.node.dir, "no-firmware")
        os.mkdir(empty)
        self.node.write_config(f"  firmware_dir: {empty}\n" + self.CONFIG)  # continues base_config's paths
        self.node.qvisor("config", "reload", check=0)
        for fw, missing in (("uefi", "OVMF_CODE_4M.fd"), ("uefi-secure", "OVMF_CODE_4M.secboot.fd")):
            p = self.create("nofw", "--firmware", fw, want=69)
            self.assertIn(f"firmware {fw} needs", p.stderr)
            self.assertIn(f"{empty}/{missing} is missing", p.stderr)
            self.assertIn("apt-get install ovmf", p.stderr)
        self.assertEqual(self.instances(), [])
        # bios needs no OVMF
        self.create("bios")
        self.assertFalse(os.path.exists(self.instance("bios", "efivars.fd")))

    def test_spec_records_firmware_and_vars_store(self):
        # bios is the default, stored resolved
        self.create("plain")
        spec = self.node.qvisor_json("vm", "show", "plain")["spec"]
        self.assertEqual(spec["firmware"], "bios")
        self.assertNotIn("firmware_code", spec)
        self.assertNotIn("cpu_model", spec)
        self.assertFalse(os.path.exists(self.instance("plain", "efivars.fd")))

        # from a spec file, with a CPU model the QEMU lists
        specfile = os.path.join(self.node.dir, "sb.yaml")
        with open(specfile, "w") as f:
            f.write(f"name: sb\nimage: blank\nfirmware: uefi-secure\ncpu_model: qemu64\nkernel: {GUEST.vmlinuz}\n")
        self.node.qvisor("vm", "create", "-f", specfile, check=0)
        show = self.node.qvisor_json("vm", "show", "sb")
        spec = show["spec"]
        self.assertEqual(spec["firmware"], "uefi-secure")
        self.assertEqual(spec["cpu_model"], "qemu64")
        # the build create chose, through QEMU's firmware descriptors
        self.assertEqual(spec["firmware_code"], "/usr/share/OVMF/OVMF_CODE_4M.ms.fd")
        self.assertEqual(spec["firmware_vars"], OVMF_VARS_MS)
        vars_store = self.instance("sb", "efivars.fd")
        self.assertEqual(show["firmware_vars_store"], vars_store)
        self.assertEqual(digest(vars_store), digest(OVMF_VARS_MS))
        self.assertEqual(os.stat(vars_store).st_mode & 0o777, 0o600)
        # kept in spec.json: a later package cannot switch it silently
        with open(self.instance("sb", "spec.json")) as f:
            self.assertEqual(json.load(f)["firmware_code"], "/usr/share/OVMF/OVMF_CODE_4M.ms.fd")

        self.node.qvisor("vm", "rm", "sb", check=0)
        self.assertFalse(os.path.exists(self.instance("sb")))

    # -- real boots ----------------------------------------------------------------

    def test_uefi_boot_vars_store_survives_and_is_remade(self):
        self.create("efi", "--firmware", "uefi")
        vars_store = self.instance("efi", "efivars.fd")
        self.assertEqual(self.node.qvisor_json("vm", "show", "efi")["spec"]["firmware_vars"], OVMF_VARS)
        self.assertEqual(digest(vars_store), digest(OVMF_VARS))
        self.start("efi")
        text = self.serial("efi")
        self.assertIn("efi: EFI v2.70 by EDK II", text)  # the kernel came up under OVMF
        self.assertIn("secureboot: Secure boot disabled", text)
        log = self.qemu_log("efi")
        # the store comes as an fd the daemon opened (an fdset), not by name
        m = re.search(r"-add-fd fd=(\d+),set=(\d+),opaque=pflash1 ", log)
        self.assertIsNotNone(m, log)
        self.assertIn(f"-blockdev driver=file,filename=/dev/fdset/{m.group(2)},node-name=pflash1-file", log)
        self.assertNotIn(vars_store, log.split("\n", 1)[1])
        self.assertIn(",pflash0=pflash0,pflash1=pflash1", log)
        self.assertEqual(self.stop("efi")["result"], "clean")
        # the firmware wrote its variables (boot options) into the VM's own store
        after_first = digest(vars_store)
        self.assertNotEqual(after_first, digest(OVMF_VARS))

        # kept across stop and start
        self.start("efi")
        self.stop("efi")
        self.assertTrue(os.path.exists(vars_store))

        # deleted by hand: the next start makes a fresh copy and says so
        os.unlink(vars_store)
        self.start("efi")
        self.assertIn("VM efi: its UEFI variable store", self.node.log())
        self.assertIn("was missing; made a fresh copy of " + OVMF_VARS, self.node.log())
        self.assertTrue(os.path.exists(vars_store))
        self.stop("efi")

        self.node.qvisor("vm", "rm", "efi", check=0)
        self.assertFalse(os.path.exists(vars_store))
        self.assertEqual(self.instances(), [])

    def test_uefi_secure_boot_with_a_named_cpu_model(self):
        self.create("sb", "--firmware", "uefi-secure", "--cpu-model", "qemu64")
        self.start("sb")
        log = self.qemu_log("sb")
        self.assertIn("q35,accel=tcg,smm=on,pflash0=pflash0,pflash1=pflash1", log)
        self.assertIn("-global driver=cfi.pflash01,property=secure,value=on", log)
        self.assertIn("-cpu qemu64 ", log)
        text = self.serial("sb")
        # OVMF ran with Secure Boot on and the guest kernel saw it.  With
        # -kernel, Debian 12's OVMF falls back to its legacy loader when the
        # image fails verification, so this does not prove the kernel's
        # signature was checked (docs/firmware.md)
        self.assertIn("secureboot: Secure boot enabled", text)
        self.assertIn("Microsoft Corporation UEFI CA 2011", text)
        self.stop("sb")
        self.node.qvisor("vm", "rm", "sb", check=0)
        self.assertEqual(self.instances(), [])


if __name__ == "__main__":
    unittest.main(verbosity=2)
