"""`s3prl-star link-s3prl CHECKOUT [--undo]`: install the plugin into an s3prl git checkout.

s3prl's own scripts run from the checkout's package folder (`cd CHECKOUT/s3prl && python
run_downstream.py ...`), find upstreams through `s3prl/hub.py` and pretrain experts through the
`pretrain/<name>/` folders (docs/s3prl.md). Linking makes
- `s3prl/upstream/star_hubert` -> the installed `upstream/star_hubert` (symlink);
- `s3prl/pretrain/star_hubert` -> the installed `distill/star_hubert` (symlink);
- a marked block at the top of `s3prl/hub.py` that applies `s3prl_star.integration.patches` (the other upstreams'
  imports fail on current torchaudio without it, so it must run before them) and imports the
  `star_hubert*` entry names;
- the same compat block at the top of `s3prl/pretrain/__init__.py`, the first module
  `run_pretrain.py` imports: with `-e` / `-a` it loads the checkpoint (weights only, which refuses
  the pickled `argparse.Namespace` without compat) before anything else runs;
- `s3prl_star_checkout.pth` in the site-packages of the Python running this command, which puts the
  checkout on that environment's `sys.path` just before its site-packages (PYTHONPATH entries still
  come first): Python puts the script's folder `CHECKOUT/s3prl` on the path, not the checkout, so
  `import s3prl` would otherwise find the installed package, which knows nothing of the links.
Then a fresh process of the same Python must import s3prl from the checkout; if it does not, linking
says which s3prl it imports and what to do, and exits with status 1. `--undo` removes all of it:
the checkout's files are byte-identical to before and the environment imports its own s3prl again.
"""
import argparse
import os
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from s3prl_star import resources
from s3prl_star.atomic import write_atomically

NAME = resources.PLUGIN_NAME
BLOCK_START = "# >>> s3prl-star link-s3prl (remove with: s3prl-star link-s3prl --undo) >>>\n"
BLOCK_END = "# <<< s3prl-star link-s3prl <<<\n"
COMPAT_LINES = "from s3prl_star.integration import patches as _s3prl_star_patches\n_s3prl_star_patches.apply()\n"
HUB_BLOCK = BLOCK_START + COMPAT_LINES + f"from s3prl.upstream.{NAME}.hubconf import *\n" + BLOCK_END
PRETRAIN_BLOCK = BLOCK_START + COMPAT_LINES + BLOCK_END
# file inside the package folder -> the block link-s3prl puts at its top
BLOCKS = {"hub.py": HUB_BLOCK, "pretrain/__init__.py": PRETRAIN_BLOCK}
PATH_FILE_NAME = "s3prl_star_checkout.pth"


class NotImportedError(RuntimeError):
    """The linked checkout is not the `s3prl` that this Python imports."""


class NotWritableError(PermissionError):
    """A folder link-s3prl must change cannot be written (read-only file system, no permission)."""


def require_writable(folders: List[Path]) -> None:
    """NotWritableError naming the first of `folders` this process cannot create files in, before
    anything is changed: a read-only checkout (EROFS) is refused whole, never left half linked."""
    for folder in dict.fromkeys(folders):
        if not os.access(folder, os.W_OK):
            reason = "read-only file system" if _read_only_mount(folder) else "no write permission"
            raise NotWritableError(
                f"{folder}: cannot write ({reason}); link-s3prl adds links and blocks in the checkout and a .pth file "
                "in site-packages: make them writable, or link a writable clone of the checkout"
            )


