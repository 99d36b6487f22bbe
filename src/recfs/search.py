"""The search language of `recfs search` and the match of a query against a recording.

A query is terms ANDed together (a literal `AND` between them is allowed):

    caller=+15551234567   callee=…   number=…  (either side)
    call_id=…   agent=…   queue=…   direction=inbound|outbound
    since=2025-01-01   until=2025-01-31   (dates are UTC days; until includes its day;
                                           an ISO time or epoch seconds also do)
    min_duration=90   (seconds; 90s, 2m, 1h and 1:30 also do)
    name~=invoice     (a substring of the file name, any case)

Each provider maps its own metadata to a `Record` (`Source.record`): the fields every
provider's recordings can have, None where its listings do not say. The matcher knows
no provider. Phone numbers compare by their digits (`+1 (555) 123-4567`, `15551234567`
and `0015551234567` are one number). Where a service does not say which side a number
is on (a number in a file name), the record's `numbers` hold it, and caller=, callee=
and number= all match it.

`since`/`until` compare the time the mount files a recording under (its date folder:
the call's start on Kazoo, the object's createdTime on 8x8, the file's time on OCE and
Alvaria), so a search and a walk of the date folders agree.
"""
from __future__ import annotations

import calendar
import datetime as dt
import re
import shlex
from dataclasses import dataclass, field, fields

NUMBER_FIELDS = ("caller", "callee", "number")
TEXT_FIELDS = ("call_id", "agent", "queue", "direction")
ALL_FIELDS = (*NUMBER_FIELDS, *TEXT_FIELDS, "since", "until", "min_duration", "name")
DIRECTIONS = ("inbound", "outbound")
_TERM = re.compile(r"^([a-z_]+)(~=|=)(.*)$", re.S)
_NUMBER_IN_NAME = re.compile(r"(?<!\d)\+?\d{7,15}(?!\d)")   # a run of digits, as names hold them
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smh]?)$")


class QueryError(ValueError):
    """A query that cannot be read: the message says which term and why."""


def normalise_number(text: str) -> str:
    """The digits of a phone number, an international `00` prefix dropped: the form
    two numbers are compared in."""
    digits = re.sub(r"\D", "", text)
    if digits.startswith("00"):
        digits = digits[2:]
    return digits


def numbers_in(name: str) -> tuple[str, ...]:
    """The phone numbers in a file name (runs of 7 to 15 digits), normalised."""
    out = []
    for m in _NUMBER_IN_NAME.finditer(name):
        digits = normalise_number(m.group(0))
        if len(digits) >= 7 and digits not in out:
            out.append(digits)
    return tuple(out)


@dataclass(frozen=True)
class Query:
    caller: str | None = None           # normalised digits
    callee: str | None = None
    number: str | None = None
    call_id: str | None = None
    agent: str | None = None
    queue: str | None = None
    direction: str | None = None        # inbound / outbound
    since: float | None = None          # epoch seconds, inclusive
    until: float | None = None          # epoch seconds, exclusive
    min_duration: float | None = None   # seconds
    name: str | None = None             # a substring, lower case
    text: str = field(default="", compare=False)    # as written, for messages

    def key(self) -> tuple:
        """What makes two queries the same search (memoised results)."""
        return tuple(getattr(self, f.name) for f in fields(self) if f.name != "text")

    def given(self) -> set[str]:
        """The fields the query names."""
        return {f.name for f in fields(self) if f.name != "text" and getattr(self, f.name) is not None}

    def numbers(self) -> dict[str, str]:
        """The number terms: {caller|callee|number: digits}."""
        return {f: getattr(self, f) for f in NUMBER_FIELDS if getattr(self, f) is not None}


def _time(value: str, term: str, *, end: bool) -> float:
    value = value.strip()
    if re.fullmatch(r"\d{9,11}(\.\d+)?", value):
        return float(value)
    for fmt, unit in (("%Y-%m-%d", "day"), ("%Y-%m", "month"), ("%Y", "year")):
        try:
            d = dt.datetime.strptime(value, fmt).replace(tzinfo=dt.timezone.utc)
        except ValueError:
            continue
        if end:         # until= includes the whole day, month or year it names
            if unit == "day":
                d += dt.timedelta(days=1)
            elif unit == "month":
                d = d.replace(year=d.year + d.month // 12, month=d.month % 12 + 1)
            else:
                d = d.replace(year=d.year + 1)
        return d.timestamp()
    try:
        d = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise QueryError(f"{term}: expected a date (2025-01-31), an ISO time "
                         f"(2025-01-31T08:00:00Z) or epoch seconds, got {value!r}") from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.timezone.utc)
    return d.timestamp()


