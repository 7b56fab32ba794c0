"""datatrove's MinHash deduplication on a folder of JSONL files ({"id", "text"}), for
benchmarks/dedup.py. Runs inside the benchmark's own virtualenv (benchmarks/.venv-datatrove),
never in the project's: `<venv>/bin/python benchmarks/dedup_datatrove.py IN WORK --workers 2`.

Writes WORK/removed.json: {removed id: id of the kept member of its cluster}.
"""

import argparse
import json
import time
from pathlib import Path

from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.dedup.minhash import (
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.word_tokenizers import WordTokenizer


class Whitespace(WordTokenizer):
    """str.split in place of spaCy: the cheap tokenizer datatrove can be given."""

    def word_tokenize(self, text: str) -> list[str]:
        return text.split()

    def sent_tokenize(self, text: str) -> list[str]:
        return [text]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [(0, len(text))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("input", help="folder of JSONL files with id and text")
    ap.add_argument("work", help="scratch folder (emptied by the caller)")
    ap.add_argument("--workers", type=int, default=2, help="parallel tasks")
    ap.add_argument("--tokenizer", choices=["spacy", "whitespace"], default="spacy", help="word tokenizer")
    args = ap.parse_args()

    work = Path(args.work)
    tasks = len(list(Path(args.input).glob("*.jsonl")))
    config = MinhashConfig()  # datatrove's defaults: 5-grams, 14 buckets x 8 hashes
    language = Whitespace() if args.tokenizer == "whitespace" else "en"

    def reader():
        return JsonlReader(args.input, id_key="id", text_key="text", glob_pattern="*.jsonl")

    common = {"logging_dir": None, "workers": args.workers}
    t0 = time.perf_counter()
    LocalPipelineExecutor(
        pipeline=[reader(), MinhashDedupSignature(str(work / "sigs"), config=config, language=language)],
        tasks=tasks,
        **{**common, "logging_dir": str(work / "logs/sigs")},
    ).run()
    LocalPipelineExecutor(
        pipeline=[MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=config)],
        tasks=config.num_buckets,
        **{**common, "logging_dir": str(work / "logs/buckets")},
    ).run()
    LocalPipelineExecutor(
        pipeline=[
            MinhashDedupCluster(
                str(work / "buckets"), str(work / "remove"), config=config, save_cluster_id=True
            )
        ],
        tasks=1,
        **{**common, "workers": 1, "logging_dir": str(work / "logs/cluster")},
    ).run()
    LocalPipelineExecutor(
        pipeline=[
            reader(),
            MinhashDedupFilter(
                str(work / "remove"),
                exclusion_writer=JsonlWriter(str(work / "removed"), compression=None),
                load_cluster_ids=True,
            ),
            JsonlWriter(str(work / "kept"), compression=None),
        ],
        tasks=tasks,
        **{**common, "logging_dir": str(work / "logs/filter")},
    ).run()
    seconds = time.perf_counter() - t0

    def docs(folder: str):
        for f in sorted((work / folder).glob("*.jsonl")):
            for line in f.open():
                d = json.loads(line)
                yield d["id"], d["metadata"].get("minhash_cluster_id", -1), f.stem

    # cluster ids are numbered per run; the kept member is the one not in the exclusion output
    kept = {(cluster): doc_id for doc_id, cluster, _ in docs("kept") if cluster != -1}
    removed = {doc_id: kept.get(cluster) for doc_id, cluster, _ in docs("removed")}
    (work / "removed.json").write_text(json.dumps({"seconds": seconds, "removed": removed}))


if __name__ == "__main__":
    main()
