"""Pure parts of coalescing Callbot contacts: groups, correlation of call/order callbacks by
orderID, which errList entries fail a member, and each member's share of an addBatchCall answer."""

from config.settings import CoalesceSettings
from nxjobs import coalesce, correlate, keys, wire
from nxjobs.attempts.senders import Batch, ContactSender, sender_of
from nxjobs.callbacks import events
from nxjobs.client import operations
from nxjobs.jobs import validate_payload

ORDER = b'{"userTaskID": "task-1", "orderID": "o-1", "finish": %s, "userPhone": "8613900139000"}'


def test_contact_groups_name_their_task_and_flush_on_the_callbot_queue():
    group = coalesce.contact_group("task-1")
    assert coalesce.user_task_id_of(group) == "task-1"
    assert (
        coalesce.spec_of(group) is coalesce.CONTACTS
        and coalesce.spec_of("nc1") is coalesce.NUMBER_CHECKS
    )
    assert (coalesce.CONTACTS.family, coalesce.CONTACTS.flush_task) == (
        "callbot",
        "nxjobs.callbot_contact_batch",
    )
    settings = CoalesceSettings(max_contacts=7)
    assert (
        coalesce.CONTACTS.max_items(settings) == 7
        and coalesce.NUMBER_CHECKS.max_items(settings) == 2000
    )
    assert CoalesceSettings().max_contacts == 500
    assert isinstance(sender_of(group), ContactSender)


def test_an_order_callback_finds_a_contact_job_by_order_id_and_counts_only_when_finished():
    finished = events.parse(events.CALLBOT_ORDER, ORDER % b"true")
    # tried first: the contact job of that orderID; else the list job whose id is the userTaskID
    assert finished.index_keys == (keys.callback_index("cb-order", "o-1"),)
    assert (finished.job_kind, finished.direct_id, finished.unit) == ("callbot-list", "task-1", "")
    assert (finished.alt_kind, finished.alt_unit) == ("callbot-contact", events.ORDER_FINISHED)
    assert events.parse(events.CALLBOT_ORDER, ORDER % b"false").alt_unit == ""
    assert "8613900139000" not in str(finished.data)


def test_a_call_callback_belongs_to_the_contact_job_but_completes_nothing():
    call = events.parse(
        events.CALLBOT_CALL,
        b'{"userTaskID": "task-1", "orderID": "o-1", "finish": true,'
        b' "callInfoDetail": {"callID": "c1"}}',
    )
    assert call.index_keys == (keys.callback_index("cb-order", "o-1"),)
    assert (call.alt_kind, call.alt_unit, call.unit) == ("callbot-contact", "", "")


def test_a_contact_job_is_correlated_by_its_order_id_from_enqueue_to_submit():
    model = validate_payload(
        "callbot-contact", {"user_task_id": "t", "contact": {"user_phone": "8613800138000"}}
    )
    assert correlate.on_enqueue("callbot-contact", "job1", model) == correlate.Expectation(
        1,
        (keys.callback_index("cb-order", "job1"),),
        {keys.PROOF_TASK: "t"},
        callbacks_max=correlate.CONTACT_CALLBACKS_MAX,
    )
    own = validate_payload(
        "callbot-contact",
        {"user_task_id": "t", "contact": {"user_phone": "8613800138000", "order_id": "mine"}},
    )
    assert correlate.on_enqueue("callbot-contact", "job1", own).index_keys == (
        correlate.contact_index("mine"),
    )
    assert correlate.on_submit("callbot-contact", {"orderID": "mine"}).index_keys == (
        correlate.contact_index("mine"),
    )


def test_already_present_is_added_and_anything_else_refused():
    errs = [
        {"orderID": "a", "errMsg": "orderID already exists"},
        {"orderID": "b", "errMsg": "bad phone"},
        {"orderID": "", "errMsg": "callList item must be an object"},
        "junk",
        {"errMsg": "x"},
    ]
    assert operations.rejected_orders(errs) == {"b": "bad phone"}
    assert operations.rejected_orders(None) == {}


def test_a_call_list_item_round_trips_to_the_contact_a_replay_sends():
    model = validate_payload(
        "callbot-contact",
        {
            "user_task_id": "t",
            "contact": {
                "user_phone": "8613800138000",
                "user_name": "Li",
                "params": [{"name": "amount", "value": "42"}],
            },
        },
    )
    item = wire.call_list_item(model.contact, "job1")
    assert item == {
        "orderID": "job1",
        "userPhone": "8613800138000",
        "userName": "Li",
        "params": [{"name": "amount", "value": "42"}],
    }
    replay = validate_payload(
        "callbot-contact", {"user_task_id": "t", "contact": wire.contact_of_item(item)}
    )
    assert replay.contact == model.contact.model_copy(update={"order_id": "job1"})


def test_each_member_gets_its_share_and_only_a_refused_one_fails():
    members = [("j1", "j1"), ("j2", "own-2"), ("j3", "j3")]
    items = {j: {"orderID": o, "userPhone": "8613800138000"} for j, o in members}
    batch = Batch(coalesce.contact_group("task-1"), "b-1", "b1", members, items)
    shares = ContactSender().shares(
        batch,
        {
            "totalCount": 3,
            "successCount": 2,
            "errList": [
                {
                    "orderID": "own-2",
                    "errMsg": "userPhone 8613800138000 is on the do-not-call list",
                },
                {"orderID": "j3", "errMsg": "orderID already exists"},
            ],
        },
    )
    by_job = {s.job_id: s for s in shares}
    assert by_job["j2"].error.code == "contact_rejected" and by_job["j2"].result is None
    assert (
        "8613800138000" not in by_job["j2"].error.message and "own-2" in by_job["j2"].error.message
    )
    for job_id in ("j1", "j3"):  # j3: a repeat of an order the provider has is an order added
        assert by_job[job_id].error is None
        assert (
            by_job[job_id].result["orderID"] == job_id
            and by_job[job_id].result["userTaskID"] == "task-1"
        )
        assert by_job[job_id].result["coalesced"] == {"batch": "b-1", "contacts": 3}
    assert ContactSender().replay_payload(batch, "j2", "own-2") == {
        "user_task_id": "task-1",
        "contact": {"user_phone": "8613800138000", "order_id": "own-2"},
    }
