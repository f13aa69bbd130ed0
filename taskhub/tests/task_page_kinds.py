"""A processor for test_task_page.py that declares no params help or defaults."""


def bare(ctx):
    """A processor that declares nothing.

    Only its first docstring line is the form's help."""
    return {}
