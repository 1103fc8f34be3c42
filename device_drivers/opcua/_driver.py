"""Async OPC UA driver: batched reads, one subscription per bus, reconnect by itself.

One :class:`OpcUaDriver` owns one server endpoint (one bus). Its points come
in two kinds, chosen per tag:

- **subscribed** (the default for fast tags): a monitored item in the bus's
  one subscription, with its own sampling interval and absolute deadband. The
  server pushes changes; :meth:`OpcUaDriver.read` answers from the latest
  notification without a round trip. Monitored items of a device are created
  in one CreateMonitoredItems request, after one Read that seeds the values.
- **read**: every poll reads all such points of a device in one Read request.

We talk to asyncua's session layer (``client.uaclient``) directly: the
publish results land in :meth:`OpcUaDriver._on_publish`, which writes each
notification into a slot by client handle. No ``Node`` object, no task per
notification (asyncua's handler path creates one of each).

Liveness. asyncua's connection supervisor probes the server every
``watchdog_s`` and tells us when the transport is lost; the subscription's
keep-alives must keep arriving too. Either failing drops the client. The next
read reconnects lazily (a fresh session, a fresh subscription, monitored
items re-created on each device's next read), after a capped, jittered
exponential backoff, exactly like the Modbus driver: no background task of
ours, nothing for anyone to restart.

Errors are translated at this boundary (asyncua's ``UaStatusCodeError``,
``ConnectionError``, timeouts) into the :mod:`device_drivers` error tree; the
StatusCode of each value becomes its quality (:func:`quality_of_status`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import struct
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from asyncua import Client, ua
from asyncua.client.ua_client import UASocketProtocol
from asyncua.common.utils import Buffer
from asyncua.crypto import security_policies
from asyncua.ua.ua_binary import struct_from_binary
from asyncua.ua.uaerrors import BadTimeout, UaError, UaStatusCodeError
from cryptography import x509

from device_drivers._connection import LazyConnection
from device_drivers._driver import DeviceSpec, OutputSpec, PointSpec, ReadPlan
from device_drivers._errors import (
    DecodeError,
    DeviceException,
    DeviceTimeout,
    DeviceUnavailable,
    DriverError,
    WriteMismatch,
)
from device_drivers._sample import Quality, Reason, Sample
from device_drivers.opcua._address import (
    OpcUaPoint,
    parse_browse_path,
    quality_of_status,
    status_name,
)
from device_drivers.opcua._codec import decode_publish_response, decode_read_response
from device_drivers.opcua._logs import quieten_asyncua

__all__ = ["OpcUaDriver", "OpcUaEndpoint", "OpcUaPlan", "OpcUaSecurity", "judge_value"]

log = logging.getLogger("safewatch.device_drivers.opcua")

T = TypeVar("T")

SecurityMode = Literal["none", "sign", "sign_encrypt"]

_GOOD = 0
_BAD_WAITING = 0x8032_0000  # BadWaitingForInitialData
_OBJECTS_FOLDER = 85
_HIERARCHICAL = 33
# a session whose connection is lost is reported dead when the server
# has had no publish from us for this long; keep-alives come every second
_KEEPALIVE_S = 1.0
# session-level status codes that mean the session (not the value) is gone
_SESSION_GONE = {
    0x8025_0000,  # BadSessionIdInvalid
    0x8026_0000,  # BadSessionClosed
    0x8027_0000,  # BadSessionNotActivated
    0x8022_0000,  # BadSecureChannelIdInvalid
    0x8086_0000,  # BadSecureChannelClosed
    0x800C_0000,  # BadShutdown
    0x800E_0000,  # BadServerHalted
    0x8028_0000,  # BadSubscriptionIdInvalid
    0x8079_0000,  # BadNoSubscription
}


@dataclass(frozen=True, slots=True)
class OpcUaSecurity:
    """How to authenticate: Basic256Sha256 with our certificate, and/or a user name.

    ``server_certificate`` pins the server's certificate (recommended); without
    it, the certificate the server offers in its endpoint list is used.
    """

    mode: SecurityMode = "none"
    certificate: str | None = None
    private_key: str | None = None
    server_certificate: str | None = None
    username: str | None = None
    password: str | None = None

    def __post_init__(self) -> None:
        if self.mode != "none" and (self.certificate is None or self.private_key is None):
            raise ValueError(f"security {self.mode!r} needs a certificate and a private key")


@dataclass(frozen=True, slots=True)
class OpcUaEndpoint:
    """One server: its URL, the namespace of unprefixed browse-path segments, security,
    the subscription's publishing interval and the liveness probe period."""

    url: str
    namespace: str | None = None
    security: OpcUaSecurity = OpcUaSecurity()
    publishing_ms: float = 200.0
    watchdog_s: float = 1.0
    max_nodes_per_read: int = 500
    reads_in_flight: int = 4
    publish_requests: int = 3

    def __post_init__(self) -> None:
        if min(self.max_nodes_per_read, self.reads_in_flight, self.publish_requests) < 1:
            raise ValueError(
                "max_nodes_per_read, reads_in_flight and publish_requests must be >= 1"
            )

    def __str__(self) -> str:
        return self.url


