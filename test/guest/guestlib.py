"""Helpers for tests that boot the tiny qvisor test guest (python3 stdlib only).

Import from a test with test/guest on sys.path:

    sys.path.insert(0, os.path.join(os.environ["QVISOR_SOURCE_ROOT"], "test", "guest"))
    import guestlib

    img = guestlib.build_tiny_guest()          # runs test/guest/build-tiny-guest (cached)
    with guestlib.Guest(img, options=["qv.acpi=off"]) as g:
        g.start()
        g.wait_marker("ready")
        g.qmp.command("system_powerdown")
        ...

The guest prints lines "QVISOR-GUEST: <marker>" on its serial port; see
docs/test-guest.md (or README in the cache directory) for the options and markers.
QEMU always runs with -accel tcg here (KVM is unusable on these machines).
"""

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

MARK = "QVISOR-GUEST: "
BASE_APPEND = "console=ttyS0 quiet panic=-1"


class GuestError(Exception):
    """The guest or QEMU did not behave as expected (carries a log excerpt)."""


class QMPError(Exception):
    """A QMP command answered with an error, or the monitor went away."""

    def __init__(self, message, error_class=None):
        super().__init__(message)
        self.error_class = error_class


# --------------------------------------------------------------------------
# environment

def timeout_multiplier():
    """QVISOR_TEST_TIMEOUT_MULTIPLIER as a float (default 1)."""
    try:
        m = float(os.environ.get("QVISOR_TEST_TIMEOUT_MULTIPLIER", "1") or "1")
    except ValueError:
        m = 1.0
    return m if m > 0 else 1.0


def scaled(seconds):
    """A timeout scaled by QVISOR_TEST_TIMEOUT_MULTIPLIER."""
    return seconds * timeout_multiplier()


def source_root():
    root = os.environ.get("QVISOR_SOURCE_ROOT")
    if root:
        return root
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def qemu_binary():
    return os.environ.get("QVISOR_QEMU", "qemu-system-x86_64")


def have_qemu():
    return shutil.which(qemu_binary()) is not None


def write_halt_disk(path):
    """A 1 MiB raw disk whose boot sector halts (cli; hlt): SeaBIOS boots it
    from a virtio disk within ~0.2 s of TCG time and the vCPU then sleeps.
    (A blank disk would go on to iPXE, which keeps both cores busy for ~8 s
    per VM.)  For tests and benchmarks whose guests need not boot."""
    sector = bytearray(1 << 20)
    sector[0:4] = b"\xfa\xf4\xeb\xfd"  # cli; hlt; jmp back to hlt
    sector[510:512] = b"\x55\xaa"
    with open(path, "wb") as f:
        f.write(sector)


# --------------------------------------------------------------------------
# the image

class TinyGuestImage:
    """The built guest: paths of its files and its manifest."""

    def __init__(self, directory):
        self.dir = directory
        self.vmlinuz = os.path.join(directory, "vmlinuz")
        self.initrd = os.path.join(directory, "initrd.img")
        vmlinux = os.path.join(directory, "vmlinux")
        self.vmlinux = vmlinux if os.path.exists(vmlinux) else None
        self.manifest = {}
        try:
            with open(os.path.join(directory, "manifest")) as f:
                for line in f:
                    k, sep, v = line.rstrip("\n").partition("=")
                    if sep:
                        self.manifest[k] = v
        except OSError:
            pass

    @property
    def kernel(self):
        """The fastest kernel to boot: the uncompressed vmlinux (PVH) if built."""
        return self.vmlinux or self.vmlinuz

    @property
    def has_agent(self):
        return self.manifest.get("agent") == "yes"


_image_lock = threading.Lock()
_image = None


def build_tiny_guest(force=False):
    """Run test/guest/build-tiny-guest (a no-op when cached) and return the image.

    The result is remembered for the process. Raises GuestError on failure."""
    global _image
    with _image_lock:
        if _image is not None and not force:
            return _image
        script = os.path.join(source_root(), "test", "guest", "build-tiny-guest")
        cmd = [script] + (["--force"] if force else [])
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, timeout=max(600, scaled(600)))
        if p.returncode != 0:
            raise GuestError("build-tiny-guest failed (rc %d):\n%s" % (p.returncode, p.stderr[-4000:]))
        lines = [l for l in p.stdout.splitlines() if l.strip()]
        if not lines:
            raise GuestError("build-tiny-guest printed no directory:\n" + p.stderr[-4000:])
        _image = TinyGuestImage(lines[-1].strip())
        return _image


