#!/usr/bin/env python3
"""`qvisor vm clone` and `qvisor image create --from-vm` through the real
daemon, CLI and qemu-img: a clone's disk is an overlay on the same base
holding only what its source changed, with new MACs and a new cloud-init
instance-id (its own host name); the source keeps its data and is held
(start and rm refused) while its disk is copied; a running source is
refused; an interrupted clone (its client killed) and a daemon killed in
the middle of a clone or of a flatten leave nothing half-made; an image
made from a VM is flattened, read-only, and a VM created on it has the
data.  The seed is checked by its content (isoinfo), and a clone of the
tiny test guest boots under TCG with the source's disk content, its own MAC
and its own seed (the guest prints what it found), while the source keeps
booting its own disk."""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "guest"))
from qvtest import QVISOR, Node, scaled, wait_for  # noqa: E402
import guestlib  # noqa: E402

MIB = 1 << 20


def qemu_io(path, cmd):
    return subprocess.run(["qemu-io", "-f", "qcow2", "-c", cmd, path], capture_output=True, text=True)


def info(path):
    p = subprocess.run(["qemu-img", "info", "-U", "--output=json", "--backing-chain", path],
                       capture_output=True, text=True, check=True)
    return json.loads(p.stdout)


class Clone(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="qv-it-clone-")
        cls.raw = os.path.join(cls.tmp, "base.raw")
        with open(cls.raw, "wb") as f:  # 48 MiB of data in a 128 MiB image
            f.write(b"\x11" * (48 * MIB))
            f.truncate(128 * MIB)
        # qemu-img convert at a fixed rate: a copy that takes a few seconds
        cls.slow = os.path.join(cls.tmp, "slow-qemu-img")
        with open(cls.slow, "w") as f:
            f.write('#!/bin/sh\n'
                    'if [ "$1" = convert ] && [ -n "$CONVERT_RATE" ]; then shift; '
                    'exec qemu-img convert -r "$CONVERT_RATE" "$@"; fi\n'
                    'if [ "$1" = snapshot ] && [ -n "$SNAPSHOT_DELAY" ]; then '
                    ': > "$SNAPSHOT_MARK"; sleep "$SNAPSHOT_DELAY"; fi\n'
                    'if [ "$1" = create ] && [ -n "$CREATE_DELAY" ]; then '
                    ': > "$CREATE_MARK"; sleep "$CREATE_DELAY"; fi\n'
                    'exec qemu-img "$@"\n')
        os.chmod(cls.slow, 0o755)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        self.node = Node(extra_config=f"qemu:\n  img_binary: {self.slow}\n")
        self.addCleanup(self.node.cleanup)
        self.addCleanup(self.no_sanitizer_reports)  # runs first
        self.node.start_daemon()
        self.node.qvisor("image", "import", self.raw, "base", "--format", "raw", check=0)
        # user networking only: VMs started here must not touch the host's
        # network (a nat NIC would make the NAT bridge)
        self.node.qvisor("vm", "create", "src", "--image", "base", "--disk", "128M", "--memory", "128M", "--no-agent",
                         check=0)
        self.src_disk = self.disk("src")
        p = qemu_io(self.src_disk, "write -P 0x22 1M 12M")
        self.assertEqual(p.returncode, 0, p.stderr)

    def no_sanitizer_reports(self):
        if self.node.proc and self.node.proc.poll() is None:
            self.node.stop_daemon()
        self.assertEqual(self.node.sanitizer_reports(), [], self.node.log()[-3000:])

    def disk(self, name):
        return os.path.join(self.node.state, "instances", name, "disk.qcow2")

    def show(self, name):
        return self.node.qvisor_json("vm", "show", name)

    def instances(self):
        return sorted(os.listdir(os.path.join(self.node.state, "instances")))

    def images_dir(self):
        return sorted(os.listdir(os.path.join(self.node.state, "images")))

    def restart_daemon(self, env=None):
        self.node.stop_daemon()
        self.node.start_daemon(extra_env=env)

    def crash_at(self, point, *args):
        """Runs args on a daemon that dies at point, then starts a normal one."""
        self.restart_daemon({"QVISOR_TEST_CRASH_AT": point})
        self.node.qvisor(*args, timeout=scaled(60))
        wait_for(lambda: self.node.proc.poll() is not None, scaled(30), f"daemon crash at {point}")
        self.assertEqual(self.node.proc.returncode, -signal.SIGKILL)
        self.node.start_daemon()

    def test_clone_is_an_overlay_with_its_own_identity(self):
        t0 = time.monotonic()
        self.node.qvisor("vm", "clone", "src", "copy", "--cpus", "2", check=0)
        dt = time.monotonic() - t0
        chain = info(self.disk("copy"))
        base = os.path.join(self.node.state, "images", "base.qcow2")
        self.assertEqual(chain[0]["backing-filename"], base)
        self.assertEqual(len(chain), 2)
        # only what src changed: 12 MiB of data, not the base's 48
        self.assertLess(chain[0]["actual-size"], 16 * MIB)
        self.assertEqual(chain[0]["virtual-size"], 128 * MIB)
        p = subprocess.run(["qemu-img", "compare", "-U", self.src_disk, self.disk("copy")], capture_output=True,
                           text=True)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        # src keeps its data, and the clone's disk is its own
        self.assertEqual(qemu_io(self.disk("copy"), "write -P 0x33 1M 1M").returncode, 0)
        self.assertEqual(qemu_io(self.src_disk, "read -P 0x22 1M 12M").returncode, 0)
        self.assertEqual(qemu_io(self.disk("copy"), "read -P 0x11 20M 1M").returncode, 0)
        # a new MAC, the options applied, the rest the source's
        a, b = self.show("src"), self.show("copy")
        self.assertEqual(b["spec"]["cpus"], 2)
        self.assertEqual(b["spec"]["memory"], a["spec"]["memory"])
        self.assertEqual([n["mode"] for n in b["nics"]], ["user"])
        self.assertNotEqual(a["nics"][0]["mac"], b["nics"][0]["mac"])
        # NICs of a VM with a nat address (defined, never started here)
        self.node.qvisor("vm", "create", "natsrc", "--image", "base", "--disk", "128M", "--net", "nat", "--net", "user",
                         "--net", "nat,mac=52:54:00:12:34:56", check=0)
        self.node.qvisor("vm", "clone", "natsrc", "natcopy", check=0)
        a, b = self.show("natsrc"), self.show("natcopy")
        self.assertEqual([n["mode"] for n in b["nics"]], ["nat", "user", "nat"])
        self.assertEqual(len({n["mac"] for n in a["nics"] + b["nics"]}), 6)
        self.assertEqual(len({n["ip"] for n in a["nics"] + b["nics"] if n["mode"] == "nat"}), 4)
        # a new instance-id, and the clone's own host name in the seed
        ids = []
        for vm in ("src", "copy"):
            with open(os.path.join(self.node.state, "instances", vm, "seed.id")) as f:
                ids.append(f.read().strip())
            seed = os.path.join(self.node.state, "instances", vm, "seed.iso")
            meta = subprocess.run(["isoinfo", "-R", "-i", seed, "-x", "/meta-data"], capture_output=True, text=True,
                                  check=True).stdout
            self.assertIn(f"local-hostname: '{vm}'", meta)
            self.assertIn(f"instance-id: '{ids[-1]}'", meta)
            net = subprocess.run(["isoinfo", "-R", "-i", seed, "-x", "/network-config"], capture_output=True,
                                 text=True, check=True).stdout
            self.assertIn(self.show(vm)["nics"][0]["mac"], net)
        self.assertNotEqual(ids[0], ids[1])
        self.assertEqual(self.show("copy")["state"], "stopped")
        self.assertLess(dt, scaled(20))
        # a name that exists, a bad name, a source that does not exist
        self.assertEqual(self.node.qvisor("vm", "clone", "src", "copy").returncode, 73)
        self.assertEqual(self.node.qvisor("vm", "clone", "src", "Bad_Name").returncode, 65)
        self.assertEqual(self.node.qvisor("vm", "clone", "nope", "x").returncode, 66)
        self.assertEqual(self.node.qvisor("vm", "clone", "src", "y", "--memory", "512G").returncode, 75)
        self.assertNotIn("y", self.instances())

    def test_owner_not_inherited_and_start(self):
        self.node.qvisor("vm", "clone", "src", "owned", "--owner", "4321", "--slurm-job", "9", check=0)
        self.assertEqual(self.show("owned")["owner"], 4321)
        self.assertEqual(self.show("owned")["slurm_job"], 9)
        self.node.qvisor("vm", "clone", "owned", "free", check=0)
        self.assertIsNone(self.show("free")["owner"])
        self.assertIsNone(self.show("free")["slurm_job"])
        # --start starts the clone once it is defined
        j = self.node.qvisor_json("vm", "clone", "src", "runner", "--start")
        self.assertEqual(j["created"]["name"], "runner")
        self.assertEqual(j["started"]["state"], "running")
        self.assertEqual(self.show("src")["state"], "stopped")
        self.node.qvisor("vm", "stop", "runner", "--force", check=0)

    def test_twin_seed_refused(self):
        # a network-config of the user's (no MACs of ours in it) and the
        # source's host name: the clone's seed would be the source's
        nc = os.path.join(self.node.dir, "net.yaml")
        with open(nc, "w") as f:
            f.write("version: 2\nethernets:\n  all:\n    match: {name: 'e*'}\n    dhcp4: true\n")
        self.node.qvisor("vm", "create", "nc", "--image", "base", "--disk", "128M", "--network-config", nc, check=0)
        r = self.node.qvisor("vm", "clone", "nc", "twin", "--hostname", "nc")
        self.assertEqual(r.returncode, 65, r.stderr)
        self.assertIn("instance-id", r.stderr)
        self.assertNotIn("twin", self.instances())
        self.assertNotIn(".twin.creating", self.instances())
        # its own host name is enough
        self.node.qvisor("vm", "clone", "nc", "twin", check=0)
        ids = set()
        for vm in ("nc", "twin"):
            with open(os.path.join(self.node.state, "instances", vm, "seed.id")) as f:
                ids.add(f.read())
        self.assertEqual(len(ids), 2)

    def test_source_held_while_copied_and_running_source_refused(self):
        self.restart_daemon({"CONVERT_RATE": "6M"})  # 12 MiB to copy: about 2 s
        p = subprocess.Popen([QVISOR, "--config", self.node.config, "vm", "clone", "src", "slow"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: ".slow.creating" in self.instances(), scaled(10), "the clone under way")
        st = self.node.qvisor("vm", "start", "src")
        self.assertEqual(st.returncode, 75, st.stderr)
        self.assertIn("being copied", st.stderr)
        self.assertEqual(self.node.qvisor("vm", "rm", "src").returncode, 75)
        r = self.node.qvisor("vm", "snapshot", "src", "create", "s1")
        self.assertEqual(r.returncode, 75, r.stderr)
        self.assertIn("being copied", r.stderr)
        # nor is its disk grown or its spec changed under the copy
        r = self.node.qvisor("vm", "resize", "src", "--disk", "+1G")
        self.assertEqual(r.returncode, 75, r.stderr)
        self.assertIn("being copied", r.stderr)
        r = self.node.qvisor("vm", "edit", "src", "--cpus", "2")
        self.assertEqual(r.returncode, 75, r.stderr)
        self.assertIn("being copied", r.stderr)
        out, err = p.communicate(timeout=scaled(30))
        self.assertEqual(p.returncode, 0, err)
        self.assertEqual(self.show("src")["state"], "stopped")
        # once done, src starts; a running source is refused, and nothing is made
        self.node.qvisor("vm", "start", "src", check=0)
        r = self.node.qvisor("vm", "clone", "src", "hot")
        self.assertEqual(r.returncode, 75, r.stderr)
        self.assertIn("stop it first", r.stderr)
        r = self.node.qvisor("image", "create", "hot", "--from-vm", "src")
        self.assertEqual(r.returncode, 75, r.stderr)
        self.assertNotIn("hot", self.instances())
        self.assertNotIn(".hot.creating", self.instances())
        self.node.qvisor("vm", "stop", "src", "--force", check=0)

    def test_snapshot_in_flight_refuses_a_copy(self):
        mark = os.path.join(self.node.dir, "snapshot-running")
        self.restart_daemon({"SNAPSHOT_DELAY": "2", "SNAPSHOT_MARK": mark})
        p = subprocess.Popen([QVISOR, "--config", self.node.config, "vm", "snapshot", "src", "create", "s1"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: os.path.exists(mark), scaled(10), "the snapshot under way")
        r = self.node.qvisor("vm", "clone", "src", "during")
        self.assertEqual(r.returncode, 75, r.stderr)
        self.assertIn("snapshot 's1'", r.stderr)
        r = self.node.qvisor("image", "create", "during", "--from-vm", "src")
        self.assertEqual(r.returncode, 75, r.stderr)
        _, err = p.communicate(timeout=scaled(30))
        self.assertEqual(p.returncode, 0, err)
        self.assertNotIn("during", self.instances())
        # afterwards: the copies have the disk as it is, none of its snapshots
        self.node.qvisor("vm", "clone", "src", "after", check=0)
        self.node.qvisor("image", "create", "after", "--from-vm", "src", check=0)
        for disk in (self.disk("after"), os.path.join(self.node.state, "images", "after.qcow2")):
            self.assertEqual(info(disk)[0].get("snapshots", []), [], disk)
        self.assertEqual([x["name"] for x in info(self.src_disk)[0]["snapshots"]], ["s1"])

    def test_interrupted_clone_is_rolled_back(self):
        self.restart_daemon({"CONVERT_RATE": "2M"})  # 12 MiB: about 6 s
        # SIGINT as a terminal's Ctrl-C sends it (a test run in the
        # background would have the child ignore it)
        p = subprocess.Popen([QVISOR, "--config", self.node.config, "vm", "clone", "src", "half"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        wait_for(lambda: ".half.creating" in self.instances(), scaled(10), "the clone under way")
        time.sleep(0.5)
        p.send_signal(signal.SIGINT)  # Ctrl-C: the client goes away
        self.assertEqual(p.wait(timeout=scaled(10)), -signal.SIGINT)
        wait_for(lambda: ".half.creating" not in self.instances(), scaled(10), "the half clone removed")
        self.assertNotIn("half", self.instances(), self.node.log())
        wait_for(lambda: "interrupted and rolled back" in self.node.log(), scaled(10), "the roll-back logged")
        names = [v["name"] for v in self.node.qvisor_json("vm", "list")["vms"]]
        self.assertEqual(names, ["src"])
        # the source is no longer held
        wait_for(lambda: self.node.qvisor("vm", "start", "src").returncode == 0, scaled(10), "src starts")
        self.node.qvisor("vm", "stop", "src", "--force", check=0)

    def test_daemon_stopped_mid_clone(self):
        # SIGTERM: the daemon does not wait for the copy; it interrupts it
        self.restart_daemon({"CONVERT_RATE": "2M"})  # 12 MiB: about 6 s
        p = subprocess.Popen([QVISOR, "--config", self.node.config, "vm", "clone", "src", "late"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: ".late.creating" in self.instances(), scaled(10), "the clone under way")
        t0 = time.monotonic()
        self.assertEqual(self.node.stop_daemon(), 0)
        self.assertLess(time.monotonic() - t0, scaled(4))
        self.assertNotEqual(p.wait(timeout=scaled(10)), 0)
        p.stdout.close()
        p.stderr.close()
        self.assertIn("the daemon is stopping; interrupting it", self.node.log())
        self.node.start_daemon()
        self.assertEqual(self.instances(), ["src"])

    def test_daemon_stopped_mid_create(self):
        # a plain create whose worker ends after SIGTERM: the daemon has no
        # engine any more, and must not use it (it crashed: SIGSEGV); the
        # next daemon loads the VM from its directory
        mark = os.path.join(self.node.dir, "create-running")
        self.restart_daemon({"CREATE_DELAY": "2", "CREATE_MARK": mark})
        p = subprocess.Popen([QVISOR, "--config", self.node.config, "vm", "create", "fresh", "--image", "base",
                              "--no-seed", "--net", "user"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: os.path.exists(mark), scaled(10), "the create's qemu-img under way")
        self.assertEqual(self.node.stop_daemon(), 0, self.node.log()[-3000:])
        p.communicate(timeout=scaled(10))
        self.node.start_daemon()
        self.assertEqual(self.instances(), ["fresh", "src"])
        self.assertEqual(self.show("fresh")["state"], "stopped")

    def test_daemon_killed_mid_clone(self):
        for point in ("clone-after-disk", "clone-before-rename"):
            self.crash_at(point, "vm", "clone", "src", "crashed")
            self.assertEqual(self.instances(), ["src"], point)
            names = [v["name"] for v in self.node.qvisor_json("vm", "list")["vms"]]
            self.assertEqual(names, ["src"], point)
        # the name is free, and src was never held by a dead daemon
        self.node.qvisor("vm", "clone", "src", "crashed", check=0)
        self.assertEqual(self.show("crashed")["state"], "stopped")

    def test_image_from_vm(self):
        j = self.node.qvisor_json("image", "create", "tpl", "--from-vm", "src")
        self.assertEqual(j["name"], "tpl")
        self.assertIsNone(j["backing"])
        path = os.path.join(self.node.state, "images", "tpl.qcow2")
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o444)
        self.assertEqual(len(info(path)), 1)  # flattened: no backing file
        self.assertIn("tpl", [i["name"] for i in self.node.qvisor_json("image", "list")["images"]])
        p = subprocess.run(["qemu-img", "compare", "-U", self.src_disk, path], capture_output=True, text=True)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        # a VM on it has the prepared data, over the new image
        self.node.qvisor("vm", "create", "fromtpl", "--image", "tpl", "--disk", "128M", check=0)
        chain = info(self.disk("fromtpl"))
        self.assertEqual(chain[0]["backing-filename"], path)
        self.assertEqual(qemu_io(self.disk("fromtpl"), "read -P 0x22 1M 12M").returncode, 0)
        self.assertEqual(qemu_io(self.disk("fromtpl"), "read -P 0x11 20M 1M").returncode, 0)
        # refusals: the name taken (73), a bad name (65), no such VM (66)
        self.assertEqual(self.node.qvisor("image", "create", "tpl", "--from-vm", "src").returncode, 73)
        self.assertEqual(self.node.qvisor("image", "create", "../x", "--from-vm", "src").returncode, 65)
        self.assertEqual(self.node.qvisor("image", "create", "t2", "--from-vm", "nope").returncode, 66)

    def test_daemon_killed_mid_flatten(self):
        self.crash_at("image-create-before-link", "image", "create", "tpl", "--from-vm", "src")
        self.assertEqual(self.images_dir(), ["base.qcow2"])
        self.assertEqual([i["name"] for i in self.node.qvisor_json("image", "list")["images"]], ["base"])
        self.node.qvisor("vm", "start", "src", check=0)  # not held by the dead daemon
        self.node.qvisor("vm", "stop", "src", "--force", check=0)


def tiny_guest():
    """The prebuilt tiny guest, used read-only (docs/test-guest.md); None
    when it is not built."""
    d = os.path.join(os.environ.get("QVISOR_TEST_CACHE", "/var/cache/qvisor-test"), "tiny-guest")
    img = guestlib.TinyGuestImage(d)
    return img if os.path.exists(img.kernel) and os.path.exists(img.initrd) else None


class CloneBoots(unittest.TestCase):
    def setUp(self):
        self.guest = tiny_guest()
        if not self.guest:
            self.skipTest("no tiny test guest (test/guest/build-tiny-guest)")
        self.node = Node("vm_defaults:\n  memory: 256M\n  disk: 1G\n  stop_timeout: 30s\n")
        self.addCleanup(self.node.cleanup)
        self.node.start_daemon()
        blank = os.path.join(self.node.dir, "blank.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", blank, "1G"], check=True)
        self.node.qvisor("image", "import", blank, "blank", check=0)

    def serial(self, name):
        return os.path.join(self.node.state, "instances", name, "serial.log")

    def boot(self, name):
        """Starts the VM, waits for the guest, stops it (ACPI); its markers."""
        self.node.qvisor("vm", "start", name, timeout=scaled(60), check=0)
        m = guestlib.wait_marker_in_file(self.serial(name), r"^ready$", scaled(60))
        self.assertIsNotNone(m, f"{name} did not boot: {guestlib.read_markers(self.serial(name))}")
        markers = guestlib.read_markers(self.serial(name))
        self.node.qvisor("vm", "stop", name, timeout=scaled(60), check=0)
        return markers

    def test_clone_boots_with_its_own_identity_and_the_source_data(self):
        self.node.qvisor("vm", "create", "tpl", "--image", "blank", "--kernel", self.guest.kernel, "--initrd",
                         self.guest.initrd, "--no-agent", "--append",
                         guestlib.cmdline(["qv.disk=marker", "qv.seed=print", "qv.net=seed", "qv.hostname=seed"]),
                         check=0)
        first = self.boot("tpl")
        self.assertIn("bootcount 1", first)
        self.assertIn("hostname tpl", first)
        self.node.qvisor("vm", "clone", "tpl", "twin", check=0)
        twin = self.node.qvisor_json("vm", "show", "twin")
        tpl_disk = os.path.join(self.node.state, "instances", "tpl", "disk.qcow2")
        with open(tpl_disk, "rb") as f:
            before = hashlib.sha256(f.read()).hexdigest()
        self.assertEqual(twin["kernel_source"], self.guest.kernel)
        markers = self.boot("twin")
        # the source's disk content, and this is its second boot
        self.assertIn("marker found qvisor-marker-boot-1", markers)
        self.assertIn("bootcount 2", markers)
        # its own host name, as the booted guest's kernel holds it (set from
        # the clone's seed, as cloud-init does)
        self.assertIn("hostname twin", markers)
        self.assertNotIn("hostname tpl", markers)
        # its own MAC: the seed's network-config matched it, DHCP on it
        mac = twin["nics"][0]["mac"]
        self.assertNotEqual(mac, self.node.qvisor_json("vm", "show", "tpl")["nics"][0]["mac"])
        self.assertTrue(any(re.fullmatch(rf"net eth0 10\.0\.2\.15/24 \S+ {mac}", m) for m in markers), markers)
        # its own seed (its host name, a new instance-id): what the guest read
        seeds = guestlib.parse_seed(markers)
        (seen,) = [v for v in seeds.values() if v["label"] == "cidata"]
        iso = os.path.join(self.node.state, "instances", "twin", "seed.iso")
        meta = subprocess.run(["isoinfo", "-R", "-i", iso, "-x", "/meta-data"], capture_output=True,
                              check=True).stdout
        self.assertIn(b"local-hostname: 'twin'", meta)
        self.assertEqual(seen["files"]["meta-data"], hashlib.sha256(meta).hexdigest())
        # the clone's boot wrote its own disk, not the source's
        with open(tpl_disk, "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).hexdigest(), before)
        self.assertEqual(self.node.sanitizer_reports(), [])


if __name__ == "__main__":
    unittest.main()
