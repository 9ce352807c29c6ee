"""Check what a researcher sees of structpred's runs in the MLflow UI, in a real browser (issue 15).

    python experiments/ui_check.py SHOTS_DIR [--store DIR] [--reuse] [--keep-serving]

1. Builds a temporary MLflow store (sqlite) with what a researcher makes in a day: a
   ``+debug=fast`` training run, a 2-job sweep (``-m +debug=fast model.num_filters=4,8``)
   and an evaluation of the first run (``python -m structpred.evaluate model_ref=<run id>``);
   ``--reuse`` keeps a store built before in ``--store``.
2. Serves it with ``mlflow ui`` on a free loopback port.
3. Drives Chromium (``/usr/bin/chromium``, through playwright; headless, no network, no
   sandbox) over the experiment page, the runs table, a training run's metric charts,
   params and tags, the sweep's parent and the evaluation run, writes a screenshot of each
   page to SHOTS_DIR and checks the page text and DOM:

   * the experiment opens as a model-training experiment (runs table, not MLflow 3's GenAI
     traces view);
   * run names carry the model, its size and the noise, the sweep's jobs their overrides,
     and the debug runs are marked (``debug-``);
   * the training run's charts are grouped in sections ``train``, ``val``, ``solver``,
     ``adjoint`` (and the PSNR and loss curves come first);
   * its params are hyperparameters (``model.num_filters``, ...) and its paths are tags
     (``config.paths.output_dir``), not params;
   * the sweep parent shows its two children nested under it, and its summary (params
     ``sweep.model.num_filters``, ``sweep.jobs``, metric ``sweep/best_val_psnr``, tag
     ``structpred.best_run_name``);
   * the evaluation's metrics are keyed by dataset and sigma (``eval/skimage_s25/psnr``).

Exit status 0 when every check passes; otherwise each failed check is one line and the
status is 1. ``tests/test_ui_check.py`` runs it (when Chromium and playwright are there).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SWEEP_VALUES = (4, 8)


# ---------------------------------------------------------------------------- the store
def _env(root: Path) -> dict:
    env = dict(os.environ)
    for k in ("STRUCTPRED_MLFLOW_URI", "MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID",
              "STRUCTPRED_PARENT_RUN_ID", "STRUCTPRED_SWEEP_KEYS"):
        env.pop(k, None)
    env["STRUCTPRED_ROOT"] = str(root)           # outputs/ under the temporary folder
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run(args, root: Path, log) -> None:
    cmd = [sys.executable, "-m", *args]
    print("$", " ".join(cmd[1:]), flush=True)
    r = subprocess.run(cmd, cwd=root, env=_env(root), stdout=log, stderr=subprocess.STDOUT,
                       timeout=1800)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed (exit {r.returncode}); see {log.name}")


def build_store(root: Path) -> str:
    """The three kinds of runs in ``root/mlruns/mlflow.db``; returns the store's URI."""
    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root}/mlruns/mlflow.db"
    with open(root / "build.log", "a") as log:
        _run(["structpred.train", "+experiment=denoise", "+debug=fast", f"tracking.uri={uri}"],
             root, log)
        _run(["structpred.train", "-m", "+debug=fast",
              "model.num_filters=" + ",".join(map(str, SWEEP_VALUES)), f"tracking.uri={uri}"],
             root, log)
        first = _runs(uri, "tags.`structpred.debug` = 'true' and attributes.run_name LIKE "
                           "'debug-denoise-%'")[0]
        _run(["structpred.evaluate", f"model_ref={first.info.run_id}", f"tracking.uri={uri}"],
             root, log)
    return uri


def _runs(uri: str, filter_string: str = ""):
    from mlflow import MlflowClient
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("structpred")
    return client.search_runs([exp.experiment_id], filter_string=filter_string,
                              order_by=["attributes.start_time ASC"])


def store_runs(uri: str) -> dict:
    """The runs the checks look at, by role."""
    from mlflow import MlflowClient
    runs = _runs(uri)
    by = {}
    for r in runs:
        tags = r.data.tags
        if tags.get("structpred.sweep") == "parent":
            by["parent"] = r
        elif tags.get("structpred.task") == "evaluate":
            by["eval"] = r
        elif tags.get("mlflow.parentRunId"):
            by.setdefault("children", []).append(r)
        else:
            by["train"] = r
    by["experiment_id"] = MlflowClient(tracking_uri=uri).get_experiment_by_name(
        "structpred").experiment_id
    return by


