"""A comparison report on disk: ``report.md``, ``results.json``, plots and per-user metrics.

:func:`write_report` takes the result of :func:`recsys_metric.compare.run_comparison` (ideally
with ``n_boot > 0`` for intervals and paired tests, ``per_user=True`` for the CSV, and CML fitted
with ``patience > 0`` for its validation curve) and writes, into one directory:

- ``report.md``: the split, the protocol, one table per K (metric ± CI, fit seconds), the
  paired tests against CML, the plots, and the command that made it;
- ``results.json``: the DESIGN.md contract plus extras (``*_ci``, ``paired``, ``validation``);
- ``hr_ndcg_at_k.png``: HR@K and NDCG@K over K for every model, with CI bands;
- ``cml_validation.png``: CML's validation NDCG@10 (and HR@10) per epoch, and its training loss;
- ``per_user.csv``: one row per (user, model) when the result has per-user arrays.

Plots use matplotlib's object-oriented API on an Agg canvas: no pyplot, no global backend change.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .compare import REFERENCE, json_ready, per_user_frame

PROTOCOLS = {
    "leave-last-out": (
        "**leave-last-out**: duplicates of a (user, item) pair collapse to one (the last kept); "
        "each user's latest interaction by timestamp (ties: the later row in the file) is their "
        "test item; users with a single interaction stay train-only."),
    "random": (
        "**random**: for each user, round(20% of their interactions), drawn at random with the "
        "run's seed, are test, keeping at least one in train; users with a single interaction "
        "stay train-only."),
    "temporal": (
        "**temporal**: one global cut in time (`--cut`: a quantile of the timestamps, 0.8 by "
        "default, or a timestamp); every interaction after it is test. Test pairs whose user or "
        "item has no train interaction are dropped and counted (no model can rank what train "
        "never showed it): users without train interactions are not evaluated, and the "
        "candidates are the items seen in train."),
    "pre-split": (
        "**pre-split**: the train and test files were given (`--train`, `--test`) and used as "
        "is, over one id map built from train. Test pairs whose user or item is not in train "
        "are dropped and counted; test pairs also in train are kept and, since train items are "
        "never candidates, count as misses."),
}
COMMON = (
    "Every model is fitted on the same train part and ranks the whole catalogue for every test "
    "user, minus the items that user has in train (full ranking, no sampled negatives). "
    "HR@K: share of test users with a test item in the top K. NDCG@K: DCG of the hits over the "
    "ideal DCG of min(K, |test items|) hits. Recall@K: hits / |test items|. MAP@K: mean "
    "precision at the hits, over min(K, |test items|). MRR: 1 / full rank of the best test item. "
    "AUC: share of (test item, non-train non-test item) pairs ranked correctly, ties half. "
    "Coverage@K: share of the catalogue in at least one top-K list. Novelty@K: mean popularity "
    "rank (1 = most train interactions) of the recommended items; higher = less popular. "
    "Ties in score are broken by the lower item index.")
# Metrics whose best value (highest) is shown in bold.
QUALITY = ("HR", "NDCG", "Recall", "MAP", "MRR", "AUC")
PER_K = ("HR", "NDCG", "Recall", "MAP", "Coverage", "Novelty")
PLOT_FILE, VALIDATION_FILE = "hr_ndcg_at_k.png", "cml_validation.png"


# --------------------------------------------------------------------------- formatting


def _level(result: dict) -> str:
    alpha = result.get("stats", {}).get("alpha", 0.05)
    return f"{100 * (1 - alpha):g}%"


def _fmt(value: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _cell(m: dict, key: str, digits: int = 4) -> str:
    """``value ± half-width of the CI`` (the CI itself may be asymmetric: see results.json)."""
    v = m.get(key)
    ci = m.get(f"{key}_ci")
    text = _fmt(v, digits)
    if ci and v is not None and not any(c is None or math.isnan(c) for c in ci):
        text += f" ± {(ci[1] - ci[0]) / 2:.{digits}f}"
    return text


def _p(p: float | None) -> str:
    if p is None or math.isnan(p):
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _table(result: dict, keys: Sequence[str], digits: Sequence[int]) -> str:
    models = result["models"]
    header = "| model | " + " | ".join(keys) + " | fit s |"
    lines = [header, "|---|" + "---:|" * (len(keys) + 1)]
    best = {}
    for key in keys:
        if key.split("@")[0] in QUALITY and len(models) > 1:
            vals = [m.get(key) for m in models.values()]
            vals = [v for v in vals if v is not None and not math.isnan(v)]
            best[key] = max(vals) if vals else None
    for name, m in models.items():
        cells = []
        for key, d in zip(keys, digits, strict=True):
            text = _cell(m, key, d)
            if key in best and m.get(key) is not None and m.get(key) == best[key]:
                text = f"**{text}**"
            cells.append(text)
        cells.append(f"{m.get('fit_seconds', float('nan')):.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main_k(ks: Sequence[int]) -> int:
    """The headline cut-off: 10 when evaluated, else the middle one."""
    ks = sorted(ks)
    return 10 if 10 in ks else ks[len(ks) // 2]


def markdown_tables(result: dict, ks: Sequence[int] | None = None, heading: str = "") -> str:
    """One markdown table for MRR and AUC, then one per K in ``ks`` (default: all): metric ±
    half-width of its CI. ``heading`` prefixes each table's title (e.g. ``"### "``)."""
    first = next(iter(result["models"].values()), {})
    parts = []
    overall = [key for key in ("MRR", "AUC") if key in first]
    if overall:
        parts.append(f"{heading}All cut-offs\n\n" + _table(result, overall, [4] * len(overall)))
    for k in result["k"] if ks is None else ks:
        keys = [f"{name}@{k}" for name in PER_K if f"{name}@{k}" in first]
        digits = [1 if key.startswith("Novelty") else 4 for key in keys]
        parts.append(f"{heading}K = {k}\n\n" + _table(result, keys, digits))
    return "\n\n".join(parts)


