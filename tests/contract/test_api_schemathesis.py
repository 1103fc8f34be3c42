"""schemathesis against the API's own OpenAPI spec, in process (ASGI), as an admin.

Every operation gets a bounded number of generated requests (hypothesis, derandomised
so the run is repeatable); none may end in a server error, and every answer must
conform to the spec (schemathesis' default checks: status codes, content types,
response schemas). The operations are driven from one test (schemathesis' pytest
loader does not work with pytest 9's nodes). Commands are signed and really published
to a private Mosquitto, so that route is exercised too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.core.result import Ok

from cloud import create_app
from cloud.auth import Role
from cloud.commands import CommandSender, CommandSigner, generate_command_key
from cloud.storage import Store
from tests.auth_support import headers_for, make_authenticator
from tests.db_support import cloud_db_url
from tests.factories import alarm, point, telemetry
from tests.support import Broker

pytestmark = pytest.mark.contract

EXAMPLES_PER_OPERATION = 10


def test_no_operation_answers_a_server_error(tmp_path: Path, broker: Broker) -> None:
    store = Store(cloud_db_url(tmp_path, "fuzz.db"))
    store.create_all()
    store.record_alarm(alarm(1))
    store.upsert_latest(telemetry(2, point("CH4-1", 0.4, 1_700_000_000_000_000_000)))
    auth = make_authenticator(store.engine)
    health = {"db": True, "influx": True, "mqtt": True, "counters": {}}
    generate_command_key(tmp_path / "cmd.key", tmp_path / "cmd.pub")
    sender = CommandSender(
        CommandSigner(tmp_path / "cmd.key"),
        auth.audit,
        host=broker.host,
        port=broker.port,
        username=None,
        password=None,
        tls_context=None,
    )
    app = create_app(store, lambda: health, authenticator=auth, audit=auth.audit, commands=sender)
    admin = headers_for(auth, Role.ADMIN)
    # The wall's event stream never ends by itself (it is a live feed): its contract is
    # checked by tests/contract/test_wall_stream.py over a real server instead.
    schema = schemathesis.openapi.from_asgi("/openapi.json", app).exclude(
        path="/api/v1/wall/stream"
    )
    tested: list[str] = []
    try:
        for result in schema.get_all_operations():
            assert isinstance(result, Ok), f"the spec has an invalid operation: {result!r}"
            operation = result.ok()

            @given(case=operation.as_strategy())
            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                derandomize=True,
                database=None,
            )
            def fuzz(case: Any) -> None:
                case.call_and_validate(headers=admin)

            fuzz()
            tested.append(operation.label)
    finally:
        store.close()
    assert len(tested) >= 15, tested
    assert auth.audit.verify().ok
