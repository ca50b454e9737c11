"""`s3prl-star link-s3prl CHECKOUT [--undo]`: install the plugin into an s3prl git checkout.

s3prl's own scripts find upstreams through `s3prl/hub.py` and pretrain experts through the
`s3prl/pretrain/<name>/` folders (SUPERB_SPEC.md section 1), so the plugin is:
- `s3prl/upstream/star_hubert` -> this repository's `upstream/star_hubert` (symlink);
- `s3prl/pretrain/star_hubert` -> this repository's `distill/star_hubert` (symlink);
- a marked block at the top of `s3prl/hub.py` that applies `s3prl_star.compat` (the other
  upstreams' imports fail on current torchaudio without it, so it must run before them) and
  imports the `star_hubert*` entry names.
Then, from the checkout's `s3prl/` folder, plain `python run_downstream.py -u star_hubert ...` and
`python run_pretrain.py -u star_hubert ...` work. `--undo` removes the links and the block,
leaving hub.py byte-identical to before.
"""
import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from s3prl_star.atomic import write_atomically

NAME = "star_hubert"
HUB_BLOCK = (
    "# >>> s3prl-star link-s3prl (remove with: s3prl-star link-s3prl --undo) >>>\n"
    "from s3prl_star import compat as _s3prl_star_compat\n"
    "_s3prl_star_compat.apply()\n"
    f"from s3prl.upstream.{NAME}.hubconf import *\n"
    "# <<< s3prl-star link-s3prl <<<\n"
)


@dataclass(frozen=True)
class Link:
    path: Path  # inside the checkout
    target: Path  # inside this repository


def repository_root() -> Path:
    """This project's source tree (the plugin folders sit beside the `s3prl_star` package)."""
    return Path(__file__).resolve().parent.parent


def plugin_links(package: Path, repo: Path) -> List[Link]:
    return [
        Link(package / "upstream" / NAME, repo / "upstream" / NAME),
        Link(package / "pretrain" / NAME, repo / "distill" / NAME),
    ]


def find_package(checkout: Path) -> Path:
    """`CHECKOUT/s3prl`, the package folder holding hub.py, upstream/ and pretrain/."""
    package = checkout / "s3prl"
    for required in ("hub.py", "upstream", "pretrain", "run_downstream.py"):
        if not (package / required).exists():
            raise FileNotFoundError(
                f"{checkout}: not an s3prl checkout ({package / required} is missing); "
                "give the folder that contains the s3prl package folder"
            )
    return package


def link(checkout: Path, repo: Optional[Path] = None) -> List[str]:
    """Install the plugin (idempotent); returns what changed."""
    package = find_package(checkout)
    links = plugin_links(package, repo or repository_root())
    for item in links:
        if not item.target.is_dir():
            raise FileNotFoundError(f"plugin folder {item.target} is missing (an editable install of s3prl-star is needed)")
        if os.path.lexists(item.path) and not (item.path.is_symlink() and item.path.resolve() == item.target.resolve()):
            raise FileExistsError(f"{item.path} exists and is not a link to {item.target}; remove it first")
    changed = []
    for item in links:
        if not os.path.lexists(item.path):
            item.path.symlink_to(item.target, target_is_directory=True)
            changed.append(f"linked {item.path} -> {item.target}")
    hub = package / "hub.py"
    text = hub.read_bytes().decode("utf-8")  # bytes: no newline translation
    if HUB_BLOCK not in text:
        write_atomically(hub, lambda temporary: Path(temporary).write_bytes((HUB_BLOCK + text).encode("utf-8")))
        changed.append(f"registered {NAME} in {hub}")
    return changed


def undo(checkout: Path, repo: Optional[Path] = None) -> List[str]:
    """Remove the links and the hub.py block `link` added; returns what changed."""
    package = find_package(checkout)
    changed = []
    for item in plugin_links(package, repo or repository_root()):
        if item.path.is_symlink():
            item.path.unlink()
            changed.append(f"removed link {item.path}")
        elif os.path.lexists(item.path):
            raise FileExistsError(f"{item.path} is not a link made by link-s3prl; left in place")
    hub = package / "hub.py"
    text = hub.read_bytes().decode("utf-8")  # bytes: no newline translation
    if text.startswith(HUB_BLOCK):
        write_atomically(hub, lambda temporary: Path(temporary).write_bytes(text[len(HUB_BLOCK):].encode("utf-8")))
        changed.append(f"unregistered {NAME} from {hub}")
    elif HUB_BLOCK in text:
        raise ValueError(f"{hub}: the link-s3prl block is not at the top of the file any more; remove it by hand")
    return changed


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="s3prl-star link-s3prl", description=__doc__.splitlines()[0])
    parser.add_argument("checkout", type=Path, help="an s3prl git checkout (the folder holding the s3prl package folder)")
    parser.add_argument("--undo", action="store_true", help="remove the links and the hub.py registration")
    args = parser.parse_args(argv)
    try:
        changed = (undo if args.undo else link)(args.checkout)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"s3prl-star link-s3prl: {error}", file=sys.stderr)
        return 1
    for line in changed or ["nothing to do"]:
        print(line)
    return 0
