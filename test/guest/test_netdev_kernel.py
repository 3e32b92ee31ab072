#!/usr/bin/env python3
"""test-netdev under the tiny test guest's kernel.

The machine's own kernel may lack what parts of test-netdev need (bridge VLAN
filtering, vhost-net), and then those parts only say "# skipped: ...".  The
tiny test guest's Debian kernel has them as modules, so this test boots that
kernel under QEMU/TCG with an initramfs of its own: busybox-static, the
test-netdev binary given as argv[1] with every shared library ldd names (and
the loader), and the kernel modules for bridges, TAPs, nftables NAT and
vhost-net in dependency order.  Its /init loads the modules, mounts proc, sys
and dev, runs the binary with the environment unit tests get, prints its TAP
output on the serial console and powers off.

Asserted: exit status 0, every TAP line "ok", and nothing skipped: in
particular the bridge VLAN tests and sv_net_setup for a NIC in a VLAN ran.

Skipped only when qemu-system-x86_64 or the kernel package (the .deb the tiny
guest was built from, in the cache's downloads/) is missing.  Nothing is
downloaded here.  The module set and the initramfs are cached next to the
tiny guest, in netdev-guest/, keyed by hashes of their inputs.
"""

import fcntl
import hashlib
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import guestlib as gl  # noqa: E402

MARK = "QVISOR-NETDEV: "

# Modules the tests need; their depends= fields add the rest (stp, llc,
# nfnetlink, ...) and order them.  softdep "pre:" names are loaded first too.
WANT_MODULES = [
    "bridge", "stp", "llc",                                    # bridges and their VLANs
    "tun",                                                     # TAPs
    "nf_tables", "nft_chain_nat", "nft_masq", "nf_nat",        # table ip qvisor, masquerade
    "nf_conntrack", "nf_defrag_ipv4", "nf_defrag_ipv6", "libcrc32c",
    "vhost_net", "vhost", "vhost_iotlb", "tap",                # /dev/vhost-net
]

# Environment variables of the meson test run the binary gets in the guest
# (test_env in test/meson.build: what a unit test sees).
PASS_ENV = ["QVISOR_TEST_TIMEOUT_MULTIPLIER", "ASAN_OPTIONS", "UBSAN_OPTIONS"]

# Tests of test-netdev that must run (not skip) under the guest kernel.
MUST_RUN = ["test_bridge_vlans", "test_net_setup_bridge_vlan", "test_vhost", "test_net_setup_nat"]

INIT = r"""#!/bin/sh
say() { echo "QVISOR-NETDEV: $*"; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
say boot $(uname -r)
failed=
while read -r m; do
    insmod /lib/modules/$m.ko || failed="$failed $m"
done < /etc/qv-netdev/modules
[ -z "$failed" ] || say "modules-error$failed"
say "modules $(wc -l < /proc/modules)"
. /etc/qv-netdev/env
cd /tmp
timeout -s KILL "$QV_LIMIT" /opt/qv-netdev/test-netdev > /tmp/tap.log 2>&1
rc=$?
sed 's/^/QVISOR-NETDEV: | /' /tmp/tap.log
say "exit $rc"
poweroff -f
sleep 5
say "poweroff-failed"
"""


def _sha256_file(path, h):
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)


def _key(*parts):
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:20]


class Cache:
    """netdev-guest/ in the tiny guest's cache (or a private temp dir when
    that cannot be written), one builder at a time."""

    def __init__(self, base):
        self.dir = os.path.join(base, "netdev-guest")
        self.private = False
        try:
            os.makedirs(self.dir, exist_ok=True)
            self.lockf = open(os.path.join(base, "netdev-guest.lock"), "a")
        except OSError:
            self.dir = tempfile.mkdtemp(prefix="qv-netdev-guest-")
            self.private = True
            self.lockf = open(os.path.join(self.dir, "lock"), "a")

    def __enter__(self):
        fcntl.flock(self.lockf, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.lockf, fcntl.LOCK_UN)

    def close(self):
        self.lockf.close()
        if self.private:
            shutil.rmtree(self.dir, ignore_errors=True)

    def prune(self, keep, initrds=8, modules_age=7 * 86400, grace=600):
        """Marks `keep` used and removes what was not: beyond the `initrds`
        most recently used initramfs images (each build of test-netdev makes
        a new one), module sets unused for modules_age seconds.  Nothing
        used in the last `grace` seconds goes (another run may be about to
        boot it)."""
        now = time.time()
        entries = []
        for name in os.listdir(self.dir):
            path = os.path.join(self.dir, name)
            try:
                if name in keep:
                    os.utime(path)
                    continue
                entries.append((os.lstat(path).st_mtime, name, path))
            except OSError:
                pass
        n_initrd = len([k for k in keep if k.startswith("initrd-")])
        for mtime, name, path in sorted(entries, reverse=True):
            if now - mtime < grace:
                continue
            if name.startswith("initrd-"):
                n_initrd += 1
                if n_initrd <= initrds:
                    continue
            elif now - mtime < modules_age:
                continue
            try:
                shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
            except OSError:
                pass


