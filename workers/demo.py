"""`make demo`: one job of every kind, end to end, on a local Redis and the sandbox.

Starts a private redis-server, the NXCloud sandbox, the callback receiver and a
Celery worker; submits one job of each kind (the number check is first answered
"too frequent" so the retry path runs for real; the callbot contact joins the
callbot list's task once that exists, through the coalescing path); waits until every job is
completed, i.e. its callbacks arrived (the sandbox sends them late, some twice,
out of order); prints each record with its callbacks; stops everything it
started. Exit 0 only if every job got there.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time

from workers.devstack import RedisServer, start_callbacks, start_sandbox, start_worker

DEMO_TIMEOUT_S = 90.0


def submit_all(producer) -> dict[str, str]:
    return {
        "call": producer.call(phone="8613800138000"),
        "callbot-list": producer.callbot_list(
            scene_id="demo-scene",
            task_name="nxjobs demo",
            contacts=[
                {"user_phone": "8613900139000", "user_name": "Demo One"},
                {
                    "user_phone": "8613900139001",
                    "user_name": "Demo Two",
                    "params": [{"name": "amount", "value": "42"}],
                },
            ],
        ),
        "number-check": producer.number_check(
            phones=["8613800138000", "6591234567"], check_level=1
        ),
        "ota-init": producer.ota_init(phone="8615800001795", user_ip="203.0.113.7"),
        "wa-calling": producer.wa_calling(business_phone="6581234567"),
    }


def _wait_sent(control, timeout_s: float) -> None:
    """Until every callback the sandbox queued (and its duplicate copies) was answered
    or given up."""
    deadline = time.monotonic() + timeout_s
    with control:
        while time.monotonic() < deadline:
            c = control.stats()["callbacks"]
            if c["delivered"] + c["expired"] >= c["queued"] - c["dropped"] + c["duplicated"]:
                return
            time.sleep(0.1)


def main() -> int:
    from nxjobs.producers import Producer
    from nxjobs.records import JobState
    from sandbox.accounts import sandbox_env
    from sandbox.control import SandboxControl

    started = time.monotonic()
    worker = sandbox = receiver = None
    token = secrets.token_urlsafe(24)  # this run's callback token
    with RedisServer() as redis_server:
        try:
            # Callbacks 0.3-1.3 s after the event, a fifth of them twice: out of order and repeated.
            sandbox, sandbox_url = start_sandbox(
                "--callback-delay",
                "0.3",
                "--callback-jitter",
                "1.0",
                "--callback-duplicate-rate",
                "0.2",
            )
            env = {
                **os.environ,
                **sandbox_env(sandbox_url),
                "NXJOBS_REDIS_URL": redis_server.url,
                "NXJOBS_CALLBACKS__TOKEN": token,
            }
            receiver, receiver_url = start_callbacks(env)
            env["NXJOBS_CALLBACKS__PUBLIC_URL"] = receiver_url
            print(
                f"redis     {redis_server.url}\nsandbox   {sandbox_url}\ncallbacks {receiver_url}"
            )
            worker = start_worker(env, concurrency=2)
            print(f"worker  ready ({worker.logfile})")

            with SandboxControl(sandbox_url) as control:
                # The CDR URL is registered with the vendor, not sent per request (docs/provider.md
                # §7.3).
                control.configure(cdr_callback_url=f"{receiver_url}/callbacks/agent/cdr/{token}")
                # Exercise the throttle path: the first number check is told "too frequent".
                control.script("/api/number/check", 2206, times=1)
            with Producer(redis_server.url) as producer:
                jobs = submit_all(producer)
                for kind, job_id in jobs.items():
                    print(f"submitted {kind:<15} {job_id}")
                # A contact is added to an existing task: the list's, once its task was created.
                task = jobs["callbot-list"]
                producer.wait([task], until="submitted", timeout_s=DEMO_TIMEOUT_S)
                jobs["callbot-contact"] = producer.callbot_contact(
                    user_task_id=task,
                    contact={"user_phone": "8613900139002", "user_name": "Demo Three"},
                )
                print(f"submitted {'callbot-contact':<15} {jobs['callbot-contact']}")
                records = producer.wait(jobs.values(), until="completed", timeout_s=DEMO_TIMEOUT_S)
                # Out of order: a call or order callback may land after the task callback completed
                # its list. Let the sandbox finish sending, then read the records again.
                _wait_sent(SandboxControl(sandbox_url), timeout_s=5.0)
                records = producer.store.get_many(jobs.values())

            ok = True
            parts = []
            for kind, job_id in jobs.items():
                record = records[job_id]
                print(f"\n== {kind} {job_id}")
                print(
                    json.dumps(
                        record.model_dump(mode="json") if record else None,
                        ensure_ascii=False,
                        indent=2,
                    )
                )
                if record is None or not record.reached(JobState.COMPLETED):
                    ok = False
                parts.append(
                    f"{kind}={record.state.value if record else 'missing'}"
                    f"({len(record.callbacks) if record else 0} callbacks)"
                )
            summary = ", ".join(parts)
            print(f"\n{'OK' if ok else 'FAILED'}: {summary} ({time.monotonic() - started:.1f}s)")
            if not ok:
                print("worker log tail:\n" + worker.log_tail(40), file=sys.stderr)
            return 0 if ok else 1
        finally:
            for proc in (worker, receiver, sandbox):
                if proc is not None:
                    proc.stop()
                    proc.cleanup()


if __name__ == "__main__":
    sys.exit(main())
