"""Semantic-consistency toy (original repository, not in the paper; docs/replication.md §2.6).

    python -m zoneout.toys.semantic_consistency [--scale paper|quick] [--seeds 0 1 2] [--mask batch_shared|per_example]

The "network" is a linear map applied seq_len times, h_0 = x, h_t = h_{t-1} W, trained by plain SGD to
bring the input back: loss |h_T - x|^2 summed over the batch, as the original. W starts at -I + 0.01 N(0, 1),
already a solution without zoneout (W^10 = I). With zoneout a unit keeps h_{t-1} instead of updating with
probability p at each step; then only a W whose every step preserves x (W = I) keeps the loss at zero.

"Semantic consistency" (the original README: zoneout encourages units to keep their meaning over time) is
measured on the trained W, with no noise, on fixed inputs x ~ N(0, I):
  - similarity(t) = mean over examples of cos(h_t, x), t = 0..T: 1 at every t when each step preserves what
    a unit means; W = -I gives -1, +1, -1, ... (the units flip meaning every step and only h_10 is right);
  - consistency = the mean of similarity(t) over t = 1..T (1 for W = I, 0 for W = -I);
  - |W - I|_F and |W + I|_F, and W's eigenvalues (angle: how far each step rotates the state);
  - the loss per example without noise, E|x W^T - x|^2 = |W^T - I|_F^2 (exact for x ~ N(0, I)), and under
    zoneout noise p (Monte Carlo over mask draws): a map that is right only when every step runs is fragile.
Every seed trains both variants from the same W0 on the same inputs; only the masks differ.
"""
from __future__ import annotations

import math
import sys
import time

import torch

from zoneout.toys.common import base_parser, check_common, cli, fmt, load_spec, mean_std, publish, run_metadata, scale_settings

TOY = "toy_semantic_consistency"
MASK_MODES = ("batch_shared", "per_example")
CONSISTENT = 0.99  # consistency above this at a logged step: the map has become (nearly) the identity


def initial_map(dim: int, noise: float, generator: torch.Generator) -> torch.Tensor:
    return -torch.eye(dim, dtype=torch.float64) + noise * torch.randn(dim, dim, generator=generator, dtype=torch.float64)


def keep_masks(p: float, seq_len: int, batch: int, dim: int, mode: str, generator: torch.Generator):
    """True where a unit KEEPS its previous value: (seq_len, 1, dim) shared by the batch (the original's
    (seq_len, dim) mask) or (seq_len, batch, dim) per example; None without zoneout."""
    if p == 0.0:
        return None
    rows = 1 if mode == "batch_shared" else batch
    return torch.rand(seq_len, rows, dim, generator=generator, dtype=torch.float64) < p


def unroll(W: torch.Tensor, x: torch.Tensor, seq_len: int, keep=None) -> list[torch.Tensor]:
    """States h_0 = x, ..., h_T: h_t = h_{t-1} W where the unit updates, h_{t-1} where it keeps."""
    states = [x]
    for t in range(seq_len):
        updated = states[-1] @ W
        states.append(updated if keep is None else torch.where(keep[t], states[-1], updated))
    return states


def step_similarity(W: torch.Tensor, x: torch.Tensor, seq_len: int) -> list[float]:
    """mean over examples of cos(h_t, x), t = 0..T, for the noiseless map."""
    with torch.no_grad():
        return [torch.nn.functional.cosine_similarity(h, x, dim=-1).mean().item() for h in unroll(W, x, seq_len)]


def map_state(W: torch.Tensor, x: torch.Tensor, seq_len: int) -> dict:
    """What the map has become: distances to +-I, eigenvalues, per-step similarity, consistency, noiseless loss."""
    eye = torch.eye(W.shape[0], dtype=W.dtype)
    similarity = step_similarity(W, x, seq_len)
    eigenvalues = torch.linalg.eigvals(W)
    return {"dist_to_identity": (W - eye).norm().item(), "dist_to_minus_identity": (W + eye).norm().item(),
            "eigen_modulus": eigenvalues.abs().tolist(),
            "eigen_angle_deg": [math.degrees(a) for a in eigenvalues.angle().tolist()],
            "similarity": similarity, "consistency": sum(similarity[1:]) / seq_len,
            "loss_noiseless": (torch.linalg.matrix_power(W, seq_len) - eye).norm().pow(2).item()}


def noisy_loss(W: torch.Tensor, x: torch.Tensor, seq_len: int, p: float, draws: int, seed: int) -> float:
    """Mean per-example |h_T - x|^2 under zoneout noise p, over `draws` per-example mask draws."""
    generator = torch.Generator().manual_seed(seed)
    total = 0.0
    with torch.no_grad():
        for _ in range(draws):
            keep = keep_masks(p, seq_len, x.shape[0], x.shape[1], "per_example", generator)
            total += (unroll(W, x, seq_len, keep)[-1] - x).pow(2).sum(-1).mean().item()
    return total / draws


