#!/usr/bin/env python3
"""Checks the REST server of a running job against its own OpenAPI document with
schemathesis, for the contract test.

    contract.py BASE_URL WORK_DIR [MAX_EXAMPLES]

Reads the job's id, name, vertices and held checkpoints from the server, so that the
generated requests name real ones as well as made-up ones (a path parameter is a real
value half of the time), writes schemathesis' configuration into WORK_DIR and runs every
check on every operation but the cancel (`PATCH /jobs/{jobid}`, which would end the job:
the Rust test cancels it last). Exits as schemathesis does: non-zero on any failure.
"""

import json
import os
import subprocess
import sys
import urllib.request

# Half of the time a real id, else whatever the schema allows: both the 200 and the
# 404 answers get checked.
REAL_SHARE = 0.5


def get(base, path):
    with urllib.request.urlopen(base + path, timeout=10) as response:
        return json.load(response)


def toml_values(values):
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def config(base):
    overview = get(base, "/jobs/overview")["jobs"][0]
    job = get(base, f"/jobs/{overview['jid']}")
    checkpoints = get(base, f"/jobs/{overview['jid']}/checkpoints")
    jobs = [job["jid"], job["name"]]
    vertices = [v["id"] for v in job["vertices"]] + [v["name"] for v in job["vertices"]]
    held = [c["id"] for c in checkpoints["history"]] or [1]
    return f"""
[dictionaries.jobs]
values = {toml_values(jobs)}
[dictionaries.vertices]
values = {toml_values(vertices)}
[dictionaries.checkpoints]
values = {toml_values(held)}
[dictionaries.files]
values = ["index.html", "style.css", "app.js"]

[parameters]
"path.jobid" = {{ dictionary = "jobs", probability = {REAL_SHARE} }}
"path.vertexid" = {{ dictionary = "vertices", probability = {REAL_SHARE} }}
"path.checkpointid" = {{ dictionary = "checkpoints", probability = {REAL_SHARE} }}
"path.file" = {{ dictionary = "files", probability = {REAL_SHARE} }}
"""


def main():
    base, work = sys.argv[1].rstrip("/"), sys.argv[2]
    max_examples = sys.argv[3] if len(sys.argv) > 3 else "20"
    path = os.path.join(work, "schemathesis.toml")
    with open(path, "w") as f:
        f.write(config(base))
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        path,
        "run",
        f"{base}/openapi.json",
        "--url",
        base,
        "--checks",
        "all",
        "--exclude-method",
        "PATCH",
        "--max-examples",
        max_examples,
        "--seed",
        "1",
        "--workers",
        "2",
        "--request-timeout",
        "10",
        "--generation-database",
        "none",
        "--no-color",
        "--report-dir",
        os.path.join(work, "report"),
    ]
    return subprocess.run(command, cwd=work).returncode


if __name__ == "__main__":
    sys.exit(main())
