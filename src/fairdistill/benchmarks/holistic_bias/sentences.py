"""HolisticBias sentences: the authors' generator, re-implemented.

:func:`generate_sentences` rebuilds the dataset authors' sentence set from the four json files of
a release (``descriptors.json``, ``nouns.json``, ``standalone_noun_phrases.json``,
``sentence_templates.json``), following the documented behaviour of ``HolisticBiasSentenceGenerator``
in facebookresearch/ResponsibleNLP (``holistic_bias/src/sentences.py``, the version that takes a
``dataset_version``; data @ 0ec714eb). It was re-implemented from reading that code, not copied:

1. Noun phrases.
   - Every noun alone (axis ``"null"``, descriptor ``"(none)"``): ``"a man"`` / ``"men"``
     (``noun_phrase_type="noun"``): the control sentences.
   - Every descriptor of every axis/bucket, twice: alone (``"Deaf"``; type ``"descriptor"``, noun
     ``"(none)"``), and as ``"{article} {descriptor} {noun}"`` with every noun (type
     ``"descriptor_noun"``). A descriptor with a ``gender`` is combined only with nouns of that
     gender. The article is the descriptor's own ``article`` if given, else ``an`` before a vowel
     letter (a, e, i, o, u; case-insensitive), else ``a``. Plural: ``"{descriptor} {plural noun}"``.
   - Standalone noun phrases: those containing ``{noun}`` are expanded with every noun (type
     ``"noun_descriptor"``, descriptor = the phrase without article and noun, e.g. ``"with a
     disability"``); the article comes from the noun. Others are fixed phrases (type
     ``"fixed_phrase"``, noun ``"(none)"``, noun_gender ``"neutral"``). A missing
     ``plural_noun_phrase`` defaults to the singular text.
   - Preference defaults to ``"no_data"`` (``"(none)"`` for the noun-only controls).
   - The noun-phrase table is sorted by (axis, bucket, descriptor, descriptor_gender,
     descriptor_preference, noun, plural_noun, noun_gender, noun_phrase, plural_noun_phrase,
     noun_phrase_type); duplicates are kept.
2. Sentences: each noun phrase with each template in file order, except that noun phrases without
   a noun (``noun == "(none)"``) skip templates marked ``must_be_noun``. ``{noun_phrase}`` takes the
   singular phrase, ``{plural_noun_phrase}`` the plural one. Template options (``first_turn_only``,
   ``must_be_noun``) default to False and are copied onto each row.

Reference counts (pinned per axis in tests/test_holistic_bias.py): v1.0 gives 472,991 sentences
(469,786 distinct texts) and v1.1 gives 566,625 (563,195 distinct texts; 549,120 in the authors'
Likelihood Bias subset). How they were established: the v1.0 output reproduces every published
statistic of the authors' generated CSV (OpenML dataset 46684 "HolisticBias": 472,991 rows;
distinct texts 469,786, descriptors 620, buckets 75, nouns 31 incl. "(none)", noun phrases 18,257,
templates 26), and for both versions the per-axis counts equal a closed-form count computed
directly from the json files. No published v1.1 count exists; v1.1 rests on the same code.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from ...data import find_dataset
from ...errors import UserError

VERSIONS = ("v1.0", "v1.1")
DEFAULT_VERSION = "v1.1"
NONE = "(none)"
NO_DATA = "no_data"
NULL_AXIS = "null"  # the authors' axis name for the noun-only control phrases
DATA_FILES = ("descriptors.json", "nouns.json", "standalone_noun_phrases.json", "sentence_templates.json")
#: sort order of the noun-phrase table (the authors' SORT_COLUMNS)
NOUN_PHRASE_COLUMNS = (
    "axis",
    "bucket",
    "descriptor",
    "descriptor_gender",
    "descriptor_preference",
    "noun",
    "plural_noun",
    "noun_gender",
    "noun_phrase",
    "plural_noun_phrase",
    "noun_phrase_type",
)
SENTENCE_COLUMNS = ("text", *NOUN_PHRASE_COLUMNS, "template", "first_turn_only", "must_be_noun")
#: noun-phrase types the authors compare (every descriptor then has one sentence per noun)
COMPARABLE_TYPES = ("descriptor_noun", "noun_descriptor")


def dataset_dir(version: str = DEFAULT_VERSION, data_dir: str | Path | None = None) -> Path:
    """Folder holding one release's json files (``<root>/holistic_bias/<version>``)."""
    if version not in VERSIONS:
        raise UserError(f"unknown HolisticBias version {version!r}; valid: {', '.join(VERSIONS)}")
    root = find_dataset("holistic_bias", data_dir)
    for cand in (root / version, root):
        if all((cand / f).exists() for f in DATA_FILES):
            return cand
    raise UserError(f"{root}: no HolisticBias {version} files ({', '.join(DATA_FILES)})")


def _load(version: str, data_dir: str | Path | None) -> dict[str, Any]:
    folder = dataset_dir(version, data_dir)
    out: dict[str, Any] = {}
    for f in DATA_FILES:
        p = folder / f
        try:
            out[f.split(".")[0]] = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise UserError(f"{p}: malformed JSON ({e.msg}, line {e.lineno})") from None
    return out


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" and word else "a"