def train(settings: dict, p: float, mask_mode: str, seed: int, eval_inputs: torch.Tensor) -> dict:
    """SGD on W; every log_every steps the mean training loss per example and the map's state."""
    W = initial_map(settings["dim"], settings["init_noise"], torch.Generator().manual_seed(seed)).requires_grad_()
    data = torch.Generator().manual_seed(10_000 + seed)    # the same inputs for every variant of a seed
    noise = torch.Generator().manual_seed(20_000 + seed)   # the masks: the only difference between variants
    seq_len, batch, dim, lr = settings["seq_len"], settings["batch"], settings["dim"], settings["lr"]
    curve, window, started = [], [], time.perf_counter()
    for step in range(1, settings["steps"] + 1):
        x = torch.randn(batch, dim, generator=data, dtype=torch.float64)
        keep = keep_masks(p, seq_len, batch, dim, mask_mode, noise)
        loss = (unroll(W, x, seq_len, keep)[-1] - x).pow(2).sum()  # summed over the batch, as the original
        grad, = torch.autograd.grad(loss, W)
        with torch.no_grad():
            W -= lr * grad
        window.append(loss.item() / batch)
        if step % settings["log_every"] == 0 or step == settings["steps"]:
            state = map_state(W.detach(), eval_inputs, seq_len)
            curve.append({"step": step, "train_loss": sum(window) / len(window),
                          **{k: state[k] for k in ("dist_to_identity", "dist_to_minus_identity", "consistency")}})
            window = []
            if not math.isfinite(curve[-1]["train_loss"]):
                raise ValueError(f"seed {seed}, zoneout {p}: the loss diverged at step {step}")
    return {"W": W.detach(), "curve": curve, "seconds": time.perf_counter() - started}


def check_settings(settings: dict, args) -> None:
    if args.mask not in MASK_MODES:
        raise ValueError(f"--mask={args.mask}: allowed: {', '.join(MASK_MODES)}")
    if args.steps is not None:
        if args.steps < 1:
            raise ValueError(f"--steps={args.steps}: must be a positive integer")
        settings["steps"] = args.steps
        settings["log_every"] = min(settings["log_every"], args.steps)


def run(args, started: float) -> dict:
    spec = load_spec(TOY)
    settings = scale_settings(spec, args.scale)
    check_settings(settings, args)
    variants = check_common(args, spec)
    metadata = run_metadata(args)  # now: the commit of the code that runs, not of the tree when it ends
    seq_len, noise_p = settings["seq_len"], max(v["zoneout"] for v in spec["variants"])
    eval_inputs = torch.randn(settings["eval_examples"], settings["dim"], dtype=torch.float64,
                              generator=torch.Generator().manual_seed(123_456))  # fixed for every run
    results = {v["name"]: {"label": v["label"], "zoneout": v["zoneout"], "runs": []} for v in variants}
    for seed in args.seeds:
        for variant in variants:
            trained = train(settings, variant["zoneout"], args.mask, seed, eval_inputs)
            W = trained["W"]
            state = map_state(W, eval_inputs, seq_len)
            state["loss_under_noise"] = noisy_loss(W, eval_inputs, seq_len, noise_p, settings["noisy_eval_draws"], seed)
            reached = next((point["step"] for point in trained["curve"] if point["consistency"] > CONSISTENT), None)
            run_result = {"seed": seed, "W": W.tolist(), **state, "final_train_loss": trained["curve"][-1]["train_loss"],
                          "step_consistent": reached, "seconds": trained["seconds"], "curve": trained["curve"]}
            results[variant["name"]]["runs"].append(run_result)
            print(f"seed {seed} {variant['name']}: consistency {state['consistency']:+.3f}, |W - I| "
                  f"{state['dist_to_identity']:.3f}, |W + I| {state['dist_to_minus_identity']:.3f}, loss under noise "
                  f"{state['loss_under_noise']:.4f} ({trained['seconds']:.0f} s)", file=sys.stderr)
    report = {"toy": TOY, **metadata, "settings": settings, "mask": args.mask, "noise_p": noise_p,
              "variants": results, "wall_seconds": time.perf_counter() - started}
    publish(args, TOY, report, render_markdown(spec, report), lambda plt: plot(plt, report))
    return report


