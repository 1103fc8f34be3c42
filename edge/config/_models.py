"""Frozen configuration models: sensor profiles and site files.

Validated once when loaded; nothing downstream re-checks or clamps.
"""

from __future__ import annotations

import datetime as dt
import enum
import zoneinfo
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from device_drivers.modbus import DataType, ModbusCoil, ModbusPoint, Order, register_count
from device_drivers.opcua import OpcUaPoint, check_browse_path, check_node_id
from device_drivers.serial import LineFormat, SerialPoint
from edge.config._rules import (
    InterlockRow,
    LockoutTestSettings,
    RuleConfig,
    StateSettings,
)

Identifier = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]


class _Frozen(BaseModel):
    # allow_inf_nan=False: a NaN threshold never trips, an infinite scale hides every value
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class Direction(enum.StrEnum):
    HIGH = "high"  # danger when the value rises (CH4, CO, H2S)
    LOW = "low"  # danger when the value falls (O2)


class Thresholds(_Frozen):
    """Two-level thresholds with hysteresis for one sensor location.

    ``alarm`` raises a level-1 alarm; ``cut`` (optional) is level 2 and
    drives the tag's interlock actuators (power cut); the cut is held until the
    value is back past ``restore`` and has stayed there for ``restore_hold_s``
    (default: several poll periods of the tag's device, see
    :meth:`LoadedSite.restore_hold_of`), so a value flapping around the
    restore limit cannot cycle a breaker. ``clear`` is where a level-1 alarm
    ends; without it the alarm clears ``deadband`` past ``alarm``.

    ``alarm_on_delay_s``/``alarm_off_delay_s`` delay raising/clearing the
    level-1 alarm only: a cut is never delayed (one reading at or over ``cut``
    cuts).
    """

    direction: Direction = Direction.HIGH
    alarm: float
    cut: float | None = None
    restore: float | None = None
    clear: float | None = None
    deadband: float = Field(default=0.0, ge=0)
    restore_hold_s: float | None = Field(default=None, ge=0)
    alarm_on_delay_s: float = Field(default=0.0, ge=0)
    alarm_off_delay_s: float = Field(default=0.0, ge=0)
    source: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> Thresholds:
        high = self.direction is Direction.HIGH
        if self.cut is None:
            if self.restore is not None:
                raise ValueError("'restore' needs a 'cut' threshold")
        else:
            if self.restore is None:
                raise ValueError("'cut' needs a 'restore' threshold (where power may come back)")
            if high and not self.alarm <= self.cut:
                raise ValueError(f"alarm {self.alarm} must be <= cut {self.cut} for direction high")
            if not high and not self.alarm >= self.cut:
                raise ValueError(f"alarm {self.alarm} must be >= cut {self.cut} for direction low")
            if high and self.restore > self.cut:
                raise ValueError(f"restore {self.restore} must be <= cut {self.cut}")
            if not high and self.restore < self.cut:
                raise ValueError(f"restore {self.restore} must be >= cut {self.cut}")
        if self.clear is not None and self.deadband:
            raise ValueError("give 'clear' or 'deadband', not both")
        clear = self.clear_at
        if high and clear > self.alarm:
            raise ValueError(f"clear {clear} must be <= alarm {self.alarm}")
        if not high and clear < self.alarm:
            raise ValueError(f"clear {clear} must be >= alarm {self.alarm}")
        return self

    @property
    def clear_at(self) -> float:
        if self.clear is not None:
            return self.clear
        return (
            self.alarm - self.deadband
            if self.direction is Direction.HIGH
            else (self.alarm + self.deadband)
        )


class ValueRange(_Frozen):
    min: float
    max: float

    @model_validator(mode="after")
    def _ordered(self) -> ValueRange:
        if self.min >= self.max:
            raise ValueError(f"min {self.min} must be < max {self.max}")
        return self


Priority = Literal["safety", "normal"]


class ChatterSettings(_Frozen):
    """Chattering detection for one alarm (edge/alarm_manager.py): ``transitions`` raises
    within ``window_s`` make it chatter; it is then suppressed by design (annunciation
    only, cuts still act) until an operator releases it or it stays quiet ``hold_s``."""

    transitions: int = Field(default=5, ge=2, le=1000)
    window_s: float = Field(default=60.0, gt=0, le=86400)
    hold_s: float = Field(default=600.0, gt=0, le=7 * 86400)


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


