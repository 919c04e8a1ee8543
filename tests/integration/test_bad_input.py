"""Bad input, everywhere (property-based): whatever a producer or a CLI user gives,
it either becomes one valid queued job (record + one message) or is rejected with
an error naming the field, and then nothing at all was written. Never a traceback,
never a half-written job. Real Redis (db 6, no worker consuming it)."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import redis
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from nxjobs.jobs import KINDS, InvalidJob

BOUNDED = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

FIELDS = sorted(
    {name for k in KINDS.values() for name in k.payload_model.model_fields}
    | {"contacts", "params", "junk"}
)
phones = st.one_of(
    st.from_regex(r"\+?[0-9]{6,20}", fullmatch=True), st.text(max_size=25), st.integers(), st.none()
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 10**12),
    st.floats(allow_nan=True),
    st.text(max_size=40),
    phones,
)
contact = st.dictionaries(
    st.sampled_from(["user_phone", "user_name", "order_id", "params", "x"]),
    st.one_of(
        scalars,
        st.lists(
            st.dictionaries(st.sampled_from(["name", "value"]), scalars, max_size=2), max_size=2
        ),
    ),
    max_size=4,
)
values = st.one_of(
    scalars,
    st.lists(phones, max_size=4),
    st.lists(contact, max_size=3),
    st.dictionaries(st.text(max_size=5), scalars, max_size=2),
)
payloads = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS), values, max_size=6),
    st.lists(scalars, max_size=2),
    scalars,
)
VALID = {
    "call": {"phone": "8613800138000", "order_id": "ORDER1234"},
    "number-check": {"phones": ["8613800138000", "6591234567"], "check_level": 1},
    "ota-init": {"phone": "8615800001795", "user_ip": "203.0.113.7"},
    "wa-calling": {"business_phone": "6581234567"},
    "callbot-list": {
        "scene_id": "1",
        "task_name": "t",
        "contacts": [{"user_phone": "8613900139000"}],
    },
}


@st.composite
def near_valid(draw):
    """A valid job with at most one field replaced, dropped or added: the edge of validity."""
    kind = draw(st.sampled_from(sorted(VALID)))
    payload = dict(VALID[kind])
    action = draw(st.sampled_from(["keep", "replace", "drop", "add"]))
    name = draw(st.sampled_from(sorted(payload) if action in ("replace", "drop") else FIELDS))
    if action == "drop":
        payload.pop(name)
    elif action != "keep":
        payload[name] = draw(values)
    return kind, payload


kinds = st.one_of(
    st.sampled_from(list(KINDS)),
    st.text(max_size=12),
    st.integers(),
    st.lists(st.integers(), max_size=1),
)


@pytest.fixture(scope="module")
def db(redis_server):
    """db 6: nobody consumes it, so a queued job stays visible as a message."""
    url = redis_server.url.rsplit("/", 1)[0] + "/6"
    client = redis.Redis.from_url(url, decode_responses=True)
    client.flushdb()
    yield url, client
    client.flushdb()


def _messages(client, queue: str) -> int:
    # Kombu keeps one list per priority step: `agent`, `agent\x06\x163`, ...
    return sum(client.llen(k) for k in client.scan_iter(f"{queue}*") if client.type(k) == "list")


def _snapshot(client) -> tuple[int, dict[str, int]]:
    queues = {q: _messages(client, q) for q in ("agent", "callbot", "api2")}
    return client.dbsize(), queues


def _named_field_ok(field: str, payload) -> bool:
    head = field.split(".", 1)[0]
    keys = set(payload) if isinstance(payload, dict) else set()
    return bool(field) and (head in keys or head in FIELDS or head in ("kind", "payload"))


@BOUNDED
@given(job=st.one_of(near_valid(), st.tuples(kinds, payloads)))
def test_producer_input_is_a_valid_job_or_an_error_naming_the_field(db, job):
    kind, payload = job
    from nxjobs.producers import Producer

    url, client = db
    before = _snapshot(client)
    with Producer(url) as producer:
        try:
            job_id = producer.enqueue(kind, payload)
        except InvalidJob as exc:
            event("rejected")
            assert _named_field_ok(exc.field, payload), exc.field
            assert _snapshot(client) == before, "rejected input left something behind"
            return
        record = producer.get(job_id)
    event("accepted")
    # Accepted: exactly one queued record and exactly one message on its kind's queue.
    assert record is not None and record.state.value == "queued" and record.kind == kind
    queue = KINDS[kind].queue
    assert _messages(client, queue) == before[1][queue] + 1
    client.flushdb()


argv_parts = st.lists(
    st.one_of(
        st.sampled_from(
            [
                "--phone",
                "--order-id",
                "--show-phone",
                "--check-level",
                "--batch-no",
                "--user-ip",
                "--business-phone",
                "--scene-id",
                "--task-name",
                "--contact",
                "--payload",
                "--json",
            ]
        ),
        st.from_regex(r"[0-9]{4,14}", fullmatch=True),
        st.text(max_size=15),
        st.builds(json.dumps, payloads),
    ),
    max_size=8,
)


near_valid_argv = near_valid().map(lambda job: [job[0], "--payload", json.dumps(job[1])])


@BOUNDED
@given(
    argv=st.one_of(
        near_valid_argv,
        st.tuples(
            st.one_of(st.sampled_from(list(KINDS)), st.text(min_size=1, max_size=10)), argv_parts
        ).map(lambda t: [t[0], *t[1]]),
    )
)
def test_cli_submit_never_shows_a_traceback(db, monkeypatch, argv):
    from nxjobs import cli

    url, client = db
    monkeypatch.setenv("NXJOBS_REDIS_URL", url)
    before = _snapshot(client)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(["submit", *argv])
        except SystemExit as exc:  # argparse: a bad option value, named in its message
            code = exc.code
    text = err.getvalue()
    assert "Traceback" not in text
    event(f"exit {code}")
    if code == cli.EXIT_OK:
        assert _snapshot(client)[0] > before[0]
        client.flushdb()
        return
    assert code == cli.EXIT_INPUT, (code, text)
    assert text.startswith(("error: ", "usage: ")), text
    if text.startswith("error: "):
        assert ": " in text[len("error: ") :]  # "error: <field>: <why> (nothing was enqueued)"
    assert _snapshot(client) == before, "rejected input left something behind"
