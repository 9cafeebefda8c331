"""The project's own wiring: deployments load, the CLI answers, schemas export."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from flows.cli import app

ROOT = Path(__file__).resolve().parents[1]


def test_every_deployment_entrypoint_loads_a_flow():
    from prefect.flows import load_flow_from_entrypoint

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    assert spec["deployments"], "prefect.yaml declares no deployments"
    for deployment in spec["deployments"]:
        path, _, name = deployment["entrypoint"].partition(":")
        assert (ROOT / path).exists(), deployment["entrypoint"]
        flow = load_flow_from_entrypoint(str(ROOT / path) + ":" + name)
        # a deployment is named after its flow, or is a variant of it (sync-catalog-site)
        assert deployment["name"] == flow.name or deployment["name"].startswith(
            flow.name + "-"), (deployment["name"], flow.name)
        # parameters in the file must be parameters of the flow
        assert set(deployment.get("parameters", {})) <= set(flow.parameters.properties)


def test_schema_export_command(tmp_path):
    result = CliRunner().invoke(app, ["schema", "export", str(tmp_path)])
    assert result.exit_code == 0, result.output
    files = sorted(p.name for p in tmp_path.iterdir())
    assert "Sku.schema.json" in files and "Money.schema.json" in files
    assert json.loads((tmp_path / "Sku.schema.json").read_text())["title"] == "Sku"


def test_deadletters_commands_on_an_empty_store(state_url):
    runner = CliRunner()
    listed = runner.invoke(app, ["deadletters", "list"])
    assert listed.exit_code == 0 and "no open dead letters" in listed.output
    shown = runner.invoke(app, ["deadletters", "show", "42"])
    assert shown.exit_code == 1 and "no dead letter 42" in shown.output
    replay = runner.invoke(app, ["deadletters", "replay"])
    assert replay.exit_code == 1 and "--all" in replay.output


def test_deadletters_list_and_show_a_record(state_url):
    from state.db import get_engine, session_scope
    from state.store import DeadLetterItem, record_dead_letters

    with session_scope(get_engine()) as s:
        record_dead_letters(s, [DeadLetterItem(
            flow="sync_catalog", source="erp", entity_type="inventoryItem", entity_key="17",
            reason="inventoryItem 17: kind: 'toaster' is not one of [...]",
            payload={"id": "17", "custitem_vf_kind": "toaster"})])
    runner = CliRunner()
    listed = runner.invoke(app, ["deadletters", "list", "--json"])
    assert listed.exit_code == 0
    row = json.loads(listed.output.strip().splitlines()[0])
    assert row["entity_key"] == "17" and "toaster" in row["reason"]
    shown = runner.invoke(app, ["deadletters", "show", str(row["id"])])
    assert shown.exit_code == 0
    assert json.loads(shown.output)["payload"]["custitem_vf_kind"] == "toaster"
    status = runner.invoke(app, ["status"])
    assert status.exit_code == 0 and "erp" in status.output


def test_layout_keeps_the_direction_of_dependencies():
    """canonical imports nothing of ours; sandboxes never import connectors or mappings;
    nothing below flows imports flows."""
    import ast

    ours = {"canonical", "connectors", "mappings", "state", "flows", "sandbox", "portal",
            "bench"}
    allowed = {
        "canonical": {"canonical"},
        "connectors": {"canonical", "connectors"},
        "mappings": {"canonical", "connectors", "mappings"},
        "state": {"canonical", "state"},
        "sandbox": {"sandbox"},
        "portal": {"canonical", "connectors", "mappings", "state", "portal"},
    }
    problems = []
    for package, may in allowed.items():
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                for name in names:
                    top = name.split(".")[0]
                    if top in ours and top not in may:
                        problems.append(f"{path.relative_to(ROOT)} imports {name}")
    assert problems == []