class Shift(_Frozen):
    """One shift of the site's calendar: ``start``..``end`` local time on ``days`` (a shift
    whose end is not after its start runs overnight into the next day)."""

    name: Identifier
    start: dt.time
    end: dt.time
    days: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class Annunciator(_Frozen):
    """A local horn or beacon the gateway drives from the alarm states: on while an alarm
    of at least ``min_priority`` is unacknowledged (``until: acknowledged``, a horn: the
    operator's acknowledgement silences it) or still active (``until: cleared``, a beacon)."""

    actuator: Identifier
    min_priority: Literal["low", "medium", "high", "critical"] = "high"
    until: Literal["acknowledged", "cleared"] = "acknowledged"


class OperatorConsole(_Frozen):
    """An operator position (EEMUA 191 counts alarms per operator): the areas whose alarms
    it answers. The same ``id`` in another gateway's site file is the same operator (a
    console may span gateways; list the areas of every gateway it answers for)."""

    id: Identifier
    areas: tuple[Annotated[str, Field(min_length=1)], ...] = Field(min_length=1)


class AlarmSettings(_Frozen):
    """Site-wide alarm handling: the flood limit and the default chatter detection.

    More than ``flood_per_minute`` raises within one minute **on one operator console** is
    a flood: the gateway sends one flood summary for that console (every alarm is still
    recorded and forwarded; notifications of that console's alarms are summarised) until
    its rate has stayed at or below the limit for ``flood_clear_s``. ``consoles`` maps the
    areas to operator consoles; without it the whole gateway is one console (named after
    the gateway). Alarm events carry their console; KPIs are per console.
    """

    flood_per_minute: int = Field(default=10, ge=1, le=10000)
    flood_clear_s: float = Field(default=60.0, gt=0, le=3600)
    consoles: tuple[OperatorConsole, ...] = ()
    chatter: ChatterSettings = ChatterSettings()
    # the shift calendar notification routes refer to (``shifts:`` of a route)
    timezone: str = "UTC"
    shifts: tuple[Shift, ...] = ()
    annunciators: tuple[Annunciator, ...] = ()

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r} (an IANA name: Asia/Shanghai)") from exc
        return value

    @model_validator(mode="after")
    def _unique_shifts(self) -> AlarmSettings:
        names = [s.name for s in self.shifts]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"shift {name!r} is defined twice")
        return self


class SensorProfile(_Frozen):
    """How a kind of sensor reads and which standard thresholds apply."""

    id: Identifier
    name: str
    kind: Identifier  # measurement name: ch4, co, o2, h2s, ...
    unit: str
    range: ValueRange
    fail_safe: bool = False  # a faulty/offline/out-of-range sensor trips its interlock
    # safety-class sensors (methane, CO, O2, fan status) are polled first and never slowed
    priority: Priority = "normal"
    # catalytic elements can read falsely low at high concentration: once at full scale,
    # the cut holds until an engineer resets it (`safewatch edge reset`)
    over_range_latch: bool = False
    # a reading at or beyond range.max is over range (uncertain); off for on/off state inputs
    full_scale_check: bool = True
    # empty for state inputs (fan running, breaker feedback) that only feed other rules
    thresholds: dict[str, Thresholds] = Field(default_factory=dict)
    nominal: float  # a typical healthy value (simulators start here)
    chatter: ChatterSettings | None = None  # None: the site's alarms.chatter

    def thresholds_for(self, position: str) -> Thresholds | None:
        return self.thresholds.get(position) or self.thresholds.get("default")


class Location(_Frozen):
    area: str = Field(min_length=1)
    position: str = Field(min_length=1)  # a threshold key of the profile: face, return, ...
    roadway: str = ""


class Tag(_Frozen):
    """What every tag has, whatever its bus: name, profile, scaling, location, interlock.

    The protocol address fields come from the subclass for the bus's protocol
    (:class:`ModbusTag`); :data:`TagSpec` is the discriminated union of them.
    """

    name: Identifier
    profile: Identifier
    scale: float = 1.0
    offset: float = 0.0
    unit: str | None = None
    location: Location
    thresholds: Thresholds | None = None  # site override of the profile's
    actuators: tuple[Identifier, ...] = ()
    chatter: ChatterSettings | None = None  # site override of the profile's

    @model_validator(mode="after")
    def _scale(self) -> Tag:
        if self.scale == 0:
            raise ValueError("scale must not be 0")
        return self

    def point(self) -> object:
        """The driver's address of this tag (protocol-specific)."""
        raise NotImplementedError


