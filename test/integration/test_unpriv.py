#!/usr/bin/env python3
"""QEMU runs unprivileged by default (issue 15): with the node config's
defaults and a root daemon, a tiny guest's QEMU runs as qvisor-qemu (made by
scripts/setup) under its seccomp sandbox, holds no file of the VM it opened
itself (disks, seed, serial log, kernel: every one an fd the daemon opened),
and what the VM has on disk and in RUN_DIR has the modes and owners the
README promises.  `qemu.run_as: root` is the explicit way back to a root
QEMU, and a user the node lacks is a config error (exit 78)."""

import ctypes
import grp
import json
import os
import pwd
import stat
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "guest"))
from qvtest import Node, scaled  # noqa: E402
import guestlib  # noqa: E402

GUEST = None
QEMU_USER = "qvisor-qemu"
SYS_KCMP = 312  # x86_64
KCMP_FILE = 0


def setUpModule():
    global GUEST
    if os.geteuid() != 0:
        raise unittest.SkipTest("needs root (the daemon hands QEMU to another user)")
    try:
        pwd.getpwnam(QEMU_USER)
    except KeyError:
        raise unittest.SkipTest(f"no user {QEMU_USER}: run scripts/setup")
    GUEST = guestlib.build_tiny_guest()


def status(pid):
    """/proc/PID/status as {field: value}."""
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def cmdline(pid):
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [a.decode() for a in f.read().split(b"\0")[:-1]]


def same_file_description(pid, fd1, fd2):
    """kcmp(KCMP_FILE): the two fds of pid share one open file description,
    that is one open() (a dup, an inherited fd), not two opens of a name."""
    libc = ctypes.CDLL(None, use_errno=True)
    r = libc.syscall(SYS_KCMP, pid, pid, KCMP_FILE, fd1, fd2)
    if r < 0:
        raise OSError(ctypes.get_errno(), "kcmp")
    return r == 0


