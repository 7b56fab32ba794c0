"""What keeps a pair: the judges that proved they can tell good from bad on the control pairs,
the grounding gate and the contradiction (NLI) gate.

`judge_gate` measures every judge (and the grounding gain) on the control pairs as an AUC, and
keeps the judges at or above `min_judge_auc`; a judge below it is ignored with a warning naming
it. When no judge is left and no other gate is on, the stage fails rather than keep everything.
`decide` then applies the kept judges' threshold and votes, the grounding gate's thresholds and
the NLI gate's `max_contradiction`.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from sftpipe.distill.controls import auc
from sftpipe.distill.slices import DistillError

if TYPE_CHECKING:
    from sftpipe.distill.grounding import GroundingParams
    from sftpipe.distill.run import DistillParams, Unit


def _separation(units: list[Unit], score) -> dict[str, Any]:
    good: list[float] = []
    bad: list[float] = []
    for u in units:
        assert u.control is not None  # only control units are measured
        value = score(u)
        if value is not None:
            (good if u.control.label else bad).append(value)

    def mean(xs: list[float]) -> float | None:
        return round(sum(xs) / len(xs), 4) if xs else None

    by_kind: dict[str, list[float]] = {}
    for u in units:
        if u.control is not None and not u.control.label and (value := score(u)) is not None:
            by_kind.setdefault(u.control.kind, []).append(value)
    return {
        "auc": auc(good, bad),
        "auc_by_kind": {k: auc(good, xs) for k, xs in sorted(by_kind.items())},
        "good": len(good),
        "bad": len(bad),
        "mean_good": mean(good),
        "mean_bad": mean(bad),
    }


def calibration(params: DistillParams, controls: list[Unit]) -> dict[str, dict]:
    """Per judge (and, when grounding is on, `grounding`, `end_logprob` and `min_token_gain`;
    when the NLI gate is on, `nli`: 1 - the largest contradiction probability, so higher is better):
    AUC (overall and against each bad kind), how many good and bad controls got a score, and
    their mean scores."""
    out = {
        j.name: _separation(controls, lambda u, n=j.name: u.verdicts.get(n, {}).get("weighted"))
        for j in params.judges
    }
    if params.grounding.enabled:
        out["grounding"] = _separation(controls, lambda u: u.grounding)
        out["end_logprob"] = _separation(controls, lambda u: u.end_logprob)
        out["min_token_gain"] = _separation(controls, lambda u: u.min_token_gain)
    if params.nli.enabled:
        out["nli"] = _separation(controls, lambda u: None if u.contradiction is None else 1 - u.contradiction)
    return out


def judge_gate(params: DistillParams, controls: list[Unit]) -> tuple[dict[str, dict], list[str]]:
    """(calibration report, names of the judges whose votes count)."""
    names = [j.name for j in params.judges]
    if not params.calibrate or not controls:
        return {}, names
    report = calibration(params, controls)
    used = []
    for name in names:
        score = report[name]["auc"]
        if score is not None and score >= params.min_judge_auc:
            used.append(name)
            continue
        shown = "no score" if score is None else f"AUC {score:.2f}"
        print(
            f"distill: WARNING: judge {name} ignored: {shown} on the control pairs, below "
            f"min_judge_auc {params.min_judge_auc:g}",
            file=sys.stderr,
        )
    if not used and not params.grounding.enabled and not params.nli.enabled:
        aucs = ", ".join(f"{n} {report[n]['auc']}" for n in names)
        raise DistillError(
            f"distill: no judge tells good from bad pairs (AUC on the control pairs: "
            f"{aucs}; min_judge_auc "
            f"{params.min_judge_auc:g}) and no other gate is on: use better judges, lower "
            "distill.min_judge_auc, or turn on distill.grounding or distill.nli"
        )
    return report, used


def decide(unit: Unit, used: list[str], params: DistillParams) -> str:
    """The unit's status: kept, or why not (judge_failed, low_score, too_few_votes, and the
    grounding gate's reasons; contradicts_passage also from the NLI gate)."""
    if used:
        scored = [unit.verdicts[n] for n in used if "weighted" in unit.verdicts.get(n, {})]
        if not scored:
            return "judge_failed"
        valid = [v["weighted"] for v in scored]
        threshold = params.min_score_threshold
        unit.score = round(sum(valid) / len(valid), 4)
        dims = scored[0]["scores"]
        unit.dimension_scores = {d: round(sum(v["scores"][d] for v in scored) / len(scored), 4) for d in dims}
        unit.votes = sum(v >= threshold for v in valid)
        if unit.score < threshold:
            return "low_score"
        if unit.votes < min(params.min_votes, len(used)):
            return "too_few_votes"
    status = grounding_verdict(unit, params.grounding) if params.grounding.enabled else "kept"
    contradicted = unit.contradiction is not None and unit.contradiction > params.nli.max_contradiction
    if status == "kept" and params.nli.enabled and contradicted:
        return "contradicts_passage"
    return status


def grounding_verdict(unit: Unit, gate: GroundingParams) -> str:
    """kept, or ungrounded (the passage hardly raises the response's likelihood), incomplete (the
    base model would not end the turn there) or contradicts_passage (a token the passage makes
    much less likely). A signal that could not be measured (None: the response was cut to the
    scoring budget) does not drop a pair; a missing gain does."""
    if unit.grounding is None or not unit.grounding >= gate.min_gain:
        return "ungrounded"
    checks = (
        ("incomplete", unit.end_logprob, gate.min_end_logprob),
        ("contradicts_passage", unit.min_token_gain, gate.min_token_gain),
    )
    for reason, value, least in checks:
        if least is not None and value is not None and value < least:
            return reason
    return "kept"
