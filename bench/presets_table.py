"""One row per trained preset: quality, size, training time and serving cost, side by side.

Reads each run directory's `summary.json` (written by `vae-train train`) and its exported
graphs (`export/` for --no-publish runs, or the published version the summary names), then
times encode + decode of one image through onnxruntime for every model in the same run,
interleaved call by call, so the serving-cost ratios to the first run are like for like.

    python bench/presets_table.py runs/seed runs/presets/long runs/presets/wide runs/presets/deep
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from training.config import IMAGE_PIXELS
from training.evaluate import _session


def graphs_dir(run_dir: Path, summary: dict[str, Any]) -> Path:
    published = summary.get("published")
    return Path(published["path"]) if published else run_dir / "export"


def serving_costs(dirs: list[Path], calls: int = 20_000) -> list[float]:
    """Median microseconds per image of encode + decode, models interleaved call by call.

    Interleaving each call means a burst of load from elsewhere on the machine hits every
    model alike; the median discards the calls that were pre-empted.
    """
    sessions = [(_session(d / "encoder.onnx", 1), _session(d / "decoder.onnx", 1)) for d in dirs]
    x = (np.random.default_rng(0).random((1, IMAGE_PIXELS)) > 0.5).astype(np.float32)
    per_model: list[list[float]] = [[] for _ in dirs]
    for _ in range(calls):
        for times, (encoder, decoder) in zip(per_model, sessions, strict=True):
            start = time.perf_counter()
            mu, _ = encoder.run(["mu", "logvar"], {"x": x})
            decoder.run(["probs"], {"z": mu})
            times.append((time.perf_counter() - start) * 1e6)
    return [statistics.median(times) for times in per_model]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", type=Path, nargs="+", help="the first is the baseline")
    args = parser.parse_args()
    summaries = [json.loads((d / "summary.json").read_text()) for d in args.run_dirs]
    dirs = [graphs_dir(d, s) for d, s in zip(args.run_dirs, summaries, strict=True)]
    costs = serving_costs(dirs)
    print(
        "| preset | val -ELBO | IWAE NLL (k) | KL | active units | parameters | ONNX "
        "| train time | it/s | serving µs/image | vs first |"
    )
    print("|" + " --- |" * 11)
    base_elbo = summaries[0]["evaluation"]["neg_elbo"]
    for summary, d, cost in zip(summaries, dirs, costs, strict=True):
        e = summary["evaluation"]
        onnx_kb = sum((d / f).stat().st_size for f in ("encoder.onnx", "decoder.onnx")) / 1024
        minutes, seconds = divmod(summary["train_seconds"], 60)
        cells = [
            summary["preset"],
            f"{e['neg_elbo']:.2f} ({e['neg_elbo'] - base_elbo:+.2f})",
            f"{e['iwae_nll']:.2f} ({e['iwae_k']})",
            f"{e['kl']:.2f}",
            str(e["active_units"]),
            f"{summary['parameters']:,}",
            f"{onnx_kb:,.0f} KB",
            f"{minutes:.0f} min {seconds:.0f} s",
            f"{summary['iterations_per_second']:.0f}",
            f"{cost:.1f}",
            f"{cost / costs[0]:.2f}x",
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
