"""A Slurm cluster on this one machine, for the tests of issue 18 (qvisor as
the node agent that runs a Slurm job's VM).  Debian 12's Slurm 22.05: its
own munged, slurmctld and N plain slurmd "nodes" (not the multiple-slurmd
build), each node in network and UTS namespaces of its own; docs/testing.md
describes the layout.

    with SlurmCluster() as c:              # start() ... cleanup()
        job = c.sbatch(None, "-w", "node1", "--gres=gpu:1", "--wrap", "hostname")
        c.wait_job_state(job, ("COMPLETED",), 30)
        c.job_output(job)                  # "node1\\n"

Everything the cluster made is taken away by cleanup(): every process in its
namespaces (the daemons, slurmstepd, job steps), the namespaces with their
veths and bridge, the UTS namespace mounts, the temp directory.  It runs at
exit, on SIGTERM (then the process dies of SIGTERM), and when start() fails
half-way; the daemons also get SIGKILL when the harness dies (parent-death
signal), and a later start() removes what a harness killed with SIGKILL left
(namespaces and temp directories named after a process that no longer
exists).

Without Slurm, munge, the namespace tools or root, start() raises
unittest.SkipTest (missing() says why beforehand)."""

import atexit
import ctypes
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

from qvtest import scaled, wait_for

PREFIX = "qvsl"             # namespaces and temp directories: qvsl-PID-N
SUBNET = "10.77.0"          # the fabric's /24: .1 slurmctld, .11, .12, ... the nodes
CTLD_PORT = 16817           # not Slurm's 6817/6818: the ports are the namespaces' own,
SLURMD_PORT = 16818         # so they cannot clash; other numbers keep logs unambiguous
CTLD_HOST = "ctld"          # slurmctld's UTS host name, the name in SlurmctldHost
GPU_MAJOR = 195             # the fake GPUs are char devices 195:N, as /dev/nvidiaN

PROGRAMS = ("munged", "slurmctld", "slurmd", "slurmstepd", "sbatch", "srun", "squeue", "scontrol",
            "scancel", "sinfo", "ip", "nsenter", "unshare", "umount", "hostname")
DEBIAN_PACKAGES = "slurmctld slurmd slurm-client munge iproute2 util-linux"

# JobState values after which a job never runs again
TERMINAL = frozenset(("COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
                      "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY", "REVOKED", "SPECIAL_EXIT"))

# Environment variables a client takes options from: none from the caller's
# environment (a test run inside a Slurm job, a developer's SQUEUE_FORMAT).
CLIENT_ENV_PREFIXES = ("SLURM_", "SBATCH_", "SALLOC_", "SRUN_", "SQUEUE_", "SINFO_", "SCONTROL_",
                       "SCANCEL_", "MUNGE_")


class SlurmError(AssertionError):
    """A Slurm client command that failed: argv, exit code and its output."""

    def __init__(self, argv, proc):
        self.argv = argv
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        super().__init__(f"{' '.join(argv)}: exit {proc.returncode}\nstdout: {proc.stdout}\n"
                         f"stderr: {proc.stderr}")


def missing():
    """Why this machine cannot run a cluster, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, mknod, Slurm daemons as SlurmUser=root)"
    absent = [p for p in PROGRAMS if not shutil.which(p)]
    if absent:
        return f"{', '.join(absent)} not installed (Debian: {DEBIAN_PACKAGES})"
    return None


def main(why_not=missing):
    """A cluster test's main(): exits 77 (skipped, for meson) saying why
    when why_not() gives a reason, else runs the module's tests."""
    why = why_not()
    if why:
        print(f"SKIP: {why}")
        sys.exit(77)
    unittest.main(module="__main__", verbosity=2)


def parse_records(text):
    """scontrol's KEY=VALUE output as dicts, one per record (records are
    separated by blank lines).  A token without '=' belongs to the value
    before it (a value with a space).  `scontrol show job -d` detail lines
    ("Nodes=node1 CPU_IDs=0 Mem=100 GRES=gpu:1(IDX:0)", one per node) go to
    the record's list "details" instead of overwriting Nodes=."""
    records, rec, last = [], None, None
    for line in text.splitlines():
        s = line.strip()
        if not s:
            rec = None
            continue
        if rec is None:
            rec = {"details": []}
            records.append(rec)
        target = rec
        if s.startswith("Nodes=") and line.startswith("     "):
            target = {}
            rec["details"].append(target)
        for tok in s.split():
            if "=" in tok:
                key, value = tok.split("=", 1)
                target[key] = value
                last = (target, key)
            elif last:
                last[0][last[1]] += " " + tok
    return records


