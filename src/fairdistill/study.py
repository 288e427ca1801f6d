"""A whole study from one YAML file: models x benchmarks x methods, optional training, report.

``fairdistill run study.yaml`` (:func:`run_study`) does, in order:

1. every model in ``models`` on every benchmark in ``benchmarks`` (plain model), plus the
   ``capability`` block (lm-evaluation-harness tasks) when given: the "before" picture;
2. every inference-time method in ``methods`` on the benchmarks that support methods, each with a
   paired comparison against the plain model (``comparison.json`` in the method's run dir);
3. every model intervention in ``interventions`` (:mod:`fairdistill.interventions`: self-debias,
   sentence-debias, inlp) on every benchmark and the capability tasks, compared item by item with the
   plain model where the benchmark has a paired comparison;
4. every ``training`` step (``fairdistill``, ``cda`` or ``self_distill`` from :mod:`fairdistill.distill`),
   whose trained model is then evaluated on the same benchmarks and capability tasks: the "after";
   the runs of a trained model record its cost (training steps and seconds) for the report;
5. the report (``report.html`` + ``report.md``) over every run, and ``study.json`` listing them.

Every run lives in its own run directory under ``out`` and resumes like ``fairdistill eval``:
rerunning the same study after an interruption skips finished items, finished runs and finished
training. Relative paths in the file (models, corpora, rules) are resolved against the folder of
the YAML file first; ``${data}`` expands to the evaluation-data root (``shared/data`` or
``$FAIRDISTILL_DATA``) and ``${config_dir}`` to the YAML file's folder. See ``examples/study.yaml``.
"""
from __future__ import annotations

import gc
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import UserError
from .redaction import redact_urls
from .runner import RunSpec, build_benchmark, execute


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelEntry(_Strict):
    name: str = Field(description="short label used in run-dir names and the report")
    model: str = Field(description="model string: local dir, built-in name (smollm2), hub id, hf:PATH, ...")
    device: str | None = None
    dtype: str | None = None
    backend_options: dict[str, Any] = Field(default_factory=dict,
                                            description="backend keyword options of this model, over the study's")
    num_cpus: float = Field(1, description="--executor ray: CPUs each run (and training) of this model asks for")
    num_gpus: float = Field(0, description="--executor ray: GPUs each run (and training) of this model asks for")


class BenchmarkEntry(_Strict):
    name: str = Field(description="registered benchmark name (fairdistill list)")
    id: str | None = Field(None, description="run-dir name when one benchmark appears twice")
    options: dict[str, Any] = Field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.id or self.name


class MethodEntry(_Strict):
    name: str
    id: str | None = Field(None, description="label and run-dir suffix when one method appears twice "
                                             "(e.g. with its instructions in two languages)")
    options: dict[str, Any] = Field(default_factory=dict)
    benchmarks: list[str] | None = Field(None, description="benchmark ids to run it on (default: all that support methods)")
    compare: bool = Field(True, description="write a paired comparison against the plain model")
    models: list[str] | None = Field(None, description="model names to apply it to (default: all, incl. trained)")

    @property
    def key(self) -> str:
        # getattr: an entry pickled by an older fairdistill (a Ray task queued before an upgrade) has no id
        return getattr(self, "id", None) or self.name


class InterventionEntry(_Strict):
    name: str = Field(description="registered intervention name (fairdistill list)")
    id: str | None = Field(None, description="label and run-dir suffix when one intervention appears twice")
    options: dict[str, Any] = Field(default_factory=dict)
    benchmarks: list[str] | None = Field(None, description="benchmark ids to run it on (default: all, capability included)")
    compare: bool = Field(True, description="write a paired comparison against the plain model where the benchmark has one")
    models: list[str] | None = Field(None, description="model names to apply it to (default: all, incl. trained)")

    @property
    def key(self) -> str:
        return self.id or self.name


class TrainingEntry(_Strict):
    name: str = Field(description="name of the trained model in the report")
    kind: Literal["fairdistill", "cda", "self_distill"] = "fairdistill"
    base: str = Field(description="name of the model (in models) to start from")
    options: dict[str, Any] = Field(default_factory=dict,
                                    description="keyword arguments of run_fairdistill / run_cda / run_self_distill")


class ReferenceEntry(_Strict):
    """Published numbers the report sets beside the study's paired comparisons."""
    source: str = Field(description="who published it, e.g. 'Gallegos et al. 2025, GPT-3.5'")
    benchmark: str = "bbq"
    condition: str | None = Field(None, description="e.g. ambig; None: every condition")
    statistic: str = Field(description="the comparison's statistic, e.g. s_AMB or accuracy")
    values: dict[str, float] = Field(description="baseline and method name -> published value")
    note: str = ""


class ReportEntry(_Strict):
    title: str = "fairdistill study"
    out: str = "report.html"
    markdown: bool = True
    references: list[ReferenceEntry] = Field(default_factory=list)


