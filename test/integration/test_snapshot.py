#!/usr/bin/env python3
"""`qvisor vm snapshot` (docs/snapshots.md) through the real CLI and daemon,
real qemu-img and QEMU (TCG) with the tiny test guest: its marker disk
(qv.disk=marker) counts boots on the VM's own disk, so a revert shows as a
boot counter that went back; its agent (qv.agent=on) freezes and thaws
the guest's filesystems, which the test asks the agent itself once the
daemon is down (guest-fsfreeze-status).

Stopped VM: qemu-img makes, lists and deletes (qemu-img snapshot -l agrees),
the VM is busy meanwhile (a start is 75), names are checked, a duplicate is
73, a missing one 66, records are reconciled with the image (a snapshot
made behind qvisor's back is "frozen: unknown"), a daemon killed after
qemu-img leaves a consistent VM.  Running VM: a snapshot through QMP with
the guest frozen and thawed, revert refused while running (73) and working
once stopped (the boot counter goes back), rm through QMP, and a daemon
killed with the guest frozen (after the freeze, and after the snapshot
before the thaw): the guest stays frozen until the next daemon re-adopts
the VM and thaws it."""

import json
import os
import signal
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "guest"))
from qvtest import QVISOR, Node, scaled, wait_for  # noqa: E402
import guestlib  # noqa: E402

GUEST = None
CONFIG = "vm_defaults:\n  memory: 256M\n  disk: 1G\n  stop_timeout: 30s\n  kill_timeout: 5s\nlog_level: debug\n"


def setUpModule():
    global GUEST
    GUEST = guestlib.build_tiny_guest()


def img_snapshots(disk):
    """The names `qemu-img snapshot -l` lists (-U: QEMU may hold the image)."""
    p = subprocess.run(["qemu-img", "info", "-U", "--output=json", disk], capture_output=True, text=True,
                       check=True)
    return [s["name"] for s in json.loads(p.stdout).get("snapshots", [])]


class Base(unittest.TestCase):
    def make_node(self, extra=""):
        self.node = Node(CONFIG + extra)
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
            for pid in self.node.qemu_pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.node.cleanup()

    def disk(self, name):
        return os.path.join(self.node.state, "instances", name, "disk.qcow2")

    def snaps(self, name):
        return self.node.qvisor_json("vm", "snapshot", name, "list")["snapshots"]

    def snap(self, name, *args, check=0, **kw):
        return self.node.qvisor("vm", "snapshot", name, *args, check=check, timeout=scaled(120), **kw)

    def restart_daemon(self, extra_env=None):
        if self.node.proc and self.node.proc.poll() is None:
            self.assertEqual(self.node.stop_daemon(), 0)
        self.node.start_daemon(extra_env=extra_env)

    def monitor_connected(self, name):
        """Once a re-adopted VM's monitor is connected again (or it has no QEMU)."""
        def ok():
            v = self.node.qvisor_json("vm", "show", name)
            return v["state"] not in ("running", "paused") or v.get("monitor") == "connected"
        wait_for(ok, scaled(20), "the monitor to reconnect")

    def crash_during(self, point, *snap_args):
        """Restarts the daemon with the crash point armed and runs the
        snapshot request; the daemon dies with SIGKILL at the point."""
        self.restart_daemon({"QVISOR_TEST_CRASH_AT": point})
        self.monitor_connected(snap_args[0])
        p = self.node.qvisor("vm", "snapshot", *snap_args, timeout=scaled(120))
        self.assertNotEqual(p.returncode, 0, p.stdout)
        self.assertIn("daemon", p.stderr)
        self.assertEqual(self.node.proc.wait(timeout=scaled(30)), -signal.SIGKILL, self.node.log()[-3000:])
        self.assertIn(f"test hook: crashing at {point}", self.node.log())


