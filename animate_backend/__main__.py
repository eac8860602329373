"""`python -m animate_backend COMMAND ...`: the backend's command line.

Weights:  convert-moore, fetch-weights, make-tiny   (animate_backend/cli_weights.py)
Jobs:     run, generate, serve                     (animate_backend/cli_jobs.py)
Farm:     farm, a shot list on a Ray cluster       (animate_backend/farm/)
Scores:   evaluate                                 (animate_backend/evaluate.py)
Training is launched separately: `accelerate launch -m animate_backend.train ...`.
"""

from __future__ import annotations

import argparse
import logging
import sys

from animate_backend.errors import BackendError
from pose_bridge.errors import PoseBridgeError


def build_parser() -> argparse.ArgumentParser:
    from animate_backend import cli_jobs, cli_weights, evaluate
    from animate_backend.farm import cli as cli_farm

    parser = argparse.ArgumentParser(prog="python -m animate_backend", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cli_weights.register(sub)
    cli_jobs.register(sub)
    cli_farm.register(sub)
    evaluate.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Logs go to stderr: stdout belongs to the `serve` protocol and to results.
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except (BackendError, PoseBridgeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
