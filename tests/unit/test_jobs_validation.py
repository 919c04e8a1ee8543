"""Producer input: every bad field is named; good input is normalised."""

import pytest

from nxjobs.jobs import KINDS, NUMBER_CHECK_MAX_PHONES, InvalidJob, validate_payload


@pytest.mark.parametrize(
    "kind, payload, field",
    [
        ("call", {}, "phone"),
        ("call", {"phone": "12ab5678"}, "phone"),
        ("call", {"phone": "+86 138 0013 8000"}, "phone"),
        ("call", {"phone": "8613800138000", "order_id": "a" * 33}, "order_id"),
        ("call", {"phone": "8613800138000", "order_id": "abc"}, "order_id"),
        ("call", {"phone": "8613800138000", "order_id": "abc-123"}, "order_id"),
        ("call", {"phone": "8613800138000", "colour": "red"}, "colour"),
        ("number-check", {"phones": []}, "phones"),
        ("number-check", {"phones": "8613800138000"}, "phones"),
        ("number-check", {"phones": ["8613800138000", "x"]}, "phones.1"),
        ("number-check", {"phones": ["8613800138000", "8613800138000"]}, "phones.1"),
        ("number-check", {"phones": ["8613800138000"], "check_level": 3}, "check_level"),
        ("number-check", {"phones": ["8613800138000"], "batch_no": "b" * 65}, "batch_no"),
        ("ota-init", {"phone": "8613800138000", "user_ip": "999.1.1.1"}, "user_ip"),
        ("ota-init", {"phone": "8613800138000"}, "user_ip"),
        ("wa-calling", {"business_phone": ""}, "business_phone"),
        ("callbot-list", {"scene_id": "s", "task_name": "t", "contacts": []}, "contacts"),
        (
            "callbot-list",
            {"scene_id": "", "task_name": "t", "contacts": [{"user_phone": "8613800138000"}]},
            "scene_id",
        ),
        (
            "callbot-list",
            {"scene_id": "s", "task_name": "t", "contacts": [{"user_phone": "1"}]},
            "contacts.0.user_phone",
        ),
        (
            "callbot-list",
            {
                "scene_id": "s",
                "task_name": "t",
                "contacts": [
                    {"user_phone": "8613800138000", "order_id": "o1"},
                    {"user_phone": "8613800138001", "order_id": "o1"},
                ],
            },
            "contacts.1.order_id",
        ),
        (
            "callbot-list",
            {
                "scene_id": "s",
                "task_name": "t",
                "task_callback_url": "ftp://x",
                "contacts": [{"user_phone": "8613800138000"}],
            },
            "task_callback_url",
        ),
        ("nonsense", {}, "kind"),
    ],
)
def test_bad_input_names_the_field(kind, payload, field):
    with pytest.raises(InvalidJob) as caught:
        validate_payload(kind, payload)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


def test_too_many_numbers_for_one_request():
    phones = [str(8613800000000 + i) for i in range(NUMBER_CHECK_MAX_PHONES + 1)]
    with pytest.raises(InvalidJob) as caught:
        validate_payload("number-check", {"phones": phones})
    assert caught.value.field == "phones"


def test_payload_must_be_an_object():
    with pytest.raises(InvalidJob) as caught:
        validate_payload("call", ["8613800138000"])
    assert caught.value.field == "payload"


def test_leading_plus_is_dropped_and_ip_normalised():
    assert validate_payload("call", {"phone": "+8613800138000"}).phone == "8613800138000"
    assert (
        validate_payload("ota-init", {"phone": "8613800138000", "user_ip": "2001:DB8::1"}).user_ip
        == "2001:db8::1"
    )


def test_every_kind_has_a_distinct_task_name_and_a_known_queue():
    names = [k.task_name for k in KINDS.values()]
    assert len(set(names)) == len(names)
    assert {k.queue for k in KINDS.values()} == {"agent", "callbot", "api2"}


def test_new_job_ids_are_distinct_version_4_uuids_in_32_hex_digits():
    import uuid

    from nxjobs.producers import new_job_ids

    ids = new_job_ids(2000)
    assert len(set(ids)) == 2000
    for job_id in ids[:50]:
        parsed = uuid.UUID(job_id)
        assert len(job_id) == 32 and parsed.hex == job_id
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
    assert new_job_ids(0) == []
