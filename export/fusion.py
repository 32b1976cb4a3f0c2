"""Attention fusion on ONNX graphs through onnxscript's rewriter, and op counts that audit it.

Two targets:
- `ort`: onnxscript's ONNX Runtime fusions (`optimize_for_ort`) turn each attention block of the dynamo
  exporter's graph into `com.microsoft::MultiHeadAttention`, residual + LayerNorm into `SkipLayerNormalization`
  and bias + GELU into `BiasGelu`. (`onnxruntime.transformers.optimizer` with model_type `vit` fuses the last two
  but leaves attention unfused on these graphs, so it is not used.)
- `onnx`: the standard `Attention` op of opset 23, which TensorRT 10.14+ parses. onnxscript has no rule that emits
  it, so the graph is converted to opset 23 with onnxscript's version converter, onnxscript's SDPA fusion finds the
  MatMul-Softmax-MatMul blocks (with their scales), and one rewrite rule written with onnxscript's pattern API
  replaces each fused SDPA by `Attention`. Only that last rule is ours.
"""

from __future__ import annotations

from collections import Counter
from enum import Enum
from typing import TYPE_CHECKING, Any

from vitexport.errors import ExportError, first_line

if TYPE_CHECKING:
    import onnx
    import onnx_ir as ir
    from onnxscript.rewriter.pattern import RewriteRuleSet

ONNX_ATTENTION_OPSET = 23
# Ops whose presence proves a fused attention block, per target; a Softmax left beside them means a block was missed.
FUSED_ATTENTION_OPS = {"ort": ("com.microsoft::MultiHeadAttention", "com.microsoft::Attention"), "onnx": ("Attention",)}


class Fusion(str, Enum):
    ort = "ort"  # com.microsoft contrib ops, for ONNX Runtime
    onnx = "onnx"  # standard ONNX Attention (opset 23), for TensorRT 10.14+
    none = "none"


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Node counts by op type, `domain::Op` for non-default domains, sorted by count (subgraphs included)."""
    counts: Counter[str] = Counter()

    def visit(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            domain = "" if node.domain in ("", "ai.onnx") else f"{node.domain}::"
            counts[domain + node.op_type] += 1
            for attr in node.attribute:
                if attr.g.node:
                    visit(attr.g)

    visit(model.graph)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def attention_audit(counts: dict[str, int], target: Fusion) -> dict[str, int]:
    """How many attention blocks are fused and how many Softmax remain (0 for a fully fused ViT)."""
    fused = sum(counts.get(op, 0) for op in FUSED_ATTENTION_OPS.get(target.value, ()))
    return {"fused_attention": fused, "softmax": counts.get("Softmax", 0)}


def fuse(model: onnx.ModelProto, target: Fusion) -> tuple[onnx.ModelProto, dict[str, int]]:
    """The fused graph and the number of each fusion applied (empty for `none`)."""
    import onnx_ir as ir

    if target is Fusion.none:
        return model, {}
    ir_model = ir.from_proto(model)
    counts = _fuse_ort(ir_model) if target is Fusion.ort else _fuse_onnx(ir_model)
    return ir.to_proto(ir_model), {k: v for k, v in counts.items() if v}


def _fuse_ort(model: ir.Model) -> dict[str, int]:
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    try:
        _, counts = optimize_for_ort(model)
    except Exception as e:  # the rewriter raises assorted errors on graphs it cannot analyse
        raise ExportError(f"onnxscript's ORT fusion failed: {first_line(e)}") from e
    return counts


def _fuse_onnx(model: ir.Model) -> dict[str, int]:
    import onnx_ir.passes.common as common_passes
    from onnxscript import optimizer, version_converter
    from onnxscript.rewriter.ort_fusions._core import _pre_optimize
    from onnxscript.rewriter.ort_fusions.sdpa import fuse_sdpa

    opset = model.opset_imports.get("", 0)
    if opset > ONNX_ATTENTION_OPSET:
        raise ExportError(f"--fuse-attention onnx targets opset {ONNX_ATTENTION_OPSET}; the graph has opset {opset}")
    try:
        if opset < ONNX_ATTENTION_OPSET:
            version_converter.convert_version(model, ONNX_ATTENTION_OPSET)
        # The same shape inference and constant folding onnxscript runs before its ORT fusions: the SDPA rule checks
        # shapes and folds the attention scale into one scalar.
        _pre_optimize(model)
        sdpa = fuse_sdpa(model, apply_shape_inference=True)
        attention = _sdpa_to_attention_rules().apply_to_model(model)
        optimizer.optimize(model)
        common_passes.ShapeInferencePass()(model)
    except ExportError:
        raise
    except Exception as e:
        raise ExportError(f"ONNX Attention fusion failed: {first_line(e)}") from e
    return {"sdpa": sdpa, "attention": attention}


def _attention(
    op: Any,
    query: ir.Value,
    key: ir.Value,
    value: ir.Value,
    mask: ir.Value | None,
    key_format: ir.Attr,
    sdpa_out: ir.Value,
) -> ir.Value:
    """The ONNX Attention op for a matched SDPA node (`op` is Any: its builders make ops by attribute)."""
    sdpa = sdpa_out.producer()
    scale = None if sdpa is None else sdpa.attributes.get("scale", None)  # the match: sdpa_out has one
    if key_format.value == "BSHd":
        key = op.Transpose(key, perm=[0, 2, 1, 3])
    kwargs = {} if scale is None else {"scale": scale.as_float()}
    inputs = (query, key, value) if mask is None else (query, key, value, mask)
    return op.Attention(*inputs, **kwargs)


def _sdpa_to_attention_rules() -> RewriteRuleSet:
    from onnxscript.rewriter import pattern

    # onnxscript matches a rule's variables to its methods' parameters by name: pattern variables (Any) in
    # `pattern`, the matched ir.Value and ir.Attr in `rewrite`.
    class SDPAToAttention(pattern.RewriteRuleClassBase):
        """onnxscript's intermediate SDPA node (Q, K, V in B,H,S,Dh) -> ONNX Attention, which takes the same 4-D
        layout; a key in B,S,H,Dh is transposed first. An absent scale means 1/sqrt(Dh) in both ops."""

        def pattern(self, op: Any, query: Any, key: Any, value: Any, key_format: Any) -> Any:
            return op.SDPA(
                query, key, value, key_format=key_format, _outputs=["sdpa_out"], _domain="ai.onnxruntime._fusion"
            )

        def rewrite(
            self,
            op: Any,
            query: ir.Value,
            key: ir.Value,
            value: ir.Value,
            key_format: ir.Attr,
            sdpa_out: ir.Value,
        ) -> ir.Value:
            return _attention(op, query, key, value, None, key_format, sdpa_out)

    class MaskedSDPAToAttention(pattern.RewriteRuleClassBase):
        """The same with an additive float mask (BEiT's relative position bias), Attention's fourth input."""

        def pattern(self, op: Any, query: Any, key: Any, value: Any, mask: Any, key_format: Any) -> Any:
            return op.SDPA(
                query, key, value, mask, key_format=key_format, _outputs=["sdpa_out"], _domain="ai.onnxruntime._fusion"
            )

        def rewrite(
            self,
            op: Any,
            query: ir.Value,
            key: ir.Value,
            value: ir.Value,
            mask: ir.Value,
            key_format: ir.Attr,
            sdpa_out: ir.Value,
        ) -> ir.Value:
            return _attention(op, query, key, value, mask, key_format, sdpa_out)

    return pattern.RewriteRuleSet([SDPAToAttention.rule(), MaskedSDPAToAttention.rule()])
