"""The playground's flow card in a real headless Chromium: the sample grid, one row per class and the denoising
trajectory (states and predictions, one column per step plus the sample) from a real `genloom serve`."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from test_flow_transports import tiny_flow
from serve_proc import Proc
from test_playground import ARTIFACTS, Serve, browser  # noqa: F401  (browser is a fixture)


@pytest.fixture(scope="module")
def flow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    d = tmp_path_factory.mktemp("playground_flow")
    path = tiny_flow(d / "flow.safetensors")
    proc = Serve([f"flow={path}"], d / "serve.log")
    yield proc
    proc.stop()


@pytest.mark.timeout(180)
def test_flow_card_shows_samples_labels_and_the_trajectory(flow_server: Proc, browser: Any) -> None:  # noqa: F811
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.set_default_timeout(60_000)
    page.goto(flow_server.url + "/")
    page.wait_for_selector("#model-flow .samples[data-state=ready]")
    page.wait_for_selector("#model-flow .labels[data-state=ready]")
    page.wait_for_selector("#model-flow .trajectory[data-state=ready]")
    assert "DiT 1×16" in page.inner_text("#model-flow header")
    # 3 steps (the file's default): 4 columns (3 states + the sample) × 2 rows of 28 px images, 2 px padding, ×2
    w, h = page.eval_on_selector("#model-flow canvas.traj-strip", "c => [c.width, c.height]")
    assert (w, h) == (2 * (4 * 30 + 2), 2 * (2 * 30 + 2))
    assert "3 heun steps (6 evaluations)" in page.inner_text("#model-flow .traj-caption")
    page.fill("#model-flow input.traj-steps", "5")
    page.dispatch_event("#model-flow input.traj-steps", "change")
    page.wait_for_function("() => document.querySelector('#model-flow canvas.traj-strip').width === 2 * (6 * 30 + 2)")
    page.wait_for_selector("#model-flow .trajectory[data-state=ready]")
    assert "5 heun steps" in page.inner_text("#model-flow .traj-caption")
    # a shortcut model offers its learned steps: 4 of them, one evaluation each
    page.fill("#model-flow input.traj-steps", "4")
    page.select_option("#model-flow select.traj-sampler", "shortcut")
    page.wait_for_function("() => document.querySelector('#model-flow .traj-caption').textContent"
                           ".includes('4 shortcut steps (4 evaluations)')")
    page.wait_for_selector("#model-flow .trajectory[data-state=ready]")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(Path(ARTIFACTS) / "playground-flow.png"), full_page=True)
    assert not errors, errors
    page.close()
