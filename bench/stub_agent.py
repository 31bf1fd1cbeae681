"""The stub agent: a tiny stdlib script run as `python -I -S bench/stub_agent.py [OUT_DIR]`.

Its first action reads CLOCK_REALTIME. With an output directory it writes that start time to
`OUT_DIR/<ORCH_TICKET>.<ORCH_STAGE>.<ORCH_ATTEMPT>` (or `OUT_DIR/pid-<pid>` outside orch); an
OUT_DIR of `$HOME` is the task's home, the one place outside its worktree a confined agent may
write. It prints one stream-JSON line, appends its exit time and exits 0. Nothing else is
imported, so the interpreter start-up is the whole cost.

What else it does is read from the ticket's title (ORCH_TICKET_TITLE), words of the form
`name=value` among the others, so one agent command serves every workload:

- `sleep=S`: stay alive S seconds (`s.<stage>=S` for one stage); its pid goes to `<name>.pid`
  beside the start time, for a benchmark that signals it;
- `every=P`: while alive, print a stream-JSON line every P seconds (output the stall clock sees);
- `release`: end early, as a success, once a file `release` appears in OUT_DIR;
- `write`: write `<ticket>.<stage>.txt` in the working directory, a change for a merge.
"""

import time

_T0 = time.time()

import os  # noqa: E402 - the clock is read before anything else
import sys  # noqa: E402

HOME = "$HOME"
TICK_S = 0.2  # how often a stub that may be released looks for its release file


def words(title: str) -> dict[str, str]:
    found = {}
    for word in title.split():
        name, sep, value = word.partition("=")
        found[name] = value if sep else "1"
    return found


def main() -> int:
    out = sys.argv[1] if len(sys.argv) > 1 else ""
    env = os.environ
    if out == HOME:
        out = env.get("HOME", "")
    said = words(env.get("ORCH_TICKET_TITLE", ""))
    stage = env.get("ORCH_STAGE", "")
    sleep_s = float(said.get(f"s.{stage}", said.get("sleep", "0")) or 0)
    f = None
    name = ""
    if out:
        ticket = env.get("ORCH_TICKET")
        name = f"{ticket}.{stage}.{env.get('ORCH_ATTEMPT', '')}" if ticket else f"pid-{os.getpid()}"
        f = open(os.path.join(out, name), "w")  # noqa: SIM115 - closed below, after the end time
        f.write(repr(_T0))
        f.flush()
        if sleep_s > 0:
            with open(os.path.join(out, name + ".pid"), "w") as p:
                p.write(str(os.getpid()))
    if "write" in said:
        with open(f"{env.get('ORCH_TICKET', 'stub')}.{stage}.txt", "w") as w:
            w.write(f"written at {_T0!r}\n")
    if sleep_s > 0:
        _stay(sleep_s, float(said.get("every", "0") or 0), out if "release" in said else "")
    sys.stdout.write('{"type":"result","subtype":"success","is_error":false}\n')
    sys.stdout.flush()
    if f is not None:
        f.write(" " + repr(time.time()))
        f.close()
    return 0


def _stay(sleep_s: float, every_s: float, release_dir: str) -> None:
    end = time.monotonic() + sleep_s
    next_line = time.monotonic() + every_s if every_s > 0 else float("inf")
    release = os.path.join(release_dir, "release") if release_dir else ""
    sys.stdout.write('{"type":"system","subtype":"init"}\n')
    sys.stdout.flush()
    while True:
        now = time.monotonic()
        if now >= end or (release and os.path.exists(release)):
            return
        if now >= next_line:
            sys.stdout.write('{"type":"assistant","message":{"content":[]}}\n')
            sys.stdout.flush()
            next_line = now + every_s
        wake = min(end, next_line)
        if release:
            wake = min(wake, now + TICK_S)
        time.sleep(max(0.0, wake - now))


if __name__ == "__main__":
    sys.exit(main())
