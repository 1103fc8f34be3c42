"""Decoding of the two answers a gateway gets most: Read results and data-change publishes.

asyncua decodes every answer into dataclasses field by field (a ``DataValue``, a
``Variant``, a ``StatusCode`` and often ``datetime`` objects per value); for a
2,000-node Read that is most of the driver's CPU. These functions read the same
OPC UA binary encoding (Part 6, 5.2) straight into values and status codes, with
``struct`` on the bytes. Only what a gateway needs is decoded: a value of a scalar
numeric or Boolean Variant, and the StatusCode; timestamps are skipped. Anything
else (strings, arrays, another notification type) is handed to asyncua's own
decoder, so the result is always what asyncua would give.

Pure: bytes in, values out, no I/O. ``tests/unit/test_opcua_codec.py`` holds them
to asyncua's encoder with hypothesis.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from asyncua import ua
from asyncua.common.utils import Buffer
from asyncua.ua.ua_binary import nodeid_from_binary, struct_from_binary, variant_from_binary

__all__ = [
    "DataChange",
    "decode_data_value",
    "decode_publish_response",
    "decode_read_response",
]

# Variant type id -> its scalar encoding (Part 6, 5.1.2)
_SCALARS: dict[int, struct.Struct] = {
    1: struct.Struct("<?"),  # Boolean
    2: struct.Struct("<b"),  # SByte
    3: struct.Struct("<B"),  # Byte
    4: struct.Struct("<h"),  # Int16
    5: struct.Struct("<H"),  # UInt16
    6: struct.Struct("<i"),  # Int32
    7: struct.Struct("<I"),  # UInt32
    8: struct.Struct("<q"),  # Int64
    9: struct.Struct("<Q"),  # UInt64
    10: struct.Struct("<f"),  # Float
    11: struct.Struct("<d"),  # Double
}
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_U16 = struct.Struct("<H")
# DataValue encoding mask: bytes to skip for the timestamps and picoseconds present
_SKIP = [8 * bool(m & 0x04) + 8 * bool(m & 0x08) + 2 * bool(m & 0x10) + 2 * bool(m & 0x20)
         for m in range(256)]  # fmt: skip
_DATA_CHANGE = ua.ObjectIds.DataChangeNotification_Encoding_DefaultBinary

DataChange = Callable[[int, Any, int], None]
"""``on_change(client_handle, value, status_code)`` for each monitored item notified."""


def decode_data_value(raw: bytes, pos: int) -> tuple[Any, int, int]:
    """One DataValue at ``raw[pos:]``: ``(value, status code, position after it)``.

    ``value`` is the Variant's Python value (None without one); status 0 is Good.
    """
    mask = raw[pos]
    pos += 1
    value = None
    status = 0
    if mask & 0x01:
        vtype = raw[pos]
        scalar = _SCALARS.get(vtype)  # an array or dimensions flag (0x80, 0x40) misses
        if scalar is not None:
            (value,) = scalar.unpack_from(raw, pos + 1)
            pos += 1 + scalar.size
        elif vtype == 0:  # the null Variant
            pos += 1
        else:
            buf = Buffer(raw, pos)  # asyncua decodes what we do not
            value = variant_from_binary(buf).Value
            pos = buf.cur_pos
    if mask & 0x02:
        (status,) = _U32.unpack_from(raw, pos)
        pos += 4
    return value, status, pos + _SKIP[mask]


def _header(raw: bytes) -> int:
    """Skip the TypeId and ResponseHeader (checked: a bad ServiceResult raises); the
    position after them."""
    buf = Buffer(raw)
    nodeid_from_binary(buf)
    header = struct_from_binary(ua.ResponseHeader, buf)
    header.ServiceResult.check()
    return int(buf.cur_pos)


def decode_read_response(raw: bytes) -> tuple[list[Any], list[int]]:
    """A ReadResponse (from its TypeId on): the values and status codes of its Results.

    Raises ``struct.error``, ``IndexError`` or an asyncua ``UaError`` on malformed data
    or a bad ServiceResult.
    """
    pos = _header(raw)
    (count,) = _I32.unpack_from(raw, pos)
    pos += 4
    values: list[Any] = [None] * max(count, 0)
    status: list[int] = [0] * max(count, 0)
    for i in range(max(count, 0)):
        values[i], status[i], pos = decode_data_value(raw, pos)
    return values, status


def decode_publish_response(raw: bytes, on_change: DataChange) -> tuple[int, int, int, int] | None:
    """A PublishResponse whose notifications are all data changes: ``on_change`` is called
    per monitored item and ``(subscription id, sequence number, notification messages,
    item notifications)`` returned (a keep-alive has no messages: nothing to acknowledge).
    None when it carries anything else (a status change, events): decode that one with
    asyncua. Raises as :func:`decode_read_response`.
    """
    pos = _header(raw)
    (subscription,) = _U32.unpack_from(raw, pos)
    pos += 4
    (available,) = _I32.unpack_from(raw, pos)
    pos += 4 + 4 * max(available, 0) + 1  # AvailableSequenceNumbers, MoreNotifications
    (sequence,) = _U32.unpack_from(raw, pos)
    pos += 4 + 8  # SequenceNumber, PublishTime
    (parts,) = _I32.unpack_from(raw, pos)
    pos += 4
    # check every part first: nothing is applied from a response we hand to asyncua
    bodies = []
    for _ in range(max(parts, 0)):
        # ExtensionObject: TypeId as a four-byte NodeId (0x01, ns 0), encoding 1, length
        if raw[pos] != 0x01 or raw[pos + 1] != 0 or raw[pos + 4] != 0x01:
            return None
        if _U16.unpack_from(raw, pos + 2)[0] != _DATA_CHANGE:
            return None
        (length,) = _I32.unpack_from(raw, pos + 5)
        bodies.append(pos + 9)
        pos += 9 + length
    if pos > len(raw):
        raise struct.error("notification data runs past the end of the message")
    notified = 0
    for body in bodies:
        (items,) = _I32.unpack_from(raw, body)
        body += 4
        for _ in range(max(items, 0)):
            (handle,) = _U32.unpack_from(raw, body)
            value, status, body = decode_data_value(raw, body + 4)
            on_change(handle, value, status)
        notified += max(items, 0)
    return subscription, sequence, len(bodies), notified
