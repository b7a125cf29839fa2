"""Metrics files: records on disk after each write, torn lines and stale records dropped on resume,
TensorBoard event files, and the one definition of the final loss."""

import json
import sys

import pytest

from fp4dist.metrics import FINAL_LOSS_WINDOW, JsonlLog, TensorBoardLog, final_loss, read_jsonl


def records(n: int, gen_loss) -> list[dict]:
    return [{"step": s, "loss": gen_loss(s)} for s in range(1, n + 1)]


def test_each_record_is_on_disk_after_its_write(tmp_path):
    path = tmp_path / "m.jsonl"
    log = JsonlLog(path)
    for r in records(3, lambda s: 1.0 / s):
        log.write(r)
        assert json.loads(path.read_text().splitlines()[-1]) == r  # read by another open, before close
    log.close()
    assert read_jsonl(path) == (records(3, lambda s: 1.0 / s), False)


@pytest.mark.parametrize("tail", ['{"step": 6, "lo', '{"step": 6, "loss": 1.0}', '{"st\n'])
def test_resume_drops_a_torn_last_line_and_the_records_past_the_resume_step(tmp_path, tail, caplog):
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records(5, float)) + tail)
    JsonlLog(path, resume_step=3).write({"step": 4, "loss": -4.0})
    assert read_jsonl(path) == (records(3, float) + [{"step": 4, "loss": -4.0}], False)
    assert "torn last line" in caplog.text
    assert [p.name for p in tmp_path.iterdir()] == ["m.jsonl"]  # rewritten by rename, no temporary left


def test_a_damaged_line_before_the_last_is_an_error_and_the_file_is_kept(tmp_path):
    path = tmp_path / "m.jsonl"
    text = json.dumps({"step": 1, "loss": 1.0}) + "\n{garbage\n" + json.dumps({"step": 3, "loss": 1.0}) + "\n"
    path.write_text(text)
    with pytest.raises(ValueError, match="line 2 is not JSON.*left as it is"):
        JsonlLog(path, resume_step=1)
    assert path.read_text() == text


def test_final_loss_is_the_mean_of_the_last_logged_losses():
    rs = records(25, lambda s: float(s))
    assert final_loss(rs) == sum(range(26 - FINAL_LOSS_WINDOW, 26)) / FINAL_LOSS_WINDOW
    assert final_loss(rs[:3]) == 2.0 and final_loss([]) is None


def test_tensorboard_event_files_hold_the_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = TensorBoardLog(tmp_path)
    for step in (1, 2, 3):
        tb.scalars(step, {"train/loss": 1.0 / step, "perf/tflops_per_gpu": None})
    tb.close()
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert acc.Tags()["scalars"] == ["train/loss"]
    assert [(e.step, round(e.value, 6)) for e in acc.Scalars("train/loss")] == [(1, 1.0), (2, 0.5), (3, 0.333333)]


def test_without_tensorboard_one_line_says_so_and_nothing_is_written(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # the import fails as without the package
    with caplog.at_level("INFO", logger="fp4dist"):
        tb = TensorBoardLog(tmp_path / "tb")
    tb.scalars(1, {"train/loss": 1.0})
    tb.close()
    assert "tensorboard is not installed" in caplog.text and not (tmp_path / "tb").exists()
