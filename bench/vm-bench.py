#!/usr/bin/env python3
"""VM lifecycle benchmark: the real daemon, the real CLI and real QEMU (TCG),
against bare QEMU started with the same command line in the same run.

  vm-bench.py [--rounds N] [--vms N] [--conc-rounds N] [--idle-vms N]
              [--idle-seconds S] [--after-window S] [--strace-seconds S]
              [--json PATH|-] [--check]

1. Start latency.  N rounds, the order rotating each round:
     qvisor  `qvisor vm start X` as a process, until it exits (the daemon
             answers once QEMU's monitor answered and `cont` succeeded),
     socket  the same request sent straight to the control socket (the
             daemon's share, without the CLI's process start),
     bare    QEMU spawned with the argv the daemon wrote to qemu.log, until
             its monitor greeted, qmp_capabilities and `cont` were answered.
   The bare QEMU gets its monitor and agent sockets exactly as the daemon's
   does: listening unix sockets created first and passed as fds 3 and 4
   (`-chardev socket,fd=3`), so
   its argv is the daemon's but for -pidfile (and a fresh port for the SSH
   forward, picked as the daemon picks it), and nothing polls for a socket
   file.  Each VM start is followed by `vm stop --force`, each bare
   QEMU by QMP `quit`; those are timed too.
2. Concurrency: --vms VMs started at once, then stopped at once with
   --force: one control-socket request each, or one CLI process each,
   against as many bare QEMUs started at once with the VMs' own argv and
   quit at once.  The stops come once the guests have halted (their QEMUs
   together use under 10 ms of CPU in each of two 0.1 s windows: 20
   SeaBIOS boots at once keep both CPUs busy for about a second here).
   The requests and the bare quits are also timed 0.3 s after the start,
   the guests still booting: reported, no target.  --conc-rounds rounds,
   the order rotating.  The two
   concurrency targets are judged on the requests: the baseline sends its
   QMP commands on sockets it holds and spawns no process per command, so
   requests against QMP messages compare the same things.  The CLI form is
   reported beside them with its floor: --vms `qvisor --version`
   processes spawned and waited for the same way.
3. Daemon memory: --idle-vms VMs defined and all started at once (their
   guests halt), VmRSS/VmHWM/RssAnon of the daemon from /proc/PID/status
   (target: at most 10 MB with 200 VMs); after the idle windows below,
   `qvisor vm list` as a whole CLI process, --list-rounds times (target:
   median at most 20 ms), beside `qvisor --version` (the CLI's floor).
4. Idle: with those VMs running and nothing asking the daemon anything, its
   CPU time (all threads, /proc/PID/task/*/schedstat, ns) and context
   switches, first until --after-window seconds after the mass start (QMP
   commands sent during a start carry 10 s deadlines), then for
   --idle-seconds of steady state; then `strace -f -c` for
   --strace-seconds if strace is installed.  Target: no wake-ups in the
   steady state (no heartbeats are configured).

The targets (issue 16), each against bare QEMU of the same run where there
is one, are listed together at the end of the report:
  - `vm start` overhead over bare QEMU (median)            <= 5 ms
  - --vms concurrent stops (force) / bare QMP quits        <= 1.5x
  - --vms concurrent starts over bare QEMU, per VM         <= 5 ms
  - --idle-vms VMs: daemon VmRSS and VmHWM                 <= 10 MB
  - --idle-vms VMs: `qvisor vm list` (whole process)       <= 20 ms
  - --idle-vms VMs: wake-ups in the idle steady state      0

The VMs' disk is a boot sector that halts (cli; hlt): SeaBIOS boots it in
~0.2 s of TCG time and the guests then cost no CPU, so nothing needs to
boot and the guests do not compete with what is measured (once they have
halted: 2. waits for that).  64M of RAM and
1 vCPU each.  The node's state directory is on the disk (as /var/lib/qvisor
is) and its run directory on a tmpfs of its own (as RUN_DIR is; root
only, else in the temp directory: the report says which).  Results
are ratios and differences against the baseline of the same run: the
machines are shared and noisy.  --check exits 1 when a
target is missed.  Every QEMU started here is killed on the way out (their
-pidfile lies in the private node's run directory), also on SIGTERM."""

import argparse
import fcntl
import json
import os
import re
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.environ.get("QVISOR_SOURCE_ROOT") or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if "QVISOR_BIN" not in os.environ:
    _built = os.path.join(ROOT, "build", "cmd", "qvisor")
    if os.path.exists(_built):
        os.environ["QVISOR_BIN"] = _built
sys.path.insert(0, os.path.join(ROOT, "test", "integration"))
sys.path.insert(0, os.path.join(ROOT, "test", "guest"))
import guestlib  # noqa: E402
from qvtest import QVISOR, Node, thread_cpu_ns as cpu_ns, thread_switches as ctxt_switches  # noqa: E402

START_TARGET_MS = 5.0          # vm start over bare QEMU, median
CONC_STOP_RATIO_TARGET = 1.5   # concurrent stops / bare QMP quits
CONC_START_TARGET_MS = 5.0     # concurrent starts over bare QEMU, per VM
RSS_TARGET_KB = 10 * 1024
LIST_TARGET_MS = 20.0          # `qvisor vm list`, whole process, median

# Concurrent stops are timed once the guests have halted (what the targets
# are about: guests that cost no CPU), and again BOOTING_WAIT s after the
# start, while 20 SeaBIOS boots still use both CPUs (~1 s here): reported,
# no target.
SETTLE_WINDOW_S = 0.1
SETTLE_CPU_MS = 10.0
BOOTING_WAIT = 0.3

