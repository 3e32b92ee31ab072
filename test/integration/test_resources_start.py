#!/usr/bin/env python3
"""The start side of node resources (issue 8) through the real CLI and
daemon with real QEMU (TCG) and the tiny test guest: `--pin` pins every
vCPU thread and every emulator thread (Cpus_allowed_list of
/proc/PID/task/TID/status), a CPU the host does not have is refused before
QEMU runs, `--numa 0` binds guest RAM with a memory backend and boots, and
hugepages that are not free are refused at start with exit 75."""

import json
import os
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "guest"))
from qvtest import Node, scaled, wait_for  # noqa: E402
import guestlib  # noqa: E402

GUEST = None


def setUpModule():
    global GUEST
    GUEST = guestlib.build_tiny_guest()


def online_cpus():
    with open("/sys/devices/system/cpu/online") as f:
        cpus = set()
        for item in f.read().strip().split(","):
            lo, _, hi = item.partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
        return sorted(cpus)


def read(path):
    with open(path) as f:
        return f.read().strip()


def threads(pid):
    """{tid: (comm, Cpus_allowed_list)} of every thread of pid."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                allowed = next(l.split(":", 1)[1].strip() for l in f if l.startswith("Cpus_allowed_list:"))
        except (FileNotFoundError, ProcessLookupError):
            continue  # a worker thread that ended meanwhile
        out[int(tid)] = (comm, allowed)
    return out


def cpuset_v1():
    """The cgroup v1 cpuset hierarchy when this process may make groups in it."""
    root = "/sys/fs/cgroup/cpuset"
    if os.geteuid() == 0 and os.path.exists(os.path.join(root, "cpuset.cpus")) and os.access(root, os.W_OK):
        return root
    return None


class StartResources(unittest.TestCase):
    CONFIG = "vm_defaults:\n  memory: 256M\n  disk: 1G\n  stop_timeout: 30s\n  kill_timeout: 5s\n"

    def setUp(self):
        self.node = Node(self.CONFIG)
        self.node.start_daemon()
        base = os.path.join(self.node.dir, "blank.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", base, "1G"], check=True)
        self.node.qvisor("image", "import", base, "blank", check=0)

    def tearDown(self):
        try:
            # a clean exit (the sanitizer build aborts on a leak or an error)
            self.assertIn(self.node.stop_daemon(), (0, None), self.node.log()[-4000:])
            self.assertEqual(self.node.sanitizer_reports(), [], self.node.log()[-4000:])
        finally:
            self.node.cleanup()

    def create(self, name, *extra):
        self.node.qvisor("vm", "create", name, "--image", "blank", "--kernel", GUEST.kernel, "--initrd",
                         GUEST.initrd, "--append", guestlib.cmdline(), "--no-agent", *extra, check=0)

    def serial(self, name):
        return os.path.join(self.node.state, "instances", name, "serial.log")

    def start(self, name):
        j = self.node.qvisor_json("vm", "start", name, timeout=scaled(60))
        guestlib.wait_marker_in_file(self.serial(name), r"^ready$", scaled(60))
        return j

    def show(self, name):
        return self.node.qvisor_json("vm", "show", name)

    def state_json(self, name):
        with open(os.path.join(self.node.state, "instances", name, "state.json")) as f:
            return json.load(f)

    def qemu_log(self, name):
        with open(os.path.join(self.node.state, "instances", name, "qemu.log")) as f:
            return f.read()

    def assert_refused_at_start(self, name, code, *words):
        p = self.node.qvisor("vm", "start", name, timeout=scaled(60))
        self.assertEqual(p.returncode, code, p.stderr)
        for w in words:
            self.assertIn(w, p.stderr)
        # refused before anything changed: no QEMU, no run files, no new start
        self.assertEqual(self.show(name)["state"], "stopped")
        self.assertEqual(self.node.qemu_pids(), [])
        self.assertFalse(os.path.exists(os.path.join(self.node.run_dir, "vm", name)))
        self.assertNotIn(f"VM {name}: starting", self.node.log())
        return p

    # -- tests ------------------------------------------------------------------

    def test_pin_vcpus_and_emulator_threads(self):
        cpus = online_cpus()
        self.assertGreaterEqual(len(cpus), 2, "needs two CPUs to tell a pinned thread from an unpinned one")
        want = str(cpus[-1])  # one CPU of several: different from what QEMU would inherit
        self.create("pinned", "--cpus", "2", "--pin", want)
        pid = self.start("pinned")["pid"]
        t = threads(pid)
        vcpus = {tid: a for tid, (comm, a) in t.items() if comm.startswith("CPU ") and comm.endswith("/TCG")}
        others = {tid: (comm, a) for tid, (comm, a) in t.items() if tid not in vcpus}
        self.assertEqual(len(vcpus), 2, t)  # "CPU 0/TCG", "CPU 1/TCG" (debug-threads=on)
        for tid, allowed in vcpus.items():
            self.assertEqual(allowed, want, f"vCPU thread {tid}")
        # the emulator threads (main loop, RCU, I/O workers, even those made
        # after the pinning: they inherit it) get the same set
        self.assertIn(pid, others)
        for tid, (comm, allowed) in others.items():
            self.assertEqual(allowed, want, f"emulator thread {tid} ({comm})")
        self.assertRegex(self.node.log(), rf"VM pinned: 2 vCPU threads and \d+ emulator threads? pinned to CPUs {want}")
        # node status counts them on the node that holds the CPU
        st = self.node.qvisor_json("node", "status")
        self.assertEqual(st["nodes"][0]["pinned_vcpus"], 2)
        self.assertEqual(st["usage"]["running"]["cpus"], 2)
        # a VM without pin or NUMA is left alone: it runs where the daemon may
        self.create("free")
        free_pid = self.start("free")["pid"]
        for tid, (comm, allowed) in threads(free_pid).items():
            self.assertNotEqual(allowed, want, f"{comm} of an unpinned VM")
        self.node.qvisor("vm", "stop", "--force", "pinned", check=0, timeout=scaled(60))
        self.node.qvisor("vm", "stop", "--force", "free", check=0, timeout=scaled(60))

    def test_pin_to_a_cpu_the_host_lacks_is_refused(self):
        self.create("nowhere", "--pin", "99")
        p = self.assert_refused_at_start("nowhere", 65, "CPU 99", "not an online CPU")
        self.assertNotIn("QEMU started", self.node.log())
        self.assertIsNone(self.show("nowhere")["last_exit"], p.stderr)  # it never began

    @unittest.skipUnless(cpuset_v1(), "needs root and a writable cgroup v1 cpuset hierarchy")
    def test_pin_that_the_kernel_refuses_fails_the_start(self):
        # The daemon (and so its QEMU) confined to CPU 0 by a cpuset: CPU 1
        # is online, passes the check at start, and sched_setaffinity
        # refuses it.  The start fails with the reason; QEMU is gone.
        cpus = online_cpus()
        self.assertGreaterEqual(len(cpus), 2)
        group = tempfile.mkdtemp(prefix="qvisor-test-", dir=cpuset_v1())
        try:
            with open(os.path.join(cpuset_v1(), "cpuset.mems")) as f:
                mems = f.read().strip()
            for name, value in (("cpuset.cpus", str(cpus[0])), ("cpuset.mems", mems)):
                with open(os.path.join(group, name), "w") as f:
                    f.write(value)
            self.assertEqual(self.node.stop_daemon(), 0)
            tasks = os.path.join(group, "tasks")
            # the wrapper joins the group, then execs the daemon
            self.node.start_daemon(wrap=[sys.executable, "-c", "import os, sys; open(sys.argv[1], 'w').write("
                                         "str(os.getpid())); os.execv(sys.argv[2], sys.argv[2:])", tasks])
            self.create("confined", "--pin", str(cpus[-1]))
            p = self.node.qvisor("vm", "start", "confined", timeout=scaled(60))
            self.assertEqual(p.returncode, 1, p.stderr)
            self.assertIn(f"pinning failed: cannot pin vCPU 0", p.stderr)
            self.assertIn(f"to CPUs {cpus[-1]}: Invalid argument", p.stderr)
            vm = self.show("confined")
            self.assertEqual(vm["state"], "stopped")
            self.assertIn("pinning failed", vm["last_exit"])
            self.assertEqual(self.node.qemu_pids(), [])
            self.assertFalse(os.path.exists(os.path.join(self.node.run_dir, "vm", "confined")))
            self.assertEqual(self.state_json("confined")["run"]["numa_node"], -1)
        finally:
            rc = self.node.stop_daemon()  # out of the group before it goes
            os.rmdir(group)
        self.assertIn(rc, (0, None), self.node.log()[-4000:])

    def test_numa_node_binds_guest_memory(self):
        self.create("bound", "--numa", "0")
        pid = self.start("bound")["pid"]
        log = self.qemu_log("bound")
        self.assertIn("memory-backend=ram0", log)
        self.assertIn("-object memory-backend-ram,id=ram0,size=256M,host-nodes=0,policy=bind", log)
        self.assertEqual(self.state_json("bound")["run"]["numa_node"], 0)
        # without pin, the vCPUs go to the node's CPUs (here: all of them)
        node_cpus = read("/sys/devices/system/node/node0/cpulist")
        for tid, (comm, allowed) in threads(pid).items():
            self.assertEqual(allowed, node_cpus, f"{comm}")
        self.node.qvisor("vm", "stop", "--force", "bound", check=0, timeout=scaled(60))
        self.assertEqual(self.state_json("bound")["run"]["numa_node"], -1)

    def test_hugepages_that_are_not_free_are_refused_at_start(self):
        pool = "/sys/kernel/mm/hugepages/hugepages-2048kB"
        free = 0
        if os.path.isdir(pool):
            with open(os.path.join(pool, "free_hugepages")) as f:
                free = int(f.read())
        memory = max(256, (free + 1) * 2)  # MiB: one page more than is free
        # The pages are gone between create and start (create-time admission
        # would refuse the VM on this machine): the spec gets its hugepages
        # while the daemon is down, as if they had been free at create.
        self.create("huge", "--memory", f"{memory}M")
        self.assertEqual(self.node.stop_daemon(), 0)
        spec_path = os.path.join(self.node.state, "instances", "huge", "spec.json")
        with open(spec_path) as f:
            spec = json.load(f)
        spec["hugepages"] = "2M"
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        self.node.start_daemon()
        self.assertEqual(self.show("huge")["spec"]["hugepages"], "2M")
        p = self.assert_refused_at_start("huge", 75, "2M hugepages")
        if os.path.isdir(pool):
            self.assertIn(f"this one asks {memory // 2} pages", p.stderr)
            self.assertIn("never overcommitted", p.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