def paired_table(result: dict, ks: Sequence[int] | None = None) -> str:
    """The paired tests against CML as one markdown table (empty string when there are none):
    HR@K and NDCG@K for each K in ``ks`` (default: all), then MRR and AUC."""
    paired = result.get("paired")
    if not paired:
        return ""
    ks = result["k"] if ks is None else ks
    level = _level(result)
    keys = [f"{m}@{k}" for k in ks for m in ("HR", "NDCG")] + ["MRR", "AUC"]
    lines = [f"| model | metric | {REFERENCE} | model | {REFERENCE} − model [{level} CI] | "
             "p (bootstrap) | p (Wilcoxon) | verdict |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for name, tests in paired.items():
        for key in keys:
            t = tests.get(key)
            if t is None:
                continue
            lo, hi = t["ci"]
            if lo is not None and hi is not None and lo > 0:
                verdict = f"{REFERENCE} better"
            elif lo is not None and hi is not None and hi < 0:
                verdict = f"{REFERENCE} worse"
            else:
                verdict = "no clear difference"
            lines.append(
                f"| {name} | {key} | {_fmt(t[REFERENCE], 4)} | {_fmt(t['model'], 4)} | "
                f"{t['diff']:+.4f} [{_fmt(lo, 4)}, {_fmt(hi, 4)}] | {_p(t['p_value'])} | "
                f"{_p(t['wilcoxon_p'])} | {verdict} |")
    return "\n".join(lines)


def tuned_section(result: dict) -> str:
    """Markdown for ``result["tuned"]`` (empty string when nothing was tuned): how, then one
    row per tuned model with its validation score and best parameters."""
    tuned = result.get("tuned")
    if not tuned:
        return ""
    first = next(iter(tuned.values()))
    trials = sorted({t["n_trials"] for t in tuned.values()})
    lines = [f"Tuned with Optuna's seeded TPE sampler, {'/'.join(map(str, trials))} completed "
             f"trials per model, maximising {first['metric']} on a validation split carved from "
             "the train part (each train user's latest interaction); the test part was never "
             "seen. Each model was then refit with its best parameters on the whole train part. "
             "Every trial is in results.json (`tuned`).", "",
             f"| model | trials | validation {first['metric']} | tuning s | best parameters |",
             "|---|---:|---:|---:|---|"]
    for name, t in tuned.items():
        params = ", ".join(f"{k}={_param(v)}" for k, v in t["params"].items())
        lines.append(f"| {name} | {t['n_trials']} | {_fmt(t['validation_value'], 4)} | "
                     f"{t['seconds']:.0f} | {params} |")
    return "\n".join(lines)


def _param(v: Any) -> str:
    if v is None:
        return "auto"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# --------------------------------------------------------------------------- plots


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=130, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _colors(names: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    fixed = {"cml": 3, "popularity": 7, "als": 0, "bpr": 2}  # red, grey, blue, green
    spare = iter(i for i in range(10) if i not in fixed.values())
    return {n: cmap(fixed[n] if n in fixed else next(spare)) for n in names}


# Distinct markers and dashes, so that models with equal values stay visible on top of each other.
_STYLES = [("o", "-"), ("s", (0, (1, 1.5))), ("^", (0, (5, 2))), ("D", (0, (6, 2, 1, 2))),
           ("v", (0, (3, 1, 1, 1, 1, 1))), ("P", (0, (8, 3)))]


def _dataset_label(result: dict) -> str:
    path = Path(str(result["dataset"]))
    return "/".join(path.parts[-2:]) if len(path.parts) > 1 else path.name


def plot_hr_ndcg(result: dict, path: str | Path) -> Path:
    """HR@K and NDCG@K over K, one line per model, shaded CI bands when the result has them."""
    ks = sorted(result["k"])
    models = result["models"]
    colors = _colors(list(models))
    fig = _figure(11, 5.0)
    axes = fig.subplots(1, 2)
    styles = {}
    rest = iter(_STYLES[1:])
    for name in models:
        styles[name] = _STYLES[0] if name == REFERENCE else next(rest, _STYLES[-1])
    for ax, metric in zip(axes, ("HR", "NDCG"), strict=True):
        for name, m in models.items():
            ys = [m.get(f"{metric}@{k}", math.nan) for k in ks]
            ys = [math.nan if y is None else y for y in ys]
            main = name == REFERENCE
            marker, dash = styles[name]
            ax.plot(ks, ys, marker=marker, ls=dash, ms=7 if main else 6,
                    lw=2.6 if main else 1.8, color=colors[name], label=name,
                    zorder=2 if main else 3, mfc="none" if not main else colors[name],
                    mew=1.5)
            cis = [m.get(f"{metric}@{k}_ci") for k in ks]
            if all(ci and None not in ci for ci in cis):
                ax.fill_between(ks, [c[0] for c in cis], [c[1] for c in cis],
                                color=colors[name], alpha=0.15, lw=0)
        if len(ks) > 1 and ks[-1] / ks[0] >= 10:
            ax.set_xscale("log")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.minorticks_off()
        ax.set_ylim(bottom=0)
        ax.set_xlabel("K (length of the recommendation list)", fontsize=11)
        ax.set_ylabel(f"{metric}@K", fontsize=11)
        ax.set_title(f"{metric}@K", fontsize=13)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=11,
               frameon=False, handlelength=3.5)
    s = result["split"]
    band = (f"; bands: {_level(result)} bootstrap CI over users" if "stats" in result else "")
    fig.suptitle(f"{_dataset_label(result)} — {result['protocol']}, full ranking, "
                 f"{s.get('test_users', '?')} test users{band}", fontsize=12)
    path = Path(path)
    fig.savefig(path)
    return path


def plot_validation(result: dict, path: str | Path, model: str = REFERENCE) -> Path | None:
    """``model``'s validation NDCG@10 / HR@10 per epoch and its training loss (None when the
    result has no validation curve for it)."""
    val = result.get("validation", {}).get(model)
    history = [h for h in (val or {}).get("history", []) if "val_NDCG@10" in h]
    if not history:
        return None
    epochs = [int(h["epoch"]) for h in history]
    best = val.get("best_epoch")
    color = _colors([model])[model]
    fig = _figure(11, 4.3)
    ax, ax_loss = fig.subplots(1, 2)
    ax.plot(epochs, [h["val_NDCG@10"] for h in history], marker="o", ms=3, lw=2,
            color=color, label="validation NDCG@10")
    if all("val_HR@10" in h for h in history):
        ax.plot(epochs, [h["val_HR@10"] for h in history], marker="s", ms=3, lw=1.4, ls="--",
                color=color, alpha=0.6, label="validation HR@10")
    if best:
        ax.axvline(best, color="black", lw=1, ls=":",
                   label=f"best epoch {best} (refit on all train for {best} epochs)")
    ax.set_xlabel("epoch", fontsize=11)
    ax.set_ylabel("metric on the validation split", fontsize=11)
    how = "best tuning trial" if val.get("source") else "early stopping"
    ax.set_title(f"{model.upper()} {how}: validation split carved from train", fontsize=12)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=9, loc="lower right")
    if all("loss" in h for h in history):
        ax_loss.plot(epochs, [h["loss"] for h in history], marker="o", ms=3, lw=2, color="0.3")
        if best:
            ax_loss.axvline(best, color="black", lw=1, ls=":")
        ax_loss.set_xlabel("epoch", fontsize=11)
        ax_loss.set_ylabel("mean training loss", fontsize=11)
        ax_loss.set_title("training loss (validation run)", fontsize=12)
        ax_loss.grid(True, alpha=0.3)
    else:
        ax_loss.set_visible(False)
    for a in (ax, ax_loss):
        a.tick_params(labelsize=10)
        if len(epochs) <= 20:
            a.set_xticks(epochs)
    path = Path(path)
    fig.savefig(path)
    return path


