"""HTTP trigger route templates, matched the way ASP.NET Core routing (and so the host) does.

A template is segments separated by ``/``. A segment is literal text (matched
case-insensitively), a parameter, or a mix (``{name}.{ext}``). Parameters:

- ``{name}``: one non-empty segment;
- ``{name?}`` / ``{name=default}``: optional (only in the trailing segments);
- ``{*name}`` / ``{**name}``: catch-all, the rest of the path (last segment only);
- constraints after the name: ``{id:int}``, ``{v:length(2,8)}``, ``{x:regex(^a+$)}``, several
  chained (``{n:int:min(1)}``); supported: ``int``, ``long``, ``bool``, ``guid``, ``alpha``,
  ``decimal``, ``double``, ``float``, ``datetime``, ``min``, ``max``, ``range``,
  ``minlength``, ``maxlength``, ``length``, ``regex``, ``required``, ``file``, ``nonfile``.

``{{`` and ``}}`` are literal braces. A template with an unknown constraint or another
syntax error is a `RouteError`. `Route.match` returns the parameter values (percent-decoded
path segments; an absent optional parameter maps to its default or None) or None.
"""

from __future__ import annotations

import datetime
import math
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

__all__ = ["Route", "RouteEntry", "RouteError", "RouteMatch", "Router"]

T = TypeVar("T")
_NAME: Final = re.compile(r"^[^{}/\\?*:=\s]+$")


class RouteError(ValueError):
    """A route template the host would reject; the message says why."""


@dataclass(frozen=True)
class _Param:
    name: str
    constraints: tuple[tuple[str, str | None], ...] = ()
    optional: bool = False
    default: str | None = None
    catch_all: bool = False


@dataclass(frozen=True)
class _Segment:
    parts: tuple[str | _Param, ...]

    @property
    def single(self) -> _Param | None:
        if len(self.parts) == 1 and isinstance(self.parts[0], _Param):
            return self.parts[0]
        return None


@dataclass(frozen=True)
class Route:
    """A parsed route template (module docstring)."""

    template: str
    segments: tuple[_Segment, ...]

    @classmethod
    def parse(cls, template: str) -> Route:
        """Parse `template` (leading ``/`` or ``~/`` removed).

        Raises:
            RouteError: bad syntax, duplicate or invalid names, an unknown constraint, an
                optional parameter before a required segment, a catch-all not last.
        """
        text = template.strip()
        if text.startswith("~/"):
            text = text[2:]
        text = text.lstrip("/")
        raw_segments = _split_segments(text, template) if text else []
        segments = tuple(_parse_segment(raw, template) for raw in raw_segments)
        names: set[str] = set()
        seen_optional = False
        for index, segment in enumerate(segments):
            params = [p for p in segment.parts if isinstance(p, _Param)]
            for param in params:
                if param.name.lower() in names:
                    raise RouteError(f"route {template!r}: parameter {param.name!r} appears twice")
                names.add(param.name.lower())
                if (param.optional or param.catch_all) and segment.single is None:
                    raise RouteError(
                        f"route {template!r}: an optional or catch-all parameter must be a whole"
                        " segment"
                    )
                if param.catch_all and index != len(segments) - 1:
                    raise RouteError(
                        f"route {template!r}: a catch-all parameter must be the last segment"
                    )
            single = segment.single
            optional = single is not None and (single.optional or single.catch_all)
            if seen_optional and not optional:
                raise RouteError(
                    f"route {template!r}: a required segment cannot follow an optional parameter"
                )
            seen_optional = seen_optional or optional
        return cls(template, segments)

    @property
    def parameters(self) -> list[str]:
        """Parameter names in order."""
        return [p.name for s in self.segments for p in s.parts if isinstance(p, _Param)]

    def match(self, path: Sequence[str]) -> dict[str, str | None] | None:
        """Match decoded path segments (after the route prefix); values by parameter name.

        One trailing empty segment (a trailing ``/``) is ignored.
        """
        if path and path[-1] == "":
            path = path[:-1]
        values: dict[str, str | None] = {}
        for index, segment in enumerate(self.segments):
            single = segment.single
            if single is not None and single.catch_all:
                rest = "/".join(path[index:])  # may be empty: catch-alls are optional
                if rest and not _satisfies(single, rest):
                    return None
                values[single.name] = rest or single.default
                return values
            if index >= len(path):
                if single is not None and (single.optional or single.default is not None):
                    values[single.name] = single.default
                    continue
                return None
            found = _match_segment(segment, path[index])
            if found is None:
                return None
            values.update(found)
        if len(path) > len(self.segments):
            return None
        return values

    def precedence(self) -> tuple[int, ...]:
        """Sort key: lower matches first (literal < complex < constrained < plain < catch-all)."""
        key: list[int] = []
        for segment in self.segments:
            single = segment.single
            if not any(isinstance(p, _Param) for p in segment.parts):
                key.append(1)
            elif single is None:
                key.append(2)
            elif single.catch_all:
                key.append(5)
            elif single.constraints:
                key.append(3)
            else:
                key.append(4)
        return (*key, 9)

    def normalized(self) -> str:
        """A canonical form for conflict checks (names and letter case ignored)."""
        out: list[str] = []
        for segment in self.segments:
            text = ""
            for part in segment.parts:
                if isinstance(part, _Param):
                    kind = "*" if part.catch_all else "?" if part.optional else ""
                    text += "{" + kind + ":".join(c for c, _ in part.constraints) + "}"
                else:
                    text += part.lower()
            out.append(text)
        return "/".join(out)