class ModbusTag(Tag):
    """A tag on a Modbus bus (TCP, RTU or RTU over TCP): register table, address, encoding."""

    protocol: Literal["modbus"] = "modbus"
    table: Literal["holding", "input"] = "holding"
    address: int = Field(ge=0, le=65535)
    type: DataType = DataType.FLOAT32
    word_order: Order = Order.BIG
    byte_order: Order = Order.BIG

    @model_validator(mode="after")
    def _fits(self) -> ModbusTag:
        if self.address + register_count(self.type) > 65536:
            raise ValueError(f"{self.type} at address {self.address} runs past register 65535")
        return self

    @property
    def registers(self) -> range:
        return range(self.address, self.address + register_count(self.type))

    def point(self) -> ModbusPoint:
        return ModbusPoint(self.table, self.address, self.type, self.word_order, self.byte_order)


class _OpcUaNodeFields(_Frozen):
    """Optional ``node`` (a node id string) and ``browse_path`` (from the Objects folder),
    each checked for syntax."""

    node: str | None = None  # ns=2;s=Panel12.CH4_T1, i=2258
    browse_path: str | None = None  # Panel12/CH4_T1, 2:Panel12/2:CH4_T1

    @field_validator("node")
    @classmethod
    def _node(cls, node: str | None) -> str | None:
        return None if node is None else check_node_id(node)

    @field_validator("browse_path")
    @classmethod
    def _path(cls, path: str | None) -> str | None:
        return None if path is None else check_browse_path(path)


class _OpcUaAddress(_OpcUaNodeFields):
    """``node`` or ``browse_path``, exactly one."""

    @model_validator(mode="after")
    def _one_address(self) -> _OpcUaAddress:
        if (self.node is None) == (self.browse_path is None):
            raise ValueError("give exactly one of 'node' and 'browse_path'")
        return self


class OpcUaTag(Tag, _OpcUaAddress):
    """A tag on an OPC UA server: its node, and whether it is subscribed or read each poll.

    ``mode: subscribe`` (default) makes it a monitored item: the server samples
    it every ``sampling_ms`` (default: the bus's publishing interval) and
    reports changes larger than ``deadband`` (absolute, raw units; 0 = every
    change). ``mode: read`` reads it in the device's one Read request per poll.
    """

    protocol: Literal["opcua"] = "opcua"
    mode: Literal["subscribe", "read"] = "subscribe"
    sampling_ms: float | None = Field(default=None, ge=0, le=60_000)
    deadband: float = Field(default=0.0, ge=0)

    def point(self) -> OpcUaPoint:
        return OpcUaPoint(
            node=self.node,
            browse_path=self.browse_path,
            subscribe=self.mode == "subscribe",
            sampling_ms=self.sampling_ms,
            deadband=self.deadband,
        )


class SerialTag(Tag):
    """A value in a serial detector's text line: its ``key`` (``CH4`` in ``CH4=0.85%``),
    or its column (``0``, ``1``...) for the ``csv`` format."""

    protocol: Literal["serial"] = "serial"
    key: str = Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_.\-]+$")

    def point(self) -> SerialPoint:
        return SerialPoint(self.key)


# The tag shape follows the bus's protocol; SiteConfig fills `protocol` in from the bus.
TagSpec = Annotated[ModbusTag | OpcUaTag | SerialTag, Field(discriminator="protocol")]
AnyTag = ModbusTag | OpcUaTag | SerialTag

# bus type -> the protocol of its tags and outputs
PROTOCOL_OF_BUS: dict[str, str] = {
    "modbus_tcp": "modbus",
    "modbus_rtu": "modbus",
    "modbus_rtu_over_tcp": "modbus",
    "opcua": "opcua",
    "serial": "serial",
}


class _BusBase(_Frozen):
    id: Identifier
    timeout_ms: int = Field(default=1000, ge=10, le=60_000)


class ModbusTcpBus(_BusBase):
    """A Modbus TCP network (a substation, a protocol converter, a PLC)."""

    type: Literal["modbus_tcp"]
    host: str = Field(min_length=1)
    port: int = Field(default=502, ge=1, le=65535)


