"""The search language (search.py) and the providers' maps of their metadata to the
canonical fields."""
from __future__ import annotations

import datetime as dt

import pytest

from recfs.search import Query, QueryError, Record, matches, normalise_number, numbers_in, parse

UTC = dt.timezone.utc


def ts(*args) -> float:
    return dt.datetime(*args, tzinfo=UTC).timestamp()


def test_terms_are_anded_and_values_normalised():
    q = parse(["caller=+1 (555) 123-4567", "AND", "direction=Inbound", "since=2025-01-01",
               "until=2025-01-31", "min_duration=1:30", "name~=Invoice", "agent=Ada Lovelace"])
    assert q.caller == "15551234567"
    assert q.direction == "inbound"
    assert q.since == ts(2025, 1, 1) and q.until == ts(2025, 2, 1)     # until includes its day
    assert q.min_duration == 90 and q.name == "invoice" and q.agent == "Ada Lovelace"
    assert q.given() == {"caller", "direction", "since", "until", "min_duration", "name", "agent"}


def test_one_string_is_split_as_a_shell_would():
    assert parse('agent="Ada Lovelace" queue=Support') == Query(agent="Ada Lovelace", queue="Support")


@pytest.mark.parametrize("value, seconds", [("90", 90), ("90s", 90), ("2m", 120), ("1h", 3600),
                                            ("2:05", 125)])
def test_durations(value, seconds):
    assert parse([f"min_duration={value}"]).min_duration == seconds


@pytest.mark.parametrize("value, when", [("2025-03", ts(2025, 4, 1)), ("2025", ts(2026, 1, 1)),
                                         ("2025-03-02T10:00:00Z", ts(2025, 3, 2, 10)),
                                         ("1740909600", 1740909600)])
def test_until_forms(value, when):
    assert parse([f"until={value}"]).until == when


@pytest.mark.parametrize("terms, message", [
    (["colour=blue"], "unknown field 'colour'"),
    (["caller"], "expected FIELD=VALUE"),
    (["caller=abc"], "expected a phone number"),
    (["caller="], "empty value"),
    (["direction=sideways"], "direction=inbound or direction=outbound"),
    (["since=yesterday"], "expected a date"),
    (["min_duration=long"], "expected seconds"),
    (["name=foo"], "use name~=TEXT"),
    (["caller~=555"], "use name~=TEXT"),
    (["caller=1", "caller=2"], "given twice"),
    (["caller=1", "OR", "caller=2"], "OR is not supported"),
    (["since=2025-02-01", "until=2025-01-01"], "not after since"),
    ([], "an empty query"),
])
def test_bad_terms_say_what_is_wrong(terms, message):
    with pytest.raises(QueryError, match=message):
        parse(terms)


def test_numbers_compare_by_their_digits():
    assert normalise_number("+44 20 7946 0958") == normalise_number("0044-20-7946-0958") == "442079460958"
    assert numbers_in("call-+15551230001-20250101_3.wav") == ("15551230001", "20250101")
    assert numbers_in("k123456.mp3") == ()


def test_matches_every_term():
    rec = Record(name="Call-1.wav", time=ts(2025, 1, 5, 9), caller="15551230001", callee="15550100",
                 call_id="abc", agents=("u1", "Ada Lovelace"), queue="Support", direction="inbound",
                 duration=120)
    yes = ["caller=+15551230001", "callee=15550100", "number=15550100", "call_id=abc",
           "agent=ada lovelace", "queue=support", "direction=inbound", "since=2025-01-05",
           "until=2025-01-05", "min_duration=2m", "name~=call-"]
    assert matches(parse(yes), rec)
    for term in ["caller=15550100", "callee=15551230001", "number=1", "call_id=abd", "agent=u2",
                 "queue=Sales", "direction=outbound", "since=2025-01-06", "until=2025-01-04",
                 "min_duration=121", "name~=x"]:
        assert not matches(parse([term]), rec), term


def test_a_number_of_no_side_answers_caller_callee_and_number():
    rec = Record(name="15551230001_0.wav", time=0, numbers=("15551230001",))
    for field in ("caller", "callee", "number"):
        assert matches(parse([f"{field}=+15551230001"]), rec)
    assert not matches(parse(["min_duration=1"]), rec)      # unknown duration: no match


def test_providers_map_their_metadata():
    from recfs.sources.eightbyeight import EightByEightSource
    from recfs.sources.kazoo import KazooSource
    k = KazooSource.record(None, "a.mp3", {"kazoo.caller_id_number": "+15551230001",
                                           "kazoo.callee_id_number": "100", "kazoo.owner_id": "u1",
                                           "kazoo.duration_ms": "61000", "kazoo.direction": "inbound",
                                           "kazoo.call_id": "c1"}, 5.0)
    assert k == Record(name="a.mp3", time=5.0, caller="15551230001", callee="100", call_id="c1",
                       agents=("u1",), direction="inbound", duration=61.0)
    x = EightByEightSource.record(None, "b.wav", {"8x8.callerId": "+15551230001", "8x8.agentId": "ag1",
                                                  "8x8.agentName": "Ada", "8x8.queueName": "Support",
                                                  "8x8.direction": "OUTBOUND", "8x8.duration": "1271000"}, 7.0)
    assert x.caller == "15551230001" and x.agents == ("ag1", "Ada") and x.queue == "Support"
    assert x.direction == "outbound" and x.duration == 1271.0
