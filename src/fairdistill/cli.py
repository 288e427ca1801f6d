"""The ``fairdistill`` command line. User errors end in one line on stderr and a non-zero exit."""
from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.console import Console
from rich.table import Table

from .redaction import redact_urls
from .errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Measure social bias in language models and remove it by self-debiasing and distillation.")
console = Console()
err_console = Console(stderr=True)


# -- helpers ------------------------------------------------------------------------------------
def parse_options(pairs: list[str]) -> dict[str, Any]:
    """``k=v`` pairs; values are JSON when they parse (numbers, true/false, lists), else strings."""
    out: dict[str, Any] = {}
    for p in pairs:
        if "=" not in p:
            raise UserError(f"option {p!r} is not of the form key=value")
        k, v = p.split("=", 1)
        try:
            out[k.strip().replace("-", "_")] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip().replace("-", "_")] = v
    return out


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "" if v is None else str(v)


def print_rows(rows: list[dict[str, Any]], title: str, max_rows: int = 60) -> None:
    if not rows:
        return
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    t = Table(title=title)
    for c in cols:
        t.add_column(c, justify="right" if isinstance(rows[0].get(c), (int, float)) else "left")
    for r in rows[:max_rows]:
        t.add_row(*[fmt(r.get(c)) for c in cols])
    console.print(t)
    if len(rows) > max_rows:
        console.print(f"... {len(rows) - max_rows} more rows in metrics.json")


def print_position(metrics: dict) -> None:
    """Letter distribution of multiple-choice answers, and one warning line when one letter dominates."""
    pos = metrics.get("position") or {}
    print_rows(pos.get("rows", []), title="answer letters (position bias)")
    if pos.get("warning"):
        console.print(f"[yellow]warning:[/yellow] {pos['warning']}", highlight=False, soft_wrap=True)


def print_notes(metrics: dict) -> None:
    """One line per note a benchmark attaches to its metrics (e.g. CBBQ's missing data)."""
    for line in metrics.get("notes") or []:
        console.print(f"[yellow]note:[/yellow] {line}", highlight=False, soft_wrap=True)


def print_definitions(metrics: dict) -> None:
    defs = metrics.get("definitions") or {}
    for k, v in defs.items():
        console.print(f"[dim]{k}: {v}[/dim]")


