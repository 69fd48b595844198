"""examples/events/: one proto3 canonical JSON CaseEvent per event type,
parsed with Python's protobuf runtime (strictly: unknown fields rejected)."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from google.protobuf import json_format

from harness import EXAMPLES
from caseshare.v1 import common_pb2, events_pb2

DOMAINS = ("social_care", "early_help", "education", "health")
UPN_LETTERS = "ABCDEFGHJKLMNPQRTUVWXYZ"


def event_types() -> dict[str, str]:
    """Event type → payload field, from the schema's `payload` oneof."""
    out = {}
    for field in events_pb2.CaseEvent.DESCRIPTOR.oneofs_by_name["payload"].fields:
        domain = next(d for d in DOMAINS if field.name.startswith(d + "_"))
        out[f"{domain}.{field.name[len(domain) + 1:]}"] = field.name
    return out


EVENT_TYPES = event_types()


def nhs_number_valid(n: str) -> bool:
    if len(n) != 10 or not n.isdigit():
        return False
    check = 11 - sum(int(d) * w for d, w in zip(n[:9], range(10, 1, -1))) % 11
    if check == 10:
        return False
    return (0 if check == 11 else check) == int(n[9])


def upn_valid(u: str) -> bool:
    if len(u) != 13 or not u[1:12].isdigit():
        return False
    total = 0
    for position, c in enumerate(u[1:], start=2):
        if c.isdigit():
            total += int(c) * position
        elif c in UPN_LETTERS:
            total += UPN_LETTERS.index(c) * position
        else:
            return False
    return UPN_LETTERS[total % 23] == u[0]


def test_nhs_and_upn_rules_match_the_domain_examples():
    assert nhs_number_valid("9434765919")
    assert nhs_number_valid("4010232137")
    assert not nhs_number_valid("9434765918")
    assert upn_valid("B801200005001")
    assert not upn_valid("A801200005001")


def test_one_example_per_event_type():
    assert len(EVENT_TYPES) == 15
    files = sorted(p.name for p in EXAMPLES.iterdir())
    assert files == sorted(f"{t}.json" for t in EVENT_TYPES)


def test_event_ids_are_unique():
    ids = [json.loads(p.read_text())["eventId"] for p in EXAMPLES.glob("*.json")]
    assert len(ids) == len(set(ids)) == len(EVENT_TYPES)


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
def test_example_parses_strictly_as_its_event_type(event_type):
    path = EXAMPLES / f"{event_type}.json"
    text = path.read_text()
    event = json_format.Parse(text, events_pb2.CaseEvent(), ignore_unknown_fields=False)

    assert event.WhichOneof("payload") == EVENT_TYPES[event_type]
    assert event.event_id
    assert nhs_number_valid(event.child.nhs_number), event.child.nhs_number
    for local in event.child.local_ids:
        if local.scheme == "upn":
            assert upn_valid(local.value), local.value
    assert event.purpose != common_pb2.PURPOSE_UNSPECIFIED
    assert event.summary
    assert event.HasField("occurred_at")
    assert event.occurred_at.ToDatetime(dt.timezone.utc) < dt.datetime.now(dt.timezone.utc)
    expected_sensitivity = (
        common_pb2.SENSITIVE
        if event_type == "health.mental_health_referral"
        else common_pb2.SENSITIVITY_UNSPECIFIED
    )
    assert event.sensitivity == expected_sensitivity

    # Canonical form: printing the parsed message gives back the file.
    assert json_format.MessageToDict(event) == json.loads(text)
