"""Figure 6: how far back the gradient reaches through the cell after one epoch of pMNIST.

    python scripts/gradient_flow.py [--scale quick|paper] [--seeds 0 1 2] [--steps N] [--hidden H]
                                    [--train-fraction F] [--pixels N] [--early N]

Trains the three 1-layer LSTMs of experiments/fig6_gradient_flow.yaml for one epoch per seed
(configs/experiment/pmnist/gradflow_*.yaml): unregularized, zoneout z_c = 0.5, and dropout ON THE
RECURRENT CELL p = 0.5 (c_t = m * c~_t, m ~ Bernoulli(1 - p): the dropout counterpart of zoneout on c,
docs/replication.md §2.5; only this script implements it). Then, on a fixed validation batch, it computes the
mean over the batch of |dL/dc~_t| for every timestep t -- c~_t is the candidate cell before
zoneout/dropout, where the original code added its zero "dummy" tensor -- and normalises by the sum over t.

One run says little: the gradient at t = 1 is a product of 784 Jacobians, so equivalent float
arithmetic (another kernel, another thread count) moves it by orders of magnitude. Hence several
seeds: the plot shows, per model, the geometric mean over seeds and the min-max band, and the
paper's orderings (the spec's `claims`) are checked on the mean log10 normalised gradient over the
first --early timesteps, with the seed noise. Writes results/<scale>/gradient_flow.{png,json,md}.
The measurement uses training-mode noise by default (a fixed draw, the same seed for every model);
--noise expectation uses the deterministic evaluation-mode expectation instead.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from make_table import judge, load_table_spec, save_figure  # noqa: E402

from zoneout.atomic import atomic_write_text  # noqa: E402
from zoneout.nn.lstm import LSTM  # noqa: E402
from zoneout.nn.noise import RecurrentNoise, bernoulli_mask, keep_or_update  # noqa: E402
from zoneout.nn.reference import lstm_cell_step  # noqa: E402

SPEC = load_table_spec("fig6_gradient_flow")
MODELS = {row["name"]: row["experiment"] for row in SPEC["rows"]}
LABELS = {row["name"]: row["label"] for row in SPEC["rows"]}
NUM_PIXELS = 784


def compose_config(experiment: str, args, seed: int) -> "DictConfig":  # noqa: F821
    from hydra import compose, initialize_config_dir

    overrides = [f"experiment={experiment}", f"scale={args.scale}", f"seed={seed}", "logger=csv"]
    if args.hidden is not None:
        overrides.append(f"model.hidden_size={args.hidden}")
    if args.train_fraction is not None:
        overrides.append(f"dataset.train_fraction={args.train_fraction}")
    if args.data_dir is not None:
        overrides.append(f"dataset.data_dir={args.data_dir}")
    if args.mirror is not None:
        overrides.append(f"dataset.mirror={args.mirror}")
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose("config", overrides=overrides)


def unrolled_forward(model, pixels: torch.Tensor, cell_dropout: float = 0.0, retain_cells: bool = False):
    """The classifier's forward pass as an explicit per-step loop: logits (B, 10) and the candidate cells.

    Same computation as model(pixels) (zoneout noise comes from the layer's own regularizers, sampled in
    training mode, the expectation in eval mode), plus optional dropout on the recurrent cell.
    """
    layer = model.layers[0]
    if len(model.layers) != 1 or not isinstance(layer, LSTM) or layer.num_layers != 1:
        raise ValueError("model: the gradient-flow loop needs a 1-layer LSTM classifier (model.cell=lstm, num_layers=1)")
    x = pixels.t().unsqueeze(-1)  # (T, B, 1): one pixel per step, as SequenceClassifier feeds it
    steps, batch, hidden_size = x.shape[0], x.shape[1], layer.hidden_size
    weight_ih, weight_hh, bias_ih, bias_hh = layer.layer_weights(0)
    noise = layer.layer_noise(0, steps, batch, x.device)
    # unbind, not gates_x[t]: the backward of T separate index ops would write T full-size zero tensors.
    gates_x = (x @ weight_ih.t() + (bias_ih + bias_hh)).unbind(0)
    h = c = x.new_zeros(batch, hidden_size)
    candidates = []
    for t in range(steps):
        step_noise = noise.at(t)
        # The candidate (un-zoned) step, then zoneout mixing: together exactly lstm_cell_step(..., step_noise).
        h_candidate, c_candidate = lstm_cell_step(gates_x[t] + h @ weight_hh.t(), h, c,
                                                  RecurrentNoise(update_keep=step_noise.update_keep))
        if retain_cells:
            c_candidate.retain_grad()
            candidates.append(c_candidate)
        c_next = keep_or_update(step_noise.keep_cell, c, c_candidate)
        h = keep_or_update(step_noise.keep_hidden, h, h_candidate)
        if cell_dropout:
            keep = (bernoulli_mask(1.0 - cell_dropout, c_next.shape, c_next.device).to(c_next.dtype)
                    if model.training else 1.0 - cell_dropout)
            c_next = c_next * keep
        c = c_next
    return model.decoder(h), candidates


def cell_gradient_norms(model, pixels, labels, cell_dropout: float, training_noise: bool, seed: int) -> torch.Tensor:
    """Mean over the batch of |dL/dc~_t| for every t (L: mean cross-entropy of the batch), shape (T,).

    Measured in float64 on a copy of the trained model: back through hundreds of steps the gradient falls
    below float32's range (measured: exactly 0 at t = 1 for one cell-dropout seed), and log10 needs it."""
    model, pixels = copy.deepcopy(model).double(), pixels.double()
    model.train(training_noise)
    torch.manual_seed(seed)  # the same noise draw for every model
    model.zero_grad(set_to_none=True)
    logits, candidates = unrolled_forward(model, pixels, cell_dropout, retain_cells=True)
    F.cross_entropy(logits, labels).backward()
    grads = torch.stack([c.grad if c.grad is not None else torch.zeros_like(c) for c in candidates])
    model.zero_grad(set_to_none=True)
    return grads.norm(dim=-1).mean(dim=1).detach().cpu()


