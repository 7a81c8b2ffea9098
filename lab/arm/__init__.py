"""The ARM emulator: what `azure-mgmt-compute` and `azure-mgmt-network` talk to in the lab (docs/lab.md)."""

from lab.arm.knobs import Fault, Knobs
from lab.arm.server import ArmEmulator

__all__ = ["ArmEmulator", "Fault", "Knobs"]