def _duration(value: str, term: str) -> float:
    v = value.strip().lower()
    m = re.fullmatch(r"(\d+):([0-5]\d)", v)
    if m:
        return int(m.group(1)) * 60 + int(m.group(2))
    m = _DURATION.match(v)
    if not m:
        raise QueryError(f"{term}: expected seconds (90, 90s, 2m, 1h or 1:30), got {value!r}")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def parse(terms: str | list[str]) -> Query:
    """A Query from its terms (a list, as the command line gives them, or one string
    split as a shell would). Raises QueryError naming the term at fault."""
    if isinstance(terms, str):
        try:
            terms = shlex.split(terms)
        except ValueError as exc:
            raise QueryError(f"cannot split the query: {exc}") from None
    values: dict[str, object] = {}
    written = []
    for raw in terms:
        term = raw.strip()
        if not term or term.upper() == "AND":
            continue
        if term.upper() == "OR":
            raise QueryError("OR is not supported: terms are ANDed; run one search per alternative")
        m = _TERM.match(term)
        if not m:
            raise QueryError(f"{term!r}: expected FIELD=VALUE (or name~=TEXT); fields: "
                             f"{', '.join(ALL_FIELDS)}")
        key, op, value = m.group(1), m.group(2), m.group(3).strip()
        if key not in ALL_FIELDS:
            raise QueryError(f"{term!r}: unknown field {key!r}; fields: {', '.join(ALL_FIELDS)}")
        if (op == "~=") != (key == "name"):
            raise QueryError(f"{term!r}: use name~=TEXT for a substring, and = for the other fields")
        if not value:
            raise QueryError(f"{term!r}: empty value")
        if key in values:
            raise QueryError(f"{term!r}: {key} is given twice (terms are ANDed)")
        if key in NUMBER_FIELDS:
            digits = normalise_number(value)
            if not digits or re.search(r"[A-Za-z]", value):
                raise QueryError(f"{term!r}: expected a phone number (digits, a leading +)")
            values[key] = digits
        elif key == "direction":
            if value.lower() not in DIRECTIONS:
                raise QueryError(f"{term!r}: expected direction=inbound or direction=outbound")
            values[key] = value.lower()
        elif key in ("since", "until"):
            values[key] = _time(value, term, end=key == "until")
        elif key == "min_duration":
            values[key] = _duration(value, term)
        elif key == "name":
            values[key] = value.lower()
        else:
            values[key] = value
        written.append(term)
    if not written:
        raise QueryError("an empty query: give at least one term, e.g. caller=+15551234567")
    if values.get("since") is not None and values.get("until") is not None \
            and values["until"] <= values["since"]:
        raise QueryError("until= is not after since=")
    return Query(**values, text=" ".join(written))


@dataclass(frozen=True)
class Record:
    """A recording's canonical fields, as one provider's metadata tells them."""
    name: str
    time: float                                 # the time its date folder stands for
    caller: str | None = None                   # normalised numbers
    callee: str | None = None
    numbers: tuple[str, ...] = ()               # numbers of no known side (from the name)
    call_id: str | None = None
    agents: tuple[str, ...] = ()                # every way the service names the agent
    queue: str | None = None
    direction: str | None = None                # inbound / outbound
    duration: float | None = None               # seconds


def record_from_name(name: str, time: float, **known) -> Record:
    """A record of what a file name and time say (and what else is `known`)."""
    return Record(name=name, time=time, numbers=numbers_in(name), **known)


def direction_of(value) -> str | None:
    v = str(value or "").strip().lower()
    return v if v in DIRECTIONS else None


def number_of(value) -> str | None:
    digits = normalise_number(str(value or ""))
    return digits or None


def matches(query: Query, rec: Record) -> bool:
    """Whether the recording `rec` answers `query` (every term)."""
    if query.since is not None and rec.time < query.since:
        return False
    if query.until is not None and rec.time >= query.until:
        return False
    for side in ("caller", "callee"):
        want = getattr(query, side)
        if want is not None and getattr(rec, side) != want and want not in rec.numbers:
            return False
    if query.number is not None and query.number not in (rec.caller, rec.callee, *rec.numbers):
        return False
    if query.call_id is not None and rec.call_id != query.call_id:
        return False
    if query.agent is not None and query.agent.lower() not in (a.lower() for a in rec.agents):
        return False
    if query.queue is not None and (rec.queue or "").lower() != query.queue.lower():
        return False
    if query.direction is not None and rec.direction != query.direction:
        return False
    if query.min_duration is not None and (rec.duration is None or rec.duration < query.min_duration):
        return False
    if query.name is not None and query.name not in rec.name.lower():
        return False
    return True


def day_bounds(year: int, month: int = 0, day: int = 0) -> tuple[float, float]:
    """[start, end) in epoch seconds of a UTC year, month or day."""
    if not month:
        return (calendar.timegm((year, 1, 1, 0, 0, 0)), calendar.timegm((year + 1, 1, 1, 0, 0, 0)))
    if not day:
        nxt = (year + month // 12, month % 12 + 1)
        return (calendar.timegm((year, month, 1, 0, 0, 0)), calendar.timegm((*nxt, 1, 0, 0, 0)))
    start = calendar.timegm((year, month, day, 0, 0, 0))
    return start, start + 86400


def overlaps(span: tuple[float, float] | None, query: Query) -> bool:
    """Whether a folder covering `span` (None: unknown) may hold a match by time."""
    if span is None:
        return True
    lo, hi = span
    return (query.until is None or lo < query.until) and (query.since is None or hi > query.since)
