#!/usr/bin/env python3
"""qvisor installed the Debian way, on this machine (issue 20; CI step
scripts/test-package, docs/packaging.md):

1. builds the package twice from this tree, as version V and as V~prev1
   (a changelog entry added to a temporary copy), and runs lintian (no
   error or warning allowed);
2. installs V~prev1: the user, the directories, the conffile, the enabled
   unit, `man qvisor`, `man 5 qvisor-config`, the sysusers.d entry into an
   empty root;
3. starts the daemon as the unit does, creates and starts a VM (the tiny
   guest), completes its name with the installed completion;
4. upgrades to V: the VM keeps running (same pid), a new daemon re-adopts
   it and can stop it;
5. purges the package: the binary, unit and conffile are gone, the VM's
   directory and the base image are still there.

Where systemd is PID 1 the postinst starts and restarts the unit itself and
the test follows systemctl; otherwise (a container) the test does what
systemd would for the unit: runs its ExecStart with a NOTIFY_SOCKET, and
for `restart` with KillMode=process sends SIGTERM to the daemon only.

Leaves the machine as it found it: the package purged, its own VM and image
removed (/var/lib/qvisor and /run/qvisor removed if they did not exist),
/etc/qvisor restored, the user qvisor-qemu removed only if the test made
it.  Refuses (exit 77) when qvisor is installed as a package already or a
daemon runs on /run/qvisor."""

import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(SOURCE, "test", "guest"))
import guestlib  # noqa: E402

UNIT = "/lib/systemd/system/qvisor.service"
VM = f"pkgtest-{os.getpid()}"
IMAGE = f"pkgtest-{os.getpid()}"
SYSTEMD = os.path.isdir("/run/systemd/system")
T0 = time.monotonic()


def log(msg):
    print(f"[{time.monotonic() - T0:6.1f}s] test-package: {msg}", flush=True)


def run(*cmd, check=True, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"{shlex.join(cmd)}: exit {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def qv(*args, check=0):
    p = run("/usr/bin/qvisor", *args, check=False, timeout=120)
    if check is not None and p.returncode != check:
        raise AssertionError(f"qvisor {shlex.join(args)}: exit {p.returncode}, want {check}\n{p.stdout}{p.stderr}")
    return p


def expect(cond, what):
    if not cond:
        raise AssertionError(what)
    log(f"ok: {what}")


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def start_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])


# ---- building ---------------------------------------------------------------


def copy_tree(dest):
    """This tree's files (tracked and new, not ignored: no build dirs)."""
    files = run("git", "-C", SOURCE, "ls-files", "-co", "--exclude-standard", "-z").stdout.split("\0")
    for rel in files:
        if not rel or not os.path.lexists(os.path.join(SOURCE, rel)):
            continue
        os.makedirs(os.path.join(dest, os.path.dirname(rel)), exist_ok=True)
        shutil.copy2(os.path.join(SOURCE, rel), os.path.join(dest, rel), follow_symlinks=False)


def build(work, version=None):
    """Builds the package in a copy of the tree under work; returns the .deb."""
    src = os.path.join(work, "qvisor")
    copy_tree(src)
    if version:  # a changelog entry on top, in the copy only
        with open(os.path.join(src, "debian", "changelog")) as f:
            old = f.read()
        maint = re.search(r"^ -- (.*?>)", old, re.M).group(1)
        date = run("date", "-R").stdout.strip()
        with open(os.path.join(src, "debian", "changelog"), "w") as f:
            f.write(f"qvisor ({version}) unstable; urgency=medium\n\n  * Test build.\n\n -- {maint}  {date}\n\n"
                    + old)
    p = run("dpkg-buildpackage", "-us", "-uc", "-b", cwd=src, check=False, timeout=900)
    if p.returncode != 0:
        raise AssertionError(f"dpkg-buildpackage failed:\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}")
    ver = run("dpkg-parsechangelog", "-S", "Version", cwd=src).stdout.strip()
    return os.path.join(work, f"qvisor_{ver}_amd64.deb"), os.path.join(work, f"qvisor_{ver}_amd64.changes"), ver


# ---- the daemon as the unit runs it -----------------------------------------


