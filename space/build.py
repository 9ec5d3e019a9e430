"""Write the files of the ZeroGPU Space from this repository, in one command:

    python space/build.py [--out dist/space]

then push the folder to a Gradio Space set to ZeroGPU hardware. Why a separate build: the repository's own README
front matter and requirements.txt serve a CPU machine (README's two commands; torch 2.13.0 is the CPU wheel they
install), while ZeroGPU runs only Python 3.10.13 or 3.12.12 and torch 2.8.0 to 2.11.0 and needs the `spaces`
package (Hugging Face hub docs, spaces-zerogpu.md). Neither side is weakened: the build copies the app, rewrites
python_version in the front matter, pins a supported torch and adds `spaces`; every other pin stays as in
requirements.txt. tests/test_space.py checks the result against ZeroGPU's supported list.

On the Space, app.py imports `spaces` before anything touches CUDA, "default" loads the real weights from the Hub
(SPACE_ID is set there), and grin_ui/gpu.py wraps the model work in spaces.GPU with durations computed per call.
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPACE_PYTHON = "3.12.12"  # one of ZeroGPU's two Pythons (3.10.13, 3.12.12)
SPACE_TORCH = "2.11.0"  # the newest torch ZeroGPU lists (2.8.0, 2.9.1, 2.10.0, 2.11.0)
SPACES_PACKAGE = "spaces==0.51.3"
SUGGESTED_HARDWARE = "zero-a10g"  # the Space settings' name for ZeroGPU
COPIED = ("app.py", "grin_engine", "grin_ui", "assets", "docs")


def space_readme(readme: str) -> str:
    """README.md with the Space's front matter: python_version set to SPACE_PYTHON, ZeroGPU suggested."""
    match = re.match(r"^---\n(.*?)\n---\n", readme, flags=re.S)
    if match is None:
        raise ValueError("README.md has no front matter (--- ... ---)")
    lines = [line for line in match.group(1).splitlines()
             if not line.startswith(("python_version:", "suggested_hardware:"))]
    lines += [f'python_version: "{SPACE_PYTHON}"', f"suggested_hardware: {SUGGESTED_HARDWARE}"]
    return "---\n" + "\n".join(lines) + "\n---\n" + readme[match.end():]


def space_requirements(requirements: str) -> str:
    """requirements.txt with torch pinned to SPACE_TORCH and `spaces` added; every other line as it was."""
    out, pinned = [], False
    for line in requirements.splitlines():
        if re.match(r"^\s*torch\s*(==|>=|~=|$)", line):
            line, pinned = f"torch=={SPACE_TORCH}  # ZeroGPU's supported versions (space/build.py)", True
        elif re.match(r"^\s*spaces\b", line):
            continue
        out.append(line)
    if not pinned:
        out.append(f"torch=={SPACE_TORCH}")
    out.append(f"{SPACES_PACKAGE}  # ZeroGPU: spaces.GPU")
    return "\n".join(out) + "\n"


def build(out: Path) -> Path:
    """Write the Space's files into `out` (emptied first); return it."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, out / name, ignore=ignore)
        else:
            shutil.copy2(source, out / name)
    (out / "README.md").write_text(space_readme((ROOT / "README.md").read_text()))
    (out / "requirements.txt").write_text(space_requirements((ROOT / "requirements.txt").read_text()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "dist" / "space"), help="folder to write (emptied first)")
    out = build(Path(parser.parse_args().out))
    print(f"ZeroGPU Space written to {out} (Python {SPACE_PYTHON}, torch {SPACE_TORCH}, {SPACES_PACKAGE})")


if __name__ == "__main__":
    main()
