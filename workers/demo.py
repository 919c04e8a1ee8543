"""`make demo`: one job of every kind, end to end, on a local Redis and the sandbox.

Starts a private redis-server, the NXCloud sandbox, the callback receiver and a
Celery worker; submits one job of each kind (the number check is first answered
"too frequent" so the retry path runs for real; the callbot contact joins the
callbot list's task once that exists, through the coalescing path); waits until every job is
completed, i.e. its callbacks arrived (the sandbox sends them late, some twice,
out of order); prints each record with its callbacks; stops everything it
started. Calling hours are on (09:00-20:00 local, every day): the call goes to a number where it
is daytime now, chosen at run time, and a second call to one where it is night is shown deferred
(`scheduled` for its next opening, with the reason). Exit 0 only if every job got there.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from workers.devstack import RedisServer, start_callbacks, start_sandbox, start_worker

DEMO_TIMEOUT_S = 90.0

# Calling hours for the demo's producer and worker: the default window, on every day.
DEMO_HOURS = {
    "NXJOBS_CALLING_HOURS__ENABLED": "true",
    "NXJOBS_CALLING_HOURS__WINDOW": "09:00-20:00",
    "NXJOBS_CALLING_HOURS__DAYS": "mon,tue,wed,thu,fri,sat,sun",
}
# Numbers with one time zone each, from UTC-8 to UTC+11: no two neighbours more than 6 h apart,
# so at any instant one of them is near mid-afternoon and one near the middle of the night.
CALL_NUMBERS = (
    "13105550123",  # America/Los_Angeles
    "525512345678",  # America/Mexico_City
    "12125550123",  # America/New_York
    "551123456789",  # America/Sao_Paulo
    "442071234567",  # Europe/London
    "4930123456",  # Europe/Berlin
    "971412345678",  # Asia/Dubai
    "912212345678",  # Asia/Kolkata
    "8613800138000",  # Asia/Shanghai
    "81312345678",  # Asia/Tokyo
    "61212345678",  # Australia/Sydney
)


def pick_calls(policy, now: datetime) -> tuple[str, str]:
    """(a number whose window is open now and for a while, one whose window is closed now), by
    the callee's local time (nxjobs.calling_hours)."""
    from nxjobs.calling_hours import zones_for

    def away_from(phone: str, target: int) -> int:
        """Minutes between the callee's local time now and `target` (minutes of the day)."""
        local = now.astimezone(ZoneInfo(zones_for(phone)[1][0]))
        gap = abs(local.hour * 60 + local.minute - target)
        return min(gap, 1440 - gap)

    day = min(CALL_NUMBERS, key=lambda phone: away_from(phone, 14 * 60 + 30))
    night = min(CALL_NUMBERS, key=lambda phone: away_from(phone, 2 * 60 + 30))
    if not (policy.is_open(day, now) and policy.is_open(day, now + timedelta(minutes=10))):
        raise RuntimeError(f"no number among the demo's is inside its calling hours at {now}")
    if policy.defer(night, None, now) is None:
        raise RuntimeError(f"no number among the demo's is outside its calling hours at {now}")
    return day, night


def submit_all(producer, call_phone: str) -> dict[str, str]:
    return {
        "call": producer.call(phone=call_phone),
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
            os.environ.update(DEMO_HOURS)  # this process's producer, and the worker below
            env = {
                **os.environ,
                **sandbox_env(sandbox_url),
                **DEMO_HOURS,
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
                day, night = pick_calls(producer.calling_hours, datetime.now(UTC))
                jobs = submit_all(producer, day)
                for kind, job_id in jobs.items():
                    print(f"submitted {kind:<15} {job_id}")
                # Night at the callee's: not sent, not dropped; it waits for the next opening.
                deferred = producer.call(phone=night)
                print(f"submitted {'call (night)':<15} {deferred}")
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
                late = producer.get(deferred)

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
            print(f"\n== call to a number where it is night now {deferred}")
            print(
                json.dumps(
                    late.model_dump(mode="json") if late else None, ensure_ascii=False, indent=2
                )
            )
            if (
                late is None
                or late.state != JobState.SCHEDULED
                or not (late.schedule_note or "").startswith("deferred: calling hours ")
            ):
                ok = False
            parts.append(
                f"call(night)={late.state.value if late else 'missing'}"
                f"(run_at {late.run_at if late else '?'}: {late.schedule_note if late else ''})"
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
