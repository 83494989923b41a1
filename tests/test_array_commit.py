"""A seed array's epoch in two phases (we.train.array_commit): a kill at any point of the writing of epoch N
leaves members that settle at one epoch, N once every member's checkpoint was staged, N-1 before.

The run folders here hold small checkpoints (a number as the model); the trained arrays cut at these points are
in tests/test_seed_array.py.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings, strategies as st

from we.errors import CheckpointError, ConfigError
from we.rundir import STAGED_LAST_FORMAT, read_checkpoint, staged_epochs
from we.train.array_commit import (checkpoint_epoch, commit_last, resume_epochs, rollforward_epoch, settle_staged_last,
                                   stage_last, staged_last)
from we.train.checkpoint import save_checkpoint


def state(epoch: int, seed: int) -> dict:
    return {"epoch": epoch, "config": {"seed": seed}, "model": {"w": torch.tensor([float(epoch)])}}


def no_check(path: Path, state: dict) -> None:
    return None


def folders(root: Path, k: int, epoch: int) -> list[Path]:
    """k members whose last.pt holds `epoch` (none: epoch 0)."""
    outs = []
    for i in range(k):
        out = root / f"s{i}"
        out.mkdir(parents=True)
        if epoch:
            save_checkpoint(out / "last.pt", state(epoch, i))
        outs.append(out)
    return outs


def write_epoch_until(outs: list[Path], epoch: int, steps: int) -> None:
    """The first `steps` of the array's writing of `epoch`: each member staged, then each committed."""
    sequence = [lambda i=i: stage_last(outs[i], epoch, state(epoch, i)) for i in range(len(outs))]
    sequence += [lambda i=i: commit_last(outs[i], epoch) for i in range(len(outs))]
    for step in sequence[:steps]:
        step()


@settings(max_examples=40, deadline=None)
@given(k=st.integers(1, 5), previous=st.integers(0, 3), cut=st.data())
def test_a_cut_anywhere_settles_every_member_at_one_epoch(tmp_path_factory, k, previous, cut):
    root = tmp_path_factory.mktemp("cut")
    outs = folders(root, k, previous)
    epoch = previous + 1
    steps = cut.draw(st.integers(0, 2 * k), label="steps")
    write_epoch_until(outs, epoch, steps)
    committed = [checkpoint_epoch(out) for out in outs]
    staged = [staged_epochs(out, STAGED_LAST_FORMAT) for out in outs]
    expected = epoch if steps >= k else previous  # every member staged: forward; else back
    assert resume_epochs(committed, staged) == [expected] * k
    rolled = settle_staged_last(outs, committed, [no_check] * k)
    assert [checkpoint_epoch(out) for out in outs] == [expected] * k
    assert all(staged_epochs(out, STAGED_LAST_FORMAT) == [] for out in outs)
    assert len(rolled) == (2 * k - steps if k <= steps < 2 * k else 0)
    for i, out in enumerate(outs):
        if expected:
            assert read_checkpoint(out / "last.pt")["config"] == {"seed": i}  # each member its own
    assert settle_staged_last(outs, [expected] * k, [no_check] * k) == []  # settled: nothing more to do


def test_the_rule_without_files():
    assert rollforward_epoch([3, 3], [[], []]) is None
    assert rollforward_epoch([3, 3], [[4], [4]]) == 4  # every member staged
    assert rollforward_epoch([4, 3], [[], [4]]) == 4  # one renamed already
    assert rollforward_epoch([3, 3], [[4], []]) is None  # cut while staging
    assert rollforward_epoch([5, 3], [[], [4]]) is None  # a member past the staged epoch
    assert rollforward_epoch([2], [[3]]) == 3  # a folder alone holds its own staged epoch
    assert resume_epochs([5, 3], [[], [4]]) == [5, 3]
    assert resume_epochs([3, 3], [[2, 4], [4]]) == [4, 4]


def test_a_stale_staged_file_is_removed_and_last_pt_kept(tmp_path, capsys):
    (out,) = folders(tmp_path, 1, 5)
    stage_last(out, 3, state(3, 0))
    assert settle_staged_last([out], [5], [no_check]) == []
    assert checkpoint_epoch(out) == 5 and not staged_last(out, 3).exists()
    assert f"{staged_last(out, 3)}: removed (last.pt holds epoch 5 already)" in capsys.readouterr().out


def test_the_messages_say_what_was_done(tmp_path, capsys):
    outs = folders(tmp_path, 2, 1)
    write_epoch_until(outs, 2, 1)  # s0 staged only
    settle_staged_last(outs, [1, 1], [no_check] * 2)
    assert (f"{staged_last(outs[0], 2)}: removed (the array had not written every member's epoch 2; last.pt of "
            "epoch 1 resumes)") in capsys.readouterr().out
    write_epoch_until(outs, 2, 3)  # both staged, s0 renamed
    settle_staged_last(outs, [2, 1], [no_check] * 2)
    assert (f"{outs[1]}: last.pt of epoch 2 taken from .last-epoch2.pt (the array had written every member's "
            "epoch 2)") in capsys.readouterr().out


@pytest.mark.parametrize("spoil, error, words", [
    (lambda path: path.write_bytes(b"not a checkpoint"), CheckpointError, "unreadable checkpoint (not a torch.save zip archive); move it away"),
    (lambda path: save_checkpoint(path, state(3, 1)), CheckpointError, "holds epoch 3, not 2"),
    (lambda path: save_checkpoint(path, state(2, 0)), ConfigError, "another run"),
])
def test_a_staged_file_that_is_not_the_members_is_refused_before_anything_moves(tmp_path, spoil, error, words):
    outs = folders(tmp_path, 2, 1)
    write_epoch_until(outs, 2, 2)  # both staged
    spoil(staged_last(outs[1], 2))

    def same_seed(i):
        def check(path, got):
            if got["config"] != {"seed": i}:
                raise ConfigError(f"{path}: holds another run")
        return check
    with pytest.raises(error) as caught:
        settle_staged_last(outs, [1, 1], [same_seed(0), same_seed(1)])
    assert str(staged_last(outs[1], 2)) in str(caught.value) and words in str(caught.value)
    assert [checkpoint_epoch(out) for out in outs] == [1, 1]
    assert all(staged_epochs(out, STAGED_LAST_FORMAT) == [2] for out in outs)  # nothing renamed or removed
