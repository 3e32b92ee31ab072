#!/usr/bin/env python3
"""`qvisor vm console` and `qvisor vm log` through the real CLI and daemon
with real QEMU (TCG) and the tiny test guest (qv.console=echo reads lines
from its console and prints them back as markers).  The console is driven
through a pseudo-terminal: the guest's output appears, typed lines reach the
guest, Ctrl-] detaches and the terminal's modes are restored on every way
out (detach, signal, VM stop, daemon stop or crash); one client at a time,
root or the socket group only; a re-adopted VM's console works after a
daemon restart.  `vm log -n` and `vm log -f` across a `vm restart`."""

import os
import select
import signal
import subprocess
import sys
import termios
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "guest"))
from qvtest import QVISOR, Node, scaled, wait_for  # noqa: E402
import guestlib  # noqa: E402

GUEST = None


def setUpModule():
    global GUEST
    GUEST = guestlib.build_tiny_guest()


class PtyConsole:
    """`qvisor vm console NAME` on the slave side of a fresh pseudo-terminal."""

    def __init__(self, node, name):
        self.master, self.slave = os.openpty()
        self.before = termios.tcgetattr(self.slave)
        self.out = b""
        self.proc = subprocess.Popen([QVISOR, "--config", node.config, "vm", "console", name],
                                     stdin=self.slave, stdout=self.slave, stderr=subprocess.PIPE)

    def read_until(self, pattern, timeout=30):
        deadline = time.monotonic() + scaled(timeout)
        while pattern not in self.out:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} on the console; got {self.out[-2000:]!r}")
            r, _, _ = select.select([self.master], [], [], 0.1)
            if r:
                try:
                    self.out += os.read(self.master, 65536)
                except OSError:
                    break
        return self.out

    def send(self, data):
        os.write(self.master, data)

    def is_raw(self):
        return not termios.tcgetattr(self.slave)[3] & termios.ICANON

    def wait(self, timeout=30):
        rc = self.proc.wait(timeout=scaled(timeout))
        err = self.proc.stderr.read().decode(errors="replace")
        return rc, err

    def restored(self):
        return termios.tcgetattr(self.slave) == self.before

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc.stderr.close()
        os.close(self.master)
        os.close(self.slave)


