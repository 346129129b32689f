"""Every mode of the seed's operators (and RoIWarp's), shared by the operator and export tests."""

from detector.ops.roi_align import RoIAlign
from detector.ops.roi_pool import RoIPool
from detector.ops.roi_warp import RoIWarp

ALIGN_MODES = [dict(sampling_ratio=s, aligned=a, reduction=r, sample_layout=lay)
               for s in (2, -1) for a in (True, False) for r in ("avg", "max") for lay in ("centered", "interior")]
POOL_MODES = [dict(quantization=q) for q in ("round", "floor")]
WARP_MODES = [dict(sampling_ratio=s, reduction=r) for s in (2, -1) for r in ("avg", "max")]

MODES = [("align", m) for m in ALIGN_MODES] + [("pool", m) for m in POOL_MODES] + [("warp", m) for m in WARP_MODES]

# A half of RoIAlign's 16 modes in which every pair of settings occurs together (a 2^(4-1) design:
# `aligned` is the parity of the other three). Each grid kind x reduction x layout, the three settings
# that choose different operators in a traced graph, appears once; `aligned` only shifts the box
# coordinates by half a cell and meets each of them both ways. For the slow tests (one ONNX export);
# the fast ones run MODES.
COVERING_MODES = [("align", m) for m in ALIGN_MODES
                  if m["aligned"] == ((m["sampling_ratio"] == 2) ^ (m["reduction"] == "avg") ^ (m["sample_layout"] == "centered"))]
COVERING_MODES += [("pool", m) for m in POOL_MODES] + [("warp", m) for m in WARP_MODES]


def make_pooler(kind, mode):
    common = dict(output_size=(3, 4), spatial_scale=1 / 32)
    return {"align": RoIAlign, "pool": RoIPool, "warp": RoIWarp}[kind](**common, **mode)
