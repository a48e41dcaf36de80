"""Tests of report.html: its content, and how headless Chromium loads it.

The browser tests drive Chromium through the DevTools protocol over a pipe
(`--remote-debugging-pipe`), not a socket. Chromium's own stderr log is not enough for
the checks: with `--enable-logging=stderr` it prints console messages without their
level, and it prints nothing for an image that fails to load. The protocol reports
both: `Runtime.consoleAPICalled` with the level, `Network.loadingFailed` and a
`Log.entryAdded` error for the failed image.

Run the same check by hand on a finished workdir:

    python tests/test_html_report.py WORKDIR [SCREENSHOT.png]
"""

from __future__ import annotations

import base64
import dataclasses
import html.parser
import io
import json
import os
import pathlib
import select
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse

import numpy as np
import pytest

from defuse_jax import html_report

# Debian's package; other distributions name the executable chromium-browser.
_EXECUTABLES = ("chromium", "chromium-browser")
_WIDTH, _HEIGHT = 1280, 4000


# ---------------------------------------------------------------------------------------
# A synthetic workdir: report.json-like dict plus small PNG files.


def _write_png(path: pathlib.Path, seed: int) -> None:
    import matplotlib.image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).uniform(size=(24, 40, 3))
    matplotlib.image.imsave(path, pixels)


def _synthetic_report() -> dict:
    """A report with every optional section, in JSON types like report.json."""
    regions = []
    decisions = ["fix", "not_a_bug", "unsure"]
    for region in range(3):
        regions.append(
            {
                "region": region,
                "row": region,
                "component": region,
                "weight": 0.5 - 0.1 * region,
                "member_count": 40 - region,
                "source_label": region,
                "source_purity": 0.9,
                "predicted_label": 2 - region,
                "predicted_purity": 0.8,
                "sample_error_rate": 0.625,
                "annotated_label": region if region != 1 else -1,
                "decision": decisions[region],
                "label_source": "file",
                "corrected": region == 0,
                "novelty": {"median_distance": 0.31, "ratio": 2.5},
                "realism": {"median_error": 0.0123, "ratio": 0.8},
                "grid": f"regions/region_{region:02d}.png",
            }
        )
    per_region = {"0": 0.25}
    return {
        "classifier_test_accuracy": 0.9612,
        "search": {
            "split": "train",
            "split_size": 400,
            "note": "Only source images that the classifier labels correctly.",
            "misclassified_skipped": 12,
            "bad_reconstruction_skipped": 30,
            "searched_images": 128,
            "num_flips": 77,
            "images_with_flips": 50,
            "fraction_images_with_flips": 50 / 128,
        },
        "flip_radius": {"scales": [0.1, 1.0]},
        "notes": ["A note with <angle brackets> & an ampersand."],
        "distill": {"num_regions": 3, "truncation": 10},
        "run_id": "abc123",
        "annotation": {
            "annotator": "file",
            "labels": [0, -1, 2],
            "accepted": 1,
            "rejected": 2,
            "decisions": {"fix": 1, "not_a_bug": 1, "unsure": 1},
            "details": {"rows_skipped": 2, "file": "filled.csv"},
        },
        "correction": {
            "lam": 0.1,
            "num_steps": 300,
            "region_test_size": 200,
            "before": {
                "test_accuracy": 0.9612,
                "region_test_accuracy": 0.25,
                "region_test_accuracy_per_region": per_region,
            },
            "defuse": {
                "test_accuracy": 0.9577,
                "region_test_accuracy": 0.875,
                "region_test_accuracy_per_region": {"0": 0.875},
            },
            "finetune_on_flips_baseline": {
                "test_accuracy": 0.9501,
                "region_test_accuracy": 0.5,
                "region_test_accuracy_per_region": {"0": 0.5},
            },
        },
        "search_again": {
            "num_flips": 20,
            "searched_images": 128,
            "closed": 1,
            "persisting": 0,
            "regions": [
                {
                    "region": 0,
                    "status": "closed",
                    "error_rate_before": 0.625,
                    "error_rate_after": 0.1,
                    "matched_region": None,
                    "distance": None,
                },
                {
                    "region": 1,
                    "status": "not_corrected",
                    "error_rate_before": 0.6,
                    "error_rate_after": 0.6,
                    "matched_region": 1,
                    "distance": 0.2,
                },
            ],
            "new_regions": [
                {
                    "region": 7,
                    "source_label": 1,
                    "predicted_label": 0,
                    "weight": 0.2,
                    "member_count": 9,
                    "sample_error_rate": 0.5,
                    "grid": "search_again/region_07.png",
                }
            ],
        },
        "quality": {
            "novelty": "Novelty definition.",
            "realism": "Realism definition.",
            "train_images": 400,
            "misclassified_train_images": 12,
            "typical_nearest_distance": 0.12,
            "test_images": 100,
            "test_reconstruction_error_median": 0.015,
            "notes": [],
        },
        "latent_map": {
            "path": "latent_map.png",
            "method": "PCA",
            "train_points": 200,
            "flip_points": 77,
            "explained_variance_ratio": [0.4, 0.2],
        },
        "regions": regions,
        "seed": 0,
        "dataset": {
            "name": "synthetic",
            "num_train": 400,
            "num_test": 100,
            "num_classes": 3,
            "class_names": ["zero", "one <b>&", "two"],
            "image_shape": [28, 28, 1],
        },
        "stage_seconds": {"report": 1.5},
        "package_versions": {"python": "3.11", "jax": "0.0"},
    }


