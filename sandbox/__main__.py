"""``python -m sandbox``: serve the ERP and wallet sandboxes in the foreground until Ctrl-C."""

from __future__ import annotations

import argparse
import gc
import os
import shlex
from pathlib import Path

from sandbox import DEFAULT_ERP_PORT, DEFAULT_SUPPLIER_PORT, DEFAULT_WALLET_PORT, serve_all
from sandbox.core import run_until, stop_signal
from sandbox.sites import load_sites


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__)
    parser.add_argument("--home", type=Path, default=None,
                        help="keep data in HOME/sandbox/ across runs (default: in memory only)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--erp-port", type=int, default=DEFAULT_ERP_PORT)
    parser.add_argument("--wallet-port", type=int, default=DEFAULT_WALLET_PORT)
    parser.add_argument("--supplier-port", type=int, default=None,
                        help=f"the supplier API sandbox (default {DEFAULT_SUPPLIER_PORT}, a free "
                             "port when --erp-port is 0; negative: not served)")
    parser.add_argument("--seed-skus", type=int, default=1000,
                        help="valid SKUs to seed when the ERP is empty")
    parser.add_argument("--invalid", type=int, default=7, help="invalid SKUs to seed as well")
    parser.add_argument("--seed", type=int, default=0, help="random seed for the generated SKUs")
    parser.add_argument("--modified-at", default=None,
                        help="lastModifiedDate of seeded items (ISO 8601; default: now)")
    parser.add_argument("--sites-file", type=Path, default=os.environ.get("VOUCHFLOW_SITES_FILE"),
                        help="TOML file of [sites.<code>] (default: $VOUCHFLOW_SITES_FILE or "
                             "connectors/wallet/sites.default.toml)")
    parser.add_argument("--erp-concurrency", type=int, default=None,
                        help="the ERP account's concurrency limit (default 5)")
    parser.add_argument("--erp-write-latency-ms", type=float, default=0.0,
                        help="time every record write (PUT) takes in the ERP")
    parser.add_argument("--print-env", action="store_true",
                        help="also print `export VOUCHFLOW_...` lines for the connectors")
    args = parser.parse_args(argv)

    group = serve_all(
        args.home, erp_port=args.erp_port, wallet_port=args.wallet_port,
        seed_skus=args.seed_skus, invalid=args.invalid, host=args.host, seed=args.seed,
        modified_at=args.modified_at, supplier_port=args.supplier_port,
        sites=load_sites(args.sites_file) if args.sites_file else None,
        erp_options=({"concurrency_limit": args.erp_concurrency}
                     if args.erp_concurrency is not None else None),
    )  # fmt: skip
    if args.erp_write_latency_ms:
        group.erp.faults.set(latency_ms=args.erp_write_latency_ms, method="PUT",
                             path_prefix="/services/rest/record/")
    # the seeded records live as long as the process: keep them out of every full collection
    # (a collection walking a few hundred thousand records stalls every request in flight)
    gc.freeze()
    stop = stop_signal()
    creds = group.erp.credentials
    print(f"ERP     {group.erp_url}  (account {creds.account}, "
          f"{group.erp.count('inventoryItem')} inventory items)")
    print(f"wallet  {group.wallet_url}")
    if group.finance_url:
        print(f"finance {group.finance_url}  (WSDL: {group.finance_url}?wsdl)")
    if group.supplier_url and group.supplier is not None:
        print(f"supplier {group.supplier_url}/v1  (Authorization: Bearer {group.supplier.token})")
    for code, url in group.site_urls().items():
        print(f"  {code:<4} {url}/api/v1  X-Api-Key: {group.wallet.api_key(code)}")
    if args.home is not None:
        print(f"data    {args.home / 'sandbox'}")
    if args.print_env:
        for key, value in group.env().items():
            print(f"export {key}={shlex.quote(value)}")
    run_until(stop, group)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
