"""Biased mixtures of super-resolution experts (paper Section IV-C), end to end.

    python -m experiments.super_resolution --workdir=workdir/sr --preset=quick

Stages (each writes into --workdir and is skipped when its artefacts exist, so an
interrupted run resumes): data -> experts -> cache -> bias -> gates -> evaluation
-> report. See WORKSPACE.md for the layout and every decision taken.
"""
import json
import os
import sys

import numpy as np
from absl import app, flags, logging

from bmoe_tf import evaluation as bmoe_eval
from bmoe_tf.backend import keras, tf
from bmoe_tf.bias import select_bias, upper_hull, validate_bias
from bmoe_tf.cache import build_expert_cache, cache_dataset, load_cache, save_cache
from bmoe_tf.gating import compact_gate, count_macs, paper_gate
from bmoe_tf.mixture import COMBINES, METHODS, TRAINING_LOSSES
from experiments.sr import data as sr_data
from experiments.sr import models as sr_models
from experiments.sr import report as sr_report
from experiments.sr.evaluate import (assignment_psnr, evaluate_bias_point, gate_assignment,
                                     part_scores)
from experiments.sr.gates import gate_files, load_gate, train_gate
from experiments.stages import Workdir, read_json, write_json

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for every artefact (created if missing).")
flags.DEFINE_enum("experts", "espcn", sr_models.FAMILIES, "Expert family.")
flags.DEFINE_list("scales", ["4", "3", "2"], "Upscale factors of the experts, cheapest first.")
flags.DEFINE_list("methods", ["enforce", "soft", "random", "benchmark", "oracle"],
                  "Curves to produce: enforce, soft (trained gates), random, benchmark, oracle.")
flags.DEFINE_list("targets", None, "Data-cost targets: one integer = number of grid points "
                  "over [d_min, d_max] (d_max/2 and d_max/3 are always added), or explicit "
                  "costs in bytes. Default from --preset.")
flags.DEFINE_list("bias", None, "An explicit bias vector b (instead of the LP), e.g. 0.5,0.3,0.2.")
flags.DEFINE_integer("batch_size", None, "Gate training and test-time routing batch size "
                     "(paper: 128). Default from --preset.")
flags.DEFINE_float("learning_rate", None, "Gate learning rate (paper: 1e-4; quick and full use "
                   "3e-3, see WORKSPACE.md). Default from --preset.")
flags.DEFINE_integer("epochs", None, "Gate training epochs (paper: 20; full preset: 40). "
                     "Default from --preset.")
flags.DEFINE_integer("expert_epochs", None, "Expert training epochs. Default from --preset.")
flags.DEFINE_list("bias_weights", None, "w_bias grid for the soft method, chosen on validation.")
flags.DEFINE_enum("gate", "paper", ["paper", "compact"], "Gating model: Table V or compact.")
flags.DEFINE_enum("combine", "gate", list(COMBINES),
                  "Eq. 2 as printed (gate) or straight-through scaling of the selected output.")
flags.DEFINE_enum("training_loss", None, list(TRAINING_LOSSES),
                  "Gate training loss (bmoe_tf.mixture.TRAINING_LOSSES): 'selected' is the "
                  "paper's Eq. 2 loss; 'relative' regresses the logits onto the experts' "
                  "relative losses (see WORKSPACE.md for the side-by-side comparison). "
                  "Default from --preset: relative.")
flags.DEFINE_enum("preset", "full", ["full", "quick", "smoke"], "Size of the run.")
flags.DEFINE_string("data", "bundled", "bundled | folder:PATH | tfds:NAME (never downloads).")
flags.DEFINE_string("tfds_data_dir", None, "data_dir of prepared TFDS datasets.")
flags.DEFINE_string("eval_image_dir", None, "Extra held-out images evaluated separately.")
flags.DEFINE_float("image_scale", None, "Resize factor applied to every image before cutting "
                   "parts (smoke runs use small images). Default from --preset.")
flags.DEFINE_integer("max_train_parts", None, "Cap on training parts (random subset).")
flags.DEFINE_integer("seed", 0, "Seed for splits, subsets, training and random selection.")
flags.DEFINE_integer("verbose", 1, "Keras verbosity (0 silent, 1 progress bars, 2 per epoch).")