def train_one_epoch(cfg, model, train_split, permutation, max_steps, device, cell_dropout: float) -> dict:
    from zoneout.data import mnist
    from zoneout.train import build_optimizer

    optimizer = build_optimizer(cfg.optim, model.parameters())
    generator = torch.Generator().manual_seed(cfg.seed)
    batches = mnist.mnist_batches(*train_split, cfg.dataset.batch_size, permutation, generator)
    total = len(batches) if max_steps is None else min(len(batches), max_steps)
    model.train()
    steps, loss_sum = 0, 0.0
    for pixels, labels in batches:
        if steps >= total:
            break
        pixels, labels = pixels.to(device), labels.to(device)
        logits = unrolled_forward(model, pixels, cell_dropout)[0] if cell_dropout else model(pixels)[0]
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.trainer.clip_grad_norm or float("inf"))
        optimizer.step()
        steps, loss_sum = steps + 1, loss_sum + loss.item()
    return {"steps": steps, "train_loss": loss_sum / max(steps, 1)}


def plot(models: dict, title: str, path: Path) -> None:
    """Per model: the geometric mean over seeds of the normalised gradient (a line) and its min-max band.
    Left all models; right a zoom on all but the one with the least early gradient (cell dropout's tens of
    orders of magnitude would otherwise flatten the others)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    least = min(models, key=lambda name: statistics.fmean(run["early_log10"] for run in models[name]["runs"]))
    for axis, shown in zip(axes, (list(models), [name for name in models if name != least or len(models) == 1])):
        for index, name in enumerate(models):
            if name not in shown:
                continue
            per_seed = torch.tensor([run["normalized_grad_norm"] for run in models[name]["runs"]], dtype=torch.float64)
            per_seed = per_seed.clamp_min(torch.finfo(torch.float64).tiny)  # an underflowed 0 has no logarithm
            steps = range(1, per_seed.shape[1] + 1)
            colour = f"C{index}"
            axis.plot(steps, 10 ** per_seed.log10().mean(0), color=colour,
                      label=f"{LABELS[name]} ({len(models[name]['runs'])} seeds)")
            if len(models[name]["runs"]) > 1:
                axis.fill_between(steps, per_seed.min(0).values, per_seed.max(0).values, color=colour, alpha=0.2)
        axis.set_yscale("log")
        axis.set_xlabel("timestep t")
        axis.set_ylabel("|dL/dc_t|, normalised over t")
        axis.legend(fontsize=7)
    axes[1].set_title("zoom: without the model with the least early gradient", fontsize=8)
    figure.suptitle(title, fontsize=9)
    save_figure(figure, path)


def early_log10(normalized: list[float], early: int) -> float:
    """Mean log10 of the normalised gradient over the first `early` timesteps: how much reaches early steps.
    A gradient that underflowed even in float64 counts as the smallest normal float64 (about 1e-308)."""
    values = torch.tensor(normalized[:early], dtype=torch.float64)
    return values.clamp_min(torch.finfo(torch.float64).tiny).log10().mean().item()


def check_claims(models: dict) -> list[dict]:
    """The spec's claims "better carries more gradient to the early timesteps than `than`", on the per-seed
    early_log10 values (judged like the tables' orderings, with the sign turned: higher is better here)."""
    checked = []
    for claim in SPEC.get("claims", []):
        sides = [[run["early_log10"] for run in models[claim[key]]["runs"]] for key in ("better", "than")]
        stats = [(statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v)) for v in sides]
        delta = stats[0][0] - stats[1][0]
        stderr, verdict = judge(-delta, stats[0][1:], stats[1][1:])
        wins = sum(a > b for a, b in zip(*sides))
        checked.append({"better": claim["better"], "than": claim["than"], "delta_log10": delta, "stderr": stderr,
                        "verdict": verdict, "seeds_where_it_holds": f"{wins}/{min(len(v) for v in sides)}"})
    return checked


