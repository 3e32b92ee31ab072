#!/usr/bin/env python3
"""The tiny test guest works: boot, ACPI power button (and its absence), the
marker disk, the cloud-init seed reader, the guest agent, static networking,
networking from the seed's network-config, guest-initiated poweroff and panic.

The guest is built by test/guest/build-tiny-guest (cached outside the repo) and
booted with bare qemu-system-x86_64 under TCG. Boots run in a small thread pool
(QVISOR_TEST_GUEST_JOBS, default 2) started in setUpClass; each test method
waits for its scenario and re-raises its failure. Timeouts scale with
QVISOR_TEST_TIMEOUT_MULTIPLIER.
"""

import concurrent.futures
import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import guestlib as gl  # noqa: E402

JOBS = max(1, int(os.environ.get("QVISOR_TEST_GUEST_JOBS", "2")))
_t = unittest.TestCase()        # assertion helpers usable from worker threads
_t.maxDiff = None

ERROR_MARKERS = r"(modules-error|acpi-error|net-error|disk-error|seed-error|agent-error|agent-exited).*"


def assert_clean(g):
    """The guest printed boot first, ready, and no error markers."""
    marks = g.markers()
    _t.assertTrue(marks, "no markers at all\n" + g.diagnostics())
    _t.assertEqual(marks[0], "boot", g.diagnostics())
    _t.assertIn("ready", marks, g.diagnostics())
    errors = g.find_markers(ERROR_MARKERS)
    _t.assertEqual([m.group(0) for m in errors], [], g.diagnostics())


def expect_guest_shutdown(g, timeout=20):
    """Wait for SHUTDOWN with guest=true and QEMU's clean exit."""
    ev = g.qmp.wait_event("SHUTDOWN", gl.scaled(timeout))
    _t.assertIsNotNone(ev, "no SHUTDOWN event\n" + g.diagnostics())
    _t.assertTrue(ev["data"].get("guest"), "SHUTDOWN not from the guest: %r" % ev)
    rc = g.wait_exit(gl.scaled(timeout))
    _t.assertEqual(rc, 0, "QEMU did not exit cleanly\n" + g.diagnostics())
    return ev


def boot(g):
    """Start, connect QMP at once (to see every event), wait for ready."""
    g.start()
    g.qmp
    return g.wait_ready()


# ---------------------------------------------------------------------------
# scenarios (run in worker threads; return timings, raise on failure)

def scenario_powerdown(img):
    with gl.Guest(img, name="powerdown") as g:
        ready = boot(g)
        assert_clean(g)
        _t.assertIn("acpi on", g.markers())
        t = time.monotonic()
        g.qmp.command("system_powerdown")
        _t.assertIsNotNone(g.qmp.wait_event("POWERDOWN", gl.scaled(5)), "no POWERDOWN event")
        expect_guest_shutdown(g)
        stop = time.monotonic() - t
        _t.assertIn("poweroff acpi", g.markers())
        return {"ready_s": ready, "powerdown_to_exit_s": stop}


def scenario_acpi_off(img):
    with gl.Guest(img, options=["qv.acpi=off"], name="acpioff") as g:
        ready = boot(g)
        assert_clean(g)
        _t.assertIn("acpi off", g.markers())
        g.qmp.command("system_powerdown")
        _t.assertIsNotNone(g.qmp.wait_event("POWERDOWN", gl.scaled(5)), "no POWERDOWN event")
        # ignored: still running a few seconds later, no SHUTDOWN
        _t.assertIsNone(g.qmp.wait_event("SHUTDOWN", 4.0),
                        "ACPI-deaf guest shut down\n" + g.diagnostics())
        _t.assertTrue(g.running(), "QEMU exited\n" + g.diagnostics())
        _t.assertEqual(g.qmp.command("query-status")["status"], "running")
        _t.assertNotIn("poweroff acpi", g.markers())
        g.qmp.command("quit")
        ev = g.qmp.wait_event("SHUTDOWN", gl.scaled(10))
        _t.assertIsNotNone(ev, "no SHUTDOWN after quit")
        _t.assertFalse(ev["data"].get("guest"), ev)
        _t.assertIsNotNone(g.wait_exit(gl.scaled(10)), "QEMU still running after quit")
        return {"ready_s": ready}


