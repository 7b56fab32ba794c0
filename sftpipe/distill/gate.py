"""What keeps a pair: the judges that proved they can tell good from bad on the control pairs,
and the grounding gate.

`judge_gate` measures every judge (and the grounding gain) on the control pairs as an AUC, and
keeps the judges at or above `min_judge_auc`; a judge below it is ignored with a warning naming
it. When no judge is left and no other gate is on, the stage fails rather than keep everything.
`decide` then applies the kept judges' threshold and votes, and the grounding threshold.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from sftpipe.distill.controls import auc
from sftpipe.distill.slices import DistillError

if TYPE_CHECKING:
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

    return {
        "auc": auc(good, bad),
        "good": len(good),
        "bad": len(bad),
        "mean_good": mean(good),
        "mean_bad": mean(bad),
    }


def calibration(params: DistillParams, controls: list[Unit]) -> dict[str, dict]:
    """Per judge (and `grounding` when on): AUC, how many good and bad controls got a score, and
    their mean scores."""
    out = {
        j.name: _separation(controls, lambda u, n=j.name: u.verdicts.get(n, {}).get("weighted"))
        for j in params.judges
    }
    if params.grounding.enabled:
        out["grounding"] = _separation(controls, lambda u: u.grounding)
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
    if not used and not params.grounding.enabled:
        aucs = ", ".join(f"{n} {report[n]['auc']}" for n in names)
        raise DistillError(
            f"distill: no judge tells good from bad pairs (AUC on the control pairs: "
            f"{aucs}; min_judge_auc "
            f"{params.min_judge_auc:g}) and no other gate is on: use better judges, lower "
            "distill.min_judge_auc, or turn on distill.grounding"
        )
    return report, used


def decide(unit: Unit, used: list[str], params: DistillParams) -> str:
    """The unit's status: kept, or why not (judge_failed, low_score, too_few_votes, ungrounded)."""
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
    gate = params.grounding
    if gate.enabled and (unit.grounding is None or unit.grounding < gate.min_gain):
        return "ungrounded"
    return "kept"
