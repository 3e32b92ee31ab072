#!/usr/bin/env python3
"""The foundation end to end: the real `qvisor` binary and daemon on a
private socket and state directory.  Asserts every exit code this part of
the code can produce, config check/reload behaviour, peer authorisation, and
that malformed input never takes the daemon down."""

import json
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from qvtest import QVISOR, Node, scaled, wait_for  # noqa: E402


class Usage(unittest.TestCase):
    """Exit 64 and help texts need no daemon."""

    def run_q(self, *args):
        return subprocess.run([QVISOR, *args], capture_output=True, text=True, timeout=30,
                              stdin=subprocess.DEVNULL)

    def test_help_lists_exit_codes_and_nouns(self):
        p = self.run_q("--help")
        self.assertEqual(p.returncode, 0)
        for word in ("Exit codes:", "  64  usage", "  78  invalid configuration", "daemon", "config",
                     "vm", "image", "gpu", "node", "gpu        PCI display devices for passthrough\n", "node       this node's capacity and usage\n",
                     "net        VM networks"):
            self.assertIn(word, p.stdout)

    def test_help_on_every_level(self):
        for args in (["vm", "--help"], ["vm", "create", "--help"], ["vm", "list", "--help"],
                     ["image", "import", "--help"], ["gpu", "--help"], ["config", "--help"], ["config", "check", "--help"],
                     ["config", "show", "--help"], ["config", "reload", "--help"], ["daemon", "--help"],
                     ["version", "--help"], ["image", "help"], ["node", "--help"], ["node", "status", "--help"],
                     ["net", "--help"], ["net", "list", "--help"], ["net", "teardown", "--help"],
                     ["vm", "pause", "--help"], ["vm", "resume", "--help"]):
            p = self.run_q(*args)
            self.assertEqual(p.returncode, 0, args)
            self.assertIn("Usage: qvisor", p.stdout, args)

    def test_vm_pause_and_resume_are_verbs_with_exit_codes(self):
        p = self.run_q("vm", "--help")
        self.assertRegex(p.stdout, r"\n  pause +pause a VM's guest")
        self.assertRegex(p.stdout, r"\n  resume +resume a paused VM")
        for verb in ("pause", "resume"):
            p = self.run_q("vm", verb, "--help")
            self.assertIn(f"Usage: qvisor vm {verb} NAME", p.stdout)
            self.assertRegex(p.stdout, r"69 daemon not running or the VM not running\s+\(stopped or crashed\)")
            self.assertIn("75 busy", p.stdout)

    def test_usage_errors(self):
        for args, needle in (([], "Usage: qvisor"),
                             (["frobnicate"], "unknown command 'frobnicate'"),
                             (["config", "frob"], "unknown verb 'frob' for 'config'"),
                             (["vm", "frob"], "unknown verb 'frob' for 'vm'"),
                             (["gpu", "remove"], "unknown verb 'remove' for 'gpu'"),
                             (["node", "frob"], "unknown verb 'frob' for 'node'"),
                             (["net", "frob"], "unknown verb 'frob' for 'net'"),
                             (["vm"], "Usage: qvisor vm"),
                             (["vm", "pause"], "needs exactly one NAME"),
                             (["vm", "resume", "a", "b"], "needs exactly one NAME"),
                             (["vm", "pause", "a", "--force"], "unrecognized option"),
                             (["vm", "create", "x", "--image"], "requires an argument"),
                             (["--no-such-option", "version"], "unrecognized option"),
                             (["config", "check", "--bogus"], "unrecognized option"),
                             (["config", "check", "a", "b"], "at most one PATH"),
                             (["--request-timeout", "soon", "version"], "--request-timeout"),
                             (["daemon", "extra"], "takes no arguments")):
            p = self.run_q(*args)
            self.assertEqual(p.returncode, 64, (args, p.stderr))
            self.assertIn(needle, p.stderr, args)

    def test_version_flag(self):
        p = self.run_q("--version")
        self.assertEqual(p.returncode, 0)
        self.assertRegex(p.stdout, r"^qvisor \d+\.\d+\.\d+\n$")