def gres_indexes(gres):
    """The indexes in a GRES allocation as `scontrol show job -d` prints it:
    "gpu:2(IDX:0-1)" -> [0, 1], "gpu:1(IDX:1)" -> [1], "gpu:3(IDX:0,2-3)"
    -> [0, 2, 3]; [] without an IDX."""
    m = re.search(r"\(IDX:([0-9,\-]+)\)", gres or "")
    if not m:
        return []
    out = []
    for part in m.group(1).split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


# --- clean-up at exit and on SIGTERM ---------------------------------------

_live = set()
_handler = {"installed": False}
_seq = {"n": 0}


def _cleanup_all():
    for c in list(_live):
        c.cleanup()


def _on_sigterm(signum, frame):
    _cleanup_all()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _install_handlers():
    if _handler["installed"] or threading.current_thread() is not threading.main_thread():
        return
    _handler["installed"] = True
    atexit.register(_cleanup_all)
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _on_sigterm)


_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def _die_with_parent():
    """preexec_fn of every daemon: SIGKILL when the harness dies, even by
    SIGKILL (kept across exec, nsenter execs the daemon)."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _run(*argv, check=True, timeout=30):
    p = subprocess.run(argv, capture_output=True, text=True, timeout=scaled(timeout), stdin=subprocess.DEVNULL)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {p.returncode}: {p.stderr.strip()}")
    return p


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _netns_pids(ns):
    p = _run("ip", "netns", "pids", ns, check=False)
    return [int(x) for x in p.stdout.split()] if p.returncode == 0 else []


def _kill_netns(ns, killed=None, tries=100):
    """SIGKILL to every process in network namespace ns until none is left
    (a dying slurmd or slurmstepd may have forked); the pids go to killed."""
    for _ in range(tries):
        pids = _netns_pids(ns)
        if not pids:
            return True
        if killed is not None:
            killed.update(pids)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    return not _netns_pids(ns)


def _mounts_under(path):
    """Mount points at or below path, deepest first (/proc/self/mountinfo)."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if mp == path or mp.startswith(path.rstrip("/") + "/"):
                out.append(mp)
    return sorted(out, key=len, reverse=True)


def reap_stale():
    """Removes what a harness that died by SIGKILL left: namespaces and temp
    directories named qvsl-PID-* whose PID no longer runs (their processes,
    their UTS namespace mounts).  Returns what it removed."""
    removed = []
    stale = re.compile(rf"^{PREFIX}-(\d+)-")
    p = _run("ip", "netns", "list", check=False)
    for line in p.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = stale.match(name)
        if m and not _alive(int(m.group(1))):
            _kill_netns(name)
            _run("ip", "netns", "del", name, check=False)
            removed.append(name)
    tmp = tempfile.gettempdir()
    for entry in os.listdir(tmp):
        m = stale.match(entry)
        path = os.path.join(tmp, entry)
        if m and not _alive(int(m.group(1))) and os.path.isdir(path):
            for mp in _mounts_under(path):
                _run("umount", "-l", mp, check=False)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def leftovers(tag, directory):
    """What a cluster (namespaces tag-*, directory) left behind: namespaces,
    mounts, the directory, processes whose command line names it.  []
    after cleanup()."""
    left = []
    p = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    left += [f"netns {line.split()[0]}" for line in p.stdout.splitlines() if line.startswith(tag + "-")]
    if directory:
        left += [f"mount {mp}" for mp in _mounts_under(directory)]
        if os.path.exists(directory):
            left.append(f"directory {directory}")
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if directory in cmd and int(d) != os.getpid():
                left.append(f"process {d}: {cmd}")
    return left


