//! The web page at `/` of a running job, in headless Chromium driven through the DevTools
//! protocol (`tests/rest/browser.py`): it shows the job graph with every vertex coloured
//! by back pressure, a completed checkpoint in its history, and a clicked checkpoint's
//! subtasks with the slowest marked; the flame-graph drawing is checked on a fixed body
//! of the flamegraph endpoint's shape. The screenshot is kept in the test's directory and
//! copied to `target/web-screenshot.png` for a person to look at.

use serde_json::{Value, json};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;
use weir_tests::RunningJob;
use weir_tests::rest::keyed_count_job;
use weir_tests::{Scratch, describe, eventually, repo};

/// Long enough for a cold compile of the counter and the first checkpoints on a loaded
/// two-core machine; the page itself polls every two seconds.
const START: Duration = Duration::from_secs(60);

/// A flame graph as `GET /jobs/:id/vertices/:vid/flamegraph` answers it (Flink's shape):
/// 100 samples, of which `process` has 60 (`decode` 20 of them) and `snapshot` 40.
fn flame_graph_body() -> Value {
    json!({
        "endTimestamp": 1_700_000_000_000_i64,
        "data": {
            "name": "root",
            "value": 100,
            "children": [
                {"name": "process", "value": 60, "children": [
                    {"name": "decode", "value": 20, "children": []}
                ]},
                {"name": "snapshot", "value": 40, "children": []}
            ]
        }
    })
}

/// Draws the fixed flame graph at 1000 px and reads back every frame's place.
fn flame_graph_check() -> String {
    format!(
        r#"(() => {{
            const picture = renderFlameGraph({body}, null, 1000);
            return [...picture.querySelectorAll("g.frame")].map((g) => {{
                const r = g.querySelector("rect");
                return {{
                    name: g.dataset.name,
                    depth: Number(g.dataset.depth),
                    x: Number(r.getAttribute("x")),
                    width: Number(r.getAttribute("width")),
                    label: g.querySelector("text") ? g.querySelector("text").textContent : null,
                }};
            }});
        }})()"#,
        body = flame_graph_body()
    )
}

/// A checkpoint failed for a reason the job does not give on demand: its rows in the
/// table, drawn from a fixed body of the history's shape.
fn failed_rows_check() -> String {
    let failed = json!({
        "id": 7, "status": "FAILED", "trigger_timestamp": 1_700_000_000_000_i64,
        "end_to_end_duration": 120, "state_size": 0, "checkpointed_size": 0,
        "num_acknowledged_subtasks": 1, "num_subtasks": 6,
        "failure_message": "checkpoint 7 expired before every subtask acknowledged it",
    });
    format!(
        "historyRows([{failed}], null).map((r) => ({{class: r.className, text: r.textContent}}))"
    )
}

