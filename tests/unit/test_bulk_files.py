"""Bulk files read by column name (nxjobs/bulk_files.py) and validated row by row (nxjobs/bulk.py):
headers in the spellings CRM exports use, in any order, positional files as before, JSON lines
and JSON arrays; errors name the line and the column as the file spells it. Pure: files in
tmp_path, no Redis."""

from __future__ import annotations

import json

import pytest

from nxjobs import bulk_files
from nxjobs.bulk import _contact_rows, _number_rows
from nxjobs.bulk_files import open_reader
from nxjobs.jobs import InvalidJob

PHONE = "8613800138000"
PHONE2 = "8613800138001"


def contacts(path, per_job: int = 100) -> list[tuple[int, dict | None, str]]:
    """(line, contact, reason) of each row of a contacts file; the reason without its value."""
    reader = open_reader(str(path), "callbot-list")
    return [
        (line, item, info.partition("\x00")[2])
        for line, item, info, _ in _contact_rows(reader, per_job)
    ]


def numbers(path) -> list[tuple[int, str | None, str]]:
    reader = open_reader(str(path), "number-check")
    return [
        (line, phone, info.partition("\x00")[2])
        for line, phone, info, _ in _number_rows(reader, 5000)
    ]


def write(tmp_path, name: str, text: str, *, bom: bool = False):
    path = tmp_path / name
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return path


# ---- CSV with a header ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "phone, order, name",
    [
        ("userPhone", "orderID", "userName"),
        ("user_phone", "order_id", "user_name"),
        ("phone", "orderid", "name"),
        ("USERPHONE", "Order_ID", "UserName"),
        ("User Phone", "order-id", "NAME"),
    ],
)
def test_every_spelling_of_each_column_is_read_by_name(tmp_path, phone, order, name):
    # Given a header in one of the spellings, the columns in an order of their own
    path = write(tmp_path, "c.csv", f"{name},{order},{phone}\nLi,A1,{PHONE}\n")
    # Then the row maps by name
    assert contacts(path) == [(2, {"user_phone": PHONE, "order_id": "A1", "user_name": "Li"}, "")]


def test_a_crm_export_headed_orderid_userphone_username_is_accepted_in_its_order(tmp_path):
    # The file of the issue: refused whole while columns were positional.
    path = write(tmp_path, "c.csv", f"orderID,userPhone,userName\nA1,{PHONE},Li\nA2,{PHONE2},\n")
    assert contacts(path) == [
        (2, {"user_phone": PHONE, "order_id": "A1", "user_name": "Li"}, ""),
        (3, {"user_phone": PHONE2, "order_id": "A2"}, ""),
    ]


def test_param_columns_become_the_contacts_params_without_the_empty_ones(tmp_path):
    path = write(
        tmp_path,
        "c.csv",
        f"userPhone,param.plan,Param.Due Date,orderID\n{PHONE},gold,,A1\n{PHONE2},,2027-01-01,A2\n",
    )
    rows = contacts(path)
    assert rows[0][1]["params"] == [{"name": "plan", "value": "gold"}]
    assert rows[1][1]["params"] == [{"name": "Due Date", "value": "2027-01-01"}]


def test_unknown_columns_are_collected_once_and_ignored(tmp_path):
    path = write(tmp_path, "c.csv", f"Region,userPhone,Owner,orderID\nN,{PHONE},ann,A1\n")
    reader = open_reader(str(path), "callbot-list")
    assert reader.unknown == ["Region", "Owner"]
    assert contacts(path) == [(2, {"user_phone": PHONE, "order_id": "A1"}, "")]


def test_a_header_without_a_phone_column_refuses_the_file_naming_the_spellings(tmp_path):
    path = write(tmp_path, "contacts.csv", "orderID,userName\nA1,Li\n")
    with pytest.raises(InvalidJob) as exc:
        open_reader(str(path), "callbot-list")
    assert exc.value.field == "file"
    assert str(path) in exc.value.message and "line 1" in exc.value.message
    assert "userPhone, user_phone, phone" in exc.value.message


def test_two_columns_for_one_field_refuse_the_file(tmp_path):
    path = write(tmp_path, "c.csv", f"phone,userPhone\n{PHONE},{PHONE2}\n")
    with pytest.raises(InvalidJob, match="'phone' and 'userPhone' give one field"):
        open_reader(str(path), "callbot-list")


def test_a_bom_and_blank_lines_before_the_header_are_fine(tmp_path):
    path = write(tmp_path, "c.csv", f"\n\nuserName,userPhone\nLi,{PHONE}\n", bom=True)
    assert contacts(path) == [(4, {"user_phone": PHONE, "user_name": "Li"}, "")]