# -- commands -----------------------------------------------------------------------------------
@app.command("eval")
def eval_cmd(
    benchmark: str = typer.Argument(..., help="benchmark name (see `fairdistill list`)"),
    model: str = typer.Option("smollm2", "--model", "-m", help="model: built-in name, local dir, hub id, hf:PATH, openai:URL#MODEL, vllm:PATH"),
    categories: Optional[str] = typer.Option(None, help="comma-separated categories (BBQ, CBBQ, KoBBQ)"),
    limit: Optional[int] = typer.Option(None, help="items per category (seeded sample)"),
    mode: Optional[str] = typer.Option(None, help="BBQ/CBBQ/KoBBQ scoring mode: auto, loglik or generate"),
    options_protocol: Optional[str] = typer.Option(None, "--options", help="BBQ option protocol: dataset (3 options) or helm (12)"),
    method: Optional[str] = typer.Option(None, help="inference-time method wrapping the model (see `fairdistill list`)"),
    compare: Optional[str] = typer.Option(None, help="also run this method (e.g. baseline) and print a paired comparison"),
    data: Optional[str] = typer.Option(None, help="dataset folder (default: $FAIRDISTILL_DATA or ../shared/data)"),
    out: Optional[Path] = typer.Option(None, help="run directory (default: runs/<benchmark>-<model>-<hash>)"),
    option: list[str] = typer.Option([], "--option", "-o", help="benchmark option key=value (repeatable); "
                                     "`fairdistill options BENCHMARK` lists them"),
    method_option: list[str] = typer.Option([], "--method-option", help="method option key=value (repeatable)"),
    intervention: Optional[str] = typer.Option(None, help="model intervention for the run(s): self-debias, "
                                               "sentence-debias, inlp (in-process hf models; see `fairdistill list`)"),
    intervention_option: list[str] = typer.Option([], "--intervention-option", help="intervention option key=value (repeatable); "
                                                  "`fairdistill options INTERVENTION` lists them"),
    seed: int = typer.Option(0, help="seed for sampling, subsets and bootstrap"),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:1, mps"),
    dtype: str = typer.Option("auto", help="auto, float32, bfloat16, float16"),
    batch_size: int = typer.Option(16, help="model batch size"),
    backend_option: list[str] = typer.Option([], "--backend-option", help="backend option key=value, e.g. concurrency=16 (repeatable)"),
    cache: Optional[Path] = typer.Option(None, help="sqlite response cache: reruns do not re-query the model"),
    progress: bool = typer.Option(True, help="show a progress bar"),
):
    """Evaluate a model (optionally through a debiasing method or a model intervention) on a benchmark; resumable.
    Under `torchrun` / `accelerate launch` the items are sharded over the processes (README "Scaling out")."""
    from .backends.base import load_backend
    from .distributed import dist_env
    from .runner import RunSpec, execute

    main_rank = dist_env().is_main
    console.quiet = not main_rank  # every rank returns the metrics; rank 0 alone prints them

    opts = parse_options(option)
    for k, v in (("categories", categories), ("mode", mode), ("options", options_protocol)):
        if v is not None:
            opts[k] = v
    mopts = parse_options(method_option)
    iopts = parse_options(intervention_option)
    if intervention:  # an unknown name or option fails before a model is loaded
        from .interventions import get_intervention

        get_intervention(intervention, **iopts)
    # the runs: the method alone, or the comparison's reference first and then the method
    names = [method] if method else [None]
    if compare:
        names = [None if compare == "none" else compare, method or "baseline"]
    specs = []
    for m in names:
        own = m == (method or "baseline")
        spec = RunSpec(model=model, benchmark=benchmark, options=opts, method=m, method_options=mopts if own else {},
                       intervention=intervention, intervention_options=iopts, seed=seed, data=data, limit=limit)
        specs.append(spec)
    # a missing or malformed dataset, or a method the benchmark cannot take, fails before a model is loaded
    if out is not None and out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file, not a run folder; choose another --out")
    benches = [s.build_benchmark() for s in specs]
    for b in benches:
        b.load_items()
    backend = load_backend(model, device=device, dtype=dtype, batch_size=batch_size, **parse_options(backend_option))
    if cache is not None:
        from .backends.cache import CachingBackend

        backend = CachingBackend(backend, cache)
    dirs = []
    for spec, bench in zip(specs, benches):
        if out is not None:
            spec.out = out if len(specs) == 1 else out / (spec.method or "plain")
        run_dir = spec.out or spec.default_out(bench)
        spec.out = run_dir
        m = spec.method
        what = "".join(f" + {x}" for x in (intervention, m) if x)
        shown = redact_urls(model)  # credentials in a URL are sent to the server, never printed or stored
        console.print(f"[bold]{benchmark}[/bold] on [bold]{shown}{what}[/bold] -> {run_dir}")
        _, metrics = execute(spec, backend, bench=bench, show_progress=progress,
                             extra_config={"command": redact_urls(" ".join(sys.argv[1:])), "model_spec": shown})
        print_rows(bench.summary_table(metrics), title=f"{benchmark} — {shown}{what}", max_rows=80)
        if bench.summary_legend:
            console.print(f"[dim]{bench.summary_legend}[/dim]", soft_wrap=False)
        print_position(metrics)
        print_notes(metrics)
        print_definitions(metrics)
        console.print(f"results: {run_dir / 'results.jsonl'}  metrics: {run_dir / 'metrics.json'}")
        dirs.append(run_dir)
    if compare and main_rank:
        from .compare import compare as compare_runs

        comp = compare_runs(dirs[0], dirs[1], seed=seed)
        Path(dirs[1], "comparison.json").write_text(json.dumps(comp, indent=2, default=str))
        print_rows(comp.get("rows", []), title=f"{names[1]} vs {names[0] or 'plain model'} (paired)")
        print_definitions(comp)


