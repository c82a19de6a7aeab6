"""Bad usage: numeric options out of range or not numbers, unknown flags, missing arguments.

Every case: exit 2, one stderr line that names the option and gives the verb's own usage.
"""

from __future__ import annotations

import pytest
from _bad import VERB_ARGS, Case, Workspace, case, run_case, verb_argv

# (verb, flag, bad values): every numeric option of every verb.
_POS_INT = ("0", "-5", "abc", "1.5")
_NUMERIC: list[tuple[str, str, tuple[str, ...]]] = [
    ("profile", "--batch-size", _POS_INT),
    ("grad", "--batch-size", _POS_INT),
    ("slice", "--batch-size", _POS_INT),
    ("slice", "--workers", ("0", "-1", "x")),
    ("slice", "--theta", ("0", "1", "1.2", "-0.1", "nan", "inf", "abc")),
    ("rank", "--samples", _POS_INT),
    ("rank", "--steps", ("0", "-3")),
    ("rank", "--noise-samples", ("0", "two")),
    ("rank", "--seed", ("-1", "x")),
    ("rank", "--batch-size", ("0", "-2")),
    ("rank", "--magnitude", ("0", "1.5", "-1", "nan")),
    ("rank", "--draws", ("0", "-1")),
    ("prune", "--ratio", ("1", "1.5", "-0.1", "nan", "inf", "x")),
    ("prune", "--samples", ("0", "-5")),
    ("prune", "--round-to", ("0", "-16")),
    ("prune", "--theta", ("0", "1")),
    ("prune", "--repeats", ("0", "-1")),
    ("prune", "--latency-batch", ("0", "y")),
    ("prune", "--latency", ("0", "-0.5", "1.5", "nan")),
    ("prune", "--threads", ("0",)),
    ("prune", "--recover", ("-1", "x")),
    ("prune", "--recover-lr", ("0", "-1e-3")),
    ("prune", "--recover-batch", ("0",)),
    ("prune", "--reconstruct-samples", ("0", "-4", "x")),
    ("prune", "--reconstruct", ("sgd",)),
    ("quantize", "--avg-bits", ("0", "-4", "nan", "abc")),
    ("quantize", "--block-size", ("0", "-32")),
    ("quantize", "--samples", ("0", "-1")),
    ("quantize", "--steps", ("0",)),
    ("quantize", "--accuracy-goal", ("-0.1", "2")),
    ("quantize", "--max-latency", ("0", "-1")),
    ("quantize", "--float-layers", ("-1",)),
    ("quantize", "--threads", ("0",)),
    ("quantize", "--repeats", ("0",)),
    ("bench", "--per-family", ("0", "-1")),
    ("bench", "--workers", ("0",)),
    ("bench", "--draws", ("0",)),
    ("bench", "--samples", ("-3",)),
    ("report", "--samples", _POS_INT),
    ("report", "--gt-draws", ("-1", "x")),
    ("report", "--slice-samples", ("0", "-2")),
    ("report", "--theta", ("0", "1", "nan")),
    ("report", "--repeats", ("0",)),
    ("report", "--ratios", ("x", "0.1,y")),
    ("report", "--avg-bits", ("six",)),
    ("detect fit", "--batch-size", ("0", "x")),
    ("detect fit", "--workers", ("0",)),
    ("detect fit", "--theta", ("0", "1")),
    ("detect fit", "--min-per-class", ("0",)),
    ("detect fit", "--seed", ("-1",)),
    ("detect attack", "--epsilon", ("0", "-0.1", "x")),
    ("protect", "--slice-samples", ("0",)),
    ("protect", "--theta", ("0", "1")),
    ("protect", "--workers", ("0",)),
    ("protect", "--seed", ("-1",)),
    ("protect", "--repeats", ("0", "-2")),
    ("faults", "--flips", ("0", "-1", "x")),
    ("faults", "--trials", ("0",)),
    ("faults", "--workers", ("0",)),
    ("faults", "--samples", ("0",)),
    ("faults", "--batch-size", ("0",)),
    ("faults", "--seed", ("-1",)),
    ("guard", "--rtol", ("-1", "x")),
    ("guard", "--atol", ("-1",)),
    ("guard", "--samples", ("0",)),
    ("guard", "--batch-size", ("0",)),
    ("guard", "--seed", ("-1",)),
    ("guard", "--repeats", ("0",)),
]
_VERB_OF = {
    "bench": ["bench", "safer"],
    "detect fit": ["detect", "fit", "{m}", "-d", "{d}", "-p", "{p}", "-o", "{o}/det.npz"],
    "detect attack": ["detect", "attack", "{m}", "-d", "{d}", "--attack", "fgsm", "-o", "{o}/adv.npz"],
    "protect": ["protect", "{m}", "-d", "{d}", "--classes", "1", "-o", "{o}/locked.onnx", "-k", "{o}/owner.key"],
    "faults": ["faults", "{m}", "-d", "{d}"],
    "guard": ["guard", "{m}", "-o", "{o}/g.onnx", "--layers", "1"],
}
_REPLACED = {"--avg-bits", "--ratio", "--samples", "--workers"}