class ConfigCheck(unittest.TestCase):
    def setUp(self):
        self.node = Node()

    def tearDown(self):
        self.node.cleanup()

    def test_valid_human_and_json(self):
        p = self.node.qvisor("config", "check", check=0)
        self.assertIn("is valid", p.stdout)
        self.assertRegex(p.stdout, r"paths\.state_dir +" + self.node.state)
        j = self.node.qvisor_json("config", "check")
        self.assertEqual(j["paths"]["run_dir"], self.node.run_dir)
        self.assertEqual(j["qemu"]["accelerator"], "auto")
        self.assertEqual(j["vm_defaults"]["memory"], "2G")

    def test_invalid_names_file_line_column_and_key(self):
        self.node.write_config("qemu:\n  accelerator: warp\n")
        p = self.node.qvisor("config", "check")
        self.assertEqual(p.returncode, 78)
        self.assertIn(f"{self.node.config}:5:16: qemu.accelerator: expected one of auto, kvm, tcg", p.stderr)
        self.assertEqual(p.stdout, "")

    def test_explicit_path_argument(self):
        other = os.path.join(self.node.dir, "other.yaml")
        with open(other, "w") as f:
            f.write("vm_defaults:\n  cpus: 3\n  cpus: 4\n")
        p = self.node.qvisor("config", "check", other)
        self.assertEqual(p.returncode, 78)
        self.assertIn(f"{other}:3:3: vm_defaults.cpus: repeated key", p.stderr)

    def test_missing_file_is_66(self):
        p = self.node.qvisor("config", "check", os.path.join(self.node.dir, "nope.yaml"))
        self.assertEqual(p.returncode, 66)
        self.assertIn("nope.yaml", p.stderr)

    def test_no_side_effects(self):
        self.node.qvisor("config", "check", check=0)
        self.assertFalse(os.path.exists(self.node.state))
        self.assertFalse(os.path.exists(self.node.run_dir))