class ModbusRtuOverTcpBus(_BusBase):
    """RTU frames carried over TCP by a serial device server (transparent mode)."""

    type: Literal["modbus_rtu_over_tcp"]
    host: str = Field(min_length=1)
    port: int = Field(default=4001, ge=1, le=65535)


BAUD_RATES = (1200, 2400, 4800, 9600, 19_200, 38_400, 57_600, 115_200)


class ModbusRtuBus(_BusBase):
    """An RS-485 line with Modbus RTU slaves; the gateway is the only master.

    ``inter_frame_ms`` defaults to 3.5 characters at the baud rate (1.75 ms
    above 19,200 baud), the silent interval the RTU spec requires between frames.
    """

    type: Literal["modbus_rtu"]
    port: str = Field(min_length=1)  # /dev/ttyUSB0, /dev/serial/by-id/...
    baudrate: int = 9600
    parity: Literal["N", "E", "O"] = "E"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    inter_frame_ms: float | None = Field(default=None, ge=0, le=1000)

    @field_validator("baudrate")
    @classmethod
    def _baud(cls, baudrate: int) -> int:
        if baudrate not in BAUD_RATES:
            raise ValueError(f"baudrate {baudrate} is not one of {', '.join(map(str, BAUD_RATES))}")
        return baudrate

    @property
    def char_bits(self) -> int:
        return 1 + self.bytesize + (0 if self.parity == "N" else 1) + self.stopbits


class OpcUaBus(_BusBase):
    """An OPC UA server (a PLC, a SCADA, a gas-monitoring system).

    ``security``: ``none``, or Basic256Sha256 with ``sign`` or ``sign_encrypt``
    (then ``certificate`` and ``private_key`` are ours, made by ``safewatch
    certs opcua``; ``server_certificate`` pins the server's). A user name and
    password come from the environment variables ``username_env`` and
    ``password_env``, never from the file. ``namespace``: the namespace URI of
    browse-path segments that give no index. ``publishing_ms``: how often the
    server sends the subscription's changes.
    """

    type: Literal["opcua"]
    endpoint: str = Field(pattern=r"^opc\.tcp://[^\s/:]+(:\d{1,5})?(/\S*)?$")
    namespace: str | None = Field(default=None, min_length=1)
    security: Literal["none", "sign", "sign_encrypt"] = "none"
    certificate: str | None = None
    private_key: str | None = None
    server_certificate: str | None = None
    username_env: str | None = None
    password_env: str | None = None
    publishing_ms: int = Field(default=200, ge=10, le=60_000)
    # a device's read-mode points go in Reads of at most this many nodes (the server's
    # MaxNodesPerRead), up to reads_in_flight of them sent at once; publish_requests
    # PublishRequests stay outstanding so the server never waits for the next one
    max_nodes_per_read: int = Field(default=500, ge=1, le=100_000)
    reads_in_flight: int = Field(default=4, ge=1, le=64)
    publish_requests: int = Field(default=3, ge=1, le=16)

    @model_validator(mode="after")
    def _security(self) -> OpcUaBus:
        if self.security != "none" and (self.certificate is None or self.private_key is None):
            raise ValueError(
                f"security {self.security!r} needs 'certificate' and 'private_key' "
                "(make them with: safewatch certs opcua)"
            )
        if (self.username_env is None) != (self.password_env is None):
            raise ValueError("give both 'username_env' and 'password_env', or neither")
        return self


class SerialLineBus(_BusBase):
    """A serial port with one detector that streams text lines (``CH4=0.85%``).

    ``format``: ``kv`` (KEY=VALUE pairs), ``kv_xor`` (``$...*XX``, NMEA XOR
    checksum) or ``csv`` (columns). A key not heard for ``max_age_ms`` reads BAD
    (``timeout``, or ``crc``/``decode`` when the lines arrived damaged).
    """

    type: Literal["serial"]
    port: str = Field(min_length=1)
    baudrate: int = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    format: LineFormat = LineFormat.KV
    max_age_ms: int = Field(default=3000, ge=100, le=600_000)

    @field_validator("baudrate")
    @classmethod
    def _baud(cls, baudrate: int) -> int:
        if baudrate not in BAUD_RATES:
            raise ValueError(f"baudrate {baudrate} is not one of {', '.join(map(str, BAUD_RATES))}")
        return baudrate


Bus = Annotated[
    ModbusTcpBus | ModbusRtuBus | ModbusRtuOverTcpBus | OpcUaBus | SerialLineBus,
    Field(discriminator="type"),
]
AnyBus = ModbusTcpBus | ModbusRtuBus | ModbusRtuOverTcpBus | OpcUaBus | SerialLineBus


