"""`genrl demo`: what the page computes (DemoBackend) and the page itself, driven in a real browser.

The browser test uses Debian's chromium through Playwright (.ci/run installs it). Outside CI it is
skipped when chromium or playwright is missing; in CI (CI=true) it fails instead, so it cannot pass by
not running.
"""

import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from genrl.config import load_config
from genrl.demo.backend import MAZE_SIZE, DemoBackend
from genrl.errors import CheckpointError, ConfigError

MAZE_ENV = {"id": "PointMaze_Medium-v3", "kwargs": {"continuing_task": False}, "obs_keys": ["observation", "desired_goal"],
            "render_kwargs": {"width": 240, "height": 240}}


def demo_config(tmp_path, **extra):
    tree = {
        "output_dir": str(tmp_path / "demo"),
        "image_models": [
            {"name": "diffusion", "path": "models/shapes-diffusion", "sampler": {"kind": "ddim", "num_steps": 10, "eta": 0.0}},
            {"name": "flow", "path": "models/shapes-flow", "sampler": {"kind": "flow_sde", "num_steps": 10, "noise_level": 0.0}},
            {"name": "missing", "path": str(tmp_path / "no-such-model")},
        ],
        "policies": [
            {"name": "maze teacher", "path": "models/policy-pointmaze-medium", "env": MAZE_ENV,
             "sampler": {"kind": "ddim", "num_steps": 10, "eta": 0.0}},
        ],
        "max_episode_steps": 80,
        **extra,
    }
    from genrl.config import DemoConfig

    return DemoConfig.model_validate(tree)


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    return DemoBackend(demo_config(tmp_path_factory.mktemp("demo")))


def free_cells_path(backend) -> list[tuple[float, float]]:
    """Maze coordinates of a sketch through free cells, from the ball's start of episode 3 toward its goal
    (the same cells the shipped maze has: rows and columns of PointMaze-Medium)."""
    from genrl.guidance.maze_picture import load_maze

    maze = load_maze(backend._env_config("maze teacher"))
    cells = [(2, 5), (2, 4), (3, 4), (3, 2), (4, 2), (4, 1), (6, 1)]
    return [tuple(float(v) for v in maze.cell_rowcol_to_xy(np.array(cell))) for cell in cells]


def test_samples_of_several_models_share_the_seed_and_differ_across_seeds(backend):
    first = backend.sample(["diffusion", "flow"], "a red circle at the center", seed=0, count=2)
    again = backend.sample(["diffusion"], "a red circle at the center", seed=0, count=2)
    other = backend.sample(["diffusion"], "a red circle at the center", seed=1, count=2)
    assert [s.model for s in first] == ["diffusion", "diffusion", "flow", "flow"]
    assert first[0].image.size == (256, 256)  # 32 x 32 samples shown 8x larger
    assert set(first[0].scores) == {"shapes_alignment", "jpeg_compressibility"}
    pixels = lambda sample: np.asarray(sample.image)
    assert np.array_equal(pixels(first[0]), pixels(again[0]))  # same seed, same picture
    assert not np.array_equal(pixels(first[0]), pixels(other[0]))
    assert "shapes_alignment" in first[0].caption


def test_bad_page_input_is_a_one_line_error(backend):
    with pytest.raises(ConfigError, match="prompt is empty"):
        backend.sample(["diffusion"], "  ", seed=0)
    with pytest.raises(ConfigError, match="prompt 'a red blob'"):
        backend.sample(["diffusion"], "a red blob", seed=0, count=1)
    with pytest.raises(CheckpointError, match="no-such-model.*does not exist"):
        backend.sample(["missing"], "a red circle at the center", seed=0)
    with pytest.raises(ConfigError, match="needs a flow model"):
        backend.sample(["diffusion"], "a red circle at the center", seed=0, kind="flow_sde")
    with pytest.raises(ConfigError, match="between 1 and 8"):
        backend.sample(["diffusion"], "a red circle at the center", seed=0, count=9)
    with pytest.raises(ConfigError, match="guidance scale must be a finite"):
        backend.sample(["diffusion"], "a red circle at the center", seed=0, guidance_scale=float("nan"))
    from genrl.guidance.maze_picture import load_maze

    wall = tuple(load_maze(backend._env_config("maze teacher")).cell_rowcol_to_xy(np.array([0, 0])))  # the outer wall
    with pytest.raises(ConfigError, match="inside a wall"):
        backend.run_episode("maze teacher", 3, sketch=[*free_cells_path(backend)[:2], wall])


