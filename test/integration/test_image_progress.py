#!/usr/bin/env python3
"""`qvisor image import` progress through the real daemon, CLI and qemu-img:
the protocol's progress messages, the bar on a terminal (a pseudo-terminal
here), no progress noise without one, and an import outliving
--request-timeout while progress flows.  To see several steps, a wrapper
makes qemu-img convert copy at a fixed rate (its own -r option): the copy is
still qemu-img's, it just takes a few seconds.  (qemu-img copies the first
quarter or so at once, then keeps to the rate, and ends with a second
"100%" after a pause: 64 MiB at 16M take about 3.8 s, at 32M about 1.9 s.)"""

import json
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from qvtest import QVISOR, Node, scaled  # noqa: E402

SOURCE_MIB = 64


class ImportProgress(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="qv-it-progress-")
        cls.source = os.path.join(cls.tmp, "big.raw")
        with open(cls.source, "wb") as f:  # data that does not compress or skip as zeros
            for _ in range(SOURCE_MIB):
                f.write(os.urandom(1 << 20))
        cls.slow = os.path.join(cls.tmp, "slow-qemu-img")
        with open(cls.slow, "w") as f:
            f.write('#!/bin/sh\n'
                    'if [ "$1" = convert ]; then shift; exec qemu-img convert -r "$CONVERT_RATE" "$@"; fi\n'
                    'exec qemu-img "$@"\n')
        os.chmod(cls.slow, 0o755)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def start(self, rate=None):
        """A daemon whose qemu-img converts at rate bytes/s (None: at full speed)."""
        extra = f"qemu:\n  img_binary: {self.slow}\n" if rate else ""
        self.node = Node(extra_config=extra)
        self.addCleanup(self.node.cleanup)
        self.node.start_daemon(extra_env={"CONVERT_RATE": rate} if rate else None)

    def assert_same_data(self, name):
        img = os.path.join(self.node.state, "images", name + ".qcow2")
        p = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", "-U", self.source, img],
                           capture_output=True, text=True)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)

    def run_on_tty(self, *args):
        """Runs qvisor with stderr on a pseudo-terminal; returns (exit, stdout, terminal bytes)."""
        master, slave = os.openpty()
        p = subprocess.Popen([QVISOR, "--config", self.node.config, *args], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=slave)
        os.close(slave)
        term = b""
        deadline = time.monotonic() + scaled(60)
        try:
            while time.monotonic() < deadline:
                r, _, _ = select.select([master], [], [], 0.5)
                if not r:
                    continue
                try:
                    data = os.read(master, 4096)
                except OSError:  # EIO: every writer of the terminal closed it
                    break
                if not data:
                    break
                term += data
            out = p.stdout.read().decode()
            return p.wait(timeout=scaled(10)), out, term.decode()
        finally:
            os.close(master)
            p.stdout.close()
            if p.poll() is None:
                p.kill()
                p.wait()

    def test_protocol_progress_then_reply(self):
        self.start(rate="32M")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.node.socket)
        s.settimeout(scaled(30))
        req = {"id": "imp-1", "method": "image.import", "progress": True, "fds": 1,
               "params": {"source_fd": 0, "source": self.source, "name": "big", "format": "raw"}}
        t0 = time.monotonic()
        src = os.open(self.source, os.O_RDONLY | os.O_CLOEXEC)
        self.addCleanup(os.close, src)
        socket.send_fds(s, [(json.dumps(req) + "\n").encode()], [src])
        f = s.makefile("r")
        progress = []
        while True:
            msg = json.loads(f.readline())
            self.assertEqual(msg["id"], "imp-1")
            if "progress" not in msg:
                break
            self.assertNotIn("result", msg)
            progress.append(msg["progress"]["percent"])
        took = time.monotonic() - t0
        self.assertEqual(msg["result"]["name"], "big", msg)
        # several steps, in order, within 0..100, no faster than ~10 a second
        self.assertGreaterEqual(len(set(progress)), 3, progress)
        self.assertEqual(progress, sorted(progress))
        self.assertTrue(all(0 <= p <= 100 for p in progress), progress)
        self.assertTrue(any(0 < p < 100 for p in progress), progress)
        self.assertLessEqual(len(progress), took * 10 + took + 3, (took, progress))
        # the connection goes on; a request without "progress" gets only its reply
        socket.send_fds(s, [b'{"id": 2, "method": "image.import", "fds": 1, "params": {"source_fd": 0, "name": "big-2", "format": "raw"}}\n'],
                        [src])
        msg = json.loads(f.readline())
        self.assertEqual(msg["id"], 2)
        self.assertEqual(msg["result"]["name"], "big-2")
        s.sendall(b'{"id": 3, "method": "image.import", "progress": 1, "params": {}}\n')
        msg = json.loads(f.readline())
        self.assertEqual(msg["error"]["code"], "EINVAL")
        s.close()

    def test_bar_on_a_terminal_and_longer_than_the_timeout(self):
        self.start(rate="16M")
        t0 = time.monotonic()
        # The import takes longer than --request-timeout: progress keeps it
        # alive, and the keepalive bridges qemu-img's pause before its last
        # "100%" (it reports nothing for about a second there).
        code, out, term = self.run_on_tty("--request-timeout", "2s", "image", "import", "--format", "raw", self.source)
        took = time.monotonic() - t0
        self.assertEqual(code, 0, term)
        self.assertGreater(took, 2, "the import should outlast the timeout")
        img = os.path.join(self.node.state, "images", "big.qcow2")
        self.assertEqual(out, f"imported big (64.0M virtual) as {img}\n")
        frames = re.findall(r"\rimporting big +(\d+)%  \[([# ]+)\]", term)
        pcts = [int(p) for p, _ in frames]
        self.assertEqual(pcts[0], 0, term)
        self.assertEqual(pcts[-1], 100, term)
        self.assertEqual(pcts, sorted(pcts), term)
        self.assertGreaterEqual(len([p for p in pcts if 0 < p < 100]), 2, term)
        for p, bar in frames:
            self.assertEqual(len(bar), 40)
            self.assertEqual(bar.count("#"), int(p) * 40 // 100, bar)
        # one line, redrawn in place, ended with a newline; nothing else on stderr
        self.assertTrue(term.endswith("]\r\n"), repr(term[-20:]))
        self.assertEqual(term.count("\n"), 1, repr(term))
        self.assertNotIn(self.source, term)
        self.assert_same_data("big")

    def test_failure_on_a_terminal_wipes_the_bar(self):
        self.start()
        self.node.qvisor("image", "import", "--format", "raw", self.source, "big", check=0)
        code, out, term = self.run_on_tty("image", "import", "--format", "raw", self.source, "big")
        self.assertEqual(code, 73)
        self.assertEqual(out, "")
        # drawn at 0%, wiped with spaces, then the error on a clean line
        self.assertRegex(term, r"^\rimporting big +0%  \[ +\]\r +\rqvisor: error: an image named 'big' exists")

    def test_no_progress_without_a_terminal_or_with_json_or_quiet(self):
        self.start()
        p = self.node.qvisor("image", "import", "--format", "raw", self.source, "big", check=0)
        self.assertEqual(p.stderr, f"importing {self.source} as image 'big'...\n")
        self.assertNotIn("%", p.stdout)
        self.assert_same_data("big")
        # --json and --quiet keep a terminal quiet too
        code, out, term = self.run_on_tty("--json", "image", "import", "--format", "raw", self.source, "big-json")
        self.assertEqual(code, 0, term)
        self.assertEqual(term, "")
        self.assertEqual(json.loads(out)["name"], "big-json")
        code, out, term = self.run_on_tty("-q", "image", "import", "--format", "raw", self.source, "big-quiet")
        self.assertEqual(code, 0, term)
        self.assertEqual(term, "")
        self.assertIn("imported big-quiet", out)


if __name__ == "__main__":
    unittest.main(verbosity=2)
