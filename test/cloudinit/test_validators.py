#!/usr/bin/env python3
"""External validators on seeds written by qvisor's own ISO9660 writer.

Usage: test_validators.py CI_TOOL

Seeds of 0, 1, 4 and 50 files (empty files and a 5 MB file included) must
satisfy isoinfo (-d, -l -R, -l -J, -R -x, -J -x), xorriso (-toc,
-check_media), blkid -p, 7z l and pycdlib, and must be logically equal to
what `genisoimage -volid cidata -joliet -rock` makes of the same files (same
names in both trees, same contents, same Rock Ridge modes).  Then the
`cidata` verb: exit codes, the cloud-localds form, determinism, equality
with cloud-localds.

Needs (Debian): genisoimage xorriso p7zip-full python3-pycdlib util-linux
cloud-image-utils.  Exits 77 (skip) when one is missing.
"""
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile

TOOL = os.path.abspath(sys.argv[1])

try:
    import pycdlib
except ImportError:
    # pyenv or venv interpreters do not see Debian's dist-packages
    sys.path.append("/usr/lib/python3/dist-packages")
    try:
        import pycdlib
    except ImportError:
        pycdlib = None

NEEDED = ["isoinfo", "xorriso", "blkid", "7z", "genisoimage", "cloud-localds"]
missing = [t for t in NEEDED if not shutil.which(t)]
if pycdlib is None:
    missing.append("python3-pycdlib")
if missing:
    print("SKIP: missing validators: " + ", ".join(missing))
    sys.exit(77)

failures = []
checks = 0


def check(cond, msg):
    global checks
    checks += 1
    if not cond:
        failures.append(msg)
        print("FAIL: " + msg, flush=True)


def run(args, env=None, **kw):
    return subprocess.run(args, capture_output=True, env=env, **kw)


ENV = dict(os.environ, SOURCE_DATE_EPOCH="1700000000", LC_ALL="C")


# ---------------------------------------------------------------- cases

def write_case(root, name, files):
    """files: list of (name, bytes, mode).  Returns the directory."""
    d = os.path.join(root, name)
    os.mkdir(d)
    os.chmod(d, 0o755)
    for fname, data, mode in files:
        p = os.path.join(d, fname)
        with open(p, "wb") as f:
            f.write(data)
        os.chmod(p, mode)
    return d


def cases():
    rnd = random.Random(42)
    one = [("user-data", b"#cloud-config\nhostname: vm1\n", 0o644)]
    four = [
        ("meta-data", b"instance-id: iid-1\nlocal-hostname: vm1\n", 0o644),
        ("user-data", b"#cloud-config\nhostname: vm1\nruncmd: [ls]\n", 0o644),
        ("network-config", b"version: 2\nethernets:\n  nic0:\n    match: {macaddress: '52:54:00:00:00:01'}\n"
                           b"    dhcp4: true\n", 0o644),
        ("vendor-data", b"", 0o644),
    ]
    fifty = []
    for i in range(50):
        if i == 0:
            name, data = "big.bin", bytes(rnd.getrandbits(8) for _ in range(5 * 1000 * 1000 + 3))
        elif i in (1, 2, 3):
            name, data = "empty-%d" % i, b""
        elif i == 4:
            name, data = "n" * 64, b"longest name\n"
        elif i == 5:
            name, data = "Mixed.Case_name.tar.gz", b"x" * 2048
        else:
            name = "file-%02d-%s.txt" % (i, "abcdefghijklmnopqrstuvwxyz"[: i % 27])
            data = bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(1, 9000)))
        mode = 0o600 if i == 7 else 0o755 if i == 8 else 0o644
        fifty.append((name, data, mode))
    return {"zero": [], "one": one, "four": four, "fifty": fifty}


# ---------------------------------------------------------- validators

def listing(iso, flag):
    """isoinfo -l with -R or -J: {name: mode string}."""
    out = run(["isoinfo", "-l", flag, "-i", iso]).stdout.decode()
    names = {}
    for line in out.splitlines():
        m = re.match(r"^([-d][-rwxsStT]{9})\s.*\]\s\s(.*?)\s?$", line)
        if m and m.group(2) not in (".", ".."):
            names[m.group(2)] = m.group(1)
    return names


def mode_string(mode):
    s = "-"
    for who in (6, 3, 0):
        bits = (mode >> who) & 7
        s += ("r" if bits & 4 else "-") + ("w" if bits & 2 else "-") + ("x" if bits & 1 else "-")
    return s


