#!/usr/bin/env python3
"""Prometheus metrics (issue 17) with the real daemon, real QEMU (TCG) and a
real Prometheus: `metrics.listen` on loopback, VMs whose disk is a boot
sector (one spins, `jmp $`, so its QEMU burns CPU; one halts; one is never
started), and:

- `promtool check metrics` accepts the text, from HTTP and from
  `qvisor metrics`; the values match `vm show`, `node status`, /proc and
  the daemon's own ping;
- a Prometheus server started here (loopback, a temporary data directory,
  a 1 s scrape interval) scrapes the daemon, and its HTTP API returns the
  spinning VM's CPU seconds, increasing;
- bad input: malformed requests, a huge header, clients that hold a
  connection and send nothing: the daemon stays up and the next scrape
  works; the slow clients are closed after the 10 s connection timeout;
- a QEMU that does not answer (SIGSTOP) costs its VM the block series of
  that scrape, within the 1 s deadline, never a stall;
- between scrapes the daemon is not woken (no context switch in 3 s);
- a unix socket endpoint; a port in use and a bad address at start; a
  reload that changes metrics.listen keeps the running endpoint;
- TAP counters, in a network namespace (root only), against the TAP's own
  statistics;
- the guest agent's answer (qvisor_vm_agent_up 1) when the tiny test guest
  is already built (this test never builds it).

Exits 77 (skipped) without promtool and prometheus (Debian `prometheus`)
or without qemu-system-x86_64."""

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
from qvtest import QVISOR, Node, scaled, thread_switches, wait_for  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- the exposition format, read back ----------------------------------------------

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?')


def unescape(v):
    return re.sub(r'\\(.)', lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), v)


def parse(text):
    """{(name, frozenset(labels)): value} and {name: type}."""
    samples, types = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ", 3)
            types[name] = typ
            continue
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        labels = frozenset((k, unescape(v)) for k, v in LABEL.findall(m.group(2) or ""))
        samples[(m.group(1), labels)] = float(m.group(3))
    return samples, types


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())))


def series(samples, name, **labels):
    """Every sample of `name` whose labels include `labels`."""
    want = set(labels.items())
    return {k[1]: v for k, v in samples.items() if k[0] == name and want <= set(k[1])}


def promtool_check(text):
    p = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    return p.returncode, p.stdout + p.stderr


# ---- HTTP ------------------------------------------------------------------------------

def raw_request(port, data, timeout=10):
    """Sends bytes, reads until the server closes: the reply (b"" if none)."""
    with socket.create_connection(("127.0.0.1", port), timeout=scaled(timeout)) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        out = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        except ConnectionResetError:
            pass
        return out


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=10):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def boot_sector(path, code):
    sector = bytearray(512)
    sector[0:len(code)] = code
    sector[510:512] = b"\x55\xaa"
    with open(path, "wb") as f:
        f.write(bytes(sector) + bytes(1024 * 1024 - 512))


def proc_usage(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 of stat(5)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK, int(fields[21]) * PAGE


class Base(unittest.TestCase):
    """A node with metrics on a loopback port and two boot-sector images."""

    def config(self):
        return (f"metrics:\n  listen: 127.0.0.1:{self.port}\n"
                "qemu:\n  accelerator: tcg\n"
                "vm_defaults:\n  cpus: 1\n  memory: 64M\n  disk: 16M\n  stop_timeout: 5s\n  kill_timeout: 2s\n"
                "resources:\n  cpu_overcommit: 16\n"
                "pools:\n  batch:\n    cpus: 8\n    memory: 4G\n")

    def setUp(self):
        self.port = free_port()
        self.node = Node(self.config())
        self.start_daemon()
        for name, code in (("spin", b"\xeb\xfe"), ("halt", b"\xfa\xf4\xeb\xfd")):
            path = os.path.join(self.node.dir, name + ".raw")
            boot_sector(path, code)
            self.node.qvisor("image", "import", path, name, "--format", "raw", check=0)

    def start_daemon(self):
        self.node.start_daemon()

    def tearDown(self):
        try:
            if self.node.proc and self.node.proc.poll() is None:
                self.assertEqual(self.node.stop_daemon(), 0, self.node.log()[-4000:])
                self.assertEqual(self.node.sanitizer_reports(), [], self.node.log()[-4000:])
        finally:
            self.node.cleanup()

    def create(self, name, image, *extra):
        self.node.qvisor("vm", "create", name, "--image", image, *extra, check=0)

    def start(self, name):
        return self.node.qvisor_json("vm", "start", name, timeout=scaled(60))

    def show(self, name):
        return self.node.qvisor_json("vm", "show", name)

    def scrape(self, path="/metrics"):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=scaled(10)) as r:
            self.assertEqual(r.status, 200)
            self.assertEqual(r.headers["Content-Type"], "text/plain; version=0.0.4; charset=utf-8")
            return r.read().decode()

    def scrape_parsed(self):
        return parse(self.scrape())[0]


