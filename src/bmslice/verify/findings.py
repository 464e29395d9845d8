"""One result of a host check: ok, warn or fail, what was found and the one-line remedy."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Level(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class Finding:
    level: Level
    check: str  # short name: "iommu", "irq 24", "memory node0"
    message: str
    remedy: str = ""

    def line(self) -> str:
        tail = f" -> {self.remedy}" if self.remedy and self.level is not Level.OK else ""
        return f"{self.level.value:<4} {self.check}: {self.message}{tail}"

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level.value, "check": self.check, "message": self.message, "remedy": self.remedy}


def ok(check: str, message: str) -> Finding:
    return Finding(Level.OK, check, message)


def warn(check: str, message: str, remedy: str) -> Finding:
    return Finding(Level.WARN, check, message, remedy)


def fail(check: str, message: str, remedy: str) -> Finding:
    return Finding(Level.FAIL, check, message, remedy)