# --------------------------------------------------------------------------- the report


def _split_table(result: dict) -> str:
    s = result["split"]
    density = s["train"] / max(1, s["users"] * s["items"])
    table = ("| protocol | users | items | train interactions | test interactions | test users | "
             "train density |\n|---|---:|---:|---:|---:|---:|---:|\n"
             f"| {result['protocol']} | {s['users']} | {s['items']} | {s['train']} | {s['test']} "
             f"| {s.get('test_users', '–')} | {100 * density:.2f}% |")
    return table + ("\n\n" + unseen_line(s) if "test_pairs_unseen" in s else "")


def unseen_line(s: dict) -> str:
    """One sentence on the test ids train never saw (temporal and pre-split protocols)."""
    if "catalogue_items" in s:  # pre-split files: items kept, users dropped
        extra = s["items_without_train"]
        text = (f"Catalogue: {s['catalogue_items']} items" + (
            f", {extra} of them without train interactions ({s['test_unseen_items']} from the "
            f"test file, {s['negative_items_without_train']} from the negatives), ranked like "
            f"any other ({s['test_pairs_item_without_train']} test pairs hold one)" if extra
            else ", all with train interactions") + f"; test users unseen in train: "
            f"{s['test_unseen_users']}, {s['test_pairs_unseen']} of {s['test_pairs_total']} "
            "test pairs dropped (not evaluated)")
    else:
        text = (f"Test ids unseen in train: {s['test_unseen_users']} users, "
                f"{s['test_unseen_items']} items; {s['test_pairs_unseen']} of "
                f"{s['test_pairs_total']} test pairs dropped (not evaluated)")
    if "cut_time" in s:
        text += f"; cut {s['cut']:g} = timestamp {s['cut_time']:.10g}"
    if s.get("test_pairs_in_train"):
        text += f"; {s['test_pairs_in_train']} test pairs are also in train (kept: misses)"
    return text + "."