def test_bad_rows_name_their_line_and_the_column_as_the_file_spells_it(tmp_path):
    path = write(
        tmp_path,
        "c.csv",
        "userPhone,orderID,userName,param.plan\n"
        f"12-34,A1,Li,\n"  # line 2: not a phone
        f"{PHONE},bad id!,Li,\n"  # line 3: bad order id
        f"{PHONE2},A3,{'x' * 129},\n"  # line 4: name too long
        f",A4,Li,\n"  # line 5: no phone
        f"{PHONE},A5,Li,gold,extra\n"  # line 6: more cells than the header
        f"{PHONE},A5,Li,{'v' * 1025}\n",  # line 7: param value too long
    )
    rows = contacts(path)
    assert [(line, item) for line, item, _ in rows] == [(n, None) for n in range(2, 8)]
    reasons = [reason for _, _, reason in rows]
    assert reasons[0].startswith("userPhone: must be 6-20 digits")
    assert reasons[1].startswith("orderID: must be 1-64 letters")
    assert reasons[2].startswith("userName: ")
    assert reasons[3] == "userPhone: empty"
    assert reasons[4] == "5 columns, the header has 4"
    assert reasons[5].startswith("param.plan: ")


def test_order_ids_are_unique_within_a_job_and_the_reason_names_the_column(tmp_path):
    path = write(
        tmp_path, "c.csv", f"orderID,userPhone\nA1,{PHONE}\nA1,{PHONE2}\nA2,{PHONE}\nA1,{PHONE}\n"
    )
    # per job 2: line 3 repeats line 2's id in the same job; line 5 starts the second job
    rows = contacts(path, per_job=2)
    assert [(line, reason) for line, _, reason in rows] == [
        (2, ""),
        (3, "orderID: duplicate within its job"),
        (4, ""),
        (5, ""),
    ]


# ---- CSV without a header (today's format) -----------------------------------------------------


def test_a_headerless_file_is_positional_as_before(tmp_path):
    # A user_name that happens to be a column name does not make a header: the row has a phone.
    path = write(tmp_path, "c.csv", f"{PHONE},A1,name\n{PHONE2}\n{PHONE},A3,Li,x\n")
    assert open_reader(str(path), "callbot-list").format == "csv"
    rows = contacts(path)
    assert rows[0] == (1, {"user_phone": PHONE, "order_id": "A1", "user_name": "name"}, "")
    assert rows[1] == (2, {"user_phone": PHONE2}, "")
    assert rows[2][1] is None and "got 4 columns" in rows[2][2]


def test_an_unknown_first_row_is_data_and_rejected_as_before(tmp_path):
    path = write(tmp_path, "c.csv", f"foo,bar\n{PHONE}\n")
    rows = contacts(path)
    assert rows[0][0] == 1 and rows[0][1] is None and rows[0][2].startswith("user_phone: ")
    assert rows[1] == (2, {"user_phone": PHONE}, "")


def test_number_files_read_the_phone_column_by_name_among_others(tmp_path):
    path = write(tmp_path, "n.csv", f"id,MSISDN,note\n1,{PHONE},a\n2,+{PHONE2},b\n3,12,c\n")
    reader = open_reader(str(path), "number-check")
    assert reader.unknown == ["id", "note"]
    rows = numbers(path)
    assert rows[:2] == [(2, PHONE, ""), (3, PHONE2, "")]
    assert rows[2][1] is None and rows[2][2].startswith("MSISDN: must be")


def test_a_number_header_without_a_phone_column_refuses_the_file(tmp_path):
    path = write(tmp_path, "n.csv", "id,userName\n1,Li\n")
    with pytest.raises(InvalidJob, match="no phone column; name it one of phone, number"):
        open_reader(str(path), "number-check")


# ---- JSON lines, JSON arrays --------------------------------------------------------------------


