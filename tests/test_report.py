"""servescope report: the HTML page and its PNGs from synthetic and real runs, loaded in headless Chromium.

The browser checks run in a real Chromium (Debian package ``chromium``) driven over the
Chrome DevTools protocol: no JavaScript exception, no console or log error, no request to
anything but the page itself and data: URIs, and every <img> decoded (naturalWidth > 0).
Without Chromium these tests fail and say how to install it.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from runbuilder import RunBuilder
from servescope.report.build import figure_specs, write_report
from servescope.cli.main import app
from servescope.report.figures import RUN_COLORS
from servescope.run.directory import RunDirError, write_json

MS = 1_000_000
US = 1_000
T0 = 7_000_000 * MS  # a monotonic clock that has been up for ~2 hours
XSS = "<script>window.__pwned=1</script>"
XSS_ID = '<img src=x onerror="window.__pwned=2">'
PROCESSES = {"frontend": (4101, "MainProcess"), "engine": (4202, "EngineCore"), "worker": (4303, "VllmWorker-0")}


# --------------------------------------------------------------------------- a synthetic engine


def simulate_engine(*, n_requests: int = 16, slow: float = 1.0, spec_request: int = 1, preempt_request: int = 2,
                    cpu_stall_step: int = 20, seed: int = 0):
    """Return (requests, steps, regions, frontend) of a small simulated vLLM engine; times in ns.

    Up to 4 requests run at once; a newly admitted request computes its whole prompt in its
    first step (prefill interference for the others); `spec_request` emits 3 tokens (2 of 3
    drafts accepted) every 4th step; `preempt_request` is preempted at its 5th token and
    rescheduled 3 steps later; step `cpu_stall_step` spends 40 ms in the scheduler.
    """
    rng = np.random.default_rng(seed)
    arrivals = [T0 + int(r * 7 * MS * slow) for r in range(n_requests)]
    prompts = [32 + 40 * r for r in range(n_requests)]
    outputs = [12 + (r % 5) * 4 for r in range(n_requests)]
    requests = {r: {"id": f"req-{r}", "arrival": arrivals[r], "prompt": prompts[r], "max": outputs[r],
                    "scheduled": None, "emissions": [], "preempted": [], "finished": None, "tokens": 0}
                for r in range(n_requests)}
    requests[n_requests - 1]["id"] = XSS_ID  # a hostile request id must stay text on the page
    waiting, running, paused = list(range(n_requests)), [], {}
    steps, regions, frontend = [], [], []
    t, step = T0, 0
    while (waiting or running or paused) and step < 2000:
        for r, until in list(paused.items()):
            if step >= until:
                waiting.insert(0, r)
                del paused[r]
        schedule_ns = int((0.3 + (40 if step == cpu_stall_step else 0)) * MS)
        admitted = []
        while waiting and len(running) < 4 and arrivals[waiting[0]] <= t:
            r = waiting.pop(0)
            running.append(r)
            admitted.append(r)
            requests[r]["scheduled"] = requests[r]["scheduled"] or (t, step)
            if requests[r]["preempted"]:
                requests[r]["preempted"][-1] = (requests[r]["preempted"][-1][0], t)
        if not running:
            t = max(t + MS, min((arrivals[r] for r in waiting), default=t + MS))
            continue
        prefill_tokens = sum(requests[r]["prompt"] for r in admitted)
        gpu_ns = int((4.0 * slow + 0.02 * prefill_tokens + rng.uniform(0, 0.3)) * MS)
        s0 = t
        s1 = s0 + schedule_ns
        e0, e1 = s1 + 20 * US, s1 + 520 * US
        w0 = e1 + 10 * US
        w1 = e0 + 300 * US + gpu_ns + 200 * US
        u0, u1 = w1 + 10 * US, w1 + 310 * US
        emitted, finished = 0, 0
        for r in list(running):
            req = requests[r]
            if r in admitted and req["tokens"] == 0:
                n, drafts = 1, None
            elif r == spec_request and step % 4 == 0:
                n, drafts = 3, (3, 2)
            else:
                n, drafts = 1, None
            n = min(n, req["max"] - req["tokens"])
            req["tokens"] += n
            emitted += n
            req["emissions"].append((step, u1, n) + (drafts or ()))
            if req["tokens"] >= req["max"]:
                req["finished"] = u1
                running.remove(r)
                finished += 1
            elif r == preempt_request and req["tokens"] == 5 and not req["preempted"]:
                req["preempted"].append((u1 + 10 * US, None))
                running.remove(r)
                paused[r] = step + 3
        steps.append(dict(step_id=step, engine_index=0, schedule_start_ns=s0, schedule_end_ns=s1,
                          execute_start_ns=e0, execute_end_ns=e1, wait_start_ns=w0, wait_end_ns=w1,
                          update_start_ns=u0, update_end_ns=u1, engine_timestamp_ns=u1 - 5 * US,
                          total_scheduled_tokens=prefill_tokens + len(running), num_prefill_reqs=len(admitted),
                          num_prefill_tokens=prefill_tokens, num_decode_reqs=len(running) - len(admitted),
                          num_decode_tokens=len(running) - len(admitted), num_spec_tokens=0,
                          num_running_reqs=len(running), num_waiting_reqs=len(waiting),
                          kv_cache_usage=min(1.0, 0.05 * len(running) + 0.001 * step),
                          num_preempted_reqs=0, num_emitted_tokens=emitted, num_finished_reqs=finished))
        x0 = e0 + 100 * US
        f0, f1 = x0 + 100 * US, x0 + 200 * US + gpu_ns // 2
        regions += [
            dict(step_id=step, rank=0, region="execute_model", host_start_ns=x0, host_end_ns=f1 + 50 * US,
                 gpu_ns=gpu_ns, gpu_start_ns=x0 + 150 * US, gpu_end_ns=x0 + 150 * US + gpu_ns),
            dict(step_id=step, rank=0, region="forward", host_start_ns=f0, host_end_ns=f1,
                 gpu_ns=gpu_ns - 100 * US, gpu_start_ns=x0 + 200 * US, gpu_end_ns=x0 + 100 * US + gpu_ns),
            dict(step_id=step, rank=0, region="sample", host_start_ns=w1 - 150 * US, host_end_ns=w1 - 50 * US,
                 gpu_ns=None, gpu_start_ns=None, gpu_end_ns=None),
        ]
        frontend.append(dict(engine_timestamp_ns=u1 - 5 * US, process_start_ns=u1 + 100 * US,
                             process_end_ns=u1 + 300 * US, num_outputs=emitted))
        t, step = u1 + 50 * US, step + 1
    return requests, steps, regions, frontend


def manifest_for(name: str, **parameters) -> dict:
    """Return a manifest like the tracer's, with a hostile string in an engine parameter."""
    params = {"max_num_seqs": 4, "max_num_batched_tokens": 2048, "enable_chunked_prefill": True,
              "block_size": 16, "dtype": "bfloat16", "note": XSS, **parameters}
    return {
        "run_id": f"id-{name}",
        "servescope": {"version": "0.1.0"},
        "engine": {"name": "vllm", "version": "0.32.0", "parameters": params},
        "model": {"architecture": "LlamaForCausalLM", "attention": "GQA", "moe": False, "num_parameters": 819840},
        "host": {"hostname": "test-host", "cpu_count": 2},
        "health": {"rows_dropped": 0, "regions_without_gpu_time": 0, "internal_errors": 0, "processes_killed": [], "processes_running": []},
        "command": {"argv": ["python", "serve.py", XSS]},
        "workload": {"name": "synthetic"},
    }