def _split_segments(text: str, template: str) -> list[str]:
    segments: list[str] = []
    depth = 0
    current = ""
    i = 0
    while i < len(text):
        char = text[i]
        if char == "{":
            if depth == 0 and text.startswith("{{", i):
                current += "{{"
                i += 2
                continue
            depth += 1
        elif char == "}":
            if depth == 0:
                if text.startswith("}}", i):
                    current += "}}"
                    i += 2
                    continue
                raise RouteError(f"route {template!r}: unmatched '}}'")
            depth -= 1
        elif char == "/" and depth == 0:
            segments.append(current)
            current = ""
            i += 1
            continue
        current += char
        i += 1
    if depth:
        raise RouteError(f"route {template!r}: unmatched '{{'")
    segments.append(current)
    if any(s == "" for s in segments):
        raise RouteError(f"route {template!r}: empty segment ('//')")
    return segments


def _parse_segment(raw: str, template: str) -> _Segment:
    parts: list[str | _Param] = []
    literal = ""
    i = 0
    while i < len(raw):
        if raw.startswith("{{", i):
            literal += "{"
            i += 2
        elif raw.startswith("}}", i):
            literal += "}"
            i += 2
        elif raw[i] == "{":
            end = _param_end(raw, i + 1, template)
            if literal:
                parts.append(literal)
                literal = ""
            if parts and isinstance(parts[-1], _Param):
                raise RouteError(
                    f"route {template!r}: two parameters must be separated by literal text"
                )
            parts.append(_parse_param(raw[i + 1 : end].replace("}}", "}"), template))
            i = end + 1
        elif raw[i] == "?":
            raise RouteError(f"route {template!r}: '?' may only mark an optional parameter")
        else:
            literal += raw[i]
            i += 1
    if literal:
        parts.append(literal)
    return _Segment(tuple(parts))


def _param_end(raw: str, start: int, template: str) -> int:
    i, depth = start, 0
    while i < len(raw):
        if raw[i] == "(":
            depth += 1
        elif raw[i] == ")":
            depth = max(depth - 1, 0)
        elif raw[i] == "}":
            if raw.startswith("}}", i) and depth:
                i += 2
                continue
            return i
        i += 1
    raise RouteError(f"route {template!r}: unmatched '{{'")