fn browse(script: &Value) -> Value {
    let mut child = Command::new("python3")
        .arg(repo().join("tests/rest/browser.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 starts");
    child
        .stdin
        .take()
        .expect("its stdin")
        .write_all(script.to_string().as_bytes())
        .expect("the script");
    let output = child.wait_with_output().expect("browser.py ends");
    assert!(
        output.status.success(),
        "browser.py failed\n{}",
        describe(&output)
    );
    serde_json::from_slice(&output.stdout).expect("browser.py prints JSON")
}

#[test]
fn the_page_shows_the_graph_by_back_pressure_the_checkpoints_and_the_slowest_subtask() {
    let scratch = Scratch::new();
    scratch.write("job.toml", keyed_count_job("web-demo", "500ms"));
    let job = RunningJob::start(&scratch, &["run", "job.toml"]);
    assert!(
        eventually(START, || {
            let (status, body) = job.request("GET", "/jobs/web-demo/checkpoints", &[]);
            status == 200 && body.contains("\"COMPLETED\"")
        }),
        "no checkpoint completed\n{}",
        job.log()
    );
    let (status, page) = job.request("GET", "/", &[]);
    assert_eq!(status, 200);
    assert!(page.contains("/web/app.js"), "{page}");

    let shot = scratch.path().join("web-screenshot.png");
    let result = browse(&json!({
        "url": job.url("/"),
        "width": 1280,
        "height": 900,
        "steps": [
            // A few completed checkpoints, so that the chart in the screenshot says
            // something.
            {"wait": "document.querySelectorAll('#graph g.vertex').length === 3 \
                      && document.querySelectorAll('#history tr[data-status=COMPLETED]').length >= 4",
             "timeout": 30},
            // Once the rates have a few readings, every vertex has a level.
            {"wait": "[...document.querySelectorAll('#graph g.vertex')] \
                      .every((g) => g.dataset.level !== 'unknown')",
             "timeout": 30},
            {"run": "document.querySelector('#history tr[data-status=COMPLETED]').click()"},
            {"wait": "document.querySelectorAll('#detail table.subtasks').length === 3 \
                      && document.querySelector('#detail tr.slowest td.slowest-stage')",
             "timeout": 20},
            {"eval": "vertices", "expr": "[...document.querySelectorAll('#graph g.vertex')] \
                .map((g) => ({name: g.dataset.name, level: g.dataset.level, \
                              text: g.textContent}))"},
            {"eval": "edges", "expr": "document.querySelectorAll('#graph path.edge').length"},
            {"eval": "state", "expr": "document.getElementById('job-state').textContent"},
            {"eval": "name", "expr": "document.getElementById('job-name').textContent"},
            {"eval": "rows", "expr": "[...document.querySelectorAll('#history tr.checkpoint')] \
                .map((r) => ({id: Number(r.dataset.checkpointId), status: r.dataset.status, \
                              cells: [...r.cells].map((c) => c.textContent)}))"},
            {"eval": "bars", "expr": "document.querySelectorAll('#chart-duration rect.bar').length"},
            {"eval": "selected", "expr": "document.getElementById('detail-title').textContent"},
            {"eval": "verdict", "expr": "document.getElementById('verdict').textContent"},
            {"eval": "subtask_rows", "expr": "[...document.querySelectorAll('#detail table.subtasks')] \
                .map((t) => t.tBodies[0].rows.length)"},
            {"eval": "slowest", "expr": "document.querySelectorAll('#detail tr.slowest').length"},
            {"eval": "slowest_stage", "expr": "document.querySelectorAll('#detail td.slowest-stage').length"},
            {"eval": "flame", "expr": flame_graph_check()},
            {"eval": "failed_rows", "expr": failed_rows_check()},
            {"screenshot": shot.display().to_string()},
        ],
    }));
    let values = &result["values"];
    assert_eq!(result["errors"], json!([]), "the page logged errors");

    assert_eq!(values["name"], "web-demo");
    assert_eq!(values["state"], "RUNNING");
    let vertices = values["vertices"].as_array().expect("vertices");
    let names: Vec<&str> = vertices.iter().filter_map(|v| v["name"].as_str()).collect();
    assert_eq!(names, ["gen", "count", "out"], "in topological order");
    for v in vertices {
        let level = v["level"].as_str().unwrap_or_default();
        assert!(["ok", "low", "high"].contains(&level), "{v}");
        assert!(
            v["text"].as_str().unwrap_or_default().contains("busy"),
            "{v}"
        );
    }
    assert_eq!(values["edges"], 2, "gen → count → out");

    let rows = values["rows"].as_array().expect("rows");
    let completed = rows
        .iter()
        .find(|r| r["status"] == "COMPLETED")
        .expect("a completed checkpoint in the table");
    let cells = completed["cells"].as_array().expect("cells");
    assert_eq!(cells.len(), 7, "{completed}");
    assert!(
        cells[3].as_str().unwrap_or_default().ends_with("ms")
            || cells[3].as_str().unwrap_or_default().ends_with(" s"),
        "the end-to-end duration: {completed}"
    );
    assert!(
        cells[4].as_str().unwrap_or_default().contains('B'),
        "the state size: {completed}"
    );
    assert!(values["bars"].as_u64().unwrap_or(0) >= 1, "the chart draws");

    assert_eq!(
        values["selected"],
        format!("Checkpoint #{}", completed["id"]),
        "the first completed row was clicked"
    );
    let verdict = values["verdict"].as_str().unwrap_or_default();
    assert!(verdict.starts_with("Slowest: "), "{verdict}");
    assert!(
        ["start delay", "alignment", "sync", "async"]
            .iter()
            .any(|stage| verdict.contains(&format!("most of it in {stage}"))),
        "{verdict}"
    );
    assert_eq!(
        values["subtask_rows"],
        json!([2, 2, 2]),
        "two subtasks each"
    );
    assert_eq!(values["slowest"], 1, "one slowest subtask");
    assert_eq!(values["slowest_stage"], 1, "and its slowest stage");

    // 1000 px for 100 samples: 10 px a sample, children side by side under their parent.
    let frames = values["flame"].as_array().expect("frames");
    let frame = |name: &str| {
        frames
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("no frame {name} in {frames:?}"))
    };
    assert_eq!(frames.len(), 4);
    for (name, depth, x, width) in [
        ("root", 0, 0.0, 999.0),
        ("process", 1, 0.0, 599.0),
        ("decode", 2, 0.0, 199.0),
        ("snapshot", 1, 600.0, 399.0),
    ] {
        let f = frame(name);
        assert_eq!(f["depth"], depth, "{f}");
        assert_eq!(f["x"].as_f64(), Some(x), "{f}");
        assert_eq!(f["width"].as_f64(), Some(width), "{f}");
        assert_eq!(f["label"], name, "{f}");
    }

    let failed = values["failed_rows"].as_array().expect("rows");
    assert_eq!(
        failed.len(),
        2,
        "the checkpoint and its failure: {failed:?}"
    );
    assert!(
        failed[0]["class"]
            .as_str()
            .unwrap_or_default()
            .contains("checkpoint")
    );
    assert_eq!(failed[1]["class"], "failure-row");
    assert_eq!(
        failed[1]["text"],
        "checkpoint 7 expired before every subtask acknowledged it"
    );

    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    let kept = repo().join("target/web-screenshot.png");
    std::fs::copy(&shot, &kept).expect("a copy of the screenshot in target/");
    eprintln!("screenshot: {}", kept.display());

    let status = job.cancel("web-demo", START);
    assert_eq!(
        status.code(),
        Some(130),
        "a cancelled job exits as on Ctrl-C"
    );
}
