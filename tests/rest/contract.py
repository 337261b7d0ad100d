#!/usr/bin/env python3
"""Checks the REST server of a running job against its own OpenAPI document with
schemathesis, for the contract test.

    contract.py BASE_URL WORK_DIR [MAX_EXAMPLES]

Reads the job's id, name, vertices and held checkpoints from the server, and triggers
one savepoint that leaves the job running (into WORK_DIR), so that the generated
requests name real ones as well as made-up ones (a path parameter is a real value half
of the time), writes schemathesis' configuration into WORK_DIR and runs every check on
every operation but those that change the job: the cancel (`PATCH /jobs/{jobid}`, which
would end the job: the Rust test cancels it last) and the savepoint triggers (`POST
/jobs/{jobid}/savepoints` and `POST /jobs/{jobid}/stop`, whose valid bodies may stop
it). The triggers' refusals of bad bodies are checked here instead, by hand. Exits as
schemathesis does: non-zero on any failure.
"""

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

# Half of the time a real id, else whatever the schema allows: both the 200 and the
# 404 answers get checked.
REAL_SHARE = 0.5


def get(base, path):
    with urllib.request.urlopen(base + path, timeout=10) as response:
        return json.load(response)


def post(base, path, body, content_type="application/json"):
    """The status and JSON answer of a POST."""
    request = urllib.request.Request(
        base + path,
        data=body.encode(),
        method="POST",
        headers={"Content-Type": content_type},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def check_triggers(base, jid, work):
    """Refusals of the savepoint triggers, none of which may reach the job, and one
    savepoint that leaves the job running; its trigger id."""
    refused = [
        ("/savepoints", "{", "application/json", 400),
        ("/savepoints", '{"cancel-job": "yes"}', "application/json", 400),
        ("/savepoints", '{"unknown": 1}', "application/json", 400),
        ("/savepoints", '{"target-directory": ""}', "application/json", 400),
        ("/savepoints", "[true]", "application/json", 400),
        ("/savepoints", "{}", "text/plain", 415),
        ("/stop", '{"drain": true}', "application/json", 400),
        ("/stop", '{"cancel-job": true}', "application/json", 400),
    ]
    for path, body, content_type, expected in refused:
        status, answer = post(base, f"/jobs/{jid}{path}", body, content_type)
        errors = answer.get("errors") if isinstance(answer, dict) else None
        if status != expected or not (errors and isinstance(errors[0], str)):
            sys.exit(f"POST {path} {body!r} answered {status} {answer}, not {expected} with errors")
    status, answer = post(base, "/jobs/no-such-job/savepoints", "{}")
    if status != 404:
        sys.exit(f"a trigger of an unknown job answered {status} {answer}")
    directory = os.path.join(work, "savepoints")
    body = json.dumps({"target-directory": directory, "cancel-job": False})
    status, answer = post(base, f"/jobs/{jid}/savepoints", body)
    trigger = answer.get("request-id", "") if isinstance(answer, dict) else ""
    if status != 202 or len(trigger) != 32:
        sys.exit(f"a savepoint trigger answered {status} {answer}")
    return trigger


def toml_values(values):
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def config(base, work):
    overview = get(base, "/jobs/overview")["jobs"][0]
    job = get(base, f"/jobs/{overview['jid']}")
    checkpoints = get(base, f"/jobs/{overview['jid']}/checkpoints")
    jobs = [job["jid"], job["name"]]
    vertices = [v["id"] for v in job["vertices"]] + [v["name"] for v in job["vertices"]]
    held = [c["id"] for c in checkpoints["history"]] or [1]
    triggers = [check_triggers(base, overview["jid"], work)]
    return f"""
[dictionaries.jobs]
values = {toml_values(jobs)}
[dictionaries.vertices]
values = {toml_values(vertices)}
[dictionaries.checkpoints]
values = {toml_values(held)}
[dictionaries.triggers]
values = {toml_values(triggers)}
[dictionaries.files]
values = ["index.html", "style.css", "app.js"]

[parameters]
"path.jobid" = {{ dictionary = "jobs", probability = {REAL_SHARE} }}
"path.vertexid" = {{ dictionary = "vertices", probability = {REAL_SHARE} }}
"path.checkpointid" = {{ dictionary = "checkpoints", probability = {REAL_SHARE} }}
"path.triggerid" = {{ dictionary = "triggers", probability = {REAL_SHARE} }}
"path.file" = {{ dictionary = "files", probability = {REAL_SHARE} }}
"""


def main():
    base, work = sys.argv[1].rstrip("/"), sys.argv[2]
    max_examples = sys.argv[3] if len(sys.argv) > 3 else "20"
    path = os.path.join(work, "schemathesis.toml")
    with open(path, "w") as f:
        f.write(config(base, work))
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
        "--exclude-method",
        "POST",
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
