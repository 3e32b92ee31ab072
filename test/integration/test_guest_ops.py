#!/usr/bin/env python3
"""vm exec and vm cp (issue 19, docs/guest.md) through the real CLI and
daemon, real QEMU (TCG) and the tiny guest's real qemu-ga: exit codes (0, 3,
a signal as 128+N), stdout and stderr kept apart, stdin forwarded, a timeout
(124, the command killed in the guest), an output of several MB, one over
the agent's 16 MiB cap (cut, said, exit 1); a guest without an agent (69,
quickly) and a stopped VM (69); files of 200 MB both ways with equal sha256
(32 MB in the sanitizer build), a target that exists (73 without --force,
replaced with it), and failures that leave no partial file on either side
(a guest directory that does not exist, a local directory that does not
exist, the VM stopped in the middle of a copy)."""

import hashlib
import os
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "guest"))
from qvtest import MULT, QVISOR, Node, scaled, wait_for  # noqa: E402
import guestlib  # noqa: E402

# 200 MB in the normal build.  The sanitizer build (its timeout multiplier
# is 3) copies 32 MB: the same code paths, checked by ASan/UBSan, without
# another three minutes of TCG spent in the guest agent's JSON parser.
BIG = (200 if MULT == 1 else 32) << 20


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class GuestOps(unittest.TestCase):
    # the guest's root is its initramfs (a tmpfs of half its RAM): room for
    # the 200 MB file and its temporary copy
    CONFIG = "vm_defaults:\n  memory: 1G\n  disk: 1G\n  stop_timeout: 10s\n  kill_timeout: 5s\n"

    @classmethod
    def setUpClass(cls):
        cls.guest = guestlib.build_tiny_guest()
        cls.node = Node(cls.CONFIG)
        cls.node.start_daemon()
        base = os.path.join(cls.node.dir, "blank.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", base, "1G"], check=True)
        cls.node.qvisor("image", "import", base, "blank", check=0)
        # "g" has qemu-ga; "mute" has the agent's channel but no agent in it
        for name, opts in (("g", ["qv.agent=on"]), ("mute", [])):
            cls.node.qvisor("vm", "create", name, "--image", "blank", "--kernel", cls.guest.kernel, "--initrd",
                            cls.guest.initrd, "--append", guestlib.cmdline(opts), check=0)
        cls.node.qvisor("vm", "start", "g", timeout=scaled(90), check=0)
        cls.node.qvisor("vm", "start", "mute", timeout=scaled(90), check=0)
        cls.node.qvisor("vm", "wait", "g", "--for", "agent", "--timeout", f"{scaled(120)}s", timeout=scaled(130),
                        check=0)
        cls.local = os.path.join(cls.node.dir, "files")
        os.mkdir(cls.local)

    @classmethod
    def tearDownClass(cls):
        try:
            if cls.node.proc and cls.node.proc.poll() is None:
                for name in ("g", "mute"):
                    cls.node.qvisor("vm", "stop", name, "--force", timeout=scaled(60))
                rc = cls.node.stop_daemon()
                assert rc == 0, cls.node.log()[-4000:]
                assert cls.node.sanitizer_reports() == [], cls.node.log()[-4000:]
        finally:
            cls.node.cleanup()

    def qv(self, *args, **kw):
        return self.node.qvisor(*args, **kw)

    def exec_(self, *cmd, vm="g", stdin=None, opts=(), timeout=None, text=True):
        p = subprocess.run([QVISOR, "--config", self.node.config, "vm", "exec", vm, *opts, "--", *cmd],
                           input=stdin, capture_output=True, text=text, timeout=timeout or scaled(60),
                           stdin=None if stdin is not None else subprocess.DEVNULL)
        return p

    def guest_files(self, directory):
        p = self.exec_("ls", "-a", directory)
        self.assertEqual(p.returncode, 0, p.stderr)
        return sorted(p.stdout.split())

    # -- exec -------------------------------------------------------------------

    def test_exec_exit_codes_and_streams(self):
        p = self.exec_("echo", "hello", "world")
        self.assertEqual((p.returncode, p.stdout, p.stderr), (0, "hello world\n", ""))
        p = self.exec_("sh", "-c", "echo out; echo err >&2; exit 3")
        self.assertEqual((p.returncode, p.stdout, p.stderr), (3, "out\n", "err\n"))
        p = self.exec_("sh", "-c", "kill -TERM $$")
        self.assertEqual(p.returncode, 128 + 15, p.stderr)
        # --env: exactly these (and a PATH), no shell between
        p = self.exec_("env", opts=("--env", "GREETING=a b;c"))
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("GREETING=a b;c\n", p.stdout)
        self.assertIn("PATH=", p.stdout)
        # a program that does not exist: the agent refuses it (1), said so
        p = self.exec_("/no/such/program")
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("guest-exec", p.stderr)

    def test_exec_stdin(self):
        data = "line one\nline two\n" * 1000
        p = self.exec_("wc", "-c", stdin=data)
        self.assertEqual((p.returncode, p.stdout.strip()), (0, str(len(data))), p.stderr)
        p = self.exec_("cat", stdin="")
        self.assertEqual((p.returncode, p.stdout), (0, ""))

    def test_exec_timeout_kills_the_command(self):
        t0 = time.monotonic()
        p = self.exec_("sleep", "300", opts=("--timeout", "2s"))
        self.assertEqual(p.returncode, 124, p.stderr)
        self.assertIn("did not end within 2s", p.stderr)
        self.assertLess(time.monotonic() - t0, scaled(30))
        # killed in the guest: no sleep 300 left
        ps = self.exec_("ps")
        self.assertEqual(ps.returncode, 0, ps.stderr)
        self.assertNotIn("sleep 300", ps.stdout)

    def test_exec_large_output(self):
        # ~6.9 MB on stdout, a little on stderr, byte for byte
        p = self.exec_("seq", "1", "1000000", text=False)
        self.assertEqual(p.returncode, 0, p.stderr)
        want = "".join(f"{i}\n" for i in range(1, 1000001)).encode()
        self.assertEqual(len(p.stdout), len(want))
        self.assertEqual(p.stdout, want)
        self.assertEqual(p.stderr, b"")

    def test_exec_output_over_the_agents_cap(self):
        # qemu-ga keeps 16 MiB of stdout and discards the rest: what it kept
        # (a 22 MiB reply through the daemon, whole), said so, and exit 1
        # although the command exited 0
        p = self.exec_("head", "-c", "17000000", "/dev/zero", text=False)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertEqual(p.stdout, bytes(16 << 20))
        self.assertIn(b"kept only the first 16 MiB of the command's stdout", p.stderr)

    def test_exec_without_an_answering_agent(self):
        t0 = time.monotonic()
        p = self.exec_("true", vm="mute")
        self.assertEqual(p.returncode, 69, p.stderr)
        self.assertIn("agent answers", p.stderr)
        self.assertLess(time.monotonic() - t0, scaled(15))
        p = self.exec_("true", vm="nosuchvm")
        self.assertEqual(p.returncode, 66, p.stderr)

    # -- cp -----------------------------------------------------------------------

    def test_cp_both_ways_big(self):
        src = os.path.join(self.local, "big.bin")
        with open(src, "wb") as f:
            f.write(os.urandom(BIG))
        want = sha256_file(src)
        t0 = time.monotonic()
        p = self.qv("vm", "cp", src, "g:/root/big.bin", timeout=scaled(600))
        t_in = time.monotonic() - t0
        self.assertEqual(p.returncode, 0, p.stderr)
        p = self.exec_("sha256sum", "/root/big.bin", timeout=scaled(120))
        self.assertEqual(p.stdout.split()[0], want)
        self.assertEqual([f for f in self.guest_files("/root") if "qvisor" in f], [])
        back = os.path.join(self.local, "back.bin")
        t0 = time.monotonic()
        p = self.qv("vm", "cp", "g:/root/big.bin", back, timeout=scaled(600))
        t_out = time.monotonic() - t0
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(sha256_file(back), want)
        self.assertEqual(sorted(f for f in os.listdir(self.local) if "qvisor" in f), [])
        print(f"\n{BIG >> 20} MiB: into the guest {t_in:.1f} s, out {t_out:.1f} s", file=sys.stderr)
        self.exec_("rm", "-f", "/root/big.bin")
        os.unlink(back)
        os.unlink(src)

    def test_cp_refuses_to_overwrite_without_force(self):
        a = os.path.join(self.local, "a.txt")
        with open(a, "w") as f:
            f.write("first\n")
        os.chmod(a, 0o640)
        self.assertEqual(self.qv("vm", "cp", a, "g:/root/").returncode, 0)  # into a directory: its name
        self.assertEqual(self.exec_("cat", "/root/a.txt").stdout, "first\n")
        self.assertEqual(self.exec_("stat", "-c", "%a %U", "/root/a.txt").stdout, "640 root\n")  # its mode
        with open(a, "w") as f:
            f.write("second\n")
        p = self.qv("vm", "cp", a, "g:/root/a.txt")
        self.assertEqual(p.returncode, 73, p.stderr)
        self.assertIn("exists", p.stderr)
        self.assertEqual(self.exec_("cat", "/root/a.txt").stdout, "first\n")
        self.assertEqual(self.qv("vm", "cp", "--force", a, "g:/root/a.txt").returncode, 0)
        self.assertEqual(self.exec_("cat", "/root/a.txt").stdout, "second\n")
        # out: the same rule for the local side
        out = os.path.join(self.local, "out.txt")
        with open(out, "w") as f:
            f.write("local\n")
        p = self.qv("vm", "cp", "g:/root/a.txt", out)
        self.assertEqual(p.returncode, 73, p.stderr)
        with open(out) as f:
            self.assertEqual(f.read(), "local\n")
        self.assertEqual(self.qv("vm", "cp", "-f", "g:/root/a.txt", out).returncode, 0)
        with open(out) as f:
            self.assertEqual(f.read(), "second\n")
        # a guest file that does not exist: 66
        p = self.qv("vm", "cp", "g:/root/none", os.path.join(self.local, "none"))
        self.assertEqual(p.returncode, 66, p.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.local, "none")))

    def test_cp_failures_leave_no_partial_file(self):
        src = os.path.join(self.local, "c.bin")
        with open(src, "wb") as f:
            f.write(os.urandom(3 << 20))
        # a guest directory that does not exist
        p = self.qv("vm", "cp", src, "g:/no/such/dir/c.bin")
        self.assertNotEqual(p.returncode, 0)
        self.assertEqual([f for f in self.guest_files("/") if "qvisor" in f], [])
        # a local directory that does not exist: nothing made anywhere
        self.assertEqual(self.qv("vm", "cp", src, "g:/root/c.bin").returncode, 0)
        p = self.qv("vm", "cp", "g:/root/c.bin", os.path.join(self.local, "nodir", "c.bin"))
        self.assertNotEqual(p.returncode, 0)
        self.assertEqual([f for f in os.listdir(self.local) if "qvisor" in f], [])
        self.assertFalse(os.path.exists(os.path.join(self.local, "nodir")))
        os.unlink(src)

    def test_zz_cp_when_the_vm_stops_midway(self):
        # last (zz): stops the VM.  A copy out, and the VM stopped under it:
        # 69, and the local temp file is gone.
        self.exec_("dd", "if=/dev/urandom", "of=/root/mid.bin", "bs=1M", "count=100", timeout=scaled(120))
        target = os.path.join(self.local, "mid.bin")
        cp = subprocess.Popen([QVISOR, "--config", self.node.config, "vm", "cp", "g:/root/mid.bin", target],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        wait_for(lambda: any(f.startswith(".mid.bin.qvisor-") for f in os.listdir(self.local)), scaled(30),
                 "the copy's temp file")
        self.qv("vm", "stop", "g", "--force", timeout=scaled(60), check=0)
        out, err = cp.communicate(timeout=scaled(60))
        self.assertEqual(cp.returncode, 69, err)
        self.assertEqual([f for f in os.listdir(self.local) if "mid.bin" in f], [])
        # a stopped VM: refused by the state table, 69
        p = self.exec_("true")
        self.assertEqual(p.returncode, 69, p.stderr)
        self.assertIn("stopped", p.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
