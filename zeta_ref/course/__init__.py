"""The course pack: exercises that rebuild ZETA's stages, and the grader that checks them.

Each exercise asks for one function of the specification (``zeta_ref.stages``), or a Numba
twin of one, with the specification's signature and docstring and an empty body:

- :mod:`zeta_ref.course.exercises`: the student versions (``zeta-ref grade --start DIR``
  copies them out);
- :mod:`zeta_ref.course.solutions`: the teacher's answers, from which
  :mod:`zeta_ref.course.markers` generates the student versions;
- :mod:`zeta_ref.course.catalog`: what each exercise asks and how its inputs are drawn;
- :mod:`zeta_ref.course.grader`: ``zeta-ref grade EXERCISE FILE.py``: the file held against the
  specification on awkward and hypothesis-drawn inputs, by properties, and inside whole passes
  through the backend registry, with feedback that names the common mistake it matches.

docs/course.md is the guide for students and teachers.
"""

from .catalog import EXERCISES, get_exercise  # noqa: F401
from .grader import Grade, grade_file, grade_folder  # noqa: F401
