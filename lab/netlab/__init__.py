"""The network lab: lab VMs as network namespaces running a real sshd, their NSGs enforced by nftables.

Public surface: `NetLab` (build, follow the ARM emulator, run things as a caller), `render_ruleset` and
`render_from_json` (the pure NSG -> nftables renderer), `HOST_V4` (where root-namespace services bind for
callers).
"""

from lab.netlab.lab import NetLab, ensure_tools, remove_leftovers
from lab.netlab.netns import NetlabError, can_run
from lab.netlab.nsg import NsgFormatError, ServiceTags, parse_nsg
from lab.netlab.render import PathNsg, render_from_json, render_ruleset
from lab.netlab.topology import HOST_V4, HOST_V6, Topology, build_topology

__all__ = [
    "HOST_V4",
    "HOST_V6",
    "NetLab",
    "NetlabError",
    "NsgFormatError",
    "PathNsg",
    "ServiceTags",
    "Topology",
    "build_topology",
    "can_run",
    "ensure_tools",
    "parse_nsg",
    "remove_leftovers",
    "render_from_json",
    "render_ruleset",
]