def render_markdown(report: dict) -> str:
    scale = ("**QUICK SCALE — shrunk runs for a CPU, not the paper's scale.** Shrink: " + SPEC["quick_scale"]
             if report["scale"] == "quick" else "Paper scale.")
    early = report["early_steps"]
    lines = [f"# {SPEC['title']}", "", scale, "",
             f"Seeds {' '.join(map(str, report['seeds']))}; {report['device']}; commit {report['commit']}; "
             f"{report['pixels']} pixels, {report['noise']} noise. early = mean log10 of the normalised |dL/dc_t| over "
             f"t = 1..{early} (higher: more gradient reaches the early timesteps).", "",
             "| model | early, mean ± std over seeds | normalised gradient at t = 1 (per seed) | one-epoch train loss | "
             "valid-batch error |", "|---|---|---|---|---|"]
    for name, model in report["models"].items():
        runs = model["runs"]
        values = [run["early_log10"] for run in runs]
        spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
        at_first_step = ", ".join(f"{run['normalized_grad_norm'][0]:.2g}" for run in runs)
        lines.append(f"| {LABELS[name]} | {statistics.fmean(values):.2f}{spread} | {at_first_step} | "
                     f"{statistics.fmean(run['train_loss'] for run in runs):.4f} | "
                     f"{statistics.fmean(run['valid_batch_error'] for run in runs):.3f} |")
    claims = report["claims"]
    held = sum(c["verdict"].startswith("holds") for c in claims)
    lines += ["", "## The paper's Figure 6 orderings, checked on our runs", "",
              f"{held} of {len(claims)} hold. Δ = early(first) − early(second) in orders of magnitude, ± its standard "
              "error over seeds; within seed noise: |Δ| < 2 standard errors.", "",
              "| carries more gradient to early timesteps | Δ early (log10) | seeds where it holds | verdict |",
              "|---|---|---|---|"]
    for c in claims:
        stderr = f" ± {c['stderr']:.2f}" if c["stderr"] is not None else ""
        lines.append(f"| {LABELS[c['better']]} > {LABELS[c['than']]} | {c['delta_log10']:+.2f}{stderr} | "
                     f"{c['seeds_where_it_holds']} | {c['verdict']} |")
    return "\n".join(lines) + "\n"


def check_args(args) -> None:
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps={args.steps}: must be a positive integer")
    if args.hidden is not None and args.hidden < 1:
        raise ValueError(f"--hidden={args.hidden}: must be a positive integer")
    if args.train_fraction is not None and not 0.0 < args.train_fraction <= 1.0:
        raise ValueError(f"--train-fraction={args.train_fraction}: must be in (0, 1]")
    if not 1 <= args.pixels <= NUM_PIXELS:
        raise ValueError(f"--pixels={args.pixels}: must be between 1 and {NUM_PIXELS}")
    if args.early < 1:
        raise ValueError(f"--early={args.early}: must be a positive integer")
    if len(set(args.seeds)) != len(args.seeds):
        raise ValueError(f"--seeds={' '.join(map(str, args.seeds))}: each seed once")
    if not 1 <= args.valid_batch <= 10_000:
        raise ValueError(f"--valid-batch={args.valid_batch}: must be between 1 and 10000 (the validation split)")


