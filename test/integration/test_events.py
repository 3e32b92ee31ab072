#!/usr/bin/env python3
"""The event stream and vm wait (issue 17, docs/events.md), with the real
daemon, CLI and QEMU (TCG).  The guests' disk is a boot sector that halts:
nothing boots, a start takes well under a second.

- A VM created, started, paused, resumed, stopped, started and killed
  produces exactly the expected events, in order, with increasing sequence
  numbers.
- A subscriber that reconnects with the last sequence number it saw gets
  exactly the events it missed (compared with one that stayed).
- A subscriber that never reads does not hold up a start of another VM;
  when it reads at last, it is told how many events it lost and the stream
  goes on without a gap.
- 1000 subscribers connect and leave: the daemon's fds and memory come back.
- vm wait: running, stopped, crashed, at once and on the event; its timeout
  (75); a VM removed while waited for (66).  (--for agent is in
  test_lifecycle.py, which boots a guest with an agent.)
- qvisor events prints the same events, --json and human."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "guest"))
import guestlib  # noqa: E402
from qvtest import Node, Subscriber, scaled, wait_for  # noqa: E402

CONFIG = ("vm_defaults:\n  cpus: 1\n  memory: 64M\n  disk: 16M\n  stop_timeout: 30s\n  kill_timeout: 5s\n"
          "qemu:\n  accelerator: tcg\n"
          "resources:\n  cpu_overcommit: 100\n")


def brief(ev):
    """What the sequence test compares of an event."""
    t = ev["type"]
    if t == "state":
        return ("state", ev["from"], ev["to"], ev["event"])
    if t in ("start", "stop"):
        return (t, ev["result"])
    if t == "qemu":
        return ("qemu", ev["event"])
    return (t,)


def done(p, timeout=None):
    """Waits for a Popen'd CLI: (exit code, stdout, stderr)."""
    out, err = p.communicate(timeout=timeout or scaled(30))
    return p.returncode, out, err


def daemon_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def settled_fds(pid):
    """The daemon's fd count once connections that are closing are closed:
    the same count twice, 300 ms apart."""
    deadline, prev = time.monotonic() + scaled(10), -1
    while time.monotonic() < deadline:
        n = daemon_fds(pid)
        if n == prev:
            return n
        prev = n
        time.sleep(0.3)
    raise AssertionError(f"the daemon's fd count does not settle (last {prev})")


