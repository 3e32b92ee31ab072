#!/usr/bin/env python3
"""Slurm jobs' VMs end to end (issue 18; docs/slurm.md, "How it is
tested"): the one-machine Slurm cluster (slurmcluster.py) with a qvisor
daemon per node, qvisor's SPANK plugin in plugstack.conf, jobs submitted
with --vm-image.

Each of the three nodes has its own fake sysfs tree (test/fakesysfs) with
two GPUs, 0000:01:00.0 (IOMMU group 1, with its audio function) and
0000:02:00.0 (group 2), its own daemon (in the node's network namespace,
started with the tree's environment, QEMU replaced by test/vfio/fake-qemu.py,
which runs the real QEMU without the fake devices; the base image a halting
boot sector under TCG) and its config at DIR/NODE/config.yaml, the plugin's
config=DIR/%n/config.yaml, with the job VM profile DIR/NODE/slurm/tiny.yaml:
the tiny test guest on a nat NIC.  gres.conf holds exactly what
`qvisor slurm gres --node NODE --device-dir D` prints for each node (D: the
node's char devices named 1 and 2), and `qvisor slurm check` accepts it.
The prolog and epilog run in the node's namespaces as children of its
slurmd and reach the daemon through its socket's path.

- A job with --vm-image=tiny gets a VM that boots, and the job's own
  script finds its address in the AdminComment, waits for the guest's
  agent and pings it from the node's network: the VM's MAC answers.
- GPU jobs run their VM slurm-JOBID on the node Slurm picked and no other,
  with the PCI addresses of the job's GRES indexes (fake QEMU's argv has
  them), the job's CPUs, memory, user (owner) and id; AdminComment says
  vm=, node=, gpus=; no PCI address is held by two running VMs.  When the
  job ends the VM is gone (forced after KillWait, 5 s: the halting guest
  ignores the power button) and the GPUs are the host's again.
- A job whose GPUs are busy waits PENDING (Resources) and runs on the GPU a
  cancelled job gave back; a time limit ends the job and its VM alike.
- --vm-keep-disk leaves the VM stopped with its GPUs given back (and, a
  known limit, still claimed: a later job given one drains the node).
- --vm-ssh-key's key is in the VM's spec.
- Another user cannot stop the job's VM (77); the job's user can.
- A failed prolog (no such image) drains the node with qvisor's reason,
  which Slurm keeps, and Slurm requeues the job held; a GPU that hangs at
  give-back drains the node naming it, and one `qvisor cleanup` gives both
  GPUs back once the card answers.
- The node's qvisor daemon killed (SIGKILL) during a job and started
  again adopts the running VM with its GPUs, and the epilog at the job's
  end stops it and gives the GPUs back; a daemon that is down when the job
  ends drains the node with qvisor's reason (the VM keeps its GPUs, no
  other job gets them), and the epilog run again by hand once it is back
  cleans up.  slurmd restarted during a job: the job and its VM go on, a
  later job gets the other GPU, both epilogs run.
- Nothing is left behind: processes, namespaces, mounts, directories.

Exits 77 (skipped) without Slurm and munge, root, umockdev, QEMU or the
plugin (libslurm-dev).  The tiny guest is built when it is not cached
(test/guest/build-tiny-guest, docs/test-guest.md)."""

import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "guest"))
sys.path.insert(0, os.environ.get("QVISOR_FAKESYSFS_DIR", os.path.join(HERE, "..", "fakesysfs")))
from qvtest import QVISOR, Node, can_raise_memlock, scaled, wait_for  # noqa: E402
import guestlib  # noqa: E402
import slurmcluster  # noqa: E402
from slurmcluster import SlurmCluster, gres_indexes, leftovers  # noqa: E402
from fakesysfs import FakeSys, umockdev_available  # noqa: E402

FAKE_QEMU = os.path.join(HERE, "..", "vfio", "fake-qemu.py")
GPUS = ["0000:01:00.0", "0000:02:00.0"]     # Slurm's index 0 and 1 on every node
SLOT = {"0000:01:00.0": ["0000:01:00.1"]}   # the functions that go along (its audio)
NATIVE = {"0000:01:00.0": "nouveau", "0000:02:00.0": "amdgpu"}    # their host drivers
IMAGE = "halt"
PROFILE = "tiny"                            # a job VM profile: the tiny guest on a nat NIC
USER, OTHER = "nobody", "daemon"            # a job's user and someone else
NAT = ("10.78.0.0/24", "10.78.0.1")         # every node's NAT network, in its own namespace
CONFIG = ("daemon:\n  socket_access: everyone\n"     # as docs/slurm.md says: the job's user connects
          "vm_defaults:\n  cpus: 1\n  memory: 64M\n  disk: 16M\n  stop_timeout: 30s\n  kill_timeout: 3s\n"
          f"qemu:\n  binary: {os.path.abspath(FAKE_QEMU)}\n  accelerator: tcg\n"
          "vfio:\n  sysfs_timeout: 1s\n"
          f"network:\n  nat_bridge: qvs-br0\n  nat_subnet: {NAT[0]}\n  nat_gateway: {NAT[1]}\n"
          "resources:\n  cpu_overcommit: 100\n")

# holds its node until the test creates jobs_dir/release.ID
HOLD = "while [ ! -e release.$SLURM_JOB_ID ]; do sleep 0.2; done"


def plugin_path():
    p = os.environ.get("QVISOR_SPANK_PLUGIN")
    if p:
        return p
    return os.path.join(os.environ.get("QVISOR_BUILD_ROOT", ""), "slurm", "qvisor-spank.so")


def qvisor_path():
    return QVISOR if os.path.isabs(QVISOR) else shutil.which(QVISOR)


