"""An InfluxQL target for Grafana's InfluxDB data source, as a foundation-SDK query.

The foundation SDK ships no InfluxDB query type, so this is one: the raw
InfluxQL text (``rawQuery``) with the macros Grafana's InfluxDB data source
expands (``$timeFilter``, ``$__interval``) and an ``alias`` naming series by
tag (``$tag_tag``). :func:`expand_macros` does that expansion the way
Grafana does, so tests can run every panel's query against a real InfluxDB.
"""

from __future__ import annotations

import re
from typing import Literal, Self

from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models import dashboard

__all__ = ["InfluxQLQuery", "InfluxQLTarget", "expand_macros", "ident", "literal", "tag_in"]

ResultFormat = Literal["time_series", "table"]


class InfluxQLTarget(cogvariants.Dataquery):
    """One query of a panel: raw InfluxQL, its ref id, alias and result format."""

    def __init__(
        self,
        ref_id: str,
        query: str,
        *,
        datasource: dashboard.DataSourceRef,
        alias: str = "",
        result_format: ResultFormat = "time_series",
    ) -> None:
        self.ref_id = ref_id
        self.query = query
        self.datasource = datasource
        self.alias = alias
        self.result_format = result_format

    def to_json(self) -> dict[str, object]:
        payload: dict[str, object] = {
            "refId": self.ref_id,
            "datasource": self.datasource.to_json(),
            "query": self.query,
            "rawQuery": True,
            "resultFormat": self.result_format,
        }
        if self.alias:
            payload["alias"] = self.alias
        return payload


class InfluxQLQuery(cogbuilder.Builder[cogvariants.Dataquery]):
    """Builder so targets plug into the SDK's panel builders (``with_target``)."""

    def __init__(self, ref_id: str, query: str, datasource: dashboard.DataSourceRef) -> None:
        self._internal = InfluxQLTarget(ref_id, query, datasource=datasource)

    def alias(self, alias: str) -> Self:
        self._internal.alias = alias
        return self

    def table(self) -> Self:
        self._internal.result_format = "table"
        return self

    def build(self) -> InfluxQLTarget:
        return self._internal


def ident(name: str) -> str:
    """A double-quoted InfluxQL identifier (measurement, tag key)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def literal(value: str) -> str:
    """A single-quoted InfluxQL string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def tag_in(key: str, values: list[str] | tuple[str, ...]) -> str:
    """``("key" = 'a' OR "key" = 'b')`` - no regex, so no escaping surprises."""
    return "(" + " OR ".join(f"{ident(key)} = {literal(v)}" for v in values) + ")"


_INTERVAL = re.compile(r"\$__interval\b|\$interval\b")


def expand_macros(query: str, *, time_range: str = "now() - 1h", interval: str = "10s") -> str:
    """Expand Grafana's InfluxDB macros as the data source does before it queries.

    ``$timeFilter`` becomes ``time >= <from>`` (Grafana adds ``and time <= <to>``
    only for an absolute range); ``$__interval`` becomes the panel's group-by
    interval.
    """
    out = query.replace("$timeFilter", f"time >= {time_range}")
    return _INTERVAL.sub(interval, out)