class StudyConfig(_Strict):
    name: str = "study"
    out: str | None = Field(None, description="study folder (default runs/<name>)")
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    backend_options: dict[str, Any] = Field(default_factory=dict, description="backend keyword options of every model "
                                            "(e.g. rescore_margin: 0 for bf16 without float32 re-scoring)")
    batch_size: int = 16
    cache: bool | str = Field(False, description="a response cache per model (true: in the study folder; a folder: "
                                                 "there, shared with the studies that name it): overlapping runs (the "
                                                 "plain model's rotation 0 and its plain run) and reruns never re-ask it")
    data: str | None = Field(None, description="evaluation-data root holding bbq/, mmlu/, ... (default: auto)")
    doctor: bool = Field(False, description="check every model with `fairdistill doctor` before the first run and "
                                            "write its verdicts into study.log (about a minute per model)")
    models: list[ModelEntry] = Field(min_length=1)
    benchmarks: list[BenchmarkEntry] = Field(default_factory=list)
    capability: dict[str, Any] | None = Field(None, description="options of the capability benchmark, run on every model")
    methods: list[MethodEntry] = Field(default_factory=list)
    interventions: list[InterventionEntry] = Field(default_factory=list)
    training: list[TrainingEntry] = Field(default_factory=list)
    report: ReportEntry = Field(default_factory=ReportEntry)

    @field_validator("models")
    @classmethod
    def _unique_models(cls, v: list[ModelEntry]) -> list[ModelEntry]:
        names = [m.name for m in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"model names must be unique; repeated: {', '.join(dup)}")
        return v


# ---------------------------------------------------------------------------------------------
def _expand(obj: Any, subst: dict[str, str]) -> Any:
    if isinstance(obj, str):
        return re.sub(r"\$\{(\w+)\}", lambda m: subst.get(m.group(1), os.environ.get(m.group(1), m.group(0))), obj)
    if isinstance(obj, dict):
        return {k: _expand(v, subst) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_expand(v, subst) for v in obj]
    return obj


def _data_root(explicit: str | None) -> str:
    if explicit:
        return explicit
    from .data import find_dataset

    for name in ("bbq", "mmlu", "holistic_bias"):
        try:
            return str(find_dataset(name).parent)
        except UserError:
            continue
    return ""


def load_study(config_path: str | os.PathLike) -> tuple[StudyConfig, Path]:
    """Parse and validate a study YAML; errors are one-line UserErrors naming the field."""
    from .data import read_yaml_mapping

    p = Path(config_path)
    raw = read_yaml_mapping(p, "study config")
    cfg_dir = p.resolve().parent
    subst = {"config_dir": str(cfg_dir)}
    explicit = _expand(raw.get("data"), subst) if raw.get("data") else None
    subst["data"] = _local_path(explicit, cfg_dir) if explicit else _data_root(None)
    raw = _expand(raw, subst)
    try:
        cfg = StudyConfig.model_validate(raw)
    except ValidationError as e:
        errs = "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()[:5])
        raise UserError(f"{p}: {errs}") from None
    return cfg, cfg_dir


def _local_path(value: str, cfg_dir: Path) -> str:
    """A relative path that exists beside the config file becomes absolute; anything else is kept."""
    if not value or os.path.isabs(value) or ":" in value.split("/")[0]:
        return value
    cand = cfg_dir / value
    return str(cand.resolve()) if cand.exists() else value