def scenario():
    """The default fake host with its NIC in an IOMMU group of its own: in
    the default tree it shares group 2 with GPU 0000:02:00.0, which `slurm
    gres` offers but a VM gets only with take-group (docs/slurm.md)."""
    with open(os.path.join(os.path.dirname(sys.modules["fakesysfs"].__file__), "scenario-default.json")) as f:
        s = json.load(f)
    for d in s["devices"]:
        if d["bdf"] == "0000:03:00.0":
            d["iommu_group"] = 6
    return s


class QvisorCluster:
    """A SlurmCluster whose every node runs a qvisor daemon (see the module's
    doc).  cleanup() stops the daemons, kills what QEMU they left, and
    removes the trees and directories, after the cluster's own clean-up
    (add_cleanup: also at exit and on SIGTERM)."""

    def __init__(self, nodes=3, **slurm_kw):
        self.names = [f"node{i}" for i in range(1, nodes + 1)]
        self.slurm_kw = slurm_kw
        self.dir = None
        self.fs = {}
        self.qv = {}
        self.slurm = None
        self._cleaned = False

    @staticmethod
    def missing():
        why = slurmcluster.missing()
        if why:
            return why
        if not os.path.exists(plugin_path()):
            return f"no SPANK plugin at {plugin_path()} (libslurm-dev)"
        if not umockdev_available():
            return "umockdev is not installed"
        if not guestlib.have_qemu():
            return "qemu-system-x86_64 not found"
        return None

    def start(self):
        why = self.missing()
        if why:
            raise unittest.SkipTest(why)
        # named as the cluster's directories: reap_stale() removes it too
        self.dir = tempfile.mkdtemp(prefix=f"{slurmcluster.PREFIX}-{os.getpid()}-qvisor-")
        os.chmod(self.dir, 0o755)
        try:
            self._make_nodes()
            plug = f"required {plugin_path()} qvisor={qvisor_path()} config={self.dir}/%n/config.yaml\n"
            self.slurm = SlurmCluster(nodes=len(self.names), gpu_names=["1", "2"], gres_lines=self.gres_lines,
                                      plugstack=plug, extra_conf="PrologFlags=Alloc\n", **self.slurm_kw)
            self.slurm.add_cleanup(self.cleanup)
            self.slurm.start()
            for n in self.names:
                self._start_daemon(n)
                self._import_image(n)
        except BaseException:
            self.cleanup()
            raise
        return self

    def _make_nodes(self):
        halt = os.path.join(self.dir, "halt.raw")
        guestlib.write_halt_disk(halt)
        os.chmod(halt, 0o644)
        guest = guestlib.build_tiny_guest()
        for n in self.names:
            fs = FakeSys(os.path.join(self.dir, "sys", n), scenario=scenario())
            # the daemon reads /proc through the same root (pid identity): the real one
            shutil.rmtree(os.path.join(fs.root, "proc"))
            os.symlink("/proc", os.path.join(fs.root, "proc"))
            self.fs[n] = fs
            node = Node(CONFIG, dir=os.path.join(self.dir, n))
            os.chmod(node.dir, 0o755)       # the job's user reaches the socket
            os.chmod(node.config, 0o644)
            self.qv[n] = node
            # the job VM profile --vm-image=tiny names: slurm/ next to the
            # config, as /etc/qvisor/slurm/ on a real node
            os.mkdir(os.path.join(node.dir, "slurm"))
            with open(os.path.join(node.dir, "slurm", f"{PROFILE}.yaml"), "w") as f:
                f.write(f"image: {IMAGE}\nkernel: {guest.kernel}\ninitrd: {guest.initrd}\n"
                        f"append: {guestlib.cmdline(['qv.net=seed', 'qv.agent=on'])}\nnets: [nat]\n")

    def qemu_log(self, node):
        return os.path.join(self.dir, f"qemu-{node}.jsonl")

    def _start_daemon(self, n):
        node = self.qv[n]
        env = self.fs[n].env(asan=False)
        env["FAKE_QEMU_LOG"] = self.qemu_log(n)
        if not can_raise_memlock():
            env["QVISOR_TEST_MEMLOCK_BEST_EFFORT"] = "1"
        # in the node's network namespace, as a node's daemon shares the
        # node's network with slurmd and the jobs: its VMs' NAT network is
        # the node's, reached from inside a job
        node.start_daemon(extra_env={k: v for k, v in env.items() if os.environ.get(k) != v},
                          wrap=["setpriv", "--pdeathsig", "KILL", "--", "nsenter",
                                f"--net=/run/netns/{self.slurm.node_ns(n)}", "--"])

    def _import_image(self, n):
        self.qv[n].qvisor("image", "import", os.path.join(self.dir, "halt.raw"), IMAGE, "--format", "raw", check=0)

    def gres_lines(self, node, device_dir):
        p = self.fs[node].run([qvisor_path(), "--config", self.qv[node].config, "slurm", "gres", "--node", node,
                               "--device-dir", device_dir], capture_output=True, text=True)
        if p.returncode != 0:
            raise AssertionError(f"qvisor slurm gres: exit {p.returncode}: {p.stderr}")
        return p.stdout

    def cleanup(self):
        if self._cleaned:
            return
        self._cleaned = True
        if self.slurm:
            self.slurm.cleanup()    # no prolog or epilog runs any more; calls us again: a no-op
        for n in self.names:
            if n in self.fs:
                self.fs[n].release()
            if n in self.qv:
                self.qv[n].cleanup()
        if self.dir and os.environ.get("QVISOR_TEST_KEEP_SLURM") != "1":
            shutil.rmtree(self.dir, ignore_errors=True)

    # --- looking at the daemons ---------------------------------------------

    def vms(self, node):
        """{name: vm.list entry} of node's daemon."""
        return {v["name"]: v for v in self.qv[node].qvisor_json("vm", "list")["vms"]}

    def show(self, node, vm):
        return self.qv[node].qvisor_json("vm", "show", vm)

    def gpu_holders(self, node):
        """{PCI address: VM holding it or None} from node's gpu.list."""
        return {g["address"]: g["vm"] for g in self.qv[node].qvisor_json("gpu", "list")["gpus"]
                if g["address"] in GPUS}

    def qemu_starts(self, node):
        try:
            with open(self.qemu_log(node)) as f:
                return [json.loads(line) for line in f]
        except FileNotFoundError:
            return []