def _parse_param(body: str, template: str) -> _Param:
    catch_all = False
    if body.startswith("**"):
        body, catch_all = body[2:], True
    elif body.startswith("*"):
        body, catch_all = body[1:], True
    optional = False
    default: str | None = None
    # the default (after '=') and '?' come after the constraints, outside parentheses
    pieces = _split_outside_parens(body, ":")
    last = pieces[-1]
    eq = _find_outside_parens(last, "=")
    if eq >= 0:
        default = last[eq + 1 :]
        pieces[-1] = last[:eq]
    if pieces[-1].endswith("?") and default is None:
        optional = True
        pieces[-1] = pieces[-1][:-1]
    name = pieces[0]
    if not name or not _NAME.match(name):
        raise RouteError(f"route {template!r}: invalid parameter name {name!r}")
    if optional and catch_all:
        raise RouteError(f"route {template!r}: a catch-all parameter cannot be optional")
    constraints: list[tuple[str, str | None]] = []
    for text in pieces[1:]:
        constraint, paren, rest = text.partition("(")
        argument: str | None = None
        if paren:
            if not rest.endswith(")"):
                raise RouteError(f"route {template!r}: constraint {text!r} lacks ')'")
            argument = rest[:-1]
        key = constraint.strip().lower()
        if key not in _CHECKS:
            raise RouteError(f"route {template!r}: unknown route constraint {constraint!r}")
        _check_argument(key, argument, template)
        constraints.append((key, argument))
    return _Param(name, tuple(constraints), optional, default, catch_all)


def _split_outside_parens(text: str, separator: str) -> list[str]:
    pieces, depth, current = [], 0, ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth = max(depth - 1, 0)
        if char == separator and depth == 0:
            pieces.append(current)
            current = ""
        else:
            current += char
    pieces.append(current)
    return pieces


def _find_outside_parens(text: str, wanted: str) -> int:
    depth = 0
    for index, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth = max(depth - 1, 0)
        elif char == wanted and depth == 0:
            return index
    return -1


def _match_segment(segment: _Segment, value: str) -> dict[str, str | None] | None:
    single = segment.single
    if single is not None:
        if value == "" or not _satisfies(single, value):
            return None
        return {single.name: value}
    pattern = "".join(
        "(.+?)" if isinstance(part, _Param) else re.escape(part) for part in segment.parts
    )
    found = re.fullmatch(pattern, value, re.IGNORECASE | re.DOTALL)
    if found is None:
        return None
    params = [p for p in segment.parts if isinstance(p, _Param)]
    values: dict[str, str | None] = {}
    for param, captured in zip(params, found.groups(), strict=True):
        if not _satisfies(param, captured):
            return None
        values[param.name] = captured
    return values


def _satisfies(param: _Param, value: str) -> bool:
    return all(_CHECKS[name](value, argument) for name, argument in param.constraints)


def _int_in(value: str, bits: int) -> bool:
    text = value.strip()
    digits = text[1:] if text[:1] in "+-" else text
    if not digits or not (digits.isascii() and digits.isdigit()):
        return False
    bound = 1 << (bits - 1)
    return -bound <= int(text) < bound


def _float(value: str, finite: bool) -> bool:
    text = value.strip()
    if not text or "_" in text or not text.isascii():
        return False
    try:
        number = float(text)
    except ValueError:
        return False
    return math.isfinite(number) or not finite


def _guid(value: str) -> bool:
    try:
        uuid.UUID(value.strip())
    except ValueError:
        return False
    return True


def _datetime(value: str) -> bool:
    try:
        datetime.datetime.fromisoformat(value.strip())
    except ValueError:
        return False
    return True


def _numbers(argument: str | None) -> list[int]:
    return [int(part.strip()) for part in (argument or "").split(",")]


def _length(value: str, argument: str | None) -> bool:
    bounds = _numbers(argument)
    if len(bounds) == 1:
        return len(value) == bounds[0]
    return bounds[0] <= len(value) <= bounds[1]


def _long_between(value: str, low: int | None, high: int | None) -> bool:
    if not _int_in(value, 64):
        return False
    number = int(value.strip())
    return (low is None or number >= low) and (high is None or number <= high)