class Metrics(Base):

    def test_text_and_values(self):
        self.create("spin", "spin", "--no-agent")
        self.create("halt", "halt", "--cpus", "2", "--memory", "96M")
        self.create("never", "halt", "--pool", "batch")
        pid = self.start("spin")["pid"]
        self.start("halt")
        time.sleep(0.5)  # SeaBIOS reads the boot sectors

        text = self.scrape()
        rc, out = promtool_check(text)
        self.assertEqual((rc, out), (0, ""), text)
        cli = self.node.qvisor("metrics", check=0).stdout
        self.assertEqual(promtool_check(cli), (0, ""))
        s, types = parse(text)
        # the CLI's text has the same series (values move on)
        self.assertEqual(set(parse(cli)[0]), set(s))
        self.assertEqual(types["qvisor_vm_cpu_seconds_total"], "counter")
        self.assertEqual(types["qvisor_vm_state"], "gauge")

        # per VM: what `vm show` says
        for name in ("spin", "halt", "never"):
            vm = self.show(name)
            pool = vm["pool"]
            states = series(s, "qvisor_vm_state", vm=name)
            self.assertEqual(len(states), 8)
            self.assertEqual({dict(k)["state"] for k, v in states.items() if v == 1}, {vm["state"]})
            self.assertEqual(value(s, "qvisor_vm_vcpus", vm=name, pool=pool), vm["cpus"])
            self.assertEqual(value(s, "qvisor_vm_memory_bytes", vm=name, pool=pool), vm["memory"])
            self.assertEqual(value(s, "qvisor_vm_gpus", vm=name, pool=pool), len(vm["gpus"]))
            self.assertEqual(value(s, "qvisor_vm_consecutive_restarts", vm=name, pool=pool), vm["restarts"])
            self.assertEqual(value(s, "qvisor_vm_restarts_total", vm=name, pool=pool), 0)
            if vm["state"] == "running":
                self.assertEqual(value(s, "qvisor_vm_start_time_seconds", vm=name, pool=pool), vm["started_at"])
                self.assertAlmostEqual(value(s, "qvisor_vm_uptime_seconds", vm=name, pool=pool), vm["uptime_s"],
                                       delta=2)
            else:
                self.assertIsNone(value(s, "qvisor_vm_uptime_seconds", vm=name, pool=pool))
                self.assertIsNone(value(s, "qvisor_vm_cpu_seconds_total", vm=name, pool=pool))
        self.assertEqual(self.show("never")["pool"], "batch")
        # an agent is configured for halt (its guest has none): 0; none for spin
        self.assertEqual(value(s, "qvisor_vm_agent_up", vm="halt", pool="default"), 0)
        self.assertIsNone(value(s, "qvisor_vm_agent_up", vm="spin", pool="default"))

        # CPU time and memory of QEMU, as /proc has them around the scrape
        cpu = value(s, "qvisor_vm_cpu_seconds_total", vm="spin", pool="default")
        rss = value(s, "qvisor_vm_resident_memory_bytes", vm="spin", pool="default")
        now_cpu, now_rss = proc_usage(pid)
        self.assertGreater(cpu, 0)
        self.assertLessEqual(cpu, now_cpu)
        self.assertGreater(cpu, now_cpu - 2)
        self.assertAlmostEqual(rss, now_rss, delta=now_rss * 0.2)
        # block I/O: SeaBIOS read the boot sector from disk0; nothing wrote
        reads = series(s, "qvisor_vm_block_read_bytes_total", vm="spin")
        devices = {dict(k)["device"] for k in reads}
        self.assertIn("disk0", devices)
        self.assertGreaterEqual(value(s, "qvisor_vm_block_read_bytes_total", vm="spin", pool="default",
                                      device="disk0"), 512)
        self.assertGreaterEqual(value(s, "qvisor_vm_block_reads_total", vm="spin", pool="default",
                                      device="disk0"), 1)
        self.assertEqual(value(s, "qvisor_vm_block_written_bytes_total", vm="spin", pool="default",
                               device="disk0"), 0)
        self.assertEqual(series(s, "qvisor_vm_block_read_bytes_total", vm="never"), {})
        self.assertEqual(value(s, "qvisor_scrape_vms_missed"), 0)

        # the node: what `node status` says
        st = self.node.qvisor_json("node", "status")
        self.assertEqual(value(s, "qvisor_node_cpus"), st["cpus"])
        self.assertEqual(value(s, "qvisor_node_memory_bytes"), st["memory_total"])
        self.assertEqual(value(s, "qvisor_node_vcpu_limit"), st["limits"]["cpus"])
        self.assertEqual(value(s, "qvisor_node_memory_limit_bytes"), st["limits"]["memory"])
        for which in ("defined", "running"):
            u = st["usage"][which]
            self.assertEqual(value(s, "qvisor_node_vms", vms=which), u["vms"])
            self.assertEqual(value(s, "qvisor_node_allocated_vcpus", vms=which), u["cpus"])
            self.assertEqual(value(s, "qvisor_node_allocated_memory_bytes", vms=which), u["memory"])
            self.assertEqual(value(s, "qvisor_node_allocated_gpus", vms=which), u["gpus"])
        self.assertEqual(st["usage"]["running"]["vms"], 2)
        for n in st["nodes"]:
            nid = str(n["id"])
            self.assertEqual(value(s, "qvisor_numa_node_cpus", numa_node=nid), n["cpus"])
            self.assertEqual(value(s, "qvisor_numa_node_memory_bytes", numa_node=nid), n["memory_total"])
            self.assertEqual(value(s, "qvisor_numa_node_allocated_vcpus", numa_node=nid), n["bound"]["cpus"])
            self.assertEqual(value(s, "qvisor_numa_node_pinned_vcpus", numa_node=nid), n["pinned_vcpus"])
            self.assertEqual(value(s, "qvisor_numa_node_vcpu_limit", numa_node=nid), n["vcpu_limit"])
            for h in n["hugepages"]:
                size = str(h["page_size"])
                self.assertEqual(value(s, "qvisor_numa_node_hugepages", numa_node=nid, page_size_bytes=size),
                                 h["total"])
        self.assertEqual(sum(series(s, "qvisor_node_gpus").values()), len(st["gpus"]))
        for p in st["pools"]:
            self.assertEqual(value(s, "qvisor_pool_vms", pool=p["name"]), p["used"]["vms"])
            self.assertEqual(value(s, "qvisor_pool_vcpus", pool=p["name"]), p["used"]["cpus"])
            self.assertEqual(value(s, "qvisor_pool_memory_bytes", pool=p["name"]), p["used"]["memory"])
            quota = p["quota"]["cpus"]
            self.assertEqual(value(s, "qvisor_pool_vcpus_quota", pool=p["name"]), quota)
        self.assertEqual(value(s, "qvisor_pool_vcpus_quota", pool="batch"), 8)
        self.assertEqual(value(s, "qvisor_pool_memory_quota_bytes", pool="batch"), 4 << 30)
        for sp in st["storage_pools"]:
            self.assertEqual(value(s, "qvisor_storage_pool_allocated_bytes", storage_pool=sp["name"]),
                             sp["allocated"])
            self.assertAlmostEqual(value(s, "qvisor_storage_pool_free_bytes", storage_pool=sp["name"]), sp["free"],
                                   delta=64 << 20)

        # the daemon
        ping = json.loads(self.node.qvisor("--json", "version", check=0).stdout)
        self.assertEqual(value(s, "qvisor_daemon_info", version=ping["daemon"]["version"]), 1)
        self.assertEqual(value(s, "qvisor_daemon_start_time_seconds"), ping["daemon"]["started_at"])

        # the CPU series goes on increasing; a paused VM shows as paused
        wait_for(lambda: value(self.scrape_parsed(), "qvisor_vm_cpu_seconds_total", vm="spin",
                               pool="default") > cpu, 10, "the spinning VM's CPU seconds to increase")
        self.node.qvisor("vm", "pause", "spin", check=0)
        s = self.scrape_parsed()
        self.assertEqual(value(s, "qvisor_vm_state", vm="spin", pool="default", state="paused"), 1)
        self.assertEqual(value(s, "qvisor_vm_state", vm="spin", pool="default", state="running"), 0)
        self.assertIsNotNone(value(s, "qvisor_vm_block_reads_total", vm="spin", pool="default", device="disk0"))
        # a stopped VM keeps its configuration series and loses the others
        self.node.qvisor("vm", "stop", "spin", "--force", timeout=scaled(60), check=0)
        s = self.scrape_parsed()
        self.assertEqual(value(s, "qvisor_vm_state", vm="spin", pool="default", state="stopped"), 1)
        self.assertIsNone(value(s, "qvisor_vm_cpu_seconds_total", vm="spin", pool="default"))
        self.assertEqual(series(s, "qvisor_vm_block_reads_total", vm="spin"), {})

    def test_prometheus_scrapes_the_daemon(self):
        self.create("spin", "spin", "--no-agent")
        self.start("spin")
        work = tempfile.mkdtemp(prefix="qv-prom-", dir=self.node.dir)
        prom_port = free_port()
        with open(os.path.join(work, "prometheus.yml"), "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n"
                    "scrape_configs:\n  - job_name: qvisor\n    static_configs:\n"
                    f"      - targets: ['127.0.0.1:{self.port}']\n")
        log = open(os.path.join(work, "prometheus.log"), "w")
        prom = subprocess.Popen(["prometheus", f"--config.file={work}/prometheus.yml",
                                 f"--storage.tsdb.path={work}/data", f"--web.listen-address=127.0.0.1:{prom_port}",
                                 "--log.level=warn"], stdout=log, stderr=log, stdin=subprocess.DEVNULL)

        def query(q):
            url = f"http://127.0.0.1:{prom_port}/api/v1/query?" + urllib.parse.urlencode({"query": q})
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    j = json.loads(r.read())
            except OSError:
                return None
            if j.get("status") != "success":
                return None
            return [(dict(x["metric"]), float(x["value"][1])) for x in j["data"]["result"]]

        try:
            first = wait_for(lambda: query('qvisor_vm_cpu_seconds_total{vm="spin"}'), 60,
                             "Prometheus to have scraped the spinning VM's CPU seconds")
            labels, v1 = first[0]
            self.assertEqual((labels["vm"], labels["pool"], labels["job"]), ("spin", "default", "qvisor"))
            wait_for(lambda: (query('qvisor_vm_cpu_seconds_total{vm="spin"}') or [({}, 0)])[0][1] > v1, 30,
                     "the CPU seconds Prometheus has to increase")
            # over a few scrapes: a positive rate, and every scrape worked
            rate = wait_for(lambda: query('rate(qvisor_vm_cpu_seconds_total{vm="spin"}[5s])'), 30, "a rate")
            self.assertGreater(rate[0][1], 0)
            up = query('up{job="qvisor"}')
            self.assertEqual(up[0][1], 1.0)
            self.assertEqual(query('qvisor_vm_state{vm="spin",state="running"}')[0][1], 1.0)
        finally:
            prom.terminate()
            try:
                prom.wait(timeout=scaled(20))
            except subprocess.TimeoutExpired:
                prom.kill()
                prom.wait()
            log.close()
        self.assertIsNone(self.node.proc.poll())

    def test_bad_input_and_slow_clients(self):
        self.create("halt", "halt", "--no-agent")
        self.start("halt")
        # clients that connect and send nothing, or half a request line
        slow = [socket.create_connection(("127.0.0.1", self.port)) for _ in range(3)]
        slow[2].sendall(b"GET /metr")
        t0 = time.monotonic()
        bad = [b"GARBAGE\r\n\r\n", b"GET\r\n\r\n", b"GET /metrics HTTP/9.9\r\n\r\n",
               b"GET /metrics HTTP/1.1\r\n\r\n",  # no Host
               b"GET /metrics HTTP/1.1\r\nHost: x\r\nbad header line\r\n\r\n",
               b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\r\n\r\n",
               b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nabcd"]
        for data in bad:
            reply = raw_request(self.port, data)
            self.assertFalse(reply.startswith(b"HTTP/1.1 200"), (data, reply[:200]))
            self.assertIsNone(self.node.proc.poll())
            self.assertIn("qvisor_vm_state", self.scrape())
        # a header far beyond what a connection may hold
        reply = raw_request(self.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) +
                            b"\r\n\r\n")
        self.assertTrue(reply.startswith(b"HTTP/1.1 431 "), reply[:200])
        self.assertTrue(self.scrape().startswith("# HELP "))
        self.assertTrue(raw_request(self.port, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 404"))
        # the slow ones are closed once they were silent for 10 s; scrapes
        # work all the while
        for s in slow:
            s.settimeout(scaled(30))
        while time.monotonic() - t0 < 8:
            self.assertIn("qvisor_vm_state", self.scrape())
            time.sleep(1)
        for s in slow:
            self.assertEqual(s.recv(100), b"")
            s.close()
        self.assertLess(time.monotonic() - t0, scaled(30))
        self.assertIsNone(self.node.proc.poll())
        self.assertIn("qvisor_vm_state", self.scrape())
        # more connections than the endpoint takes: the extra ones are
        # refused, and once they go a scrape works again
        many = [socket.create_connection(("127.0.0.1", self.port)) for _ in range(40)]
        time.sleep(0.3)
        for s in many:
            s.close()
        wait_for(lambda: "qvisor_vm_state" in self.scrape(), 10, "a scrape after the connection flood")

    def test_qemu_that_does_not_answer(self):
        self.create("spin", "spin", "--no-agent")
        self.create("halt", "halt", "--no-agent")
        pid = self.start("spin")["pid"]
        self.start("halt")
        time.sleep(0.5)
        os.kill(pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            s = self.scrape_parsed()
            took = time.monotonic() - t0
            self.assertLess(took, scaled(3))  # the 1 s deadline, not a stall
            self.assertEqual(series(s, "qvisor_vm_block_reads_total", vm="spin"), {})
            self.assertIsNotNone(value(s, "qvisor_vm_block_reads_total", vm="halt", pool="default", device="disk0"))
            self.assertEqual(value(s, "qvisor_scrape_vms_missed"), 1)
            self.assertGreaterEqual(value(s, "qvisor_scrape_duration_seconds"), 0.9)
            # what does not need QEMU is still there
            self.assertIsNotNone(value(s, "qvisor_vm_cpu_seconds_total", vm="spin", pool="default"))
            self.assertEqual(value(s, "qvisor_vm_state", vm="spin", pool="default", state="running"), 1)
            # `qvisor metrics` too
            t0 = time.monotonic()
            self.assertEqual(promtool_check(self.node.qvisor("metrics", check=0).stdout), (0, ""))
            self.assertLess(time.monotonic() - t0, scaled(4))
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_for(lambda: value(self.scrape_parsed(), "qvisor_scrape_vms_missed") == 0, 10,
                 "a scrape with every QEMU answering")
        s = self.scrape_parsed()
        self.assertIsNotNone(value(s, "qvisor_vm_block_reads_total", vm="spin", pool="default", device="disk0"))

    def test_idle_daemon_is_not_woken(self):
        self.create("halt", "halt", "--no-agent")
        self.create("agent", "halt")  # an agent that never answers
        self.start("halt")
        self.start("agent")
        # no scrape waits for the silent agent (its status is the daemon's
        # own): the first would take the whole 1 s deadline if it asked
        first = value(self.scrape_parsed(), "qvisor_scrape_duration_seconds")
        self.assertLess(first, 0.5, "a scrape waited for a silent guest agent")
        for _ in range(3):
            self.scrape()
        time.sleep(2)  # whatever the starts and the scrapes left finishes
        pid = self.node.proc.pid
        before = sum(thread_switches(pid))
        time.sleep(3)
        self.assertEqual(sum(thread_switches(pid)) - before, 0, "the daemon woke up between scrapes")

    def test_reload_keeps_the_endpoint(self):
        other = free_port()
        with open(self.node.config) as f:
            cfg = f.read()
        self.node.write_config(cfg.replace(f"127.0.0.1:{self.port}", f"127.0.0.1:{other}")
                               .replace(self.node.base_config(), ""))
        self.node.qvisor("config", "reload", check=0)
        self.assertIn("metrics.listen changed", self.node.log())
        self.assertIn("qvisor_daemon_info", self.scrape())
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", other), timeout=2).close()
        show = self.node.qvisor_json("config", "show")
        self.assertEqual(show["metrics"]["listen"], f"127.0.0.1:{self.port}")


class StartErrors(unittest.TestCase):
    """A port in use and a bad address: clear errors at start."""

    def test_port_in_use(self):
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        node = Node(f"metrics:\n  listen: 127.0.0.1:{port}\n")
        try:
            p = node.start_daemon(wait=False)
            rc = p.wait(timeout=scaled(20))
            self.assertEqual(rc, 1, node.log())
            self.assertIn(f"metrics.listen 127.0.0.1:{port}: the address is in use", node.log())
            self.assertFalse(os.path.exists(node.socket))  # nothing left listening
        finally:
            holder.close()
            node.cleanup()

    def test_bad_address(self):
        node = Node("metrics:\n  listen: localhost:9641\n")
        try:
            p = node.qvisor("config", "check", node.config)
            self.assertEqual(p.returncode, 78)
            self.assertIn("metrics.listen: expected IPV4:PORT", p.stderr)
            p = node.start_daemon(wait=False)
            self.assertEqual(p.wait(timeout=scaled(20)), 78)
            self.assertIn("host names are not looked up", node.log())
        finally:
            node.cleanup()


class UnixSocket(Base):
    def config(self):
        self.sock = os.path.join(self.node_dir_hint, "metrics.sock")
        return super().config().replace(f"127.0.0.1:{self.port}", self.sock)

    def setUp(self):
        self.node_dir_hint = tempfile.mkdtemp(prefix="qv-mu-")
        super().setUp()

    def tearDown(self):
        super().tearDown()
        shutil.rmtree(self.node_dir_hint, ignore_errors=True)

    def test_unix_socket(self):
        st = os.lstat(self.sock)
        self.assertEqual(st.st_mode & 0o7777, 0o660)
        c = UnixHTTPConnection(self.sock, timeout=scaled(10))
        c.request("GET", "/metrics")
        r = c.getresponse()
        self.assertEqual(r.status, 200)
        text = r.read().decode()
        c.close()
        self.assertEqual(promtool_check(text), (0, ""))
        self.assertEqual(self.node.stop_daemon(), 0)
        self.assertEqual(self.node.sanitizer_reports(), [], self.node.log()[-4000:])
        self.assertFalse(os.path.exists(self.sock))  # removed at stop


# ---- TAP counters, in a network namespace ------------------------------------------------

NS = f"qvt-met-{os.getpid()}"


def sh(*cmd, check=True):
    return subprocess.run(cmd, capture_output=True, text=True, check=check)


def in_ns(*cmd, check=True):
    return sh("ip", "netns", "exec", NS, *cmd, check=check)


class TapCounters(Base):
    """The daemon in a namespace of its own (its TAPs stay there); the
    endpoint on a unix socket, which any namespace reaches."""

    @classmethod
    def setUpClass(cls):
        cls.skip = None
        if os.geteuid() != 0 or shutil.which("ip") is None:
            cls.skip = "needs root and ip for a network namespace"
        elif sh("ip", "netns", "add", NS, check=False).returncode != 0:
            cls.skip = "cannot create a network namespace"
        else:
            in_ns("ip", "link", "set", "lo", "up")
            in_ns("ip", "link", "add", "qvm-br0", "type", "bridge")
            in_ns("ip", "link", "set", "qvm-br0", "up")

    @classmethod
    def tearDownClass(cls):
        if not cls.skip:
            sh("ip", "netns", "del", NS, check=False)

    def config(self):
        self.sock = os.path.join(self.sock_dir, "m.sock")
        return super().config().replace(f"127.0.0.1:{self.port}", self.sock)

    def setUp(self):
        if self.skip:
            self.skipTest(self.skip)
        self.sock_dir = tempfile.mkdtemp(prefix="qv-mt-")
        super().setUp()

    def tearDown(self):
        if self.skip:
            return
        super().tearDown()
        shutil.rmtree(self.sock_dir, ignore_errors=True)

    def start_daemon(self):
        self.node.start_daemon(wrap=["ip", "netns", "exec", NS])

    def scrape(self, path="/metrics"):
        c = UnixHTTPConnection(self.sock, timeout=scaled(10))
        c.request("GET", path)
        r = c.getresponse()
        self.assertEqual(r.status, 200)
        text = r.read().decode()
        c.close()
        return text

    def tap_stat(self, tap, name):
        return int(in_ns("cat", f"/sys/class/net/{tap}/statistics/{name}").stdout)

    def test_tap_counters(self):
        self.create("net", "halt", "--no-agent", "--net", "user", "--net", "bridge,bridge=qvm-br0")
        self.start("net")
        tap = [n for n in self.show("net")["nics"] if n["mode"] == "bridge"][0]["tap"]
        # traffic the guest receives: the host sends to the bridge's port
        in_ns("ip", "addr", "add", "10.99.0.1/24", "dev", "qvm-br0")
        in_ns("python3", "-c", "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
              "s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1); "
              "[s.sendto(b'x' * 100, ('10.99.0.255', 9)) for _ in range(5)]")
        before = {k: self.tap_stat(tap, k) for k in ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets")}
        text = self.scrape()
        after = {k: self.tap_stat(tap, k) for k in before}
        self.assertEqual(promtool_check(text), (0, ""))
        s = parse(text)[0]
        labels = {"vm": "net", "pool": "default", "nic": "1", "tap": tap}
        # the guest's view: what the TAP sent is what the guest received
        for metric, stat in (("qvisor_vm_network_receive_bytes_total", "tx_bytes"),
                             ("qvisor_vm_network_transmit_bytes_total", "rx_bytes"),
                             ("qvisor_vm_network_receive_packets_total", "tx_packets"),
                             ("qvisor_vm_network_transmit_packets_total", "rx_packets")):
            v = value(s, metric, **labels)
            self.assertIsNotNone(v, metric)
            self.assertTrue(before[stat] <= v <= after[stat], (metric, before[stat], v, after[stat]))
        self.assertGreater(value(s, "qvisor_vm_network_receive_packets_total", **labels), 0)
        # the user-mode NIC has no TAP: no series
        self.assertEqual(series(s, "qvisor_vm_network_receive_bytes_total", vm="net", nic="0"), {})


# ---- the guest agent, when the tiny guest is at hand ----------------------------------------

def tiny_guest():
    """The cached tiny guest's kernel and initrd, or None (never built here)."""
    d = os.path.join(os.environ.get("QVISOR_TEST_CACHE", "/var/cache/qvisor-test"), "tiny-guest")
    kernel = next((os.path.join(d, k) for k in ("vmlinux", "vmlinuz") if os.path.exists(os.path.join(d, k))), None)
    initrd = os.path.join(d, "initrd.img")
    try:
        with open(os.path.join(d, "manifest")) as f:
            agent = "agent=yes" in f.read()
    except OSError:
        return None
    return (kernel, initrd) if kernel and os.path.exists(initrd) and agent else None


class Agent(Base):
    def test_agent_up(self):
        guest = tiny_guest()
        if not guest:
            self.skipTest("the tiny guest is not built (test/guest/build-tiny-guest)")
        self.create("ga", "halt", "--memory", "256M", "--kernel", guest[0], "--initrd", guest[1], "--append",
                    "console=ttyS0 quiet panic=-1 qv.agent=on")
        self.start("ga")
        wait_for(lambda: value(self.scrape_parsed(), "qvisor_vm_agent_up", vm="ga", pool="default") == 1,
                 120, "the guest agent to answer a scrape")


def main():
    missing = [p for p in ("promtool", "prometheus", "qemu-system-x86_64", "qemu-img") if not shutil.which(p)]
    if missing:
        print(f"SKIP: {', '.join(missing)} not installed (Debian: prometheus, qemu-system-x86, qemu-utils)")
        sys.exit(77)
    unittest.main(verbosity=2)


if __name__ == "__main__":
    main()