def render_markdown(spec: dict, report: dict) -> str:
    s = report["settings"]
    scale = ("Scale: the original script's settings." if report["scale"] == "paper" else
             f"**{report['scale'].upper()} SCALE: {s['steps']} steps, a shrunk run for tests, not the original's settings.**")
    mask = ("one mask per step and unit shared by the batch, as the original" if report["mask"] == "batch_shared"
            else "a mask per step, example and unit (not the original's choice)")
    lines = [f"# {spec['title']}", "", scale, "",
             f"dim {s['dim']}, {s['seq_len']} steps, {s['steps']} SGD steps of batch {s['batch']}, lr {s['lr']}, "
             f"W0 = -I + {s['init_noise']} N(0, 1); zoneout mask: {mask}. Seeds {' '.join(map(str, report['seeds']))}; "
             f"{report['device']}; torch {report['torch']}; commit {report['commit']}; wall time "
             f"{report['wall_seconds'] / 60:.1f} min.", "",
             "Measured on the trained W without noise, on fixed inputs x ~ N(0, I): consistency = mean over t = 1.."
             f"{s['seq_len']} of cos(h_t, x) (1: every step keeps what each unit means, as W = I; 0: W = -I, whose "
             "units flip sign every step); the loss per example |h_T - x|^2 without noise and under zoneout noise "
             f"p = {report['noise_p']}. Mean ± std over seeds.", "",
             "| variant | consistency | cos(h_1, x) | abs(W − I)_F | abs(W + I)_F | eigenvalue angle (deg) | "
             "loss, no noise | loss under noise | final train loss | step consistency > 0.99 | s per run |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for variant in report["variants"].values():
        runs = variant["runs"]
        angles = ", ".join("/".join(f"{abs(a):.0f}" for a in run["eigen_angle_deg"]) for run in runs)
        lines.append(f"| {variant['label']} | {fmt([r['consistency'] for r in runs])} | "
                     f"{fmt([r['similarity'][1] for r in runs])} | {fmt([r['dist_to_identity'] for r in runs])} | "
                     f"{fmt([r['dist_to_minus_identity'] for r in runs])} | {angles} | "
                     f"{fmt([r['loss_noiseless'] for r in runs], 4)} | {fmt([r['loss_under_noise'] for r in runs], 4)} | "
                     f"{fmt([r['final_train_loss'] for r in runs], 4)} | "
                     f"{', '.join(str(r['step_consistent'] or 'never') for r in runs)} | {mean_std([r['seconds'] for r in runs])[0]:.0f} |")
    lines += ["", "Per-step similarity cos(h_t, x), mean over seeds:", "",
              "| variant | " + " | ".join(f"t={t}" for t in range(s["seq_len"] + 1)) + " |",
              "|---" * (s["seq_len"] + 2) + "|"]
    for variant in report["variants"].values():
        per_step = [mean_std([r["similarity"][t] for r in variant["runs"]])[0] for t in range(s["seq_len"] + 1)]
        lines.append(f"| {variant['label']} | " + " | ".join(f"{v:+.2f}" for v in per_step) + " |")
    lines += ["", f"The original README's claim: {spec['claim']}.", "", verdict(report), ""]
    return "\n".join(lines)


def verdict(report: dict) -> str:
    """One sentence on the claim, from the numbers: does zoneout end closer to I, and in how many seeds?"""
    variants = report["variants"]
    if not {"zoneout", "none"} <= set(variants):
        return "Verdict: needs both variants."
    pairs = list(zip(variants["zoneout"]["runs"], variants["none"]["runs"]))
    wins = sum(z["consistency"] > n["consistency"] for z, n in pairs)
    near_identity = sum(z["dist_to_identity"] < z["dist_to_minus_identity"] for z, _ in pairs)
    baseline_near_minus = sum(n["dist_to_minus_identity"] < n["dist_to_identity"] for _, n in pairs)
    return (f"Verdict: consistency is higher with zoneout in {wins}/{len(pairs)} seeds; the zoneout map ended nearer "
            f"I than -I in {near_identity}/{len(pairs)} seeds, the map trained without zoneout nearer -I than I in "
            f"{baseline_near_minus}/{len(pairs)}.")


def plot(plt, report: dict):
    figure, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for index, variant in enumerate(report["variants"].values()):
        colour = f"C{index}"
        for number, run in enumerate(variant["runs"]):
            steps = [point["step"] for point in run["curve"]]
            label = f"{variant['label']}" if number == 0 else None
            axes[0].plot(steps, [point["train_loss"] for point in run["curve"]], color=colour, alpha=0.7, label=label)
            axes[1].plot(steps, [point["consistency"] for point in run["curve"]], color=colour, alpha=0.7, label=label)
            axes[2].plot(range(len(run["similarity"])), run["similarity"], "o-", color=colour, alpha=0.6, label=label)
    # Both losses fall to float64 round-off (1e-40 and below) once W is exactly -I or I: cut the axis at 1e-8.
    axes[0].set(yscale="log", xlabel="SGD step", ylabel="training loss per example (window mean, own noise)",
                ylim=(1e-8, 30))
    axes[1].set(xlabel="SGD step", ylabel="consistency: mean_t cos(h_t, x), no noise", ylim=(-1.05, 1.05))
    axes[2].set(xlabel="step t of the map", ylabel="cos(h_t, x) after training, no noise", ylim=(-1.05, 1.05))
    for axis in axes:
        axis.legend(fontsize=7)
    scale = "" if report["scale"] == "paper" else f" ({report['scale'].upper()} SCALE)"
    figure.suptitle(f"Semantic-consistency toy{scale}: one line per seed ({' '.join(map(str, report['seeds']))}), "
                    f"mask {report['mask']}", fontsize=9)
    return figure


def parse_args(argv=None):
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--mask", default="batch_shared", help="batch_shared (the original's) or per_example")
    parser.add_argument("--steps", type=int, default=None, help="override the scale's SGD step count")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    return cli(run, parse_args, argv)


if __name__ == "__main__":
    sys.exit(main())