class _Study:
    def __init__(self, cfg: StudyConfig, cfg_dir: Path, out: Path, show_progress: bool):
        self.cfg = cfg
        self.cfg_dir = cfg_dir
        self.out = out
        self.show_progress = show_progress
        self.runs: list[dict[str, Any]] = []  # {dir, label, model, benchmark, method}
        self.notes: list[str] = []
        self.models: dict[str, str] = {m.name: _local_path(m.model, cfg_dir) for m in cfg.models}
        self.trained: list[str] = []
        self.costs: dict[str, dict[str, Any]] = {}  # trained model -> what its training cost
        self.select: list[str] | None = None  # --select: label patterns of the runs to do this time
        self.dtype_noted: set[tuple[str, str]] = set()  # one study.log note per model (Ray tasks get a copy)

    # -- helpers --------------------------------------------------------------------------------
    def journal(self, msg: str) -> None:
        """One timestamped line in ``<out>/study.log``, progress bars or not, from whichever process
        (Ray task) does the work: how far a long study has got, readable from any shell."""
        self.out.mkdir(parents=True, exist_ok=True)
        with (self.out / "study.log").open("a", encoding="utf-8") as f:  # short appends: one line each
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")

    def log(self, msg: str) -> None:
        if self.show_progress:
            from rich.console import Console

            Console(stderr=True).print(msg, highlight=False)

    def benchmarks(self) -> list[BenchmarkEntry]:
        out = list(self.cfg.benchmarks)
        if self.cfg.capability is not None and not any(b.name == "capability" for b in out):
            out.append(BenchmarkEntry(name="capability", options=dict(self.cfg.capability)))
        return out

    def load_backend(self, name: str):
        from .backends.base import load_backend

        device, dtype = self.device_dtype(name)
        backend = load_backend(self.models[name], device=device, dtype=dtype, batch_size=self.cfg.batch_size,
                               **self.backend_options(name))
        if self.cfg.cache:
            from .backends.cache import CachingBackend

            backend = CachingBackend(backend, self.cache_path(name))
        return backend

    def doctor(self) -> None:
        """`fairdistill doctor` on every base model, its verdicts as lines of study.log (once per study folder)."""
        from .doctor import diagnose

        for m in self.cfg.models:
            mark = self.out / m.name / "doctor.json"
            if mark.exists():
                continue
            backend = self.load_backend(m.name)
            try:
                rep = diagnose(getattr(backend, "backend", backend))  # the model itself, not its response cache
            finally:
                close = getattr(backend, "close", None)
                if close:
                    close()
            for c in rep.checks:
                self.journal(f"doctor {m.name}: {c.name}: {c.verdict} ({c.value})" + (f"; {c.note}" if c.note else ""))
            mark.parent.mkdir(parents=True, exist_ok=True)
            mark.write_text(json.dumps(redact_urls(rep.to_dict()), indent=2))
            if not rep.ok:
                self.log(f"[yellow]doctor:[/yellow] {m.name} failed a check; see study.log")

    def device_dtype(self, name: str) -> tuple[str, str]:
        """The device and dtype a model is loaded with (``dtype: auto`` resolved as :meth:`_recorded_dtype`)."""
        entry = next((m for m in self.cfg.models if m.name == name), None)
        device = (entry.device if entry and entry.device else self.cfg.device)
        dtype = (entry.dtype if entry and entry.dtype else self.cfg.dtype)
        if dtype == "auto":
            dtype = self._recorded_dtype(name, device)
        return device, dtype

    def _recorded_dtype(self, name: str, device: str) -> str:
        """``dtype: auto`` on resume: the dtype this model's finished runs in the folder were computed in (its
        base's, for a trained model without runs yet), so that a study resumed on a machine of another kind
        (no native bf16) goes on with the same computation instead of redoing, and replacing, every run."""
        from .backends.hf import native_bf16
        from .distributed import local_device

        base = next((t.base for t in self.cfg.training if t.name == name), None)
        for model in (name, base):
            found = sorted((self.out / model).glob("*/config.json"), key=lambda c: ("--" in c.parent.name, c)) if model else []
            for cfg in found:  # plain runs first; an intervention may compute in its own dtype (self-debias)
                try:
                    desc = json.loads(cfg.read_text())["identity"]["model"]
                    dtype = desc["dtype"]
                except (ValueError, KeyError, TypeError):
                    continue
                if desc.get("intervention"):
                    continue
                here = "bfloat16" if native_bf16(local_device(device or "auto")) else "float32"
                if dtype != here and (name, dtype) not in self.dtype_noted:
                    self.dtype_noted.add((name, dtype))
                    self.journal(f"note  {name}: dtype auto stays {dtype}, as in {cfg.parent.relative_to(self.out)} "
                                 f"(this machine would pick {here}" + (": no native bf16, so runs are slower here)"
                                                                      if dtype == "bfloat16" else ")"))
                return dtype
        return "auto"

    def cache_path(self, name: str) -> Path:
        """``<cache folder>/<model name>/responses.sqlite``: the study folder's unless ``cache`` names another
        folder (another study's: the same model answers the same request once for both; entries are keyed
        by the model's identity, so a different model of the same name never reads them)."""
        root = self.out if self.cfg.cache is True else Path(_local_path(str(self.cfg.cache), self.cfg_dir))
        (root / name).mkdir(parents=True, exist_ok=True)
        return root / name / "responses.sqlite"

    def backend_options(self, name: str) -> dict[str, Any]:
        """The study's backend options with the model's own over them (trained models take the study's)."""
        entry = next((m for m in self.cfg.models if m.name == name), None)
        return {**self.cfg.backend_options, **(entry.backend_options if entry else {})}

    def spec(self, model_name: str, bench: BenchmarkEntry, method: MethodEntry | None,
             intervention: InterventionEntry | None = None) -> RunSpec:
        suffix = (f"--{intervention.key}" if intervention else "") + (f"--{method.key}" if method else "")
        return RunSpec(model=self.models[model_name], benchmark=bench.name, options=bench.options,
                       method=method.name if method else None, method_options=method.options if method else {},
                       intervention=intervention.name if intervention else None,
                       intervention_options=intervention.options if intervention else {},
                       seed=self.cfg.seed, out=self.out / model_name / (bench.key + suffix))

    def _label(self, model_name: str, method: MethodEntry | None, intervention: InterventionEntry | None) -> str:
        return model_name + "".join(f" + {x}" for x in (intervention.key if intervention else None,
                                                        method.key if method else None) if x)

    def _run(self, backend, model_name: str, bench: BenchmarkEntry, method: MethodEntry | None,
             intervention: InterventionEntry | None = None) -> Path:
        spec = self.spec(model_name, bench, method, intervention)
        label = self._label(model_name, method, intervention)
        self.log(f"[bold]{bench.key}[/bold] on [bold]{label}[/bold] -> {spec.out}")
        extra = {"model_spec": redact_urls(self.models[model_name]), "label": label, "study": self.cfg.name,
                 "method_options": method.options if method else {}}
        if model_name in self.costs:
            extra["cost"] = self.costs[model_name]
        self.journal(f"start {bench.key} on {label}")
        t0 = time.perf_counter()
        from .interventions.projection import estimates_dir

        # a projection's estimate is kept in the study (beside the model's response cache, if any): a run
        # resumed on another machine from the study's folder projects with the very same basis
        token = estimates_dir.set((self.cache_path(model_name).parent if self.cfg.cache else self.out / model_name)
                                  / "interventions")
        try:
            _, metrics = execute(spec, backend, show_progress=self.show_progress, extra_config=extra)
        finally:
            estimates_dir.reset(token)
        n = ((metrics or {}).get("meta") or {}).get("n_items") if isinstance(metrics, dict) else None
        self.journal(f"done  {bench.key} on {label} in {time.perf_counter() - t0:.0f} s"
                     + (f" ({n} items)" if n is not None else ""))
        # a model answering one letter to everything should be seen before the study's end, not in its report
        warning = ((metrics.get("position") or {}).get("warning")) if isinstance(metrics, dict) else None
        if warning:
            self.journal(f"warn  {bench.key} on {label}: {warning}")
        return spec.out

    def plan(self, model_name: str, *, every: bool = False
             ) -> list[tuple[BenchmarkEntry, MethodEntry | None, InterventionEntry | None]]:
        """The runs of one model, in order: every benchmark plain, each method on the benchmarks it applies
        to, then each intervention (those ``--select`` picks, unless ``every``)."""
        from .registry import BENCHMARKS

        runs: list[tuple[BenchmarkEntry, MethodEntry | None, InterventionEntry | None]] = [
            (b, None, None) for b in self.benchmarks()]
        for m in self.cfg.methods:
            for bench in self.targets(m, model_name):
                if not BENCHMARKS.get(bench.name).supports_methods:
                    if m.benchmarks is not None:  # named explicitly: say why it cannot run
                        BENCHMARKS.get(bench.name).check_method(m.name)
                    continue
                runs.append((bench, m, None))
        for iv in self.cfg.interventions:
            runs += [(bench, None, iv) for bench in self.targets(iv, model_name)]
        if self.select and not every:  # the selected runs, and the plain runs they are compared with
            keep = [r for r in runs if self.selected(self._label(model_name, r[1], r[2]), self._folder(model_name, *r))]
            needed = {r[0].key for r in keep}
            runs = [r for r in runs if r in keep or (r[1] is None and r[2] is None and r[0].key in needed)]
        return runs

    def selected(self, *names: str) -> bool:
        """``--select``: whether a run's label (``qwen15 + self-debias``) or folder (``qwen15/crows-pairs--self-debias``)
        matches one of the patterns."""
        from fnmatch import fnmatchcase

        return not self.select or any(fnmatchcase(n, p) for p in self.select for n in names)

    def _folder(self, model_name: str, bench: BenchmarkEntry, method: MethodEntry | None,
                intervention: InterventionEntry | None) -> str:
        return f"{model_name}/{bench.key}" + (f"--{intervention.key}" if intervention else "") + (
            f"--{method.key}" if method else "")

    def record(self, model_name: str, bench: BenchmarkEntry, method: MethodEntry | None,
               intervention: InterventionEntry | None = None) -> Path:
        """Add a finished run to the study's list (and its comparison against the plain run)."""
        run_dir = self.spec(model_name, bench, method, intervention).out
        self.runs.append({"dir": str(run_dir), "label": self._label(model_name, method, intervention),
                          "model": model_name, "benchmark": bench.key, "method": method.name if method else None,
                          **({"method_id": method.key} if method and method.key != method.name else {}),
                          "intervention": intervention.key if intervention else None})
        plain = self.spec(model_name, bench, None).out
        if method is not None and method.compare:
            self.compare(plain, run_dir)
        elif intervention is not None and intervention.compare and _has_paired_comparison(bench.name):
            self.compare(plain, run_dir)
        elif method is None and intervention is None and _has_paired_comparison(bench.name):
            # a trained model against the model it was trained from, item by item: the before/after of
            # a training as a paired difference rather than two overlapping CIs
            base = (self.costs.get(model_name) or {}).get("base")
            base_dir = self.spec(base, bench, None).out if base in self.models else None
            if base_dir is not None and (base_dir / "results.jsonl").exists():
                self.compare(base_dir, run_dir)
        return run_dir

    def evaluate_model(self, model_name: str) -> None:
        if not self.plan(model_name):  # --select left nothing to do on it: do not load it
            return
        backend = self.load_backend(model_name)
        try:
            for bench, method, intervention in self.plan(model_name):
                self._run(backend, model_name, bench, method, intervention)
                self.record(model_name, bench, method, intervention)
        finally:
            del backend
            gc.collect()

    def targets(self, entry: MethodEntry | InterventionEntry, model_name: str) -> list[BenchmarkEntry]:
        """The benchmarks a method or intervention entry runs on for this model (none if not for this model)."""
        if entry.models is not None and model_name not in entry.models:
            return []
        return [b for b in self.benchmarks() if entry.benchmarks is None or b.key in entry.benchmarks]

    def compare(self, base_dir: Path, meth_dir: Path) -> None:
        from .compare import compare

        comp = compare(base_dir, meth_dir, seed=self.cfg.seed)
        (meth_dir / "comparison.json").write_text(json.dumps(comp, indent=2, default=str))

    def train(self, t: TrainingEntry) -> str:
        if t.base not in self.models:
            raise UserError(f"training {t.name!r}: base model {t.base!r} is not in models "
                            f"({', '.join(self.models)})")
        if t.name in self.models:
            raise UserError(f"training {t.name!r}: that name is already a model")
        try:
            from . import distill
            fn = getattr(distill, f"run_{t.kind}")
        except (ImportError, AttributeError):
            raise UserError(f"training kind {t.kind!r} is not available in this installation "
                            "(fairdistill.distill has no run_{t.kind})") from None
        out = self.out / "train" / t.name
        opts = {k: (_local_path(v, self.cfg_dir) if isinstance(v, str) and k in ("data", "rules", "student", "corpus", "prompts") else v)
                for k, v in t.options.items()}
        base_spec = self.models[t.base]
        done = out / "study_trained.json"
        if done.exists():
            info = json.loads(done.read_text())
            model_dir = info["model_dir"]
            if not (Path(model_dir) / "config.json").exists():
                # the study folder moved to another machine with its adapters but not the (large) merged
                # model: merge again rather than train again, into the same folder, so the model's
                # identity (its path) and with it the response cache stay the same
                adapter = out / "adapter"
                if (adapter / "adapter_config.json").exists() and Path(model_dir).resolve().is_relative_to(out.resolve()):
                    model_dir = _merge_adapter(base_spec, adapter, Path(model_dir))
                else:
                    model_dir = self._trained_dir(info.get("summary"), out, base_spec)
                    done.write_text(json.dumps({**info, "model_dir": model_dir}, indent=2, default=str))
            self.log(f"training {t.name}: already done -> {model_dir}")
        else:
            self.log(f"[bold]training[/bold] {t.name} ({t.kind}) from {t.base} -> {out}")
            self.journal(f"start training {t.name} ({t.kind}) from {t.base}")
            t0 = time.perf_counter()
            from .distill.fairdistill import train_journal

            # long trainings say how far they have got in study.log, progress bars or not
            journal_token = train_journal.set(lambda line: self.journal(f"  training {t.name}: {line}"))
            try:
                if t.kind == "fairdistill":
                    opts.setdefault("seed", self.cfg.seed)
                    summary = fn(teacher=base_spec, student=opts.pop("student", None), rules=opts.pop("rules", None),
                                 data=opts.pop("data"), out=str(out), **opts)
                elif t.kind == "cda":
                    opts.setdefault("seed", self.cfg.seed)
                    summary = fn(model=base_spec, data=opts.pop("data"), out=str(out), **opts)
                else:
                    opts.setdefault("seed", self.cfg.seed)
                    fallback = opts.pop("fallback", "reprompting")  # the study's option, not the training's
                    rule = opts.pop("teacher_rule", None)
                    if opts.get("method") == "auto":
                        choice = self.choose_teacher(t.base, fallback) if rule is None else \
                            self.apply_teacher_rule(t.base, rule)
                        if choice["method"] is None:  # the rule found no teacher: no student, said so
                            (out / "teacher_choice.json").parent.mkdir(parents=True, exist_ok=True)
                            (out / "teacher_choice.json").write_text(json.dumps(choice, indent=2))
                            self.journal(f"no teacher for {t.name}: {choice['reason']}")
                            self.log(f"training {t.name}: no teacher qualifies, no student ({choice['reason']})")
                            self.notes.append(f"{t.name}: no student trained; {choice['reason']}")
                            return None
                        opts["method"] = choice["method"]
                        # the chosen method's own options, so its cached answers are the teacher's
                        opts["method_options"] = {**choice.get("options", {}), **opts.get("method_options", {})}
                        self.journal(f"teacher of {t.name}: {choice['method']} ({choice['reason']})")
                        (out / "teacher_choice.json").parent.mkdir(parents=True, exist_ok=True)
                        (out / "teacher_choice.json").write_text(json.dumps(choice, indent=2))
                    if self.cfg.cache:  # the teacher's answers are those its method runs above already got
                        opts.setdefault("cache", str(self.cache_path(t.base)))
                    opts.setdefault("dtype", self.cfg.dtype)
                    opts.setdefault("backend_options", self.backend_options(t.base))
                    summary = fn(model=base_spec, out=str(out), **opts)
            except ModuleNotFoundError as e:
                raise UserError(f"training kind {t.kind!r} is not available in this installation ({e})") from None
            except KeyError as e:
                raise UserError(f"training {t.name!r}: missing option {e}") from None
            finally:
                train_journal.reset(journal_token)
            model_dir = self._trained_dir(summary, out, base_spec)
            self.journal(f"done  training {t.name} in {time.perf_counter() - t0:.0f} s")
            done.write_text(json.dumps({"model_dir": model_dir, "kind": t.kind, "base": t.base,
                                        "seconds": round(time.perf_counter() - t0, 1),
                                        "summary": summary if isinstance(summary, dict) else None},
                                       indent=2, default=str))
        self.add_trained(t.name, model_dir)
        return model_dir

    def choose_teacher(self, base: str, fallback: str = "reprompting") -> dict[str, Any]:
        """The self-distillation teacher by the rule fixed before the runs: among the methods run on
        ``base``, the one whose paired s_AMB difference against the plain model on ambiguous BBQ items
        is lowest with a 95% CI that excludes 0 (lies below it); if none qualifies, ``fallback``.

        Reads the methods' ``comparison.json`` files, so it runs after the method runs. Returns the
        method, its options, the reason and every candidate's difference [CI]."""
        # every compared method run on the plain model's ambiguous BBQ items must have finished: a teacher
        # chosen while one of them is still running would be chosen among fewer methods than the rule says
        planned = [(b, m) for b, m, iv in self.plan(base) if m is not None and iv is None and m.compare
                   and b.name == "bbq" and b.options.get("condition") == "ambig"]
        missing = [f"{m.key} on {b.key}" for b, m in planned
                   if not (self.spec(base, b, m).out / "comparison.json").exists()]
        if missing:
            raise UserError(f"the self-distillation teacher (method: auto) is chosen from every method's comparison "
                            f"on ambiguous BBQ items; not yet compared: {', '.join(missing)} (run them first)")
        candidates = []
        for b, m in planned:
            comp = self.spec(base, b, m).out / "comparison.json"
            rows = json.loads(comp.read_text()).get("rows") or []
            d = next((r for r in rows if r.get("metric") == "s_AMB" and r.get("run") == "difference"), None)
            if d is None or d.get("value") is None:
                continue
            candidates.append({"method": m.name, "id": m.key, "benchmark": b.key, "options": dict(m.options),
                               "difference": d["value"], "ci": [d.get("ci_low"), d.get("ci_high")],
                               "p_value": d.get("p_value"), "n": d.get("n")})
        lowering = [c for c in candidates if c["ci"][1] is not None and c["ci"][1] < 0]
        if lowering:
            best = min(lowering, key=lambda c: c["difference"])
            return {"method": best["method"], "options": best["options"], "candidates": candidates,
                    "reason": f"lowest s_AMB difference with a 95% CI below 0: {best['difference']:+.3f} "
                              f"[{best['ci'][0]:+.3f}, {best['ci'][1]:+.3f}] on {best['benchmark']}"}
        fb = next((m for m in self.cfg.methods if m.key == fallback or m.name == fallback), None)
        return {"method": fb.name if fb else fallback, "options": dict(fb.options) if fb else {},
                "candidates": candidates,
                "reason": f"no method lowered s_AMB with a 95% CI excluding 0 ({len(candidates)} compared): "
                          f"the fallback {fallback}"}

    def apply_teacher_rule(self, base: str, rule: dict[str, Any]) -> dict[str, Any]:
        """The teacher by a pre-registered rule (:mod:`fairdistill.teacher_rule`) over the comparisons of the
        rule's candidate methods on ``base``; the chosen method's options come with it."""
        from .teacher_rule import TeacherRule, comparison_reader, judge

        try:
            r = TeacherRule.model_validate(rule)
        except ValueError as e:
            raise UserError(f"teacher_rule: {str(e).splitlines()[0]}; {str(e).splitlines()[-1].strip()}") from None
        benches = {b.key: b for b in self.benchmarks()}
        methods = {m.key: m for m in self.cfg.methods}
        for name in r.candidates:
            if name not in methods:
                raise UserError(f"teacher_rule: candidate {name!r} is not among the study's methods "
                                f"({', '.join(methods)})")

        def folder(m: str, b: str) -> Path:
            if b not in benches:
                raise UserError(f"teacher_rule: benchmark {b!r} is not among the study's benchmark ids")
            return self.spec(base, benches[b], methods[m]).out

        choice = judge(r, comparison_reader(folder))
        if choice["method"] is not None:
            m = methods.get(choice["method"])
            choice = {**choice, "method": m.name if m else choice["method"], "id": choice["method"],
                      "options": dict(m.options) if m else {}}
        return choice

    def add_trained(self, name: str, model_dir: str) -> None:
        done = self.out / "train" / name / "study_trained.json"
        info = json.loads(done.read_text()) if done.exists() else {}
        summary = info.get("summary") or {}
        self.costs[name] = {"training": info.get("kind"), "base": info.get("base"), "steps": summary.get("global_step"),
                            "train_seconds": summary.get("train_seconds"),
                            **({"teacher_seconds": summary["teacher_seconds"]} if "teacher_seconds" in summary else {})}
        choice = self.out / "train" / name / "teacher_choice.json"
        if choice.exists():  # a self-distillation teacher chosen by the study's rule: which, and why
            c = json.loads(choice.read_text())
            self.costs[name].update(teacher=c.get("method"), teacher_reason=c.get("reason"))
        for d, label in summary.get("report_runs") or []:  # e.g. self-distillation's held-out runs and agreement
            self.runs.append({"dir": d, "label": f"{name}: {label}", "model": name, "benchmark": None, "method": None})
        self.models[name] = model_dir
        self.trained.append(name)

    @staticmethod
    def _trained_dir(summary: Any, out: Path, base_spec: str) -> str:
        """The trained model folder: a full model (config.json), or a LoRA adapter merged into the base."""
        if isinstance(summary, dict):
            for k in ("model_dir", "student_dir", "merged_dir", "output_model", "student"):
                v = summary.get(k)
                if isinstance(v, str) and Path(v).is_dir() and (Path(v) / "config.json").exists():
                    return str(Path(v).resolve())
        for sub in ("student", "merged", "model", "."):
            d = out / sub
            if (d / "config.json").exists():
                return str(d.resolve())
        adapter = out / "adapter"
        if (adapter / "adapter_config.json").exists():
            return _merge_adapter(base_spec, adapter, out / "merged")
        raise UserError(f"training finished but no model folder (config.json) or LoRA adapter was found in {out}")


