"""The student versions of the course pack's exercises, one file per exercise.

Generated from :mod:`zeta_ref.course.solutions` by :mod:`zeta_ref.course.markers` (do not
edit them here: edit the solution and regenerate). ``zeta-ref grade --start DIR`` copies them
into a folder of the student's own; each names the command that grades it.
"""
