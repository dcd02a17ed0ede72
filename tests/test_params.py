"""The params loader: duplicate keys and corpus paths DVC would not watch are refused."""
from pathlib import Path

import pytest
import yaml

from nmt import params as P
from nmt.errors import UserError

FILES = {"train_src": "corpus/train.de", "train_tgt": "corpus/train.en",
         "val_src": "corpus/val.de", "val_tgt": "corpus/val.en", "test_src": "corpus/test.de"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_duplicate_key_is_refused_naming_it(tmp_path):
    path = write(tmp_path, "train:\n  epochs: 3\n  batch_tokens: 64\n  epochs: 5\n")
    with pytest.raises(UserError, match=r"^train\.epochs: given twice in .*params\.yaml "
                                        r"\(again on line 4\)"):
        P.load(path)


def test_duplicate_group_is_refused(tmp_path):
    path = write(tmp_path, "seed: 1\nmodel:\n  d_model: 64\nseed: 2\n")
    with pytest.raises(UserError, match=r"^seed: given twice"):
        P.load(path)


def test_same_key_in_two_groups_is_fine(tmp_path):
    path = write(tmp_path, "optim:\n  lr: 0.002\ntranslate:\n  beam_size: 2\n"
                           "schedule:\n  min_lr: 0.0\n")
    assert P.load(path).optim.lr == 0.002


@pytest.mark.parametrize("key, value", [("val_src", "/elsewhere/val.de"),
                                        ("train_tgt", "corpus/../train.en"),
                                        ("test_tgt", "data/raw/test.en"),
                                        ("train_src", "corpusx/train.de")])
def test_corpus_file_outside_corpus_folder_is_refused(tmp_path, monkeypatch, key, value):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, yaml.safe_dump(
        {"data": {"corpus": "files", "files": {**FILES, key: value}}}))
    with pytest.raises(UserError, match=rf"^data\.files\.{key}: {value} is outside corpus/"):
        P.load(path)


def test_corpus_files_inside_corpus_folder_load(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    inside = {**FILES, "val_src": str(tmp_path / "corpus" / "sub" / "val.de"),
              "test_tgt": "./corpus/test.en"}
    path = write(tmp_path, yaml.safe_dump({"data": {"corpus": "files", "files": inside}}))
    assert P.load(path).data.files.val_src == inside["val_src"]
