#!/usr/bin/env python3
"""Regenerate celltap/ipfix/ipfix_information_elements.csv from IANA's registry (needs network)."""

from __future__ import annotations

import argparse
import csv
import io
import sys
import urllib.request
from pathlib import Path

SOURCE = "https://www.iana.org/assignments/ipfix/ipfix-information-elements.csv"
TARGET = Path(__file__).resolve().parent.parent / "celltap" / "ipfix" / "ipfix_information_elements.csv"
COLUMNS = ["ElementID", "Name", "Abstract Data Type", "Data Type Semantics", "Units"]


def convert(text: str) -> list[list[str]]:
    """Keep single-element rows of IANA's CSV, in the columns celltap reads."""
    out = []
    for row in csv.DictReader(io.StringIO(text)):
        eid = (row.get("ElementID") or "").strip()
        name = (row.get("Name") or "").strip()
        if not eid.isdigit() or not name or name.lower().startswith(("reserved", "assigned", "unassigned")):
            continue
        out.append([eid, name] + [(row.get(c) or "").strip() for c in COLUMNS[2:]])
    out.sort(key=lambda r: int(r[0]))
    return out


def main() -> int:
    """Download, convert and write the registry CSV."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--source", default=SOURCE, help="URL or local path of IANA's CSV")
    ap.add_argument("--out", type=Path, default=TARGET)
    args = ap.parse_args()
    if args.source.startswith(("http://", "https://")):
        with urllib.request.urlopen(args.source, timeout=60) as resp:
            text = resp.read().decode("utf-8")
    else:
        text = Path(args.source).read_text()
    rows = convert(text)
    if len(rows) < 400:
        print(f"refusing to write: only {len(rows)} elements parsed from {args.source}", file=sys.stderr)
        return 1
    with open(args.out, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(COLUMNS)
        w.writerows(rows)
    print(f"wrote {len(rows)} elements to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
