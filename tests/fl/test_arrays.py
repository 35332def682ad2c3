from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from fedbackdoor.fl.arrays import (
    Layout,
    LayoutMismatch,
    _as_numpy,
    flatten_record,
    to_record,
    to_state_dict,
    trainable_names,
)
from fedbackdoor.models import ResNet18


def test_state_dict_round_trips_through_flat_vector_and_array_record() -> None:
    model = ResNet18(3, 10, (32, 32), width=4)
    state = model.state_dict()  # has running statistics and int64 num_batches_tracked
    for value in state.values():  # distinct values everywhere, counters included
        value.copy_(torch.arange(value.numel()).reshape(value.shape) % 97)
    layout = Layout.of(state, trainable_names(model))

    flat = flatten_record(to_record(state), layout)
    buffers = layout.flatten_buffers(state)
    back = layout.unflatten(flat, buffers)

    params = sum(p.numel() for p in model.parameters())
    assert flat.shape == (layout.dim,) == (params,) and flat.dtype == torch.float32
    assert buffers.dtype == torch.float64 and layout.buffer_dim == sum(
        v.numel() for k, v in state.items() if k not in trainable_names(model)
    )
    assert list(back) == list(state)
    for key, value in state.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value)


def test_layout_rejects_wrong_shape_and_missing_keys() -> None:
    state = {"w": torch.zeros(2, 3), "b": torch.zeros(3)}
    layout = Layout.of(state, {"w", "b"})

    with pytest.raises(LayoutMismatch, match=r"w: shape \(3, 2\) != expected \(2, 3\)"):
        layout.flatten({"w": torch.zeros(3, 2), "b": torch.zeros(3)})
    with pytest.raises(LayoutMismatch, match="missing \\['b'\\]"):
        layout.flatten({"w": torch.zeros(2, 3)})
    with pytest.raises(LayoutMismatch, match="expected \\(9,\\)"):
        layout.unflatten(torch.zeros(8))


def test_array_record_to_state_dict_keeps_values() -> None:
    state = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3)}

    assert torch.equal(to_state_dict(to_record(state))["a"], state["a"])


def test_flatten_into_a_row_of_a_buffer() -> None:
    state = {"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "n": torch.tensor(7)}
    layout = Layout.of(state, {"w"})
    buffer = torch.zeros(2, layout.dim)

    flat = layout.flatten(state, out=buffer[1])

    assert flat.data_ptr() == buffer[1].data_ptr()
    assert buffer.tolist() == [[0.0] * 4, [1.0, 2.0, 3.0, 4.0]]  # the counter is no parameter
    assert layout.flatten_buffers(state).tolist() == [7.0]
    with pytest.raises(ValueError, match=r"out must be torch.float32 of shape \(4,\)"):
        layout.flatten(state, out=torch.zeros(5))


@pytest.mark.parametrize(
    "value",
    [
        np.arange(6, dtype=np.float32).reshape(2, 3),
        np.arange(6, dtype=np.float64).reshape(2, 3),
        np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)),  # column-major bytes
        np.array(5, dtype=np.int64),  # 0-d (num_batches_tracked)
        np.zeros((0, 3), dtype=np.float32),  # empty
        np.arange(4, dtype=">f4"),  # big-endian
    ],
    ids=["f32", "f64", "fortran", "0d", "empty", "big-endian"],
)
def test_reading_an_array_in_place_equals_numpys_reader(value: np.ndarray) -> None:
    # Prepare
    array = Array(value)

    # Execute
    fast = _as_numpy(array)

    # Assert
    reference = array.numpy()
    assert fast.dtype == reference.dtype and fast.shape == reference.shape
    assert np.array_equal(fast, reference)


def test_a_truncated_or_pickled_payload_is_rejected_by_numpys_reader() -> None:
    # Prepare: the same header with its data cut short; an object array's header
    layout = Layout.of({"w": torch.zeros(4)}, {"w"})
    truncated = Array(np.arange(4, dtype=np.float32))
    truncated.data = truncated.data[:-4]
    pickled = Array(np.arange(4, dtype=np.float32))
    buffer = io.BytesIO()
    np.save(buffer, np.array([1, "x"], dtype=object), allow_pickle=True)
    pickled.data = buffer.getvalue()

    # Execute / Assert
    for array in (truncated, pickled):
        with pytest.raises(LayoutMismatch, match="cannot decode arrays"):
            flatten_record(ArrayRecord({"w": array}), layout)
