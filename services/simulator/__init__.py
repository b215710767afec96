"""flowwatch simulator and load generator: a utility network's readings with labelled incidents.

The Python API (see docs/simulator.md)::

    from services.simulator import Network, Simulator, SimConfig, FaultConfig
    df, labels = Simulator(Network.default(7), SimConfig(), seed=7).history("2024-03-04", "7d", step="60s")
"""

from services.simulator.faults import FaultConfig
from services.simulator.generator import Batch, SimConfig
from services.simulator.incidents import INCIDENT_TYPES
from services.simulator.labels import label_readings, read_labels, write_labels
from services.simulator.network import Network, NetworkError
from services.simulator.simulator import History, Simulator
from services.simulator.units import CANONICAL_UNITS, METRICS

__all__ = [
    "CANONICAL_UNITS",
    "INCIDENT_TYPES",
    "METRICS",
    "Batch",
    "FaultConfig",
    "History",
    "Network",
    "NetworkError",
    "SimConfig",
    "Simulator",
    "label_readings",
    "read_labels",
    "write_labels",
]
