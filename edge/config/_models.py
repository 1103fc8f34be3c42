"""Frozen configuration models: sensor profiles and site files.

Validated once when loaded; nothing downstream re-checks or clamps.
"""

from __future__ import annotations

import enum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from device_drivers.modbus import DataType, Order, register_count

Identifier = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Direction(enum.StrEnum):
    HIGH = "high"  # danger when the value rises (CH4, CO, H2S)
    LOW = "low"  # danger when the value falls (O2)


class Thresholds(_Frozen):
    """Two-level thresholds with hysteresis for one sensor location.

    ``alarm`` raises a level-1 alarm; ``cut`` (optional) is level 2 and
    drives the tag's interlock actuators (power cut); the cut is held until the
    value is back past ``restore``. ``clear`` is where a level-1 alarm ends
    (defaults to ``alarm``: methane alarms at >= 1.0 and clears below 1.0).
    """

    direction: Direction = Direction.HIGH
    alarm: float
    cut: float | None = None
    restore: float | None = None
    clear: float | None = None
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
        clear = self.clear_at
        if high and clear > self.alarm:
            raise ValueError(f"clear {clear} must be <= alarm {self.alarm}")
        if not high and clear < self.alarm:
            raise ValueError(f"clear {clear} must be >= alarm {self.alarm}")
        return self

    @property
    def clear_at(self) -> float:
        return self.alarm if self.clear is None else self.clear


class ValueRange(_Frozen):
    min: float
    max: float

    @model_validator(mode="after")
    def _ordered(self) -> ValueRange:
        if self.min >= self.max:
            raise ValueError(f"min {self.min} must be < max {self.max}")
        return self


class SensorProfile(_Frozen):
    """How a kind of sensor reads and which standard thresholds apply."""

    id: Identifier
    name: str
    kind: Identifier  # measurement name: ch4, co, o2, h2s, ...
    unit: str
    range: ValueRange
    fail_safe: bool = False  # a faulty/offline/out-of-range sensor trips its interlock
    thresholds: dict[str, Thresholds] = Field(min_length=1)
    nominal: float  # a typical healthy value (simulators start here)

    def thresholds_for(self, position: str) -> Thresholds | None:
        return self.thresholds.get(position) or self.thresholds.get("default")


class Location(_Frozen):
    area: str = Field(min_length=1)
    position: str = Field(min_length=1)  # a threshold key of the profile: face, return, ...
    roadway: str = ""


class Tag(_Frozen):
    name: Identifier
    profile: Identifier
    table: Literal["holding", "input"] = "holding"
    address: int = Field(ge=0, le=65535)
    type: DataType = DataType.FLOAT32
    word_order: Order = Order.BIG
    byte_order: Order = Order.BIG
    scale: float = 1.0
    offset: float = 0.0
    unit: str | None = None
    location: Location
    thresholds: Thresholds | None = None  # site override of the profile's
    actuators: tuple[Identifier, ...] = ()

    @model_validator(mode="after")
    def _scale(self) -> Tag:
        if self.scale == 0:
            raise ValueError("scale must not be 0")
        if self.address + register_count(self.type) > 65536:
            raise ValueError(f"{self.type} at address {self.address} runs past register 65535")
        return self

    @property
    def registers(self) -> range:
        return range(self.address, self.address + register_count(self.type))


class ModbusTcpBus(_Frozen):
    id: Identifier
    type: Literal["modbus_tcp"]
    host: str = Field(min_length=1)
    port: int = Field(default=502, ge=1, le=65535)
    timeout_ms: int = Field(default=1000, ge=10, le=60_000)


Bus = Annotated[ModbusTcpBus, Field(discriminator="type")]


class Device(_Frozen):
    id: Identifier
    bus: Identifier
    unit_id: int = Field(default=1, ge=0, le=255)
    poll_ms: int = Field(default=1000, ge=50, le=30_000)  # safety sensors: <= 30 s
    stale_after_ms: int | None = Field(default=None, ge=100)
    tags: tuple[Tag, ...] = ()

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
    id: Identifier
    kind: ActuatorKind
    device: Identifier
    coil: int = Field(ge=0, le=65535)
    active_value: bool = True  # the coil value that means "cut" / "sounding"


class GatewaySettings(_Frozen):
    id: Identifier


class SiteInfo(_Frozen):
    id: Identifier
    name: str = ""


class MqttSettings(_Frozen):
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    username_env: str | None = None  # secrets come from the environment
    password_env: str | None = None


class BufferSettings(_Frozen):
    path: str = "var/buffer.db"
    max_mb: float = Field(default=256, gt=0)


class SiteConfig(_Frozen):
    site: SiteInfo
    gateway: GatewaySettings
    mqtt: MqttSettings = MqttSettings()
    buffer: BufferSettings = BufferSettings()
    buses: tuple[Bus, ...] = Field(min_length=1)
    devices: tuple[Device, ...] = Field(min_length=1)
    actuators: tuple[Actuator, ...] = ()


class LoadedSite(_Frozen):
    """A validated site with the profiles its tags reference, resolved."""

    source: str
    config: SiteConfig
    profiles: dict[str, SensorProfile]

    def bus(self, bus_id: str) -> ModbusTcpBus:
        return next(b for b in self.config.buses if b.id == bus_id)

    def device(self, device_id: str) -> Device:
        return next(d for d in self.config.devices if d.id == device_id)

    def actuator(self, actuator_id: str) -> Actuator:
        return next(a for a in self.config.actuators if a.id == actuator_id)

    def profile_of(self, tag: Tag) -> SensorProfile:
        return self.profiles[tag.profile]

    def thresholds_of(self, tag: Tag) -> Thresholds:
        found = tag.thresholds or self.profiles[tag.profile].thresholds_for(tag.location.position)
        assert found is not None, "validated at load time"
        return found

    def unit_of(self, tag: Tag) -> str:
        return tag.unit or self.profiles[tag.profile].unit

    def tags(self) -> list[tuple[Device, Tag]]:
        return [(d, t) for d in self.config.devices for t in d.tags]