def _has_paired_comparison(benchmark: str) -> bool:
    from .benchmarks.base import Benchmark
    from .registry import BENCHMARKS

    return BENCHMARKS.get(benchmark).paired_units.__func__ is not Benchmark.paired_units.__func__


def _merge_adapter(base_spec: str, adapter: Path, dest: Path) -> str:
    """Merge a LoRA adapter into its base model and save a plain model folder (evaluable by path)."""
    from peft import PeftModel

    from .backends.hf import HFBackend

    base = HFBackend.from_spec(base_spec, device="cpu", dtype="float32")
    merged = PeftModel.from_pretrained(base.model, str(adapter)).merge_and_unload()
    dest.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(dest)
    tok = base.tokenizer
    if (adapter / "tokenizer_config.json").exists():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(adapter))
    tok.save_pretrained(dest)
    return str(dest.resolve())


def run_study(config_path: str | os.PathLike, *, out: str | os.PathLike | None = None,
              show_progress: bool = True, executor: str = "local", ray_address: str | None = None,
              only: list[str] | None = None, select: list[str] | None = None) -> Path:
    """Run the study described by ``config_path`` and return the path of its HTML report.

    ``executor="local"`` runs everything in this process, one model loaded at a time;
    ``executor="ray"`` runs each (model, benchmark, method) run and each training as a Ray task
    asking for the model's ``num_cpus`` / ``num_gpus`` (see :mod:`fairdistill.executors`), on a
    local Ray instance or the cluster at ``ray_address``. The run folders are the same either way.
    ``only``: names of ``models`` to run (with the trainings that start from them); the others are
    left out of this invocation and of its report (run them later into the same folder).
    ``select``: shell patterns over run labels (``qwen15 + self-debias``, ``*-cda``) or folders
    (``qwen15/crows-pairs*``); only the matching runs are done, with the plain runs they are compared with
    and the trainings they need, and the runs earlier invocations recorded in study.json stay in the report
    (e.g. the float32 intervention on a machine without native bf16, the rest elsewhere)."""
    if executor not in ("local", "ray"):
        raise UserError(f"unknown executor {executor!r}; use local or ray")
    cfg, cfg_dir = load_study(config_path)
    order = [m.name for m in cfg.models] + [t.name for t in cfg.training]
    if only:
        unknown = sorted(set(only) - {m.name for m in cfg.models})
        if unknown:
            raise UserError(f"{config_path}: no model named {', '.join(unknown)}; models: "
                            f"{', '.join(m.name for m in cfg.models)}")
        cfg = cfg.model_copy(update={"models": [m for m in cfg.models if m.name in only],
                                     "training": [t for t in cfg.training if t.base in only]})
    out_dir = Path(out) if out is not None else Path(cfg.out or Path("runs") / cfg.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not cfg.benchmarks and cfg.capability is None:
        raise UserError(f"{config_path}: the study has no benchmarks and no capability block")
    st = _Study(cfg, cfg_dir, out_dir, show_progress)
    if select:
        st.select = list(select)
        needed = [t for t in cfg.training if st.selected(t.name) or st.plan(t.name)]
        if not needed and not any(st.plan(m.name) for m in cfg.models):
            raise UserError(f"--select {' '.join(select)}: no run of {config_path} matches")
        st.cfg = cfg = cfg.model_copy(update={"training": needed})
    old_data = os.environ.get("FAIRDISTILL_DATA")
    if cfg.data:  # every benchmark finds its folder through find_dataset -> $FAIRDISTILL_DATA/<name>
        os.environ["FAIRDISTILL_DATA"] = str(Path(_local_path(cfg.data, cfg_dir)).resolve())
    try:
        for b in st.benchmarks():  # fail on a bad option before any model loads
            build_benchmark(b.name, b.options, seed=cfg.seed)
        from .interventions import get_intervention

        for iv in cfg.interventions:
            get_intervention(iv.name, **iv.options)
        keys = [b.key for b in st.benchmarks()]
        if len(keys) != len(set(keys)):
            raise UserError(f"{config_path}: a benchmark appears twice; give each an id")
        def _overlap(a, b):  # None = every model / benchmark
            return a is None or b is None or bool(set(a) & set(b))

        for i, a in enumerate(cfg.methods):
            for b in cfg.methods[i + 1:]:
                if a.key == b.key and _overlap(a.models, b.models) and _overlap(a.benchmarks, b.benchmarks):
                    raise UserError(f"{config_path}: method {a.key!r} appears twice for one model and benchmark; "
                                    "give each entry an id (e.g. reprompting-en)")
        if cfg.doctor:
            st.doctor()
        if executor == "ray":
            from .executors import run_on_ray

            run_on_ray(st, address=ray_address)
        else:
            for m in cfg.models:
                st.evaluate_model(m.name)
            for t in cfg.training:
                if st.train(t) is not None:
                    st.evaluate_model(t.name)
    finally:
        if cfg.data:
            if old_data is None:
                os.environ.pop("FAIRDISTILL_DATA", None)
            else:
                os.environ["FAIRDISTILL_DATA"] = old_data
    from .report import build_report

    runs, models, trained = st.runs, st.models, st.trained
    prev = out_dir / "study.json"
    if (only or select) and prev.exists():  # the finished runs of earlier invocations stay in the report
        old = json.loads(prev.read_text())
        here, done = set(st.models), {r["dir"] for r in st.runs}
        runs = [r for r in old.get("runs", []) if (r.get("model") not in here if not select else r["dir"] not in done)
                and (Path(r["dir"]) / "metrics.json").exists()]
        runs += st.runs
        models = {**old.get("models", {}), **st.models}
        trained = [t for t in old.get("trained", []) if t not in st.trained] + st.trained
    # report order: per benchmark, runs in model order (base first, then trained), methods after
    if select:  # earlier and selected runs interleaved back into the study's own order
        plan_dirs = {str(st.spec(m, b, me, iv).out): k for m in st.models
                     for k, (b, me, iv) in enumerate(st.plan(m, every=True))}
        runs = sorted(runs, key=lambda r: plan_dirs.get(r["dir"], -1))
    runs = sorted(runs, key=lambda r: order.index(r["model"]) if r.get("model") in order else len(order))
    rep = Path(cfg.report.out)
    rep = rep if rep.is_absolute() else out_dir / rep
    references = [r.model_dump() for r in cfg.report.references]
    html = build_report([r["dir"] for r in runs], rep, labels=[r["label"] for r in runs],
                        title=cfg.report.title, markdown=cfg.report.markdown, references=references)
    prev.write_text(json.dumps({
        "name": cfg.name, "title": cfg.report.title, "config": str(Path(config_path).resolve()),
        "models": redact_urls(models),
        "trained": trained, "runs": runs, "notes": st.notes, "report": str(html), "references": references,
    }, indent=2))
    return html