def scenario_disk_marker(img):
    work = tempfile.mkdtemp(prefix="qvg-disk-")
    try:
        disk = os.path.join(work, "disk.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", disk, "64M"], check=True)
        drive = ["-drive", "file=%s,format=qcow2,if=none,id=d0" % disk,
                 "-device", "virtio-blk-pci,drive=d0"]
        times = {}
        # first boot: blank disk gets a filesystem and a marker
        with gl.Guest(img, options=["qv.disk=marker"], extra_args=drive, name="disk1") as g:
            times["ready1_s"] = boot(g)
            assert_clean(g)
            marks = g.markers()
            for want in ("disk formatted /dev/vda", "marker written", "bootcount 1"):
                _t.assertIn(want, marks, g.diagnostics())
            g.qmp.command("system_powerdown")
            expect_guest_shutdown(g)
            _t.assertIn("poweroff acpi", g.markers())
        # second boot: the marker is found, the counter goes on
        with gl.Guest(img, options=["qv.disk=marker"], extra_args=drive, name="disk2") as g:
            times["ready2_s"] = boot(g)
            assert_clean(g)
            marks = g.markers()
            _t.assertIn("marker found qvisor-marker-boot-1", marks, g.diagnostics())
            _t.assertIn("bootcount 2", marks)
            _t.assertNotIn("disk formatted /dev/vda", marks)
            _t.assertNotIn("marker written", marks)
            g.qmp.command("system_powerdown")
            expect_guest_shutdown(g)
        p = subprocess.run(["qemu-img", "check", "-q", disk], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
        _t.assertEqual(p.returncode, 0, "qemu-img check: " + p.stdout)
        return times
    finally:
        shutil.rmtree(work, ignore_errors=True)


SEED_FILES = {
    "user-data": b"#cloud-config\nhostname: tiny\nruncmd:\n  - [ echo, hello ]\n",
    "meta-data": b"instance-id: iid-qvisor-0001\nlocal-hostname: 'tiny-1'\n",
    "network-config": b"version: 2\nethernets:\n  nic0:\n    match:\n      macaddress: '52:54:00:00:00:01'\n",
    "vendor-data": b"",
}


def scenario_seed(img):
    genisoimage = shutil.which("genisoimage")
    if not genisoimage:
        raise unittest.SkipTest("genisoimage not installed (apt-get install genisoimage)")
    work = tempfile.mkdtemp(prefix="qvg-seed-")
    try:
        src = os.path.join(work, "src")
        os.mkdir(src)
        for name, data in SEED_FILES.items():
            with open(os.path.join(src, name), "wb") as f:
                f.write(data)
        iso = os.path.join(work, "seed.iso")
        subprocess.run([genisoimage, "-quiet", "-output", iso, "-volid", "cidata",
                        "-joliet", "-rock"] + sorted(SEED_FILES), cwd=src, check=True)
        expected = {n: hashlib.sha256(d).hexdigest() for n, d in SEED_FILES.items()}
        extra = [
            # CD-ROM on q35's built-in AHCI controller
            "-drive", "file=%s,format=raw,media=cdrom,if=none,id=cd0,readonly=on" % iso,
            "-device", "ide-cd,drive=cd0,bus=ide.0",
            # and the same image as a read-only virtio disk
            "-drive", "file=%s,format=raw,if=none,id=vd0,readonly=on" % iso,
            "-device", "virtio-blk-pci,drive=vd0",
        ]
        with gl.Guest(img, options=["qv.seed=print", "qv.hostname=seed"], extra_args=extra, name="seed") as g:
            ready = boot(g)
            assert_clean(g)
            # local-hostname, its YAML quotes taken off, is the kernel's
            _t.assertIn("hostname tiny-1", g.markers())
            seeds = gl.parse_seed(g.markers())
            for dev in ("/dev/sr0", "/dev/vda"):
                seen = seeds.get(dev)
                _t.assertIsNotNone(seen, "no seed on %s\n%s" % (dev, g.diagnostics()))
                _t.assertEqual(seen["label"], "cidata", dev)
                _t.assertEqual(seen["files"], expected, "files seen on %s\n%s" % (dev, g.diagnostics()))
                _t.assertTrue(seen["done"], dev)
                _t.assertIsNone(seen["error"], dev)
            g.qmp.command("quit")
            g.wait_exit(gl.scaled(10))
            return {"ready_s": ready}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def scenario_agent(img):
    if not img.has_agent:
        raise unittest.SkipTest("guest built without qemu-ga (apt-get install qemu-guest-agent)")
    with gl.Guest(img, options=["qv.agent=on"], agent=True, name="agent") as g:
        ready = boot(g)
        assert_clean(g)
        _t.assertTrue(g.find_markers(r"agent started /dev/vport\d+p\d+"), g.diagnostics())
        t = time.monotonic()
        a = g.agent(timeout=gl.scaled(10))
        try:
            a.sync(timeout=gl.scaled(30))
            sync_s = time.monotonic() - t
            _t.assertEqual(a.command("guest-ping", timeout=gl.scaled(5)), {})
            info = a.command("guest-info", timeout=gl.scaled(5))
            _t.assertTrue(info.get("version"), info)
        finally:
            a.close()
        g.qmp.command("system_powerdown")
        expect_guest_shutdown(g)
        return {"ready_s": ready, "agent_sync_s": sync_s}


def scenario_guest_poweroff(img):
    # Also proves the packaged bzImage (vmlinuz) boots, not only the PVH vmlinux.
    with gl.Guest(img, options=["qv.poweroff=2"], kernel=img.vmlinuz, name="selfoff") as g:
        ready = boot(g)
        assert_clean(g)
        ev = expect_guest_shutdown(g, timeout=30)
        _t.assertEqual(ev["data"].get("reason"), "guest-shutdown", ev)
        _t.assertIn("poweroff timer", g.markers())
        return {"ready_vmlinuz_s": ready}


def scenario_net(img):
    mac = "52:54:00:71:76:01"
    extra = ["-netdev", "user,id=n0,restrict=on",       # nothing leaves QEMU
             "-device", "virtio-net-pci,netdev=n0,mac=" + mac]
    opts = ["qv.net=eth0:10.0.2.15/24:10.0.2.2", "qv.ping=10.0.2.2"]
    with gl.Guest(img, options=opts, extra_args=extra, name="net") as g:
        ready = boot(g)
        assert_clean(g)
        marks = g.markers()
        _t.assertIn("net eth0 10.0.2.15/24 10.0.2.2 " + mac, marks, g.diagnostics())
        # slirp answers echo requests to its own gateway address itself
        _t.assertIn("ping 10.0.2.2 ok", marks, g.diagnostics())
        g.qmp.command("quit")
        g.wait_exit(gl.scaled(10))
        return {"ready_s": ready}


# as qvisor writes it (cloudinit/nocloud.c): the first NIC static, the second DHCP
SEED_NET_CONFIG = b"""version: 2
ethernets:
  'nic0':
    match:
      macaddress: '0a:51:76:ab:cd:01'
    dhcp4: false
    addresses:
    - '192.168.100.2/24'
    routes:
    - to: '0.0.0.0/0'
      via: '192.168.100.1'
    nameservers:
      addresses:
      - '10.0.0.1'
  'nic1':
    match:
      macaddress: '0a:51:76:ab:cd:02'
    dhcp4: true
"""


def qvisor_binary():
    """The built qvisor (QVISOR_BIN under meson test), or None."""
    cands = [os.environ.get("QVISOR_BIN")]
    if os.environ.get("QVISOR_BUILD_ROOT"):
        cands.append(os.path.join(os.environ["QVISOR_BUILD_ROOT"], "cmd", "qvisor"))
    cands.append(os.path.join(gl.source_root(), "build", "cmd", "qvisor"))
    for c in cands:
        if c and os.access(c, os.X_OK):
            return c
    return None


def scenario_net_seed(img):
    work = tempfile.mkdtemp(prefix="qvg-netseed-")
    try:
        nc = os.path.join(work, "network-config")
        with open(nc, "wb") as f:
            f.write(SEED_NET_CONFIG)
        iso = os.path.join(work, "seed.iso")
        qvisor = qvisor_binary()
        if qvisor:
            subprocess.run([qvisor, "cidata", "-o", iso, "--network-config", nc, "-H", "tiny"], check=True)
        elif shutil.which("genisoimage"):
            with open(os.path.join(work, "meta-data"), "wb") as f:
                f.write(b"instance-id: iid-qvisor-0002\n")
            subprocess.run(["genisoimage", "-quiet", "-output", iso, "-volid", "cidata", "-joliet", "-rock",
                            "meta-data", "network-config"], cwd=work, check=True)
        else:
            raise unittest.SkipTest("neither a built qvisor nor genisoimage to write the seed")
        extra = [
            "-drive", "file=%s,format=raw,media=cdrom,if=none,id=cd0,readonly=on" % iso,
            "-device", "ide-cd,drive=cd0,bus=ide.0",
            # nic0: a user network where the static address fits (slirp is 192.168.100.1)
            "-netdev", "user,id=n0,restrict=on,net=192.168.100.0/24,host=192.168.100.1",
            "-device", "virtio-net-pci,netdev=n0,mac=0a:51:76:ab:cd:01",
            # nic1: slirp's DHCP on 10.0.2.0/24; its offer names the router
            # (10.0.2.2) only without restrict=on. The guest sends nothing but
            # DHCP and pings to slirp itself.
            "-netdev", "user,id=n1",
            "-device", "virtio-net-pci,netdev=n1,mac=0a:51:76:ab:cd:02",
        ]
        opts = ["qv.net=seed", "qv.ping=192.168.100.1,10.0.2.2"]
        with gl.Guest(img, options=opts, extra_args=extra, name="netseed") as g:
            ready = boot(g)
            assert_clean(g)
            static = g.find_markers(r"net (\S+) 192\.168\.100\.2/24 192\.168\.100\.1 0a:51:76:ab:cd:01")
            _t.assertEqual(len(static), 1, g.diagnostics())
            dhcp = g.find_markers(r"net (\S+) 10\.0\.2\.(\d+)/24 10\.0\.2\.2 0a:51:76:ab:cd:02")
            _t.assertEqual(len(dhcp), 1, g.diagnostics())
            _t.assertNotEqual(static[0].group(1), dhcp[0].group(1), g.diagnostics())
            # slirp answers echo requests to its own gateway addresses itself
            marks = g.markers()
            _t.assertIn("ping 192.168.100.1 ok", marks, g.diagnostics())
            _t.assertIn("ping 10.0.2.2 ok", marks, g.diagnostics())
            # the network is up before the pings
            _t.assertLess(marks.index("net %s 10.0.2.%s/24 10.0.2.2 0a:51:76:ab:cd:02" % dhcp[0].groups()),
                          marks.index("ping 10.0.2.2 ok"))
            g.qmp.command("quit")
            g.wait_exit(gl.scaled(10))
            return {"ready_s": ready}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def scenario_panic(img):
    with gl.Guest(img, options=["qv.panic"], extra_args=["-device", "pvpanic"], name="panic") as g:
        boot(g)
        _t.assertIsNotNone(g.wait_exit(gl.scaled(30)), "QEMU still running after the panic")
        g.qmp.pump(0.5)
        _t.assertIn("panic", g.markers())
        _t.assertIn("GUEST_PANICKED", g.qmp.event_names(), g.diagnostics())
        return {}


# the longest first, so two workers finish together
SCENARIOS = [
    ("disk_marker", scenario_disk_marker),
    ("agent", scenario_agent),
    ("net_seed", scenario_net_seed),
    ("seed", scenario_seed),
    ("powerdown", scenario_powerdown),
    ("acpi_off", scenario_acpi_off),
    ("net", scenario_net),
    ("guest_poweroff", scenario_guest_poweroff),
    ("panic", scenario_panic),
]


class TinyGuestTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not gl.have_qemu():
            raise unittest.SkipTest("qemu-system-x86_64 not installed")
        t = time.monotonic()
        cls.image = gl.build_tiny_guest()
        cls.build_s = time.monotonic() - t
        cls.started = time.monotonic()
        cls.pool = concurrent.futures.ThreadPoolExecutor(max_workers=JOBS)
        cls.futures = {name: cls.pool.submit(fn, cls.image) for name, fn in SCENARIOS}

    @classmethod
    def tearDownClass(cls):
        cls.pool.shutdown(wait=True)
        lines = ["tiny guest: %s (%s)" % (cls.image.dir, cls.image.manifest.get("kernel_package")),
                 "  build (or cache check): %.1f s; boots: %.1f s with %d jobs"
                 % (cls.build_s, time.monotonic() - cls.started, JOBS)]
        for name, fut in cls.futures.items():
            try:
                res = fut.result(timeout=0)
                lines.append("  %-15s %s" % (name, " ".join("%s=%.2f" % kv for kv in sorted(res.items()))))
            except BaseException as e:   # reported by the test method already
                lines.append("  %-15s %s" % (name, type(e).__name__))
        sys.stderr.write("\n".join(lines) + "\n")

    def scenario(self, name):
        return self.futures[name].result(timeout=gl.scaled(400))

    def test_build_outputs(self):
        img = self.image
        for f in ("vmlinuz", "initrd.img", "README", "manifest", "stamp"):
            self.assertTrue(os.path.getsize(os.path.join(img.dir, f)) > 0, f)
        self.assertFalse(img.dir.startswith(os.path.realpath(gl.source_root()) + os.sep),
                         "the cache must be outside the repo")
        with open(img.initrd, "rb") as f:
            self.assertEqual(f.read(2), b"\x1f\x8b", "initrd.img is not gzip")
        with gzip.open(img.initrd, "rb") as f:
            self.assertEqual(f.read(6), b"070701", "initrd.img is not cpio newc")
        with open(os.path.join(img.dir, "README")) as f:
            readme = f.read()
        for opt in ("qv.acpi=off", "qv.disk=marker", "qv.seed=print", "qv.hostname=seed", "qv.agent=on",
                    "qv.net=", "qv.net=seed", "qv.ping=", "qv.poweroff=", "qv.panic"):
            self.assertIn(opt, readme)

    def test_builder_cached(self):
        script = os.path.join(gl.source_root(), "test", "guest", "build-tiny-guest")
        t = time.monotonic()
        p = subprocess.run([script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        took = time.monotonic() - t
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stdout.strip().splitlines()[-1], self.image.dir)
        self.assertIn("cached", p.stderr)
        self.assertLess(took, gl.scaled(10), "cached run too slow")

    def test_powerdown(self):
        self.scenario("powerdown")

    def test_acpi_off_ignores_powerdown(self):
        self.scenario("acpi_off")

    def test_disk_marker_survives_reboot(self):
        self.scenario("disk_marker")

    def test_seed_cdrom_and_virtio(self):
        self.scenario("seed")

    def test_agent_answers(self):
        self.scenario("agent")

    def test_guest_poweroff_timer(self):
        self.scenario("guest_poweroff")

    def test_static_net_and_ping(self):
        self.scenario("net")

    def test_net_from_seed_network_config(self):
        self.scenario("net_seed")

    def test_panic(self):
        self.scenario("panic")


if __name__ == "__main__":
    unittest.main(verbosity=2)
