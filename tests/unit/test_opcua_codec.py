"""The OPC UA answer decoders (device_drivers.opcua._codec) against asyncua's own encoder and
decoder: for any Read results and data-change publishes asyncua can encode, ours decode the
same values and status codes; anything else is refused or handed back, never misread."""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from asyncua import ua
from asyncua.common.utils import Buffer
from asyncua.ua.ua_binary import struct_from_binary, struct_to_binary
from asyncua.ua.uaerrors import UaError, UaStatusCodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from device_drivers.opcua._codec import (
    decode_data_value,
    decode_publish_response,
    decode_read_response,
)

_INTS = {
    ua.VariantType.SByte: (-(2**7), 2**7 - 1),
    ua.VariantType.Byte: (0, 2**8 - 1),
    ua.VariantType.Int16: (-(2**15), 2**15 - 1),
    ua.VariantType.UInt16: (0, 2**16 - 1),
    ua.VariantType.Int32: (-(2**31), 2**31 - 1),
    ua.VariantType.UInt32: (0, 2**32 - 1),
    ua.VariantType.Int64: (-(2**63), 2**63 - 1),
    ua.VariantType.UInt64: (0, 2**64 - 1),
}


def _variant_of(vtype: ua.VariantType) -> Callable[[int], ua.Variant]:
    return lambda value: ua.Variant(value, vtype)


def _variants() -> st.SearchStrategy[ua.Variant | None]:
    ints = [st.integers(lo, hi).map(_variant_of(vt)) for vt, (lo, hi) in _INTS.items()]
    return st.one_of(
        st.none(),
        st.floats(allow_nan=True).map(lambda v: ua.Variant(v, ua.VariantType.Double)),
        st.floats(width=32).map(lambda v: ua.Variant(v, ua.VariantType.Float)),
        st.booleans().map(lambda v: ua.Variant(v, ua.VariantType.Boolean)),
        st.text(max_size=8).map(lambda v: ua.Variant(v, ua.VariantType.String)),
        st.lists(st.floats(allow_nan=False), max_size=4).map(
            lambda v: ua.Variant(v, ua.VariantType.Double, is_array=True)
        ),
        st.just(ua.Variant(None)),
        *ints,
    )


_WHEN = st.one_of(st.none(), st.just(datetime(2026, 11, 25, 19, 0, tzinfo=UTC)))


@st.composite
def _data_values(draw: st.DrawFn) -> ua.DataValue:
    status = draw(st.one_of(st.none(), st.integers(0, 2**32 - 1)))
    return ua.DataValue(
        draw(_variants()),
        None if status is None else ua.StatusCode(status),
        SourceTimestamp=draw(_WHEN),
        ServerTimestamp=draw(_WHEN),
        SourcePicoseconds=draw(st.one_of(st.none(), st.integers(0, 9999))),
        ServerPicoseconds=draw(st.one_of(st.none(), st.integers(0, 9999))),
    )


def _theirs(dv: ua.DataValue) -> tuple[Any, int]:
    value = None if dv.Value is None else dv.Value.Value
    return value, 0 if dv.StatusCode is None else int(dv.StatusCode.value)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


