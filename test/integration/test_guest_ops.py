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
exist, the VM stopped in the middle of a copy).  A copy into the guest is
the daemon's (vm.copy_in): its progress messages on the control socket, and
its rollback when the CLI or the daemon is killed (-9) in the middle (the
mark in the instance directory, acted on at re-adoption), and a planted
mark that names no temporary file of a copy (ignored, removed)."""

import array
import glob
import hashlib
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

    def instance_dir(self, name="g"):
        return os.path.join(self.node.state, "instances", name)

    def marks(self, name="g"):
        return sorted(os.path.basename(m) for m in glob.glob(os.path.join(self.instance_dir(name), "copy-in.*")))

    def guest_tmp_files(self, directory="/root"):
        return [f for f in self.guest_files(directory) if ".qvisor-" in f]

    def restart_daemon(self, sig=signal.SIGTERM):
        if sig == signal.SIGKILL:
            self.node.proc.kill()
            self.node.proc.wait(timeout=scaled(10))
        else:
            self.assertEqual(self.node.stop_daemon(sig), 0, self.node.log()[-3000:])
        self.node.start_daemon()
        # re-adopted: the monitor and the agent connected again
        wait_for(lambda: self.exec_("true").returncode == 0, scaled(60), "the agent after re-adoption")

    def start_copy_in(self, size, name):
        src = os.path.join(self.local, name)
        with open(src, "wb") as f:
            f.write(os.urandom(size))
        cp = subprocess.Popen([QVISOR, "--config", self.node.config, "vm", "cp", src, f"g:/root/{name}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        # the mark is written before the temporary file is made; some data after it
        wait_for(lambda: self.marks() != [] or cp.poll() is not None, scaled(60), "the copy's mark")
        self.assertIsNone(cp.poll(), cp.communicate()[1] if cp.poll() is not None else "")
        time.sleep(2)
        self.assertIsNone(cp.poll(), "the copy ended before it could be interrupted")
        return src, cp

    def raw_copy(self, method, params, f):
        """A raw control-socket client: method with "progress": true and f's
        descriptor passed; the progress messages and the reply."""
        req = {"id": 7, "method": method, "progress": True, "fds": 1, "params": dict(params, name="g")}
        line = (json.dumps(req) + "\n").encode()
        progress, reply = [], None
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(self.node.socket)
            s.sendmsg([line], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [f.fileno()]))])
            s.settimeout(scaled(120))
            buf = b""
            while reply is None:
                chunk = s.recv(65536)
                self.assertTrue(chunk, "the daemon closed the connection")
                buf += chunk
                while b"\n" in buf and reply is None:
                    msg, buf = buf.split(b"\n", 1)
                    m = json.loads(msg)
                    self.assertEqual(m["id"], 7)
                    if "progress" in m:
                        progress.append(m["progress"])
                    else:
                        reply = m
        return progress, reply

    def test_cp_in_reports_progress_on_the_control_socket(self):
        # a raw client: vm.copy_in with "progress": true and the file passed
        size = 4 << 20
        src = os.path.join(self.local, "prog.bin")
        with open(src, "wb") as f:
            f.write(os.urandom(size))
        with open(src, "rb") as f:
            progress, reply = self.raw_copy("vm.copy_in", {"path": "/root/prog.bin", "force": True, "mode": 0o600,
                                                           "source_fd": 0, "source": src}, f)
        self.assertIn("result", reply, reply)
        self.assertEqual(reply["result"], {"target": "/root/prog.bin", "bytes": size})
        self.assertGreaterEqual(len(progress), 1)
        done = [p["bytes"] for p in progress]
        self.assertEqual(done, sorted(done))
        self.assertTrue(any(0 < b for b in done), progress)
        for p in progress:
            self.assertEqual(p["total"], size)
            self.assertAlmostEqual(p["percent"], p["bytes"] * 100 / size, places=3)
        self.assertEqual(self.exec_("stat", "-c", "%a %s", "/root/prog.bin").stdout, f"600 {size}\n")
        self.assertEqual(self.guest_tmp_files(), [])
        self.assertEqual(self.marks(), [])
        self.exec_("rm", "-f", "/root/prog.bin")
        os.unlink(src)

    def test_cp_out_reports_progress_on_the_control_socket(self):
        # vm.copy_out into a file this client made, passed writable
        size = 4 << 20
        self.assertEqual(self.exec_("dd", "if=/dev/urandom", "of=/root/progout.bin", "bs=1M", "count=4").returncode,
                         0)
        want = self.exec_("sha256sum", "/root/progout.bin").stdout.split()[0]
        dst = os.path.join(self.local, "progout.bin")
        with open(dst, "wb") as f:
            progress, reply = self.raw_copy("vm.copy_out", {"path": "/root/progout.bin", "target_fd": 0,
                                                            "target": dst}, f)
        self.assertIn("result", reply, reply)
        self.assertEqual(reply["result"], {"bytes": size})
        self.assertGreaterEqual(len(progress), 1)
        done = [p["bytes"] for p in progress]
        self.assertEqual(done, sorted(done))
        self.assertTrue(any(0 < b for b in done), progress)
        self.assertEqual(sha256_file(dst), want)
        # a descriptor not open for writing is refused before the guest is asked
        with open(dst, "rb") as f:
            progress, reply = self.raw_copy("vm.copy_out", {"path": "/root/progout.bin", "target_fd": 0}, f)
        self.assertEqual(reply["error"]["code"], "EINVAL", reply)
        self.exec_("rm", "-f", "/root/progout.bin")
        os.unlink(dst)

    def test_cp_in_cli_killed_midway_is_rolled_back(self):
        # kill -9 of the CLI: the daemon sees its client gone between two
        # chunks, removes the temporary file in the guest, then the mark
        src, cp = self.start_copy_in(32 << 20, "cli-killed.bin")
        self.assertEqual(len(self.guest_tmp_files()), 1)
        cp.kill()
        cp.communicate(timeout=scaled(10))
        wait_for(lambda: self.marks() == [], scaled(30), "the mark to go")
        self.assertEqual(self.guest_tmp_files(), [])
        self.assertNotIn("cli-killed.bin", self.guest_files("/root"))
        self.assertIn("removed the unfinished", self.node.log())
        os.unlink(src)

    def test_cp_in_interrupted_is_rolled_back(self):
        # Ctrl-C: the CLI closes its connection and says so (130); the daemon
        # sees its client gone and removes the temporary file, then the mark
        src, cp = self.start_copy_in(32 << 20, "interrupted.bin")
        cp.send_signal(signal.SIGINT)
        out, err = cp.communicate(timeout=scaled(10))
        self.assertEqual(cp.returncode, 130, err)
        self.assertIn("interrupted", err)
        wait_for(lambda: self.marks() == [], scaled(30), "the mark to go")
        self.assertEqual(self.guest_tmp_files(), [])
        self.assertNotIn("interrupted.bin", self.guest_files("/root"))
        os.unlink(src)

    # zy: after the exec tests (a re-adopted VM's agent port is not known
    # again, so "mute" would be told later and otherwise), before zz

    def test_zy_cp_copies_take_turns_at_the_clients_files(self):
        # the client's file is read on the daemon's worker pool: a file that
        # never answers (FUSE) must hold one worker, not all of them.  Each
        # read is made slow (test hook); two copies at once take turns, and
        # both arrive whole
        self.node.stop_daemon()
        self.node.start_daemon(extra_env={"QVISOR_TEST_COPY_IO_DELAY_MS": "1000"})
        wait_for(lambda: self.exec_("true").returncode == 0, scaled(60), "the agent after re-adoption")
        srcs, cps = [], []
        for i in range(2):
            src = os.path.join(self.local, f"turn{i}.bin")
            with open(src, "wb") as f:
                f.write(os.urandom(3 << 20))
            srcs.append(src)
            cps.append(subprocess.Popen([QVISOR, "--config", self.node.config, "vm", "cp", src, f"g:/root/turn{i}.bin"],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        stdin=subprocess.DEVNULL))
        for cp in cps:
            out, err = cp.communicate(timeout=scaled(120))
            self.assertEqual(cp.returncode, 0, err)
        for i, src in enumerate(srcs):
            self.assertEqual(self.exec_("sha256sum", f"/root/turn{i}.bin").stdout.split()[0], sha256_file(src))
            self.exec_("rm", "-f", f"/root/turn{i}.bin")
            os.unlink(src)
        self.assertIn("waits for another copy's file I/O (one at a time)", self.node.log())
        self.restart_daemon()

    def test_zy_cp_in_daemon_killed_midway_is_rolled_back_at_restart(self):
        # kill -9 of the daemon: the temporary file stays in the guest and
        # the mark in the instance directory; the next daemon re-adopts the
        # VM and removes both
        src, cp = self.start_copy_in(40 << 20, "daemon-killed.bin")
        [mark] = self.marks()
        with open(os.path.join(self.instance_dir(), mark)) as f:
            tmp = f.read().strip()
        self.assertTrue(tmp.startswith("/root/.daemon-killed.bin.qvisor-"), tmp)
        self.assertEqual(mark[len("copy-in."):], tmp[-16:])
        self.node.proc.kill()
        self.node.proc.wait(timeout=scaled(10))
        out, err = cp.communicate(timeout=scaled(30))
        self.assertNotEqual(cp.returncode, 0, err)
        self.node.start_daemon()
        wait_for(lambda: self.marks() == [], scaled(60), "the mark to go after re-adoption")
        wait_for(lambda: self.exec_("true").returncode == 0, scaled(60), "the agent after re-adoption")
        self.assertEqual(self.guest_tmp_files(), [])
        self.assertNotIn("daemon-killed.bin", self.guest_files("/root"))
        self.assertIn("left by a copy that did not end", self.node.log())
        os.unlink(src)

    def test_zy_cp_in_hostile_mark_is_ignored(self):
        # a mark naming something that is no temporary file of a copy: the
        # daemon removes nothing in the guest, only the mark
        self.assertEqual(self.exec_("touch", "/root/victim").returncode, 0)
        hostile = {"copy-in.00000000000000aa": "/etc/passwd\n", "copy-in.00000000000000bb": "/root/victim\n",
                   "copy-in.00000000000000cc": "/root/.x.qvisor-00000000000000cc/../victim\n",
                   "copy-in.00000000000000dd": "/root/.v.qvisor-00000000000000dd\0/root/victim\n"}
        for name, text in hostile.items():
            with open(os.path.join(self.instance_dir(), name), "w") as f:
                f.write(text)
        self.restart_daemon()
        wait_for(lambda: self.marks() == [], scaled(30), "the planted marks to go")
        self.assertIn("victim", self.guest_files("/root"))
        self.assertIn("does not name a temporary file of a copy", self.node.log())
        self.exec_("rm", "-f", "/root/victim")

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
