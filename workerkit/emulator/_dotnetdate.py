"""Whether .NET's ``DateTime.TryParse(text, CultureInfo.InvariantCulture, DateTimeStyles.None)``
accepts a text: the test of the ``{x:datetime}`` route constraint.

.NET's parser (DateTimeParse.cs in dotnet/runtime) is a lexer and a state machine that takes
almost any arrangement of numbers, month and day names and separators. This module accepts the
arrangements people write, with the invariant culture's rules (month before day when both are
numbers; English month and day names, full or in three letters), and checks the values the way
.NET does (a real day of that month, hours 0-23 or 1-12 with AM/PM, a day name that matches the
date):

- dates: ``2024-01-31``, ``2024/1/31``, ``2024.01.31``, ``2024-01`` (year and month),
  ``01/31/2024``, ``1-31-24``, ``1/31`` (this year), ``31 Jan 2024``, ``31-Jan-2024``,
  ``Jan 31, 2024``, ``January 2024``, ``2024 Jan 31``, and numbers separated by spaces
  (``12 31 2024``, ``2024 12 31``, ``2024 12``, ``12 2024``);
- an optional day name first: ``Wed, 31 Jan 2024``;
- a time after the date (a space, ``T`` or a comma between) or before it, or alone:
  ``10:30``, ``10:30:15``, ``10:30:15.1234567``, ``10 PM``, ``10:30 am``;
- then an optional zone: ``Z``, ``GMT`` or an offset (``+01:00``, ``-0530``, ``+1``).

What .NET also takes and this does not (a route segment rarely looks like it): other
arrangements of those tokens, ordinal day suffixes, era names, ``#…#`` around the text, and
times past the end of ``DateTime``'s range once converted to local time.
"""

from __future__ import annotations

import datetime
import re
from typing import Final

__all__ = ["is_datetime"]

_MONTHS: Final = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip
_DAYS: Final = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTH: Final = "|".join(f"{m[:3]}(?:{m[3:]})?" for m in _MONTHS)
_DAY: Final = "|".join(f"{d[:3]}(?:{d[3:]})?" for d in _DAYS)
_SEP: Final = r"[-/.]"
_DATES: Final = tuple(
    re.compile(pattern, re.IGNORECASE)
    for pattern in (
        rf"(?P<y>\d{{4}}){_SEP}(?P<m>\d{{1,2}})(?:{_SEP}(?P<d>\d{{1,2}}))?",
        rf"(?P<m>\d{{1,2}})(?P<s>{_SEP})(?P<d>\d{{1,2}})(?:(?P=s)(?P<y>\d{{4}}|\d{{1,2}}))?",
        rf"(?P<d>\d{{1,2}})[ -]*(?P<mon>{_MONTH})\.?(?:[ ,-]+(?P<y>\d{{4}}|\d{{2}}))?",
        rf"(?P<mon>{_MONTH})\.?[ -]*(?P<d>\d{{1,2}})(?:,?[ -]*(?P<y>\d{{4}}))?",
        rf"(?P<mon>{_MONTH})\.?,?[ -]+(?P<y>\d{{4}})",
        rf"(?P<y>\d{{4}})[ -]+(?P<mon>{_MONTH})\.?[ -]+(?P<d>\d{{1,2}})",
        r"(?P<m>\d{1,2}) +(?P<d>\d{1,2}) +(?P<y>\d{1,4})",
        r"(?P<y>\d{4}) +(?P<m>\d{1,2})(?: +(?P<d>\d{1,2}))?",
        r"(?P<m>\d{1,2}) +(?P<y>\d{4})(?: +(?P<d>\d{1,2}))?",
    )
)
_TIME: Final = re.compile(
    r"(?P<h>\d{1,2})(?::(?P<min>\d{1,2})(?::(?P<sec>\d{1,2})(?:\.(?P<f>\d+))?)?)?"
    r" *(?P<ampm>[ap]\.?m\.?)?",
    re.IGNORECASE,
)
_ZONE: Final = re.compile(r" *(?:Z|GMT|(?P<sign>[+-])(?P<zh>\d{1,2})(?::?(?P<zm>\d{2}))?)", re.I)
_DAY_NAME: Final = re.compile(rf"(?P<dow>{_DAY})\.?,? *", re.IGNORECASE)


def is_datetime(text: str) -> bool:
    """Whether `text` is a date and/or time .NET's invariant ``DateTime.TryParse`` accepts
    (module docstring)."""
    rest = text.strip()
    weekday: int | None = None
    named = _DAY_NAME.match(rest)
    if named is not None and named.end() < len(rest):
        weekday = _day_index(named.group("dow"))
        rest = rest[named.end() :]
    date, tail = _date_prefix(rest)
    if date is not None:  # a date, then a time (after a space, "T" or ","), then a zone
        if tail and tail[0] in "Tt, ":
            found, after = _time_prefix(tail[1:].lstrip(" "))
            if found:
                tail = after
        return _zone_ok(tail) and (weekday is None or date.weekday() == weekday)
    found, after = _time_prefix(rest)  # a time, then maybe a date, then a zone
    if not found:
        return False
    date, tail = _date_prefix(after.strip())
    if date is not None:
        return _zone_ok(tail) and (weekday is None or date.weekday() == weekday)
    return _zone_ok(after)


def _day_index(name: str) -> int:
    lowered = name.lower()[:3]
    return next(i for i, day in enumerate(_DAYS) if day.lower().startswith(lowered))


def _date_prefix(text: str) -> tuple[datetime.date | None, str]:
    """The longest date at the start of `text` that is a real date, and what follows it."""
    best: tuple[datetime.date | None, str] = (None, text)
    best_end = -1
    for pattern in _DATES:
        found = pattern.match(text)
        if found is None or found.end() <= best_end:
            continue
        boundary = text[found.end() : found.end() + 1]
        if boundary.isalnum() and boundary not in ("T", "t", "Z", "z"):
            continue
        date = _make_date(found.groupdict())
        if date is not None:
            best, best_end = (date, text[found.end() :]), found.end()
    return best


def _make_date(parts: dict[str, str | None]) -> datetime.date | None:
    today = datetime.date.today()
    name = parts.get("mon")
    if name:
        month = 1 + next(i for i, m in enumerate(_MONTHS) if m[:3].lower() == name[:3].lower())
    else:
        month = int(parts["m"] or "0")
    year_text = parts.get("y")
    if year_text is None:
        year = today.year
    elif len(year_text) <= 2:
        year = 2000 + int(year_text) if int(year_text) < 50 else 1900 + int(year_text)
    else:
        year = int(year_text)
    day_text = parts.get("d")
    day = int(day_text) if day_text else 1
    try:
        return datetime.date(year, month, day)
    except ValueError:  # month 13, 30 February, year 0, …
        return None


def _time_prefix(text: str) -> tuple[bool, str]:
    found = _TIME.match(text)
    if found is None:
        return False, text
    hour = int(found.group("h"))
    if found.group("min") is None and found.group("ampm") is None:
        return False, text  # a bare number is no time
    minute = int(found.group("min") or "0")
    second = int(found.group("sec") or "0")
    limit = 12 if found.group("ampm") else 23
    if hour > limit or minute > 59 or second > 59:
        return False, text
    return True, text[found.end() :]


def _zone_ok(text: str) -> bool:
    if not text.strip():
        return True
    found = _ZONE.fullmatch(text.rstrip())
    if found is None:
        return False
    if found.group("sign"):
        return int(found.group("zh")) <= 14 and int(found.group("zm") or "0") <= 59
    return True
