"""Unit tests of choosing the model: the best epochs (swa-average's ranking, train.keep_best),
translate.ensemble's params, and train.init_from's compatibility check."""
from __future__ import annotations

import dataclasses

import pytest

from nmt import checkpoints
from nmt.errors import UserError
from nmt.model import ModelConfig, Seq2SeqTransformer
from nmt.params import Swa, from_dict
from nmt.resume import Progress
from nmt.averaging import ranked

LOSS = {1: 3.0, 2: 2.2, 3: 2.0, 4: 2.1, 5: 2.3}  # validation loss per epoch: best is 3


def test_ranking_the_last_epochs_newest_first():
    assert ranked(Swa(), [4, 5], LOSS) == [5, 4]


def test_ranking_by_validation_loss_and_bleu():
    assert ranked(Swa(best_by="val_loss"), [3, 4, 5], LOSS) == [3, 4, 5]
    bleu = {3: 20.0, 4: 21.5, 5: 21.5}
    assert ranked(Swa(best_by="val_bleu", best_epochs=2), [3, 4, 5], bleu) == [5, 4, 3]


def test_a_best_epoch_that_was_not_kept_is_an_error():
    with pytest.raises(UserError, match=r"include \[3\].*raise train.keep_best"):
        ranked(Swa(best_by="val_loss"), [4, 5], LOSS)
    with pytest.raises(UserError, match=r"no val_bleu for epochs \[5\]"):
        ranked(Swa(best_by="val_bleu"), [4, 5], {4: 20.0})


def test_training_keeps_the_best_epochs_beside_the_last():
    rows = [{"epoch": e, "val_loss": v} for e, v in LOSS.items()]
    progress = Progress(epoch_rows=rows, kept_epochs=[2, 3, 4, 5])
    assert progress.best_epochs(2) == [3, 4]
    assert progress.published_epochs(2, keep_best=1) == [3, 4, 5]
    assert progress.published_epochs(2, keep_best=0) == [4, 5]


@pytest.mark.parametrize("changes,message", [
    ({"translate": {"ensemble": 6}}, "translate.ensemble: 6 checkpoints, more than the 5 that "
                                     "train.keep_checkpoints keeps"),
    ({"swa": {"best_by": "val_loss", "best_epochs": 2}},
     "swa.best_epochs: 2 checkpoints, more than the 1 that train.keep_best keeps"),
    ({"swa": {"best_by": "val_loss"}, "translate": {"ensemble": 2}},
     "translate.ensemble: 2 checkpoints, more than the 1 that train.keep_best keeps"),
])
def test_params_refuse_more_checkpoints_than_are_kept(changes, message):
    with pytest.raises(UserError) as e:
        from_dict(changes).validate()
    assert str(e.value) == message


def small_config(**changes) -> ModelConfig:
    return dataclasses.replace(ModelConfig(src_vocab_size=40, tgt_vocab_size=40, d_model=16,
                                           nhead=2, dim_feedforward=32, num_encoder_layers=1,
                                           num_decoder_layers=1), **changes)


def test_init_from_loads_the_weights_of_the_same_architecture(tmp_path):
    cfg = small_config()
    model = Seq2SeqTransformer(cfg)
    checkpoints.save_model(tmp_path / "m.pt", cfg, model.state_dict())
    state = checkpoints.load_init(tmp_path / "m.pt",  # training-only settings may differ
                                  small_config(dropout=0.3, kernels="stock"))
    assert all((state[k] == v).all() for k, v in model.state_dict().items())


def test_init_from_names_what_differs(tmp_path):
    cfg = small_config()
    checkpoints.save_model(tmp_path / "m.pt", cfg, Seq2SeqTransformer(cfg).state_dict())
    with pytest.raises(UserError) as e:
        checkpoints.load_init(tmp_path / "m.pt", small_config(d_model=32, tgt_vocab_size=50))
    assert str(e.value) == (f"train.init_from: {tmp_path / 'm.pt'} has another model: "
                            "d_model 16 (here 32), tgt_vocab_size 40 (here 50)")
    with pytest.raises(UserError, match="not found"):
        checkpoints.load_init(tmp_path / "none.pt", cfg)
