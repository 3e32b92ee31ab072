#!/usr/bin/env python3
"""The CLI against a daemon that says what an attacker would like it to:
a fake daemon on a private socket answers with canned replies, and the
real `qvisor` binary must neither mangle its own arguments nor pass on
what it was told unchecked."""

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from qvtest import QVISOR, scaled  # noqa: E402


class FakeDaemon:
    """Answers each request with replies[method] as its result."""

    def __init__(self, replies):
        self.dir = tempfile.mkdtemp(prefix="qv-fake-")
        self.path = os.path.join(self.dir, "ctl.sock")
        self.replies = replies
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(8)
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                f = conn.makefile("rwb")
                line = f.readline()
                if not line:
                    continue
                req = json.loads(line)
                f.write(json.dumps({"id": req["id"], "result": self.replies[req["method"]]}).encode() + b"\n")
                f.flush()

    def close(self):
        self.sock.shutdown(socket.SHUT_RDWR)  # wakes accept(); close() alone does not
        self.thread.join()
        self.sock.close()
        subprocess.run(["rm", "-rf", self.dir])


RUNNING = {"name": "a", "state": "running", "pid": 4242, "ssh_port": 2222, "dir": "/nonexistent/a",
           "spec": {"user": "debian"}}


class VmSsh(unittest.TestCase):
    def setUp(self):
        self.fake = FakeDaemon({"vm.show": dict(RUNNING)})
        self.bin = tempfile.mkdtemp(prefix="qv-bin-")
        ssh = os.path.join(self.bin, "ssh")
        with open(ssh, "w") as f:
            f.write("#!/usr/bin/env python3\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
        os.chmod(ssh, 0o755)

    def tearDown(self):
        self.fake.close()
        subprocess.run(["rm", "-rf", self.bin])

    def ssh(self, *args):
        env = dict(os.environ, PATH=self.bin + ":" + os.environ["PATH"])
        return subprocess.run([QVISOR, "-s", self.fake.path, "vm", "ssh", *args], capture_output=True, text=True,
                              env=env, timeout=scaled(30), stdin=subprocess.DEVNULL)

    def argv(self, *args):
        p = self.ssh(*args)
        self.assertEqual(p.returncode, 0, p.stderr)
        return json.loads(p.stdout)

    def test_user_after_name(self):
        a = self.argv("a", "-l", "root", "--", "uptime", "-p")
        self.assertEqual(a[-4:], ["root@127.0.0.1", "--", "uptime", "-p"])
        a = self.argv("-l", "root", "a", "uptime")
        self.assertEqual(a[-3:], ["root@127.0.0.1", "--", "uptime"])
        a = self.argv("a", "ls", "-l")  # options of the remote command stay its own
        self.assertEqual(a[-4:], ["debian@127.0.0.1", "--", "ls", "-l"])

    def test_long_remote_command_is_whole(self):
        words = [f"w{i}" for i in range(500)]
        a = self.argv("a", "--", "echo", *words)
        self.assertEqual(a[-501:], ["echo", *words])

    def test_bad_user_names_are_refused(self):
        for user in ("x" * 300, "-oProxyCommand=touch /tmp/p", "a@b", "a b", "\x1b[2J"):
            p = self.ssh("a", "-l", user, "--", "true")
            self.assertEqual(p.returncode, 64, (user, p.stdout, p.stderr))
            self.assertEqual(p.stdout, "")
        self.fake.replies["vm.show"] = dict(RUNNING, spec={"user": "-oProxyCommand=sh"})
        p = self.ssh("a", "true")
        self.assertEqual(p.returncode, 65, p.stderr)
        self.assertIn("use -l USER", p.stderr)
        # a long but valid name goes through whole
        a = self.argv("a", "-l", "u" * 200)
        self.assertEqual(a[-1], "u" * 200 + "@127.0.0.1")


EVIL = "\x1b]0;pwned\x07\x1b[2J10.0.0.1 evil\nfake-vm  running"


class HumanOutput(unittest.TestCase):
    """Whatever the daemon relays (agent addresses, exit reasons, versions),
    human output hands the terminal no control character."""

    def setUp(self):
        vm = {"name": "a", "state": "running", "pid": 4242, "cpus": 1, "memory": 1 << 30, "disk_size": 1 << 30,
              "ip": EVIL, "agent": "ok\x1b[31m", "uptime_s": 60, "gpus": ["0000:01:00.0\x1b[2J"],
              "image": "img\x9b2J", "pool": "default"}
        show = dict(vm, last_exit="the guest powered off (\x1b[2J)", addresses=[{"interface": "eth0\x1b",
                                                                                     "address": EVIL, "prefix": 24}])
        self.fake = FakeDaemon({"vm.list": {"vms": [vm]}, "vm.show": show})

    def tearDown(self):
        self.fake.close()

    def run_q(self, *args):
        p = subprocess.run([QVISOR, "-s", self.fake.path, *args], capture_output=True, timeout=scaled(30),
                           stdin=subprocess.DEVNULL)
        self.assertEqual(p.returncode, 0, p.stderr)
        return p.stdout

    def assert_clean(self, out, lines):
        for b in out:
            self.assertTrue(b >= 0x20 and b != 0x7f or b in b"\n", (hex(b), out))
        self.assertNotIn(b"\xc2\x9b", out)
        self.assertEqual(out.count(b"\n"), lines, out)

    def test_vm_list(self):
        out = self.run_q("vm", "list")
        self.assert_clean(out, 2)
        self.assertIn(b"\\x1B]0;pwned\\x07\\x1B[2J10.0.0.1 evil\\x0Afake-vm", out)

    def test_vm_show(self):
        out = self.run_q("vm", "show", "a")
        self.assert_clean(out, out.count(b"\n"))
        self.assertIn(b"the guest powered off (\\x1B[2J)", out)
        self.assertNotIn(b"\nfake-vm", out)

    def test_json_is_json(self):
        out = self.run_q("--json", "vm", "list")
        self.assertEqual(json.loads(out)["vms"][0]["ip"], EVIL)


if __name__ == "__main__":
    unittest.main(verbosity=2)