def daemon_rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Events(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not guestlib.have_qemu():
            raise unittest.SkipTest("qemu-system-x86_64 not found")

    def setUp(self):
        self.node = Node(CONFIG)
        self.addCleanup(self.node.cleanup)
        self.addCleanup(self.no_sanitizer_reports)  # runs first
        self.node.start_daemon()
        base = os.path.join(self.node.dir, "halt.raw")
        guestlib.write_halt_disk(base)
        self.node.qvisor("image", "import", base, "halt", "--format", "raw", check=0)

    def no_sanitizer_reports(self):
        if self.node.proc and self.node.proc.poll() is None:
            self.node.stop_daemon()
        self.assertEqual(self.node.sanitizer_reports(), [], self.node.log()[-3000:])

    def qv(self, *args, want=0, timeout=None):
        return self.node.qvisor(*args, check=want, timeout=timeout or scaled(60))

    def create(self, name):
        self.qv("vm", "create", name, "--image", "halt", "--no-seed", "--restart", "never")

    def pid_of(self, name):
        return self.node.qvisor_json("vm", "show", name)["pid"]

    def test_sequence_of_a_life(self):
        sub = Subscriber(self.node.socket, vms=["life"])
        self.addCleanup(sub.close)
        other = Subscriber(self.node.socket, vms=["other"])  # sees nothing of "life"
        self.addCleanup(other.close)
        self.create("life")
        self.qv("vm", "start", "life")
        self.qv("vm", "pause", "life")
        self.qv("vm", "resume", "life")
        self.qv("vm", "stop", "--force", "life")
        self.qv("vm", "start", "life")
        os.kill(self.pid_of("life"), signal.SIGKILL)
        got = sub.events_until(lambda e: e["type"] == "state" and e["to"] == "crashed", scaled(60))
        want = [
            ("state", "creating", "stopped", "created"),
            ("state", "stopped", "starting", "start"),
            ("state", "starting", "running", "started"),
            ("start", "running"),
            ("state", "running", "paused", "paused"),
            ("state", "paused", "running", "resumed"),
            ("state", "running", "stopping", "stop"),
            ("qemu", "SHUTDOWN"),
            ("state", "stopping", "stopped", "exited"),
            ("stop", "forced"),
            ("state", "stopped", "starting", "start"),
            ("state", "starting", "running", "started"),
            ("start", "running"),
            ("state", "running", "crashed", "crashed"),
        ]
        self.assertEqual([brief(e) for e in got], want, json.dumps(got, indent=1))
        seqs = [e["seq"] for e in got]
        self.assertEqual(seqs, sorted(seqs))
        self.assertTrue(all(e["vm"] == "life" for e in got))
        self.assertIn("SIGKILL", got[-1]["reason"])  # why it crashed
        self.assertIsNone(other.frame(0.5))
        self.assertIsNone(sub.frame(0.5))  # nothing more: exactly that sequence

    def test_list_does_not_ask_an_agent_whose_port_is_closed(self):
        # The halting guest never opens the agent's port (no VSERPORT_CHANGE
        # open): nothing can answer there, and `vm list` must not wait out
        # its 1 s agent timeout asking.  The agent stays "unknown" (asked
        # and timed out it would read "no answer").
        self.create("quiet")
        self.qv("vm", "start", "quiet")
        for _ in range(3):
            vms = {v["name"]: v for v in self.node.qvisor_json("vm", "list")["vms"]}
            self.assertEqual(vms["quiet"]["agent"], "unknown")
        self.assertEqual(self.node.qvisor_json("vm", "show", "quiet")["agent"], "unknown")
        self.qv("vm", "stop", "--force", "quiet")

    def test_node_and_policy_events(self):
        sub = Subscriber(self.node.socket)
        self.addCleanup(sub.close)
        # a config reload
        self.qv("config", "reload")
        ev = sub.events_until(lambda e: e["type"] == "config", scaled(10))[-1]
        self.assertEqual(ev["result"], "reloaded")
        self.assertNotIn("vm", ev)
        # a create refused for room (200 vCPUs at most here)
        p = self.qv("vm", "create", "big", "--image", "halt", "--no-seed", "--cpus", "500", want=75)
        ev = sub.events_until(lambda e: e["type"] == "admission", scaled(10))[-1]
        self.assertEqual((ev["vm"], ev["op"]), ("big", "create"))
        self.assertIn(ev["error"], p.stderr)
        # the restart policy: a crash, its schedule, the start it makes
        self.qv("vm", "create", "phoenix", "--image", "halt", "--no-seed", "--restart", "always")
        self.qv("vm", "start", "phoenix")
        sub.events_until(lambda e: e["type"] == "start", scaled(30))
        os.kill(self.pid_of("phoenix"), signal.SIGKILL)
        got = sub.events_until(lambda e: e["type"] == "start", scaled(60))
        self.assertEqual([brief(e) for e in got], [("state", "running", "crashed", "crashed"), ("restart",),
                                                   ("state", "crashed", "starting", "start"),
                                                   ("state", "starting", "running", "started"),
                                                   ("start", "running")])
        self.assertEqual((got[1]["attempt"], got[1]["gave_up"]), (1, False))
        self.assertEqual(got[2]["reason"], "restart policy")
        self.assertTrue(got[-1]["by_policy"])
        self.qv("vm", "stop", "--force", "phoenix")

    def test_resume_after_last_seen(self):
        stay = Subscriber(self.node.socket)
        self.addCleanup(stay.close)
        first = Subscriber(self.node.socket)
        self.create("a")
        seen = first.events_until(lambda e: e["type"] == "state" and e["to"] == "stopped", scaled(30))
        first.close()
        # while it is away
        self.create("b")
        self.qv("vm", "start", "a")
        self.qv("vm", "stop", "--force", "a")
        later = Subscriber(self.node.socket, after=seen[-1]["seq"])
        self.addCleanup(later.close)
        missed = later.events_until(lambda e: e["type"] == "stop", scaled(30))
        everything = stay.events_until(lambda e: e["type"] == "stop", scaled(30))
        self.assertEqual(missed, [e for e in everything if e["seq"] > seen[-1]["seq"]])
        self.assertEqual(later.reply["oldest"], 1)

    def test_stuck_subscriber_does_not_hold_anything_up(self):
        stuck = Subscriber(self.node.socket, rcvbuf=4096)
        self.addCleanup(stuck.close)
        self.create("busy")
        self.create("other")
        self.qv("vm", "start", "busy")
        # more events than the ring keeps, and more bytes than the socket
        # holds: pause and resume on one connection, quickly
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.node.socket)
        f = s.makefile("rwb")
        for i in range(2500):
            for m in ("vm.pause", "vm.resume"):
                f.write(json.dumps({"id": i, "method": m, "params": {"name": "busy"}}).encode() + b"\n")
                f.flush()
                self.assertNotIn(b'"error"', f.readline())
        s.close()
        # the daemon answers others as before: a start of another VM
        self.qv("vm", "start", "other")
        self.assertEqual(self.node.qvisor_json("vm", "show", "other")["state"], "running")
        # the stuck one reads at last: what fit, then how much it lost, then
        # the stream goes on from the oldest event kept, without a gap
        notices, last = [], None
        while True:
            fr = stuck.frame(2.0)
            if fr is None:
                break
            if fr[0] == "N":
                notices.append(fr[1])
                last = fr[1]["next"] - 1
            else:
                if last is not None:
                    self.assertEqual(fr[1]["seq"], last + 1)
                last = fr[1]["seq"]
        self.assertEqual(len(notices), 1, notices)
        self.assertGreater(notices[0]["lost"], 0)

    def test_thousand_subscribers_leave_no_trace(self):
        pid = self.node.proc.pid
        def batch(name):
            subs = [Subscriber(self.node.socket) for _ in range(100)]
            self.create(name)  # an event for all of them to carry
            for s in subs:
                self.assertEqual(s.events_until(lambda e: e["type"] == "state", scaled(30))[0]["vm"], name)
                s.close()

        batch("warm")  # the allocator has seen a batch: what follows is compared with that
        fds0, rss0 = settled_fds(pid), daemon_rss_kb(pid)
        for i in range(10):
            batch(f"x{i}")
        wait_for(lambda: daemon_fds(pid) <= fds0, scaled(10), f"fds back to {fds0} (now {daemon_fds(pid)})")
        if os.environ.get("ASAN_OPTIONS"):
            # ASan keeps freed memory in quarantine: RSS says nothing; its leak
            # check at the daemon's exit does
            self.assertEqual(self.node.stop_daemon(), 0, self.node.log()[-3000:])
            self.assertEqual(self.node.sanitizer_reports(), [], self.node.log()[-3000:])
        else:
            # coarse (the allocator keeps what it likes); the fds and the
            # sanitizer build's leak check are the precise ones
            self.assertLess(daemon_rss_kb(pid) - rss0, 1024, "RSS grew by more than 1 MiB")

    def test_vm_wait(self):
        self.create("w")
        # a condition that holds already is answered at once
        self.assertEqual(self.qv("vm", "wait", "w", "--for", "stopped").returncode, 0)
        # timeout: 75, and it says what the VM is
        p = self.qv("vm", "wait", "w", "--timeout", "1s", want=75)
        self.assertIn("not running after", p.stderr)
        self.assertIn("stopped", p.stderr)
        # answered by the event: running
        waiter = subprocess.Popen([*self.node_cmd(), "vm", "wait", "w", "--for", "running"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        time.sleep(0.3)
        self.assertIsNone(waiter.poll())
        self.qv("vm", "start", "w")
        code, out, err = done(waiter)
        self.assertEqual(code, 0, err)
        self.assertIn("VM w is running", out)
        # crashed (stopped would be answered by it too)
        crashed = subprocess.Popen([*self.node_cmd(), "--json", "vm", "wait", "w", "--for", "crashed"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        stopped = subprocess.Popen([*self.node_cmd(), "vm", "wait", "w", "--for", "stopped"], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        time.sleep(0.3)
        os.kill(self.pid_of("w"), signal.SIGKILL)
        code, out, err = done(crashed)
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["state"], "crashed")
        code, out, err = done(stopped)
        self.assertEqual(code, 0, err)
        # a VM removed while waited for
        gone = subprocess.Popen([*self.node_cmd(), "vm", "wait", "w", "--for", "running"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        time.sleep(0.3)
        self.qv("vm", "rm", "w")
        code, out, err = done(gone)
        self.assertEqual(code, 66, err)
        self.assertRegex(err, "was removed|no VM named")  # removed while it waited, or before it asked
        # bad input
        self.qv("vm", "wait", "w", "--for", "sleeping", want=64)
        self.qv("vm", "wait", "nosuch", want=66)

    def node_cmd(self):
        return [os.environ.get("QVISOR_BIN", "qvisor"), "--config", self.node.config]

    def test_cli(self):
        self.create("c")
        p = subprocess.Popen([*self.node_cmd(), "events", "--vm", "c", "--json", "--after", "0"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        h = subprocess.Popen([*self.node_cmd(), "events", "--after", "0"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)
        self.qv("vm", "start", "c")
        self.qv("vm", "stop", "--force", "c")
        time.sleep(1.0)
        # the daemon stops: both end with 75 and say how to resume
        self.assertEqual(self.node.stop_daemon(), 0)
        code, out, err = done(p)
        self.assertEqual(code, 75, err)
        hcode, human, herr = done(h)
        self.assertEqual(hcode, 75, herr)
        lines = [json.loads(line) for line in out.splitlines()]
        self.assertEqual([brief(e) for e in lines][:5], [("state", "creating", "stopped", "created"),
                                                         ("state", "stopped", "starting", "start"),
                                                         ("state", "starting", "running", "started"),
                                                         ("start", "running"),
                                                         ("state", "running", "stopping", "stop")])
        self.assertIn("--after", err)
        self.assertIn("c          state    creating -> stopped (created)", human)  # --after 0: the kept ones too
        self.assertIn("stopped -> starting (start)", human)
        self.assertRegex(human, r"stop +result=forced how=")
        self.qv("events", "--vm", "Bad/Name", want=64)


if __name__ == "__main__":
    unittest.main(verbosity=2)