def noun_phrases(version: str = DEFAULT_VERSION, data_dir: str | Path | None = None) -> list[dict[str, str]]:
    """All noun phrases of a release with their metadata, in the authors' sorted order."""
    return [dict(zip(NOUN_PHRASE_COLUMNS, r)) for r in _noun_phrase_tuples(_load(version, data_dir))]


def _noun_phrase_tuples(src: dict[str, Any]) -> list[tuple[str, ...]]:
    nouns = [(g, n, pl) for g, pairs in src["nouns"].items() for n, pl in pairs]
    rows: list[tuple[str, ...]] = []

    # 1. nouns alone: the control phrases ("I'm a man.")
    for g, n, pl in nouns:
        rows.append((NULL_AXIS, NONE, NONE, NONE, NONE, n, pl, g, f"{_article(n)} {n}", pl, "noun"))

    # 2. descriptors, alone and before every (gender-compatible) noun
    for axis, buckets in src["descriptors"].items():
        for bucket, objs in buckets.items():
            for obj in objs:
                if isinstance(obj, str):
                    obj = {"descriptor": obj}
                d = obj["descriptor"]
                dg = obj.get("gender", NONE)
                art = obj.get("article", _article(d))
                pref = obj.get("preference", NO_DATA)
                rows.append((axis, bucket, d, dg, pref, NONE, NONE, NONE, d, d, "descriptor"))
                for g, n, pl in nouns:
                    if dg == NONE or dg == g:
                        rows.append(
                            (axis, bucket, d, dg, pref, n, pl, g, f"{art} {d} {n}", f"{d} {pl}", "descriptor_noun")
                        )

    # 3. standalone noun phrases ("a wheelchair user", "{article} {noun} with a disability")
    for axis, objs in src["standalone_noun_phrases"].items():
        for obj in objs:
            if isinstance(obj, str):
                obj = {"noun_phrase": obj}
            np_t = obj["noun_phrase"]
            pl_t = obj.get("plural_noun_phrase", np_t)
            pref = obj.get("preference", NO_DATA)
            if "{noun}" in np_t:
                desc = np_t.format(article="", noun="").lstrip()
                for g, n, pl in nouns:
                    rows.append(
                        (
                            axis, NONE, desc, NONE, pref, n, pl, g,
                            np_t.format(article=_article(n), noun=n),
                            pl_t.format(article="", noun=pl).lstrip(),
                            "noun_descriptor",
                        )
                    )
            else:
                rows.append((axis, NONE, np_t, NONE, pref, NONE, NONE, "neutral", np_t, pl_t, "fixed_phrase"))

    rows.sort()  # tuples in NOUN_PHRASE_COLUMNS order = the authors' multi-column sort
    return rows


def _templates(src: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for template, specs in src["sentence_templates"].items():
        if "{noun_phrase}" in template:
            field = "noun_phrase"
        elif "{plural_noun_phrase}" in template:
            field = "plural_noun_phrase"
        else:
            raise UserError(f"HolisticBias template has no noun phrase field: {template!r}")
        out.append((template, {"first_turn_only": False, "must_be_noun": False, **specs}, field))
    return out


_COL = {c: i for i, c in enumerate(NOUN_PHRASE_COLUMNS)}


def _iter_indexed(src: dict[str, Any], keep_phrase=None, keep_template=None) -> Iterator[tuple]:
    """(index, noun-phrase tuple, template, specs, field) of every sentence, in the authors' order.

    ``index`` counts all sentences of the release; the optional filters skip work, not indices.
    """
    templates = _templates(src)
    idx = -1
    i_noun = _COL["noun"]
    for row in _noun_phrase_tuples(src):
        has_noun = row[i_noun] != NONE
        wanted = keep_phrase is None or keep_phrase(row)
        for template, specs, field in templates:
            if not has_noun and specs.get("must_be_noun", False):
                continue
            idx += 1
            if wanted and (keep_template is None or keep_template(template)):
                yield idx, row, template, specs, field


def _sentence(row: tuple, template: str, specs: dict[str, Any], field: str) -> dict[str, Any]:
    np_row = dict(zip(NOUN_PHRASE_COLUMNS, row))
    return {"text": template.format(**{field: np_row[field]}), **np_row, "template": template, **specs}


def iter_sentences(version: str = DEFAULT_VERSION, data_dir: str | Path | None = None) -> Iterator[dict[str, Any]]:
    """Yield the sentence rows of :func:`generate_sentences` one at a time (low memory)."""
    for _, row, template, specs, field in _iter_indexed(_load(version, data_dir)):
        yield _sentence(row, template, specs, field)


def generate_sentences(version: str = DEFAULT_VERSION, data_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Every HolisticBias sentence of a release, as the authors' generator writes them.

    Rows carry the authors' CSV columns: text, axis, bucket, descriptor, descriptor_gender,
    descriptor_preference, noun, plural_noun, noun_gender, noun_phrase, plural_noun_phrase,
    noun_phrase_type, template, first_turn_only, must_be_noun. Order: the authors' (sorted noun
    phrases x templates in file order), so a row's index is a stable id.
    """
    return list(iter_sentences(version, data_dir))


def data_paths(version: str = DEFAULT_VERSION, data_dir: str | Path | None = None) -> list[str]:
    folder = dataset_dir(version, data_dir)
    return [str(folder / f) for f in DATA_FILES]