@settings(max_examples=150, deadline=None)
@given(st.lists(_data_values(), max_size=20))
def test_read_results_decode_as_asyncua_decodes_them(results: list[ua.DataValue]) -> None:
    raw = struct_to_binary(ua.ReadResponse(Results=results))
    values, status = decode_read_response(raw)
    expected = [_theirs(dv) for dv in struct_from_binary(ua.ReadResponse, Buffer(raw)).Results]
    assert len(values) == len(status) == len(expected)
    for got, code, (want, want_code) in zip(values, status, expected, strict=True):
        assert _same(got, want) and code == want_code, (got, want)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(st.integers(0, 2**32 - 1), _data_values()), max_size=6),
        min_size=1,
        max_size=3,
    ),
    st.integers(0, 2**32 - 1),
    st.integers(1, 2**32 - 1),
)
def test_data_change_publishes_decode_as_asyncua_decodes_them(
    parts: list[list[tuple[int, ua.DataValue]]], subscription: int, sequence: int
) -> None:
    message = ua.NotificationMessage(
        SequenceNumber=sequence,
        PublishTime=datetime(2026, 11, 25, tzinfo=UTC),
        NotificationData=[
            ua.DataChangeNotification(
                MonitoredItems=[
                    ua.MonitoredItemNotification(ClientHandle=h, Value=dv) for h, dv in items
                ]
            )
            for items in parts
        ],
    )
    result = ua.PublishResult(
        SubscriptionId=subscription, AvailableSequenceNumbers=[7, 8], NotificationMessage=message
    )
    raw = struct_to_binary(ua.PublishResponse(Parameters=result))
    seen: list[tuple[int, Any, int]] = []
    decoded = decode_publish_response(raw, lambda h, v, s: seen.append((h, v, s)))
    theirs = struct_from_binary(ua.PublishResponse, Buffer(raw)).Parameters
    expected = [
        (item.ClientHandle, *_theirs(item.Value))
        for part in theirs.NotificationMessage.NotificationData
        for item in part.MonitoredItems
    ]
    assert decoded == (subscription, sequence, len(parts), len(expected))
    assert len(seen) == len(expected)
    for (h, v, s), (eh, ev, es) in zip(seen, expected, strict=True):
        assert h == eh and _same(v, ev) and s == es


def test_a_keep_alive_has_nothing_to_acknowledge() -> None:
    result = ua.PublishResult(SubscriptionId=3, NotificationMessage=ua.NotificationMessage(5))
    raw = struct_to_binary(ua.PublishResponse(Parameters=result))
    assert decode_publish_response(raw, lambda *_: None) == (3, 5, 0, 0)


def test_a_status_change_is_handed_back_to_asyncua_untouched() -> None:
    items = [ua.MonitoredItemNotification(1, ua.DataValue(ua.Variant(1.5)))]
    message = ua.NotificationMessage(
        9,
        NotificationData=[
            ua.DataChangeNotification(MonitoredItems=items),
            ua.StatusChangeNotification(Status=ua.StatusCode(ua.StatusCodes.BadTimeout)),
        ],
    )
    raw = struct_to_binary(
        ua.PublishResponse(Parameters=ua.PublishResult(1, NotificationMessage=message))
    )
    seen: list[object] = []
    assert decode_publish_response(raw, lambda *a: seen.append(a)) is None
    assert seen == [], "nothing applied from a response asyncua decodes instead"


def test_a_bad_service_result_raises() -> None:
    header = ua.ResponseHeader(ServiceResult=ua.StatusCode(ua.StatusCodes.BadSessionIdInvalid))
    raw = struct_to_binary(ua.ReadResponse(ResponseHeader=header, Results=[]))
    with pytest.raises(UaStatusCodeError):
        decode_read_response(raw)


def test_cut_answers_raise_never_misread() -> None:
    results = [ua.DataValue(ua.Variant(float(i), ua.VariantType.Double)) for i in range(4)]
    raw = struct_to_binary(ua.ReadResponse(Results=results))
    end_of_results = len(raw) - 4  # the DiagnosticInfos count follows the results
    for cut in range(end_of_results):
        with pytest.raises((struct.error, IndexError, UaError)):
            decode_read_response(raw[:cut])


def test_one_data_value_reports_where_it_ends() -> None:
    dv = ua.DataValue(
        ua.Variant(2.5, ua.VariantType.Double),
        ua.StatusCode(0x4000_0000),
        SourceTimestamp=datetime(2026, 1, 1, tzinfo=UTC),
        ServerPicoseconds=7,
    )
    raw = b"\xaa" + struct_to_binary(dv) + b"\xbb"
    value, status, end = decode_data_value(raw, 1)
    assert (value, status, raw[end:]) == (2.5, 0x4000_0000, b"\xbb")