CLUSTER = None


def setUpModule():
    global CLUSTER
    CLUSTER = QvisorCluster().start()


def tearDownModule():
    if CLUSTER is None:
        return
    tag, dirs = CLUSTER.slurm.tag if CLUSTER.slurm else "", (CLUSTER.slurm.dir if CLUSTER.slurm else None, CLUSTER.dir)
    CLUSTER.cleanup()
    left = [x for d in dirs for x in leftovers(tag, d)]
    assert left == [], left


ACTIVE = ("PENDING", "RUNNING", "CONFIGURING", "SUSPENDED", "COMPLETING", "REQUEUED", "REQUEUE_HOLD")


class Base(unittest.TestCase):
    """One cluster for the module; each test leaves it as it found it: its
    jobs cancelled and gone, drained nodes resumed, no VM left on any
    daemon, every node idle (also when it fails)."""

    def setUp(self):
        self.q = CLUSTER
        self.c = CLUSTER.slurm
        self.jobs = []

    def tearDown(self):
        if not getattr(self._outcome, "success", True):
            print(self.c.log_tail(), file=sys.stderr)
            for n in self.q.names:
                print(f"--- qvisor daemon of {n}\n{self.q.qv[n].log()[-3000:]}", file=sys.stderr)
        for n in self.q.names:     # a test that killed a daemon and failed
            if self.q.qv[n].proc.poll() is not None:
                self.q._start_daemon(n)
        for fs in self.q.fs.values():     # no give-back may hang past the test
            fs.release()
            fs.clear_faults()
        active = [j["id"] for j in self.c.squeue() if j["id"] in self.jobs and j["state"] in ACTIVE]
        if active:
            self.c.scancel(*active)
        wait_for(lambda: not [j for j in self.c.squeue() if j["id"] in self.jobs and j["state"] in ACTIVE], 90,
                 "the test's jobs to end", interval=0.2)
        for n, state in self.c.node_states().items():
            if state.startswith("drain"):
                self.c.client("scontrol", "update", f"NodeName={n}", "State=RESUME")
        for n in self.q.names:
            for vm in self.q.vms(n):
                self.q.qv[n].qvisor("vm", "rm", vm, "--force", check=0, timeout=scaled(60))
        self.c.wait_nodes_state(("idle",), 90)

    def submit(self, *opts, user=None, script=None):
        job = self.c.sbatch(script, *opts, user=user)
        self.jobs.append(job)
        return job

    def vm_job(self, node, gpus=1, *opts, image=IMAGE, user=None):
        """A job with a VM on node and gpus GPUs that runs until release()."""
        return self.submit(f"--vm-image={image}", "-w", node, f"--gres=gpu:{gpus}", *opts, "--wrap", HOLD,
                           user=user)

    def qvisor_as(self, node, user, *args):
        """qvisor as user, on node (its namespaces), on the node's daemon."""
        gid = pwd.getpwnam(user).pw_gid
        return self.c.node_exec(node, ["setpriv", f"--reuid={user}", f"--regid={gid}", "--clear-groups",
                                       qvisor_path(), "--config", self.q.qv[node].config, *args])

    def release(self, job, user=None):
        d = self.c.user_dir(user) if user else self.c.jobs_dir
        open(os.path.join(d, f"release.{job}"), "w").close()

    def admin_comment(self, job):
        """The job's AdminComment, whole (parse_records splits its "vm=..."
        words into keys of their own); "" when it has none."""
        out = self.c.client("scontrol", "show", "job", str(job)).stdout
        m = re.search(r"^\s*AdminComment=(.*?)\s*$", out, re.M)
        return m.group(1) if m else ""

    def wait_vm_up(self, job, timeout=60):
        """Until the job runs and its prolog is done (AdminComment set):
        scontrol_show_job() with the whole AdminComment."""
        def up():
            j = self.c.wait_job_state(job, "RUNNING", 30)
            j["AdminComment"] = self.admin_comment(job)
            return j if j["AdminComment"].startswith("qvisor ") else None
        return wait_for(up, timeout, f"job {job}'s VM (AdminComment)", interval=0.2)

    def job_gpus(self, job):
        """The PCI addresses of the GPUs Slurm gave a running job."""
        j = self.c.scontrol_show_job(job)
        return [GPUS[i] for d in j["details"] for i in gres_indexes(d.get("GRES"))]

    def assert_no_gpu_twice(self):
        """No PCI address held by two VMs: across every node's running VMs,
        and gpu.list's holder is the VM whose spec names the GPU.  Returns
        {node: {address: VM}} of the running VMs."""
        seen = {}
        for n in self.q.names:
            held = seen[n] = {}
            for name, v in self.q.vms(n).items():
                if v["state"] not in ("running", "starting", "paused"):
                    continue
                for g in v["gpus"] or []:
                    self.assertNotIn(g, held, f"{n}: {g} held by {held.get(g)} and {name}")
                    held[g] = name
            holders = self.q.gpu_holders(n)
            for g, vm in held.items():
                self.assertEqual(holders[g], vm, f"{n}: gpu.list says {g} is {holders[g]}'s, not {vm}'s")
        return seen

    def assert_gpus_back(self, node, gpus=GPUS, holder=None):
        """gpus of node are the host's again: no binding record, the native
        driver (the fake tree's), held by no VM (or by holder, a stopped VM
        that keeps them in its spec)."""
        listed = {g["address"]: g for g in self.q.qv[node].qvisor_json("gpu", "list")["gpus"]}
        for g in gpus:
            self.assertIsNone(listed[g]["binding"], f"{node}: {g}")
            self.assertNotIn("stuck_reason", listed[g])
            self.assertEqual(listed[g]["vm"], holder, f"{node}: {g}")
            self.assertEqual(self.q.fs[node].driver(g), NATIVE[g], f"{node}: {g}'s driver")

    def assert_epilog_forced_after_kill_wait(self, node, job):
        """The epilog's line in slurmd's log (the plugin relays qvisor's
        output): the halting guest got KillWait (5 s) to shut down."""
        with open(self.c.slurmd_log(node)) as f:
            log = f.read()
        self.assertRegex(log, rf"qvisor: VM slurm-{job} of job {job} stopped \(forced, [^)]* after 5\.\ds\)")

    def drain_reason(self, node):
        return self.c.scontrol_show_node(node).get("Reason", "")

    def assert_vm_gone(self, job):
        for n in self.q.names:
            self.assertNotIn(f"slurm-{job}", self.q.vms(n), n)


