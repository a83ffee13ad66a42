"""``stepbus`` run by a user that file modes bind, as a script: ``python unprivileged_stepbus.py DIR ARG...``.

``chmod 0o555`` does not stop root, and the tests run as root. So this script changes into ``DIR`` and, when it is
root, first runs the same command with ``--dry-run`` (output discarded) so that everything the command imports is
imported, then drops to uid/gid 65534 and runs ``stepbus ARG...`` for real, exiting with its code. Paths in the
arguments are relative to ``DIR``: after the drop no parent directory has to be searchable, and the interpreter may
live where that user cannot read (a 0700 home), which is why nothing may be imported after it.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys


def main() -> int:
    directory, args = sys.argv[1], sys.argv[2:]
    os.chdir(directory)
    from trainers.checkpoint import disk_space, format, run_lock  # noqa: F401 - before the drop (see above)
    from trainers.cli import main as stepbus
    from trainers.cli import outcome  # noqa: F401

    if os.geteuid() == 0:
        with contextlib.redirect_stdout(io.StringIO()):
            code = stepbus([*args, "--dry-run"])
        if code != 0:
            raise SystemExit(f"the dry run as root failed with exit code {code}")
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
    return stepbus(args)


if __name__ == "__main__":
    sys.exit(main())
