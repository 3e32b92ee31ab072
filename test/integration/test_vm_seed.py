#!/usr/bin/env python3
"""cloud-init seeds through the real CLI and daemon: `vm create` with
--hostname, --user, --ssh-key, --ssh, --password-hash, --package, --runcmd,
--user-data, --network-config and --no-seed (and the same keys in a spec
file) writes INSTANCE/seed.iso, read back here with a small Joliet reader;
bad input is refused with exit 65 (66 for a missing file) and leaves no
instance directory, also when the seed fails inside the daemon."""

import json
import os
import re
import socket
import stat
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from qvtest import Node, scaled  # noqa: E402

SECTOR = 2048


def iso_files(path):
    """{name: bytes} of the root directory of an ISO9660 image, read from its
    Joliet tree (the names as Windows shows them, which are ours unchanged)."""
    with open(path, "rb") as f:
        img = f.read()
    for i in range(16, 32):
        d = img[i * SECTOR:(i + 1) * SECTOR]
        if d[0] == 255:
            break
        if d[0] == 2 and d[1:6] == b"CD001" and d[88:91] in (b"%/@", b"%/C", b"%/E"):
            root = d[156:156 + 34]
            extent = int.from_bytes(root[2:6], "little")
            size = int.from_bytes(root[10:14], "little")
            break
    else:
        raise AssertionError(f"{path}: no Joliet volume descriptor")
    label = d[40:72].decode("utf-16-be").rstrip()
    data = img[extent * SECTOR:extent * SECTOR + size]
    out, pos = {}, 0
    while pos < len(data):
        n = data[pos]
        if n == 0:  # the rest of this sector is padding
            pos = (pos // SECTOR + 1) * SECTOR
            continue
        rec = data[pos:pos + n]
        name = rec[33:33 + rec[32]]
        if name not in (b"\0", b"\1"):
            ext = int.from_bytes(rec[2:6], "little")
            sz = int.from_bytes(rec[10:14], "little")
            out[name.decode("utf-16-be")] = img[ext * SECTOR:ext * SECTOR + sz].decode()
        pos += n
    return label, out


def yaml_quoted(text):
    """The string a quoted YAML flow scalar on one line stands for: 'single'
    ('' is a quote) or "double" (JSON's escapes are a subset of YAML's, enough
    for the tests).  Anything else (a plain scalar, which YAML 1.1 may turn
    into a bool or a date, or a mapping) is an AssertionError."""
    m = re.fullmatch(r"'((?:[^']|'')*)'", text)
    if m:
        return m.group(1).replace("''", "'")
    if re.fullmatch(r'"(?:[^"\\]|\\.)*"', text):
        return json.loads(text)
    raise AssertionError(f"not a quoted string: {text!r}")


def yaml_value(v):
    """A value of the generated user-data: ours (true, false) are plain."""
    return yaml_quoted(v) if v.startswith(("'", '"')) else v


def cloud_config(text):
    """The generated user-data, read the way its emitter writes it (block
    style, two-space indent, every user value quoted, never folded):
    {top-level key: value or [items]}, with "users" a list of mappings."""
    lines = text.split("\n")
    assert lines[0] == "#cloud-config", lines[0]
    out, key, sub = {}, None, None
    for line in lines[1:]:
        if not line:
            continue
        if line[0] not in " -":  # a top-level key, a value or a block after it
            key, _, v = line.partition(":")
            out[key] = yaml_value(v.strip()) if v.strip() else []
        elif key == "users" and line.startswith("- "):  # a user's first key
            out[key].append({})
            line = "  " + line[2:]
        if line.startswith("- "):  # an item of a top-level list
            out[key].append(yaml_quoted(line[2:]))
        elif line.startswith("  - "):  # an item of a user's list
            out[key][-1][sub].append(yaml_quoted(line[4:]))
        elif line.startswith("  "):  # a user's key
            sub, _, v = line[2:].partition(":")
            out[key][-1][sub] = yaml_value(v.strip()) if v.strip() else []
    return out


def vm_mac(name, nic=0):
    """sv_vm_mac(): FNV-1a over the name and the NIC index."""
    h = 2166136261
    for b in name.encode():
        h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    h = ((h ^ nic) * 16777619) & 0xFFFFFFFF
    return "0a:51:76:%02x:%02x:%02x" % ((h >> 16) & 255, (h >> 8) & 255, h & 255)


class VmSeed(unittest.TestCase):
    def setUp(self):
        self.node = Node("network:\n  dns: [10.0.0.53]\n")
        self.node.start_daemon()
        raw = os.path.join(self.node.dir, "base.raw")
        subprocess.run(["qemu-img", "create", "-q", "-f", "raw", raw, "1G"], check=True)
        self.node.qvisor("image", "import", raw, "base", "--format", "raw", check=0)
        self.key = os.path.join(self.node.dir, "alice")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "alice@test", "-f", self.key],
                       check=True)
        with open(self.key + ".pub") as f:
            self.pub = f.read().strip()

    def tearDown(self):
        self.node.cleanup()

    def path(self, *parts):
        return os.path.join(self.node.dir, *parts)

    def write(self, name, text):
        p = self.path(name)
        with open(p, "w") as f:
            f.write(text)
        return p

    def instance(self, name):
        return os.path.join(self.node.state, "instances", name)

    def instances(self):
        d = os.path.join(self.node.state, "instances")
        return sorted(os.listdir(d)) if os.path.isdir(d) else []

    def seed(self, name):
        label, files = iso_files(os.path.join(self.instance(name), "seed.iso"))
        self.assertEqual(label, "cidata")
        return files

    def test_hostname_keys_and_generated_pair(self):
        p = self.node.qvisor("vm", "create", "web-1", "--image", "base", "--hostname", "web.lab.example",
                             "--user", "alice", "--ssh-key", self.key + ".pub", "--ssh", check=0)
        inst = self.instance("web-1")
        key = os.path.join(inst, "ssh", "id_ed25519")
        # how to use the generated key
        self.assertIn(f"SSH key pair: {key} (login user alice)", p.stdout)
        self.assertIn("qvisor vm ssh web-1", p.stdout)
        self.assertIn(f"ssh -i {key} -p PORT alice@127.0.0.1", p.stdout)
        self.assertIn("qvisor vm show web-1", p.stdout)
        # the daemon names the VM's files for the CLI (vm ssh uses them)
        shown = self.node.qvisor_json("vm", "show", "web-1")
        self.assertEqual((shown["ssh_key"], shown["known_hosts"]), (key, os.path.join(inst, "known_hosts")))
        self.assertEqual(stat.S_IMODE(os.stat(key).st_mode), 0o600)
        with open(key + ".pub") as f:
            generated = f.read().strip()
        self.assertTrue(generated.endswith(" qvisor-web-1"), generated)

        files = self.seed("web-1")
        self.assertEqual(sorted(files), ["meta-data", "network-config", "user-data"])
        self.assertIn("local-hostname: 'web.lab.example'\n", files["meta-data"])
        with open(os.path.join(inst, "seed.id")) as f:
            self.assertIn(f"instance-id: '{f.read().strip()}'\n", files["meta-data"])
        ud = files["user-data"]
        self.assertTrue(ud.startswith("#cloud-config\n"), ud)
        self.assertIn("- name: 'alice'\n", ud)
        self.assertIn(f"  - '{self.pub}'\n", ud)
        self.assertIn(f"  - '{generated}'\n", ud)
        nc = files["network-config"]
        self.assertIn(f"macaddress: '{vm_mac('web-1')}'\n", nc)
        self.assertIn("dhcp4: true\n", nc)
        self.assertIn("- '10.0.0.53'\n", nc)  # the node's DNS servers

        # the spec keeps what was asked (keys as content, not paths)
        spec = self.node.qvisor_json("vm", "show", "web-1")["spec"]
        self.assertEqual((spec["hostname"], spec["user"], spec["seed"], spec["ssh_generate"]),
                         ("web.lab.example", "alice", True, True))
        self.assertEqual(spec["ssh_keys"], [self.pub])

        # defaults: host name = VM name, user qvisor, no key
        j = self.node.qvisor_json("vm", "create", "db", "--image", "base")
        self.assertEqual(j["spec"]["hostname"], "db")
        files = self.seed("db")
        self.assertIn("local-hostname: 'db'\n", files["meta-data"])
        self.assertIn("- name: 'qvisor'\n", files["user-data"])
        self.assertNotIn("ssh_authorized_keys", files["user-data"])
        self.assertIn(f"macaddress: '{vm_mac('db')}'\n", files["network-config"])

    def test_user_data_and_network_config_files(self):
        ud = "#cloud-config\n# verbatim, comments included\nruncmd: [ls]\n"
        nc = "version: 2\nethernets:\n  e:\n    match: {name: 'en*'}\n    dhcp4: true\n"
        self.node.qvisor("vm", "create", "custom", "--image", "base", "--user-data", self.write("ud", ud),
                         "--network-config", self.write("nc", nc), "--ssh-key", self.key + ".pub",
                         "--hostname", "custom.lab", check=0)
        files = self.seed("custom")
        self.assertEqual(files["user-data"], ud)
        self.assertEqual(files["network-config"], nc)
        self.assertIn("local-hostname: 'custom.lab'\n", files["meta-data"])
        # the key still reaches the guest: our cloud-config goes to vendor-data
        self.assertIn(f"  - '{self.pub}'\n", files["vendor-data"])

    def test_spec_file(self):
        spec = self.write("vm.yaml", (
            "name: from-file\nimage: base\nhostname: ff\n"
            f"ssh_keys:\n  - {self.pub}\n"
            "user_data: |\n  #!/bin/sh\n  echo hi\n"))
        other = self.write("bob.pub", "# bob's keys\n\nssh-ed25519 "
                           "AAAAC3NzaC1lZDI1NTE5AAAAIOh54Q8UvAbXSCA9tVmjO0QQq2/b8dSeA2SjMDuPQnep bob\n")
        j = self.node.qvisor_json("vm", "create", "-f", spec, "--ssh-key", other)
        self.assertEqual(len(j["spec"]["ssh_keys"]), 2)  # --ssh-key adds to the file's
        files = self.seed("from-file")
        self.assertEqual(files["user-data"], "#!/bin/sh\necho hi\n")
        self.assertIn(f"'{self.pub}'", files["vendor-data"])
        self.assertIn(" bob'", files["vendor-data"])
        self.assertIn("local-hostname: 'ff'", files["meta-data"])

    HASH = "$6$saltsalt$qFmFH.bQmmtXzyBY0s9v7Oicd2z4XSIecDzlB5KiA2/jctKu9YterLp8wwnSq.qc.eoxqOmSuNp2xS0ktL3nh/"

    def test_password_packages_runcmd(self):
        cmds = ['echo "a: b"; ls', "- c", "printf '%s\\n' it''s > /root/ok", "yes"]
        args = ["vm", "create", "pk", "--image", "base", "--user", "alice", "--password-hash", self.HASH,
                "--package", "qemu-guest-agent", "--package", "nginx=1.22.1-9"]
        for c in cmds:
            args += ["--runcmd", c]
        j = self.node.qvisor_json(*args)
        self.assertEqual((j["spec"]["password_hash"], j["spec"]["packages"], j["spec"]["runcmd"]),
                         (self.HASH, ["qemu-guest-agent", "nginx=1.22.1-9"], cmds))
        ud = self.seed("pk")["user-data"]
        cc = cloud_config(ud)
        # each value one quoted string: no "a" key, no nested list
        self.assertEqual(cc["runcmd"], cmds, ud)
        self.assertEqual(cc["packages"], ["qemu-guest-agent", "nginx=1.22.1-9"], ud)
        self.assertEqual(len(cc["users"]), 1, ud)
        user = cc["users"][0]
        self.assertEqual((user["name"], user["passwd"], user["lock_passwd"]), ("alice", self.HASH, "false"), ud)
        self.assertEqual(sorted(cc), ["hostname", "manage_etc_hosts", "packages", "runcmd", "users"])

        # without them: no packages, no runcmd, password login locked
        self.node.qvisor("vm", "create", "plain", "--image", "base", check=0)
        cc = cloud_config(self.seed("plain")["user-data"])
        self.assertNotIn("packages", cc)
        self.assertNotIn("runcmd", cc)
        self.assertNotIn("passwd", cc["users"][0])
        self.assertEqual(cc["users"][0]["lock_passwd"], "true")

    def test_password_packages_runcmd_from_a_spec_file(self):
        # the options add to the file's lists, after them; the hash replaces
        spec = self.write("vm.yaml", (
            "name: ff\nimage: base\n"
            "password_hash: '$y$j9T$F5Jx5fExrKuPp53xLKQ..1$X3DX6M94c7o.9agCG9G317fhZg9SqC.5i5rd.RhAtQ7'\n"
            "packages: [curl, 'libc6=2:2.36-9+deb12u4']\n"
            "runcmd:\n  - 'echo \"from: file\" > /root/a'\n  - touch /root/b\n"))
        j = self.node.qvisor_json("vm", "create", "-f", spec, "--package", "jq", "--runcmd", "echo cli",
                                  "--password-hash", self.HASH)
        self.assertEqual(j["spec"]["packages"], ["curl", "libc6=2:2.36-9+deb12u4", "jq"])
        cc = cloud_config(self.seed("ff")["user-data"])
        self.assertEqual(cc["packages"], ["curl", "libc6=2:2.36-9+deb12u4", "jq"])
        self.assertEqual(cc["runcmd"], ['echo "from: file" > /root/a', "touch /root/b", "echo cli"])
        self.assertEqual(cc["users"][0]["passwd"], self.HASH)

    def test_password_packages_runcmd_refused(self):
        ud = self.write("ud", "#cloud-config\n")
        cases = [
            (["--password-hash", "hunter2"], "spec: password_hash: this does not look like a password hash"),
            (["--password-hash", "$6$salt$hash\n"], "spec: password_hash: the password hash must be one line"),
            (["--password-hash", "$6$onlysalt"], "no SALT$HASH after the method"),
            (["--package", "curl wget"], "spec: packages[0]: 'curl wget' is not one package name: give one "
                                         "package per item"),
            (["--package", "curl", "--package", "-oDebug::pkgProblemResolver=1"],
             "spec: packages[1]: '-oDebug::pkgProblemResolver=1' is not a package name"),
            (["--package", "curl;reboot"], "'curl;reboot' is not a package name"),
            (["--runcmd", "ls", "--runcmd", "echo a\necho b"], "spec: runcmd[1]: a command must be one line"),
            (["--runcmd", "echo\ta"], "spec: runcmd[0]: the command holds the control character U+0009"),
            (["--runcmd", ""], "spec: runcmd[0]: list items must not be empty"),
            (["--runcmd", "x" * 4097], "is longer than 4096 bytes"),
            (["--runcmd", "echo \udcff"], "--runcmd: the value is not valid UTF-8"),
            (["--runcmd", "true"] * 65, "spec: runcmd: at most 64 items, got 65"),
            (["--user-data", ud, "--package", "curl"],
             "spec: packages and user_data exclude each other: user_data replaces the generated user-data"),
            (["--user-data", ud, "--runcmd", "ls"], "spec: runcmd and user_data exclude each other"),
            (["--user-data", ud, "--password-hash", self.HASH], "spec: password_hash and user_data exclude"),
            (["--no-seed", "--package", "curl"], "spec: packages needs the cloud-init seed"),
        ]
        for extra, msg in cases:
            p = self.node.qvisor("vm", "create", "bad", "--image", "base", *extra)
            self.assertEqual(p.returncode, 65, (extra[:4], p.stderr))
            self.assertIn(msg, p.stderr, extra[:4])
        # a password is never echoed back
        p = self.node.qvisor("vm", "create", "bad", "--image", "base", "--password-hash", "correct horse")
        self.assertEqual(p.returncode, 65, p.stderr)
        self.assertIn("not the password itself (e.g. from `mkpasswd -m sha-512`", p.stderr)
        self.assertNotIn("horse", p.stderr)

        # from a spec file: its line and column; an unquoted "a: b" is a
        # mapping, refused rather than taken apart
        for text, msg in (
                ("runcmd:\n  - ls\n  - echo a: b\n", "bad.yaml:5:5: runcmd: list items must be single values"),
                ("packages:\n  - 'curl wget'\n", "bad.yaml:4:5: packages: 'curl wget' is not one package name"),
                ("password_hash: hunter2\n", "bad.yaml:3:16: password_hash: this does not look like a password"),
                ("user_data: '#!/bin/sh'\nruncmd: [ls]\n", "spec: runcmd and user_data exclude each other")):
            spec = self.write("bad.yaml", "name: bad\nimage: base\n" + text)
            p = self.node.qvisor("vm", "create", "-f", spec)
            self.assertEqual(p.returncode, 65, (text, p.stderr))
            self.assertIn(msg, p.stderr, text)
        self.assertEqual(self.instances(), [])
        self.assertEqual(self.node.qvisor_json("vm", "list")["vms"], [])

    def test_help_names_the_options(self):
        p = self.node.qvisor("vm", "create", "--help", check=0)
        for word in ("--password-hash HASH", "mkpasswd -m sha-512", "--package NAME[=VERSION]", "--runcmd CMD",
                     "password_hash, packages,", "excludes\n                           --password-hash"):
            self.assertIn(word, p.stdout)

    def test_no_seed(self):
        j = self.node.qvisor_json("vm", "create", "bare", "--image", "base", "--no-seed")
        self.assertFalse(j["spec"]["seed"])
        self.assertNotIn("hostname", j["spec"])
        self.assertEqual(sorted(os.listdir(self.instance("bare"))), ["disk.qcow2", "spec.json", "state.json"])

    def test_bad_input_is_refused_and_leaves_nothing(self):
        bad_ud = self.write("bad-ud.yaml", "#cloud-config\nruncmd: [ls\n")
        cases = [
            (["--user-data", bad_ud], 65, f"{bad_ud}: not valid YAML: line 3"),
            (["--user-data", self.write("list.yaml", "#cloud-config\n- a\n")], 65, "top level must be a mapping"),
            (["--network-config", self.write("nc", "- eth0\n")], 65, "nc: line 1: the top level must be a mapping"),
            (["--ssh-key", self.key], 65, f"{self.key}: line 1: this is a private key; give the public one"),
            (["--ssh-key", self.write("junk.pub", "hello\n")], 65, "junk.pub: line 1: 'hello' is not an SSH public key"),
            (["--ssh-key", self.write("empty.pub", "\n# nothing\n")], 65, "empty.pub: no SSH public key"),
            (["--ssh-key", self.path("missing.pub")], 66, "missing.pub"),
            (["--user-data", self.path("missing")], 66, "cannot read user-data file"),
            (["--hostname", "web_1"], 65, "spec: hostname: 'web_1' is not a valid host name"),
            (["--user", "Root"], 65, "spec: user: 'Root' is not a valid user name"),
            (["--no-seed", "--ssh"], 65, "spec: ssh_generate needs the cloud-init seed"),
            (["--no-seed", "--user-data", self.write("ok", "#cloud-config\n")], 65, "spec: user_data needs"),
        ]
        for extra, code, msg in cases:
            p = self.node.qvisor("vm", "create", "bad", "--image", "base", *extra)
            self.assertEqual(p.returncode, code, (extra, p.stderr))
            self.assertIn(msg, p.stderr, extra)
        spec = self.write("bad.yaml", "name: bad\nimage: base\nssh_keys:\n  - ssh-rsa bm9wZQ==\n")
        p = self.node.qvisor("vm", "create", "-f", spec)
        self.assertEqual(p.returncode, 65, p.stderr)
        self.assertIn(f"{spec}:4:5: ssh_keys: 'ssh-rsa bm9wZQ==…' is not an SSH public key", p.stderr)

        # the daemon checks too (a client that is not our CLI)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(scaled(10))
        s.connect(self.node.socket)
        req = {"id": 1, "method": "vm.create",
               "params": {"spec": {"name": "bad", "image": "base", "user_data": "#cloud-config\n- a\n",
                                   "ssh_keys": [self.pub]}}}
        s.sendall((json.dumps(req) + "\n").encode())
        reply = json.loads(s.makefile("rb").readline())
        s.close()
        self.assertEqual(reply["error"]["code"], "EINVAL", reply)
        self.assertIn("spec: user_data: line 2: the top level must be a mapping", reply["error"]["message"])
        self.assertEqual(self.instances(), [])

    def test_seed_failure_in_the_daemon_rolls_back(self):
        # a seed the daemon cannot write (here: a malformed SOURCE_DATE_EPOCH)
        # fails the create after the disk was made, and nothing stays
        self.node.stop_daemon()
        self.node.start_daemon(extra_env={"SOURCE_DATE_EPOCH": "yesterday"})
        p = self.node.qvisor("vm", "create", "half", "--image", "base", "--ssh")
        self.assertEqual(p.returncode, 65, p.stderr)
        self.assertIn("SOURCE_DATE_EPOCH", p.stderr)
        self.assertEqual(self.instances(), [])
        self.assertEqual(self.node.qvisor_json("vm", "list")["vms"], [])
        self.node.stop_daemon()
        self.node.start_daemon(extra_env={"SOURCE_DATE_EPOCH": "1700000000"})
        self.node.qvisor("vm", "create", "half", "--image", "base", "--ssh", check=0)
        self.assertEqual(sorted(os.listdir(self.instance("half"))),
                         ["disk.qcow2", "seed.id", "seed.iso", "spec.json", "ssh", "state.json"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
