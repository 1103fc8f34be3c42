"""The MQTT broker's accounts and configuration: one account per gateway, confined by
an ACL to its own topics, a read-only ingest account and a command-sending account.

Writes Mosquitto's files (``passwd`` in its ``$7$`` PBKDF2-SHA512 format, ``acl``,
``safewatch.conf``); ``safewatch broker init|add-gateway|remove|list`` drive it.
"""

from cloud.broker._accounts import (
    COMMANDER,
    INGEST,
    BrokerAccounts,
    BrokerFiles,
    TlsFiles,
    acl_lines,
    ensure_cloud_accounts,
    mosquitto_hash,
    mosquitto_verify,
    render_conf,
)

__all__ = [
    "COMMANDER",
    "INGEST",
    "BrokerAccounts",
    "BrokerFiles",
    "TlsFiles",
    "acl_lines",
    "ensure_cloud_accounts",
    "mosquitto_hash",
    "mosquitto_verify",
    "render_conf",
]
