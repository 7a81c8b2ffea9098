"""The operations Bicep: five log search alerts on the right tables and log lines, an action group that
e-mails `alertEmail` (none when it is empty), a workbook whose JSON is valid and follows grants from granted
to closed, no identity or role anywhere, and docs/operations.md showing every query the alerts and the
workbook run."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import pytest

from tests.infra.bicep import INFRA, ROOT, parse

OPERATIONS = INFRA / "app" / "operations.bicep"
WORKBOOK_FILE = INFRA / "app" / "operations-workbook.json"
DOCS = ROOT / "docs" / "operations.md"
PLACEHOLDER = "__APPLICATION_INSIGHTS_ID__"
ALERT_TYPE = "Microsoft.Insights/scheduledQueryRules"
ALERT_API = "2023-12-01"  # the current stable api-version of log search alerts
EVENTS = ("requested", "granted", "denied", "failed", "revoked", "expired", "extended", "orphan_removed")
METRICS = (
    "jit.grants.requested",
    "jit.grants.granted",
    "jit.grants.denied",
    "jit.grants.failed",
    "jit.grants.revoked",
    "jit.grants.expired",
    "jit.grants.open",
    "jit.sweep.duration",
    "jit.sweep.lag",
    "jit.arm.retries",
    "jit.arm.throttles",
    "jit.nsg.writes_per_grant",
)
INGESTION_ALLOWANCE_MINUTES = 2


@dataclass(frozen=True)
class Expected:
    resource: str
    table: str
    keywords: tuple[str, ...]
    severity: int
    threshold: int
    window: str
    frequency: str


ALERTS = (
    Expected(
        "sweepAlert",
        "requests",
        ('name == "sweep"', "tobool(success) == false", "succeeded == 0"),
        1,
        0,
        "PT5M",
        "PT1M",
    ),
    Expected(
        "orphanAlert",
        "traces",
        ('message startswith "orphan rule outlived its grant"', "customDimensions.overdue_s"),
        1,
        0,
        "PT15M",
        "PT5M",
    ),
    Expected(
        "grantFailureAlert",
        "traces",
        ('tostring(customDimensions.event) == "failed"', "customDimensions.reason"),
        2,
        5,
        "PT15M",
        "PT5M",
    ),
    Expected(
        "armThrottleAlert",
        "traces",
        ('message startswith "arm throttled"', "customDimensions.code"),
        3,
        0,
        "PT15M",
        "PT5M",
    ),
    Expected(
        "notificationAlert",
        "traces",
        ('message startswith "notification undeliverable"', "customDimensions.poison_queue"),
        2,
        0,
        "PT15M",
        "PT5M",
    ),
)


# ---------------------------------------------------------------- helpers


def _tree() -> dict[str, Any]:
    return parse(OPERATIONS)


def _resources() -> dict[str, Any]:
    resources: dict[str, Any] = _tree()["resources"]
    return resources


def _config(name: str) -> dict[str, Any]:
    config: dict[str, Any] = _resources()[name]["config"]
    inner = config.get("config")
    return inner if "condition" in config and isinstance(inner, dict) else config


def _resolve(value: Any) -> Any:
    """A variable's value or a parameter's default when `value` names one, else `value` itself."""
    tree = _tree()
    if isinstance(value, str):
        if value in tree.get("variables", {}):
            return tree["variables"][value]["value"]
        if value in tree.get("parameters", {}):
            return tree["parameters"][value]["default"]
    return value


def _accessor(value: Any) -> tuple[Any, Any]:
    operands = value["operator"]["operands"]
    assert value["operator"]["type"] == "property_accessor"
    return operands["operand_1"], operands["operand_2"]


def _alert_query(name: str) -> str:
    query = _resolve(_config(name)["properties"]["criteria"]["allOf"][0]["query"])
    assert isinstance(query, str)
    return query


def _minutes(duration: str) -> int:
    match = re.fullmatch(r"PT(?:(\d+)H)?(?:(\d+)M)?", duration)
    assert match, f"not an ISO 8601 duration in hours/minutes: {duration}"
    return int(match.group(1) or 0) * 60 + int(match.group(2) or 0)


def _ncrontab_interval_seconds(schedule: str) -> int:
    """The period of the simple six-field schedules the sweep uses: `0 * * * * *` or `0 */N * * * *`."""
    fields = schedule.split()
    assert len(fields) == 6 and fields[0] == "0" and fields[2:] == ["*"] * 4, schedule
    minute = fields[1]
    if minute == "*":
        return 60
    match = re.fullmatch(r"\*/(\d+)", minute)
    assert match, f"the sweep alert's window check knows only every-N-minutes schedules: {schedule}"
    return 60 * int(match.group(1))


def _workbook() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(WORKBOOK_FILE.read_text(encoding="utf-8"))
    return data


def _workbook_queries() -> dict[str, str]:
    return {item["name"]: item["content"]["query"] for item in _workbook()["items"] if item["type"] == 3}


def _normalized(kql: str) -> str:
    return "\n".join(line.strip() for line in kql.strip().splitlines() if line.strip())


def _docs() -> str:
    return DOCS.read_text(encoding="utf-8")


def _docs_kusto_blocks() -> set[str]:
    blocks = re.findall(r"^[ \t]*```kusto\n(.*?)^[ \t]*```", _docs(), flags=re.S | re.M)
    return {_normalized(block) for block in blocks}


def _docs_anchors() -> set[str]:
    anchors = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", _docs(), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


# ---------------------------------------------------------------- wiring in main.bicep


def test_main_calls_the_operations_module_with_the_components_and_the_alert_email():
    main = parse(INFRA / "main.bicep")
    module = main["modules"]["operations"]
    assert module["detail"]["path"] == "app/operations.bicep"
    params = module["config"]["params"]
    assert params["alertEmail"] == "alertEmail"
    monitoring, outputs = _accessor(params["applicationInsightsName"])
    assert monitoring == "monitoring" and _accessor(outputs) == ("outputs", "applicationInsightsName")
    alert_email = main["parameters"]["alertEmail"]
    assert alert_email["type"] == "string" and alert_email["default"] == ""
    assert {"JIT_ALERT_ACTION_GROUP_ID", "JIT_OPERATIONS_WORKBOOK_ID"} <= set(main["outputs"])


def test_azd_passes_the_alert_email_from_its_environment_and_defaults_to_none():
    parameters = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))["parameters"]
    assert parameters["alertEmail"] == {"value": "${JIT_ALERT_EMAIL=}"}


# ---------------------------------------------------------------- the action group


def test_the_action_group_e_mails_alert_email_and_exists_only_when_it_is_set():
    tree = _tree()
    assert tree["parameters"]["alertEmail"]["default"] == ""
    notify = tree["variables"]["notify"]["value"]["operator"]
    assert notify["type"] == "not"
    assert notify["operands"]["bool_value"]["function"] == {
        "type": "empty",
        "parameters": {"item_to_test": "alertEmail"},
    }
    group = _resources()["actionGroup"]
    assert group["type"] == "Microsoft.Insights/actionGroups"
    assert group["config"]["condition"] == "notify"
    config = _config("actionGroup")
    assert config["location"] == "global"
    assert 1 <= len(config["properties"]["groupShortName"]) <= 12
    assert config["properties"]["emailReceivers"] == [
        {"name": "operators", "emailAddress": "alertEmail", "useCommonAlertSchema": True}
    ]


def test_every_alert_notifies_the_action_group_when_there_is_one_and_no_one_otherwise():
    ids = _tree()["variables"]["actionGroupIds"]["value"]["operator"]
    assert ids["type"] == "conditional" and ids["operands"]["condition"] == "notify"
    assert ids["operands"]["false_value"] == []
    (target,) = ids["operands"]["true_value"]
    assert target["function"]["type"] == "resource_id"
    assert target["function"]["parameters"]["resource_type"] == "Microsoft.Insights/actionGroups"
    assert target["function"]["parameters"]["resource_name_1"] == "actionGroupName"
    assert _config("actionGroup")["name"] == "actionGroupName"
    for expected in ALERTS:
        config = _config(expected.resource)
        assert config["properties"]["actions"]["actionGroups"] == "actionGroupIds", expected.resource
        assert config["dependsOn"] == ["actionGroup"], expected.resource


# ---------------------------------------------------------------- the alerts


def test_there_are_exactly_the_five_alerts():
    alerts = {name for name, r in _resources().items() if r["type"] == ALERT_TYPE}
    assert alerts == {expected.resource for expected in ALERTS}


@pytest.mark.parametrize("expected", ALERTS, ids=lambda e: e.resource)
def test_alert_is_a_stateful_identity_less_log_alert_on_application_insights(expected: Expected):
    resource = _resources()[expected.resource]
    assert resource["api_version"] == ALERT_API
    config = _config(expected.resource)
    assert config["kind"] == "LogAlert"
    assert "identity" not in config
    props = config["properties"]
    assert props["enabled"] is True
    assert props["autoMitigate"] is True
    assert "muteActionsDuration" not in props
    (scope,) = props["scopes"]
    assert _accessor(scope) == ("applicationInsights", "id")
    assert _resources()["applicationInsights"]["existing"] is True
    assert props["displayName"].startswith("jit-broker: ")


@pytest.mark.parametrize("expected", ALERTS, ids=lambda e: e.resource)
def test_alert_queries_the_right_table_for_the_right_log_lines(expected: Expected):
    query = _alert_query(expected.resource)
    assert query.splitlines()[0].strip() == expected.table
    for keyword in expected.keywords:
        assert keyword in query, f"{expected.resource}: {keyword!r} not in its query"
    assert "ago(" not in query, "an alert's time range is its window, not the query's"


@pytest.mark.parametrize("expected", ALERTS, ids=lambda e: e.resource)
def test_alert_threshold_severity_window_and_frequency(expected: Expected):
    props = _config(expected.resource)["properties"]
    (criterion,) = props["criteria"]["allOf"]
    assert criterion["timeAggregation"] == "Count"
    assert criterion["operator"] == "GreaterThan"
    assert _resolve(criterion["threshold"]) == expected.threshold
    assert criterion["failingPeriods"] == {"numberOfEvaluationPeriods": 1, "minFailingPeriodsToAlert": 1}
    assert props["severity"] == expected.severity
    assert _resolve(props["windowSize"]) == expected.window
    assert props["evaluationFrequency"] == expected.frequency
    assert _minutes(expected.frequency) <= _minutes(expected.window)


def test_the_sweep_alert_window_holds_three_intervals_of_the_default_schedule_plus_ingestion_latency():
    schedule = parse(INFRA / "main.bicep")["parameters"]["sweepSchedule"]["default"]
    interval_minutes = _ncrontab_interval_seconds(schedule) // 60
    window = _minutes(_resolve(_config("sweepAlert")["properties"]["windowSize"]))
    assert window >= 3 * interval_minutes + INGESTION_ALLOWANCE_MINUTES
    assert window <= 3 * interval_minutes + 2 * INGESTION_ALLOWANCE_MINUTES, (
        "a stalled sweep must be noticed soon"
    )


def test_the_sweep_alert_fires_on_no_runs_at_all():
    query = _alert_query("sweepAlert")
    # summarize without `by` yields one row even over no input, so "no successful run" is a row to count.
    summarize = next(line for line in query.splitlines() if "summarize" in line)
    assert " by " not in summarize


def test_each_alert_points_at_its_section_in_docs_operations():
    anchors = _docs_anchors()
    for expected in ALERTS:
        runbook = _config(expected.resource)["properties"]["actions"]["customProperties"]["runbook"]
        path, anchor = runbook.split("#")
        assert path == "docs/operations.md"
        assert anchor in anchors, f"{expected.resource}: no heading for #{anchor}"


# ---------------------------------------------------------------- least privilege


def test_nothing_in_the_operations_module_has_an_identity_or_assigns_a_role():
    for name, resource in _resources().items():
        assert not resource["type"].startswith("Microsoft.Authorization/"), name
        assert "identity" not in _config(name), name
    text = OPERATIONS.read_text(encoding="utf-8")
    assert "roleAssignments" not in text and "roleDefinitions" not in text


# ---------------------------------------------------------------- the workbook


def test_the_workbook_loads_its_json_beside_the_bicep_and_points_it_at_application_insights():
    resource = _resources()["workbook"]
    assert resource["type"] == "Microsoft.Insights/workbooks"
    config = _config("workbook")
    assert config["kind"] == "shared"
    props = config["properties"]
    assert _accessor(props["sourceId"]) == ("applicationInsights", "id")
    replaced = props["serializedData"]["function"]
    assert replaced["type"] == "replace"
    loaded = replaced["parameters"]["original_string"]["function"]
    assert loaded["type"] == "load_text_content"
    assert (OPERATIONS.parent / loaded["parameters"]["file_path"]).resolve() == WORKBOOK_FILE.resolve()
    assert replaced["parameters"]["old_string"] == PLACEHOLDER
    assert _accessor(replaced["parameters"]["new_string"]) == ("applicationInsights", "id")


def test_the_workbook_json_is_a_workbook_bicep_can_load():
    text = WORKBOOK_FILE.read_text(encoding="utf-8")
    assert len(text) < 131_072, "loadTextContent reads at most 131,072 characters"
    workbook = _workbook()
    assert workbook["version"] == "Notebook/1.0"
    assert workbook["fallbackResourceIds"] == [PLACEHOLDER]
    assert text.count(PLACEHOLDER) == 1
    parameters = {
        p["name"] for item in workbook["items"] if item["type"] == 9 for p in item["content"]["parameters"]
    }
    names = [item["name"] for item in workbook["items"]]
    assert len(names) == len(set(names))
    for item in workbook["items"]:
        if item["type"] == 3:
            content = item["content"]
            assert content["queryType"] == 0 and content["resourceType"] == "microsoft.insights/components"
            assert content["timeContextFromParameter"] in parameters, item["name"]


def test_the_workbook_shows_who_opened_what_when_and_for_how_long():
    queries = _workbook_queries()
    doors = queries["doors"]
    for word in (
        '"granted"',
        '"revoked"',
        '"expired"',
        "grant_id",
        "join kind=leftouter",
        "principal_oid",
        "open_minutes",
    ):
        assert word in doors, word
    everything = "\n".join(queries.values())
    for event in EVENTS:
        assert f'"{event}"' in everything, f"no workbook query mentions the {event} event"
    assert 'message startswith "sweep done"' in everything
    assert "customDimensions.lag_s" in everything


# ---------------------------------------------------------------- docs/operations.md tells the same story


@pytest.mark.parametrize("expected", ALERTS, ids=lambda e: e.resource)
def test_docs_show_each_alert_query(expected: Expected):
    assert _normalized(_alert_query(expected.resource)) in _docs_kusto_blocks()


@pytest.mark.parametrize("name", sorted(_workbook_queries()))
def test_docs_show_each_workbook_query(name: str):
    assert _normalized(_workbook_queries()[name]) in _docs_kusto_blocks()


def test_docs_state_the_telemetry_contract_the_queries_rely_on():
    docs = _docs()
    names = ("sweep done", "orphan rule outlived its grant", "arm throttled", "notification undeliverable")
    for name in (*EVENTS, *METRICS, *names):
        assert f"`{name}`" in docs, name
    for key in ("grant_id", "principal_oid", "vm", "port", "source", "status", "reason"):
        assert f"`{key}`" in docs, key
    for key in (
        "expired",
        "undone",
        "orphans_removed",
        "errors",
        "duration_ms",
        "lag_s",
        "rule",
        "nsg",
        "overdue_s",
        "poison_queue",
    ):
        assert f"`{key}`" in docs, key


def test_docs_name_each_alert_threshold_and_the_alert_email_setting():
    docs = _docs()
    for expected in ALERTS:
        name = _config(expected.resource)["properties"]["displayName"].removeprefix("jit-broker: ")
        assert f"### {name}".lower() in docs.lower(), name
    assert "JIT_ALERT_EMAIL" in docs and "alertEmail" in docs
    assert "more than 5" in docs.lower()


def test_docs_cover_readiness_liveness_and_the_audit_trail():
    docs = _docs()
    for needle in (
        "GET /api/ready",
        "GET /api/health",
        "503",
        "<prefix>audit",
        "GET /api/v1/audit",
        "jit audit",
    ):
        assert needle in docs, needle


def test_docs_link_to_files_that_exist():
    for target in re.findall(r"\]\((\.\./[^)#]+|[\w./-]+\.md)(?:#[^)]*)?\)", _docs()):
        assert (DOCS.parent / target).resolve().exists(), target


def test_the_queries_only_read_what_the_contract_promises():
    queries = [_alert_query(e.resource) for e in ALERTS] + list(_workbook_queries().values())
    promised = {"event", "grant_id", "principal_oid", "vm", "port", "source", "status", "reason"}
    promised |= {
        "expired",
        "undone",
        "orphans_removed",
        "errors",
        "duration_ms",
        "lag_s",
        "rule",
        "nsg",
        "overdue_s",
        "code",
        "error",
        "tries",
        "poison_queue",
    }
    read = {key for query in queries for key in re.findall(r"customDimensions\.(\w+)", query)}
    assert read <= promised
    tables = {query.lstrip().split()[0] for query in queries if not query.lstrip().startswith("let ")}
    assert tables <= {"traces", "requests", "customMetrics"}