def extra_tables(result: dict, k: int) -> str:
    """Markdown for the sampled metrics (with their warning) and CML through its Annoy index,
    at cut-off ``k``; empty when neither was asked."""
    from .protocols import SAMPLED_WARNING

    models, parts = result["models"], []
    if "sampled" in result:
        sm = result["sampled"]
        keys = [key for key in (f"sampled_HR@{k}", f"sampled_NDCG@{k}", f"sampled_Recall@{k}",
                                "sampled_MRR") if key in next(iter(models.values()), {})]
        parts.append(f"Sampled protocol (negatives: {sm['negatives']}; "
                     f"{sm.get('negatives_per_user', 0):.1f} per user, {sm.get('users', 0)} "
                     f"users). {SAMPLED_WARNING[len('warning: '):]}\n\n"
                     + _table(result, keys, [4] * len(keys)))
    cml = models.get(REFERENCE, {})
    if f"annoy_HR@{k}" in cml:
        rows = ["| metric | exact | Annoy | lost |", "|---|---:|---:|---:|"]
        for m in ("HR", "NDCG", "Recall"):
            ex, ap = cml.get(f"{m}@{k}"), cml.get(f"annoy_{m}@{k}")
            rows.append(f"| {m}@{k} | {_fmt(ex, 4)} | {_fmt(ap, 4)} | "
                        f"{_fmt(None if ex is None or ap is None else ex - ap, 4)} |")
        parts.append(f"{REFERENCE.upper()} served through its Annoy index (search_k "
                     f"{cml.get('annoy_search_k')}, calibrated recall@10 "
                     f"{_fmt(cml.get('annoy_calibrated_recall@10'), 3)}); overlap of the Annoy "
                     f"top {k} with the exact top {k}: "
                     f"{_fmt(cml.get(f'annoy_recall_vs_exact@{k}'), 4)}\n\n" + "\n".join(rows))
    return "\n\n".join(parts)


