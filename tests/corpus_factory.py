"""Write small hand-made corpora in the counterargs-18 layout, so tests know every answer by construction."""

from __future__ import annotations

from pathlib import Path

from argbench.data.corpus import SPLITS


def write_argument(root: Path, split: str, theme: str, debate: str, stance: str, number: int, kind: str,
                   text: str) -> Path:
    letter = "a" if kind == "point" else "b"
    path = root / split / theme / debate / stance / f"{stance}{number:02d}{letter}-{kind}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_pairs(root: Path, split: str, layout: dict[tuple[str, str], dict[str, int]]) -> None:
    """``layout[(theme, debate)][stance] = n`` true pairs, texts unique and naming their place."""
    for (theme, debate), stances in layout.items():
        for stance, n in stances.items():
            for number in range(1, n + 1):
                tag = f"{split} {theme} {debate} {stance} {number}"
                write_argument(root, split, theme, debate, stance, number, "point", f"Title {tag}\n\npoint {tag}")
                write_argument(root, split, theme, debate, stance, number, "counter", f"counter {tag}")


# Two themes; debate d1 has 2 pro + 1 con pairs, d2 1 pro + 1 con, d3 (other theme) 1 pro pair.
SMALL_LAYOUT = {("t1", "d1"): {"pro": 2, "con": 1}, ("t1", "d2"): {"pro": 1, "con": 1}, ("t2", "d3"): {"pro": 1}}


def write_small_corpus(root: Path) -> Path:
    for split in SPLITS:
        write_pairs(root, split, SMALL_LAYOUT)
    return root
