"""Cross-checking another ZETA implementation against zeta_ref, stage by stage.

- :mod:`.schema`   what a dump may hold: the inputs, the config, every stage's results
- :mod:`.dump`     :func:`save_dump` and :func:`load_dump` (.npz archives or .npy folders)
- :mod:`.chain`    one pipeline run in which any field may be taken from the dump
- :mod:`.verdicts` how one field is judged: exactly, within tolerance, or up to ties
- :mod:`.variants` common mistakes, to name the one a wrong field shows
- :mod:`.compare`  :func:`compare` and its report (``zeta-ref compare``)
- :mod:`.golden`   the golden files (``zeta-ref golden``)

docs/compare.md documents the dump format with a worked example.
"""

from .compare import Report, compare
from .dump import Dump, DumpError, load_dump, save_dump

__all__ = ["Dump", "DumpError", "Report", "compare", "load_dump", "save_dump"]