# The guests halt at once and cost no CPU, so admission (which counts every
# defined VM against CPUs × cpu_overcommit, at most 100) must not stop 200
# one-vCPU VMs on a 2-CPU machine: it is not what this measures.  Their disks are small for
# the same reason (the storage pool counts what each may grow to).  All of
# them are started at once, one CLI process each: more connections than the
# default daemon.max_clients (64).
CONFIG = ("vm_defaults:\n  cpus: 1\n  memory: 64M\n  disk: 16M\n  stop_timeout: 30s\n  kill_timeout: 5s\n"
          "qemu:\n  accelerator: tcg\n"
          "resources:\n  cpu_overcommit: 100\n"
          "daemon:\n  max_clients: 256\n")


def now():
    return time.perf_counter()


def ms(seconds):
    return round(seconds * 1000.0, 2)


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# processes and /proc

class Spawned:
    """A process started with posix_spawn (as cheap as it gets from Python,
    and the same for the CLI and for bare QEMU); stdout/stderr to a file."""

    def __init__(self, argv, out_path, extra_fds=(), setsid=False):
        """extra_fds: fds that become 3, 4, ... in the child."""
        self.out_path = out_path
        with open(out_path, "wb") as out:
            actions = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                       (os.POSIX_SPAWN_DUP2, out.fileno(), 1),
                       (os.POSIX_SPAWN_DUP2, out.fileno(), 2)]
            for i, fd in enumerate(extra_fds):
                actions.append((os.POSIX_SPAWN_DUP2, fd, 3 + i))
            self.pid = os.posix_spawnp(argv[0], argv, os.environ, file_actions=actions, setsid=setsid)
        self.rc = None
        self.done_at = None

    def wait(self):
        if self.rc is None:
            _, status = os.waitpid(self.pid, 0)
            self.done_at = now()
            self.rc = os.waitstatus_to_exitcode(status)
        return self.rc

    def output(self):
        with open(self.out_path, errors="replace") as f:
            return f.read()

    def kill(self):
        if self.rc is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.wait()


def proc_status(pid, keys=("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem", "VmSize", "Threads")):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in keys:
                out[k] = int(v.split()[0])
    return out


# ---------------------------------------------------------------------------
# QMP, minimal and blocking