def test_json_lines_of_contact_objects_in_the_same_spellings(tmp_path):
    lines = [
        {"userPhone": int(PHONE), "orderID": "A1", "userName": "Li", "param.plan": "gold"},
        {"user_phone": PHONE2, "params": {"due": "2027-01-01", "empty": ""}, "crm_id": 7},
        {"phone": "12-34"},
        {"orderID": "A4"},
        {"userPhone": PHONE, "phone": PHONE2},
    ]
    text = "\n".join(json.dumps(x) for x in lines[:2]) + "\n\nnot json\n"
    text += "\n".join(json.dumps(x) for x in lines[2:]) + "\n[1, 2]\n"
    path = write(tmp_path, "c.jsonl", text)
    reader = open_reader(str(path), "callbot-list")
    assert reader.format == "jsonl"
    rows = contacts(path)
    assert rows[0] == (
        1,
        {
            "user_phone": PHONE,
            "order_id": "A1",
            "user_name": "Li",
            "params": [{"name": "plan", "value": "gold"}],
        },
        "",
    )
    assert rows[1] == (
        2,
        {"user_phone": PHONE2, "params": [{"name": "due", "value": "2027-01-01"}]},
        "",
    )
    assert [(line, reason.split(" (")[0]) for line, _, reason in rows[2:]] == [
        (4, "not valid JSON"),
        (5, "phone: must be 6-20 digits with country code, no spaces or symbols"),
        (6, "no phone"),
        (7, "phone: given twice"),
        (8, "expected a JSON object, got an array"),
    ]
    # Unknown keys gathered while reading, for the one warning
    assert reader.unknown == [] and open_reader(str(path), "callbot-list").unknown == []
    list(reader.rows())
    assert reader.unknown == ["crm_id"]


def test_a_json_array_is_read_one_element_at_a_time_with_line_numbers(tmp_path, monkeypatch):
    # A tiny read size, so numbers, strings and objects are cut at every possible place.
    monkeypatch.setattr(bulk_files, "_CHUNK", 3)
    text = (
        "[\n"
        f'  {{"userPhone": {PHONE}, "orderID": "A1",\n'
        '   "params": [{"name": "plan", "value": "gold"}]},\n'
        f'  {{"userPhone": "{PHONE2}", "userName": "Li \\u00e9"}} ,\n'
        '  {"userPhone": "12"}\n'
        "]\n"
    )
    path = write(tmp_path, "contacts.json", text, bom=True)
    assert open_reader(str(path), "callbot-list").format == "json"
    rows = contacts(path)
    assert rows[0] == (
        2,
        {"user_phone": PHONE, "order_id": "A1", "params": [{"name": "plan", "value": "gold"}]},
        "",
    )
    assert rows[1] == (4, {"user_phone": PHONE2, "user_name": "Li é"}, "")
    assert rows[2][0] == 5 and rows[2][2].startswith("userPhone: must be")


def test_a_number_check_json_array_may_hold_bare_phones(tmp_path, monkeypatch):
    monkeypatch.setattr(bulk_files, "_CHUNK", 4)
    path = write(tmp_path, "n.txt", f'[{PHONE}, "+{PHONE2}", {{"msisdn": "6591234567"}}, {PHONE}]')
    assert open_reader(str(path), "number-check").format == "json"  # by its first character
    assert numbers(path) == [
        (1, PHONE, ""),
        (1, PHONE2, ""),
        (1, "6591234567", ""),
        (1, None, "duplicate phone"),
    ]


@pytest.mark.parametrize(
    "text, where",
    [
        ('[\n{"userPhone": "1"},\n{"userPhone": "2"\n', "line 4: not valid JSON"),
        ('[\n{"userPhone": "1"}\n{"userPhone": "2"}]', "line 3: expected ',' or ']'"),
        ('\n"not an array"', "line 2: expected a JSON array of objects"),
        ('[{"userPhone": "1"}] [', "line 1: more after the end of the array"),
        ("[\n", "line 2: the array is not closed"),
    ],
)
def test_a_broken_json_array_refuses_the_file_naming_the_line(tmp_path, text, where):
    path = write(tmp_path, "c.json", text)
    with pytest.raises(InvalidJob) as exc:
        list(open_reader(str(path), "callbot-list").rows())
    assert exc.value.field == "file" and f"{path} {where}" in exc.value.message


def test_an_empty_json_array_has_no_rows(tmp_path):
    path = write(tmp_path, "c.json", " [ ] \n")
    assert contacts(path) == []


def test_format_by_extension_or_first_character(tmp_path):
    for name, text, fmt in [
        ("a.ndjson", f'{{"phone": "{PHONE}"}}\n', "jsonl"),
        ("a.jsonl", f'{{"phone": "{PHONE}"}}\n', "jsonl"),
        ("a.json", f'{{"phone": "{PHONE}"}}\n', "jsonl"),  # one object a line after all
        ("a.txt", f'  \n{{"phone": "{PHONE}"}}\n', "jsonl"),
        ("a", f"[{PHONE}]", "json"),
        ("a.csv", f"{PHONE}\n", "csv"),
        ("b.csv", f"phone\n{PHONE}\n", "csv-header"),
    ]:
        assert open_reader(str(write(tmp_path, name, text)), "number-check").format == fmt, name
