#!/usr/bin/env python3
"""`qvisor check` through the real binary, without a daemon: on this node
(real QEMU, real /dev/kvm if any) and on fake /sys + /proc trees
(QVISOR_SYSROOT), with the KVM device moved away by the test knob
QVISOR_TEST_KVM_DEVICE where the answer must not depend on the machine."""

import json
import os
import re
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from qvtest import Node, scaled  # noqa: E402

ORDER = ["qemu", "qemu-img", "kvm", "accel", "cpu", "iommu", "vfio", "vfio-pci", "gpu", "hugepages",
         "ovmf", "ovmf-secure", "state-dir", "images-dir", "instances-dir", "run-dir"]


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("QVISOR_SYSROOT", "QVISOR_TEST_KVM_DEVICE")}
    env.update(extra)
    return env


def write(root, rel, content):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(content)


def link(root, target, rel):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.symlink(target, path)


def pci_dev(root, bdf, cls, group):
    """A PCI function as sysfs shows it, in IOMMU group `group`."""
    write(root, f"sys/devices/pci0000:00/{bdf}/class", f"0x{cls:06x}\n")
    link(root, f"../../../devices/pci0000:00/{bdf}", f"sys/bus/pci/devices/{bdf}")
    link(root, f"../../../kernel/iommu_groups/{group}", f"sys/devices/pci0000:00/{bdf}/iommu_group")
    link(root, f"../../../../devices/pci0000:00/{bdf}", f"sys/kernel/iommu_groups/{group}/devices/{bdf}")