@app.command("score")
def score_cmd(
    benchmark: str = typer.Argument(..., help="bbq, cbbq, kobbq or holistic-bias"),
    predictions: Optional[Path] = typer.Option(None, help="BBQ, CBBQ, KoBBQ: the dataset's own rows (jsonl; CBBQ "
                                               "also JSON or CSV, KoBBQ its TSV) plus an answer column"),
    column: Optional[str] = typer.Option(None, help="BBQ, CBBQ, KoBBQ: the answer column (option text, letter or index)"),
    perplexities: Optional[Path] = typer.Option(None, help="HolisticBias: table with text, axis, template, descriptor, perplexity"),
    out: Optional[Path] = typer.Option(None, help="write metrics JSON here (a directory gets metrics.json inside)"),
    unparsed: str = typer.Option("incorrect", help="BBQ: answers matching no option count as 'incorrect' (default) "
                                 "or are left out of accuracy, 'exclude' (the BBQ paper's protocol)"),
    metadata: str = typer.Option("official", help="BBQ: group tags from the official data rows (default) or the "
                                 "file's own, 'file' (the paper's targets for its released predictions)"),
    no_target: str = typer.Option("keep", help="BBQ: items without an identifiable target stay in accuracy "
                                  "(default) or leave the cell, 'exclude' (the BBQ paper's protocol)"),
):
    """Score predictions or perplexities made outside fairdistill."""
    from .registry import BENCHMARKS

    cls = BENCHMARKS.get(benchmark)
    if not hasattr(cls, "score_file"):
        raise UserError(f"benchmark {benchmark!r} cannot score external files")
    if "predictions" in inspect.signature(cls.score_file).parameters:
        if predictions is None or column is None:
            raise UserError(f"score {benchmark} needs --predictions FILE and --column COL")
        metrics = cls.score_file(predictions=str(predictions), column=column, unparsed=unparsed,
                                 metadata=metadata, no_target=no_target)
    else:
        if perplexities is None:
            raise UserError(f"score {benchmark} needs --perplexities FILE")
        metrics = cls.score_file(perplexities=str(perplexities))
    print_rows(metrics.get("rows", []), title=f"{benchmark}: {predictions or perplexities}")
    print_notes(metrics)
    print_definitions(metrics)
    if out:
        if out.is_dir():
            out = out / "metrics.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(metrics, indent=2, default=str))
        console.print(f"metrics: {out}")


@app.command("report")
def report_cmd(
    run_dirs: list[Path] = typer.Argument(..., help="run directories or a study folder; runs of one benchmark are shown side by side in this order (deltas vs the first)"),
    out: Path = typer.Option(Path("report.html"), "--out", "-o", help="HTML file to write (a Markdown summary for model cards is written beside it)"),
    label: list[str] = typer.Option([], "--label", help="label per run directory, in order (default: model [+ method])"),
    title: Optional[str] = typer.Option(None, help="report title (default: a study folder's own, else 'fairdistill report')"),
    markdown: bool = typer.Option(True, help="also write <out>.md"),
):
    """Write a self-contained HTML report (inline SVG charts, opens offline) of finished runs."""
    from .report import build_report

    if title is None:
        titles = {json.loads((d / "study.json").read_text()).get("title") for d in run_dirs
                  if (d / "study.json").is_file()}
        title = titles.pop() if len(titles) == 1 and None not in titles else "fairdistill report"
    path = build_report([str(d) for d in run_dirs], out, labels=label or None, title=title, markdown=markdown)
    console.print(f"report: {path}" + (f"  summary: {Path(path).with_suffix('.md')}" if markdown else ""))


@app.command("run")
def run_cmd(
    config: Path = typer.Argument(..., help="study YAML (see examples/study.yaml)"),
    out: Optional[Path] = typer.Option(None, help="study folder (default: the config's `out`, else runs/<name>)"),
    progress: bool = typer.Option(True, help="show progress bars"),
    executor: str = typer.Option("local", help="local (in this process) or ray (each run a Ray task; "
                                 "pip install 'fairdistill[ray]')"),
    ray_address: Optional[str] = typer.Option(None, help="Ray cluster to join, e.g. ray://head:10001 or auto "
                                              "(default: start a local Ray instance)"),
    models: Optional[str] = typer.Option(None, help="run only these models of the study (comma-separated names) "
                                         "and the trainings that start from them"),
    select: Optional[List[str]] = typer.Option(None, help="run only the runs whose label or folder matches one of these "
                                               "shell patterns (repeatable; e.g. 'qwen15 + self-debias', "
                                               "'*-cda'), with the plain runs and trainings they need; runs "
                                               "recorded earlier in the folder's study.json stay in the report"),
):
    """Run a whole study from a YAML file: models x benchmarks x methods x interventions, training, capability
    before/after, report. Resumable."""
    from .study import run_study

    only = [m.strip() for m in models.split(",") if m.strip()] if models else None
    console.print(f"report: {run_study(config, out=out, show_progress=progress, executor=executor, ray_address=ray_address, only=only, select=select)}")


