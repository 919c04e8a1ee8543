"""Celery queues and routes, derived from the wire contract in nxjobs.jobs."""

from kombu import Queue

from nxjobs.coalesce import FLUSH_TASK
from nxjobs.jobs import KINDS, QUEUE_API2, QUEUES

TASK_QUEUES = tuple(Queue(name, routing_key=name) for name in QUEUES)
TASK_ROUTES = {kind.task_name: {"queue": kind.queue, "routing_key": kind.queue} for kind in KINDS.values()}
# Coalesced Number Checks are flushed where the api2 credentials are.
TASK_ROUTES[FLUSH_TASK] = {"queue": QUEUE_API2, "routing_key": QUEUE_API2}
