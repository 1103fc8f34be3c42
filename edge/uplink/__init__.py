"""Uplink: durable store-and-forward buffer, batching writers and the MQTT publisher."""

from edge.uplink.batcher import AlarmWriter, SampleQueue, TelemetryBatcher
from edge.uplink.buffer import (
    BufferStats,
    BufferStorageError,
    PendingMessage,
    ReadCursor,
    StoreAndForwardBuffer,
)
from edge.uplink.publisher import MqttPublisher

__all__ = [
    "AlarmWriter",
    "BufferStats",
    "BufferStorageError",
    "MqttPublisher",
    "PendingMessage",
    "ReadCursor",
    "SampleQueue",
    "StoreAndForwardBuffer",
    "TelemetryBatcher",
]
