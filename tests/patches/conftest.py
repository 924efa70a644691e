import subprocess
import sys
import tarfile
from pathlib import Path

import openslide
import pytest

OPENSLIDE_FIXTURES = ("small.svs", "unreadable.svs")


@pytest.fixture(scope="session")
def openslide_fixtures(request, tmp_path_factory) -> dict[str, Path]:
    """OpenSlide's own test slides, from the openslide-python sdist fetched once into pytest's cache.

    ``small.svs`` is a valid 16x16 Aperio slide (JPEG tiles with shared tables, RGB colourspace);
    ``unreadable.svs`` opens but its tile data is corrupt.  They are never committed; without
    pytest's cache (``-p no:cacheprovider``) they are fetched into this session's temporary folder.
    """
    version = openslide.__version__
    pytest_cache = getattr(request.config, "cache", None)
    name = f"openslide-python-{version}"
    cache = Path(pytest_cache.mkdir(name)) if pytest_cache else tmp_path_factory.mktemp(name)
    paths = {name: cache / name for name in OPENSLIDE_FIXTURES}
    if all(p.exists() for p in paths.values()):
        return paths
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", f"openslide-python=={version}",
         "-d", str(cache)],
        capture_output=True, text=True,
    )
    sdists = sorted(cache.glob("openslide_python-*.tar.gz"))
    if result.returncode or not sdists:
        pytest.fail(f"could not download the openslide-python {version} sdist for its test slides:\n{result.stderr}")
    with tarfile.open(sdists[-1]) as sdist:
        for member in sdist.getmembers():
            name = Path(member.name).name
            if name in paths and Path(member.name).parent.name == "fixtures":
                paths[name].write_bytes(sdist.extractfile(member).read())
    return paths
