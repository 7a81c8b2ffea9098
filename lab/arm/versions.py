"""Which `api-version`s the emulated providers answer, and what ARM says to any other.

ARM forwards a request to a resource provider only for an api-version the provider registered for the resource
type. A date version it has not registered gets `400 NoRegisteredProviderFound`, listing the versions it has
(AutomatedLab/AutomatedLab#1361 for `networkSecurityGroups`, Azure/azure-cli#28496 for `networkInterfaces`); a
value that is not a date version at all gets ARM's own `400 InvalidApiVersionParameter` (`errors`); no
`api-version` at all, `400 MissingApiVersionParameter`.

The lists hold the stable versions seen in those answers and in Azure/azure-rest-api-specs
(`specification/network/resource-manager/Microsoft.Network/stable/…`,
`specification/compute/resource-manager/Microsoft.Compute/ComputeRP/stable/…`),
plus what the installed SDKs send: azure-mgmt-network 33.1.0 sends 2026-03-01 (2018-10-01 on its VM-scale-set
calls), azure-mgmt-compute 39.0.0 sends 2026-04-01 for virtual machines (reference §4.1). Azure keeps one list
per resource type; one per provider is close enough here. A version Azure has that is missing below would get
NoRegisteredProviderFound from the lab only: add it (a newer SDK's default first of all —
`tests/arm/test_http_protocol.py` checks the installed SDKs' defaults are served).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence

from lab.arm import errors

NETWORK_VERSIONS = (
    "2014-12-01-preview", "2015-05-01-preview", "2015-06-15", "2016-03-30", "2016-06-01", "2016-07-01",
    "2016-08-01", "2016-09-01", "2016-10-01", "2016-11-01", "2016-12-01", "2017-03-01", "2017-04-01",
    "2017-06-01", "2017-08-01", "2017-09-01", "2017-10-01", "2017-11-01", "2018-01-01", "2018-02-01",
    "2018-03-01", "2018-04-01", "2018-05-01", "2018-06-01", "2018-07-01", "2018-08-01", "2018-10-01",
    "2018-11-01", "2018-12-01", "2019-02-01", "2019-04-01", "2019-06-01", "2019-07-01", "2019-08-01",
    "2019-09-01", "2019-11-01", "2019-12-01", "2020-01-01", "2020-03-01", "2020-04-01", "2020-05-01",
    "2020-06-01", "2020-07-01", "2020-08-01", "2020-11-01", "2021-01-01", "2021-02-01", "2021-03-01",
    "2021-04-01", "2021-05-01", "2021-06-01", "2021-08-01", "2021-12-01", "2022-01-01", "2022-05-01",
    "2022-07-01", "2022-09-01", "2022-11-01", "2023-02-01", "2023-04-01", "2023-05-01", "2023-06-01",
    "2023-09-01", "2023-11-01", "2024-01-01", "2024-03-01", "2024-05-01", "2024-07-01", "2025-01-01",
    "2025-03-01", "2025-05-01", "2025-07-01", "2026-03-01",
)  # fmt: skip
COMPUTE_VERSIONS = (
    "2015-05-01-preview", "2015-06-15", "2016-03-30", "2016-04-30-preview", "2017-03-30", "2017-12-01",
    "2018-04-01", "2018-06-01", "2018-10-01", "2019-03-01", "2019-07-01", "2019-12-01", "2020-06-01",
    "2020-12-01", "2021-03-01", "2021-04-01", "2021-07-01", "2021-11-01", "2022-03-01", "2022-08-01",
    "2022-11-01", "2023-03-01", "2023-07-01", "2023-09-01", "2024-03-01", "2024-07-01", "2024-11-01",
    "2025-04-01", "2026-04-01",
)  # fmt: skip
KNOWN = {"microsoft.network": NETWORK_VERSIONS, "microsoft.compute": COMPUTE_VERSIONS}

# ARM's own versions, newest first, as its InvalidApiVersionParameter answers list them
# (ansible-collections/azure#1739, 2024).
ARM_VERSIONS = (
    "2024-08-01", "2024-06-01-preview", "2024-03-01", "2023-07-01", "2023-07-01-preview",
    "2023-03-01-preview", "2022-12-01", "2022-11-01-preview", "2022-09-01", "2022-06-01", "2022-05-01",
    "2022-03-01-preview",
    "2022-01-01", "2021-04-01", "2021-01-01", "2020-10-01", "2020-09-01", "2020-08-01", "2020-07-01",
    "2020-06-01", "2020-05-01", "2020-01-01", "2019-11-01", "2019-10-01", "2019-09-01", "2019-08-01",
    "2019-07-01", "2019-06-01", "2019-05-10", "2019-05-01", "2019-03-01", "2018-11-01", "2018-09-01",
    "2018-08-01", "2018-07-01", "2018-06-01", "2018-05-01", "2018-02-01", "2018-01-01", "2017-12-01",
    "2017-08-01", "2017-06-01", "2017-05-10", "2017-05-01", "2017-03-01", "2016-09-01", "2016-07-01",
    "2016-06-01", "2016-02-01", "2015-11-01", "2015-01-01", "2014-04-01-preview", "2014-04-01", "2014-01-01",
    "2013-03-01", "2014-02-26", "2014-04",
)  # fmt: skip

_DATE_VERSION = re.compile(r"^(\d{4}-\d{2}-\d{2})(-[a-z]+)?$", re.IGNORECASE)


def check_api_version(
    value: str | None, provider: str, rtype: str, location: str, locations: Sequence[str]
) -> str:
    """`value` if `provider` serves it, else ARM's error (`rtype` and the locations are for its message)."""
    if value is None:
        raise errors.missing_api_version()
    if not is_date_version(value):
        raise errors.invalid_api_version(value, ARM_VERSIONS)
    supported = KNOWN.get(provider.lower(), ())
    if value.lower() not in supported:
        raise errors.no_registered_provider(value, rtype, location, supported, locations)
    return value


def is_date_version(value: str) -> bool:
    """`YYYY-MM-DD` (a real date) with an optional suffix such as `-preview`."""
    found = _DATE_VERSION.match(value)
    if not found:
        return False
    try:
        dt.date.fromisoformat(found.group(1))
    except ValueError:
        return False
    return True