class Daemon(unittest.TestCase):
    def setUp(self):
        self.node = Node()

    def tearDown(self):
        self.node.cleanup()

    def test_not_running_is_69(self):
        p = self.node.qvisor("config", "show")
        self.assertEqual(p.returncode, 69)
        self.assertIn("daemon is not running", p.stderr)
        p = self.node.qvisor("version", check=0)  # version reports it, does not fail
        self.assertIn("daemon: not running", p.stdout)
        self.assertIsNone(self.node.qvisor_json("version")["daemon"])

    def test_ready_version_and_clean_stop(self):
        proc = self.node.start_daemon()
        j = self.node.qvisor_json("version")
        self.assertEqual(j["daemon"]["pid"], proc.pid)
        self.assertEqual(j["daemon"]["socket"], self.node.socket)
        self.assertEqual(j["client"], j["daemon"]["version"])
        st = os.stat(self.node.socket)
        self.assertEqual(st.st_mode & 0o777, 0o660)
        self.assertEqual(self.node.stop_daemon(), 0)
        self.assertFalse(os.path.exists(self.node.socket))
        self.assertIn("STOPPING=1", self.node.wait_notify("STOPPING=1"))
        # a new daemon starts on the same directories right away
        self.node.start_daemon()
        self.assertEqual(self.node.stop_daemon(signal.SIGINT), 0)

    def test_second_daemon_is_73(self):
        proc = self.node.start_daemon()
        p = self.node.qvisor("daemon")
        self.assertEqual(p.returncode, 73)
        self.assertIn(f"another qvisor daemon (pid {proc.pid}) is running", p.stderr)
        self.assertEqual(self.node.qvisor_json("version")["daemon"]["pid"], proc.pid)

    def test_bad_config_is_78_and_creates_nothing(self):
        self.node.write_config("daemon:\n  max_clients: 0\n")
        p = self.node.qvisor("daemon")
        self.assertEqual(p.returncode, 78)
        self.assertIn("daemon.max_clients: 0 is out of range", p.stderr)
        self.assertFalse(os.path.exists(self.node.run_dir))

    def test_missing_explicit_config_is_78(self):
        p = subprocess.run([QVISOR, "--config", os.path.join(self.node.dir, "absent.yaml"), "daemon"],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 78)
        self.assertIn("absent.yaml", p.stderr)

    def test_unusable_run_dir_is_1(self):
        self.node.write_config("")
        with open(self.node.config, "w") as f:
            f.write(f"paths:\n  state_dir: {self.node.state}\n  run_dir: /dev/null/run\n")
        p = self.node.qvisor("daemon")
        self.assertEqual(p.returncode, 1)
        self.assertIn("cannot create directory /dev/null/run", p.stderr)

    def test_hung_daemon_is_75(self):
        os.makedirs(self.node.run_dir)
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(self.node.socket)
        srv.listen(1)  # accepts, never answers
        try:
            t0 = time.monotonic()
            p = self.node.qvisor("--request-timeout", "1s", "config", "show")
            self.assertEqual(p.returncode, 75)
            self.assertIn("no answer from the daemon", p.stderr)
            self.assertLess(time.monotonic() - t0, scaled(10))
        finally:
            srv.close()

    def test_oversized_request_gets_the_daemons_answer(self):
        # The daemon refuses a request over daemon.max_request_size and hangs
        # up while the CLI is still writing: the CLI must neither die of
        # SIGPIPE nor lose the daemon's reason.
        self.node.write_config("daemon:\n  max_request_size: 4K\n")
        self.node.start_daemon()
        spec = os.path.join(self.node.dir, "big.yaml")
        kernel = os.path.join(self.node.dir, "vmlinuz")  # the CLI opens it before it sends anything
        with open(kernel, "w") as f:
            f.write("a kernel\n")
        with open(spec, "w") as f:
            f.write(f"name: big\nimage: base\nkernel: {kernel}\nappend: '" + "x" * (900 << 10) + "'\n")
        p = self.node.qvisor("vm", "create", "-f", spec)
        self.assertEqual(p.returncode, 65, p.stderr)
        self.assertIn("request larger than 4096 bytes", p.stderr)
        self.assertIsNone(self.node.proc.poll())

    def test_journal_priority_prefix(self):
        # stderr is "the journal" when JOURNAL_STREAM names it: lines carry <N>
        with open(self.node.stderr_path, "a") as f:
            st = os.fstat(f.fileno())
        self.node.start_daemon(extra_env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        self.node.stop_daemon()
        lines = [l for l in self.node.log().splitlines() if l]
        self.assertTrue(lines)
        for line in lines:
            self.assertRegex(line, r"^<[3-7]>")

    def test_config_show_and_reload(self):
        self.node.start_daemon()
        self.assertEqual(self.node.qvisor_json("config", "show")["log_level"], "info")
        p = self.node.qvisor("config", "show", check=0)
        self.assertRegex(p.stdout, r"vm_defaults\.memory +2G")

        # a valid edit takes effect
        self.node.write_config("log_level: debug\nvm_defaults:\n  cpus: 6\n")
        self.node.qvisor("config", "reload", check=0)
        shown = self.node.qvisor_json("config", "show")
        self.assertEqual(shown["log_level"], "debug")
        self.assertEqual(shown["vm_defaults"]["cpus"], 6)

        # an invalid edit is refused over the socket (78) and the daemon keeps going
        self.node.write_config("log_level: loud\n")
        p = subprocess.run([QVISOR, "--socket", self.node.socket, "config", "reload"], capture_output=True,
                           text=True, timeout=30)
        self.assertEqual(p.returncode, 78)
        self.assertIn("config reload refused", p.stderr)
        self.assertIn("log_level: expected one of error, warning, info, debug", p.stderr)
        shown = json.loads(subprocess.run([QVISOR, "--socket", self.node.socket, "--json", "config", "show"],
                                          capture_output=True, text=True, check=True).stdout)
        self.assertEqual(shown["vm_defaults"]["cpus"], 6)

        # SIGHUP with the invalid file: logged, daemon alive, config unchanged
        self.node.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: self.node.log().count("config reload refused") >= 2, 10, "the refusal in the log")
        self.assertIsNone(self.node.proc.poll())

        # keys that need a restart keep their running values
        other_run = os.path.join(self.node.dir, "run2")
        with open(self.node.config, "w") as f:
            f.write(f"paths:\n  state_dir: {self.node.state}\n  run_dir: {other_run}\n")
        self.node.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "paths.run_dir, daemon.socket changed" in self.node.log(), 10, "restart warning")
        p = subprocess.run([QVISOR, "--socket", self.node.socket, "--json", "config", "show"],
                           capture_output=True, text=True, check=True)
        self.assertEqual(json.loads(p.stdout)["paths"]["run_dir"], self.node.run_dir)
        self.assertEqual(json.loads(p.stdout)["log_level"], "info")


