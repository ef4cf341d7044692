"""What a region's prediction is and how two predictions of it compare: class masks and Dice, once.

Every method and metric reads the predicted class the same way (``argmax == c``; ``logit > 0`` for a
one-channel sigmoid output) and compares two predictions with the same Dice convention (1 when both
are empty: nothing predicted, nothing lost).
"""

from __future__ import annotations

import torch

__all__ = ["batch_class_mask", "count_true", "decision_mask", "decision_probability", "dice", "predicted_class_mask"]


def predicted_class_mask(logits: torch.Tensor, class_index: int) -> torch.Tensor:
    """Voxels predicted as ``class_index``: ``argmax == c``, or ``logit > 0`` for a one-channel (sigmoid) output.

    Args:
        logits: one sample's output, shape ``(C, *spatial)``.
        class_index: the class ``c``.

    Returns:
        bool tensor of shape ``spatial``.
    """
    return batch_class_mask(logits[None], class_index)[0]


def batch_class_mask(out: torch.Tensor, class_index: int) -> torch.Tensor:
    """:func:`predicted_class_mask` of a batch ``(B, C, *spatial)``: bool ``(B, *spatial)``."""
    if out.shape[1] == 1:
        return out[:, 0] > 0
    # argmax == c without argmax over the channels, which is ~100x slower than comparisons on CPU. Ties go to
    # the first maximum, as in argmax: c must beat earlier channels strictly and later ones or equal them.
    own, mask = out[:, class_index], None
    for j in range(out.shape[1]):
        if j != class_index:
            beats = own > out[:, j] if j < class_index else own >= out[:, j]
            mask = beats if mask is None else mask.logical_and_(beats)
    return mask


def count_true(mask: torch.Tensor) -> torch.Tensor:
    """True voxels per sample of a bool batch ``(B, *spatial)``, float64 ``(B,)`` (exact below 2^31 per sample).

    Summed as uint8 into int32: on the CPU this is about 15x faster than a bool or int64 sum."""
    return mask.contiguous().view(torch.uint8).flatten(1).sum(1, dtype=torch.int32).double()


def dice(intersection: torch.Tensor, size_a: torch.Tensor | float, size_b: torch.Tensor | float) -> torch.Tensor:
    """``2 |A ∩ B| / (|A| + |B|)`` from counts (or soft sums), float64; 1 where both sets are empty."""
    intersection = torch.as_tensor(intersection, dtype=torch.float64)
    total = torch.as_tensor(size_a, dtype=torch.float64) + torch.as_tensor(size_b, dtype=torch.float64)
    return torch.where(total > 0, 2 * intersection / total.clamp_min(1e-300), torch.ones_like(total))


def decision_mask(out: torch.Tensor, class_index: int, contrast_class: int | None = None) -> torch.Tensor:
    """The voxels a Dice score counts as the class, bool ``(B, *spatial)`` of outputs ``(B, C, *spatial)``:
    :func:`batch_class_mask`, or, against ``contrast_class`` ``B``, the voxels where ``A`` beats ``B``
    (``logit_A > logit_B``: the two-class decision "A rather than B")."""
    if contrast_class is None:
        return batch_class_mask(out, class_index)
    return out[:, class_index] > out[:, contrast_class]


def decision_probability(out: torch.Tensor, class_index: int, contrast_class: int | None = None) -> torch.Tensor:
    """The soft version of :func:`decision_mask`, ``(B, *spatial)``: softmax (sigmoid for one channel) of the
    class, or ``sigmoid(logit_A - logit_B)``, the probability of ``A`` against ``B`` alone."""
    if contrast_class is not None:
        return (out[:, class_index] - out[:, contrast_class]).sigmoid()
    return out[:, 0].sigmoid() if out.shape[1] == 1 else out.softmax(1)[:, class_index]
