"""Cloud storage: InfluxDB line protocol and writers, the relational store."""

from cloud.storage._errors import (
    InfluxError,
    InfluxRejected,
    InfluxUnavailable,
    StorageError,
    StoreError,
    StoreRejected,
)
from cloud.storage.db import (
    AlarmRecord,
    BatchCommit,
    DeadLetter,
    DeadLetterRecord,
    GatewayRecord,
    LatestValue,
    SpoolChunk,
    Store,
    TagCondition,
)
from cloud.storage.influx import (
    InfluxV1Writer,
    InfluxV2Writer,
    LineBuilder,
    PointWriter,
    WriteResult,
    is_loopback,
    to_lines,
)

__all__ = [
    "AlarmRecord",
    "BatchCommit",
    "DeadLetter",
    "DeadLetterRecord",
    "GatewayRecord",
    "InfluxError",
    "InfluxRejected",
    "InfluxUnavailable",
    "InfluxV1Writer",
    "InfluxV2Writer",
    "LatestValue",
    "LineBuilder",
    "PointWriter",
    "SpoolChunk",
    "StorageError",
    "Store",
    "StoreError",
    "StoreRejected",
    "TagCondition",
    "WriteResult",
    "is_loopback",
    "to_lines",
]
