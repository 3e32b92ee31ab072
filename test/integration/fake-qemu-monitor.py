#!/usr/bin/env python3
"""Stands in for qemu-system-x86_64 (config `qemu.binary`) in
test_start_failures.py: a QEMU whose monitor misbehaves, or whose -version
fails.

The mode is read at each run from the file FAKE_QEMU_MODE_FILE names (the
test changes it between starts without restarting the daemon); every run
appends its argv as one JSON line to FAKE_QEMU_RUNS when that is set.

- `version-fails`: `-version` prints to stderr and exits 1 (a broken
  install or a wrapper); anything else runs the real QEMU.
- otherwise the daemon's capability probe (no `-pidfile` in argv) runs the
  real QEMU, and a VM start accepts the monitor connection on fd 3 (the
  listening socket the daemon passes) and then:
  - `bad-json`: sends a line that is not JSON;
  - `big-greeting`: sends a greeting larger than QMP_MAX_MESSAGE (10 MiB);
  - `close-after-greeting`: sends the greeting, reads qmp_capabilities, closes;
  - `wrong-id`: answers qmp_capabilities with another id;
  having said so on stderr (which is qemu.log) first; then it sleeps: the
  daemon must kill it.
- `flood`: a well-behaved monitor (every command gets `{"return": {}}`,
  query-status says running, quit exits 0) that, once `cont` came, sends
  STOP/RESUME pairs as fast as it can for FAKE_QEMU_FLOOD_SECONDS (a guest
  that controls its QEMU), ending with RESUME, and writes how many events it
  sent to FAKE_QEMU_FLOOD_COUNT.  `system_powerdown` is a guest that honours
  ACPI: POWERDOWN, SHUTDOWN (guest), exit 0.  With FAKE_QEMU_FILL_AT_CONT
  set, it fills the file system by writing that file until ENOSPC before it
  answers `cont` (the disk fills up while a start is under way).  With
  FAKE_QEMU_SERIAL_BYTES set, it appends that many bytes to the serial log
  its argv names once `cont` came (a guest that prints without end), then
  writes "done" to FAKE_QEMU_SERIAL_DONE.  With FAKE_QEMU_QUIT_DELAY set,
  `quit` is followed by that many seconds before the exit (a QEMU slow to
  wind down)."""

import json
import os
import socket
import sys
import threading
import time

REAL = os.environ.get("FAKE_QEMU_REAL", "qemu-system-x86_64")
GREETING = (b'{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": ""}, '
            b'"capabilities": []}}\n')


def mode():
    path = os.environ.get("FAKE_QEMU_MODE_FILE")
    if not path:
        return ""
    try:
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        return ""


def read_line(conn):
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = conn.recv(4096)
        if not chunk:
            break
        buf += chunk
    return buf


def misbehave(m):
    # QEMU's own words come first (the daemon kills it once the monitor fails)
    sys.stderr.write(f"fake-qemu: this monitor will misbehave ({m})\n")
    sys.stderr.flush()
    lsock = socket.socket(fileno=3)
    conn, _ = lsock.accept()
    if m == "bad-json":
        conn.sendall(b'{"QMP": {"version": \n')
    elif m == "big-greeting":
        try:
            conn.sendall(b'{"QMP": {"version": {}, "padding": "' + b"x" * (11 << 20) + b'"}}\n')
        except BrokenPipeError:
            pass  # the daemon stopped reading at 10 MiB
    elif m == "close-after-greeting":
        conn.sendall(GREETING)
        read_line(conn)
        conn.close()
    elif m == "wrong-id":
        conn.sendall(GREETING)
        cmd = json.loads(read_line(conn))
        conn.sendall(json.dumps({"return": {}, "id": cmd["id"] + 1000}).encode() + b"\n")
    while True:
        time.sleep(3600)


def event(name):
    t = time.time()
    return json.dumps({"event": name, "data": {},
                       "timestamp": {"seconds": int(t), "microseconds": int(t % 1 * 1e6)}}).encode() + b"\n"


