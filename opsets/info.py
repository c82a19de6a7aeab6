"""Static per-op metadata (the ``info`` capability): which inputs are weights, which op family.

Analyses read this to find SAfER layers (nodes that own a weight initializer), to know which inputs
carry no gradient (shapes, indices, axes) and which ops only move data. Nothing here reads tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

from .registry import REGISTRY

__all__ = ["OpInfo", "default_info"]


@dataclass(frozen=True)
class OpInfo:
    """Static facts about an op type.

    Attributes:
        family: op family ("weighted", "elementwise", "binary", "layout", "pool", "norm", "reduce",
            "shape", "control", "other"); used for summaries and templates.
        layer_weights: candidate input indices of the main weight, in order of preference; the node
            is a *layer* when the first candidate fed by an initializer exists.
        bias_input: index of the bias input, if the op has one.
        param_inputs: further inputs that are parameters when they are initializers (BN scale, ...).
        non_differentiable: input indices that carry no gradient (shapes, indices, axes, sizes).
        layout_only: the op only moves, copies or selects elements (routing in NNSlicer terms).
        straight_through: gradients pass through its integer values by the straight-through estimator
            (quantize/dequantize ops; see ``vjp/quantize.py``).
    """

    family: str
    layer_weights: tuple[int, ...] = ()
    bias_input: int | None = None
    param_inputs: tuple[int, ...] = ()
    non_differentiable: tuple[int, ...] = ()
    layout_only: bool = False
    straight_through: bool = False

    @property
    def may_be_layer(self) -> bool:
        """Whether nodes of this op can own a layer weight."""
        return bool(self.layer_weights)


def default_info() -> OpInfo:
    """Info for an op with no registered metadata: no weights, nothing known."""
    return OpInfo(family="other")


def _reg(ops: str, info: OpInfo, since: int = 1) -> None:
    for op in ops.split():
        REGISTRY.add("info", op, info, since=since, origin=__name__)


_reg("Conv ConvTranspose", OpInfo("weighted", layer_weights=(1,), bias_input=2))
_reg("Gemm", OpInfo("weighted", layer_weights=(1, 0), bias_input=2))
_reg("MatMul", OpInfo("weighted", layer_weights=(1, 0)))
_reg("BatchNormalization", OpInfo("norm", param_inputs=(1, 2, 3, 4)))
_reg("InstanceNormalization", OpInfo("norm", param_inputs=(1, 2)))
_reg("LayerNormalization", OpInfo("norm", param_inputs=(1, 2)))
_reg("GroupNormalization", OpInfo("norm", param_inputs=(1, 2)))
_reg("LRN", OpInfo("norm"))
_reg(
    "Relu LeakyRelu PRelu Elu Selu Celu Sigmoid HardSigmoid HardSwish Tanh Softplus Softsign Erf Gelu "
    "Exp Log Sqrt Reciprocal Neg Abs Sin Cos Mish Swish ThresholdedRelu Floor Ceil Round Sign Not "
    "IsNaN IsInf Softmax LogSoftmax Hardmax Cast CastLike Dropout",
    OpInfo("elementwise"),
)
_reg("Clip", OpInfo("elementwise"))  # its bounds (inputs from opset 11) get cotangents: vjp/clip.py
_reg("Add Sub Mul Div Pow Max Min Mean Sum", OpInfo("binary"))
_reg("Mod", OpInfo("binary"), since=10)
_reg("CumSum", OpInfo("other", non_differentiable=(1,)), since=11)
_reg("Trilu", OpInfo("layout", non_differentiable=(1,), layout_only=True), since=14)
_reg("LpNormalization", OpInfo("norm"))
_reg("ScatterND", OpInfo("layout", non_differentiable=(1,)), since=11)
_reg("Equal Greater Less GreaterOrEqual LessOrEqual And Or Xor", OpInfo("binary"))
_reg("Where", OpInfo("binary", non_differentiable=(0,)))
_reg("Identity Flatten Transpose", OpInfo("layout", layout_only=True))
_reg("Reshape Expand Tile", OpInfo("layout", non_differentiable=(1,), layout_only=True))
_reg("Squeeze Unsqueeze", OpInfo("layout", non_differentiable=(1,), layout_only=True))
_reg("Concat SpaceToDepth DepthToSpace", OpInfo("layout", layout_only=True))
_reg("Split", OpInfo("layout", non_differentiable=(1,), layout_only=True))
_reg("Slice", OpInfo("layout", non_differentiable=(1, 2, 3, 4), layout_only=True))
_reg("Pad", OpInfo("layout", non_differentiable=(1, 2, 3), layout_only=True))
_reg("Gather GatherElements GatherND", OpInfo("layout", non_differentiable=(1,), layout_only=True))
_reg(
    "MaxPool AveragePool GlobalAveragePool GlobalMaxPool LpPool GlobalLpPool",
    OpInfo("pool"),
)
_reg("Resize Upsample", OpInfo("layout", non_differentiable=(1, 2, 3)))
_reg(
    "ReduceMean ReduceSum ReduceMax ReduceMin ReduceProd ReduceL1 ReduceL2 ReduceSumSquare ReduceLogSumExp",
    OpInfo("reduce", non_differentiable=(1,)),
)
_reg("ArgMax ArgMin TopK", OpInfo("reduce", non_differentiable=(1,)))
_reg(
    "Shape Size ConstantOfShape Range NonZero EyeLike RandomNormal RandomUniform",
    OpInfo("shape", non_differentiable=(0, 1, 2)),
)
_reg("Constant", OpInfo("shape"))
_reg("If Loop Scan", OpInfo("control"))
_reg("QuantizeLinear", OpInfo("other", non_differentiable=(1, 2), straight_through=True))
_reg("DequantizeLinear", OpInfo("other", non_differentiable=(2,), straight_through=True))
_reg("DynamicQuantizeLinear", OpInfo("other", straight_through=True))
REGISTRY.add("info", "MatMulNBits", OpInfo("weighted"), domain="com.microsoft", since=1, origin=__name__)
# ai.onnx.ml ops emitted by skl2onnx: analysable as opaque nodes (recording works; no gradients).
for _op in ("ZipMap", "LinearClassifier", "LinearRegressor", "Normalizer", "Scaler", "ArrayFeatureExtractor"):
    REGISTRY.add("info", _op, OpInfo("other"), domain="ai.onnx.ml", since=1, origin=__name__)
# Recurrent layers: W [D, G*H, I] is the layer weight (its rows, axis 1, are the gates' neurons), R and the
# peepholes P are further parameters; sequence_lens carries no gradient.
_reg(
    "LSTM GRU RNN",
    OpInfo("recurrent", layer_weights=(1,), bias_input=3, param_inputs=(2, 7), non_differentiable=(4,)),
    since=7,
)