class Unprivileged(unittest.TestCase):
    CONFIG = "vm_defaults:\n  memory: 256M\n  disk: 1G\n  stop_timeout: 30s\n  kill_timeout: 5s\n"

    def setUp(self):
        self.node = None

    def tearDown(self):
        if self.node:
            self.node.cleanup()

    def boot(self, extra=""):
        self.node = Node(self.CONFIG + extra)
        self.node.start_daemon()
        base = os.path.join(self.node.dir, "blank.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", base, "1G"], check=True)
        self.node.qvisor("image", "import", base, "blank", check=0)
        self.node.qvisor("vm", "create", "u1", "--image", "blank", "--kernel", GUEST.kernel, "--initrd",
                         GUEST.initrd, "--append", guestlib.cmdline(["qv.disk=marker", "qv.seed=print",
                                                                      "qv.agent=on"]), check=0)
        j = self.node.qvisor_json("vm", "start", "u1", timeout=scaled(60))
        self.wait_marker(r"^ready$")
        return j["pid"]

    def instance(self):
        return os.path.join(self.node.state, "instances", "u1")

    def wait_marker(self, pattern, timeout=60):
        m = guestlib.wait_marker_in_file(os.path.join(self.instance(), "serial.log"), pattern, scaled(timeout))
        self.assertIsNotNone(m, f"no marker {pattern!r} within {scaled(timeout):.0f} s")
        return m

    def stop_cleanly(self, pid):
        p = self.node.qvisor("--json", "vm", "stop", "u1", timeout=scaled(120), check=0)
        self.assertEqual(json.loads(p.stdout)["result"], "clean")
        self.assertFalse(os.path.exists(f"/proc/{pid}"))
        self.assertEqual(self.node.stop_daemon(), 0, self.node.log()[-4000:])

    def test_default_qemu_is_unprivileged_sandboxed_and_opens_nothing(self):
        pid = self.boot()
        pw = pwd.getpwnam(QEMU_USER)
        st = status(pid)
        # every uid and gid of the process (real, effective, saved, fs) is the
        # QEMU user's, no supplementary group is root's, no capability is left
        self.assertEqual(st["Uid"].split(), [str(pw.pw_uid)] * 4, st["Uid"])
        self.assertEqual(st["Gid"].split(), [str(pw.pw_gid)] * 4, st["Gid"])
        self.assertNotIn("0", st["Groups"].split())
        self.assertEqual(int(st["CapEff"], 16), 0)
        self.assertEqual(int(st["CapPrm"], 16), 0)
        # seccomp filter mode (2): -sandbox on, with the flags QEMU 7.2 takes
        # together with -runas
        self.assertEqual(st["Seccomp"], "2")
        argv = cmdline(pid)
        self.assertEqual(argv[argv.index("-sandbox") + 1], "on,obsolete=deny,spawn=deny,resourcecontrol=deny")
        self.assertEqual(argv[argv.index("-runas") + 1], QEMU_USER)

        # QEMU was told no name of the VM's files: the disk, the base image,
        # the seed and the serial log are fdsets, kernel and initrd its own fds
        for a in argv:
            self.assertNotIn(self.node.state, a)
            self.assertNotIn(GUEST.kernel, a)
        opaque = [dict(kv.split("=", 1) for kv in argv[i + 1].split(","))["opaque"]
                  for i, a in enumerate(argv[:-1]) if a == "-add-fd"]
        self.assertEqual(sorted(opaque), ["base0", "disk0", "seed0", "serial0"])
        links = {}
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                links[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                pass
        # QEMU keeps a dup of each -add-fd in the fdset (closing the number it
        # got) and the block layer and chardev dup that again: every fd it has
        # on one of the files shares the one open file description the daemon
        # made; an open of QEMU's own would be a second one
        files = (os.path.join(self.instance(), "disk.qcow2"),
                 os.path.join(self.node.state, "images", "blank.qcow2"),
                 os.path.join(self.instance(), "seed.iso"),
                 os.path.join(self.instance(), "serial.log"),
                 os.path.join(self.instance(), "qemu.log"))  # its stdout and stderr
        # plus the kernel and initrd create copied into the instance directory,
        # given as fds too (-kernel /proc/self/fd/N: QEMU reads them through
        # its own open of that name at startup, then has the fd it was given)
        boot = (os.path.join(self.instance(), "kernel"), os.path.join(self.instance(), "initrd"))
        self.assertEqual({t for t in links.values() if t.startswith(self.node.state + "/")}, set(files + boot))
        for path in files:
            fds = [fd for fd, target in links.items() if target == path]
            self.assertTrue(fds, f"QEMU has no fd on {path}")
            for fd in fds[1:]:
                self.assertTrue(same_file_description(pid, fds[0], fd),
                                f"QEMU's fds {fds[0]} and {fd} on {path} are two opens")
        # QEMU took all of it without a complaint (a deprecated spelling,
        # a file it could not lock)
        with open(os.path.join(self.instance(), "qemu.log")) as f:
            self.assertNotIn("warning", f.read())
        # the guest really uses them: the disk was written, the seed read
        self.wait_marker(r"^marker written$")
        self.assertTrue(any(m.startswith("seed ") for m in guestlib.read_markers(
            os.path.join(self.instance(), "serial.log"))))

        # nothing the VM has is QEMU's, others' or writable by its group
        self.check_modes(pid)
        self.stop_cleanly(pid)

    DISKS = ("disk.qcow2", "seed.iso", "efivars.fd")  # 0600: disk images QEMU gets as fds

    def check_modes(self, pid):
        """Modes and owners of everything in the instance directory and the
        VM's RUN_DIR while it runs: all root's; directories 0750 (or
        stricter), disk images 0600, logs 0640, sockets and the pidfile
        0600, nothing else readable by others or writable by the group."""
        inst, run = self.instance(), os.path.join(self.node.run_dir, "vm", "u1")
        seen = []
        for top in (inst, run):
            for d, dirs, files in os.walk(top):
                for path in [d] + [os.path.join(d, f) for f in files]:
                    st = os.lstat(path)
                    name, rel = os.path.basename(path), os.path.relpath(path, self.node.dir)
                    mode = stat.S_IMODE(st.st_mode)
                    seen.append(name)
                    self.assertEqual((st.st_uid, st.st_gid), (0, 0), f"{rel} owner")
                    self.assertEqual(mode & 0o027, 0, f"{rel}: {mode:o}")
                    if stat.S_ISDIR(st.st_mode):
                        self.assertIn(mode, (0o750, 0o700), f"{rel}: {mode:o}")
                    elif name in self.DISKS or d == run:
                        self.assertTrue(stat.S_ISREG(st.st_mode) or stat.S_ISSOCK(st.st_mode), rel)
                        self.assertEqual(mode, 0o600, f"{rel}: {mode:o}")
                    elif name.endswith((".log", ".log.1")):
                        self.assertTrue(stat.S_ISREG(st.st_mode), rel)
                        self.assertEqual(mode, 0o640, f"{rel}: {mode:o}")
                    else:
                        self.assertTrue(stat.S_ISREG(st.st_mode), rel)
                        self.assertIn(mode, (0o640, 0o600), f"{rel}: {mode:o}")
        # what was looked at (so that a file that appears later is checked too)
        names = sorted(seen)
        for must in ("disk.qcow2", "seed.iso", "serial.log", "qemu.log", "qmp.sock", "qga.sock",
                     "console.sock", "qemu.pid"):
            self.assertIn(must, names)

    def test_run_as_root_is_the_explicit_opt_out(self):
        pid = self.boot("qemu:\n  run_as: root\n")
        st = status(pid)
        self.assertEqual(st["Uid"].split(), ["0"] * 4)
        self.assertEqual(st["Seccomp"], "2")
        argv = cmdline(pid)
        self.assertNotIn("-runas", argv)
        # a QEMU that changes no user may be denied privilege changes too
        self.assertEqual(argv[argv.index("-sandbox") + 1],
                         "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny")
        self.wait_marker(r"^marker written$")
        self.stop_cleanly(pid)

    def test_missing_user_is_a_config_error(self):
        self.node = Node("qemu:\n  run_as: qvisor-no-such-user\n")
        p = self.node.qvisor("config", "check")
        self.assertEqual(p.returncode, 78, p.stderr)
        self.assertIn("no user named 'qvisor-no-such-user'", p.stderr)
        self.assertIn("scripts/setup", p.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
