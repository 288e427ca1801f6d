"""Equality rules over token groups, and the rewrite of a teacher's output distribution.

FairDistillation (Delobelle & Berendt, 2022) rewrites the teacher's next-token (causal LM) or
masked-token (masked LM) distribution before the student sees it: for each rule such as
``he = she`` the teacher's values for the two tokens are replaced by their mean.

Rules file (YAML or JSON)::

    name: gender
    variants: [space]     # surface forms looked up per word: "space" (" he", the mid-sentence
                          # BPE/SentencePiece token) and/or "bare" ("he", sentence-initial BPE token)
    capitalize: true      # also add a capitalised copy of every rule (He = She)
    multi_token: first    # a word of several tokens: "first" = use its first token, "skip" = leave out
    rules:
      - [he, she]                      # a pair
      - [his, her]
      - [him, her]                     # overlaps his/her on "her": merged, see below
      - [boy, girl, child]             # a group of more than two
      - {name: parent, words: [father, mother]}
      - [[his, him], her]              # explicit sides: P(his)+P(him) = P(her)

A rule is a list of *sides*; a side is one word or a list of words. The rewrite makes every side of
a group equal: side value = log-sum-exp of its tokens' values (for one-token sides, the token's
value), and each side's tokens are shifted by the same amount so that:

- ``mode="logit"`` (the original): every side's logit becomes the mean of the group's side logits.
  For one-token sides this is exactly "replace the logits of a and b by their mean"; the total
  probability of the group may change (the mean of logits is not the mean of probabilities).
- ``mode="prob"``: every side gets ``1/k`` of the group's total probability mass, so the group's
  mass (and every other token's probability) is unchanged. Returns normalised log-probabilities.

Overlapping rules. ``his/her`` and ``him/her`` share the token ``her``. Sides are aligned by
position (in the shipped gender file position 0 is the male term, position 1 the female term);
rules that share a token are merged into one group whose i-th side is the union of their i-th
sides: ``{his, him} = {her}``. Equalising ``his``, ``him`` and ``her`` pairwise instead would make
P(his) = P(him) even where only one is grammatical. Merging requires the same number of sides, and
a token on different sides of two rules (``[he, she]`` and ``[she, he]``) is an error.

Tokenizer check and multi-token words. Each word is looked up in each variant; a word that is one
token is used as is. A word that is several tokens is *reported* in ``RuleSet.warnings`` and
represented by its first token (the distribution over the next single token is all the teacher
gives at one position). Limits: the first token may be shared by unrelated words (" wo" in
" woman" and " won't"), so the rule also moves those words' probability; the continuation tokens
are not equalised. A word whose first token is unknown ([UNK]), or whose first token lands on two
sides of one group, is reported and left out of that group; a group left with fewer than two
non-empty sides is reported and dropped. ``strict=True`` turns any warning into an error.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import UserError

DEFAULT_RULES_DIR = Path(__file__).with_name("rules")
VARIANTS = ("space", "bare")


@dataclass
class TokenGroup:
    """One equality group after tokenisation: ``sides[i]`` is a list of token ids."""

    name: str
    sides: list[list[int]]
    words: list[list[str]]  # the surface forms behind each side (for reports)


@dataclass
class RuleSet:
    """Compiled rules for one tokenizer. ``warnings`` lists everything not used as written."""

    name: str
    groups: list[TokenGroup]
    warnings: list[str] = field(default_factory=list)
    source: str = ""
    _cache: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.groups)

    @property
    def token_ids(self) -> list[int]:
        return [t for g in self.groups for s in g.sides for t in s]

    def describe(self, tokenizer=None) -> list[dict[str, Any]]:
        """One row per group: name, sides as token strings (if a tokenizer is given) and ids."""
        rows = []
        for g in self.groups:
            row: dict[str, Any] = {"name": g.name, "ids": g.sides, "words": g.words}
            if tokenizer is not None:
                row["tokens"] = [tokenizer.convert_ids_to_tokens(s) for s in g.sides]
            rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "groups": self.describe(), "warnings": self.warnings}

    # -- tensors for the vectorised rewrite -------------------------------------------------------
    def tensors(self, device):
        import torch

        key = str(device)
        if key in self._cache:
            return self._cache[key]
        ids, side_of, group_of_side, members, group_sides, n_sides = [], [], [], [], [], []
        s = 0
        for g_idx, g in enumerate(self.groups):
            gs = []
            for side in g.sides:
                members.append(list(range(len(ids), len(ids) + len(side))))
                ids.extend(side)
                side_of.extend([s] * len(side))
                group_of_side.append(g_idx)
                gs.append(s)
                s += 1
            group_sides.append(gs)
            n_sides.append(len(g.sides))
        n = len(ids)
        lm = max((len(m) for m in members), default=1)
        km = max((len(x) for x in group_sides), default=1)
        t = {
            "ids": torch.tensor(ids, dtype=torch.long, device=device),
            "side_of": torch.tensor(side_of, dtype=torch.long, device=device),
            "group_of_side": torch.tensor(group_of_side, dtype=torch.long, device=device),
            "members": torch.tensor([m + [n] * (lm - len(m)) for m in members], dtype=torch.long, device=device),
            "group_sides": torch.tensor([x + [s] * (km - len(x)) for x in group_sides], dtype=torch.long,
                                        device=device),
            "n_sides": torch.tensor(n_sides, dtype=torch.float32, device=device),
        }
        self._cache[key] = t
        return t


# -- loading -------------------------------------------------------------------------------------
def _fail(path: str, msg: str) -> UserError:
    return UserError(f"bad rules file {path}: {msg}")


def resolve_rules_path(path: str | Path) -> Path:
    """A path, or the name of a shipped rules file (``gender``)."""
    p = Path(path).expanduser()
    if p.exists():
        return p
    for ext in (".yaml", ".yml", ".json"):
        cand = DEFAULT_RULES_DIR / f"{path}{ext}"
        if cand.exists():
            return cand
    shipped = ", ".join(sorted(x.stem for x in DEFAULT_RULES_DIR.glob("*.y*ml")))
    raise UserError(f"rules file not found: {path} (shipped rule sets: {shipped})")


def read_rules_file(path: str | Path) -> dict[str, Any]:
    """Parse and validate a rules file; any problem is a one-line :class:`UserError`."""
    p = resolve_rules_path(path)
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # yaml.YAMLError / json.JSONDecodeError
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _fail(str(p), f"cannot parse ({first})") from None
    if isinstance(data, list):
        data = {"rules": data}
    if not isinstance(data, dict) or "rules" not in data:
        raise _fail(str(p), "expected a mapping with a 'rules' list (or a top-level list of rules)")
    unknown = set(data) - {"name", "description", "variants", "capitalize", "multi_token", "rules"}
    if unknown:
        raise _fail(str(p), f"unknown key(s) {', '.join(sorted(unknown))}")
    variants = data.get("variants", ["space"])
    if isinstance(variants, str):
        variants = [variants]
    if not isinstance(variants, list) or not variants or any(v not in VARIANTS for v in variants):
        raise _fail(str(p), f"'variants' must be a non-empty list of {', '.join(VARIANTS)}")
    if not isinstance(data.get("capitalize", False), bool):
        raise _fail(str(p), "'capitalize' must be true or false")
    if data.get("multi_token", "first") not in ("first", "skip"):
        raise _fail(str(p), "'multi_token' must be first or skip")
    rules = data["rules"]
    if not isinstance(rules, list) or not rules:
        raise _fail(str(p), "'rules' must be a non-empty list")
    parsed = []
    for k, r in enumerate(rules, 1):
        name = None
        if isinstance(r, dict):
            if set(r) - {"name", "words"} or "words" not in r:
                raise _fail(str(p), f"rule {k}: a mapping rule needs 'words' (and optionally 'name')")
            name, r = r.get("name"), r["words"]
        if not isinstance(r, list) or len(r) < 2:
            raise _fail(str(p), f"rule {k}: needs at least two sides, got {r!r}")
        sides = []
        for side in r:
            words = [side] if isinstance(side, str) else side
            if not isinstance(words, list) or not words or not all(isinstance(w, str) and w.strip() for w in words):
                raise _fail(str(p), f"rule {k}: each side must be a word or a list of words, got {side!r}")
            sides.append([w.strip() for w in words])
        parsed.append({"name": str(name) if name else "/".join("+".join(s) for s in sides), "sides": sides})
    return {"name": str(data.get("name") or p.stem), "variants": variants,
            "capitalize": bool(data.get("capitalize", False)), "multi_token": data.get("multi_token", "first"),
            "rules": parsed, "source": str(p)}


def _surface_forms(word: str, variant: str) -> str:
    return word if variant == "bare" else " " + word


def word_token_ids(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` as it appears after other text (``" he"`` -> [Ġhe] / [▁he] / [he])."""
    if text.startswith(" "):
        # Encode after a prefix so SentencePiece tokenizers do not add their own leading marker.
        pre = tokenizer("a", add_special_tokens=False)["input_ids"]
        full = tokenizer("a" + text, add_special_tokens=False)["input_ids"]
        if full[: len(pre)] == pre and len(full) > len(pre):
            return full[len(pre):]
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def compile_rules(spec: dict[str, Any], tokenizer, strict: bool = False) -> RuleSet:
    """Map a parsed rules spec onto ``tokenizer``'s vocabulary (see module docstring)."""
    warnings: list[str] = []
    unk = getattr(tokenizer, "unk_token_id", None)
    rules = list(spec["rules"])
    if spec.get("capitalize"):
        rules += [{"name": r["name"].title(), "sides": [[w[:1].upper() + w[1:] for w in s] for s in r["sides"]]}
                  for r in rules if any(w[:1].islower() for s in r["sides"] for w in s)]
    compiled: list[dict] = []  # {"names", "sides": list[set], "words": list[list]}
    partial: set[int] = set()  # first tokens standing in for a longer word (multi_token: first)
    for r in rules:
        sides: list[set[int]] = []
        words: list[list[str]] = []
        for side in r["sides"]:
            ids: set[int] = set()
            forms: list[str] = []
            for w in side:
                for v in spec["variants"]:
                    form = _surface_forms(w, v)
                    toks = word_token_ids(tokenizer, form)
                    if not toks:
                        warnings.append(f"rule {r['name']}: {form!r} encodes to no token; skipped")
                        continue
                    if unk is not None and toks[0] == unk:
                        warnings.append(f"rule {r['name']}: {form!r} is unknown to the tokenizer ([UNK]); skipped")
                        continue
                    if len(toks) > 1:
                        pieces = tokenizer.convert_ids_to_tokens(toks)
                        if spec.get("multi_token", "first") == "skip":
                            warnings.append(f"rule {r['name']}: {form!r} is {len(toks)} tokens {pieces}; skipped "
                                            f"(multi_token: skip)")
                            continue
                        warnings.append(f"rule {r['name']}: {form!r} is {len(toks)} tokens {pieces}; "
                                        f"using its first token {pieces[0]!r} only")
                        partial.add(toks[0])
                    ids.add(toks[0])
                    forms.append(form)
            sides.append(ids)
            words.append(forms)
        # a first token on two sides of one rule cannot be equalised with itself
        for i in range(len(sides)):
            for j in range(i + 1, len(sides)):
                both = sides[i] & sides[j]
                if both:
                    warnings.append(f"rule {r['name']}: sides {i} and {j} share token(s) "
                                    f"{tokenizer.convert_ids_to_tokens(sorted(both))}; left out")
                    sides[i] -= both
                    sides[j] -= both
        if sum(1 for s in sides if s) < 2:
            warnings.append(f"rule {r['name']}: fewer than two sides left after tokenisation; rule dropped")
            continue
        _merge_into(compiled, {"names": [r["name"]], "sides": sides, "words": words}, tokenizer, partial, warnings)
    groups = []
    for c in compiled:
        keep = [(sorted(s), w) for s, w in zip(c["sides"], c["words"]) if s]
        if len(keep) < len(c["sides"]):
            warnings.append(f"rule {'+'.join(c['names'])}: a side has no usable token; equalising the other "
                            f"{len(keep)} sides")
        groups.append(TokenGroup(name="+".join(c["names"]), sides=[k[0] for k in keep], words=[k[1] for k in keep]))
    if not groups:
        raise UserError(f"rules {spec['name']}: no rule has two usable sides for this tokenizer "
                        f"({len(warnings)} problems, first: {warnings[0] if warnings else '-'})")
    rs = RuleSet(name=spec["name"], groups=groups, warnings=warnings, source=spec.get("source", ""))
    if strict and warnings:
        raise UserError(f"rules {spec['name']}: {len(warnings)} problem(s) with this tokenizer; first: {warnings[0]}")
    return rs