@app.command("distill")
def distill_cmd(
    teacher: str = typer.Option(..., help="teacher model (built-in name, directory, hub id)"),
    student: str = typer.Option("every_other", help="every_other, first_half, layers:0,2,5, lora, or a model with the same tokenizer"),
    rules: Optional[str] = typer.Option("gender", help="rules file (YAML/JSON) or shipped set (gender, he_she); 'none' for the no-rule control"),
    data: Path = typer.Option(..., help="corpus: plain text (one example per line), jsonl with a 'text' field, or a built-in corpus (occupations, occupations-wide)"),
    out: Path = typer.Option(..., help="output folder (rerun with the same folder to resume)"),
    option: list[str] = typer.Option([], "--option", "-o", help="training option key=value, e.g. max_steps=200 learning_rate=2e-5 temperature=2 rule_mode=prob alpha_rule=5"),
):
    """FairDistillation: teacher -> student through rule-equalised distributions (e.g. P(he)=P(she))."""
    from .distill import run_fairdistill

    res = run_fairdistill(teacher, student, None if rules == "none" else rules, str(data), str(out), **parse_options(option))
    console.print_json(json.dumps(res, default=str))


@app.command("cda")
def cda_cmd(
    model: str = typer.Option(..., "--model", "-m", help="model to fine-tune (built-in name, directory, hub id)"),
    data: str = typer.Option(..., help="corpus: plain text (one example per line), jsonl with a 'text' field, or 'winobias'"),
    out: Path = typer.Option(..., help="output folder (rerun with the same folder to resume)"),
    student: str = typer.Option("lora", help="lora (an adapter, saved merged) or full (every weight)"),
    words: str = typer.Option("bias_bench", help="word lists, comma-separated: bias_bench, cda, names, or files of [male, female] pairs"),
    option: list[str] = typer.Option([], "--option", "-o", help="training option key=value, as for distill: max_steps=150 "
                                     "learning_rate=3e-3 batch_size=8 max_length=128 max_examples=..."),
):
    """Counterfactual data augmentation: fine-tune on the corpus plus its gender-swapped twins (two-sided CDA)."""
    from .distill import run_cda

    res = run_cda(model, data, str(out), student=student, word_lists=words, **parse_options(option))
    console.print_json(json.dumps(res, default=str))


@app.command("self-distill")
def self_distill_cmd(
    model: str = typer.Option("smollm2", "--model", "-m", help="chat model to debias"),
    method: str = typer.Option("reprompting", help="the teacher: an inference-time method wrapping the model"),
    prompts: str = typer.Option("bbq", help="a benchmark that takes methods (bbq), its data folder, or one BBQ category file"),
    out: Path = typer.Option(..., help="output folder; rerun the same command to resume"),
    option: list[str] = typer.Option([], "--option", "-o", help="option key=value, e.g. limit=50 (per category and "
                                     "condition) permute=cyclic target=option split=template epochs=3 "
                                     "transfer=occupation-gender"),
):
    """Distil a self-debiased teacher (multi-call method) into a LoRA adapter that answers in one call."""
    from .distill import run_self_distill

    res = run_self_distill(model, method, prompts, str(out), **parse_options(option))
    console.print_json(json.dumps(res, default=str))


