"""``recsys-metric``: train | recommend | similar | evaluate | compare | tune | demo.

A user's mistake (bad file, unknown id, bad argument) prints one line on stderr and exits 2;
never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import warnings
from pathlib import Path

from .device import resolve_device
from .reading import read_item_names, read_ratings
from .train import TIME_BLIND, ConfigWarning, TimeOrderWarning, TrainConfig

# Flags that map one-to-one onto TrainConfig fields, with their help (the default is appended
# from TrainConfig, the allowed values from the choices).
TRAIN_FLAGS = {
    "dim": (int, "dimensions of the space"),
    "margin": (float, "margin of the triplet and contrastive losses (squared distance units)"),
    "n_negatives": (int, "triplet: U candidates per pair, the hardest kept (default: 1%% of the "
                         "items within [10, 100]); contrastive/softmax: N negatives (default "
                         "100)"),
    "epochs": (int, "passes over the interactions (with --patience: at most)"),
    "batch_size": (int, "pairs whose negatives are drawn against the same tables"),
    "lr": (float, "learning rate"),
    "optimizer": (str, "adagrad: per coordinate; adagrad_row: one accumulator per row"),
    "clip_norm": (float, "rows are kept in the ball of this radius; <= 0: no clip"),
    "init_norm": (float, "expected norm of the rows at the start"),
    "cov_weight": (float, "CML's covariance regulariser (torch loop only)"),
    "seed": (int, "random seed: same seed, same model"),
    "device": (str, "auto, cpu, cuda or cuda:N"),
    "backend": (str, "negative sampler and loop: auto picks the fused CPU loop on CPU, Triton "
                     "on CUDA"),
    "patience": (int, "> 0: stop when validation NDCG@10 has not improved for this many "
                      "epochs, then refit on everything for the best number"),
    "lanes": (int, "fused CPU loop: parallel streams (the model depends on it, not on threads)"),
    "average_last": (int, "the model is the mean of the last this-many epochs' tables; 0: the "
                          "last epoch's"),
    "recent_share": (float, "share of each user's history (the latest) visited again; 0: off"),
    "recent_visits": (int, "visits per epoch of that latest share"),
    "recent_pull": (float, "after training, each user moves this share toward their latest "
                           "items; 0: off (needs timestamps)"),
    "pull_decay": (float, "weight of each older item in the pull (the newest weighs 1)"),
    "transitions": (int, "items' context rows: what followed each item within this many "
                         "steps; 0: off (needs timestamps)"),
    "loss": (str, "triplet (hardest of U, WARP weight), contrastive (CCL) or softmax "
                  "(sampled, log-Q corrected)"),
    "distance": (str, "euclidean (squared) or cosine (contrastive and softmax)"),
    "sampler": (str, "how contrastive/softmax negatives are drawn: uniform or popularity"),
    "negative_weight": (float, "contrastive: weight of the negatives' mean violation"),
    "temperature": (float, "softmax temperature"),
}
BUNDLED = Path(__file__).resolve().parents[1] / "data" / "books"
MODELS_HELP = ("comma-separated, from cml, popularity, als, bpr, als-recency (implicit ALS "
               "given the time order CML uses: context rows, users pulled toward their latest "
               "items), ease (Steck's closed-form item-item model; O(items²) memory); "
               "default %(default)s")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _add_data_args(p: argparse.ArgumentParser, optional: bool = False) -> None:
    p.add_argument("ratings", nargs="?" if optional else None,
                   help="ratings file: CSV/TSV with or without header, '::', Parquet"
                        + (" (or give --train and --test)" if optional else ""))
    for what in ("user", "item", "rating", "time"):
        p.add_argument(f"--{what}-col", metavar="NAME",
                       help=f"name of the {what} column (found among common names when "
                            "omitted)")
    p.add_argument("--sep", help="field separator (sniffed when omitted)")
    p.add_argument("--min-rating", type=float,
                   help="keep only rows rated at least this (default: every row counts)")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training (defaults: TrainConfig)")
    g.add_argument("--config", help="JSON file of TrainConfig fields; flags below override it")
    from .losses import DISTANCES, LOSSES
    from .sampling import BACKENDS
    from .train import OPTIMIZERS, SAMPLERS

    choices = {"optimizer": OPTIMIZERS, "loss": LOSSES, "distance": DISTANCES,
               "sampler": SAMPLERS, "backend": BACKENDS}
    defaults = TrainConfig()
    for name, (typ, what) in TRAIN_FLAGS.items():
        default = getattr(defaults, name)
        tail = "" if default is None else f" (default {default})"
        g.add_argument("--" + name.replace("_", "-"), type=typ, dest=name,
                       choices=choices.get(name), help=what + tail)
    g.add_argument("--no-rank-weight", action="store_true", help="plain hinge, no WARP weight")
    g.add_argument("--shared-negatives", action="store_true",
                   help="contrastive/softmax: one set of --n-negatives per batch, shared by its "
                        "pairs (in-batch negatives)")
    g.add_argument("--task", choices=("auto", "next", "any"), default="auto",
                   help="what CML is for: 'next', each user's next item (the time order: "
                        "recency visits, context rows, the pull); 'any', items from anywhere in "
                        "a history (time-blind). auto (default): read from the split by "
                        "evaluate/compare/tune (the next item when the test holds it), 'next' "
                        "for train")
    g.add_argument("--time-blind", action="store_true", help="same as --task any")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def _config(args: argparse.Namespace, **defaults) -> TrainConfig:
    """TrainConfig from ``defaults`` (this command's), then ``--config``, then the flags; each
    layer checked, so a bad value names its file or flag, and the device is checked to exist
    before any data is read."""
    values = dict(defaults)
    if args.config:
        try:
            loaded = json.loads(Path(args.config).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{args.config}: cannot read config: {e}") from None
        if isinstance(loaded, dict):
            loaded = loaded.get("config", loaded)  # accept a saved model's config.json too
        if not isinstance(loaded, dict):
            raise ValueError(f"{args.config}: expected a JSON object of TrainConfig fields")
        try:
            TrainConfig.from_dict({**values, **loaded})
        except ValueError as e:
            raise ValueError(f"{args.config}: {e}") from None
        values.update(loaded)
    explicit = set(values) - set(defaults)  # the --config file's
    if _task(args) == "any":  # as TrainConfig.for_task: what a user gave stays
        values.update({k: v for k, v in TIME_BLIND.items() if k not in explicit})
    flags = {k: getattr(args, k) for k in TRAIN_FLAGS if getattr(args, k) is not None}
    args.explicit = sorted(explicit | set(flags))  # kept whatever the task
    values.update(flags)
    if args.no_rank_weight:
        values["rank_weight"] = False
    if args.shared_negatives:
        values["shared_negatives"] = True
    try:
        config = TrainConfig.from_dict(values)
    except ValueError as e:
        name = next((k for k in flags if str(e).startswith(k + " ")), None)
        raise ValueError(f"--{name.replace('_', '-')}: {e}" if name else str(e)) from None
    resolve_device(config.device)
    return config


def _task(args: argparse.Namespace) -> str:
    """--task, with --time-blind as --task any."""
    if args.time_blind and args.task == "next":
        raise ValueError("--time-blind and --task next contradict each other: give one")
    return "any" if args.time_blind else args.task


def _note_task(result: dict) -> None:
    """Which task CML was trained for, and why (when it is in the comparison)."""
    t = result.get("task")
    if t and "cml_config" in result:
        how = ("with the time order (recency visits, context rows, the pull)"
               if t["task"] == "next" else "time-blind")
        other = "any" if t["task"] == "next" else "next"
        print(f"task: {t['task']}, {t['reason']}: CML trained {how}; --task {other} to "
              "override")


def _read(args: argparse.Namespace):
    return read_ratings(args.ratings, args.user_col, args.item_col, args.rating_col,
                        args.time_col, args.sep, args.min_rating)


def _add_protocol_args(p: argparse.ArgumentParser) -> None:
    """Flags of evaluate and compare for the protocols of recsys_metric.protocols."""
    g = p.add_argument_group("protocols")
    g.add_argument("--cut", help="temporal protocol: a fraction in (0, 1) (quantile of time, "
                                 "default 0.8), a timestamp or a date")
    g.add_argument("--train", metavar="FILE", help="pre-split data: the train file (with --test;"
                                                   " used as is, instead of RATINGS)")
    g.add_argument("--test", metavar="FILE", help="pre-split data: the test file")
    g.add_argument("--format", default="auto", choices=("auto", "ratings", "lightgcn", "lists"),
                   help="input format: 'lightgcn' is 'user item item ...' per line (LightGCN/NGCF"
                        " benchmarks), auto detects it (default); 'lists' is 'N item_1 ... item_N'"
                        " per line, the user the line number (citeulike's users.dat; never"
                        " detected)")
    g.add_argument("--negatives", metavar="FILE",
                   help="sampled protocol (papers only): NCF .test.negative file "
                        "'(user,item)<TAB>neg...' or a user,item table of negatives")
    g.add_argument("--sample-negatives", type=_positive, metavar="N",
                   help="sampled protocol (papers only): N uniform non-interacted items per user")
    g.add_argument("--index", default="exact", choices=("exact", "annoy"),
                   help="annoy: also rank CML's test users through its Annoy index and report "
                        "the metric lost to approximation")
    g.add_argument("--approximate", dest="index", action="store_const", const="annoy",
                   help="same as --index annoy")


def _inputs(args: argparse.Namespace):
    """``(data, kwargs)`` for run_comparison from the protocol flags; checks them before any
    file is read."""
    from .protocols import parse_cut, read_interactions, read_split

    if args.negatives and args.sample_negatives:
        raise ValueError("--negatives and --sample-negatives: give one, not both")
    if args.negatives and not Path(args.negatives).is_file():
        raise ValueError(f"{args.negatives}: no such file")
    kw = {"negatives": args.negatives, "sample_negatives": args.sample_negatives or 0,
          "approximate": args.index == "annoy"}
    read_kw = {"user_col": args.user_col, "item_col": args.item_col, "rating_col":
               args.rating_col, "time_col": args.time_col, "sep": args.sep,
               "min_rating": args.min_rating}
    if args.train or args.test:
        if not (args.train and args.test):
            raise ValueError("--train and --test go together: give both")
        if args.ratings:
            raise ValueError("give a RATINGS file or --train/--test, not both")
        if args.protocol or args.cut is not None:
            raise ValueError(f"{'--protocol' if args.protocol else '--cut'} does not apply to "
                             "--train/--test: the given split is used as is")
        presplit = read_split(args.train, args.test, args.format, negatives=args.negatives,
                              **read_kw)
        return None, {**kw, "protocol": "pre-split", "presplit": presplit,
                      "dataset": args.train}
    if not args.ratings:
        raise ValueError("give a RATINGS file, or --train and --test")
    protocol = args.protocol or "leave-last-out"
    if args.cut is not None and protocol != "temporal":
        raise ValueError("--cut applies to --protocol temporal only")
    cut = parse_cut(args.cut) if args.cut is not None else None
    data = read_interactions(args.ratings, args.format, **read_kw)
    return data, {**kw, "protocol": protocol, "cut": cut, "dataset": args.ratings}


def _print_extras(result: dict) -> None:
    """The sampled metrics (with their warning on stderr) and CML through Annoy, if asked."""
    from .protocols import SAMPLED_WARNING
    from .report import extra_tables, main_k

    if "sampled" in result:
        print(f"recsys-metric: {SAMPLED_WARNING}", file=sys.stderr)
    extra = extra_tables(result, main_k(result["k"]))
    if extra:
        print("\n" + extra)


def cmd_train(args: argparse.Namespace) -> int:
    from .modeldir import check_target
    from .recommender import Recommender

    if args.task == "auto":  # no split to read the task from: the next item
        args.task = "next"
    base = None
    if args.warm_start:  # its hyper-parameters are this fit's defaults; flags override them
        base = Recommender.load(args.warm_start)
        config = _config(args, **base.config.to_dict())
    else:
        config = _config(args)
    check_target(args.out)  # before any work: never train a model that cannot be saved
    group = None
    if not args.distributed and (args.syncs or args.sync):
        raise ValueError(f"{'--syncs' if args.syncs else '--sync'} applies with --distributed "
                         "only")
    if args.distributed:  # one of torchrun's processes: rank 0 saves, the others train
        from .distributed import Group

        group = Group.from_env(args.syncs or 8, args.sync or "allreduce", config.device)
    try:
        data = _read(args)
        if args.items:
            data.item_names = read_item_names(args.items)
        model = Recommender(config, index=args.index).fit(
            data, show_progress=not args.quiet, warm_start=base,
            checkpoint_dir=args.checkpoint_dir, distributed=group)
    finally:
        if group is not None:
            group.close()
    if group is not None and group.rank > 0:
        return 0
    model.save(args.out)
    last = model.history_[-1] if model.history_ else {}
    print(f"trained on {data.nnz} interactions ({data.n_users} users, {data.n_items} items) in "
          f"{model.fit_seconds_:.1f} s [{model.training_loop_}], final loss "
          f"{last.get('loss', float('nan')):.4f}; index {model.index_kind_} "
          f"(recall@10 {model.index_recall_:.3f}); saved to {args.out}")
    if data.timestamps is None and (config.transitions or config.recent_pull):
        print(f"note: {data.source} has no timestamps, so the context rows and the pull toward "
              "each user's latest items were off (the recency visits took the file order)")
    return 0


SCORE_NOTE = ("score: minus the squared distance between the points (higher is closer; 0 "
              "would be the same point)")


def _ids(values: list[str] | None) -> list[str]:
    """Ids from repeated flags, each maybe a comma-separated list."""
    return [x.strip() for v in values or [] for x in v.split(",") if x.strip()]


def _print_items(model, ids, scores, as_json: bool, key: str, raw, because=None) -> None:
    from .recommender import items_json

    items = items_json(model, ids, scores, because)
    if as_json:
        print(json.dumps({key: raw, "items": items}, ensure_ascii=False))
        return
    for rank, it in enumerate(items, 1):
        print(f"{rank:3d}. {it['item']:>10}  {it['score']:+.4f}  {it.get('name', '')}")
        if "because" in it:
            print("       because you liked " + ", ".join(
                f"{b.get('name', b['item'])} ({b['distance']:.3f})" for b in it["because"]))


def cmd_recommend(args: argparse.Namespace) -> int:
    from .recommender import Recommender

    users, new_items = _ids(args.user), _ids(args.items)
    if args.users_file:
        users += _read_ids(args.users_file)
    if args.out:
        _check_new_file(args.out, "--out")
    model = Recommender.load(args.model)
    users = list(model.users_.ids) if args.all else list(dict.fromkeys(users))
    if not users and not new_items:
        raise ValueError("recommend: give --user ID[,ID...], --users-file F, --all, or --items "
                         "(a new user's items)")
    if new_items and len(users) > 1:
        raise ValueError("recommend: --items are one user's: give them alone (a new user) or "
                         "with one --user")
    keep = dict(N=args.k, filter_already_liked_items=not args.keep_liked)
    if (args.out and not new_items) or (len(users) > 1 and not args.json):
        frame = model.recommend_frame(users, **keep, show_progress=not args.quiet,
                                      explain=args.explain)
        if not args.out:
            print(frame.to_csv(index=False), end="")
            return 0
        _write_frame(frame, args.out)
        print(f"{len(frame)} recommendations for {len(users)} users written to {args.out} "
              f"(columns {', '.join(frame.columns)}; {SCORE_NOTE})", file=sys.stderr)
        return 0
    if len(users) > 1:  # JSON lines, one object per user
        all_ids, all_scores = model.recommend(users, **keep, show_progress=not args.quiet)
        for user, ids, scores in zip(users, all_ids, all_scores, strict=True):
            ids, scores = ids[ids != ""], scores[ids != ""]
            because = [model.explain(user, i) for i in ids] if args.explain else None
            _print_items(model, ids, scores, True, "user", user, because)
        return 0
    user = users[0] if users else None
    extra = new_items or None
    ids, scores = model.recommend(user, **keep, user_items=extra,
                                  recalculate_user=user is not None and extra is not None)
    because = ([model.explain(user, i, user_items=extra) for i in ids] if args.explain
               else None)
    if args.out:  # one user's list as the batch table
        import pandas as pd

        frame = pd.DataFrame({"user": user or "", "rank": range(1, len(ids) + 1), "item": ids,
                              "score": scores, "name": [model.item_names_.get(i, "")
                                                        for i in ids]})
        if because is not None:
            frame["because"] = ["|".join(b[0]) for b in because]
        _write_frame(frame, args.out)
        print(f"{len(frame)} recommendations written to {args.out}", file=sys.stderr)
        return 0
    if not args.json:
        who = (f"user {user}" + (f" with {len(extra)} new items" if extra else "") if user
               else f"a new user with {len(extra)} items (folded in)")
        print(f"top {len(ids)} for {who}; {SCORE_NOTE}")
    _print_items(model, ids, scores, args.json, "user", user, because)
    return 0


def _read_ids(path: str) -> list[str]:
    """One id per line (blank lines skipped)."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read the users file: {e}") from None
    ids = [line.strip() for line in text.splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"{path}: no user ids (one per line)")
    return ids


