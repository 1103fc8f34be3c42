"""The one ``safewatch`` command: edge, cloud, sim, config, models, dashboards, bench, demo."""

from __future__ import annotations

import typer

from safewatch.cmd_alarms import app as alarms_app
from safewatch.cmd_audit import app as audit_app
from safewatch.cmd_bench import app as bench_app
from safewatch.cmd_broker import app as broker_app
from safewatch.cmd_certs import app as certs_app
from safewatch.cmd_cloud import app as cloud_app
from safewatch.cmd_config import app as config_app
from safewatch.cmd_dashboards import app as dashboards_app
from safewatch.cmd_demo import demo
from safewatch.cmd_edge import app as edge_app
from safewatch.cmd_models import app as models_app
from safewatch.cmd_sim import app as sim_app
from safewatch.cmd_users import keys_app, tokens_app, users_app

app = typer.Typer(
    name="safewatch",
    help="SafeWatch: edge-to-cloud safety monitoring for mines and process plants.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(edge_app, name="edge", help="Run an edge gateway.")
app.add_typer(cloud_app, name="cloud", help="Run the cloud ingest and API.")
app.add_typer(sim_app, name="sim", help="Simulate a site's devices.")
app.add_typer(config_app, name="config", help="Validate and show configuration.")
app.add_typer(models_app, name="models", help="Train and evaluate the ONNX models.")
app.add_typer(dashboards_app, name="dashboards", help="Grafana walls: export or push.")
app.add_typer(certs_app, name="certs", help="Make certificates (OPC UA security).")
app.add_typer(bench_app, name="bench", help="Run a benchmark; the last output line is JSON.")
app.add_typer(users_app, name="users", help="API users: add, list, disable, passwd, role.")
app.add_typer(tokens_app, name="tokens", help="API tokens for machines: create, list, revoke.")
app.add_typer(keys_app, name="keys", help="JWT signing keys: list, rotate, retire.")
app.add_typer(broker_app, name="broker", help="MQTT broker accounts, ACL and TLS listener.")
app.add_typer(audit_app, name="audit", help="The hash-chained audit trail: verify, head, show.")
app.add_typer(alarms_app, name="alarms", help="Gateway alarms: list, ack, shelve, oos, kpi.")
app.command("demo", help="Start simulator, gateway and cloud on this machine.")(demo)

if __name__ == "__main__":
    app()
