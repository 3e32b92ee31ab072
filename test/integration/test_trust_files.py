#!/usr/bin/env python3
"""Trust boundaries of the directories qvisor writes (issue 15), from the
attacker's side: somebody who can write a storage pool directory or the
instances directory plants symlinks where qvisor will create or remove a
file.  Each test names a victim file outside, which must stay untouched.

Covered: a link planted in a pool under a VM's future disk name (refused,
never followed, also while swapped in a loop), a pool disk swapped after
create (`vm rm` leaves it), `.NAME.creating/` and `.NAME.removing/`
directories holding `disk.qcow2 -> victim` (start-up recovery and `vm rm`),
and that genuine leftovers of a crash are still cleaned."""

import os
import stat
import subprocess
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "guest"))
from qvtest import Node, scaled  # noqa: E402
import guestlib  # noqa: E402

PRECIOUS = "precious, not qvisor's\n"


class Base(unittest.TestCase):
    def setUp(self):
        self.node = Node()
        self.pool = os.path.join(self.node.dir, "pool")
        self.outside = os.path.join(self.node.dir, "outside")
        os.makedirs(self.pool)
        os.makedirs(self.outside)
        self.node.write_config(f"storage_pools:\n  fast:\n    path: {self.pool}\nvm_defaults:\n  disk: 1G\n"
                               "resources:\n  cpu_overcommit: 64.0\n  memory_overcommit: 64.0\n")
        self.node.start_daemon()
        raw = os.path.join(self.node.dir, "base.raw")
        subprocess.run(["qemu-img", "create", "-q", "-f", "raw", raw, "64M"], check=True)
        self.node.qvisor("image", "import", raw, "base", "--format", "raw", check=0)
        self.instances = os.path.join(self.node.state, "instances")

    def tearDown(self):
        try:
            self.assertEqual(self.node.sanitizer_reports(), [], self.node.log()[-4000:])
        finally:
            self.node.cleanup()

    def victim(self, name="victim"):
        path = os.path.join(self.outside, name)
        with open(path, "w") as f:
            f.write(PRECIOUS)
        return path

    def assertUntouched(self, path):
        self.assertTrue(os.path.isfile(path) and not os.path.islink(path), path)
        with open(path) as f:
            self.assertEqual(f.read(), PRECIOUS, path)

    def create(self, name, *args, want=0):
        return self.node.qvisor("vm", "create", name, "--image", "base", "--cpus", "1", "--memory", "128M",
                                "--storage-pool", "fast", *args, check=want)


class PoolLinks(Base):
    def test_link_under_the_disk_name_is_refused(self):
        victim = self.victim()
        os.symlink(victim, os.path.join(self.pool, "v1.qcow2"))
        p = self.create("v1", want=73)
        self.assertIn("exists already in storage pool", p.stderr)
        self.assertUntouched(victim)
        # a dangling link: nothing is created at its target
        target = os.path.join(self.outside, "new.qcow2")
        os.symlink(target, os.path.join(self.pool, "v2.qcow2"))
        self.create("v2", want=73)
        self.assertFalse(os.path.lexists(target))
        self.assertEqual(self.node.qvisor("vm", "show", "v1").returncode, 66)
        self.assertEqual(sorted(os.listdir(self.instances)), [])

    def test_link_swapped_in_a_loop_during_creates(self):
        victim = self.victim()
        stop = threading.Event()
        names = [f"s{i}" for i in range(12)]

        def flip():
            while not stop.is_set():
                for n in names:
                    link = os.path.join(self.pool, f"{n}.qcow2")
                    try:
                        os.symlink(victim, link)
                        os.unlink(link)
                    except OSError:
                        pass  # qvisor's file is there: the name is taken

        t = threading.Thread(target=flip)
        t.start()
        try:
            for n in names:
                p = self.create(n, want=None)
                self.assertIn(p.returncode, (0, 73), p.stderr)
        finally:
            stop.set()
            t.join()
        self.assertUntouched(victim)
        for n in names:  # every disk that exists is a real file of its own
            path = os.path.join(self.pool, f"{n}.qcow2")
            if self.node.qvisor("vm", "show", n).returncode == 0:
                self.assertFalse(os.path.islink(path), path)
                self.assertTrue(os.path.isfile(path), path)

    def test_rm_leaves_a_disk_it_did_not_make(self):
        self.create("r1")
        self.create("r2")
        disk1 = os.path.join(self.pool, "r1.qcow2")
        disk2 = os.path.join(self.pool, "r2.qcow2")
        self.assertTrue(os.path.isfile(disk1))
        # r1's disk swapped for a link to the victim, r2's for another file
        victim = self.victim()
        os.unlink(disk1)
        os.symlink(victim, disk1)
        other = self.victim("other")
        os.unlink(disk2)
        os.link(other, disk2)  # two links: not a disk qvisor made
        self.node.qvisor("vm", "rm", "r1", check=0)
        self.node.qvisor("vm", "rm", "r2", check=0)
        self.assertUntouched(victim)
        self.assertUntouched(other)
        self.assertTrue(os.path.islink(disk1))
        self.assertTrue(os.path.exists(disk2))
        self.assertIn("not the disk qvisor made", self.node.log())
        # the normal case: vm rm removes the pool's disk
        self.create("r3")
        self.node.qvisor("vm", "rm", "r3", check=0)
        self.assertFalse(os.path.lexists(os.path.join(self.pool, "r3.qcow2")))