def pyc_tree(iso):
    """pycdlib view: (rr {name: (mode, bytes)}, joliet {name: bytes})."""
    import io
    p = pycdlib.PyCdlib()
    p.open(iso)
    rr, jol = {}, {}
    for c in p.list_children(rr_path="/"):
        if c.is_dot() or c.is_dotdot():
            continue
        name = c.rock_ridge.name().decode()
        buf = io.BytesIO()
        p.get_file_from_iso_fp(buf, rr_path="/" + name)
        rr[name] = (c.rock_ridge.get_file_mode(), buf.getvalue())
    for c in p.list_children(joliet_path="/"):
        if c.is_dot() or c.is_dotdot():
            continue
        name = c.file_identifier().decode("utf-16-be")
        buf = io.BytesIO()
        p.get_file_from_iso_fp(buf, joliet_path="/" + name)
        jol[name] = buf.getvalue()
    p.close()
    return rr, jol


def validate(tag, iso, files):
    want = {n: d for n, d, _ in files}
    modes = {n: m for n, _, m in files}

    r = run(["isoinfo", "-d", "-i", iso])
    out = r.stdout.decode()
    check(r.returncode == 0, "%s: isoinfo -d failed" % tag)
    check("Volume id: cidata\n" in out, "%s: isoinfo -d label: %r" % (tag, out))
    check("Joliet with UCS level 3 found" in out, "%s: isoinfo -d: no Joliet" % tag)
    check("Rock Ridge signatures version 1 found" in out, "%s: isoinfo -d: no Rock Ridge" % tag)

    rr = listing(iso, "-R")
    check(set(rr) == set(want), "%s: isoinfo -l -R names %s" % (tag, sorted(set(rr) ^ set(want))))
    for n, m in rr.items():
        if n in modes:
            check(m == mode_string(modes[n]), "%s: isoinfo -l -R mode of %s: %s" % (tag, n, m))
    jol = listing(iso, "-J")
    check(set(jol) == set(want), "%s: isoinfo -l -J names %s" % (tag, sorted(set(jol) ^ set(want))))

    for n, data in want.items():
        for flag in ("-R", "-J"):
            r = run(["isoinfo", flag, "-i", iso, "-x", "/" + n])
            check(r.returncode == 0 and r.stdout == data,
                  "%s: isoinfo %s -x /%s: %d bytes, want %d" % (tag, flag, n, len(r.stdout), len(data)))

    r = run(["xorriso", "-indev", iso, "-toc"])
    out = (r.stdout + r.stderr).decode()
    check(r.returncode == 0 and re.search(r"ISO offers\s*:\s*Rock_Ridge Joliet", out),
          "%s: xorriso -toc: %s" % (tag, out))
    r = run(["xorriso", "-abort_on", "WARNING", "-indev", iso, "-check_media", "--"])
    out = (r.stdout + r.stderr).decode()
    regions = re.findall(r"Media region\s*:\s*\d+\s*,\s*\d+\s*,\s*(.*)", out)
    check(r.returncode == 0 and regions and all(q.strip() == "+ good" for q in regions),
          "%s: xorriso -check_media: %s" % (tag, out))
    check("WARNING" not in out and "FAILURE" not in out, "%s: xorriso complains: %s" % (tag, out))

    r = run(["blkid", "-c", "/dev/null", "-p", "-o", "export", iso])
    out = r.stdout.decode().splitlines()
    check("LABEL=cidata" in out and "TYPE=iso9660" in out, "%s: blkid: %s" % (tag, out))

    r = run(["7z", "l", "-slt", iso])
    out = r.stdout.decode()
    check(r.returncode == 0 and "Type = Iso" in out, "%s: 7z l failed: %s" % (tag, r.stderr.decode()))
    names7 = set(re.findall(r"^Path = (.*)$", out, re.M)) - {iso}
    check(names7 == set(want), "%s: 7z l names differ: %s" % (tag, sorted(names7 ^ set(want))))
    check("Warnings" not in out and "ERROR" not in out, "%s: 7z warnings: %s" % (tag, out[-400:]))

    try:
        prr, pj = pyc_tree(iso)
        check({n: d for n, (_, d) in prr.items()} == want, "%s: pycdlib Rock Ridge contents differ" % tag)
        check(pj == want, "%s: pycdlib Joliet contents differ" % tag)
        check({n: m & 0o7777 for n, (m, _) in prr.items()} == modes, "%s: pycdlib modes differ" % tag)
    except Exception as e:  # pycdlib raises on anything it dislikes
        check(False, "%s: pycdlib: %r" % (tag, e))


