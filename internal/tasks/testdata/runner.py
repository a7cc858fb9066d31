#!/usr/bin/python3
"""Test command for the exec runner. Run directly (never through a shell); argv[1] picks
the behaviour, the rest of argv is echoed back so tests can assert it exactly.

  echo      read the JSON payload on stdin, write {"argv", "stdin", "env", "cwd"} as JSON
  fail      write to stderr, exit 3
  hang      start a child (sleep), write "<pid> <child pid>" to $PIDFILE, sleep;
            with "ignore-term" as argv[2] it ignores SIGTERM
  flood     write $FLOOD_BYTES (default 5 MB) of stderr lines, then "last line", then {"ok": true}
  bigout    write 5 MB to stdout
  badjson   write something that is not JSON
  orphan    leave a child in the process group holding stdout, write its pid to $PIDFILE,
            exit 0 with {"ok": true}
  escape    leave a child in a new session (outside the group) holding stdout, write its
            pid to $PIDFILE, exit 0 with {"ok": true}
  noread    ignore stdin, write {}
"""
import json
import os
import signal
import subprocess
import sys
import time

mode = sys.argv[1] if len(sys.argv) > 1 else "echo"


def pidfile(*pids):
    with open(os.environ["PIDFILE"] + ".tmp", "w") as f:
        f.write(" ".join(str(p) for p in pids))
    os.rename(os.environ["PIDFILE"] + ".tmp", os.environ["PIDFILE"])


if mode == "echo":
    payload = json.load(sys.stdin)
    print("echo: got payload for", payload.get("task_id"), file=sys.stderr)
    if os.environ.get("LEAK_SECRET"):
        print("oops, the key is", os.environ.get("API_KEY"), file=sys.stderr)
    env = {k: v for k, v in os.environ.items() if k.startswith(("FLEET_", "API_", "MODE", "HOME", "PATH", "NOT_PASSED"))}
    json.dump({"argv": sys.argv[1:], "stdin": payload, "env": env, "cwd": os.getcwd()}, sys.stdout)
elif mode == "fail":
    sys.stdin.read()
    for i in range(50):
        print("fail: progress line", i, file=sys.stderr)
    print("fail: Traceback: crew exploded", file=sys.stderr)
    sys.exit(3)
elif mode == "hang":
    if len(sys.argv) > 2 and sys.argv[2] == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen(["sleep", "300"])
    pidfile(os.getpid(), child.pid)
    print("hang: waiting", file=sys.stderr, flush=True)
    time.sleep(300)
elif mode == "flood":
    sys.stdin.read()
    total = int(os.environ.get("FLOOD_BYTES", str(5 << 20)))
    line = "flood " + "x" * 94 + "\n"
    n = 0
    while n < total:
        sys.stderr.write(line)
        n += len(line)
    sys.stderr.write("y" * 10000 + "\n")  # one over-long line
    sys.stderr.write("last line\n")
    sys.stderr.flush()
    json.dump({"ok": True}, sys.stdout)
elif mode == "bigout":
    sys.stdout.write("[" + "1," * (5 << 20) + "1]")
elif mode == "badjson":
    print("this is not json")
elif mode == "orphan":
    child = subprocess.Popen(["sleep", "300"])
    pidfile(child.pid)
    json.dump({"ok": True}, sys.stdout)
elif mode == "escape":
    child = subprocess.Popen(["sleep", "300"], start_new_session=True)
    pidfile(child.pid)
    json.dump({"ok": True}, sys.stdout)
elif mode == "noread":
    json.dump({}, sys.stdout)
else:
    print("unknown mode", mode, file=sys.stderr)
    sys.exit(2)
