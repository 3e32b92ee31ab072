#!/usr/bin/env python3
"""Files named by a client are opened by the client (issue 15 #4), from the
attacker's side: a `daemon.socket_group` member (nobody, whose primary
group is the socket group nogroup) names files it cannot read itself, the
root daemon must not read them for it.  Also: import takes disk images
only (a text file is not a raw image unless --format raw says so), and a
client that floods the socket with descriptors costs the daemon none."""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from qvtest import Node, scaled  # noqa: E402

MEMBER = "nobody"  # primary group nogroup: the socket group below


def daemon_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def settled_fds(pid, want):
    """The daemon's descriptor count once the connections just closed are
    gone on its side too (it notices a hang-up a moment later)."""
    deadline = time.monotonic() + scaled(5)
    while daemon_fds(pid) != want and time.monotonic() < deadline:
        time.sleep(0.05)
    return daemon_fds(pid)


class Base(unittest.TestCase):
    def extra_config(self):
        return ""

    def setUp(self):
        if os.getuid() != 0:
            self.skipTest("needs root to switch users")
        # the member's own files: readable by it, in a directory it may enter
        self.files = tempfile.mkdtemp(prefix="qv-member-")
        os.chmod(self.files, 0o755)
        self.node = Node("daemon:\n  socket_group: nogroup\nvm_defaults:\n  disk: 1G\n"
                         "resources:\n  cpu_overcommit: 64.0\n  memory_overcommit: 64.0\n" + self.extra_config(),
                         world_readable=True)
        self.node.start_daemon()
        os.chmod(self.node.config, 0o644)

    def tearDown(self):
        try:
            self.assertEqual(self.node.sanitizer_reports(), [], self.node.log()[-4000:])
        finally:
            self.node.cleanup()
            subprocess.run(["rm", "-rf", self.files])

    def as_member(self, *args, want):
        p = self.node.qvisor(*args, user=MEMBER)
        self.assertEqual(p.returncode, want, f"{args}: {p.stdout} {p.stderr}")
        return p

    def member_file(self, name, *, qcow2=None, raw=None, text=None, mode=0o644):
        path = os.path.join(self.files, name)
        if qcow2:
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path, qcow2], check=True)
        elif raw:
            subprocess.run(["qemu-img", "create", "-q", "-f", "raw", path, raw], check=True)
        else:
            with open(path, "w") as f:
                f.write(text)
        os.chmod(path, mode)
        return path

    def images(self):
        return sorted(i["name"] for i in self.node.qvisor_json("image", "list")["images"])