class Monitor:
    def __init__(self, path, timeout=60.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.f = self.sock.makefile("rb")
        self.greeting = self._next()
        if "QMP" not in self.greeting:
            raise RuntimeError(f"no QMP greeting: {self.greeting}")

    def _next(self):
        while True:
            line = self.f.readline()
            if not line:
                raise RuntimeError("monitor closed")
            msg = json.loads(line)
            if "event" not in msg:
                return msg

    def command(self, name):
        self.sock.sendall(json.dumps({"execute": name}).encode() + b"\n")
        msg = self._next()
        if "error" in msg:
            raise RuntimeError(f"{name}: {msg['error']}")
        return msg.get("return")

    def send(self, name):
        self.sock.sendall(json.dumps({"execute": name}).encode() + b"\n")

    def close(self):
        self.f.close()
        self.sock.close()


PORTS_GIVEN = set()  # SSH forward ports given to bare QEMUs in this run


class BareQemu:
    """QEMU with a VM's argv, and every fd the daemon passes it: monitor,
    guest agent and serial console on listening sockets (fds 3, 4, 5 as the
    daemon numbers them), the VM's files (-add-fd: disk, base image, seed,
    serial log) opened with the modes the daemon uses; -pidfile and the
    serial log moved into the bench's directory.  files: opaque name of an
    -add-fd -> (path, open flags)."""

    def __init__(self, argv, workdir, name, files):
        self.argv = list(argv)
        i = self.argv.index("-pidfile")
        self.argv[i + 1] = os.path.join(workdir, name + ".pid")
        mon = [a for a in self.argv if a.startswith("socket,id=qmp0,")]
        if mon != ["socket,id=qmp0,fd=3,server=on,wait=off"]:
            raise RuntimeError(f"unexpected monitor in the VM's argv: {mon}")
        agent = [a for a in self.argv if a.startswith("socket,id=qga0,")]
        if agent not in ([], ["socket,id=qga0,fd=4,server=on,wait=off"]):
            raise RuntimeError(f"unexpected agent channel in the VM's argv: {agent}")
        self.sock_path = os.path.join(workdir, name + ".qmp")
        self.agent_path = os.path.join(workdir, name + ".qga") if agent else None
        self.console_path, self.console_fd = None, None
        for a in self.argv:
            m = re.match(r"socket,id=serial0,fd=(\d+),", a)
            if m:
                self.console_path, self.console_fd = os.path.join(workdir, name + ".con"), int(m.group(1))
        self.fdsets = {}  # fd number -> (path, flags)
        for k, a in enumerate(self.argv[:-1]):
            if a == "-add-fd":
                m = re.match(r"fd=(\d+),set=\d+,opaque=(\w+)$", self.argv[k + 1])
                if not m or m.group(2) not in files:
                    raise RuntimeError(f"unexpected -add-fd in the VM's argv: {self.argv[k + 1]}")
                path, flags = files[m.group(2)]
                if m.group(2) == "serial0":
                    path = os.path.join(workdir, name + ".serial")
                self.fdsets[int(m.group(1))] = (path, flags)
        self.log_path = os.path.join(workdir, name + ".log")
        self.proc = None
        self.mon = None
        self.t0 = self.t_up = None

    def spawn(self):
        """Timed from here: listening sockets, the VM's files, spawn (like
        the daemon's launch)."""
        self.t0 = now()
        listeners, files = [], []
        for path in (self.sock_path, self.agent_path, self.console_path):
            if not path:
                continue
            if os.path.exists(path):
                os.unlink(path)
            ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            ls.bind(path)
            ls.listen(1)
            listeners.append(ls)
        by_number = {3: listeners[0].fileno()}
        if self.agent_path:
            by_number[4] = listeners[1].fileno()
        if self.console_path:
            by_number[self.console_fd] = listeners[-1].fileno()
        for number, (path, flags) in self.fdsets.items():
            fd = os.open(path, flags | os.O_CLOEXEC, 0o640)
            files.append(fd)
            by_number[number] = fd
        if sorted(by_number) != list(range(3, 3 + len(by_number))):
            raise RuntimeError(f"the VM's fds are not 3..N: {sorted(by_number)}")
        # a free port for the SSH forward, picked as the daemon picks it:
        # the kernel's, never one given to another bare QEMU of this run
        # (QEMU binds it only later; twenty picks at once did get one twice)
        for i, a in enumerate(self.argv):
            if "hostfwd=tcp:127.0.0.1:" in a:
                held = []
                try:
                    while True:
                        ps = socket.socket()
                        held.append(ps)
                        ps.bind(("127.0.0.1", 0))
                        port = ps.getsockname()[1]
                        if port not in PORTS_GIVEN:
                            break
                finally:
                    for ps in held:
                        ps.close()
                PORTS_GIVEN.add(port)
                self.argv[i] = re.sub(r"(hostfwd=tcp:127\.0\.0\.1:)\d+", rf"\g<1>{port}", a)
        # never 3, 4, ... themselves: dup2 must clear CLOEXEC
        high = [fcntl.fcntl(by_number[k], fcntl.F_DUPFD_CLOEXEC, 100) for k in sorted(by_number)]
        try:
            self.proc = Spawned(self.argv, self.log_path, extra_fds=high, setsid=True)
        finally:
            for fd in high + files:
                os.close(fd)
            for ls in listeners:
                ls.close()

    def until_running(self):
        """Monitor greeting, qmp_capabilities, cont answered; returns seconds
        since spawn()."""
        try:
            self.mon = Monitor(self.sock_path)
            self.mon.command("qmp_capabilities")
            self.mon.command("cont")
        except Exception as e:
            raise RuntimeError(f"bare QEMU: {e}\n{self.proc.output()[-2000:]}")
        self.t_up = now()
        return self.t_up - self.t0

    def quit(self):
        """QMP quit, wait for the exit; returns seconds."""
        t = now()
        try:
            self.mon.send("quit")
        except OSError:
            pass
        self.proc.wait()
        self.mon.close()
        took = now() - t
        self.remove_sockets()
        return took

    def remove_sockets(self):
        for path in (self.sock_path, self.agent_path, self.console_path):
            if path and os.path.exists(path):
                os.unlink(path)

    def kill(self):
        if self.proc:
            self.proc.kill()
        if self.mon:
            self.mon.close()


# ---------------------------------------------------------------------------

class Bench:
    def __init__(self, args):
        self.a = args
        # the run directory on a tmpfs, as RUN_DIR (/run/qvisor) is on a node
        # (a private one: /run is not always a tmpfs, it is not in some
        # containers); the state directory on the disk, as /var/lib/qvisor is
        self.node = Node(CONFIG, run_tmpfs=True)
        self.bare_dir = os.path.join(self.node.run_dir, "bare")  # under run_dir: Node.cleanup kills them
        self.out_dir = tempfile.mkdtemp(prefix="out-", dir=self.node.dir)
        self.bares = []
        self.res = {"config": {"rounds": args.rounds, "vms": args.vms, "idle_vms": args.idle_vms,
                               "idle_seconds": args.idle_seconds, "accelerator": "tcg",
                               "nproc": os.cpu_count(), "run_dir_tmpfs": bool(self.node.run_mount)}}
        self._n = 0

    # -- helpers
    def qv_argv(self, *args):
        return [QVISOR, "--config", self.node.config, *args]

    def out_path(self):
        self._n += 1
        return os.path.join(self.out_dir, f"{self._n}.out")

    def qv(self, *args, want=0):
        p = Spawned(self.qv_argv(*args), self.out_path())
        rc = p.wait()
        if want is not None and rc != want:
            raise RuntimeError(f"qvisor {' '.join(args)}: exit {rc}\n{p.output()}\n--- daemon log ---\n"
                               f"{self.node.log()[-3000:]}")
        return p

    def dpid(self):
        return self.node.proc.pid

    def argv_of(self, name):
        """The argv of the VM's last start, from INSTANCE_DIR/qemu.log."""
        with open(os.path.join(self.node.state, "instances", name, "qemu.log")) as f:
            lines = f.read().splitlines()
        i = max(k for k, line in enumerate(lines) if line.startswith("---- qvisor: starting"))
        argv = lines[i + 1].split(" ")  # written space-joined, unquoted: fine while no argument holds a space
        if argv[0] != "qemu-system-x86_64" and not argv[0].endswith("qemu-system-x86_64"):
            raise RuntimeError(f"odd argv in qemu.log: {argv[:3]}")
        return argv

    def files_of(self, name):
        """What the daemon opens for the VM's -add-fd entries, and how."""
        inst = os.path.join(self.node.state, "instances", name)
        return {"disk0": (os.path.join(inst, "disk.qcow2"), os.O_RDWR),
                "base0": (os.path.join(self.node.state, "images", "halt.qcow2"), os.O_RDONLY),
                "seed0": (os.path.join(inst, "seed.iso"), os.O_RDONLY),
                "serial0": (None, os.O_WRONLY | os.O_APPEND | os.O_CREAT)}

    def create(self, names):
        for n in names:
            self.qv("vm", "create", n, "--image", "halt")

    def ctl_request(self, method, params, timeout=120):
        """One request on the control socket; the reply (dict)."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(self.node.socket)
        s.sendall(json.dumps({"id": 1, "method": method, "params": params}).encode() + b"\n")
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise RuntimeError(f"{method}: control socket closed")
            buf += chunk
        s.close()
        reply = json.loads(buf.split(b"\n")[0])
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    # -- setup
    def setup(self):
        self.node.start_daemon()
        os.makedirs(self.bare_dir, exist_ok=True)
        # The base image is a boot sector that halts: nothing boots, and
        # the guests do not compete with what is measured
        base = os.path.join(self.node.dir, "halt.raw")
        guestlib.write_halt_disk(base)
        self.qv("image", "import", base, "halt", "--format", "raw")
        self.res["daemon_rss_kb"] = {"idle_no_vms": proc_status(self.dpid())}

    # -- 1. start latency
    def start_latency(self):
        name = "lat"
        self.create([name])
        # warm-up (first start probes QEMU's capabilities), and the argv
        self.qv("vm", "start", name)
        self.qv("vm", "stop", name, "--force")
        argv = self.argv_of(name)
        self.res["qemu_argv"] = argv
        files = self.files_of(name)
        b = BareQemu(argv, self.bare_dir, "lat", files)
        self.bares.append(b)
        b.spawn()
        b.until_running()
        b.quit()

        t = {"qvisor": [], "socket": [], "bare": [], "qvisor_stop": [], "socket_stop": [], "bare_quit": [],
             "cli_noop": []}
        daemon_cpu = {"qvisor": [], "socket": []}
        kinds = ["qvisor", "socket", "bare"]
        for r in range(self.a.rounds):
            order = kinds[r % 3:] + kinds[:r % 3]
            for kind in order:
                if kind == "qvisor":
                    c0 = cpu_ns(self.dpid())
                    t0 = now()
                    self.qv("vm", "start", name)
                    t["qvisor"].append(now() - t0)
                    daemon_cpu["qvisor"].append(cpu_ns(self.dpid()) - c0)
                    t0 = now()
                    self.qv("vm", "stop", name, "--force")
                    t["qvisor_stop"].append(now() - t0)
                elif kind == "socket":
                    c0 = cpu_ns(self.dpid())
                    t0 = now()
                    self.ctl_request("vm.start", {"name": name})
                    t["socket"].append(now() - t0)
                    daemon_cpu["socket"].append(cpu_ns(self.dpid()) - c0)
                    t0 = now()
                    self.ctl_request("vm.stop", {"name": name, "force": True})
                    t["socket_stop"].append(now() - t0)
                else:
                    b = BareQemu(argv, self.bare_dir, "lat", files)
                    self.bares.append(b)
                    b.spawn()
                    t["bare"].append(b.until_running())
                    t["bare_quit"].append(b.quit())
            # the CLI's own floor: a process that parses and prints, no daemon
            t0 = now()
            self.qv("--version")
            t["cli_noop"].append(now() - t0)

        m = {k: ms(med(v)) for k, v in t.items()}
        paired = [a - b for a, b in zip(t["qvisor"], t["bare"])]
        over = m["qvisor"] - m["bare"]
        self.res["start_latency"] = {
            "rounds": self.a.rounds,
            "median_ms": m,
            "min_ms": {k: ms(min(v)) for k, v in t.items()},
            "overhead_ms": round(over, 2),
            "overhead_paired_median_ms": ms(med(paired)),
            "daemon_overhead_ms": round(m["socket"] - m["bare"], 2),
            "ratio": round(m["qvisor"] / m["bare"], 3),
            "daemon_cpu_ms_per_start": ms(med(daemon_cpu["qvisor"] + daemon_cpu["socket"]) / 1e9),
            "target_ms": START_TARGET_MS,
            "target_met": over <= START_TARGET_MS,
            "samples_ms": {k: [ms(x) for x in v] for k, v in t.items()},
        }

    # -- 2. concurrency
    def concurrency(self):
        n = self.a.vms
        names = [f"c{i:02d}" for i in range(n)]
        t0 = now()
        self.create(names)
        self.res["create_ms_per_vm"] = ms((now() - t0) / n)
        # the argv of each VM, from one sequential start
        for nm in names:
            self.qv("vm", "start", nm)
            self.qv("vm", "stop", nm, "--force")
        argvs = [self.argv_of(nm) for nm in names]
        rounds = []
        kinds = ["qvisor", "socket", "bare"]
        for r in range(self.a.conc_rounds):
            row = {"cli_floor_total": self._conc_floor(n)}
            for kind in kinds[r % 3:] + kinds[:r % 3]:
                if kind == "bare":
                    row.update(self._conc_bare(names, argvs))
                else:
                    row.update(self._conc_daemon(kind, names))
            rounds.append(row)
        medr = {k: med([rw[k] for rw in rounds]) for k in rounds[0]}
        tq, ts, tb = medr["qvisor_start_total"], medr["socket_start_total"], medr["bare_start_total"]
        self.res["concurrency"] = {
            "vms": n,
            "rounds": len(rounds),
            "median_ms": {k: ms(v) for k, v in medr.items()},
            "start_ratio": round(ts / tb, 3),
            "start_overhead_ms_total": ms(ts - tb),
            "start_overhead_ms_per_vm": ms((ts - tb) / n),
            "cli_start_overhead_ms_per_vm": ms((tq - tb) / n),
            "start_ms_per_vm": {"qvisor": ms(tq / n), "socket": ms(ts / n), "bare": ms(tb / n)},
            "stop_ratio": round(medr["socket_stop_total"] / medr["bare_quit_total"], 3),
            "cli_stop_ratio": round(medr["qvisor_stop_total"] / medr["bare_quit_total"], 3),
            "stop_booting_ratio": round(medr["socket_stop_booting_total"] / medr["bare_quit_booting_total"], 3),
            "cli_floor_ms": ms(medr["cli_floor_total"]),
            "daemon_cpu_ms_per_vm_start": ms(medr["qvisor_daemon_cpu_start"] / n),
            "daemon_cpu_ms_per_vm_stop": ms(medr["qvisor_daemon_cpu_stop"] / n),
            "stop_ratio_target": CONC_STOP_RATIO_TARGET,
            "start_overhead_target_ms_per_vm": CONC_START_TARGET_MS,
            "rounds_ms": [{k: ms(v) for k, v in rw.items()} for rw in rounds],
        }
        self.res["daemon_rss_kb"]["after_concurrency"] = proc_status(self.dpid())

    def _wait_all(self, procs):
        ths = [threading.Thread(target=p.wait) for p in procs]
        for th in ths:
            th.start()
        for th in ths:
            th.join()

    def _requests(self, method, params_list):
        """Concurrent control-socket requests, sent from one thread as the
        bare QMP commands are: each connects and sends in turn, then the
        replies are read as they come.  The time each reply came."""
        socks, done, bufs = [], [None] * len(params_list), [b""] * len(params_list)
        sel = selectors.DefaultSelector()
        try:
            for i, pr in enumerate(params_list):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                socks.append(s)
                s.connect(self.node.socket)
                s.sendall(json.dumps({"id": 1, "method": method, "params": pr}).encode() + b"\n")
                s.setblocking(False)
                sel.register(s, selectors.EVENT_READ, i)
            left, deadline = len(socks), now() + 120
            while left:
                if now() > deadline:
                    raise RuntimeError(f"concurrent {method}: {left} replies missing after 120 s")
                for key, _ in sel.select(timeout=1.0):
                    i = key.data
                    chunk = socks[i].recv(65536)
                    if not chunk:
                        raise RuntimeError(f"{method}: control socket closed")
                    bufs[i] += chunk
                    if b"\n" in bufs[i]:
                        done[i] = now()
                        sel.unregister(socks[i])
                        left -= 1
                        reply = json.loads(bufs[i].split(b"\n")[0])
                        if "error" in reply:
                            raise RuntimeError(f"concurrent {method} failed: {reply['error']}")
        finally:
            sel.close()
            for s in socks:
                s.close()
        return done

    def _conc_daemon(self, kind, names):
        """All VMs started at once, then stopped at once: one CLI process
        each (kind "qvisor") or one control-socket request each ("socket")."""
        def run(verb, extra, params):
            t0 = now()
            if kind == "socket":
                done = self._requests(f"vm.{verb}", [dict(name=nm, **params) for nm in names])
            else:
                procs = [Spawned(self.qv_argv("vm", verb, nm, *extra), self.out_path()) for nm in names]
                self._wait_all(procs)
                bad = [(nm, p.rc, p.output()) for nm, p in zip(names, procs) if p.rc != 0]
                if bad:
                    raise RuntimeError(f"concurrent vm {verb} failed: {bad[:3]}")
                done = [p.done_at for p in procs]
            return now() - t0, med([d - t0 for d in done])
        c0 = cpu_ns(self.dpid())
        t_start, each = run("start", [], {})
        c1 = cpu_ns(self.dpid())
        settle = self._settle(self._daemon_qemu_pids(names))
        c2 = cpu_ns(self.dpid())
        t_stop, _ = run("stop", ["--force"], {"force": True})
        c3 = cpu_ns(self.dpid())
        row = {f"{kind}_start_total": t_start, f"{kind}_start_median_each": each, f"{kind}_stop_total": t_stop,
               f"{kind}_daemon_cpu_start": (c1 - c0) / 1e9, f"{kind}_daemon_cpu_stop": (c3 - c2) / 1e9,
               f"{kind}_settle": settle}
        if kind == "socket":
            run("start", [], {})
            time.sleep(BOOTING_WAIT)
            row["socket_stop_booting_total"], _ = run("stop", ["--force"], {"force": True})
        return row

    def _daemon_qemu_pids(self, names):
        """The pids of the named VMs' QEMUs (their pidfiles); a VM without
        one is left out."""
        pids = []
        for nm in names:
            try:
                with open(os.path.join(self.node.run_dir, "vm", nm, "qemu.pid")) as f:
                    pids.append(int(f.read().strip()))
            except (OSError, ValueError):
                pass
        return pids

    def _settle(self, pids, timeout=60.0):
        """Waits until the guests have halted: the QEMUs together used less
        than SETTLE_CPU_MS of CPU in each of two SETTLE_WINDOW_S windows
        (booting, 20 of them use both CPUs; halted, ~3.5 ms per 0.1 s
        here).  Seconds waited."""
        def cpu():
            total = 0
            for pid in pids:
                try:
                    total += cpu_ns(pid)
                except OSError:
                    pass
            return total
        t0, last, quiet = now(), cpu(), 0
        while quiet < 2:
            if now() - t0 > timeout:
                raise RuntimeError(f"the guests still use CPU {timeout:.0f} s after their start")
            time.sleep(SETTLE_WINDOW_S)
            c = cpu()
            quiet = quiet + 1 if c - last < SETTLE_CPU_MS * 1e6 else 0
            last = c
        return now() - t0

    def _conc_floor(self, n):
        """What n CLI processes cost by themselves, spawned and waited for
        as `vm start`/`vm stop` are: n `qvisor --version` at once."""
        t0 = now()
        procs = [Spawned([QVISOR, "--version"], self.out_path()) for _ in range(n)]
        self._wait_all(procs)
        return now() - t0

    def _bare_up(self, names, argvs):
        bs = [BareQemu(a, self.bare_dir, nm, self.files_of(nm)) for nm, a in zip(names, argvs)]
        self.bares.extend(bs)
        errors = []

        def up(b):
            try:
                b.until_running()
            except Exception as e:  # reported below
                errors.append(e)
        t0 = now()
        for b in bs:
            b.spawn()
        ths = [threading.Thread(target=up, args=(b,)) for b in bs]
        for th in ths:
            th.start()
        for th in ths:
            th.join()
        t_start = now() - t0
        if errors:
            raise RuntimeError(f"bare QEMU failed: {errors[0]}")
        each = med([b.t_up - t0 for b in bs])
        return bs, t_start, each

    @staticmethod
    def _quit_all(bs):
        t0 = now()
        for b in bs:
            b.mon.send("quit")
        for b in bs:
            b.proc.wait()
            b.mon.close()
        t_stop = now() - t0
        for b in bs:
            b.remove_sockets()
        return t_stop

    def _conc_bare(self, names, argvs):
        bs, t_start, each = self._bare_up(names, argvs)
        settle = self._settle([b.proc.pid for b in bs])
        t_stop = self._quit_all(bs)
        bs, _, _ = self._bare_up(names, argvs)
        time.sleep(BOOTING_WAIT)
        t_booting = self._quit_all(bs)
        return {"bare_start_total": t_start, "bare_start_median_each": each, "bare_quit_total": t_stop,
                "bare_quit_booting_total": t_booting, "bare_settle": settle}

    # -- 3./4. many VMs: memory, idle
    def many(self):
        n = self.a.idle_vms
        have = [f"c{i:02d}" for i in range(self.a.vms)] + ["lat"]  # defined already: they count
        extra = [f"m{i:02d}" for i in range(max(0, n - len(have)))]
        self.create(extra)
        names = (have + extra)[:n]
        self.res["daemon_rss_kb"][f"{n}_defined_stopped"] = proc_status(self.dpid())
        t0 = now()
        procs = [Spawned(self.qv_argv("vm", "start", nm), self.out_path()) for nm in names]
        self._wait_all(procs)
        t_start = now() - t0
        started = [nm for nm, p in zip(names, procs) if p.rc == 0]
        failed = [(nm, p.rc, p.output().strip()[-300:]) for nm, p in zip(names, procs) if p.rc != 0]
        many = {"defined": n, "running": len(started), "start_all_ms": ms(t_start),
                "start_failures": failed[:5]}
        self.res["many"] = many
        t_started = now()
        time.sleep(self.a.settle)  # the last replies, agent connects, SeaBIOS reaches the halt
        st = proc_status(self.dpid())
        self.res["daemon_rss_kb"][f"{len(started)}_running"] = st
        qrss = []
        for pid in self._daemon_qemu_pids(started):
            try:
                qrss.append(proc_status(pid)["VmRSS"])
            except (OSError, KeyError):
                pass
        many["qemu_rss_kb_median"] = int(med(qrss)) if qrss else None
        stopped = self.res["daemon_rss_kb"][f"{n}_defined_stopped"]
        if started:
            many["daemon_rss_anon_kb_per_running_vm"] = round((st["RssAnon"] - stopped["RssAnon"]) / len(started), 1)

        # Nothing talks to the daemon from here on.  First the seconds right
        # after the starts (commands sent during a start had 10 s deadlines),
        # then the steady state.
        pid = self.dpid()
        after = max(0.0, t_started + self.a.after_window - now())
        idle = {"vms_running": len(started),
                "after_start": self.window(pid, after),
                "steady": self.window(pid, self.a.idle_seconds)}
        idle["after_start"]["from_s"] = round(self.a.settle, 1)
        idle["strace"] = self.strace(pid)
        self.res["idle"] = idle

        # `vm list` with them all running, as a user runs it: a whole CLI
        # process each, beside the CLI's floor (`qvisor --version`)
        lt, floor = [], []
        for _ in range(self.a.list_rounds):
            t0 = now()
            self.qv("vm", "list")
            lt.append(now() - t0)
            t0 = now()
            self.qv("--version")
            floor.append(now() - t0)
        many["list_ms"] = {"median": ms(med(lt)), "min": ms(min(lt)) if lt else None,
                           "max": ms(max(lt)) if lt else None, "cli_noop_median": ms(med(floor)),
                           "rounds": len(lt), "samples": [ms(x) for x in lt]}

        t0 = now()
        procs = [Spawned(self.qv_argv("vm", "stop", nm, "--force"), self.out_path()) for nm in started]
        self._wait_all(procs)
        many["stop_all_ms"] = ms(now() - t0)
        many["stop_failures"] = [(nm, p.rc) for nm, p in zip(started, procs) if p.rc != 0][:5]
        self.res["daemon_rss_kb"]["end"] = proc_status(self.dpid())

    @staticmethod
    def window(pid, seconds):
        """The daemon's CPU time and context switches (all threads) over
        `seconds` of nothing asked of it."""
        c0, (v0, i0), t0 = cpu_ns(pid), ctxt_switches(pid), now()
        time.sleep(seconds)
        c1, (v1, i1), t1 = cpu_ns(pid), ctxt_switches(pid), now()
        dt = t1 - t0
        return {"seconds": round(dt, 2), "cpu_ms": ms((c1 - c0) / 1e9),
                "cpu_percent": round((c1 - c0) / 1e9 / dt * 100, 4) if dt else 0.0,
                "voluntary_ctxt_switches": v1 - v0, "nonvoluntary_ctxt_switches": i1 - i0,
                "wakeups_per_s": round((v1 - v0 + i1 - i0) / dt, 3) if dt else 0.0}

    def strace(self, pid):
        if not self.a.strace_seconds:
            return None
        if not shutil.which("strace"):
            return {"skipped": "strace not installed"}
        out = os.path.join(self.node.dir, "strace.txt")
        p = subprocess.Popen(["strace", "-f", "-c", "-o", out, "-p", str(pid)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(self.a.strace_seconds)
        p.send_signal(signal.SIGINT)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            return {"skipped": "strace did not detach"}
        calls = {}
        try:
            with open(out) as f:
                for line in f:
                    cols = line.split()
                    # % time, seconds, usecs/call, calls, [errors], syscall
                    if len(cols) >= 5 and cols[0][0].isdigit() and cols[-1] != "total":
                        calls[cols[-1]] = int(cols[3])
        except OSError:
            return {"skipped": "no strace output"}
        return {"seconds": self.a.strace_seconds, "syscalls": sum(calls.values()), "by_name": calls,
                "note": "attaching and detaching interrupt each thread's blocking call once"}

    def cleanup(self):
        for b in self.bares:
            b.kill()
        self.node.cleanup()


# ---------------------------------------------------------------------------
# report

def report(res, out):
    p = lambda *a: print(*a, file=out)  # noqa: E731
    L = res.get("start_latency")
    if L:
        m = L["median_ms"]
        p(f"1. start latency, {L['rounds']} rounds (median ms; min in brackets)")
        for k, what in (("qvisor", "`qvisor vm start` (CLI process until it exits)"),
                        ("socket", "vm.start on the control socket (no CLI)"),
                        ("bare", "bare QEMU, same argv, until `cont` answered"),
                        ("cli_noop", "`qvisor --version` (CLI process floor)"),
                        ("qvisor_stop", "`qvisor vm stop --force`"),
                        ("socket_stop", "vm.stop force on the control socket"),
                        ("bare_quit", "bare QEMU: QMP quit until exit")):
            p(f"   {what:52s} {m[k]:8.2f}  [{L['min_ms'][k]:.2f}]")
        p(f"   overhead: {L['overhead_ms']:.2f} ms (paired median {L['overhead_paired_median_ms']:.2f}), "
          f"ratio {L['ratio']:.2f}x; daemon alone {L['daemon_overhead_ms']:.2f} ms; "
          f"daemon CPU {L['daemon_cpu_ms_per_start']:.2f} ms per start")
        p(f"   target <= {L['target_ms']:.0f} ms: {'met' if L['target_met'] else 'MISSED'}")
    C = res.get("concurrency")
    if C:
        m = C["median_ms"]
        p(f"2. {C['vms']} VMs at once, {C['rounds']} rounds (median ms)")
        p(f"   {'':34s} {'all up':>8s} {'median VM':>10s} {'all stopped':>12s}")
        for k, what in (("qvisor", "`qvisor vm start` / `stop --force`"), ("socket", "control socket requests"),
                        ("bare", "bare QEMU / QMP quit")):
            stop = m["bare_quit_total"] if k == "bare" else m[f"{k}_stop_total"]
            p(f"   {what:34s} {m[k + '_start_total']:8.0f} {m[k + '_start_median_each']:10.0f} {stop:12.0f}")
        p(f"   control socket: start ratio {C['start_ratio']:.2f}x, overhead {C['start_overhead_ms_total']:.0f} ms "
          f"in all, {C['start_overhead_ms_per_vm']:.1f} ms per VM; stop ratio {C['stop_ratio']:.2f}x")
        p(f"   the guests had halted {m['socket_settle'] / 1000:.2f} s (requests) and "
          f"{m['bare_settle'] / 1000:.2f} s (bare) after all were up; the stops came then")
        p(f"   stopped {BOOTING_WAIT:.1f} s after the start, the guests still booting (both CPUs busy): requests "
          f"{m['socket_stop_booting_total']:.0f} ms, bare {m['bare_quit_booting_total']:.0f} ms, ratio "
          f"{C['stop_booting_ratio']:.2f}x (no target)")
        p(f"   CLI processes: start overhead {C['cli_start_overhead_ms_per_vm']:.1f} ms per VM, stop ratio "
          f"{C['cli_stop_ratio']:.2f}x; {C['vms']} `qvisor --version` spawned the same way take "
          f"{C['cli_floor_ms']:.0f} ms (idle machine)")
        p(f"   daemon CPU per VM: start {C['daemon_cpu_ms_per_vm_start']:.2f} ms, "
          f"stop {C['daemon_cpu_ms_per_vm_stop']:.2f} ms; vm create {res['create_ms_per_vm']:.1f} ms per VM "
          f"(sequential)")
    M = res.get("many")
    R = res.get("daemon_rss_kb", {})
    if R:
        p("3. daemon memory (VmRSS / VmHWM / RssAnon kB)")
        for k, v in R.items():
            p(f"   {k:24s} {v.get('VmRSS', 0):7d} {v.get('VmHWM', 0):7d} {v.get('RssAnon', 0):7d}"
              f"   threads {v.get('Threads', '?')}")
        if M:
            key = f"{M['running']}_running"
            rss = R.get(key, {}).get("VmRSS")
            hwm = R.get("end", R.get(key, {})).get("VmHWM")
            p(f"   {M['defined']} defined, {M['running']} running (started at once in {M['start_all_ms']:.0f} ms, "
              f"stopped in {M.get('stop_all_ms', 0):.0f} ms); QEMU RSS median {M['qemu_rss_kb_median']} kB")
            if "daemon_rss_anon_kb_per_running_vm" in M:
                p(f"   daemon RssAnon growth per VM from stopped to running: "
                  f"{M['daemon_rss_anon_kb_per_running_vm']:.0f} kB")
            if M["start_failures"]:
                p(f"   start failures: {M['start_failures']}")
            ok = rss is not None and rss <= RSS_TARGET_KB and hwm <= RSS_TARGET_KB
            p(f"   target VmRSS and VmHWM <= {RSS_TARGET_KB // 1024} MB: {'met' if ok else 'MISSED'}")
    I = res.get("idle")
    if I:
        p(f"4. idle daemon, {I['vms_running']} VMs running (CPU of all threads, context switches)")
        for key, what in (("after_start", f"{I['after_start']['from_s']:.0f} s after the starts"),
                          ("steady", "steady state")):
            w = I[key]
            p(f"   {what:22s} {w['seconds']:5.1f} s: CPU {w['cpu_ms']:.3f} ms ({w['cpu_percent']:.4f}%), "
              f"{w['voluntary_ctxt_switches']} + {w['nonvoluntary_ctxt_switches']} switches "
              f"= {w['wakeups_per_s']:.2f}/s")
        s = I.get("strace")
        if s and "skipped" not in s:
            p(f"   strace -f -c, {s['seconds']:.0f} s: {s['syscalls']} syscalls {s['by_name']} ({s['note']})")
        elif s:
            p(f"   strace: {s['skipped']}")
        p(f"   target no wake-ups in the steady state: {'met' if idle_quiet(I) else 'MISSED'}")
    if M and M.get("list_ms"):
        lm = M["list_ms"]
        p(f"5. `qvisor vm list` with {M['running']} VMs running, {lm['rounds']} rounds: median {lm['median']:.2f} ms "
          f"[min {lm['min']:.2f}, max {lm['max']:.2f}]; `qvisor --version` {lm['cli_noop_median']:.2f} ms")
    T = targets(res)
    if T:
        p("targets (issue 16)")
        for what, got, beside, limit, met in T:
            p(f"   {what:48s} {got:>18s}  {limit:>9s}  {'met' if met else 'MISSED':6s} {beside}")


def targets(res):
    """[(what, measured, bare or floor of the same run, limit, met)] for the
    issue's targets this run measured."""
    out = []
    L = res.get("start_latency")
    if L:
        m = L["median_ms"]
        out.append(("vm start overhead over bare QEMU, median", f"{L['overhead_ms']:.2f} ms",
                    f"qvisor {m['qvisor']:.2f} / bare {m['bare']:.2f} ms", f"<= {START_TARGET_MS:.0f} ms",
                    L["overhead_ms"] <= START_TARGET_MS))
    C = res.get("concurrency")
    if C:
        m = C["median_ms"]
        out.append((f"{C['vms']} concurrent stops / bare QMP quits", f"{C['stop_ratio']:.2f}x",
                    f"requests {m['socket_stop_total']:.0f} / bare {m['bare_quit_total']:.0f} ms "
                    f"(CLI {C['cli_stop_ratio']:.2f}x)",
                    f"<= {CONC_STOP_RATIO_TARGET:.1f}x", C["stop_ratio"] <= CONC_STOP_RATIO_TARGET))
        out.append((f"{C['vms']} concurrent starts over bare QEMU, per VM",
                    f"{C['start_overhead_ms_per_vm']:.1f} ms",
                    f"requests {m['socket_start_total']:.0f} / bare {m['bare_start_total']:.0f} ms in all "
                    f"(CLI {C['cli_start_overhead_ms_per_vm']:.1f} ms)",
                    f"<= {CONC_START_TARGET_MS:.0f} ms", C["start_overhead_ms_per_vm"] <= CONC_START_TARGET_MS))
    M = res.get("many")
    if M:
        r = res["daemon_rss_kb"]
        rss = max(v["VmRSS"] for v in r.values())
        hwm = r["end"]["VmHWM"]
        n = M["running"]
        out.append((f"{n} halted VMs: daemon VmRSS (max seen) / VmHWM", f"{rss / 1024:.1f} / {hwm / 1024:.1f} MB",
                    f"QEMU median {M['qemu_rss_kb_median'] or 0} kB each", f"<= {RSS_TARGET_KB // 1024} MB",
                    rss <= RSS_TARGET_KB and hwm <= RSS_TARGET_KB))
        lm = M.get("list_ms")
        if lm:
            out.append((f"{n} halted VMs: `qvisor vm list`, median", f"{lm['median']:.2f} ms",
                        f"`qvisor --version` {lm['cli_noop_median']:.2f} ms; max {lm['max']:.2f} ms",
                        f"<= {LIST_TARGET_MS:.0f} ms", lm["median"] <= LIST_TARGET_MS))
    I = res.get("idle")
    if I:
        w = I["steady"]
        out.append((f"{I['vms_running']} halted VMs: idle wake-ups", f"{w['voluntary_ctxt_switches'] + w['nonvoluntary_ctxt_switches']}"
                    f" in {w['seconds']:.0f} s", "", "0", idle_quiet(I)))
    return out


def idle_quiet(idle):
    w = idle["steady"]
    return w["voluntary_ctxt_switches"] + w["nonvoluntary_ctxt_switches"] == 0


def targets_met(res):
    return all(t[4] for t in targets(res))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=20, help="start-latency rounds (default 20)")
    ap.add_argument("--vms", type=int, default=20, help="VMs started at once (default 20)")
    ap.add_argument("--conc-rounds", type=int, default=3, help="concurrency rounds (default 3)")
    ap.add_argument("--idle-vms", type=int, default=200,
                    help="VMs defined and running (halted guests) for memory, idle and vm list (default 200)")
    ap.add_argument("--list-rounds", type=int, default=10, help="`qvisor vm list` runs with them (default 10)")
    ap.add_argument("--idle-seconds", type=float, default=10.0)
    ap.add_argument("--strace-seconds", type=float, default=5.0, help="0: no strace")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds after the mass start before measuring")
    ap.add_argument("--after-window", type=float, default=11.0,
                    help="the post-start window ends this long after the mass start returned (default 11)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON ('-': stdout, report on stderr)")
    ap.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = ap.parse_args()

    if not guestlib.have_qemu():
        print("qemu-system-x86_64 not found: skipped")
        return 77
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # cleanup runs on meson's timeout too

    t_all = now()
    b = Bench(args)
    try:
        b.setup()
        log("vm-bench: start latency ...")
        b.start_latency()
        log("vm-bench: concurrency ...")
        b.concurrency()
        if args.idle_vms:
            log("vm-bench: many VMs, memory, idle ...")
            b.many()
    finally:
        b.cleanup()
    res = b.res
    res["runtime_s"] = round(now() - t_all, 1)
    res["targets"] = [{"what": w, "measured": g, "beside": b, "limit": lim, "met": m}
                      for w, g, b, lim, m in targets(res)]
    res["all_targets_met"] = targets_met(res)
    if args.json and args.json != "-":
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
            f.write("\n")
    text_out = sys.stderr if args.json == "-" else sys.stdout
    run_fs = "run directory on a tmpfs" if res["config"]["run_dir_tmpfs"] else "run directory NOT on a tmpfs (not root)"
    print(f"vm-bench ({res['config']['nproc']} CPUs, TCG, {run_fs}, runtime {res['runtime_s']:.0f} s)", file=text_out)
    report(res, text_out)
    if args.json == "-":
        json.dump(res, sys.stdout, indent=2)
        print()
    return 1 if args.check and not res["all_targets_met"] else 0


if __name__ == "__main__":
    sys.exit(main())
