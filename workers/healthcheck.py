"""`python -m workers.healthcheck http URL | file GLOB MAX_AGE_S`: container health checks,
stdlib only.

`http`: exit 0 if URL answers 2xx within 5 s. `file`: exit 0 if the newest file
matching GLOB was modified within MAX_AGE_S (Celery beat rewrites its schedule
file as it runs the reconciliation every NXJOBS_CALLBACKS__RECONCILE_INTERVAL_S).
"""

from __future__ import annotations

import glob
import os
import sys
import time
import urllib.request


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "http":
        try:
            with urllib.request.urlopen(argv[1], timeout=5) as resp:
                return 0 if 200 <= resp.status < 300 else 1
        except OSError as exc:
            print(f"unhealthy: {exc}", file=sys.stderr)
            return 1
    if len(argv) == 3 and argv[0] == "file":
        mtimes = [os.path.getmtime(p) for p in glob.glob(argv[1])]
        age = time.time() - max(mtimes) if mtimes else float("inf")
        if age > float(argv[2]):
            print(f"unhealthy: {argv[1]} not written for {age:.0f}s", file=sys.stderr)
            return 1
        return 0
    print(" ".join(__doc__.split("\n\n")[0].splitlines()), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
