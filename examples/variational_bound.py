"""The discrete DDPM variational bound against the exact log-likelihood, on a Gaussian target with
the exact score: how far below log p(x) it lies, and how the gap closes as the number of steps N
grows, for both fixed reverse variances (beta_i and the posterior beta-tilde_i).

    python examples/variational_bound.py [--n 20000] [--steps 10,30,100,300,1000] [--quick]

Each row: the Monte-Carlo bound on n data points (mean, standard error), the closed-form
expectation of the same bound, the exact E[log p(x)] (minus the entropy), the gap in nats and in
nats per dimension, and the exact likelihood of the same model by the probability-flow ODE.
"""

from __future__ import annotations

import argparse
import math

import torch

from scoresde import VPSDE, Gaussian
from scoresde.bound import gaussian_expected_bound, variational_bound
from scoresde.likelihood import log_likelihood


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="data points")
    parser.add_argument("--steps", default="10,30,100,300,1000", help="comma-separated N")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a small run (for the tests)")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.steps = 4000, "10,100"
    steps = [int(s) for s in args.steps.split(",") if s.strip()]

    target = Gaussian(
        torch.tensor([0.3, -0.2], dtype=torch.float64),
        torch.tensor([[1.0, 0.6], [0.6, 0.8]], dtype=torch.float64),
    )
    sde, D = VPSDE(), target.dim
    x = target.sample(
        args.n, generator=torch.Generator().manual_seed(args.seed), dtype=torch.float64
    )
    logp = target.log_prob(x)
    ode = log_likelihood(sde, target.score_fn(sde), x[:2000])
    ode_gap = float((target.log_prob(x[:2000]) - ode.logp).mean())
    print(f"Gaussian target in {D}-D, VP SDE, exact score; {args.n} data points")
    print(
        f"exact E[log p(x)] = {float(logp.mean()):.4f} (sample), {-0.5 * (D * math.log(2 * math.pi * math.e) + float(torch.logdet(target.cov))):.4f} (closed form)"
    )
    print(
        f"probability-flow ODE likelihood of the same model: mean log p_0 - log p_ODE = {ode_gap:+.2e} nats (NFE {ode.nfe})"
    )
    print(
        f"\n{'variance':9s} {'N':>5s} {'ELBO (MC)':>19s} {'E[ELBO] closed':>15s} {'gap MC':>18s} {'gap closed':>11s} {'gap/dim':>9s}"
    )
    results: dict[str, dict] = {}
    for variance in ("beta", "posterior"):
        for N in steps:
            b = variational_bound(
                sde,
                target.score_fn(sde),
                x,
                num_steps=N,
                variance=variance,
                generator=torch.Generator().manual_seed(args.seed + N),
            )
            gap = logp - b.elbo
            se = float(gap.std()) / math.sqrt(args.n)
            ref = gaussian_expected_bound(target.mean, target.cov, sde, N, variance)
            row = {
                "elbo": float(b.elbo.mean()),
                "elbo_se": float(b.elbo.std()) / math.sqrt(args.n),
                "elbo_closed": ref.elbo,
                "gap": float(gap.mean()),
                "gap_se": se,
                "gap_closed": ref.gap,
                "gap_per_dim": ref.gap / D,
                "bpd": float(b.bits_per_dim().mean()),
            }
            results[f"{variance}/{N}"] = row
            print(
                f"{variance:9s} {N:5d} {row['elbo']:9.4f} +- {row['elbo_se']:.4f} {ref.elbo:15.4f} "
                f"{row['gap']:8.4f} +- {se:.4f} {ref.gap:11.5f} {ref.gap / D:9.5f}"
            )
    results["ode"] = {"gap": ode_gap, "nfe": ode.nfe}
    print("\nWith beta_i the gap closes like 1/N. beta-tilde_i is the right variance only for a")
    print("deterministic x_0: for a smooth density the steps near t = 0 keep a gap that tends to a")
    print("constant (closed form here: 0.632 nats at N = 10,000, 0.599 at N = 30,000).")
    return results


if __name__ == "__main__":
    main()