class Jobs(Base):
    def test_gres_conf_is_what_qvisor_prints(self):
        gres = os.path.join(self.c.dir, "etc", "gres.conf")
        with open(gres) as f:
            text = f.read()
        for n in self.q.names:
            lines = self.q.gres_lines(n, self.c.device_dir(n))
            self.assertIn(lines, text)
            self.assertEqual([ln.split("#")[0].split() for ln in lines.splitlines() if not ln.startswith("#")],
                             [["NodeName=" + n, "Name=gpu", "File=" + d] for d in self.c.gpu_devices(n)])
            for d in self.c.gpu_devices(n):
                self.assertTrue(stat.S_ISCHR(os.stat(d).st_mode), d)
            p = self.q.fs[n].run([qvisor_path(), "--config", self.q.qv[n].config, "slurm", "check", "--node", n,
                                  "--gres-conf", gres, "--slurm-conf", self.c.conf, "--device-dir",
                                  self.c.device_dir(n)], capture_output=True, text=True)
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            self.assertIn("OK    gres.conf", p.stdout)
            self.assertIn(f"NodeName {n} has Gres of 2 GPUs", p.stdout)
            self.assertEqual(self.c.scontrol_show_node(n)["Gres"], "gpu:2")

    def test_gpu_jobs_run_their_vms_on_the_right_nodes(self):
        jobs = {self.vm_job("node1"): "node1", self.vm_job("node2", 2, "-c", "2", "--mem=300M"): "node2",
                self.vm_job("node1"): "node1"}
        for job, node in jobs.items():
            j = self.wait_vm_up(job)
            self.assertEqual(j["NodeList"], node)
            want = self.job_gpus(job)
            vm = f"slurm-{job}"
            self.assertIn(f"qvisor vm={vm} node={node} gpus={','.join(want)}", j["AdminComment"])
            for other in self.q.names:
                self.assertEqual(vm in self.q.vms(other), other == node, f"{vm} on {other}")
            s = self.q.show(node, vm)
            self.assertEqual(s["state"], "running")
            self.assertEqual(sorted(s["spec"]["gpus"]), sorted(want))
            self.assertEqual(s["cpus"], int(j["NumCPUs"]))
            self.assertEqual(s["memory"], int(j["details"][0]["Mem"]) << 20)
            self.assertEqual((s["owner"], s["slurm_job"]), (os.getuid(), job))
            starts = [st for st in self.q.qemu_starts(node) if any(vm in a for a in st["argv"])]
            self.assertTrue(starts, f"fake QEMU never ran {vm}")
            self.assertEqual(sorted(starts[-1]["hostdevs"]), sorted(want + [f for g in want for f in SLOT.get(g, [])]))
            self.assert_no_gpu_twice()
        # the two jobs on node1 got one GPU each, the one on node2 both
        vms = {job: f"slurm-{job}" for job in jobs}
        held = self.assert_no_gpu_twice()
        one, two, three = jobs
        self.assertEqual(held["node1"], {self.job_gpus(one)[0]: vms[one], self.job_gpus(three)[0]: vms[three]})
        self.assertEqual(held["node2"], {g: vms[two] for g in GPUS})
        self.assertEqual(held["node3"], {})
        for job in jobs:
            self.release(job)
        for job, node in jobs.items():
            self.c.wait_job_state(job, "COMPLETED", 60)
        self.c.wait_nodes_state(("idle",), 60, ["node1", "node2"])
        for job, node in jobs.items():
            self.assert_vm_gone(job)
            self.assert_epilog_forced_after_kill_wait(node, job)
        for n in ("node1", "node2"):
            self.assert_gpus_back(n)