# ---- kernel modules ---------------------------------------------------------

def _modinfo(data):
    """The .modinfo fields of a module image that matter here: {key: [values]}.
    (bytes.find, not a regular expression: 400 MB of modules go through it.)"""
    info = {}
    for key in (b"depends", b"softdep", b"alias"):
        needle = b"\0" + key + b"="
        i = data.find(needle)
        while i >= 0:
            start = i + len(needle)
            end = data.find(b"\0", start)
            info.setdefault(key.decode(), []).append(data[start:end].decode(errors="replace"))
            i = data.find(needle, end)
    return info


def _deb_modules(deb, krel, wanted=None):
    """Streams the kernel .deb once.  Without `wanted`: {name: modinfo} of
    every module of release krel and the names in modules.builtin; with it:
    {name: bytes} of those modules."""
    prefix = "./lib/modules/%s/" % krel
    mods, data, builtin = {}, {}, set()
    p = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", deb], stdout=subprocess.PIPE)
    try:
        with tarfile.open(fileobj=p.stdout, mode="r|") as tf:
            for m in tf:
                if not (m.isfile() and m.name.startswith(prefix)):
                    continue
                if m.name == prefix + "modules.builtin" and wanted is None:
                    for line in tf.extractfile(m).read().decode().splitlines():
                        if line.strip():
                            builtin.add(os.path.basename(line.strip())[:-3].replace("-", "_"))
                if not m.name.endswith(".ko"):
                    continue
                name = os.path.basename(m.name)[:-3].replace("-", "_")
                if wanted is None:
                    mods[name] = _modinfo(tf.extractfile(m).read())
                elif name in wanted:
                    data[name] = tf.extractfile(m).read()
    finally:
        p.stdout.close()
        rc = p.wait()
    if rc != 0:
        raise RuntimeError("dpkg-deb --fsys-tarfile %s failed (rc %d)" % (deb, rc))
    return (mods, builtin) if wanted is None else data


def _order_modules(mods, want, builtin):
    """`want` and what their depends= (and softdep pre:) name, dependencies
    first; built-in ones left out."""
    aliases = {}
    for name, info in sorted(mods.items()):
        for a in info.get("alias", []):
            aliases.setdefault(a, []).append(name)
    order, seen = [], set()

    def resolve_soft(n):
        if n in mods or n in builtin:
            return n
        # an algorithm name (crc32c): the portable _generic module, which
        # loads on any CPU (TCG's has no SSE4.2 for crc32c_intel)
        for cand in [n + "_generic"] + aliases.get(n, []):
            if cand in mods:
                return cand
        return None

    def add(n, chain):
        n = n.replace("-", "_")
        if n in seen:
            return
        seen.add(n)
        if n in builtin:
            return
        if n not in mods:
            raise RuntimeError("module %s (needed by %s) is not in the kernel package" % (n, " <- ".join(chain)))
        info = mods[n]
        for dep in ",".join(info.get("depends", [])).split(","):
            if dep:
                add(dep, chain + [n])
        for sd in info.get("softdep", []):
            m = re.search(r"pre:\s*([^:]*?)(\s+post:|$)", sd)
            for dep in (m.group(1).split() if m else []):
                r = resolve_soft(dep)
                if r:
                    add(r, chain + [n])
        order.append(n)

    for w in want:
        add(w, [])
    return order