CLOUD_GUEST_VARIANTS = ("cloud", "generic")
_cloud_images = {}


class CloudGuestUnavailable(GuestError):
    """build-cloud-guest cannot run here (not root, no debootstrap and no
    package archive, ...) or failed: a test should skip, not fail."""


def build_cloud_guest(variant="cloud", force=False):
    """Run test/guest/build-cloud-guest for VARIANT ("cloud": the genericcloud-like
    image, BIOS boot; "generic": the generic kernel, BIOS and UEFI) and return
    the path of its qcow2 image (debian12-VARIANT.qcow2). Cached on disk by the
    builder (a second run is a no-op) and remembered for the process.

    Never boot the image itself: make an overlay
    (qemu-img create -f qcow2 -b IMG -F qcow2 OVERLAY). The manifest next to
    it (cloud_guest_manifest()) names kernels, cloud-init and boot modes.
    Raises CloudGuestUnavailable when the builder cannot run or fails; a cold
    build takes a few minutes (docs/test-guest.md)."""
    if variant not in CLOUD_GUEST_VARIANTS:
        raise ValueError("unknown cloud guest variant %r (want one of %s)"
                         % (variant, ", ".join(CLOUD_GUEST_VARIANTS)))
    with _image_lock:
        if variant in _cloud_images and not force:
            return _cloud_images[variant]
        script = os.path.join(source_root(), "test", "guest", "build-cloud-guest")
        if not os.access(script, os.X_OK):
            raise CloudGuestUnavailable("%s is missing or not executable" % script)
        cmd = [script] + (["--force"] if force else []) + [variant]
        try:
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, timeout=max(1800, scaled(1800)))
        except (OSError, subprocess.TimeoutExpired) as e:
            raise CloudGuestUnavailable("build-cloud-guest %s: %s" % (variant, e))
        if p.returncode != 0:
            raise CloudGuestUnavailable("build-cloud-guest %s failed (rc %d):\n%s"
                                        % (variant, p.returncode, p.stderr[-4000:]))
        lines = [l for l in p.stdout.splitlines() if l.strip()]
        image = os.path.join(lines[-1].strip(), "debian12-%s.qcow2" % variant) if lines else ""
        if not image or not os.path.isfile(image):
            raise CloudGuestUnavailable("build-cloud-guest %s made no image %r:\n%s"
                                        % (variant, image, p.stderr[-4000:]))
        _cloud_images[variant] = image
        return image


def cloud_guest_manifest(image):
    """The manifest next to a build_cloud_guest() image, as a dict: keys
    "VARIANT.kernel", "VARIANT.cloud_init", "VARIANT.boot" ("bios", or
    "bios uefi uefi-secureboot"), ..."""
    out = {}
    try:
        with open(os.path.join(os.path.dirname(image), "manifest")) as f:
            for line in f:
                k, sep, v = line.rstrip("\n").partition("=")
                if sep:
                    out[k] = v
    except OSError:
        pass
    return out


def cmdline(options=()):
    """The kernel command line: BASE_APPEND plus the qv.* options given."""
    return " ".join([BASE_APPEND] + list(options))


def short_tempdir(prefix="qvg-"):
    """A temporary directory whose path is short enough for unix sockets."""
    base = tempfile.gettempdir()
    if len(base) > 60:
        base = "/tmp"
    return tempfile.mkdtemp(prefix=prefix, dir=base)


# --------------------------------------------------------------------------
# JSON-lines socket clients (QMP and the guest agent)

