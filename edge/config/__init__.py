"""Site and sensor-profile configuration: YAML -> frozen, validated models."""

from edge.config._loader import (
    PACKAGED_PROFILES,
    ConfigError,
    ConfigIssue,
    load_model,
    load_profile,
    load_profiles,
    load_site,
)
from edge.config._models import (
    Actuator,
    ActuatorKind,
    Bus,
    Device,
    Direction,
    LoadedSite,
    Location,
    ModbusTcpBus,
    SensorProfile,
    SiteConfig,
    Tag,
    Thresholds,
)

__all__ = [
    "PACKAGED_PROFILES",
    "Actuator",
    "ActuatorKind",
    "Bus",
    "ConfigError",
    "ConfigIssue",
    "Device",
    "Direction",
    "LoadedSite",
    "Location",
    "ModbusTcpBus",
    "SensorProfile",
    "SiteConfig",
    "Tag",
    "Thresholds",
    "load_model",
    "load_profile",
    "load_profiles",
    "load_site",
]
