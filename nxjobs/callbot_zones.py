"""A callbot list's contacts by time zone: one provider task per zone group, each told when it may
dial (docs/calling-hours.md, "Callbot lists"). Pure: no Redis, no Celery, the clock is an argument.

The provider dials a task's contacts inside one daily window of one UTC offset (`zoneSecond`,
`dialAtWeekDay`, `dialAtUpHour`, `dialAtDownHour`, docs/provider.md §6.3). So each contact's
calling-hours rule (nxjobs.calling_hours) becomes those four values, and contacts with the same
four share a task:

- a number whose candidate zones all have one UTC offset now: that offset, the rule's window;
- a number of several offsets (a Russian mobile): the hours inside the window in EVERY
  candidate zone (the narrowest intersection, as a call's), written in the easternmost offset;
  none: refused;
- the days are the rule's (its country's), read in the group's offset; public holidays are not
  the provider's to know and are not applied to lists.

Offsets are taken once, at the first submit (`now`): the plan is saved beside the job's progress
(nxjobs.store, keys.ZONE_PLAN) before any task is created and never recomputed, so a DST change
later does not move a contact to another task. Groups are ordered by (offset, window, days); a
list of one group is one task whose userTaskID is the job id, a list of several has tasks
`<job id>-z0`, `-z1`, ... (nxjobs.wire.zone_task_id).

    plan(["6591234567", "12015550123"], policy, None, now)
    # [ZoneGroup(zone_second=-18000, ...), ZoneGroup(zone_second=28800, ...)]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from nxjobs.calling_hours import NoTimeZone, Policy, Window
from nxjobs.client.errors import PERMANENT, NXCloudError


class ZoneError(ValueError):
    """A contact whose dialling hours cannot be given to the provider; `field` names it."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class ZoneGroup:
    """The contacts (their indices in the list) the provider dials in one offset and window."""

    zone_second: int
    window: Window
    days: frozenset[int]
    indices: tuple[int, ...]

    def setting(self) -> dict[str, Any]:
        """The taskCreateSetting fields of this group (docs/provider.md §6.3)."""
        return {
            "zoneSecond": self.zone_second,
            "dialAtWeekDay": ",".join(str(d + 1) for d in sorted(self.days)),  # 1 = Monday
            "dialAtUpHour": _hhmm(self.window.start),
            "dialAtDownHour": _hhmm(self.window.end or 1440),
        }


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def contact_dialling(
    phone: str, policy: Policy, job_window: str | None, now: datetime
) -> tuple[int, Window, frozenset[int]]:
    """(offset s, window in that offset, days) a contact may be dialled in. Raises NoTimeZone,
    CallingHoursError (a bad `job_window`), or ValueError when its zones share no hour."""
    rule = policy.rule_for(phone, job_window)
    offsets = sorted({_offset_s(zone, now) for zone in rule.zones})
    if len(offsets) == 1:
        return offsets[0], rule.window, rule.days
    # The UTC minutes open in every offset, then read in the easternmost one.
    minutes = rule.window.minutes()
    utc = set(range(1440))
    for offset in offsets:
        utc &= {(m - offset // 60) % 1440 for m in minutes}
    east = offsets[-1]
    window = _longest_arc({(m + east // 60) % 1440 for m in utc})
    if window is None:
        raise ValueError(
            f"no hour of {rule.window} is inside the window in all its zones "
            f"({', '.join(rule.zones[:3])}{', ...' if len(rule.zones) > 3 else ''})"
        )
    return east, window, rule.days


def plan(
    phones: Sequence[str], policy: Policy, job_window: str | None, now: datetime
) -> list[ZoneGroup]:
    """The list's zone groups, ordered by (offset, window, days). Raises ZoneError naming the
    first contact (`contacts.<i>.user_phone`) that has no time zone or no common hour."""
    groups: dict[tuple[int, int, int, tuple[int, ...]], list[int]] = {}
    for i, phone in enumerate(phones):
        try:
            offset, window, days = contact_dialling(phone, policy, job_window, now)
        except NoTimeZone as exc:
            raise ZoneError(
                f"contacts.{i}.user_phone", f"{exc}: its calling hours cannot be known"
            ) from None
        except ValueError as exc:
            field = getattr(exc, "field", None) or f"contacts.{i}.user_phone"
            raise ZoneError(field, getattr(exc, "message", None) or str(exc)) from None
        groups.setdefault((offset, window.start, window.end, tuple(sorted(days))), []).append(i)
    return [
        ZoneGroup(key[0], Window(key[1], key[2]), frozenset(key[3]), tuple(indices))
        for key, indices in sorted(groups.items())
    ]


def plan_zones(payload: Any, policy: Policy, now: datetime | None = None) -> list[ZoneGroup]:
    """plan() of a CallbotListPayload: its contacts, its own `calling_hours`, at `now`."""
    return plan(
        [c.user_phone for c in payload.contacts],
        policy,
        payload.calling_hours,
        now or datetime.now(UTC),
    )


def plan_list(payload: Any, policy: Policy, now: datetime | None = None) -> list[ZoneGroup]:
    """plan_zones() on a worker: a list the producer did not check fails `calling_hours`
    (UndiallableList) before anything is sent."""
    try:
        return plan_zones(payload, policy, now)
    except ZoneError as exc:
        raise UndiallableList(str(exc)) from None


class UndiallableList(NXCloudError):
    """A list with a contact whose dialling hours cannot be given to the provider: not sent."""

    def __init__(self, message: str):
        super().__init__(message, code="calling_hours", classification=PERMANENT)


def _offset_s(zone: str, now: datetime) -> int:
    offset = now.astimezone(ZoneInfo(zone)).utcoffset()
    return int(offset.total_seconds()) if offset is not None else 0


def _longest_arc(minutes: set[int]) -> Window | None:
    """The longest run of consecutive minutes of the day (wrapping at midnight) in `minutes`."""
    if not minutes:
        return None
    if len(minutes) == 1440:
        return Window(0, 0)
    # Start after a gap: every run begins at a minute whose predecessor is missing.
    best_start, best_len = 0, 0
    for start in (m for m in minutes if (m - 1) % 1440 not in minutes):
        length = 0
        while (start + length) % 1440 in minutes:
            length += 1
        if length > best_len:
            best_start, best_len = start, length
    return Window(best_start, (best_start + best_len) % 1440)


def job_tasks(
    job_id: str, progress: dict[str, Any] | None, plan: list[list[int]] | None
) -> list[tuple[str, list[int] | None]]:
    """A submitted list's started provider tasks: (userTaskID, its contacts' indices, None = all),
    from its progress and plan (nxjobs.store: a split list's); else its one task, the job id."""
    saved = (progress or {}).get("tasks")
    if isinstance(saved, list) and saved and plan and len(plan) == len(saved):
        # A task none of whose contacts the provider accepted was never started: nothing to ask.
        return [
            (str(t["userTaskID"]), list(indices or []))
            for t, indices in zip(saved, plan, strict=True)
            if t.get("accepted") != 0
        ]
    return [(job_id, None)]
