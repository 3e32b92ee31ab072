#!/usr/bin/env python3
"""The one-machine Slurm cluster the tests of issue 18 run on
(slurmcluster.py, docs/testing.md): Debian's Slurm 22.05, munged,
slurmctld and three plain slurmd nodes, each in network and UTS namespaces
of its own, two fake GPUs each (gres.conf File= char devices).

- All three nodes come up idle, each slurmd in its own namespaces with its
  own host name, address, spool directory and log.
- A batch job with --gres=gpu:1 on each node runs there (its output shows
  the node's own host name) and holds GPU index 0 (`scontrol show job -d`,
  SLURM_JOB_GPUS, CUDA_VISIBLE_DEVICES); srun steps run on the nodes too.
- A job asking for more GPUs than a node has is refused at submission; one
  asking for GPUs that exist but are busy waits PENDING (Reason=Resources)
  and runs on the GPU a cancelled job gave back.
- scancel ends a running job, its processes leave the node, the node is idle.
- A slurmd killed under a running job and started again: the job goes on
  and completes, the node is idle, a new job runs there.  A slurmd killed
  until slurmctld sets its node DOWN: a job for that node waits, and runs
  once the slurmd is back (ReturnToService=2).
- Clean-up: a cluster whose start fails half-way, and a process holding a
  cluster that gets SIGTERM, or SIGKILL (then reap_stale()), leave no
  process, namespace, link, mount or directory.

Exits 77 (skipped) without Slurm and munge (Debian: slurmctld, slurmd,
slurm-client, munge) or without root."""

import os
import signal
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from qvtest import scaled, wait_for  # noqa: E402
import slurmcluster  # noqa: E402
from slurmcluster import SlurmCluster, SlurmError, gres_indexes, leftovers  # noqa: E402

CLUSTER = None
HOST_LINKS = None

# holds its node until the test creates jobs_dir/release.ID
HOLD = ('hostname; echo $SLURM_JOB_GPUS $CUDA_VISIBLE_DEVICES; '
        'while [ ! -e release.$SLURM_JOB_ID ]; do sleep 0.1; done')


def host_links():
    p = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True)
    return sorted(line.split(":")[1].strip().split("@")[0] for line in p.stdout.splitlines())


def setUpModule():
    global CLUSTER, HOST_LINKS
    HOST_LINKS = host_links()
    CLUSTER = SlurmCluster(nodes=3, gpus=2)
    CLUSTER.start()


def tearDownModule():
    if CLUSTER is None:
        return
    tag, directory = CLUSTER.tag, CLUSTER.dir
    CLUSTER.cleanup()
    assert leftovers(tag, directory) == [], leftovers(tag, directory)
    assert host_links() == HOST_LINKS, f"host links changed: {HOST_LINKS} -> {host_links()}"


class Base(unittest.TestCase):
    def setUp(self):
        self.c = CLUSTER
        self.jobs = []

    def tearDown(self):
        if not getattr(self._outcome, "success", True):
            print(self.c.log_tail(), file=sys.stderr)
        active = [j["id"] for j in self.c.squeue() if j["id"] in self.jobs
                  and j["state"] in ("PENDING", "RUNNING", "CONFIGURING", "SUSPENDED")]
        if active:
            self.c.scancel(*active)
        self.c.wait_nodes_state(("idle",), 60)

    def submit(self, *opts):
        job = self.c.sbatch(None, *opts)
        self.jobs.append(job)
        return job

    def hold(self, node, gpus=1, *opts):
        """A job on node with gpus GPUs that runs until release(job)."""
        return self.submit("-w", node, f"--gres=gpu:{gpus}", *opts, "--wrap", HOLD)

    def release(self, job):
        open(os.path.join(self.c.jobs_dir, f"release.{job}"), "w").close()

    def gpu_indexes(self, job):
        j = self.c.scontrol_show_job(job)
        return [i for d in j["details"] for i in gres_indexes(d.get("GRES"))]


