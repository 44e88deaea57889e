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
- :mod:`.probes`, :mod:`.tasks`, :mod:`.experts` (with ``expert_task_results``), :mod:`.model2vec`,
  :mod:`.affinity`, :mod:`.policies` — one table family each
- :mod:`.snapshot` — the catalog as Parquet files (``taskreg export``) and back
- :mod:`.taskonomy` — the Taskonomy pipeline's transfers, per-image losses and win rates
- :mod:`.mlflow_store` — the SQL on MLflow's own sqlite schema (not DuckDB); deliberately not re-exported here:
  only :mod:`taskreg.registry.tracking` imports it, so every MLflow access stays behind the tracking layer
"""

from taskreg.registry.catalog.affinity import (
    AffinitySetSummary,
    affinity_set_exists,
    affinity_set_summaries,
    affinity_source_only,
    delete_affinity_set,
    get_affinity_set,
    insert_affinity_set,
)
from taskreg.registry.catalog.console import CONSOLE_CONFIG, CONSOLE_STATEMENTS, connect_console, console_query
from taskreg.registry.catalog.experts import (
    ExpertRecord,
    ExpertTaskError,
    ExpertTaskResult,
    count_experts,
    delete_expert,
    expert_exists,
    expert_ids,
    expert_names,
    expert_task_errors,
    expert_task_results,
    expert_task_vectors,
    experts_by_ids,
    experts_except,
    get_expert,
    insert_expert,
    insert_expert_task_result,
    list_experts,
    measured_errors_by_fingerprint,
    measured_expert_ids,
)
from taskreg.registry.catalog.integrity import (
    dangling_counts,
    referenced_run_ids,
    run_references,
    set_created_at,
    weight_files,
)
from taskreg.registry.catalog.model2vec import (
    model2vec_count,
    model2vec_expert_ids,
    model2vec_kinds_of_expert,
    model2vec_rows,
    model2vec_vectors,
    model2vec_with_bias,
    replace_model2vec,
)
from taskreg.registry.catalog.policies import PolicyRecord, insert_policy, list_policies
from taskreg.registry.catalog.probes import ProbeRecord, get_probe, insert_probe, list_probes
from taskreg.registry.catalog.rows import (
    fetch_one,
    fetch_rows,
    insert_columns,
    insert_rows,
    vector_param,
    vectors_to_numpy,
)
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
    set_tracking_uri,
    tracking_uri,
    transaction,
)
from taskreg.registry.catalog.snapshot import SNAPSHOT_TABLES, export_tables, import_tables
from taskreg.registry.catalog.taskonomy import (
    TransferRecord,
    WinRate,
    compute_winrates,
    dictionary_winrates,
    first_order_winrates,
    get_transfer,
    insert_transfer,
    insert_winrates,
    is_transfer_target,
    target_winrates,
    task_network_keys,
    transfer_keys,
    transfers_by_keys,
    winrate_targets,
)
from taskreg.registry.catalog.tasks import (
    EmbeddingInfo,
    TaskRecord,
    count_tasks,
    delete_task,
    embedded_task_names,
    get_task,
    has_embedding,
    insert_embedding,
    insert_task,
    insert_trivial_embedding,
    list_tasks,
    task_embedding_infos,
    task_exists,
    task_name_by_fingerprint,
    task_results,
    task_run_ids,
    task_vector_kinds,
    task_vectors,
    task_vectors_by_id,
    trivial_embedding,
)
from taskreg.registry.catalog.vectors import bump_generation, generation, kind_count, kind_vectors, kinds

__all__ = [
    "CONSOLE_CONFIG", "CONSOLE_STATEMENTS", "MIGRATIONS", "SCHEMA_VERSION", "SNAPSHOT_TABLES", "TABLES",
    "export_tables", "import_tables",
    "EmbeddingInfo", "ExpertRecord", "ProbeRecord", "TaskRecord",
    "ExpertTaskError", "ExpertTaskResult",
    "bump_generation", "connect", "connect_console", "console_query", "count_experts", "count_tasks", "counts",
    "dangling_counts", "delete_affinity_set", "delete_task", "expert_names", "fetch_one", "fetch_rows", "fold_wal",
    "delete_expert", "embedded_task_names", "expert_exists", "expert_ids", "expert_task_errors",
    "expert_task_results", "expert_task_vectors", "experts_by_ids", "experts_except",
    "generation", "get_expert", "get_probe", "get_task", "has_embedding", "insert_affinity_set",
    "insert_columns", "insert_embedding", "insert_expert", "insert_probe", "insert_rows", "insert_task",
    "insert_expert_task_result",
    "insert_trivial_embedding", "kind_count", "kind_vectors", "kinds", "list_experts", "list_probes",
    "list_tasks", "migrate", "referenced_run_ids", "registry_id", "run_references", "schema_version",
    "measured_errors_by_fingerprint", "measured_expert_ids", "model2vec_count", "model2vec_expert_ids",
    "model2vec_kinds_of_expert", "model2vec_rows", "model2vec_vectors", "model2vec_with_bias", "replace_model2vec",
    "set_created_at", "set_registry_id", "set_tracking_uri", "tracking_uri", "task_embedding_infos", "task_exists",
    "task_results",
    "task_name_by_fingerprint",
    "task_run_ids", "task_vector_kinds", "task_vectors", "task_vectors_by_id", "transaction",
    "trivial_embedding", "vector_param", "vectors_to_numpy", "weight_files",
    # affinity sets, policies, the Taskonomy pipeline's tables
    "AffinitySetSummary", "PolicyRecord", "TransferRecord", "WinRate",
    "affinity_set_exists", "affinity_set_summaries", "affinity_source_only", "compute_winrates", "dictionary_winrates",
    "first_order_winrates", "get_affinity_set", "get_transfer", "insert_policy", "insert_transfer", "insert_winrates",
    "is_transfer_target", "list_policies", "target_winrates", "task_network_keys", "transfer_keys",
    "transfers_by_keys", "winrate_targets",
]
