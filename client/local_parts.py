"""The parts of the model a site keeps at home (D, or G and D), between rounds.

A site trains them every round like the federated ones but never sends them.
Flower may serve a site from a fresh process each round, so they live on the
site's disk, one file per completed round (written then renamed), named by the
run's token: a new run starts from the initial weights, a resumed run finds the
round it resumes after. The two newest rounds are kept.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

_NAME = re.compile(r"local-(?P<token>[0-9a-f]+)-r(?P<round>\d+)\.npz")
KEEP = 2


class LocalParts:
    def __init__(self, directory: Path, token: str):
        if not re.fullmatch(r"[0-9a-f]+", token):
            raise ValueError(f"run token {token!r} must be hexadecimal")
        self.directory, self.token = Path(directory), token

    def path(self, rnd: int) -> Path:
        return self.directory / f"local-{self.token}-r{rnd:04d}.npz"

    def load(self, rnd: int) -> list[np.ndarray] | None:
        """The arrays saved after round `rnd`, or None if there are none."""
        path = self.path(rnd)
        if not path.is_file():
            return None
        with np.load(path) as data:
            return [data[f"arr_{i}"] for i in range(len(data.files))]

    def save(self, rnd: int, arrays: list[np.ndarray]) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(rnd)
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("wb") as handle:
            np.savez(handle, *arrays)
        os.replace(tmp, path)
        self._prune()
        return path

    def _prune(self) -> None:
        mine = sorted(
            int(m["round"])
            for f in self.directory.iterdir()
            if (m := _NAME.fullmatch(f.name)) and m["token"] == self.token
        )
        for rnd in mine[:-KEEP]:
            self.path(rnd).unlink(missing_ok=True)