class Daemon:
    """The unit's daemon: systemd's where systemd runs, else its ExecStart run
    here the way systemd would (Type=notify, KillMode=process)."""

    def __init__(self, work):
        self.work = work
        self.proc = None

    def unit(self):
        with open(UNIT) as f:
            text = f.read()
        exec_start = re.search(r"(?m)^ExecStart=(.*)$", text).group(1)
        expect(re.search(r"(?m)^KillMode=process$", text) is not None, "the installed unit has KillMode=process")
        return shlex.split(exec_start)

    def start(self):
        if SYSTEMD:
            run("systemctl", "start", "qvisor.service")
            return self.pid()
        argv = self.unit()
        path = os.path.join(self.work, "notify.sock")
        if os.path.exists(path):
            os.unlink(path)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(path)
        notify.settimeout(30)
        self.log = open(os.path.join(self.work, "daemon.log"), "a")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
                                     env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "NOTIFY_SOCKET": path},
                                     start_new_session=True)
        try:
            while b"READY=1" not in notify.recv(4096).split(b"\n"):
                pass
        except socket.timeout:
            raise AssertionError("the daemon did not say READY=1:\n" + self.read_log())
        finally:
            notify.close()
        return self.proc.pid

    def pid(self):
        if SYSTEMD:
            return int(run("systemctl", "show", "-P", "MainPID", "qvisor.service").stdout)
        return self.proc.pid if self.proc and self.proc.poll() is None else 0

    def stop(self):
        """What `systemctl stop` does with KillMode=process: SIGTERM to the
        daemon only.  Returns its exit status."""
        if SYSTEMD:
            run("systemctl", "stop", "qvisor.service")
            return 0
        if not self.proc or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        finally:
            self.log.close()

    def read_log(self):
        try:
            with open(os.path.join(self.work, "daemon.log")) as f:
                return f.read()
        except FileNotFoundError:
            return ""


# ---- the machine as found ---------------------------------------------------


class Machine:
    def __init__(self, work):
        self.work = work
        self.had = {p: os.path.lexists(p) for p in ("/etc/qvisor", "/var/lib/qvisor", "/run/qvisor")}
        self.had_user = run("getent", "passwd", "qvisor-qemu", check=False).returncode == 0
        if self.had["/etc/qvisor"]:
            shutil.copytree("/etc/qvisor", os.path.join(work, "etc-qvisor"), symlinks=True)

    def restore(self, daemon, vm_pid):
        errors = []

        def attempt(what, fn):
            try:
                fn()
            except Exception as e:  # keep restoring the rest
                errors.append(f"{what}: {e}")

        attempt("stop the daemon", daemon.stop)
        if vm_pid and alive(vm_pid):
            attempt("kill the test VM", lambda: os.kill(vm_pid, signal.SIGKILL))
        if run("dpkg-query", "-W", "-f=${Status}", "qvisor", check=False).stdout.endswith(" installed") or \
                run("dpkg-query", "-W", "-f=${Status}", "qvisor", check=False).stdout.startswith("deinstall"):
            attempt("purge", lambda: run("dpkg", "--purge", "qvisor"))
        for p in ("/var/lib/qvisor", "/run/qvisor"):
            if not self.had[p]:
                attempt(f"remove {p}", lambda p=p: shutil.rmtree(p, ignore_errors=True))
            else:
                for leftover in (f"{p}/instances/{VM}", f"{p}/images/{IMAGE}.qcow2", f"{p}/vm/{VM}"):
                    if os.path.isdir(leftover):
                        shutil.rmtree(leftover, ignore_errors=True)
                    elif os.path.lexists(leftover):
                        os.unlink(leftover)
        if self.had["/etc/qvisor"]:
            shutil.rmtree("/etc/qvisor", ignore_errors=True)
            attempt("restore /etc/qvisor",
                    lambda: shutil.copytree(os.path.join(self.work, "etc-qvisor"), "/etc/qvisor", symlinks=True))
        else:
            shutil.rmtree("/etc/qvisor", ignore_errors=True)
        if not self.had_user and run("getent", "passwd", "qvisor-qemu", check=False).returncode == 0:
            attempt("remove the user qvisor-qemu", lambda: run("userdel", "qvisor-qemu"))
        return errors