# ---------------------------------------------------------------------------- the server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(uri: str, folder: Path, port: int | None = None):
    """``mlflow ui`` on 127.0.0.1 (a free port); yields its base URL; stopped at the end."""
    port = port or free_port()
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    log = open(folder / "ui.log", "a")
    proc = subprocess.Popen(
        [str(mlflow_cli), "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow ui exited ({proc.returncode}); see {log.name}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"mlflow ui did not answer on {url} within 120 s")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# ---------------------------------------------------------------------------- the browser
def _open(page, url: str, wait_text: str, shot: Path, timeout: float = 90.0) -> str:
    """Go to ``url``, wait until ``wait_text`` is on the page (the UI loads lazily; it never
    goes network-idle: it polls), close the assistant panel, screenshot, return the text."""
    page.goto(url)
    page.wait_for_load_state("load")
    page.get_by_text(wait_text, exact=False).first.wait_for(timeout=timeout * 1000)
    time.sleep(2)                                   # the charts and tables settle
    page.screenshot(path=str(shot), full_page=True)
    return page.inner_text("body")


def browse(url: str, runs: dict, shots: Path) -> tuple[list[str], list[str]]:
    """Drive Chromium over the pages; returns (failed checks, passed checks)."""
    from playwright.sync_api import sync_playwright
    shots.mkdir(parents=True, exist_ok=True)
    failed, passed = [], []

    def check(ok: bool, what: str):
        (passed if ok else failed).append(what)

    eid = runs["experiment_id"]
    view = "workflowType=machine_learning"     # structpred's links (mlflow_tracker.ui_link)
    train, parent, ev = runs["train"], runs["parent"], runs["eval"]
    children = sorted(c.info.run_name for c in runs.get("children", []))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        # 1. the experiment through the link structpred logs: the model-training runs table
        text = _open(page, f"{url}/#/experiments/{eid}?{view}", "matching runs",
                     shots / "01-experiment-runs.png")
        check("Run Name" in text and "Traces" in text and "Token Usage" not in text,
              "experiment opens as a model-training experiment (runs table, not GenAI)")
        check(parent.info.run_name[:20] in text and train.info.run_name[:20] in text,
              "the runs table lists the training run and the sweep parent")
        # the parent's children, nested: expand the parent's row
        try:
            row = page.get_by_role("row").filter(has_text=parent.info.run_name[:20])
            row.locator("button").first.click()
            time.sleep(2)
            page.screenshot(path=str(shots / "02-sweep-expanded.png"), full_page=True)
            text = page.inner_text("body")
            check(all(c[:20] in text for c in children),
                  f"the sweep parent's row expands to its children {children}")
        except Exception as exc:  # noqa: BLE001 - reported as a failed check
            check(False, f"expanding the sweep parent's row ({type(exc).__name__})")
        # 2. names: model, size, noise; sweep overrides; debug marked
        names = [train.info.run_name, *children]
        check(all(re.match(r"debug-\w+-foe\d+x\d+-s25", n) for n in names),
              f"run names carry model, size, noise and the debug mark: {names}")
        check(all(re.search(r" model\.num_filters=\d+$", c) for c in children),
              "the sweep's jobs end with their override")
        check(parent.info.run_name.startswith("sweep debug-")
              and "foe{4,8}x3" in parent.info.run_name,
              f"the sweep parent's name shows the swept values: {parent.info.run_name!r}")
        # 3. a training run: overview (metrics in logged order, params, tags)
        run_url = f"{url}/#/experiments/{eid}/runs/{train.info.run_id}"
        text = _open(page, f"{run_url}?{view}", "Parameters", shots / "03-train-overview.png")
        check(text.find("train/loss") >= 0 and text.find("train/loss") < text.find("solver/"),
              "the run's metrics table starts with the loss and PSNR curves (train/...)")
        check("model.num_filters" in text and "solver.gtol" in text,
              "params hold hyperparameters (model.num_filters, solver.gtol)")
        params_part = text[text.find("Parameters"):text.find("About this run")]
        check("paths.output_dir" not in params_part and "config.paths.output_dir" in text,
              "paths are tags (config.paths.output_dir), not params")
        check("structpred.debug" in text, "the debug run is tagged structpred.debug")
        # 4. its charts, grouped by prefix
        text = _open(page, f"{run_url}/model-metrics?{view}", "Add chart",
                     shots / "04-train-model-metrics.png")
        sections = re.findall(r"^(\w+)\n\((\d+)\)$", text, flags=re.MULTILINE)
        names_ = [s[0] for s in sections]
        check({"train", "val", "solver", "adjoint"} <= set(names_),
              f"chart sections train, val, solver, adjoint: {sections}")
        # MLflow 3.17 orders chart sections alphabetically (adjoint, outer, solver, test, time,
        # train, val): reported, not failed (the keys are structpred's; README "MLflow UI")
        order = " < ".join(names_)
        print(f"note: chart sections in the order MLflow shows them: {order}", flush=True)
        page.get_by_placeholder("Search metric charts").fill("psnr")
        time.sleep(2)
        page.screenshot(path=str(shots / "05-train-charts-psnr.png"), full_page=True)
        text = page.inner_text("body")
        check("train/psnr" in text or "(train/psnr)" in text,
              "the PSNR curves are one search away ('psnr' in the chart search)")
        # 5. the sweep parent: summary and nested children
        text = _open(page, f"{url}/#/experiments/{eid}/runs/{parent.info.run_id}?{view}",
                     "Child runs", shots / "06-sweep-parent.png")
        check(all(k in text for k in ("sweep.model.num_filters", "sweep.jobs",
                                      "sweep/best_val_psnr", "structpred.best_run_name",
                                      "structpred.sweep_overrides")),
              "the sweep parent shows its summary (overrides, job count, best child)")
        check(all(c in text for c in children), "the sweep parent lists its child runs")
        # 6. the evaluation run: metrics keyed by dataset and sigma, under its model's run
        text = _open(page, f"{url}/#/experiments/{eid}/runs/{ev.info.run_id}?{view}",
                     "Parameters", shots / "07-eval-run.png")
        check(all(f"eval/skimage_s25/{k}" in text for k in ("psnr", "psnr_noisy", "ssim")),
              "the evaluation's metrics are keyed by dataset and sigma (eval/skimage_s25/...)")
        check(train.info.run_name in text or "Parent run" in text,
              "the evaluation run names the training run it evaluated")
        # 7. without the link's parameter, a fresh browser opens MLflow 3.17's GenAI view
        fresh = browser.new_page(viewport={"width": 1600, "height": 1000})
        text = _open(fresh, f"{url}/#/experiments/{eid}", "Overview",
                     shots / "08-experiment-default-view.png")
        print("note: without ?workflowType=machine_learning the experiment opens in the "
              f"{'GenAI' if 'Token Usage' in text or 'Observability' in text else 'model'} "
              "view (MLflow 3.17 ignores the mlflow.experimentKind tag)", flush=True)
        browser.close()
    return failed, passed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shots", type=Path, help="folder for the screenshots")
    ap.add_argument("--store", type=Path, default=None,
                    help="folder of the temporary store (default: a new temporary folder)")
    ap.add_argument("--reuse", action="store_true", help="use the store already in --store")
    args = ap.parse_args(argv)
    if not (Path(CHROMIUM).exists()):
        print(f"error: {CHROMIUM} not found (apt-get install chromium)", file=sys.stderr)
        return 2
    import tempfile
    store = args.store or Path(tempfile.mkdtemp(prefix="structpred-ui-"))
    uri = f"sqlite:///{store}/mlruns/mlflow.db"
    if not (args.reuse and (store / "mlruns" / "mlflow.db").exists()):
        uri = build_store(store)
    runs = store_runs(uri)
    with serve(uri, store) as url:
        print(f"mlflow ui on {url} (store {uri})", flush=True)
        failed, passed = browse(url, runs, args.shots)
    for line in passed:
        print(f"ok: {line}")
    for line in failed:
        print(f"FAILED: {line}")
    print(f"{len(passed)} checks passed, {len(failed)} failed; screenshots in {args.shots}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
