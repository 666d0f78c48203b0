"""The first process of a model's box: joins the model's cgroups, then becomes bubblewrap.

It runs as the supervisor's user, outside the box, for an instant: it writes its own pid into each
``cgroup.procs`` it is given and executes the rest of its command line. Joining before the exec
means that everything the box ever runs (bubblewrap, the keeper, the host, every scoring server
and whatever they fork) is inside the model's limits from its first instruction; moving a
process in afterwards would race with its first fork. A join that fails stops the start (exit
70): a model never runs without the limits it was given. Stdlib only and run as a plain script.
"""

from __future__ import annotations

import os
import sys

JOIN_FAILED = 70


def main(argv: list[str]) -> int:
    if "--" not in argv:
        print("usage: enter.py [--join CGROUP_PROCS_FILE]... -- COMMAND...", file=sys.stderr)
        return 2
    split = argv.index("--")
    options, command = argv[:split], argv[split + 1:]
    joins = [options[i + 1] for i, opt in enumerate(options[:-1]) if opt == "--join"]
    for path in joins:
        try:
            with open(path, "w") as f:
                f.write(str(os.getpid()))
        except OSError as exc:
            print(f"modelserve: cannot join the model's cgroup {path}: {exc}", file=sys.stderr, flush=True)
            return JOIN_FAILED
    if not command:
        return 2
    os.execvp(command[0], command)
    return 127  # not reached: execvp raises on failure


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
