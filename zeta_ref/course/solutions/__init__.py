"""The teacher's reference solutions of the course pack, one file per exercise.

Each file is a complete answer, written for teaching; the lines a student writes sit between
``# BEGIN SOLUTION`` and ``# END SOLUTION`` (see :mod:`zeta_ref.course.markers`, which makes
the student versions in :mod:`zeta_ref.course.exercises` from these). ``zeta-ref grade
--start DIR --solutions`` copies them out; ``zeta-ref grade NAME FILE`` grades any of them.
"""