def test_a_click_on_the_maze_picture_lands_where_it_was_drawn(backend):
    from genrl.guidance.maze_picture import MazeFrame, load_maze

    frame = MazeFrame(load_maze(backend._env_config("maze teacher")), MAZE_SIZE)
    for point in free_cells_path(backend):
        assert np.allclose(backend.click_to_point("maze teacher", frame.pixel(point)), point, atol=1e-3)
    picture = backend.maze_picture("maze teacher", 3, free_cells_path(backend))
    assert picture.size == (MAZE_SIZE, MAZE_SIZE)


def test_an_episode_reports_success_latency_and_a_video_and_steering_follows_the_sketch(backend):
    plain = backend.run_episode("maze teacher", 3)
    assert plain.video.is_file() and plain.video.stat().st_size > 0
    assert plain.num_chunks >= 1 and plain.chunk_ms_median > 0 and plain.length <= 80
    assert "latency per chunk" in plain.text
    steered = backend.run_episode("maze teacher", 3, sketch=free_cells_path(backend), method="guided", scale=1000.0)
    assert steered.picture.is_file()
    assert "distance to the sketch" in steered.text
    with pytest.raises(ConfigError, match="unknown steering method"):
        backend.run_episode("maze teacher", 3, sketch=free_cells_path(backend), method="magic")
    with pytest.raises(ConfigError, match="steering: .*scale"):
        backend.run_episode("maze teacher", 3, sketch=free_cells_path(backend), scale=float("nan"))


def test_the_demo_command_rejects_a_config_with_nothing_to_show(tmp_path, capsys):
    (tmp_path / "empty.yaml").write_text("output_dir: x\n")
    assert run_cli("demo", str(tmp_path / "empty.yaml")) == 2
    assert "at least one entry" in capsys.readouterr().err
    assert load_config("demo", "configs/demo/shipped_models.yaml").host == "127.0.0.1"


