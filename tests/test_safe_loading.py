"""Loading never runs code: every checkpoint path (Lightning's --ckpt_path, --resume, teacher
checkpoints, encoder weights, dmrnet predict/export) is a local file read with
weights_only=True; URLs are refused before anything is fetched (issue 10, item 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dmrnet.cli import main
from dmrnet.errors import ConfigError
from dmrnet.training import MultimodalModule

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "mfeat_dmrnet.yaml")


@pytest.mark.parametrize("verb", ["fit", "validate", "test"])
def test_lightning_verbs_refuse_a_url_checkpoint_without_fetching_it(verb, server, payload,
                                                                     tmp_path, capsys):
    url, requests = server
    code = main([verb, "--config", CONFIG, "--trainer.default_root_dir", str(tmp_path / "run"),
                 "--trainer.max_epochs", "1", "--ckpt_path", url])
    err = capsys.readouterr().err
    assert code == 2
    assert "is a URL" in err and "download it" in err and "Traceback" not in err
    assert requests == [] and not payload[1].exists()


def test_lightning_verbs_refuse_a_local_pickle_payload(payload, tmp_path, capsys):
    path, marker = payload
    code = main(["test", "--config", CONFIG, "--trainer.default_root_dir", str(tmp_path / "run"),
                 "--ckpt_path", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and "cannot load checkpoint" in err and "Traceback" not in err
    assert not marker.exists()


def test_weights_only_false_is_refused(tmp_path, capsys):
    code = main(["fit", "--config", CONFIG, "--trainer.default_root_dir", str(tmp_path / "run"),
                 "--trainer.max_epochs", "1", "--weights_only", "false"])
    assert code == 2 and "weights_only" in capsys.readouterr().err


def test_missing_ckpt_path_is_one_line(tmp_path, capsys):
    code = main(["test", "--config", CONFIG, "--trainer.default_root_dir", str(tmp_path / "run"),
                 "--ckpt_path", str(tmp_path / "nope.ckpt")])
    err = capsys.readouterr().err
    assert code == 2 and "does not exist" in err and "Traceback" not in err


def test_resume_predict_and_export_refuse_urls(server, payload, capsys):
    url, requests = server
    assert main(["fit", "--config", CONFIG, "--resume", url]) == 2
    assert main(["predict", "--checkpoint", url, "--input", "fac=x.npy"]) == 2
    assert main(["export", "--checkpoint", url, "--out", "never"]) == 2
    err = capsys.readouterr().err
    assert err.count("is a URL") == 3
    assert requests == [] and not payload[1].exists() and not Path("never").exists()


def test_teacher_checkpoints_and_encoder_weights_refuse_urls_and_payloads(server, payload):
    url, requests = server
    path, marker = payload
    shapes = {"a": [4], "b": [3]}
    for bad, message in ((url, "is a URL"), (str(path), "cannot load checkpoint")):
        student = MultimodalModule(list(shapes), shapes, 2, method="mmanet",
                               method_kwargs={"teacher_checkpoint": bad})
        with pytest.raises(ConfigError, match=message):
            student.on_fit_start()  # the teacher is loaded when training starts
    images = {"a": [3, 16, 16], "b": [3, 16, 16]}
    for bad, message in ((url, "is a URL"), (str(path), "cannot load weights")):
        with pytest.raises(ConfigError, match=message):
            MultimodalModule(list(images), images, 2,
                             network={"encoder": "resnet",
                                      "encoder_kwargs": {"width": 8, "weights": bad}})
    assert requests == [] and not marker.exists()


def test_torch_floor_is_the_first_release_that_refuses_pickled_code_by_default():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"torch>=2.6,<3"' in text


def test_lightning_and_os_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    """Errors a user causes in fit/test end in one line (exit 2); --debug re-raises."""
    (tmp_path / "notes.txt").write_text("mine")
    under_a_file = str(tmp_path / "notes.txt" / "run")
    code = main(["fit", "--config", CONFIG, "--trainer.max_epochs", "1",
                 "--trainer.default_root_dir", under_a_file])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("dmrnet: error: ") and "Traceback" not in err
    assert err.strip().count("\n") == 0
    for accelerator in ("mps", "tpu"):  # not on this machine / its package not installed
        code = main(["fit", "--config", CONFIG, "--trainer.accelerator", accelerator,
                     "--trainer.default_root_dir", str(tmp_path / "run")])
        err = capsys.readouterr().err
        assert code == 2 and "dmrnet: error:" in err and "Traceback" not in err
    with pytest.raises(OSError):
        main(["fit", "--config", CONFIG, "--trainer.max_epochs", "1",
              "--trainer.default_root_dir", under_a_file, "--debug"])
