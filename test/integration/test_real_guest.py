#!/usr/bin/env python3
"""Real Debian 12 guests (issue 14), booted the way users boot them: from
their own disk through the firmware and a bootloader (never -kernel), with
the distro's init, cloud-init, qemu-guest-agent and sshd, created and driven
through the real `qvisor` CLI and daemon under TCG.

Images come from test/guest/build-cloud-guest (cached outside the tree):
  cloud    linux-image-cloud-amd64 (no AHCI driver), ifupdown: cloud-init's
           ENI renderer; booted with BIOS
  generic  linux-image-amd64, netplan + systemd-networkd: cloud-init's netplan
           renderer; booted with UEFI (OVMF), its variables kept per VM

Each class boots two VMs side by side inside a network namespace this test
makes (the daemon runs in it):
  main     --hostname, --ssh-key, --runcmd, a nat NIC (static address, default
           route through the gateway) and a bridge NIC that takes a lease from
           a DHCP server (busybox udhcpd) on a bridge the test made
  noagent  --no-agent --ssh, a nat NIC, booted with BIOS (the generic image
           boots both ways): stopped through ACPI
and the generic class a third one, `sb`, with --firmware uefi-secure
(Debian's signed shim, grub and kernel; the kernel says Secure Boot is on).
An "outside" host in a second namespace, reachable only through the NAT
bridge's masquerade (it has no route back to the NAT subnet), is pinged from
the guest.  Then main is stopped (through the agent), started again (the
disk's content is there, cloud-init's per-instance modules do not run again,
a UEFI boot entry written from the guest is still there), its serial console
is attached through a pseudo-terminal, and it is stopped again.

Slow (minutes under TCG): registered for the normal build only, not the
sanitizer build (README)."""

import hashlib
import json
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import termios
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "guest"))
from qvtest import Node, Subscriber, scaled, wait_for  # noqa: E402
import guestlib  # noqa: E402

PID = os.getpid()
NS = f"qvt-rg-{PID}"
NS_OUT = f"qvt-rgo-{PID}"
OUTSIDE = "198.51.100.2"  # the outside host, in NS_OUT
DHCP_BRIDGE = "qvt-dhcp0"
DNS = "10.77.0.1"
SKIP = None
KEYDIR = None
UDHCPD = None
TIMES = {}  # measured: printed at the end for the README and the closing note


def sh(*cmd, check=True, timeout=60):
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=timeout)


def in_ns(*cmd, check=True, timeout=60):
    return sh("ip", "netns", "exec", NS, *cmd, check=check, timeout=timeout)