_CHECKS: Final[dict[str, Callable[[str, str | None], bool]]] = {
    "int": lambda v, _: _int_in(v, 32),
    "long": lambda v, _: _int_in(v, 64),
    "bool": lambda v, _: v.strip().lower() in ("true", "false"),
    "guid": lambda v, _: _guid(v),
    "alpha": lambda v, _: bool(re.fullmatch(r"[a-zA-Z]*", v)),
    "decimal": lambda v, _: _float(v, finite=True),
    "double": lambda v, _: _float(v, finite=False),
    "float": lambda v, _: _float(v, finite=False),
    "datetime": lambda v, _: _datetime(v),
    "min": lambda v, a: _long_between(v, _numbers(a)[0], None),
    "max": lambda v, a: _long_between(v, None, _numbers(a)[0]),
    "range": lambda v, a: _long_between(v, *_numbers(a)),
    "minlength": lambda v, a: len(v) >= _numbers(a)[0],
    "maxlength": lambda v, a: len(v) <= _numbers(a)[0],
    "length": _length,
    "regex": lambda v, a: bool(re.search(a or "", v, re.IGNORECASE)),
    "required": lambda v, _: v != "",
    "file": lambda v, _: "." in v.rsplit("/", 1)[-1],
    "nonfile": lambda v, _: "." not in v.rsplit("/", 1)[-1],
}
_ARGUMENTS: Final = {"min": 1, "max": 1, "range": 2, "minlength": 1, "maxlength": 1}


def _check_argument(name: str, argument: str | None, template: str) -> None:
    if name == "regex":
        if not argument:
            raise RouteError(f"route {template!r}: regex() needs a pattern")
        try:
            re.compile(argument)
        except re.error as exc:
            raise RouteError(f"route {template!r}: regex({argument}) is invalid: {exc}") from None
        return
    wanted = _ARGUMENTS.get(name)
    if name == "length":
        counts: tuple[int, ...] = (1, 2)
    elif wanted is not None:
        counts = (wanted,)
    else:
        if argument is not None:
            raise RouteError(f"route {template!r}: constraint {name!r} takes no argument")
        return
    try:
        numbers = _numbers(argument)
    except ValueError:
        raise RouteError(
            f"route {template!r}: constraint {name}({argument}) needs whole numbers"
        ) from None
    if argument is None or len(numbers) not in counts:
        raise RouteError(
            f"route {template!r}: constraint {name!r} needs {' or '.join(map(str, counts))}"
            " number(s)"
        )


@dataclass(frozen=True)
class RouteEntry(Generic[T]):
    """A route with the methods it accepts (None: any) and what it leads to."""

    route: Route
    methods: frozenset[str] | None
    target: T

    def allows(self, method: str) -> bool:
        """Whether `method` (any case) is accepted."""
        return self.methods is None or method.upper() in self.methods


@dataclass(frozen=True)
class RouteMatch(Generic[T]):
    """A matched route and its parameter values."""

    entry: RouteEntry[T]
    params: dict[str, str | None]


class Router(Generic[T]):
    """Routes in precedence order (`Route.precedence`, then template text).

    `match` returns the first route that matches the path and accepts the method; when
    routes match the path but none accepts the method, the set of methods they accept (the
    answer is then 405); otherwise None (404).
    """

    def __init__(self, entries: Sequence[RouteEntry[T]]) -> None:
        self.entries = sorted(
            entries, key=lambda e: (e.route.precedence(), e.route.template.lower())
        )

    def match(self, method: str, path: Sequence[str]) -> RouteMatch[T] | frozenset[str] | None:
        """Match decoded path segments (after the prefix) and a method (module docstring)."""
        allowed: set[str] = set()
        for entry in self.entries:
            params = entry.route.match(path)
            if params is None:
                continue
            if entry.allows(method):
                return RouteMatch(entry, params)
            allowed |= entry.methods or set()
        return frozenset(allowed) if allowed else None