class Authorisation(unittest.TestCase):
    def setUp(self):
        self.node = Node("daemon:\n  socket_group: nogroup\n", world_readable=True)

    def tearDown(self):
        self.node.cleanup()

    def test_reads_for_group_and_writes_refused_for_others(self):
        if os.getuid() != 0:
            self.skipTest("needs root to switch users")
        self.node.start_daemon()
        st = os.stat(self.node.socket)
        self.assertEqual(st.st_gid, 65534)
        os.chmod(self.node.config, 0o644)
        # nobody is in nogroup (primary group): may read and write
        p = self.node.qvisor("version", user="nobody", check=0)
        self.assertIn("daemon: qvisor", p.stdout)
        self.node.qvisor("config", "reload", user="nobody", check=0)
        # a user outside the group cannot even connect: 77 with a hint
        p = self.node.qvisor("config", "show", user="daemon")
        self.assertEqual(p.returncode, 77, p.stderr)
        self.assertIn("permission denied", p.stderr)

    def test_write_refused_for_reader_outside_group(self):
        if os.getuid() != 0:
            self.skipTest("needs root to switch users")
        self.node.write_config("")  # no socket group: root only may write
        self.node.start_daemon()
        os.chmod(self.node.socket, 0o666)  # let an outsider connect at all
        os.chmod(self.node.config, 0o644)
        p = self.node.qvisor("config", "show", user="nobody", check=0)
        self.assertIn("log_level", p.stdout)
        p = self.node.qvisor("config", "reload", user="nobody")
        self.assertEqual(p.returncode, 77, p.stderr)
        self.assertIn("config.reload needs root or membership in the group", p.stderr)
        self.assertIn("refused config.reload from uid 65534", self.node.log())


    def test_supplementary_group_may_write(self):
        """The socket group as a supplementary group of the peer counts (the
        kernel's record of it at connect, SO_PEERGROUPS)."""
        if os.getuid() != 0:
            self.skipTest("needs root to switch users")
        self.node.start_daemon()
        os.chmod(self.node.config, 0o644)
        cmd = ["setpriv", "--reuid=daemon", "--regid=daemon", "--groups=65534", QVISOR, "--config",
               self.node.config, "config", "reload"]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=scaled(30), stdin=subprocess.DEVNULL)
        self.assertEqual(p.returncode, 0, p.stderr)