class OpcUaPlan:
    """A device's points split into subscribed ones and ones read every poll.

    ``requests`` is what one poll costs on the wire: one Read per
    ``max_nodes_per_read`` read-mode points, none when all its points are subscribed.
    """

    __slots__ = ("device", "max_nodes_per_read", "points", "polled", "subscribed")

    def __init__(self, device: DeviceSpec, max_nodes_per_read: int = 500) -> None:
        points: list[OpcUaPoint] = []
        for spec in device.points:
            if not isinstance(spec.address, OpcUaPoint):
                raise ValueError(f"{device.id}: point {spec.name} has no OPC UA address")
            points.append(spec.address)
        self.device = device
        self.points = tuple(points)
        self.subscribed = tuple(i for i, p in enumerate(points) if p.subscribe)
        self.polled = tuple(i for i, p in enumerate(points) if not p.subscribe)
        self.max_nodes_per_read = max_nodes_per_read

    @property
    def requests(self) -> int:
        return math.ceil(len(self.polled) / self.max_nodes_per_read)

    def __repr__(self) -> str:
        return (
            f"OpcUaPlan({self.device.id!r}, subscribed={len(self.subscribed)}, "
            f"polled={len(self.polled)})"
        )


@dataclass(slots=True)
class _Reads:
    """A plan's read-mode points resolved once per session, and their Read requests."""

    plan: OpcUaPlan
    generation: int
    readable: list[tuple[int, ua.NodeId | int]]  # (point index, node id or a status code)
    asked: list[ua.NodeId]
    batches: list[ua.ReadParameters]


@dataclass(slots=True)
class _Watch:
    """The latest notified value and status of each subscribed point of one plan."""

    generation: int
    values: list[Any]
    status: list[int]
    handles: list[int] = field(default_factory=list)


def judge_value(raw: Any, status: int, spec: PointSpec, device: str, ts_ns: int) -> Sample:
    """One OPC UA value with its StatusCode -> a Sample (scaled, range-checked, quality)."""
    quality, reason = quality_of_status(status)
    name = spec.name
    if quality is Quality.BAD:
        number = _number(raw)
        return Sample(name, device, None if number is None else number, Quality.BAD, ts_ns, reason)
    number = _number(raw)
    if number is None:
        return Sample(name, device, None, Quality.BAD, ts_ns, Reason.DECODE)
    value = number * spec.scale + spec.offset
    if value != value or value in (math.inf, -math.inf):
        return Sample(name, device, None, Quality.BAD, ts_ns, Reason.DECODE)
    if value < spec.low:
        return Sample(name, device, value, Quality.BAD, ts_ns, Reason.OUT_OF_RANGE)
    if value > spec.high:
        return Sample(name, device, value, Quality.BAD, ts_ns, Reason.OVER_RANGE)
    return Sample(name, device, value, quality, ts_ns, reason)


def _number(raw: Any) -> float | None:
    if isinstance(raw, bool):
        return 1.0 if raw else 0.0
    if isinstance(raw, int | float):
        number = float(raw)
        return number if math.isfinite(number) else None
    return None


def _application_uri(certificate: str, fallback: str) -> str:
    """The URI in the certificate's subjectAltName: the client must announce exactly it."""
    data = Path(certificate).read_bytes()
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError:
        cert = x509.load_der_x509_certificate(data)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return fallback
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else fallback


