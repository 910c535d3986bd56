from .tools.cli import main

if __name__ == "__main__":  # not when a child process of the grader imports it
    raise SystemExit(main())
