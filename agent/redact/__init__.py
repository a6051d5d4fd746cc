"""Redaction: turn an offline run into a copy that carries no sensitive value.

Public entry points (the sealer and the CLI use these):

- ``policy.parse_policy(source, raw) -> Policy`` / ``policy.DEFAULT_POLICY`` / ``policy.policy_from_config(cfg)``
- ``policy.load_secret(policy, cfg) -> bytes``
- ``run.redact_run(src_run_dir, dst_dir, policy, secret, map_path) -> RedactionReport``
- ``run.plan_run(src_run_dir, policy, secret, map_path) -> RedactionReport`` (dry run: nothing written)
- ``run.relocate_staging(run_dir) -> int`` (after a redacted run moved: repoint artifact files)
"""
