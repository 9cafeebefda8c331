"""Credentials from a Prefect block win over the environment, and stay out of logs."""

from __future__ import annotations

import asyncio
import logging

import pytest
from pydantic import SecretStr

from flows import sync_catalog as sc
from flows.credentials import ErpCredentials, erp_settings

pytestmark = pytest.mark.usefixtures("prefect_harness", "state_url")


@pytest.mark.seed(30, 0)
def test_the_flow_runs_on_block_credentials(sandboxes, monkeypatch, caplog):
    env = sandboxes.env()
    block = ErpCredentials(
        account=env["VOUCHFLOW_ERP_ACCOUNT"], base_url=env["VOUCHFLOW_ERP_BASE_URL"],
        consumer_key=SecretStr(env["VOUCHFLOW_ERP_CONSUMER_KEY"]),
        consumer_secret=SecretStr(env["VOUCHFLOW_ERP_CONSUMER_SECRET"]),
        token_id=SecretStr(env["VOUCHFLOW_ERP_TOKEN_ID"]),
        token_secret=SecretStr(env["VOUCHFLOW_ERP_TOKEN_SECRET"]),
    )
    asyncio.run(block.asave("erp-test", overwrite=True))
    for name in ("CONSUMER_KEY", "CONSUMER_SECRET", "TOKEN_ID", "TOKEN_SECRET"):
        monkeypatch.setenv(f"VOUCHFLOW_ERP_{name}", "wrong-on-purpose")
    monkeypatch.setenv("VOUCHFLOW_ERP_BLOCK", "erp-test")

    settings = asyncio.run(erp_settings())
    assert settings.token_secret.get_secret_value() == env["VOUCHFLOW_ERP_TOKEN_SECRET"]
    assert env["VOUCHFLOW_ERP_TOKEN_SECRET"] not in repr(settings)

    with caplog.at_level(logging.DEBUG):
        summary = asyncio.run(sc.sync_catalog(chunk_size=10))
    assert summary["pushed"] > 0 and not sandboxes.erp.auth_failures
    for secret in ("VOUCHFLOW_ERP_CONSUMER_SECRET", "VOUCHFLOW_ERP_TOKEN_SECRET"):
        assert env[secret] not in caplog.text


def test_a_missing_block_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("VOUCHFLOW_ERP_BLOCK", "no-such-block")
    with pytest.raises(ValueError, match="no-such-block"):
        asyncio.run(erp_settings())