def kernel_modules(cache, deb, krel):
    """The modules for WANT_MODULES out of the kernel package, cached:
    (directory, load order)."""
    st = os.stat(deb)
    key = _key("modules-v1", os.path.basename(deb), st.st_size, krel, " ".join(WANT_MODULES))
    name = "modules-" + key
    out = os.path.join(cache.dir, name)
    order_file = os.path.join(out, "order")
    if not os.path.exists(order_file):
        t0 = time.monotonic()
        mods, builtin = _deb_modules(deb, krel)
        if not mods:
            raise RuntimeError("%s has no modules for %s" % (deb, krel))
        order = _order_modules(mods, WANT_MODULES, builtin)
        data = _deb_modules(deb, krel, set(order))
        tmp = tempfile.mkdtemp(prefix=name + ".", dir=cache.dir)
        for n in order:
            with open(os.path.join(tmp, n + ".ko"), "wb") as f:
                f.write(data[n])
        with open(os.path.join(tmp, "order"), "w") as f:
            f.write("\n".join(order) + "\n")
        os.chmod(tmp, 0o755)
        shutil.rmtree(out, ignore_errors=True)
        os.rename(tmp, out)
        sys.stderr.write("netdev-guest: modules from %s in %.1f s: %s\n"
                         % (os.path.basename(deb), time.monotonic() - t0, " ".join(order)))
    with open(order_file) as f:
        return out, f.read().split()


# ---- the initramfs ----------------------------------------------------------

class Cpio:
    """A cpio newc archive (what the kernel unpacks into its rootfs)."""

    def __init__(self):
        self.entries = {}  # path -> (mode, data or link target, rdev)

    def _parents(self, path):
        d = os.path.dirname(path)
        while d and d not in self.entries:
            self.entries[d] = (stat.S_IFDIR | 0o755, b"", (0, 0))
            d = os.path.dirname(d)

    def dir(self, path, perm=0o755):
        path = path.strip("/")
        self._parents(path)
        self.entries[path] = (stat.S_IFDIR | perm, b"", (0, 0))

    def file(self, path, data, perm=0o644):
        path = path.strip("/")
        self._parents(path)
        self.entries[path] = (stat.S_IFREG | perm, data, (0, 0))

    def symlink(self, path, target):
        path = path.strip("/")
        self._parents(path)
        self.entries[path] = (stat.S_IFLNK | 0o777, target.encode(), (0, 0))

    def chardev(self, path, major, minor, perm=0o600):
        path = path.strip("/")
        self._parents(path)
        self.entries[path] = (stat.S_IFCHR | perm, b"", (major, minor))

    def write(self, f):
        def entry(ino, name, mode, data, rdev):
            nb = name.encode() + b"\0"
            hdr = "070701" + "".join("%08x" % v for v in (
                ino, mode, 0, 0, 2 if stat.S_ISDIR(mode) else 1, 0, len(data),
                0, 0, rdev[0], rdev[1], len(nb), 0))
            f.write(hdr.encode() + nb + b"\0" * (-(110 + len(nb)) % 4))
            f.write(data + b"\0" * (-len(data) % 4))

        for ino, path in enumerate(sorted(self.entries), start=1):
            mode, data, rdev = self.entries[path]
            entry(ino, path, mode, data, rdev)
        entry(0, "TRAILER!!!", 0, b"", (0, 0))


