"""OPC UA (asyncua): batched reads, subscriptions, node-id or browse-path addressing.

Addresses and the StatusCode -> quality mapping are pure and import no
asyncua (the configuration layer uses them); the driver and the certificate
maker are imported on first use, since asyncua and cryptography take a while
to import (the gateway's start-up is on the safety path after a restart).
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
from device_drivers.opcua._logs import RateLimitFilter, quieten_asyncua

if TYPE_CHECKING:
    from device_drivers.opcua._certs import CertificateFiles, make_certificate
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
_LAZY_CERTS = {"CertificateFiles", "make_certificate"}  # cryptography: 0.1-0.3 s to import


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from device_drivers.opcua import _driver

        return getattr(_driver, name)
    if name in _LAZY_CERTS:
        from device_drivers.opcua import _certs

        return getattr(_certs, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
