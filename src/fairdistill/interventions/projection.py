"""Projection debiasing of hidden states: SentenceDebias (Liang et al., ACL 2020) and INLP (Ravfogel et al., ACL 2020).

Both estimate a set of orthonormal directions ``B`` (``d x k``) in the model's hidden space and then,
at one point of every forward pass, replace each token's hidden state ``h`` by ``h - B Bᵀ h`` (its
projection onto the orthogonal complement of ``B``), through a forward hook on the in-process model.
Every request kind and lm-evaluation-harness see the projected model.

Estimation data: counterfactual sentence pairs. Every sentence of a corpus (default ``winobias``: the
1,584 WinoBias dev sentences, which are not among the evaluated benchmarks) that holds a gendered
word is paired with its CDA twin (:class:`fairdistill.distill.cda.Swapper`, same word lists and
rules as CDA training); up to ``max_pairs`` pairs, a seeded sample. A sentence's representation is
the mean of its tokens' hidden states at the hook point (padding and special tokens left out).

- **SentenceDebias** (``sentence-debias``): the bias subspace is the top ``k`` principal components
  of the pairs' representations centred on each pair's mean (the ±half-differences; Liang et al.'s
  defining-set PCA with sets of two). ``k = 1`` as bias-bench uses for gender.
- **INLP** (``inlp``): ``iterations`` times, a linear SVM (scikit-learn ``LinearSVC``, as bias-bench)
  learns to tell male-leaning from female-leaning sentences (more male than female words, or the
  reverse; ties are left out) on the representations projected so far, and its weight direction,
  orthogonalised against the earlier ones, joins ``B``: the final projection is onto the
  intersection of all the classifiers' nullspaces. The classifier's held-out accuracy after each
  round is recorded (it should fall towards the majority share).

Hook point (option ``layer``): ``final`` is the input of the LM head (for a causal LM, the last
hidden state after the final norm, where bias-bench applies both methods); an integer ``i`` is the
output of transformer block ``i`` (negative: from the end). ``auto`` (default): ``final`` for causal
LMs, ``-1`` (the last encoder layer, bias-bench's point for BERT) for masked LMs.

The estimate is cached in ``$FAIRDISTILL_CACHE/interventions/`` under a key of the model (name,
dtype, a fingerprint of its weights), the options and the corpus, so runs of one study estimate once;
a study keeps its own copy (``<study>/<model>/interventions/``, or beside the model's response cache
if the study names one; a few KB: hidden size x removed dimensions), so a run resumed on another
machine uses the same basis. The basis's SHA-256 is part of the response cache's key and is recorded in
each run's config.json: a run is never resumed with another basis than it started with (one-line error).
Cost: no extra forward pass at inference (one matrix product per token at one layer); estimation runs
the model once over 2 x pairs sentences.
"""
from __future__ import annotations

import contextvars
import hashlib
import json
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, PositiveInt, field_validator

from ..errors import UserError
from ..registry import INTERVENTIONS
from .base import Intervention, InterventionOptions


def project_out(h, basis):
    """``h - B Bᵀ h`` for hidden states ``h`` (``[..., d]``) and orthonormal columns ``B`` (``d x k``)."""
    return h - (h @ basis) @ basis.T


class ProjectionOptions(InterventionOptions):
    layer: str = Field("auto", description="hook point: final (LM-head input), a block index (e.g. -1), or auto "
                                           "(final for causal LMs, -1 for masked LMs)")
    corpus: str = Field("winobias", description="sentences the counterfactual pairs come from: winobias or a text/jsonl file")
    word_lists: str = Field("bias_bench", description="CDA word lists for the pairs (bias_bench, cda, names or files)")
    max_pairs: PositiveInt = Field(1000, description="counterfactual pairs used for estimation (seeded sample)")
    seed: int = Field(0, description="seed of the pair sample (and INLP's train/held-out split)")

    @field_validator("layer", mode="before")
    @classmethod
    def _layer(cls, v: Any) -> str:
        v = str(v).strip()
        if v not in ("auto", "final"):
            try:
                int(v)
            except ValueError:
                raise ValueError(f"layer {v!r}: use auto, final or a block index such as -1") from None
        return v


