"""Study executors beyond the in-process default: Ray (``fairdistill run study.yaml --executor ray``).

Each (model, benchmark, method) run of a study, and each training step, becomes one Ray task that
asks for its model's ``num_cpus`` / ``num_gpus`` (``models:`` entries in the study file; trained
models inherit their base's). Ray places the tasks on a local instance or on the cluster at
``--ray-address`` and runs as many at once as the resources allow. A task loads its own model and
runs through the same :func:`fairdistill.runner.execute` into the same run folder as in-process,
so the folders, resume and the report are unchanged; the driver writes comparisons, ``study.json``
and the report once the tasks are done.

On a cluster every node needs fairdistill, the models and the data at the same paths, and the
study folder on a shared file system (the tasks write the run folders where the driver reads them).
"""
from __future__ import annotations

import os
from typing import Any

from .errors import UserError


def _task_env(env: dict[str, str | None]):
    """Set the driver's data-lookup variables in a (reused) worker process for one task."""
    old = {k: os.environ.get(k) for k in env}
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    return old


def run_task(study, model_name: str, bench, method, intervention, env: dict[str, str | None]) -> str:
    """One run (Ray task body): load the model, evaluate into the run folder."""
    old = _task_env(env)
    try:
        backend = study.load_backend(model_name)
        try:
            return str(study._run(backend, model_name, bench, method, intervention))
        finally:
            backend.close()
    finally:
        _task_env(old)


def train_task(study, training, env: dict[str, str | None]) -> str:
    """One training step (Ray task body); returns the trained model folder."""
    old = _task_env(env)
    try:
        return study.train(training)
    finally:
        _task_env(old)


def _resources(study, model_name: str) -> dict[str, float]:
    entry = next((m for m in study.cfg.models if m.name == model_name), None)
    if entry is None:  # a trained model: its base model's needs
        t = next(t for t in study.cfg.training if t.name == model_name)
        return _resources(study, t.base)
    return {"num_cpus": entry.num_cpus, "num_gpus": entry.num_gpus}


def run_on_ray(study, address: str | None = None) -> None:
    """Run ``study`` (a :class:`fairdistill.study._Study`) on Ray: the base models' runs and the
    trainings at once, then the trained models' runs; record them in the in-process order."""
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'fairdistill[ray]'") from None
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=study.show_progress,
                     configure_logging=False)
        except ConnectionError as e:
            raise UserError(f"cannot reach the Ray cluster at {address}: {e}") from None
    env = {"FAIRDISTILL_DATA": os.environ.get("FAIRDISTILL_DATA")}
    quiet = study.__class__(study.cfg, study.cfg_dir, study.out, False)
    quiet.models = dict(study.models)
    run_remote, train_remote = ray.remote(run_task), ray.remote(train_task)
    try:
        def submit_runs(names: list[str]) -> list[tuple[str, Any, Any, Any, Any]]:
            out = []
            for name in names:
                quiet.models = dict(study.models)
                for bench, method, iv in study.plan(name):
                    study.log(f"[bold]{bench.key}[/bold] on [bold]{study._label(name, method, iv)}[/bold]: Ray task")
                    ref = run_remote.options(**_resources(study, name)).remote(quiet, name, bench, method, iv, env)
                    out.append((name, bench, method, iv, ref))
            return out

        def submit_training(t):
            return t, train_remote.options(**_resources(study, t.base)).remote(quiet, t, env)

        first = submit_runs([m.name for m in study.cfg.models])
        # a teacher chosen from the method comparisons (method: auto) waits for them to be written
        late = [t for t in study.cfg.training if t.kind == "self_distill" and t.options.get("method") == "auto"]
        trainings = [submit_training(t) for t in study.cfg.training if t not in late]
        _wait([ref for *_, ref in first] + [ref for _, ref in trainings])
        for name, bench, method, iv, _ in first:
            study.record(name, bench, method, iv)
        if late:
            extra = [submit_training(t) for t in late]
            _wait([ref for _, ref in extra])
            trainings += extra
        trainings.sort(key=lambda tr: study.cfg.training.index(tr[0]))
        for t, ref in trainings:
            study.add_trained(t.name, ray.get(ref))
        second = submit_runs([t.name for t, _ in trainings])
        _wait([ref for *_, ref in second])
        for name, bench, method, iv, _ in second:
            study.record(name, bench, method, iv)
    finally:
        if started:
            ray.shutdown()


def _wait(refs: list) -> None:
    """Wait for every task; a task's UserError comes back as that one line."""
    import ray

    try:
        ray.get(refs)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, UserError):
            raise UserError(str(cause)) from None
        raise


__all__ = ["run_on_ray", "run_task", "train_task"]