#: Preset defaults; an explicit flag always wins.
PRESETS = {
    "full": dict(targets=["6"], batch_size=128, learning_rate=3e-3, epochs=40, expert_epochs=60,
                 training_loss="relative",
                 bias_weights=["0.1", "0.3", "1", "3"], image_scale=1.0, max_train_parts=0),
    "quick": dict(targets=["4"], batch_size=128, learning_rate=3e-3, epochs=20, expert_epochs=8,
                  training_loss="relative",
                  bias_weights=["1"], image_scale=1.0, max_train_parts=0),
    "smoke": dict(targets=["3"], batch_size=16, learning_rate=1e-3, epochs=1, expert_epochs=1,
                  training_loss="relative",
                  bias_weights=["1"], image_scale=0.5, max_train_parts=96),
}
PART = sr_data.PART_SIZE
#: Training losses that never look at b (enforcement only acts at test time), so
#: the enforce method trains one gate for all targets (gates/enforce/shared/).
B_INDEPENDENT_LOSSES = ("expected", "relative")
SPLITS = ("train", "validation", "test")


def config():
    """Flags with preset defaults filled in, as a plain dict (recorded in the report)."""
    cfg = dict(PRESETS[FLAGS.preset])
    for name in list(cfg):
        if getattr(FLAGS, name) is not None:  # flags default to None: set means explicit
            cfg[name] = getattr(FLAGS, name)
    cfg.update(experts=FLAGS.experts, methods=list(FLAGS.methods),
               gate=FLAGS.gate, combine=FLAGS.combine, preset=FLAGS.preset, data=FLAGS.data,
               seed=FLAGS.seed, bias=FLAGS.bias)
    try:
        cfg["scales"] = [int(s) for s in FLAGS.scales]
    except ValueError:
        raise app.UsageError(f"--scales must be integers, got {FLAGS.scales}") from None
    bad = sorted(set(cfg["scales"]) - set(sr_models.SCALES))
    if bad or len(cfg["scales"]) < 2:
        raise app.UsageError(f"--scales takes at least two of {sr_models.SCALES}, got {FLAGS.scales}")
    allowed = set(METHODS) | {"random", "benchmark", "oracle"}
    if not set(cfg["methods"]) <= allowed:
        raise app.UsageError(f"--methods takes {sorted(allowed)}, got {cfg['methods']}")
    if cfg["batch_size"] < len(cfg["scales"]):
        raise app.UsageError(f"--batch_size {cfg['batch_size']} is smaller than the "
                             f"{len(cfg['scales'])} experts; batches need at least one per expert")
    try:
        weights = [float(w) for w in cfg["bias_weights"]]
    except ValueError:
        raise app.UsageError(f"--bias_weights must be numbers, got {cfg['bias_weights']}") from None
    if not weights or min(weights) < 0:
        raise app.UsageError(f"--bias_weights needs at least one weight >= 0, got {weights}")
    if cfg["bias"]:
        try:
            validate_bias([float(v) for v in cfg["bias"]], len(cfg["scales"]), name="--bias")
        except ValueError as err:
            raise app.UsageError(str(err)) from None
    parse_targets(cfg["targets"])
    return cfg


def parse_targets(values):
    """``("count", K)`` for one integer below 100, else ``("costs", [floats])``."""
    try:
        if len(values) == 1 and values[0].strip().isdigit() and int(values[0]) < 100:
            if int(values[0]) < 2:
                raise app.UsageError("--targets as a count needs at least 2 grid points")
            return "count", int(values[0])
        return "costs", sorted(float(v) for v in values)
    except ValueError:
        raise app.UsageError(
            f"--targets takes a number of grid points (2-99) or data costs in bytes, "
            f"got {values}") from None


def check_workdir_config(wd, cfg):
    """Refuses to resume a workdir made with other settings (its artefacts would lie)."""
    path = wd.path("config.json")
    current = json.loads(json.dumps(cfg))
    if not os.path.exists(path):
        write_json(path, current)
        return
    previous = read_json(path)
    changed = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
    if changed:
        raise app.UsageError(
            f"{wd.root} was made with other settings (" + "; ".join(
                f"{k}: {previous.get(k)!r} -> {current.get(k)!r}" for k in changed)
            + "); its stages would be reused as they are. Use another --workdir, or the "
            "same flags as before.")


# ---- stage 1: data -------------------------------------------------------------------
def _resize(images, scale):
    if scale == 1.0:
        return images
    out = []
    for name, img in images:
        h, w = int(img.shape[0] * scale), int(img.shape[1] * scale)
        out.append((name, tf.image.resize(img, (h, w), antialias=True).numpy().clip(0, 1)))
    return out