def _merge_into(compiled: list[dict], new: dict, tokenizer, partial: set[int] = frozenset(),
                warnings: list[str] | None = None) -> None:
    """Merge ``new`` with every compiled group that shares a token (sides aligned by position).

    Two rules that put one whole word on different sides contradict each other (an error). When the
    shared token only stands in for a longer word (``' mrs'`` -> ``' m'``), the clash is the
    tokenizer's: that token is left out of both rules with a warning, as within one rule."""
    for c in compiled:
        clash = {tid for i, s in enumerate(c["sides"]) for j, t in enumerate(new["sides"]) if i != j for tid in s & t}
        if clash and clash <= set(partial):
            if warnings is not None:
                warnings.append(f"rules {'+'.join(c['names'])} and {'+'.join(new['names'])} put the first token(s) "
                                f"{tokenizer.convert_ids_to_tokens(sorted(clash))} of longer words on different "
                                "sides; left out of both")
            for s in (*c["sides"], *new["sides"]):
                s -= clash
    new_ids = set().union(*new["sides"])
    hits = [c for c in compiled if new_ids & set().union(*c["sides"])]
    for c in hits:
        if len(c["sides"]) != len(new["sides"]):
            raise UserError(f"rules {'+'.join(c['names'])} and {'+'.join(new['names'])} share a token but have "
                            f"{len(c['sides'])} vs {len(new['sides'])} sides; overlapping rules must align by position")
        for i, s in enumerate(c["sides"]):
            for j, t in enumerate(new["sides"]):
                if i != j and s & t:
                    tok = tokenizer.convert_ids_to_tokens(sorted(s & t))
                    raise UserError(f"rules {'+'.join(c['names'])} and {'+'.join(new['names'])} put {tok} on "
                                    f"different sides (positions {i} and {j})")
        new = {"names": c["names"] + new["names"],
               "sides": [a | b for a, b in zip(c["sides"], new["sides"])],
               "words": [a + [w for w in b if w not in a] for a, b in zip(c["words"], new["words"])]}
        compiled.remove(c)
    compiled.append(new)