def build_engine_run(root: Path, name: str = "run", *, slow: float = 1.0, processes: dict = PROCESSES,
                     **parameters) -> Path:
    """Write a run directory of simulate_engine(), its parts named by writer like the tracer's, with processes/
    (processes: role -> (pid, process name), PROCESSES's layout unless given)."""
    requests, steps, regions, frontend = simulate_engine(slow=slow)
    builder = RunBuilder(root, name, manifest_for(name, **parameters))
    for req in requests.values():
        builder.request(req["id"], arrival_ns=req["arrival"], queued_ns=req["arrival"] + 20 * US,
                        scheduled_ns=req["scheduled"][0], emissions=req["emissions"],
                        finished_ns=req["finished"], prompt_tokens=req["prompt"], max_tokens=req["max"],
                        finish_reason="length", preemptions=req["preempted"])
    for row in steps:
        builder.row("steps", **row)
    for row in regions:
        builder.row("worker_regions", **row)
    for row in frontend:
        builder.row("frontend_steps", **row)
    writers = {"frontend_steps": "frontend", "request_events": "engine", "token_emissions": "engine",
               "steps": "engine", "worker_regions": "worker"}
    path = builder.write(writers={table: "{1}-{0}".format(*processes[w]) for table, w in writers.items()})
    for pid, role in processes.values():
        write_json(path / "processes" / f"{pid}.json", {"pid": pid, "role": role, "closed": True})
    return path