class SlurmCluster:
    """munged + slurmctld + `nodes` slurmd, each node with `gpus` fake GPUs
    (gres.conf File= char devices in its own directory), `cpus` CPUs and
    `memory_mb` of memory as slurm.conf says (SlurmdParameters=
    config_overrides: more than the machine has is fine, nothing is used).

    extra_conf: lines appended to slurm.conf; plugstack: the text of the
    SPANK plugstack.conf (PlugStackConfig, empty by default).

    gpu_names: the names of each node's GPU devices in index order (default
    nvidia0, nvidia1, ...; their count is the node's GPU count, gpus is then
    ignored); gres_lines: gres.conf's lines for a node, a function of the
    node's name and device_dir(node) (default: one Name=gpu line whose File=
    names them all), e.g. what `qvisor slurm gres` prints for the node."""

    def __init__(self, nodes=3, gpus=2, cpus=4, memory_mb=2048, cluster="qvtest",
                 slurmd_timeout=10, extra_conf="", plugstack="", gpu_names=None, gres_lines=None):
        _seq["n"] += 1
        self.tag = f"{PREFIX}-{os.getpid()}-{_seq['n']}"
        self.nodes = [f"node{i}" for i in range(1, nodes + 1)]
        self.gpu_names = list(gpu_names) if gpu_names is not None else [f"nvidia{i}" for i in range(gpus)]
        self.gpus = len(self.gpu_names)
        self.gres_lines = gres_lines
        self.cpus = cpus
        self.memory_mb = memory_mb
        self.cluster = cluster
        self.slurmd_timeout = slurmd_timeout
        self.extra_conf = extra_conf
        self.plugstack_text = plugstack
        self.fabric_ns = f"{self.tag}-fabric"
        self.ctld_addr = f"{SUBNET}.1"
        self.dir = None
        self.procs = {}         # "munged", "slurmctld", node name -> Popen
        self._files = []
        self._netns = []        # made by us, in order
        self._uts = []          # UTS namespace files bind-mounted by us
        self._started = False
        self._cleaned = False
        self._cleanups = []     # add_cleanup()
        self.version = None

    # --- names and paths -----------------------------------------------------

    def node_ns(self, node):
        """The network namespace of node (`ip netns` name)."""
        return f"{self.tag}-{node}"

    def node_addr(self, node):
        return f"{SUBNET}.{10 + self.nodes.index(node) + 1}"

    def node_dir(self, node):
        """The node's own directory: spool/ (SlurmdSpoolDir), dev/ (its GPUs),
        slurmd.pid."""
        return os.path.join(self.dir, "nodes", node)

    def spool_dir(self, node):
        return os.path.join(self.node_dir(node), "spool")

    def device_dir(self, node):
        """Where the node's fake GPU devices are (gres.conf File=)."""
        return os.path.join(self.node_dir(node), "dev")

    def gpu_devices(self, node):
        """The node's fake GPUs in index order: index i is gpu_names[i]
        (nvidia<i> by default), the i of "gpu:N(IDX:i)" and of
        SLURM_JOB_GPUS."""
        return [os.path.join(self.device_dir(node), name) for name in self.gpu_names]

    def slurmd_log(self, node):
        return os.path.join(self.dir, "log", f"slurmd-{node}.log")

    @property
    def slurmctld_log(self):
        return os.path.join(self.dir, "log", "slurmctld.log")

    @property
    def conf(self):
        return os.path.join(self.dir, "etc", "slurm.conf")

    @property
    def plugstack(self):
        return os.path.join(self.dir, "etc", "plugstack.conf")

    @property
    def munge_socket(self):
        return os.path.join(self.dir, "munge", "munge.socket")

    @property
    def jobs_dir(self):
        """Where batch scripts and job output go (each job's --chdir)."""
        return os.path.join(self.dir, "jobs")

    def _uts_file(self, host):
        return os.path.join(self.dir, "ns", f"{host}.uts")

    def _enter(self, node=None):
        """argv prefix that runs a program in node's namespaces (network and
        UTS), or slurmctld's (the fabric's) for None.  nsenter, not `ip netns
        exec`: that one remounts /sys for the namespace, which hides
        /sys/fs/cgroup, and slurmd will not start without a cgroup mount
        (22.05 loads its cgroup plugin whatever ProctrackType says)."""
        ns = self.node_ns(node) if node else self.fabric_ns
        return ["nsenter", f"--net=/run/netns/{ns}", f"--uts={self._uts_file(node or CTLD_HOST)}", "--"]

    # --- start and stop ------------------------------------------------------

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()

    def start(self):
        if self._started:
            return self
        why = missing()
        if why:
            raise unittest.SkipTest(why)
        reap_stale()
        self._started = True
        _install_handlers()
        _live.add(self)
        try:
            self.version = _run("slurmd", "-V").stdout.strip()
            self._make_dirs()
            self._make_network()
            self._make_uts()
            self._write_conf()
            self._start_munged()
            self._start_slurmctld()
            for node in self.nodes:
                self._start_slurmd(node)
            self.wait_nodes_state(("idle",), 60)
        except unittest.SkipTest:
            self.cleanup()
            raise
        except BaseException:
            logs = self.log_tail() if self.dir else ""
            self.cleanup()
            if logs:
                print(logs)
            raise
        return self

    def _make_dirs(self):
        self.dir = tempfile.mkdtemp(prefix=f"{self.tag}-")
        # munged wants every directory above its socket searchable by all
        os.chmod(self.dir, 0o711)
        for sub in ("etc", "log", "ns", "ctld/state", "jobs"):
            os.makedirs(os.path.join(self.dir, sub))
        os.makedirs(os.path.join(self.dir, "munge"), mode=0o755)
        os.chmod(os.path.join(self.dir, "munge"), 0o755)
        for node in self.nodes:
            os.makedirs(self.spool_dir(node))
            os.makedirs(self.device_dir(node))
            # gres.conf File= must be a char (or block) device: a regular file
            # is counted but slurmd logs "is not a valid character or block
            # device, fix your gres.conf"
            for i, path in enumerate(self.gpu_devices(node)):
                os.mknod(path, 0o660 | 0o020000, os.makedev(GPU_MAJOR, i))

    def _make_network(self):
        fab = self.fabric_ns
        if _run("ip", "netns", "add", fab, check=False).returncode != 0:
            raise unittest.SkipTest("cannot create a network namespace")
        self._netns.append(fab)
        _run("ip", "-n", fab, "link", "set", "lo", "up")
        _run("ip", "-n", fab, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", fab, "addr", "add", f"{self.ctld_addr}/24", "dev", "br0")
        _run("ip", "-n", fab, "link", "set", "br0", "up")
        for node in self.nodes:
            ns = self.node_ns(node)
            _run("ip", "netns", "add", ns)
            self._netns.append(ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            # made in the fabric namespace with its peer in the node's: no
            # link ever exists in the machine's own namespace
            _run("ip", "-n", fab, "link", "add", f"v{node}", "type", "veth", "peer", "name", "eth0",
                 "netns", ns)
            _run("ip", "-n", fab, "link", "set", f"v{node}", "master", "br0", "up")
            _run("ip", "-n", ns, "addr", "add", f"{self.node_addr(node)}/24", "dev", "eth0")
            _run("ip", "-n", ns, "link", "set", "eth0", "up")

    def _make_uts(self):
        # one persistent UTS namespace per host (a bind mount of the nsfs
        # file): slurmd, its job steps and node_exec all see the node's name
        for host in (CTLD_HOST, *self.nodes):
            path = self._uts_file(host)
            open(path, "w").close()
            _run("unshare", f"--uts={path}", "hostname", host)
            self._uts.append(path)

    def _write_conf(self):
        d = self.dir
        nodes = "\n".join(
            f"NodeName={n} NodeAddr={self.node_addr(n)} NodeHostname={n} CPUs={self.cpus} "
            f"RealMemory={self.memory_mb} Gres=gpu:{self.gpus} State=UNKNOWN" for n in self.nodes)
        conf = f"""# generated by test/integration/slurmcluster.py for one test run
ClusterName={self.cluster}
SlurmctldHost={CTLD_HOST}({self.ctld_addr})
SlurmctldPort={CTLD_PORT}
SlurmdPort={SLURMD_PORT}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={d}/ctld/state
SlurmctldPidFile={d}/ctld/slurmctld.pid
SlurmdSpoolDir={d}/nodes/%n/spool
SlurmdPidFile={d}/nodes/%n/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd-%n.log
SlurmctldDebug=debug
SlurmdDebug=debug
PlugStackConfig={self.plugstack}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=100
GresTypes=gpu
SlurmdParameters=config_overrides
ReturnToService=2
SlurmdTimeout={self.slurmd_timeout}
KillWait=5
MailProg=/bin/true
{nodes}
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP
{self.extra_conf}
"""
        with open(self.conf, "w") as f:
            f.write(conf)
        lines = ["AutoDetect=off"]
        for n in self.nodes:
            if self.gres_lines:
                lines.append(self.gres_lines(n, self.device_dir(n)).rstrip("\n"))
                continue
            devs = self.gpu_devices(n)
            files = devs[0] if len(devs) == 1 else os.path.join(self.device_dir(n), f"nvidia[0-{len(devs) - 1}]")
            lines.append(f"NodeName={n} Name=gpu File={files}")
        with open(os.path.join(self.dir, "etc", "gres.conf"), "w") as f:
            f.write("\n".join(lines) + "\n")
        with open(self.plugstack, "w") as f:
            f.write(self.plugstack_text)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(CLIENT_ENV_PREFIXES)}
        self.env["SLURM_CONF"] = self.conf

    def _spawn(self, key, argv):
        out = open(os.path.join(self.dir, "log", f"{key}.stderr"), "ab")
        self._files.append(out)
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=self.env,
                             cwd=self.dir, preexec_fn=_die_with_parent)
        self.procs[key] = p
        return p

    def _died(self, key):
        p = self.procs[key]
        if p.poll() is None:
            return None
        return f"{key} exited {p.returncode}\n{self.log_tail()}"

    def _start_munged(self):
        key = os.path.join(self.dir, "munge", "munge.key")
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, os.urandom(128))
        os.close(fd)
        m = os.path.join(self.dir, "munge")
        # in the fabric namespace, so that the namespace sweep ends it too
        self._spawn("munged", [*self._enter(), "munged", "--foreground", f"--socket={self.munge_socket}",
                               f"--key-file={key}", f"--pid-file={m}/munged.pid", f"--log-file={m}/munged.log",
                               f"--seed-file={m}/munged.seed", f"--origin={self.ctld_addr}"])
        wait_for(lambda: self._died("munged") or os.path.exists(self.munge_socket), 10, "munged's socket")
        if self._died("munged"):
            raise AssertionError(self._died("munged"))

    def _start_slurmctld(self):
        self._spawn("slurmctld", [*self._enter(), "slurmctld", "-D", "-f", self.conf])

        def up():
            if self._died("slurmctld"):
                return True
            return self.client("scontrol", "ping", check=False, timeout=10).returncode == 0
        wait_for(up, 30, "slurmctld to answer scontrol ping", interval=0.2)
        if self._died("slurmctld"):
            raise AssertionError(self._died("slurmctld"))

    def _start_slurmd(self, node):
        self._spawn(node, [*self._enter(node), "slurmd", "-D", "-N", node, "-f", self.conf])

    def add_cleanup(self, fn):
        """fn() runs in cleanup(), after the cluster's processes are gone and
        before its directory is removed (last added first), whenever
        cleanup() runs: at exit, on SIGTERM, when start() fails.  For what a
        test adds to the cluster (the nodes' qvisor daemons)."""
        self._cleanups.append(fn)

    def cleanup(self):
        """Ends every process of the cluster, removes its namespaces (and so
        the veths and the bridge), its mounts and its directory, after
        running add_cleanup()'s functions.  Idempotent;
        QVISOR_TEST_KEEP_SLURM=1 keeps the directory (logs) for a look."""
        if self._cleaned or not self._started:
            return
        self._cleaned = True
        # what runs before the first kill too: slurmscriptd leaves when
        # slurmctld dies, before a sweep would list it
        killed = {pid for ns in self._netns for pid in _netns_pids(ns)}
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
        for ns in reversed(self._netns):
            _kill_netns(ns, killed)
        for p in self.procs.values():
            try:
                p.wait(timeout=scaled(10))
            except subprocess.TimeoutExpired:
                pass
        # the orphans (slurmstepd, slurmscriptd, job steps) are init's to
        # reap (this machine's init takes up to 2 s): a killed process holds
        # no namespace any more, but pgrep lists its zombie until then
        deadline = time.monotonic() + scaled(5)
        while any(os.path.exists(f"/proc/{pid}") for pid in killed) and time.monotonic() < deadline:
            time.sleep(0.05)
        for ns in reversed(self._netns):
            _run("ip", "netns", "del", ns, check=False)
        for path in self._uts:
            _run("umount", path, check=False)
        while self._cleanups:
            try:
                self._cleanups.pop()()
            except Exception as e:  # the rest must still go
                print(f"slurmcluster: a clean-up function failed: {e!r}")
        for f in self._files:
            f.close()
        if self.dir:
            for mp in _mounts_under(self.dir):   # none unless an umount failed
                _run("umount", "-l", mp, check=False)
            if os.environ.get("QVISOR_TEST_KEEP_SLURM") == "1":
                print(f"slurmcluster: kept {self.dir}")
            else:
                shutil.rmtree(self.dir, ignore_errors=True)
        _live.discard(self)

    stop = cleanup

    # --- running things --------------------------------------------------------

    def client(self, *argv, check=True, timeout=30, user=None):
        """A Slurm client (sbatch, squeue, ...) in slurmctld's namespaces with
        SLURM_CONF set, as root or as user (a name: setpriv, with the user's
        group and no other); SlurmError when check and it fails."""
        if user:
            gid = pwd.getpwnam(user).pw_gid
            argv = ("setpriv", f"--reuid={user}", f"--regid={gid}", "--clear-groups", *argv)
        p = subprocess.run([*self._enter(), *argv], capture_output=True, text=True, env=self.env,
                           cwd=self.jobs_dir, timeout=scaled(timeout), stdin=subprocess.DEVNULL)
        if check and p.returncode != 0:
            raise SlurmError(list(argv), p)
        return p

    def node_exec(self, node, argv, check=False, timeout=30, **kw):
        """argv in node's network and UTS namespaces (CompletedProcess, text)."""
        p = subprocess.run([*self._enter(node), *argv], capture_output=True, text=True, env=self.env,
                           timeout=scaled(timeout), stdin=subprocess.DEVNULL, **kw)
        if check and p.returncode != 0:
            raise SlurmError(list(argv), p)
        return p

    def node_pids(self, node):
        """Every process in node's network namespace (slurmd, slurmstepd,
        job steps)."""
        return _netns_pids(self.node_ns(node))

    def sbatch(self, script, *opts, user=None):
        """Submits a batch job; returns its id.  script: the script's text
        (a "#!/bin/sh" line is added when it has none), or None with
        "--wrap", CMD in opts.  Output goes to jobs_dir/ID.out unless opts
        say otherwise.  A refused submission raises SlurmError.  user:
        submitted by that user (client()); the job then runs in, and writes
        its output to, user_dir(user)."""
        cwd = self.user_dir(user) if user else self.jobs_dir
        argv = ["sbatch", "--parsable", f"--chdir={cwd}"]
        if not any(o == "-o" or o.startswith("--output") for o in opts):
            argv.append(f"--output={cwd}/%j.out")
        argv.extend(opts)
        if script is not None:
            if not script.startswith("#!"):
                script = "#!/bin/sh\n" + script
            fd, path = tempfile.mkstemp(prefix="job-", suffix=".sh", dir=cwd)
            with os.fdopen(fd, "w") as f:
                f.write(script)
            if user:        # sbatch reads it as the user
                os.chmod(path, 0o644)
            argv.append(path)
        p = self.client(*argv, user=user)
        return int(p.stdout.strip().split(";")[0])

    def user_dir(self, user):
        """jobs_dir/USER, owned by user (made on first use): where the
        user's jobs run and write their output."""
        path = os.path.join(self.jobs_dir, user)
        if not os.path.isdir(path):
            pw = pwd.getpwnam(user)
            os.mkdir(path, 0o755)
            os.chown(path, pw.pw_uid, pw.pw_gid)
        return path

    def job_output(self, job, user=None):
        """The text of ID.out in jobs_dir (user_dir(user) for a job of
        user's), "" while there is none."""
        try:
            with open(os.path.join(self.user_dir(user) if user else self.jobs_dir, f"{job}.out")) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def squeue(self):
        """Jobs slurmctld still lists: dicts with id, name, state, reason, nodes."""
        p = self.client("squeue", "--noheader", "--all", "--states=all", "--format=%i|%j|%T|%r|%N")
        jobs = []
        for line in p.stdout.splitlines():
            jid, name, state, reason, nodes = line.split("|")
            jobs.append({"id": int(jid), "name": name, "state": state, "reason": reason, "nodes": nodes})
        return jobs

    def scontrol_show_job(self, job):
        """`scontrol show job -d ID` as a dict (parse_records): JobState,
        Reason, NodeList, BatchHost, ..., and "details", one dict per node with
        Nodes, CPU_IDs, Mem and GRES ("gpu:1(IDX:0)") while the job holds it."""
        recs = parse_records(self.client("scontrol", "show", "job", "-d", str(job)).stdout)
        return recs[0]

    def scontrol_show_node(self, node):
        return parse_records(self.client("scontrol", "show", "node", node).stdout)[0]

    def node_states(self):
        """{node: state} from sinfo, long names ("idle", "mixed", "allocated",
        "down*", "idle*": '*' is a node that does not answer)."""
        p = self.client("sinfo", "--noheader", "--Node", "--format=%N|%T")
        return dict(line.split("|") for line in p.stdout.splitlines())

    def wait_nodes_state(self, states, timeout, nodes=None):
        """Until every node (or those named) is in one of states; returns
        node_states()."""
        want = nodes or self.nodes
        seen = {}

        def ok():
            seen.clear()
            seen.update(self.node_states())
            return all(seen.get(n) in states for n in want) and dict(seen)
        try:
            return wait_for(ok, timeout, f"nodes {want} {states}", interval=0.2)
        except AssertionError:
            raise AssertionError(f"nodes {want} not {states}: {seen}\n{self.log_tail()}") from None

    def wait_job_state(self, job, states, timeout):
        """Until the job's JobState is one of states; returns
        scontrol_show_job().  Fails at once when it ends in another state."""
        states = (states,) if isinstance(states, str) else tuple(states)
        seen = {}

        def ok():
            j = self.scontrol_show_job(job)
            seen.clear()
            seen.update(j)
            if j["JobState"] in states:
                return j
            if j["JobState"] in TERMINAL:
                raise AssertionError(f"job {job} ended {j['JobState']} (want {states}): {j}\n"
                                     f"output: {self.job_output(job)}\n{self.log_tail()}")
            return None
        try:
            return wait_for(ok, timeout, f"job {job} {states}", interval=0.1)
        except AssertionError as e:
            if "timed out" not in str(e):
                raise
            raise AssertionError(f"job {job} not {states} in time: {seen.get('JobState')} "
                                 f"Reason={seen.get('Reason')}\n{self.log_tail()}") from None

    def scancel(self, *jobs):
        self.client("scancel", *map(str, jobs))

    # --- node failures ---------------------------------------------------------

    def slurmd_running(self, node):
        p = self.procs.get(node)
        return p is not None and p.poll() is None

    def kill_slurmd(self, node, sig=signal.SIGKILL):
        """Kills node's slurmd alone (its slurmstepds and jobs go on, as when
        a real slurmd crashes); returns its exit status."""
        p = self.procs[node]
        p.send_signal(sig)
        return p.wait(timeout=scaled(30))

    def restart_slurmd(self, node, wait=True):
        """Starts node's slurmd again (kills it first if it runs); with wait,
        until slurmctld has its registration (SlurmdStartTime moves on)."""
        if self.slurmd_running(node):
            self.kill_slurmd(node)
        before = self.scontrol_show_node(node).get("SlurmdStartTime", "")
        # SlurmdStartTime has whole seconds: start in a later second than the last start
        while time.strftime("%Y-%m-%dT%H:%M:%S") <= before:
            time.sleep(0.1)
        self._start_slurmd(node)
        if wait:
            def registered():
                if self._died(node):
                    raise AssertionError(self._died(node))
                return self.scontrol_show_node(node).get("SlurmdStartTime", "") > before
            wait_for(registered, 30, f"{node}'s slurmd to register again", interval=0.2)
        return self.procs[node]

    # --- diagnostics -----------------------------------------------------------

    def log_tail(self, lines=25):
        """The last lines of slurmctld's and every slurmd's log, for a failure
        message."""
        out = []
        paths = [self.slurmctld_log] + [self.slurmd_log(n) for n in self.nodes]
        paths += [os.path.join(self.dir, "log", f"{k}.stderr") for k in ("munged", "slurmctld")]
        for path in paths:
            try:
                with open(path, errors="replace") as f:
                    tail = f.readlines()[-lines:]
            except OSError:
                continue
            out.append(f"--- {path}\n" + "".join(tail))
        return "\n".join(out)
