"""`layersync probe`: the map in words, the JSON, and what a failed probe leaves behind."""

import json

from app.cli import main
from tests.utils.factories import write_config
from trainer.cli import PROBE_ERROR, PROBE_RESULT, describe_map, probe_main

TINY = ["--batches", "1", "--batch-size", "4", "--noise-levels", "2"]


def test_probe_prints_the_map_and_writes_the_json(tmp_path, capsys):
    config = write_config(tmp_path / "run.json", {"max_train_steps": 5})
    code = main(["probe", "--config", str(config), "--json", str(tmp_path / "map.json"), "--output-dir", str(tmp_path / "job"), *TINY])
    assert code == 0
    out = capsys.readouterr().out
    assert "suggested: layersync_student_block 5, layersync_teacher_block 9" in out
    assert "16 blocks" in out
    result = json.loads((tmp_path / "map.json").read_text())
    assert set(result) == {"depth", "cosine", "update", "suggested"}
    assert result["suggested"] == {"student": 5, "teacher": 9}
    assert json.loads((tmp_path / "job" / PROBE_RESULT).read_text()) == result


def test_a_bad_config_is_refused_in_words_and_recorded_for_whoever_waits(tmp_path, capsys):
    config = write_config(tmp_path / "run.json", {"model_family": "nope"})
    assert probe_main(["--config", str(config), "--output-dir", str(tmp_path / "job")]) == 2
    err = capsys.readouterr().err
    assert "unknown model family 'nope'" in err
    assert "unknown model family 'nope'" in json.loads((tmp_path / "job" / PROBE_ERROR).read_text())["error"]
    assert not (tmp_path / "job" / PROBE_RESULT).exists()


def test_probe_sizes_must_be_positive(tmp_path, capsys):
    assert probe_main(["--batches", "0"]) == 2
    assert "--batches must be at least 1" in capsys.readouterr().err


def test_the_words_mark_blocks_that_cannot_be_compared():
    result = {"depth": 3, "cosine": [[1.0, None, 0.5], [None, 1.0, None], [0.5, None, 1.0]],
              "update": [None, None, 0.25], "suggested": {"student": 1, "teacher": 3}}
    lines = describe_map(result)
    assert lines[1].endswith("@?+") and lines[2].endswith("?@?")
    assert "suggested: layersync_student_block 1, layersync_teacher_block 3" in lines[-1] and "cosine now 0.500" in lines[-1]
