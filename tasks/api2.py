"""api2 tasks: Number Check submit, OTA init, WhatsApp calling query."""

from celery import shared_task

from nxjobs.client import operations
from nxjobs.jobs import KINDS
from tasks.base import JobTask


@shared_task(name=KINDS["number-check"].task_name, bind=True, base=JobTask)
def check_numbers(
    self: JobTask, job_id: str, payload: dict, slot_at_us: int | None = None, resumed: bool = False
) -> str:
    # slot_at_us / resumed are set only by our own re-queues (rate-limit waits).
    return self.run_job(
        job_id, "number-check", payload, _check_numbers, slot_at_us=slot_at_us, resumed=resumed
    )


@shared_task(name=KINDS["ota-init"].task_name, bind=True, base=JobTask)
def ota_init(
    self: JobTask, job_id: str, payload: dict, slot_at_us: int | None = None, resumed: bool = False
) -> str:
    # slot_at_us / resumed are set only by our own re-queues (rate-limit waits).
    return self.run_job(
        job_id, "ota-init", payload, _ota_init, slot_at_us=slot_at_us, resumed=resumed
    )


@shared_task(name=KINDS["wa-calling"].task_name, bind=True, base=JobTask)
def wa_calling(
    self: JobTask, job_id: str, payload: dict, slot_at_us: int | None = None, resumed: bool = False
) -> str:
    # slot_at_us / resumed are set only by our own re-queues (rate-limit waits).
    return self.run_job(
        job_id, "wa-calling", payload, _wa_calling, slot_at_us=slot_at_us, resumed=resumed
    )


def _check_numbers(svc, job_id, payload, outcome):
    callbacks = svc.settings.callbacks
    return operations.check_numbers(
        svc.api2,
        job_id=job_id,
        payload=payload,
        appkey=svc.settings.api2.appkey,
        public_url=callbacks.public_url,
        outcome=outcome,
        callback_token=callbacks.token.get_secret_value() if callbacks.token else None,
    )


def _ota_init(svc, job_id, payload, outcome):
    return operations.ota_init(
        svc.api2, payload=payload, appkey=svc.settings.api2.appkey, outcome=outcome
    )


def _wa_calling(svc, job_id, payload, outcome):
    return operations.wa_calling(
        svc.api2, payload=payload, appkey=svc.settings.api2.appkey, outcome=outcome
    )