def shared_libraries(binary):
    """Absolute paths of the shared libraries and the loader `binary` needs."""
    p = subprocess.run(["ldd", binary], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if p.returncode != 0:
        raise RuntimeError("ldd %s: %s" % (binary, p.stdout))
    libs = []
    for line in p.stdout.splitlines():
        line = line.strip()
        if "not found" in line:
            raise RuntimeError("ldd %s: %s" % (binary, line))
        m = re.match(r"\S+ => (/\S+) \(", line) or re.match(r"(/\S+) \(", line)
        if m:
            libs.append(m.group(1))
    return libs


def guest_env():
    """The environment the binary runs with in the guest."""
    env = {"CMOCKA_MESSAGE_OUTPUT": "TAP", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "TMPDIR": "/tmp",
           "HOME": "/root"}
    for k in PASS_ENV:
        if os.environ.get(k):
            env[k] = os.environ[k]
    # the binary's own limit, within the QEMU run's
    env["QV_LIMIT"] = str(int(gl.scaled(90)))
    return env


def build_initramfs(cache, binary, moddir, order, krel):
    """The initramfs (uncompressed cpio: faster to boot under TCG than to
    inflate), cached by a hash of everything in it."""
    busybox = "/bin/busybox"
    if not os.access(busybox, os.X_OK):
        raise RuntimeError("no %s (package busybox-static; test/guest/build-tiny-guest installs it)" % busybox)
    libs = shared_libraries(binary)
    env = guest_env()
    env_text = "".join("export %s=%s\n" % (k, shlex.quote(v)) for k, v in sorted(env.items()))
    h = hashlib.sha256()
    with open(os.path.abspath(__file__), "rb") as f:
        h.update(f.read())
    h.update(("%s\n%s\n%s\n" % (moddir, krel, env_text)).encode())
    for path in [binary, busybox] + libs:
        h.update(path.encode() + b"\0")
        _sha256_file(path, h)
    name = "initrd-%s.cpio" % h.hexdigest()[:20]
    out = os.path.join(cache.dir, name)
    if os.path.exists(out):
        return out, name

    t0 = time.monotonic()
    c = Cpio()
    for d in ("proc", "sys", "dev", "run", "root", "etc"):
        c.dir(d)
    c.dir("tmp", 0o1777)
    c.chardev("dev/console", 5, 1)
    c.chardev("dev/null", 1, 3, 0o666)
    with open(busybox, "rb") as f:
        c.file("bin/busybox", f.read(), 0o755)
    applets = subprocess.run([busybox, "--list-full"], stdout=subprocess.PIPE, text=True, check=True).stdout
    for a in applets.split():
        if a != "bin/busybox" and a.strip("/") not in c.entries:
            c.symlink(a, "/bin/busybox")
    c.file("init", INIT.encode(), 0o755)
    c.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    c.file("etc/group", b"root:x:0:\n")
    c.file("etc/qv-netdev/env", env_text.encode())
    with open(binary, "rb") as f:
        c.file("opt/qv-netdev/test-netdev", f.read(), 0o755)
    for lib in libs:
        with open(lib, "rb") as f:  # the file behind any symlink
            c.file(lib, f.read(), 0o755)
    for n in order:
        with open(os.path.join(moddir, n + ".ko"), "rb") as f:
            c.file("lib/modules/%s.ko" % n, f.read())
    c.file("etc/qv-netdev/modules", ("\n".join(order) + "\n").encode())
    fd, tmp = tempfile.mkstemp(prefix=name + ".", dir=cache.dir)
    with os.fdopen(fd, "wb") as f:
        c.write(f)
    os.chmod(tmp, 0o644)
    os.rename(tmp, out)
    sys.stderr.write("netdev-guest: initramfs %s (%d KiB, %d libraries) in %.1f s\n"
                     % (name, os.path.getsize(out) >> 10, len(libs), time.monotonic() - t0))
    return out, name


# ---- the run -----------------------------------------------------------------

def parse(log):
    """The guest's lines: markers, TAP lines, and which tests said skipped."""
    marks, tap = [], []
    for raw in log.splitlines():
        i = raw.find(MARK)
        if i < 0:
            continue
        line = raw[i + len(MARK):].rstrip("\r")
        if line.startswith("| "):
            tap.append(line[2:])
        elif line == "|":
            tap.append("")
        else:
            marks.append(line)
    results, skipped, pending = [], {}, []
    for line in tap:
        m = re.match(r"(not ok|ok) (\d+)(?: - (\S+))?", line)
        if m:
            results.append((m.group(1), int(m.group(2)), m.group(3) or ""))
            if pending:
                skipped[m.group(3) or m.group(2)] = pending
            pending = []
        elif line.startswith("# skipped:"):
            pending.append(line)
    plan = next((int(m.group(1)) for m in (re.match(r"1\.\.(\d+)$", l) for l in tap) if m), None)
    exit_rc = next((int(m.group(1)) for m in (re.match(r"exit (\d+)$", l) for l in marks) if m), None)
    return {"marks": marks, "tap": tap, "results": results, "skipped": skipped, "plan": plan, "exit": exit_rc}


class NetdevUnderGuestKernel(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if len(sys.argv) < 2 or not os.access(sys.argv[1], os.X_OK):
            raise RuntimeError("usage: test_netdev_kernel.py PATH/TO/test-netdev")
        cls.binary = os.path.abspath(sys.argv[1])
        if not gl.have_qemu():
            raise unittest.SkipTest("%s missing: cannot boot the guest kernel" % gl.qemu_binary())
        img = gl.build_tiny_guest()
        pkg, ver, krel = (img.manifest.get(k) for k in ("kernel_package", "kernel_version", "kernel_release"))
        if not (pkg and ver and krel):
            raise RuntimeError("tiny guest manifest %s/manifest names no kernel" % img.dir)
        base = os.path.dirname(img.dir)
        deb = os.path.join(base, "downloads", "%s_%s_amd64.deb" % (pkg, ver.replace(":", "%3a")))
        if not os.path.exists(deb):
            raise unittest.SkipTest("the kernel package %s is not in %s (test/guest/build-tiny-guest --force "
                                    "downloads it again)" % (os.path.basename(deb), os.path.dirname(deb)))

        cache = Cache(base)
        try:
            with cache:
                moddir, order = kernel_modules(cache, deb, krel)
                initrd, name = build_initramfs(cache, cls.binary, moddir, order, krel)
                if not cache.private:
                    cache.prune({name, os.path.basename(moddir)})
            cls.order = order
            cls.run_guest(img, initrd)
        finally:
            cache.close()

    @classmethod
    def run_guest(cls, img, initrd):
        work = tempfile.mkdtemp(prefix="qv-netdev-guest-")
        try:
            log = os.path.join(work, "serial.log")
            argv = [gl.qemu_binary(), "-accel", "tcg", "-machine", "q35", "-m", "512", "-nodefaults",
                    "-display", "none", "-serial", "file:" + log, "-kernel", img.kernel, "-initrd", initrd,
                    "-append", gl.BASE_APPEND, "-no-reboot"]
            t0 = time.monotonic()
            p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            try:
                out, _ = p.communicate(timeout=gl.scaled(120))
                cls.timed_out = False
            except subprocess.TimeoutExpired:
                p.kill()
                out, _ = p.communicate()
                cls.timed_out = True
            cls.elapsed = time.monotonic() - t0
            cls.qemu_rc = p.returncode
            cls.qemu_out = out.decode(errors="replace")
            with open(log, errors="replace") as f:
                cls.log = f.read()
        finally:
            shutil.rmtree(work, ignore_errors=True)
        cls.r = parse(cls.log)
        sys.stderr.write("netdev-guest: %s booted and ran test-netdev in %.1f s (%s)\n"
                         % (os.path.basename(img.kernel), cls.elapsed, ", ".join(cls.r["marks"][:2])))
        sys.stderr.write("".join("netdev-guest: | %s\n" % line for line in cls.r["tap"]))

    def diag(self):
        return "\n--- serial (last 60 lines) ---\n%s\n--- qemu (rc %s%s) ---\n%s" % (
            "\n".join(self.log.splitlines()[-60:]), self.qemu_rc, ", timed out" if self.timed_out else "",
            self.qemu_out[-2000:])

    def test_1_guest_ran_the_binary(self):
        self.assertFalse(self.timed_out, "QEMU did not exit" + self.diag())
        self.assertEqual([m for m in self.r["marks"] if m.startswith("modules-error")], [], self.diag())
        self.assertEqual(self.r["exit"], 0, "test-netdev in the guest" + self.diag())

    def test_2_every_test_ok(self):
        res = self.r["results"]
        self.assertIsNotNone(self.r["plan"], "no TAP plan" + self.diag())
        self.assertEqual(len(res), self.r["plan"], "TAP lines vs plan" + self.diag())
        self.assertEqual([r for r in res if r[0] != "ok"], [], self.diag())
        names = [r[2] for r in res]
        for t in MUST_RUN:
            self.assertIn(t, names, self.diag())

    def test_3_nothing_skipped(self):
        # the point of the guest kernel: VLAN filtering and vhost-net are there
        self.assertEqual(self.r["skipped"], {}, "tests skipped under %s" % self.r["marks"][:1] + self.diag())
        for line in self.r["tap"]:
            self.assertNotIn("kernel tests skipped", line)
        sys.stderr.write("netdev-guest: %d tests ok, none skipped (modules: %s)\n"
                         % (len(self.r["results"]), " ".join(self.order)))


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1], verbosity=2)
