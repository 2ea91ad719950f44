"""How many epochs a warm start needs to match training from scratch.

ml-latest-small, split in time: the validation split of the train part (leave-last-out of
leave-last-out's train, the test part never read) gives (fit, valid); the model of the first 90%
of ``fit``'s interactions by time is the old model, and ``fit`` the new log. Per seed, CML with
the defaults is trained on the new log from scratch and from the old model (``warm_start``), and
validation NDCG@10 / HR@10 recorded after every epoch (the served model at that point: tail mean
and pull applied).

    .venv/bin/python experiments/warm_start.py --seeds 0 1 2 --out-dir experiments/results

Writes ``warm_start.md`` / ``.json`` / ``.png``; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
from common import DATASETS, validation_interactions

from recsys_metric import Interactions, Recommender, TrainConfig


def first_share(data: Interactions, share: float) -> Interactions:
    """The first ``share`` of ``data``'s interactions by time (file order on ties)."""
    df = data.to_frame().iloc[data.time_order()]
    df = df.iloc[:int(share * len(df))]
    return Interactions.from_pairs(df["user"], df["item"], df["timestamp"],
                                   source=f"{data.source} (first {share:.0%})")


def curve(model_history: list[dict], key: str) -> list[float]:
    return [h[key] for h in model_history]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="ml-latest-small")
    p.add_argument("--share", type=float, default=0.9, help="the old log's share (default 0.9)")
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out-dir")
    args = p.parse_args()
    splits = validation_interactions([args.dataset])
    if not splits:
        print(json.dumps({"skipped": f"{DATASETS[args.dataset]} not found"}))
        return
    fit, valid = splits[args.dataset]
    old = first_share(fit, args.share)
    print(f"old log {old}; new log {fit}", flush=True)
    runs = {"scratch": [], "warm": []}
    seconds = {"old": [], "scratch": [], "warm": []}
    for seed in args.seeds:
        cfg = TrainConfig(seed=seed, epochs=args.epochs)
        t = time.perf_counter()
        base = Recommender(cfg).fit(old, show_progress=False)
        seconds["old"].append(time.perf_counter() - t)
        for name, start in (("scratch", None), ("warm", base)):
            t = time.perf_counter()
            model = Recommender(cfg).fit(fit, valid=valid, warm_start=start, show_progress=False)
            seconds[name].append(time.perf_counter() - t)
            runs[name].append(model.validation_history_)
            print(seed, name, "NDCG@10 by epoch: "
                  + " ".join(f"{x:.4f}" for x in curve(model.validation_history_,
                                                        "val_NDCG@10")), flush=True)
    res = summarise(runs, seconds, args)
    if args.out_dir:
        write(res, Path(args.out_dir), " ".join(sys.argv[1:]))
    print(json.dumps({k: res[k] for k in ("scratch_best_ndcg", "scratch_epochs_to_best",
                                          "warm_epochs_to_match", "warm_epoch1_ndcg",
                                          "scratch_epoch1_ndcg")}))


def summarise(runs: dict, seconds: dict, args) -> dict:
    mean = {name: {key: np.mean([curve(h, f"val_{key}") for h in hs], axis=0).tolist()
                   for key in ("NDCG@10", "HR@10")} for name, hs in runs.items()}
    scratch, warm = mean["scratch"]["NDCG@10"], mean["warm"]["NDCG@10"]
    final = scratch[-1]  # what training from scratch ends with, all epochs
    match = next((e + 1 for e, x in enumerate(warm) if x >= final), None)
    return {"dataset": args.dataset, "share": args.share, "seeds": args.seeds,
            "epochs": args.epochs, "mean": mean, "seconds": {k: float(np.mean(v))
                                                             for k, v in seconds.items()},
            "scratch_final_ndcg": final, "scratch_best_ndcg": max(scratch),
            "scratch_epochs_to_best": int(np.argmax(scratch)) + 1,
            "warm_epochs_to_match": match, "warm_best_ndcg": max(warm),
            "warm_epoch1_ndcg": warm[0], "scratch_epoch1_ndcg": scratch[0]}


def write(res: dict, out: Path, command: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "warm_start.json").write_text(json.dumps(res, indent=2) + "\n")
    epochs = np.arange(1, res["epochs"] + 1)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, style in (("scratch", "-"), ("warm", "--")):
        ax.plot(epochs, res["mean"][name]["NDCG@10"], style, marker=".",
                label={"scratch": "from scratch", "warm": "warm start (old model)"}[name])
    ax.axhline(res["scratch_final_ndcg"], color="grey", lw=0.8)
    ax.set(xlabel="epochs on the new log", ylabel="validation NDCG@10",
           title=f"{res['dataset']}: warm start from the first {res['share']:.0%} "
                 f"(mean of {len(res['seeds'])} seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "warm_start.png", dpi=120)
    m = res["mean"]
    rows = [f"| {e} | {m['scratch']['NDCG@10'][e - 1]:.4f} | {m['warm']['NDCG@10'][e - 1]:.4f}"
            f" | {m['scratch']['HR@10'][e - 1]:.4f} | {m['warm']['HR@10'][e - 1]:.4f} |"
            for e in (1, 2, 3, 5, 8, 12, 16, 20, 25) if e <= res["epochs"]]
    s = res["seconds"]
    text = [
        "# Warm start: epochs to match training from scratch", "",
        f"`.venv/bin/python experiments/warm_start.py {command}` on {date.today()} (2 cores, "
        "shared).", "",
        f"{res['dataset']}, the validation split of the train part (each user's latest train "
        f"item held out; the test part never read). Old model: defaults on the first "
        f"{res['share']:.0%} of the fit part by time; new log: all of it. Validation NDCG@10 "
        f"and HR@10 after each epoch of the new fit (the served model: tail mean and pull), "
        f"mean of seeds {res['seeds']}.", "",
        "| epochs | NDCG@10 scratch | NDCG@10 warm | HR@10 scratch | HR@10 warm |",
        "|---:|---:|---:|---:|---:|", *rows, "",
        f"From scratch, {res['epochs']} epochs end at NDCG@10 {res['scratch_final_ndcg']:.4f} "
        f"(best {res['scratch_best_ndcg']:.4f} at epoch {res['scratch_epochs_to_best']}). The "
        f"warm start reaches that after **{res['warm_epochs_to_match']} epoch(s)** "
        f"(best {res['warm_best_ndcg']:.4f}).", "",
        f"Seconds per fit (with per-epoch validation): old model {s['old']:.1f}, new log from "
        f"scratch {s['scratch']:.1f}, warm {s['warm']:.1f}.", "",
        "![NDCG@10 by epoch](warm_start.png)", ""]
    (out / "warm_start.md").write_text("\n".join(text))


if __name__ == "__main__":
    main()