def stage_data(wd, cfg):
    images = _resize(sr_data.load_images(cfg["data"], tfds_data_dir=FLAGS.tfds_data_dir),
                     cfg["image_scale"])
    images = [(n, im) for n, im in images if min(im.shape[:2]) >= PART]
    split = sr_data.split_images([n for n, _ in images], seed=cfg["seed"])
    by_name = dict(images)
    for name in SPLITS:
        sr_data.make_part_set([(n, by_name[n]) for n in split[name]]).save(
            wd.path("data", f"{name}.npz"))
    if FLAGS.eval_image_dir:
        extra = _resize(sr_data.load_images(f"folder:{FLAGS.eval_image_dir}"), cfg["image_scale"])
        sr_data.make_part_set(extra).save(wd.path("data", "eval.npz"))
    write_json(wd.path("data", "split.json"), split)


def load_sets(wd):
    sets = {s: sr_data.PartSet.load(wd.path("data", f"{s}.npz")) for s in SPLITS}
    if os.path.exists(wd.path("data", "eval.npz")):
        sets["eval"] = sr_data.PartSet.load(wd.path("data", "eval.npz"))
    return sets


def training_parts(parts, cfg):
    cap = cfg["max_train_parts"]
    if cap and len(parts) > cap:
        pick = np.random.default_rng(cfg["seed"]).choice(len(parts), cap, replace=False)
        return parts[np.sort(pick)]
    return parts


# ---- stage 2: experts ------------------------------------------------------------------
def expert_name(cfg, scale):
    return f"{cfg['experts']}_x{scale}"


def stage_experts(wd, cfg, sets):
    train = training_parts(sets["train"].parts, cfg)
    for scale in cfg["scales"]:
        name = expert_name(cfg, scale)
        path = wd.path("experts", name)

        def build(scale=scale, path=path, name=name):
            keras.utils.set_random_seed(cfg["seed"] + scale)
            model = sr_models.build_expert_model(cfg["experts"], scale)
            sr_models.train_expert(model, scale, train, sets["validation"].parts,
                                   epochs=cfg["expert_epochs"], checkpoint_dir=path + ".ckpt",
                                   verbose=FLAGS.verbose, seed=cfg["seed"])
            sr_models.export_expert(model, path)

        wd.run(f"expert {name}", path, build)
    return [sr_models.load_expert(wd.path("experts", expert_name(cfg, s)), s, cfg["experts"])
            for s in cfg["scales"]]


# ---- stage 3: caches ---------------------------------------------------------------------
def stage_caches(wd, cfg, sets, experts):
    caches = {}
    train = training_parts(sets["train"].parts, cfg)
    path = wd.path("cache", "train_mse.npz")
    wd.run("cache train", path, lambda: save_cache(path, build_expert_cache(
        experts, train, train, kind="mse", verbose=FLAGS.verbose)))
    caches["train"] = load_cache(path)
    for split in [s for s in ("validation", "test", "eval") if s in sets]:
        path = wd.path("cache", f"{split}_outputs.npz")
        parts = sets[split].parts
        wd.run(f"cache {split}", path, lambda path=path, parts=parts: save_cache(
            path, build_expert_cache(experts, parts, kind="outputs", verbose=FLAGS.verbose)))
        caches[split] = load_cache(path)
    return train, caches


def expert_table(wd, cfg, sets, experts, caches):
    path = wd.path("experts.json")

    def measure():
        rows = []
        for n, (e, scale) in enumerate(zip(experts, cfg["scales"])):
            row = dict(name=e.name, scale=scale, data_cost=e.data_cost)
            for split in [s for s in ("validation", "test", "eval") if s in caches]:
                picks = np.full(len(sets[split].parts), n)
                row[f"psnr_{split}"] = assignment_psnr(sets[split], caches[split]["outputs"], picks)
                bicubic = sr_models.bicubic_upscale(sets[split].parts, scale)
                row[f"bicubic_{split}"] = assignment_psnr(
                    sets[split], bicubic[:, None], np.zeros(len(bicubic), np.int64))
            rows.append(row)
        write_json(path, rows)

    wd.run("expert table", path, measure)
    return read_json(path)


# ---- stage 4: bias -----------------------------------------------------------------------
def stage_bias(wd, cfg, table):
    path = wd.path("bias.json")

    def choose():
        d = np.array([r["data_cost"] for r in table])
        p = np.array([r["psnr_validation"] for r in table])
        if cfg["bias"]:
            b = validate_bias([float(v) for v in cfg["bias"]], len(d), name="--bias")
            points = [dict(target=float(b @ d), bias=b.tolist())]
        else:
            points = [dict(target=float(t), bias=select_bias(d, p, target_cost=t).tolist())
                      for t in targets(cfg, d)]
        write_json(path, points)

    wd.run("bias", path, choose)
    return read_json(path)


