"""OPC UA (asyncua): batched reads, subscriptions, node-id or browse-path addressing.

Addresses and the StatusCode -> quality mapping are pure and import no
asyncua (the configuration layer uses them); the driver itself is imported
on first use, since asyncua takes a while to import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from device_drivers.opcua._address import (
    OpcUaPoint,
    check_browse_path,
    check_node_id,
    parse_browse_path,
    quality_of_status,
    status_name,
)
from device_drivers.opcua._certs import CertificateFiles, make_certificate
from device_drivers.opcua._logs import RateLimitFilter, quieten_asyncua

if TYPE_CHECKING:
    from device_drivers.opcua._driver import (
        OpcUaDriver,
        OpcUaEndpoint,
        OpcUaPlan,
        OpcUaSecurity,
        judge_value,
    )

__all__ = [
    "CertificateFiles",
    "OpcUaDriver",
    "OpcUaEndpoint",
    "OpcUaPlan",
    "OpcUaPoint",
    "OpcUaSecurity",
    "RateLimitFilter",
    "check_browse_path",
    "check_node_id",
    "judge_value",
    "make_certificate",
    "parse_browse_path",
    "quality_of_status",
    "quieten_asyncua",
    "status_name",
]

_LAZY = {"OpcUaDriver", "OpcUaEndpoint", "OpcUaPlan", "OpcUaSecurity", "judge_value"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from device_drivers.opcua import _driver

        return getattr(_driver, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