class Import(Base):
    def test_a_file_the_member_cannot_read_is_not_imported(self):
        p = self.as_member("image", "import", "/etc/shadow", "x", want=77)
        self.assertIn("permission denied", p.stderr)
        self.assertNotIn("x", self.images())
        secret = self.member_file("secret.qcow2", qcow2="16M", mode=0o600)  # root's, 0600
        self.as_member("image", "import", secret, "y", want=77)
        self.assertEqual(self.images(), [])

    def test_a_readable_image_imports(self):
        mine = self.member_file("mine.qcow2", qcow2="16M")
        self.as_member("image", "import", mine, want=0)
        self.assertEqual(self.images(), ["mine"])

    def test_missing_file_is_66_before_the_daemon(self):
        p = self.as_member("image", "import", os.path.join(self.files, "none.qcow2"), want=66)
        self.assertIn("no such file", p.stderr)
        self.assertNotIn("importing image", self.node.log())

    def test_text_is_not_an_image_unless_raw_is_asked_for(self):
        p = self.as_member("image", "import", "/etc/hostname", "host", want=65)
        self.assertIn("not a disk image", p.stderr)
        self.assertIn("--format raw", p.stderr)
        self.assertEqual(self.images(), [])
        raw = self.member_file("disk.raw", raw="8M")
        self.as_member("image", "import", raw, "plain", want=65)  # a raw image is not guessed either
        self.as_member("image", "import", raw, "plain", "--format", "raw", want=0)
        info = self.node.qvisor_json("image", "list")["images"]
        self.assertEqual([(i["name"], i["virtual_size"]) for i in info], [("plain", 8 << 20)])
        self.as_member("image", "import", self.member_file("x.qcow2", qcow2="1M"), "q", "--format", "raw", want=0)
        self.as_member("image", "import", raw, "nope", "--format", "qcow2", want=65)
        self.as_member("image", "import", raw, "nope", "--format", "vmdk", want=65)

    def test_backing_file_is_refused(self):
        """A qcow2 naming /etc/shadow as its backing file would have qemu-img
        read it as root."""
        evil = os.path.join(self.files, "evil.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "/etc/shadow", "-F", "raw", evil, "1M"],
                       check=True)
        os.chmod(evil, 0o644)
        p = self.as_member("image", "import", evil, "evil", want=65)
        self.assertIn("backing file", p.stderr)
        self.assertEqual(self.images(), [])

    def test_not_a_regular_file(self):
        p = self.as_member("image", "import", "/dev/null", "null", want=65)
        self.assertIn("not a regular file", p.stderr)
        p = self.as_member("image", "import", self.files, "dir", want=65)

    def test_a_path_alone_is_not_opened(self):
        """An old client, or a hand-written request, naming a path: refused,
        whoever asks (root included)."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.node.socket)
        s.sendall(b'{"id": 1, "method": "image.import", "params": {"source": "/etc/shadow", "name": "x"}}\n')
        reply = json.loads(s.makefile().readline())
        s.close()
        self.assertEqual(reply["error"]["code"], "EINVAL", reply)
        self.assertIn("source_fd", reply["error"]["message"])
        self.assertEqual(self.images(), [])


FAKE_QEMU_IMG = '''#!/usr/bin/env python3
# qemu-img that, before a convert, rewrites the client's source file (the
# same inode the daemon holds) to a qcow2 whose external data file is a
# root-only secret: a client racing the import between check and copy
import os, shutil, sys
if sys.argv[1:2] == ["convert"] and "RACE_EVIL" in os.environ:
    with open(os.environ["RACE_EVIL"], "rb") as src, open(os.environ["RACE_SOURCE"], "r+b") as dst:
        dst.write(src.read())
        dst.truncate()
# or swaps the daemon's temp name in the images directory for a symlink (a
# directory others may write)
if sys.argv[1:2] == ["convert"] and "RACE_PLANT" in os.environ:
    if os.path.lexists(os.environ["RACE_PLANT"]):
        os.unlink(os.environ["RACE_PLANT"])
    os.symlink(os.environ["RACE_VICTIM"], os.environ["RACE_PLANT"])
os.execvp("qemu-img", ["qemu-img"] + sys.argv[1:])
'''


class HeaderRace(Base):
    """The client rewrites its qcow2 between the daemon's check (no backing
    file, no data file) and the copy: the copy must not follow the new
    header (the daemon checks and copies a private copy of the source)."""

    def extra_config(self):
        fake = os.path.join(self.files, "qemu-img")
        with open(fake, "w") as f:
            f.write(FAKE_QEMU_IMG)
        os.chmod(fake, 0o755)
        return f"qemu:\n  img_binary: {fake}\n"

    def test_rewritten_header_is_not_followed(self):
        secret = os.path.join(self.files, "secret.raw")
        evil = os.path.join(self.files, "evil.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", f"data_file={secret},data_file_raw=on",
                        evil, "1M"], check=True)
        with open(secret, "wb") as f:
            f.write(b"ROOT-ONLY-SECRET" * 65536)
        os.chmod(secret, 0o600)
        source = self.member_file("clean.qcow2", qcow2="1M")
        env = dict(os.environ, RACE_EVIL=evil, RACE_SOURCE=source)
        self.node.stop_daemon()
        self.node.start_daemon(extra_env=env)
        self.as_member("image", "import", source, "raced", want=0)
        with open(source, "rb") as f:  # the race did happen
            self.assertEqual(f.read(), open(evil, "rb").read())
        out = os.path.join(self.files, "out.raw")
        subprocess.run(["qemu-img", "convert", "-O", "raw",
                        os.path.join(self.node.state, "images", "raced.qcow2"), out], check=True)
        with open(out, "rb") as f:
            leaked = b"ROOT-ONLY-SECRET" in f.read()
        self.assertFalse(leaked, "the import read a root-only file named by the client")
        self.assertEqual(os.listdir(os.path.join(self.node.state, "images")), ["raced.qcow2"])


    def test_temp_name_swapped_for_a_symlink_is_not_followed(self):
        victim = os.path.join(self.files, "victim")
        with open(victim, "w") as f:
            f.write("precious\n")
        source = self.member_file("clean.qcow2", qcow2="1M")
        images = os.path.join(self.node.state, "images")
        env = dict(os.environ, RACE_PLANT=os.path.join(images, ".swapped.qcow2.partial"), RACE_VICTIM=victim)
        self.node.stop_daemon()
        self.node.start_daemon(extra_env=env)
        self.as_member("image", "import", source, "swapped", want=0)
        with open(victim, "rb") as f:
            self.assertEqual(f.read(64), b"precious\n", "qemu-img wrote through the planted symlink")
        info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", os.path.join(images, "swapped.qcow2")],
                                         capture_output=True, check=True).stdout)
        self.assertEqual((info["format"], info["virtual-size"]), ("qcow2", 1 << 20))


class BootFiles(Base):
    def setUp(self):
        super().setUp()
        base = self.member_file("base.qcow2", qcow2="64M")
        self.node.qvisor("image", "import", base, "base", check=0)
        self.kernel = self.member_file("vmlinuz", text="the member's kernel\n")
        self.instances = os.path.join(self.node.state, "instances")

    def create(self, name, *args, want):
        return self.as_member("vm", "create", name, "--image", "base", "--cpus", "1", "--memory", "128M", *args,
                              want=want)

    def test_files_the_member_cannot_read_are_refused(self):
        p = self.create("a", "--kernel", "/etc/shadow", want=77)
        self.assertIn("kernel /etc/shadow: permission denied", p.stderr)
        p = self.create("b", "--kernel", self.kernel, "--initrd", "/root/.bashrc", want=77)
        self.assertIn("initrd /root/.bashrc: permission denied", p.stderr)
        spec = self.member_file("vm.yaml", text="name: c\nimage: base\nkernel: /etc/shadow\n")
        self.as_member("vm", "create", "-f", spec, want=77)
        self.assertEqual(self.node.qvisor_json("vm", "list")["vms"], [])
        self.assertEqual(os.listdir(self.instances) if os.path.isdir(self.instances) else [], [])

    def test_the_vm_keeps_the_kernel_it_was_created_with(self):
        self.create("k", "--kernel", self.kernel, want=0)
        copy = os.path.join(self.instances, "k", "kernel")
        with open(self.kernel, "w") as f:
            f.write("changed after create\n")
        with open(copy) as f:
            self.assertEqual(f.read(), "the member's kernel\n")
        st = os.stat(copy)
        self.assertEqual((st.st_uid, st.st_mode & 0o777), (0, 0o640))  # the daemon's, not the member's
        vm = self.node.qvisor_json("vm", "show", "k")
        self.assertEqual(vm["spec"]["kernel"], copy)
        self.assertEqual(vm["kernel_source"], self.kernel)
        self.as_member("vm", "rm", "k", want=0)
        self.assertFalse(os.path.exists(copy))


class Flood(Base):
    def test_descriptors_beyond_the_limit_cost_the_daemon_nothing(self):
        mine = self.member_file("mine.qcow2", qcow2="1M")
        pid = self.node.proc.pid
        before = daemon_fds(pid)
        code = ("import array, json, os, socket, sys\n"
                "fd = os.open(sys.argv[2], os.O_RDONLY)\n"
                "out = []\n"
                "for i in range(50):\n"
                "    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
                "    s.connect(sys.argv[1])\n"
                "    req = {'id': i, 'method': 'image.import', 'fds': 100,\n"
                "           'params': {'source_fd': 0, 'name': 'x%d' % i}}\n"
                "    socket.send_fds(s, [json.dumps(req).encode() + b'\\n'], [fd] * 100)\n"
                "    out.append(s.makefile().readline())\n"
                "    s.close()\n"
                "print(json.dumps(out))\n")
        p = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-c",
                            code, self.node.socket, mine], capture_output=True, text=True, timeout=scaled(60))
        self.assertEqual(p.returncode, 0, p.stderr)
        for line in json.loads(p.stdout):
            self.assertIn("too many file descriptors", json.loads(line)["error"]["message"])
        self.assertEqual(settled_fds(pid, before), before)
        self.assertEqual(self.images(), [])
        # one request, one descriptor: fine
        self.as_member("image", "import", mine, "ok", want=0)
        self.assertEqual(settled_fds(pid, before), before)


if __name__ == "__main__":
    unittest.main()