class IdleConnections(unittest.TestCase):
    """Attackers who open connections and say nothing, or half a line, do
    not lock anyone out: root has reserved slots and the daemon drops them."""

    def setUp(self):
        self.node = Node("daemon:\n  max_clients: 64\n  request_line_timeout: 1s\n  idle_timeout: 3s\n",
                         world_readable=True)
        self.node.start_daemon()
        os.chmod(self.node.socket, 0o666)

    def tearDown(self):
        self.node.cleanup()

    def test_flood_of_idle_connections(self):
        if os.getuid() != 0:
            self.skipTest("needs root to switch users")
        # 70 connections as nobody: 64 silent or with half a line, the rest refused
        code = ("import socket, sys, time\n"
                "conns = []\n"
                "for i in range(70):\n"
                "    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
                "    s.connect(sys.argv[1])\n"
                "    if i % 2:\n"
                "        try:\n"
                "            s.sendall(b'{\"id\":1,\"method\":')\n"
                "        except (BrokenPipeError, ConnectionResetError):\n"
                "            pass  # one beyond max_clients, refused and closed already\n"
                "    conns.append(s)\n"
                "print('ready', flush=True)\n"
                "sys.stdin.read()\n"
                "closed = 0\n"
                "for s in conns:\n"
                "    s.settimeout(0.1)\n"
                "    try:\n"
                "        while s.recv(4096): pass\n"
                "        closed += 1\n"
                "    except ConnectionResetError:\n"
                "        closed += 1\n"
                "    except socket.timeout:\n"
                "        pass\n"
                "print('closed', closed, flush=True)\n")
        attacker = subprocess.Popen(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                                     sys.executable, "-c", code, self.node.socket],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            self.assertEqual(attacker.stdout.readline(), "ready\n")
            # root still gets an answer while they hold every ordinary slot
            p = self.node.qvisor("version", timeout=scaled(10), check=0)
            self.assertIn("daemon: qvisor", p.stdout)
            # after the idle timeout every one of them was closed by the daemon
            time.sleep(scaled(4))
            attacker.stdin.close()
            out = attacker.stdout.readline()
            self.assertEqual(out, "closed 70\n")
        finally:
            attacker.kill()
            attacker.wait()
        p = self.node.qvisor("version", user="nobody", timeout=scaled(10), check=0)
        self.assertIn("daemon: qvisor", p.stdout)

    def test_half_line_is_dropped_before_idle_timeout(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(scaled(10))
        s.connect(self.node.socket)
        s.sendall(b'{"id":1,"method":"ping"')
        t0 = time.monotonic()
        self.assertEqual(s.recv(4096), b"")  # closed, without a reply
        self.assertLess(time.monotonic() - t0, scaled(3))
        s.close()


class MalformedInputSmoke(unittest.TestCase):
    """Random bytes, truncated and oversized JSON, floods of connections: the
    daemon answers or drops the connection, and keeps serving."""

    def setUp(self):
        self.node = Node("daemon:\n  max_clients: 8\n")
        self.node.start_daemon()

    def tearDown(self):
        self.node.cleanup()

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(scaled(5))
        s.connect(self.node.socket)
        return s

    def assert_alive(self):
        self.assertIsNone(self.node.proc.poll(), self.node.log())
        j = self.node.qvisor_json("version")
        self.assertEqual(j["daemon"]["pid"], self.node.proc.pid)

    def test_random_and_truncated(self):
        rng = random.Random(20261121)
        valid = b'{"id":1,"method":"ping","params":{}}\n'
        for i in range(300):
            s = self.connect()
            kind = i % 4
            if kind == 0:
                data = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 4096)))
            elif kind == 1:
                data = valid[:rng.randint(1, len(valid) - 1)]
            elif kind == 2:
                data = valid[:rng.randint(1, len(valid) - 2)] + b"\n" + valid
            else:
                data = b'{"id":' + str(rng.randint(-2**70, 2**70)).encode() + b',"method":"ping"}\n'
            pos = 0
            try:
                while pos < len(data):
                    n = rng.randint(1, 64)
                    s.sendall(data[pos:pos + n])
                    pos += n
                if rng.random() < 0.5:
                    s.shutdown(socket.SHUT_WR)
            except (BrokenPipeError, ConnectionResetError):
                pass  # dropping a client is an allowed answer; dying is not
            s.close()
        self.assert_alive()

    def test_answers_and_framing(self):
        s = self.connect()
        s.sendall(b'{"id":1,"method":"ping"}\n{"id":2,"method":"nope"}\n{"id":3,"metho\n')
        f = s.makefile("rb")
        a, b, c = (json.loads(f.readline()) for _ in range(3))
        self.assertEqual(a["id"], 1)
        self.assertIn("version", a["result"])
        self.assertEqual(b["error"]["code"], "ENOSYS")
        self.assertEqual(c["error"]["code"], "EBADMSG")
        s.close()
        self.assert_alive()

    def test_oversized_and_deep(self):
        s = self.connect()
        s.sendall(b"[" * 100000 + b"\n")
        f = s.makefile("rb")
        self.assertEqual(json.loads(f.readline())["error"]["code"], "EBADMSG")
        s.close()
        s = self.connect()
        try:
            s.sendall(b'{"id":1,"method":"ping","params":{"x":"' + b"a" * (2 << 20) + b'"}}\n')
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon may close before we finish sending
        try:
            line = s.makefile("rb").readline()
            self.assertEqual(json.loads(line)["error"]["code"], "EMSGSIZE")
        except ConnectionResetError:
            pass
        s.close()
        self.assert_alive()

    def test_connection_flood_and_silent_clients(self):
        socks = []
        for _ in range(40):
            try:
                socks.append(self.connect())
            except OSError:
                break
        # the ones over the limit (8, and 4 reserved for root and the
        # daemon's user: this test runs as one of them) get EAGAIN and are
        # closed; the daemon lives
        refused = 0
        for s in socks[8 + 4:]:
            line = s.makefile("rb").readline()
            if line and json.loads(line)["error"]["code"] == "EAGAIN":
                refused += 1
        self.assertGreater(refused, 0)
        for s in socks:
            s.close()
        wait_for(lambda: self._version_ok(), 10, "the daemon to serve again")
        # memory stayed small
        with open(f"/proc/{self.node.proc.pid}/status") as f:
            rss_kb = int(next(l for l in f if l.startswith("VmRSS:")).split()[1])
        self.assertLess(rss_kb, 64 * 1024)

    def _version_ok(self):
        p = self.node.qvisor("--json", "version")
        return p.returncode == 0 and json.loads(p.stdout)["daemon"] is not None


