"""Timer schedules as the timer trigger reads them: NCRONTAB with five or six fields, or a
TimeSpan, after ``%setting%`` tokens are replaced.

``{second} {minute} {hour} {day} {month} {day-of-week}``, separated by spaces; exactly five
fields are ``{minute} {hour} {day} {month} {day-of-week}`` at second 0 (the timer extension's
``CronSchedule.TryCreate``, Azure/azure-webjobs-sdk-extensions src/WebJobs.Extensions/
Extensions/Timers/Scheduling/CronSchedule.cs, parses a five-field expression without seconds,
any other count with them). Each field is
a comma-separated list of ``*``, ``N``, ``A-B`` (a reversed range is swapped, as NCrontab
does), each optionally with ``/STEP``; ``N/STEP`` means ``N-max/STEP``. Months and days of
the week also take names or any prefix of them (``Jan``, ``mon``; Sunday is 0). A time
matches when every field does: unlike Unix cron, day-of-month **and** day-of-week must both
match, as in NCrontab. Anything else is a `ScheduleError`.

A schedule that is not a cron expression but a .NET TimeSpan (``"00:00:30"``) fires at that
constant interval, as the timer trigger's ``ConstantSchedule`` does.

Before parsing, every ``%name%`` in the schedule becomes the app setting ``name``
(`resolve_setting_tokens`: ``TimerSchedule.Create`` calls the WebJobs SDK's
``NameResolverExtensions.ResolveWholeString``, which, despite its name, replaces each token
anywhere in the text: ``"0 %minute% * * * *"``).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ._config import parse_timespan
from ._dotnet import fold
from ._validation import BindingError, binding_value, metadata_string

__all__ = [
    "CronSchedule",
    "IntervalSchedule",
    "ScheduleError",
    "parse_schedule",
    "resolve_setting_tokens",
    "timer_trigger",
]

#: How far `CronSchedule.next_after` looks before deciding a schedule never fires
#: (e.g. ``0 0 0 30 2 *``); 29 February on a given weekday recurs within 28 years.
_HORIZON_YEARS: Final = 30
_MONTHS: Final = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip
_DAYS: Final = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")


class ScheduleError(ValueError):
    """A schedule the timer trigger would not accept; the message says which field and why."""


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: Sequence[str] = ()


_FIELDS: Final = (
    _Field("second", 0, 59),
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day", 1, 31),
    _Field("month", 1, 12, _MONTHS),
    _Field("day-of-week", 0, 6, _DAYS),
)


@dataclass(frozen=True)
class CronSchedule:
    """A parsed six-field NCRONTAB expression; each attribute is the set of matching values."""

    expression: str
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    """0 = Sunday … 6 = Saturday."""

    @classmethod
    def parse(cls, expression: str) -> CronSchedule:
        """Parse `expression` (module docstring).

        Raises:
            ScheduleError: not five or six fields, or a field with a bad value, range, step or
                name.
        """
        tokens = [token for token in expression.split(" ") if token]  # NCrontab: spaces only
        if len(tokens) == 5:
            tokens = ["0", *tokens]
        elif len(tokens) != len(_FIELDS):
            raise ScheduleError(
                f"'{expression}' is an invalid crontab expression. It must contain 6 components"
                " of a schedule in the sequence of seconds, minutes, hours, days, months, and"
                " days of week."
            )
        sets = [_parse_field(token, spec) for token, spec in zip(tokens, _FIELDS, strict=True)]
        return cls(expression, *sets)

    def matches(self, when: datetime.datetime) -> bool:
        """Whether `when` (to the second) is an occurrence."""
        return (
            when.second in self.seconds
            and when.minute in self.minutes
            and when.hour in self.hours
            and when.day in self.days
            and when.month in self.months
            and _weekday(when) in self.weekdays
        )

    def next_after(self, when: datetime.datetime) -> datetime.datetime | None:
        """The first occurrence strictly after `when` (whole seconds, same tzinfo as `when`).

        None when there is none within 30 years (e.g. the 30th of February).
        """
        t = when.replace(microsecond=0) + datetime.timedelta(seconds=1)
        limit = when.year + _HORIZON_YEARS
        while t.year <= limit:
            if t.month not in self.months:
                t = _next_month(t)
                continue
            if t.day not in self.days or _weekday(t) not in self.weekdays:
                t = (t + datetime.timedelta(days=1)).replace(hour=0, minute=0, second=0)
                continue
            if t.hour not in self.hours:
                t = (t + datetime.timedelta(hours=1)).replace(minute=0, second=0)
                continue
            if t.minute not in self.minutes:
                t = (t + datetime.timedelta(minutes=1)).replace(second=0)
                continue
            later = [s for s in self.seconds if s >= t.second]
            if later:
                return t.replace(second=min(later))
            t = (t + datetime.timedelta(minutes=1)).replace(second=0)
        return None

    def __str__(self) -> str:
        return self.expression


@dataclass(frozen=True)
class IntervalSchedule:
    """A constant interval (a TimeSpan schedule such as ``"00:00:30"``)."""

    expression: str
    interval: datetime.timedelta

    def next_after(self, when: datetime.datetime) -> datetime.datetime:
        """`when` plus the interval."""
        return when + self.interval

    def __str__(self) -> str:
        return self.expression


def parse_schedule(expression: str) -> CronSchedule | IntervalSchedule:
    """A timer trigger's ``schedule``: NCRONTAB first, then a positive TimeSpan.

    Raises:
        ScheduleError: neither; the message gives the NCRONTAB problem.
    """
    try:
        return CronSchedule.parse(expression)
    except ScheduleError as cron_error:
        try:
            seconds = parse_timespan(expression)
        except ValueError:
            raise ScheduleError(
                f"The schedule expression {expression!r} was not recognized as a valid cron"
                f" expression or timespan string: {cron_error}"
            ) from None
        if seconds <= 0:
            raise ScheduleError(f"the TimeSpan schedule {expression!r} must be positive") from None
        # TimeSpan.MaxValue (parse_timespan's bound) is well within timedelta's range
        return IntervalSchedule(expression, datetime.timedelta(seconds=seconds))


def _weekday(when: datetime.datetime) -> int:
    return (when.weekday() + 1) % 7  # Python: Monday = 0; NCrontab: Sunday = 0


def _next_month(t: datetime.datetime) -> datetime.datetime:
    if t.month == 12:
        return t.replace(year=t.year + 1, month=1, day=1, hour=0, minute=0, second=0)
    return t.replace(month=t.month + 1, day=1, hour=0, minute=0, second=0)


def _parse_field(token: str, spec: _Field) -> frozenset[int]:
    values: set[int] = set()
    for part in token.split(","):
        try:
            values.update(_parse_part(part, spec))
        except ScheduleError as exc:
            raise ScheduleError(
                f"{token!r} is not a valid [{spec.name}] crontab field expression: {exc}"
            ) from None
    return frozenset(values)


def _parse_part(part: str, spec: _Field) -> range:
    if not part:
        raise ScheduleError("a crontab field value cannot be empty")
    step = 1
    body, slash, step_text = part.partition("/")
    if slash:
        number = _number(step_text)
        if number is None:
            raise ScheduleError(f"the step {step_text!r} must be a whole number")
        step = max(number, 1)
    if body == "*":
        return range(spec.low, spec.high + 1, step)
    first_text, dash, last_text = body.partition("-")
    if dash and first_text:
        first, last = _value(first_text, spec), _value(last_text, spec)
        if first > last:
            first, last = last, first
    else:
        first = _value(body, spec)
        last = spec.high if slash else first
    for value in (first, last):
        if value < spec.low or value > spec.high:
            raise ScheduleError(f"{value} is outside {spec.low}-{spec.high}")
    return range(first, last + 1, step)


def _value(text: str, spec: _Field) -> int:
    if not text:
        raise ScheduleError("a crontab field value cannot be empty")
    if text[0].isascii() and text[0].isdigit():
        number = _number(text)
        if number is None:
            raise ScheduleError(f"{text!r} is not a number")
        return number
    if not spec.names:
        raise ScheduleError(f"{text!r} is not a number between {spec.low} and {spec.high}")
    for index, name in enumerate(spec.names):
        if name.lower().startswith(text.lower()):
            return spec.low + index
    raise ScheduleError(f"{text!r} is not a known value name; use one of {', '.join(spec.names)}")


def _number(text: str) -> int | None:
    """A number in a field as NCrontab reads it (``int.Parse``); None when not ASCII digits.

    Raises:
        ScheduleError: more than ``int.MaxValue``.
    """
    if not (text.isascii() and text.isdigit()):
        return None
    digits = text.lstrip("0") or "0"
    if len(digits) > 10 or int(digits) > 2**31 - 1:
        raise ScheduleError(f"{digits[:12]}… is too large a number")
    return int(digits)


def resolve_setting_tokens(text: str, settings: Mapping[str, str]) -> str:
    """Replace every ``%name%`` in `text` with the app setting `name` (module docstring).

    Settings are looked up as the host's configuration looks them up: the name in any letter
    case, ``:`` and ``__`` alike.

    Raises:
        ScheduleError: a ``%`` without its closing ``%``, or a name with no setting (the SDK's
            messages).
    """
    out: list[str] = []
    i = 0
    while i < len(text):
        start = text.find("%", i)
        if start < 0:
            out.append(text[i:])
            break
        end = text.find("%", start + 1)
        if end < 0:
            raise ScheduleError(f"The '%' at position {start} does not have a closing '%'")
        name = text[start + 1 : end]
        value = _setting(settings, name) if name else None
        if value is None:
            raise ScheduleError(f"'%{name}%' does not resolve to a value.")
        out.append(text[i:start])
        out.append(value)
        i = end + 1
    return "".join(out)


def timer_trigger(
    trigger: Mapping[str, Any], settings: Mapping[str, str]
) -> tuple[CronSchedule | IntervalSchedule, bool]:
    """A timer trigger binding's schedule and ``runOnStartup``, as the host reads them.

    Its keys in any letter case (``TimerTriggerScriptBinding.GetAttributes`` in
    src/WebJobs.Script/Binding/CoreExtensionsScriptBindingProvider.cs, Azure/azure-functions-
    host); ``runOnStartup`` and ``useMonitor`` are read as .NET converts a JSON value to a bool
    (``true``, ``"True"``, a number other than 0); ``%setting%`` tokens replaced
    (`resolve_setting_tokens`), then `parse_schedule`.

    Raises:
        ScheduleError: what the host reports for this function (its message).
    """
    try:
        schedule = metadata_string(trigger, "schedule")
    except BindingError as exc:
        raise ScheduleError(str(exc)) from None
    run_on_startup = _metadata_bool(trigger, "runOnStartup")
    _metadata_bool(trigger, "useMonitor")
    if not schedule:  # no expression: the attribute's ScheduleType, which is null
        raise ScheduleError("Value cannot be null. (Parameter 'type')")
    return parse_schedule(resolve_setting_tokens(schedule, settings)), run_on_startup


def _metadata_bool(trigger: Mapping[str, Any], key: str) -> bool:
    """``GetMetadataValue<bool>``: JSON true/false, ``"true"``/``"False"`` (trimmed, any case)
    or a number (non-zero is true); absent or null is false."""
    value = binding_value(trigger, key)
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str) and fold(value.strip()) in ("TRUE", "FALSE"):
        return fold(value.strip()) == "TRUE"
    raise ScheduleError(
        f"Error parsing function.json: Invalid value specified for binding property '{key}' of"
        " type Boolean."
    )


def _setting(settings: Mapping[str, str], name: str) -> str | None:
    """``IConfiguration[name]``: keys compared ignoring case, ``__`` standing for ``:``."""
    if name in settings:
        return settings[name]
    wanted = fold(name.replace("__", ":"))
    for key, value in settings.items():
        if fold(key.replace("__", ":")) == wanted:
            return value
    return None
