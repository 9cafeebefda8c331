"""prefect.yaml against the code: every entrypoint imports, every parameter exists, every flow
is deployed; and the pieces of `vouchflow server up` that need no server."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml

import flows
from flows.server import (
    ServerConfig,
    load_automations,
    prefect_database_url,
    redact_url,
    system_limits,
)

ROOT = Path(__file__).resolve().parents[2]


def deployments() -> list[dict[str, Any]]:
    return yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]


def load_entrypoint(entrypoint: str) -> Any:
    path, _, name = entrypoint.partition(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    return getattr(module, name)


@pytest.mark.parametrize("deployment", deployments(), ids=lambda d: d["name"])
def test_each_deployment_names_a_flow_and_only_its_parameters(deployment: dict[str, Any]
                                                              ) -> None:
    from prefect.flows import Flow

    flow = load_entrypoint(deployment["entrypoint"])
    assert isinstance(flow, Flow), deployment["entrypoint"]
    signature = inspect.signature(flow.fn)
    given = deployment.get("parameters") or {}
    unknown = set(given) - set(signature.parameters)
    assert not unknown, f"{deployment['name']}: {sorted(unknown)} not in {flow.name}()"
    required = {n for n, p in signature.parameters.items()
                if p.default is inspect.Parameter.empty}
    missing = required - set(given)
    if not missing:
        flow.validate_parameters(given)  # types as the flow declares them
    for schedule in deployment.get("schedules") or []:
        # a scheduled run gets the deployment's parameters and its schedule's
        params = {**given, **(schedule.get("parameters") or {})}
        assert set(params) <= set(signature.parameters), schedule
        assert required <= set(params), \
            f"scheduled {deployment['name']} lacks {sorted(required - set(params))}"
        flow.validate_parameters(params)
    assert deployment["work_pool"]["name"] == "vouchflow"
    assert "vouchflow" in deployment["tags"]
    assert deployment.get("concurrency_limit"), "every deployment has a concurrency limit"


@pytest.mark.parametrize("deployment", [d for d in deployments() if d.get("schedules")],
                         ids=lambda d: d["name"])
def test_schedules_are_valid_prefect_schedules(deployment: dict[str, Any]) -> None:
    from prefect.client.schemas.schedules import construct_schedule

    for schedule in deployment["schedules"]:
        kinds = {"interval", "cron", "rrule"} & set(schedule)
        assert len(kinds) == 1, schedule
        ZoneInfo(schedule["timezone"])
        construct_schedule(**{k: schedule[k] for k in (*kinds, "timezone")})


def project_modules() -> list[str]:
    """The flows package's modules under version control (a module someone is still writing
    is not checked until it is committed); all of them outside a git checkout."""
    try:
        listed = subprocess.run(["git", "ls-files", "flows/*.py"], cwd=ROOT, text=True,
                                capture_output=True, timeout=30, check=True).stdout.split()
    except (OSError, subprocess.SubprocessError):
        listed = []
    names = [info.name for info in pkgutil.iter_modules(flows.__path__)]
    return [n for n in names if f"flows/{n}.py" in listed] if listed else names


def test_every_flow_in_the_project_is_deployed() -> None:
    from prefect.flows import Flow

    found: dict[str, str] = {}
    for name in project_modules():
        module = importlib.import_module(f"flows.{name}")
        for attr, value in vars(module).items():
            if isinstance(value, Flow) and value.fn.__module__ == module.__name__:
                found[f"flows/{name}.py:{attr}"] = value.name
    deployed = {d["entrypoint"] for d in deployments()}
    assert found, "no flows found"
    assert set(found) <= deployed, f"not deployed: {sorted(set(found) - deployed)}"


def test_business_schedules() -> None:
    by_name = {d["name"]: d for d in deployments()}
    assert by_name["sync-catalog"]["schedules"][0]["interval"] == 900
    assert by_name["sync-inventory"]["schedules"][0]["interval"] == 300
    assert by_name["ingest-sales"]["schedules"][0]["interval"] == 60
    assert by_name["deliver-events"]["schedules"][0]["interval"] == 60
    assert by_name["deliver-events"]["concurrency_limit"]["collision_strategy"] == "CANCEL_NEW"
    assert by_name["sync-catalog-site"]["concurrency_limit"] >= 12  # twelve sites at once


def test_daily_purchase_orders_after_each_sites_own_midnight() -> None:
    from connectors.wallet import load_sites

    schedules = next(d for d in deployments() if d["name"] == "api-purchase-orders")[
        "schedules"]
    by_site = {tuple(s["parameters"]["sites"]): s for s in schedules}
    for code, site in load_sites().items():
        schedule = by_site[(code,)]
        assert schedule["timezone"] == site.timezone
        assert schedule["cron"].split()[1] == "0"  # in the hour after the site's midnight
    assert len(schedules) == len(load_sites())


def test_limit_names_are_the_ones_the_flows_take(monkeypatch: pytest.MonkeyPatch) -> None:
    from connectors.erp import ErpClient, ErpSettings
    from connectors.wallet import load_sites
    from flows.runtime import limit_name

    monkeypatch.setenv("VOUCHFLOW_ERP_ACCOUNT", "123456_SB1")
    monkeypatch.setenv("VOUCHFLOW_ERP_CONCURRENCY", "7")
    limits = {limit.name: limit.limit for limit in system_limits()}
    erp = ErpClient(ErpSettings(account="123456_SB1", base_url="http://127.0.0.1:9",
                                consumer_key="k", consumer_secret="s", token_id="t",
                                token_secret="u"))
    assert limits[limit_name("erp", erp.account)] == 7
    assert limit_name("erp", erp.account) == "erp-123456-sb1"
    for code, site in load_sites().items():
        assert limits[limit_name("wallet", code)] == site.concurrency
    assert {"finance", "treasury"} <= set(limits)


def test_database_urls_for_the_prefect_server() -> None:
    assert prefect_database_url("postgresql+psycopg://u:p@h:5432/db") == \
        "postgresql+asyncpg://u:p@h:5432/db"
    assert prefect_database_url("postgres://h/db") == "postgresql+asyncpg://h/db"
    assert redact_url("postgresql://u:secret@h/db") == "postgresql://u:***@h/db"
    env = ServerConfig(home=Path("/tmp/x"), database_url="postgresql://u:p@h/db").server_env()
    assert env["PREFECT_SERVER_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    assert "PREFECT_API_URL" not in env


def test_the_shipped_automation_reacts_to_failed_vouchflow_runs() -> None:
    from prefect.events.schemas.automations import AutomationCore

    specs = load_automations()
    names = [s["name"] for s in specs]
    assert "vouchflow-run-failed" in names
    for spec in specs:
        spec = {**spec, "actions": [{"type": "do-nothing"}]}
        automation = AutomationCore.model_validate(spec)
        assert "prefect.flow-run.Failed" in automation.trigger.expect
        assert automation.trigger.match_related.root["prefect.resource.id"] == \
            "prefect.tag.vouchflow"