class OnDemandLibraries(unittest.TestCase):
    """libudev and libnftables are loaded when first needed (common/dlib.h),
    so that every qvisor process does not pay for mapping them."""

    def test_not_linked(self):
        p = subprocess.run(["readelf", "-d", QVISOR], capture_output=True, text=True, check=True)
        needed = [line for line in p.stdout.splitlines() if "(NEEDED)" in line]
        self.assertTrue(needed, p.stdout)
        for lib in ("libudev", "libnftables", "libnftnl", "libxtables", "libgmp"):
            self.assertFalse([n for n in needed if lib in n], needed)

    def test_unusable_library_is_named(self):
        node = Node()
        self.addCleanup(node.cleanup)
        # a libudev.so.1 that is no ELF object: dlopen fails, as for a
        # missing package
        libdir = os.path.join(node.dir, "lib")
        os.mkdir(libdir)
        with open(os.path.join(libdir, "libudev.so.1"), "w") as f:
            f.write("not a library\n")
        node.start_daemon(extra_env={"LD_LIBRARY_PATH": libdir})
        p = node.qvisor("gpu", "list")
        self.assertEqual(p.returncode, 69, p.stderr)
        self.assertIn("PCI device discovery needs libudev.so.1, which is not usable", p.stderr)
        # the daemon itself is fine, and so is everything that needs no udev
        node.qvisor("image", "list", check=0)
        self.assertEqual(node.stop_daemon(), 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