def setUpModule():
    global SKIP, KEYDIR, UDHCPD
    if os.geteuid() != 0:
        SKIP = "needs root (network namespaces, the guest image builder)"
        return
    if not guestlib.have_qemu():
        SKIP = "qemu-system-x86_64 missing"
        return
    if sh("ip", "netns", "add", NS, check=False).returncode != 0:
        SKIP = "cannot create a network namespace"
        return
    sh("ip", "netns", "add", NS_OUT)
    in_ns("ip", "link", "set", "lo", "up")
    # the outside host: a veth pair, no route back to the NAT subnet
    in_ns("ip", "link", "add", "qvt-out0", "type", "veth", "peer", "name", "qvt-out1")
    in_ns("ip", "link", "set", "qvt-out1", "netns", NS_OUT)
    in_ns("ip", "addr", "add", "198.51.100.1/24", "dev", "qvt-out0")
    in_ns("ip", "link", "set", "qvt-out0", "up")
    sh("ip", "netns", "exec", NS_OUT, "ip", "addr", "add", OUTSIDE + "/24", "dev", "qvt-out1")
    sh("ip", "netns", "exec", NS_OUT, "ip", "link", "set", "qvt-out1", "up")
    sh("ip", "netns", "exec", NS_OUT, "ip", "link", "set", "lo", "up")
    # a bridge of the test's with a DHCP server and no router option
    in_ns("ip", "link", "add", DHCP_BRIDGE, "type", "bridge")
    in_ns("ip", "addr", "add", "192.0.2.1/24", "dev", DHCP_BRIDGE)
    in_ns("ip", "link", "set", DHCP_BRIDGE, "up")
    KEYDIR = os.path.realpath(os.path.join(os.environ.get("TMPDIR", "/tmp"), f"qvt-rg-{PID}"))
    os.makedirs(KEYDIR, exist_ok=True)
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "qvt", "-f", os.path.join(KEYDIR, "key"))
    conf = os.path.join(KEYDIR, "udhcpd.conf")
    with open(conf, "w") as f:
        f.write(f"start 192.0.2.100\nend 192.0.2.150\ninterface {DHCP_BRIDGE}\n"
                f"lease_file {KEYDIR}/udhcpd.leases\npidfile {KEYDIR}/udhcpd.pid\n"
                "opt subnet 255.255.255.0\nopt lease 3600\n")
    open(os.path.join(KEYDIR, "udhcpd.leases"), "w").close()
    UDHCPD = subprocess.Popen(["ip", "netns", "exec", NS, "busybox", "udhcpd", "-f", conf],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def tearDownModule():
    if UDHCPD:
        UDHCPD.terminate()
        UDHCPD.wait()
    for ns in (NS, NS_OUT):
        sh("ip", "netns", "del", ns, check=False)
    if KEYDIR:
        shutil.rmtree(KEYDIR, ignore_errors=True)
    if TIMES:
        print("\nmeasured (TCG): " + json.dumps(TIMES, indent=1), file=sys.stderr)


class RealGuest:
    """One image booted with one firmware; subclasses set the class values."""
    IMAGE = None      # variant of test/guest/build-cloud-guest
    FIRMWARE = None   # bios | uefi
    RENDERER = None   # eni | netplan: what cloud-init in that guest renders
    NAT_MAIN = None   # static address of main's nat NIC
    NOAGENT_FIRMWARE = "bios"  # the image must boot this way too
    SECURE_BOOT = False        # also boot a third VM with uefi-secure
    OPS = False                # also the operator verbs of issue 19 (one variant: they cost a boot)
    CONFIG = ("vm_defaults:\n  cpus: 1\n  memory: 1G\n  stop_timeout: 90s\n  kill_timeout: 10s\n"
              "network:\n  nat_bridge: qvt-rgbr0\n  nat_subnet: 10.77.0.0/24\n  nat_gateway: 10.77.0.1\n"
              f"  dns: [{DNS}]\n")

    @classmethod
    def setUpClass(cls):
        if SKIP:
            raise unittest.SkipTest(SKIP)
        cls.image_path = guestlib.build_cloud_guest(cls.IMAGE)
        cls.node = Node(cls.CONFIG)
        cls.node.start_daemon(wrap=["ip", "netns", "exec", NS])
        t0 = time.monotonic()
        cls.node.qvisor("image", "import", cls.image_path, cls.IMAGE, timeout=scaled(600), check=0)
        TIMES[f"{cls.IMAGE}: image import"] = round(time.monotonic() - t0, 1)

    @classmethod
    def tearDownClass(cls):
        node = getattr(cls, "node", None)
        if node:
            node.cleanup()

    # -- helpers ---------------------------------------------------------------

    def qv(self, *args, check=0, timeout=None):
        return self.node.qvisor(*args, check=check, timeout=timeout)

    def qv_json(self, *args, timeout=None):
        return json.loads(self.qv("--json", *args, timeout=timeout).stdout)

    def ssh(self, ip, command, user="qvt", check=True, timeout=120):
        """ssh from inside the namespace with the test's key."""
        p = in_ns("ssh", "-i", os.path.join(KEYDIR, "key"), "-o", "StrictHostKeyChecking=no",
                  "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
                  "-o", "LogLevel=ERROR", f"{user}@{ip}", command, check=False, timeout=timeout)
        if check and p.returncode != 0:
            self.fail(f"ssh {ip} {command!r}: exit {p.returncode}\n{p.stdout}\n{p.stderr}")
        return p

    def wait_ssh(self, ip, name, timeout=600):
        deadline = time.monotonic() + scaled(timeout)
        while time.monotonic() < deadline:
            if self.ssh(ip, "true", check=False, timeout=30).returncode == 0:
                return
            if self.qv_json("vm", "show", name)["state"] != "running":
                break
            time.sleep(3)
        self.fail(f"no ssh to {name} at {ip}; serial log tail:\n{self.serial_tail(name)}")

    def vm_ssh(self, name, *command, check=True, timeout=120):
        """`qvisor vm ssh NAME -- COMMAND` run inside the namespace."""
        p = subprocess.run(["ip", "netns", "exec", NS, self.node_qvisor(), "--config", self.node.config,
                            "vm", "ssh", name, "--", *command],
                           capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and p.returncode != 0:
            self.fail(f"vm ssh {name} {command}: exit {p.returncode}\n{p.stdout}\n{p.stderr}")
        return p

    @staticmethod
    def node_qvisor():
        return os.environ.get("QVISOR_BIN", "qvisor")

    def serial(self, name):
        return os.path.join(self.node.state, "instances", name, "serial.log")

    def serial_tail(self, name, n=60):
        try:
            with open(self.serial(name), errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError as e:
            return str(e)

    def create(self, name, *args, firmware=None):
        return self.qv_json("vm", "create", name, "--image", self.IMAGE, "--firmware", firmware or self.FIRMWARE,
                            "--disk", "4G", *args, "--start", timeout=scaled(180))

    # -- the test --------------------------------------------------------------

    def test_real_guest(self):
        key_pub = os.path.join(KEYDIR, "key.pub")
        t0 = time.monotonic()
        created = self.create("main", "--hostname", f"rg-{self.IMAGE}", "--user", "qvt", "--ssh-key", key_pub,
                              "--runcmd", "date +%s.%N >> /var/lib/qv-runcmd",
                              "--net", f"nat,ip={self.NAT_MAIN}", "--net", f"bridge,bridge={DHCP_BRIDGE}")
        self.assertEqual(created["started"]["state"], "running")
        self.create("noagent", "--no-agent", "--ssh", "--net", "nat", firmware=self.NOAGENT_FIRMWARE)
        noagent_ip = self.qv_json("vm", "show", "noagent")["nics"][0]["ip"]

        # boot to ssh, through firmware, bootloader, cloud-init
        self.wait_ssh(self.NAT_MAIN, "main")
        TIMES[f"{self.IMAGE}/{self.FIRMWARE}: create --start to ssh (two guests booting)"] = \
            round(time.monotonic() - t0, 1)
        status = self.ssh(self.NAT_MAIN, "cloud-init status --wait --long", timeout=600)
        self.assertRegex(status.stdout, r"(?m)^status: done$", status.stdout)
        self.assertNotIn("errors: [", status.stdout.replace("errors: []", ""))
        # the seed was found: cloud-init's final line names the datasource
        with open(self.serial("main"), errors="replace") as f:
            serial = f.read()
        self.assertRegex(serial, r"Datasource DataSourceNoCloud \[seed=/dev/sr0\]", self.serial_tail("main"))
        self.assertNotIn("Used fallback datasource", serial)
        self.assertEqual(self.ssh(self.NAT_MAIN, "hostname").stdout.strip(), f"rg-{self.IMAGE}")
        self.assertEqual(self.ssh(self.NAT_MAIN, "id -un").stdout.strip(), "qvt")
        self.assertEqual(len(self.ssh(self.NAT_MAIN, "cat /var/lib/qv-runcmd").stdout.split()), 1)

        # networking as the guest's own renderer applied it
        if self.RENDERER == "eni":
            eni = self.ssh(self.NAT_MAIN, "cat /etc/network/interfaces.d/50-cloud-init").stdout
            self.assertIn("gateway 10.77.0.1", eni)
            self.assertNotIn("route add default", eni)
        else:
            self.assertIn("gateway4", self.ssh(self.NAT_MAIN, "sudo cat /etc/netplan/50-cloud-init.yaml").stdout)
        route = self.ssh(self.NAT_MAIN, "ip -4 route show default").stdout
        self.assertRegex(route, r"default via 10\.77\.0\.1 ")
        self.ssh(self.NAT_MAIN, "ping -c 2 -W 5 10.77.0.1")
        # the outside host answers only through the masquerade
        self.ssh(self.NAT_MAIN, f"ping -c 2 -W 5 {OUTSIDE}")
        if self.RENDERER == "netplan":
            # systemd-resolved takes the seed's nameservers
            self.assertIn(DNS, self.ssh(self.NAT_MAIN, "resolvectl dns").stdout)
        else:
            # qvisor's nameservers reach the ENI file; they take effect only
            # with resolvconf in the image (docs/cloudinit.md)
            self.assertIn(f"dns-nameservers {DNS}", eni)
        # the bridge NIC's lease from the test's DHCP server
        wait_for(lambda: re.search(r"inet 192\.0\.2\.1[0-4]\d/24",
                                   self.ssh(self.NAT_MAIN, "ip -4 -o addr").stdout), 120, "a DHCP lease")

        # the distro's qemu-guest-agent opened its port and answered: vm wait
        # --for agent returns, and the event stream says so, after the start
        self.qv("vm", "wait", "main", "--for", "agent", "--timeout", f"{scaled(120)}s", timeout=scaled(150))
        events = Subscriber(self.node.socket, vms=["main"], after=0)
        try:
            seen = events.events_until(lambda e: e["type"] == "agent" and e["up"], scaled(10))
        finally:
            events.close()
        states = [(e["from"], e["to"]) for e in seen if e["type"] == "state"]
        self.assertIn(("starting", "running"), states)
        self.assertEqual([e["result"] for e in seen if e["type"] == "start"][-1], "running")
        # and the metrics see it: agent up, QEMU's CPU time
        text = self.qv("metrics").stdout
        self.assertRegex(text, r'qvisor_vm_agent_up\{vm="main",pool="[^"]+"\} 1\n')
        self.assertRegex(text, r'qvisor_vm_cpu_seconds_total\{vm="main",pool="[^"]+"\} [1-9]')

        # the agent reports the guest's addresses (the lease only it knows)
        def agent_addresses():
            show = self.qv_json("vm", "show", "main")
            return show["agent"] == "ok" and any(a["address"].startswith("192.0.2.") for a in show["addresses"])
        wait_for(agent_addresses, 120, "the agent's addresses")
        row = [v for v in self.qv_json("vm", "list")["vms"] if v["name"] == "main"][0]
        self.assertIn(row["ip"], (self.NAT_MAIN,) + tuple(
            a["address"] for a in self.qv_json("vm", "show", "main")["addresses"]))
        if self.OPS:
            self.guest_ops_running()

        # the no-agent VM: vm ssh with its own key, then a clean ACPI stop
        wait_for(lambda: self.vm_ssh("noagent", "true", check=False).returncode == 0, 600, "ssh to noagent")
        self.vm_ssh("noagent", "cloud-init", "status", "--wait", timeout=600)
        t1 = time.monotonic()
        res = self.qv_json("vm", "stop", "noagent", timeout=scaled(180))
        self.assertEqual((res["result"], res["how"]), ("clean", "ACPI power button"))
        TIMES[f"{self.IMAGE}/{self.FIRMWARE}: ACPI stop"] = round(time.monotonic() - t1, 1)
        self.assertTrue(noagent_ip.startswith("10.77.0."))
        if self.SECURE_BOOT:
            # booted while main restarts: Debian's signed shim, grub and
            # kernel under OVMF's Secure Boot build with Microsoft's keys
            self.create("sb", "--no-agent", "--ssh", "--net", "nat", firmware="uefi-secure")

        # state the next boot must find
        token = os.urandom(8).hex()
        self.ssh(self.NAT_MAIN, f"echo {token} | sudo tee /var/lib/qv-token >/dev/null && sync")
        if self.FIRMWARE != "bios":
            self.ssh(self.NAT_MAIN, "sudo efibootmgr -q -c -d /dev/vda -p 1 -L qvt-entry "
                                    "-l '\\EFI\\BOOT\\BOOTX64.EFI'")
            self.assertIn("qvt-entry", self.ssh(self.NAT_MAIN, "sudo efibootmgr").stdout)

        if self.OPS:
            # the spec changes only while the VM is stopped
            p = self.qv("vm", "edit", "main", "--memory", "1536M", check=75)
            self.assertIn("main", p.stderr)
        t1 = time.monotonic()
        res = self.qv_json("vm", "stop", "main", timeout=scaled(180))
        self.assertEqual((res["result"], res["how"]), ("clean", "guest agent guest-shutdown"))
        TIMES[f"{self.IMAGE}/{self.FIRMWARE}: agent stop"] = round(time.monotonic() - t1, 1)
        if self.OPS:
            self.qv("vm", "edit", "main", "--memory", "1536M", check=0)

        # started again: the disk kept its content, cloud-init did not run
        # the per-instance modules again (runcmd ran once)
        t1 = time.monotonic()
        self.qv("vm", "start", "main", timeout=scaled(120))
        self.wait_ssh(self.NAT_MAIN, "main")
        TIMES[f"{self.IMAGE}/{self.FIRMWARE}: start to ssh (one guest)"] = round(time.monotonic() - t1, 1)
        self.assertEqual(self.ssh(self.NAT_MAIN, "sudo cat /var/lib/qv-token").stdout.strip(), token)
        self.ssh(self.NAT_MAIN, "cloud-init status --wait", timeout=600)
        self.assertEqual(len(self.ssh(self.NAT_MAIN, "cat /var/lib/qv-runcmd").stdout.split()), 1)
        if self.OPS:
            # the edit took effect at this start: 1536 MiB, less what the
            # kernel keeps for itself
            mem = self.ssh(self.NAT_MAIN, "cat /proc/meminfo").stdout
            kib = int(re.search(r"(?m)^MemTotal:\s+(\d+) kB", mem).group(1))
            self.assertGreater(kib, 1300 * 1024, mem)
        if self.FIRMWARE != "bios":
            # the VM's own variables store kept the boot entry
            self.assertIn("qvt-entry", self.ssh(self.NAT_MAIN, "sudo efibootmgr").stdout)
            self.assertTrue(os.path.exists(os.path.join(self.node.state, "instances", "main", "efivars.fd")))

        self.check_console("main")

        if self.SECURE_BOOT:
            wait_for(lambda: self.vm_ssh("sb", "true", check=False).returncode == 0, 600, "ssh to sb")
            dmesg = self.vm_ssh("sb", "sudo", "dmesg").stdout
            self.assertIn("Secure boot enabled", dmesg)
            self.assertEqual(self.qv_json("vm", "stop", "sb", timeout=scaled(180))["result"], "clean")
            self.qv("vm", "rm", "sb")

        res = self.qv_json("vm", "stop", "main", timeout=scaled(180))
        self.assertEqual(res["result"], "clean")
        if self.OPS:
            self.revert_and_clone()
        self.qv("vm", "rm", "main")
        self.qv("vm", "rm", "noagent")
        self.assertEqual(self.node.qemu_pids(), [])

    def guest_ops_running(self):
        """vm exec, vm cp, vm resize and a live snapshot against the distro's
        own qemu-guest-agent, coreutils, kernel and file systems."""
        t1 = time.monotonic()
        # the command's streams apart, its exit status ours
        p = self.qv("vm", "exec", "main", "--", "sh", "-c", "hostname; echo oops >&2; exit 7", check=7)
        self.assertEqual(p.stdout.strip(), f"rg-{self.IMAGE}")
        self.assertIn("oops", p.stderr)
        # a binary file in and out, checked by the guest's own sha256sum
        blob = os.urandom(3 << 20)
        src, back = os.path.join(self.node.dir, "blob"), os.path.join(self.node.dir, "blob.back")
        with open(src, "wb") as f:
            f.write(blob)
        self.qv("vm", "cp", src, "main:/var/tmp/blob", timeout=scaled(300))
        out = self.qv("vm", "exec", "main", "--", "sha256sum", "/var/tmp/blob").stdout
        self.assertEqual(out.split()[0], hashlib.sha256(blob).hexdigest())
        self.qv("vm", "cp", "main:/var/tmp/blob", back, timeout=scaled(300))
        with open(back, "rb") as f:
            self.assertEqual(f.read(), blob)
        self.assertNotIn(".qvisor-", self.qv("vm", "exec", "main", "--", "ls", "-A", "/var/tmp").stdout)
        # grown while running: the guest's kernel sees the new capacity
        self.qv("vm", "resize", "main", "--disk", "5G")
        sectors = str((5 << 30) >> 9)
        wait_for(lambda: self.qv("vm", "exec", "main", "--", "cat", "/sys/block/vda/size").stdout.strip() == sectors,
                 30, "the guest seeing the 5G disk")
        # a live snapshot, the guest's file systems frozen by its agent
        self.qv("vm", "exec", "main", "--", "sh", "-c", "echo before > /var/lib/qv-snap && sync")
        res = json.loads(self.qv("vm", "snapshot", "main", "--json", "create", "s1", timeout=scaled(180)).stdout)
        self.assertEqual((res["how"], res["frozen"], res["thawed"]), ("qmp", True, True), res)
        # the agent's own log (syslog, in the journal) says it froze; thawed,
        # the file system takes writes again (frozen, the sync would hang)
        log = self.qv("vm", "exec", "main", "--", "journalctl", "-b", "--no-pager", "-o", "cat").stdout
        self.assertIn("guest-fsfreeze called", log)
        self.qv("vm", "exec", "main", "--timeout", "60s", "--", "sh", "-c",
                "echo after > /var/lib/qv-snap && sync", timeout=scaled(90))
        TIMES[f"{self.IMAGE}/{self.FIRMWARE}: exec, cp 3 MiB both ways, resize, live snapshot"] = \
            round(time.monotonic() - t1, 1)

    def revert_and_clone(self):
        """Back to the live snapshot, then a clone of that disk booted: its
        own host name, MAC and cloud-init instance, the source's data."""
        t1 = time.monotonic()
        self.qv("vm", "snapshot", "main", "revert", "s1", timeout=scaled(180))
        self.qv("vm", "clone", "main", "twin", "--net", "nat", "--start", timeout=scaled(600))
        self.qv("vm", "wait", "twin", "--for", "agent", "--timeout", f"{scaled(600)}s", timeout=scaled(650))

        def ex(*cmd, check=0):
            return self.qv("vm", "exec", "twin", "--", *cmd, check=check, timeout=scaled(700))
        self.assertIn("done", ex("cloud-init", "status", "--wait", check=None).stdout)
        self.assertEqual(ex("hostname").stdout.strip(), "twin")
        # cloud-init saw a new instance: runcmd ran again
        self.assertEqual(len(ex("cat", "/var/lib/qv-runcmd").stdout.split()), 2)
        # the disk as it was at the snapshot: what came after is not there
        self.assertEqual(ex("cat", "/var/lib/qv-snap").stdout.strip(), "before")
        ex("test", "-e", "/var/lib/qv-token", check=1)
        self.assertEqual(ex("cat", "/sys/block/vda/size").stdout.strip(), str((5 << 30) >> 9))
        mac = self.qv_json("vm", "show", "twin")["nics"][0]["mac"]
        self.assertNotIn(mac, [n["mac"] for n in self.qv_json("vm", "show", "main")["nics"]])
        self.assertIn(mac, ex("cat", "/sys/class/net/eth0/address", check=None).stdout.lower() +
                      ex("sh", "-c", "cat /sys/class/net/*/address").stdout.lower())
        self.assertEqual(self.qv_json("vm", "stop", "twin", timeout=scaled(180))["result"], "clean")
        self.qv("vm", "rm", "twin")
        TIMES[f"{self.IMAGE}/{self.FIRMWARE}: revert, clone, boot to agent"] = round(time.monotonic() - t1, 1)

    def check_console(self, name):
        """vm console through a pseudo-terminal: a login prompt, Ctrl-]
        detaches, the terminal's modes are as before."""
        master, slave = pty.openpty()
        before = termios.tcgetattr(slave)
        proc = subprocess.Popen([self.node_qvisor(), "--config", self.node.config, "vm", "console", name],
                                stdin=slave, stdout=slave, stderr=slave, close_fds=True)
        seen = b""
        deadline = time.monotonic() + scaled(60)
        nudged = 0
        try:
            while b"login:" not in seen and time.monotonic() < deadline:
                if time.monotonic() > nudged + 5:
                    os.write(master, b"\r")  # a fresh prompt from the getty
                    nudged = time.monotonic()
                r, _, _ = select.select([master], [], [], 1)
                if r:
                    seen += os.read(master, 65536)
            self.assertIn(b"login:", seen, seen[-2000:])
            os.write(master, b"\x1d")  # Ctrl-]
            self.assertEqual(proc.wait(timeout=scaled(20)), 0)
            self.assertEqual(termios.tcgetattr(slave), before)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            os.close(master)
            os.close(slave)


class CloudImageBios(RealGuest, unittest.TestCase):
    IMAGE = "cloud"
    FIRMWARE = "bios"
    RENDERER = "eni"
    NAT_MAIN = "10.77.0.20"
    OPS = True


class GenericImageUefi(RealGuest, unittest.TestCase):
    IMAGE = "generic"
    FIRMWARE = "uefi"
    RENDERER = "netplan"
    NAT_MAIN = "10.77.0.30"
    SECURE_BOOT = True


if __name__ == "__main__":
    unittest.main()
