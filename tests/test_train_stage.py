"""Stage train's own logic: pairs that do not fit model.max_positions."""
import logging

import pytest

from nmt.errors import UserError
from nmt.batching import fit_positions

LIMIT = 4  # model.max_positions 5: four tokens plus eos/bos


def side(n: int) -> list[int]:
    return list(range(5, 5 + n))


def test_training_pairs_too_long_are_dropped_and_counted(caplog):
    train = ([side(2), side(5), side(4), side(1)], [side(3), side(1), side(4), side(6)])
    val = ([side(4)], [side(4)])
    with caplog.at_level(logging.WARNING, "nmt.train"):
        src, tgt = fit_positions(train, val, "val.src", LIMIT)
    assert (list(src), list(tgt)) == ([side(2), side(4)], [side(3), side(4)])  # never cut
    assert "2 of 4 training pairs are longer than model.max_positions allows (4 tokens" \
        in caplog.text


def test_pairs_that_fit_are_kept_silently(caplog):
    train = ([side(4), side(1)], [side(1), side(4)])
    with caplog.at_level(logging.WARNING, "nmt.train"):
        src, tgt = fit_positions(train, train, "val.src", LIMIT)
        assert (list(src), list(tgt)) == train
    assert not caplog.text


def test_validation_pair_too_long_is_refused():
    train = ([side(1)], [side(1)])
    val = ([side(3), side(2)], [side(2), side(7)])
    with pytest.raises(UserError, match=r"^model\.max_positions: 1 validation pairs in val\.src "
                                        r"are longer than its 4 tokens .*longest 7; raise it "
                                        r"to at least 8"):
        fit_positions(train, val, "val.src", LIMIT)


def test_no_training_pair_fits_is_refused():
    with pytest.raises(UserError, match="every training pair is longer than 4"):
        fit_positions(([side(5)], [side(1)]), ([side(1)], [side(1)]), "val.src", LIMIT)