class _Projection(Intervention):
    """Shared by SentenceDebias and INLP: pairs, representations, cache, hook. Subclasses implement ``fit``."""

    needs = ("a forward hook on the model's hidden states (vLLM runs the model inside its own engine; an "
             "OpenAI-compatible server holds no model here)")
    Options: ClassVar[type[ProjectionOptions]] = ProjectionOptions

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.basis: np.ndarray | None = None
        self.info: dict[str, Any] = {}
        self._handle = None

    # -- estimation -----------------------------------------------------------------------------
    def fit(self, a: np.ndarray, b: np.ndarray, labels_a: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        """Orthonormal directions (``d x k``) from the representations of the pairs' first (``a``) and
        second (``b``) sentences; ``labels_a``: +1 male-leaning, -1 female-leaning, 0 neither (``b`` is the reverse)."""
        raise NotImplementedError

    def pairs(self) -> tuple[list[tuple[str, str]], np.ndarray]:
        """Seeded sample of (sentence, counterfactual) pairs and each first sentence's gender lean."""
        import random

        from ..text.corpora import load_texts
        from ..text.counterfactual import Swapper

        swapper = Swapper.from_lists(self.opts.word_lists)
        seen, pairs, lean = set(), [], []
        for t in load_texts(self.opts.corpus):
            t2, n_male, n_female = swapper.swap_counted(t)
            key = frozenset((t, t2))
            if t2 == t or key in seen:
                continue
            seen.add(key)
            pairs.append((t, t2))
            lean.append(int(np.sign(n_male - n_female)))
        if len(pairs) < 2:
            raise UserError(f"{self.name}: the corpus {self.opts.corpus!r} gives {len(pairs)} counterfactual pair(s); "
                            "estimation needs sentences with gendered words")
        keep = sorted(random.Random(f"{self.name}-{self.opts.seed}").sample(range(len(pairs)), min(self.opts.max_pairs, len(pairs))))
        return [pairs[k] for k in keep], np.asarray([lean[k] for k in keep])

    def layer_of(self, backend) -> str:
        if self.opts.layer == "auto":
            return "-1" if backend.model_type == "masked" else "final"
        return self.opts.layer

    def cache_path(self, backend, pairs: list[tuple[str, str]]) -> Path:
        from ..data import cache_dir

        ident = {k: v for k, v in backend.describe().items() if k != "intervention"}
        key = {"intervention": self.name, "options": self.opts.model_dump(), "layer": self.layer_of(backend),
               "model": ident, "weights": weights_fingerprint(backend.model),
               "pairs": hashlib.sha256(json.dumps(pairs).encode()).hexdigest()}
        h = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
        return cache_dir() / "interventions" / f"{self.name}-{h}.npz"

    def estimate(self, backend) -> None:
        pairs, lean = self.pairs()
        path = self.cache_path(backend, pairs)
        kept = estimates_dir.get()
        if kept is not None:  # a study's own copy: a run resumed elsewhere projects with the very same basis
            mine = kept / path.name
            if not mine.exists() and path.exists():
                with np.load(path) as z:
                    _save(mine, z["basis"], json.loads(path.with_suffix(".json").read_text()))
            path = mine
        # parallel runs of a study (Ray workers) would each estimate the same pair; the first estimates,
        # the others wait for its file and load it, so every run projects with one basis
        from ..data import cache_dir, file_lock

        with file_lock(cache_dir() / "locks" / f"{path.stem}.lock"):  # outside the study folder: no stray files there
            if path.exists():
                with np.load(path) as z:
                    self.basis = z["basis"]
                self.info = json.loads(path.with_suffix(".json").read_text())
                self.info["cached"] = True
                self.info["basis_sha256"] = basis_sha256(self.basis)  # of the basis as loaded, not as described
                return
            self._estimate(backend, pairs, lean, path)

    def _estimate(self, backend, pairs, lean, path: Path) -> None:
        t0 = time.perf_counter()
        layer = self.layer_of(backend)
        reps = representations(backend, [t for p in pairs for t in p], layer)
        basis, info = self.fit(reps[0::2], reps[1::2], lean)
        self.basis = basis.astype(np.float32)
        self.info = {"pairs": len(pairs), "layer": layer, "hidden_size": int(basis.shape[0]),
                     "removed_dimensions": int(basis.shape[1]), "estimate_seconds": round(time.perf_counter() - t0, 2),
                     "cache": str(path), "basis_sha256": basis_sha256(self.basis), **info}
        _save(path, self.basis, self.info)
        self.info["cached"] = False

    # -- application ----------------------------------------------------------------------------
    def attach(self, backend) -> None:
        import torch

        self.estimate(backend)
        basis = torch.tensor(self.basis, dtype=torch.float32, device=backend.device)

        def apply(h):
            return project_out(h.float(), basis).to(h.dtype)

        self._handle = hook(backend.model, self.layer_of(backend), apply)

    def fingerprint(self) -> str | None:
        return self.info.get("basis_sha256")

    def detach(self, backend) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def cost(self) -> dict[str, Any]:
        return {"extra_forward_passes": 0, "estimation_sentences": 2 * int(self.info.get("pairs", 0)),
                "estimate_seconds": self.info.get("estimate_seconds")}

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "estimate": self.info}


