"""What the interop scripts share: named checks, their tally, free loopback ports, waiting,
the files every test server's config names."""
import os
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


def server_files(tmp, policies):
    """A key-encryption key file (0600) and a policy folder holding `policies`, in `tmp`."""
    kek = os.path.join(tmp, "kek")
    with open(kek, "w") as f:
        f.write(os.urandom(32).hex())
    os.chmod(kek, 0o600)
    policy_dir = os.path.join(tmp, "policies")
    os.makedirs(policy_dir)
    with open(os.path.join(policy_dir, "interop.cedar"), "w") as f:
        f.write(policies)
    return kek, policy_dir
