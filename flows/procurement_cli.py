"""``vouchflow vendors ...`` and ``vouchflow purchasing ...``: the operator's side of
procure-to-pay (vendors and their portal tokens, contracts, purchase orders, receipts, bills,
posting to the ERP). Hooked into ``flows.cli``."""

from __future__ import annotations

import asyncio
import json
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

import typer

vendors_app = typer.Typer(help="Vendors and their vendor-portal tokens.", no_args_is_help=True)
purchasing_app = typer.Typer(help="Supplier contracts, purchase orders, receipts, bills, and "
                             "posting them to the ERP.", no_args_is_help=True)


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)


def _session() -> Any:
    from state.db import get_engine, session_scope

    return session_scope(get_engine())


def _refusing() -> Any:
    """Turn the procurement rules' refusals into a clean error line."""
    from contextlib import contextmanager

    from state.procurement import ProcurementError

    @contextmanager
    def guard() -> Any:
        try:
            yield
        except ProcurementError as exc:
            _fail(str(exc))

    return guard()


def _show_token(name: str, token: str) -> None:
    typer.echo(f"vendor portal token for {name} (shown once, keep it secret; "
               "`vouchflow vendors token` makes a new one):")
    typer.echo(token)


# vendors ---------------------------------------------------------------------------------------
@vendors_app.command("add")
def vendors_add(
    name: Annotated[str, typer.Argument(help="The vendor's name.")],
    currency: Annotated[str | None, typer.Option(help="ISO 4217 currency it bills in.")] = None,
    email: Annotated[str | None, typer.Option()] = None,
    country: Annotated[str | None, typer.Option(help="ISO 3166 alpha-2.")] = None,
    bank_account: Annotated[str | None, typer.Option(help="IBAN or account number.")] = None,
    bank_bic: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Add a vendor and print its portal token (once: only a keyed hash is stored)."""
    from state.crypto import Keyring
    from state.procurement import add_vendor

    with _refusing(), _session() as s:
        vendor, token = add_vendor(s, Keyring.load(), name, currency=currency, email=email,
                                   country=country, bank_account=bank_account,
                                   bank_bic=bank_bic)
        slug = vendor.slug
    typer.echo(f"added vendor {name} ({slug})")
    _show_token(name, token)


@vendors_app.command("token")
def vendors_token(name: Annotated[str, typer.Argument(help="Vendor name or slug.")]) -> None:
    """Give the vendor a new portal token; the old one stops working at once."""
    from state.crypto import Keyring
    from state.procurement import rotate_token

    with _refusing(), _session() as s:
        token = rotate_token(s, Keyring.load(), name)
    _show_token(name, token)


@vendors_app.command("list")
def vendors_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Vendors, their status, token hint and ERP id."""
    from sqlalchemy import select

    from state.procurement import Vendor

    with _session() as s:
        rows = [{"name": v.name, "slug": v.slug, "status": v.status, "token": v.token_hint,
                 "currency": v.currency, "erp_id": v.erp_id}
                for v in s.scalars(select(Vendor).order_by(Vendor.name))]
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row))
        return
    for row in rows:
        typer.echo(f"{row['name']:<32} {row['slug']:<24} {row['status']:<8} "
                   f"{row['token'] or '-'}...  erp {row['erp_id'] or '-'}")
    if not rows:
        typer.echo("no vendors yet (vouchflow vendors add NAME)")


# contracts and orders --------------------------------------------------------------------------
def _prices(values: list[str]) -> dict[str, Decimal]:
    out: dict[str, Decimal] = {}
    for value in values:
        sku, _, cost = value.partition("=")
        try:
            out[sku.strip()] = Decimal(cost.strip())
        except InvalidOperation:
            _fail(f"--price {value!r}: expected SKU=COST, e.g. SKU-1=7.25")
    return out