class Device(_Frozen):
    id: Identifier
    bus: Identifier
    unit_id: int = Field(default=1, ge=0, le=255)
    poll_ms: int = Field(default=1000, ge=50, le=30_000)  # safety sensors: <= 30 s
    stale_after_ms: int | None = Field(default=None, ge=100)
    tags: tuple[TagSpec, ...] = ()

    @model_validator(mode="after")
    def _stale_after_poll(self) -> Device:
        if self.stale_after_ms is not None and self.stale_after_ms < self.poll_ms:
            raise ValueError(
                f"stale_after_ms {self.stale_after_ms} is shorter than poll_ms {self.poll_ms}: "
                "every tag would go stale between two polls"
            )
        return self

    @property
    def stale_after_s(self) -> float:
        """A tag with no good reading for this long is treated as faulty."""
        ms = self.stale_after_ms if self.stale_after_ms is not None else 3 * self.poll_ms
        return ms / 1000


class ActuatorKind(enum.StrEnum):
    POWER_CUT = "power_cut"
    HORN = "horn"
    LIGHT = "light"


class Actuator(_Frozen):
    """An output the interlock drives; the address fields come from the protocol subclass.

    ``verify``: read the output back after each write where the device allows,
    and treat a different value as a failed write.
    """

    id: Identifier
    kind: ActuatorKind
    device: Identifier
    active_value: bool = True  # the output value that means "cut" / "sounding"
    verify: bool = True

    def output(self) -> object:
        """The driver's address of this output (protocol-specific)."""
        raise NotImplementedError


class ModbusActuator(Actuator):
    protocol: Literal["modbus"] = "modbus"
    coil: int = Field(ge=0, le=65535)

    def output(self) -> ModbusCoil:
        return ModbusCoil(self.coil)


class OpcUaActuator(Actuator, _OpcUaAddress):
    """An output on an OPC UA server: a Boolean variable the gateway writes."""

    protocol: Literal["opcua"] = "opcua"

    def output(self) -> OpcUaPoint:
        return OpcUaPoint(node=self.node, browse_path=self.browse_path, subscribe=False)


ActuatorSpec = Annotated[ModbusActuator | OpcUaActuator, Field(discriminator="protocol")]
AnyActuator = ModbusActuator | OpcUaActuator


class GatewaySettings(_Frozen):
    id: Identifier
    # Prometheus /metrics and JSON /status (safewatch edge status); None: not served
    health_host: str = "127.0.0.1"
    health_port: int | None = Field(default=None, ge=0, le=65535)


class SiteInfo(_Frozen):
    id: Identifier
    name: str = ""


class MqttTlsSettings(_Frozen):
    """TLS to the broker. Paths only: a key's passphrase comes from the environment."""

    ca_file: str | None = None  # None: the system's CA certificates
    cert_file: str | None = None  # client certificate (with key_file), if the broker asks
    key_file: str | None = None
    key_password_env: str | None = None

    @model_validator(mode="after")
    def _cert_with_key(self) -> MqttTlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class MqttSettings(_Frozen):
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    username_env: str | None = None  # secrets come from the environment
    password_env: str | None = None
    password_file: str | None = None  # ...or from a file readable by the gateway only
    tls: MqttTlsSettings | None = None


class CommandSettings(_Frozen):
    """Commands from the cloud: accepted only when signed by one of these Ed25519 keys."""

    public_key_files: tuple[str, ...] = Field(min_length=1, max_length=8)
    max_clock_skew_s: float = Field(default=60.0, gt=0, le=3600, allow_inf_nan=False)


class BufferSettings(_Frozen):
    path: str = "var/buffer.db"
    max_mb: float = Field(default=256, gt=0)
    # backlog after an outage is sent at most this fast (alarms and live telemetry go first,
    # unthrottled); None: as fast as the broker takes it
    drain_points_per_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)


class ModelAssignment(_Frozen):
    """Run model ``model`` (a card name in the models directory) on each of ``tags``."""

    model: Identifier
    tags: tuple[Identifier, ...] = Field(min_length=1)