class Guest(Base):
    # The job's own script, run as the job's user (not root): it reads
    # where its VM is from Slurm (the AdminComment of `scontrol show job`),
    # waits for the guest's agent, gets a shell command run in the guest
    # (`vm exec`: a listener on port 7777 that answers with the guest's
    # own view of itself), connects to it over the network from the node
    # (where the job runs), and shows whose NIC answered (the neighbour's
    # MAC); then it reads the guest's serial markers through qvisor.
    JOB = """set -e
q="QVISOR --config CONFIG_DIR/$SLURMD_NODENAME/config.yaml"
vm=slurm-$SLURM_JOB_ID
comment=$(scontrol show job "$SLURM_JOB_ID" | sed -n 's/^ *AdminComment=//p')
echo "comment: $comment"
addr=$(echo "$comment" | tr ' ' '\\n' | sed -n 's/^addr=//p')
$q vm wait "$vm" --for agent --timeout 150s
echo "agent answers"
echo "exec: $($q vm exec "$vm" -- id -u)"
$q vm exec "$vm" -- sh -c 'busybox nc -ll -p 7777 -e sh -c "echo guest-mac \\$(cat /sys/class/net/eth0/address); grep -h local-hostname /mnt/seed/*/meta-data" </dev/null >/dev/null 2>&1 &'
i=0
until out=$(busybox nc -w 5 "$addr" 7777 </dev/null) && [ -n "$out" ]; do
    i=$((i + 1)); [ $i -lt 40 ] || { echo "no answer on $addr:7777"; exit 1; }; sleep 0.5
done
echo "over the network: $(echo "$out" | tr '\\n' ' ')"
echo "neighbour: $(ip neigh show "$addr")"
$q vm log "$vm" > guest.$SLURM_JOB_ID.log 2>&1 || echo "vm log: exit $?"; grep 'QVISOR-GUEST: net ' guest.$SLURM_JOB_ID.log || cat guest.$SLURM_JOB_ID.log
echo "job done"
""" + HOLD + "\n"

    def test_vm_boots_and_is_reachable_from_its_job(self):
        script = self.JOB.replace("QVISOR", qvisor_path()).replace("CONFIG_DIR", self.q.dir)
        job = self.submit(f"--vm-image={PROFILE}", "-w", "node3", "--gres=gpu:1", "--mem=256M", script=script,
                          user=USER)
        j = self.wait_vm_up(job)
        vm = f"slurm-{job}"
        s = self.q.show("node3", vm)
        # the profile's kernel, initrd and NIC; the job's GPU, CPUs and memory
        self.assertEqual((s["spec"]["image"], s["spec"]["append"]), (IMAGE, guestlib.cmdline(["qv.net=seed",
                                                                                                "qv.agent=on"])))
        self.assertEqual(s["kernel_source"], guestlib.build_tiny_guest().kernel)
        self.assertEqual(s["spec"]["gpus"], self.job_gpus(job))
        self.assertEqual(s["memory"], 256 << 20)
        nic = s["nics"][0]
        self.assertEqual(nic["mode"], "nat")
        self.assertTrue(nic["ip"].startswith("10.78.0."), nic)
        self.assertIn(f"qvisor vm={vm} node=node3 gpus={self.job_gpus(job)[0]} addr={nic['ip']}", j["AdminComment"])
        # the real QEMU (fake QEMU drops the fake GPU and runs it) boots the guest
        starts = [st for st in self.q.qemu_starts("node3") if any(vm in a for a in st["argv"])]
        want = self.job_gpus(job)
        self.assertEqual(sorted(starts[-1]["hostdevs"]), sorted(want + [f for g in want for f in SLOT.get(g, [])]))
        def done():     # the script got through, or it failed (set -e)
            if "job done" in self.c.job_output(job, user=USER):
                return True
            return self.c.scontrol_show_job(job)["JobState"] != "RUNNING"
        wait_for(done, 180, f"job {job}'s script to reach its VM", interval=0.5)
        out = self.c.job_output(job, user=USER)
        self.assertIn("job done", out, out)
        self.assertIn("agent answers", out)
        # a command in the guest, as the job's user: the agent runs it as root there
        self.assertIn("exec: 0\n", out)
        # over TCP from the node to the VM's address: the guest itself says
        # which NIC it has and which name qvisor's seed gave it
        self.assertIn(f"over the network: guest-mac {nic['mac']} local-hostname: '{vm}'", out)
        # the VM's own NIC answered: its MAC, as the daemon made it for slurm-JOBID
        self.assertRegex(out, rf"neighbour: {re.escape(nic['ip'])} dev qvs-br0 lladdr {nic['mac']}")
        # the guest configured that address itself, from the seed qvisor wrote
        self.assertRegex(out, rf"QVISOR-GUEST: net eth0 {re.escape(nic['ip'])}/24 {re.escape(NAT[1])} {nic['mac']}")
        # from the login node (slurmctld's host here), the user reaches the
        # VM through the job: a step on the job's node, as Slurm runs it
        p = self.c.client("srun", f"--jobid={job}", "--overlap", "-w", "node3", qvisor_path(), "--config",
                          self.q.qv["node3"].config, "vm", "exec", vm, "--", "cat", "/sys/class/net/eth0/address",
                          user=USER, timeout=60)
        self.assertEqual(p.stdout.strip(), nic["mac"])
        # someone else may not
        p = self.qvisor_as("node3", OTHER, "vm", "exec", vm, "--", "true")
        self.assertEqual(p.returncode, 77, p.stderr)
        self.assert_no_gpu_twice()
        self.release(job, user=USER)
        self.c.wait_job_state(job, "COMPLETED", 90)
        self.c.wait_nodes_state(("idle",), 60, ["node3"])
        self.assert_vm_gone(job)
        # a guest that boots shuts down when asked: not forced
        with open(self.c.slurmd_log("node3")) as f:
            self.assertRegex(f.read(), rf"qvisor: VM {vm} of job {job} stopped \((?!forced)[^)]*\) and removed")
        self.assert_gpus_back("node3")