@INTERVENTIONS.register("sentence-debias")
class SentenceDebias(_Projection):
    """SentenceDebias (Liang et al. 2020): project out the top-k principal components of counterfactual pair differences."""

    class Options(ProjectionOptions):
        k: PositiveInt = Field(1, description="principal components removed (bias-bench: 1 for gender)")

    def fit(self, a, b, labels_a):
        half = (a - b) / 2.0
        _, s, vt = np.linalg.svd(np.concatenate([half, -half]), full_matrices=False)
        k = min(self.opts.k, len(s))
        share = (s ** 2) / max(float((s ** 2).sum()), 1e-30)
        return vt[:k].T, {"explained_variance": [round(float(x), 4) for x in share[:k]]}


@INTERVENTIONS.register("inlp")
class INLP(_Projection):
    """INLP (Ravfogel et al. 2020): repeatedly train a linear gender classifier and project onto its nullspace."""

    class Options(ProjectionOptions):
        iterations: PositiveInt = Field(10, description="classifiers trained (directions removed)")
        held_out: float = Field(0.2, gt=0, lt=1, description="share of pairs held out to measure each classifier")

    def fit(self, a, b, labels_a):
        try:
            from sklearn.svm import LinearSVC
        except ImportError:
            raise UserError("inlp needs scikit-learn: pip install scikit-learn") from None
        rng = np.random.default_rng(self.opts.seed)
        idx = np.flatnonzero(labels_a != 0)
        if len(idx) < 4:
            raise UserError(f"inlp: only {len(idx)} pairs lean to one gender; the classifier needs more")
        idx = rng.permutation(idx)
        n_dev = max(1, int(round(len(idx) * self.opts.held_out)))
        split = {"dev": idx[:n_dev], "train": idx[n_dev:]}
        X = {s: np.concatenate([a[i], b[i]]) for s, i in split.items()}
        y = {s: np.concatenate([labels_a[i], -labels_a[i]]) for s, i in split.items()}
        mean, scale = X["train"].mean(0), X["train"].std(0) + 1e-6
        directions: list[np.ndarray] = []
        basis = np.zeros((a.shape[1], 0))
        accuracy = []
        for _ in range(self.opts.iterations):
            proj = {s: project_out(x, basis) for s, x in X.items()}
            clf = LinearSVC(dual=False, random_state=self.opts.seed, max_iter=5000)
            clf.fit((proj["train"] - mean) / scale, y["train"])
            accuracy.append(round(float(clf.score((proj["dev"] - mean) / scale, y["dev"])), 4))
            w = clf.coef_[0] / scale  # the direction in the model's own (unstandardised) space
            w = w - basis @ (basis.T @ w)
            if np.linalg.norm(w) < 1e-10:
                break
            directions.append(w / np.linalg.norm(w))
            basis = np.column_stack(directions)
        majority = float(max((y["dev"] == 1).mean(), (y["dev"] == -1).mean()))
        return basis, {"heldout_accuracy_per_iteration": accuracy, "heldout_majority_share": round(majority, 4),
                       "train_pairs": int(len(split["train"])), "heldout_pairs": int(len(split["dev"]))}