class Cluster(Base):
    def test_a_nodes_come_up_idle_each_in_its_namespaces(self):
        self.assertEqual(self.c.node_states(), {"node1": "idle", "node2": "idle", "node3": "idle"})
        own = os.stat("/proc/self/ns/net").st_ino
        nets = set()
        for node in self.c.nodes:
            self.assertEqual(self.c.node_exec(node, ["hostname"], check=True).stdout.strip(), node)
            slurmd = self.c.procs[node].pid
            self.assertIn(slurmd, self.c.node_pids(node))
            net = os.stat(f"/proc/{slurmd}/ns/net").st_ino
            self.assertNotEqual(net, own)
            nets.add(net)
            with open(f"/proc/{slurmd}/cmdline", "rb") as f:
                self.assertEqual(f.read().split(b"\0")[:3], [b"slurmd", b"-D", b"-N"])
            n = self.c.scontrol_show_node(node)
            self.assertEqual((n["NodeAddr"], n["Gres"], n["State"]), (self.c.node_addr(node), "gpu:2", "IDLE"))
            addrs = self.c.node_exec(node, ["ip", "-o", "-4", "addr", "show", "dev", "eth0"], check=True).stdout
            self.assertIn(self.c.node_addr(node) + "/24", addrs)
            self.assertTrue(os.listdir(self.c.spool_dir(node)), f"{node}'s spool is empty")
            self.assertTrue(os.path.getsize(self.c.slurmd_log(node)) > 0)
            for i, dev in enumerate(self.c.gpu_devices(node)):
                st = os.stat(dev)
                self.assertEqual((os.major(st.st_rdev), os.minor(st.st_rdev)), (195, i))
        self.assertEqual(len(nets), 3)

    def test_b_gpu_job_runs_on_the_node_asked_for(self):
        jobs = {node: self.hold(node) for node in self.c.nodes}
        for node, job in jobs.items():
            j = self.c.wait_job_state(job, "RUNNING", 30)
            self.assertEqual((j["NodeList"], j["BatchHost"]), (node, node))
            self.assertEqual(len(j["details"]), 1)
            self.assertEqual(j["details"][0]["Nodes"], node)
            self.assertEqual(j["details"][0]["GRES"], "gpu:1(IDX:0)")
        for node, job in jobs.items():
            self.release(job)
            j = self.c.wait_job_state(job, "COMPLETED", 30)
            self.assertEqual(j["ExitCode"], "0:0")
            self.assertEqual(self.c.job_output(job).splitlines(), [node, "0 0"])

    def test_b_srun_steps_run_on_the_nodes(self):
        # srun waits in slurmctld's namespace; the nodes' slurmstepd connect
        # back to it there (10.77.0.1)
        # a step with an allocation of its own has SLURM_STEP_GPUS, not
        # SLURM_JOB_GPUS (a batch job has that; a step in it has both)
        p = self.c.client("srun", "-w", "node2", "--gres=gpu:1", "sh", "-c",
                          "hostname; echo $SLURM_STEP_GPUS $CUDA_VISIBLE_DEVICES")
        self.assertEqual(p.stdout.splitlines(), ["node2", "0 0"])
        p = self.c.client("srun", "-N", "3", "hostname")
        self.assertEqual(sorted(p.stdout.splitlines()), self.c.nodes)

    def test_c_more_gpus_than_a_node_has_is_refused(self):
        before = {j["id"] for j in self.c.squeue()}
        for opts in (("--gres=gpu:3",), ("-w", "node1", "--gres=gpu:3")):
            with self.assertRaises(SlurmError) as e:
                self.submit(*opts, "--wrap", "true")
            self.assertIn("Requested node configuration is not available", e.exception.stderr)
        # slurmctld keeps a record of a refused job: FAILED, BadConstraints,
        # never run
        refused = [j for j in self.c.squeue() if j["id"] not in before]
        self.assertLessEqual(len(refused), 2)
        for j in refused:
            self.assertEqual((j["state"], j["reason"], j["nodes"]), ("FAILED", "BadConstraints", ""))
            self.assertEqual(self.c.job_output(j["id"]), "")

    def test_c_busy_gpus_wait_until_a_job_is_cancelled(self):
        a1, a2 = self.hold("node1"), self.hold("node1")
        for job in (a1, a2):
            self.c.wait_job_state(job, "RUNNING", 30)
        held = {a1: self.gpu_indexes(a1), a2: self.gpu_indexes(a2)}
        self.assertEqual(sorted(held[a1] + held[a2]), [0, 1])  # one GPU each, not the same one
        # a third job: CPUs and memory are free on node1, its two GPUs are not
        b = self.hold("node1")

        def pending_for_resources():
            j = self.c.scontrol_show_job(b)
            self.assertEqual(j["JobState"], "PENDING")
            return j["Reason"] == "Resources"
        wait_for(pending_for_resources, 30, "the third job PENDING with Reason=Resources", interval=0.2)
        self.c.scancel(a2)
        self.c.wait_job_state(a2, "CANCELLED", 30)
        j = self.c.wait_job_state(b, "RUNNING", 30)
        self.assertEqual(j["details"][0]["GRES"], f"gpu:1(IDX:{held[a2][0]})")
        for job in (a1, b):
            self.release(job)
            self.c.wait_job_state(job, "COMPLETED", 30)
        gpu = held[a2][0]
        self.assertEqual(self.c.job_output(b).splitlines(), ["node1", f"{gpu} {gpu}"])

    def test_d_scancel_ends_a_running_job(self):
        job = self.hold("node2")
        self.c.wait_job_state(job, "RUNNING", 30)
        self.assertIn(self.c.node_states()["node2"], ("mixed", "allocated"))
        slurmd = self.c.procs["node2"].pid
        self.assertGreater(len(self.c.node_pids("node2")), 1)  # slurmstepd and the script
        self.c.scancel(job)
        self.c.wait_job_state(job, "CANCELLED", 30)
        self.c.wait_nodes_state(("idle",), 30, ["node2"])
        wait_for(lambda: self.c.node_pids("node2") == [slurmd], 30, "the job's processes to leave node2",
                 interval=0.1)
        self.assertFalse(os.path.exists(os.path.join(self.c.jobs_dir, f"release.{job}")))

    def test_e_slurmd_killed_under_a_job_and_restarted(self):
        job = self.hold("node3")
        self.c.wait_job_state(job, "RUNNING", 30)
        self.assertEqual(self.c.kill_slurmd("node3"), -signal.SIGKILL)
        # the job's slurmstepd outlives slurmd, as on a real node
        self.assertTrue(self.c.node_pids("node3"))
        self.assertEqual(self.c.scontrol_show_job(job)["JobState"], "RUNNING")
        self.c.restart_slurmd("node3")
        self.assertEqual(self.c.scontrol_show_job(job)["JobState"], "RUNNING")
        self.release(job)
        self.c.wait_job_state(job, "COMPLETED", 30)
        self.assertEqual(self.c.job_output(job).splitlines(), ["node3", "0 0"])
        self.c.wait_nodes_state(("idle",), 30, ["node3"])
        # and a new job runs there, with both GPUs
        again = self.hold("node3", 2)
        j = self.c.wait_job_state(again, "RUNNING", 30)
        self.assertEqual(j["details"][0]["GRES"], "gpu:2(IDX:0-1)")
        self.release(again)
        self.c.wait_job_state(again, "COMPLETED", 30)
        self.assertEqual(self.c.job_output(again).splitlines(), ["node3", "0,1 0,1"])

    def test_e_slurmd_down_and_back(self):
        self.c.kill_slurmd("node1")
        # slurmctld pings every SlurmdTimeout/3 s and sets the node DOWN after
        # SlurmdTimeout (10 s) without an answer
        self.c.wait_nodes_state(("down*",), 60, ["node1"])
        job = self.submit("-w", "node1", "--gres=gpu:1", "--wrap", "hostname")
        j = self.c.scontrol_show_job(job)
        self.assertEqual(j["JobState"], "PENDING")
        self.c.restart_slurmd("node1")
        # ReturnToService=2: the registration alone brings the node back
        self.c.wait_job_state(job, "COMPLETED", 30)
        self.assertEqual(self.c.job_output(job).splitlines(), ["node1"])
        self.c.wait_nodes_state(("idle",), 30)


