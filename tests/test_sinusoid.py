"""Sinusoid regression (Finn et al. 2017, §5.1) end to end: the task distribution, MAML's regression
meta-gradients (vmap = the per-task loop in float64), the pre-trained baseline, the engine
(validation by
lowest MSE, resume) and `metalab eval --json` with the curve and the PNG. No dataset files
needed."""

import json
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
import yaml

from fixtures.tasks import meta_gradient
from metalab.cli import main
from metalab.config import parse_config
from metalab.engine.checkpoint import load_checkpoint
from metalab.engine.trainer import Trainer, train
from metalab.errors import ConfigError, DataError
from metalab.registry import ALGORITHMS
from metalab.tasks.episodes import episode_sampler, fixed_episodes, input_shape, is_regression
from metalab.tasks.sinusoid import SinusoidTasks, sinusoid
from metalab.tasks.sources import load_split, split_names

SMALL = {
    "algorithm": {
        "name": "maml",
        "backbone": "mlp",
        "hidden": 8,
        "inner_lr": 0.01,
        "eval_inner_steps": 10,
        "parallel": "vmap",
    },
    "data": {"dataset": "sinusoid"},
    "train": {
        "steps": 2,
        "ways": 0,
        "shots": 5,
        "queries": 5,
        "meta_batch": 4,
        "val_every": 1,
        "val_episodes": 6,
        "checkpoint_every": 1,
        "log_every": 1,
        "tensorboard": False,
    },
    "eval": {"ways": 0, "shots": 5, "queries": 10, "episodes": 12, "batch": 12},
}


def small(**sections):
    values = {k: dict(v) for k, v in SMALL.items()}
    for section, changes in sections.items():
        values[section].update(changes)
    return values


# --- the task distribution
# ------------------------------------------------------------------------------


def test_tasks_are_sinusoids_in_the_paper_ranges():
    source = SinusoidTasks("train")
    assert is_regression(source) and input_shape(source) == (1,)
    ep = episode_sampler(source, 0, 5, 7, meta_batch=500).sample(torch.Generator().manual_seed(0))
    assert ep.ways == 0 and ep.tasks == 500
    assert ep.support_x.shape == ep.support_y.shape == (500, 5, 1)
    assert ep.query_x.shape == ep.query_y.shape == (500, 7, 1)
    assert ep.support_y.dtype == torch.float32
    x = torch.cat([ep.support_x, ep.query_x], 1)
    assert x.min() >= -5 and x.max() <= 5 and x.min() < -4.9 and x.max() > 4.9
    fixed = fixed_episodes(source, 0, 5, 7, count=2000, seed=0)
    assert (
        0.1 <= fixed.amplitude.min() and fixed.amplitude.max() <= 5 and fixed.amplitude.max() > 4.9
    )
    assert 0 <= fixed.phase.min() and fixed.phase.max() <= math.pi and fixed.phase.max() > 3.1
    # y = A sin(x − φ), the sign convention of the authors' code (amplitude * np.sin(x - phase))
    ep = next(fixed.batches(3))
    a, p = fixed.amplitude[:3, None, None], fixed.phase[:3, None, None]
    assert torch.allclose(ep.support_y, a * torch.sin(ep.support_x - p))
    assert torch.allclose(ep.query_y, sinusoid(fixed.amplitude[:3], fixed.phase[:3], ep.query_x))


def test_fixed_tasks_are_a_function_of_split_shots_queries_count_seed():
    val, test = SinusoidTasks("val"), SinusoidTasks("test")
    # noqa: E731
    cat = lambda f, b: torch.cat([torch.cat([e.support_x, e.query_y], 1) for e in f.batches(b)])
    a, b = fixed_episodes(test, 0, 5, 10, 30, seed=1), fixed_episodes(test, 0, 5, 10, 30, seed=1)
    assert torch.equal(cat(a, 7), cat(b, 30)) and len(a) == 30  # not the batch size either
    assert not torch.equal(cat(a, 30), cat(fixed_episodes(test, 0, 5, 10, 30, seed=2), 30))
    assert not torch.equal(
        cat(a, 30), cat(fixed_episodes(val, 0, 5, 10, 30, seed=1), 30)
    )  # val ≠ test
    k20 = fixed_episodes(test, 0, 20, 10, 30, seed=1)
    assert torch.equal(a.amplitude, k20.amplitude) and torch.equal(
        a.phase, k20.phase
    )  # same sinusoids for every K
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    s = episode_sampler(SinusoidTasks(), 0, 5, 5, 3)
    assert torch.equal(s.sample(g1).query_y, s.sample(g2).query_y)


