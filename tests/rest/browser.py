#!/usr/bin/env python3
"""Drives headless Chromium through the DevTools protocol for the web page's test.

Reads a script of steps as JSON on standard input and prints what it found as JSON on
standard output:

    {"url": "http://127.0.0.1:PORT/", "width": 1280, "height": 900, "timeout": 30,
     "steps": [{"wait": "<JS expression>", "timeout": 20},
               {"run": "<JS expression>"},
               {"eval": "<name>", "expr": "<JS expression>"},
               {"screenshot": "<path of a PNG>"}]}

    {"values": {"<name>": <its value>}, "errors": ["<uncaught exceptions and console
     errors of the page>"], "waited": {"<expression>": <seconds>}}

A `wait` step polls its expression until it is truthy, and fails the script (exit 1, the
reason on standard error) after its timeout. A screenshot is of the whole page.

The protocol runs over a pipe (`--remote-debugging-pipe`: commands on the browser's fd 3,
answers on its fd 4, each message ended by a NUL byte), so that nothing but the standard
library is needed and no port is opened. The browser reaches loopback only: every other
host resolves to nothing and every other request goes to a proxy that does not exist.
Set WEIR_CHROMIUM to use another binary than `chromium`.
"""

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time


class Failure(Exception):
    """The script could not be carried out."""


def chromium_binary():
    name = os.environ.get("WEIR_CHROMIUM", "chromium")
    path = shutil.which(name)
    if path is None:
        raise Failure(f"{name} is not installed: scripts/setup.sh installs it")
    return path


def flags(profile, width, height):
    return [
        "--headless",
        # The tests run as root, where Chromium's sandbox cannot start.
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--no-default-browser-check",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
        "--hide-scrollbars",
        "--force-color-profile=srgb",
        "--force-device-scale-factor=1",
        "--lang=en-US",
        # Nothing leaves the machine: no background services, no names but loopback's,
        # and any request not to loopback goes to a port where nothing listens.
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-domain-reliability",
        "--disable-sync",
        "--disable-extensions",
        "--disable-default-apps",
        "--no-pings",
        "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
        "--proxy-server=http://127.0.0.1:9",
        "--remote-debugging-pipe",
        "about:blank",
    ]


class Browser:
    """One Chromium process and one page in it."""

    def __init__(self, width, height):
        self.profile = tempfile.mkdtemp(prefix="weir-chromium-")
        self.log = open(os.path.join(self.profile, "chromium.log"), "wb")
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()

        def wire():
            # In the child, before exec: its ends of the pipes at fds 3 and 4, where
            # Chromium looks for them. Out of the way first, in case either is 3 or 4.
            a = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD_CLOEXEC, 10)
            b = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD_CLOEXEC, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.process = subprocess.Popen(
            [chromium_binary(), *flags(self.profile, width, height)],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
            close_fds=False,
            preexec_fn=wire,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self.send_fd = to_browser_w
        self.recv_fd = from_browser_r
        self.buffer = b""
        self.next_id = 0
        self.session = None
        self.errors = []

    def _read_message(self, deadline):
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Failure("Chromium did not answer in time")
            ready, _, _ = select.select([self.recv_fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(self.recv_fd, 1 << 16)
            if not chunk:
                raise Failure(f"Chromium exited: see {self.log.name}")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def _event(self, message):
        method = message.get("method")
        params = message.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text")
            self.errors.append(f"uncaught: {text}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            args = [a.get("value", a.get("description", "")) for a in params.get("args", [])]
            self.errors.append("console.error: " + " ".join(str(a) for a in args))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            self.errors.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip())

    def call(self, method, params=None, timeout=30, session=True):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self.send_fd, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise Failure(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            self._event(reply)

    def open_page(self, width, height):
        target = self.call("Target.createTarget", {"url": "about:blank"}, session=False)
        attached = self.call(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}, session=False
        )
        self.session = attached["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )

    def evaluate(self, expression, timeout=30):
        result = self.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            timeout=timeout,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise Failure(f"{expression!r} threw: {text}")
        return result.get("result", {}).get("value")

    def navigate(self, url, timeout):
        result = self.call("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise Failure(f"{url} did not load: {result['errorText']}")
        self.wait(f"location.href === {json.dumps(url)} && document.readyState === 'complete'", timeout)

    def wait(self, expression, timeout):
        started = time.monotonic()
        deadline = started + timeout
        last = None
        while True:
            try:
                if self.evaluate(f"Boolean({expression})"):
                    return time.monotonic() - started
            except Failure as e:
                last = e
            if time.monotonic() > deadline:
                why = f" (last: {last})" if last else ""
                raise Failure(f"waited {timeout} s for {expression!r} in vain{why}")
            time.sleep(0.2)

    def screenshot(self, path, width):
        metrics = self.call("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        # The whole page, up to a height no screen needs more of.
        height = min(int(size["height"]) + 1, 6000)
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        shot = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        with open(path, "wb") as f:
            f.write(base64.b64decode(shot["data"]))

    def close(self):
        try:
            self.call("Browser.close", session=False, timeout=5)
        except Failure:
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self.send_fd)
        os.close(self.recv_fd)
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)


def run(script):
    width = script.get("width", 1280)
    height = script.get("height", 900)
    browser = Browser(width, height)
    values = {}
    waited = {}
    try:
        browser.open_page(width, height)
        browser.navigate(script["url"], script.get("timeout", 30))
        for step in script["steps"]:
            if "wait" in step:
                waited[step["wait"]] = round(browser.wait(step["wait"], step.get("timeout", 30)), 2)
            elif "run" in step:
                browser.evaluate(step["run"])
            elif "eval" in step:
                values[step["eval"]] = browser.evaluate(step["expr"])
            elif "screenshot" in step:
                browser.screenshot(step["screenshot"], width)
            else:
                raise Failure(f"unknown step {step}")
        return {"values": values, "errors": browser.errors, "waited": waited}
    except Failure as e:
        page = "; ".join(browser.errors) or "none"
        raise Failure(f"{e}\nthe page's errors: {page}") from e
    finally:
        browser.close()


def main():
    try:
        result = run(json.load(sys.stdin))
    except Failure as e:
        print(f"browser.py: {e}", file=sys.stderr)
        return 1
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
