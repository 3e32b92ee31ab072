#!/usr/bin/env python3
"""`qvisor slurm gres` and `qvisor slurm check` (issue 18) against the fake
sysfs kernel (test/fakesysfs): the gres.conf lines follow qvisor's GPU order,
leave out what cannot be passed through, and `check` tells a gres.conf and a
slurm.conf that agree from ones that do not, with documented exit codes.

The fake tree has three display devices: 0000:01:00.0 (IOMMU group 1, with
its audio function), 0000:02:00.0 (group 2) and 0000:04:00.0 (no IOMMU
group: left out).  In the default tree the NIC 0000:03:00.0 (e1000e) shares
group 2: 0000:02:00.0 is left out too (HostDeviceInGroup); the other tests
give the NIC a group of its own (group 6), so both GPUs are offered."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
sys.path.insert(0, os.environ.get("QVISOR_FAKESYSFS_DIR", os.path.join(HERE, "..", "fakesysfs")))
from qvtest import QVISOR, Node  # noqa: E402
from fakesysfs import FakeSys, asan_runtime  # noqa: E402

DEV = "/dev/qv-test-vfio"  # --device-dir: only named, never created
SCENARIO = os.path.join(os.path.dirname(sys.modules["fakesysfs"].__file__), "scenario-default.json")


def scenario(nic_group):
    """The default tree with the NIC 0000:03:00.0 in IOMMU group nic_group."""
    with open(SCENARIO) as f:
        s = json.load(f)
    for d in s["devices"]:
        if d["bdf"] == "0000:03:00.0":
            d["iommu_group"] = nic_group
    return s


class Base(unittest.TestCase):
    NIC_GROUP = 6   # a group of its own: both GPUs are offered

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="qv-slurm-")
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        self.fs = FakeSys(os.path.join(self.tmp, "root"), scenario=scenario(self.NIC_GROUP))
        self.addCleanup(self.fs.release)
        self.node = Node()  # a config file only; no daemon is started
        self.addCleanup(self.node.cleanup)

    def qv(self, *args):
        return self.fs.run([QVISOR, "--config", self.node.config, *args], capture_output=True, text=True)

    def write(self, name, text):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def start_daemon(self):
        shutil.rmtree(os.path.join(self.fs.root, "proc"))
        os.symlink("/proc", os.path.join(self.fs.root, "proc"))
        env = self.fs.env(asan=False)
        if asan_runtime(QVISOR):
            env["ASAN_OPTIONS"] = ":".join(filter(None, [env.get("ASAN_OPTIONS"), "verify_asan_link_order=0"]))
        self.node.start_daemon(extra_env={k: v for k, v in env.items() if os.environ.get(k) != v})

    def prolog(self, idx, image, *extra):
        """`qvisor slurm prolog` for job 7 of root given GPU index idx on n1,
        with a stand-in scontrol (scancel: true).  (CompletedProcess, the
        drain updates it asked scontrol for)."""
        scontrol = self.write("scontrol", FAKE_SCONTROL)
        os.chmod(scontrol, 0o755)
        log = os.path.join(self.tmp, "scontrol.log")
        job = ("JobId=7 JobName=wrap\n   UserId=root(0) GroupId=root(0)\n   JobState=RUNNING\n"
               f"     Nodes=n1 CPU_IDs=0 Mem=100 GRES=gpu:1(IDX:{idx})\n")
        env = dict(os.environ, FAKE_SCONTROL_LOG=log, FAKE_SCONTROL_JOB=job, SLURM_JOB_ID="7", SLURM_JOB_UID="0",
                   SLURMD_NODENAME="n1")
        p = subprocess.run([QVISOR, "--config", self.node.config, "slurm", "prolog", "--image", image, "--scontrol",
                            scontrol, "--scancel", "/bin/true", *extra], capture_output=True, text=True, env=env)
        calls = []
        if os.path.exists(log):
            with open(log) as f:
                calls = [json.loads(line) for line in f]
            os.unlink(log)
        return p, [c for c in calls if c[:3] == ["update", "NodeName=n1", "State=DRAIN"]]

    def check(self, gres, slurm, *extra):
        return self.qv("slurm", "check", "--node", "n1", "--device-dir", DEV, "--gres-conf",
                       self.write("gres.conf", gres), "--slurm-conf", self.write("slurm.conf", slurm), *extra)


class SlurmGres(Base):
    def test_gres_lines_in_qvisor_order(self):
        p = self.qv("slurm", "gres", "--node", "n1", "--device-dir", DEV)
        self.assertEqual(p.returncode, 0, p.stderr)
        lines = [ln for ln in p.stdout.splitlines() if not ln.startswith("#")]
        self.assertEqual([ln.split("#")[0].split() for ln in lines],
                         [["NodeName=n1", "Name=gpu", f"File={DEV}/1"],
                          ["NodeName=n1", "Name=gpu", f"File={DEV}/2"]])
        self.assertIn("0000:01:00.0", lines[0])
        self.assertIn("0000:02:00.0", lines[1])
        self.assertIn("# left out: 0000:04:00.0: no IOMMU group", p.stdout)
        j = json.loads(self.qv("--json", "slurm", "gres", "--node", "n1").stdout)
        self.assertEqual([(g["index"], g["address"], g["file"]) for g in j["gpus"]],
                         [(0, "0000:01:00.0", "/dev/vfio/1"), (1, "0000:02:00.0", "/dev/vfio/2")])
        self.assertEqual([g["address"] for g in j["left_out"]], ["0000:04:00.0"])
        # what it prints is what check accepts
        slurm = "NodeName=n1 CPUs=4 Gres=gpu:2\n"
        p = self.check(p.stdout, slurm)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("OK    gres.conf", p.stdout)
        self.assertIn("WARN  gpu", p.stdout)  # the GPU left out

    def test_check_finds_disagreements(self):
        good = f"AutoDetect=off\nNodeName=n1 Name=gpu File={DEV}/[1-2]\nNodeName=n2 Name=gpu File={DEV}/9\n"
        slurm = "NodeName=DEFAULT Gres=gpu:2\nNodeName=n[1-2] CPUs=4\n"
        self.assertEqual(self.check(good, slurm).returncode, 0)
        # swapped: Slurm's index 0 would be qvisor's GPU 1
        p = self.check(f"NodeName=n1 Name=gpu File={DEV}/2\nNodeName=n1 Name=gpu File={DEV}/1\n", slurm)
        self.assertEqual(p.returncode, 69, p.stdout)
        self.assertIn("GPU index 0 of n1 is 0000:01:00.0 (IOMMU group 1) for qvisor, but "
                      f"{DEV}/2 for gres.conf", p.stdout)
        # one too many, one missing, a count that differs
        p = self.check(good + f"NodeName=n1 Name=gpu File={DEV}/5\n", slurm)
        self.assertEqual(p.returncode, 69)
        self.assertIn(f"GPU index 2 of n1: {DEV}/5, which qvisor does not offer", p.stdout)
        p = self.check(f"NodeName=n1 Name=gpu File={DEV}/1\n", "NodeName=n1 Gres=gpu:1\n")
        self.assertEqual(p.returncode, 69)
        self.assertIn("is 0000:02:00.0 (IOMMU group 2) for qvisor, but missing", p.stdout)
        p = self.check(good, "NodeName=n1 Gres=gpu:3\n")
        self.assertEqual(p.returncode, 69)
        self.assertIn("NodeName n1 has Gres of 3 GPUs; qvisor offers 2", p.stdout)
        p = self.check(good, "NodeName=other Gres=gpu:2\n")
        self.assertEqual(p.returncode, 69)
        self.assertIn("no NodeName line for n1", p.stdout)
        # JSON: the same items
        j = json.loads(self.check(good, "NodeName=n1 Gres=gpu:3\n", "--json").stdout)
        self.assertFalse(j["ok"])
        self.assertEqual([i["status"] for i in j["items"] if i["name"] == "slurm.conf"], ["fail"])

    def test_check_bad_files(self):
        p = self.check("Name=gpu File=/dev/x[\n", "NodeName=n1\n")
        self.assertEqual(p.returncode, 65, p.stdout + p.stderr)
        self.assertIn("line 1", p.stdout)
        p = self.qv("slurm", "check", "--node", "n1", "--gres-conf", os.path.join(self.tmp, "absent"),
                    "--slurm-conf", self.write("slurm.conf", ""))
        self.assertEqual(p.returncode, 66)
        self.assertIn("absent", p.stderr)
        p = self.qv("slurm", "check", "--gres-conf", self.tmp, "--slurm-conf", self.tmp, "--node", "n1")
        self.assertEqual(p.returncode, 65)
        self.assertIn("not a regular file", p.stderr)
        self.assertEqual(self.qv("slurm", "gres", "--node", "a b").returncode, 64)
        self.assertEqual(self.qv("slurm", "gres", "--device-dir", "rel").returncode, 64)
        self.assertEqual(self.qv("slurm", "gres", "--gres-conf", "/x").returncode, 64)


class HostDeviceInGroup(Base):
    """GPU 0000:02:00.0 shares IOMMU group 2 with a NIC on its host driver:
    only take-group could pass it through, which a job's VM never asks for,
    so Slurm is not offered it, by `slurm gres` nor by the prolog's mapping
    of Slurm's indexes (the daemon's gpu.list)."""
    NIC_GROUP = 2   # the default tree's layout

    def test_gres_leaves_it_out(self):
        p = self.qv("slurm", "gres", "--node", "n1", "--device-dir", DEV)
        self.assertEqual(p.returncode, 0, p.stderr)
        lines = [ln.split("#")[0].split() for ln in p.stdout.splitlines() if not ln.startswith("#")]
        self.assertEqual(lines, [["NodeName=n1", "Name=gpu", f"File={DEV}/1"]])
        why = ("IOMMU group 2 holds host device 0000:03:00.0 (Ethernet controller, e1000e): only take-group could "
               "pass it through")
        self.assertIn(f"# left out: 0000:02:00.0: {why}", p.stdout)
        j = json.loads(self.qv("--json", "slurm", "gres", "--node", "n1").stdout)
        self.assertEqual([g["address"] for g in j["gpus"]], ["0000:01:00.0"])
        self.assertEqual({g["address"]: g["why"] for g in j["left_out"]}["0000:02:00.0"], why)
        # check warns about it, and a gres.conf that still offers it fails
        p = self.check(p.stdout, "NodeName=n1 Gres=gpu:1\n")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn(f"0000:02:00.0 is not offered to Slurm: {why}", p.stdout)
        p = self.check(f"NodeName=n1 Name=gpu File={DEV}/[1-2]\n", "NodeName=n1 Gres=gpu:2\n")
        self.assertEqual(p.returncode, 69, p.stdout)
        self.assertIn(f"GPU index 1 of n1: {DEV}/2, which qvisor does not offer", p.stdout)
        # the NIC unbound from its driver: nothing of the host's left in the group
        u = self.fs.run(["sh", "-c", "echo 0000:03:00.0 > /sys/bus/pci/drivers/e1000e/unbind"])
        self.assertEqual((u.returncode, self.fs.driver("0000:03:00.0")), (0, None), u.stderr)
        p = self.qv("slurm", "gres", "--node", "n1", "--device-dir", DEV)
        self.assertIn(f"File={DEV}/2", p.stdout)

    def test_prolog_maps_indexes_without_it(self):
        # the prolog maps Slurm's indexes over the daemon's gpu.list: the
        # same GPUs as `slurm gres`, so index 1 is no GPU here (the node's
        # failure: gres.conf does not match), never 0000:02:00.0
        self.start_daemon()
        for idx, rc in ((1, 1), (0, None)):
            p, drains = self.prolog(idx, "nosuch")
            if rc:
                self.assertEqual(p.returncode, rc, p.stdout + p.stderr)
                self.assertEqual(len(drains), 1, p.stderr)
                self.assertIn("Slurm gave GPU index 1 on n1, but qvisor offers 1 GPU there", drains[0][3])
            else:
                # index 0 is 0000:01:00.0: the prolog gets as far as the
                # image, which is the job's mistake (cancelled, no drain)
                self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
                self.assertEqual(drains, [])
                self.assertIn("no image 'nosuch'", p.stderr)


class Profiles(Base):
    """Job VM profiles (docs/slurm.md): the prolog's --profiles DIR/NAME.yaml.
    A profile is the administrator's: one it cannot use drains the node
    (the node's failure), never cancels the job."""

    def test_profile_the_prolog_cannot_use_drains(self):
        self.start_daemon()
        d = os.path.join(self.tmp, "profiles")
        os.mkdir(d)
        for text, why in (("image: x\ncpus: 4\n", "cpus is the job's allocation, Slurm's to decide"),
                          ("image: x\ngpus: [0000:01:00.0]\n", "gpus is the job's allocation"),
                          ("image: x\nbogus: 1\n", "bogus"),
                          (f"image: x\nkernel: {self.tmp}/absent\n", f"kernel {self.tmp}/absent: no such file")):
            with open(os.path.join(d, "p.yaml"), "w") as f:
                f.write(text)
            p, drains = self.prolog(0, "p", "--profiles", d)
            self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
            self.assertEqual(len(drains), 1, p.stderr)
            self.assertIn("job VM profile", drains[0][3])
            self.assertIn(why, drains[0][3])
        # no profile of that name: a base image, here none, the job's own
        # mistake (cancelled, the node not drained)
        p, drains = self.prolog(0, "other", "--profiles", d)
        self.assertEqual((p.returncode, drains), (0, []), p.stderr)
        self.assertIn("no image 'other'", p.stderr)


FAKE_SCONTROL = """#!/usr/bin/env python3
import json, os, sys
with open(os.environ["FAKE_SCONTROL_LOG"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1:4] == ["-d", "show", "job"]:
    print(os.environ["FAKE_SCONTROL_JOB"])
if sys.argv[1:3] == ["show", "node"]:
    print(f"NodeName={sys.argv[3]} Arch=x86_64 CoresPerSocket=1")
    reason = os.environ.get("FAKE_SCONTROL_REASON")
    if reason:
        print(f"   State=IDLE+DRAIN ThreadsPerCore=1")
        print(f"   Reason={reason} [root@2026-12-07T09:00:00]")
"""


class SlurmHealth(Base):
    """`qvisor slurm health` as Slurm's HealthCheckProgram, with a stand-in
    for scontrol that records its arguments (the real one needs a
    slurmctld: the cluster tests use it)."""

    def setUp(self):
        super().setUp()
        os.makedirs(self.node.state, exist_ok=True)
        self.scontrol = self.write("scontrol", FAKE_SCONTROL)
        os.chmod(self.scontrol, 0o755)
        self.log = os.path.join(self.tmp, "scontrol.log")
        gres = self.qv("slurm", "gres", "--node", "n1", "--device-dir", DEV).stdout
        self.good = self.write("gres.conf", gres)
        self.bad = self.write("gres-bad.conf", f"NodeName=n1 Name=gpu File={DEV}/2\n")
        self.slurm = self.write("slurm.conf", "NodeName=n1 Gres=gpu:2\n")

    def health(self, gres, reason=None, argv0=None):
        # the sanitizer runtime is not preloaded: qvisor's children (the
        # stand-in scontrol, a Python) would inherit it and LeakSanitizer
        # would fail them; an ASan qvisor links it anyway (as the
        # passthrough test runs its daemon)
        env = self.fs.env(asan=False)
        if asan_runtime(QVISOR):
            env["ASAN_OPTIONS"] = ":".join(filter(None, [env.get("ASAN_OPTIONS"), "verify_asan_link_order=0"]))
        env.update(FAKE_SCONTROL_LOG=self.log)
        if reason:
            env["FAKE_SCONTROL_REASON"] = reason
        if os.path.exists(self.log):
            os.unlink(self.log)
        argv = [argv0 or QVISOR] + ([] if argv0 else ["--config", self.node.config, "slurm", "health"])
        p = subprocess.run(argv + ["--node", "n1", "--device-dir", DEV, "--gres-conf", gres, "--slurm-conf",
                                   self.slurm, "--scontrol", self.scontrol], capture_output=True, text=True,
                           env=env)
        calls = []
        if os.path.exists(self.log):
            with open(self.log) as f:
                calls = [json.loads(line) for line in f]
        return p, [c for c in calls if c[0] == "update"]

    def test_unhealthy_drains_healthy_resumes(self):
        p, updates = self.health(self.bad)
        self.assertEqual(p.returncode, 69, p.stdout + p.stderr)
        self.assertEqual(len(updates), 1, updates)
        self.assertEqual(updates[0][:3], ["update", "NodeName=n1", "State=DRAIN"])
        self.assertTrue(updates[0][3].startswith("Reason=qvisor health: gres.conf: GPU index 0 of n1"), updates)
        # drained for another reason: that reason stays
        p, updates = self.health(self.bad, reason="bad fan")
        self.assertEqual(p.returncode, 69)
        self.assertEqual(updates, [])
        self.assertIn("its reason is kept", p.stderr)
        # healthy, drained by an earlier health check: resumed
        p, updates = self.health(self.good, reason="qvisor health: gres.conf: GPU index 0 of n1 …")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertEqual(updates, [["update", "NodeName=n1", "State=RESUME"]])
        # healthy, drained for another reason, or not drained: left alone
        self.assertEqual(self.health(self.good, reason="bad fan")[1], [])
        self.assertEqual(self.health(self.good)[1], [])

    def test_health_link(self):
        # HealthCheckProgram takes a path without arguments: the link's name
        # selects `slurm health` (the options here only point at the files)
        link = os.path.join(self.tmp, "qvisor-slurm-health")
        os.symlink(QVISOR, link)
        p, updates = self.health(self.bad, argv0=link)
        self.assertEqual(p.returncode, 69, p.stdout + p.stderr)
        self.assertEqual(updates[0][2], "State=DRAIN")


if __name__ == "__main__":
    unittest.main()