def targets(cfg, d):
    d_min, d_max = float(d.min()), float(d.max())
    kind, values = parse_targets(cfg["targets"])
    if kind == "count":
        grid = set(np.linspace(d_min, d_max, values).tolist())
        grid |= {t for t in (d_max / 2, d_max / 3) if d_min <= t <= d_max}
        return sorted(grid)
    for t in values:
        if not d_min <= t <= d_max:
            raise app.UsageError(f"target {t} is outside [{d_min}, {d_max}] (expert data costs)")
    return values


# ---- stage 5: gates ----------------------------------------------------------------------
def is_one_hot(b):
    return np.isclose(max(b), 1.0)


def gate_builder(cfg, n):
    if cfg["gate"] == "compact":
        return lambda: compact_gate((PART, PART, 3), n)
    return lambda: paper_gate("super_resolution", num_experts=n)


def stage_gates(wd, cfg, sets, experts, train_parts, caches, points):
    """Trains every (method, target) gate; returns {method: {index: gate}}."""
    gates = {}
    if len(train_parts) < cfg["batch_size"]:
        raise app.UsageError(f"only {len(train_parts)} training parts for --batch_size "
                             f"{cfg['batch_size']}; use a smaller batch or more images")
    train_ds = cache_dataset(train_parts, caches["train"], batch_size=cfg["batch_size"],
                             seed=cfg["seed"], drop_remainder=True)
    val_parts = sets["validation"].parts
    loaded = {}  # gate directory -> gate, so a shared gate is loaded once
    for method in [m for m in ("enforce", "soft") if m in cfg["methods"]]:
        gates[method] = {}
        for index, point in enumerate(points):
            if is_one_hot(point["bias"]):
                continue  # a single expert: nothing to learn
            directory = wd.path("gates", method, str(index))
            common = dict(build_gate=gate_builder(cfg, len(experts)), experts=experts,
                          bias=point["bias"], method=method, train_data=train_ds,
                          epochs=cfg["epochs"], learning_rate=cfg["learning_rate"],
                          combine=cfg["combine"], training_loss=cfg["training_loss"],
                          seed=cfg["seed"], verbose=FLAGS.verbose)
            if method == "enforce":
                if cfg["training_loss"] in B_INDEPENDENT_LOSSES:
                    # The loss does not involve b: one gate serves every target.
                    directory, label = wd.path("gates", method, "shared"), "shared"
                else:
                    label = str(index)
                if directory not in loaded:
                    loaded[directory] = wd.run(
                        f"gate enforce/{label}", gate_files(directory),
                        lambda common=common, d=directory: train_gate(d, **common),
                        load=lambda d=directory: load_gate(d))[0]
                gates[method][index] = loaded[directory]
                continue
            chosen = os.path.join(directory, "chosen.json")
            if os.path.exists(chosen):  # the w_bias choice is made: load only the winner
                weight = read_json(chosen)["bias_weight"]
                cand = os.path.join(directory, "candidates", f"w{weight:g}")
                print(f"[gate soft/{index}] skipped: w_bias={weight:g} chosen in "
                      f"{os.path.relpath(chosen, wd.root)}")
                gates[method][index] = load_gate(cand)[0]
                continue
            best = None
            for weight in [float(w) for w in cfg["bias_weights"]]:
                cand = os.path.join(directory, "candidates", f"w{weight:g}")
                gate, _ = wd.run(f"gate soft/{index} w_bias={weight:g}", gate_files(cand),
                                 lambda c=cand, w=weight, common=common:
                                 train_gate(c, bias_weight=w, **common),
                                 load=lambda c=cand: load_gate(c))
                logits = gate.predict(val_parts, batch_size=256, verbose=0)
                picks = gate_assignment(logits, point["bias"], cfg["batch_size"])
                score = assignment_psnr(sets["validation"], caches["validation"]["outputs"], picks)
                if best is None or score > best[0]:
                    best = (score, weight, gate)
            write_json(chosen, dict(bias_weight=best[1], validation_psnr=best[0]))
            gates[method][index] = best[2]
    return gates


# ---- stage 6: evaluation -------------------------------------------------------------
def stage_evaluation(wd, cfg, sets, caches, table, points, gates):
    path = wd.path("evaluation.json")

    def evaluate():
        result = {}
        for split in [s for s in ("test", "eval") if s in caches]:
            result[split] = evaluate_split(cfg, sets[split], caches[split], table, points, gates,
                                           split)
        write_json(path, result)

    wd.run("evaluation", path, evaluate)
    return read_json(path)