class WaveformSource(_OpcUaNodeFields):
    """A waveform block a vibration sensor keeps, read every ``every_s`` on the device of
    ``tag`` and handed to the waveform model assigned to ``tag`` (``vibration-wear``: 2048
    samples in m/s2). Where the block lives depends on the device's bus:

    - Modbus (TCP, RTU over TCP, RTU): ``samples`` consecutive registers of ``type`` from
      ``address`` in ``table``, engineering = raw * ``scale``;
    - OPC UA: one array-valued variable (``node`` or ``browse_path``) of ``samples``
      numbers, engineering = raw * ``scale``.
    """

    tag: Identifier
    table: Literal["holding", "input"] = "holding"
    address: int | None = Field(default=None, ge=0, le=65535)
    samples: int = Field(default=2048, ge=2, le=8192)
    type: Literal["int16", "uint16"] = "int16"
    scale: float = Field(default=1.0, allow_inf_nan=False)
    every_s: float = Field(default=60.0, ge=0.1, le=86_400, allow_inf_nan=False)

    @model_validator(mode="after")
    def _fits(self) -> WaveformSource:
        opcua = self.node is not None or self.browse_path is not None
        if opcua and self.address is not None:
            raise ValueError(
                "give 'address' (Modbus registers) or 'node'/'browse_path' (OPC UA), not both"
            )
        if self.node is not None and self.browse_path is not None:
            raise ValueError("give exactly one of 'node' and 'browse_path'")
        if not opcua and self.address is None:
            raise ValueError("give 'address' (Modbus registers) or 'node'/'browse_path' (OPC UA)")
        if self.address is not None and self.address + self.samples > 65536:
            raise ValueError(
                f"address {self.address} + {self.samples} samples passes register 65535"
            )
        if self.scale == 0:
            raise ValueError("scale must not be zero")
        return self

    def opcua_point(self) -> OpcUaPoint:
        """The block's variable (an OPC UA source); read each time, never subscribed."""
        return OpcUaPoint(node=self.node, browse_path=self.browse_path, subscribe=False)


class InferenceSettings(_Frozen):
    """ONNX models on the gateway: advisory pre-alarms and forecasts, never a cut.

    ``models_dir`` defaults to the models shipped with SafeWatch. Each tick
    scores every sensor with a fresh full window, ``max_batch`` per model at
    most, on one onnxruntime session per model with ``intra_op_threads``.
    """

    models_dir: str | None = None
    tick_ms: int = Field(default=1000, ge=50, le=60_000)
    intra_op_threads: int = Field(default=1, ge=1, le=64)
    max_batch: int = Field(default=256, ge=1, le=65_536)
    assign: tuple[ModelAssignment, ...] = ()
    waveforms: tuple[WaveformSource, ...] = ()


class NotificationRoute(_Frozen):
    """Who hears of which alarms (edge/alarm_notify.py): apprise URLs (``json://``,
    ``mailtos://``, ``dingtalk://``, ``wecombot://``...) by area and lowest priority."""

    name: str = Field(min_length=1, max_length=64)
    urls: tuple[str, ...] = Field(min_length=1, max_length=16)
    areas: tuple[str, ...] = ()  # empty: every area
    min_priority: Literal["low", "medium", "high", "critical"] = "high"
    max_per_minute: int = Field(default=10, ge=1, le=1000)
    escalate_after_s: float | None = Field(default=None, gt=0, le=7 * 86400)
    escalate_to: tuple[str, ...] = Field(default=(), max_length=16)  # the on-call list, in order
    shifts: tuple[Identifier, ...] = ()  # empty: every shift (see alarms.shifts)


