"""A second hook handler for ``record.py``: writes what Claude Code gave the hook (its
stdin, and the environment variables a hook may read) to a file of its own in the
directory named by argv[1]. Standard library only; always exits 0, prints nothing."""

import time

T0 = time.time_ns()  # first: the order of the captures is the order of these stamps

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

KEEP_PREFIXES = ("CLAUDE", "CONTEXTUATE_")
KEEP = ("HOSTNAME",)


def main() -> None:
    raw = sys.stdin.buffer.read()
    t = T0
    env = {k: v for k, v in os.environ.items() if k.startswith(KEEP_PREFIXES) or k in KEEP}
    try:
        payload = json.loads(raw)
    except ValueError:
        payload = raw.decode("utf-8", "replace")
    path = os.path.join(sys.argv[1], f"{t:020d}-{os.getpid()}.json")
    with open(path + ".part", "w", encoding="utf-8") as f:
        json.dump({"t": t, "stdin": payload, "env": env}, f)
    os.replace(path + ".part", path)


if __name__ == "__main__":
    try:
        main()
    except Exception:
        pass