class _JsonSocket:
    def __init__(self, path, timeout):
        deadline = time.monotonic() + timeout
        last = None
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.settimeout(max(0.1, deadline - time.monotonic()))
                s.connect(path)
                break
            except OSError as e:
                s.close()
                last = e
                if time.monotonic() >= deadline:
                    raise QMPError("cannot connect to %s: %s" % (path, last))
                time.sleep(0.05)
        self.sock = s
        self.buf = b""
        self.eof = False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, obj):
        data = json.dumps(obj).encode() + b"\n"
        try:
            self.sock.sendall(data)
        except OSError as e:
            raise QMPError("send failed: %s" % e)

    def send_raw(self, data):
        try:
            self.sock.sendall(data)
        except OSError as e:
            raise QMPError("send failed: %s" % e)

    def _fill(self, deadline):
        """Read more bytes; False on timeout; sets eof."""
        if self.eof:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            return False
        except OSError:
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        if len(self.buf) > 10 * 1024 * 1024:
            raise QMPError("message larger than 10 MiB")
        return True

    def read_line(self, deadline):
        """One line (bytes, without newline) or None on timeout/EOF."""
        while b"\n" not in self.buf:
            if not self._fill(deadline):
                return None
        line, _, self.buf = self.buf.partition(b"\n")
        return line


class QMPClient:
    """A tiny QMP client: greeting, qmp_capabilities, commands matched by id,
    events kept in order (self.events) for wait_event()."""

    def __init__(self, path, timeout=10.0):
        self.js = _JsonSocket(path, timeout)
        self.events = []        # every event received, in order
        self._next_id = 0
        self.greeting = None
        deadline = time.monotonic() + timeout
        while self.greeting is None:
            msg = self._read(deadline)
            if msg is None:
                raise QMPError("no QMP greeting")
            if "QMP" in msg:
                self.greeting = msg
            # events before the greeting are kept by _read
        self.command("qmp_capabilities", timeout=timeout)

    def close(self):
        self.js.close()

    @property
    def closed(self):
        return self.js.eof

    def _read(self, deadline):
        """Next non-event message (events are stored), or None on timeout/EOF."""
        while True:
            line = self.js.read_line(deadline)
            if line is None:
                return None
            line = line.strip()
            if not line:
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                raise QMPError("bad JSON from QMP: %r" % line[:200])
            if "event" in msg:
                self.events.append(msg)
                continue
            return msg

    def command(self, name, args=None, timeout=10.0):
        """Run a command, return its "return" value; QMPError on error/timeout."""
        self._next_id += 1
        cid = "qvg-%d" % self._next_id
        req = {"execute": name, "id": cid}
        if args:
            req["arguments"] = args
        self.js.send(req)
        deadline = time.monotonic() + timeout
        while True:
            msg = self._read(deadline)
            if msg is None:
                raise QMPError("%s: no reply (%s)" % (name, "monitor closed" if self.js.eof else "timeout"))
            if msg.get("id") != cid:
                continue        # a late reply to an earlier command
            if "error" in msg:
                err = msg["error"]
                raise QMPError("%s: %s" % (name, err.get("desc")), err.get("class"))
            return msg.get("return")

    def pump(self, timeout=0.0):
        """Read whatever arrives within timeout (collects events)."""
        deadline = time.monotonic() + timeout
        while self._read(deadline) is not None:
            pass

    def wait_event(self, name, timeout, match=None, start=0):
        """Return the first event NAME (at index >= start) whose data satisfies
        match(data), waiting up to timeout seconds; None if it never came."""
        deadline = time.monotonic() + timeout
        i = start
        while True:
            while i < len(self.events):
                ev = self.events[i]
                i += 1
                if ev.get("event") == name and (match is None or match(ev.get("data", {}))):
                    return ev
            if self.js.eof or time.monotonic() >= deadline:
                return None
            self._read(deadline)    # stores events; a late reply is dropped

    def event_names(self):
        return [e.get("event") for e in self.events]


