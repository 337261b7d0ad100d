#!/usr/bin/env python3
"""Parses the text of a running job's `/metrics` with the Prometheus client's own parser
and prints what the contract test asserts on, as JSON:

    metrics.py URL

    {"families": {"<name>": {"type": "counter" | "gauge" | ..., "help": "...",
                             "samples": [{"name": ..., "labels": {...}, "value": ...}]}}}

A text the parser refuses fails the script (exit 1, the parser's words on standard
error): the check is the parser's, not a reading of the text by hand.
"""

import json
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def main():
    with urllib.request.urlopen(sys.argv[1], timeout=10) as response:
        content_type = response.headers.get("Content-Type", "")
        text = response.read().decode("utf-8")
    families = {}
    try:
        for family in text_string_to_metric_families(text):
            if family.name in families:
                raise ValueError(f"family {family.name} appears twice")
            families[family.name] = {
                "type": family.type,
                "help": family.documentation,
                "samples": [
                    {"name": s.name, "labels": s.labels, "value": s.value} for s in family.samples
                ],
            }
    except ValueError as e:
        print(f"metrics.py: the text of {sys.argv[1]} does not parse: {e}", file=sys.stderr)
        return 1
    json.dump({"content_type": content_type, "families": families}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
