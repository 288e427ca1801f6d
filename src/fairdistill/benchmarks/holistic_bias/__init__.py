"""HolisticBias (Smith et al., EMNLP 2022): sentence generation and Likelihood Bias.

- :mod:`.sentences`: the authors' sentence set rebuilt from a release's json files;
- :mod:`.stats`: Mann-Whitney pairs, Likelihood Bias per level and its descriptor bootstrap CI;
- :mod:`.benchmark`: the registered ``holistic-bias`` benchmark, stratified sampling and
  ``fairdistill score holistic-bias --perplexities FILE``.

Importing this package registers the benchmark (the registry imports it by this name).
"""
from .benchmark import (
    MIN_PER_DESCRIPTOR,
    REQUIRED_COLUMNS,
    SENTENCE_SETS,
    HolisticBiasBenchmark,
    read_perplexities,
    score_file,
    stratified_sample,
)
from .sentences import (
    COMPARABLE_TYPES,
    DATA_FILES,
    DEFAULT_VERSION,
    NO_DATA,
    NONE,
    NOUN_PHRASE_COLUMNS,
    NULL_AXIS,
    SENTENCE_COLUMNS,
    VERSIONS,
    data_paths,
    dataset_dir,
    generate_sentences,
    iter_sentences,
    noun_phrases,
)
from .stats import DEFINITIONS, P_THRESHOLD, descriptor_table, likelihood_bias

__all__ = [
    "COMPARABLE_TYPES", "DATA_FILES", "DEFAULT_VERSION", "DEFINITIONS", "MIN_PER_DESCRIPTOR", "NONE", "NO_DATA",
    "NOUN_PHRASE_COLUMNS", "NULL_AXIS", "P_THRESHOLD", "REQUIRED_COLUMNS", "SENTENCE_COLUMNS", "SENTENCE_SETS",
    "VERSIONS", "HolisticBiasBenchmark", "data_paths", "dataset_dir", "descriptor_table", "generate_sentences",
    "iter_sentences", "likelihood_bias", "noun_phrases", "read_perplexities", "score_file", "stratified_sample",
]