class AgentClient:
    """Client for qemu-guest-agent's JSON protocol (no greeting, no session)."""

    def __init__(self, path, timeout=10.0):
        self.js = _JsonSocket(path, timeout)

    def close(self):
        self.js.close()

    def sync(self, timeout=30.0, retry=2.0):
        """guest-sync-delimited until the agent answers with our id; drops stale
        data before the 0xFF delimiter. Returns the id."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sid = random.randint(1, 2**31 - 1)
            # 0xFF first resets the agent's parser, as libvirt does
            self.js.send_raw(b"\xff")
            self.js.send({"execute": "guest-sync-delimited", "arguments": {"id": sid}})
            step = min(deadline, time.monotonic() + retry)
            while True:
                if b"\xff" in self.js.buf:
                    self.js.buf = self.js.buf[self.js.buf.index(b"\xff") + 1:]
                    line = self.js.read_line(step)
                    if line is None:
                        break
                    try:
                        msg = json.loads(line)
                    except ValueError:
                        continue
                    if msg.get("return") == sid:
                        return sid
                    continue
                if not self.js._fill(step):
                    break
            if self.js.eof:
                raise QMPError("agent socket closed")
        raise QMPError("guest agent did not answer guest-sync-delimited")

    def command(self, name, args=None, timeout=10.0):
        req = {"execute": name}
        if args:
            req["arguments"] = args
        self.js.send(req)
        deadline = time.monotonic() + timeout
        while True:
            line = self.js.read_line(deadline)
            if line is None:
                raise QMPError("%s: no reply from the agent" % name)
            line = line.strip(b"\xff \r\t")
            if not line:
                continue
            msg = json.loads(line)
            if "error" in msg:
                raise QMPError("%s: %s" % (name, msg["error"].get("desc")), msg["error"].get("class"))
            return msg.get("return")


# --------------------------------------------------------------------------
# serial markers (usable on any serial log, e.g. one written by qvisor)

def read_markers(path):
    """Every marker in a serial log file: the text after "QVISOR-GUEST: "."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", "replace").replace("\r", "")
    except OSError:
        return []
    out = []
    for line in text.split("\n"):
        i = line.find(MARK)
        if i >= 0:
            out.append(line[i + len(MARK):].rstrip())
    return out


def wait_marker_in_file(path, pattern, timeout, is_alive=None):
    """Wait until a marker in the serial log at path fully matches the regex
    pattern; return the re.Match, or None on timeout or once is_alive()
    returns False (after a last look). timeout is in seconds, not scaled."""
    rx = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while True:
        alive = is_alive() if is_alive else True
        for t in read_markers(path):
            m = rx.fullmatch(t)
            if m:
                return m
        if not alive or time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


def parse_seed(markers):
    """The seed markers as {dev: {"label", "files": {name: sha256}, "done",
    "error"}} (qv.seed=print)."""
    out = {}

    def dev(d):
        return out.setdefault(d, {"label": None, "files": {}, "done": False, "error": None})
    for t in markers:
        m = re.fullmatch(r"seed-label (\S+) ?(.*)", t)
        if m:
            dev(m.group(1))["label"] = m.group(2)
            continue
        m = re.fullmatch(r"seed (\S+) (.+) ([0-9a-f]{64})", t)
        if m:
            dev(m.group(1))["files"][m.group(2)] = m.group(3)
            continue
        m = re.fullmatch(r"seed-done (\S+)", t)
        if m:
            dev(m.group(1))["done"] = True
            continue
        m = re.fullmatch(r"seed-error (\S+) ?(.*)", t)
        if m:
            dev(m.group(1))["error"] = m.group(2) or "error"
    return out


# --------------------------------------------------------------------------
# a booted guest