def load_rules(path: str | Path, tokenizer, strict: bool = False) -> RuleSet:
    """Read a rules file (path or shipped name such as ``"gender"``) and compile it for ``tokenizer``.

    Problems with the file are a one-line :class:`UserError`; words that are not single tokens
    (or unknown) are listed in ``RuleSet.warnings`` (an error with ``strict=True``).
    """
    return compile_rules(read_rules_file(path), tokenizer, strict=strict)


def rules_from_groups(groups: Sequence[Sequence[str | Sequence[str]]], tokenizer, *, name: str = "inline",
                      variants: Sequence[str] = ("space",), capitalize: bool = False, multi_token: str = "first",
                      strict: bool = False) -> RuleSet:
    """Build a RuleSet from Python lists, e.g. ``[["he", "she"], ["his", "her"]]``."""
    rules = [{"name": "/".join(x if isinstance(x, str) else "+".join(x) for x in g),
              "sides": [[x] if isinstance(x, str) else list(x) for x in g]} for g in groups]
    return compile_rules({"name": name, "variants": list(variants), "capitalize": capitalize,
                          "multi_token": multi_token, "rules": rules},
                         tokenizer, strict=strict)


# -- the rewrite ---------------------------------------------------------------------------------
def apply_rules(logits, rules: RuleSet | None, mode: str = "logit"):
    """Rewrite ``logits`` (``[..., vocab]``) so every group's sides are equal; vectorised, no loops.

    ``mode="logit"``: each side's logit (log-sum-exp over its tokens) becomes the group mean; the
    result is logits. ``mode="prob"``: each side gets an equal share of the group's probability
    mass; the result is normalised log-probabilities (valid logits too). ``rules=None`` or an empty
    rule set returns ``logits`` unchanged (the no-rule control).
    """
    import torch

    if mode not in ("logit", "prob"):
        raise UserError(f"unknown rule mode {mode!r}; use logit or prob")
    if rules is None or len(rules) == 0:
        return logits
    t = rules.tensors(logits.device)
    if int(t["ids"].max()) >= logits.shape[-1]:
        raise UserError(f"rules {rules.name} name token id {int(t['ids'].max())} beyond the model's "
                        f"{logits.shape[-1]} logits (compiled for another tokenizer?)")
    base = logits.float() if mode == "logit" else torch.log_softmax(logits.float(), dim=-1)
    x = base.index_select(-1, t["ids"])  # [..., N]
    side_val = _pooled(x, t["members"])  # [..., S]
    if mode == "logit":
        target = (_group_sum(side_val, t) / t["n_sides"]).index_select(-1, t["group_of_side"])
    else:
        group_mass = _pooled(side_val, t["group_sides"])  # [..., G]
        target = (group_mass - torch.log(t["n_sides"])).index_select(-1, t["group_of_side"])
    delta = (target - side_val).index_select(-1, t["side_of"])
    out = base.clone()
    out.index_copy_(-1, t["ids"], x + delta)
    return out.to(logits.dtype)


