"""Pure parts of coalescing: matching `failNumber` to members, group names, the callback index."""

from nxjobs import coalesce
from nxjobs.callbacks import events

MEMBERS = [("job-a", "6591234567"), ("job-b", "8613800138000"), ("job-c", "6591004567")]


def test_a_whole_number_in_fail_number_names_its_member():
    assert coalesce.rejected_members(
        MEMBERS, [{"number": "8613800138000", "reason": "invalid"}]
    ) == {"job-b": "invalid"}


def test_a_masked_number_that_fits_one_member_names_it():
    assert coalesce.rejected_members(MEMBERS, [{"number": "861***8000"}]) == {
        "job-b": "rejected by the provider"
    }


def test_a_masked_number_that_fits_two_members_names_neither():
    # 659***4567 fits both job-a and job-c: failing either would be a guess
    assert coalesce.rejected_members(MEMBERS, [{"number": "659***4567", "reason": "invalid"}]) == {}


def test_garbage_entries_name_nobody():
    assert (
        coalesce.rejected_members(MEMBERS, [{"number": "***"}, {}, "x", {"number": None}, 42]) == {}
    )


def test_groups_are_check_levels_and_batch_numbers_fit_the_provider_limit():
    assert coalesce.group_of(5) == "nc5" and coalesce.level_of("nc5") == 5
    batch_no = coalesce.batch_no_of("0b7e7c5e-52c9-4c8e-9d1f-2f6f2f6f2f6f")
    assert len(batch_no) <= 64 and "-" not in batch_no


def test_a_number_result_tries_the_coalesced_member_first():
    event = events.parse(
        events.NUMBER_CHECK,
        b'{"requestId": "abc-000001", "batchNo": "B1", "phone": "6591234567", "code": 0}',
    )
    assert event.index_keys[0] == coalesce.member_index_key("B1")
    assert event.member == "6591234567"
    # then the ids of a job that had the whole batch to itself
    assert event.index_keys[1:] == (
        "nxjobs:cb:idx:nc-req:abc",
        "nxjobs:cb:idx:nc-batch:B1",
        "nxjobs:cb:idx:nc-num:B1:6591234567",  # a member of a batch built by an earlier version
    )
    assert "6591234567" not in str(event.data)
