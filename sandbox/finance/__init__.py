"""Group finance sandbox: SOAP 1.1 document/literal posting service (see ``sandbox/README.md``)."""

from __future__ import annotations

from sandbox.finance.app import (
    DEFAULT_PAGE_SIZE,
    DEFAULT_PASSWORD,
    DEFAULT_USERNAME,
    MAX_BODY_BYTES,
    POSTING_KINDS,
    POSTING_OPERATIONS,
    SERVER_FAULT_MESSAGE,
    URL_PATH,
    FinanceSandbox,
)
from sandbox.finance.soap import (
    DTD_REFUSED,
    FAULT_CLIENT,
    FAULT_FAILED_AUTHENTICATION,
    FAULT_MUST_UNDERSTAND,
    FAULT_SERVER,
    FAULT_VERSION_MISMATCH,
    GF_NS,
    SOAP_ENV_NS,
    WSSE_NS,
    WSU_NS,
    FieldError,
    SoapFault,
)
from sandbox.finance.wsdl import DEFAULT_WSDL_PATH, Operation, ServiceDescription, load_service
from sandbox.finance.wsse import (
    PASSWORD_DIGEST,
    PASSWORD_TEXT,
    UsernameTokenVerifier,
    password_digest,
)

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "DEFAULT_PASSWORD",
    "DEFAULT_USERNAME",
    "DEFAULT_WSDL_PATH",
    "DTD_REFUSED",
    "FAULT_CLIENT",
    "FAULT_FAILED_AUTHENTICATION",
    "FAULT_MUST_UNDERSTAND",
    "FAULT_SERVER",
    "FAULT_VERSION_MISMATCH",
    "GF_NS",
    "MAX_BODY_BYTES",
    "PASSWORD_DIGEST",
    "PASSWORD_TEXT",
    "POSTING_KINDS",
    "POSTING_OPERATIONS",
    "SERVER_FAULT_MESSAGE",
    "SOAP_ENV_NS",
    "URL_PATH",
    "WSSE_NS",
    "WSU_NS",
    "FieldError",
    "FinanceSandbox",
    "Operation",
    "ServiceDescription",
    "SoapFault",
    "UsernameTokenVerifier",
    "load_service",
    "password_digest",
]
