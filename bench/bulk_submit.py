"""Bulk submission from a file: time and peak memory of `nxjobs submit ... --file` on a million
rows.

    python bench/bulk_submit.py [--rows 1000000] [--kind number-check|callbot-list] [--bound-mb 200]

Writes a CSV of distinct valid phones (plus a few bad rows), starts a private
redis-server, runs the real CLI as a child process (`--skip-invalid`, so the bad
rows are reported and the rest enqueued), then prints the wall time, the child's
peak RSS (getrusage of the finished child) and what landed in Redis. Exits 1 if
the peak RSS exceeds --bound-mb or the jobs enqueued do not cover every valid row.
No worker runs: this measures the producer side only.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workers.devstack import RedisServer  # noqa: E402

BAD_ROWS = ("not-a-phone", "123", "86 138 0013 8000")


def write_file(path: Path, kind: str, rows: int) -> int:
    """`rows` data rows (a header first); every 250 000th is bad. Returns the number of bad rows."""
    bad = 0
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["phone"] if kind == "number-check" else ["user_phone", "order_id", "user_name"])
        for i in range(rows):
            if i % 250_000 == 7:
                w.writerow(
                    [BAD_ROWS[bad % len(BAD_ROWS)]]
                    if kind == "number-check"
                    else [BAD_ROWS[bad % len(BAD_ROWS)], "", ""]
                )
                bad += 1
                continue
            phone = f"86{13_000_000_000 + i}"
            w.writerow([phone] if kind == "number-check" else [phone, f"o{i}", f"user {i}"])
    return bad


def run(rows: int, kind: str, bound_mb: float) -> int:
    with tempfile.TemporaryDirectory(prefix="nxjobs-bulk-") as tmp, RedisServer() as redis_server:
        data = Path(tmp) / "rows.csv"
        t0 = time.monotonic()
        bad = write_file(data, kind, rows)
        print(
            f"wrote {rows:,} rows ({bad} bad) to a {data.stat().st_size / 1e6:.1f} MB CSV "
            f"in {time.monotonic() - t0:.1f}s"
        )
        env = {**os.environ, "NXJOBS_REDIS_URL": redis_server.url}
        args = (
            [sys.executable, "-m", "nxjobs.cli", "submit", "number-check", "--file", str(data)]
            if kind == "number-check"
            else [
                sys.executable,
                "-m",
                "nxjobs.cli",
                "submit",
                "callbot-list",
                "--scene-id",
                "1",
                "--task-name",
                "bench",
                "--contacts",
                str(data),
            ]
        )
        args += ["--skip-invalid", "--no-progress", "--rejects", str(Path(tmp) / "rejects.csv")]
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t0 = time.monotonic()
        proc = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True)
        elapsed = time.monotonic() - t0
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: KiB
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return 1
        job_ids = proc.stdout.split()
        import redis

        client = redis.Redis.from_url(redis_server.url, decode_responses=True)
        queued = sum(client.llen(k) for k in client.keys("api2*") + client.keys("callbot*"))
        counted = 0
        for job_id in job_ids:
            inp = json.loads(client.hget(f"nxjobs:job:{job_id}", "input"))
            counted += len(inp["phones"] if kind == "number-check" else inp["contacts"])
        rejected = sum(1 for _ in open(Path(tmp) / "rejects.csv")) - 1
        print(
            f"submit: {elapsed:.1f}s for {rows:,} rows ({rows / elapsed:,.0f} rows/s); "
            f"{len(job_ids)} jobs, {queued} messages queued, {counted:,} rows in them, "
            f"{rejected} rejected"
        )
        print(
            f"peak RSS of the submit process: {peak_mb:.0f} MB (bound {bound_mb:.0f} MB)"
            + ("" if before == 0 else " [note: an earlier child set the high-water mark]")
        )
        ok = (
            counted == rows - bad
            and rejected == bad
            and queued == len(job_ids)
            and peak_mb <= bound_mb
        )
        print("OK" if ok else "FAILED")
        return 0 if ok else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--kind", choices=["number-check", "callbot-list"], default="number-check")
    p.add_argument("--bound-mb", type=float, default=200.0, help="fail above this peak RSS (MB)")
    args = p.parse_args()
    return run(args.rows, args.kind, args.bound_mb)


if __name__ == "__main__":
    sys.exit(main())