class InstanceLinks(Base):
    def plant(self, dirname, target):
        d = os.path.join(self.instances, dirname)
        os.makedirs(d)
        os.symlink(target, os.path.join(d, "disk.qcow2"))
        with open(os.path.join(d, "spec.json"), "w") as f:
            f.write("{}\n")

    def test_recovery_unlinks_only_what_it_made(self):
        os.makedirs(self.instances, exist_ok=True)
        v1, v2 = self.victim("v1"), self.victim("v2")
        self.plant(".ghost.creating", v1)
        self.plant(".ghost.removing", v2)
        # a link to the pool file of a live VM, under that VM's name
        self.create("live")
        live_disk = os.path.join(self.pool, "live.qcow2")
        self.plant(".live.removing", live_disk)
        # a temp directory that is itself a link to a directory outside
        sub = os.path.join(self.outside, "dir")
        os.makedirs(sub)
        v3 = self.victim("dir/v3")
        os.symlink(sub, os.path.join(self.instances, ".linked.creating"))
        # and a link through a pool-looking path that is no pool
        self.plant(".fake.creating", os.path.join(self.outside, "fake.qcow2"))
        fake = self.victim("fake.qcow2")

        self.assertEqual(self.node.stop_daemon(), 0)
        self.node.start_daemon()
        for v in (v1, v2, v3, fake):
            self.assertUntouched(v)
        self.assertTrue(os.path.isfile(live_disk))
        self.assertEqual(sorted(os.listdir(self.instances)), ["live"])
        self.assertEqual(os.listdir(sub), ["v3"])
        vms = self.node.qvisor_json("vm", "list")["vms"]
        self.assertEqual([v["name"] for v in vms], ["live"])

    def test_rm_through_a_swapped_disk_link(self):
        self.create("gone")
        victim = self.victim()
        link = os.path.join(self.instances, "gone", "disk.qcow2")
        os.unlink(link)
        os.symlink(victim, link)
        self.node.qvisor("vm", "rm", "gone", check=0)
        self.assertUntouched(victim)
        self.assertEqual(sorted(os.listdir(self.instances)), [])
        # and a planted stale .NAME.removing is not followed either
        self.create("again")
        self.plant(".again.removing", victim)
        self.node.qvisor("vm", "rm", "again", check=0)
        self.assertUntouched(victim)
        self.assertFalse(os.path.lexists(os.path.join(self.pool, "again.qcow2")))

    def test_state_not_written_through_a_swapped_instance_dir(self):
        self.create("swap")
        real = os.path.join(self.outside, "real")
        d = os.path.join(self.instances, "swap")
        os.rename(d, real)
        os.symlink(real, d)
        with open(os.path.join(real, "state.json")) as f:
            before = f.read()
        p = self.node.qvisor("vm", "start", "swap", timeout=scaled(60))
        self.assertNotEqual(p.returncode, 0, "started through a symlinked instance directory")
        self.assertIn("not started: cannot write", p.stderr)
        with open(os.path.join(real, "state.json")) as f:
            self.assertEqual(f.read(), before)
        self.assertEqual(self.node.qemu_pids(), [])

    def test_instance_json_not_read_through_a_link(self):
        self.create("peek")
        secret = os.path.join(self.outside, "secret")
        with open(secret, "w") as f:
            f.write("hunter2-root-only\n")
        spec = os.path.join(self.instances, "peek", "spec.json")
        os.unlink(spec)
        os.symlink(secret, spec)
        self.assertEqual(self.node.stop_daemon(), 0)
        self.node.start_daemon()
        self.assertNotIn("hunter", self.node.log())  # jansson quotes the token it stopped at
        self.assertIn("spec.json", self.node.log())
        vms = self.node.qvisor_json("vm", "list")["vms"]
        self.assertNotIn("peek", [v["name"] for v in vms])

    def crash_during(self, point, args):
        self.node.stop_daemon()
        self.node.start_daemon(extra_env={"QVISOR_TEST_CRASH_AT": point})
        self.assertNotEqual(self.node.qvisor(*args).returncode, 0)
        self.assertEqual(self.node.proc.wait(timeout=scaled(10)), -9)
        self.node.start_daemon()

    def test_genuine_leftovers_still_cleaned(self):
        self.crash_during("create-after-disk", ["vm", "create", "half", "--image", "base", "--storage-pool", "fast"])
        self.assertEqual(os.listdir(self.pool), [])
        self.assertEqual(os.listdir(self.instances), [])
        self.create("gone")
        self.crash_during("remove-after-rename", ["vm", "rm", "gone"])
        self.assertEqual(os.listdir(self.pool), [])
        self.assertEqual(os.listdir(self.instances), [])