def _numeric_cases() -> list[Case]:
    out = []
    for verb, flag, values in _NUMERIC:
        for v in values:
            base = _VERB_OF.get(verb) or verb_argv(verb, drop=[flag] if flag in _REPLACED else [])
            out.append(
                case(f"{verb}{flag}={v}", [*base, f"{flag}={v}"], 2, rf"^onnxslice {verb}: error: argument {flag}")
            )
    return out


def _usage_cases() -> list[Case]:
    out = []
    for verb in [*VERB_ARGS, "bench"]:
        base = _VERB_OF.get(verb) or VERB_ARGS[verb]
        out.append(
            case(
                f"{verb}-unknown-flag",
                [*base, "--no-such-flag"],
                2,
                rf"^onnxslice {verb}: error: unrecognized arguments: --no-such-flag \(usage: onnxslice {verb} ",
            )
        )
        out.append(
            case(f"{verb}-no-args", [verb], 2, rf"^onnxslice {verb}: error: .*required.*usage: onnxslice {verb}")
        )
        out.append(
            case(f"{verb}-bad-device", [*base, "--device", "tpu"], 2, rf"onnxslice {verb}: error: .*--device")
            if verb != "bench"
            else case("bench-bad-backend", [*base, "--backend", "mpi"], 2, "argument --backend")
        )
        out.append(case(f"{verb}-max-size-0", [*base, "--max-size", "0"], 2, "argument --max-size"))
    out += [
        case("no-verb", [], 2, r"^onnxslice: error: .*required.*usage: onnxslice VERB"),
        case("unknown-verb", ["frobnicate"], 2, r"^onnxslice: error: argument VERB: invalid choice"),
        case("top-level-unknown-flag", ["--frob"], 2, r"^onnxslice: error:"),
        case("slice-bad-granularity", [*VERB_ARGS["slice"], "--granularity", "atom"], 2, "argument --granularity"),
        case("prune-bad-budget", [*VERB_ARGS["prune"], "--budget", "magic"], 2, "argument --budget"),
        case("prune-bad-mode", [*VERB_ARGS["prune"], "--mode", "diagonal"], 2, "argument --mode"),
        case("quantize-two-budgets", [*VERB_ARGS["quantize"], "--size-mb", "1"], 2, "not allowed with argument"),
        case("quantize-bad-mode", [*VERB_ARGS["quantize"], "--mode", "dynamic"], 2, "argument --mode"),
        case("rank-bad-path", [*VERB_ARGS["rank"], "--path", "both"], 2, "argument --path"),
        case("bench-bad-which", ["bench", "tables"], 2, "argument which: invalid choice"),
    ]
    return out


CASES = _numeric_cases() + _usage_cases()


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_bad_usage(ws: Workspace, capsys: pytest.CaptureFixture[str], c: Case) -> None:
    run_case(ws, c, capsys)


