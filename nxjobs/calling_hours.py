"""Calling hours: when a phone may ring, by the called party's local time (docs/calling-hours.md).

Pure: no Redis, no Celery, the clock is an argument. A number's candidate time zones come from
`phonenumbers` (its region and prefix tables); a call is open only when the instant is inside the
window in EVERY candidate zone (a US number of unknown area spans six zones). A window is
"HH:MM-HH:MM" local time, end excluded; it may span midnight ("20:00-02:00": it belongs to the day
it opens on, so `days` and holidays are those of its opening day). A number with no zone at all
(non-geographic, unassigned prefix) is never open: fail closed, `NoTimeZone`.

    policy = Policy.build(window="09:00-20:00", days="mon,tue,wed,thu,fri,sat")
    policy.is_open("6591234567", now)           # True / False
    policy.next_opening("6591234567", now)      # aware datetime (None: no opening in SEARCH_DAYS)
    policy.check("6591234567", "10:00-18:00", now)  # None (go) or (opening, reason)
    policy.defer("6591234567", None, due)       # None (open at `due`) or Deferral(until, reason)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

import phonenumbers
from phonenumbers import timezone as pn_timezone

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DEFAULT_WINDOW = "09:00-20:00"
DEFAULT_DAYS = "mon,tue,wed,thu,fri,sat"
# next_opening looks this far ahead, then gives up (None): long enough for any weekly `days` with
# a run of public holidays in front of it.
SEARCH_DAYS = 21
ENV = "NXJOBS_CALLING_HOURS__"

_WINDOW_RE = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])-([01][0-9]|2[0-3]|24):([0-5][0-9])$")
_COUNTRY_RE = re.compile(r"^[A-Z]{2}$")


class CallingHoursError(ValueError):
    """A bad window, days list or country setting; `field` names it (a variable or job field)."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class NoTimeZone(ValueError):
    """The number maps to no time zone: its calling hours cannot be known (fail closed)."""


@dataclass(frozen=True)
class Window:
    """[start, end) in minutes of the local day; start > end spans midnight."""

    start: int
    end: int

    def __str__(self) -> str:
        return f"{_hhmm(self.start)}-{_hhmm(self.end)}"

    def minutes(self) -> frozenset[int]:
        """Every minute of the day inside the window (for containment)."""
        if self.start < self.end:
            return frozenset(range(self.start, self.end))
        return frozenset(range(self.start, 1440)) | frozenset(range(0, self.end))

    def opening_day(self, local: datetime) -> date | None:
        """The day whose window `local` lies in, or None if it is outside the window."""
        m = local.hour * 60 + local.minute
        if self.start < self.end:
            return local.date() if self.start <= m < self.end else None
        if m >= self.start:
            return local.date()
        if m < self.end:
            return local.date() - timedelta(days=1)
        return None

    def inside(self, other: Window) -> bool:
        return self.minutes() <= other.minutes()


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def parse_window(value: Any, field: str) -> Window:
    if not isinstance(value, str) or not (m := _WINDOW_RE.match(value.strip())):
        raise CallingHoursError(
            field, f"must be HH:MM-HH:MM (e.g. {DEFAULT_WINDOW}), got {value!r}"
        )
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if end > 1440:
        raise CallingHoursError(field, "the end may be at most 24:00")
    end %= 1440
    if start == end:
        raise CallingHoursError(field, "start and end are equal (an empty, or a 24-hour, window)")
    return Window(start, end)


def parse_days(value: Any, field: str) -> frozenset[int]:
    """ "mon,tue,..." -> weekday numbers (Monday 0)."""
    if not isinstance(value, str):
        raise CallingHoursError(field, "must be a comma-separated list such as mon,tue,wed")
    names = [d.strip().lower() for d in value.split(",") if d.strip()]
    if not names:
        raise CallingHoursError(field, "names no day: give at least one of " + ",".join(DAY_NAMES))
    bad = [d for d in names if d not in DAY_NAMES]
    if bad:
        raise CallingHoursError(
            field, f"unknown day(s) {', '.join(bad)}; expected any of {','.join(DAY_NAMES)}"
        )
    return frozenset(DAY_NAMES.index(d) for d in names)


def parse_countries(value: Any, field: str) -> tuple[str, ...]:
    """ "US,BR" -> ("US", "BR"), each a country the holidays package knows."""
    import holidays

    codes = [c.strip().upper() for c in (value or "").split(",") if c.strip()]
    for code in codes:
        if not _COUNTRY_RE.match(code):
            raise CallingHoursError(field, f"{code!r} is not an ISO 3166 alpha-2 country code")
        try:
            holidays.country_holidays(code)
        except NotImplementedError:
            raise CallingHoursError(field, f"no public holidays known for {code}") from None
    return tuple(codes)


