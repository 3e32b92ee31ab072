#!/usr/bin/env python3
"""Failures during `vm start` are answered when they happen, not at the
start deadline (60 s) or never: a QEMU whose monitor misbehaves (bad JSON,
an oversized greeting, closing after the greeting, a wrong id in the
handshake) fails the start at once with the monitor's error and QEMU's own
words, leaving nothing running; a QEMU binary whose -version fails fails the
waiting starts at once, and is not run again for each start (nor in a
loop) until it changes or CAPS_RETRY_MS has passed.

The QEMU is test/integration/fake-qemu-monitor.py, set as `qemu.binary`; it
runs the real QEMU for the daemon's capability probe."""

import json
import os
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from qvtest import Node, scaled  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FAKE = os.path.join(HERE, "fake-qemu-monitor.py")


class StartFailures(unittest.TestCase):
    def setUp(self):
        self.node = Node()
        self.mode_file = os.path.join(self.node.dir, "fake-mode")
        self.runs = os.path.join(self.node.dir, "fake-runs")
        # a copy of the fake per node: the back-off test changes its mtime
        self.fake = os.path.join(self.node.dir, "fake-qemu")
        with open(FAKE, "rb") as src, open(self.fake, "wb") as dst:
            dst.write(src.read())
        os.chmod(self.fake, 0o755)
        self.node.write_config(f"qemu:\n  binary: {self.fake}\n  accelerator: tcg\n"
                               "vm_defaults:\n  memory: 128M\n  disk: 1G\n")
        self.node.start_daemon(extra_env={"FAKE_QEMU_MODE_FILE": self.mode_file, "FAKE_QEMU_RUNS": self.runs})
        base = os.path.join(self.node.dir, "blank.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", base, "64M"], check=True)
        self.node.qvisor("image", "import", base, "blank", check=0)
        self.node.qvisor("vm", "create", "vm", "--image", "blank", "--no-seed", "--no-agent", check=0)

    def tearDown(self):
        try:
            self.assertEqual(self.node.stop_daemon(), 0, self.node.log()[-4000:])
            self.assertEqual(self.node.sanitizer_reports(), [], self.node.log()[-4000:])
        finally:
            self.node.cleanup()

    def set_mode(self, mode):
        with open(self.mode_file, "w") as f:
            f.write(mode + "\n")

    def version_runs(self):
        try:
            with open(self.runs) as f:
                return sum(1 for line in f if json.loads(line) == ["-version"])
        except FileNotFoundError:
            return 0

    def start(self):
        """vm start: (process, seconds).  The CLI's request timeout is 30 s
        (75 when it expires), half the start deadline."""
        t0 = time.monotonic()
        p = self.node.qvisor("vm", "start", "vm", timeout=scaled(90))
        return p, time.monotonic() - t0

    def assert_nothing_left(self):
        vm = self.node.qvisor_json("vm", "show", "vm")
        self.assertEqual(vm["state"], "stopped")
        self.assertIn("start failed", vm["last_exit"])
        self.assertEqual(self.node.qemu_pids(), [])
        d = os.path.join(self.node.run_dir, "vm", "vm")
        self.assertEqual(sorted(os.listdir(d)) if os.path.isdir(d) else [], [])

    def test_monitor_failures_fail_the_start_at_once(self):
        cases = {
            "bad-json": "invalid JSON",
            "big-greeting": "a message over 10485760 bytes",
            "close-after-greeting": "the peer closed the connection while negotiating capabilities",
            "wrong-id": "a reply to qmp_capabilities with a wrong id",
        }
        for mode, words in cases.items():
            with self.subTest(mode=mode):
                self.set_mode(mode)
                p, secs = self.start()
                sys.stderr.write(f"monitor {mode}: vm start answered in {secs:.2f} s\n")
                self.assertEqual(p.returncode, 1, p.stderr)
                self.assertIn("did not start", p.stderr)
                self.assertIn(f"its monitor failed: {words}", p.stderr)
                # QEMU's own words from qemu.log
                self.assertIn(f"fake-qemu: this monitor will misbehave ({mode})", p.stderr)
                self.assertLess(secs, scaled(15), "answered at the start deadline, not when the monitor failed")
                self.assert_nothing_left()

    def test_failed_version_probe_fails_starts_at_once_and_is_not_repeated(self):
        self.set_mode("version-fails")
        p, secs = self.start()
        sys.stderr.write(f"-version fails: vm start answered in {secs:.2f} s\n")
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn(f"'{self.fake} -version' exited with status 1", p.stderr)
        self.assertIn("cannot load libfoo.so.1", p.stderr)
        self.assertLess(secs, scaled(15))
        self.assertEqual(self.version_runs(), 1)
        # no probe loop behind the answer, and further starts get the cached
        # answer without running the binary again
        time.sleep(1)
        p, _ = self.start()
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("exited with status 1", p.stderr)
        self.assertEqual(self.version_runs(), 1)
        self.assertEqual(self.node.qemu_pids(), [])
        # a changed binary (fixed, reinstalled) is probed again at once
        self.set_mode("")
        st = os.stat(self.fake)
        os.utime(self.fake, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        j = json.loads(self.node.qvisor("--json", "vm", "start", "vm", timeout=scaled(90), check=0).stdout)
        self.assertEqual(j["state"], "running")
        self.assertEqual(self.version_runs(), 2)
        self.node.qvisor("vm", "stop", "--force", "vm", timeout=scaled(60), check=0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
