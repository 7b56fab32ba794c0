"""What can tell a contradicted answer from a good paraphrase? (issue 20)

Scores the control pairs of the shipped slices and the labelled pairs
(tests/distill/data/labelled_pairs.jsonl) with each probe, and prints its AUC: good pairs (the
good controls and the labelled good answers) against the `contradicted` controls, and against the
labelled `wrong` answers. Higher scores mean "consistent with the passage".

Probes:
- `min_gain`: the grounding gate's smallest per-token gain (what `min_token_gain` thresholds);
- `min_rel`: the smallest per-token gain minus the gain of the token the passage-conditioned base
  model expected there (a copy of the passage that changes one word should stand out);
- `deficit`: minus the largest log-probability gap, with the passage, between the expected token
  and the written one, where the model expected its token with p > 0.5;
- `--gguf FILE`: a GGUF model asked, few-shot, "True or false?" for each response sentence
  (log P(True) - log P(False), the smallest over sentences); needs llama-cpp-python;
- `--nli DIR`: an NLI cross-encoder through the gate itself (sftpipe.distill.nli): 1 - the
  largest contradiction probability over the response's sentences.

    python benchmarks/contradiction_probes.py [--model models/base] [--gguf F] [--nli DIR]
"""

from __future__ import annotations

import argparse
import re

from distill_signals import items, question  # the sibling benchmark's pairs (run as a script)

from sftpipe.distill.controls import auc
from sftpipe.distill.grounding import WITH, WITHOUT

SHOTS = (
    "Passage: The library opens at nine and closes at five. Members may borrow six books at a time.\n"
    "Statement: Members may borrow up to six books.\nTrue or false? True\n\n"
    "Passage: The library opens at nine and closes at five. Members may borrow six books at a time.\n"
    "Statement: The library closes at nine.\nTrue or false? False\n\n"
    "Passage: Water boils at 100 degrees Celsius at sea level, and at a lower temperature on a mountain.\n"
    "Statement: On a mountain, water boils below 100 degrees.\nTrue or false? True\n\n"
    "Passage: Water boils at 100 degrees Celsius at sea level, and at a lower temperature on a mountain.\n"
    "Statement: Water does not boil at 100 degrees at sea level.\nTrue or false? False\n\n"
)


def base_probes(model_dir: str, rows: list[dict]) -> dict[str, list[float]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def logp(prompt: str, response: str):
        answer = tok(" " + response, add_special_tokens=False)["input_ids"]
        context = tok(prompt, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([context + answer])).logits[0].float(), -1)
        return lp[len(context) - 1 : len(context) - 1 + len(answer)], torch.tensor(answer)

    out: dict[str, list[float]] = {"min_gain": [], "min_rel": [], "deficit": []}
    for row in rows:
        q, response = question(row["pair"]), row["pair"]["response"]
        with_, y = logp(WITH.format(content=row["content"], question=q), response)
        without, _ = logp(WITHOUT.format(question=q), response)
        at = torch.arange(len(y))
        top = with_.argmax(-1)
        gain = with_[at, y] - without[at, y]
        expected_gain = with_[at, top] - without[at, top]
        gap = with_[at, top] - with_[at, y]
        sure = (top != y) & (with_[at, top].exp() > 0.5)
        out["min_gain"].append(float(gain.min()))
        out["min_rel"].append(float((gain - expected_gain).min()))
        out["deficit"].append(-float(gap[sure].max()) if sure.any() else 0.0)
    return out


def gguf_probe(path: str, rows: list[dict]) -> list[float]:
    from llama_cpp import Llama

    llm = Llama(model_path=path, n_ctx=2048, n_threads=2, logits_all=True, verbose=False)

    def true_minus_false(passage: str, statement: str) -> float:
        prompt = f"{SHOTS}Passage: {passage}\nStatement: {statement}\nTrue or false?"
        top = llm.create_completion(prompt, max_tokens=1, logprobs=30, temperature=0)
        lp = top["choices"][0]["logprobs"]["top_logprobs"][0]
        best = {
            w: max([v for k, v in lp.items() if k.strip().lower() == w] or [-30.0]) for w in ("true", "false")
        }
        return best["true"] - best["false"]

    out = []
    for row in rows:
        said = [s for s in re.split(r"(?<=[.!?;:])\s+", row["pair"]["response"]) if len(s) > 3]
        out.append(min(true_minus_false(" ".join(row["content"].split()), s) for s in said or ["."]))
    return out


def nli_probe(folder: str, rows: list[dict]) -> list[float]:
    from sftpipe.distill.nli import NliParams, contradictions

    got = contradictions(NliParams(model=folder), [(r["content"], r["pair"]["response"]) for r in rows])
    return [1 - c for c in got]


def report(name: str, rows: list[dict], scores: list[float]) -> None:
    good = [s for r, s in zip(rows, scores, strict=True) if r["kind"] == "good"]
    parts = [f"{name:10}", f"good {min(good):7.2f} .. {max(good):6.2f}"]
    for kind in ("contradicted", "labelled_wrong"):
        bad = [s for r, s in zip(rows, scores, strict=True) if r["kind"] == kind]
        parts.append(f"AUC vs {kind} {auc(good, bad):.3f} (bad max {max(bad):.2f})")
    print(" | ".join(parts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/base", help="base model folder (default: models/base)")
    ap.add_argument("--slices", default="data/knowledge/slices.jsonl")
    ap.add_argument("--pairs", default="tests/distill/data/labelled_pairs.jsonl")
    ap.add_argument("--gguf", help="a GGUF model to ask 'True or false?' per sentence")
    ap.add_argument("--nli", help="an NLI cross-encoder folder (Hugging Face format)")
    args = ap.parse_args()
    rows = items(args.slices, args.pairs)
    for r in rows:  # the labelled wrong answers, apart from the controls
        r["kind"] = "labelled_wrong" if (r["set"], r["kind"]) == ("labelled", "wrong") else r["kind"]
    rows = [r for r in rows if r["kind"] in ("good", "contradicted", "labelled_wrong")]
    n = {k: sum(r["kind"] == k for r in rows) for k in ("good", "contradicted", "labelled_wrong")}
    print(
        f"{n['good']} good, {n['contradicted']} contradicted controls, {n['labelled_wrong']} labelled wrong"
    )
    for name, scores in base_probes(args.model, rows).items():
        report(name, rows, scores)
    if args.gguf:
        report("gguf", rows, gguf_probe(args.gguf, rows))
    if args.nli:
        report("nli", rows, nli_probe(args.nli, rows))


if __name__ == "__main__":
    main()
