"""Site simulators: serve a site's Modbus devices, play scenarios, inject faults."""

from simulators._opcua import OpcUaSimulator, OutputWriteHook, ServerSecurity
from simulators._scenario import Scenario, ScenarioPlayer, load_scenario
from simulators._serial import SerialLineSimulator
from simulators._site import CoilWriteHook, SimulatorError, SiteSimulator
from simulators._whole import WholeSiteSimulator

__all__ = [
    "CoilWriteHook",
    "OpcUaSimulator",
    "OutputWriteHook",
    "Scenario",
    "ScenarioPlayer",
    "SerialLineSimulator",
    "ServerSecurity",
    "SimulatorError",
    "SiteSimulator",
    "WholeSiteSimulator",
    "load_scenario",
]
