"""The Celery app: every option explicit, each with the reason it is set.

Start workers with `nxjobs worker` (or `python -m workers worker`), Flower with
`celery -A workers.celery_app flower`.
"""

from __future__ import annotations

from celery import Celery, signals

from config.settings import load_settings
from nxjobs.coalesce import SPECS, SWEEP_TASK
from nxjobs.jobs import KINDS, QUEUES
from workers.delivery import broker_target, broker_transport_options, check_visibility
from workers.queues import TASK_QUEUES, TASK_ROUTES

settings = load_settings()
# Refuse to start if a countdown could outlive the visibility timeout (duplicate delivery).
check_visibility(settings)

app = Celery(
    "nxjobs",
    include=[
        "tasks.calls",
        "tasks.callbot",
        "tasks.api2",
        "tasks.coalesce",
        "tasks.reconcile",
        "tasks.notify",
    ],
)
broker = broker_target(settings)
app.conf.update(
    # NXJOBS_BROKER_URL, or the record store's NXJOBS_REDIS_URL (docs/configuration.md § Redis);
    # a sentinel:// URL names its master in broker_transport_options, a rediss:// one verifies
    # the server with NXJOBS_REDIS_TLS__*.
    broker_url=broker.url,
    broker_use_ssl=broker.kombu_ssl(),
    # https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-serializer
    # JSON only: never unpickle what arrives from a shared broker.
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    event_serializer="json",
    # Job records in Redis (nxjobs.store) are the result store; Celery's would duplicate them.
    result_backend=None,
    task_ignore_result=True,
    # Ack after the attempt is recorded; a worker lost mid-attempt gives the job back.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    # One message per worker process at a time: long jobs do not strand others behind them.
    worker_prefetch_multiplier=1,
    # A queue per API family so each scales, and is throttled, on its own.
    task_queues=TASK_QUEUES,
    task_routes=TASK_ROUTES,
    task_default_queue="api2",
    task_create_missing_queues=False,
    # Hard and soft limits per attempt; HTTP timeouts (seconds) are far shorter.
    task_time_limit=settings.task_time_limit_s,
    task_soft_time_limit=settings.task_soft_time_limit_s,
    # Unacked messages (including countdown retries held by a worker) come back
    # after this long if their worker vanished; it must exceed the longest
    # countdown plus the task time limit (check_visibility above enforces it).
    broker_transport_options=broker_transport_options(settings),
    # Task events for Flower: states need -E (set by `nxjobs worker`) and "sent" needs this.
    worker_send_task_events=True,
    task_send_sent_event=True,
    # Those events in batches (workers/event_batching.py): one message each cost a third of
    # the worker main process's CPU.
    worker_consumer="workers.event_batching:BatchingConsumer",
    task_track_started=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=True,
    worker_log_format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s",
    worker_task_log_format=(
        "%(asctime)s %(levelname)s %(processName)s %(task_name)s[%(task_id)s]: %(message)s"
    ),
    enable_utc=True,
    # Sends only while holding the beat lock (workers/beat.py): two beats never double a
    # periodic task.
    beat_scheduler="workers.beat:LockedScheduler",
)


def _per_family(name: str, task: str, interval_s: float, families) -> dict:
    """Beat entries running `task(family)` every `interval_s`, one per API family, each on that
    family's queue so it runs on a worker holding that family's credentials; `expires` drops a
    tick nobody consumed in time."""
    return {
        f"{name}-{family}": {
            "task": task,
            "schedule": interval_s,
            "args": (family,),
            "options": {"queue": family, "routing_key": family, "expires": interval_s},
        }
        for family in families
    }


# https://docs.celeryq.dev/en/stable/userguide/periodic-tasks.html
# Run by `celery -A workers.celery_app beat` (one sends at a time: workers/beat.py):
# - reconcile jobs whose callbacks are late (a run that finds another still going skips:
#   Redis lock);
# - re-publish jobs whose broker message was lost (a worker killed between kombu's BRPOP and its
#   unacked bookkeeping; nxjobs/recover.py);
# - flush again coalesced jobs whose flush message was lost (nxjobs/coalesce.py), for the families
#   that coalesce, so a deployment running only some families still sweeps its own.
app.conf.beat_schedule = {
    **_per_family(
        "reconcile-callbacks",
        "nxjobs.reconcile_callbacks",
        settings.callbacks.reconcile_interval_s,
        QUEUES,
    ),
    **_per_family(
        "recover-lost-messages", "nxjobs.recover_lost_messages", settings.recover.interval_s, QUEUES
    ),
    **_per_family(
        "coalesce-sweep",
        SWEEP_TASK,
        settings.coalesce.sweep_interval_s,
        sorted({spec.family for spec in SPECS}),
    ),
}


# Logs: JSON lines when NXJOBS_LOG_FORMAT=json (containers), Celery's text format otherwise.
@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _log_format(logger=None, **_kwargs) -> None:
    from workers.logs import apply_format

    apply_format(logger, settings.log_format)


# Flower shows what the message's `kwargsrepr` header says. Every job message this app
# publishes (retries, waits for a rate-limit slot) gets the producer's view: the kind
# first, secrets redacted, phones masked, long lists cut (nxjobs.redact.flower_repr).
_KIND_BY_TASK = {kind.task_name: kind.name for kind in KINDS.values()}


@signals.before_task_publish.connect
def _flower_kwargsrepr(sender=None, headers=None, body=None, **_kwargs) -> None:
    kind = _KIND_BY_TASK.get(sender)
    if kind and headers is not None and isinstance(body, (tuple, list)) and len(body) >= 2:
        from nxjobs.redact import flower_repr

        headers["kwargsrepr"] = flower_repr(body[1] or {}, kind)


# Each worker lists the messages it holds and puts back a dead worker's at once (nxjobs/held.py),
# instead of after the visibility timeout.
@signals.worker_ready.connect
def _start_held(sender=None, **_kwargs) -> None:
    from workers import held

    held.start(app, sender, settings)
    # A worker of the notify queue dispatches job events to webhooks (workers/notify.py).
    from workers import notify

    notify.start(app, sender, settings)


@signals.worker_shutdown.connect
def _stop_held(**_kwargs) -> None:
    from workers import held

    held.stop()
    from workers import notify

    notify.stop()


# Each worker's main process publishes the scheduled jobs that are due (nxjobs/schedule.py).
@signals.worker_ready.connect
def _start_schedule(sender=None, **_kwargs) -> None:
    from workers import schedule

    schedule.start(app, settings)


@signals.worker_shutdown.connect
def _stop_schedule(**_kwargs) -> None:
    from workers import schedule

    schedule.stop()
