"""Run many `celltap` command lines in one process (the config walk's runner): JSON in, JSON out.

Reads a JSON list of argv lists on stdin; for each, calls `celltap.cli.main(argv)` as the entry point
would, with stderr captured, logging re-pointed at it, and an alarm so that a command whose bad value
was accepted (and which therefore starts serving) is stopped and reported instead of hanging. Prints a
JSON list of {"code", "stderr"} on a line starting with MARK (an exception escaping main is reported
as the traceback a user would see). One interpreter start for a hundred cases instead of a hundred.
"""

from __future__ import annotations

import io
import json
import logging
import signal
import sys
import traceback

from celltap.cli import main

MARK = "@@CLI_BATCH@@"  # the result line (a command may also write to file descriptor 1 itself)
ACCEPTED_AFTER = 15  # seconds: a command still running then took the value as valid


class Accepted(BaseException):
    """The alarm fired: the command is running, so it accepted the configuration."""


def _alarm(_signum: int, _frame: object) -> None:
    raise Accepted


def run_one(argv: list[str]) -> dict:
    """One command line's exit code and stderr."""
    err = io.StringIO()
    real, real_out = sys.stderr, sys.stdout
    sys.stderr, sys.stdout = err, io.StringIO()
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(ACCEPTED_AFTER)
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except Accepted:
        code = "accepted"
    except BaseException:
        err.write(traceback.format_exc())
        code = 1
    finally:
        signal.alarm(0)
        sys.stderr, sys.stdout = real, real_out
    return {"code": code, "stderr": err.getvalue()}


if __name__ == "__main__":
    cases = json.load(sys.stdin)
    results = [run_one(argv) for argv in cases]
    print(MARK + json.dumps(results), flush=True)
