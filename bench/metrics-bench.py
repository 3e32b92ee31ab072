#!/usr/bin/env python3
"""Metrics benchmark: what a Prometheus scrape costs the daemon, with --vms
running VMs (issue 17: at most 5 ms of daemon CPU per scrape with 50).

  metrics-bench.py [--vms N] [--scrapes N] [--agent-scrapes N]
                   [--idle-seconds S] [--json PATH|-] [--check]

The real daemon and CLI, real QEMU (TCG): the VMs' disk is a boot sector
that halts (cli; hlt), so the guests cost no CPU once SeaBIOS booted them;
1 vCPU and 64M each.  metrics.listen is a loopback port; each scrape is a
plain HTTP GET /metrics from this process, one after the other.  Daemon
CPU is the sum over its threads of /proc/PID/task/*/schedstat (ns, not
tick-rounded), read before and after a batch of scrapes and divided by
the number of scrapes.  Measured:

1. baseline: the same daemon with no VM at all (the node section:
   capacity with the GPU enumeration, pools, storage pools), --scrapes
   scrapes;
2. --vms VMs running, defined --no-agent: each scrape also reads
   /proc/PID/stat of every QEMU and asks each QEMU query-blockstats;
3. the same VMs with an agent configured (their guests have none, so each
   agent is asked and times out at the scrape's 1 s deadline, as a
   silent agent does): --agent-scrapes scrapes, 2.1 s apart so that each
   one asks every agent again (answers younger than 2 s are reused);
4. wake-ups: context switches of every daemon thread in --idle-seconds
   after the scrapes (target 0: nothing runs between scrapes).

Reported: CPU per scrape (median of per-scrape readings and the batch
mean), the increment per VM over the baseline, the wall time of a scrape,
the size of the text.  --check exits 1 when a target is missed.  Every
QEMU started here is killed on the way out."""

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

ROOT = os.environ.get("QVISOR_SOURCE_ROOT") or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if "QVISOR_BIN" not in os.environ:
    _built = os.path.join(ROOT, "build", "cmd", "qvisor")
    if os.path.exists(_built):
        os.environ["QVISOR_BIN"] = _built
sys.path.insert(0, os.path.join(ROOT, "test", "integration"))
from qvtest import QVISOR, Node, thread_cpu_ns as cpu_ns, thread_switches  # noqa: E402

