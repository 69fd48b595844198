"""The sharing scenario from a Python client, against the real broker over
mutual TLS: school-b shares education events with children's social care
under an agreement that needs the parent's consent; la-social-care-c
receives and acknowledges them on the bidirectional Subscribe stream.

Tests run in file order on one broker (module fixtures); the last one stops
it with SIGTERM.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import uuid

import grpc
import pytest
from cryptography import x509
from google.protobuf import descriptor_pool
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from grpc_status import rpc_status

import harness
from harness import RPC_TIMEOUT_S, SubscribeStream, wait_until
from caseshare.v1 import (
    admin_pb2,
    audit_pb2,
    common_pb2,
    consent_pb2,
    events_pb2,
    publisher_pb2,
    subscriber_pb2,
)

CHILD = "9434765919"
BAD_CHILD = "9434765918"  # check digit should be 9
AGREEMENT_ID = "isa-school-b-social-care-early-help"
SUBSCRIPTION = "early-help"
STREAMED = 8  # events sent on PublishStream


def attendance_event(event_id: str, nhs_number: str = CHILD) -> events_pb2.CaseEvent:
    occurred = Timestamp()
    occurred.FromDatetime(dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=2))
    return events_pb2.CaseEvent(
        event_id=event_id,
        child=common_pb2.ChildRef(
            nhs_number=nhs_number,
            local_ids=[common_pb2.LocalId(scheme="upn", value="B801200005001")],
        ),
        purpose=common_pb2.EARLY_HELP,
        occurred_at=occurred,
        summary="Attendance has fallen to 81% this half term.",
        education_attendance_concern=events_pb2.AttendanceConcern(
            period="2026-autumn-2", attendance_percent=81.0, unauthorised_sessions=9
        ),
    )


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4()}"


def rich_error(err: grpc.RpcError) -> tuple[status_pb2.Status, list[error_details_pb2.BadRequest]]:
    """The google.rpc.Status in `grpc-status-details-bin` and its BadRequest
    details. `rpc_status.from_call` also checks that the trailer's code and
    message agree with the call's."""
    status = rpc_status.from_call(err)
    assert status is not None, "no grpc-status-details-bin trailer"
    raw = dict(err.trailing_metadata() or ())["grpc-status-details-bin"]
    assert status_pb2.Status.FromString(raw) == status
    bad_requests = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            detail.Unpack(br)
            bad_requests.append(br)
    return status, bad_requests


# -- the world the scenario runs in -------------------------------------------


@pytest.fixture(scope="module")
def world(broker, admin, school, social_care):
    """Agencies, the agreement, the parent's consent and the social care
    subscription, each checked as it is created."""
    for agency_id, kind, name in [
        (harness.HEALTH, common_pb2.HEALTH, "Northshire Hospitals NHS Trust"),
        (harness.SCHOOL, common_pb2.EDUCATION, "Meadow Road Primary School"),
        (harness.SOCIAL_CARE, common_pb2.SOCIAL_CARE, "Northshire Children's Services"),
    ]:
        agency = admin.admin.RegisterAgency(
            admin_pb2.RegisterAgencyRequest(agency_id=agency_id, kind=kind, display_name=name),
            timeout=RPC_TIMEOUT_S,
        )
        assert (agency.agency_id, agency.kind, agency.display_name) == (agency_id, kind, name)
        assert agency.HasField("registered_at")

    agreement = admin.admin.PutAgreement(
        admin_pb2.Agreement(
            agreement_id=AGREEMENT_ID,
            provider=harness.SCHOOL,
            recipient="kind:social_care",
            purposes=[common_pb2.EARLY_HELP],
            event_types=["education.*"],
            lawful_basis=common_pb2.PUBLIC_TASK,
            requires_consent=True,
        ),
        timeout=RPC_TIMEOUT_S,
    )
    assert agreement.agreement_id == AGREEMENT_ID
    assert agreement.lawful_basis == common_pb2.PUBLIC_TASK

    consent = school.consent.RecordConsent(
        consent_pb2.ConsentRecord(
            nhs_number=CHILD,
            given_by=consent_pb2.PARENT,
            purposes=[common_pb2.EARLY_HELP],
            recipients=["kind:social_care"],
            evidence_ref="meadow-road:consent-form:2026-0142",
        ),
        timeout=RPC_TIMEOUT_S,
    )
    assert consent.consent_id, "the server assigns a consent id"
    assert consent.recorded_by == harness.SCHOOL
    assert consent.HasField("recorded_at")

    subscription = social_care.subscriber.CreateSubscription(
        subscriber_pb2.Subscription(
            name=SUBSCRIPTION, event_types=["education.*"], purposes=[common_pb2.EARLY_HELP]
        ),
        timeout=RPC_TIMEOUT_S,
    )
    assert subscription.name == SUBSCRIPTION
    assert subscription.agency_id == harness.SOCIAL_CARE
    return {"consent_id": consent.consent_id}


# -- transport, PKI, health, reflection ----------------------------------------


