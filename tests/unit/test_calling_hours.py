"""Calling-hours arithmetic with fixed clocks (nxjobs/calling_hours.py): zones, days, DST changes,
midnight-spanning windows, holidays, multi-zone numbers, narrowing, bad settings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from nxjobs.calling_hours import (
    CallingHoursError,
    NoTimeZone,
    Policy,
    parse_days,
    parse_window,
    zones_for,
)

SG = "6591234567"  # Asia/Singapore, UTC+8, no DST
NY = "12015550123"  # New Jersey: America/New_York
LA = "14155550123"  # California: America/Los_Angeles
LONDON = "442079460000"  # Europe/London
BR = "5511987654321"  # Sao Paulo
RU = "79161234567"  # a Russian mobile: 16 candidate zones
AU = "61412345678"  # an Australian mobile: 8 candidate zones
ID = "6281234567890"  # an Indonesian mobile


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def local(zone: str, *args: int) -> datetime:
    return datetime(*args, tzinfo=ZoneInfo(zone))


DEFAULT = Policy.build()


# ---- parsing ------------------------------------------------------------------------------


def test_window_parsing() -> None:
    assert str(parse_window("09:00-20:00", "w")) == "09:00-20:00"
    assert str(parse_window("20:00-02:00", "w")) == "20:00-02:00"
    assert str(parse_window("09:00-24:00", "w")) == "09:00-00:00"
    for bad in ("9-20", "09:00-09:00", "25:00-26:00", "09:60-10:00", "", "09:00-24:30", None):
        with pytest.raises(CallingHoursError) as err:
            parse_window(bad, "NXJOBS_CALLING_HOURS__WINDOW")
        assert err.value.field == "NXJOBS_CALLING_HOURS__WINDOW"


def test_days_parsing() -> None:
    assert parse_days("mon, Tue,sun", "d") == {0, 1, 6}
    for bad in ("", "monday", "mon,xyz", ","):
        with pytest.raises(CallingHoursError) as err:
            parse_days(bad, "NXJOBS_CALLING_HOURS__DAYS")
        assert err.value.field == "NXJOBS_CALLING_HOURS__DAYS"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"window": "10:00-10:00"}, "NXJOBS_CALLING_HOURS__WINDOW"),
        ({"days": "funday"}, "NXJOBS_CALLING_HOURS__DAYS"),
        ({"holidays": "XX"}, "NXJOBS_CALLING_HOURS__HOLIDAYS"),
        ({"holidays": "USA"}, "NXJOBS_CALLING_HOURS__HOLIDAYS"),
        ({"by_country": {"sg": {"window": "10:00-18:00"}}}, "NXJOBS_CALLING_HOURS__BY_COUNTRY.sg"),
        ({"by_country": {"SG": {"hours": "x"}}}, "NXJOBS_CALLING_HOURS__BY_COUNTRY.SG"),
        (
            {"by_country": {"SG": {"window": "1-2"}}},
            "NXJOBS_CALLING_HOURS__BY_COUNTRY.SG.window",
        ),
        ({"by_country": {"SG": {"days": "x"}}}, "NXJOBS_CALLING_HOURS__BY_COUNTRY.SG.days"),
    ],
)
def test_bad_policy_names_the_variable(kwargs: dict, field: str) -> None:
    with pytest.raises(CallingHoursError) as err:
        Policy.build(**kwargs)
    assert err.value.field == field


# ---- zones --------------------------------------------------------------------------------


def test_zones_come_from_the_number() -> None:
    assert zones_for(SG) == ("SG", ("Asia/Singapore",))
    assert zones_for(NY) == ("US", ("America/New_York",))
    region, zones = zones_for(RU)
    assert region == "RU" and len(zones) > 5 and "Asia/Kamchatka" in zones
    region, zones = zones_for(AU)
    assert region == "AU" and {"Australia/Perth", "Australia/Sydney"} <= set(zones)


def test_a_number_with_no_zone_fails_closed() -> None:
    with pytest.raises(NoTimeZone):
        zones_for("88234567890")  # +882: international networks, no zone
    opening_reason = DEFAULT.check("88234567890", None, utc(2026, 6, 3, 4, 0))
    assert opening_reason is not None and opening_reason[0] is None


# ---- one zone -----------------------------------------------------------------------------


def test_singapore_window_edges() -> None:
    # Wednesday 3 June 2026: 09:00 SGT = 01:00 UTC, 20:00 SGT = 12:00 UTC.
    assert not DEFAULT.is_open(SG, utc(2026, 6, 3, 0, 59))
    assert DEFAULT.is_open(SG, utc(2026, 6, 3, 1, 0))
    assert DEFAULT.is_open(SG, utc(2026, 6, 3, 11, 59))
    assert not DEFAULT.is_open(SG, utc(2026, 6, 3, 12, 0))  # the end is excluded
    assert DEFAULT.next_opening(SG, utc(2026, 6, 3, 12, 0)) == utc(2026, 6, 4, 1, 0)
    assert DEFAULT.next_opening(SG, utc(2026, 6, 3, 5, 0)) == utc(2026, 6, 3, 5, 0)


def test_days_skip_sunday() -> None:
    # Saturday 6 June 2026 20:00 SGT closes; Sunday is not a calling day: Monday 09:00.
    assert DEFAULT.next_opening(SG, local("Asia/Singapore", 2026, 6, 6, 20, 0)) == local(
        "Asia/Singapore", 2026, 6, 8, 9, 0
    )
    weekdays = Policy.build(days="mon,tue,wed,thu,fri")
    assert not weekdays.is_open(SG, local("Asia/Singapore", 2026, 6, 6, 12, 0))


def test_non_utc_input_is_the_same_instant() -> None:
    at = local("America/Los_Angeles", 2026, 6, 3, 5, 59)  # 08:59 in New York
    assert not DEFAULT.is_open(NY, at)
    assert DEFAULT.next_opening(NY, at) == local("America/New_York", 2026, 6, 3, 9, 0)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        DEFAULT.is_open(SG, datetime(2026, 6, 3, 12, 0))


# ---- DST ----------------------------------------------------------------------------------


def test_us_spring_forward() -> None:
    # Sunday 8 March 2026 02:00 EST -> 03:00 EDT. Friday evening closed; Saturday opens at 09:00
    # EST (14:00 UTC); after Saturday closes, Monday's 09:00 is EDT (13:00 UTC).
    assert DEFAULT.next_opening(NY, utc(2026, 3, 7, 1, 0)) == utc(2026, 3, 7, 14, 0)
    assert DEFAULT.next_opening(NY, utc(2026, 3, 8, 1, 0)) == utc(2026, 3, 9, 13, 0)


def test_us_fall_back() -> None:
    # Sunday 1 November 2026 02:00 EDT -> 01:00 EST: Saturday 09:00 is EDT, Monday's EST.
    assert DEFAULT.next_opening(NY, utc(2026, 10, 31, 12, 0)) == utc(2026, 10, 31, 13, 0)
    assert DEFAULT.next_opening(NY, utc(2026, 11, 1, 0, 30)) == utc(2026, 11, 2, 14, 0)


def test_eu_changes() -> None:
    # London: BST from Sunday 29 March 2026 01:00 UTC, GMT again from Sunday 25 October.
    assert DEFAULT.next_opening(LONDON, utc(2026, 3, 28, 21, 0)) == utc(2026, 3, 30, 8, 0)
    assert DEFAULT.next_opening(LONDON, utc(2026, 10, 24, 20, 0)) == utc(2026, 10, 26, 9, 0)


def test_a_window_opening_inside_the_spring_forward_gap() -> None:
    # 02:30 does not exist in New York on 8 March 2026: the window opens when the clock jumps.
    policy = Policy.build(window="02:30-05:00", days="sun")
    opening = policy.next_opening(NY, utc(2026, 3, 8, 5, 0))
    assert opening == utc(2026, 3, 8, 7, 0)  # 03:00 EDT
    assert policy.is_open(NY, opening)
    assert not policy.is_open(NY, opening - timedelta(minutes=1))


# ---- midnight-spanning --------------------------------------------------------------------


def test_midnight_spanning_window_belongs_to_its_opening_day() -> None:
    night = Policy.build(window="20:00-02:00", days="fri")
    tz = "Asia/Singapore"
    assert night.is_open(SG, local(tz, 2026, 6, 5, 20, 0))  # Friday evening
    assert night.is_open(SG, local(tz, 2026, 6, 6, 1, 59))  # Saturday small hours: Friday's
    assert not night.is_open(SG, local(tz, 2026, 6, 6, 2, 0))
    assert not night.is_open(SG, local(tz, 2026, 6, 6, 20, 0))  # Saturday evening: not a day
    assert not night.is_open(SG, local(tz, 2026, 6, 5, 1, 0))  # Friday small hours: Thursday's
    assert night.next_opening(SG, local(tz, 2026, 6, 6, 2, 0)) == local(tz, 2026, 6, 12, 20, 0)


# ---- holidays -----------------------------------------------------------------------------


def test_holidays_close_the_day() -> None:
    # 4 July 2026 is a Saturday (a calling day), US Independence Day; observed Friday 3 July.
    with_holidays = Policy.build(holidays="US")
    at = local("America/New_York", 2026, 7, 4, 12, 0)
    assert DEFAULT.is_open(NY, at)
    assert not with_holidays.is_open(NY, at)
    assert with_holidays.next_opening(NY, at) == local("America/New_York", 2026, 7, 6, 9, 0)
    # Another country's holidays do not close Singapore.
    assert with_holidays.is_open(SG, local("Asia/Singapore", 2026, 7, 4, 12, 0))


def test_brazil_holiday() -> None:
    # 7 September 2026 (a Monday): Independence Day in Brazil.
    policy = Policy.build(holidays="BR,US")
    at = local("America/Sao_Paulo", 2026, 9, 7, 10, 0)
    assert not policy.is_open(BR, at)
    assert policy.next_opening(BR, at) == local("America/Sao_Paulo", 2026, 9, 8, 9, 0)


# ---- multi-zone numbers -------------------------------------------------------------------


def test_russia_is_open_only_where_every_zone_is() -> None:
    # phonenumbers' westernmost zone for this number is UTC+3 (Moscow): it opens at 06:00 UTC;
    # Kamchatka (UTC+12) closes at 08:00 UTC.
    monday = utc(2026, 6, 8, 0, 0)
    assert DEFAULT.next_opening(RU, monday) == utc(2026, 6, 8, 6, 0)
    assert not DEFAULT.is_open(RU, utc(2026, 6, 8, 5, 59))
    assert DEFAULT.is_open(RU, utc(2026, 6, 8, 7, 59))
    assert not DEFAULT.is_open(RU, utc(2026, 6, 8, 8, 0))
    # A window no instant satisfies in all of them: no opening (the call fails, never rings).
    assert Policy.build(window="09:00-17:00").next_opening(RU, monday) is None


def test_australia_spans_its_zones() -> None:
    # June (no DST): the Cocos Islands (UTC+6:30, on +61) open at 02:30 UTC; Lord Howe (UTC+10:30)
    # closes at 09:30 UTC.
    wednesday = utc(2026, 6, 3, 0, 0)
    assert DEFAULT.next_opening(AU, wednesday) == utc(2026, 6, 3, 2, 30)
    assert DEFAULT.is_open(AU, utc(2026, 6, 3, 9, 29))
    assert not DEFAULT.is_open(AU, utc(2026, 6, 3, 9, 30))


def test_brazil_and_indonesia_numbers() -> None:
    # Sao Paulo UTC-3: 09:00 = 12:00 UTC.
    assert DEFAULT.next_opening(BR, utc(2026, 6, 3, 0, 0)) == utc(2026, 6, 3, 12, 0)
    region, zones = zones_for(ID)
    opening = DEFAULT.next_opening(ID, utc(2026, 6, 3, 0, 0))
    assert region == "ID" and opening is not None
    assert all(
        9 * 60 <= opening.astimezone(ZoneInfo(z)).hour * 60 + opening.astimezone(ZoneInfo(z)).minute
        for z in zones
    )


def test_a_multi_zone_us_number_waits_for_the_westernmost() -> None:
    policy = Policy.build()
    rule = policy.rule_for(NY)
    multi = type(rule)(
        rule.region, ("America/New_York", "America/Los_Angeles"), rule.window, rule.days
    )
    # 09:00 in Los Angeles is 16:00 UTC in June; New York is open by then.
    assert multi.next_opening(utc(2026, 6, 3, 13, 0)) == utc(2026, 6, 3, 16, 0)
    assert "America/New_York" in multi.describe() and "US 09:00-20:00" in multi.describe()


# ---- per country, narrowing, the send-time check -------------------------------------------


def test_by_country_overrides() -> None:
    policy = Policy.build(by_country={"SG": {"window": "10:00-18:00", "days": "mon,tue"}})
    assert policy.rule_for(SG).days == {0, 1}
    assert str(policy.rule_for(SG).window) == "10:00-18:00"
    assert str(policy.rule_for(NY).window) == "09:00-20:00"  # the default for the rest


def test_narrowing() -> None:
    assert DEFAULT.narrow(SG, "10:00-18:00") == "10:00-18:00"
    with pytest.raises(CallingHoursError, match="not inside") as err:
        DEFAULT.narrow(SG, "08:00-18:00")
    assert err.value.field == "calling_hours"
    with pytest.raises(CallingHoursError, match="not inside"):
        DEFAULT.narrow(SG, "19:00-10:00")  # spans midnight: outside 09:00-20:00
    assert Policy.build(allow_wider=True).narrow(SG, "08:00-22:00") == "08:00-22:00"
    night = Policy.build(window="20:00-04:00")
    assert night.narrow(SG, "22:00-01:00") == "22:00-01:00"
    with pytest.raises(CallingHoursError):
        night.narrow(SG, "03:00-05:00")


def test_check_uses_the_job_window() -> None:
    at = local("Asia/Singapore", 2026, 6, 3, 9, 30)
    assert DEFAULT.check(SG, None, at) is None
    closed = DEFAULT.check(SG, "10:00-18:00", at)
    assert closed is not None
    opening, reason = closed
    assert opening == local("Asia/Singapore", 2026, 6, 3, 10, 0)
    assert reason == "calling hours SG 10:00-18:00 (Asia/Singapore)"


def test_send_time_ignores_a_job_window_wider_than_allowed() -> None:
    # A message from outside our producer with a window wider than the rule: the rule wins.
    at = local("Asia/Singapore", 2026, 6, 3, 7, 0)
    assert DEFAULT.check(SG, "06:00-22:00", at) is not None
    assert Policy.build(allow_wider=True).check(SG, "06:00-22:00", at) is None
