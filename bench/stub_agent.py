"""The stub agent: a tiny stdlib script run as `python -I -S bench/stub_agent.py [OUT_DIR]`.

Its first action reads CLOCK_REALTIME. With an output directory it writes that start time to
`OUT_DIR/<ORCH_TICKET>.<ORCH_STAGE>.<ORCH_ATTEMPT>` (or `OUT_DIR/pid-<pid>` outside orch); an
OUT_DIR of `$HOME` is the task's home, the one place outside its worktree a confined agent may
write,
prints one stream-JSON line, appends its exit time and exits 0. Nothing else is imported, so the
interpreter start-up is the whole cost.
"""

import time

_T0 = time.time()

import os  # noqa: E402 - the clock is read before anything else
import sys  # noqa: E402

HOME = "$HOME"


def main() -> int:
    out = sys.argv[1] if len(sys.argv) > 1 else ""
    env = os.environ
    if out == HOME:
        out = env.get("HOME", "")
    f = None
    if out:
        ticket = env.get("ORCH_TICKET")
        if ticket:
            name = f"{ticket}.{env.get('ORCH_STAGE', '')}.{env.get('ORCH_ATTEMPT', '')}"
        else:
            name = f"pid-{os.getpid()}"
        f = open(os.path.join(out, name), "w")  # noqa: SIM115 - closed below, after the end time
        f.write(repr(_T0))
        f.flush()
    sys.stdout.write('{"type":"result","subtype":"success","is_error":false}\n')
    sys.stdout.flush()
    if f is not None:
        f.write(" " + repr(time.time()))
        f.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
