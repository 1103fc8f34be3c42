"""SafeWatch cloud: MQTT ingest, InfluxDB writer, relational store and HTTP API."""

from cloud.api import create_app
from cloud.ingest import IngestService
from cloud.service import CloudService, CloudSettings

__all__ = ["CloudService", "CloudSettings", "IngestService", "create_app"]
