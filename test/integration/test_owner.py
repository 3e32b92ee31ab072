#!/usr/bin/env python3
"""VMs owned by a local user (issue 18; docs/protocol.md, "Who may do
what"), through the real daemon and CLI: root creates a VM for user A
(--owner, --slurm-job), as a Slurm prolog would.  A may start, stop,
restart, pause, resume, wait for, attach to, read the log of and ssh into
it; user B may not (77, and the message says whose VM it is), nor may A
remove it or create VMs.  vm show names the owner and the job; the owner
survives a daemon restart (spec.json).  The guest is a boot sector that
halts, under TCG: nothing boots, a start takes well under a second.

A and B are the system users nobody and daemon, run with setpriv (as
test_daemon.py and test_console.py do); the node has no socket group and
daemon.socket_access: everyone lets them connect."""

import json
import os
import pwd
import stat
import subprocess
import sys
import textwrap
import unittest

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "guest"))
import guestlib  # noqa: E402
from qvtest import Node, scaled  # noqa: E402

CONFIG = ("vm_defaults:\n  cpus: 1\n  memory: 64M\n  disk: 16M\n  stop_timeout: 30s\n  kill_timeout: 5s\n"
          "qemu:\n  accelerator: tcg\n"
          "resources:\n  cpu_overcommit: 100\n"
          "daemon:\n  socket_access: everyone\n")
A, B = "nobody", "daemon"
JOB = 4242

# An ssh that connects nowhere: prints its arguments and, for -i, the key's
# mode and first line, read as ssh would read it.
FAKE_SSH = textwrap.dedent("""\
    #!/usr/bin/env python3
    import os, stat, sys
    args = sys.argv[1:]
    print("ARGS " + " ".join(args))
    if "-i" in args:
        path = args[args.index("-i") + 1]
        st = os.stat(path)
        with open(path) as f:
            first = f.readline().strip()
        print(f"KEY {path} {stat.S_IMODE(st.st_mode):o} {st.st_uid} {first}")
    sys.exit(7)
""")

# One request on the control socket, as whoever runs it: prints the reply.
RAW_REQUEST = textwrap.dedent("""\
    import json, socket, sys
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sys.argv[1])
    s.sendall(json.dumps({"id": 1, "method": sys.argv[2], "params": json.loads(sys.argv[3])}).encode() + b"\\n")
    buf = b""
    while not buf.endswith(b"\\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    print(buf.decode().strip())
""")


