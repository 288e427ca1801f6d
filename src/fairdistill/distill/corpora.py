"""The built-in corpora moved to :mod:`fairdistill.text.corpora`; these names stay importable here."""
from ..text.corpora import CORPORA, HELD_F, HELD_M, HELD_OUT, TEMPLATES, occupation_corpus, winobias_occupations  # noqa: F401
