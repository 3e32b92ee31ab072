#!/usr/bin/env python3
"""VM lifecycle through the real CLI and daemon with real QEMU (TCG) and the
tiny test guest: start/list/stop/start/rm with disk persistence, ACPI and
agent shutdown, the escalation for a guest that ignores the power button,
crashes of QEMU and of the daemon (re-adoption, identity checks), start
failures that show QEMU's error, daemon crashes injected mid-start and
mid-stop (QVISOR_TEST_CRASH_AT, test builds only), and pause/resume (a
paused guest makes no progress, is never sent ACPI, and stays paused across
a daemon restart)."""

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "guest"))
from qvtest import QVISOR, Node, scaled, wait_for  # noqa: E402
import guestlib  # noqa: E402

GUEST = None


def setUpModule():
    global GUEST
    GUEST = guestlib.build_tiny_guest()


def proc_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class Lifecycle(unittest.TestCase):
    CONFIG = ("vm_defaults:\n  memory: 256M\n  disk: 1G\n  stop_timeout: 30s\n  kill_timeout: 5s\n")

    def setUp(self):
        self.node = Node(self.CONFIG)
        self.node.start_daemon()
        base = os.path.join(self.node.dir, "blank.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", base, "1G"], check=True)
        self.node.qvisor("image", "import", base, "blank", check=0)

    def tearDown(self):
        # every test ends with the daemon stopping cleanly: exit 0 and, in the
        # ASan build, no sanitizer report (leaks are reported at exit)
        try:
            if self.node.proc and self.node.proc.poll() is None:
                self.assert_daemon_exits_cleanly()
        finally:
            self.node.cleanup()

    # -- helpers --------------------------------------------------------------

    def create(self, name, options=(), *extra):
        self.node.qvisor("vm", "create", name, "--image", "blank", "--kernel", GUEST.kernel,
                         "--initrd", GUEST.initrd, "--append", guestlib.cmdline(options), *extra, check=0)

    def show(self, name):
        return self.node.qvisor_json("vm", "show", name)

    def serial(self, name):
        return os.path.join(self.node.state, "instances", name, "serial.log")

    def wait_marker(self, name, pattern, timeout=60):
        """The guest's marker matching pattern; fails the test when it does
        not come within the (scaled) timeout."""
        m = guestlib.wait_marker_in_file(self.serial(name), pattern, scaled(timeout))
        self.assertIsNotNone(m, f"no marker {pattern!r} from {name} within {scaled(timeout):.0f} s")
        return m

    def start(self, name, wait_ready=True):
        j = self.node.qvisor_json("vm", "start", name, timeout=scaled(60))
        if wait_ready:
            self.wait_marker(name, r"^ready$")
        return j

    def stop(self, name, *args, want=0):
        p = self.node.qvisor("--json", "vm", "stop", name, *args, timeout=scaled(120), check=want)
        return json.loads(p.stdout)

    def pause(self, name, verb="pause"):
        """vm pause (or resume) NAME, which must succeed: its JSON result."""
        return json.loads(self.node.qvisor("--json", "vm", verb, name, check=0).stdout)

    def markers(self, name):
        return guestlib.read_markers(self.serial(name))

    def assert_daemon_exits_cleanly(self):
        """SIGTERM: exit 0, and no sanitizer report (the ASan build aborts
        on an error and reports leaks at exit)."""
        self.assertEqual(self.node.stop_daemon(), 0, self.node.log()[-4000:])
        self.assertEqual(self.node.sanitizer_reports(), [], self.node.log()[-4000:])

    def run_files(self, name):
        d = os.path.join(self.node.run_dir, "vm", name)
        return sorted(os.listdir(d)) if os.path.isdir(d) else []

    def count_log(self, text):
        return self.node.log().count(text)

    # -- tests ------------------------------------------------------------------

    def test_full_lifecycle_disk_persists(self):
        self.create("life", ["qv.disk=marker", "qv.agent=on", "qv.net=eth0:10.0.2.15/24:10.0.2.2"])
        # vm wait --for agent, answered when the guest's agent opens its port
        # and answers (QEMU's VSERPORT_CHANGE), before anything lists the VM
        agent_wait = subprocess.Popen([QVISOR, "--config", self.node.config, "vm", "wait", "life", "--for", "agent",
                                       "--timeout", f"{scaled(120)}s"], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
        j = self.node.qvisor_json("vm", "start", "life", timeout=scaled(60))
        out, err = agent_wait.communicate(timeout=scaled(150))
        self.assertEqual(agent_wait.returncode, 0, err)
        self.assertIn("VM life is running", out)
        self.wait_marker("life", r"^ready$")
        pid = j["pid"]
        self.assertTrue(proc_alive(pid))
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
        self.assertIn(b"guest=life,", b"\0".join(args))
        # QEMU boots the copies made at create, not the files the CLI was given
        inst = os.path.join(self.node.state, "instances", "life").encode()
        # (as fds the daemon opened: QEMU names them /proc/self/fd/N)
        for opt, copy in ((b"-kernel", b"/kernel"), (b"-initrd", b"/initrd")):
            arg = args[args.index(opt) + 1].decode()
            self.assertTrue(arg.startswith("/proc/self/fd/"), arg)
            self.assertEqual(os.readlink(f"/proc/{pid}/fd/{arg.rsplit('/', 1)[1]}").encode(), inst + copy)
        self.assertIsInstance(j["ssh_port"], int)
        row = self.node.qvisor_json("vm", "list")["vms"][0]
        self.assertEqual((row["name"], row["state"], row["pid"]), ("life", "running", pid))
        self.assertEqual(row["agent"], "ok")  # the guest's qemu-ga answered
        self.assertEqual(row["ssh_port"], j["ssh_port"])
        # the address the guest agent reports (the guest configures it at boot)
        wait_for(lambda: self.node.qvisor_json("vm", "list")["vms"][0]["ip"] == "10.0.2.15", scaled(120), "the agent's IP")
        self.assertIn({"interface": "eth0", "address": "10.0.2.15", "prefix": 24}, self.show("life")["addresses"])
        # QEMU listens on the forwarded SSH port
        with socket.create_connection(("127.0.0.1", j["ssh_port"]), timeout=5):
            pass
        table = self.node.qvisor("vm", "list", check=0).stdout
        self.assertRegex(table, rf"life +running +{pid} ")
        self.assertEqual(self.run_files("life"), ["console.sock", "qemu.pid", "qga.sock", "qmp.sock"])
        self.wait_marker("life", r"^marker written$")

        res = self.stop("life")
        self.assertEqual(res["result"], "clean")
        self.assertEqual(res["how"], "guest agent guest-shutdown")
        self.assertFalse(proc_alive(pid))
        self.assertEqual(self.run_files("life"), [])
        vm = self.show("life")
        self.assertEqual(vm["state"], "stopped")
        self.assertIsNone(vm["pid"])
        self.assertIn("clean", vm["last_exit"])

        # second boot: the guest finds what it wrote on the first
        self.start("life")
        self.assertIn("marker found qvisor-marker-boot-1", guestlib.read_markers(self.serial("life")))
        with open(self.serial("life") + ".1") as f:  # the previous boot's console is kept
            self.assertIn("marker written", f.read())
        # restart: same disk, third boot
        p = self.node.qvisor("--json", "vm", "restart", "life", timeout=scaled(120), check=0)
        r = json.loads(p.stdout)
        self.assertEqual(r["stop"]["result"], "clean")
        self.assertNotEqual(r["start"]["pid"], pid)
        self.wait_marker("life", r"^bootcount 3$")
        self.wait_marker("life", r"^ready$")
        self.stop("life")
        self.node.qvisor("vm", "rm", "life", check=0)
        self.assertFalse(os.path.exists(os.path.join(self.node.state, "instances", "life")))

    def test_acpi_stop_without_agent(self):
        self.create("acpi", [], "--no-agent")
        self.start("acpi")
        res = self.stop("acpi")
        self.assertEqual((res["result"], res["how"]), ("clean", "ACPI power button"))
        p = self.node.qvisor("vm", "stop", "acpi", check=0)  # a second stop: exit 0
        self.assertIn("not running", p.stdout)

    def test_agent_that_ignores_shutdown_is_backed_by_acpi(self):
        self.create("stubborn", ["qv.agent=noshutdown"])
        self.start("stubborn")
        self.wait_marker("stubborn", r"agent started .*")
        wait_for(lambda: self.node.qvisor_json("vm", "list")["vms"][0]["agent"] == "ok", scaled(120), "the agent")
        res = self.stop("stubborn")  # 30 s timeout; the ACPI backup comes after 15 s
        self.assertEqual((res["result"], res["how"]), ("clean", "ACPI power button"))
        self.assertGreaterEqual(res["seconds"], 15)
        self.assertIn("guest agent's shutdown did not take", self.node.log())
        self.assertIn("poweroff acpi", guestlib.read_markers(self.serial("stubborn")))

    def test_escalation_for_a_deaf_guest(self):
        self.create("deaf", ["qv.acpi=off"], "--no-agent")
        self.start("deaf")
        self.wait_marker("deaf", r"^acpi off$")
        t0 = time.monotonic()
        res = self.stop("deaf", "--timeout", "2s", want=3)  # 3: forced
        self.assertEqual((res["result"], res["how"]), ("forced", "QMP quit"))
        self.assertGreaterEqual(time.monotonic() - t0, 2.0)
        self.assertIn("forced", self.show("deaf")["last_exit"])
        # --force skips the guest and is not an error
        self.start("deaf", wait_ready=False)
        res = self.stop("deaf", "--force", want=0)
        self.assertEqual((res["result"], res["how"]), ("forced", "QMP quit"))
        # the human output says so too
        self.start("deaf", wait_ready=False)
        p = self.node.qvisor("vm", "stop", "deaf", "--force", check=0)
        self.assertIn("forced (QMP quit", p.stdout)

    def test_escalation_to_signals(self):
        # a QEMU that cannot answer (SIGSTOP): quit is unanswered, SIGTERM
        # stays pending, SIGKILL ends it
        self.node.write_config(self.CONFIG.replace("kill_timeout: 5s", "kill_timeout: 1s"))
        self.node.qvisor("config", "reload", check=0)
        self.create("frozen", ["qv.acpi=off"], "--no-agent")
        pid = self.start("frozen", wait_ready=False)["pid"]
        os.kill(pid, signal.SIGSTOP)
        res = self.stop("frozen", "--force", want=0)
        self.assertEqual((res["result"], res["how"]), ("forced", "SIGKILL"))
        self.assertFalse(proc_alive(pid))
        self.assertIn("sending SIGTERM", self.node.log())
        self.assertEqual(self.show("frozen")["state"], "stopped")

    def test_requests_in_the_wrong_state(self):
        self.create("busy", ["qv.acpi=off"], "--no-agent")
        pid = self.start("busy", wait_ready=False)["pid"]
        p = self.node.qvisor("vm", "start", "busy")
        self.assertEqual(p.returncode, 73)
        self.assertIn("already running", p.stderr)
        p = self.node.qvisor("vm", "rm", "busy")
        self.assertEqual(p.returncode, 75)
        self.assertIn("--force", p.stderr)
        self.assertTrue(proc_alive(pid))
        self.node.qvisor("vm", "rm", "--force", "busy", check=0, timeout=scaled(60))
        self.assertFalse(proc_alive(pid))
        self.assertEqual(self.node.qemu_pids(), [])
        self.assertEqual(self.node.qvisor("vm", "start", "busy").returncode, 66)

    def test_start_failure_shows_qemu_error_and_leaves_nothing(self):
        bogus = os.path.join(self.node.dir, "not-a-kernel")
        with open(bogus, "w") as f:
            f.write("this is not a kernel\n")
        self.node.qvisor("vm", "create", "bad", "--image", "blank", "--kernel", bogus, check=0)
        p = self.node.qvisor("vm", "start", "bad", timeout=scaled(60))
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("did not start", p.stderr)
        self.assertRegex(p.stderr, r"(?i)kernel")  # QEMU's own words about the file
        vm = self.show("bad")
        self.assertEqual(vm["state"], "stopped")
        self.assertIn("start failed", vm["last_exit"])
        self.assertEqual(self.run_files("bad"), [])
        self.assertEqual(self.node.qemu_pids(), [])

    def test_create_with_start(self):
        p = self.node.qvisor("--json", "vm", "create", "quick", "--image", "blank", "--kernel", GUEST.kernel,
                             "--initrd", GUEST.initrd, "--append", guestlib.cmdline([]), "--no-agent", "--start",
                             timeout=scaled(60), check=0)
        j = json.loads(p.stdout)
        self.assertEqual(j["created"]["name"], "quick")
        self.assertTrue(proc_alive(j["started"]["pid"]))
        self.assertEqual((self.show("quick")["state"], self.show("quick")["pid"]), ("running", j["started"]["pid"]))
        self.wait_marker("quick", r"^ready$")
        self.stop("quick")
        # a start that fails leaves the VM defined, with the start's exit code
        bogus = os.path.join(self.node.dir, "not-a-kernel")
        with open(bogus, "w") as f:
            f.write("this is not a kernel\n")
        p = self.node.qvisor("vm", "create", "half", "--image", "blank", "--kernel", bogus, "--start",
                             timeout=scaled(60))
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("created VM half", p.stdout)
        self.assertIn("VM half was created, but did not start", p.stderr)
        self.assertEqual(self.show("half")["state"], "stopped")
        self.assertEqual(self.node.qemu_pids(), [])

    def test_restart_always_after_poweroff_up_to_the_limit(self):
        spec = os.path.join(self.node.dir, "looper.yaml")
        with open(spec, "w") as f:  # restart_limit 2: two automatic restarts, then the policy gives up
            f.write(f"name: looper\nimage: blank\nkernel: {GUEST.kernel}\ninitrd: {GUEST.initrd}\n"
                    f"append: {guestlib.cmdline(['qv.poweroff=1'])}\nagent: false\n"
                    "restart: always\nrestart_limit: 2\n")
        self.node.qvisor("vm", "create", "-f", spec, check=0)
        self.start("looper", wait_ready=False)
        wait_for(lambda: "restart limit" in (self.show("looper")["last_exit"] or ""), scaled(300), "the policy giving up")
        vm = self.show("looper")
        self.assertEqual((vm["state"], vm["restarts"]), ("stopped", 2))
        self.assertIn("the guest powered off", vm["last_exit"])
        self.assertEqual(self.count_log("VM looper: stopped: the guest powered off"), 3)

    def test_changed_base_image_is_refused(self):
        self.create("based", [], "--no-agent")
        base = self.node.qvisor_json("image", "list")["images"][0]["path"]
        st = os.stat(base)
        os.utime(base, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # "changed" under its overlay
        p = self.node.qvisor("vm", "start", "based", timeout=scaled(60))
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("changed since this VM's disk was made", p.stderr)
        self.assertEqual(self.show("based")["state"], "stopped")
        self.assertEqual(self.node.qemu_pids(), [])
        os.utime(base, ns=(st.st_atime_ns, st.st_mtime_ns))  # restored: starts again
        self.start("based", wait_ready=False)
        self.stop("based", "--force")

    def test_guest_poweroff_is_noticed(self):
        self.create("self-off", ["qv.poweroff=1"], "--no-agent")
        self.start("self-off")
        wait_for(lambda: self.show("self-off")["state"] == "stopped", scaled(120), "the guest's own poweroff")
        vm = self.show("self-off")
        self.assertIn("guest powered off", vm["last_exit"])
        self.assertEqual(self.run_files("self-off"), [])

    def test_kill9_qemu_crash_and_restart_policy(self):
        self.create("fragile", [], "--no-agent")
        pid = self.start("fragile", wait_ready=False)["pid"]
        os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        wait_for(lambda: self.show("fragile")["state"] == "crashed", 1, "state crashed within a second")
        self.assertLess(time.monotonic() - t0, 1.0 * guestlib.timeout_multiplier())
        vm = self.show("fragile")
        self.assertIn("SIGKILL", vm["last_exit"])
        self.assertEqual(self.run_files("fragile"), [])
        time.sleep(0.5)
        self.assertEqual(self.count_log("VM fragile: crashed"), 1)  # cleanup ran once
        self.assertEqual(self.show("fragile")["state"], "crashed")  # policy never: stays down

        # on-failure: started again after the backoff, with a new QEMU
        self.node.qvisor("vm", "create", "phoenix", "--image", "blank", "--kernel", GUEST.kernel,
                         "--initrd", GUEST.initrd, "--no-agent", "--restart", "on-failure", check=0)
        pid = self.start("phoenix", wait_ready=False)["pid"]
        os.kill(pid, signal.SIGKILL)
        killed_at = time.clock_gettime(time.CLOCK_BOOTTIME)
        def restarted():
            vm = self.show("phoenix")
            return vm["state"] == "running" and vm["pid"] not in (None, pid)
        wait_for(restarted, scaled(60), "restart by the on-failure policy")
        vm = self.show("phoenix")
        self.assertEqual(vm["restarts"], 1)
        # the first restart waits out its backoff (1 s): the new QEMU was born
        # at least that long after the kill
        with open(f"/proc/{vm['pid']}/stat") as f:
            born = int(f.read().split(")")[-1].split()[19]) / os.sysconf("SC_CLK_TCK")
        self.assertGreaterEqual(born - killed_at, 0.95)
        self.assertIn("SIGKILL", vm["last_exit"])
        # a user stop is not a failure: no restart
        self.stop("phoenix", "--force")
        time.sleep(1.5)
        self.assertEqual(self.show("phoenix")["state"], "stopped")

    def test_daemon_kill9_readopts_running_vms(self):
        names = ["a1", "a2", "a3"]
        pids = {}
        for n in names:  # a1 has a guest agent: re-adoption reconnects it
            if n == "a1":
                self.create(n, ["qv.agent=on"])
            else:
                self.create(n, [], "--no-agent")
            pids[n] = self.start(n, wait_ready=False)["pid"]
        for n in names:
            self.wait_marker(n, r"^ready$")
        # a stale state file: a "running" VM whose pid is now an unrelated process
        bystander = subprocess.Popen(["sleep", "300"])
        self.create("stale", [], "--no-agent")
        st_path = os.path.join(self.node.state, "instances", "stale", "state.json")

        self.node.stop_daemon(signal.SIGKILL)
        with open(st_path) as f:
            st = json.load(f)
        st["state"] = "running"
        st["run"]["pid"] = bystander.pid
        st["run"]["start_ticks"] = 12345
        with open(st_path, "w") as f:
            json.dump(st, f)
        for n in names:
            self.assertTrue(proc_alive(pids[n]), f"{n} died with the daemon")

        self.node.start_daemon()
        try:
            vms = {v["name"]: v for v in self.node.qvisor_json("vm", "list")["vms"]}
            for n in names:
                self.assertEqual((vms[n]["state"], vms[n]["pid"]), ("running", pids[n]))
            self.assertEqual(vms["stale"]["state"], "crashed")
            self.assertIsNone(bystander.poll(), "an unrelated process was signalled")
            self.assertIn(f"pid {bystander.pid} is now another process", self.node.log())
            wait_for(lambda: self.show("a1")["agent"] == "ok", scaled(30), "the agent of a1 reconnected")
            for n in names:
                res = self.stop(n)
                self.assertEqual(res["result"], "clean")
                self.assertEqual(res["how"], "guest agent guest-shutdown" if n == "a1" else "ACPI power button")
                self.assertFalse(proc_alive(pids[n]))
            self.assertEqual(self.node.qemu_pids(), [])
        finally:
            bystander.kill()
            bystander.wait()

    def crash_daemon_at(self, point, args):
        """Restarts the daemon with the crash hook, runs args until the daemon
        dies there, then restarts it normally."""
        self.node.stop_daemon()
        self.node.start_daemon(extra_env={"QVISOR_TEST_CRASH_AT": point})
        self.node.qvisor(*args, timeout=scaled(60))
        wait_for(lambda: self.node.proc.poll() is not None, scaled(60), f"daemon crash at {point}")
        self.assertEqual(self.node.proc.returncode, -signal.SIGKILL)
        self.node.start_daemon()

    def test_daemon_crash_mid_start_is_rolled_back(self):
        self.create("half", [], "--no-agent")
        self.crash_daemon_at("start-after-spawn", ["vm", "start", "half"])
        wait_for(lambda: self.show("half")["state"] == "stopped", scaled(60), "the half-started VM stopped")
        self.assertIn("start interrupted", self.show("half")["last_exit"])
        wait_for(lambda: self.node.qemu_pids() == [], 10, "no orphan QEMU")
        self.assertEqual(self.run_files("half"), [])
        self.start("half", wait_ready=False)  # and it starts normally afterwards
        self.stop("half", "--force")

    def test_daemon_crash_mid_stop_is_finished(self):
        # a guest that ignores ACPI: the stop is still under way when the daemon dies
        self.create("halfstop", ["qv.acpi=off"], "--no-agent")
        pid = self.start("halfstop")["pid"]
        self.crash_daemon_at("stop-after-request", ["vm", "stop", "halfstop", "--timeout", "2s"])
        wait_for(lambda: self.show("halfstop")["state"] == "stopped", scaled(120), "the stop finished")
        self.assertFalse(proc_alive(pid))
        self.assertEqual(self.node.qemu_pids(), [])
        self.assertEqual(self.run_files("halfstop"), [])
        self.assertIn("finishing the stop", self.node.log())

    def test_seed_cdrom_seen_by_the_guest_and_regenerated(self):
        # qv.noahci: like a cloud kernel, the guest has no AHCI driver; the
        # seed must still be seen (it used to be an ide-cd on q35's AHCI)
        self.create("seeded", ["qv.seed=print", "qv.noahci"], "--no-agent", "--hostname", "seed-host")
        inst = os.path.join(self.node.state, "instances", "seeded")
        self.start("seeded")
        self.wait_marker("seeded", r"seed-done \S+")
        seeds = guestlib.parse_seed(guestlib.read_markers(self.serial("seeded")))
        (dev, seen), = [(d, v) for d, v in seeds.items() if v["label"] == "cidata"]
        self.assertTrue(dev.startswith("/dev/sr"), dev)  # a CD-ROM, not a disk

        def sha(name):
            # the guest read what qvisor wrote: compare with the files in the ISO
            out = subprocess.run(["isoinfo", "-i", os.path.join(inst, "seed.iso"), "-R", "-x", "/" + name],
                                 capture_output=True, check=True).stdout
            return hashlib.sha256(out).hexdigest()
        for name in ("meta-data", "user-data", "network-config"):
            self.assertEqual(seen["files"][name], sha(name), name)
        def seed_id():
            with open(os.path.join(inst, "seed.id")) as f:
                return f.read()
        first_id = seed_id()
        self.stop("seeded")
        # an unchanged spec keeps the seed; the node's DNS changing rewrites it
        self.start("seeded", wait_ready=False)
        self.assertEqual(seed_id(), first_id)
        self.stop("seeded", "--force")
        self.node.write_config(self.CONFIG + "network:\n  dns: [192.0.2.53]\n")
        self.node.qvisor("config", "reload", check=0)
        self.start("seeded")
        self.wait_marker("seeded", r"seed-done \S+")
        self.assertNotEqual(seed_id(), first_id)
        seen = [v for v in guestlib.parse_seed(guestlib.read_markers(self.serial("seeded"))).values()
                if v["label"] == "cidata"][0]
        self.assertEqual(seen["files"]["network-config"], sha("network-config"))
        self.assertIn("192.0.2.53", subprocess.run(
            ["isoinfo", "-i", os.path.join(inst, "seed.iso"), "-R", "-x", "/network-config"],
            capture_output=True, text=True, check=True).stdout)
        self.assertIn("cloud-init seed (re)written", self.node.log())
        self.stop("seeded")

    def test_cleanup_orphans_temp_files_and_stale_sockets(self):
        self.create("keep", [], "--no-agent")
        keep = self.start("keep", wait_ready=False)["pid"]
        # an orphan QEMU that claims to be VM "ghost" of this node
        ghost_dir = os.path.join(self.node.run_dir, "vm", "ghost")
        os.makedirs(ghost_dir)
        orphan = subprocess.Popen(["qemu-system-x86_64", "-name", "guest=ghost,debug-threads=on", "-S",
                                   "-machine", "none", "-nodefaults", "-display", "none",
                                   "-pidfile", os.path.join(ghost_dir, "qemu.pid")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        bystander = subprocess.Popen(["sleep", "300"])
        creating = os.path.join(self.node.state, "instances", ".dead.creating")
        os.makedirs(creating)
        partial = os.path.join(self.node.state, "images", ".half.qcow2.partial")
        open(partial, "w").close()
        stale = os.path.join(self.node.run_dir, "vm", "stale")
        os.makedirs(stale)
        open(os.path.join(stale, "qmp.sock"), "w").close()
        try:
            wait_for(lambda: os.path.exists(os.path.join(ghost_dir, "qemu.pid")), 10, "the orphan's pidfile")
            j = self.node.qvisor_json("cleanup", "--dry-run")
            acts = {(a.get("path") or a.get("pid")): a["action"] for a in j["actions"]}
            self.assertEqual(acts[orphan.pid], "would stop (SIGTERM, then SIGKILL)")
            self.assertEqual(acts[creating], "would remove")
            self.assertEqual(acts[partial], "would remove")
            self.assertEqual(acts[stale], "would remove")
            self.assertNotIn(keep, acts)
            self.assertIsNone(orphan.poll())  # dry run: nothing changed
            self.assertTrue(os.path.exists(creating) and os.path.exists(partial) and os.path.exists(stale))

            p = self.node.qvisor("cleanup", check=0, timeout=scaled(60))
            self.assertIn(f"orphan QEMU of 'ghost' pid {orphan.pid}: stopped", p.stdout)
            # SIGTERM: QEMU exits cleanly, or dies of the signal when it
            # came before QEMU set its handler up (the pidfile is written
            # earlier; seen under heavy load)
            self.assertIn(orphan.wait(timeout=10), (0, -signal.SIGTERM))
            for path in (creating, partial, stale, ghost_dir):
                self.assertFalse(os.path.exists(path), path)
            self.assertTrue(proc_alive(keep))  # supervised: untouched
            self.assertIsNone(bystander.poll())
            self.assertEqual(self.show("keep")["state"], "running")
            self.assertIn("nothing to clean up", self.node.qvisor("cleanup", check=0).stdout)
        finally:
            for p in (orphan, bystander):
                if p.poll() is None:
                    p.kill()
                p.wait()
        self.stop("keep", "--force")

    def test_vm_ssh_runs_ssh_with_the_forwarded_port(self):
        self.create("sshy", ["qv.acpi=off"], "--no-agent")
        port = self.start("sshy", wait_ready=False)["ssh_port"]
        fake = os.path.join(self.node.dir, "bin")
        os.mkdir(fake)
        with open(os.path.join(fake, "ssh"), "w") as f:
            f.write("#!/bin/sh\nfor a in \"$@\"; do echo \"$a\"; done\n")
        os.chmod(os.path.join(fake, "ssh"), 0o755)
        env = dict(os.environ, PATH=fake + ":" + os.environ["PATH"])
        p = self.node.qvisor("vm", "ssh", "sshy", "--", "uname", "-a", env=env, check=0)
        args = p.stdout.splitlines()
        self.assertEqual(args[:2], ["-p", str(port)])
        self.assertIn("HostKeyAlias=qvisor-sshy", args)
        self.assertIn("UserKnownHostsFile=" + os.path.join(self.node.state, "instances", "sshy", "known_hosts"), args)
        self.assertEqual(args[-4:], ["qvisor@127.0.0.1", "--", "uname", "-a"])
        self.stop("sshy", "--force")
        p = self.node.qvisor("vm", "ssh", "sshy", env=env)
        self.assertEqual(p.returncode, 69)
        self.assertIn("no SSH port", p.stderr)


    # -- pause and resume ---------------------------------------------------------

    def test_pause_stops_the_guest_and_resume_continues_it(self):
        # The guest powers itself off 6 s after "ready", counted in its own
        # time, which stands still while it is paused: paused for longer than
        # that, it must still be there; resumed, it must get there.
        self.create("nap", ["qv.poweroff=6"], "--no-agent")
        pid = self.start("nap")["pid"]
        res = self.pause("nap")
        self.assertEqual((res["name"], res["state"], res["result"]), ("nap", "paused", "paused"))
        row = self.node.qvisor_json("vm", "list")["vms"][0]
        self.assertEqual((row["state"], row["pid"]), ("paused", pid))
        self.assertEqual(self.show("nap")["state"], "paused")
        self.assertRegex(self.node.qvisor("vm", "list", check=0).stdout, rf"nap +paused +{pid} ")
        serial_size = os.path.getsize(self.serial("nap"))
        time.sleep(9)  # wall time, longer than the guest's timer: not scaled
        self.assertEqual(os.path.getsize(self.serial("nap")), serial_size, "a paused guest wrote to its console")
        self.assertNotIn("poweroff timer", self.markers("nap"))
        self.assertTrue(proc_alive(pid))
        self.assertEqual(self.show("nap")["state"], "paused")
        # nothing to do is a success; start is refused as for a running VM
        self.assertEqual(self.pause("nap")["result"], "already-paused")
        self.assertIn("VM nap is already paused", self.node.qvisor("vm", "pause", "nap", check=0).stdout)
        p = self.node.qvisor("vm", "start", "nap")
        self.assertEqual(p.returncode, 73, p.stderr)
        self.assertIn("already paused", p.stderr)

        p = self.node.qvisor("vm", "resume", "nap", check=0)
        self.assertIn("resumed VM nap", p.stdout)
        self.assertEqual(self.show("nap")["state"], "running")  # the answer came with the new state
        res = self.pause("nap", "resume")
        self.assertEqual((res["state"], res["result"]), ("running", "not-paused"))
        self.assertIn("VM nap is not paused", self.node.qvisor("vm", "resume", "nap", check=0).stdout)
        # the guest goes on where it stood: its timer fires, it powers off
        wait_for(lambda: self.show("nap")["state"] == "stopped", scaled(60), "the guest's own poweroff after resume")
        self.assertIn("poweroff timer", self.markers("nap"))
        self.assertIn("the guest powered off", self.show("nap")["last_exit"])
        # one transition each way, although QEMU's event and its answer both say so
        self.assertEqual(self.count_log("VM nap: paused\n"), 1)
        self.assertEqual(self.count_log("VM nap: resumed\n"), 1)
        self.assert_daemon_exits_cleanly()

    def test_stop_of_a_paused_vm_quits_without_acpi(self):
        # debug logging shows every QMP event: POWERDOWN would mean QEMU got
        # a system_powerdown (it queues the ACPI event for a paused guest)
        self.node.write_config(self.CONFIG + "log_level: debug\n")
        self.node.qvisor("config", "reload", check=0)
        # a guest that honours ACPI and has an agent: unpaused, a stop uses them
        self.create("sleeper", ["qv.agent=on"])
        pid = self.start("sleeper")["pid"]
        self.assertIsNotNone(self.wait_marker("sleeper", r"^acpi on$"))
        self.assertIsNotNone(self.wait_marker("sleeper", r"agent started .*"))
        wait_for(lambda: self.node.qvisor_json("vm", "list")["vms"][0]["agent"] == "ok", scaled(120), "the agent")
        self.pause("sleeper")
        log_from = len(self.node.log())

        res = self.stop("sleeper", want=3)  # quit is not a clean guest shutdown: forced, exit 3
        self.assertEqual((res["result"], res["how"]), ("forced", "QMP quit"))
        self.assertLess(res["seconds"], 15)  # not the 30 s stop timeout
        log = self.node.log()[log_from:]
        self.assertIn("VM sleeper: the guest is paused: no ACPI or agent shutdown to a paused guest; quitting QEMU",
                      log)
        self.assertIn("VM sleeper: sending quit to QEMU", log)
        self.assertNotIn("ACPI power button", log)
        self.assertNotIn("asking the guest agent", log)
        self.assertNotIn("QMP event POWERDOWN", log)
        self.assertIn("VM sleeper: QMP event STOP", self.node.log())  # events are logged: the check above can fail
        self.assertFalse([m for m in self.markers("sleeper") if m.startswith("poweroff")])
        self.assertFalse(proc_alive(pid))
        vm = self.show("sleeper")
        self.assertEqual(vm["state"], "stopped")
        self.assertIn("forced", vm["last_exit"])
        self.assertEqual(self.run_files("sleeper"), [])
        # with --force the same stop is what was asked for: exit 0
        self.start("sleeper", wait_ready=False)
        self.pause("sleeper")
        res = self.stop("sleeper", "--force", want=0)
        self.assertEqual((res["result"], res["how"]), ("forced", "QMP quit"))
        # the control: the same guest, not paused, is shut down by its agent
        self.start("sleeper")
        self.assertIsNotNone(self.wait_marker("sleeper", r"agent started .*"))
        wait_for(lambda: self.node.qvisor_json("vm", "list")["vms"][0]["agent"] == "ok", scaled(120), "the agent")
        res = self.stop("sleeper")
        self.assertEqual((res["result"], res["how"]), ("clean", "guest agent guest-shutdown"))
        self.assert_daemon_exits_cleanly()

    def test_pause_and_resume_in_the_wrong_state(self):
        self.create("idle", ["qv.acpi=off"], "--no-agent")
        for verb in ("pause", "resume"):
            p = self.node.qvisor("vm", verb, "idle")
            self.assertEqual(p.returncode, 69, (verb, p.stderr))
            self.assertIn("VM 'idle' is stopped: there is no QEMU to " + verb, p.stderr)
            p = self.node.qvisor("vm", verb, "nosuch")
            self.assertEqual(p.returncode, 66, (verb, p.stderr))
        self.start("idle", wait_ready=False)
        self.assertIsNotNone(self.wait_marker("idle", r"^acpi off$"))
        # pause and resume sent at once on one connection: QEMU runs stop then
        # cont, so the resume must not find "running" and do nothing
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(scaled(30))
            s.connect(self.node.socket)
            s.sendall(b'{"id": 1, "method": "vm.pause", "params": {"name": "idle"}}\n'
                      b'{"id": 2, "method": "vm.resume", "params": {"name": "idle"}}\n')
            f = s.makefile("r")
            replies = {r["id"]: r for r in (json.loads(f.readline()) for _ in range(2))}
        self.assertEqual(replies[1]["result"]["result"], "paused", replies)
        self.assertEqual(replies[2]["result"]["result"], "resumed", replies)
        self.assertEqual(replies[2]["result"]["state"], "running", replies)
        self.assertEqual(self.show("idle")["state"], "running")
        # stopping (a guest that ignores ACPI takes its stop timeout): busy
        stopper = subprocess.Popen([QVISOR, "--config", self.node.config, "vm", "stop", "idle", "--timeout", "60s"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: self.show("idle")["state"] == "stopping", scaled(30), "the stop under way")
            for verb in ("pause", "resume"):
                p = self.node.qvisor("vm", verb, "idle")
                self.assertEqual(p.returncode, 75, (verb, p.stderr))
                self.assertIn("is stopping; try again", p.stderr)
            self.stop("idle", "--force")
            self.assertEqual(stopper.wait(timeout=scaled(60)), 3)  # the first stop: forced unasked
        finally:
            if stopper.poll() is None:
                stopper.kill()
                stopper.wait()
        # crashed: no QEMU either
        pid = self.start("idle", wait_ready=False)["pid"]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: self.show("idle")["state"] == "crashed", scaled(10), "state crashed")
        p = self.node.qvisor("vm", "pause", "idle")
        self.assertEqual(p.returncode, 69, p.stderr)
        self.assertIn("is crashed", p.stderr)
        self.assert_daemon_exits_cleanly()

    def test_paused_vm_is_readopted_after_a_daemon_restart(self):
        # "kept": paused, state.json says so.  "lost": paused, but the daemon
        # died before it wrote that down (state.json still says running).
        # "halting": paused, and the daemon died just after it saved a
        # graceful stop, before sending anything.  The next daemon asks QEMU
        # (query-status) and never sends ACPI to the two it stops.
        self.create("kept", ["qv.poweroff=8"], "--no-agent")
        self.create("lost", [], "--no-agent")  # both honour ACPI
        self.create("halting", [], "--no-agent")
        pid_kept = self.start("kept")["pid"]
        self.pause("kept")
        pids = {n: self.start(n, wait_ready=False)["pid"] for n in ("lost", "halting")}
        for n in ("lost", "halting"):
            self.assertIsNotNone(self.wait_marker(n, r"^acpi on$"))
            self.pause(n)
        self.node.stop_daemon(signal.SIGKILL)

        def edit_state(name, **changes):
            path = os.path.join(self.node.state, "instances", name, "state.json")
            with open(path) as f:
                st = json.load(f)
            self.assertEqual(st["state"], "paused")
            st.update(changes)
            with open(path, "w") as f:
                json.dump(st, f)
            return path
        lost_path = edit_state("lost", state="running")
        edit_state("halting", state="stopping")  # run.stop_force false: graceful
        log_from = len(self.node.log())

        self.node.start_daemon()
        vms = {v["name"]: v for v in self.node.qvisor_json("vm", "list")["vms"]}
        self.assertEqual((vms["kept"]["state"], vms["kept"]["pid"]), ("paused", pid_kept))
        wait_for(lambda: self.show("lost")["state"] == "paused", scaled(10), "the lost pause found again")
        wait_for(lambda: self.show("halting")["state"] == "stopped", scaled(30), "the interrupted stop finished")
        log = self.node.log()[log_from:]
        self.assertIn(f"VM kept: re-adopted QEMU pid {pid_kept} (paused)", log)
        self.assertIn("VM lost: QEMU reports the guest paused (paused), its saved state said running", log)
        with open(lost_path) as f:
            self.assertEqual(json.load(f)["state"], "paused")  # and written down this time
        self.assertIn("VM halting: finishing the stop", log)
        self.assertIn("VM halting: the guest is paused: no ACPI", log)
        self.assertFalse(proc_alive(pids["halting"]))
        self.assertIn("forced", self.show("halting")["last_exit"])

        # resumed by the new daemon, the guest goes on to its timer's poweroff
        self.assertEqual(self.pause("kept", "resume")["state"], "running")
        wait_for(lambda: self.show("kept")["state"] == "stopped", scaled(60), "kept's own poweroff after resume")
        self.assertIn("poweroff timer", self.markers("kept"))
        # and the re-found pause is honoured: quit, no ACPI
        res = self.stop("lost", want=3)
        self.assertEqual((res["result"], res["how"]), ("forced", "QMP quit"))
        log = self.node.log()[log_from:]
        self.assertIn("VM lost: the guest is paused: no ACPI", log)
        self.assertNotIn("ACPI power button", log)
        for n in ("lost", "halting"):
            self.assertFalse([m for m in self.markers(n) if m.startswith("poweroff")], n)
        self.assertFalse(proc_alive(pids["lost"]))
        self.assertEqual(self.node.qemu_pids(), [])
        self.assert_daemon_exits_cleanly()

if __name__ == "__main__":
    unittest.main(verbosity=2)
