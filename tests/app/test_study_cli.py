"""``layersync study`` with the real trainer on a tiny model: the arms of a seed are paired (the same
weights, batches, noise and timesteps), and the report is read back from the events files."""

import contextlib
import io
import json

import pytest

from app.cli import main
from tests.utils.factories import fast_config, make_tiny_demo_model, write_config
from trainer.events import read_events

STEPS = 3
# two arms with LayerSync off that differ only in a weight they do not use: they must train identically
ARMS = {"layersync": {}, "baseline": {"layersync_enabled": False}, "off-again": {"layersync_enabled": False, "layersync_lambda": 0.5}}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A study of three arms on one seed, trained here: (exit code, stdout, its folder)."""
    root = tmp_path_factory.mktemp("study")
    # perturbed: adaLN-Zero blocks start as the identity, where the LayerSync term has no gradient yet
    model = make_tiny_demo_model(root / "model", num_layers=4, hidden_size=32, perturb=0.1)
    config = fast_config(model, root / "ignored", layersync_student_block=2, layersync_teacher_block=4,
                         max_train_steps=STEPS, train_batch_size=4, logging_steps=1, validation_steps=0, checkpointing_steps=0)
    write_config(root / "run.json", config)
    (root / "arms.json").write_text(json.dumps(ARMS))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["study", "--config", str(root / "run.json"), "--seeds", "7", "--arms", str(root / "arms.json"),
                     "--metric", "diffusion_loss", "--output-dir", str(root / "out")])
    return code, out.getvalue(), root / "out"


def losses(folder) -> list[float]:
    return [event["diffusion_loss"] for event in read_events(folder) if event["event"] == "metric" and "diffusion_loss" in event]


@pytest.mark.slow
def test_the_arms_of_a_seed_share_step_1_and_differ_later_only_with_layersync_on(study):
    _, _, folder = study
    layersync, baseline, again = (losses(folder / f"{arm}-seed7") for arm in ARMS)
    assert len(layersync) == len(baseline) == len(again) == STEPS
    assert layersync[0] == baseline[0] == again[0]  # the same weights, batch, noise and timesteps: bit for bit
    assert again == baseline  # LayerSync off in both: every step the same
    assert layersync[1:] != baseline[1:]  # the LayerSync term changed the weights after step 1


@pytest.mark.slow
def test_the_cli_trains_every_arm_and_prints_the_report_from_the_events_files(study):
    code, printed, folder = study
    assert code == 0
    assert printed.startswith("not enough seeds: At step 3, diffusion_loss (lower is better)")
    assert "layersync − baseline" in printed and "off-again − baseline" in printed
    report = json.loads((folder / "report.json").read_text())
    assert report["verdict"] == "not enough seeds" and report["seeds"] == [7] and report["step"] == STEPS
    assert report["differences"][1]["mean"] == 0  # off-again trained exactly as the baseline
    assert sorted(p.name for p in folder.iterdir()) == ["baseline-seed7", "configs", "layersync-seed7", "off-again-seed7",
                                                        "report.json", "study.json"]


def test_a_bad_study_trains_nothing_and_says_every_problem_naming_its_arm(tmp_path, capsys):
    write_config(tmp_path / "run.json", {"max_train_steps": 0})
    (tmp_path / "arms.json").write_text(json.dumps({"weak": {"layersync_enabled": True}, "baseline": {}}))
    code = main(["study", "--config", str(tmp_path / "run.json"), "--seeds", "0,x", "--arms", str(tmp_path / "arms.json"),
                 "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and not (tmp_path / "out").exists()
    assert "  seeds.1: seed 'x': must be a whole number, got 'x'\n" in err
    assert "  config.max_train_steps: arms weak and baseline: must be at least 1, got 0\n" in err
    assert "  arms.weak.layersync_student_block: arm weak: LayerSync is enabled but no student block is set" in err


def test_a_run_without_an_events_file_yet_is_waiting_not_failed(tmp_path, capsys):
    from app.studycli import print_report

    for arm, values in (("layersync", [0.5, 0.4]), ("baseline", [0.6, 0.5])):
        run_dir = tmp_path / f"{arm}-seed0"
        run_dir.mkdir()
        lines = [{"event": "metric", "step": step, "val_diffusion_loss": v} for step, v in zip((5, 10), values, strict=True)]
        lines.append({"event": "end", "status": "completed"})
        (run_dir / "events.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (tmp_path / "layersync-seed1").mkdir()  # seed 1: not trained yet, no events file (its baseline not even a folder)
    code = print_report(tmp_path, arms=["layersync", "baseline"], seeds=[0, 1], baseline="baseline", metric="val_diffusion_loss")
    assert code == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["pending"] == [1] and report["left_out"] == []
    assert "failed" not in capsys.readouterr().out