def evaluate_split(cfg, part_set, cache, table, points, gates, split):
    outputs = cache["outputs"]
    d = np.array([r["data_cost"] for r in table])
    p = np.array([r[f"psnr_{split}"] for r in table])
    scores, part_psnr = part_scores(part_set, outputs)
    curves = {m: [] for m in cfg["methods"]}
    subsets, logits_of = {}, {}
    for index, point in enumerate(points):
        b = np.asarray(point["bias"])
        base = evaluate_bias_point(part_set, outputs, d, b, batch_size=cfg["batch_size"],
                                   scores=scores)
        for method in ("random", "oracle"):
            if method in curves:
                curves[method].append(list(base[method]))
        for method in ("enforce", "soft"):
            if method not in curves:
                continue
            if is_one_hot(b):
                n = int(np.argmax(b))
                curves[method].append([float(d[n]), float(p[n])])
                continue
            gate = gates[method][index]
            if id(gate) not in logits_of:  # a shared gate is run once
                logits_of[id(gate)] = gate.predict(part_set.parts, batch_size=256, verbose=0)
            logits = logits_of[id(gate)]
            picks = gate_assignment(logits, b, cfg["batch_size"])
            curves[method].append([float(d[picks].mean()),
                                   assignment_psnr(part_set, outputs, picks)])
            subsets.setdefault(method, {})[str(index)] = dict(
                target=point["target"], bias=point["bias"], picks=picks.tolist(),
                table=bmoe_eval.assigned_subset_performance(
                    part_psnr, picks, expert_names=[r["name"] for r in table]))
    hull_d, hull_p = upper_hull(d, p)
    if "benchmark" in curves:
        curves["benchmark"] = [[float(x), float(y)] for x, y in zip(hull_d, hull_p)]
    curves["bicubic"] = [[float(r["data_cost"]), float(r[f"bicubic_{split}"])] for r in table]
    d_max = float(d.max())
    at = {}
    for label, t in (("d_max", d_max), ("d_max/2", d_max / 2), ("d_max/3", d_max / 3)):
        at[label] = {}
        for method, curve in curves.items():
            if method == "bicubic" or not curve:
                continue
            if method == "benchmark":
                at[label][method] = float(np.interp(t, hull_d, hull_p))
                continue
            match = [pt for pt, point in zip(curve, points) if np.isclose(point["target"], t)]
            if match:
                at[label][method] = float(match[0][1])
    rho = {m: bmoe_eval.rho([pt[0] for pt in c], [pt[1] for pt in c])
           for m, c in curves.items() if m != "bicubic" and len(c) >= 2}
    share = {}
    if "oracle" in rho and "random" in rho and rho["oracle"] > rho["random"]:
        for m in ("enforce", "soft", "benchmark"):
            if m in rho:
                share[m] = bmoe_eval.oracle_gain_share(rho[m], rho["random"], rho["oracle"])
    return dict(curves=curves, rho=rho, at=at, oracle_gain_share=share, subsets=subsets)


# ---- main ----------------------------------------------------------------------------
def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required")
    logging.set_verbosity(logging.WARNING)
    tf.get_logger().setLevel("ERROR")
    cfg = config()
    wd = Workdir(FLAGS.workdir)
    check_workdir_config(wd, cfg)
    command = " ".join(["python -m experiments.super_resolution"] + sys.argv[1:])
    print(f"bmoe-tf super-resolution: preset={cfg['preset']} experts={cfg['experts']} "
          f"scales={cfg['scales']} workdir={wd.root}")
    wd.run("data", wd.path("data", "split.json"), lambda: stage_data(wd, cfg))
    sets = load_sets(wd)
    print("parts: " + ", ".join(f"{k} {len(v.parts)} ({len(v.names)} images)"
                                for k, v in sets.items()))
    experts = stage_experts(wd, cfg, sets)
    train_parts, caches = stage_caches(wd, cfg, sets, experts)
    table = expert_table(wd, cfg, sets, experts, caches)
    points = stage_bias(wd, cfg, table)
    gates = stage_gates(wd, cfg, sets, experts, train_parts, caches, points)
    results = stage_evaluation(wd, cfg, sets, caches, table, points, gates)
    gate_model = gate_builder(cfg, len(experts))()
    report = sr_report.write_report(wd, cfg, table, points, results, sets, command,
                                    gate_macs=count_macs(gate_model),
                                    gate_params=gate_model.count_params())
    print(sr_report.format_table(report))
    print(f"\nreport: {wd.path('report.md')}\nfigures: {wd.path('reports')}")


def run():
    """Console script ``bmoe-super-resolution``."""
    flags.mark_flag_as_required("workdir")
    app.run(main)


if __name__ == "__main__":
    run()
