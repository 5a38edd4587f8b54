"""NCRONTAB schedules (six fields, or five without seconds) and TimeSpan schedules, as timers
read them; ``%setting%`` tokens; the timer binding's keys in any case."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workerkit.emulator import CronSchedule, IntervalSchedule, ScheduleError, parse_schedule
from workerkit.emulator._cron import resolve_setting_tokens, timer_trigger

PROPERTY = settings(max_examples=150, deadline=None)
T = datetime.datetime


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("*/5 * * * * *", T(2024, 5, 1, 10, 0, 3), T(2024, 5, 1, 10, 0, 5)),
        ("*/5 * * * * *", T(2024, 5, 1, 10, 0, 5), T(2024, 5, 1, 10, 0, 10)),
        ("0 */5 * * * *", T(2024, 5, 1, 10, 1, 0), T(2024, 5, 1, 10, 5, 0)),
        ("0 30 9 * * 1-5", T(2024, 5, 3, 10, 0, 0), T(2024, 5, 6, 9, 30, 0)),  # Fri -> Mon
        ("0 0 0 1 Jan *", T(2024, 5, 1), T(2025, 1, 1)),
        ("0 0 12 * * sun", T(2024, 5, 1), T(2024, 5, 5, 12)),
        ("0 0 0 29 2 *", T(2023, 3, 1), T(2024, 2, 29)),
        ("0 0 0 13 * 5", T(2024, 1, 1), T(2024, 9, 13)),  # day AND weekday (Friday the 13th)
        ("10-5 0 0 * * *", T(2024, 1, 1, 0, 0, 4), T(2024, 1, 1, 0, 0, 5)),  # reversed range
        ("5/20 * * * * *", T(2024, 1, 1, 0, 0, 6), T(2024, 1, 1, 0, 0, 25)),  # N/step = N-max/step
        ("1,2,30 * * * * *", T(2024, 1, 1, 0, 0, 2), T(2024, 1, 1, 0, 0, 30)),
        ("59 59 23 31 12 *", T(2024, 12, 31, 23, 59, 59), T(2025, 12, 31, 23, 59, 59)),
    ],
)
def test_next_occurrence(expression: str, after: T, expected: T) -> None:
    assert CronSchedule.parse(expression).next_after(after) == expected


def test_a_schedule_that_never_fires() -> None:
    assert CronSchedule.parse("0 0 0 30 2 *").next_after(T(2024, 1, 1)) is None


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("* * * * * * *", "It must contain 6 components"),
        ("* * * *", "It must contain 6 components"),
        ("*\t* * * *", "It must contain 6 components"),  # NCrontab splits on spaces only
        ("60 * * * * *", "outside 0-59"),
        ("* * 24 * * *", "outside 0-23"),
        ("* * * 0 * *", "outside 1-31"),
        ("* * * * 13 *", "outside 1-12"),
        ("* * * * * 7", "outside 0-6"),
        ("*/x * * * * *", "step"),
        ("a * * * * *", "is not a number"),
        ("1a * * * * *", "is not a number"),
        ("* * * * Foo *", "not a known value name"),
        ("1,,2 * * * * *", "cannot be empty"),
        ("-5 * * * * *", "not a number"),
    ],
)
def test_invalid_expressions(expression: str, reason: str) -> None:
    with pytest.raises(ScheduleError) as info:
        CronSchedule.parse(expression)
    assert reason in str(info.value)


def test_timespan_schedules_and_the_fallback_message() -> None:
    schedule = parse_schedule("00:00:30")
    assert isinstance(schedule, IntervalSchedule)
    assert schedule.next_after(T(2024, 1, 1)) == T(2024, 1, 1, 0, 0, 30)
    assert isinstance(parse_schedule("*/2 * * * * *"), CronSchedule)
    with pytest.raises(
        ScheduleError, match="not recognized as a valid cron expression or timespan"
    ):
        parse_schedule("every minute")
    with pytest.raises(ScheduleError, match="must be positive"):
        parse_schedule("00:00:00")


# -- properties ------------------------------------------------------------------------------
def field(low: int, high: int) -> st.SearchStrategy[tuple[str, set[int]]]:
    """A random field expression and the set of values it stands for (reference semantics)."""
    values = st.integers(low, high)
    single = values.map(lambda v: (str(v), {v}))
    star = st.integers(1, 30).map(lambda s: (f"*/{s}", set(range(low, high + 1, s))))
    ranged = st.tuples(values, values, st.integers(1, 10)).map(
        lambda t: (
            f"{t[0]}-{t[1]}/{t[2]}",
            set(range(min(t[0], t[1]), max(t[0], t[1]) + 1, t[2])),
        )
    )
    part = st.one_of(single, star, ranged, st.just(("*", set(range(low, high + 1)))))
    return st.lists(part, min_size=1, max_size=3).map(
        lambda parts: (",".join(p[0] for p in parts), set().union(*(p[1] for p in parts)))
    )


BOUNDS = [(0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 6)]
moments = st.datetimes(min_value=T(2000, 1, 1), max_value=T(2090, 1, 1))


@PROPERTY
@given(st.tuples(*(field(low, high) for low, high in BOUNDS)))
def test_parsed_fields_equal_the_reference_sets(fields: tuple[tuple[str, set[int]], ...]) -> None:
    schedule = CronSchedule.parse(" ".join(text for text, _ in fields))
    parsed = (
        schedule.seconds,
        schedule.minutes,
        schedule.hours,
        schedule.days,
        schedule.months,
        schedule.weekdays,
    )
    assert [set(p) for p in parsed] == [values for _, values in fields]


@PROPERTY
@given(st.tuples(field(0, 59), field(0, 59), field(0, 23)), moments)
def test_next_is_the_first_match_after(fields: tuple[tuple[str, set[int]], ...], when: T) -> None:
    schedule = CronSchedule.parse(" ".join(text for text, _ in fields) + " * * *")
    found = schedule.next_after(when)
    assert found is not None
    assert found > when and found.microsecond == 0
    assert schedule.matches(found)
    # nothing in between matches (checked second by second, skipping hours that cannot match)
    probe = when.replace(microsecond=0) + datetime.timedelta(seconds=1)
    steps = 0
    while probe < found and steps < 5000:
        assert not schedule.matches(probe)
        if probe.hour in schedule.hours:
            probe += datetime.timedelta(seconds=1)
        else:
            probe = probe.replace(minute=0, second=0) + datetime.timedelta(hours=1)
        steps += 1


@PROPERTY
@given(st.tuples(*(field(low, high) for low, high in BOUNDS)), moments)
def test_next_always_matches_every_field(fields: tuple[tuple[str, set[int]], ...], when: T) -> None:
    schedule = CronSchedule.parse(" ".join(text for text, _ in fields))
    found = schedule.next_after(when)
    if found is not None:
        assert found > when and schedule.matches(found)


@PROPERTY
@given(st.text(max_size=30))
def test_any_text_parses_or_is_a_schedule_error(text: str) -> None:
    try:
        parse_schedule(text)
    except ScheduleError:
        pass


@pytest.mark.parametrize(
    "expression",
    [
        "1000000000",  # 10^9 days: beyond TimeSpan.MaxValue, so no TimeSpan
        "10675199.02:48:05.4775808",  # TimeSpan.MaxValue plus one tick
        "1" + "0" * 400,  # once an OverflowError
        "9" * 5000 + " * * * * *",  # once a ValueError: more digits than int() converts
        "0/" + "9" * 5000 + " * * * * *",
        "0" * 5000 + "99 * * * * *",
        "2147483648 * * * * *",  # NCrontab's int.Parse overflows
    ],
)
def test_numbers_too_large_for_dotnet_are_schedule_errors(expression: str) -> None:
    with pytest.raises(ScheduleError, match="not recognized as a valid cron expression"):
        parse_schedule(expression)


def test_leading_zeros_are_any_number_of_zeros() -> None:
    schedule = parse_schedule("0" * 5000 + "7 */" + "0" * 5000 + "5 * * * *")
    assert isinstance(schedule, CronSchedule)
    assert (schedule.seconds, schedule.minutes) == ({7}, set(range(0, 60, 5)))


def test_the_longest_timespan_is_a_schedule() -> None:
    schedule = parse_schedule("10675199.02:48:05.4775807")  # TimeSpan.MaxValue
    assert isinstance(schedule, IntervalSchedule)
    assert schedule.interval.days == 10675199


# -- five fields, %settings%, the timer binding ----------------------------------------------------
@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("*/5 * * * *", T(2024, 5, 1, 10, 1, 30), T(2024, 5, 1, 10, 5, 0)),
        ("0 9 * * 1-5", T(2024, 5, 3, 10, 0, 0), T(2024, 5, 6, 9, 0, 0)),  # Fri -> Mon 09:00:00
        ("  30   2 * * *  ", T(2024, 5, 1), T(2024, 5, 1, 2, 30, 0)),  # extra spaces are fine
    ],
)
def test_five_fields_are_minute_to_weekday_at_second_zero(
    expression: str, after: T, expected: T
) -> None:
    """EXT Timers/Scheduling/CronSchedule.HasSeconds: exactly five fields parse without
    seconds (NCrontab then fires at second 0)."""
    schedule = parse_schedule(expression)
    assert isinstance(schedule, CronSchedule) and schedule.seconds == {0}
    assert schedule.next_after(after) == expected
    assert str(schedule) == expression


@PROPERTY
@given(st.tuples(*(field(low, high) for low, high in BOUNDS[1:])), moments)
def test_five_fields_mean_the_six_with_second_zero(
    fields: tuple[tuple[str, set[int]], ...], when: T
) -> None:
    five = " ".join(text for text, _ in fields)
    assert CronSchedule.parse(five).next_after(when) == CronSchedule.parse("0 " + five).next_after(
        when
    )


@pytest.mark.parametrize(
    ("text", "settings", "expected"),
    [
        ("%S%", {"S": "0 */5 * * * *"}, "0 */5 * * * *"),
        ("0 %m% * * * *", {"M": "15"}, "0 15 * * * *"),  # names ignore case
        ("%a%:%b%", {"a": "00", "b": "30"}, "00:30"),
        ("%Section:Key% *", {"Section__Key": "x"}, "x *"),  # "__" stands for ":"
        ("no tokens", {}, "no tokens"),
        ("%EMPTY%x", {"EMPTY": ""}, "x"),
    ],
)
def test_setting_tokens_anywhere_in_a_schedule(
    text: str, settings: dict[str, str], expected: str
) -> None:
    """The SDK's NameResolverExtensions.ResolveWholeStringCore replaces every %name%."""
    assert resolve_setting_tokens(text, settings) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0 %missing% * * * *", "'%missing%' does not resolve to a value."),
        ("%% * * * * *", "'%%' does not resolve to a value."),
        ("0 0 %half", "The '%' at position 4 does not have a closing '%'"),
    ],
)
def test_unresolved_setting_tokens(text: str, message: str) -> None:
    with pytest.raises(ScheduleError) as info:
        resolve_setting_tokens(text, {"other": "1"})
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("binding", "expected"),
    [
        ({"schedule": "0 * * * * *"}, ("0 * * * * *", False)),
        ({"Schedule": "*/5 * * * *", "RunOnStartup": True}, ("*/5 * * * *", True)),
        ({"SCHEDULE": "00:00:10", "runonstartup": "True"}, ("00:00:10", True)),
        ({"schedule": "%S%", "runOnStartup": 1}, ("0 0 * * * *", True)),  # a number: non-zero
        ({"schedule": "0 * * * * *", "runOnStartup": " false "}, ("0 * * * * *", False)),
    ],
)
def test_the_timer_binding_is_read_like_the_host_reads_it(
    binding: dict[str, object], expected: tuple[str, bool]
) -> None:
    """TimerTriggerScriptBinding.GetAttributes: GetMetadataValue finds keys in any case and
    converts runOnStartup as .NET converts a JSON value to bool."""
    schedule, run_on_startup = timer_trigger(binding, {"S": "0 0 * * * *"})
    assert (str(schedule), run_on_startup) == expected


@pytest.mark.parametrize(
    ("binding", "message"),
    [
        ({}, "Value cannot be null. (Parameter 'type')"),
        ({"schedule": ["0 * * * * *"]}, "binding property 'schedule' of type String."),
        ({"schedule": "0 * * * * *", "runOnStartup": "yes"}, "'runOnStartup' of type Boolean."),
        ({"schedule": "0 * * * * *", "useMonitor": {}}, "'useMonitor' of type Boolean."),
        ({"schedule": "every day"}, "was not recognized as a valid cron expression"),
    ],
)
def test_timer_bindings_the_host_refuses(binding: dict[str, object], message: str) -> None:
    with pytest.raises(ScheduleError) as info:
        timer_trigger(binding, {})
    assert message in str(info.value)