def compare_with(tag, ours, theirs, modes=True):
    a_rr, a_j = pyc_tree(ours)
    b_rr, b_j = pyc_tree(theirs)
    check(set(a_rr) == set(b_rr), "%s: Rock Ridge names differ: %s" % (tag, sorted(set(a_rr) ^ set(b_rr))))
    check(set(a_j) == set(b_j), "%s: Joliet names differ: %s" % (tag, sorted(set(a_j) ^ set(b_j))))
    for n in set(a_rr) & set(b_rr):
        check(a_rr[n][1] == b_rr[n][1], "%s: contents of %s differ" % (tag, n))
        if modes:
            check(a_rr[n][0] == b_rr[n][0], "%s: mode of %s: %o vs %o" % (tag, n, a_rr[n][0], b_rr[n][0]))
    for n in set(a_j) & set(b_j):
        check(a_j[n] == b_j[n], "%s: Joliet contents of %s differ" % (tag, n))


# ----------------------------------------------------------------- main

def main():
    tmp = tempfile.mkdtemp(prefix="ci-validators.")
    try:
        for tag, files in cases().items():
            d = write_case(tmp, tag, files)
            paths = [os.path.join(d, n) for n, _, _ in files]
            images = {}
            for how in ("atomic", "fd", "buf"):
                iso = os.path.join(tmp, "%s-%s.iso" % (tag, how))
                r = run([TOOL, "mkiso", "-o", iso, "-m", how] + paths, env=ENV)
                check(r.returncode == 0, "%s: ci-tool mkiso -m %s: %s" % (tag, how, r.stderr.decode()))
                images[how] = open(iso, "rb").read() if r.returncode == 0 else b""
            check(images["atomic"] == images["fd"] == images["buf"], "%s: write variants differ" % tag)
            iso = os.path.join(tmp, "%s-atomic.iso" % tag)
            validate(tag, iso, files)
            # same input, same SOURCE_DATE_EPOCH: byte-identical
            again = os.path.join(tmp, "%s-again.iso" % tag)
            run([TOOL, "mkiso", "-o", again] + list(reversed(paths)), env=ENV)
            check(open(again, "rb").read() == images["atomic"], "%s: not deterministic" % tag)
            # genisoimage on the same files
            g = os.path.join(tmp, "%s-genisoimage.iso" % tag)
            r = run(["genisoimage", "-quiet", "-o", g, "-volid", "cidata", "-joliet", "-rock"] + (paths or [d]))
            check(r.returncode == 0, "%s: genisoimage: %s" % (tag, r.stderr.decode()))
            compare_with(tag + " vs genisoimage", iso, g)
            print("ok %s: %d files" % (tag, len(files)), flush=True)

        cli_tests(tmp)
    finally:
        shutil.rmtree(tmp)
    print("%d checks, %d failures" % (checks, len(failures)))
    sys.exit(1 if failures else 0)


def cli(*args, env=ENV):
    return run([TOOL, "cidata"] + list(args), env=env)


