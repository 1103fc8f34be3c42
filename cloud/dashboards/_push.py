"""Upload the walls to a running Grafana over its HTTP API (grafana-client).

Creates the SafeWatch folder and the InfluxDB data source when missing
(updates the data source when present), then saves every dashboard with
``overwrite``. Needs a service-account token with the Editor role on the
folder, Admin for the data source.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from grafana_client.api import GrafanaApi
from grafana_client.client import GrafanaClientError, GrafanaException

from cloud.dashboards._build import DATASOURCE_UID
from cloud.dashboards._provision import FOLDER_TITLE, FOLDER_UID, GrafanaTarget, datasource_model

__all__ = ["PushError", "PushResult", "push"]


class PushError(Exception):
    """Grafana refused or could not be reached; the message names the step."""


@dataclass(frozen=True, slots=True)
class PushResult:
    folder_created: bool
    datasource: str  # "created" or "updated"
    dashboards: list[str]


def _not_found(exc: GrafanaException) -> bool:
    return isinstance(exc, GrafanaClientError) and exc.status_code == 404


def push(
    boards: Mapping[str, Mapping[str, Any]],
    *,
    url: str,
    token: str,
    target: GrafanaTarget,
    timeout_s: float = 10.0,
) -> PushResult:
    api = GrafanaApi.from_url(url=url, credential=token, timeout=timeout_s)
    step = "folder"
    try:
        try:
            api.folder.get_folder(FOLDER_UID)
            folder_created = False
        except GrafanaException as exc:
            if not _not_found(exc):
                raise
            api.folder.create_folder(FOLDER_TITLE, uid=FOLDER_UID)
            folder_created = True
        step = "data source"
        model = datasource_model(target)
        try:
            api.datasource.get_datasource_by_uid(DATASOURCE_UID)
        except GrafanaException as exc:
            if not _not_found(exc):
                raise
            api.datasource.create_datasource(model)
            source = "created"
        else:
            api.datasource.update_datasource_by_uid(DATASOURCE_UID, model)
            source = "updated"
        saved: list[str] = []
        for uid, board in sorted(boards.items()):
            step = f"dashboard {uid}"
            api.dashboard.update_dashboard(
                {
                    "dashboard": {**board, "id": None},
                    "folderUid": FOLDER_UID,
                    "overwrite": True,
                    "message": "safewatch dashboards push",
                }
            )
            saved.append(uid)
    except GrafanaException as exc:
        raise PushError(f"Grafana at {url}: {step}: {exc}") from exc
    except OSError as exc:
        raise PushError(f"Grafana at {url}: {step}: cannot connect: {exc}") from exc
    return PushResult(folder_created, source, saved)
