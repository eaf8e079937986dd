"""What the interop scripts share: named checks, their tally, free loopback ports, waiting."""
import socket
import sys
import time

RESULTS = []


def check(name, cond, detail=""):
    """Records and prints one named check; `detail` is shown when it fails."""
    RESULTS.append((name, bool(cond)))
    print(("ok   " if cond else "FAIL ") + name + (f": {detail}" if detail and not cond else ""), flush=True)


def all_passed():
    return all(ok for _, ok in RESULTS)


def finish():
    """Prints 'N passed, N failed' and exits non-zero on a failure."""
    failed = sum(1 for _, ok in RESULTS if not ok)
    print(f"{len(RESULTS) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(cond, seconds, step=0.2):
    """True once `cond()` is, within `seconds`; an exception counts as not yet."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if cond():
                return True
        except Exception:  # the thing waited for is not there yet
            pass
        time.sleep(step)
    return False
