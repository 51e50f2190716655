"""The per-sample output (``score --per-sample PATH``): the input's rows plus ``scores`` (list<double>, what
mean@n averages), ``extracted`` (list<string>, null where no answer) and, with ``--compare``,
``disagreements`` (the samples on which the two graders disagree: index, each grader's score and answer)."""

from __future__ import annotations

import json
from typing import Any

from hpcgen.errors import ScoreError

OUTPUT_COLUMNS = ("scores", "extracted", "disagreements")


def strip_null_types(schema: Any) -> Any:
    """Null-typed fields (all-null in the first batch) become strings so later batches can fill them."""
    import pyarrow as pa

    def fix(t: Any) -> Any:
        if pa.types.is_null(t):
            return pa.string()
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            return pa.list_(fix(t.value_type))
        if pa.types.is_struct(t):
            return pa.struct([pa.field(f.name, fix(f.type), f.nullable) for f in t])
        return t

    return pa.schema([pa.field(f.name, fix(f.type), f.nullable) for f in schema])


def disagreement_type(names: tuple[str, str]) -> Any:
    import pyarrow as pa

    fields = [pa.field("sample", pa.int64())]
    for name in names:
        fields += [pa.field(f"{name}_score", pa.float64()), pa.field(f"{name}_extracted", pa.string())]
    return pa.list_(pa.struct(fields))


class ParquetOut:
    def __init__(self, tmp: Any, compare: tuple[str, str] | None) -> None:
        self.tmp = tmp
        self.compare = compare
        self.writer: Any = None
        self.schema: Any = None

    def write(self, raw: Any, scores: list[list[float]], extracted: list[list[str | None]],
              disagreements: list[list[dict[str, Any]]] | None) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        new = {
            "scores": pa.array(scores, type=pa.list_(pa.float64())),
            "extracted": pa.array(extracted, type=pa.list_(pa.string())),
        }
        if disagreements is not None and self.compare is not None:
            new["disagreements"] = pa.array(disagreements, type=disagreement_type(self.compare))
        if isinstance(raw, pa.RecordBatch):
            keep = [name for name in raw.schema.names if name not in OUTPUT_COLUMNS]
            table = pa.Table.from_batches([raw.select(keep)])
        else:  # jsonl rows
            keep_rows = [{k: v for k, v in r.items() if k not in OUTPUT_COLUMNS} for r in raw]
            try:
                table = pa.Table.from_pylist(keep_rows)
            except (pa.ArrowException, TypeError, ValueError) as exc:
                raise ScoreError(f"cannot write per-sample parquet from these rows: {exc}") from exc
        for name, arr in new.items():
            table = table.append_column(name, arr)
        if self.writer is None:
            self.schema = strip_null_types(table.schema).remove_metadata()
            self.writer = pq.ParquetWriter(self.tmp, self.schema)
        try:
            table = table.cast(self.schema) if table.schema != self.schema else table
        except (pa.ArrowException, ValueError) as exc:
            raise ScoreError(
                f"cannot write per-sample parquet: column types vary between rows ({exc}); "
                "write a .jsonl per-sample output instead"
            ) from exc
        self.writer.write_table(table)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class JsonlOut:
    def __init__(self, tmp: Any, compare: tuple[str, str] | None) -> None:
        self.fh = open(tmp, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.compare = compare

    def write(self, raw: Any, scores: list[list[float]], extracted: list[list[str | None]],
              disagreements: list[list[dict[str, Any]]] | None) -> None:
        rows = raw if isinstance(raw, list) else raw.to_pylist()
        for i, (row, sc, ex) in enumerate(zip(rows, scores, extracted, strict=True)):
            out = {k: v for k, v in row.items() if k not in OUTPUT_COLUMNS}
            out["scores"] = sc
            out["extracted"] = ex
            if disagreements is not None:
                out["disagreements"] = disagreements[i]
            self.fh.write(json.dumps(out, ensure_ascii=False, default=str) + "\n")

    def close(self) -> None:
        self.fh.close()
