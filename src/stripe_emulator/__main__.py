"""`python -m stripe_emulator [--host 127.0.0.1] [--port 12111] [--api-key sk_test_...]
[--no-access-log]`."""

from __future__ import annotations

import argparse

from stripe_emulator.server import DEFAULT_PORT, serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="stripe_emulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument(
        "--api-key", default=None, help="accept only this key (default: any sk_test_)"
    )
    parser.add_argument(
        "--no-access-log",
        dest="access_log",
        action="store_false",
        help="no log line per request (a drain of a large backlog asks for thousands of pages)",
    )
    args = parser.parse_args(argv)
    serve(args.host, args.port, args.api_key, access_log=args.access_log)


if __name__ == "__main__":
    main()
