"""The fusion audit over the engine inspector's layer information (LayerInformationFormat.JSON): fused attention
and FP32 LayerNorm, each shortfall a warning. Plain Python, tested on saved layer information."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any

from vitexport.errors import VitExportError
from vitexport.export.tensorrt.settings import Precision

# Fused attention kernels show up by name: Myelin's `_gemm_mha_v2_*` and `*fmha*` kernels, flash attention, and
# TensorRT's IAttention layers (ONNX `Attention`, TensorRT >= 10.14).
_FUSED_ATTENTION = re.compile(r"mha|flash_?att|fused_?att", re.IGNORECASE)
_SOFTMAX = re.compile(r"softmax", re.IGNORECASE)
_LAYERNORM = re.compile(r"layer_?norm|LayerNormalization", re.IGNORECASE)
# A Myelin kernel is named after the ops it fuses, in order: "__myl_" + ops + "_myl<graph>_<index>". Its Metadata
# lists the ONNX nodes it implements, "[ONNX Layer: <node name>]" each (TensorRT's ONNX parser sets it).
_MYELIN_KERNEL = re.compile(r"^__myl_(?P<ops>[A-Za-z]+?)_myl\d+_\d+$")
_ONNX_LAYER = re.compile(r"\[ONNX Layer: ([^\]]+)\]")
_CAST_NODE = re.compile(r"cast", re.IGNORECASE)


def _text(layer: dict[str, Any], *keys: str) -> str:
    return " ".join(str(layer.get(k, "")) for k in keys)


def tensor_precision(tensor: dict[str, Any]) -> str | None:
    """fp32 / fp16 / bf16 / int8 of one layer input or output, None when the inspector did not say.

    TensorRT 10 writes one "Format/Datatype" string ("Row major linear FP32 format", "Half", ...); TensorRT 11
    splits it into "Format" and "DataType" ("Float", "Half", ...). Engines with dynamic shapes report
    "N/A due to dynamic shapes" unless an execution context with set shapes is given to the inspector.
    """
    text = " ".join(str(tensor.get(k, "")) for k in ("DataType", "Format/Datatype", "Format")).lower()
    for token, name in (("bf16", "bf16"), ("fp16", "fp16"), ("half", "fp16"), ("int8", "int8")):
        if token in text:
            return name
    if "fp32" in text or "float" in text:
        return "fp32"
    return None


def computes_in_fp32_behind_casts(layer: dict[str, Any]) -> bool:
    """Whether a LayerNorm kernel with reduced-precision I/O is the graph's Cast -> LayerNorm -> Cast fused into one.

    The strongly typed FP16 graph (export/fp16.py, the one TensorRT 11 builds) keeps LayerNormalization in FP32 between
    ONNX Casts to FP32 and back. Myelin fuses the three into one kernel, `__myl_Cast...Cast`, whose input and output
    are Half while its maths is FP32. Both ends must show: the kernel's ops begin and end with Cast, and its first and
    last ONNX nodes are Casts of the graph. A strongly typed build keeps the graph's types, so those Casts are the
    graph's FP32 ones. A weakly typed FP16 LayerNorm can also be named `__myl_Cast...Cast` (Myelin's own casts), but its
    Metadata holds no ONNX Cast: it stays "not FP32".
    """
    kernel = _MYELIN_KERNEL.match(str(layer.get("Name", "")))
    if kernel is None or not (kernel["ops"].startswith("Cast") and kernel["ops"].endswith("Cast")):
        return False
    nodes = _ONNX_LAYER.findall(str(layer.get("Metadata", "")))
    # The node's own name, not its path: "/blocks.0/norm1/LayerNormalization_input_cast0", "/blocks.0/norm1/Cast".
    casts = [bool(_CAST_NODE.search(n.rsplit("/", 1)[-1])) for n in nodes]
    return len(nodes) >= 3 and casts[0] and casts[-1] and not all(casts)


@dataclass(frozen=True)
class FusionAudit:
    layers: int
    detailed: bool  # False when the engine was not built with ProfilingVerbosity.DETAILED: nothing to audit
    expected_attention: int  # attention blocks in the model (0 for ResNets)
    fused_attention: int  # layers running a fused MHA kernel
    unfused_softmax: int  # Softmax layers outside any fused attention kernel
    layernorm_layers: int
    layernorm_not_fp32: tuple[str, ...]  # LayerNorm layers with a non-FP32 input or output
    layernorm_unknown: int  # LayerNorm layers whose tensor types the inspector did not report
    warnings: tuple[str, ...] = ()
    layernorm_fp32_behind_casts: int = 0  # of the FP32 ones: Half I/O, FP32 maths (computes_in_fp32_behind_casts)

    @property
    def passed(self) -> bool:
        return not self.warnings

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"passed": self.passed}


def audit_layer_info(info: str | dict[str, Any], *, expected_attention: int, precision: Precision | str) -> FusionAudit:
    """Check that attention ran as fused MHA kernels and LayerNorm in FP32; every shortfall becomes a warning.

    Fused attention is only required of fp16/int8 engines: TensorRT's fused MHA kernels are reduced-precision ones,
    so an fp32 engine is audited for LayerNorm only.
    """
    data = json.loads(info) if isinstance(info, str) else info
    raw = data.get("Layers", [])
    layers = [layer for layer in raw if isinstance(layer, dict)]
    precision = Precision(precision)
    if not layers:
        warning = (
            "the engine's layer information has no per-layer detail (built without ProfilingVerbosity.DETAILED): "
            "fusion and LayerNorm precision cannot be audited"
        )
        return FusionAudit(len(raw), False, expected_attention, 0, 0, 0, (), 0, (warning,))

    fused = [
        la
        for la in layers
        # IAttention (from the ONNX Attention op) runs as one fused kernel unless marked decomposable.
        if _FUSED_ATTENTION.search(_text(la, "Name", "LayerType", "TacticName"))
        or str(la.get("LayerType", "")).lower() == "attention"
    ]
    fused_ids = {id(la) for la in fused}
    softmax = [
        la
        for la in layers
        if id(la) not in fused_ids and _SOFTMAX.search(_text(la, "Name", "LayerType", "ParameterType", "Metadata"))
    ]
    norms = [
        la
        for la in layers
        if id(la) not in fused_ids
        and (la.get("LayerType") == "Normalization" or _LAYERNORM.search(_text(la, "Name", "Metadata")))
    ]
    not_fp32, unknown, behind_casts = _layernorm_precisions(norms)
    warnings = _warnings(precision, expected_attention, fused, softmax, norms, not_fp32, unknown)
    return FusionAudit(
        layers=len(layers),
        detailed=True,
        expected_attention=expected_attention,
        fused_attention=len(fused),
        unfused_softmax=len(softmax),
        layernorm_layers=len(norms),
        layernorm_not_fp32=tuple(not_fp32),
        layernorm_unknown=unknown,
        warnings=tuple(warnings),
        layernorm_fp32_behind_casts=behind_casts,
    )


def _layernorm_precisions(norms: list[dict[str, Any]]) -> tuple[list[str], int, int]:
    """Of the LayerNorm layers: the names of those not in FP32, how many the inspector gave no types for, and how many
    compute in FP32 behind Casts (computes_in_fp32_behind_casts)."""
    not_fp32, unknown, behind_casts = [], 0, 0
    for la in norms:
        types = {tensor_precision(t) for t in [*la.get("Inputs", []), *la.get("Outputs", [])]}
        if types - {None, "fp32"}:
            if computes_in_fp32_behind_casts(la):
                behind_casts += 1
            else:
                not_fp32.append(str(la.get("Name", "?")))
        elif types <= {None}:
            unknown += 1
    return not_fp32, unknown, behind_casts


def _warnings(
    precision: Precision,
    expected_attention: int,
    fused: list[dict[str, Any]],
    softmax: list[dict[str, Any]],
    norms: list[dict[str, Any]],
    not_fp32: list[str],
    unknown: int,
) -> list[str]:
    warnings = []
    if precision is not Precision.fp32 and expected_attention:
        if len(fused) < expected_attention:
            warnings.append(
                f"attention is not fused: {len(fused)} fused MHA kernels for {expected_attention} attention blocks"
            )
        if softmax:
            warnings.append(
                f"{len(softmax)} Softmax layers run outside fused attention (e.g. {softmax[0].get('Name')})"
            )
    if not_fp32:
        warnings.append(f"{len(not_fp32)} LayerNorm layers are not FP32 (e.g. {not_fp32[0]})")
    if unknown:
        warnings.append(f"the precision of {unknown} LayerNorm layers is not reported by the inspector")
    if expected_attention and not norms:
        warnings.append("no LayerNorm layers found in the layer information: their precision cannot be checked")
    return warnings


def expected_attention_blocks(model: str) -> int:
    """Attention blocks of a registered model: its transformer depth, 0 for convolutional families."""
    from vitexport.models import get_spec

    try:
        spec = get_spec(model)
    except VitExportError:
        return 0  # a model this version does not know: audit LayerNorm only
    return 0 if spec.family == "resnet" else int(getattr(spec.arch, "depth", 0))