def test_dev_pki_certificates_carry_the_expected_identities(broker):
    server = x509.load_pem_x509_certificate(broker.pem("server.pem"))
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)
    for name, role in [
        (harness.SCHOOL, "agency"),
        (harness.SOCIAL_CARE, "agency"),
        (harness.HEALTH, "agency"),
        (harness.ADMIN, "admin"),
        (harness.AUDITOR, "auditor"),
    ]:
        cert = x509.load_pem_x509_certificate(broker.pem(f"{name}.pem"))
        uris = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.UniformResourceIdentifier)
        assert uris == [f"spiffe://caseshare.local/{role}/{name}"]


def test_health_check_reports_serving(school):
    for service in ["", "caseshare.v1.Publisher", "caseshare.v1.Subscriber"]:
        resp = school.health.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=RPC_TIMEOUT_S
        )
        assert resp.status == health_pb2.HealthCheckResponse.SERVING, service


def test_reflection_lists_and_describes_the_services(school):
    responses = list(
        school.reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
            timeout=RPC_TIMEOUT_S,
        )
    )
    assert len(responses) == 1
    names = {s.name for s in responses[0].list_services_response.service}
    for expected in [
        "caseshare.v1.Publisher",
        "caseshare.v1.Subscriber",
        "caseshare.v1.Consent",
        "caseshare.v1.Admin",
        "caseshare.v1.Audit",
    ]:
        assert expected in names, f"{expected} not in {sorted(names)}"

    # The schema the server reflects is the one in proto/: same methods with
    # the same request and response types as our generated stubs.
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(school.channel))
    remote = pool.FindServiceByName("caseshare.v1.Publisher")
    local = publisher_pb2.DESCRIPTOR.services_by_name["Publisher"]

    def shape(service):
        return {
            m.name: (
                m.input_type.full_name,
                m.output_type.full_name,
                m.client_streaming,
                m.server_streaming,
            )
            for m in service.methods
        }

    assert shape(remote) == shape(local)
    assert shape(remote)["PublishStream"][2:] == (True, True)


def test_ops_port_answers_health_readiness_and_metrics(broker):
    assert broker.ops_get("/healthz")[0] == 200
    assert broker.ops_get("/readyz")[0] == 200
    status, body = broker.ops_get("/metrics")
    assert status == 200
    assert "caseshare_audit_size" in body


# -- the scenario ------------------------------------------------------------


def test_setup_is_visible_to_its_owners(world, admin, school, social_care):
    agencies = admin.admin.ListAgencies(admin_pb2.ListAgenciesRequest(), timeout=RPC_TIMEOUT_S)
    assert [a.agency_id for a in agencies.agencies] == sorted(
        [harness.HEALTH, harness.SCHOOL, harness.SOCIAL_CARE]
    )
    agreements = admin.admin.ListAgreements(
        admin_pb2.ListAgreementsRequest(provider=harness.SCHOOL), timeout=RPC_TIMEOUT_S
    )
    assert [a.agreement_id for a in agreements.agreements] == [AGREEMENT_ID]
    consents = school.consent.ListConsents(
        consent_pb2.ListConsentsRequest(nhs_number=CHILD), timeout=RPC_TIMEOUT_S
    )
    assert [c.consent_id for c in consents.consents] == [world["consent_id"]]
    subs = social_care.subscriber.ListSubscriptions(
        subscriber_pb2.ListSubscriptionsRequest(), timeout=RPC_TIMEOUT_S
    )
    assert [s.name for s in subs.subscriptions] == [SUBSCRIPTION]