def test_genrl_demo_serves_the_page_on_localhost_until_interrupted(tmp_path):
    """The command a user runs: it binds 127.0.0.1, saves its resolved config, serves the page, and
    stops cleanly on Ctrl+C."""
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "genrl", "demo", "configs/demo/shipped_models.yaml", f"port={port}",
                                f"output_dir={tmp_path / 'demo'}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    try:
        deadline, lines = time.time() + 120, []
        while time.time() < deadline:
            line = process.stdout.readline()
            lines.append(line)
            if line.startswith("genrl demo on "):
                break
            assert process.poll() is None, "".join(lines)[-3000:]
        url = line.split()[3]
        assert url == f"http://127.0.0.1:{port}/"
        assert "genrl demo" in urllib.request.urlopen(url, timeout=30).read().decode()
        assert (tmp_path / "demo" / "config.yaml").is_file()
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output[-3000:]


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_page_in_a_real_browser(tmp_path):
    if not os.environ.get("CI"):
        pytest.importorskip("playwright.sync_api")
    # in CI (the dev extra installs it) an ImportError fails the test
    from playwright.sync_api import TimeoutError as playwright_timeout
    from playwright.sync_api import sync_playwright
    browser_path = _chromium()
    if browser_path is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install chromium for the demo's browser test (.ci/run does: apt-get install chromium)")
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    from genrl.demo.app import launch

    backend = DemoBackend(demo_config(tmp_path, port=_free_port()))
    demo, url = launch(backend)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    assert url.startswith("http://127.0.0.1:")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=browser_path,
                                        args=["--no-sandbox", "--headless=new", "--disable-gpu", "--disable-dev-shm-usage"])
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(url)
            page.get_by_label("prompt").fill("a blue square at the top left")

            def generate(seed: int) -> list[bytes]:
                page.locator("#image-seed input").fill(str(seed))
                page.locator("#generate").click()
                page.wait_for_function(f"document.querySelector('#image-status')?.innerText.includes('seed {seed}')",
                                       timeout=120_000)
                page.wait_for_function("(() => { const images = [...document.querySelectorAll('#samples img')];"
                                       " return images.length > 0 && images.every(i => i.complete && i.naturalWidth > 0); })()",
                                       timeout=60_000)
                images = page.locator("#samples img")
                sizes = images.evaluate_all("els => els.map(e => [e.naturalWidth, e.naturalHeight])")
                assert sizes and all(size == [256, 256] for size in sizes), sizes
                return [page.request.get(src).body() for src in images.evaluate_all("els => els.map(e => e.src)")]

            seed0 = generate(0)
            assert len(seed0) == 8  # 4 samples from each of the two models picked by default
            page.screenshot(path=str(shots / "images_seed0.png"), full_page=True)
            assert "shapes_alignment" in page.locator("#samples").inner_text()  # each sample's rewards
            seed1 = generate(1)
            assert seed0[0] != seed1[0]  # another seed, another sample
            # a missing model directory: a message in the page, not a traceback
            page.get_by_label("missing").check()
            page.locator("#generate").click()
            page.wait_for_function("document.querySelector('#image-status')?.innerText.includes('does not exist')",
                                   timeout=60_000)
            assert "Traceback" not in page.content()
            page.screenshot(path=str(shots / "missing_model.png"), full_page=True)

            # policies: an episode with its video, then a sketch clicked on the maze and the steered episode
            page.get_by_role("tab", name="Policies").click()
            page.locator("#run-episode").click()
            page.wait_for_function("document.querySelector('#episode-status')?.innerText.includes('latency per chunk')",
                                   timeout=120_000)
            assert page.locator("#rollout-video video").get_attribute("src")
            page.screenshot(path=str(shots / "episode.png"), full_page=True)

            from genrl.guidance.maze_picture import MazeFrame, load_maze

            frame = MazeFrame(load_maze(backend._env_config("maze teacher")), MAZE_SIZE)
            maze = page.locator("#maze img")
            page.locator("#episode-seed input").fill("3")  # the episode the sketch was drawn for (a new seed clears it)
            page.locator("#episode-seed input").press("Enter")
            page.wait_for_timeout(1000)
            for count, point in enumerate(free_cells_path(backend), start=1):
                box = maze.bounding_box()
                scale = min(box["width"], box["height"]) / MAZE_SIZE  # the picture is fitted inside its box, centred
                x, y = frame.pixel(point)
                maze.click(position={"x": (box["width"] - MAZE_SIZE * scale) / 2 + x * scale,
                                     "y": (box["height"] - MAZE_SIZE * scale) / 2 + y * scale})
                page.wait_for_function(f"document.querySelector('#episode-status')?.innerText.includes('sketch: {count} points')",
                                       timeout=30_000)
            page.locator("#run-episode").click()
            try:
                page.wait_for_function("document.querySelector('#episode-status')?.innerText.includes('distance to the sketch')",
                                       timeout=180_000)
            except playwright_timeout:
                page.screenshot(path=str(shots / "failure.png"), full_page=True)
                raise AssertionError(page.locator("#episode-status").inner_text()) from None
            assert page.locator("#steered-picture img").get_attribute("src")
            page.screenshot(path=str(shots / "steered.png"), full_page=True)
            browser.close()
    finally:
        demo.close()
    assert sorted(path.name for path in shots.iterdir()) == ["episode.png", "images_seed0.png", "missing_model.png", "steered.png"]
    keep = os.environ.get("GENRL_DEMO_SCREENSHOTS")  # a folder to keep the screenshots in (docs, reviews)
    if keep:
        shutil.copytree(shots, Path(keep), dirs_exist_ok=True)