def daemon_running_on_run_dir():
    try:
        fd = os.open("/run/qvisor/qvisor.lock", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


# ---- the test ---------------------------------------------------------------


def main():
    if os.geteuid() != 0:
        print("test-package: needs root (it installs the package on this machine)")
        return 77
    for tool in ("dpkg-buildpackage", "dh", "lintian", "man", "/usr/share/bash-completion/bash_completion"):
        if not (os.path.exists(tool) if tool.startswith("/") else shutil.which(tool)):
            print(f"test-package: {tool} missing (scripts/setup installs it)")
            return 1
    status = run("dpkg-query", "-W", "-f=${Status}", "qvisor", check=False).stdout
    if status and "not-installed" not in status:
        print(f"test-package: the package qvisor is on this machine already ({status}); not touching it")
        return 77
    if daemon_running_on_run_dir():
        print("test-package: a qvisor daemon runs on /run/qvisor; not touching it")
        return 77
    log(f"PID 1 is {'systemd' if SYSTEMD else 'not systemd'}: "
        + ("systemctl drives the unit" if SYSTEMD else "the unit's ExecStart is run as systemd would"))

    work = tempfile.mkdtemp(prefix="qv-pkg-")
    machine = Machine(work)
    daemon = Daemon(work)
    vm = {"pid": None}
    failed = False
    try:
        test(work, daemon, vm)
    except Exception:
        failed = True
        import traceback
        traceback.print_exc()
        log("daemon log:\n" + daemon.read_log()[-4000:])
    finally:
        errors = machine.restore(daemon, vm["pid"])
        for e in errors:
            print(f"test-package: restoring the machine: {e}", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)
    if failed or errors:
        log("FAILED")
        return 1
    log("passed")
    return 0


def test(work, daemon, vm):
    guest = guestlib.build_tiny_guest()

    # 1. two builds, lintian
    t = time.monotonic()
    new_deb, new_changes, new_ver = build(os.path.join(work, "new"))
    ver = run("dpkg-parsechangelog", "-S", "Version", cwd=SOURCE).stdout.strip()
    old_deb, _, old_ver = build(os.path.join(work, "old"), version=f"{ver}~prev1")
    expect(run("dpkg", "--compare-versions", old_ver, "lt", new_ver, check=False).returncode == 0,
           f"built {old_ver} and {new_ver} ({time.monotonic() - t:.0f} s)")
    p = run("lintian", "--fail-on", "error,warning", new_changes, check=False)
    expect(p.returncode == 0, f"lintian: no error or warning ({p.stdout.strip() or 'no tags'})")

    # 2. install the older build
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run("dpkg", "--force-confdef", "--force-confold", "-i", old_deb, env=env)
    expect(run("dpkg-query", "-W", "-f=${Version}", "qvisor").stdout == old_ver, f"{old_ver} installed")
    expect(run("getent", "passwd", "qvisor-qemu", check=False).returncode == 0, "the user qvisor-qemu exists")
    root = os.path.join(work, "sysusers-root")
    os.makedirs(os.path.join(root, "etc"))
    run("systemd-sysusers", f"--root={root}", "/usr/lib/sysusers.d/qvisor.conf")
    with open(os.path.join(root, "etc", "passwd")) as f:
        pw = [line for line in f if line.startswith("qvisor-qemu:")]
    with open(os.path.join(root, "etc", "group")) as f:
        kvm = [line for line in f if line.startswith("kvm:")]
    expect(len(pw) == 1 and pw[0].rstrip().endswith(":/nonexistent:/usr/sbin/nologin") and
           kvm and "qvisor-qemu" in kvm[0].rstrip().split(":")[3].split(","),
           "sysusers.d makes qvisor-qemu (no home, nologin) in group kvm on an empty root")
    for path, mode in (("/run/qvisor", 0o755), ("/var/lib/qvisor", 0o750), ("/var/lib/qvisor/images", 0o750),
                       ("/var/lib/qvisor/instances", 0o750)):
        st = os.stat(path)
        expect((st.st_uid, st.st_mode & 0o7777) == (0, mode), f"{path} exists, root {mode:o}")
    with open("/etc/qvisor/config.yaml") as f, open(os.path.join(SOURCE, "config.example.yaml")) as g:
        expect(f.read() == g.read(), "/etc/qvisor/config.yaml is the example (a conffile)")
    expect("/etc/qvisor/config.yaml" in run("dpkg-query", "-W", "-f=${Conffiles}", "qvisor").stdout,
           "dpkg knows /etc/qvisor/config.yaml as a conffile")
    expect(os.path.islink("/etc/systemd/system/multi-user.target.wants/qvisor.service"),
           "the unit is enabled (multi-user.target.wants)")
    man = run("man", "qvisor", env=dict(env, MANWIDTH="80", MANPAGER="cat", PAGER="cat")).stdout
    expect("VM COMMANDS" in man and "qvisor vm create" in man and "--request-timeout" in man,
           "man qvisor renders (its VM COMMANDS section)")
    man5 = run("man", "5", "qvisor-config", env=dict(env, MANWIDTH="80", MANPAGER="cat", PAGER="cat")).stdout
    expect("paths.state_dir" in man5, "man 5 qvisor-config renders")

    # 3. the daemon as the unit runs it, a VM
    pid1 = daemon.start()
    expect(pid1 > 0, f"the daemon runs (pid {pid1})")
    base = os.path.join(work, "blank.qcow2")
    run("qemu-img", "create", "-q", "-f", "qcow2", base, "64M")
    qv("image", "import", base, IMAGE)
    qv("vm", "create", VM, "--image", IMAGE, "--cpus", "1", "--memory", "256M", "--disk", "1G", "--no-seed",
       "--no-agent", "--kernel", guest.kernel, "--initrd", guest.initrd, "--append", guestlib.cmdline())
    vm["pid"] = json.loads(qv("--json", "vm", "start", VM).stdout)["pid"]
    ticks = start_ticks(vm["pid"])
    expect(alive(vm["pid"]), f"VM {VM} runs (QEMU pid {vm['pid']})")
    # loaded the way an interactive shell loads it: bash-completion's
    # loader finds the installed file by the command's name
    script = ('source /usr/share/bash-completion/bash_completion; _completion_loader qvisor; '
              'COMP_WORDS=(qvisor vm stop pkgtest-); COMP_CWORD=3; _qvisor; printf "%s\\n" "${COMPREPLY[@]}"')
    p = run("bash", "-c", script)
    expect(VM in p.stdout.split(), "the installed completion, loaded by bash-completion, completes the VM's name")

    # 4. the upgrade
    run("dpkg", "--force-confdef", "--force-confold", "-i", new_deb, env=env)
    expect(run("dpkg-query", "-W", "-f=${Version}", "qvisor").stdout == new_ver, f"upgraded to {new_ver}")
    if not SYSTEMD:  # what the postinst's `deb-systemd-invoke restart` does under systemd
        rc = daemon.stop()
        expect(rc == 0, "the old daemon stopped on SIGTERM (exit 0)")
        expect(alive(vm["pid"]), "the VM survived the daemon")
        daemon.start()
    pid2 = daemon.pid()
    expect(pid2 not in (0, pid1), f"a new daemon runs (pid {pid2}, was {pid1})")
    expect(alive(vm["pid"]) and start_ticks(vm["pid"]) == ticks, "the VM kept running: same QEMU process")
    row = [v for v in json.loads(qv("--json", "vm", "list").stdout)["vms"] if v["name"] == VM][0]
    expect((row["state"], row["pid"]) == ("running", vm["pid"]), "the new daemon re-adopted the VM (running, same pid)")
    qv("vm", "stop", VM, "--force")
    expect(not alive(vm["pid"]), "the new daemon stopped the VM")
    vm["pid"] = None

    # 5. remove and purge
    daemon.stop()  # what the prerm's `deb-systemd-invoke stop` does under systemd
    run("dpkg", "--remove", "qvisor", env=env)
    expect(not os.path.exists("/usr/bin/qvisor") and os.path.exists("/etc/qvisor/config.yaml"),
           "remove: the binary is gone, the conffile stays")
    run("dpkg", "--purge", "qvisor", env=env)
    expect(not os.path.exists("/etc/qvisor/config.yaml") and not os.path.exists(UNIT),
           "purge: the conffile and the unit are gone")
    inst = f"/var/lib/qvisor/instances/{VM}"
    expect(os.path.isdir(inst) and any(f.endswith(".qcow2") for f in os.listdir(inst)) and
           os.path.exists(f"/var/lib/qvisor/images/{IMAGE}.qcow2"),
           "purge: the VM's directory with its disk and the base image are still there")
    expect(run("getent", "passwd", "qvisor-qemu", check=False).returncode == 0, "purge: the system user stays")


if __name__ == "__main__":
    sys.exit(main())
