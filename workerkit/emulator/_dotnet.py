""".NET's parsers for the values the host reads from configuration and route segments.

The host is a .NET program: whether ``{id:guid}`` matches a segment, or ``"authLevel":
"Anonymous, Function"`` is accepted, is decided by .NET's own ``TryParse`` methods, which
accept more (and sometimes less) than Python's. These functions answer the same way, from
dotnet/runtime (src/libraries/System.Private.CoreLib/src/System): ``Guid.TryParseGuid`` and
its ``TryParseExact{N,D,B,P,X}`` (Guid.cs), ``Number.TryParseNumber`` with the
``NumberStyles`` each caller passes (Number.Parsing.cs), ``Enum.TryParse`` (Enum.cs) and
``bool.TryParse`` (Boolean.cs), with the invariant culture's symbols; and ``new Regex`` as
far as Python's `re` can follow it (`dotnet_regex`). Comparisons that .NET
makes with ``StringComparison.OrdinalIgnoreCase`` use `fold`.
"""

from __future__ import annotations

import decimal
import re
from collections.abc import Sequence
from typing import Final

__all__ = [
    "DECIMAL_MAX",
    "dotnet_regex",
    "fold",
    "is_bool",
    "is_decimal",
    "is_double",
    "is_guid",
    "parse_enum",
    "parse_integer",
]

#: decimal.MaxValue.
DECIMAL_MAX: Final = decimal.Decimal("79228162514264337593543950335")
_HEX: Final = frozenset("0123456789abcdefABCDEF")
_DIGITS: Final = frozenset("0123456789")
#: Number.IsWhite: space and \t \n \v \f \r (not every Unicode space, unlike str.strip()).
_NUMBER_WHITE: Final = frozenset(" \t\n\v\f\r")


def fold(text: str) -> str:
    """`text` for an ``OrdinalIgnoreCase`` comparison: each character's simple upper case
    (``str.upper`` would turn ``ß`` into ``SS``; .NET leaves it)."""
    out = []
    for char in text:
        upper = char.upper()
        out.append(upper if len(upper) == 1 else char)
    return "".join(out)


def _dotnet_strip(text: str) -> str:
    """``string.Trim()`` / ``Number.SpanTrim``: what ``char.IsWhiteSpace`` calls white."""
    return text.strip()


# -- numbers ----------------------------------------------------------------------------------
def _number(
    text: str,
    *,
    decimal_point: bool,
    thousands: bool,
    exponent: bool,
    trailing_sign: bool,
) -> decimal.Decimal | None:
    """``Number.TryParseNumber`` with leading/trailing white space and a leading sign always
    allowed (every style the route constraints use has them); None when .NET fails."""
    i, n = 0, len(text)
    negative = signed = False
    while i < n:  # leading white space, then at most one sign (no white space after it)
        if text[i] in _NUMBER_WHITE and not signed:
            i += 1
        elif text[i] in "+-" and not signed:
            negative, signed = text[i] == "-", True
            i += 1
        else:
            break
    digits: list[str] = []
    scale = 0
    seen_digit = seen_point = False
    while i < n:
        char = text[i]
        if char in _DIGITS:
            seen_digit = True
            digits.append(char)
            if seen_point:
                scale -= 1
        elif char == "." and decimal_point and not seen_point:
            seen_point = True
        elif char == "," and thousands and seen_digit and not seen_point:
            pass
        else:
            break
        i += 1
    if not seen_digit:
        return None
    power = 0
    if exponent and i < n and text[i] in "eE":
        j = i + 1
        exp_negative = False
        if j < n and text[j] in "+-":
            exp_negative = text[j] == "-"
            j += 1
        if j < n and text[j] in _DIGITS:
            start = j
            while j < n and text[j] in _DIGITS:
                j += 1
            power = min(int(text[start:j][-12:]) if j - start <= 12 else 10**12, 10**12)
            power *= -1 if exp_negative else 1
            i = j
    while i < n:  # trailing white space, and a trailing sign where allowed
        if text[i] in _NUMBER_WHITE:
            i += 1
        elif trailing_sign and not signed and text[i] in "+-":
            negative, signed = text[i] == "-", True
            i += 1
        else:
            break
    if text[i:].strip("\0"):  # only NUL characters may follow (Number.TrailingZeros)
        return None
    return decimal.Decimal(f"{'-' if negative else ''}{''.join(digits)}E{scale + power}")


def parse_integer(text: str, bits: int) -> int | None:
    """``int.TryParse``/``long.TryParse`` (``NumberStyles.Integer``, invariant culture): the
    value, or None (not a number, or outside the signed `bits`-bit range)."""
    value = _number(text, decimal_point=False, thousands=False, exponent=False, trailing_sign=False)
    if value is None:
        return None
    bound = 1 << (bits - 1)
    return int(value) if -bound <= value < bound else None


def is_decimal(text: str) -> bool:
    """``decimal.TryParse(text, NumberStyles.Number, CultureInfo.InvariantCulture)``: thousands
    separators and a trailing sign allowed, no exponent; digits past the 28th decimal place are
    rounded away, a larger magnitude than ``decimal.MaxValue`` fails."""
    value = _number(text, decimal_point=True, thousands=True, exponent=False, trailing_sign=True)
    if value is None:
        return False
    with decimal.localcontext() as context:
        context.prec = 200
        return abs(value) < DECIMAL_MAX + decimal.Decimal("0.5")


