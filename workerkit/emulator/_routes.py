"""HTTP trigger route templates, parsed and matched the way the host's ASP.NET Core routing does.

The host maps each HTTP function with ASP.NET Core's legacy ``Route`` (Azure/azure-webjobs-sdk-
extensions, src/WebJobs.Extensions.Http/Routing/WebJobsRouteBuilder.cs), so the rules are
ASP.NET's (dotnet/aspnetcore, src/Http/Routing/src): the template is parsed by
``Patterns/RoutePatternParser`` and ``RouteParameterParser``, its inline constraints resolved
by ``DefaultInlineConstraintResolver`` (`_constraints`), and a request path matched by
``RoutePatternMatcher``. In short:

- one leading ``/`` (or ``~/``) is dropped; two ``/`` in a row are an error; a trailing ``/``
  is fine;
- a segment is literal text (matched in any letter case), a parameter, or a mix of both
  (``{name}.{ext}``, matched from the right: ``a.tar.gz`` gives ``a.tar`` and ``gz``);
- ``{{`` and ``}}`` stand for ``{`` and ``}``, in literals and inside parameters, so a regular
  expression's braces are doubled: ``{code:regex(^[A-Z]{{3}}$)}``;
- ``{name?}`` is optional, ``{name=default}`` has a default, ``{*name}``/``{**name}`` takes the
  rest of the path (last segment only); ``{file}.{ext?}`` makes the extension optional;
- constraints follow the name: ``{id:int}``, ``{id:int:min(1)}`` (`_constraints`).

A template ASP.NET rejects is a `RouteError` with its message. `Router` tries its routes in the
order given: the host registers them in function-name order and takes the first that matches
(no "most specific route wins", unlike ASP.NET Core's endpoint routing).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Final, Generic, TypeVar

from ._constraints import Constraint, RouteError, resolve_constraint
from ._dotnet import fold

__all__ = ["Route", "RouteEntry", "RouteError", "RouteMatch", "Router"]

T = TypeVar("T")
_INVALID_NAME_CHARS: Final = frozenset("/{}?*")
_MISMATCHED: Final = (
    "There is an incomplete parameter in the route template. Check that each '{' character has"
    " a matching '}' character."
)
_UNESCAPED: Final = "In a route parameter, '{' and '}' must be escaped with '{{' and '}}'."


@dataclass(frozen=True)
class _Literal:
    text: str
    separator: bool = False  # the "." before an optional last parameter

    def shown(self) -> str:
        return self.text


@dataclass(frozen=True)
class _Param:
    name: str
    constraint_texts: tuple[str, ...] = ()
    optional: bool = False
    default: str | None = None
    catch_all: bool = False
    double_star: bool = False
    constraints: tuple[Constraint, ...] = field(default=(), compare=False)

    def shown(self) -> str:
        star = ("**" if self.double_star else "*") if self.catch_all else ""
        policies = "".join(f":{c}" for c in self.constraint_texts)
        default = f"={self.default}" if self.default is not None else ""
        return "{" + star + self.name + policies + default + ("?" if self.optional else "") + "}"


_Part = _Literal | _Param


@dataclass(frozen=True)
class _Segment:
    parts: tuple[_Part, ...]

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
        """Parse `template` as ASP.NET Core does, and resolve its inline constraints.

        Raises:
            RouteError: ASP.NET rejects the template (its message).
        """
        segments = _Parser(template).parse()
        resolved = []
        for segment in segments:
            parts: list[_Part] = []
            for part in segment.parts:
                if isinstance(part, _Param) and part.constraint_texts:
                    part = replace(part, constraints=_resolve(part, template))
                parts.append(part)
            resolved.append(_Segment(tuple(parts)))
        return cls(template, tuple(resolved))

    def without_prefix(self, count: int, template: str) -> Route:
        """This route matched after its first `count` segments (a route prefix the caller
        matches itself), shown as `template`."""
        return Route(template, self.segments[count:])

    @property
    def parameters(self) -> list[str]:
        """Parameter names in order."""
        return [p.name for s in self.segments for p in s.parts if isinstance(p, _Param)]

    def match(self, path: Sequence[str]) -> dict[str, str | None] | None:
        """Match decoded path segments (after the route prefix): the parameter values (None for
        an absent optional parameter without a default), or None.

        A trailing ``/`` (a last empty segment) is ignored, except that a catch-all parameter
        keeps it, as the host's ``PathTokenizer`` and ``RoutePatternMatcher`` do.
        """
        trailing = bool(path) and path[-1] == ""
        if trailing:
            path = path[:-1]
        values: dict[str, str | None] = {}
        absent: set[str] = set()  # optional parameters that got no value
        caught_all = False
        for index, segment in enumerate(self.segments):
            single = segment.single
            if single is not None and single.catch_all:
                rest = "/".join(path[index:]) + ("/" if trailing else "")
                values[single.name] = rest if index < len(path) else single.default
                caught_all = True
                break
            if index >= len(path):  # the path ran out: only optional or defaulted parameters
                if single is None or not (single.optional or single.default is not None):
                    return None
                values[single.name] = single.default
                if single.default is None:
                    absent.add(single.name)
                continue
            value = path[index]
            if value == "":
                return None
            if single is not None:
                values[single.name] = value
            elif len(segment.parts) == 1:
                literal = segment.parts[0]
                assert isinstance(literal, _Literal)
                if fold(value) != fold(literal.text):
                    return None
            else:
                found = _match_complex(segment.parts, value)
                if found is None:
                    return None
                values.update(found)
                absent.update(
                    p.name for p in segment.parts if isinstance(p, _Param) and p.name not in found
                )
        if not caught_all and len(path) > len(self.segments):
            return None
        for name in absent:
            values.setdefault(name, None)
        for param in (p for s in self.segments for p in s.parts if isinstance(p, _Param)):
            if not param.constraints or param.name in absent:
                continue  # OptionalRouteConstraint: nothing to check without a value
            got = values.get(param.name)
            if got is None or not all(check(got) for check in param.constraints):
                return None
        return values


def _resolve(param: _Param, template: str) -> tuple[Constraint, ...]:
    """``RouteConstraintBuilder.AddResolvedConstraint`` for each inline constraint."""
    found = []
    for text in param.constraint_texts:
        constraint = resolve_constraint(text)
        if constraint is None:
            raise RouteError(
                f"The constraint entry '{param.name}' - '{text}' on the route '{template}' could"
                " not be resolved by the constraint resolver of type"
                " 'DefaultInlineConstraintResolver'."
            )
        found.append(constraint)
    return tuple(found)


class _Parser:
    """RoutePatternParser, step by step (its errors end with ``(Parameter 'routeTemplate')``
    because ``TemplateParser.Parse`` rethrows them as ``ArgumentException``)."""

    def __init__(self, template: str) -> None:
        self.template = template
        self.names: set[str] = set()
        if template.startswith("~/"):
            self.text = template[2:]
        elif template.startswith("/"):
            self.text = template[1:]
        elif template.startswith("~"):
            raise self.error(
                "The route template cannot start with a '~' character unless followed by a '/'."
            )
        else:
            self.text = template

    def error(self, message: str) -> RouteError:
        return RouteError(f"{message} (Parameter 'routeTemplate')")

    def parse(self) -> list[_Segment]:
        text, i = self.text, 0
        segments: list[_Segment] = []
        while i < len(text):
            if text[i] == "/":
                raise self.error(
                    "The route template separator character '/' cannot appear consecutively. It"
                    " must be separated by either a parameter or a literal value."
                )
            parts, i = self.segment(i)
            segments.append(_Segment(tuple(parts)))
            i += 1  # past the '/' (or the end)
        for index, segment in enumerate(segments):
            for position, part in enumerate(segment.parts):
                last = index == len(segments) - 1 and position == len(segment.parts) - 1
                if isinstance(part, _Param) and part.catch_all and not last:
                    raise self.error(
                        "A catch-all parameter can only appear as the last segment of the route"
                        " template."
                    )
        return segments

    def segment(self, i: int) -> tuple[list[_Part], int]:
        text = self.text
        parts: list[_Part] = []
        while True:
            if text[i] == "{":
                if i + 1 >= len(text):
                    raise self.error(_MISMATCHED)
                escaped = text[i + 1] == "{"
                i = self.literal(i, parts) if escaped else self.parameter(i, parts)
            else:
                i = self.literal(i, parts)
            if i >= len(text) or text[i] == "/":
                break
        self.check_segment(parts)
        return parts, i

    def literal(self, i: int, parts: list[_Part]) -> int:
        text, start = self.text, i
        while i < len(text) and text[i] != "/":
            if text[i] in "{}":
                if i + 1 >= len(text):
                    raise self.error(_MISMATCHED)
                if text[i + 1] != text[i]:
                    if text[i] == "}":
                        raise self.error(_MISMATCHED)
                    break  # a parameter starts
                i += 1  # an escaped brace
            i += 1
        decoded = text[start:i].replace("}}", "}").replace("{{", "{")
        if "?" in decoded:
            raise self.error(
                f"The literal section '{decoded}' is invalid. Literal sections cannot contain the"
                " '?' character."
            )
        parts.append(_Literal(decoded))
        return i

    def parameter(self, i: int, parts: list[_Part]) -> int:
        text, start = self.text, i
        j = i + 1
        while True:
            if j >= len(text):
                raise self.error(_MISMATCHED)
            if text[j] == "{":
                j += 1
                if j >= len(text):
                    raise self.error(_MISMATCHED)
                if text[j] != "{":
                    raise self.error(_UNESCAPED)
            elif text[j] == "}":
                j += 1
                if j >= len(text) or text[j] != "}":
                    break  # the end of the parameter
            j += 1
        captured = text[start:j]
        if captured == "{}":
            raise self.error(_invalid_name(""))
        decoded = captured[1:-1].replace("}}", "}").replace("{{", "{")
        param = _parameter(decoded)
        if decoded.startswith("*") and decoded.endswith("?"):
            raise self.error("A catch-all parameter cannot be marked optional.")
        if param.optional and param.default is not None:
            raise self.error("An optional parameter cannot have default value.")
        if not param.name or any(c in _INVALID_NAME_CHARS for c in param.name):
            raise self.error(_invalid_name(param.name))
        if fold(param.name) in self.names:
            raise self.error(
                f"The route parameter name '{param.name}' appears more than one time in the route"
                " template."
            )
        self.names.add(fold(param.name))
        parts.append(param)
        return j

    def check_segment(self, parts: list[_Part]) -> None:
        """RoutePatternParser.IsSegmentValid."""
        shown = "".join(p.shown() for p in parts)
        if len(parts) > 1 and any(isinstance(p, _Param) and p.catch_all for p in parts):
            raise self.error(
                "A path segment that contains more than one section, such as a literal section or"
                " a parameter, cannot contain a catch-all parameter."
            )
        for index, part in enumerate(parts):
            if not (isinstance(part, _Param) and part.optional and len(parts) > 1):
                continue
            if index != len(parts) - 1:
                raise self.error(
                    f"An optional parameter must be at the end of the segment. In the segment"
                    f" '{shown}', optional parameter '{part.name}' is followed by"
                    f" '{parts[index + 1].shown()}'."
                )
            previous = parts[index - 1]
            if not isinstance(previous, _Literal) or previous.text != ".":
                raise self.error(
                    f"In the segment '{shown}', the optional parameter '{part.name}' is preceded"
                    f" by an invalid segment '{previous.shown()}'. Only a period (.) can precede"
                    " an optional parameter."
                )
            parts[index - 1] = _Literal(".", separator=True)
        for before, after in itertools.pairwise(parts):
            if isinstance(before, _Param) and isinstance(after, _Param):
                raise self.error(
                    "A path segment cannot contain two consecutive parameters. They must be"
                    " separated by a '/' or by a literal string."
                )


def _invalid_name(name: str) -> str:
    return (
        f"The route parameter name '{name}' is invalid. Route parameter names must be non-empty"
        " and cannot contain these characters: '{', '}', '/'. The '?' character marks a"
        " parameter as optional, and can occur only at the end of the parameter. The '*'"
        " character marks a parameter as catch-all, and can occur only at the start of the"
        " parameter."
    )


def _parameter(text: str) -> _Param:
    """RouteParameterParser.ParseRouteParameter: the inside of ``{…}``, braces decoded."""
    if not text:
        return _Param("")
    start, end = 0, len(text) - 1
    catch_all = double = optional = False
    if text.startswith("**"):
        catch_all, double, start = True, True, 2
    elif text.startswith("*"):
        catch_all, start = True, 1
    if text[end] == "?":
        optional, catch_all, end = True, False, end - 1
    name, current = "", start
    while current <= end:
        if text[current] in ":=" and current != start:
            name = text[start:current]
            current -= 1
            break
        if current == end:
            name = text[start : current + 1]
        current += 1
    current, constraints = _constraint_texts(text, current, end)
    default = None
    if current <= end and text[current] == "=":
        default = text[current + 1 : end + 1]
    return _Param(name, tuple(constraints), optional, default, catch_all, double)


def _constraint_texts(text: str, current: int, end: int) -> tuple[int, list[str]]:
    """RouteParameterParser.ParseConstraints: the constraint texts after a parameter's name
    (parentheses may hold ``:`` and ``=``), and where the default value would start."""
    found: list[str] = []
    state, start = "start", current
    while state != "end":
        char = text[current] if current <= end else None
        if state == "start":
            if char is None:
                state = "end"
            elif char == ":":
                state, start = "name", current + 1
            elif char == "(":
                state = "paren"
            elif char == "=":
                state, current = "end", current - 1
        elif state == "paren":
            if char is None:
                state = "end"
                found.append(text[start:current])
            elif char == ")":
                following = text[current + 1] if current + 1 <= end else None
                if following is None or following == "=":
                    state = "end"
                    found.append(text[start : current + 1])
                elif following == ":":
                    state = "start"
                    found.append(text[start : current + 1])
                    start = current + 1
            elif char in ":=":
                closing = text.find(")", current + 1)
                if closing == -1:
                    found.append(text[start:current])
                    if char == ":":
                        state, start = "name", current + 1
                    else:
                        state, current = "end", current - 1
                else:
                    current = closing
        else:  # parsing a constraint's name
            if char is None or char in ":=":
                if text[start:current]:
                    found.append(text[start:current])
                if char is None:
                    state = "end"
                elif char == ":":
                    start = current + 1
                else:
                    state, current = "end", current - 1
            elif char == "(":
                state = "paren"
        current += 1
    return current, found


def _match_complex(parts: tuple[_Part, ...], value: str) -> dict[str, str] | None:
    """RoutePatternMatcher.MatchComplexSegment: a segment of several parts, right to left."""
    last = len(parts) - 1
    final, before = parts[last], parts[last - 1]
    if (
        isinstance(final, _Param)
        and final.optional
        and isinstance(before, _Literal)
        and before.separator
    ):
        found = _match_complex_from(parts, value, last)
        if found is not None:
            return found
        if fold(value).endswith(fold(before.text)):
            return None
        return _match_complex_from(parts, value, last - 2)
    return _match_complex_from(parts, value, last)


def _match_complex_from(parts: tuple[_Part, ...], value: str, index: int) -> dict[str, str] | None:
    folded = fold(value)
    last_index = len(value)
    pending: _Param | None = None
    last_literal: _Literal | None = None
    found: dict[str, str] = {}
    while index >= 0:
        new_last = last_index
        part = parts[index]
        if isinstance(part, _Param):
            pending = part
        else:
            last_literal = part
            start = last_index - 1 if pending is not None else last_index
            if start == 0:
                return None
            position = folded[:start].rfind(fold(part.text))
            if position == -1:
                return None
            if index == len(parts) - 1 and position + len(part.text) != len(value):
                return None
            new_last = position
        if pending is not None and (isinstance(part, _Literal) or index == 0):
            if last_literal is None or (index == 0 and isinstance(part, _Param)):
                begin, length = 0, last_index
            else:
                begin = new_last + len(last_literal.text)
                length = last_index - begin
            captured = value[begin : begin + length]
            if not captured:
                return None
            found[pending.name] = captured
            pending, last_literal = None, None
        last_index = new_last
        index -= 1
    if last_index == 0 or isinstance(parts[0], _Param):
        return found
    return None


@dataclass(frozen=True)
class RouteEntry(Generic[T]):
    """A route with the methods it accepts (None: any) and what it leads to."""

    route: Route
    methods: frozenset[str] | None
    target: T

    def allows(self, method: str) -> bool:
        """Whether `method` is accepted (``HttpMethodRouteConstraint``: in any letter case)."""
        return self.methods is None or fold(method) in {fold(m) for m in self.methods}


@dataclass(frozen=True)
class RouteMatch(Generic[T]):
    """A matched route and its parameter values."""

    entry: RouteEntry[T]
    params: dict[str, str | None]


class Router(Generic[T]):
    """Routes tried in the order given, the first match winning, as the host's route collection
    tries them (its order is the functions' names, compared ignoring case).

    `match` returns the first route that matches the path and accepts the method; when
    routes match the path but none accepts the method, the set of methods they accept;
    otherwise None.
    """

    def __init__(self, entries: Sequence[RouteEntry[T]]) -> None:
        self.entries = list(entries)

    def match(self, method: str, path: Sequence[str]) -> RouteMatch[T] | frozenset[str] | None:
        """Match decoded path segments (after the prefix) and a method (class docstring)."""
        allowed: set[str] = set()
        for entry in self.entries:
            params = entry.route.match(path)
            if params is None:
                continue
            if entry.allows(method):
                return RouteMatch(entry, params)
            allowed |= entry.methods or set()
        return frozenset(allowed) if allowed else None