def cli_tests(tmp):
    d = os.path.join(tmp, "cli")
    os.mkdir(d)
    ud, md, nc, vd = (os.path.join(d, n) for n in ("user-data", "meta-data", "network-config", "vendor-data"))
    open(ud, "w").write("#cloud-config\nhostname: vm1\n")
    open(md, "w").write("instance-id: iid-x\nlocal-hostname: vm1\n")
    open(nc, "w").write("version: 2\nethernets: {}\n")
    open(vd, "w").write("#!/bin/sh\necho hi\n")
    out = os.path.join(d, "seed.iso")

    r = cli("--help")
    check(r.returncode == 0 and b"Usage" in r.stdout, "cidata --help")
    r = cli()
    check(r.returncode == 64 and b"-o" in r.stderr, "cidata without output: %d" % r.returncode)
    r = cli("--bogus")
    check(r.returncode == 64, "cidata --bogus: %d" % r.returncode)
    r = cli("-o")
    check(r.returncode == 64, "cidata -o without argument: %d" % r.returncode)
    # a bad label is bad data (65), not a usage error
    r = cli("-o", out, "--label", "bad label")
    check(r.returncode == 65 and b"label" in r.stderr, "cidata bad label: %d" % r.returncode)
    r = cli("-o", out, "--label", "a" * 100)
    check(r.returncode == 65 and b"label" in r.stderr, "cidata 100-character label: %d" % r.returncode)
    r = cli("-o", out, "-H", "h", "--meta-data", md)
    check(r.returncode == 64, "cidata -H with --meta-data: %d" % r.returncode)
    r = cli("-o", out, "-x")
    check(r.returncode == 64 and b"-x" in r.stderr, "cidata -x: %d %s" % (r.returncode, r.stderr))
    r = cli("-o", out, "extra")
    check(r.returncode == 64, "cidata -o with a positional: %d" % r.returncode)

    r = cli("-o", out, "--user-data", ud, "--meta-data", md, "--network-config", nc, "--vendor-data", vd)
    check(r.returncode == 0, "cidata all files: %d %s" % (r.returncode, r.stderr.decode()))
    rr, _ = pyc_tree(out)
    check({n: d_ for n, (_, d_) in rr.items()} == {
        "user-data": open(ud, "rb").read(), "meta-data": open(md, "rb").read(),
        "network-config": open(nc, "rb").read(), "vendor-data": open(vd, "rb").read()},
        "cidata: seed contents")
    r = run(["blkid", "-c", "/dev/null", "-p", "-o", "export", out])
    check("LABEL=cidata" in r.stdout.decode().splitlines(), "cidata: blkid label")
    first = open(out, "rb").read()
    cli("-o", out, "--user-data", ud, "--meta-data", md, "--network-config", nc, "--vendor-data", vd)
    check(open(out, "rb").read() == first, "cidata: not deterministic under SOURCE_DATE_EPOCH")

    # cloud-localds form, and equality with cloud-localds itself
    r = cli(out, ud, md)
    check(r.returncode == 0, "cidata OUTPUT USER-DATA META-DATA: %d %s" % (r.returncode, r.stderr.decode()))
    c = os.path.join(d, "localds.iso")
    r = run(["cloud-localds", c, ud, md])
    check(r.returncode == 0, "cloud-localds: %s" % r.stderr.decode())
    # cloud-localds copies into a temp dir: modes follow its umask, not ours
    compare_with("cidata vs cloud-localds", out, c, modes=False)

    # generated meta-data: instance-id from the content, -H hostname
    r = cli(out, ud, "-H", "web-1")
    check(r.returncode == 0, "cidata without meta-data: %s" % r.stderr.decode())
    rr, _ = pyc_tree(out)
    meta1 = rr["meta-data"][1].decode()
    check(re.search(r"^instance-id: 'iid-[0-9a-f]{32}'$", meta1, re.M) is not None, "generated meta-data: %r" % meta1)
    check("local-hostname: 'web-1'" in meta1, "generated local-hostname: %r" % meta1)
    open(ud, "a").write("runcmd: [ls]\n")
    cli(out, ud, "-H", "web-1")
    meta2 = pyc_tree(out)[0]["meta-data"][1].decode()
    check(meta1 != meta2, "instance-id does not follow the user-data")

    # bad input
    r = cli("-o", out, "--user-data", os.path.join(d, "missing"))
    check(r.returncode == 66 and b"missing" in r.stderr, "cidata missing input: %d" % r.returncode)
    bad = os.path.join(d, "bad")
    open(bad, "w").write("#cloud-config\nfoo: [1, 2\n")
    before = open(out, "rb").read()
    r = cli("-o", out, "--user-data", bad)
    check(r.returncode == 65 and b"user-data" in r.stderr and b"line" in r.stderr,
          "cidata invalid user-data: %d %s" % (r.returncode, r.stderr.decode()))
    check(open(out, "rb").read() == before, "cidata: a failed run touched the output")
    open(bad, "w").write("- just\n- a list\n")
    r = cli("-o", out, "--user-data", ud, "--meta-data", bad)
    check(r.returncode == 65 and b"meta-data" in r.stderr, "cidata invalid meta-data: %d" % r.returncode)
    r = cli("-o", out, "--user-data", ud, "--network-config", bad)
    check(r.returncode == 65, "cidata invalid network-config: %d" % r.returncode)
    r = cli("-o", os.path.join(d, "no", "such", "dir", "seed.iso"), "--user-data", ud)
    check(r.returncode == 1 and b"no/such/dir" in r.stderr, "cidata unwritable output: %d" % r.returncode)
    r = cli("-o", out, env=dict(ENV, SOURCE_DATE_EPOCH="soon"))
    check(r.returncode == 65 and b"SOURCE_DATE_EPOCH" in r.stderr, "cidata bad SOURCE_DATE_EPOCH")
    leftovers = [f for f in os.listdir(d) if f.endswith(".tmp")]
    check(not leftovers, "temporary files left: %s" % leftovers)
    print("ok cidata verb", flush=True)


if __name__ == "__main__":
    main()