def _check_new_file(path: str, flag: str) -> None:
    """Output files are new: a file already there is the user's, never overwritten."""
    if Path(path).suffix.lower() not in (".csv", ".parquet"):
        raise ValueError(f"{path}: {flag} must end in .csv or .parquet")
    if Path(path).exists():
        raise ValueError(f"{path}: {flag} exists already; give a new path")


def _write_frame(frame, path: str) -> None:
    """CSV or Parquet by suffix, through a temporary file renamed into place: a path holds the
    whole file or nothing."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        if target.suffix.lower() == ".parquet":
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False)
        os.link(tmp, target)  # fails, rather than overwrite, if the path appeared meanwhile
    finally:
        tmp.unlink(missing_ok=True)


def cmd_similar(args: argparse.Namespace) -> int:
    from .recommender import Recommender

    items = _ids(args.item)
    if not items:
        raise ValueError("similar: give --item ID[,ID...]")
    model = Recommender.load(args.model)
    query = items[0] if len(items) == 1 else items
    ids, scores = model.similar_items(query, N=args.k)
    if not args.json:
        named = ", ".join(f"{i} ({model.item_name(i)})" if model.item_name(i) else i
                          for i in items)
        print(f"top {len(ids)} similar to {'the basket ' if len(items) > 1 else ''}{named}; "
              f"{SCORE_NOTE}")
    _print_items(model, ids, scores, args.json, "item", query)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .server import serve

    serve(args.model, host=args.host, port=args.port, workers=args.workers)
    return 0


def _split_line(args: argparse.Namespace, result: dict) -> str:
    from .report import unseen_line

    s = result["split"]
    return (f"{result['dataset']}: {result['protocol']}, {s['users']} users, {s['items']} items,"
            f" train {s['train']}, test {s['test']} ({s['test_users']} users); full ranking, "
            "train items excluded" + ("\n" + unseen_line(s) if "test_pairs_unseen" in s else ""))


def _check_output_file(path: str | None, flag: str) -> None:
    """Fail before any training when an output file cannot be written."""
    if path and Path(path).is_dir():
        raise ValueError(f"{path}: {flag} expects a file path, got a directory")


def _write_per_user(result: dict, path: str) -> None:
    from .compare import per_user_frame

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    per_user_frame(result).to_csv(path, index=False)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .compare import format_table, json_ready, parse_models, run_comparison

    models = parse_models(args.models)
    config = _config(args)
    _check_output_file(args.json, "--json")
    _check_output_file(args.per_user, "--per-user")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # implicit's ALS warns otherwise
    data, extra = _inputs(args)
    result = run_comparison(data, extra.pop("protocol"), models, args.k, config, config.seed,
                            show_progress=not args.quiet, per_user=bool(args.per_user),
                            task=_task(args), keep=args.explicit, **extra)
    print(_split_line(args, result))
    print(format_table(result))
    _print_extras(result)
    _note_task(result)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(json_ready(result), indent=2))
        print(f"wrote {args.json}")
    if args.per_user:
        _write_per_user(result, args.per_user)
        print(f"wrote per-user metrics to {args.per_user}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import parse_models, run_comparison
    from .report import main_k, markdown_tables, paired_table, write_report

    models = parse_models(args.models)
    # CML is fitted with early stopping on a validation split carved from train (then refit on
    # all of train), so the report can show its validation curve; --patience 0 turns it off.
    config = _config(args, patience=5)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: --out must be a directory")
    _check_output_file(args.per_user, "--per-user")
    if not 0.0 < args.alpha < 1.0:
        raise ValueError(f"--alpha must be in (0, 1), got {args.alpha}")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    data, extra = _inputs(args)
    result = run_comparison(data, extra.pop("protocol"), models, args.k, config, config.seed,
                            show_progress=not args.quiet, **extra,
                            per_user=True, n_boot=args.n_boot, alpha=args.alpha,
                            tune_trials=args.trials if args.tune else 0,
                            tune_space={"cml": _tune_space(args)}, task=_task(args),
                            keep=args.explicit)
    command = "recsys-metric " + shlex.join(getattr(args, "argv", None) or [])
    cml_config = result.get("cml_config") or config.to_dict()
    paths = write_report(result, out, command=command.strip(), config=cml_config)
    k = main_k(result["k"])
    print(_split_line(args, result))
    print(markdown_tables(result, [k]))
    _note_task(result)
    _print_extras(result)
    paired = paired_table(result, [k])
    if paired:
        print(f"\nPaired tests against cml (K = {k}; every K in the report)\n\n{paired}")
    if args.per_user:
        _write_per_user(result, args.per_user)
        print(f"wrote per-user metrics to {args.per_user}")
    print(f"\nreport: {paths['report']} (results.json, plots, per_user.csv in {out})")
    return 0


def _tune_space(args: argparse.Namespace) -> dict:
    """CML search-space overrides: the loss family with --tune-losses; a tuned parameter given
    as a flag is fixed to its value."""
    from .tune import LOSS_SPACE, SPACES

    space = dict(LOSS_SPACE) if getattr(args, "tune_losses", False) else {}
    return {**space, **{k: getattr(args, k) for k in (*SPACES["cml"], *space)
                        if getattr(args, k, None) is not None}}


def cmd_tune(args: argparse.Namespace) -> int:
    from .compare import task_config
    from .split import split
    from .tune import check_metric, check_model, tune

    model = check_model(args.model)
    metric = check_metric(args.metric)
    config = _config(args)
    fixed = _tune_space(args)
    if model != "cml" and fixed:
        raise ValueError(f"--{next(iter(fixed)).replace('_', '-')} is a CML parameter; "
                         f"it does not apply to --model {model}")
    if args.timeout is not None and not args.timeout > 0:
        raise ValueError(f"--timeout must be > 0 seconds, got {args.timeout}")
    out = Path(args.out or f"tuned-{model}.json")
    _check_output_file(str(out), "--out")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    data = _read(args)
    # the test part is set aside: only its shape (when its items come) decides the task
    train, test = split(data, args.protocol, config.seed)
    if model == "cml":
        task, config, fixed = task_config(_task(args), train, test, config, args.explicit, fixed)
    result = tune(train, model, args.trials, config.seed, metric=metric, timeout=args.timeout,
                  show_progress=not args.quiet, base=config if model == "cml" else None,
                  space=fixed or None, protocol=args.protocol)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result["config"], indent=2) + "\n")
    sizes = result["validation"]
    print(f"{args.ratings}: {args.protocol}; tuned {model} on the train part only "
          f"({train.nnz} interactions, test set aside): fit {sizes['fit']}, validation "
          f"{sizes['valid']} ({sizes['valid_users']} users; carved as {args.protocol})")
    if model == "cml":
        print(f"task: {task['task']}, {task['reason']}"
              + (": the time order stays off" if task["task"] == "any" else ""))
    print(f"{result['n_trials']} trials in {result['seconds']:.1f} s; best validation {metric}: "
          f"{result['best_value']:.4f}")
    print("best parameters: " + ", ".join(
        f"{k}={'auto' if v is None else f'{v:.4g}' if isinstance(v, float) else v}"
        for k, v in result["best_params"].items()))
    use = (f"recsys-metric train {args.ratings} --config {out} --out MODEL" if model == "cml"
           else f"recsys-metric compare {args.ratings} --tune (tunes {model} the same way)")
    print(f"wrote {out}\nnext: {use}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .compare import format_table, run_comparison
    from .modeldir import check_target
    from .recommender import Recommender

    ratings, items = BUNDLED / "ratings.csv", BUNDLED / "items.csv"
    if not ratings.is_file():
        raise ValueError(f"{ratings}: the bundled dataset is missing (run from a source checkout)")
    check_target(args.out)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    data = read_ratings(ratings)
    data.item_names = read_item_names(items)
    genres = dict(zip(*_columns(items, "item_id", "genre"), strict=True))
    print(f"== Training CML on the bundled books dataset: {data}")
    model = Recommender().fit(data, show_progress=not args.quiet)
    out = Path(args.out)
    model.save(out)
    print(f"   {model.fit_seconds_:.1f} s, saved to {out}\n")
    order, ip = data.time_order(), data.matrix.indptr
    for user in data.users.ids[:3]:
        u = data.users.index(user)
        liked = data.items.raw(data.matrix.indices[order[ip[u]:ip[u + 1]]])  # oldest first
        top = sorted({genres[i] for i in liked},
                     key=lambda g: (-sum(genres[i] == g for i in liked), g))
        latest = ", ".join(genres[i] for i in liked[-1:-4:-1])
        # the model leans toward the latest reads (the recency visits and the pull)
        print(f"== Top 10 for user {user} (reads mostly {', '.join(top[:3])}; "
              f"latest: {latest}):")
        ids, scores = model.recommend(user, N=10)
        for r, (i, s) in enumerate(zip(ids, scores, strict=True), 1):
            print(f"{r:3d}. {model.item_name(i):<45} {genres[i]:<16} {s:+.3f}")
        print()
    print("== Offline evaluation: leave-last-out, full ranking, same split for every model")
    result = run_comparison(data, "leave-last-out", ("cml", "popularity", "als", "bpr"), (10,),
                            dataset="bundled books", show_progress=False)
    print(format_table(result))
    print(f"\nNext: recsys-metric recommend {out} --user {data.users.ids[0]} -k 10")
    return 0


def _columns(path: Path, *names: str):
    import pandas as pd

    df = pd.read_csv(path, dtype=str)
    return [df[n].tolist() for n in names]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="recsys-metric", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a CML model on a ratings file")
    _add_data_args(p)
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--items", help="item catalogue with names (items.csv, movies.csv, u.item)")
    p.add_argument("--warm-start", metavar="MODEL",
                   help="continue from this model: its users and items start at their points, "
                        "new ones are added; its training options are the defaults")
    p.add_argument("--checkpoint-dir", metavar="DIR",
                   help="write a checkpoint here after every epoch; the same command run again "
                        "resumes after the last one")
    p.add_argument("--index", default="auto", choices=("auto", "exact", "annoy"),
                   help="top-k search the model serves with: exact, Annoy, or auto (Annoy above "
                        "a measured catalogue size; default)")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel training, one process per rank, started by torchrun "
                        "--nproc_per_node=N --no-python recsys-metric train ... (gloo on CPU, "
                        "NCCL on CUDA; rank 0 saves)")
    p.add_argument("--syncs", type=_positive,
                   help="with --distributed: item-row merges per epoch (default 8)")
    p.add_argument("--sync", choices=("allreduce", "owner"),
                   help="with --distributed: merge by one all-reduce (default) or by shard "
                        "owners (reduce, merge, broadcast)")
    _add_train_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("recommend", help="top-k items for users, or for a new user's items")
    p.add_argument("model", help="model directory written by 'train'")
    p.add_argument("--user", action="append", metavar="ID[,ID...]",
                   help="raw user id(s) as in the ratings file; repeat or separate by commas")
    p.add_argument("--users-file", metavar="F", help="user ids, one per line")
    p.add_argument("--all", action="store_true", help="every user of the model")
    p.add_argument("--items", action="append", metavar="ID[,ID...]",
                   help="a new user's items, oldest first (folded into the model's space); "
                        "with one --user, items that user has newly taken")
    p.add_argument("-k", type=_positive, default=10, help="how many items (default 10)")
    p.add_argument("--keep-liked", action="store_true",
                   help="do not filter items the user already has")
    p.add_argument("--explain", action="store_true",
                   help="name, for each item, the user's liked items nearest to it")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per user (DESIGN.md contract)")
    p.add_argument("--out", metavar="recs.csv|recs.parquet",
                   help="write a table (user, rank, item, score, name) to this new file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_recommend)

    p = sub.add_parser("similar", help="top-k items nearest to an item or a basket of items")
    p.add_argument("model", help="model directory written by 'train'")
    p.add_argument("--item", action="append", required=True, metavar="ID[,ID...]",
                   help="raw item id; several (repeated or comma-separated) are a basket")
    p.add_argument("-k", type=_positive, default=10, help="how many items (default 10)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_similar)

    p = sub.add_parser("evaluate", help="CML vs peers on one split, full ranking")
    _add_data_args(p, optional=True)
    p.add_argument("--protocol", choices=("leave-last-out", "random", "temporal"),
                   help="how RATINGS is split (default leave-last-out)")
    _add_protocol_args(p)
    p.add_argument("-k", type=_positive, nargs="+", default=[10], help="cut-offs (default 10)")
    p.add_argument("--models", default="cml,popularity,als,bpr", help=MODELS_HELP)
    p.add_argument("--json", help="write the results as JSON (DESIGN.md contract)")
    p.add_argument("--per-user", metavar="PATH",
                   help="write every user's metrics as CSV (user, model, n_test, metrics)")
    _add_train_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("compare", help="CML vs peers on one split: a report with CIs, paired "
                                       "tests and plots")
    _add_data_args(p, optional=True)
    p.add_argument("--models", default="cml,popularity,als,bpr", help=MODELS_HELP)
    p.add_argument("--out", required=True, help="report directory (report.md, results.json, "
                                                "plots, per_user.csv)")
    p.add_argument("-k", type=_positive, nargs="+", default=[1, 5, 10, 20, 50],
                   help="cut-offs (default 1 5 10 20 50)")
    p.add_argument("--protocol", choices=("leave-last-out", "random", "temporal"),
                   help="how RATINGS is split (default leave-last-out)")
    _add_protocol_args(p)
    p.add_argument("--n-boot", type=_positive, default=1000,
                   help="bootstrap resamples of the test users (default 1000)")
    p.add_argument("--alpha", type=float, default=0.05,
                   help="1 - confidence level of the intervals (default 0.05: 95%%)")
    p.add_argument("--per-user", metavar="PATH", help="also write the per-user CSV here")
    p.add_argument("--tune", action="store_true",
                   help="first tune cml, als, bpr and ease (those asked) with the same number "
                        "of trials on a validation split carved from train (CML flags given fix "
                        "that parameter)")
    p.add_argument("--trials", type=_positive, default=20,
                   help="Optuna trials per model with --tune (default 20)")
    p.add_argument("--tune-losses", action="store_true",
                   help="also search CML's loss family (--loss, --distance, --temperature, "
                        "--negative-weight); slower")
    _add_train_args(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("tune", help="search hyper-parameters on a validation split carved from "
                                    "the train part (the test part is never read)")
    _add_data_args(p)
    p.add_argument("--model", default="cml", help="cml (default), als, bpr or ease")
    p.add_argument("--trials", type=_positive, default=20, help="Optuna trials (default 20)")
    p.add_argument("--tune-losses", action="store_true",
                   help="also search CML's loss family (--loss, --distance, --temperature, "
                        "--negative-weight); slower")
    p.add_argument("--out", help="JSON file of the best config (default tuned-MODEL.json); for "
                                 "cml, 'train --config' and 'evaluate --config' read it")
    p.add_argument("--protocol", default="leave-last-out",
                   choices=("leave-last-out", "random", "temporal"),
                   help="the split whose train part is tuned on (as evaluate/compare)")
    p.add_argument("--metric", default="NDCG@10", help="validation metric maximised "
                                                       "(default NDCG@10)")
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    _add_train_args(p)  # base config; a tuned parameter given as a flag is fixed
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("serve", help="serve a model over HTTP: /recommend, /similar, /health")
    p.add_argument("model", help="model directory written by 'train'")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1;"
                                                       " 0.0.0.0 for every interface)")
    p.add_argument("--port", type=_positive, default=8000, help="TCP port (default 8000)")
    p.add_argument("--workers", type=_positive, default=1,
                   help="server processes sharing the port, each with the model loaded "
                        "(default 1; about one per core)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help="train on the bundled books data, recommend, evaluate")
    p.add_argument("--out", default="models/books", help="where to save the demo model")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """The package's own warnings as one line; anyone else's as Python shows them."""
    if issubclass(category, ConfigWarning):
        print(f"recsys-metric: warning: {message}", file=sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # the exact command, for reports
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TimeOrderWarning)  # `train` prints its own note
            warnings.showwarning = _show_warning
            return args.func(args)
    except (ValueError, OSError) as e:  # user mistakes: one line, exit 2
        print(f"recsys-metric: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("recsys-metric: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
