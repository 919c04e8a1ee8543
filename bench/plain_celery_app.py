"""The baseline users would otherwise write: a bare Celery task with
`rate_limit="Q/s"` that retries "too frequent" after a second.

Used only by bench/ratelimit.py, side by side with nxjobs' global limiter.
"""

import os
import time

from celery import Celery

from nxjobs.client.api2 import Api2Client
from nxjobs.client.errors import ProviderError
from nxjobs.client.transport import Transport
from nxjobs.redis_conn import connect

QUOTA = os.environ.get("BENCH_QUOTA", "20")
app = Celery("plain", broker=os.environ["NXJOBS_REDIS_URL"])
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
)
_client = None
_redis = None


@app.task(name="plain.wa_calling", bind=True, rate_limit=f"{QUOTA}/s", max_retries=None)
def wa_calling(self, business_phone: str) -> None:
    global _client, _redis
    if _client is None:
        _client = Api2Client(
            Transport(connect_timeout_s=3, read_timeout_s=15),
            base_url=os.environ["NXJOBS_API2__BASE_URL"],
            access_key=os.environ["NXJOBS_API2__ACCESS_KEY"],
            access_secret=os.environ["NXJOBS_API2__ACCESS_SECRET"],
        )
        _redis = connect(os.environ["NXJOBS_REDIS_URL"])
    try:
        _client.post(
            "/api/wa/calling/get",
            biz_type=2,
            action="mt",
            body={"appkey": os.environ["NXJOBS_API2__APPKEY"], "business_phone": business_phone},
        )
    except ProviderError as err:
        if err.code == "2206":
            raise self.retry(countdown=1) from err
        raise
    _redis.rpush("bench:plain:accepted", time.time())
