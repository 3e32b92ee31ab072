#!/usr/bin/env python3
"""The bash completion (contrib/gendoc.py's output, issue 20) against a real
daemon: nouns, verbs, options, VM and image names asked of the daemon the
command line names, and nothing (silently, at once) without a daemon.  Also
`vm list --names` and `image list --names`, which it asks.

Argument: the completion script (build/contrib/qvisor)."""

import os
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from qvtest import QVISOR, Node  # noqa: E402

COMPLETION = sys.argv.pop(1)


def complete(*words):
    """COMPREPLY for the command line `qvisor WORDS...` with the cursor on
    the last word (stdout lines), and what bash wrote to stderr."""
    # sourced inside a function, as bash-completion's loader does on the
    # first TAB: the tables must still be global
    script = ('load() { source "$1"; }; load "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _qvisor; '
              'printf "%s\\n" "${COMPREPLY[@]}"')
    p = subprocess.run(["bash", "-c", script, "bash", COMPLETION, QVISOR, *words],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return [w for w in p.stdout.split("\n") if w], p.stderr


class Completion(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.node = Node()
        cls.node.start_daemon()
        base = os.path.join(cls.node.dir, "base.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", base, "64M"], check=True)
        cls.node.qvisor("image", "import", base, "base", check=0)
        for name in ("web", "db"):
            cls.node.qvisor("vm", "create", name, "--image", "base", "--no-seed", check=0)

    @classmethod
    def tearDownClass(cls):
        cls.node.cleanup()

    def test_names_output(self):
        p = self.node.qvisor("vm", "list", "--names", check=0)
        self.assertEqual(sorted(p.stdout.split("\n")), ["", "db", "web"])
        p = self.node.qvisor("image", "list", "--names", check=0)
        self.assertEqual(p.stdout, "base\n")
        self.node.qvisor("--json", "vm", "list", "--names", check=64)
        self.node.qvisor("image", "list", "--names", "--json", check=64)

    def test_nouns_verbs_and_options(self):
        self.assertEqual(complete("v")[0], ["vm", "version"])
        self.assertEqual(complete("vm", "st")[0], ["start", "stop"])
        self.assertEqual(complete("vm", "stop", "--f")[0], ["--force"])
        self.assertIn("--names", complete("vm", "list", "--")[0])
        self.assertEqual(complete("--con")[0], ["--config"])
        # a global option's value is not taken for the noun
        self.assertEqual(complete("--request-timeout", "5s", "ima")[0], ["image"])
        self.assertEqual(complete("vm", "create", "x", "--firmware", "u")[0], ["uefi", "uefi-secure"])

    def test_vm_and_image_names_from_the_daemon(self):
        cfg = self.node.config
        self.assertEqual(sorted(complete("--config", cfg, "vm", "start", "")[0]), ["db", "web"])
        self.assertEqual(complete("-c", cfg, "vm", "stop", "w")[0], ["web"])
        self.assertEqual(complete("--socket", self.node.socket, "vm", "show", "d")[0], ["db"])
        self.assertEqual(complete("-c", cfg, "vm", "create", "new", "--image", "")[0], ["base"])
        self.assertEqual(complete("-c", cfg, "image", "rm", "b")[0], ["base"])
        # one NAME only: nothing more after it
        self.assertEqual(complete("-c", cfg, "vm", "start", "web", "")[0], [])

    def test_no_daemon_means_no_names_and_no_noise(self):
        other = Node()
        try:  # a node whose daemon is not running
            t0 = time.monotonic()
            names, err = complete("--config", other.config, "vm", "start", "")
            self.assertEqual((names, err), ([], ""))
            self.assertLess(time.monotonic() - t0, 2)
        finally:
            other.cleanup()


if __name__ == "__main__":
    unittest.main(verbosity=2)