class Check(unittest.TestCase):
    def setUp(self):
        self.node = Node()

    def tearDown(self):
        self.node.cleanup()

    def check(self, *args, env=None):
        p = self.node.qvisor("check", *args, env=env or clean_env(), timeout=scaled(60))
        return p

    def check_json(self, *args, env=None):
        p = self.check("--json", *args, env=env)
        self.assertIn(p.returncode, (0, 69), p.stderr)
        j = json.loads(p.stdout)
        self.assertEqual(p.returncode == 0, j["ok"], p.stdout)
        self.assertEqual(j["ok"], all(i["status"] != "fail" for i in j["items"]))
        for i in j["items"]:
            self.assertEqual(set(i), {"name", "status", "detail", "hint"})
            self.assertIn(i["status"], ("ok", "warn", "fail"))
            self.assertTrue(i["detail"])
            # every item that is not fine says what to do
            if i["status"] != "ok":
                self.assertTrue(i["hint"], i)
        names = []
        for i in j["items"]:
            if not names or names[-1] != i["name"]:
                names.append(i["name"])
        self.assertEqual(names, ORDER)
        return p.returncode, j, {i["name"]: i for i in j["items"]}

    def fake_tree(self, cpu="GenuineIntel", flags="fpu vmx sse2", cmdline="root=/dev/sda1 ro quiet"):
        root = os.path.join(self.node.dir, "sysroot")
        write(root, "proc/cpuinfo", f"processor\t: 0\nvendor_id\t: {cpu}\nflags\t\t: {flags}\n")
        write(root, "proc/cmdline", cmdline + "\n")
        os.makedirs(os.path.join(root, "sys/kernel/iommu_groups"))
        os.makedirs(os.path.join(root, "sys/module/kvm"))
        for size in ("2048kB", "1048576kB"):
            write(root, f"sys/kernel/mm/hugepages/hugepages-{size}/nr_hugepages", "0\n")
            write(root, f"sys/kernel/mm/hugepages/hugepages-{size}/free_hugepages", "0\n")
        return root

    # ---- this node, real QEMU and real KVM ---------------------------------

    def test_this_node(self):
        code, j, items = self.check_json()
        self.assertEqual(items["qemu"]["status"], "ok", items["qemu"])
        self.assertEqual(items["qemu-img"]["status"], "ok", items["qemu-img"])
        for d in ("state-dir", "images-dir", "instances-dir", "run-dir"):
            self.assertEqual(items[d]["status"], "ok", items[d])
        # accelerator auto: an unusable KVM only warns
        self.assertEqual(code, 0, j)
        kvm, accel = items["kvm"], items["accel"]
        self.assertIn(kvm["status"], ("ok", "warn"))
        if not os.path.exists("/dev/kvm"):
            self.assertEqual(kvm["detail"], "no /dev/kvm")
        # the direct probe runs the guest QEMU runs, from a read-only ROM as
        # QEMU maps firmware: when QEMU got a guest through KVM, so did we
        if accel["status"] == "ok":
            self.assertIn("VMs use KVM", accel["detail"])
            self.assertEqual(kvm["status"], "ok", kvm)
        else:
            self.assertIn("falls back to TCG", accel["detail"])
        if kvm["status"] != "ok":
            self.assertRegex(kvm["detail"], r"^(no /dev/kvm|/dev/kvm: |/dev/kvm present but unusable: )")
            self.assertIn("VMs will run with TCG", kvm["hint"])

    def test_need_kvm_here(self):
        code, j, items = self.check_json("--need", "kvm")
        usable = items["kvm"]["status"] == "ok" and items["accel"]["status"] == "ok"
        self.assertEqual(code, 0 if usable else 69, j)
        if not usable:
            self.assertTrue(items["kvm"]["status"] == "fail" or items["accel"]["status"] == "fail")
        self.assertEqual(j["needs"], ["kvm"])

    def test_ovmf(self):
        # this node has Debian's ovmf (scripts/debian-packages.txt): found
        # through QEMU's firmware descriptors
        code, j, items = self.check_json("--need", "uefi")
        self.assertEqual(items["ovmf"]["status"], "ok", items["ovmf"])
        self.assertIn("/usr/share/OVMF/OVMF_CODE_4M.fd", items["ovmf"]["detail"])
        self.assertIn("/usr/share/qemu/firmware/", items["ovmf"]["detail"])
        self.assertEqual(items["ovmf-secure"]["status"], "ok", items["ovmf-secure"])
        self.assertIn("OVMF_VARS_4M.ms.fd", items["ovmf-secure"]["detail"])
        self.assertEqual(j["needs"], ["uefi"])
        # a node without OVMF (paths.firmware_dir: an empty directory):
        # WARN, FAIL with --need uefi
        empty = os.path.join(self.node.dir, "no-firmware")
        os.mkdir(empty)
        self.node.write_config(f"  firmware_dir: {empty}\n")  # continues the paths section
        code, j, items = self.check_json()
        for name in ("ovmf", "ovmf-secure"):
            self.assertEqual(items[name]["status"], "warn", items[name])
            self.assertIn("apt-get install ovmf", items[name]["hint"])
        code, j, items = self.check_json("--need", "uefi")
        self.assertEqual(code, 69)
        self.assertEqual(items["ovmf"]["status"], "fail")
        self.assertIn("OVMF_CODE_4M.fd is missing", items["ovmf"]["detail"])

    # ---- fake trees ------------------------------------------------------

    def test_fake_tree_without_iommu(self):
        root = self.fake_tree()
        env = clean_env(QVISOR_SYSROOT=root, QVISOR_TEST_KVM_DEVICE=os.path.join(self.node.dir, "no-kvm"))
        code, j, items = self.check_json(env=env)
        self.assertEqual(code, 0, j)
        self.assertEqual(items["cpu"]["status"], "ok")
        self.assertEqual(items["kvm"]["status"], "warn")
        self.assertTrue(items["kvm"]["detail"].startswith("no "), items["kvm"])
        self.assertEqual(items["iommu"]["status"], "warn")
        self.assertIn("intel_iommu=on iommu=pt", items["iommu"]["hint"])
        self.assertEqual(items["vfio"]["status"], "warn")
        self.assertEqual(items["hugepages"]["status"], "ok")

        # asking for vfio: the IOMMU and the modules fail it
        code, j, items = self.check_json("--need", "vfio", env=env)
        self.assertEqual(code, 69)
        self.assertEqual(items["iommu"]["status"], "fail")
        self.assertEqual(items["vfio"]["status"], "fail")
        # --need repeatable, and as a list
        code, j, items = self.check_json("--need", "hugepages", "--need", "vfio,kvm", env=env)
        self.assertEqual(code, 69)
        self.assertEqual(j["needs"], ["kvm", "vfio", "hugepages"])
        for name in ("kvm", "iommu", "vfio", "hugepages"):
            self.assertEqual(items[name]["status"], "fail", items[name])

        # the text form: aligned lines, hints below
        p = self.check("--need", "vfio", env=env)
        self.assertEqual(p.returncode, 69)
        lines = p.stdout.splitlines()
        self.assertRegex(lines[0], r"^OK    qemu +\S")
        self.assertTrue(any(re.match(r"^FAIL  iommu +no IOMMU groups", l) for l in lines), p.stdout)
        self.assertTrue(any(l.startswith("      hint: add intel_iommu=on") for l in lines), p.stdout)
        self.assertRegex(lines[-1], r"^not ready: 2 failed, \d+ warnings?$")
        widths = {re.match(r"^(OK|WARN|FAIL) +\S+ +", l).end() for l in lines if re.match(r"^(OK|WARN|FAIL) ", l)}
        self.assertEqual(len(widths), 1, p.stdout)  # the details start in one column

    def test_fake_tree_gpu_sharing_a_group(self):
        root = self.fake_tree(cmdline="root=/dev/sda1 intel_iommu=on iommu=pt")
        os.makedirs(os.path.join(root, "sys/module/vfio_pci"))
        os.makedirs(os.path.join(root, "sys/module/vfio"))
        pci_dev(root, "0000:01:00.0", 0x030000, 1)
        pci_dev(root, "0000:01:00.1", 0x040300, 1)
        pci_dev(root, "0000:02:00.0", 0x020000, 1)
        link(root, "../../../../devices/pci0000:00/0000:01:00.1", "sys/bus/pci/drivers/vfio-pci/0000:01:00.1")
        env = clean_env(QVISOR_SYSROOT=root, QVISOR_TEST_KVM_DEVICE=os.path.join(self.node.dir, "no-kvm"))
        code, j, items = self.check_json("--need", "vfio", env=env)
        self.assertEqual(code, 0, j)  # IOMMU on, modules loaded; the rest warns
        self.assertEqual(items["iommu"]["detail"], "1 IOMMU group")
        self.assertEqual(items["gpu"]["status"], "warn")
        self.assertIn("shares IOMMU group 1 with 0000:02:00.0 (Ethernet controller)", items["gpu"]["detail"])
        self.assertIn("pcie_acs_override", items["gpu"]["hint"])
        self.assertEqual(items["vfio-pci"]["status"], "warn")
        self.assertIn("0000:01:00.1 (Audio device) is on vfio-pci, not owned by any VM", items["vfio-pci"]["detail"])

    def test_accelerator_setting(self):
        env = clean_env(QVISOR_TEST_KVM_DEVICE=os.path.join(self.node.dir, "no-kvm"))
        # kvm configured and no KVM device: VMs cannot start
        self.node.write_config("qemu:\n  accelerator: kvm\n")
        code, j, items = self.check_json(env=env)
        self.assertEqual(code, 69)
        self.assertEqual(items["kvm"]["status"], "fail")
        self.assertIn("VMs will not start", items["kvm"]["hint"])
        # tcg: KVM is not used, nothing fails
        self.node.write_config("qemu:\n  accelerator: tcg\n")
        code, j, items = self.check_json(env=env)
        self.assertEqual(code, 0, j)
        self.assertEqual(items["accel"]["status"], "ok")
        self.assertIn("tcg is configured", items["accel"]["detail"])
        # ... unless KVM is asked for
        code, j, items = self.check_json("--need", "kvm", env=env)
        self.assertEqual(code, 69)
        self.assertEqual(items["accel"]["status"], "fail")

    def test_directories_and_binaries(self):
        blocker = os.path.join(self.node.dir, "file")
        with open(blocker, "w") as f:
            f.write("x")
        cfg = (f"paths:\n  state_dir: {blocker}/state\n  run_dir: {self.node.run_dir}\n"
               f"qemu:\n  img_binary: {self.node.dir}/no-qemu-img\n")
        with open(self.node.config, "w") as f:
            f.write(cfg)
        env = clean_env(QVISOR_TEST_KVM_DEVICE=os.path.join(self.node.dir, "no-kvm"))
        code, j, items = self.check_json(env=env)
        self.assertEqual(code, 69)
        self.assertEqual(items["state-dir"]["status"], "fail")
        self.assertIn("cannot be created", items["state-dir"]["detail"])
        self.assertEqual(items["qemu-img"]["status"], "fail")
        self.assertEqual(items["run-dir"]["status"], "ok")
        self.assertFalse(os.path.exists(self.node.run_dir))  # check creates nothing

    def test_usage_and_config_errors(self):
        p = self.check("--need", "gpu")
        self.assertEqual(p.returncode, 64)
        self.assertIn("--need takes kvm, vfio, hugepages or uefi", p.stderr)
        p = self.check("extra")
        self.assertEqual(p.returncode, 64)
        p = self.check("--help")
        self.assertEqual(p.returncode, 0)
        self.assertIn("Usage: qvisor check", p.stdout)
        p = self.check(env=clean_env(QVISOR_SYSROOT=os.path.join(self.node.dir, "missing")))
        self.assertEqual(p.returncode, 78)
        self.assertIn("QVISOR_SYSROOT", p.stderr)
        with open(self.node.config, "w") as f:
            f.write("qemu:\n  accelerator: fast\n")
        p = self.check()
        self.assertEqual(p.returncode, 78)
        self.assertIn("qemu.accelerator", p.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