@dataclass(frozen=True)
class Rule:
    """The calling hours of one number: its region, candidate zones, window, days, holidays."""

    region: str
    zones: tuple[str, ...]
    window: Window
    days: frozenset[int]
    holidays: bool = False

    def open_in(self, zone: str, at: datetime) -> bool:
        local = at.astimezone(_zone(zone))
        day = self.window.opening_day(local)
        if day is None or day.weekday() not in self.days:
            return False
        return not (self.holidays and _is_holiday(self.region, day))

    def is_open(self, at: datetime) -> bool:
        return all(self.open_in(zone, at) for zone in self.zones)

    def next_opening(self, at: datetime) -> datetime | None:
        """The earliest instant >= `at` (to the minute) open in every zone, or None within
        SEARCH_DAYS. Candidates: `at`, each zone's window start on each day (both folds, so a start
        in a DST gap or overlap is tried as the clock really shows it), and each zone's UTC offset
        changes (a start inside a spring-forward gap opens at the change)."""
        _aware(at)
        at = at.astimezone(UTC)
        if self.is_open(at):
            return at
        first = at.replace(second=0, microsecond=0) + timedelta(minutes=1)
        horizon = at + timedelta(days=SEARCH_DAYS)
        candidates: set[datetime] = set()
        for name in self.zones:
            zone = _zone(name)
            local_day = first.astimezone(zone).date() - timedelta(days=1)
            for n in range(SEARCH_DAYS + 2):
                day = local_day + timedelta(days=n)
                naive = datetime(day.year, day.month, day.day) + timedelta(
                    minutes=self.window.start
                )
                for fold in (0, 1):
                    candidates.add(naive.replace(tzinfo=zone, fold=fold).astimezone(UTC))
            candidates.update(_offset_changes(zone, first, horizon))
        for instant in sorted(c for c in candidates if first <= c <= horizon):
            if self.is_open(instant):
                return instant
        return None

    def describe(self) -> str:
        zones = ", ".join(self.zones[:3]) + (
            f", +{len(self.zones) - 3} more" if len(self.zones) > 3 else ""
        )
        return f"calling hours {self.region} {self.window} ({zones})"


def _offset_changes(zone: ZoneInfo, start: datetime, end: datetime) -> list[datetime]:
    """The instants in [start, end] where `zone`'s UTC offset changes, to the minute."""
    out = []
    step = timedelta(hours=6)
    t = start
    while t < end:
        nxt = min(t + step, end)
        if t.astimezone(zone).utcoffset() != nxt.astimezone(zone).utcoffset():
            lo, hi = t, nxt  # offset(lo) != offset(hi): bisect to the minute
            while hi - lo > timedelta(minutes=1):
                mid = lo + (hi - lo) / 2
                if mid.astimezone(zone).utcoffset() == lo.astimezone(zone).utcoffset():
                    lo = mid
                else:
                    hi = mid
            out.append(hi.replace(second=0, microsecond=0))
        t = nxt
    return out


@lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


@lru_cache(maxsize=256)
def _holiday_calendar(region: str, year: int) -> Any:
    import holidays

    return holidays.country_holidays(region, years=year)


def _is_holiday(region: str, day: date) -> bool:
    return day in _holiday_calendar(region, day.year)


def _aware(at: datetime) -> None:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("calling hours need an aware datetime (a time zone), got a naive one")


def zones_for(phone: str) -> tuple[str, tuple[str, ...]]:
    """(region, candidate zones) of a phone number in our digits-with-country-code form. The
    number's own zones; an unknown prefix: its country's zones; none at all: NoTimeZone."""
    try:
        number = phonenumbers.parse("+" + phone.lstrip("+"))
    except phonenumbers.NumberParseException:
        raise NoTimeZone("not a phone number phonenumbers can parse") from None
    region = phonenumbers.region_code_for_number(number) or ""
    zones = pn_timezone.time_zones_for_number(number)
    if not zones or zones[0] == pn_timezone.UNKNOWN_TIMEZONE:
        zones = pn_timezone._country_level_time_zones_for_number(number)
    zones = tuple(z for z in zones if z != pn_timezone.UNKNOWN_TIMEZONE)
    if not zones or not region or region == "001":
        raise NoTimeZone(f"no time zone known for numbers of country code +{number.country_code}")
    return region, zones


@dataclass(frozen=True)
class Deferral:
    """A call that may not ring at the instant asked: it waits `until` the next opening (None:
    no opening within SEARCH_DAYS, or no zone known; the call cannot be made). `reason` names the
    rule, e.g. "calling hours SG 09:00-20:00 (Asia/Singapore)"."""

    until: datetime | None
    reason: str

    @property
    def note(self) -> str:
        """What the record says (its `schedule_note`)."""
        return f"deferred: {self.reason}"


@dataclass(frozen=True)
class Override:
    window: Window | None = None
    days: frozenset[int] | None = None