@purchasing_app.command("contract-add")
def contract_add(
    vendor: Annotated[str, typer.Argument(help="Vendor name or slug.")],
    issuance_mode: Annotated[str, typer.Option(help="code_pool or api.")],
    settlement_mode: Annotated[str, typer.Option(
        help="purchased_quantity (code pool), sales_quantity or write_off_quantity (api).")],
    currency: Annotated[str, typer.Option(help="ISO 4217 currency of its prices.")],
    price: Annotated[list[str], typer.Option(help="SKU=COST (repeatable).")],
    valid_from: Annotated[str, typer.Option(help="YYYY-MM-DD")],
    valid_to: Annotated[str | None, typer.Option(help="YYYY-MM-DD")] = None,
    payment_terms_days: Annotated[int, typer.Option()] = 30,
    allows_returns: Annotated[bool, typer.Option()] = False,
) -> None:
    """Add a supplier contract (draft: it blocks purchasing until it is signed)."""
    from state.procurement import add_contract, get_vendor

    with _refusing(), _session() as s:
        contract = add_contract(
            s, get_vendor(s, vendor), issuance_mode=issuance_mode,
            settlement_mode=settlement_mode, currency=currency, prices=_prices(price),
            valid_from=date.fromisoformat(valid_from),
            valid_to=date.fromisoformat(valid_to) if valid_to else None,
            payment_terms_days=payment_terms_days, allows_returns=allows_returns)
        typer.echo(f"contract {contract.contract_no} ({contract.signature_status})")


@purchasing_app.command("contract-sign")
def contract_sign(
    contract_no: Annotated[str, typer.Argument()],
    by: Annotated[str | None, typer.Option(help="Who signed.")] = None,
    ref: Annotated[str | None, typer.Option(help="The e-signature envelope id.")] = None,
    status: Annotated[str, typer.Option(help="signed, sent, declined or revoked.")] = "signed",
) -> None:
    """Record the contract's e-signature status."""
    from state.procurement import set_signature

    with _refusing(), _session() as s:
        contract = set_signature(s, contract_no, status, by=by, ref=ref)
        typer.echo(f"contract {contract.contract_no}: {contract.signature_status}")


def _lines(values: list[str]) -> list[Any]:
    from state.procurement import LineIn

    out = []
    for value in values:
        parts = value.split(":")
        try:
            out.append(LineIn(parts[0], int(parts[1]), Decimal(parts[2]) if len(parts) > 2
                              else None))
        except (IndexError, ValueError, InvalidOperation):
            _fail(f"--line {value!r}: expected SKU:QUANTITY[:UNIT_COST]")
    return out


@purchasing_app.command("order")
def order(
    contract_no: Annotated[str, typer.Argument()],
    line: Annotated[list[str], typer.Option(help="SKU:QUANTITY[:UNIT_COST] (repeatable; the "
                                                 "contract's price when no cost is given).")],
    memo: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Create a purchase order under a signed contract."""
    from state.procurement import create_purchase_order, order_lines

    with _refusing(), _session() as s:
        po = create_purchase_order(s, contract_no, _lines(line), memo=memo)
        typer.echo(f"purchase order {po.po_no}")
        for ln in order_lines(s, po.id):  # type: ignore[arg-type]
            typer.echo(f"  line {ln.line_no}: {ln.quantity} x {ln.sku} at {ln.unit_cost} "
                       f"{po.currency}")


@purchasing_app.command("receive")
def receive(po_no: Annotated[str, typer.Argument()], line_no: Annotated[int, typer.Argument()],
            quantity: Annotated[int, typer.Argument()]) -> None:
    """API purchasing: receive a quantity (no codes) into a new API batch."""
    from state.procurement import receive_quantity

    with _refusing(), _session() as s:
        receipt = receive_quantity(s, po_no, line_no, quantity)
        typer.echo(f"receipt {receipt.receipt_no}: batch {receipt.batch_no}, "
                   f"{receipt.quantity} units")


@purchasing_app.command("bill")
def bill(po_no: Annotated[str, typer.Argument()]) -> None:
    """Settlement by purchased quantity: bill what the order received and was not billed."""
    from state.procurement import bill_received

    with _refusing(), _session() as s:
        found = bill_received(s, po_no)
        typer.echo(f"bill {found.bill_no}: {found.total} {found.currency}" if found
                   else f"nothing to bill on {po_no}")


@purchasing_app.command("recover-uploads")
def recover_uploads() -> None:
    """Finish uploads whose receiving process died, with what they had received."""
    from state.db import get_engine
    from state.vendor_uploads import recover_stale_uploads

    done = recover_stale_uploads(get_engine())
    typer.echo(f"recovered {len(done)} upload(s)" + (f": {', '.join(done)}" if done else ""))


@purchasing_app.command("post")
def post(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """Write vendors, purchase requests and orders, receipts and batches to the ERP (once)."""
    from flows.cli import quiet_prefect

    quiet_prefect(verbose)
    from flows.procurement import post_procurement

    typer.echo(json.dumps(asyncio.run(post_procurement()), indent=2))