class OpcUaDriver(LazyConnection):
    """OPC UA client for one server endpoint. Implements :class:`device_drivers.DeviceDriver`.

    Errors (all :class:`device_drivers.DriverError`, cause kept):
    :class:`DeviceUnavailable` (cannot connect, session lost, backing off,
    subscription silent), :class:`DeviceTimeout`, :class:`DeviceException`
    (the server refused a whole request, e.g. a write), :class:`DecodeError`
    (the answer does not fit the request), :class:`WriteMismatch`.

    ``notifications`` counts values pushed by the server; ``reconnects`` the
    sessions opened after the first.
    """

    def __init__(
        self,
        name: str,
        endpoint: OpcUaEndpoint,
        timeout_s: float,
        *,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 3.0,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        super().__init__(
            name, str(endpoint), backoff_initial_s=backoff_initial_s, backoff_max_s=backoff_max_s
        )
        quieten_asyncua()
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._client: Client | None = None
        self._lost = False
        self._generation = 0  # bumped for every new session
        self._node_ids: dict[str, ua.NodeId] = {}
        self._namespace_index: int | None = None
        self._subscription_id: int | None = None
        self._last_publish = 0.0
        self._watches: dict[int, tuple[OpcUaPlan, _Watch]] = {}  # id(plan) -> watch
        self._reads: dict[int, _Reads] = {}  # id(plan) -> its Read requests
        self._publishers: list[asyncio.Task[None]] = []  # publish loops beside asyncua's
        self._handles: dict[int, tuple[_Watch, int]] = {}
        self._next_handle = 1
        self.notifications = 0
        self.malformed_publishes = 0
        self.reconnects = 0
        self.sessions = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.endpoint})"

    @property
    def connected(self) -> bool:
        return self._client is not None and not self._lost

    # -- connection (open(), backoff: LazyConnection) -----------------------------------

    async def close(self) -> None:
        """Close the session; a later call reconnects."""
        client, self._client = self._client, None
        publishers, self._publishers = self._publishers, []
        for task in publishers:
            task.cancel()
        if publishers:
            await asyncio.gather(*publishers, return_exceptions=True)
        self._forget_session()
        if client is not None:
            await _discard(client, self.timeout_s)

    def _forget_session(self) -> None:
        self._subscription_id = None
        self._watches.clear()
        self._reads.clear()
        self._handles.clear()
        self._node_ids.clear()
        self._namespace_index = None

    async def _connect(self) -> None:
        await self.close()
        ep = self.endpoint
        sec = ep.security
        # asyncua's own timeout is longer than ours, so asyncio.timeout() decides
        client = Client(ep.url, timeout=self.timeout_s * 2 + 1.0, watchdog_intervall=ep.watchdog_s)
        client.name = client.description = f"SafeWatch gateway ({self.name})"
        client.application_uri = f"urn:safewatch:gateway:{self.name}"
        client.session_timeout = 30_000  # the server drops a dead gateway's session soon
        if sec.username is not None:
            client.set_user(sec.username)
            client.set_password(sec.password or "")
        client.connection_lost_callback = self._connection_lost
        quieten_asyncua()  # the client made its per-class loggers just now
        # connecting costs a few round trips (hello, channel, session, activate)
        budget = max(self.timeout_s * 3, 2.0)
        try:
            async with asyncio.timeout(budget):
                if sec.mode != "none":
                    assert sec.certificate is not None and sec.private_key is not None
                    client.application_uri = _application_uri(
                        sec.certificate, client.application_uri
                    )
                    await client.set_security(
                        security_policies.SecurityPolicyBasic256Sha256,
                        certificate=sec.certificate,
                        private_key=sec.private_key,
                        server_certificate=sec.server_certificate,
                        mode=ua.MessageSecurityMode.SignAndEncrypt
                        if sec.mode == "sign_encrypt"
                        else ua.MessageSecurityMode.Sign,
                    )
                await client.connect()
        except TimeoutError as exc:
            await _discard(client, 0.5)
            raise DeviceUnavailable(self.name, f"connect to {ep} timed out") from exc
        except (OSError, UaError, ValueError) as exc:
            await _discard(client, 0.5)
            raise DeviceUnavailable(self.name, f"cannot connect to {ep}: {_describe(exc)}") from exc
        self._client = client
        self._lost = False
        self._generation += 1
        self.sessions += 1
        if self.sessions > 1:
            self.reconnects += 1
            log.info("%s: session to %s opened again", self.name, ep)

    async def _connection_lost(self, exc: Exception) -> None:
        if not self._lost:
            log.warning("%s: connection to %s lost: %s", self.name, self.endpoint, _describe(exc))
        self._lost = True

    async def _ready(self, device: str) -> Client:
        client = self._client
        if client is not None and not self._lost:
            return client
        if client is not None:  # lost: drop it, then reconnect at once
            await self.close()
        await self.ensure_open(device)
        assert self._client is not None
        return self._client

    # -- requests --------------------------------------------------------------------

    async def _call(self, device: str, what: str, request: Awaitable[T]) -> T:
        """One service call under our timeout, asyncua's errors translated.

        The request runs in its own task awaited through ``shield`` so a cancel
        of the caller always reaches the caller (see the Modbus driver).
        """
        task: asyncio.Future[T] = asyncio.ensure_future(request)
        try:
            async with asyncio.timeout(self.timeout_s):
                return await asyncio.shield(task)
        except TimeoutError as exc:
            raise DeviceTimeout(device, f"no answer to {what} within {self.timeout_s} s") from exc
        except UaStatusCodeError as exc:
            code = int(getattr(exc, "code", 0))
            if code & 0xFFFF_0000 in _SESSION_GONE:
                self._lost = True
                raise DeviceUnavailable(device, f"{what}: {_describe(exc)}") from exc
            raise DeviceException(device, f"{what} refused: {_describe(exc)}") from exc
        except (ConnectionError, OSError) as exc:
            self._lost = True
            raise DeviceUnavailable(device, f"connection lost during {what}: {exc}") from exc
        except UaError as exc:
            raise DecodeError(device, f"{what}: {_describe(exc)}") from exc
        except (struct.error, IndexError) as exc:
            raise DecodeError(device, f"{what}: malformed answer: {exc}") from exc
        finally:
            if not task.done():
                task.cancel()
                task.add_done_callback(_consume)

    def _read_batches(self, node_ids: Sequence[ua.NodeId]) -> list[ua.ReadParameters]:
        """The Read requests for ``node_ids``: at most ``max_nodes_per_read`` nodes each."""
        size = self.endpoint.max_nodes_per_read
        batches = []
        for first in range(0, len(node_ids), size):
            params = ua.ReadParameters()
            params.MaxAge = 0
            params.TimestampsToReturn = ua.TimestampsToReturn.Neither
            params.NodesToRead = [
                ua.ReadValueId(NodeId=nid, AttributeId=ua.AttributeIds.Value)
                for nid in node_ids[first : first + size]
            ]
            batches.append(params)
        return batches

    async def _read_values(
        self,
        client: Client,
        device: str,
        node_ids: Sequence[ua.NodeId],
        batches: Sequence[ua.ReadParameters] | None = None,
    ) -> tuple[list[Any], list[int]]:
        """Read ``node_ids`` (in ``batches``, built when not given): every batch is sent at
        once, up to ``reads_in_flight`` on the session together, so the server works on the
        next one while this side decodes the last (the server answers them in order)."""
        if batches is None:
            batches = self._read_batches(node_ids)
        if len(batches) == 1:
            values, status = await self._read_batch(client, device, batches[0])
        else:
            values, status = await self._read_pipelined(client, device, batches)
        if len(values) != len(node_ids):
            raise DecodeError(device, f"read {len(node_ids)} node(s), got {len(values)} value(s)")
        return values, status

    async def _read_batch(
        self, client: Client, device: str, params: ua.ReadParameters
    ) -> tuple[list[Any], list[int]]:
        """One Read request; the answer decoded by :func:`decode_read_response`."""
        asked = len(params.NodesToRead)
        request = ua.ReadRequest()
        request.Parameters = params

        async def read() -> tuple[list[Any], list[int]]:
            data = await _protocol(client, device).send_request(request)
            return decode_read_response(bytes(data))

        values, status = await self._call(device, f"read of {asked} node(s)", read())
        if len(values) != asked:
            raise DecodeError(device, f"read {asked} node(s), got {len(values)} value(s)")
        return values, status

    async def _read_pipelined(
        self, client: Client, device: str, batches: Sequence[ua.ReadParameters]
    ) -> tuple[list[Any], list[int]]:
        gate = asyncio.Semaphore(self.endpoint.reads_in_flight)

        async def one(params: ua.ReadParameters) -> tuple[list[Any], list[int]]:
            async with gate:
                return await self._read_batch(client, device, params)

        tasks = [asyncio.ensure_future(one(params)) for params in batches]
        try:
            parts = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:  # one failed (or we were cancelled): the rest are moot
                if not task.done():
                    task.cancel()
                    task.add_done_callback(_consume)
            raise
        return [v for part in parts for v in part[0]], [c for part in parts for c in part[1]]

    # -- addressing ------------------------------------------------------------------

    async def _resolve(
        self, client: Client, device: str, points: Sequence[OpcUaPoint]
    ) -> list[ua.NodeId | int]:
        """Node ids of ``points``; browse paths resolved in one TranslateBrowsePaths call.

        A path the server cannot resolve comes back as its StatusCode (an int),
        so that point is BAD ``config`` and its bus-mates still read.
        """
        out: list[ua.NodeId | int] = []
        todo: list[tuple[int, OpcUaPoint]] = []
        for i, point in enumerate(points):
            known = self._node_ids.get(point.key)
            if known is not None:
                out.append(known)
            elif point.node is not None:
                nid = ua.NodeId.from_string(point.node)
                self._node_ids[point.key] = nid
                out.append(nid)
            else:
                out.append(0x8034_0000)  # BadNodeIdUnknown until resolved
                todo.append((i, point))
        if not todo:
            return out
        default_ns = await self._default_namespace(client, device)
        paths = []
        for _, point in todo:
            assert point.browse_path is not None
            elements = [
                ua.RelativePathElement(
                    ReferenceTypeId=ua.NodeId(_HIERARCHICAL),
                    IsInverse=False,
                    IncludeSubtypes=True,
                    TargetName=ua.QualifiedName(name, default_ns if ns is None else ns),
                )
                for ns, name in parse_browse_path(point.browse_path)
            ]
            paths.append(
                ua.BrowsePath(
                    StartingNode=ua.NodeId(_OBJECTS_FOLDER),
                    RelativePath=ua.RelativePath(Elements=elements),
                )
            )
        results = await self._call(
            device,
            f"resolve {len(paths)} browse path(s)",
            client.uaclient.translate_browsepaths_to_nodeids(paths),
        )
        for (i, point), result in zip(todo, results, strict=False):
            status = int(result.StatusCode.value)
            if status & 0xC000_0000 == 0 and result.Targets:
                nid = result.Targets[0].TargetId
                node = ua.NodeId(nid.Identifier, nid.NamespaceIndex, nid.NodeIdType)
                self._node_ids[point.key] = node
                out[i] = node
            else:
                out[i] = status or 0x8034_0000
                log.warning("%s: %s: %s not found on the server", self.name, device, point)
        return out

    async def _default_namespace(self, client: Client, device: str) -> int:
        if self._namespace_index is not None:
            return self._namespace_index
        uri = self.endpoint.namespace
        if uri is None:
            self._namespace_index = 0
            return 0
        array = await self._call(
            device, "read of the namespace array", client.get_namespace_array()
        )
        if uri not in array:
            raise DeviceException(device, f"server has no namespace {uri!r}")
        self._namespace_index = array.index(uri)
        return self._namespace_index

    # -- subscription ----------------------------------------------------------------

    def _on_change(self, handle: int, value: Any, status: int) -> None:
        """One monitored item's new value (from :func:`decode_publish_response`)."""
        target = self._handles.get(handle)
        if target is not None:
            watch, slot = target
            watch.values[slot] = value
            watch.status[slot] = status

    def _on_publish(self, result: ua.PublishResult) -> None:
        """A publish response asyncua decoded (one that is not only data changes)."""
        if result.SubscriptionId != self._subscription_id:
            return
        self._last_publish = time.monotonic()
        data = result.NotificationMessage.NotificationData
        if not data:
            return
        count = 0
        for notification in data:
            if isinstance(notification, ua.DataChangeNotification):
                for item in notification.MonitoredItems:
                    dv = item.Value
                    variant = dv.Value
                    code = dv.StatusCode
                    self._on_change(
                        item.ClientHandle,
                        None if variant is None else variant.Value,
                        _GOOD if code is None else int(code.value),
                    )
                    count += 1
            elif isinstance(notification, ua.StatusChangeNotification):
                status = notification.Status
                if status is not None and status.is_bad():
                    log.warning("%s: subscription ended by the server: %s", self.name, status.name)
                    self._lost = True
        self.notifications += count

    def _published(self, raw: bytes, subscription_id: int) -> int | None:
        """Apply one publish response; the sequence number to acknowledge, if any."""
        decoded = decode_publish_response(raw, self._on_change)
        if decoded is None:  # a status change or events: asyncua decodes it
            response = struct_from_binary(ua.PublishResponse, Buffer(raw))
            result = response.Parameters
            if result.SubscriptionId != subscription_id:
                return None
            self._on_publish(result)
            message = result.NotificationMessage
            return int(message.SequenceNumber) if message.NotificationData else None
        subscription, sequence, messages, notified = decoded
        if subscription != subscription_id:
            return None
        self._last_publish = time.monotonic()
        self.notifications += notified
        return sequence if messages else None

    async def _publish_loop(self, client: Client, subscription_id: int) -> None:
        """Keep one PublishRequest outstanding for the session; each response is decoded by
        :func:`decode_publish_response` into the watches' slots and acknowledged with the
        next request. Ends with the session (the liveness checks then drop the client)."""
        acks: list[ua.SubscriptionAcknowledgement] = []
        while client is self._client and not self._lost:
            request = ua.PublishRequest()
            request.Parameters.SubscriptionAcknowledgements = acks
            try:
                protocol = _protocol(client, self.name)
                data = await protocol.send_request(request, timeout=0)  # the server holds it
            except BadTimeout:
                acks = []
                continue
            except (UaError, ConnectionError, OSError) as exc:
                # BadNoSubscription, BadTooManyPublishRequests, the session gone...
                log.debug("%s: publish loop ended: %s", self.name, _describe(exc))
                return
            acks = []
            try:
                sequence = self._published(bytes(data), subscription_id)
            except (struct.error, IndexError, UaError) as exc:
                self.malformed_publishes += 1
                log.warning("%s: undecodable publish response: %s", self.name, _describe(exc))
                continue
            if sequence is not None:
                acks.append(
                    ua.SubscriptionAcknowledgement(
                        SubscriptionId=subscription_id, SequenceNumber=sequence
                    )
                )

    async def _create_subscription(
        self, client: Client, params: ua.CreateSubscriptionParameters
    ) -> ua.CreateSubscriptionResult:
        # sent without asyncua's subscription layer: it would start its own publish loop
        request = ua.CreateSubscriptionRequest()
        request.Parameters = params
        data = await _protocol(client, self.name).send_request(request)
        response = struct_from_binary(ua.CreateSubscriptionResponse, data)
        response.ResponseHeader.ServiceResult.check()
        result: ua.CreateSubscriptionResult = response.Parameters
        return result

    async def _subscribe(self, client: Client, device: str) -> int:
        if self._subscription_id is not None:
            return self._subscription_id
        period = self.endpoint.publishing_ms
        keepalive = max(1, math.ceil(_KEEPALIVE_S * 1000 / period))
        params = ua.CreateSubscriptionParameters()
        params.RequestedPublishingInterval = period
        params.RequestedMaxKeepAliveCount = keepalive
        params.RequestedLifetimeCount = max(3 * keepalive, math.ceil(30_000 / period))
        params.MaxNotificationsPerPublish = 0  # no limit: one publish carries every change
        params.PublishingEnabled = True
        params.Priority = 0
        result = await self._call(
            device, "create subscription", self._create_subscription(client, params)
        )
        self._subscription_id = int(result.SubscriptionId)
        self._last_publish = time.monotonic()
        # Several PublishRequests outstanding (OPC UA Part 4, 5.13.5): with one, the server
        # waits a round trip after each response before it can send the next.
        for n in range(self.endpoint.publish_requests):
            self._publishers.append(
                asyncio.create_task(
                    self._publish_loop(client, self._subscription_id),
                    name=f"opcua-publish:{self.name}:{n}",
                )
            )
        revised = float(result.RevisedPublishingInterval or period)
        self._keepalive_s = revised * int(result.RevisedMaxKeepAliveCount or keepalive) / 1000
        return self._subscription_id

    _keepalive_s = _KEEPALIVE_S

    def _subscription_silent(self) -> bool:
        """No publish response (not even a keep-alive) for three keep-alive periods."""
        if self._subscription_id is None:
            return False
        limit = max(3 * self._keepalive_s, 3 * self.endpoint.watchdog_s, 2.0)
        return time.monotonic() - self._last_publish > limit

    async def _watch(self, client: Client, plan: OpcUaPlan) -> _Watch:
        """Monitored items for the plan's subscribed points, seeded by one Read."""
        device = plan.device.id
        points = [plan.points[i] for i in plan.subscribed]
        node_ids = await self._resolve(client, device, points)
        n = len(points)
        watch = _Watch(self._generation, [None] * n, [_BAD_WAITING] * n)
        readable = [(j, nid) for j, nid in enumerate(node_ids) if not isinstance(nid, int)]
        for j, nid in enumerate(node_ids):
            if isinstance(nid, int):
                watch.status[j] = nid
        if not readable:
            self._watches[id(plan)] = (plan, watch)
            return watch
        seeded, seeded_status = await self._read_values(
            client, device, [nid for _, nid in readable]
        )
        for (j, _), value, code in zip(readable, seeded, seeded_status, strict=True):
            watch.values[j] = value
            watch.status[j] = code
        subscription = await self._subscribe(client, device)
        items = []
        period = self.endpoint.publishing_ms
        for j, nid in readable:
            point = points[j]
            handle = self._next_handle
            self._next_handle += 1
            watch.handles.append(handle)
            self._handles[handle] = (watch, j)
            mparams = ua.MonitoringParameters()
            mparams.ClientHandle = handle
            mparams.SamplingInterval = (
                point.sampling_ms if point.sampling_ms is not None else period
            )
            mparams.QueueSize = 1
            mparams.DiscardOldest = True
            if point.deadband > 0:
                mparams.Filter = ua.DataChangeFilter(
                    Trigger=ua.DataChangeTrigger.StatusValue,
                    DeadbandType=ua.DeadbandType.Absolute,
                    DeadbandValue=point.deadband,
                )
            items.append(
                ua.MonitoredItemCreateRequest(
                    ItemToMonitor=ua.ReadValueId(NodeId=nid, AttributeId=ua.AttributeIds.Value),
                    MonitoringMode=ua.MonitoringMode.Reporting,
                    RequestedParameters=mparams,
                )
            )
        params = ua.CreateMonitoredItemsParameters()
        params.SubscriptionId = subscription
        params.ItemsToCreate = items
        params.TimestampsToReturn = ua.TimestampsToReturn.Neither
        try:
            results = await self._call(
                device,
                f"create {len(items)} monitored item(s)",
                client.uaclient.create_monitored_items(params),
            )
        except DriverError:
            for handle in watch.handles:
                self._handles.pop(handle, None)
            raise
        for (j, _), result in zip(readable, results, strict=False):
            status = int(result.StatusCode.value)
            if status & 0xC000_0000:
                watch.status[j] = status  # the point reads BAD with the server's reason
                log.warning(
                    "%s: %s: cannot monitor %s: %s",
                    self.name,
                    device,
                    points[j],
                    result.StatusCode.name,
                )
        self._watches[id(plan)] = (plan, watch)
        return watch

    # -- DeviceDriver ----------------------------------------------------------------

    def plan(self, device: DeviceSpec) -> OpcUaPlan:
        return OpcUaPlan(device, self.endpoint.max_nodes_per_read)

    async def read(self, plan: ReadPlan, *, timeout_s: float | None = None) -> Sequence[Sample]:
        if not isinstance(plan, OpcUaPlan):
            raise TypeError(f"{self.name}: not an OPC UA plan: {plan!r}")
        device = plan.device.id
        client = await self._ready(device)
        specs = plan.device.points
        out: list[Sample | None] = [None] * len(specs)
        if plan.polled:
            reads = self._reads.get(id(plan))
            if reads is None or reads.plan is not plan or reads.generation != self._generation:
                points = [plan.points[i] for i in plan.polled]
                node_ids = await self._resolve(client, device, points)
                readable = [(i, nid) for i, nid in zip(plan.polled, node_ids, strict=True)]
                asked = [nid for _, nid in readable if not isinstance(nid, int)]
                reads = _Reads(plan, self._generation, readable, asked, self._read_batches(asked))
                if len(asked) == len(readable):  # a node not found yet is looked up again
                    self._reads[id(plan)] = reads
            readable, asked = reads.readable, reads.asked
            values, status = (
                await self._read_values(client, device, asked, reads.batches) if asked else ([], [])
            )
            ts = time.time_ns()
            it = iter(range(len(values)))
            for i, nid in readable:
                if isinstance(nid, int):
                    out[i] = judge_value(None, nid, specs[i], device, ts)
                else:
                    k = next(it)
                    out[i] = judge_value(values[k], status[k], specs[i], device, ts)
        if plan.subscribed:
            if self._subscription_silent():
                self._lost = True
                raise DeviceUnavailable(
                    device, f"subscription on {self.endpoint} silent (no keep-alive)"
                )
            entry = self._watches.get(id(plan))
            watch = entry[1] if entry is not None and entry[0] is plan else None
            if watch is None or watch.generation != self._generation:
                watch = await self._watch(client, plan)
            if self._lost:
                raise DeviceUnavailable(device, f"connection to {self.endpoint} lost")
            ts = time.time_ns()
            values, status = watch.values, watch.status
            for j, i in enumerate(plan.subscribed):
                out[i] = judge_value(values[j], status[j], specs[i], device, ts)
        return out  # type: ignore[return-value]  # every point is polled or subscribed

    async def read_array(self, device: str, point: OpcUaPoint) -> list[float]:
        """One array-valued variable (a waveform block) in one Read: its numbers.

        A bad status, a scalar, or an element that is not a finite number raises
        :class:`DecodeError` / :class:`DeviceException` naming the device and node.
        """
        client = await self._ready(device)
        (nid,) = await self._resolve(client, device, [point])
        if isinstance(nid, int):
            raise DeviceException(device, f"{point}: {status_name(nid)}")
        (raw,), (status,) = await self._read_values(client, device, [nid])
        if status & 0xC000_0000:
            raise DeviceException(device, f"{point}: {status_name(status)}")
        if not isinstance(raw, list | tuple):
            raise DecodeError(device, f"{point}: not an array ({type(raw).__name__})")
        out = []
        for i, item in enumerate(raw):
            number = None if isinstance(item, bool) else _number(item)
            if number is None:
                raise DecodeError(device, f"{point}[{i}]: not a finite number: {item!r}")
            out.append(number)
        return out

    async def write(self, device: DeviceSpec, output: OutputSpec, value: bool) -> bool:
        address = output.address
        if not isinstance(address, OpcUaPoint):
            raise TypeError(f"{self.name}: output {output.id} has no OPC UA address")
        client = await self._ready(device.id)
        (node,) = await self._resolve(client, device.id, [address])
        if isinstance(node, int):
            raise DeviceException(device.id, f"output {output.id}: {address} not found")
        write = ua.WriteValue(
            NodeId=node,
            AttributeId=ua.AttributeIds.Value,
            Value=ua.DataValue(ua.Variant(bool(value), ua.VariantType.Boolean)),
        )
        params = ua.WriteParameters(NodesToWrite=[write])
        results = await self._call(
            device.id, f"write {address}={value}", client.uaclient.write(params)
        )
        if not results or results[0].is_bad() or results[0].is_uncertain():
            name = results[0].name if results else "no result"
            raise DeviceException(device.id, f"write {address}={value} refused: {name}")
        if not output.verify:
            return False
        (raw,), (code,) = await self._read_values(client, device.id, [node])
        if code & 0xC000_0000:
            return False  # cannot be read back
        if _number(raw) != (1.0 if value else 0.0):
            raise WriteMismatch(device.id, f"{address} written {value} but reads back {raw!r}")
        return True


async def _discard(client: Client, timeout_s: float) -> None:
    """Close a client whatever state it is in; its errors no longer matter."""
    try:
        async with asyncio.timeout(timeout_s):
            await client.disconnect()
    except (TimeoutError, OSError, UaError, ConnectionError, RuntimeError, AttributeError):
        pass
    except Exception:  # pragma: no cover - asyncua teardown of a half-open client
        log.debug("closing an OPC UA client failed", exc_info=True)
    with contextlib.suppress(OSError, AttributeError, RuntimeError):
        client.disconnect_socket()


def _protocol(client: Client, device: str) -> UASocketProtocol:
    """The session's socket protocol: requests go through it without asyncua's decoding."""
    protocol = client.uaclient.protocol
    if protocol is None:
        raise ConnectionError(f"{device}: connection closed")
    return protocol


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, UaStatusCodeError):
        code = int(getattr(exc, "code", 0))
        return str(ua.StatusCode(code).name)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