class Console(unittest.TestCase):
    CONFIG = "vm_defaults:\n  memory: 256M\n  disk: 1G\n  stop_timeout: 30s\n  kill_timeout: 5s\n"

    def setUp(self):
        self.node = Node(self.CONFIG, world_readable=True)
        self.node.start_daemon()
        base = os.path.join(self.node.dir, "blank.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", base, "1G"], check=True)
        self.node.qvisor("image", "import", base, "blank", check=0)
        self.consoles = []

    def tearDown(self):
        try:
            for c in self.consoles:
                c.close()
            if self.node.proc and self.node.proc.poll() is None:
                self.assertEqual(self.node.stop_daemon(), 0, self.node.log()[-4000:])
                self.assertEqual(self.node.sanitizer_reports(), [], self.node.log()[-4000:])
        finally:
            self.node.cleanup()

    # -- helpers ----------------------------------------------------------------

    def boot(self, name, options=("qv.console=echo",)):
        self.node.qvisor("vm", "create", name, "--image", "blank", "--kernel", GUEST.kernel, "--initrd",
                         GUEST.initrd, "--append", guestlib.cmdline(list(options)), "--no-agent", check=0)
        self.node.qvisor("vm", "start", name, timeout=scaled(60), check=0)
        self.wait_marker(name, r"^ready$")

    def serial(self, name):
        return os.path.join(self.node.state, "instances", name, "serial.log")

    def wait_marker(self, name, pattern, timeout=60):
        m = guestlib.wait_marker_in_file(self.serial(name), pattern, scaled(timeout))
        self.assertIsNotNone(m, f"no marker {pattern!r} from {name}")
        return m

    def attach(self, name):
        c = PtyConsole(self.node, name)
        self.consoles.append(c)
        wait_for(c.is_raw, 10, "the terminal in raw mode")
        return c

    def echo(self, c, text):
        """Types a line; the guest prints it back (qv.console=echo)."""
        c.send(text.encode() + b"\r")
        c.read_until(f"QVISOR-GUEST: echo {text}".encode())

    def as_nobody(self, *args):
        os.chmod(self.node.socket, 0o666)  # let an outsider connect at all
        os.chmod(self.node.config, 0o644)
        return self.node.qvisor(*args, user="nobody")

    # -- tests --------------------------------------------------------------------

    def test_attach_type_detach_and_one_client_at_a_time(self):
        self.boot("con")
        self.assertIn("console.sock", os.listdir(os.path.join(self.node.run_dir, "vm", "con")))
        c = self.attach("con")
        self.echo(c, "hello-console")
        # logged while attached too
        self.wait_marker("con", r"^echo hello-console$", 10)
        # a second client is refused, naming the holder
        p = self.node.qvisor("vm", "console", "con")
        self.assertEqual(p.returncode, 75, p.stderr)
        self.assertIn("in use by uid 0 (pid", p.stderr)
        # a console is a root shell: root or the socket group only
        p = self.as_nobody("vm", "console", "con")
        self.assertEqual(p.returncode, 77, p.stderr)
        self.assertIn("vm.console needs root or membership", p.stderr)
        # Ctrl-] detaches: exit 0, the terminal as it was
        c.send(b"\x1d")
        rc, err = c.wait()
        self.assertEqual(rc, 0, err)
        self.assertIn("Connected to con's serial console; Ctrl-] detaches.", err)
        self.assertTrue(c.restored(), "terminal modes not restored after Ctrl-]")
        # the console is free again; a signal detaches too
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            c = self.attach("con")
            self.echo(c, f"again-{sig.name}")
            c.proc.send_signal(sig)
            rc, err = c.wait()
            self.assertEqual(rc, 0, f"{sig.name}: {err}")
            self.assertTrue(c.restored(), f"terminal modes not restored after {sig.name}")
        self.assertIn("console attached by uid 0", self.node.log())

    def test_without_a_terminal_input_is_relayed_until_its_end(self):
        self.boot("pipe")
        p = subprocess.run([QVISOR, "--config", self.node.config, "vm", "console", "pipe"], input=b"via-pipe\n",
                           capture_output=True, timeout=scaled(30))
        self.assertEqual(p.returncode, 0, p.stderr)
        self.wait_marker("pipe", r"^echo via-pipe$", 20)

    def test_stop_while_attached_ends_it(self):
        self.boot("stopme")
        c = self.attach("stopme")
        self.echo(c, "before-stop")
        self.node.qvisor("vm", "stop", "stopme", timeout=scaled(120), check=0)
        rc, err = c.wait()
        self.assertEqual(rc, 69, err)
        self.assertIn("VM stopme stopped", err)
        self.assertTrue(c.restored(), "terminal modes not restored after the VM stopped")
        p = self.node.qvisor("vm", "console", "stopme")
        self.assertEqual(p.returncode, 69, p.stderr)
        self.assertIn("is stopped: it has no console", p.stderr)

    def test_daemon_restart_while_attached(self):
        self.boot("adopt")
        c = self.attach("adopt")
        self.echo(c, "first-daemon")
        # the daemon stops (SIGTERM): the console ends, the VM runs on
        self.assertEqual(self.node.stop_daemon(), 0, self.node.log()[-3000:])
        rc, err = c.wait()
        self.assertEqual(rc, 75, err)
        self.assertIn("daemon is stopping", err)
        self.assertTrue(c.restored(), "terminal modes not restored after the daemon stopped")
        # the next daemon re-adopts the VM; its console works
        self.node.start_daemon()
        c = self.attach("adopt")
        self.echo(c, "second-daemon")
        # the daemon dies (SIGKILL): the client notices the lost connection
        self.node.proc.kill()
        self.node.proc.wait()
        rc, err = c.wait()
        self.assertEqual(rc, 75, err)
        self.assertIn("lost the connection to the qvisor daemon", err)
        self.assertTrue(c.restored(), "terminal modes not restored after the daemon died")
        self.node.start_daemon()
        c = self.attach("adopt")
        self.echo(c, "third-daemon")
        c.send(b"\x1d")
        self.assertEqual(c.wait()[0], 0)

    def test_log_tail_and_follow_across_restart(self):
        self.boot("logs", ())
        with open(self.serial("logs"), "rb") as f:
            whole = f.read()
        p = subprocess.run([QVISOR, "--config", self.node.config, "vm", "log", "logs"], capture_output=True,
                           timeout=scaled(30))
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertTrue(p.stdout.startswith(whole[:len(whole) - 200]))
        p = subprocess.run([QVISOR, "--config", self.node.config, "vm", "log", "-n", "3", "logs"],
                           capture_output=True, timeout=scaled(30))
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stdout.splitlines(), whole.splitlines()[-3:])
        self.assertEqual(self.node.qvisor("vm", "log", "-n", "x", "logs").returncode, 64)
        p = self.as_nobody("vm", "log", "logs")
        self.assertEqual(p.returncode, 77, p.stderr)
        # -f: the rest of this boot, then the next boot's log after a restart
        f = subprocess.Popen([QVISOR, "--config", self.node.config, "vm", "log", "-f", "logs"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        got = bytearray()

        def reader():
            while True:
                b = f.stdout.read1(65536)
                if not b:
                    return
                got.extend(b)

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        wait_for(lambda: b"QVISOR-GUEST: ready" in got, 20, "the first boot in vm log -f")
        self.node.qvisor("vm", "restart", "logs", timeout=scaled(120), check=0)
        wait_for(lambda: got.count(b"QVISOR-GUEST: ready") >= 2, 60, "the second boot in vm log -f")
        self.assertEqual(got.count(b"QVISOR-GUEST: boot"), 2)
        f.send_signal(signal.SIGINT)
        self.assertEqual(f.wait(timeout=scaled(10)), 0)
        t.join(5)
        self.assertIn("started again", f.stderr.read().decode())
        f.stderr.close()
        f.stdout.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