def is_double(text: str) -> bool:
    """``double.TryParse``/``float.TryParse`` with ``NumberStyles.Float |
    NumberStyles.AllowThousands`` (invariant culture): an out-of-range value is infinity, not a
    failure; ``Infinity``, ``-Infinity`` and ``NaN`` (any case, a sign allowed) are numbers."""
    value = _number(text, decimal_point=True, thousands=True, exponent=True, trailing_sign=False)
    if value is not None:
        return True
    word = fold(text.strip(" \t\n\v\f\r").rstrip("\0"))
    if word[:1] in "+-":
        word = word[1:]
    return word in ("INFINITY", "NAN")


# -- other values -----------------------------------------------------------------------------
def is_bool(text: str) -> bool:
    """``bool.TryParse``: ``True``/``False`` in any case, white space and NULs around allowed."""
    start, end = 0, len(text)
    while start < end and (text[start].isspace() or text[start] == "\0"):
        start += 1
    while end > start and (text[end - 1].isspace() or text[end - 1] == "\0"):
        end -= 1
    return fold(text[start:end]) in ("TRUE", "FALSE")


def parse_enum(text: str, names: Sequence[str]) -> int | None:
    """``Enum.TryParse(text, ignoreCase: true)`` for an enum whose values are 0, 1, 2, … in the
    order of `names`: a number (any, even one without a name), or names separated by commas
    (combined as flags); None when .NET fails."""
    text = _dotnet_strip(text)
    if not text:
        return None
    if text[0] in _DIGITS or text[0] in "+-":
        value = parse_integer(text, 32)
        return value
    result = 0
    for part in text.split(","):
        wanted = fold(_dotnet_strip(part))
        found = next((i for i, name in enumerate(names) if fold(name) == wanted), None)
        if found is None:
            return None
        result |= found
    return result


def is_guid(text: str) -> bool:
    """``Guid.TryParse``: 32 hex digits (N), 8-4-4-4-12 with hyphens (D), that in braces (B) or
    parentheses (P), or ``{0x…,0x…,0x…,{0x…,…}}`` (X); white space around allowed."""
    text = _dotnet_strip(text)
    if len(text) < 32:
        return False
    if text[0] == "(":
        return len(text) == 38 and text[-1] == ")" and _guid_d(text[1:-1])
    if text[0] == "{":
        if text[9:10] == "-":
            return len(text) == 38 and text[-1] == "}" and _guid_d(text[1:-1])
        return _guid_x(text)
    if text[8] == "-":
        return _guid_d(text)
    return len(text) == 32 and all(c in _HEX for c in text)


def _guid_d(text: str) -> bool:
    if len(text) != 36 or any(text[i] != "-" for i in (8, 13, 18, 23)):
        return False
    groups = (text[0:8], text[9:13], text[14:18], text[19:23], text[24:36])
    if all(c in _HEX for group in groups for c in group):
        return True
    # The compatibility path (Guid.cs, TryCompatParsing): a group may start with "+" and/or
    # "0x" if its length still fits; the last 8 digits never may.
    if not any(c in "xX+" for c in text):
        return False
    parts = (text[0:8], text[9:13], text[14:18], text[19:23], text[24:28])
    return all(_hex_number(part)[0] for part in parts) and all(c in _HEX for c in text[28:36])


def _hex_number(text: str) -> tuple[bool, int]:
    """Guid.TryParseHex: an optional "+", an optional "0x", then hex digits; (ok, value)."""
    if text.startswith("+"):
        text = text[1:]
    if len(text) > 1 and text[0] == "0" and text[1] in "xX":
        text = text[2:]
    if not all(c in _HEX for c in text):
        return False, 0
    digits = text.lstrip("0")
    if len(digits) > 8:
        return False, 0  # overflow
    return True, int(digits or "0", 16)


def _guid_x(text: str) -> bool:
    text = "".join(c for c in text if not c.isspace())
    if not (text.startswith("{") and text.endswith("}}")):
        return False
    head, brace, rest = text[1:-2].partition(",{")
    if not brace:
        return False
    first = head.split(",")
    last = rest.split(",")
    if len(first) != 3 or len(last) != 8:
        return False
    for index, part in enumerate((*first, *last)):
        if len(part) < 3 or part[0] != "0" or part[1] not in "xX":
            return False
        ok, value = _hex_number(part[2:])
        if not ok or (index >= 3 and value > 0xFF):
            return False
    return True


# -- regular expressions ----------------------------------------------------------------------
def dotnet_regex(pattern: str, flags: int = 0) -> re.Pattern[str]:
    """A .NET regular expression compiled by Python's `re`: ``(?<name>…)`` and
    ``(?'name'…)`` groups, ``\\k<name>`` back references and ``\\z`` rewritten into Python's
    spelling.

    Raises:
        re.error: `re` cannot compile it, including a pattern nested too deeply for its
            parser or with a repetition count beyond its limit (which would otherwise be a
            RecursionError or an OverflowError).
    """
    pattern = re.sub(r"(?<!\\)\(\?<(?![=!])([A-Za-z_]\w*)>", r"(?P<\1>", pattern)
    pattern = re.sub(r"(?<!\\)\(\?'([A-Za-z_]\w*)'", r"(?P<\1>", pattern)
    pattern = re.sub(r"\\k<([A-Za-z_]\w*)>", r"(?P=\1)", pattern)
    pattern = re.sub(r"(?<!\\)((?:\\\\)*)\\z", r"\1\\Z", pattern)
    try:
        return re.compile(pattern, flags)
    except (RecursionError, OverflowError) as exc:
        raise re.error(f"{type(exc).__name__}: {exc}") from None