# --------------------------------------------------------------------------- headless Chromium


CHROMIUM_INSTALL = ("Chromium is needed to check the report in a real browser: install the Debian package with "
                    "`apt-get update && apt-get install -y chromium` (or put a Chromium/Chrome binary on PATH "
                    "or in SERVESCOPE_CHROMIUM).")


def chromium_binary() -> str:
    """Return the Chromium executable, or fail the test saying how to install it."""
    for candidate in (os.environ.get("SERVESCOPE_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    pytest.fail(CHROMIUM_INSTALL)


class DevTools:
    """A headless Chromium and one page, driven over the DevTools protocol (websockets)."""

    def __init__(self, profile: Path):
        import contextlib
        import inspect

        from websockets.sync.client import connect

        self.stack = contextlib.ExitStack()
        profile.mkdir(parents=True, exist_ok=True)
        log = profile / "chromium.log"
        self.proc = subprocess.Popen(
            [chromium_binary(), "--headless", "--disable-gpu", "--no-sandbox", "--disable-dev-shm-usage",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars",
             f"--user-data-dir={profile}", "--remote-debugging-port=0", "--window-size=1400,1000", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.exists() or len(port_file.read_text().splitlines()) < 2:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                err = log.read_text(errors="replace")
                raise AssertionError(f"Chromium did not start its DevTools endpoint:\n{err[-3000:]}")
            time.sleep(0.1)
        port, browser_path = port_file.read_text().splitlines()[:2]
        options = {"max_size": None, "open_timeout": 30}
        if "proxy" in inspect.signature(connect).parameters:
            options["proxy"] = None  # loopback: never through an HTTP(S)_PROXY of the environment
        self.ws = self.stack.enter_context(connect(f"ws://127.0.0.1:{port}{browser_path}", **options))
        self.next_id, self.events = 0, []
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=True)

    def call(self, method: str, params: dict | None = None, *, session: bool = False, timeout: float = 60) -> dict:
        """Send one command and return its result, keeping the events that arrive meanwhile."""
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        self.ws.send(json.dumps(message))
        deadline = time.monotonic() + timeout
        while True:
            reply = json.loads(self.ws.recv(timeout=max(deadline - time.monotonic(), 0.1)))
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 60) -> None:
        """Read events until one named method arrives."""
        if any(e.get("method") == method for e in self.events):
            return
        deadline = time.monotonic() + timeout
        while True:
            event = json.loads(self.ws.recv(timeout=max(deadline - time.monotonic(), 0.1)))
            self.events.append(event)
            if event.get("method") == method:
                return

    def evaluate(self, expression: str):
        """Return the value of a JavaScript expression in the page."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path) -> None:
        """Save a full-page PNG screenshot."""
        metrics = self.call("Page.getLayoutMetrics", session=True)
        height = int(metrics["cssContentSize"]["height"])
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": 1400, "height": min(height, 16000), "deviceScaleFactor": 1, "mobile": False},
                  session=True)
        data = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True},
                         session=True)["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        """Close the connection and end the browser process."""
        try:
            self.stack.close()
        except Exception:
            pass
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def load_in_browser(index: Path, profile: Path, screenshot: Path | None = None) -> dict:
    """Open index.html in headless Chromium; return its images, errors, requests and XSS markers."""
    browser = DevTools(profile)
    try:
        browser.call("Page.navigate", {"url": index.resolve().as_uri()}, session=True)
        browser.wait_for("Page.loadEventFired")
        images = browser.evaluate(
            "Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, "
            "width: i.naturalWidth, height: i.naturalHeight}))")
        page = browser.evaluate(
            "({title: document.title, pwned: typeof window.__pwned, text: document.body.innerText, "
            "scripts: document.scripts.length, figures: document.querySelectorAll('figure').length})")
        if screenshot is not None:
            browser.screenshot(screenshot)
    finally:
        browser.close()
    errors = []
    for event in browser.events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            errors.append(("exception", params["exceptionDetails"].get("text")))
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append(("console", [a.get("value") for a in params.get("args", [])]))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            errors.append(("log", params["entry"].get("text")))
        elif method == "Network.loadingFailed":
            errors.append(("network", params.get("errorText")))
    requests = [e["params"]["request"]["url"] for e in browser.events if e.get("method") == "Network.requestWillBeSent"]
    return {"images": images, "errors": errors, "requests": requests, **page}


def assert_page_renders(result: dict, expected_figures: int) -> None:
    """Assert no error, no remote request, and every figure decoded with a non-zero natural size."""
    assert result["errors"] == [], result["errors"]
    assert [u for u in result["requests"] if not u.startswith(("file:", "data:"))] == []
    assert len(result["images"]) == expected_figures == result["figures"]
    for image in result["images"]:
        assert image["complete"] and image["width"] > 0 and image["height"] > 0, image
    assert result["scripts"] == 0
    assert result["pwned"] == "undefined"


def keep_screenshot(path: Path) -> None:
    """Copy a screenshot to $SERVESCOPE_REPORT_SCREENSHOTS (for a person to look at), when set."""
    target = os.environ.get("SERVESCOPE_REPORT_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)


def png_has_color(path: Path, color: str, tolerance: int = 6) -> bool:
    """Return whether any pixel of the PNG is within tolerance of the hex color."""
    import matplotlib.image as mpimg

    pixels = (mpimg.imread(path)[..., :3] * 255).round().astype(int)
    rgb = np.array([int(color[k:k + 2], 16) for k in (1, 3, 5)])
    return bool((np.abs(pixels - rgb).max(axis=-1) <= tolerance).any())


# --------------------------------------------------------------------------- tests


def test_one_run_report_renders_in_chromium(tmp_path):
    run = build_engine_run(tmp_path, "engine-run")
    index = write_report([run], tmp_path / "report", tbt_slo_s=0.008, ttft_slo_s=0.2)
    specs = figure_specs(0.008)
    assert index == tmp_path / "report" / "index.html"
    pngs = sorted((tmp_path / "report" / "figures").glob("*.png"))
    assert [p.name.split("-", 1)[1] for p in pngs] == [f"{s.name}.png" for s in specs]
    assert all(p.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)
    html = index.read_text()
    assert "<script" not in html.lower()  # neither the page's own nor the run's
    assert XSS not in html and XSS_ID not in html
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in html
    assert "http://" not in html and "https://" not in html

    shot = tmp_path / "one-run.png"
    result = load_in_browser(index, tmp_path / "profile", screenshot=shot)
    keep_screenshot(shot)
    assert_page_renders(result, len(specs))
    assert XSS in result["text"]  # shown as text, not run
    for heading in ("Key numbers", "Generation stalls", "Engine iterations", "Fluidity", "Evaluation checklist",
                    "Configuration", "Recording health"):
        assert heading in result["text"]
    assert shot.read_bytes().startswith(b"\x89PNG")


def test_two_runs_are_overlaid_each_in_its_color(tmp_path):
    base = build_engine_run(tmp_path, "baseline")
    slow = build_engine_run(tmp_path, "slower", slow=1.6, max_num_seqs=8)
    index = write_report([base, slow], tmp_path / "report", show_progress=True)
    specs = figure_specs(None)
    assert "fluidity" not in [s.name for s in specs]
    figures = {p.name.split("-", 1)[1][:-4]: p for p in (tmp_path / "report" / "figures").glob("*.png")}
    assert set(figures) == {s.name for s in specs}
    for name in ("ttft-cdf", "tbt-cdf", "e2e-cdf", "tpot", "normalization", "ttft-vs-prompt", "stall-causes"):
        assert png_has_color(figures[name], RUN_COLORS[0]), name
        assert png_has_color(figures[name], RUN_COLORS[1]), name
    html = index.read_text()
    assert html.count('class="run-name">baseline<') >= 3 and html.count('class="run-name">slower<') >= 3
    assert '<tr class="diff"><td><span class="mono">max_num_seqs</span>' in html  # differing parameter flagged

    result = load_in_browser(index, tmp_path / "profile", screenshot=tmp_path / "two-runs.png")
    keep_screenshot(tmp_path / "two-runs.png")
    assert_page_renders(result, len(specs))
    assert "Give a TBT SLO" in result["text"]


def test_report_of_a_real_offline_vllm_run(offline_run, tmp_path):
    index = write_report([offline_run.run_dir], tmp_path / "report", tbt_slo_s=0.05)
    html = index.read_text()
    assert "vllm" in html and "LlamaForCausalLM" in html
    result = load_in_browser(index, tmp_path / "profile")
    assert_page_renders(result, len(figure_specs(0.05)))
    assert f"<td>{offline_run.num_requests}</td>" in html  # the Runs table's request count


def test_empty_run_still_gives_a_page(tmp_path):
    run = RunBuilder(tmp_path, "empty", {}).write()
    index = write_report([run], tmp_path / "report")
    html = index.read_text()
    assert html.count("<img ") == len(figure_specs(None, engine_steps=False))  # no step: no iteration timeline
    assert "not recorded" in html


def test_duplicate_run_names_are_told_apart(tmp_path):
    a = build_engine_run(tmp_path / "a", "run")
    b = build_engine_run(tmp_path / "b", "run")
    html = write_report([a, b], tmp_path / "report").read_text()
    assert 'class="run-name">a/run<' in html and 'class="run-name">b/run<' in html


def test_bad_run_dir_is_a_clear_error_naming_the_path(tmp_path):
    missing = tmp_path / "no-such-run"
    with pytest.raises(RunDirError, match="no-such-run"):
        write_report([missing], tmp_path / "report")
    not_a_run = tmp_path / "just-a-folder"
    not_a_run.mkdir()
    with pytest.raises(RunDirError, match="just-a-folder"):
        write_report([build_engine_run(tmp_path), not_a_run], tmp_path / "report")
    assert not (tmp_path / "report" / "index.html").exists()


def test_report_command(tmp_path):
    run = build_engine_run(tmp_path)
    result = CliRunner().invoke(app, ["report", str(run), "--out", str(tmp_path / "out"), "--tbt-slo", "0.01"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "index.html").exists()
    assert len(list((tmp_path / "out" / "figures").glob("*.png"))) == len(figure_specs(0.01))

    bad = CliRunner().invoke(app, ["report", str(tmp_path / "missing-run"), "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2
    assert "missing-run" in bad.output
    only_ttft = CliRunner().invoke(app, ["report", str(run), "--out", str(tmp_path / "y"), "--ttft-slo", "1"])
    assert only_ttft.exit_code == 2 and "tbt" in only_ttft.output.lower()