def _read_only_mount(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _has_block(path: Path, block: str) -> bool:
    return block in path.read_bytes().decode("utf-8")


@dataclass(frozen=True)
class Link:
    path: Path  # inside the checkout
    target: Path  # the installed plug-in folder


def plugin_links(package: Path) -> List[Link]:
    """The checkout's plug-in folders and the installed ones they link to (`s3prl_star.resources`)."""
    return [
        Link(package / "upstream" / NAME, resources.upstream_plugin()),
        Link(package / "pretrain" / NAME, resources.pretrain_plugin()),
    ]


def find_package(checkout: Path) -> Path:
    """`CHECKOUT/s3prl`, the package folder holding hub.py, upstream/ and pretrain/."""
    package = checkout / "s3prl"
    for required in ("__init__.py", "upstream", "run_downstream.py", "run_pretrain.py", *BLOCKS):
        if not (package / required).exists():
            raise FileNotFoundError(
                f"{checkout}: not an s3prl checkout ({package / required} is missing); "
                "give the folder that contains the s3prl package folder"
            )
    return package


def path_file() -> Path:
    """The .pth file in the site-packages of the Python running this command."""
    return Path(sysconfig.get_path("purelib")) / PATH_FILE_NAME


def path_file_text(checkout: Path) -> str:
    """A comment and the import line site.py runs at start-up: `checkout` goes on sys.path just before
    the site-packages holding the file (first if that folder is listed under another name)."""
    site = str(path_file().parent)
    return (
        f"# s3prl-star link-s3prl: s3prl's scripts in {checkout} import its s3prl (undo: s3prl-star link-s3prl --undo)\n"
        f"import sys; sys.path.insert(sys.path.index({site!r}) if {site!r} in sys.path else 0, {str(checkout)!r})\n"
    )


def imported_s3prl(package: Path) -> Optional[Path]:
    """The `s3prl/__init__.py` a fresh process of this Python finds from the package folder (where
    s3prl's scripts run), or None; with this process's environment (PYTHONPATH included)."""
    probe = "import importlib.util; spec = importlib.util.find_spec('s3prl'); print(spec.origin if spec else '')"
    result = subprocess.run([sys.executable, "-c", probe], cwd=package, capture_output=True, text=True, check=True)
    origin = result.stdout.strip()
    return Path(origin).resolve() if origin else None


def add_block(path: Path, block: str) -> bool:
    """Put `block` at the top of `path` unless it is there; whether the file changed."""
    text = path.read_bytes().decode("utf-8")  # bytes: no newline translation
    if block in text:
        return False
    write_atomically(path, lambda temporary: Path(temporary).write_bytes((block + text).encode("utf-8")))
    return True


def remove_block(path: Path, block: str) -> bool:
    """Take `block` off the top of `path`, leaving the rest byte for byte; whether the file changed."""
    text = path.read_bytes().decode("utf-8")
    if text.startswith(block):
        write_atomically(path, lambda temporary: Path(temporary).write_bytes(text[len(block):].encode("utf-8")))
        return True
    if block in text:
        raise ValueError(f"{path}: the link-s3prl block is not at the top of the file any more; remove it by hand")
    return False


def link(checkout: Path) -> List[str]:
    """Install the plugin (idempotent); returns what changed. NotImportedError if this Python then
    imports s3prl from elsewhere (everything stays linked)."""
    checkout = checkout.resolve()
    package = find_package(checkout)
    links = plugin_links(package)
    for item in links:
        if not item.target.is_dir():
            raise FileNotFoundError(f"plugin folder {item.target} is missing: reinstall s3prl-star")
        if os.path.lexists(item.path) and not (item.path.is_symlink() and item.path.resolve() == item.target.resolve()):
            raise FileExistsError(f"{item.path} exists and is not a link to {item.target}; remove it first")
    pth, pth_text = path_file(), path_file_text(checkout)
    if pth.exists() and pth.read_text() != pth_text:
        raise FileExistsError(f"{pth} links another s3prl checkout ({pth.read_text().splitlines()[-1]}); "
                              "undo that link first (s3prl-star link-s3prl --undo OTHER_CHECKOUT)")
    require_writable([item.path.parent for item in links if not os.path.lexists(item.path)]
                     + [(package / relative).parent for relative, block in BLOCKS.items()
                        if not _has_block(package / relative, block)]
                     + ([] if pth.exists() else [pth.parent]))
    changed = []
    for item in links:
        if not os.path.lexists(item.path):
            item.path.symlink_to(item.target, target_is_directory=True)
            changed.append(f"linked {item.path} -> {item.target}")
    for relative, block in BLOCKS.items():
        if add_block(package / relative, block):
            changed.append(f"added the s3prl-star block to {package / relative}")
    if not pth.exists():
        write_atomically(pth, lambda temporary: Path(temporary).write_text(pth_text))
        changed.append(f"wrote {pth}: {sys.executable} imports s3prl from {checkout}")
    found = imported_s3prl(package)
    if found != package / "__init__.py":
        raise NotImportedError(
            f"{sys.executable} imports s3prl from {found or 'nowhere'}, not from {package}, despite {pth}: "
            "s3prl's scripts there would not see star_hubert. Unset PYTHONPATH if it names another s3prl, "
            "remove another editable s3prl install (pip uninstall s3prl), and run link-s3prl with the Python "
            f"that runs the scripts. ({'; '.join(changed) or 'already linked'})"
        )
    return changed


def undo(checkout: Path) -> List[str]:
    """Remove the links, the blocks and the .pth file `link` added; returns what changed."""
    checkout = checkout.resolve()
    package = find_package(checkout)
    pth = path_file()
    ours = pth.exists() and pth.read_text() == path_file_text(checkout)
    require_writable([item.path.parent for item in plugin_links(package) if item.path.is_symlink()]
                     + [(package / relative).parent for relative, block in BLOCKS.items()
                        if _has_block(package / relative, block)]
                     + ([pth.parent] if ours else []))
    changed = []
    for item in plugin_links(package):
        if item.path.is_symlink():
            item.path.unlink()
            changed.append(f"removed link {item.path}")
        elif os.path.lexists(item.path):
            raise FileExistsError(f"{item.path} is not a link made by link-s3prl; left in place")
    for relative, block in BLOCKS.items():
        if remove_block(package / relative, block):
            changed.append(f"removed the s3prl-star block from {package / relative}")
    if ours:
        pth.unlink()
        changed.append(f"removed {pth}")
    return changed


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="s3prl-star link-s3prl", description=__doc__.splitlines()[0])
    parser.add_argument("checkout", type=Path, help="an s3prl git checkout (the folder holding the s3prl package folder)")
    parser.add_argument("--undo", action="store_true", help="remove the links, the blocks and the .pth file")
    args = parser.parse_args(argv)
    try:
        changed = (undo if args.undo else link)(args.checkout)
    except (FileNotFoundError, FileExistsError, ValueError, NotImportedError, PermissionError) as error:
        print(f"s3prl-star link-s3prl: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # a write refused after the checks (the file system changed under us)
        print(f"s3prl-star link-s3prl: cannot write {error.filename}: {error.strerror}", file=sys.stderr)
        return 1
    for line in changed or ["nothing to do"]:
        print(line)
    return 0
