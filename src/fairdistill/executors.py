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
    """Run ``study`` (a :class:`fairdistill.study._Study`) on Ray and record the runs in the in-process
    order.

    The driver hands Ray only as many tasks as the cluster can run at once and picks the next one by
    :func:`_priority`: trainings first (their students wait on them), then the base models' plain and
    method runs, then each trained model's runs as soon as its training is done, and the interventions
    last, in the study's order. So a study stopped part-way holds the most table lines, and an
    expensive intervention (self-debias) no longer keeps finished trainings from being evaluated."""
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
    for name in [m.name for m in study.cfg.models] + [t.name for t in study.cfg.training]:
        study.device_dtype(name)  # its study.log note written once, here, rather than by every task
    quiet.dtype_noted = set(study.dtype_noted)
    run_remote, train_remote = ray.remote(run_task), ray.remote(train_task)
    cfg = study.cfg
    try:
        late = [t for t in cfg.training if t.kind == "self_distill" and t.options.get("method") == "auto"]
        ready: list[tuple[tuple, tuple]] = []  # (priority, job); a job: ("run", model, bench, method, iv) | ("train", t)

        def add_runs(name: str) -> None:
            for i, (bench, method, iv) in enumerate(study.plan(name)):
                ready.append((_priority(study, name, method, iv, i), ("run", name, bench, method, iv)))

        for t in cfg.training:
            if t not in late:
                ready.append(((0, cfg.training.index(t)), ("train", t)))
        for m in cfg.models:
            add_runs(m.name)
        base_method_runs = {(m.name, b.key, me.key if me else None) for m in cfg.models
                            for b, me, iv in study.plan(m.name) if iv is None}
        recorded: dict[tuple, list[dict]] = {}  # run key -> the study.json entries it added
        trained: dict[str, list[dict]] = {}     # training name -> the entries add_trained added
        finished: list[tuple] = []              # runs done, recorded at the end in the in-process order

        def record(job: tuple) -> None:
            _, name, bench, method, iv = job
            n = len(study.runs)
            study.record(name, bench, method, iv)
            recorded[(name, *_key(bench, method, iv))] = study.runs[n:]

        flying: dict[Any, tuple] = {}
        limit = _capacity(study)
        while ready or flying:
            ready.sort(key=lambda r: r[0])
            while ready and len(flying) < limit:
                _, job = ready.pop(0)
                if job[0] == "train":
                    ref = train_remote.options(**_resources(study, job[1].base)).remote(quiet, job[1], env)
                else:
                    _, name, bench, method, iv = job
                    study.log(f"[bold]{bench.key}[/bold] on [bold]{study._label(name, method, iv)}[/bold]: Ray task")
                    quiet.models = dict(study.models)
                    ref = run_remote.options(**_resources(study, name)).remote(quiet, name, bench, method, iv, env)
                flying[ref] = job
            done, _ = ray.wait(list(flying), num_returns=1)
            job = flying.pop(done[0])
            _wait(done)
            if job[0] == "train":
                n = len(study.runs)
                study.add_trained(job[1].name, ray.get(done[0]))
                trained[job[1].name] = study.runs[n:]
                add_runs(job[1].name)
                continue
            finished.append(job)
            if late and base_method_runs <= {(j[1], j[2].key, j[3].key if j[3] else None)
                                             for j in finished if j[4] is None}:
                # a teacher chosen from the method comparisons (method: auto): write them, then train
                for j in [j for j in finished if j[1] in {m.name for m in cfg.models} and j[4] is None]:
                    record(j)
                ready += [((0, cfg.training.index(t)), ("train", t)) for t in late]
                late = []
        # trained models' runs are compared with their base's, so everything is recorded once all is done
        for j in finished:
            if (j[1], *_key(*j[2:])) not in recorded:
                record(j)
        order = [(m.name, *_key(b, me, iv)) for m in cfg.models for b, me, iv in study.plan(m.name)]
        names = [t.name for t in cfg.training if t.name in trained]
        tail = [(n, *_key(b, me, iv)) for n in names for b, me, iv in study.plan(n)]
        study.runs[:] = ([e for k in order for e in recorded.get(k, [])]
                         + [e for n in names for e in trained[n]]
                         + [e for k in tail for e in recorded.get(k, [])])
    finally:
        if started:
            ray.shutdown()


def _key(bench, method, iv) -> tuple:
    return bench.key, method.key if method else None, iv.key if iv else None


def _priority(study, name: str, method, iv, i: int) -> tuple:
    """Trainings 0, base models' runs 1, trained models' runs 2, interventions 3 (in the study's order)."""
    models = [m.name for m in study.cfg.models]
    if iv is not None:
        return 3, study.cfg.interventions.index(iv), i
    if name in models:
        return 1, models.index(name), i
    return 2, [t.name for t in study.cfg.training].index(name), i


def _capacity(study) -> int:
    """How many tasks the cluster runs at once: its CPUs (or GPUs) over the smallest model's needs."""
    import ray

    res = ray.cluster_resources()
    fits = [min((int(res.get(key, 0) // need) for key, need in (("CPU", m.num_cpus), ("GPU", m.num_gpus)) if need),
                default=1) for m in study.cfg.models]
    return max(1, *fits)


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
