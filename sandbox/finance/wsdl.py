"""The group finance WSDL, read as a data file: operations, SOAPActions and the schema.

The WSDL ships with vouchflow (``connectors/finance/groupfinance.wsdl``) and is the contract.
The sandbox reads it as a file relative to the repository, never by importing
``connectors``, and builds its request validation from the ``xsd:schema`` embedded in
``wsdl:types`` with xmlschema. Schema violations become field errors whose ``field`` is a
path relative to the operation element: ``lines/line[2]/amount``. Elements the schema lets
repeat (``line``, ``posting``) always carry their 1-based position; any other element only
when it is (wrongly) repeated.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field
from pathlib import Path

import xmlschema
from lxml import etree
from xmlschema.validators import XsdElement
from xmlschema.validators.exceptions import XMLSchemaChildrenValidationError

from sandbox.finance.soap import FieldError

__all__ = [
    "DEFAULT_WSDL_PATH",
    "MAX_FIELD_ERRORS",
    "Operation",
    "ServiceDescription",
    "load_service",
]

DEFAULT_WSDL_PATH = (
    Path(__file__).resolve().parents[2] / "connectors" / "finance" / "groupfinance.wsdl"
)
MAX_FIELD_ERRORS = 20

WSDL_NS = "http://schemas.xmlsoap.org/wsdl/"
WSDL_SOAP_NS = "http://schemas.xmlsoap.org/wsdl/soap/"
WSDL_SOAP12_NS = "http://schemas.xmlsoap.org/wsdl/soap12/"
XSD_NS = "http://www.w3.org/2001/XMLSchema"


@dataclass(frozen=True)
class Operation:
    name: str
    soap_action: str
    #: Clark notation, ``{urn:vouchflow:groupfinance:v1}PostPurchaseCost``
    input_element: str
    output_element: str


@dataclass
class ServiceDescription:
    path: Path
    wsdl: bytes
    target_namespace: str
    schema: xmlschema.XMLSchema
    operations: dict[str, Operation]
    by_element: dict[str, Operation]
    repeated: frozenset[str]
    _served: dict[str, bytes] = field(default_factory=dict, repr=False)

    def wsdl_for(self, location: str) -> bytes:
        """The WSDL with every ``soap:address location`` set to ``location``."""
        cached = self._served.get(location)
        if cached is not None:
            return cached
        root = etree.fromstring(self.wsdl, _trusted_parser())
        for ns in (WSDL_SOAP_NS, WSDL_SOAP12_NS):
            for address in root.iter(f"{{{ns}}}address"):
                address.set("location", location)
        out = etree.tostring(root.getroottree(), xml_declaration=True, encoding="utf-8")
        if len(self._served) < 64:
            self._served[location] = out
        return out

    # ---- validation ---------------------------------------------------------------------------

    def validate(self, element: etree._Element) -> list[FieldError]:
        """Schema problems of one operation element (at most ``MAX_FIELD_ERRORS``)."""
        errors = itertools.islice(self.schema.iter_errors(element), MAX_FIELD_ERRORS)
        out: list[FieldError] = []
        for err in errors:
            fe = self._field_error(err, element)
            if fe not in out:
                out.append(fe)
        return out

    def _field_error(
        self, err: xmlschema.XMLSchemaValidationError, root: etree._Element
    ) -> FieldError:
        elem = err.elem if isinstance(err.elem, etree._Element) else None
        reason = err.reason or str(err.message)
        if elem is None:
            return FieldError(etree.QName(root).localname, reason)
        base = self.path_of(elem, root)
        if isinstance(err, XMLSchemaChildrenValidationError):
            missing = _missing_child(err, elem)
            if missing is not None:
                return FieldError(_join(base, missing), f"required element {missing} is missing")
            child = err.invalid_child
            if isinstance(child, etree._Element):
                return FieldError(self.path_of(child, root), reason)
        return FieldError(base or etree.QName(root).localname, reason)

    def path_of(self, elem: etree._Element, root: etree._Element) -> str:
        parts: list[str] = []
        node: etree._Element | None = elem
        while node is not None and node is not root:
            name = etree.QName(node).localname
            parent = node.getparent()
            if parent is not None:
                same = [c for c in parent if c.tag == node.tag]
                if name in self.repeated or len(same) > 1:
                    name = f"{name}[{same.index(node) + 1}]"
            parts.append(name)
            node = parent
        return "/".join(reversed(parts))


def _join(base: str, name: str) -> str:
    return f"{base}/{name}" if base else name


def _missing_child(err: XMLSchemaChildrenValidationError, elem: etree._Element) -> str | None:
    """The first required element the content model expected and the element lacks."""
    present = {etree.QName(c).localname for c in elem if isinstance(c.tag, str)}
    for particle in err.expected or ():
        if isinstance(particle, XsdElement) and particle.min_occurs >= 1:
            name = particle.local_name
            if name and name not in present:
                return name
    return None


def _trusted_parser() -> etree.XMLParser:
    # the WSDL is our own file, but there is no reason to parse it any less carefully
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)


def load_service(path: Path | str | None = None) -> ServiceDescription:
    """Read a WSDL (default: the one shipped in ``connectors/finance``); cached per file
    and modification time, since building the schema takes a noticeable fraction of a
    second."""
    resolved = Path(path).resolve() if path is not None else DEFAULT_WSDL_PATH
    stat = resolved.stat()
    return _load(str(resolved), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int, size: int) -> ServiceDescription:
    raw = Path(path).read_bytes()
    root = etree.fromstring(raw, _trusted_parser())
    if root.tag != f"{{{WSDL_NS}}}definitions":
        raise ValueError(f"{path} is not a WSDL 1.1 document")
    tns = root.get("targetNamespace") or ""
    schema_el = root.find(f"{{{WSDL_NS}}}types/{{{XSD_NS}}}schema")
    if schema_el is None:
        raise ValueError(f"{path} has no xsd:schema in wsdl:types")
    # serialised, so the namespace declarations inherited from wsdl:definitions come along
    schema = xmlschema.XMLSchema(etree.tostring(schema_el, encoding="unicode"))

    def qname(text: str, context: etree._Element) -> str:
        prefix, _, local = text.rpartition(":")
        return f"{{{context.nsmap.get(prefix or None, '')}}}{local}"

    messages: dict[str, str] = {}
    for msg in root.findall(f"{{{WSDL_NS}}}message"):
        part = msg.find(f"{{{WSDL_NS}}}part")
        if part is not None and part.get("element"):
            messages[f"{{{tns}}}{msg.get('name')}"] = qname(part.get("element", ""), part)
    io: dict[str, tuple[str, str]] = {}
    for op in root.iterfind(f"{{{WSDL_NS}}}portType/{{{WSDL_NS}}}operation"):
        inp, outp = op.find(f"{{{WSDL_NS}}}input"), op.find(f"{{{WSDL_NS}}}output")
        if inp is None or outp is None:
            continue
        io[op.get("name", "")] = (
            messages[qname(inp.get("message", ""), inp)],
            messages[qname(outp.get("message", ""), outp)],
        )
    operations: dict[str, Operation] = {}
    for op in root.iterfind(f"{{{WSDL_NS}}}binding/{{{WSDL_NS}}}operation"):
        name = op.get("name", "")
        soap_op = op.find(f"{{{WSDL_SOAP_NS}}}operation")
        if name not in io or soap_op is None:
            continue
        operations[name] = Operation(name, soap_op.get("soapAction", ""), *io[name])
    repeated = frozenset(
        c.local_name
        for c in schema.iter_components()
        if isinstance(c, XsdElement) and c.local_name and (c.max_occurs is None or c.max_occurs > 1)
    )
    return ServiceDescription(
        path=Path(path),
        wsdl=raw,
        target_namespace=tns,
        schema=schema,
        operations=operations,
        by_element={op.input_element: op for op in operations.values()},
        repeated=repeated,
    )