def write_report(result: dict, out_dir: str | Path, command: str | None = None,
                 config: dict | None = None, title: str | None = None) -> dict[str, Path]:
    """Write the report of a comparison into ``out_dir`` (created if needed).

    Parameters
    ----------
    result : from :func:`recsys_metric.compare.run_comparison`.
    out_dir : directory to write into; existing report files there are replaced.
    command : the exact command that made ``result``, quoted in the report and results.json.
    config : CML's training configuration (``TrainConfig.to_dict()``), quoted likewise.
    title : report title; default from the dataset name.

    Returns
    -------
    dict of the paths written: ``report``, ``results``, ``plot_k``, and where available
    ``plot_validation`` and ``per_user``.
    """
    from . import __version__

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}

    data = json_ready(result)
    if command:
        data["command"] = command
    if config:
        data["config"] = config
    paths["results"] = out / "results.json"
    paths["results"].write_text(json.dumps(data, indent=2) + "\n")

    paths["plot_k"] = plot_hr_ndcg(result, out / PLOT_FILE)
    val = plot_validation(result, out / VALIDATION_FILE)
    if val is not None:
        paths["plot_validation"] = val
    elif (out / VALIDATION_FILE).exists():
        (out / VALIDATION_FILE).unlink()  # stale: from an earlier run in this directory
    if "per_user" in result:
        paths["per_user"] = out / "per_user.csv"
        per_user_frame(result).to_csv(paths["per_user"], index=False)

    dataset = _dataset_label(result)
    level = _level(result)
    stats = result.get("stats")
    s = result["split"]
    md = [f"# {title or f'CML vs peers on {dataset}'}", ""]
    if command:
        md += ["Made by:", "", "```", command, "```", ""]
    md += [f"recsys-metric {__version__}, "
           f"{_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}. "
           f"Dataset: `{result['dataset']}`.", "", "## Split", "", _split_table(result), "",
           "## Protocol", "", PROTOCOLS.get(result["protocol"], result["protocol"]), "",
           COMMON, ""]
    if stats:
        md += [f"Intervals: {level} percentile bootstrap of the mean over the {s.get('test_users')}"
               f" test users ({stats['n_boot']} resamples, seed {stats['seed']}). In the tables, "
               "± is half the interval's width; the exact (possibly asymmetric) bounds are in "
               "results.json (`METRIC_ci`).", ""]
    cml_val = result.get("validation", {}).get(REFERENCE)
    if cml_val and REFERENCE in result.get("tuned", {}):
        md += [f"CML's number of epochs was tuned with its other hyper-parameters (below): each "
               f"trial trained on a validation split carved from train and kept its best epoch; "
               f"the best trial's epoch was {cml_val.get('best_epoch')}, then CML was refit on "
               "all of train for that many epochs. The curve plotted is the best trial's.", ""]
    elif cml_val:
        md += [f"CML's number of epochs was chosen by early stopping on validation NDCG@10, on a "
               f"validation split carved from train (each train user's latest item); the best "
               f"epoch was {cml_val.get('best_epoch')}, then CML was refit on all of train for "
               "that many epochs. Its fit seconds include the validation run.", ""]
    md += ["## Results", "", "Fit seconds are wall-clock on this machine; the best value of "
           "each quality metric is in bold.", "", markdown_tables(result, heading="### "), ""]
    tuned = tuned_section(result)
    if tuned:
        md += ["## Tuned hyper-parameters", "", tuned, ""]
    extra = extra_tables(result, main_k(result["k"]))
    if extra:
        md += ["## Sampled metrics and approximate serving", "", extra, ""]
    paired = paired_table(result)
    if paired:
        md += ["## Paired tests against CML", "",
               f"Per test user, CML's value minus the other model's, on the same users: the mean "
               f"difference, its {level} paired-bootstrap interval, a two-sided paired-bootstrap "
               "p-value and the Wilcoxon signed-rank p-value (zero differences dropped). "
               "\"verdict\" reads the interval: a difference whose interval excludes 0. The "
               "p-values are not corrected for the number of tests. Every metric is in "
               "results.json (`paired`).", "", paired, ""]
    elif REFERENCE in result["models"] and len(result["models"]) > 1:
        md += ["## Paired tests against CML", "", "Not computed (no bootstrap requested).", ""]
    md += ["## Plots", "", f"![HR@K and NDCG@K over K]({PLOT_FILE})", ""]
    if val is not None:
        md += [f"![CML validation NDCG@10 per epoch]({VALIDATION_FILE})", ""]
    else:
        md += ["No CML validation curve: CML was not fitted with early stopping (patience 0) "
               "or not compared.", ""]
    if config:
        md += ["## CML training configuration", "", "```json",
               json.dumps(config, indent=2), "```", ""]
    files = ", ".join(f"`{p.name}`" for p in paths.values())
    md += ["## Files", "", f"This directory: `report.md`, {files}.", ""]
    paths["report"] = out / "report.md"
    paths["report"].write_text("\n".join(md))
    return paths
