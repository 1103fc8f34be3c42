"""OPC UA addresses and status codes: pure, no I/O, no asyncua import.

A point is addressed by a node id string (``ns=2;s=Panel12.CH4_T1``,
``i=2258``, ``ns=3;g=...``, ``ns=1;b=...``) or by a browse path from the
Objects folder (``Panel12/CH4_T1``, each segment ``Name`` or ``N:Name``; a
segment without an index is in the bus's ``namespace``).

:func:`quality_of_status` maps an OPC UA StatusCode (Part 4, 7.34) to our
quality and reason: the two severity bits say good / uncertain / bad, the
sub-code says why.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from device_drivers._sample import Quality, Reason

__all__ = [
    "OpcUaPoint",
    "check_browse_path",
    "check_node_id",
    "parse_browse_path",
    "quality_of_status",
    "status_name",
]

_NODE_ID = re.compile(
    r"^(?:ns=(?P<ns>\d{1,5});)?(?:(?P<i>i=\d{1,10})|(?P<s>s=.+)|(?P<g>g=[0-9A-Fa-f]{8}-"
    r"[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12})|(?P<b>b=[A-Za-z0-9+/=]+))$"
)
_SEGMENT = re.compile(r"^(?:(?P<ns>\d{1,5}):)?(?P<name>[^/:]+)$")


def check_node_id(text: str) -> str:
    """``text`` if it is an OPC UA node id string, else ``ValueError`` saying why."""
    match = _NODE_ID.match(text)
    if match is None:
        raise ValueError(
            f"{text!r} is not an OPC UA node id (e.g. 'ns=2;s=Panel12.CH4', 'i=2258', "
            "'ns=3;g=<guid>', 'ns=1;b=<base64>')"
        )
    ns = match.group("ns")
    if ns is not None and int(ns) > 65535:
        raise ValueError(f"{text!r}: namespace index {ns} is over 65535")
    number = match.group("i")
    if number is not None and int(number[2:]) > 0xFFFFFFFF:
        raise ValueError(f"{text!r}: numeric identifier is over 4294967295")
    return text


def parse_browse_path(text: str) -> tuple[tuple[int | None, str], ...]:
    """``"2:Panel12/CH4"`` -> ``((2, "Panel12"), (None, "CH4"))``; ``ValueError`` if malformed."""
    if not text or text.startswith("/") or text.endswith("/"):
        raise ValueError(
            f"{text!r} is not a browse path (segments 'Name' or 'N:Name' split by '/')"
        )
    out: list[tuple[int | None, str]] = []
    for segment in text.split("/"):
        match = _SEGMENT.match(segment.strip())
        if match is None:
            raise ValueError(f"{text!r}: segment {segment!r} is not 'Name' or 'N:Name'")
        ns = match.group("ns")
        if ns is not None and int(ns) > 65535:
            raise ValueError(f"{text!r}: namespace index {ns} is over 65535")
        out.append((None if ns is None else int(ns), match.group("name")))
    return tuple(out)


def check_browse_path(text: str) -> str:
    parse_browse_path(text)
    return text


@dataclass(frozen=True, slots=True)
class OpcUaPoint:
    """Where a value (or an output) lives on an OPC UA server and how to watch it.

    Exactly one of ``node`` and ``browse_path``. ``subscribe``: a monitored item
    in the bus's subscription (the default) rather than a Read each poll;
    ``sampling_ms`` the server's sampling interval (None: the publishing
    interval); ``deadband``: absolute deadband in raw units (0: every change).
    """

    node: str | None = None
    browse_path: str | None = None
    subscribe: bool = True
    sampling_ms: float | None = None
    deadband: float = 0.0

    def __post_init__(self) -> None:
        if (self.node is None) == (self.browse_path is None):
            raise ValueError("give exactly one of 'node' and 'browse_path'")
        if self.node is not None:
            check_node_id(self.node)
        if self.browse_path is not None:
            parse_browse_path(self.browse_path)
        if self.deadband < 0:
            raise ValueError("deadband must be >= 0")

    @property
    def key(self) -> str:
        return self.node if self.node is not None else f"path:{self.browse_path}"

    def __str__(self) -> str:
        return self.node if self.node is not None else f"browse path {self.browse_path}"


# Severity: bits 31-30. 00 good, 01 uncertain, 10 and 11 bad.
_SEVERITY_MASK = 0xC000_0000
_CODE_MASK = 0xFFFF_0000  # the low 16 bits are info bits (overflow, limits...)

# Sub-codes that mean something our reasons already name.
_REASONS: dict[int, str] = {
    0x800A_0000: Reason.TIMEOUT,  # BadTimeout
    0x8005_0000: Reason.COMMS_LOST,  # BadCommunicationError
    0x8031_0000: Reason.COMMS_LOST,  # BadNoCommunication
    0x808A_0000: Reason.COMMS_LOST,  # BadNotConnected
    0x800D_0000: Reason.COMMS_LOST,  # BadServerNotConnected
    0x800E_0000: Reason.COMMS_LOST,  # BadServerHalted
    0x800C_0000: Reason.COMMS_LOST,  # BadShutdown
    0x8032_0000: Reason.STALE,  # BadWaitingForInitialData
    0x4090_0000: Reason.STALE,  # UncertainLastUsableValue
    0x408F_0000: Reason.STALE,  # UncertainNoCommunicationLastUsableValue
    0x8007_0000: Reason.DECODE,  # BadDecodingError
    0x803C_0000: Reason.OUT_OF_RANGE,  # BadOutOfRange
    0x4094_0000: Reason.OVER_RANGE,  # UncertainEngineeringUnitsExceeded
    0x808B_0000: "device_failure",  # BadDeviceFailure
    0x808C_0000: "sensor_failure",  # BadSensorFailure
    0x808D_0000: "out_of_service",  # BadOutOfService
    0x8033_0000: "config",  # BadNodeIdInvalid
    0x8034_0000: "config",  # BadNodeIdUnknown
    0x8035_0000: "config",  # BadAttributeIdInvalid
    0x803A_0000: "not_readable",  # BadNotReadable
    0x803B_0000: "not_writable",  # BadNotWritable
    0x801F_0000: "access_denied",  # BadUserAccessDenied
    0x8089_0000: "config",  # BadConfigurationError
    0x806F_0000: "config",  # BadNoMatch (a browse path that leads nowhere)
    0x8074_0000: "decode",  # BadTypeMismatch
    0x4093_0000: "sensor_not_accurate",  # UncertainSensorNotAccurate
}

_NAMES: dict[int, str] = {}


def status_name(code: int) -> str:
    """The StatusCode's symbolic name (``BadSensorFailure``), or hex when unknown."""
    base = code & _CODE_MASK
    name = _NAMES.get(base)
    if name is None:
        try:
            from asyncua.ua.status_codes import get_name_and_doc  # lazy: asyncua is heavy

            name, _ = get_name_and_doc(base)
        except (ImportError, KeyError, ValueError):  # pragma: no cover - asyncua always there
            name = ""
        if not name or name.startswith("UnknownUaError"):
            name = f"0x{base:08X}"
        _NAMES[base] = name
    return name


def quality_of_status(code: int) -> tuple[Quality, str | None]:
    """Our quality and reason for an OPC UA StatusCode (the ``int`` value)."""
    severity = code & _SEVERITY_MASK
    if severity == 0:
        return Quality.GOOD, None
    base = code & _CODE_MASK
    reason = _REASONS.get(base)
    if reason is None:
        reason = status_name(code)
    if severity == 0x4000_0000:
        return Quality.UNCERTAIN, reason
    return Quality.BAD, reason