def run(args) -> dict:
    from zoneout.data import mnist
    from zoneout.models.build import build_model
    from zoneout.train import describe_device, git_commit

    check_args(args)
    first = compose_config(MODELS["unregularized"], args, args.seeds[0])
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    data = mnist.load_pmnist(first.dataset.data_dir, first.dataset.mirror)
    # --pixels keeps the first N pixels of the permuted order (shorter sequences for tests).
    permutation = mnist.pixel_permutation(first.dataset.permutation, first.dataset.permutation_seed)[:args.pixels]
    images, labels = data["train"]
    keep = max(int(len(labels) * first.dataset.train_fraction), first.dataset.batch_size)
    valid_images, valid_labels = data["valid"]
    valid_pixels = (valid_images[:args.valid_batch][:, permutation].float() / 255.0).to(device)
    valid_labels = valid_labels[:args.valid_batch].to(device)
    early = min(args.early, args.pixels)

    models = {name: {"experiment": experiment, "runs": []} for name, experiment in MODELS.items()}
    for seed in args.seeds:
        for name, experiment in MODELS.items():
            cfg = compose_config(experiment, args, seed)
            cell_dropout = float(cfg.regularizer.get("cell_dropout", 0.0))
            models[name].update(zoneout_cell=float(cfg.regularizer.zoneout_cell), cell_dropout=cell_dropout)
            torch.manual_seed(seed)  # same initial weights for the three models of a seed
            model = build_model(cfg.model, cfg.regularizer, None, 10, args.pixels).to(device)
            training = train_one_epoch(cfg, model, (images[:keep], labels[:keep]), permutation, args.steps, device,
                                       cell_dropout)
            norms = cell_gradient_norms(model, valid_pixels, valid_labels, cell_dropout, args.noise == "train", seed + 1)
            model.eval()
            with torch.no_grad():
                error = (unrolled_forward(model, valid_pixels, cell_dropout)[0].argmax(-1) != valid_labels).float().mean().item()
            normalized = (norms / norms.sum()).tolist()
            result = {"seed": seed, **training, "valid_batch_error": error, "grad_norm": norms.tolist(),
                      "normalized_grad_norm": normalized, "early_log10": early_log10(normalized, early)}
            models[name]["runs"].append(result)
            print(f"seed {seed} {name}: {training['steps']} steps, train loss {training['train_loss']:.4f}, "
                  f"|dL/dc_1| / sum = {normalized[0]:.3g}, early (log10) {result['early_log10']:.2f}", file=sys.stderr)

    out_dir = Path(args.out_dir) if args.out_dir else ROOT / "results" / args.scale
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"figure": "fig6_gradient_flow", "scale": args.scale, "device": describe_device(device),
              "seeds": args.seeds, "commit": git_commit(), "hidden_size": int(first.model.hidden_size),
              "train_fraction": float(first.dataset.train_fraction), "max_steps": args.steps, "pixels": args.pixels,
              "valid_batch": args.valid_batch, "noise": args.noise, "early_steps": early,
              "steps": {name: model["runs"][0]["steps"] for name, model in models.items()}, "models": models,
              "claims": check_claims(models)}
    markdown = render_markdown(report)
    atomic_write_text(out_dir / "gradient_flow.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out_dir / "gradient_flow.md", markdown)
    scale_note = "QUICK SCALE (shrunk), " if args.scale == "quick" else ""
    title = (f"Figure 6: gradient flow after one epoch of pMNIST\n{scale_note}{report['hidden_size']} units, "
             f"{max(report['steps'].values())} steps, {args.pixels} pixels, {args.noise} noise, "
             f"seeds {' '.join(map(str, args.seeds))}\nline: geometric mean over seeds, band: min-max over seeds")
    plot(models, title, out_dir / "gradient_flow.png")
    print(markdown)
    print(f"wrote {out_dir / 'gradient_flow.png'}, .json and .md", file=sys.stderr)
    return report


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="paper", choices=["paper", "quick"])
    parser.add_argument("--steps", type=int, default=None, help="cap the training steps of the one epoch")
    parser.add_argument("--hidden", type=int, default=None, help="hidden units (default: the scale's)")
    parser.add_argument("--train-fraction", type=float, default=None, help="prefix of the 50k training images")
    parser.add_argument("--pixels", type=int, default=NUM_PIXELS, help="first N pixels of the permuted order")
    parser.add_argument("--valid-batch", type=int, default=100, help="size of the fixed validation batch")
    parser.add_argument("--noise", default="train", choices=["train", "expectation"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one training run per model and seed")
    parser.add_argument("--early", type=int, default=100, help="timesteps the claims average over (from t = 1)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--data-dir", default=None, help="default: $ZONEOUT_DATA_DIR or ./data")
    parser.add_argument("--mirror", default=None, help="a shared/data-like folder to copy from")
    parser.add_argument("--out-dir", default=None, help="default: results/<scale>")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from zoneout.data import DataError

    try:
        if args.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device=cuda: no CUDA device is available here; use --device cpu or auto")
        run(args)
    except (ValueError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