def test_bad_task_arguments_are_rejected_clearly():
    source = SinusoidTasks("test")
    with pytest.raises(DataError, match="--ways 5 .*regression.*drop --ways"):
        fixed_episodes(source, 5, 5, 10, 10, 0)
    with pytest.raises(DataError, match="within_group"):
        episode_sampler(source, 0, 5, 10, 4, within_group=True)
    with pytest.raises(DataError, match="--shots 0"):
        episode_sampler(source, 0, 0, 10, 4)
    with pytest.raises(DataError, match="--queries 0 .*MSE"):
        fixed_episodes(source, 0, 5, 0, 10, 0)
    data = parse_config(small()).data
    assert split_names(data) == ("train", "val", "test")
    with pytest.raises(DataError, match="split 'dev'.*choices: train, val, test"):
        load_split(data, "dev")


# --- MAML regression: meta-gradients, predict, the baseline
# ------------------------------------------------


def regression_episode():
    """3 tasks, 5 support and 6 query points each, in float64."""
    ep = episode_sampler(SinusoidTasks(), 0, 5, 6, 3).sample(torch.Generator().manual_seed(0))
    return replace(
        ep, **{k: getattr(ep, k).double() for k in ("support_x", "support_y", "query_x", "query_y")}
    )


def learner(name, **options):
    cls = ALGORITHMS.get(name)
    torch.manual_seed(0)
    return cls(cls.Config(backbone="mlp", hidden=16, inner_lr=0.01, **options), (1,), 0).double()


@pytest.mark.parametrize("steps", [1, 5])
@pytest.mark.parametrize("name", ["maml", "fomaml", "metasgd", "anil"])
def test_regression_meta_gradient_vmap_equals_loop(name, steps):
    model, ep = learner(name, inner_steps=steps), regression_episode()
    assert model.net.head.out_features == 1
    lv, gv = meta_gradient(model, "vmap", ep)
    ll, gl = meta_gradient(model, "loop", ep)
    assert abs(lv - ll) < 1e-12
    assert float((gv - gl).norm() / gl.norm()) < 1e-10


def test_predict_after_k_steps():
    model, ep = learner("maml"), regression_episode()
    with torch.no_grad():
        none = model.predict(ep, steps=0)
        assert none.shape == (3, 6, 1)
        assert torch.allclose(none, model.net(ep.query_x.flatten(0, 1)).view(3, 6, 1))
        a = model.replace(parallel="vmap").predict(ep, steps=3)
        b = model.replace(parallel="loop").predict(ep, steps=3)
    assert torch.allclose(a, b, rtol=0, atol=1e-12)
    on_support = replace(ep, query_x=ep.support_x, query_y=ep.support_y)
    with torch.no_grad():
        before, after = (
            F.mse_loss(model.predict(on_support, steps=s), ep.support_y) for s in (0, 3)
        )
    assert float(after) < float(before)  # the inner steps fit the support set


def test_pretrain_is_plain_regression_on_many_tasks():
    model, ep = learner("pretrain"), regression_episode()
    assert model.options.inner_steps == 0
    out = model.meta_loss(ep)
    flat = F.mse_loss(model.net(ep.query_x.flatten(0, 1)), ep.query_y.flatten(0, 1))
    assert torch.allclose(out.loss, flat)


def test_classification_only_settings_and_methods_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="nil .*regression"):
        learner("anil", nil=True)
    with pytest.raises(ConfigError, match="'protonet' does not do regression.*choices: .*maml"):
        train(
            parse_config(small() | {"algorithm": {"name": "protonet"}}),
            tmp_path / "p",
            progress=False,
        )


# --- the engine and the CLI
# --------------------------------------------------------------------------------


