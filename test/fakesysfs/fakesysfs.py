"""Test helper for the fake sysfs kernel (docs/fakesysfs.md).

    fs = FakeSys(tmpdir)                    # default scenario; or scenario=dict/path
    env = fs.env()                          # run the program under test with this
    subprocess.run([qvisor, ...], env=env)
    fs.driver("0000:01:00.0")               # "vfio-pci", or None when unbound
    fs.fault("0000:01:00.0", "unbind", "hang", once=True)
    fs.release()                            # lets hanging writes go on
    fs.log()                                # ["override 0000:01:00.0 vfio-pci ok", ...]

env() puts libfakesysfs.so first in LD_PRELOAD and umockdev's preload after
it: umockdev's wrappers call libc directly, so anything placed after it
would never see a write.  When the program is built with ASan, libasan goes
in front of both (ASan insists on being first); the default is to look at
the qvisor binary of the build under test with ldd.

Standard library only.
"""

import functools
import glob
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import mktree  # noqa: E402

UMOCKDEV_PRELOAD = "libumockdev-preload.so.0"
OPS = ("override", "unbind", "bind", "probe")
FAULTS = ("ebusy", "enodev", "eio", "hang", "vanish")


def find_lib():
    """Path of libfakesysfs.so: $QVISOR_FAKESYSFS_LIB (set by meson for
    tests), else below $QVISOR_BUILD_ROOT."""
    lib = os.environ.get("QVISOR_FAKESYSFS_LIB")
    if lib:
        return lib
    build = os.environ.get("QVISOR_BUILD_ROOT")
    if build:
        cand = os.path.join(build, "test", "fakesysfs", "libfakesysfs.so")
        if os.path.exists(cand):
            return cand
    raise FileNotFoundError("libfakesysfs.so: set QVISOR_FAKESYSFS_LIB or QVISOR_BUILD_ROOT")


def umockdev_available():
    """True when umockdev's preload library is installed (Debian: umockdev)."""
    return any(glob.glob(f"/usr/lib*/{UMOCKDEV_PRELOAD}") + glob.glob(f"/usr/lib/*/{UMOCKDEV_PRELOAD}"))


def default_binary():
    """The qvisor binary of the build under test, if known."""
    if os.environ.get("QVISOR_BIN"):
        return os.environ["QVISOR_BIN"]
    build = os.environ.get("QVISOR_BUILD_ROOT")
    return os.path.join(build, "cmd", "qvisor") if build else None