class CidataOutput(unittest.TestCase):
    """`qvisor cidata -o PATH` replaces a regular file only (exit 73 else);
    no daemon needed.  Stand-ins for device nodes: a FIFO and a symlink in a
    temp dir, never real /dev nodes."""

    def setUp(self):
        import tempfile
        self.dir = tempfile.mkdtemp(prefix="qv-cidata-")
        self.ud = os.path.join(self.dir, "user-data")
        with open(self.ud, "w") as f:
            f.write("#cloud-config\n")

    def tearDown(self):
        import shutil
        shutil.rmtree(self.dir, ignore_errors=True)

    def cidata(self, out):
        return subprocess.run([os.environ.get("QVISOR_BIN", "qvisor"), "cidata", "-o", out, "-u", self.ud],
                              capture_output=True, text=True, timeout=scaled(30))

    def listing(self):
        return sorted(os.listdir(self.dir))

    def test_fifo_is_not_replaced(self):
        fifo = os.path.join(self.dir, "fifo")
        os.mkfifo(fifo)
        p = self.cidata(fifo)
        self.assertEqual(p.returncode, 73, p.stderr)
        self.assertIn("not a regular file", p.stderr)
        import stat
        self.assertTrue(stat.S_ISFIFO(os.lstat(fifo).st_mode))
        self.assertEqual(self.listing(), ["fifo", "user-data"])  # no temp file left

    def test_symlink_is_not_followed_nor_replaced(self):
        target = os.path.join(self.dir, "target")
        with open(target, "w") as f:
            f.write(PRECIOUS)
        link = os.path.join(self.dir, "seed.iso")
        os.symlink(target, link)
        p = self.cidata(link)
        self.assertEqual(p.returncode, 73, p.stderr)
        self.assertTrue(os.path.islink(link))
        with open(target) as f:
            self.assertEqual(f.read(), PRECIOUS)
        # a directory neither
        os.mkdir(os.path.join(self.dir, "d"))
        self.assertEqual(self.cidata(os.path.join(self.dir, "d")).returncode, 73)

    def test_regular_file_and_absent_are_written(self):
        out = os.path.join(self.dir, "seed.iso")
        self.assertEqual(self.cidata(out).returncode, 0)
        first = os.stat(out).st_ino
        self.assertEqual(self.cidata(out).returncode, 0)  # replaced
        self.assertNotEqual(os.stat(out).st_ino, first)
        self.assertEqual(self.listing(), ["seed.iso", "user-data"])