class Queue(Base):
    def test_busy_gpus_wait_until_a_job_is_cancelled(self):
        a, b = self.vm_job("node2"), self.vm_job("node2")
        for job in (a, b):
            self.wait_vm_up(job)
        self.assert_no_gpu_twice()
        gone = self.job_gpus(a)
        # a third job: CPUs and memory are free on node2, its two GPUs are not
        c = self.vm_job("node2")

        def pending_for_resources():
            j = self.c.scontrol_show_job(c)
            self.assertEqual(j["JobState"], "PENDING")
            return j["Reason"] == "Resources"
        wait_for(pending_for_resources, 30, "the third job PENDING with Reason=Resources", interval=0.2)
        self.assertNotIn(f"slurm-{c}", self.q.vms("node2"))
        self.c.scancel(a)
        self.c.wait_job_state(a, "CANCELLED", 30)
        j = self.wait_vm_up(c)
        # c runs on the GPU a gave back, once a's VM is gone
        self.assertEqual(self.job_gpus(c), gone)
        self.assertIn(f"gpus={gone[0]}", j["AdminComment"])
        self.assert_vm_gone(a)
        self.assert_epilog_forced_after_kill_wait("node2", a)
        self.assertEqual(self.q.show("node2", f"slurm-{c}")["spec"]["gpus"], gone)
        self.assert_no_gpu_twice()
        self.c.scancel(b, c)
        for job in (b, c):
            self.c.wait_job_state(job, "CANCELLED", 30)
        self.c.wait_nodes_state(("idle",), 60, ["node2"])
        for job in (a, b, c):
            self.assert_vm_gone(job)
        self.assert_gpus_back("node2")


class Ending(Base):
    def test_time_limit_stops_the_vm(self):
        job = self.vm_job("node3", 1, "--time=1")
        self.wait_vm_up(job)
        # slurmctld looks for jobs over their limit every 30 s: 60 to 90 s
        self.c.wait_job_state(job, "TIMEOUT", 120)
        self.c.wait_nodes_state(("idle",), 60, ["node3"])
        self.assert_vm_gone(job)
        self.assert_epilog_forced_after_kill_wait("node3", job)
        self.assert_gpus_back("node3")

    def test_keep_disk_keeps_the_vm_stopped(self):
        job = self.vm_job("node1", 1, "--vm-keep-disk")
        self.wait_vm_up(job)
        gpus = self.job_gpus(job)
        self.release(job)
        self.c.wait_job_state(job, "COMPLETED", 60)
        self.c.wait_nodes_state(("idle",), 60, ["node1"])
        vm = f"slurm-{job}"
        s = self.q.show("node1", vm)
        # kept, stopped, with its disk, and claiming no GPU any more
        self.assertEqual((s["state"], s["spec"].get("gpus", []), s["slurm_job"]), ("stopped", [], job))
        self.assertTrue(os.path.exists(s["disk"]), s["disk"])
        with open(self.c.slurmd_log("node1")) as f:
            self.assertIn(f"VM {vm} of job {job} stopped (forced", f.read())
        self.assert_gpus_back("node1", GPUS)
        # a later job given those GPUs there gets them: nothing holds them
        # (before vm edit, the kept VM's spec still named them and the
        # later job's prolog failed: "... is held by VM 'slurm-N'")
        later = self.vm_job("node1", 2)
        self.wait_vm_up(later)
        self.assertEqual(sorted(self.job_gpus(later)), sorted(GPUS))
        self.assert_no_gpu_twice()
        self.assertFalse(self.c.node_states()["node1"].startswith("drain"), self.c.node_states())
        self.assertEqual(self.q.show("node1", vm)["state"], "stopped")
        self.release(later)
        self.c.wait_job_state(later, "COMPLETED", 60)
        self.assert_vm_gone(later)

    def test_requeued_job_restarts_its_kept_vm_with_its_new_gpus(self):
        job = self.vm_job("node2", 1, "--vm-keep-disk")
        self.wait_vm_up(job)
        vm = f"slurm-{job}"
        disk = self.q.show("node2", vm)["disk"]
        # the job runs again: its epilog keeps the VM (no GPUs), its next
        # prolog finds it, gives it this run's GPUs and starts it
        self.c.client("scontrol", "requeue", str(job))
        # Slurm holds a requeued job back for a while (BeginTime): not here
        wait_for(lambda: self.c.scontrol_show_job(job)["JobState"] == "PENDING", 60, f"job {job} requeued",
                 interval=0.5)
        self.c.client("scontrol", "update", f"JobId={job}", "StartTime=now")
        def up_again():
            j = self.c.scontrol_show_job(job)
            if j["JobState"] != "RUNNING" or int(j.get("Restarts", "0")) < 1:
                return False
            return self.q.show("node2", vm)["state"] == "running"
        wait_for(up_again, 120, f"job {job} running again with its VM", interval=0.5)
        s = self.q.show("node2", vm)
        self.assertEqual(s["disk"], disk)            # the same VM, not a new one
        self.assertEqual(s["spec"]["gpus"], self.job_gpus(job))
        with open(self.c.slurmd_log("node2")) as f:
            self.assertIn(f"VM {vm} exists (kept from an earlier run of job {job}): starting it", f.read())
        self.assert_no_gpu_twice()
        self.release(job)
        self.c.wait_job_state(job, "COMPLETED", 60)
        self.c.wait_nodes_state(("idle",), 60, ["node2"])
        self.assertEqual(self.q.show("node2", vm)["spec"].get("gpus", []), [])
        self.assert_gpus_back("node2", GPUS)

    def test_ssh_key_reaches_the_vm(self):
        key = os.path.join(self.c.jobs_dir, "id_test")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "user@slurm-test", "-f", key],
                       check=True, stdin=subprocess.DEVNULL)
        with open(key + ".pub") as f:
            line = f.read().strip()
        job = self.vm_job("node3", 1, f"--vm-ssh-key={key}.pub")
        self.wait_vm_up(job)
        s = self.q.show("node3", f"slurm-{job}")
        self.assertEqual(s["spec"]["ssh_keys"], [line])
        # a file that is no public key is refused by sbatch itself
        with self.assertRaises(slurmcluster.SlurmError) as e:
            self.vm_job("node3", 1, f"--vm-ssh-key={key}")
        self.assertIn("not a public key file", e.exception.stderr)