@functools.lru_cache(maxsize=None)
def asan_runtime(binary):
    """Absolute path of the libasan a binary links, or None (cached)."""
    if not binary or not os.path.exists(binary):
        return None
    try:
        out = subprocess.run(["ldd", binary], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        name, _, rest = line.strip().partition(" => ")
        if name.startswith("libasan.so") and rest:
            return rest.split()[0]
    return None


def umockdev_run_argv(description, argv, asan=None):
    """Command line running argv under `umockdev-run -d description`.
    umockdev-run puts its preload first in the child's LD_PRELOAD; for an
    ASan program (asan: None detects from argv[0]) an `env` in between puts
    libasan back in front."""
    runtime = asan if isinstance(asan, str) else (asan_runtime(argv[0]) if asan is None or asan else None)
    cmd = ["umockdev-run", "-d", description, "--"]
    if runtime:
        cmd += ["env", f"LD_PRELOAD={runtime}:{UMOCKDEV_PRELOAD}"]
    return cmd + list(argv)


class FakeSys:
    """A fake sysfs tree at root (built by mktree) and the fake kernel's
    controls.  scenario: None (default scenario), a dict or a JSON path."""

    def __init__(self, root, scenario=None, force=False, lib=None):
        self.root = os.path.abspath(root)
        os.makedirs(self.root, exist_ok=True)
        self.scenario = mktree.build(self.root, scenario, force=force)
        self.sys = os.path.join(self.root, "sys")
        self.fake = os.path.join(self.root, "fake")
        self.lib = lib or find_lib()

    # ---- running things under the fake kernel ----

    def preload(self, asan=None, binary=None, umockdev=True):
        """The LD_PRELOAD value: [libasan:]libfakesysfs.so[:umockdev].
        asan: None detects from binary (default: the qvisor under test), False
        never, True requires it, or a path to the runtime."""
        libs = [self.lib]
        if umockdev:
            libs.append(UMOCKDEV_PRELOAD)
        runtime = None
        if isinstance(asan, str):
            runtime = asan
        elif asan is None or asan:
            runtime = asan_runtime(binary or default_binary())
            if asan and not runtime:
                raise RuntimeError(f"{binary or default_binary()} does not link libasan")
        if runtime:
            libs.insert(0, runtime)
        return ":".join(libs)

    def env(self, base=None, asan=None, binary=None, umockdev=True):
        """A full environment (base, default os.environ, plus the fake
        kernel): LD_PRELOAD, FAKESYSFS_ROOT, UMOCKDEV_DIR, QVISOR_SYSROOT.
        A preload already in base stays, after ours."""
        env = dict(os.environ if base is None else base)
        preload = self.preload(asan=asan, binary=binary, umockdev=umockdev)
        if env.get("LD_PRELOAD"):
            preload += ":" + env["LD_PRELOAD"]
        env["LD_PRELOAD"] = preload
        env["FAKESYSFS_ROOT"] = self.root
        env["QVISOR_SYSROOT"] = self.root
        if umockdev:
            env["UMOCKDEV_DIR"] = self.root
        else:
            env.pop("UMOCKDEV_DIR", None)
        return env

    def run(self, argv, asan=None, binary=None, umockdev=True, **kw):
        """subprocess.run under env(); asan detection looks at argv[0]
        unless binary says otherwise."""
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("timeout", 60)
        env = self.env(base=kw.pop("env", None), asan=asan, binary=binary or argv[0], umockdev=umockdev)
        return subprocess.run(argv, env=env, **kw)

    # ---- looking at the tree ----

    def _dev(self, bdf, *rest):
        return os.path.join(self.sys, "bus", "pci", "devices", bdf, *rest)

    def exists(self, bdf):
        """Whether the device is present (its bus link resolves)."""
        return os.path.isdir(self._dev(bdf))

    def driver(self, bdf):
        """Name of the bound driver, or None."""
        try:
            return os.path.basename(os.readlink(self._dev(bdf, "driver")))
        except FileNotFoundError:
            return None

    def override(self, bdf):
        """driver_override, or None when the kernel shows "(null)"."""
        with open(self._dev(bdf, "driver_override")) as f:
            value = f.read().rstrip("\n")
        return None if value in ("(null)", "") else value

    def iommu_group(self, bdf):
        """The device's IOMMU group number, or None without the link."""
        try:
            return int(os.path.basename(os.readlink(self._dev(bdf, "iommu_group"))))
        except FileNotFoundError:
            return None

    def devices(self):
        """BDFs present on the bus, sorted."""
        return sorted(os.listdir(os.path.join(self.sys, "bus", "pci", "devices")))

    def bound(self, driver):
        """BDFs bound to a driver (the driver directory's device links)."""
        d = os.path.join(self.sys, "bus", "pci", "drivers", driver)
        return sorted(n for n in os.listdir(d) if os.path.islink(os.path.join(d, n)) and n != "module")

    # ---- the fake kernel's controls ----

    def log(self):
        """Logged writes, one string per line ("OP BDF ARG RESULT")."""
        try:
            with open(os.path.join(self.fake, "log")) as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []

    def clear_log(self):
        open(os.path.join(self.fake, "log"), "w").close()

    def fault(self, bdf, op, kind, once=False):
        """Adds a fault: the next (every, unless once) write of op for bdf
        ("*" for any) fails or hangs.  A hang fault removes a release file
        left from before, so the write really blocks."""
        if op not in OPS or kind not in FAULTS:
            raise ValueError(f"fault {op} {kind}: op in {OPS}, kind in {FAULTS}")
        if kind == "hang":
            try:
                os.unlink(os.path.join(self.fake, "release"))
            except FileNotFoundError:
                pass
        with open(os.path.join(self.fake, "faults"), "a") as f:
            f.write(f"{bdf} {op} {kind}{' once' if once else ''}\n")

    def faults(self):
        with open(os.path.join(self.fake, "faults")) as f:
            return [line for line in f.read().splitlines() if line.strip()]

    def clear_faults(self):
        open(os.path.join(self.fake, "faults"), "w").close()

    def release(self):
        """Lets every hanging write (and later hang faults) go on."""
        open(os.path.join(self.fake, "release"), "w").close()
