"""The README's commands and Python API block, checked as written: a newcomer copies them verbatim."""

import re
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _block_after(heading: str, language: str) -> str:
    """The first fenced block of `language` after the line starting with `heading`."""
    start = README.index(heading)
    match = re.compile(rf"```{language}\n(.*?)```\n", re.S).search(README, start)
    assert match, f"no {language} block after {heading!r}"
    return match.group(1)


def test_public_api_block_runs_as_written_and_matches_torchvision(tmp_path, monkeypatch):
    """Executed verbatim in an empty folder; its logits are then checked against torchvision's own forward pass
    of the module the block loaded from, and the file it wrote against the state dict it came from."""
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(_block_after("## Public API", "python"), "README.md:Public API", "exec"), ns)

    nchw = torch.from_numpy(np.array(ns["x"])).permute(0, 3, 1, 2)
    with torch.no_grad():
        expected = ns["tv"].eval()(nchw).numpy()
        from_export = ns["tmodel"].eval()(nchw).numpy()
    logits = np.asarray(ns["logits"])
    assert logits.shape == (2, 1000)  # what the block's comment says
    scale = max(1.0, float(np.abs(expected).max()))
    assert np.abs(logits - expected).max() <= 1e-4 * scale
    np.testing.assert_array_equal(from_export, expected)  # the export is the same weights, bit for bit
    np.testing.assert_allclose(np.asarray(ns["flax_resnet"].predict(ns["shell"], ns["x"])), logits, rtol=0, atol=0)
    assert ns["model_10cls"].fc.kernel[...].shape == (512, 10)  # skip="fc" kept its own head
    reread = ns["sd"]  # the last line's load of the file the block wrote
    exported = ns["flax_resnet"].to_torch_state_dict(ns["model"])
    assert reread.keys() == exported.keys()
    for key, value in exported.items():
        np.testing.assert_array_equal(reread[key], value, err_msg=key)
    assert (tmp_path / "w.safetensors").is_file()
    from flax_resnet.train import load_run  # what scripts/evaluate.py and predict.py open it with

    run = load_run(tmp_path / "w.safetensors")
    assert (run.config.arch, run.config.variant, run.config.num_classes) == ("resnet18", "imagenet", 1000)
    assert run.class_names[:2] == ("class0", "class1")


def test_readme_opens_with_setup_main_job_and_the_ci_test_command():
    """The first block is set-up + the main job; the test command shown is the one `.ci/run` runs."""
    first = _block_after("# flax-resnet", "bash").splitlines()
    assert first == ["pip install -r requirements.txt", "python scripts/train.py --arch resnet18"]
    tests = _block_after("Tests (", "bash").strip()
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert tests in ci_lines, f"README's test command {tests!r} is not a line of .ci/run"
    assert "pip install --disable-pip-version-check -q -r requirements.txt" in (ROOT / ".ci" / "run").read_text()