def test_publish_and_publish_stream_are_delivered_and_acked(broker, world, school, social_care):
    consent_id = world["consent_id"]

    # Unary Publish: shared with social care on the parent's consent.
    first = attendance_event(new_id("att"))
    resp = school.publisher.Publish(
        publisher_pb2.PublishRequest(event=first), timeout=RPC_TIMEOUT_S
    )
    assert resp.sequence > 0
    assert not resp.duplicate
    assert resp.event_id == first.event_id
    assert resp.event_type == "education.attendance_concern"
    assert [
        (d.agency_id, d.decision, d.reason, d.agreement_id, d.consent_id, d.lawful_basis)
        for d in resp.decisions
    ] == [
        (
            harness.SOCIAL_CARE,
            common_pb2.SHARED,
            "consent",
            AGREEMENT_ID,
            consent_id,
            common_pb2.PUBLIC_TASK,
        )
    ]

    # The same event id again: the first response, flagged duplicate.
    again = school.publisher.Publish(
        publisher_pb2.PublishRequest(event=first), timeout=RPC_TIMEOUT_S
    )
    assert again.duplicate
    assert again.sequence == resp.sequence

    # PublishStream: pipelined, answered in request order with rising sequences.
    streamed = [attendance_event(new_id(f"att-stream-{i}")) for i in range(STREAMED)]
    responses = list(
        school.publisher.PublishStream(
            (publisher_pb2.PublishRequest(event=e) for e in streamed), timeout=60
        )
    )
    assert [r.event_id for r in responses] == [e.event_id for e in streamed]
    sequences = [resp.sequence] + [r.sequence for r in responses]
    assert all(a < b for a, b in zip(sequences, sequences[1:])), sequences
    assert all(not r.duplicate for r in responses)
    assert all(r.event_type == "education.attendance_concern" for r in responses)
    assert all(
        [d.decision for d in r.decisions] == [common_pb2.SHARED] for r in responses
    )

    # Subscribe: every event arrives once, whole (the agreement names no
    # fields), and is acked on the stream.
    published = {e.event_id: e for e in [first, *streamed]}
    sequence_of = {resp.event_id: resp.sequence, **{r.event_id: r.sequence for r in responses}}
    stream = SubscribeStream(social_care, SUBSCRIPTION, max_outstanding=4)
    delivery_ids = set()
    try:
        seen = set()
        for _ in published:
            d = stream.next(timeout=30)
            assert d.event.event_id in published, d.event.event_id
            assert d.event.event_id not in seen, "delivered twice"
            seen.add(d.event.event_id)
            assert d.sequence == sequence_of[d.event.event_id]
            assert d.attempt == 1
            assert d.source_agency == harness.SCHOOL
            assert d.event_type == "education.attendance_concern"
            assert d.decision.consent_id == consent_id
            assert d.event == published[d.event.event_id]
            assert list(d.redacted_fields) == []
            delivery_ids.add(d.delivery_id)
            stream.ack([d.delivery_id])
        assert seen == set(published)

        # A marker after the duplicate publish: it is the very next delivery,
        # so the duplicate was not delivered again.
        marker = attendance_event(new_id("marker"))
        marker_resp = school.publisher.Publish(
            publisher_pb2.PublishRequest(event=marker), timeout=RPC_TIMEOUT_S
        )
        d = stream.next(timeout=30)
        assert (d.event.event_id, d.sequence) == (marker.event_id, marker_resp.sequence)
        delivery_ids.add(d.delivery_id)
        stream.ack([d.delivery_id])

        # The stream acks are asynchronous; the audit log records each one.
        # Wait for them with the stream still open (cancelling it could drop
        # acks not yet sent). Publisher.GetEventStatus would be the
        # publisher's view, but the broker does not implement it yet.
        auditor = broker.connect(harness.AUDITOR)

        def all_acked():
            entries = broker.audit_entries(auditor)
            acked = {
                e.delivery_id
                for e in entries
                if e.kind == audit_pb2.EVENT_ACKED and e.recipient_agency == harness.SOCIAL_CARE
            }
            return entries if delivery_ids <= acked else None

        entries = wait_until(all_acked, timeout=15, what="EVENT_ACKED entries for every delivery")
    finally:
        stream.close()

    published_entries = [
        e for e in entries if e.kind == audit_pb2.EVENT_PUBLISHED and e.event_id in published
    ]
    assert sorted(e.sequence for e in published_entries) == sorted(sequence_of.values())
    assert all(e.source_agency == harness.SCHOOL for e in published_entries)
    assert resp.audit_index in {e.index for e in published_entries}
    for e in entries:
        assert CHILD.encode() not in e.SerializeToString(), f"raw NHS number in entry {e.index}"


def test_invalid_nhs_number_is_invalid_argument_naming_the_field(broker, world, school):
    event = attendance_event(new_id("bad-nhs"), nhs_number=BAD_CHILD)
    with pytest.raises(grpc.RpcError) as caught:
        school.publisher.Publish(publisher_pb2.PublishRequest(event=event), timeout=RPC_TIMEOUT_S)
    err = caught.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    status, bad_requests = rich_error(err)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert len(bad_requests) == 1
    fields = [v.field for v in bad_requests[0].field_violations]
    assert fields == ["event.child.nhs_number"], fields
    assert bad_requests[0].field_violations[0].description

    # A rejected event is not published: the audit log never mentions it.
    entries = broker.audit_entries(broker.connect(harness.AUDITOR))
    assert not [e for e in entries if e.event_id == event.event_id]


def test_publish_stream_ends_at_an_invalid_event_keeping_earlier_answers(world, school):
    good = attendance_event(new_id("good"))
    bad = attendance_event(new_id("bad-nhs"), nhs_number=BAD_CHILD)
    never = attendance_event(new_id("after-bad"))
    call = school.publisher.PublishStream(
        iter([publisher_pb2.PublishRequest(event=e) for e in (good, bad, never)]), timeout=60
    )
    answers = []
    with pytest.raises(grpc.RpcError) as caught:
        for r in call:
            answers.append(r.event_id)
    assert answers == [good.event_id]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _, bad_requests = rich_error(caught.value)
    assert [v.field for br in bad_requests for v in br.field_violations] == [
        "event.child.nhs_number"
    ]


def test_wrong_role_is_permission_denied(world, social_care):
    with pytest.raises(grpc.RpcError) as caught:
        social_care.admin.ListAgencies(admin_pb2.ListAgenciesRequest(), timeout=RPC_TIMEOUT_S)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_sigterm_stops_the_broker_with_exit_code_0(broker):
    """Last: a graceful shutdown."""
    code = broker.terminate()
    assert code == 0, f"exit code {code}; log:\n{broker.log()}"