CPU_TARGET_MS = 5.0


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Bench:
    def __init__(self, args):
        self.a = args
        self.port = free_port()
        # admission counts every defined VM against CPUs x cpu_overcommit:
        # the halted one-vCPU guests must all fit on a small machine
        self.node = Node("qemu:\n  accelerator: tcg\n"
                         "vm_defaults:\n  cpus: 1\n  memory: 64M\n  disk: 16M\n  stop_timeout: 5s\n"
                         "  kill_timeout: 2s\n"
                         "resources:\n  cpu_overcommit: 100\n"
                         "daemon:\n  max_clients: 256\n"
                         f"metrics:\n  listen: 127.0.0.1:{self.port}\n")
        self.res = {"vms": args.vms}

    def qv(self, *args, timeout=120):
        p = self.node.qvisor(*args, timeout=timeout)
        if p.returncode != 0:
            raise RuntimeError(f"qvisor {' '.join(args)}: exit {p.returncode}: {p.stderr}")
        return p.stdout

    def scrape(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=30) as r:
            return r.read()

    def measure(self, n, spacing=0.0):
        """n scrapes: per-scrape daemon CPU (ms) and wall time (ms), the batch
        mean CPU, and the text size."""
        pid = self.node.proc.pid
        self.scrape()  # warm: first-use loads (libudev), caches of the kernel
        per_cpu, per_wall = [], []
        size = 0
        c_start = cpu_ns(pid)
        for _ in range(n):
            if spacing:
                time.sleep(spacing)
            c0 = cpu_ns(pid)
            t0 = time.perf_counter()
            size = len(self.scrape())
            per_wall.append((time.perf_counter() - t0) * 1000)
            per_cpu.append((cpu_ns(pid) - c0) / 1e6)
        total = (cpu_ns(pid) - c_start) / 1e6
        return {"scrapes": n, "cpu_ms_median": round(statistics.median(per_cpu), 3),
                "cpu_ms_mean": round(total / n, 3), "cpu_ms_max": round(max(per_cpu), 3),
                "wall_ms_median": round(statistics.median(per_wall), 2), "bytes": size}

    def start_vms(self, names, *extra):
        for n in names:
            self.qv("vm", "create", n, "--image", "halt", *extra)
        procs = [subprocess.Popen([QVISOR, "--config", self.node.config, "vm", "start", n],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for n in names]
        for p in procs:
            if p.wait(timeout=300) != 0:
                raise RuntimeError(f"vm start failed: {p.stderr.read().decode()}")

    def stop_vms(self, names):
        procs = [subprocess.Popen([QVISOR, "--config", self.node.config, "vm", "stop", n, "--force"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for n in names]
        for p in procs:
            p.wait(timeout=300)

    def run(self):
        self.node.start_daemon()
        base = os.path.join(self.node.dir, "halt.raw")
        sector = bytearray(1 << 20)
        sector[0:4] = b"\xfa\xf4\xeb\xfd"  # cli; hlt; jmp back to hlt
        sector[510:512] = b"\x55\xaa"
        with open(base, "wb") as f:
            f.write(sector)
        self.qv("image", "import", base, "halt", "--format", "raw")

        log("baseline: no VM")
        self.res["baseline"] = self.measure(self.a.scrapes)

        names = [f"m{i:03d}" for i in range(self.a.vms)]
        log(f"{self.a.vms} VMs without agents: starting")
        self.start_vms(names, "--no-agent")
        time.sleep(1.0)  # SeaBIOS reaches the halting boot sector
        self.res["vms_no_agent"] = self.measure(self.a.scrapes)

        pid = self.node.proc.pid
        time.sleep(1.0)
        s0 = sum(thread_switches(pid))
        time.sleep(self.a.idle_seconds)
        self.res["idle"] = {"seconds": self.a.idle_seconds, "context_switches": sum(thread_switches(pid)) - s0}

        log(f"{self.a.vms} VMs with silent agents: restarting them")
        self.stop_vms(names)
        for n in names:
            self.qv("vm", "rm", n)
        self.start_vms(names)
        time.sleep(1.0)
        self.res["vms_silent_agents"] = self.measure(self.a.agent_scrapes, spacing=2.1)
        self.stop_vms(names)

        b = self.res["baseline"]["cpu_ms_median"]
        v = self.res["vms_no_agent"]["cpu_ms_median"]
        self.res["per_vm_us"] = round((v - b) * 1000 / self.a.vms, 1)
        self.res["targets"] = {
            f"daemon CPU per scrape, {self.a.vms} VMs (median)": [v, CPU_TARGET_MS, v <= CPU_TARGET_MS],
            "wake-ups between scrapes": [self.res["idle"]["context_switches"], 0,
                                         self.res["idle"]["context_switches"] == 0],
        }

    def report(self):
        r = self.res
        print(f"metrics benchmark: {r['vms']} VMs (halted TCG guests), daemon CPU from /proc/PID/task/*/schedstat")
        rows = [("no VM (baseline)", r["baseline"]), (f"{r['vms']} VMs, no agents", r["vms_no_agent"]),
                (f"{r['vms']} VMs, silent agents", r["vms_silent_agents"])]
        print(f"  {'':28} {'CPU/scrape median':>18} {'mean':>8} {'max':>8} {'wall median':>12} {'text':>9}")
        for label, m in rows:
            print(f"  {label:28} {m['cpu_ms_median']:>15.3f} ms {m['cpu_ms_mean']:>5.3f} ms {m['cpu_ms_max']:>5.3f} ms"
                  f" {m['wall_ms_median']:>9.1f} ms {m['bytes']:>7} B")
        print(f"  per VM over the baseline: {r['per_vm_us']} us")
        print(f"  context switches of the daemon in {r['idle']['seconds']} s after the scrapes: "
              f"{r['idle']['context_switches']}")
        print("targets:")
        ok = True
        for name, (got, want, met) in r["targets"].items():
            print(f"  {name}: {got} (target <= {want}): {'met' if met else 'MISSED'}")
            ok = ok and met
        return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vms", type=int, default=50)
    ap.add_argument("--scrapes", type=int, default=50)
    ap.add_argument("--agent-scrapes", type=int, default=8)
    ap.add_argument("--idle-seconds", type=float, default=5.0)
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args()
    b = Bench(a)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        b.run()
        ok = b.report()
        if a.json:
            text = json.dumps(b.res, indent=2)
            if a.json == "-":
                print(text)
            else:
                with open(a.json, "w") as f:
                    f.write(text + "\n")
    finally:
        b.node.cleanup()
    sys.exit(0 if ok or not a.check else 1)


if __name__ == "__main__":
    main()
