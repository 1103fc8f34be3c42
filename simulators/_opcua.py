"""Serve a site's OPC UA buses with asyncua servers, from the same YAML the gateway reads.

One server per ``opcua`` bus, listening on the bus's ``endpoint``. Every tag
becomes a Double variable and every actuator a writable Boolean variable:

- a tag or actuator with ``node: ns=2;s=...`` gets exactly that node id, in a
  folder named after its device under Objects;
- one with ``browse_path: Panel12/CH4_T1`` gets folders and a variable along
  that path (segments without an index are in the bus's ``namespace``).

Fault injection: :meth:`OpcUaSimulator.set_status` gives a tag a StatusCode
(``BadSensorFailure``, ``UncertainLastUsableValue``...);
:meth:`OpcUaSimulator.restart` stops a server and starts it again (every
client session and subscription is lost; values are kept);
:meth:`OpcUaSimulator.set_offline` stops it until brought back;
:meth:`OpcUaSimulator.set_slow` makes a server send every answer (reads,
publish responses, keep-alives) late.

Security (:class:`ServerSecurity`): Basic256Sha256 Sign & Encrypt only, the
server's certificate and key, a directory of trusted client certificates
(any other client is refused), and optional user names with passwords.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from asyncua import Server, ua
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from asyncua.server.uaprocessor import UaProcessor

from device_drivers.opcua import parse_browse_path, quieten_asyncua
from edge.config import LoadedSite, OpcUaActuator, OpcUaBus, OpcUaTag

__all__ = ["OpcUaSimulator", "OutputWriteHook", "ServerSecurity"]

log = logging.getLogger(__name__)

OutputWriteHook = Callable[[str, bool, int], None]
"""``on_output_write(actuator_id, value, t_ns)``, called when a client writes an output."""

DEFAULT_NAMESPACE = "urn:safewatch:sim"
_LOG_LENGTH = 100_000


# id(InternalServer) -> seconds each answer of that server is held back (a slow PLC)
_SLOW: dict[int, float] = {}


def _hold_back_answers() -> None:
    """asyncua has no hook on a server's answers: wrap ``UaProcessor.send_response`` once,
    in the process that simulates (never a gateway), so that a server in ``_SLOW`` writes
    each answer that much later. Answers keep their order; a closed connection drops them."""
    if getattr(UaProcessor.send_response, "safewatch_slow", False):
        return
    original = UaProcessor.send_response

    def late(processor: UaProcessor, *args: Any) -> None:
        transport = processor._transport
        if transport is not None and not transport.is_closing():
            original(processor, *args)

    def send_response(processor: UaProcessor, *args: Any) -> None:
        delay = _SLOW.get(id(processor.iserver), 0.0)
        if delay <= 0:
            original(processor, *args)
            return
        asyncio.get_running_loop().call_later(delay, late, processor, *args)

    send_response.safewatch_slow = True  # type: ignore[attr-defined]
    UaProcessor.send_response = send_response


@dataclass(frozen=True, slots=True)
class ServerSecurity:
    """Basic256Sha256 Sign & Encrypt with this certificate; only ``trusted`` clients.

    ``trusted``: a directory of client certificates (PEM or DER) allowed in.
    ``users``: user name -> password; empty lets any authenticated channel in.
    """

    certificate: str
    private_key: str
    trusted: str
    users: dict[str, str] = field(default_factory=dict)


class _Users:
    """asyncua user manager: the configured names and passwords, nobody else."""

    def __init__(self, users: dict[str, str]) -> None:
        self._users = users

    def get_user(
        self,
        iserver: Any,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        if not self._users:
            return User(role=UserRole.User)
        if username is not None and self._users.get(username) == password:
            return User(role=UserRole.User, name=username)
        return None


@dataclass
class _Variable:
    name: str  # tag or actuator id
    device: str
    node: str | None
    browse_path: str | None
    is_output: bool
    value: float | bool
    status: int = 0
    node_id: ua.NodeId | None = None
    block: list[float] | None = None  # a waveform block's array variable (raw values)


@dataclass
class _BusServer:
    bus: OpcUaBus
    variables: list[_Variable]
    server: Server | None = None  # built once: asyncua's address space takes seconds
    listening: bool = False
    namespace_index: int = 2
    offline: bool = False


class OpcUaSimulator:
    """Every ``opcua`` bus of a site served by an asyncua server on its endpoint."""

    def __init__(
        self,
        site: LoadedSite,
        *,
        security: ServerSecurity | None = None,
        on_output_write: OutputWriteHook | None = None,
    ) -> None:
        quieten_asyncua()
        self.site = site
        self.security = security
        self.on_output_write = on_output_write
        self.value_log: deque[tuple[int, str, float]] = deque(maxlen=_LOG_LENGTH)
        self.output_log: deque[tuple[int, str, bool]] = deque(maxlen=_LOG_LENGTH)
        self._buses: dict[str, _BusServer] = {}
        self._vars: dict[str, tuple[_BusServer, _Variable]] = {}
        self._blocks: dict[str, tuple[_BusServer, _Variable, float]] = {}
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self.restarts = 0
        cfg = site.config
        for bus in cfg.buses:
            if isinstance(bus, OpcUaBus):
                self._buses[bus.id] = _BusServer(bus, [])
        for device in cfg.devices:
            served = self._buses.get(device.bus)
            if served is None:
                continue
            for tag in device.tags:
                if isinstance(tag, OpcUaTag):
                    var = _Variable(
                        tag.name,
                        device.id,
                        tag.node,
                        tag.browse_path,
                        False,
                        (site.profile_of(tag).nominal - tag.offset) / tag.scale,
                    )
                    served.variables.append(var)
                    self._vars[tag.name] = (served, var)
        for source in cfg.inference.waveforms:  # array variables of vibration sensors
            device = site.tag(source.tag)[0]
            served = self._buses.get(device.bus)
            if served is None or source.address is not None:
                continue
            var = _Variable(source.tag, device.id, source.node, source.browse_path, False, 0.0)
            var.block = [0.0] * source.samples
            served.variables.append(var)
            self._blocks[source.tag] = (served, var, source.scale)
        self._block_keys = {_block_key(tag): tag for tag in self._blocks}
        for act in cfg.actuators:
            if isinstance(act, OpcUaActuator):
                served = self._buses.get(site.device(act.device).bus)
                if served is None:
                    continue
                var = _Variable(
                    act.id, act.device, act.node, act.browse_path, True, not act.active_value
                )
                served.variables.append(var)
                self._vars[act.id] = (served, var)

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def endpoints(self) -> list[tuple[str, str]]:
        """``(bus_id, endpoint URL)`` for every served bus."""
        return [(b.bus.id, b.bus.endpoint) for b in self._buses.values()]

    async def start(self) -> None:
        """Start every server (raises ``OSError`` when an endpoint cannot listen)."""
        try:
            for served in self._buses.values():
                if not served.listening and not served.offline:
                    await self._start(served)
        except BaseException:
            await self.stop()
            raise
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_loop(), name="opcua-sim-writer")

    async def stop(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        for served in self._buses.values():
            await self._stop(served)
            served.server = None

    async def __aenter__(self) -> OpcUaSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _start(self, served: _BusServer) -> None:
        if served.server is None:
            served.server = await self._build_server(served)
        try:
            await served.server.start()
        except OSError:
            url = urlparse(served.bus.endpoint)
            log.error("cannot listen on %s:%s", url.hostname, url.port)
            raise
        served.listening = True

    async def _build_server(self, served: _BusServer) -> Server:
        bus = served.bus
        sec = self.security if bus.security != "none" else None
        server = Server(user_manager=_Users(sec.users) if sec is not None else None)
        await server.init()
        server.set_endpoint(bus.endpoint)
        server.set_server_name(f"SafeWatch simulator ({bus.id})")
        await server.set_application_uri(f"urn:safewatch:sim:{bus.id}")
        if sec is not None:
            server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
            await server.load_certificate(sec.certificate)
            await server.load_private_key(sec.private_key)
            store = TrustStore([Path(sec.trusted)], [])
            await store.load()
            server.set_certificate_validator(
                CertificateValidator(
                    CertificateValidatorOptions.TRUSTED_VALIDATION
                    | CertificateValidatorOptions.PEER_CLIENT,
                    store,
                )
            )
        else:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        served.namespace_index = await server.register_namespace(bus.namespace or DEFAULT_NAMESPACE)
        await self._build(server, served)
        quieten_asyncua()  # asyncua made more loggers while building
        return server

    async def _stop(self, served: _BusServer) -> None:
        server = served.server
        if server is not None and served.listening:
            served.listening = False
            try:
                await server.stop()
            except (OSError, RuntimeError, AttributeError):  # pragma: no cover
                log.debug("server %s stopped uncleanly", served.bus.id, exc_info=True)

    async def _ensure_namespace(self, server: Server, index: int) -> None:
        names = await server.get_namespace_array()
        while len(names) <= index:
            await server.register_namespace(f"{DEFAULT_NAMESPACE}:ns{len(names)}")
            names = await server.get_namespace_array()

    async def _build(self, server: Server, served: _BusServer) -> None:
        objects = server.nodes.objects
        ns = served.namespace_index
        folders: dict[tuple[str, ...], Any] = {}

        async def folder(path: tuple[tuple[int, str], ...]) -> Any:
            parent = objects
            for depth in range(1, len(path) + 1):
                key = tuple(f"{i}:{n}" for i, n in path[:depth])
                node = folders.get(key)
                if node is None:
                    i, name = path[depth - 1]
                    await self._ensure_namespace(server, i)
                    node = await parent.add_folder(ua.NodeId(name, i), ua.QualifiedName(name, i))
                    folders[key] = node
                parent = node
            return parent

        for var in served.variables:
            value: Any = bool(var.value) if var.is_output else float(var.value)
            vtype = ua.VariantType.Boolean if var.is_output else ua.VariantType.Double
            if var.block is not None:
                value = list(var.block)
            if var.node is not None:
                node_id = ua.NodeId.from_string(var.node)
                await self._ensure_namespace(server, node_id.NamespaceIndex)
                parent = await folder(((ns, var.device),))
                browse = ua.QualifiedName(var.name, node_id.NamespaceIndex)
            else:
                assert var.browse_path is not None
                path = tuple(
                    (ns if i is None else i, n) for i, n in parse_browse_path(var.browse_path)
                )
                parent = await folder(path[:-1])
                i, name = path[-1]
                await self._ensure_namespace(server, i)
                node_id = ua.NodeId("/".join(f"{a}:{b}" for a, b in path), i)
                browse = ua.QualifiedName(name, i)
            node = await parent.add_variable(node_id, browse, ua.Variant(value, vtype))
            if var.is_output:
                await node.set_writable()
            var.node_id = node.nodeid
            if var.status:
                await server.write_attribute_value(
                    var.node_id, ua.DataValue(ua.Variant(None), ua.StatusCode(var.status))
                )
            if var.is_output:
                server.iserver.aspace.add_datachange_callback(
                    var.node_id, ua.AttributeIds.Value, self._output_callback(var)
                )

    def _output_callback(self, var: _Variable) -> Callable[[int, ua.DataValue], Any]:
        async def written(_handle: int, dv: ua.DataValue) -> None:
            raw = None if dv.Value is None else dv.Value.Value
            if not isinstance(raw, bool):
                return
            var.value = raw
            t_ns = time.monotonic_ns()
            self.output_log.append((t_ns, var.name, raw))
            if self.on_output_write is not None:
                try:
                    self.on_output_write(var.name, raw, t_ns)
                except Exception:  # a faulty observer must not fail the client's write
                    log.exception("on_output_write hook failed for %s", var.name)

        return written

    # -- values ------------------------------------------------------------------------

    def _var(self, name: str) -> tuple[_BusServer, _Variable]:
        try:
            return self._vars[name]
        except KeyError:
            raise KeyError(f"unknown OPC UA tag or output {name!r}") from None

    def tags(self) -> list[str]:
        return [name for name, (_, var) in self._vars.items() if not var.is_output]

    def set_waveform(self, tag: str, values: list[float]) -> None:
        """Put one waveform block (engineering units) into ``tag``'s array variable."""
        try:
            _, var, scale = self._blocks[tag]
        except KeyError:
            raise KeyError(f"no OPC UA waveform block for tag {tag!r}") from None
        assert var.block is not None
        if len(values) != len(var.block):
            raise ValueError(f"{tag}: {len(values)} values, the block has {len(var.block)}")
        var.block = [float(v) / scale for v in values]
        self._dirty.add(_block_key(tag))
        self._wake.set()

    def waveform_tags(self) -> list[str]:
        return list(self._blocks)

    def set_value(self, tag: str, value: float) -> None:
        """Set a tag's engineering value (written to the server by the writer task)."""
        _, var = self._var(tag)
        site_tag = next(t for _, t in self.site.tags() if t.name == tag)
        var.value = (value - site_tag.offset) / site_tag.scale
        var.status = 0
        self.value_log.append((time.monotonic_ns(), tag, value))
        self._dirty.add(tag)
        self._wake.set()

    def set_raw(self, tag: str, raw: float) -> None:
        """Set the raw server value (before the tag's scale and offset)."""
        _, var = self._var(tag)
        var.value = raw
        var.status = 0
        self._dirty.add(tag)
        self._wake.set()

    def set_status(self, tag: str, status: int | str) -> None:
        """Give a tag a StatusCode (an int or a name such as ``"BadSensorFailure"``)."""
        _, var = self._var(tag)
        var.status = int(getattr(ua.StatusCodes, status)) if isinstance(status, str) else status
        self._dirty.add(tag)
        self._wake.set()

    def value(self, tag: str) -> float:
        """The tag's engineering value as last set."""
        _, var = self._var(tag)
        site_tag = next(t for _, t in self.site.tags() if t.name == tag)
        return float(var.value) * site_tag.scale + site_tag.offset

    def output(self, actuator_id: str) -> bool:
        """The output as last written by a client (or its initial, inactive value)."""
        _, var = self._var(actuator_id)
        return bool(var.value)

    async def flush(self) -> None:
        """Write every pending value into the servers now."""
        dirty, self._dirty = self._dirty, set()
        for name in dirty:
            if name in self._block_keys:
                served, var, _ = self._blocks[self._block_keys[name]]
                if served.server is not None and var.node_id is not None and var.block:
                    dv = ua.DataValue(ua.Variant(list(var.block), ua.VariantType.Double))
                    await served.server.write_attribute_value(var.node_id, dv)
                continue
            served, var = self._vars[name]
            server = served.server
            if server is None or var.node_id is None:
                continue
            if var.status & 0x8000_0000:
                dv = ua.DataValue(ua.Variant(None), ua.StatusCode(var.status))
            elif var.is_output:
                dv = ua.DataValue(ua.Variant(bool(var.value), ua.VariantType.Boolean))
            else:
                dv = ua.DataValue(
                    ua.Variant(float(var.value), ua.VariantType.Double),
                    ua.StatusCode(var.status),
                )
            await server.write_attribute_value(var.node_id, dv)

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.flush()

    # -- faults ------------------------------------------------------------------------

    def _bus(self, bus_id: str | None) -> list[_BusServer]:
        if bus_id is None:
            return list(self._buses.values())
        try:
            return [self._buses[bus_id]]
        except KeyError:
            raise KeyError(f"unknown OPC UA bus {bus_id!r}") from None

    async def restart(self, bus_id: str | None = None, down_s: float = 0.0) -> None:
        """Stop the server(s), stay down ``down_s``, start again: every session is lost."""
        for served in self._bus(bus_id):
            await self._stop(served)
        if down_s > 0:
            await asyncio.sleep(down_s)
        for served in self._bus(bus_id):
            if not served.offline:
                await self._start(served)
        for name, (served, _) in self._vars.items():
            if bus_id is None or served.bus.id == bus_id:
                self._dirty.add(name)
        for tag, (served, _, _) in self._blocks.items():
            if bus_id is None or served.bus.id == bus_id:
                self._dirty.add(_block_key(tag))
        self._wake.set()
        self.restarts += 1

    def set_slow(self, bus_id: str, delay_s: float) -> None:
        """Every answer of this bus's server goes out ``delay_s`` late (0: on time)."""
        for served in self._bus(bus_id):
            if served.server is None:
                raise RuntimeError(f"OPC UA bus {bus_id!r} is not started")
            key = id(served.server.iserver)
            if delay_s > 0:
                _hold_back_answers()
                _SLOW[key] = delay_s
            else:
                _SLOW.pop(key, None)

    async def set_offline(self, bus_id: str, offline: bool) -> None:
        """An offline server is stopped (connections refused) until set online again."""
        for served in self._bus(bus_id):
            served.offline = offline
            if offline:
                await self._stop(served)
            elif not served.listening:
                await self._start(served)
                for name, (owner, _) in self._vars.items():
                    if owner is served:
                        self._dirty.add(name)
                for tag, (owner, _, _) in self._blocks.items():
                    if owner is served:
                        self._dirty.add(_block_key(tag))
                self._wake.set()


def _block_key(tag: str) -> str:
    return f"{tag}[]"