class Owner(Base):
    def test_only_the_jobs_user_stops_its_vm(self):
        uid = pwd.getpwnam(USER).pw_uid
        job = self.vm_job("node1", 1, user=USER)
        j = self.wait_vm_up(job)
        self.assertTrue(j["UserId"].startswith(f"{USER}("), j["UserId"])
        vm = f"slurm-{job}"
        s = self.q.show("node1", vm)
        self.assertEqual((s["owner"], s["slurm_job"]), (uid, job))
        p = self.qvisor_as("node1", OTHER, "vm", "stop", vm, "--force")
        self.assertEqual(p.returncode, 77, p.stdout + p.stderr)
        self.assertIn(f"belongs to uid {uid}", p.stderr)
        self.assertEqual(self.q.show("node1", vm)["state"], "running")
        p = self.qvisor_as("node1", USER, "vm", "stop", vm, "--force")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertEqual(self.q.show("node1", vm)["state"], "stopped")
        self.assert_gpus_back("node1", self.job_gpus(job), holder=vm)
        # the job goes on; its epilog removes the stopped VM
        self.assertEqual(self.c.scontrol_show_job(job)["JobState"], "RUNNING")
        self.release(job, user=USER)
        self.c.wait_job_state(job, "COMPLETED", 60)
        self.c.wait_nodes_state(("idle",), 60, ["node1"])
        self.assert_vm_gone(job)
        self.assert_gpus_back("node1")


class Restarts(Base):
    def daemon_alive(self, node):
        p = self.q.qv[node].proc
        return p is not None and p.poll() is None

    def kill_daemon(self, node):
        p = self.q.qv[node].proc
        p.kill()
        p.wait(timeout=scaled(10))

    def test_daemon_killed_during_a_job(self):
        job = self.vm_job("node1", 2)
        self.wait_vm_up(job)
        vm = f"slurm-{job}"
        pid = self.q.show("node1", vm)["pid"]
        held = self.assert_no_gpu_twice()["node1"]
        self.kill_daemon("node1")
        # the VM outlives its daemon, and the job its VM's daemon
        self.assertTrue(os.path.exists(f"/proc/{pid}"))
        self.assertEqual(self.c.scontrol_show_job(job)["JobState"], "RUNNING")
        self.q._start_daemon("node1")
        # the new daemon adopts the VM: the same QEMU, its GPUs still its own
        s = self.q.show("node1", vm)
        self.assertEqual((s["state"], s["pid"]), ("running", pid))
        self.assertEqual(self.assert_no_gpu_twice()["node1"], held)
        listed = {g["address"]: g for g in self.q.qv["node1"].qvisor_json("gpu", "list")["gpus"]}
        self.assertEqual([(listed[g]["vm"], listed[g]["binding"]) for g in GPUS], [(vm, "bound")] * 2)
        self.release(job)
        self.c.wait_job_state(job, "COMPLETED", 60)
        self.c.wait_nodes_state(("idle",), 60, ["node1"])
        self.assert_vm_gone(job)
        self.assert_epilog_forced_after_kill_wait("node1", job)
        self.assert_gpus_back("node1")
        # the adopted QEMU is gone too (init reaps it: it lost its parent)
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 10, f"QEMU {pid} to be gone", interval=0.2)

    def test_daemon_down_when_the_job_ends(self):
        job = self.vm_job("node2", 1)
        self.wait_vm_up(job)
        vm = f"slurm-{job}"
        gpus = self.job_gpus(job)
        self.kill_daemon("node2")
        self.release(job)
        # the epilog cannot reach the daemon: the node is drained saying so,
        # never handed to the next job with the VM still holding its GPU
        wait_for(lambda: self.c.node_states()["node2"].startswith("drain"), 60, "node2 drained", interval=0.2)
        reason = self.drain_reason("node2")
        self.assertTrue(reason.startswith(f"qvisor job {job}: "), reason)
        self.assertIn("daemon", reason)
        self.q._start_daemon("node2")
        s = self.q.show("node2", vm)
        self.assertEqual(s["state"], "running")
        self.assertEqual(self.q.gpu_holders("node2")[gpus[0]], vm)
        self.assert_no_gpu_twice()
        # what an administrator does: the job's epilog once more, then resume
        p = self.c.node_exec("node2", ["env", f"SLURM_JOB_ID={job}", "SLURMD_NODENAME=node2", qvisor_path(),
                                       "--config", self.q.qv["node2"].config, "slurm", "epilog", "--timeout", "0"])
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn(f"VM {vm} of job {job} stopped (forced", p.stdout)
        self.assert_vm_gone(job)
        self.assert_gpus_back("node2")

    def test_slurmd_restarted_during_a_job(self):
        job = self.vm_job("node3", 1)
        self.wait_vm_up(job)
        vm = f"slurm-{job}"
        pid = self.q.show("node3", vm)["pid"]
        # once the batch step runs: a slurmd killed while it launches the
        # step (after the prolog) leaves a step that cannot report to it,
        # and the next slurmd may not start (seen once)
        def step_started():
            with open(self.c.slurmd_log("node3")) as f:
                return re.search(rf"\[{job}\.batch\] task 0 \(\d+\) started", f.read())
        wait_for(step_started, 30, f"job {job}'s batch step to start", interval=0.2)
        self.c.restart_slurmd("node3")
        # the job and its VM go on; no second prolog made a second VM
        self.assertEqual(self.c.scontrol_show_job(job)["JobState"], "RUNNING")
        self.assertEqual(self.q.show("node3", vm)["pid"], pid)
        self.assertEqual(list(self.q.vms("node3")), [vm])
        # a job after the restart gets the other GPU: nothing held twice
        other = self.vm_job("node3", 1)
        self.wait_vm_up(other)
        self.assertEqual(sorted(self.job_gpus(job) + self.job_gpus(other)), GPUS)
        self.assert_no_gpu_twice()
        for j in (job, other):
            self.release(j)
        for j in (job, other):
            self.c.wait_job_state(j, "COMPLETED", 60)
        self.c.wait_nodes_state(("idle",), 60, ["node3"])
        for j in (job, other):
            self.assert_vm_gone(j)
            self.assert_epilog_forced_after_kill_wait("node3", j)
        self.assert_gpus_back("node3")


