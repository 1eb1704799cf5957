"""The web playground (``GET /`` of ``genloom serve``) in a real headless Chromium driven by Playwright.

A real ``genloom serve`` process over loopback serves three tiny random-weight models (a VAE, a conditional GAN,
a char LM); the browser loads the page, sees sample grids as images, watches LM text stream in, and sees the
metrics panel update. A screenshot is saved to ``test-artifacts/playground.png`` (or $GENLOOM_TEST_ARTIFACTS).
Needs Debian's chromium at /usr/bin/chromium (``apt-get install -y chromium``; CI's setup installs it).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import torch

from genloom.export import save
from genloom.models.gan import GAN, GANConfig
from genloom.models.transformer import LMConfig, TransformerLM
from genloom.models.vae import VAE, VAEConfig
from serve_proc import Proc

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
STATIC = Path(__file__).resolve().parents[2] / "src" / "genloom" / "serve" / "playground"
ARTIFACTS = Path(os.environ.get("GENLOOM_TEST_ARTIFACTS") or Path(__file__).resolve().parents[2] / "test-artifacts")
VOCAB = list("\n !',.:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def make_models(d: Path) -> list[str]:
    torch.manual_seed(0)
    vae = save(VAE(VAEConfig(enc_hidden=(64,), dec_hidden=(64,), latent=8)), d / "vae.safetensors",
               provenance={"dataset": "fashion-mnist", "nelbo": 250.5})
    gan = save(GAN(GANConfig(arch="mlp", dim=32, latent=16, num_classes=10, ema_kimg=0)), d / "gan.safetensors",
               provenance={"dataset": "fashion-mnist", "fid": 42.0})
    lm_cfg = LMConfig(vocab_size=len(VOCAB), block_size=32, n_layer=2, n_head=2, n_embd=32)
    lm = save(TransformerLM(lm_cfg, VOCAB), d / "lm.safetensors", provenance={"dataset": "tiny.txt", "bpc": 4.2})
    return [f"vae={vae}", f"gan={gan}", f"lm={lm}"]


def Serve(models: list[str], log: Path) -> Proc:
    """The playground's server: no admin token, a short batching wait."""
    return Proc([*models, "--max-wait-ms", "5"], log=log, admin_token=None)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    d = tmp_path_factory.mktemp("playground")
    proc = Serve(make_models(d), d / "serve.log")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: the playground test needs Debian's chromium; "
                    f"run `apt-get install -y chromium` (scripts/setup.sh does with GENLOOM_BROWSER_TESTS=1)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is missing: run `.venv/bin/pip install -e '.[test]'` "
                    "(never `playwright install`: the test uses /usr/bin/chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=60_000)
        yield b
        b.close()


def test_class_names_come_from_the_dataset_or_fall_back_to_numbers() -> None:
    from genloom.serve.playground import class_names

    assert class_names("fashion-mnist", 10) == FASHION
    assert class_names("mnist", 10) == [str(i) for i in range(10)]
    assert class_names("fashion-mnist", 3) == ["0", "1", "2"]  # a 3-class model was not trained on its classes
    assert class_names(None, 2) == ["0", "1"]


