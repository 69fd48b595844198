"""The verifiable log from Python, without any Caseshare code: fetch a
signed checkpoint and an inclusion proof for a SHARE_DECIDED entry, and
verify both with hashlib (RFC 6962 / RFC 9162 hashing) and the
`cryptography` package (the C2SP signed note's Ed25519 signature)."""

from __future__ import annotations

import base64
import hashlib

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from caseshare.v1 import admin_pb2, audit_pb2, common_pb2, events_pb2, publisher_pb2, subscriber_pb2
from harness import RPC_TIMEOUT_S

NHS = "9434765919"


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def root_from_inclusion(leaf: bytes, index: int, size: int, proof: list[bytes]) -> bytes:
    """RFC 9162 §2.1.3.2."""
    fn, sn, r = index, size - 1, leaf_hash(leaf)
    for p in proof:
        assert sn != 0, "proof too long"
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while fn & 1 == 0 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    assert sn == 0, "proof too short"
    return r


def verify_note(note: str, vkey: str) -> str:
    """Checks a C2SP signed note against `name+hexid+base64(0x01||key)`;
    returns the signed text."""
    name, key_id, key_b64 = vkey.split("+", 2)
    key = base64.b64decode(key_b64)
    assert key[0] == 1, "Ed25519"
    assert hashlib.sha256(name.encode() + b"\n" + key).digest()[:4].hex() == key_id
    text, _, sigs = note.rpartition("\n\n")
    text += "\n"
    for line in sigs.splitlines():
        if line.startswith(f"\u2014 {name} "):
            sig = base64.b64decode(line.rsplit(" ", 1)[1])
            assert sig[:4].hex() == key_id
            Ed25519PublicKey.from_public_bytes(key[1:]).verify(sig[4:], text.encode())
            return text
    raise AssertionError("no signature by the pinned key")


def test_checkpoint_and_inclusion_proof_verify_in_python(broker):
    # The key the broker printed at start, as an operator would publish it.
    printed = [l for l in broker.stdout_lines if l.startswith("audit log verifier key: ")]
    assert printed, broker.stdout_lines
    vkey = printed[0].split(": ", 1)[1].strip()

    admin = broker.connect("admin")
    for agency, kind in [("school-b", common_pb2.EDUCATION), ("la-social-care-c", common_pb2.SOCIAL_CARE)]:
        admin.admin.RegisterAgency(
            admin_pb2.RegisterAgencyRequest(agency_id=agency, kind=kind), timeout=RPC_TIMEOUT_S
        )
    admin.admin.PutAgreement(
        admin_pb2.Agreement(
            agreement_id="isa-audit",
            provider="school-b",
            recipient="kind:social_care",
            purposes=[common_pb2.EARLY_HELP],
            event_types=["education.*"],
            lawful_basis=common_pb2.PUBLIC_TASK,
        ),
        timeout=RPC_TIMEOUT_S,
    )
    broker.connect("la-social-care-c").subscriber.CreateSubscription(
        subscriber_pb2.Subscription(name="main"), timeout=RPC_TIMEOUT_S
    )
    event = events_pb2.CaseEvent(
        event_id="py-audit-1",
        child=common_pb2.ChildRef(nhs_number=NHS),
        purpose=common_pb2.EARLY_HELP,
        education_attendance_concern=events_pb2.AttendanceConcern(
            period="2026-autumn-2", attendance_percent=82.0, unauthorised_sessions=6
        ),
    )
    event.occurred_at.FromSeconds(1_793_000_000)
    resp = broker.connect("school-b").publisher.Publish(
        publisher_pb2.PublishRequest(event=event), timeout=RPC_TIMEOUT_S
    )
    assert resp.decisions[0].decision == common_pb2.SHARED

    auditor = broker.connect("auditor")
    cp = auditor.audit.GetCheckpoint(audit_pb2.GetCheckpointRequest(), timeout=RPC_TIMEOUT_S)
    text = verify_note(cp.note, vkey)
    origin, size, root_b64 = text.splitlines()
    assert origin == "caseshare.local/audit"
    assert int(size) == cp.tree_size
    root = base64.b64decode(root_b64)
    assert root == cp.root_hash

    leaves = list(
        auditor.audit.GetEntries(audit_pb2.GetEntriesRequest(start=0, end=cp.tree_size), timeout=RPC_TIMEOUT_S)
    )
    chosen = None
    for leaf in leaves:
        e = audit_pb2.AuditEntry.FromString(leaf.leaf)
        assert NHS.encode() not in leaf.leaf, "no raw NHS number in the log"
        if e.kind == audit_pb2.SHARE_DECIDED and e.event_id == "py-audit-1":
            chosen = leaf
    assert chosen is not None
    proof = auditor.audit.GetInclusionProof(
        audit_pb2.GetInclusionProofRequest(leaf_index=chosen.index, tree_size=cp.tree_size), timeout=RPC_TIMEOUT_S
    )
    assert root_from_inclusion(chosen.leaf, chosen.index, cp.tree_size, list(proof.hashes)) == root

    # A tampered leaf does not verify.
    tampered = bytearray(chosen.leaf)
    tampered[-1] ^= 1
    assert root_from_inclusion(bytes(tampered), chosen.index, cp.tree_size, list(proof.hashes)) != root

    # Agencies may not read the log.
    try:
        broker.connect("school-b").audit.GetCheckpoint(audit_pb2.GetCheckpointRequest(), timeout=RPC_TIMEOUT_S)
        raise AssertionError("an agency read the audit log")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.PERMISSION_DENIED
