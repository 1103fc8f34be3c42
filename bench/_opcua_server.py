"""A bare asyncua server for ``safewatch bench opcua``: N Double variables, optional churn.

Run as ``python -m bench._opcua_server PORT NODES CHURN_HZ [FIRST]``; prints ``ready`` once
it listens. The variables are ``ns=2;s=v<FIRST>`` ... (FIRST: 0 by default). With
CHURN_HZ > 0 every variable gets a new value CHURN_HZ times a second.
"""

from __future__ import annotations

import asyncio
import sys

from asyncua import Server, ua

from device_drivers.opcua import quieten_asyncua


async def serve(port: int, nodes: int, churn_hz: float, first: int = 0) -> None:
    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/bench")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    ns = await server.register_namespace("urn:safewatch:bench")
    folder = await server.nodes.objects.add_folder(ua.NodeId("Bench", ns), "Bench")
    ids = []
    for i in range(first, first + nodes):
        var = await folder.add_variable(ua.NodeId(f"v{i}", ns), f"v{i}", float(i))
        ids.append(var.nodeid)
    quieten_asyncua()
    await server.start()
    print("ready", flush=True)
    tick = 0
    period = 1.0 / churn_hz if churn_hz > 0 else 3600.0
    aspace = server.iserver.aspace
    while True:
        await asyncio.sleep(period)
        if churn_hz <= 0:
            continue
        tick += 1
        for i, node_id in enumerate(ids):
            dv = ua.DataValue(ua.Variant(float(tick + i), ua.VariantType.Double))
            await aspace.write_attribute_value(node_id, ua.AttributeIds.Value, dv)


if __name__ == "__main__":
    first = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    asyncio.run(serve(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), first))