# -- hidden states ------------------------------------------------------------------------------------
def hook_point(model, layer: str):
    """(module, is_pre_hook) for a layer spec: ``final`` = the LM head's input, else block ``int(layer)``."""
    if layer == "final":
        return model.get_output_embeddings(), True
    from ..modeling import layer_list_name

    blocks = model.get_submodule(layer_list_name(model))
    i = int(layer)
    if not -len(blocks) <= i < len(blocks):
        raise UserError(f"layer {i} does not exist: the model has {len(blocks)} blocks (0..{len(blocks) - 1})")
    return blocks[i], False


def hook(model, layer: str, fn):
    """Register ``fn`` (hidden states -> hidden states) at the layer; returns the removable handle."""
    module, pre = hook_point(model, layer)
    if pre:
        return module.register_forward_pre_hook(lambda _m, args: (fn(args[0]), *args[1:]))

    def post(_m, _args, out):
        if isinstance(out, tuple):
            return (fn(out[0]), *out[1:])
        return fn(out)

    return module.register_forward_hook(post)


def representations(backend, texts: list[str], layer: str) -> np.ndarray:
    """Mean hidden state at ``layer`` over each text's tokens (padding and special tokens left out), float64."""
    import torch

    tok, model = backend.tokenizer, backend.model
    encs = [tok(t, add_special_tokens=True, return_special_tokens_mask=True) for t in texts]
    out: list[Any] = [None] * len(texts)
    captured: list[Any] = []
    handle = hook(model, layer, lambda h: captured.append(h) or h)
    try:
        with torch.inference_mode():
            for batch in backend._batches([len(e["input_ids"]) for e in encs]):
                maxlen = max(len(encs[i]["input_ids"]) for i in batch)
                ids = torch.full((len(batch), maxlen), tok.pad_token_id, dtype=torch.long)
                att = torch.zeros_like(ids)
                use = torch.zeros((len(batch), maxlen), dtype=torch.float64)
                for r, i in enumerate(batch):
                    n = len(encs[i]["input_ids"])
                    ids[r, :n] = torch.tensor(encs[i]["input_ids"])
                    att[r, :n] = 1
                    use[r, :n] = 1.0 - torch.tensor(encs[i]["special_tokens_mask"], dtype=torch.float64)
                    if use[r].sum() == 0:
                        use[r, :n] = 1.0
                captured.clear()
                model(input_ids=ids.to(backend.device), attention_mask=att.to(backend.device))
                h = captured[-1].double().cpu()
                mean = (h * use[:, :, None]).sum(1) / use.sum(1, keepdim=True)
                for r, i in enumerate(batch):
                    out[i] = mean[r].numpy()
    finally:
        handle.remove()
    return np.stack(out)


#: where a study keeps its models' estimates (``<study>/<model>/interventions/``, set around each run); the
#: user cache (``$FAIRDISTILL_CACHE/interventions/``) otherwise
estimates_dir: contextvars.ContextVar[Path | None] = contextvars.ContextVar("estimates_dir", default=None)


def _save(path: Path, basis, info: dict) -> None:
    """An estimate (basis .npz, description .json), the .npz last and atomically: it marks the pair done."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, basis=basis)
    path.with_suffix(".json").write_text(json.dumps(info, indent=2))
    tmp.replace(path)


def basis_sha256(basis) -> str:
    """The estimate's identity: SHA-256 (16 hex digits) of the float32 basis."""
    return hashlib.sha256(np.ascontiguousarray(basis, dtype=np.float32).tobytes()).hexdigest()[:16]


def weights_fingerprint(model) -> str:
    """A cheap fingerprint of the weights (a few tensors' shapes and leading values): another checkpoint
    saved under the same path gets another estimate."""
    h = hashlib.sha256(type(model).__name__.encode())
    params = list(model.named_parameters())
    for name, p in params[:2] + params[-2:]:
        h.update(name.encode() + str(tuple(p.shape)).encode())
        h.update(p.detach().float().flatten()[:4096].cpu().numpy().tobytes())
    return h.hexdigest()[:16]