@dataclass(frozen=True)
class Policy:
    """The configured rule: default window and days, per-country overrides, holiday countries,
    and whether a job may ask for a window wider than the rule's."""

    window: Window = field(default_factory=lambda: parse_window(DEFAULT_WINDOW, "window"))
    days: frozenset[int] = field(default_factory=lambda: parse_days(DEFAULT_DAYS, "days"))
    by_country: dict[str, Override] = field(default_factory=dict)
    holiday_countries: frozenset[str] = frozenset()
    allow_wider: bool = False

    @classmethod
    def build(
        cls,
        *,
        window: str = DEFAULT_WINDOW,
        days: str = DEFAULT_DAYS,
        by_country: dict[str, Any] | None = None,
        holidays: str = "",
        allow_wider: bool = False,
    ) -> Policy:
        """Validate the settings (raising CallingHoursError naming the variable) into a Policy."""
        overrides: dict[str, Override] = {}
        for code, spec in (by_country or {}).items():
            name = f"{ENV}BY_COUNTRY.{code}"
            if not isinstance(code, str) or not _COUNTRY_RE.match(code):
                raise CallingHoursError(name, "keys must be ISO 3166 alpha-2 codes such as SG")
            if not isinstance(spec, dict) or not spec or set(spec) - {"window", "days"}:
                raise CallingHoursError(name, 'must be {"window": "HH:MM-HH:MM", "days": "..."}')
            overrides[code] = Override(
                window=parse_window(spec["window"], f"{name}.window") if "window" in spec else None,
                days=parse_days(spec["days"], f"{name}.days") if "days" in spec else None,
            )
        return cls(
            window=parse_window(window, f"{ENV}WINDOW"),
            days=parse_days(days, f"{ENV}DAYS"),
            by_country=overrides,
            holiday_countries=frozenset(parse_countries(holidays, f"{ENV}HOLIDAYS")),
            allow_wider=allow_wider,
        )

    @classmethod
    def from_settings(cls, settings: Any) -> Policy | None:
        """From a calling-hours settings model (producer's or service's); None when disabled."""
        if not settings.enabled:
            return None
        return cls.build(
            window=settings.window,
            days=settings.days,
            by_country=settings.by_country,
            holidays=settings.holidays,
            allow_wider=settings.allow_wider,
        )

    def rule_for(self, phone: str, job_window: str | None = None) -> Rule:
        """The number's rule. `job_window` replaces its window if it lies inside it (or wider
        windows are allowed); a wider one (from a message our producer did not check) is
        ignored: the configured rule wins."""
        region, zones = zones_for(phone)
        override = self.by_country.get(region, Override())
        window = override.window or self.window
        if job_window is not None:
            wanted = parse_window(job_window, "calling_hours")
            if self.allow_wider or wanted.inside(window):
                window = wanted
        return Rule(
            region=region,
            zones=zones,
            window=window,
            days=override.days if override.days is not None else self.days,
            holidays=region in self.holiday_countries,
        )

    def narrow(self, phone: str, job_window: str, field: str = "calling_hours") -> str:
        """Check a job's own window against the number's rule; return it normalised. Raises
        CallingHoursError (`field`) if it is malformed, or wider than the rule and the operator
        does not allow that; NoTimeZone if the number has no zone."""
        wanted = parse_window(job_window, field)
        rule = self.rule_for(phone)  # the configured rule, without the job's window
        if not self.allow_wider and not wanted.inside(rule.window):
            raise CallingHoursError(
                field,
                f"{wanted} is not inside the calling hours for {rule.region} ({rule.window}); "
                f"set {ENV}ALLOW_WIDER=true to allow wider windows",
            )
        return str(wanted)

    def is_open(self, phone: str, at: datetime) -> bool:
        _aware(at)
        return self.rule_for(phone).is_open(at)

    def next_opening(self, phone: str, at: datetime) -> datetime | None:
        return self.rule_for(phone).next_opening(at)

    def check(
        self, phone: str, job_window: str | None, now: datetime
    ) -> tuple[datetime | None, str] | None:
        """The send-time check: None = go; else (next opening or None if none within
        SEARCH_DAYS / no zone known, reason)."""
        _aware(now)
        try:
            rule = self.rule_for(phone, job_window)
        except NoTimeZone as exc:
            return None, f"calling hours unknown: {exc}"
        if rule.is_open(now):
            return None
        opening = rule.next_opening(now)
        return opening, rule.describe()

    def defer(self, phone: str, job_window: str | None, at: datetime) -> Deferral | None:
        """Whether a call due at `at` (now, a producer's `at`, or when a retry or slot wait would
        end) must wait: None when the window is open then, else where it waits to."""
        closed = self.check(phone, job_window, at)
        if closed is None:
            return None
        opening, reason = closed
        return Deferral(opening, reason)
