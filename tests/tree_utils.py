"""Test helper: nested states (dicts, lists, tuples, tensors, numbers) compared exactly."""
import torch


def assert_same_tree(a, b, where: str = "") -> None:
    """Nested state equal, tensors bitwise; `where` names the first difference."""
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_tree(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where