class Modes(unittest.TestCase):
    """Issue 13: what a VM has on disk is not readable by other users, after
    create and after a start with the tiny guest (real QEMU, TCG)."""

    def setUp(self):
        self.node = Node(world_readable=True)
        self.pool = os.path.join(self.node.dir, "pool")
        self.node.write_config(f"storage_pools:\n  fast:\n    path: {self.pool}\n"
                               "vm_defaults:\n  memory: 256M\n  disk: 1G\n  stop_timeout: 30s\n  kill_timeout: 5s\n")
        self.node.start_daemon()
        base = os.path.join(self.node.dir, "blank.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", base, "1G"], check=True)
        self.node.qvisor("image", "import", base, "blank", check=0)
        self.instances = os.path.join(self.node.state, "instances")

    def tearDown(self):
        try:
            self.assertEqual(self.node.sanitizer_reports(), [], self.node.log()[-4000:])
        finally:
            self.node.cleanup()

    def modes(self, name):
        d = os.path.join(self.instances, name)
        out = {".": stat.S_IMODE(os.stat(d).st_mode)}
        for f in os.listdir(d):
            st = os.lstat(os.path.join(d, f))
            if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
                out[f] = stat.S_IMODE(st.st_mode)
        return out

    def assertNotOthers(self, modes, want):
        for f, m in modes.items():
            self.assertEqual(m & 0o007, 0, f"{f}: {m:o}")  # nothing for others
            self.assertEqual(m & 0o022, 0, f"{f}: {m:o}")  # nor group writes
        for f, m in want.items():
            self.assertEqual(modes.get(f), m, f"{f}: {modes.get(f, 0):o}, want {m:o}")

    def test_modes_after_create_and_start(self):
        guest = guestlib.build_tiny_guest()
        for name, pool in (("here", ()), ("far", ("--storage-pool", "fast"))):
            self.node.qvisor("vm", "create", name, "--image", "blank", "--kernel", guest.kernel, "--initrd",
                             guest.initrd, "--append", guestlib.cmdline(["qv.console=echo"]), "--no-agent",
                             "--no-seed", *pool, check=0)
        self.assertNotOthers(self.modes("here"), {".": 0o750, "disk.qcow2": 0o600, "spec.json": 0o640,
                                                  "state.json": 0o640})
        self.assertNotOthers(self.modes("far"), {".": 0o750})
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(self.pool, "far.qcow2")).st_mode), 0o600)
        for i in range(2):  # the second start rotates serial.log to serial.log.1
            self.node.qvisor("vm", "start", "here", timeout=scaled(60), check=0)
            serial = os.path.join(self.instances, "here", "serial.log")
            self.assertIsNotNone(guestlib.wait_marker_in_file(serial, r"^ready$", scaled(60)))
            self.node.qvisor("vm", "stop", "here", "--force", timeout=scaled(60), check=0)
        self.assertNotOthers(self.modes("here"), {".": 0o750, "disk.qcow2": 0o600, "serial.log": 0o640,
                                                  "serial.log.1": 0o640, "qemu.log": 0o640})

    def test_check_warns_of_writable_dirs(self):
        os.makedirs(self.pool, exist_ok=True)
        os.chmod(self.pool, 0o777)
        os.makedirs(self.instances, exist_ok=True)
        os.chmod(self.instances, 0o770)
        p = self.node.qvisor("--json", "check", timeout=scaled(60))
        import json
        warns = [i for i in json.loads(p.stdout)["items"] if i["status"] == "warn"]
        pool = [i for i in warns if i["name"] == "storage-pool fast"]
        self.assertEqual(len(pool), 1, p.stdout)
        self.assertIn("every user", pool[0]["detail"])
        self.assertIn("chmod go-w", pool[0]["hint"])
        inst = [i for i in warns if i["name"] == "instances-dir"]
        self.assertEqual(len(inst), 1, p.stdout)
        self.assertIn("its group", inst[0]["detail"])
        os.chmod(self.pool, 0o750)
        os.chmod(self.instances, 0o750)
        p = self.node.qvisor("--json", "check", timeout=scaled(60))
        self.assertNotIn("chmod go-w", p.stdout)


if __name__ == "__main__":
    unittest.main(verbosity=2)
