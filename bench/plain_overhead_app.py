"""The ota-init task a user would write without nxjobs: sign with our signing code, POST with
`requests` on a module-level Session, keep the result in Celery's Redis result backend.

Used only by bench/overhead.py, side by side with nxjobs' own ota-init task.
"""

import os
import time

import requests
from celery import Celery

from nxjobs.client.signing import api2_headers, serialize_body

REDIS_URL = os.environ["NXJOBS_REDIS_URL"]
app = Celery("plain-overhead", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    worker_prefetch_multiplier=1,
)
session = requests.Session()


@app.task(name="plain.ota_init")
def ota_init(phone: str, user_ip: str) -> dict:
    body = {"appkey": os.environ["NXJOBS_API2__APPKEY"], "phone": phone, "userIp": user_ip}
    text = serialize_body(body)
    headers = api2_headers(
        access_key=os.environ["NXJOBS_API2__ACCESS_KEY"],
        access_secret=os.environ["NXJOBS_API2__ACCESS_SECRET"],
        action="init",
        biz_type=6,
        ts_ms=int(time.time() * 1000),
        body_text=text,
    )
    headers["Content-Type"] = "application/json; charset=utf-8"
    resp = session.post(
        os.environ["NXJOBS_API2__BASE_URL"].rstrip("/") + "/api/ota/init",
        data=text.encode("utf-8"),
        headers=headers,
        timeout=(3, 15),
    )
    resp.raise_for_status()
    answer = resp.json()
    if str(answer.get("code")) != "0":
        raise RuntimeError(f"ota init refused: {answer.get('code')} {answer.get('message')}")
    data = answer.get("data") or {}
    return {"requestId": data.get("requestId"), "url": data.get("url")}
