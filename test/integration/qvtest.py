"""Shared helpers for qvisor's integration tests: run the real binary, start
the real daemon with a private config, wait for sd_notify readiness."""

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time

QVISOR = os.environ.get("QVISOR_BIN", "qvisor")
MULT = max(1, int(os.environ.get("QVISOR_TEST_TIMEOUT_MULTIPLIER", "1")))


def scaled(seconds):
    return seconds * MULT


class Node:
    """A private qvisor node: config, state and run directories in a temp dir."""

    def __init__(self, extra_config="", world_readable=False, run_tmpfs=False, dir=None):
        """run_tmpfs: the run directory on a tmpfs of its own (mounted here,
        root only), as RUN_DIR (/run/qvisor) is on a node; a benchmark wants
        that.  Default: in the node's temp directory.  dir: the node's
        directory (made here, removed by cleanup()) instead of a temp
        directory, e.g. where a plugin expects DIR/config.yaml."""
        if dir:
            os.mkdir(dir, 0o700)
            self.dir = dir
        else:
            self.dir = tempfile.mkdtemp(prefix="qv-it-")
        if world_readable:
            os.chmod(self.dir, 0o755)
        self.state = os.path.join(self.dir, "state")
        self.run_mount = None
        if run_tmpfs and os.geteuid() == 0:
            self.run_mount = os.path.join(self.dir, "run-tmpfs")
            os.mkdir(self.run_mount)
            subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755,size=64m", "qv-it-run", self.run_mount],
                           check=True)
        self.run_dir = os.path.join(self.run_mount or self.dir, "run")
        self.socket = os.path.join(self.run_dir, "qvisor.sock")
        self.config = os.path.join(self.dir, "config.yaml")
        self.write_config(extra_config)
        self.proc = None
        self.stderr_path = os.path.join(self.dir, "daemon.log")

    def base_config(self):
        return (f"paths:\n  state_dir: {self.state}\n  run_dir: {self.run_dir}\n")

    def write_config(self, extra=""):
        with open(self.config, "w") as f:
            f.write(self.base_config() + extra)

    def qvisor(self, *args, timeout=None, env=None, user=None, check=None, stdin=None):
        cmd = [QVISOR, "--config", self.config, *args]
        if user:
            import pwd
            gid = pwd.getpwnam(user).pw_gid
            cmd = ["setpriv", f"--reuid={user}", f"--regid={gid}", "--clear-groups", *cmd]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout or scaled(30),
                           env=env, stdin=stdin if stdin is not None else subprocess.DEVNULL)
        if check is not None and p.returncode != check:
            raise AssertionError(f"{' '.join(cmd)}: exit {p.returncode}, want {check}\n"
                                 f"stdout: {p.stdout}\nstderr: {p.stderr}")
        return p

    def qvisor_json(self, *args, **kw):
        p = self.qvisor("--json", *args, check=0, **kw)
        return json.loads(p.stdout)

    def start_daemon(self, wait=True, extra_env=None, wrap=()):
        """wrap: a command prefix that execs the daemon (e.g. ["ip", "netns",
        "exec", NS]), so the process is still the daemon's."""
        self._close_files()
        notify_path = os.path.join(self.dir, "notify.sock")
        if os.path.exists(notify_path):
            os.unlink(notify_path)
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(notify_path)
        env = dict(os.environ, NOTIFY_SOCKET=notify_path)
        env.update(extra_env or {})
        self.stderr = open(self.stderr_path, "a")
        self.proc = subprocess.Popen([*wrap, QVISOR, "--config", self.config, "daemon"], stdin=subprocess.DEVNULL,
                                     stdout=self.stderr, stderr=self.stderr, env=env)
        if wait:
            self.wait_notify("READY=1")
        return self.proc

    def wait_notify(self, what, timeout=10):
        self.notify.settimeout(scaled(timeout))
        while True:
            try:
                msg = self.notify.recv(4096).decode()
            except socket.timeout:
                raise AssertionError(f"no {what} from the daemon; log:\n{self.log()}")
            if what in msg.split("\n"):
                return msg

    def log(self):
        try:
            with open(self.stderr_path) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    SANITIZER_WORDS = ("AddressSanitizer", "LeakSanitizer", "runtime error")

    def sanitizer_reports(self):
        """The sanitizer words found in the daemon's log (none: clean)."""
        log = self.log()
        return [w for w in self.SANITIZER_WORDS if w in log]

    def stop_daemon(self, sig=signal.SIGTERM):
        if not self.proc or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=scaled(10))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("daemon did not stop on SIGTERM")

    def _close_files(self):
        for name in ("stderr", "notify"):
            f = getattr(self, name, None)
            if f:
                f.close()
            setattr(self, name, None)

    def qemu_pids(self):
        """QEMU processes of this node (their -pidfile lies in its run dir)."""
        pids = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    args = f.read().split(b"\0")
            except OSError:
                continue
            if b"-pidfile" in args and any(a.startswith(self.run_dir.encode() + b"/") for a in args):
                pids.append(int(d))
        return pids

    def cleanup(self):
        try:
            self.stop_daemon()
        finally:
            for pid in self.qemu_pids():  # VMs outlive the daemon: not the test's
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self._close_files()
            if self.run_mount:
                subprocess.run(["umount", "-l", self.run_mount], check=False)
            shutil.rmtree(self.dir, ignore_errors=True)