class SiteConfig(_Frozen):
    site: SiteInfo
    gateway: GatewaySettings
    mqtt: MqttSettings = MqttSettings()
    commands: CommandSettings | None = None  # None: the gateway takes no commands
    buffer: BufferSettings = BufferSettings()
    buses: tuple[Bus, ...] = Field(min_length=1)
    devices: tuple[Device, ...] = Field(min_length=1)
    actuators: tuple[ActuatorSpec, ...] = ()
    rules: tuple[RuleConfig, ...] = ()
    interlocks: tuple[InterlockRow, ...] = ()
    state: StateSettings = StateSettings()
    lockout_tests: LockoutTestSettings = LockoutTestSettings()
    inference: InferenceSettings = InferenceSettings()
    notifications: tuple[NotificationRoute, ...] = ()
    alarms: AlarmSettings = AlarmSettings()

    @model_validator(mode="before")
    @classmethod
    def _protocols(cls, data: Any) -> Any:
        """Give every tag and actuator the protocol of its device's bus.

        Tags and actuators name no protocol in YAML; their address fields
        follow their bus's ``type``. An unknown bus is reported by the
        cross-checks; its tags are read as Modbus meanwhile.
        """
        if not isinstance(data, dict):
            return data
        bus_protocol: dict[Any, str] = {}
        for bus in data.get("buses") or ():
            if isinstance(bus, dict):
                bus_protocol[bus.get("id")] = PROTOCOL_OF_BUS.get(str(bus.get("type")), "modbus")
        device_protocol: dict[Any, str] = {}
        devices = data.get("devices")
        if isinstance(devices, list):
            fixed = []
            for device in devices:
                if isinstance(device, dict):
                    proto = bus_protocol.get(device.get("bus"), "modbus")
                    device_protocol[device.get("id")] = proto
                    tags = device.get("tags")
                    if isinstance(tags, list):
                        device = {**device, "tags": [_with_protocol(t, proto) for t in tags]}
                fixed.append(device)
            data = {**data, "devices": fixed}
        actuators = data.get("actuators")
        if isinstance(actuators, list):
            data = {
                **data,
                "actuators": [
                    _with_protocol(
                        a,
                        device_protocol.get(a.get("device"), "modbus")
                        if isinstance(a, dict)
                        else "modbus",
                    )
                    for a in actuators
                ],
            }
        return data


def _with_protocol(item: Any, protocol: str) -> Any:
    if isinstance(item, dict) and "protocol" not in item:
        return {**item, "protocol": protocol}
    return item


RESTORE_HOLD_POLLS = 4  # default restore hold: this many poll periods of the tag's device


class LoadedSite(_Frozen):
    """A validated site with the profiles its tags reference, resolved."""

    source: str
    config: SiteConfig
    profiles: dict[str, SensorProfile]

    def bus(self, bus_id: str) -> AnyBus:
        return next(b for b in self.config.buses if b.id == bus_id)

    def device(self, device_id: str) -> Device:
        return next(d for d in self.config.devices if d.id == device_id)

    def actuator(self, actuator_id: str) -> AnyActuator:
        return next(a for a in self.config.actuators if a.id == actuator_id)

    def profile_of(self, tag: Tag) -> SensorProfile:
        return self.profiles[tag.profile]

    def thresholds_of(self, tag: Tag) -> Thresholds:
        found = self.maybe_thresholds_of(tag)
        assert found is not None, "validated at load time"
        return found

    def maybe_thresholds_of(self, tag: Tag) -> Thresholds | None:
        """The tag's thresholds; None for a state input whose profile has none."""
        return tag.thresholds or self.profiles[tag.profile].thresholds_for(tag.location.position)

    def console_of(self, area: str) -> str:
        """The operator console answering for ``area``: the console listing it, else the
        gateway (no consoles configured, or an area no tag of this gateway has)."""
        return self._console_by_area.get(area, self.config.gateway.id)

    @cached_property
    def _console_by_area(self) -> dict[str, str]:
        return {area: c.id for c in self.config.alarms.consoles for area in c.areas}

    def chatter_of(self, tag: Tag) -> ChatterSettings:
        """The tag's chatter detection: its own, else its profile's, else the site's."""
        return tag.chatter or self.profiles[tag.profile].chatter or self.config.alarms.chatter

    def restore_hold_of(self, tag: Tag, device: Device | None = None) -> float:
        """Seconds below restore before power may return (default: 4 poll periods)."""
        th = self.maybe_thresholds_of(tag)
        if th is not None and th.restore_hold_s is not None:
            return th.restore_hold_s
        if device is None:
            device = self._device_by_tag[tag.name]
        return RESTORE_HOLD_POLLS * device.poll_ms / 1000

    @cached_property
    def _device_by_tag(self) -> dict[str, Device]:
        # an index, built once: a scan with model equality per tag took minutes at 5,000 tags
        return {t.name: d for d in self.config.devices for t in d.tags}

    def tag(self, name: str) -> tuple[Device, Tag]:
        device = self._device_by_tag[name]
        return device, next(t for t in device.tags if t.name == name)

    def unit_of(self, tag: Tag) -> str:
        return tag.unit or self.profiles[tag.profile].unit

    def tags(self) -> list[tuple[Device, AnyTag]]:
        return [(d, t) for d in self.config.devices for t in d.tags]
