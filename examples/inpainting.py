"""Inpainting / imputation with a known mask, against exact conditionals.

    python examples/inpainting.py [--n 10000] [--out runs/inpainting.png] [--quick]

1. Imputation of the missing coordinates of a correlated 3-D Gaussian given x_1 = 1.5, compared
   with the exact conditional N(mu_u|k, C_u|k): the replacement method of score-SDE (which is
   biased when known and unknown coordinates are correlated), RePaint resampling (Lugmayr et al.
   2022), and exact-likelihood guidance with y = x_1 + N(0, 1e-3).
2. Images: a Gaussian model of scikit-learn's 8x8 digits (the data's mean and covariance, so the
   score and the conditional of the bottom half given the top half are exact). The bottom half
   of held-out digits is inpainted by replacement and by RePaint; the PNG shows (top to bottom)
   the original, the masked input, one inpainting by each method and the exact conditional
   mean, and the table the error of each method's average inpainting against that mean.
"""

from __future__ import annotations

import argparse

import torch

from scoresde import VPSDE, Gaussian, sample
from scoresde.guidance import (
    classifier_guidance,
    gaussian_conditional,
    inpaint,
    linear_gaussian_log_likelihood,
)

F64 = torch.float64


def vector_imputation(n: int, seed: int, steps: int) -> dict[str, dict[str, float]]:
    prior = Gaussian(
        torch.tensor([0.5, -1.0, 0.3], dtype=F64),
        torch.tensor([[1.0, 0.8, 0.3], [0.8, 1.0, 0.5], [0.3, 0.5, 1.0]], dtype=F64),
    )
    sde = VPSDE()
    value = torch.tensor([1.5], dtype=F64)
    mean, cov = gaussian_conditional(prior, [0], value)
    known = torch.zeros(n, 3, dtype=F64)
    known[:, 0] = 1.5
    mask = torch.tensor([1.0, 0.0, 0.0], dtype=F64)
    print(
        f"1. impute x_2, x_3 of a correlated Gaussian given x_1 = 1.5: exact mean {[round(v, 3) for v in mean.tolist()]}, "
        f"variances {[round(v, 3) for v in torch.diagonal(cov).tolist()]}"
    )
    print(f"   {'method':34s} {'NFE':>6s} {'mean err':>9s} {'cov err':>9s}")
    out = {}
    runs = [
        ("replacement (euler_maruyama)", 1),
        ("RePaint, 5 resamplings", 5),
        ("RePaint, 20 resamplings", 20),
    ]
    for name, resample in runs:
        x, st = inpaint(
            sde,
            prior.score_fn(sde),
            known,
            mask,
            steps=steps,
            resample=resample,
            generator=torch.Generator().manual_seed(seed),
        )
        xu = x[:, 1:]
        out[name] = {
            "mean_err": float((xu.mean(0) - mean).abs().max()),
            "cov_err": float((torch.cov(xu.T) - cov).abs().max()),
            "nfe": st.nfe,
        }
        print(f"   {name:34s} {st.nfe:6d} {out[name]['mean_err']:9.4f} {out[name]['cov_err']:9.4f}")
    sel = torch.tensor([[1.0, 0.0, 0.0]], dtype=F64)
    guided = classifier_guidance(
        prior.score_fn(sde), linear_gaussian_log_likelihood(prior, sde, sel, 1e-3, value)
    )
    x, st = sample(
        sde,
        guided,
        shape=(n, 3),
        steps=steps,
        dtype=F64,
        generator=torch.Generator().manual_seed(seed),
    )
    xu = x[:, 1:]
    out["exact-likelihood guidance"] = {
        "mean_err": float((xu.mean(0) - mean).abs().max()),
        "cov_err": float((torch.cov(xu.T) - cov).abs().max()),
        "nfe": st.nfe,
    }
    r = out["exact-likelihood guidance"]
    print(
        f"   {'exact-likelihood guidance (R=1e-3)':34s} {st.nfe:6d} {r['mean_err']:9.4f} {r['cov_err']:9.4f}"
    )
    print(
        f"   (Monte-Carlo standard error of the mean: {float(torch.diagonal(cov).max().sqrt()) / n**0.5:.4f})"
    )
    return out


def digits_inpainting(
    num_images: int, draws: int, seed: int, steps: int, out: str | None
) -> dict[str, float]:
    from scoresde.data import digits

    x = digits("all").x.reshape(-1, 64).to(F64)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    train, test = x[perm[:1500]], x[perm[1500 : 1500 + num_images]]
    cov = torch.cov(train.T) + 1e-2 * torch.eye(64, dtype=F64)  # ridge: some pixels never vary
    prior = Gaussian(train.mean(0), cov)
    sde = VPSDE()

    def score(xi, t):
        return prior.score(xi.reshape(xi.shape[0], 64), t, sde).reshape(xi.shape)

    mask = torch.zeros(1, 1, 8, 8, dtype=F64)
    mask[..., :4, :] = 1.0  # the top half is known
    known_idx = torch.nonzero(mask.flatten()).flatten()
    exact = torch.stack(
        [
            torch.cat([t[known_idx], gaussian_conditional(prior, known_idx, t[known_idx])[0]])
            for t in test
        ]
    )  # known pixels first (rows 0-3), then the conditional mean of the unknown ones (rows 4-7)
    known = test.reshape(-1, 1, 8, 8).repeat_interleave(draws, 0)
    results, pictures = {}, {}
    print(
        f"\n2. digits, Gaussian model, bottom half inpainted ({num_images} held-out images x {draws} draws, {steps} steps):"
    )
    for name, resample in (("replacement", 1), ("RePaint x10", 10)):
        x_in, st = inpaint(
            sde,
            score,
            known,
            mask,
            steps=steps,
            resample=resample,
            generator=torch.Generator().manual_seed(seed),
        )
        avg = x_in.reshape(num_images, draws, 64).mean(1)
        err = float((avg - exact).pow(2)[:, 32:].mean().sqrt())
        results[name] = err
        pictures[name] = x_in.reshape(num_images, draws, 1, 8, 8)[:, 0]
        print(
            f"   {name:12s} RMS error of the average inpainting vs the exact conditional mean: {err:.4f} (NFE {st.nfe})"
        )
    cond_var = torch.diagonal(gaussian_conditional(prior, known_idx, test[0, known_idx])[1])
    floor = float((cond_var.mean() / draws).sqrt())
    results["monte_carlo_floor"] = floor
    print(f"   (Monte-Carlo floor of that RMS error with {draws} draws: {floor:.4f})")
    if out:
        from scoresde.plotting import save_image_grid

        masked = test.reshape(-1, 1, 8, 8).clone()
        masked[..., 4:, :] = 0.0
        rows = [
            test.reshape(-1, 1, 8, 8),
            masked,
            pictures["replacement"],
            pictures["RePaint x10"],
            exact.reshape(-1, 1, 8, 8),
        ]
        grid = torch.cat(rows)
        path = save_image_grid(
            grid,
            out,
            nrow=num_images,
            value_range=(-1.0, 1.0),
            title="data/input/replace/RePaint/exact",
        )
        print(f"   wrote {path}")
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="samples for the 3-D imputation")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--draws", type=int, default=100, help="inpaintings per image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="PNG grid of the image inpaintings")
    parser.add_argument("--quick", action="store_true", help="a small run (for the tests)")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.steps, args.images, args.draws = 2000, 40, 4, 20
    vector = vector_imputation(args.n, args.seed, args.steps)
    images = digits_inpainting(args.images, args.draws, args.seed, args.steps, args.out)
    return {"vector": vector, "images": images}


if __name__ == "__main__":
    main()