def serial_log_path(argv):
    """The serial log as this process can open it: the daemon passes it as
    an fdset (-add-fd fd=M,set=N, logfile=/dev/fdset/N), so fd M."""
    sets = {}
    for i, a in enumerate(argv[:-1]):
        if a == "-add-fd":
            opts = dict(kv.split("=", 1) for kv in argv[i + 1].split(","))
            sets[opts["set"]] = opts["fd"]
    for a in argv:
        for part in a.split(","):
            if part.startswith("logfile="):
                path = part[len("logfile="):]
                if path.startswith("/dev/fdset/"):
                    return f"/proc/self/fd/{sets[path[len('/dev/fdset/'):]]}"
                return path
    return None


def print_forever(path, n):
    chunk = b"guest: " + b"x" * 65527 + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    left = n
    while left > 0:
        left -= os.write(fd, chunk[:min(left, len(chunk))])
    os.close(fd)
    with open(os.environ["FAKE_QEMU_SERIAL_DONE"], "w") as f:
        f.write("done\n")


def flood(argv):
    """Serves one monitor connection after the other, as QEMU does (a
    restarted daemon connects again)."""
    lsock = socket.socket(fileno=3)
    state = {"conn": None}
    lock = threading.Lock()
    seconds = float(os.environ.get("FAKE_QEMU_FLOOD_SECONDS", "10"))

    def send(b):
        with lock:
            try:
                state["conn"].sendall(b)
            except OSError:
                pass  # that connection is gone; the next one gets what follows

    def flooder():
        n = 0
        end = time.monotonic() + seconds
        pair = event("STOP") + event("RESUME")
        while time.monotonic() < end:
            send(pair * 50)
            n += 100
        # whole or not there: the test polls for the file
        path = os.environ["FAKE_QEMU_FLOOD_COUNT"]
        with open(path + ".tmp", "w") as f:
            f.write(f"{n}\n")
        os.rename(path + ".tmp", path)

    while True:
        conn, _ = lsock.accept()
        with lock:
            state["conn"] = conn
        serve(conn, send, argv, seconds, flooder)
        conn.close()


def serve(conn, send, argv, seconds, flooder):
    send(GREETING)
    buf = b""
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if not line.strip():
                continue
            cmd = json.loads(line)
            ret = {}
            if cmd.get("execute") == "query-status":
                ret = {"status": "running", "running": True, "singlestep": False}
            if cmd.get("execute") == "cont" and os.environ.get("FAKE_QEMU_FILL_AT_CONT"):
                fill(os.environ["FAKE_QEMU_FILL_AT_CONT"])
            send(json.dumps({"return": ret, "id": cmd.get("id")}).encode() + b"\n")
            if cmd.get("execute") == "cont" and os.environ.get("FAKE_QEMU_SERIAL_BYTES"):
                threading.Thread(target=print_forever, daemon=True,
                                 args=(serial_log_path(argv), int(os.environ["FAKE_QEMU_SERIAL_BYTES"]))).start()
            if cmd.get("execute") == "cont" and seconds > 0:
                threading.Thread(target=flooder, daemon=True).start()
            elif cmd.get("execute") == "quit":
                send(event("SHUTDOWN"))
                time.sleep(float(os.environ.get("FAKE_QEMU_QUIT_DELAY", "0")))
                os._exit(0)
            elif cmd.get("execute") == "system_powerdown":
                send(event("POWERDOWN"))
                send(json.dumps({"event": "SHUTDOWN", "data": {"guest": True, "reason": "guest-shutdown"},
                                 "timestamp": {"seconds": 0, "microseconds": 0}}).encode() + b"\n")
                os._exit(0)


def fill(path):
    """Writes path until the file system is full."""
    with open(path, "ab") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


def main():
    argv = sys.argv[1:]
    runs = os.environ.get("FAKE_QEMU_RUNS")
    if runs:
        with open(runs, "a") as f:
            f.write(json.dumps(argv) + "\n")
    m = mode()
    if m == "version-fails" and argv == ["-version"]:
        sys.stderr.write("fake-qemu: cannot load libfoo.so.1: no such file\n")
        sys.exit(1)
    if "-pidfile" in argv and m == "flood":
        flood(argv)
        sys.exit(0)
    if "-pidfile" in argv and m not in ("", "version-fails"):
        misbehave(m)
    os.execvp(REAL, [REAL] + argv)


if __name__ == "__main__":
    main()
