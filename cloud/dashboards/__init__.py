"""Control-room Grafana walls as code: dashboards, provisioning files, upload.

Build a :class:`WallSpec` for a site (the CLI does it from the site YAML),
then :func:`build_dashboards` gives the dashboard JSON, :func:`export` writes
it with Grafana provisioning files and :func:`push` uploads it.
"""

from cloud.dashboards._build import (
    DATASOURCE_UID,
    FORECAST_MEASUREMENT,
    build_dashboards,
    dashboard_uid,
    threshold_steps,
)
from cloud.dashboards._influxql import expand_macros
from cloud.dashboards._provision import (
    FOLDER_TITLE,
    FOLDER_UID,
    GrafanaTarget,
    datasource_model,
    export,
)
from cloud.dashboards._push import PushError, PushResult, push
from cloud.dashboards._schema import SCHEMA_PATH, DashboardSchemaError, validate_dashboard
from cloud.dashboards._spec import GAS_KINDS, HEALTH_MEASUREMENT, TagSpec, ThresholdSpec, WallSpec

__all__ = [
    "DATASOURCE_UID",
    "FOLDER_TITLE",
    "FOLDER_UID",
    "FORECAST_MEASUREMENT",
    "GAS_KINDS",
    "HEALTH_MEASUREMENT",
    "SCHEMA_PATH",
    "DashboardSchemaError",
    "GrafanaTarget",
    "PushError",
    "PushResult",
    "TagSpec",
    "ThresholdSpec",
    "WallSpec",
    "build_dashboards",
    "dashboard_uid",
    "datasource_model",
    "expand_macros",
    "export",
    "push",
    "threshold_steps",
    "validate_dashboard",
]
