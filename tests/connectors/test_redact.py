from __future__ import annotations

import logging

from connectors.redact import RedactingFilter, redact, register_secret, scrub


def test_registered_secrets_and_credential_headers_are_masked():
    register_secret("s3cr3t-token-value")
    assert "s3cr3t" not in redact("using s3cr3t-token-value now")
    assert redact('Authorization: OAuth realm="X", oauth_signature="abc"') .count("***") >= 1
    assert "k-123" not in redact("X-Api-Key: k-123")
    assert "abc.def" not in redact("Bearer abc.def")


def test_log_records_are_cleaned(caplog):
    register_secret("another-secret-4242")
    logger = logging.getLogger("vouchflow.test.redact")
    logger.addFilter(RedactingFilter())
    with caplog.at_level(logging.INFO, logger="vouchflow.test.redact"):
        logger.info("token is %s", "another-secret-4242")
    assert "another-secret-4242" not in caplog.text
    assert "***" in caplog.text


def test_scrub_masks_codes_to_last_four_and_hides_secrets():
    data = {"code": "ABCDEFGH1234", "pin": "998877", "api_key": "xyz",
            "nested": [{"password": "p"}], "sku": "SKU-1"}
    out = scrub(data)
    assert out["code"] == "********1234" and out["pin"] == "**8877"
    assert out["api_key"] == "***" and out["nested"][0]["password"] == "***"
    assert out["sku"] == "SKU-1"
