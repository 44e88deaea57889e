"""The DuckDB catalog: schema, migrations and typed queries — the one home of the registry's SQL.

The source of truth for every record. Plain functions over a ``duckdb.DuckDBPyConnection``, in the style of
DuckDB's own Python API, one module per table family; services call them as ``catalog.get_task(con, name)``
and never build SQL themselves. Vectors are stored as ``FLOAT[]`` columns; names of tasks, experts and
probes are unique.

- :mod:`.schema` — tables, migrations, connections, transactions
- :mod:`.console` — the locked-down connection of ``taskreg sql``
- :mod:`.rows` — bulk rows and vectors through Arrow
- :mod:`.vectors` — vector kinds and their generations (what the Faiss indexes are derived from)
- :mod:`.integrity` — what ``check``, recovery and relocation ask of the catalog as a whole
- :mod:`.probes`, :mod:`.tasks`, :mod:`.experts`, :mod:`.affinity` — one table family each
- :mod:`.expert_vectors` — the experts' Model2Vec rows and measured errors (what a ``select`` score rests on)
"""

from taskreg.registry.catalog.affinity import delete_affinity_set, insert_affinity_set
from taskreg.registry.catalog.console import CONSOLE_CONFIG, CONSOLE_STATEMENTS, connect_console, console_query
from taskreg.registry.catalog.expert_vectors import (
    embedded_task_names,
    measured_expert_ids,
    model2vec_expert_ids,
    model2vec_rows,
    model2vec_with_bias,
)
from taskreg.registry.catalog.experts import (
    ExpertRecord,
    expert_names,
    get_expert,
    insert_expert,
    list_experts,
)
from taskreg.registry.catalog.integrity import (
    dangling_counts,
    referenced_run_ids,
    run_references,
    set_created_at,
    weight_files,
)
from taskreg.registry.catalog.probes import ProbeRecord, get_probe, insert_probe, list_probes
from taskreg.registry.catalog.rows import fetch_rows, insert_columns, insert_rows, vector_param, vectors_to_numpy
from taskreg.registry.catalog.schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    TABLES,
    connect,
    counts,
    fold_wal,
    migrate,
    registry_id,
    schema_version,
    set_registry_id,
    transaction,
)
from taskreg.registry.catalog.tasks import (
    EmbeddingInfo,
    TaskRecord,
    count_tasks,
    delete_task,
    get_task,
    has_embedding,
    insert_embedding,
    insert_task,
    insert_trivial_embedding,
    list_tasks,
    task_embedding_infos,
    task_exists,
    task_results,
    task_run_ids,
    task_vector_kinds,
    task_vectors,
    task_vectors_by_id,
    trivial_embedding,
)
from taskreg.registry.catalog.vectors import bump_generation, generation, kind_count, kind_vectors, kinds

__all__ = [
    "CONSOLE_CONFIG", "CONSOLE_STATEMENTS", "MIGRATIONS", "SCHEMA_VERSION", "TABLES",
    "EmbeddingInfo", "ExpertRecord", "ProbeRecord", "TaskRecord",
    "bump_generation", "connect", "connect_console", "console_query", "count_tasks", "counts",
    "dangling_counts", "delete_affinity_set", "delete_task", "embedded_task_names", "expert_names", "fetch_rows",
    "fold_wal",
    "generation", "get_expert", "get_probe", "get_task", "has_embedding", "insert_affinity_set",
    "insert_columns", "insert_embedding", "insert_expert", "insert_probe", "insert_rows", "insert_task",
    "insert_trivial_embedding", "kind_count", "kind_vectors", "kinds", "list_experts", "list_probes",
    "list_tasks", "measured_expert_ids", "migrate", "model2vec_expert_ids", "model2vec_rows",
    "model2vec_with_bias", "referenced_run_ids", "registry_id", "run_references", "schema_version",
    "set_created_at", "set_registry_id", "task_embedding_infos", "task_exists", "task_results",
    "task_run_ids", "task_vector_kinds", "task_vectors", "task_vectors_by_id", "transaction",
    "trivial_embedding", "vector_param", "vectors_to_numpy", "weight_files",
]