def test_validation_keeps_the_lowest_mse_and_resume_is_exact(tmp_path):
    cfg = parse_config(small(train={"steps": 4, "lr": 0.05, "checkpoint_every": 2}))
    result = train(cfg, tmp_path / "straight", progress=False)
    assert result.metric == "mse" and result.step == 4
    logged = [
        json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    ]
    vals = [r["val_mse"] for r in logged if "val_mse" in r]
    assert len(vals) == 4 and result.best_val == min(vals)
    best = load_checkpoint(tmp_path / "straight" / "best.pt")
    assert best["best_val"] == min(vals) and best["step"] == 1 + vals.index(min(vals))
    assert best["input_shape"] == [1] and best["preprocess"] is None

    class Kill(Exception):
        pass

    def kill(step):
        if step == 3:
            raise Kill()

    with pytest.raises(Kill):
        Trainer(cfg, tmp_path / "killed", on_step=kill, progress=False).fit()
    train(cfg, tmp_path / "killed", resume=True, progress=False)
    a, b = (load_checkpoint(tmp_path / r / "last.pt")["model"] for r in ("straight", "killed"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("sinusoid")
    for name, algorithm in (("maml", "maml"), ("pre", "pretrain")):
        (root / f"{name}.yaml").write_text(yaml.safe_dump(small(algorithm={"name": algorithm})))
        assert (
            main(
                [
                    "train",
                    str(root / f"{name}.yaml"),
                    "--out",
                    str(root / name),
                    "--quiet",
                    "--device",
                    "cpu",
                ]
            )
            == 0
        )
    return root


def test_eval_json_reports_the_curve_the_baseline_and_a_plot(runs, capsys):
    capsys.readouterr()
    argv = [
        "eval",
        str(runs / "maml"),
        "--json",
        "--device",
        "cpu",
        "--baseline",
        str(runs / "pre"),
    ]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    for key in (
        "mse",
        "ci95",
        "curve",
        "baseline_curve",
        "plot",
        "episodes",
        "shots",
        "queries",
        "split",
        "algorithm",
        "dataset",
    ):
        assert key in report, key
    assert (
        "accuracy" not in report
        and report["algorithm"] == "maml"
        and report["dataset"] == "sinusoid-test"
    )
    for curve in (report["curve"], report["baseline_curve"]):
        assert set(curve) == {"5", "10", "20"}
        assert all(len(row["mse"]) == len(row["ci95"]) == 11 for row in curve.values())
    # the headline number is the K = 5 curve after eval_inner_steps (10): the same fixed tasks
    assert report["mse"] == report["curve"]["5"]["mse"][10]
    # at 0 steps neither model has seen the support set, but they are different networks
    assert report["curve"]["5"]["mse"][0] != report["baseline_curve"]["5"]["mse"][0]
    with open(report["plot"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out) == report  # evaluation is repeatable


def test_eval_text_one_k_and_plot_path(runs, tmp_path, capsys):
    capsys.readouterr()
    plot = tmp_path / "plots" / "fit.png"
    assert (
        main(["eval", str(runs / "maml"), "--device", "cpu", "--shots", "10", "--plot", str(plot)])
        == 0
    )
    out = capsys.readouterr().out
    assert (
        "10-shot" in out
        and "K=10" in out
        and "K=5 " not in out
        and "no baseline" in out
        and plot.is_file()
    )


def one_error_line(capsys, argv):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("metalab: error: ") and "Traceback" not in err[0]
    return err[0]


def test_bad_input_gives_one_line(runs, tmp_path, capsys):
    cfg = runs / "maml.yaml"
    assert "--ways 5" in one_error_line(
        capsys, ["eval", str(runs / "maml"), "--device", "cpu", "--ways", "5"]
    )
    assert "--ways 5" in one_error_line(
        capsys, ["train", str(cfg), "--out", str(tmp_path / "x"), "--ways", "5"]
    )
    assert "split 'dev'" in one_error_line(
        capsys, ["eval", str(runs / "maml"), "--device", "cpu", "--split", "dev"]
    )
    assert "nothing" in one_error_line(
        capsys,
        ["eval", str(runs / "maml"), "--device", "cpu", "--baseline", str(tmp_path / "nothing")],
    )
