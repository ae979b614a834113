import os
import pickle

import numpy as np
import pytest
import torch

from photovaez.features import FeatureSpec, Scaler
from photovaez.io import (
    FORMAT_VERSION,
    ModelFileError,
    atomic_write,
    load_model,
    model_from_dict,
    model_to_dict,
    save_model,
)
from photovaez.model import SDGM, ModelConfig
from photovaez.train import TrainConfig


def _dict():
    torch.manual_seed(0)
    m = SDGM(ModelConfig(dim_x=11, dim_a=2, dim_b=2, hidden=[8], decoder="mlp"))
    return m, model_to_dict(m, FeatureSpec(), Scaler(np.zeros(11), np.ones(11)), TrainConfig(), {"n_steps": 3})


def test_round_trip_is_exact_and_plain(tmp_path):
    m, d = _dict()
    path = tmp_path / "m.pkl"
    save_model(d, path)
    d2 = load_model(path)
    assert d2["format_version"] == FORMAT_VERSION and d2["package_version"]
    assert FeatureSpec.from_dict(d2["feature_spec"]) == FeatureSpec()
    m2 = model_from_dict(d2)
    for k, v in m.state_dict().items():
        torch.testing.assert_close(m2.state_dict()[k], v, rtol=0, atol=0)
    assert all(isinstance(v, np.ndarray) for v in d2["state"].values())
    assert [p.name for p in tmp_path.iterdir()] == ["m.pkl"]  # no temporary file left behind


def test_truncated_and_garbage_files_give_clear_errors(tmp_path):
    _, d = _dict()
    path = tmp_path / "m.pkl"
    save_model(d, path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ModelFileError, match="corrupt or truncated"):
        load_model(path)
    path.write_bytes(b"this is not a model")
    with pytest.raises(ModelFileError):
        load_model(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "missing.pkl")


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_loading_never_executes_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"format": "photovaez-model", "payload": _Evil()}))
    with pytest.raises(ModelFileError, match="refusing to load"):
        load_model(path)
    assert not (tmp_path / "PWNED").exists()


def test_newer_format_and_wrong_files_rejected(tmp_path):
    _, d = _dict()
    d["format_version"] = FORMAT_VERSION + 1
    path = tmp_path / "new.pkl"
    path.write_bytes(pickle.dumps(d))
    with pytest.raises(ModelFileError, match="newer"):
        load_model(path)
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ModelFileError, match="not a PhotoVAEz model"):
        load_model(path)
    _, d = _dict()
    d["state"]["q_b_given_x_net.head.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(ModelFileError, match="does not match"):
        model_from_dict(d)


def test_failed_write_keeps_the_old_file(tmp_path):
    _, d = _dict()
    path = tmp_path / "m.pkl"
    save_model(d, path)
    before = path.read_bytes()
    bad = dict(d, report={"x": object()})
    with pytest.raises(TypeError):
        save_model(bad, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pkl"]


def test_atomic_write_leaves_the_old_file_or_the_new_one(tmp_path):
    path = tmp_path / "sub" / "f.bin"  # the folder is created
    with atomic_write(path) as fh:
        fh.write(b"old")
    assert path.read_bytes() == b"old"
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_write(path) as fh:
            fh.write(b"half of the new")
            assert path.read_bytes() == b"old"  # nothing is visible at path until the block ends
            raise RuntimeError("interrupted")
    assert path.read_bytes() == b"old"
    assert [p.name for p in path.parent.iterdir()] == ["f.bin"]  # the temporary file is gone
    with atomic_write(str(path)) as fh:
        fh.write(b"new")
    assert path.read_bytes() == b"new" and [p.name for p in path.parent.iterdir()] == ["f.bin"]
