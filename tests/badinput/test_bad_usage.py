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
    ("quantize", "--avg-bits", ("0", "-4", "nan", "abc")),
    ("quantize", "--block-size", ("0", "-32")),
    ("quantize", "--samples", ("0", "-1")),
    ("quantize", "--steps", ("0",)),
    ("bench", "--per-family", ("0", "-1")),
    ("bench", "--workers", ("0",)),
    ("bench", "--draws", ("0",)),
    ("bench", "--samples", ("-3",)),
]
_VERB_OF = {"bench": ["bench", "safer"]}
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