class Subscriber:
    """events.subscribe on the control socket, frames decoded."""

    def __init__(self, path, vms=None, after=None, rcvbuf=None, read=True):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if rcvbuf:
            self.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.s.settimeout(scaled(30))
        self.s.connect(path)
        params = {}
        if vms is not None:
            params["vms"] = vms
        if after is not None:
            params["after"] = after
        self.s.sendall(json.dumps({"id": 1, "method": "events.subscribe", "params": params}).encode() + b"\n")
        self.buf = b""
        while b"\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise RuntimeError("closed before the reply")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        self.reply = reply["result"]

    def frame(self, timeout):
        """The next frame (type, object), or None after timeout seconds."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 5:
                t, n = self.buf[0:1], struct.unpack(">I", self.buf[1:5])[0]
                if len(self.buf) >= 5 + n:
                    payload, self.buf = self.buf[5:5 + n], self.buf[5 + n:]
                    return t.decode(), json.loads(payload)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.s.settimeout(left)
            try:
                chunk = self.s.recv(65536)
            except socket.timeout:
                return None
            if not chunk:
                raise RuntimeError("the stream ended")
            self.buf += chunk

    def events_until(self, pred, timeout):
        """Events ('D' frames) up to and including the first for which pred holds."""
        got = []
        deadline = time.monotonic() + timeout
        while True:
            f = self.frame(max(0.0, deadline - time.monotonic()))
            if f is None:
                raise AssertionError(f"timed out; got {got}")
            if f[0] == "D":
                got.append(f[1])
                if pred(f[1]):
                    return got

    def close(self):
        self.s.close()


def thread_cpu_ns(pid):
    """CPU time of every thread of pid so far, in ns (schedstat: not tick-rounded)."""
    total = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def thread_switches(pid):
    """Context switches of every thread of pid so far: (voluntary, involuntary)."""
    vol = invol = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        vol += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        invol += int(line.split()[1])
        except OSError:
            pass
    return vol, invol


def can_raise_memlock():
    """Whether this process may raise RLIMIT_MEMLOCK past its hard limit
    (CAP_SYS_RESOURCE); containers often may not."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if hard == resource.RLIM_INFINITY:
        return True
    pid = os.fork()
    if pid == 0:
        try:
            resource.setrlimit(resource.RLIMIT_MEMLOCK, (hard + (1 << 30), hard + (1 << 30)))
            os._exit(0)
        except (ValueError, OSError):
            os._exit(1)
    return os.waitpid(pid, 0)[1] == 0


def wait_for(pred, timeout, what, interval=0.02):
    """pred() until it returns something true (returned), for timeout seconds
    (scaled); interval: the pause between calls (longer for a pred that runs
    a program, e.g. a Slurm client that asks slurmctld)."""
    deadline = time.monotonic() + scaled(timeout)
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")
