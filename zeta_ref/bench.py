"""Placeholder: the CPU benchmark (issue 3) is being written."""


def add_arguments(parser):
    pass


def run(args):
    raise NotImplementedError("zeta-ref bench is not written yet")