def _image_paths(report: dict) -> list[str]:
    paths = ["flips.png", "flip_radius.png", report["latent_map"]["path"]]
    paths += [record["grid"] for record in report["regions"]]
    paths += [record["grid"] for record in report["search_again"]["new_regions"]]
    return paths


def _write_workdir(folder: pathlib.Path, report: dict) -> pathlib.Path:
    """Write the report's PNG files and report.html to `folder`; return the page."""
    for seed, path in enumerate(_image_paths(report)):
        _write_png(folder / path, seed)
    page = folder / "report.html"
    page.write_text(html_report.render_report(report, str(folder)), encoding="utf-8")
    return page


class _Tags(html.parser.HTMLParser):
    """Collects the start tags of a page with their attributes."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def sources(self) -> list[str]:
        return [attrs["src"] for tag, attrs in self.tags if tag == "img"]


def _parse(page: str) -> _Tags:
    tags = _Tags()
    tags.feed(page)
    return tags


# ---------------------------------------------------------------------------------------
# Content of the page, without a browser.


def test_page_links_every_image(tmp_path):
    report = _synthetic_report()
    page = _write_workdir(tmp_path, report).read_text(encoding="utf-8")
    sources = _parse(page).sources()
    assert sorted(sources) == sorted(_image_paths(report))
    for source in sources:
        assert not urllib.parse.urlsplit(source).scheme, source
        assert (tmp_path / urllib.parse.unquote(source)).is_file(), source


def test_page_loads_nothing_external(tmp_path):
    page = _write_workdir(tmp_path, _synthetic_report()).read_text(encoding="utf-8")
    tags = _parse(page)
    assert "script" not in [tag for tag, _ in tags.tags]
    for tag, attrs in tags.tags:
        for name in ("src", "href"):
            if name in attrs:
                scheme = urllib.parse.urlsplit(attrs[name]).scheme
                assert scheme in ("", "data"), (tag, attrs)


def test_page_notes_missing_image(tmp_path):
    report = _synthetic_report()
    _write_workdir(tmp_path, report)
    (tmp_path / "regions" / "region_01.png").unlink()
    page = html_report.render_report(report, str(tmp_path))
    assert "regions/region_01.png" not in _parse(page).sources()
    assert "Image regions/region_01.png is missing from the workdir" in page


def test_page_rejects_image_outside_workdir(tmp_path):
    report = _synthetic_report()
    _write_workdir(tmp_path, report)
    _write_png(tmp_path.parent / "outside.png", 0)
    report["regions"][0]["grid"] = "../outside.png"
    page = html_report.render_report(report, str(tmp_path))
    assert "../outside.png" not in _parse(page).sources()
    assert "is not a PNG file inside the workdir" in page


def test_page_escapes_text(tmp_path):
    page = _write_workdir(tmp_path, _synthetic_report()).read_text(encoding="utf-8")
    assert "one <b>&" not in page
    assert "one &lt;b&gt;&amp;" in page
    assert "&lt;angle brackets&gt; &amp; an ampersand" in page


def test_page_lists_lambda_candidates(tmp_path):
    report = _synthetic_report()
    candidates = [
        {"lam": 0.05, "validation_accuracy": 0.96, "validation_region_accuracy": 0.8},
        {"lam": 0.2, "validation_accuracy": 0.95, "validation_region_accuracy": 0.9},
    ]
    report["correction"].update(
        lam=0.05,
        baseline_lam=0.2,
        lambda_selection={
            "grid": [0.05, 0.2],
            "max_validation_drop": 0.005,
            "rule": "The rule.",
            "validation_size": 500,
            "validation_region_size": 200,
            "before": {"validation_accuracy": 0.96, "validation_region_accuracy": 0.4},
            "defuse": {"lam": 0.05, "candidates": candidates},
            "baseline": {"lam": 0.2, "candidates": candidates},
            "baseline_matched": {
                "lam": 0.2,
                "target_region_accuracy": 0.95,
                "reaches_target": False,
            },
        },
        baseline_matched_lam=0.2,
        finetune_on_flips_matched={
            "test_accuracy": 0.9402,
            "region_test_accuracy": 0.625,
            "region_test_accuracy_per_region": {"0": 0.625},
        },
    )
    page = _write_workdir(tmp_path, report).read_text(encoding="utf-8")
    assert "Defuse (lambda = 0.05)" in page
    assert "Fine-tuned on flips (baseline, lambda = 0.2)" in page
    assert (
        "<tr><td>Fine-tuned on flips at Defuse&#x27;s fix (baseline, lambda = 0.2)"
        '</td><td class="number">94.0%</td><td class="number">62.5%</td></tr>'
    ) in page
    assert "baseline at Defuse&#x27;s fix 62.5%" in page
    assert (
        "At Defuse&#x27;s fix (95.0% validation region accuracy) the baseline takes "
        "0.2, the closest it gets."
    ) in page
    assert "on 500 validation images and 200 validation samples" in page
    assert "Defuse chose 0.05 (0.05: 96.0% / 80.0%, 0.2: 95.0% / 90.0%)." in page
    assert "Baseline chose 0.2" in page


def test_page_shows_accuracy_table(tmp_path):
    page = _write_workdir(tmp_path, _synthetic_report()).read_text(encoding="utf-8")
    for title, test_accuracy, region_accuracy in (
        ("Before correction", "96.1%", "25.0%"),
        ("Defuse (lambda = 0.1)", "95.8%", "87.5%"),
        # Without baseline_lam (reports from before lambda selection) the baseline
        # used the same lambda.
        ("Fine-tuned on flips (baseline, lambda = 0.1)", "95.0%", "50.0%"),
    ):
        row = (
            f'<tr><td>{title}</td><td class="number">{test_accuracy}</td>'
            f'<td class="number">{region_accuracy}</td></tr>'
        )
        assert row in page


def test_page_shows_region_facts(tmp_path):
    page = _write_workdir(tmp_path, _synthetic_report()).read_text(encoding="utf-8")
    assert 'id="region-2"' in page
    assert "two → zero" in page
    assert "ratio 2.50 (median 0.310)" in page
    assert "ratio 0.80 (median 0.01230)" in page
    assert "before 25.0%, Defuse 87.5%, baseline 50.0%" in page
    for decision in ("fix", "not_a_bug", "unsure"):
        assert f">{decision}</span>" in page
    assert "label zero from file" in page
    assert "no label from file" in page


def test_page_shows_search_again(tmp_path):
    page = _write_workdir(tmp_path, _synthetic_report()).read_text(encoding="utf-8")
    assert "after search again: closed" in page
    assert "after search again: not_corrected" in page
    assert "New regions after correction (1)" in page
    assert 'id="new-region-7"' in page
    assert "Rows skipped" not in page  # Nested counts stay in their own row.
    assert "rows_skipped 2" in page


def test_page_without_optional_sections(tmp_path):
    report = _synthetic_report()
    for key in ("correction", "search_again", "annotation", "latent_map", "quality"):
        del report[key]
    report["regions"] = []
    report["notes"] = ["No regions: identification found 1 flip."]
    page = html_report.render_report(report, str(tmp_path))
    assert "No correction ran in this run" in page
    assert "No regions." in page
    assert "No regions: identification found 1 flip." in page
    assert "Search again after correction" not in page
    # The fixed plots are named in the page only as notes, because none exist here.
    assert _parse(page).sources() == []


# ---------------------------------------------------------------------------------------
# Headless Chromium.


@dataclasses.dataclass
class PageCheck:
    """What Chromium reported while loading one page.

    problems: Console errors, uncaught exceptions, failed loads and broken images.
    images: Number of <img> elements on the page.
    screenshot: PNG of the first 1280 x 4000 pixels.
    """

    problems: list[str]
    images: int
    screenshot: pathlib.Path


_NO_CHROMIUM = (
    "Chromium is not installed, so report.html is not checked in a browser; "
    "install the Debian package chromium (apt-get install chromium)."
)


def _find_chromium() -> str | None:
    for name in _EXECUTABLES:
        path = shutil.which(name)
        if path:
            return path
    return None


# Runs in a child Python before Chromium: moves the two pipe ends to the descriptors
# 3 (commands to Chromium) and 4 (replies and events) that --remote-debugging-pipe
# uses. Both are first copied above 10, so neither can overwrite the other.
_PIPE_SETUP = """
import fcntl, os, sys
read_end = fcntl.fcntl(int(sys.argv[1]), fcntl.F_DUPFD, 10)
write_end = fcntl.fcntl(int(sys.argv[2]), fcntl.F_DUPFD, 10)
os.dup2(read_end, 3)
os.dup2(write_end, 4)
os.close(read_end)
os.close(write_end)
os.execv(sys.argv[3], sys.argv[3:])
"""

_BROKEN_IMAGES = (
    "Array.from(document.images)"
    ".filter(image => !image.complete || image.naturalWidth === 0)"
    ".map(image => image.getAttribute('src'))"
)


class _Browser:
    """Headless Chromium driven through the DevTools protocol on a pipe."""

    def __init__(self, executable: str, profile: str, timeout: float = 30.0):
        self.timeout = timeout
        commands_read, self._commands = os.pipe()
        self._replies, replies_write = os.pipe()
        flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            f"--window-size={_WIDTH},{_HEIGHT}",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-default-apps",
            # No host name resolves, so a page that needs the network fails its check
            # instead of loading from it.
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "about:blank",
        ]
        self.log = open(os.path.join(profile, "chromium.log"), "w+b")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _PIPE_SETUP,
                str(commands_read),
                str(replies_write),
                executable,
                *flags,
            ],
            pass_fds=(commands_read, replies_write),
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
        )
        os.close(commands_read)
        os.close(replies_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    def close(self) -> None:
        try:
            if self.process.poll() is None:
                self.send("Browser.close")
                self.process.wait(timeout=self.timeout)
        except (OSError, TimeoutError, subprocess.TimeoutExpired, EOFError):
            self.process.kill()
            self.process.wait()
        finally:
            os.close(self._commands)
            os.close(self._replies)
            self.log.close()

    def _receive(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"Chromium sent nothing for {self.timeout} s; its log:\n"
                    + self.log_tail()
                )
            ready, _, _ = select.select([self._replies], [], [], left)
            if ready:
                chunk = os.read(self._replies, 1 << 16)
                if not chunk:
                    raise EOFError(
                        "Chromium closed its DevTools pipe; its log:\n"
                        + self.log_tail()
                    )
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def log_tail(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-3000:]

    def send(self, method: str, params: dict | None = None, session: str = "") -> dict:
        """Send one command and return its result; events read meanwhile are kept."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"DevTools {method} failed: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method: str, session: str) -> None:
        deadline = time.monotonic() + self.timeout
        while not any(
            event.get("method") == method and event.get("sessionId") == session
            for event in self.events
        ):
            self.events.append(self._receive(deadline))

    def check(self, page: pathlib.Path, screenshot: pathlib.Path) -> PageCheck:
        """Load `page` from file://, screenshot it, and collect what went wrong."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send(
            "Target.attachToTarget", {"targetId": target, "flatten": True}
        )["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=session)
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {
                "width": _WIDTH,
                "height": _HEIGHT,
                "deviceScaleFactor": 1,
                "mobile": False,
            },
            session=session,
        )

        navigation = self.send(
            "Page.navigate", {"url": page.resolve().as_uri()}, session=session
        )
        problems = []
        if navigation.get("errorText"):
            problems.append(f"navigation failed: {navigation['errorText']}")
        else:
            self.wait_for("Page.loadEventFired", session)

        broken = self.send(
            "Runtime.evaluate",
            {"expression": _BROKEN_IMAGES, "returnByValue": True},
            session=session,
        )["result"]["value"]
        problems += [f"broken image: {source}" for source in broken]
        images = self.send(
            "Runtime.evaluate",
            {"expression": "document.images.length", "returnByValue": True},
            session=session,
        )["result"]["value"]

        data = self.send("Page.captureScreenshot", {"format": "png"}, session=session)
        screenshot.write_bytes(base64.b64decode(data["data"]))
        self.send("Target.closeTarget", {"targetId": target})

        problems += _event_problems(
            [event for event in self.events if event.get("sessionId") == session]
        )
        return PageCheck(problems=problems, images=images, screenshot=screenshot)


def _event_problems(events: list[dict]) -> list[str]:
    """Return the console errors, exceptions and failed loads among DevTools events."""
    problems = []
    urls = {}
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Network.requestWillBeSent":
            urls[params["requestId"]] = params["request"]["url"]
        elif method == "Network.loadingFailed":
            url = urls.get(params["requestId"], params["requestId"])
            problems.append(f"failed load: {url} ({params.get('errorText')})")
        elif method == "Runtime.consoleAPICalled" and params["type"] in (
            "error",
            "assert",
        ):
            values = [
                str(arg.get("value", arg.get("description"))) for arg in params["args"]
            ]
            problems.append(f"console {params['type']}: {' '.join(values)}")
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            text = details.get("exception", {}).get("description", details["text"])
            problems.append(f"uncaught exception: {text}")
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            entry = params["entry"]
            problems.append(f"log error: {entry['text']} {entry.get('url', '')}")
    return problems


def check_pages(
    pages: list[tuple[pathlib.Path, pathlib.Path]], profile: str
) -> list[PageCheck]:
    """Check (page, screenshot path) pairs in one Chromium process."""
    executable = _find_chromium()
    if executable is None:
        pytest.skip(_NO_CHROMIUM)
    browser = _Browser(executable, profile)
    try:
        return [browser.check(page, screenshot) for page, screenshot in pages]
    finally:
        browser.close()


def _screenshot_problems(path: pathlib.Path) -> list[str]:
    """Return why the screenshot is unusable: missing, the wrong size, or blank."""
    from PIL import Image

    if not path.is_file():
        return [f"no screenshot at {path}"]
    with Image.open(io.BytesIO(path.read_bytes())) as image:
        pixels = np.asarray(image.convert("RGB"), np.float32) / 255.0
    if pixels.shape[:2] != (_HEIGHT, _WIDTH):
        return [f"screenshot is {pixels.shape[1]} x {pixels.shape[0]} pixels"]
    # Blank: nearly every pixel has the background colour of the top-left corner.
    differs = np.any(np.abs(pixels - pixels[0, 0]) > 0.1, axis=-1)
    if differs.mean() < 0.01:
        return [f"screenshot is blank ({differs.mean():.2%} of pixels differ)"]
    return []


@pytest.fixture(scope="module")
def synthetic_checks(tmp_path_factory):
    """One Chromium run over the synthetic page and its two broken copies."""
    root = tmp_path_factory.mktemp("html_report")
    report = _synthetic_report()
    good = _write_workdir(root / "good", report)

    # Negative controls: a referenced PNG deleted after rendering, and a script that
    # logs a console error.
    shutil.copytree(root / "good", root / "missing")
    (root / "missing" / "regions" / "region_02.png").unlink()
    shutil.copytree(root / "good", root / "console")
    console = root / "console" / "report.html"
    console.write_text(
        console.read_text(encoding="utf-8").replace(
            "</body>", '<script>console.error("x")</script></body>'
        ),
        encoding="utf-8",
    )
    pages = [
        (good, root / "good.png"),
        (root / "missing" / "report.html", root / "missing.png"),
        (console, root / "console.png"),
    ]
    profile = tempfile.mkdtemp(dir=root)
    good_check, missing_check, console_check = check_pages(pages, profile)
    return {
        "good": good_check,
        "missing": missing_check,
        "console": console_check,
        "image_count": len(_image_paths(report)),
    }


def test_browser_loads_synthetic_page(synthetic_checks):
    check = synthetic_checks["good"]
    assert check.problems == []
    assert check.images == synthetic_checks["image_count"]
    assert _screenshot_problems(check.screenshot) == []


def test_browser_check_finds_missing_image(synthetic_checks):
    problems = synthetic_checks["missing"].problems
    assert any(
        problem.startswith("broken image: regions/region_02.png")
        for problem in problems
    ), problems
    assert any(
        "failed load" in problem and "region_02.png" in problem for problem in problems
    ), problems


def test_browser_check_finds_console_error(synthetic_checks):
    problems = synthetic_checks["console"].problems
    assert "console error: x" in problems


def test_screenshot_check_finds_blank_image(tmp_path):
    from PIL import Image

    blank = tmp_path / "blank.png"
    Image.new("RGB", (_WIDTH, _HEIGHT), (245, 246, 248)).save(blank)
    assert "blank" in _screenshot_problems(blank)[0]
    assert "no screenshot" in _screenshot_problems(tmp_path / "absent.png")[0]


def _copy_report_folder(source: str, target: pathlib.Path) -> None:
    """Copy the files report.html needs, leaving checkpoints and arrays behind."""
    shutil.copytree(
        source,
        target,
        ignore=shutil.ignore_patterns(
            "checkpoints", "metrics", "progress", "*.npz", "*.json"
        ),
    )


def test_browser_loads_finished_run_report(finished_run, tmp_path):
    workdir, _ = finished_run
    with open(os.path.join(workdir, "report.json"), encoding="utf-8") as file:
        report = json.load(file)
    folder = tmp_path / "run"
    _copy_report_folder(workdir, folder)
    page = folder / "report.html"
    assert page.is_file(), "the run wrote no report.html"
    text = page.read_text(encoding="utf-8")
    for record in report["regions"]:
        assert f'src="{record["grid"]}"' in text

    profile = tempfile.mkdtemp(dir=tmp_path)
    (check,) = check_pages([(page, tmp_path / "screenshot.png")], profile)
    assert check.problems == []
    assert check.images == len(_parse(text).sources())
    assert check.images >= len(report["regions"]) + 1
    assert _screenshot_problems(check.screenshot) == []


def main(argv: list[str]) -> int:
    """Check WORKDIR/report.html in Chromium; print the problems, return 1 if any."""
    if len(argv) not in (2, 3):
        print(__doc__)
        return 2
    if _find_chromium() is None:
        print(_NO_CHROMIUM)
        return 2
    page = pathlib.Path(argv[1]) / "report.html"
    # By default the screenshot goes to the temporary folder, never into the repo.
    default = pathlib.Path(tempfile.gettempdir()) / "defuse_report_screenshot.png"
    screenshot = pathlib.Path(argv[2]) if len(argv) == 3 else default
    with tempfile.TemporaryDirectory() as profile:
        (check,) = check_pages([(page, screenshot.resolve())], profile)
    problems = check.problems + _screenshot_problems(screenshot)
    print(f"{page}: {check.images} images, screenshot {screenshot}")
    for problem in problems:
        print(f"problem: {problem}")
    print("no problems" if not problems else f"{len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