class Guest:
    """One QEMU process running the tiny guest.

    options: qv.* kernel options (list of strings); extra_args: more QEMU
    arguments; agent=True adds the virtio-serial channel for qemu-ga (socket
    self.agent_path); kernel: override (default: the image's fastest kernel).
    Files (serial.log, qemu.stderr, sockets) live in self.workdir, removed by
    close() unless keep=True or QVISOR_TEST_KEEP is set."""

    def __init__(self, image=None, options=(), extra_args=(), agent=False,
                 kernel=None, memory=256, name="guest", workdir=None, keep=False,
                 append=None):
        self.image = image or build_tiny_guest()
        self.name = name
        self.own_workdir = workdir is None
        self.workdir = workdir or short_tempdir("qvg-%s-" % re.sub(r"[^A-Za-z0-9]", "", name)[:12])
        self.keep = keep or bool(os.environ.get("QVISOR_TEST_KEEP"))
        self.serial_path = os.path.join(self.workdir, "serial.log")
        self.qmp_path = os.path.join(self.workdir, "qmp.sock")
        self.agent_path = os.path.join(self.workdir, "qga.sock") if agent else None
        self.stderr_path = os.path.join(self.workdir, "qemu.stderr")
        self.kernel = kernel or self.image.kernel
        self.append = append if append is not None else cmdline(options)
        self.argv = [
            qemu_binary(), "-accel", "tcg", "-machine", "q35", "-m", str(memory),
            "-smp", "1", "-nodefaults", "-display", "none", "-no-user-config",
            "-serial", "file:" + self.serial_path,
            "-qmp", "unix:%s,server=on,wait=off" % self.qmp_path,
            "-kernel", self.kernel, "-initrd", self.image.initrd,
            "-append", self.append, "-no-reboot",
        ]
        if agent:
            self.argv += [
                "-device", "virtio-serial",
                "-chardev", "socket,id=qga0,path=%s,server=on,wait=off" % self.agent_path,
                "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
            ]
        self.argv += list(extra_args)
        self.proc = None
        self._qmp = None
        self.started_at = None
        self.ready_at = None

    # -- lifecycle
    def start(self):
        # the serial file exists from the start so readers never race QEMU
        open(self.serial_path, "wb").close()
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                         stdout=err, stderr=err, start_new_session=True)
        self.started_at = time.monotonic()
        return self

    @property
    def qmp(self):
        """The QMP connection (opened on first use)."""
        if self._qmp is None:
            try:
                self._qmp = QMPClient(self.qmp_path, timeout=scaled(15))
            except QMPError as e:
                raise GuestError("%s: QMP: %s\n%s" % (self.name, e, self.diagnostics()))
        return self._qmp

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def wait_exit(self, timeout):
        """Wait for QEMU to exit; its return code, or None on timeout."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()

    def close(self):
        if self._qmp is not None:
            self._qmp.close()
        self.kill()
        if self.own_workdir and not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # -- serial output
    def serial_text(self):
        try:
            with open(self.serial_path, "rb") as f:
                return f.read().decode("utf-8", "replace").replace("\r", "")
        except OSError:
            return ""

    def markers(self):
        """Every marker printed so far (the text after "QVISOR-GUEST: ")."""
        return read_markers(self.serial_path)

    def find_markers(self, pattern):
        """re.fullmatch objects for every marker matching pattern."""
        rx = re.compile(pattern)
        return [m for m in (rx.fullmatch(t) for t in self.markers()) if m]

    def wait_marker(self, pattern, timeout=60):
        """Wait for a marker fully matching the regex pattern; return the match.
        GuestError if QEMU exits first or on timeout (timeout is scaled)."""
        m = wait_marker_in_file(self.serial_path, pattern, scaled(timeout), self.running)
        if m:
            return m
        if not self.running():
            raise GuestError("%s: QEMU exited (rc %s) before marker %r\n%s"
                             % (self.name, self.proc.returncode if self.proc else None,
                                pattern, self.diagnostics()))
        raise GuestError("%s: no marker %r within %.0f s\n%s"
                         % (self.name, pattern, scaled(timeout), self.diagnostics()))

    def wait_ready(self, timeout=60):
        """Wait for "ready"; return the seconds from start() to "ready"."""
        self.wait_marker("ready", timeout)
        if self.ready_at is None:
            self.ready_at = time.monotonic()
        return self.ready_at - self.started_at

    def diagnostics(self, lines=40):
        """Tail of the serial log and QEMU's stderr, for failure messages."""
        serial = self.serial_text().split("\n")[-lines:]
        try:
            with open(self.stderr_path, errors="replace") as f:
                err = f.read()[-2000:]
        except OSError:
            err = ""
        return ("--- serial (%s) ---\n%s\n--- qemu stderr ---\n%s\n--- argv ---\n%s"
                % (self.serial_path, "\n".join(serial), err, " ".join(self.argv)))

    # -- helpers
    def agent(self, timeout=10.0):
        """A connected AgentClient (caller closes it)."""
        if not self.agent_path:
            raise GuestError("guest started without agent=True")
        return AgentClient(self.agent_path, timeout=timeout)

    def powerdown_and_wait(self, timeout=20):
        """system_powerdown, then wait for SHUTDOWN and QEMU's exit.
        Returns the SHUTDOWN event (or None) and QEMU's return code."""
        q = self.qmp
        q.command("system_powerdown")
        ev = q.wait_event("SHUTDOWN", scaled(timeout))
        rc = self.wait_exit(scaled(timeout))
        return ev, rc
