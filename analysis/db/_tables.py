"""Table definitions of the rg-tracer DuckDB file (documented in docs/analysis.md).

The database is a cache of the logs: when :data:`LAYOUT` changes, ingest drops
every table and reads the logs again from the start.
"""

from __future__ import annotations

__all__ = ["LAYOUT", "STEP_TABLES", "DDL", "VIEWS", "DERIVED_TABLES"]

LAYOUT = "rg-tracer-db/2"  # 2: ingest_notes; lines /1 skipped (upstream names, no versions, ...) are read

DDL = """
CREATE TABLE IF NOT EXISTS _meta (key VARCHAR, value VARCHAR);
CREATE TABLE IF NOT EXISTS _files (
    rel_path VARCHAR, run_id VARCHAR, path VARCHAR, run_dir VARCHAR,
    byte_offset BIGINT, lines BIGINT, segment INTEGER, max_step BIGINT,
    head_len BIGINT, head_hash VARCHAR, bad_lines BIGINT, ingested_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR, run_dir VARCHAR, log_path VARCHAR,
    n_steps BIGINT, first_step BIGINT, last_step BIGINT, n_samples BIGINT, n_evals BIGINT,
    n_segments INTEGER, status VARCHAR, started_at DOUBLE, model JSON, seed BIGINT,
    config JSON, lines BIGINT, bad_lines BIGINT, ingested_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS segments (
    run_id VARCHAR, segment INTEGER, line BIGINT, started_at DOUBLE,
    resumed_from_step BIGINT, seed BIGINT, config JSON, versions JSON, model JSON,
    dataset JSON, reward_weights JSON, end_step BIGINT, status VARCHAR);
CREATE TABLE IF NOT EXISTS _key_sets (set_id INTEGER, pos INTEGER, kind VARCHAR, name VARCHAR);
CREATE TABLE IF NOT EXISTS _steps (
    run_id VARCHAR, segment INTEGER, step BIGINT, line BIGINT, time DOUBLE,
    curriculum JSON, safety JSON, timing JSON, rl_set INTEGER, rl_values DOUBLE[]);
CREATE TABLE IF NOT EXISTS _samples (
    run_id VARCHAR, segment INTEGER, step BIGINT, sample_idx INTEGER, task_id VARCHAR,
    prompt_id VARCHAR, completion_id VARCHAR, prompt_tokens BIGINT, completion_tokens BIGINT,
    truncated BOOLEAN, abstained BOOLEAN, completion VARCHAR, axis_set INTEGER, axis_values DOUBLE[]);
CREATE TABLE IF NOT EXISTS evals (
    run_id VARCHAR, segment INTEGER, step BIGINT, split VARCHAR, n BIGINT,
    axis VARCHAR, value DOUBLE);
CREATE TABLE IF NOT EXISTS ingest_errors (
    run_id VARCHAR, log_path VARCHAR, line BIGINT, field VARCHAR, message VARCHAR,
    ingested_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS ingest_notes (
    run_id VARCHAR, log_path VARCHAR, line BIGINT, field VARCHAR, message VARCHAR, lines BIGINT,
    ingested_at TIMESTAMP);
"""

# Per-step metrics and per-sample axis values are stored as one list per row
# (names in _key_sets): inserting 5M narrow rows with string columns costs
# DuckDB several times more than 1M rows with a list. These views give them
# the long shape users query.
VIEWS = """
CREATE OR REPLACE VIEW steps AS
    SELECT run_id, segment, step, line, time, curriculum, safety, timing FROM _steps;
CREATE OR REPLACE VIEW rl_metrics AS
    SELECT v.run_id, v.segment, v.step, k.name AS metric, v.value
    FROM (SELECT run_id, segment, step, rl_set, unnest(rl_values) AS value,
                 unnest(range(len(rl_values))) AS pos FROM _steps) v
    JOIN _key_sets k ON k.set_id = v.rl_set AND k.pos = v.pos
    WHERE v.value IS NOT NULL;
CREATE OR REPLACE VIEW samples AS
    SELECT run_id, segment, step, sample_idx, task_id, prompt_id, completion_id, prompt_tokens,
           completion_tokens, truncated, abstained, completion FROM _samples;
CREATE OR REPLACE VIEW sample_axes AS
    SELECT v.run_id, v.segment, v.step, v.sample_idx, v.task_id, k.kind, k.name AS axis, v.value
    FROM (SELECT run_id, segment, step, sample_idx, task_id, axis_set, unnest(axis_values) AS value,
                 unnest(range(len(axis_values))) AS pos FROM _samples) v
    JOIN _key_sets k ON k.set_id = v.axis_set AND k.pos = v.pos
    WHERE v.value IS NOT NULL;
"""

#: Tables keyed by (run_id, step) whose rows a re-logged or resumed step replaces.
STEP_TABLES = ("_steps", "_samples")

#: Written by ``rg-tracer analyze`` (replaced on every analyze).
DERIVED_TABLES = ("fitness", "task_fitness", "correlations", "lead_lag", "transitions")
