#!/usr/bin/env python3
"""Node resources at create (issue 8) through the real CLI and daemon, on the
fake two-node machine of test/lib/faketopo.h (QVISOR_SYSROOT): 8 CPUs, 48 GiB
in two NUMA nodes, hugepages, an SR-IOV NIC.  VMs are only defined here (no
QEMU runs: the fake root has no real /proc for them).

Covered: the CPU and memory limits (capacity × overcommit) exactly at the
limit and one over, pool quotas, unknown pools, storage pools (the disk in
the pool's directory, the fit check, thin overcommit), `node status` and
`vm list --pool`."""

import os
import signal
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from qvtest import Node  # noqa: E402

MKFAKETOPO = os.environ.get("QVISOR_MKFAKETOPO")
GIB = 1 << 30


class Resources(unittest.TestCase):
    def setUp(self):
        if not MKFAKETOPO:
            self.skipTest("QVISOR_MKFAKETOPO not set (run through meson test)")
        self.root = tempfile.mkdtemp(prefix="qv-topo-")
        subprocess.run([MKFAKETOPO, self.root], check=True)
        self.small = os.path.join(self.root, "small-pool")
        os.makedirs(self.small)
        # a tiny file system for the storage pool: a 64 MiB tmpfs would need
        # root and a mount; instead the pool lives on the test's file system and
        # the test asks for a disk larger than any free space
        self.node = Node("resources:\n  cpu_overcommit: 1.0\n  memory_overcommit: 1.0\n"
                         "pools:\n  lab:\n    cpus: 3\n    memory: 4G\n    gpus: 0\n"
                         f"storage_pools:\n  fast:\n    path: {self.small}\n"
                         f"  thin:\n    path: {self.small}-thin\n    thin_overcommit: true\n"
                         "vm_defaults:\n  disk: 1G\n")
        self.node.start_daemon(extra_env={"QVISOR_SYSROOT": self.root})
        base = os.path.join(self.node.dir, "blank.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", base, "1G"], check=True)
        self.node.qvisor("image", "import", base, "blank", check=0)

    def tearDown(self):
        self.node.cleanup()
        subprocess.run(["rm", "-rf", self.root])

    def create(self, name, *args, want=0):
        return self.node.qvisor("vm", "create", name, "--image", "blank", *args, check=want)

    def test_cpu_and_memory_limits(self):
        # 8 logical CPUs × 1.0: 8 vCPUs, exactly at the limit, pass
        self.create("a", "--cpus", "4", "--memory", "1G")
        self.create("b", "--cpus", "4", "--memory", "1G")
        p = self.create("c", "--cpus", "1", "--memory", "1G", want=75)
        self.assertIn("CPU", p.stderr)
        self.assertIn("8", p.stderr)
        self.assertEqual(self.node.qvisor("vm", "show", "c").returncode, 66)  # nothing left behind
        # memory: 48 GiB × 1.0; a and b hold 2 GiB
        self.node.qvisor("vm", "rm", "b", check=0)
        self.create("big", "--cpus", "1", "--memory", "47G")  # a 1 + 47 = 48: at the limit
        p = self.create("more", "--cpus", "1", "--memory", "1G", want=75)
        self.assertIn("not enough memory", p.stderr)

    def test_pool_quotas(self):
        self.create("p1", "--pool", "lab", "--cpus", "2", "--memory", "1G")
        self.create("p2", "--pool", "lab", "--cpus", "1", "--memory", "1G")  # 3 vCPUs: the quota
        p = self.create("p3", "--pool", "lab", "--cpus", "1", "--memory", "1G", want=75)
        self.assertIn("lab", p.stderr)
        self.create("d1", "--cpus", "1", "--memory", "1G")  # the default pool has no quota
        p = self.create("x", "--pool", "nope", want=66)
        self.assertIn("nope", p.stderr)
        names = [v["name"] for v in self.node.qvisor_json("vm", "list", "--pool", "lab")["vms"]]
        self.assertEqual(sorted(names), ["p1", "p2"])
        st = self.node.qvisor_json("node", "status")
        lab = next(p for p in st["pools"] if p["name"] == "lab")
        self.assertEqual((lab["used"]["vms"], lab["used"]["cpus"], lab["quota"]["cpus"]), (2, 3, 3))
        default = next(p for p in st["pools"] if p["name"] == "default")
        self.assertIsNone(default["quota"]["cpus"])

    def test_storage_pools(self):
        self.create("s1", "--storage-pool", "fast", "--cpus", "1", "--memory", "1G")
        link = os.path.join(self.node.state, "instances", "s1", "disk.qcow2")
        self.assertEqual(os.readlink(link), os.path.join(self.small, "s1.qcow2"))
        self.assertTrue(os.path.isfile(os.path.join(self.small, "s1.qcow2")))
        # a disk no file system here can hold: refused without thin overcommit ...
        p = self.create("huge", "--storage-pool", "fast", "--cpus", "1", "--memory", "1G", "--disk", "60T",
                        want=75)
        self.assertIn("fast", p.stderr)
        self.assertIn("thin", p.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.small, "huge.qcow2")))
        # ... allowed with it
        self.create("huge", "--storage-pool", "thin", "--cpus", "1", "--memory", "1G", "--disk", "60T")
        st = self.node.qvisor_json("node", "status")
        thin = next(p for p in st["storage_pools"] if p["name"] == "thin")
        self.assertEqual(thin["allocated"], 60 << 40)
        fast = next(p for p in st["storage_pools"] if p["name"] == "fast")
        self.assertEqual(fast["allocated"], 1 << 30)
        self.assertGreater(fast["free"], 0)
        # vm rm takes the pool's file too
        self.node.qvisor("vm", "rm", "s1", check=0)
        self.assertFalse(os.path.exists(os.path.join(self.small, "s1.qcow2")))
        p = self.create("y", "--storage-pool", "nowhere", want=66)
        self.assertIn("nowhere", p.stderr)

    def test_storage_pool_added_by_reload(self):
        # a pool the node config gains while the daemon runs is where create
        # puts the disk (not silently the instances directory), and vm rm
        # takes it from there
        late = os.path.join(self.root, "late-pool")
        with open(self.node.config) as f:
            conf = f.read()
        self.node.write_config(conf.replace(self.node.base_config(), "", 1).replace(
            "storage_pools:\n", f"storage_pools:\n  late:\n    path: {late}\n", 1))
        self.node.proc.send_signal(signal.SIGHUP)
        self.node.wait_notify("READY=1")
        self.create("l1", "--storage-pool", "late", "--cpus", "1", "--memory", "1G")
        link = os.path.join(self.node.state, "instances", "l1", "disk.qcow2")
        self.assertEqual(os.readlink(link), os.path.join(late, "l1.qcow2"))
        self.node.qvisor("vm", "rm", "l1", check=0)
        self.assertFalse(os.path.exists(os.path.join(late, "l1.qcow2")))

    def test_rm_whose_rename_fails_changes_nothing(self):
        # the rename is vm rm's point of no return: one that fails leaves the
        # VM defined, stopped and usable, and the name taken
        self.create("keep", "--cpus", "1", "--memory", "1G")
        inst = os.path.join(self.node.state, "instances", "keep")
        if subprocess.run(["chattr", "+i", inst], capture_output=True).returncode != 0:
            self.skipTest("chattr +i is not supported here")
        try:
            p = self.node.qvisor("vm", "rm", "keep")
            self.assertNotEqual(p.returncode, 0)
            self.assertIn("cannot remove", p.stderr)
            self.assertEqual(self.node.qvisor_json("vm", "show", "keep")["state"], "stopped")
            self.assertTrue(os.path.isdir(inst))
        finally:
            subprocess.run(["chattr", "-i", inst])
        self.node.qvisor("vm", "rm", "keep", check=0)
        self.assertFalse(os.path.exists(inst))
        self.assertIn("no VM named", self.node.qvisor("vm", "show", "keep").stderr)
        self.create("keep", "--cpus", "1", "--memory", "1G")  # the name is free again

    def test_node_status(self):
        self.create("n1", "--cpus", "2", "--memory", "2G", "--numa", "1")
        st = self.node.qvisor_json("node", "status")
        self.assertEqual((st["cpus"], st["cores"]), (8, 4))
        self.assertEqual([n["id"] for n in st["nodes"]], [0, 1])
        self.assertEqual(st["nodes"][1]["memory_total"], 32 * GIB)
        self.assertEqual(st["usage"]["defined"]["cpus"], 2)
        self.assertEqual(st["usage"]["running"]["cpus"], 0)
        self.assertEqual(st["limits"]["cpus"], 8)
        nic = next(n for n in st["nics"] if n["name"] == "enp59s0f0")
        self.assertEqual((nic["numa_node"], nic["sriov"]["total_vfs"], nic["sriov"]["num_vfs"]), (1, 8, 2))
        hp = {h["page_size"]: h for h in st["nodes"][1]["hugepages"]}
        self.assertEqual((hp[2 << 20]["total"], hp[1 << 30]["free"]), (1024, 6))
        # the text form names every part
        p = self.node.qvisor("node", "status", check=0)
        for word in ("NUMA node 0", "NUMA node 1", "SR-IOV, 2 of 8 VFs", "pools:", "storage pools:", "vCPUs"):
            self.assertIn(word, p.stdout)


if __name__ == "__main__":
    unittest.main(verbosity=2)