class Failures(Base):
    def test_a_jobs_own_failure_cancels_it(self):
        # no such image on the node: the user's mistake, not the node's
        job = self.vm_job("node2", 1, image="nosuch")
        j = self.c.wait_job_state(job, "CANCELLED", 60)
        self.assertEqual(j["Restarts"], "0")
        why = "no image 'nosuch'"
        self.assertTrue(self.admin_comment(job).startswith(f"qvisor: job not run: {why}"), self.admin_comment(job))
        with open(self.c.slurmd_log("node2")) as f:
            self.assertIn(f"error: qvisor: error: {why} (see `qvisor image list`): job {job} is cancelled", f.read())
        self.assertEqual(self.c.node_states()["node2"], "idle")
        self.assertEqual(self.drain_reason("node2"), "")
        self.assertEqual(self.q.vms("node2"), {})
        self.assert_gpus_back("node2")

    def test_failed_prolog_drains_the_node(self):
        # the node's failure: the first GPU cannot be bound once
        self.q.fs["node2"].fault(GPUS[0], "override", "eio", once=True)
        job = self.vm_job("node2", 2)
        # the reason comes with the requeue; the job stays COMPLETING until
        # its epilog is done, then it is PENDING (CI once read it between)
        wait_for(lambda: self.c.scontrol_show_job(job)["Reason"] == "launch_failed_requeued_held" and
                 self.c.scontrol_show_job(job)["JobState"] != "COMPLETING", 60,
                 f"job {job} requeued and held, its epilog done", interval=0.2)
        # Slurm 22.05 requeues a batch job whose prolog failed, held
        # (Priority=0), and drains the node with its own reason "Prolog
        # error" only when the node has none: qvisor's, set before the
        # prolog returns, stays (in scontrol and sinfo -R)
        j = self.c.scontrol_show_job(job)
        self.assertEqual((j["JobState"], j["Restarts"], j["Priority"]), ("PENDING", "1", "0"))
        self.c.wait_nodes_state(("drained",), 30, ["node2"])
        why = f"qvisor job {job}: VM 'slurm-{job}' did not start: {GPUS[0]}: writing 'vfio-pci' to "
        self.assertTrue(self.drain_reason("node2").startswith(why), self.drain_reason("node2"))
        self.assertIn(f"qvisor job {job}: VM", self.c.client("sinfo", "-R", "--noheader", "--format=%E").stdout)
        with open(self.c.slurmd_log("node2")) as f:
            log = f.read()
        self.assertIn(f"error: qvisor: error: VM 'slurm-{job}' did not start: {GPUS[0]}", log)
        self.assertIn(f"qvisor: drained node2: {why}", log)
        # the job's epilog runs all the same: the VM that never ran is gone
        self.assertIn(f"qvisor: VM slurm-{job} of job {job} was stopped already and removed", log)
        self.assertEqual(self.q.vms("node2"), {})
        self.assert_gpus_back("node2")

    def test_gpu_that_does_not_come_back_drains_the_node(self):
        job = self.vm_job("node3", 2)
        self.wait_vm_up(job)
        vm = f"slurm-{job}"
        gpu = GPUS[1]
        # the card stops answering: its unbind from vfio-pci hangs (the fake
        # kernel's hang fault), the daemon gives up after vfio.sysfs_timeout
        self.q.fs["node3"].fault(gpu, "unbind", "hang")
        self.release(job)
        wait_for(lambda: self.c.node_states()["node3"].startswith("drain"), 60, "node3 drained", interval=0.2)
        why = f"qvisor job {job}: not given back after VM {vm}: GPU {gpu} stuck ("
        self.assertTrue(self.drain_reason("node3").startswith(why), self.drain_reason("node3"))
        self.c.wait_job_state(job, "COMPLETED", 30)
        # slurmd's log has the whole message (the reason is cut at 200 characters)
        with open(self.c.slurmd_log("node3")) as f:
            self.assertRegex(f.read(), rf"error: qvisor: error: not given back after VM {vm}: GPU {gpu} stuck "
                                       rf"\([^\n]*did not finish[^\n]*\); GPU {GPUS[0]} bound\n")
        # the daemon gave up the give-back at the hung card: the other GPU
        # is still on vfio-pci too; the VM stays, stopped, for a look
        listed = {g["address"]: g for g in self.q.qv["node3"].qvisor_json("gpu", "list")["gpus"]}
        self.assertEqual([(listed[g]["vm"], listed[g]["binding"]) for g in GPUS], [(vm, "bound"), (vm, "stuck")])
        self.assertEqual(self.q.show("node3", vm)["state"], "stopped")
        # the card answers again: qvisor cleanup gives it back, the node can
        # be resumed
        fs = self.q.fs["node3"]
        fs.release()
        fs.clear_faults()
        wait_for(lambda: fs.driver(gpu) is None, 10, "the hung unbind to finish")
        out = self.q.qv["node3"].qvisor("cleanup", check=0, timeout=scaled(60)).stdout
        # one cleanup gives back both: the stuck card and the one the
        # give-back never reached
        self.assertIn(f"vfio device {gpu}: given back", out)
        self.assertIn(f"vfio device {GPUS[0]}: given back", out)
        self.assert_gpus_back("node3", GPUS, holder=vm)


if __name__ == "__main__":
    slurmcluster.main(QvisorCluster.missing)
