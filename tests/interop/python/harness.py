"""The Python side of the interop suite: start the real `caseshare` binary,
connect to it over mutual TLS with the dev PKI it creates, and drive the
bidirectional Subscribe stream with real time-outs.

Only the public contract is used: the `caseshare serve` command line, the
line it prints once it is ready, the PEM files of its dev PKI, and stubs
generated from `proto/` (imported from the `gen/` folder run.sh fills).
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import grpc
from grpc_health.v1 import health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2_grpc

from caseshare.v1 import (
    admin_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    consent_pb2_grpc,
    publisher_pb2_grpc,
    subscriber_pb2,
    subscriber_pb2_grpc,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
EXAMPLES = REPO / "examples" / "events"

LISTENING_PREFIX = "caseshare listening: grpc https://"
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30
# Deadline for every unary call the suite makes.
RPC_TIMEOUT_S = 15

# The dev PKI's client identities.
ADMIN = "admin"
AUDITOR = "auditor"
HEALTH = "nhs-trust-a"
SCHOOL = "school-b"
SOCIAL_CARE = "la-social-care-c"


def broker_binary() -> Path:
    """The binary under test: $CASESHARE_BIN, else the debug build."""
    return Path(os.environ.get("CASESHARE_BIN", REPO / "target" / "debug" / "caseshare"))


@dataclass
class Clients:
    """Stubs for every service, on one channel as one identity."""

    channel: grpc.Channel
    admin: admin_pb2_grpc.AdminStub
    publisher: publisher_pb2_grpc.PublisherStub
    subscriber: subscriber_pb2_grpc.SubscriberStub
    consent: consent_pb2_grpc.ConsentStub
    audit: audit_pb2_grpc.AuditStub
    health: health_pb2_grpc.HealthStub
    reflection: reflection_pb2_grpc.ServerReflectionStub

    def close(self) -> None:
        self.channel.close()


class Broker:
    """One `caseshare serve` process on a fresh data directory."""

    def __init__(self, binary: Path, workdir: Path):
        if not binary.is_file() or not os.access(binary, os.X_OK):
            raise FileNotFoundError(f"caseshare binary not found or not executable: {binary}")
        self.binary = binary
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.log_path = workdir / "broker.log"
        self.stdout_lines: list[str] = []
        self._channels: list[Clients] = []
        env = {k: v for k, v in os.environ.items() if not k.startswith("CASESHARE_")}
        env["CASESHARE_LOG"] = "info"
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [
                str(binary),
                "serve",
                "--data-dir",
                str(self.data_dir),
                "--listen",
                "127.0.0.1:0",
                "--ops-listen",
                "127.0.0.1:0",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            text=True,
        )
        try:
            self.grpc_port, self.ops_port = self._wait_listening()
        except BaseException:
            self.kill()
            raise

    def _wait_listening(self) -> tuple[int, int]:
        found: "queue.Queue[tuple[int, int] | None]" = queue.Queue()

        def read() -> None:
            sent = False
            assert self.process.stdout is not None
            for line in self.process.stdout:  # keeps draining after the line
                line = line.rstrip("\n")
                self.stdout_lines.append(line)
                if not sent and line.startswith(LISTENING_PREFIX):
                    grpc_addr, _, ops_addr = line[len(LISTENING_PREFIX):].partition(" ops http://")
                    found.put((int(grpc_addr.rsplit(":", 1)[1]), int(ops_addr.rsplit(":", 1)[1])))
                    sent = True
            if not sent:
                found.put(None)

        threading.Thread(target=read, name="broker-stdout", daemon=True).start()
        try:
            ports = found.get(timeout=START_TIMEOUT_S)
        except queue.Empty:
            ports = None
        if ports is None:
            raise RuntimeError(
                f"broker did not print its listening line within {START_TIMEOUT_S}s "
                f"(exit code {self.process.poll()}); stdout: {self.stdout_lines}; "
                f"log:\n{self.log()}"
            )
        return ports

    # -- PKI and connections ------------------------------------------------

    @property
    def pki(self) -> Path:
        return self.data_dir / "pki"

    def pem(self, name: str) -> bytes:
        return (self.pki / name).read_bytes()

    def connect(self, identity: str) -> Clients:
        """A channel to `localhost:PORT` authenticated as `identity`."""
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.pem("ca.pem"),
            private_key=self.pem(f"{identity}.key"),
            certificate_chain=self.pem(f"{identity}.pem"),
        )
        channel = grpc.secure_channel(f"localhost:{self.grpc_port}", creds)
        grpc.channel_ready_future(channel).result(timeout=RPC_TIMEOUT_S)
        clients = Clients(
            channel=channel,
            admin=admin_pb2_grpc.AdminStub(channel),
            publisher=publisher_pb2_grpc.PublisherStub(channel),
            subscriber=subscriber_pb2_grpc.SubscriberStub(channel),
            consent=consent_pb2_grpc.ConsentStub(channel),
            audit=audit_pb2_grpc.AuditStub(channel),
            health=health_pb2_grpc.HealthStub(channel),
            reflection=reflection_pb2_grpc.ServerReflectionStub(channel),
        )
        self._channels.append(clients)
        return clients

    # -- ops port and audit log ----------------------------------------------

    def ops_get(self, path: str) -> tuple[int, str]:
        """GET on the plain-HTTP ops port: (status, body)."""
        url = f"http://127.0.0.1:{self.ops_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=RPC_TIMEOUT_S) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def metric(self, name: str) -> float:
        """A Prometheus sample without labels from /metrics (0 if absent)."""
        for line in self.ops_get("/metrics")[1].splitlines():
            metric, _, value = line.partition(" ")
            if metric == name:
                return float(value)
        return 0.0

    def audit_entries(self, auditor: Clients) -> list[audit_pb2.AuditEntry]:
        """The whole audit log as raw leaves (Audit.GetEntries, as an
        auditor), each decoded as an AuditEntry; the size comes from the
        ops port's caseshare_audit_size gauge."""
        size = int(self.metric("caseshare_audit_size"))
        entries = []
        for leaf in auditor.audit.GetEntries(
            audit_pb2.GetEntriesRequest(start=0, end=size), timeout=RPC_TIMEOUT_S
        ):
            entry = audit_pb2.AuditEntry.FromString(leaf.leaf)
            assert entry.index == leaf.index == len(entries), "gap-free, in order"
            entries.append(entry)
        return entries

    # -- lifecycle ----------------------------------------------------------

    def running(self) -> bool:
        return self.process.poll() is None

    def terminate(self) -> int:
        """SIGTERM, then the exit code (killed, and an error, if it hangs)."""
        for c in self._channels:
            c.close()
        self._channels.clear()
        if self.running():
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(f"broker ignored SIGTERM for {STOP_TIMEOUT_S}s; killed it")
        finally:
            self._log.close()

    def kill(self) -> None:
        """SIGKILL if still running (the last resort on any failure)."""
        if self.running():
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT_S)
        if not self._log.closed:
            self._log.close()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