@app.command("options")
def options_cmd(name: str = typer.Argument(..., help="benchmark, method or intervention name (see `fairdistill list`)")):
    """List a benchmark's options (`-o key=value`), a method's (`--method-option key=value`) or an
    intervention's (`--intervention-option key=value`)."""
    from .benchmarks.base import describe_options
    from .registry import BENCHMARKS, INTERVENTIONS, METHODS

    if name in METHODS.names() and name not in BENCHMARKS.names():
        cls, how = METHODS.get(name), "--method-option key=value"
    elif name in INTERVENTIONS.names() and name not in BENCHMARKS.names():
        cls, how = INTERVENTIONS.get(name), "--intervention-option key=value"
    else:
        cls, how = BENCHMARKS.get(name), "-o key=value; lists as a,b"
    t = Table(title=f"{name} options ({how})")
    for col in ("option", "type", "default", "description"):
        t.add_column(col, overflow="fold")
    for row in describe_options(cls.Options):
        t.add_row(*row.values())
    console.print(t)


@app.command("doctor")
def doctor_cmd(
    model: str = typer.Argument(..., help="model string, as for eval"),
    reference: Optional[str] = typer.Option(None, help="a second model string to compare answers with"),
    device: str = typer.Option("auto"),
    dtype: str = typer.Option("auto"),
    backend_option: List[str] = typer.Option([], "--backend-option", help="backend option key=value (repeatable)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="also write the verdicts as JSON here"),
):
    """A one-minute check before a long run: capabilities, log-prob canary, chat template, parseable answers,
    letter skew, bf16 vs float32, speed and memory (and agreement with --reference)."""
    from .backends.base import load_backend
    from .doctor import diagnose

    opts = parse_options(backend_option)
    backend = load_backend(model, device=device, dtype=dtype, **opts)
    ref = load_backend(reference, device=device, dtype=dtype, **opts) if reference else None
    rep = diagnose(backend, reference=ref)
    t = Table(title=f"doctor — {redact_urls(model)}")
    for col in ("check", "verdict", "value", "note"):
        t.add_column(col, overflow="fold")
    colour = {"ok": "green", "warn": "yellow", "fail": "red", "n/a": "dim"}
    for c in rep.checks:
        t.add_row(c.name, f"[{colour[c.verdict]}]{c.verdict}[/{colour[c.verdict]}]", c.value, c.note)
    console.print(t)
    for d in rep.disagreements:
        console.print(f"disagrees on {d['id']}: {_letter_or_unparsed(d['model'])} vs reference {_letter_or_unparsed(d['reference'])}")
    if out is not None:
        out.write_text(json.dumps(redact_urls(rep.to_dict()), indent=2))
    if not rep.ok:
        raise typer.Exit(1)


def _letter_or_unparsed(k: Any) -> str:
    return "unparsed" if k is None else "ABC"[k]


@app.command("list")
def list_cmd():
    """List benchmarks, methods, interventions, backends and built-in models."""
    from .backends.builtin import BUILTIN_MODELS
    from .registry import BACKENDS, BENCHMARKS, INTERVENTIONS, METHODS

    for title, reg in (("benchmarks", BENCHMARKS), ("methods", METHODS), ("interventions", INTERVENTIONS),
                       ("backends", BACKENDS)):
        t = Table(title=title)
        t.add_column("name")
        t.add_column("description")
        for name, obj in reg.items():
            doc = getattr(obj, "description", "") or (inspect.getdoc(obj) or "").split("\n")[0]
            t.add_row(name, doc)
        console.print(t)
    t = Table(title="built-in models (offline, from PyPI)")
    t.add_column("name")
    t.add_column("description")
    for name, (desc, _) in BUILTIN_MODELS.items():
        t.add_row(name, desc)
    console.print(t)


def _click_errors() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """Usage-error and abort classes of click and of the copy of click that typer >= 0.22 vendors."""
    import importlib

    usage, abort = [], []
    for name in ("click.exceptions", "typer._click.exceptions", "typer.exceptions"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        usage += [c for c in (getattr(mod, "ClickException", None),) if c]
        abort += [c for c in (getattr(mod, "Abort", None),) if c]
    return tuple(usage), tuple(abort)


def main(argv: list[str] | None = None) -> int:
    try:
        rc = app(args=argv, standalone_mode=False)  # a command's typer.Exit(code) comes back as its code
    except UserError as e:
        err_console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted: finished items are saved; rerun the same command to resume")
        return 130
    except Exception as e:  # click's own usage errors
        usage, abort = _click_errors()
        if isinstance(e, usage):
            e.show()
            return e.exit_code
        if isinstance(e, abort):
            return 130
        raise
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