class Owner(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if os.geteuid() != 0:
            raise unittest.SkipTest("needs root to run the CLI as other users")
        if not guestlib.have_qemu():
            raise unittest.SkipTest("qemu-system-x86_64 not found")
        cls.uid_a, cls.uid_b = pwd.getpwnam(A).pw_uid, pwd.getpwnam(B).pw_uid

    def setUp(self):
        self.node = Node(CONFIG, world_readable=True)
        self.addCleanup(self.node.cleanup)
        self.addCleanup(self.no_sanitizer_reports)  # runs first
        os.chmod(self.node.config, 0o644)
        self.bin = os.path.join(self.node.dir, "bin")
        os.mkdir(self.bin, 0o755)
        ssh = os.path.join(self.bin, "ssh")
        with open(ssh, "w") as f:
            f.write(FAKE_SSH)
        os.chmod(ssh, 0o755)
        self.env = dict(os.environ, PATH=self.bin + ":" + os.environ.get("PATH", "/usr/bin:/bin"))
        self.start_daemon()
        base = os.path.join(self.node.dir, "halt.raw")
        guestlib.write_halt_disk(base)
        self.qv("image", "import", base, "halt", "--format", "raw")

    def start_daemon(self):
        self.node.start_daemon()
        self.assertEqual(stat.S_IMODE(os.stat(self.node.socket).st_mode), 0o666)

    def no_sanitizer_reports(self):
        if self.node.proc and self.node.proc.poll() is None:
            self.node.stop_daemon()
        self.assertEqual(self.node.sanitizer_reports(), [], self.node.log()[-3000:])

    def qv(self, *args, user=None, want=0, timeout=None):
        return self.node.qvisor(*args, user=user, check=want, env=self.env, timeout=timeout or scaled(60))

    def show(self, name, user=None):
        return json.loads(self.qv("--json", "vm", "show", name, user=user).stdout)

    def state(self, name):
        return self.show(name)["state"]

    def create_job_vm(self, name="job"):
        self.qv("vm", "create", name, "--image", "halt", "--restart", "never", "--owner", A, "--slurm-job", str(JOB),
                "--ssh")

    def raw(self, user, method, params):
        """A request as user, on the socket itself: the reply object."""
        gid = pwd.getpwnam(user).pw_gid
        p = subprocess.run(["setpriv", f"--reuid={user}", f"--regid={gid}", "--clear-groups", sys.executable, "-c",
                            RAW_REQUEST, self.node.socket, method, json.dumps(params)],
                           capture_output=True, text=True, timeout=scaled(30), check=True)
        return json.loads(p.stdout)

    def refused_to_b(self, *args, message=None):
        p = self.qv(*args, user=B, want=77)
        self.assertIn(message or f"VM 'job' belongs to uid {self.uid_a} (job {JOB}); you are uid {self.uid_b}",
                      p.stderr)

    # -- tests --------------------------------------------------------------------

    def test_show_names_owner_and_job(self):
        self.create_job_vm()
        self.qv("vm", "create", "plain", "--image", "halt", "--no-seed")
        for user in (None, A, B):
            vm = self.show("job", user=user)
            self.assertEqual((vm["owner"], vm["owner_user"], vm["slurm_job"]), (self.uid_a, A, JOB))
            self.assertEqual((vm["spec"]["owner"], vm["spec"]["slurm_job"]), (self.uid_a, JOB))
        vm = self.show("plain")
        self.assertEqual((vm["owner"], vm["slurm_job"]), (None, None))
        self.assertNotIn("owner_user", vm)
        self.assertNotIn("owner", vm["spec"])
        vms = {v["name"]: v for v in json.loads(self.qv("--json", "vm", "list", user=B).stdout)["vms"]}
        self.assertEqual((vms["job"]["owner"], vms["job"]["owner_user"], vms["job"]["slurm_job"]),
                         (self.uid_a, A, JOB))
        self.assertIsNone(vms["plain"]["owner"])
        lines = self.qv("vm", "show", "job").stdout.splitlines()
        self.assertIn(f"owner: {self.uid_a}", [" ".join(ln.split()) for ln in lines])
        self.assertIn(f"owner_user: {A}", [" ".join(ln.split()) for ln in lines])
        self.assertIn(f"slurm_job: {JOB}", [" ".join(ln.split()) for ln in lines])
        # a uid as --owner, and what is refused before anything is made
        self.qv("vm", "create", "byuid", "--image", "halt", "--no-seed", "--owner", str(self.uid_b))
        self.assertEqual(self.show("byuid")["owner_user"], B)
        p = self.qv("vm", "create", "x1", "--image", "halt", "--owner", "qvisor-no-such-user", want=66)
        self.assertIn("--owner: no user named 'qvisor-no-such-user'", p.stderr)
        p = self.qv("vm", "create", "x2", "--image", "halt", "--owner", "2147483647", want=65)
        self.assertIn("--owner: uid 2147483647 is out of range", p.stderr)
        p = self.qv("vm", "create", "x3", "--image", "halt", "--slurm-job", "0", want=65)
        self.assertIn("spec: slurm_job: 0 is out of range (1 to 4294967294)", p.stderr)
        # -1 over the socket itself: the daemon's schema refuses it
        r = self.raw("root", "vm.create", {"spec": {"name": "x4", "image": "halt", "owner": -1}})
        self.assertEqual(r["error"]["code"], "EINVAL")
        self.assertIn("spec: owner", r["error"]["message"])
        self.assertNotIn("x4", self.qv("vm", "list").stdout)

    def test_owner_acts_on_its_vm_and_others_may_not(self):
        self.create_job_vm()
        # A: the life of its VM
        self.qv("vm", "start", "job", user=A)
        self.assertEqual(self.state("job"), "running")
        self.qv("vm", "pause", "job", user=A)
        self.assertEqual(self.state("job"), "paused")
        self.qv("vm", "resume", "job", user=A)
        self.qv("vm", "wait", "job", "--for", "running", "--timeout", "10s", user=A)
        self.qv("vm", "restart", "--force", "job", user=A, timeout=scaled(120))
        self.assertEqual(self.state("job"), "running")
        self.qv("vm", "log", "job", user=A)
        self.qv("vm", "console", "job", user=A)  # no terminal: stdin (empty) relayed until its end
        self.assertIn(f"console attached by uid {self.uid_a}", self.node.log())

        # B: nothing that acts on it, told why; reading and waiting as before
        for args in (("vm", "stop", "--force", "job"), ("vm", "restart", "--force", "job"), ("vm", "pause", "job"),
                     ("vm", "resume", "job"), ("vm", "start", "job"), ("vm", "log", "job"),
                     ("vm", "console", "job")):
            self.refused_to_b(*args)
        self.refused_to_b("vm", "rm", "--force", "job",
                          message="vm.remove needs root or membership in the group '(none configured)'")
        self.assertEqual(self.state("job"), "running")
        self.qv("vm", "wait", "job", "--for", "running", "--timeout", "10s", user=B)
        self.assertIn(f"refused vm.stop from uid {self.uid_b}", self.node.log())

        # A: neither remove it nor create, nor run the node
        p = self.qv("vm", "rm", "--force", "job", user=A, want=77)
        self.assertIn("vm.remove needs root or membership in the group", p.stderr)
        p = self.qv("vm", "create", "mine", "--image", "halt", "--no-seed", user=A, want=77)
        self.assertIn("vm.create needs root or membership in the group", p.stderr)
        # an owner for itself in the spec does not help
        p = self.qv("vm", "create", "mine", "--image", "halt", "--no-seed", "--owner", A, user=A, want=77)
        self.assertIn("vm.create needs root", p.stderr)
        self.qv("image", "rm", "halt", user=A, want=77)
        self.qv("cleanup", "--dry-run", user=A, want=77)
        self.assertEqual(self.state("job"), "running")

        # a VM of no owner, and one of another owner: as before for A
        self.qv("vm", "create", "plain", "--image", "halt", "--no-seed")
        p = self.qv("vm", "start", "plain", user=A, want=77)
        self.assertIn("vm.start needs root or membership in the group", p.stderr)
        self.qv("vm", "create", "bs", "--image", "halt", "--no-seed", "--owner", B)
        p = self.qv("vm", "start", "bs", user=A, want=77)
        self.assertIn(f"VM 'bs' belongs to uid {self.uid_b}; you are uid {self.uid_a}", p.stderr)
        # a VM that does not exist: refused as before, not "no such VM"
        self.qv("vm", "start", "nosuch", user=A, want=77)

        # A stops it; root still does everything
        self.qv("vm", "stop", "--force", "job", user=A, timeout=scaled(120))
        self.assertEqual(self.state("job"), "stopped")
        self.qv("vm", "start", "job")
        self.qv("vm", "pause", "job")
        self.qv("vm", "resume", "job")
        self.qv("vm", "stop", "--force", "job", timeout=scaled(120))
        self.qv("vm", "rm", "job")
        self.qv("vm", "rm", "plain")

    def test_ssh_key_only_for_the_owner(self):
        self.create_job_vm()
        self.qv("vm", "start", "job", user=A)
        created = self.show("job")["created_at"]
        # A gets the key through the daemon, in memory, mode 0600, its own
        p = self.qv("vm", "ssh", "job", "--", "true", user=A, want=7)
        key = [ln.split() for ln in p.stdout.splitlines() if ln.startswith("KEY ")]
        self.assertEqual(len(key), 1, p.stdout)
        self.assertRegex(key[0][1], r"^/proc/\d+/fd/\d+$")
        self.assertEqual(key[0][2:5], ["600", str(self.uid_a), "-----BEGIN"])
        args = p.stdout.splitlines()[0]
        self.assertIn(f"HostKeyAlias=qvisor-job-{created}", args)
        self.assertNotIn("UserKnownHostsFile", args)  # the instance directory is not A's
        self.assertIn(f"gave the SSH key of VM job to uid {self.uid_a}", self.node.log())
        # B: no key (ssh goes with B's own), and none on the socket either
        p = self.qv("vm", "ssh", "job", "--", "true", user=B, want=7)
        self.assertNotIn("KEY ", p.stdout)
        self.assertNotIn(" -i ", p.stdout)
        self.assertNotIn(f"to uid {self.uid_b}", self.node.log())
        r = self.raw(B, "vm.ssh_key", {"name": "job"})
        self.assertEqual(r["error"]["code"], "EPERM")
        self.assertIn(f"VM 'job' belongs to uid {self.uid_a} (job {JOB}); you are uid {self.uid_b}",
                      r["error"]["message"])
        self.assertEqual(self.raw(A, "vm.ssh_key", {"name": "job"})["result"]["name"], "job")
        # root reads the file itself, and keeps the VM's known_hosts
        p = self.qv("vm", "ssh", "job", "--", "true", want=7)
        inst = os.path.join(self.node.state, "instances", "job")
        self.assertIn(f"-i {inst}/ssh/id_ed25519", p.stdout)
        self.assertIn(f"UserKnownHostsFile={inst}/known_hosts", p.stdout)
        # a VM without a key: nothing to give
        self.qv("vm", "create", "nokey", "--image", "halt", "--no-seed", "--owner", A)
        r = self.raw(A, "vm.ssh_key", {"name": "nokey"})
        self.assertEqual(r["error"]["code"], "ENOENT")
        self.assertIn("has no SSH key pair of qvisor's", r["error"]["message"])
        st = os.stat(os.path.join(inst, "ssh", "id_ed25519"))
        self.assertEqual((st.st_uid, stat.S_IMODE(st.st_mode)), (0, 0o600))  # the file stays root's
        self.qv("vm", "stop", "--force", "job", user=A, timeout=scaled(120))

    def test_owner_survives_a_daemon_restart(self):
        self.create_job_vm()
        self.qv("vm", "start", "job", user=A)
        with open(os.path.join(self.node.state, "instances", "job", "spec.json")) as f:
            spec = json.load(f)
        self.assertEqual((spec["owner"], spec["slurm_job"]), (self.uid_a, JOB))
        self.assertEqual(self.node.stop_daemon(), 0, self.node.log()[-3000:])
        self.start_daemon()
        vm = self.show("job", user=A)
        self.assertEqual((vm["state"], vm["owner"], vm["slurm_job"]), ("running", self.uid_a, JOB))
        self.refused_to_b("vm", "stop", "--force", "job")
        self.qv("vm", "stop", "--force", "job", user=A, timeout=scaled(120))
        self.qv("vm", "start", "job", user=A)
        self.qv("vm", "rm", "--force", "job", timeout=scaled(120))


if __name__ == "__main__":
    unittest.main(verbosity=2)
