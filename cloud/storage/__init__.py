"""Cloud storage: InfluxDB line protocol and writers, the relational store."""

from cloud.storage._errors import (
    InfluxError,
    InfluxRejected,
    InfluxUnavailable,
    StorageError,
    StoreError,
)
from cloud.storage.db import AlarmRecord, GatewayRecord, LatestValue, Store
from cloud.storage.influx import InfluxV1Writer, InfluxV2Writer, PointWriter, to_lines

__all__ = [
    "AlarmRecord",
    "GatewayRecord",
    "InfluxError",
    "InfluxRejected",
    "InfluxUnavailable",
    "InfluxV1Writer",
    "InfluxV2Writer",
    "LatestValue",
    "PointWriter",
    "StorageError",
    "Store",
    "StoreError",
    "to_lines",
]