# -- option values that argparse cannot type-check: targets, sample lists, names of criteria -------------------
_SEMANTIC = [
    case("slice-target-empty-class", [*VERB_ARGS["slice"], "--target", "class:"], 2, "target 'class:' names no class"),
    case("slice-target-empty-item", [*VERB_ARGS["slice"], "--target", "class:1,,2"], 2, "class:1,,2"),
    case("slice-target-class-text", [*VERB_ARGS["slice"], "--target", "class:cat"], 2,
         "'class:cat'.*must be an integer"),
    case("slice-target-class-range", [*VERB_ARGS["slice"], "--target", "class:7"], 2, "out of range"),
    case("slice-target-unknown", [*VERB_ARGS["slice"], "--target", "best"], 2, "unknown target 'best'"),
    case("slice-target-value-missing", [*VERB_ARGS["slice"], "--target", "value:nope"], 2, "nope"),
    case("slice-samples-reversed", [*verb_argv("slice", drop=["--samples"]), "--samples", "5:2"], 2, "samples '5:2'"),
    case("slice-samples-negative", [*verb_argv("slice", drop=["--samples"]), "--samples", "-1"], 2, "samples '-1'"),
    case("slice-samples-text", [*verb_argv("slice", drop=["--samples"]), "--samples", "a:b"], 2, "cannot read samples"),
    case("slice-samples-past-end", [*verb_argv("slice", drop=["--samples"]), "--samples", "100"], 2, "outside"),
    case("slice-output-unknown", [*VERB_ARGS["slice"], "--output", "nope"], 2, "nope"),
    case("grad-samples-text", [*VERB_ARGS["grad"], "--samples", "x"], 2, "cannot read samples 'x'"),
    case("grad-samples-past-end", [*VERB_ARGS["grad"], "--samples", "8"], 2, "outside the data set's 0..7"),
    case("grad-target-unknown", [*VERB_ARGS["grad"], "--target", "best"], 2, "best"),
    case("grad-target-class-text", [*VERB_ARGS["grad"], "--target", "class:x"], 2, "class:x"),
    case("grad-weights-unknown", [*VERB_ARGS["grad"], "--weights", "nope"], 2, "nope"),
    case("rank-criterion-unknown", [*verb_argv("rank", drop=["-c"]), "-c", "magic"], 2, "magic"),
    case("rank-reduction-unknown", [*VERB_ARGS["rank"], "-r", "median"], 2, "median"),
    case("rank-ground-truth-bad", [*VERB_ARGS["rank"], "-g", "X:weights"], 2, "is not NOISE:ON"),
    case("rank-target-unknown", [*verb_argv("rank", drop=["-c"]), "-c", "grad", "--target", "best"], 2, "best"),
    case("prune-no-ratio", ["prune", "{m}", "-o", "{o}/p.onnx"], 2, "give --ratio"),
    case("prune-sensitivity-no-data", [*VERB_ARGS["prune"], "--budget", "sensitivity"], 2, "needs --data"),
    case("prune-slice-no-data", [*VERB_ARGS["prune"], "--budget", "slice"], 2, "needs --slice"),
    case("prune-criterion-unknown", [*VERB_ARGS["prune"], "--budget", "sensitivity", "-d", "{d}", "--criterion", "x"],
         2, "'x'"),
    case("prune-target-empty", [*VERB_ARGS["prune"], "--budget", "slice", "-d", "{d}", "--target", "class:"], 2,
         "names no class|no slicing target"),
    case("quantize-auto-no-data", ["quantize", "{m}", "-o", "{o}/q.onnx"], 2, "--format auto needs --data"),
    case("quantize-choices-unknown", [*VERB_ARGS["quantize"], "--choices", "int3,int8"], 2, "int3"),
    case("quantize-criterion-no-data", ["quantize", "{m}", "--avg-bits", "6", "-o", "{o}/q.onnx"], 2, "needs --data"),
    case("quantize-criterion-unknown", [*VERB_ARGS["quantize"], "--criterion", "magic", "-d", "{d}"], 2, "magic"),
    case("bench-magnitudes-range", ["bench", "safer", "--magnitudes", "0,2"], 2, r"must be in \(0, 1\]"),
    case("bench-magnitudes-text", ["bench", "safer", "--magnitudes", "a"], 2, "not a comma list of numbers"),
    case("bench-families-unknown", ["bench", "safer", "--families", "cnn"], 2, "unknown family cnn"),
    case("faults-address-local", [*_VERB_OF["faults"], "--address", "10.0.0.1:6379"], 2, "add --backend ray"),
    case("guard-address-local", ["guard", "{m}", "-o", "{o}/g.onnx", "-d", "{d}", "--criterion", "vulnerability",
                                 "--layers", "1", "--address", "10.0.0.1:6379"], 2, "add --backend ray"),
    case("slice-address-local", [*VERB_ARGS["slice"], "--address", "10.0.0.1:6379"], 2, "add --backend ray"),
    case("bench-layers-unknown", ["bench", "safer", "--layers", "heads"], 2, "argument --layers: invalid choice"),
    case("bench-order-unknown", ["bench", "safer", "--order", "random"], 2, "argument --order: invalid choice"),
]


@pytest.mark.parametrize("c", _SEMANTIC, ids=[c.id for c in _SEMANTIC])
def test_bad_option_value(ws: Workspace, capsys: pytest.CaptureFixture[str], c: Case) -> None:
    run_case(ws, c, capsys)