class Stopped(Base):
    """A VM that never runs: everything through qemu-img."""

    def setUp(self):
        self.make_node()
        self.node.qvisor("vm", "create", "off", "--image", "blank", "--no-seed", check=0)

    def test_create_list_rm_and_names(self):
        self.snap("off", "create", "before-upgrade")
        self.assertEqual(img_snapshots(self.disk("off")), ["before-upgrade"])
        [s] = self.snaps("off")
        self.assertEqual((s["name"], s["frozen"], s["state"], s["disk_size"], s["vm_state_size"]),
                         ("before-upgrade", False, "stopped", 1 << 30, 0))
        self.assertLessEqual(abs(s["time"] - time.time()), 60)
        # the name is taken (qemu-img itself would make a second one)
        p = self.snap("off", "create", "before-upgrade", check=73)
        self.assertIn("already", p.stderr)
        self.assertEqual(img_snapshots(self.disk("off")), ["before-upgrade"])
        # names become qemu-img arguments
        for bad in ("-a", "12", "a/b", "a b", "x" * 64, "", ".hidden", "caf\u00e9", "a\nb"):
            p = self.snap("off", "create", "--", bad, check=65)
            self.assertIn("not a valid snapshot name", p.stderr)
        self.snap("off", "create", "x" * 63)
        self.snap("off", "rm", "nosuch", check=66)
        self.snap("off", "revert", "nosuch", check=66)
        self.node.qvisor("vm", "snapshot", "off", "explode", "s", check=64)
        self.node.qvisor("vm", "snapshot", "off", "create", check=64)
        self.node.qvisor("vm", "snapshot", "nosuchvm", "list", check=66)
        self.snap("off", "rm", "x" * 63)
        self.snap("off", "rm", "before-upgrade")
        self.assertEqual(img_snapshots(self.disk("off")), [])
        self.assertEqual(self.snaps("off"), [])

    def test_revert_after_a_resize_keeps_the_size(self):
        # qemu-img snapshot -a gives the disk the size it had at the
        # snapshot; the VM's spec says the grown size, so the disk is grown
        # back (before: 1 GiB on disk, 3 GiB in vm show)
        self.snap("off", "create", "small")
        self.node.qvisor("vm", "resize", "off", "--disk", "3G", check=0)
        self.snap("off", "revert", "small")
        info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", self.disk("off")],
                                         capture_output=True, text=True, check=True).stdout)
        self.assertEqual(info["virtual-size"], 3 << 30)
        self.assertEqual(self.node.qvisor_json("vm", "show", "off")["spec"]["disk"], "3G")
        self.assertEqual(img_snapshots(self.disk("off")), ["small"])

    def test_records_reconciled_with_the_image(self):
        self.snap("off", "create", "ours")
        disk = self.disk("off")
        # one made behind qvisor's back: listed, frozen unknown
        subprocess.run(["qemu-img", "snapshot", "-c", "theirs", disk], check=True)
        by = {s["name"]: s for s in self.snaps("off")}
        self.assertEqual(set(by), {"ours", "theirs"})
        self.assertIs(by["ours"]["frozen"], False)
        self.assertIsNone(by["theirs"]["frozen"])
        self.assertIsNone(by["theirs"]["disk_size"])
        p = self.node.qvisor("vm", "snapshot", "off", "list", check=0)
        self.assertRegex(p.stdout, r"theirs .* unknown")
        # ours deleted behind its back, then made again by someone else:
        # the old record must not be taken for it
        subprocess.run(["qemu-img", "snapshot", "-d", "ours", disk], check=True)
        self.assertEqual([s["name"] for s in self.snaps("off")], ["theirs"])
        time.sleep(3)
        subprocess.run(["qemu-img", "snapshot", "-c", "ours", disk], check=True)
        by = {s["name"]: s for s in self.snaps("off")}
        self.assertIsNone(by["ours"]["frozen"])
        # the next change prunes records of snapshots that are gone
        self.snap("off", "create", "third")
        with open(os.path.join(self.node.state, "instances", "off", "snapshots.json")) as f:
            names = [r["name"] for r in json.load(f)["snapshots"]]
        self.assertEqual(names, ["third"])

    def test_busy_while_qemu_img_runs(self):
        # qemu-img behind a wrapper that dawdles over `snapshot`, so that
        # the VM is seen busy meanwhile
        slow = os.path.join(self.node.dir, "slow-qemu-img")
        with open(slow, "w") as f:
            f.write('#!/bin/sh\n[ "$1" = snapshot ] && sleep 3\nexec qemu-img "$@"\n')
        os.chmod(slow, 0o755)
        self.node.write_config(CONFIG + f"qemu:\n  img_binary: {slow}\n")
        self.node.qvisor("config", "reload", check=0)
        bg = subprocess.Popen([QVISOR, "--config", self.node.config, "vm", "snapshot", "off", "create", "s1"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: "snapshot s1: create (qemu-img)" in self.node.log(), scaled(10), "the snapshot to begin")
        p = self.node.qvisor("vm", "start", "off", check=75)
        self.assertIn("snapshot 's1' is being taken", p.stderr)
        self.node.qvisor("vm", "rm", "off", check=75)
        self.snap("off", "create", "s2", check=75)
        self.snap("off", "list", check=75)
        self.assertEqual(bg.wait(timeout=scaled(60)), 0, bg.stderr.read())
        bg.stdout.close()
        bg.stderr.close()
        self.assertEqual(img_snapshots(self.disk("off")), ["s1"])
        self.assertEqual(self.node.qvisor_json("vm", "show", "off")["state"], "stopped")

    def test_daemon_killed_after_qemu_img(self):
        self.crash_during("snapshot-after-qemu-img", "off", "create", "s1")
        self.node.start_daemon()
        # made, but never recorded: listed, frozen unknown; the VM is as it was
        [s] = self.snaps("off")
        self.assertEqual(s["name"], "s1")
        self.assertIsNone(s["frozen"])
        self.assertEqual(self.node.qvisor_json("vm", "show", "off")["state"], "stopped")
        self.snap("off", "create", "s2")
        self.snap("off", "rm", "s1")
        self.assertEqual(img_snapshots(self.disk("off")), ["s2"])


class Running(Base):
    """The tiny guest with its marker disk and agent."""

    def setUp(self):
        if not GUEST.has_agent:
            self.skipTest("the tiny guest was built without qemu-ga")
        self.make_node()
        self.node.qvisor("vm", "create", "live", "--image", "blank", "--kernel", GUEST.kernel, "--initrd",
                         GUEST.initrd, "--append", guestlib.cmdline(["qv.disk=marker", "qv.agent=on"]), check=0)
        self.boots = 0

    def serial(self):
        return os.path.join(self.node.state, "instances", "live", "serial.log")

    def boot(self):
        """Starts the VM and returns its boot counter, once its agent answers."""
        self.node.qvisor("vm", "start", "live", timeout=scaled(90), check=0)
        m = guestlib.wait_marker_in_file(self.serial(), r"^bootcount (\d+)$", scaled(90))
        self.assertIsNotNone(m, "no bootcount marker")
        self.node.qvisor("vm", "wait", "live", "--for", "agent", "--timeout", str(scaled(60)), check=0,
                         timeout=scaled(70))
        return int(m.group(1))

    def stop(self):
        p = self.node.qvisor("vm", "stop", "live", timeout=scaled(60))
        self.assertIn(p.returncode, (0, 3), p.stderr)

    def agent_status(self):
        """guest-fsfreeze-status asked by the test itself: the daemon is down
        (the agent's socket takes one client)."""
        path = os.path.join(self.node.run_dir, "vm", "live", "qga.sock")
        a = guestlib.AgentClient(path, timeout=scaled(10))
        try:
            a.sync(timeout=scaled(20))
            return a.command("guest-fsfreeze-status", timeout=scaled(10))
        finally:
            a.close()

    def test_live_freeze_revert_rm_and_crashes(self):
        self.assertEqual(self.boot(), 1)
        # revert needs a stopped VM
        p = self.snap("live", "revert", "nosuch", check=73)
        self.assertIn("reverted only while the VM is stopped", p.stderr)
        # through QMP, frozen and thawed by the agent
        res = json.loads(self.snap("live", "--json", "create", "s1").stdout)
        self.assertEqual((res["how"], res["frozen"], res["thawed"], res["state"]), ("qmp", True, True, "running"),
                         res)
        self.assertRegex(res["agent"], r"^froze [1-9]\d* filesystems?$")
        self.assertIn("s1", img_snapshots(self.disk("live")))
        [s] = self.snaps("live")
        self.assertEqual((s["name"], s["frozen"], s["state"], s["disk_size"]), ("s1", True, "running", 1 << 30))
        self.snap("live", "create", "s1", check=73)
        p = self.node.qvisor("vm", "snapshot", "live", "list", check=0)
        self.assertRegex(p.stdout, r"s1 .* yes +running")
        # the freeze really happened: the daemon's agent exchange
        self.assertIn("froze", self.node.log())
        # the agent's own word that it is thawed
        self.restart_daemon_down()
        self.assertEqual(self.agent_status(), "thawed")
        self.daemon_up()

        # the disk changes; the revert brings s1's back
        self.stop()
        self.assertEqual(self.boot(), 2)
        self.stop()
        self.snap("live", "revert", "s1")
        self.assertEqual(self.boot(), 2)  # counted on s1's disk (1) again, not 3
        self.assertEqual(img_snapshots(self.disk("live")), ["s1"])

        # rm through QMP while it runs
        self.snap("live", "rm", "s1")
        self.assertEqual(img_snapshots(self.disk("live")), [])
        self.snap("live", "rm", "s1", check=66)

        # killed with the guest frozen, before the snapshot: it stays frozen
        # until the next daemon re-adopts it and thaws it
        self.crash_during("snapshot-after-freeze", "live", "create", "s2")
        self.assertEqual(self.agent_status(), "frozen")
        self.assertTrue(os.path.exists(os.path.join(self.node.run_dir, "vm", "live", "fsfreeze")))
        self.node.start_daemon()
        wait_for(lambda: "its guest's filesystems are thawed" in self.node.log(), scaled(60), "the thaw")
        self.assertFalse(os.path.exists(os.path.join(self.node.run_dir, "vm", "live", "fsfreeze")))
        self.assertEqual(self.snaps("live"), [])
        self.assertEqual(self.node.qvisor_json("vm", "show", "live")["state"], "running")
        self.restart_daemon_down()
        self.assertEqual(self.agent_status(), "thawed")

        # killed after the snapshot, before the thaw: made, never recorded
        self.crash_during("snapshot-before-thaw", "live", "create", "s3")
        self.assertEqual(self.agent_status(), "frozen")
        self.node.start_daemon()
        wait_for(lambda: self.node.log().count("its guest's filesystems are thawed") >= 2, scaled(60), "the thaw")
        [s] = self.snaps("live")
        self.assertEqual(s["name"], "s3")
        self.assertIsNone(s["frozen"])
        self.restart_daemon_down()
        self.assertEqual(self.agent_status(), "thawed")
        self.daemon_up()
        # and the VM is whole: a snapshot and a stop work as ever
        self.assertTrue(json.loads(self.snap("live", "--json", "create", "s4").stdout)["frozen"])
        self.stop()

    def restart_daemon_down(self):
        self.assertEqual(self.node.stop_daemon(), 0, self.node.log()[-3000:])

    def daemon_up(self):
        self.node.start_daemon()
        self.monitor_connected("live")

    def test_without_an_answering_agent(self):
        # a paused guest: no agent can answer; QEMU is all it takes (no boot)
        self.node.qvisor("vm", "start", "live", timeout=scaled(90), check=0)
        self.node.qvisor("vm", "pause", "live", check=0)
        res = json.loads(self.snap("live", "--json", "create", "paused").stdout)
        self.assertEqual((res["frozen"], res["state"], res["how"]), (False, "paused", "qmp"), res)
        self.assertIn("paused", res["agent"])
        p = self.snap("live", "create", "paused2")
        self.assertIn("not frozen", p.stdout)
        # a VM without an agent: crash-consistent, and the output says so
        self.node.qvisor("vm", "create", "na", "--image", "blank", "--kernel", GUEST.kernel, "--initrd",
                         GUEST.initrd, "--append", guestlib.cmdline([]), "--no-agent", check=0)
        self.node.qvisor("vm", "start", "na", timeout=scaled(90), check=0)
        p = self.snap("na", "create", "s")
        self.assertRegex(p.stdout, r"not frozen.*crash-consistent")
        [s] = self.snaps("na")
        self.assertEqual((s["frozen"], s["state"]), (False, "running"))
        by = {s["name"]: s for s in self.snaps("live")}
        self.assertEqual((by["paused"]["frozen"], by["paused"]["state"]), (False, "paused"))
        for vm in ("live", "na"):
            self.node.qvisor("vm", "stop", vm, "--force", timeout=scaled(60), check=0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