@pytest.mark.timeout(180)  # includes starting the server (the module fixture); ~15 s on an idle machine
def test_assets_are_served_locally_without_any_cdn(server: Serve) -> None:
    page = httpx.get(server.url + "/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    refs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert "/playground/app.js" in refs and "/playground/style.css" in refs
    for ref in refs:
        assert not ref.startswith(("http:", "https:", "//")), f"external asset {ref}"
        if ref.startswith("/playground/"):
            assert httpx.get(server.url + ref, timeout=10).status_code == 200, ref
    for f in STATIC.iterdir():  # nothing the page loads may come from outside this server
        assert not re.search(r"https?://|//cdn|@import", f.read_text()), f"{f.name} refers to an outside URL"
    assert httpx.get(server.url + "/playground/nope.js", timeout=10).status_code == 404


@pytest.mark.timeout(60)
def test_stats_snapshot_counts_what_the_server_did(server: Serve) -> None:
    before = httpx.get(server.url + "/playground/stats", timeout=10).json()
    for n in (3, 5):
        r = httpx.post(server.url + "/v1/models/vae/sample", json={"n": n, "seed": 1, "format": "npy"}, timeout=30)
        assert r.status_code == 200, r.text
    bad = httpx.post(server.url + "/v1/models/vae/sample", json={"n": 0}, timeout=30)
    assert bad.status_code == 422
    after = httpx.get(server.url + "/playground/stats", timeout=10).json()
    vae0, vae1 = before["models"]["vae"], after["models"]["vae"]
    assert vae1["requests"] - vae0["requests"] == 3 and vae1["errors"] - vae0["errors"] == 1
    assert after["requests"] - before["requests"] == 3
    assert after["latency"]["count"] - before["latency"]["count"] == 3
    # every image of the two good requests went through one forward pass: batch sizes add up to 3 + 5
    assert after["batch_size"]["sum"] - before["batch_size"]["sum"] == 8
    assert after["latency"]["le"][-1] is None and after["latency"]["counts"][-1] == after["latency"]["count"]
    assert after["t"] > before["t"] and after["ready"] is True
    info = httpx.get(server.url + "/playground/info", timeout=10).json()
    assert info["gan"]["class_names"] == FASHION and info["lm"]["vocab"] == VOCAB and info["vae"]["vocab"] is None


@pytest.mark.timeout(180)  # ~6 s on an idle machine; generous for a loaded 2-core CI box
def test_page_shows_samples_streams_text_and_live_metrics(server: Serve, browser: Any) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    # the browser logs every non-2xx fetch; the one 422 below is provoked on purpose
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "status of 422" not in m.text
            else None)
    page.set_default_timeout(45_000)
    page.goto(server.url + "/")

    # every model gets a card; VAE and GAN show a sample grid as a decoded PNG of the expected size
    cards = page.eval_on_selector_all("article.model", "els => els.map(e => [e.dataset.name, e.dataset.kind])")
    assert sorted(cards) == [["gan", "gan"], ["lm", "lm"], ["vae", "vae"]]
    for name in ("vae", "gan"):
        page.wait_for_selector(f"#model-{name} .samples[data-state=ready]")
        w, h = page.eval_on_selector(f"#model-{name} img.sample-grid", "i => [i.naturalWidth, i.naturalHeight]")
        assert (w, h) == (6 * 30 + 2, 6 * 30 + 2)  # 36 images of 28 px, 6 per row, 2 px padding
    assert "fashion-mnist" in page.inner_text("#model-vae .prov") and "42" in page.inner_text("#model-gan .prov")

    # a new seed gives a different grid
    first = page.get_attribute("#model-vae img.sample-grid", "src")
    page.fill("#model-vae .samples input.seed", "123")
    page.dispatch_event("#model-vae .samples input.seed", "change")
    page.wait_for_function("s => document.querySelector('#model-vae img.sample-grid').src !== s", arg=first)
    page.wait_for_selector("#model-vae .samples[data-state=ready]")
    assert "seed 123" in page.inner_text("#model-vae .samples figcaption")

    # the conditional GAN: one row per label, named by the dataset's classes
    page.wait_for_selector("#model-gan .labels[data-state=ready]")
    names = page.eval_on_selector_all("#model-gan .label-name", "els => els.map(e => e.textContent)")
    assert names == [f"{i} · {c}" for i, c in enumerate(FASHION)]

    # the VAE latent walk: the slider moves along the decoded path
    page.wait_for_selector("#model-vae .walk[data-state=ready]")
    page.fill("#model-vae .walk-slider", "11")
    assert "step 12/12 · t = 1.00" in page.inner_text("#model-vae .walk")

    # LM: tokens stream in; the text grows over time and ends equal to the non-streamed answer for the same seed
    page.fill("#model-lm textarea.prompt", "The ")
    page.fill("#model-lm input.lm-seed", "7")
    page.fill("#model-lm input.max-new", "200")
    page.evaluate("""() => {
        const out = document.querySelector('#model-lm .generated');
        window.__growth = [];
        new MutationObserver(() => window.__growth.push([performance.now(), out.textContent.length]))
            .observe(out, {characterData: true, subtree: true, childList: true});
    }""")
    updates0 = int(page.get_attribute("#metrics-panel", "data-updates") or 0)
    page.click("#model-lm button.primary")
    page.wait_for_selector("#model-lm .lm-output[data-state=done]", timeout=90_000)
    growth = page.evaluate("window.__growth")
    text = page.inner_text("#model-lm .generated")
    lengths = [n for _, n in growth if n > 0]
    assert len(text) == 200 and page.get_attribute("#model-lm .lm-output", "data-tokens") == "200"
    assert lengths == sorted(lengths) and len(set(lengths)) >= 5, growth[:20]
    assert lengths[0] < 100 and growth[-1][0] - growth[0][0] > 20, "the text arrived at once, not streamed"
    ref = httpx.post(server.url + "/v1/models/lm/generate", timeout=30,
                     json={"prompt": "The ", "max_new_tokens": 200, "temperature": 0.8, "seed": 7}).json()
    assert text == ref["text"]
    assert re.search(r"200 tokens · first token \d+ ms", page.inner_text("#model-lm .lm-stats"))

    # a prompt outside the vocabulary: the server's 422 message is shown, nothing hangs
    page.fill("#model-lm textarea.prompt", "Zürich")
    page.click("#model-lm button.primary")
    page.wait_for_selector("#model-lm .lm-output[data-state=error]")
    error = page.inner_text("#model-lm .error")
    assert "'ü'" in error and "vocabulary" in error  # core/requests.py names the character

    # the metrics panel keeps polling and shows what just happened
    page.wait_for_function("n => Number(document.querySelector('#metrics-panel').dataset.updates) >= n + 2",
                           arg=updates0)
    page.wait_for_function("""() => [...document.querySelectorAll('#metrics-models tr')]
        .some(tr => tr.cells[0].textContent === 'lm' && Number(tr.cells[5].textContent) >= 200)""")
    rows = page.eval_on_selector_all("#metrics-models tr", "trs => trs.map(t => t.cells[0].textContent)")
    assert sorted(rows) == ["gan", "lm", "vae"]
    p99 = page.inner_text("[data-series=p99] [data-value]")
    batch = page.inner_text("[data-series=batch] [data-value]")
    assert p99 == "–" or float(p99) > 0
    assert batch == "–" or float(batch) >= 1
    assert page.get_attribute("#server-status", "data-state") == "ready"

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.evaluate("window.scrollTo(0, 0)")
    shot = page.screenshot(path=str(ARTIFACTS / "playground.png"), full_page=True)
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"
    assert not errors, errors
    page.close()
