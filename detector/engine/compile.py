"""``torch.compile`` of the parts where a detector's time is dense: the backbone and the box head.

Shape shorthand:
    B: images in the batch, H x W: their padded size (a multiple of the backbone's stride)
    R: RoIs in the batch, D: the box head's representation size

The backbone (``[B, 3, H, W] -> [B, C, H/32, W/32]``) and the box head (``[R, C, 7, 7] -> [R, D]``)
are plain stacks of layers that TorchInductor can fuse (BatchNorm, ReLU and the layout copies
between them); the RPN and the RoI heads' sampling, matching and NMS are data-dependent box work
that compiling would split into many small graphs, so they stay eager.

Each part is compiled in place (``nn.Module.compile``): its parameters, buffers and state-dict keys
are unchanged, so checkpoints, resume, fine-tuning and DDP see the same model. The first step pays
the compilation, and so does each new padded image size (on the CPU the compiled convolutions fix
their input size, even with ``dynamic=True``) and evaluation (``model.eval()`` and no_grad are
other graphs); Inductor's on-disk cache makes a second run's compiles cheaper. Whether that pays
within a run is measured in docs/speed.md; the default is off.

Written here rather than taken from a library because the choice of parts is this model's: the
compiling itself is ``torch.compile``'s.
"""

from __future__ import annotations

from torch import nn

__all__ = ["COMPILED_PARTS", "compile_parts"]

# Submodule paths in detector.modeling.FasterRCNN (with or without its RPN: Fast R-CNN too).
COMPILED_PARTS = ("backbone", "roi_heads.box_head")


def compile_parts(model: nn.Module, *, backend: str = "inductor") -> list[str]:
    """Compile ``model``'s backbone and box head in place; returns the paths compiled.

    Args:
        model: a detector with ``backbone`` and ``roi_heads.box_head`` submodules.
        backend: ``torch.compile``'s backend (``inductor`` generates C++ / Triton code; ``eager`` and
            ``aot_eager`` trace without generating code, for tests).

    Raises:
        ValueError: the model lacks one of the parts (one line naming it).
    """
    compiled = []
    for path in COMPILED_PARTS:
        try:
            part = model.get_submodule(path)
        except AttributeError:
            raise ValueError(f"compile: the model has no {path} to compile ({type(model).__name__})") from None
        part.compile(backend=backend)
        compiled.append(path)
    return compiled
