import subprocess
import sys

HEAVY = ("torch", "pandas", "zarr", "cv2", "dask", "openslide")


def test_the_command_line_loads_no_heavy_library_until_a_verb_needs_it():
    """`wsidistill --help` and the error handling of every verb must not pay for torch or pandas."""
    code = ("import sys; from wsidistill import cli; cli.build_parser(); "
            f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == []
