"""``python -m sandbox.subscriber``: serve N subscribers on loopback until Ctrl-C or SIGTERM.

Prints one line per subscriber, ``subscriber NAME URL SECRET`` (sandbox secrets only), then
``Ctrl-C to stop.``; benchmarks read those lines and register the subscriptions.
"""

from __future__ import annotations

import argparse

from sandbox.core import run_until, serve_many, stop_signal
from sandbox.subscriber.app import SubscriberSandbox


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.subscriber", description=__doc__)
    parser.add_argument("--count", type=int, default=3, help="how many subscribers")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0,
                        help="first port (the others follow); 0 picks free ports")
    parser.add_argument("--secret-prefix", default="sandbox-subscriber-secret-")
    args = parser.parse_args(argv)
    names = [f"sub{i + 1}" for i in range(args.count)]
    sandboxes = [SubscriberSandbox(f"{args.secret_prefix}{name}", name=name) for name in names]
    items = [(sb, args.port + i if args.port else 0) for i, sb in enumerate(sandboxes)]
    stop = stop_signal()
    group = serve_many(items, host=args.host)
    for sb, served in zip(sandboxes, group, strict=True):
        print(f"subscriber {sb.name} {served.url(sb.path)} {sb.secret}")
    run_until(stop, group)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
