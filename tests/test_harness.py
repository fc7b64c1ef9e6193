"""The accuracy harness and ``scoresde check``, checked against closed forms and known answers."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

import solvers
from scoresde import VPSDE, Gaussian, GaussianMixture
from scoresde.accuracy import gaussian_w2
from scoresde.cli import main
from scoresde.harness import (
    TARGETS,
    fit_order,
    get_target,
    mode_errors,
    run_study,
    steps_for_budget,
    stratified_sample,
)


def separated_mixture(weights=(0.5, 0.3, 0.2)) -> GaussianMixture:
    """Three far-apart 2-D modes: responsibilities are 0/1 to machine precision."""
    means = [[-30.0, 0.0], [0.0, 30.0], [30.0, 0.0]]
    covs = [[[1.0, 0.3], [0.3, 0.5]], [[0.4, 0.0], [0.0, 0.4]], [[0.2, -0.1], [-0.1, 0.6]]]
    return GaussianMixture(list(weights), means, covs)


# -- sample-based metrics --------------------------------------------------------------------------


def test_stratified_sample_has_exact_mode_counts():
    target = separated_mixture((0.5, 0.3, 0.2))
    x = stratified_sample(target, 1001, torch.Generator().manual_seed(0))
    counts = torch.bincount(target.responsibilities(x).argmax(1), minlength=3)
    assert counts.tolist() == [501, 300, 200]  # largest remainder gets the extra point


def test_mode_errors_measure_weight_mean_and_cov_errors():
    target = separated_mixture()
    g = torch.Generator().manual_seed(0)
    exact = stratified_sample(target, 20000, g)
    ok = mode_errors(exact, target)
    assert ok["mode_weight_err"] < 1e-6  # exact counts, hard assignments
    assert ok["mode_mean_err"] < 0.05 and ok["mode_cov_err"] < 0.1

    reweighted = stratified_sample(separated_mixture((0.4, 0.4, 0.2)), 20000, g)
    assert mode_errors(reweighted, target)["mode_weight_err"] == pytest.approx(0.1, abs=1e-3)

    shift = torch.tensor([0.3, -0.4], dtype=torch.float64)  # |shift| = 0.5
    assert mode_errors(exact + shift, target)["mode_mean_err"] == pytest.approx(0.5, abs=0.05)

    # scale deviations from each mode mean by 1.5: C_hat = 2.25 C, relative error 1.25
    r = target.responsibilities(exact).argmax(1)
    scaled = target.means[r] + 1.5 * (exact - target.means[r])
    assert mode_errors(scaled, target)["mode_cov_err"] == pytest.approx(1.25, abs=0.1)

    diverged = exact.clone()
    diverged[:10] = float("nan")  # non-finite rows are dropped, not propagated
    assert math.isfinite(mode_errors(diverged, target)["mode_mean_err"])


def test_fit_order_recovers_power_laws():
    nfe = [10, 20, 40, 80, 160]
    assert fit_order(nfe, [3.0 * n**-2 for n in nfe]) == pytest.approx(2.0, abs=1e-12)
    # a pre-asymptotic first point is ignored: only the three largest NFEs are fitted
    err = [1.0] + [5.0 * n**-1 for n in nfe[1:]]
    assert fit_order(nfe, err) == pytest.approx(1.0, abs=1e-12)
    assert fit_order(nfe, err, last=None) != pytest.approx(1.0, abs=0.05)
    assert math.isnan(fit_order([10, 20], [0.1, 0.0]))  # zero errors are dropped
    assert math.isnan(fit_order([10], [0.1]))


def test_steps_for_budget_convention():
    assert steps_for_budget("euler_maruyama", 10) == 9  # 9 steps + 1 denoising evaluation
    assert steps_for_budget("euler_maruyama", 10, denoise=False) == 10
    assert steps_for_budget("ode_heun", 10) == 4
    assert steps_for_budget("ode_rk4", 4) == 0  # cannot pay for one step
    with pytest.raises(ValueError, match="adaptive"):
        steps_for_budget("ode_adaptive", 10)
    with pytest.raises(ValueError, match="positive integer"):
        steps_for_budget("ddim", 0)


# -- Gaussian targets: exact moments -------------------------------------------------------------


def test_gaussian_study_is_exact_and_converges_at_the_declared_order():
    # Euler-Maruyama is pre-asymptotic below ~80 NFE on this stiff target (variances 0.01 and 1):
    # its local order between 40 and 80 NFE is 1.6, from 80 NFE on it is 1.1 and falling to 1.
    result = run_study(
        ["ode_euler", "ode_heun", "euler_maruyama"], ["gaussian_aniso_2d"], [40, 80, 160, 320]
    )
    orders = {o["solver"]: o["fitted"] for o in result.orders()}
    assert 0.9 < orders["ode_euler"] < 1.15
    assert 1.85 < orders["ode_heun"] < 2.15
    assert 0.9 < orders["euler_maruyama"] < 1.3
    for r in result.records:
        assert r.method == "exact moments" and r.noise_floor == 0.0
        assert r.nfe <= r.nfe_budget
        assert r.steps == steps_for_budget(r.solver, r.nfe_budget)
        # W2 is a metric: error, floor (ideal vs target) and disc_error (output vs ideal) form a
        # triangle
        assert abs(r.error - r.floor) <= r.disc_error + 1e-12
        assert r.error <= r.floor + r.disc_error + 1e-12
    heun = {r.nfe_budget: r.nfe for r in result.rows(solver="ode_heun")}
    assert heun == {40: 39, 80: 79, 160: 159, 320: 319}  # 2 NFE per step + 1 denoising


def test_sde_truncation_floor_is_tweedie_of_the_exact_marginal():
    """The exact reverse SDE from N(0, I) reaches p_{t_end} up to the prior mismatch (about
    alpha_T^2 ~ 4e-5 here); Tweedie then gives N(m, alpha^2 C S^-1 C) with S = alpha^2 C + sigma^2 I."""
    sde = VPSDE()
    target = get_target("gaussian_aniso_8d")
    result = run_study(["euler_maruyama"], {"g": target}, [40])
    floor = result.records[0].floor
    a, s = (float(v) for v in sde.marginal(sde.default_t_end))
    C, m = target.cov, target.mean
    S = a**2 * C + s**2 * torch.eye(8, dtype=torch.float64)
    denoised_cov = a**2 * C @ torch.linalg.solve(S, C)
    expected = gaussian_w2(m, denoised_cov, m, C)
    assert floor == pytest.approx(expected, rel=1e-2)


def test_exact_and_monte_carlo_paths_agree():
    kw = dict(solvers=["ode_heun", "ddim"], targets=["gaussian_iso_2d"], nfes=[6, 12])
    exact = run_study(**kw)
    mc = run_study(**kw, exact=False, n_samples=40000)
    for e, m in zip(exact.records, mc.records, strict=True):
        assert m.method.startswith("moments of")
        assert abs(e.error - m.error) < 3 * m.noise_floor + 0.02 * e.error, (e, m)


# -- noise floors: a perfect sampler scores at the floor, a useless one far above -----------------


@pytest.fixture
def oracle_solvers():
    target = get_target("ring_2d")

    @solvers.register("test_oracle", kind="sde", order=1, evals_per_step=1, affine=False)
    def oracle(ctx, x):
        """Returns exact target samples (denoise=False): a perfect sampler."""
        for t, _ in ctx.steps():
            ctx.score(x, t)
            ctx.done(x)
        return target.sample(x.shape[0], generator=ctx.generator, dtype=x.dtype)

    @solvers.register("test_useless", kind="sde", order=1, evals_per_step=1, affine=False)
    def useless(ctx, x):
        """Returns the prior draw unchanged."""
        for t, _ in ctx.steps():
            ctx.score(x, t)
            ctx.done(x)
        return x

    yield target
    solvers.unregister("test_oracle")
    solvers.unregister("test_useless")


def test_perfect_sampler_scores_at_the_noise_floor(oracle_solvers):
    result = run_study(
        ["test_oracle", "test_useless"], ["ring_2d"], [4], n_samples=2048, denoise=False
    )
    oracle, useless = result.records
    floors = result.targets["ring_2d"]
    assert oracle.error < 2.0 * oracle.floor
    assert oracle.mode_weight_err < 3.0 * floors.mode_floors["mode_weight_err"]
    assert useless.error > 10 * useless.floor
    assert useless.mode_mean_err > 0.5


# -- inputs ---------------------------------------------------------------------------------------


def test_user_targets_and_clear_errors():
    mine = Gaussian([0.0, 1.0], [1.0, 2.0])
    r = run_study(["ddim"], {"mine": mine}, [8])
    assert [x.target for x in r.records] == ["mine"]
    r = run_study(["ddim"], [mine, "gaussian_iso_2d"], [8])
    assert list(r.targets) == ["gaussian_0", "gaussian_iso_2d"]
    with pytest.raises(ValueError, match="ring_2d"):
        run_study(["ddim"], ["nope"], [8])
    with pytest.raises(ValueError, match="expected a built-in name"):
        run_study(["ddim"], [42], [8])
    with pytest.raises(ValueError, match="available solvers: .*ddim"):
        run_study(["nope"], ["gaussian_iso_2d"], [8])
    with pytest.raises(ValueError, match="adaptive"):
        run_study(["ode_adaptive"], ["gaussian_iso_2d"], [8])
    with pytest.raises(ValueError, match=">= 2"):
        run_study(["ddim"], ["gaussian_iso_2d"], [1])
    with pytest.raises(ValueError, match="empty"):
        run_study(["ddim"], ["gaussian_iso_2d"], [])
    with pytest.raises(ValueError, match="not among the solvers"):
        run_study(["ddim"], ["gaussian_iso_2d"], [8], solver_options={"ode_heun": {}})


def test_solver_variants_compare_grids_and_options():
    result = run_study(
        {
            "dpm++ uniform": ("dpm_solver_pp_2m", {"grid": "uniform"}),
            "dpm++ log_snr": ("dpm_solver_pp_2m", {"grid": "log_snr"}),
            "ddim": "ddim",
        },
        ["gaussian_aniso_8d"],
        [10],
    )
    by = {r.solver: r for r in result.records}
    assert {r.registry_name for r in result.records} == {"dpm_solver_pp_2m", "ddim"}
    assert by["dpm++ uniform"].error != by["dpm++ log_snr"].error
    assert result.settings["solver_grids"]["dpm++ log_snr"] == "log_snr"
    with pytest.raises(ValueError, match="unknown option"):
        run_study({"x": ("ddim", {"bogus": 1.0})}, ["gaussian_iso_2d"], [8])


def test_builtin_targets_are_well_formed():
    for name, info in TARGETS.items():
        t = get_target(name)
        assert info.description
        assert t.dim >= 2
        assert ("gaussian" in name) == (t.num_components == 1)
    w = get_target("mixture_16d").weights
    assert get_target("mixture_16d").dim == 16 and float(w.min()) < 0.1 < float(w.max())


# -- results ----------------------------------------------------------------------------------


def test_study_is_reproducible_and_writes_files(tmp_path):
    kw = dict(solvers=["euler_maruyama", "ddim"], targets=["ring_2d"], nfes=[6, 12], n_samples=512)
    a, b = run_study(**kw, seed=3), run_study(**kw, seed=3)
    c = run_study(**kw, seed=4)
    assert [r.error for r in a.records] == [r.error for r in b.records]
    assert [r.error for r in a.records] != [r.error for r in c.records]

    csv_path = a.to_csv(tmp_path / "out" / "r.csv")
    with open(csv_path) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and float(rows[0]["error"]) == a.records[0].error
    with open(a.to_json(tmp_path / "r.json")) as fh:
        data = json.load(fh)
    assert set(data) == {"settings", "targets", "records", "orders"}
    assert data["settings"]["seed"] == 3 and len(data["records"]) == 4

    table = a.table()
    assert "euler_maruyama" in table and "mode-weight" in table and "floor" in table
    assert "Empirical order" in a.orders_table()
    pytest.importorskip("matplotlib")
    assert a.plot(tmp_path / "e.png").endswith("e.png")
    assert a.plot_samples(tmp_path / "s.png", "ring_2d", 6).endswith("s.png")
    with pytest.raises(ValueError, match="stored budgets"):
        a.plot_samples(tmp_path / "s.png", "ring_2d", 99)


# -- CLI --------------------------------------------------------------------------------------


def test_cli_check_runs_and_writes_files(tmp_path, capsys):
    rc = main(
        [
            "check",
            "--solvers",
            "ddim",
            "predictor_corrector:snr=0.1",
            "--target",
            "gaussian_iso_2d",
            "ring_2d",
            "--nfe",
            "6",
            "12",
            "--samples",
            "256",
            "--out",
            str(tmp_path),
            "--quiet",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "gaussian_iso_2d" in out and "Empirical order" in out
    for name in ("results.csv", "results.json", "error_vs_nfe.png", "samples_ring_2d.png"):
        assert (tmp_path / name).stat().st_size > 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["settings"]["solver_options"] == {"predictor_corrector:snr=0.1": {"snr": 0.1}}
    assert {r["registry_name"] for r in data["records"]} == {"ddim", "predictor_corrector"}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--solvers", "nope"], "available solvers: .*ddim"),
        (["--target", "nope"], "available targets: .*ring_2d"),
        (["--solvers", "ddim:bogus=1"], "unknown option"),
        (["--solvers", "ddim:eta"], "expected NAME:OPTION=VALUE"),
        (["--sde", "nope"], "available: .*VPSDE"),
        (["--solvers", "ode_adaptive"], "adaptive"),
        (["--nfe", "1"], ">= 2"),
    ],
)
def test_cli_check_bad_arguments(argv, message, capsys, tmp_path):
    rc = main(["check", *argv, "--out", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert pytest.importorskip("re").search(message, err), err


def test_cli_check_list(capsys):
    assert main(["check", "--list"]) == 0
    out = capsys.readouterr().out
    assert "dpm_solver_pp_2m" in out and "mixture_16d" in out and "adaptive" in out


def test_per_mode_w2_is_zero_on_exact_moments_and_sees_mode_shape_errors():
    """Soft-assigned moments of exact samples converge to the components' (the floor falls like
    n^-1/2); a shift or a rescaling of every mode raises the error by the Bures W2 of that change."""
    from scoresde.harness import per_mode_w2

    target = GaussianMixture(
        weights=[0.7, 0.3], means=[[-1.0, 0.0], [1.0, 0.5]], covs=[0.3, 0.2]
    )  # overlapping modes: hard assignment would be biased, soft is not
    g = torch.Generator().manual_seed(0)
    small = per_mode_w2(target.sample(2_000, generator=g, dtype=torch.float64), target)
    large = per_mode_w2(target.sample(128_000, generator=g, dtype=torch.float64), target)
    assert large < small / 3  # 64x the samples: ~8x lower for an n^-1/2 floor, 2.8x for n^-1/4
    assert large < 0.02
    # every sample moved by a constant: the fitted modes move with it (not exactly by the shift,
    # since responsibilities change too), far above the floor
    x = target.sample(32_000, generator=g, dtype=torch.float64)
    assert per_mode_w2(x + torch.tensor([0.3, 0.0], dtype=torch.float64), target) > 10 * large
    # a solver that lost a mode entirely scores inf, as mode_errors' mean error does
    one_mode = target.means[0] + 0.3**0.5 * torch.randn(1000, 2, generator=g, dtype=torch.float64)
    far = one_mode - 50.0
    assert per_mode_w2(far, target) == math.inf or per_mode_w2(far, target) > 1.0
    assert mode_errors(x, target)["per_mode_w2"] == pytest.approx(per_mode_w2(x, target))
