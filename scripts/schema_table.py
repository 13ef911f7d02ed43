"""Print the result-line schema as a markdown table (pasted into README.md; a test keeps them in sync).

Run: python scripts/schema_table.py
"""

from __future__ import annotations

import typing

from pydantic import BaseModel

from profiler.schema import RunRecord


def _type_name(ann) -> str:
    text = str(ann).replace("typing.", "").replace("profiler.schema.", "")
    return text.replace("<class '", "").replace("'>", "")


def _first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else ""


def rows(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str]]:
    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        inner = [a for a in typing.get_args(ann) if isinstance(a, type) and issubclass(a, BaseModel)]
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            inner = [ann]
        listed = typing.get_origin(ann) is list
        key = f"{prefix}{name}"
        doc = field.description or (_first_line(inner[0].__doc__) if inner else "")
        out.append((key + ("[]" if listed else ""), _type_name(ann) if not inner else inner[0].__name__, doc or ""))
        for sub in inner:
            out += rows(sub, key + ("[]." if listed else "."))
    return out


def markdown() -> str:
    lines = ["| key | type | meaning |", "|---|---|---|"]
    lines += [f"| `{k}` | {t.replace('|', 'or')} | {d} |" for k, t, d in rows(RunRecord)]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())