class SubscribeStream:
    """An open bidirectional Subscribe call.

    Requests go through a queue the call's request iterator drains;
    deliveries are read by a thread into another queue, so that every read
    has a real time-out (`next(timeout=...)`), and the whole call has a
    deadline so that nothing can hang past it.
    """

    _END = object()

    def __init__(
        self,
        clients: Clients,
        subscription: str,
        max_outstanding: int,
        deadline_s: float = 120,
    ):
        self._requests: "queue.Queue[object]" = queue.Queue()
        self._deliveries: "queue.Queue[object]" = queue.Queue()
        self._requests.put(
            subscriber_pb2.SubscribeRequest(
                subscription=subscription, max_outstanding=max_outstanding
            )
        )
        self.call = clients.subscriber.Subscribe(self._request_iter(), timeout=deadline_s)
        self._reader = threading.Thread(target=self._read, name="subscribe-reader", daemon=True)
        self._reader.start()

    def _request_iter(self) -> Iterator[subscriber_pb2.SubscribeRequest]:
        while True:
            item = self._requests.get()
            if item is self._END:
                return
            yield item  # type: ignore[misc]

    def _read(self) -> None:
        try:
            for delivery in self.call:
                self._deliveries.put(delivery)
            self._deliveries.put(self._END)
        except grpc.RpcError as e:  # cancelled, deadline, server error
            self._deliveries.put(e)

    def next(self, timeout: float = 30) -> subscriber_pb2.Delivery:
        """The next delivery; fails if none comes within `timeout` seconds."""
        try:
            item = self._deliveries.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no delivery within {timeout}s") from None
        if item is self._END:
            raise AssertionError("the server ended the Subscribe stream")
        if isinstance(item, grpc.RpcError):
            raise AssertionError(f"Subscribe stream failed: {item.code()} {item.details()}")
        return item  # type: ignore[return-value]

    def ack(self, delivery_ids: list[str]) -> None:
        self._requests.put(
            subscriber_pb2.SubscribeRequest(ack=subscriber_pb2.AckIds(delivery_ids=delivery_ids))
        )

    def nack(self, delivery_ids: list[str]) -> None:
        self._requests.put(
            subscriber_pb2.SubscribeRequest(nack=subscriber_pb2.AckIds(delivery_ids=delivery_ids))
        )

    def close(self, timeout: float = 10) -> None:
        """Half-closes the stream and waits for the server to end it, so
        that acks already queued are sent; cancels it if the server does not
        end it in time. (Cancelling straight away can drop queued acks.)"""
        self._requests.put(self._END)
        self._reader.join(timeout=timeout)
        if self._reader.is_alive():
            self.call.cancel()
            self._reader.join(timeout=timeout)


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    """Polls `predicate` until it returns a truthy value, failing after
    `timeout` seconds. For state that the server updates asynchronously
    (stream acks), never to paper over ordering."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
