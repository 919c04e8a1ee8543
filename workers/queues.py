"""Celery queues and routes, derived from the wire contract in nxjobs.jobs."""

from kombu import Queue

from nxjobs.campaign import CONTROL_QUEUE, CONTROL_TASK
from nxjobs.coalesce import SPECS
from nxjobs.jobs import KINDS, QUEUES

TASK_QUEUES = tuple(Queue(name, routing_key=name) for name in QUEUES)
TASK_ROUTES = {
    kind.task_name: {"queue": kind.queue, "routing_key": kind.queue} for kind in KINDS.values()
}
# Coalesced jobs are flushed where their kind's credentials are (number checks on api2, contacts on
# callbot).
TASK_ROUTES.update(
    {spec.flush_task: {"queue": spec.family, "routing_key": spec.family} for spec in SPECS}
)
# Campaign control of a callbot list runs where the Callbot credentials are.
TASK_ROUTES[CONTROL_TASK] = {"queue": CONTROL_QUEUE, "routing_key": CONTROL_QUEUE}