def _pooled(values, index):
    """log-sum-exp of ``values`` over each row of ``index`` (padded with ``values.shape[-1]``, read as -inf)."""
    import torch

    neg = torch.full(values.shape[:-1] + (1,), float("-inf"), dtype=values.dtype, device=values.device)
    return torch.logsumexp(torch.cat([values, neg], -1)[..., index], dim=-1)


def _group_sum(side_values, t):
    """Sum of each group's side values: ``[..., S] -> [..., G]``."""
    import torch

    out = torch.zeros(side_values.shape[:-1] + (t["n_sides"].shape[0],), dtype=side_values.dtype,
                      device=side_values.device)
    return out.index_add(-1, t["group_of_side"], side_values)


def rule_balance_loss(student_logits, teacher_logits, rules: RuleSet):
    """Mass-weighted KL between the rewritten teacher's and the student's choice *within* each group.

    Once a group is rewritten, the teacher's distribution over its sides, given that the next token
    is one of them, is uniform (both rule modes). This term is KL(uniform || student's conditional
    side distribution) at every position, weighted by the (unrewritten) teacher's probability of the
    group there, and averaged with those weights: positions where "he"/"she" are plausible count,
    the rest do not. The denominator is at least 1, so a batch where the group is plausible nowhere
    contributes ~0 rather than its noise scaled up. It is the within-group part of the chain-rule
    decomposition of the full KL, taken at T = 1 and normalised by the group's mass, so a rule is
    not drowned out by the rest of the vocabulary (see ``FairDistillConfig.alpha_rule``). Returns a
    scalar tensor.
    """
    import torch

    t = rules.tensors(student_logits.device)

    def side_log_probs(logits):  # log P(side): log-sum-exp of its tokens' log-probabilities, [P, S]
        return _pooled(torch.log_softmax(logits.float(), dim=-1).index_select(-1, t["ids"]), t["members"])

    with torch.no_grad():
        weight = _pooled(side_log_probs(teacher_logits), t["group_sides"]).exp()  # teacher's group mass [P, G]
    s_side = side_log_probs(student_logits)
    s_cond = s_side - _pooled(s_side, t["group_sides"]).index_select(-1, t["group_of_side"])  # log q(side | group)
    kl = -torch.log(t["n_sides"]) - _group_sum(s_cond, t) / t["n_sides"]  # KL(uniform over k sides || q)
    return (weight * kl).sum() / weight.sum().clamp_min(1.0)


def log_ratio(logprobs_or_logits, a: int, b: int):
    """log P(a) - log P(b) from logits or log-probs (the difference is the same)."""
    return logprobs_or_logits[..., a] - logprobs_or_logits[..., b]


__all__ = ["RuleSet", "TokenGroup", "load_rules", "rules_from_groups", "apply_rules", "rule_balance_loss",
           "read_rules_file", "compile_rules", "resolve_rules_path", "word_token_ids", "DEFAULT_RULES_DIR"]