CHILD = """
import os, sys, time
sys.path.insert(0, {here!r})
from slurmcluster import SlurmCluster
c = SlurmCluster(nodes=1, gpus=1).start()
print(c.tag, c.dir, flush=True)
time.sleep(600)
"""


class Cleanup(unittest.TestCase):
    """Clusters of their own (one node), beside the module's."""

    def child(self):
        p = subprocess.Popen([sys.executable, "-c", CHILD.format(here=os.path.dirname(os.path.abspath(__file__)))],
                             stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        line = p.stdout.readline().split()
        if len(line) != 2:
            p.kill()
            p.wait()
            self.fail(f"the child's cluster did not start: {line}")
        tag, directory = line
        self.assertTrue(os.path.isdir(directory))
        return p, tag, directory

    def test_failed_start_leaves_nothing(self):
        c = SlurmCluster(nodes=1, gpus=1, extra_conf="NoSuchKey=1\n")
        with self.assertRaises(AssertionError):
            c.start()
        self.assertEqual(leftovers(c.tag, c.dir), [])

    def test_sigterm_leaves_nothing(self):
        p, tag, directory = self.child()
        p.send_signal(signal.SIGTERM)
        self.assertEqual(p.wait(timeout=scaled(60)), -signal.SIGTERM)
        p.stdout.close()
        self.assertEqual(leftovers(tag, directory), [])

    def test_sigkill_then_reap_stale(self):
        p, tag, directory = self.child()
        p.kill()
        p.wait()
        p.stdout.close()
        # the daemons die with the harness (parent-death signal) ...
        wait_for(lambda: not any(x.startswith("process") for x in leftovers(tag, directory)), 10,
                 "the daemons to die with their harness", interval=0.1)
        # ... its namespaces, mounts and directory wait for the next start
        self.assertTrue(leftovers(tag, directory))
        removed = slurmcluster.reap_stale()
        self.assertIn(directory, removed)
        self.assertEqual(leftovers(tag, directory), [])


if __name__ == "__main__":
    slurmcluster.main()
