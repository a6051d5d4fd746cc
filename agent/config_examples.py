"""The configs `tfwb-agent config example --node|--gateway` prints: complete and commented.

Each is accepted by `config check` once the keys it names exist (tests/test_config_check.py
writes each, makes its keys with `keys init`, and checks it). Values are the code's defaults
unless a comment says otherwise; the Configuration reference in README.md names every key.
"""
from __future__ import annotations

NODE = '''\
# /etc/tfwb-agent/agent.toml on a GPU node: watch the runs volume, redact and seal each
# ended run into the outbox (`tfwb-agent export` carries it across the gap).
state_dir = "/var/lib/tfwb-agent"       # ledger, staging, outbox (owned by the agent's user)
# node_name = "gpu-node-01"             # default: the host name; names this node's claims

[watch]
roots = ["/srv/shared/runs"]            # where training containers write offline runs
mode = "inotify"                        # "poll" on NFS/Lustre (no inotify events across hosts)
quiet_seconds = 120                     # no growth this long and no exit record: crashed
reconcile_seconds = 60                  # full re-scan, catches missed events
poll_seconds = 2                        # poll interval when mode = "poll"
lease_seconds = 60                      # claim lease when several agents share a volume

[path_map]
"/runs" = "/srv/shared/runs"            # container path = host path

[keys]
node_key = "/etc/tfwb-agent/node.key"   # `tfwb-agent keys init --node` writes it (0600) and node.key.pub;
                                        # copy node.key.pub to the gateway's trusted_nodes directory
recipients = []                         # needed before anything is sealed: the age1... line that
                                        # `tfwb-agent keys init --gateway` prints on the gateway

# [redact]                              # the defaults are the safe ones; see README "[redact]"
# secret_file = "/etc/tfwb-agent/redact.key"   # default: <state_dir>/redact.key, made at first start;
                                               # the same file on every node (equal tags across nodes)
'''

GATEWAY = '''\
# /etc/tfwb-agent/agent.toml on the gateway: import bundles carried across the gap, check
# their signatures, and deliver them to a W&B server with `wandb sync`.
state_dir = "/var/lib/tfwb-agent"       # ledger, staging (decrypted runs), quarantine

[keys]
identity = "/etc/tfwb-agent/gateway.agekey"       # `tfwb-agent keys init --gateway` writes it (0600)
                                                  # and prints the age1... recipient for the nodes
trusted_nodes = ["/etc/tfwb-agent/nodes/*.pub"]   # each node's node.key.pub, copied here

[targets.local-server]
base_url = "https://wandb.internal"     # the W&B server (http or https)
api_key_file = "/etc/tfwb-agent/wandb-api-key"    # 0600, the key alone; or api_key_env = "NAME"
# entity = "ml-team"                    # default: each run's own entity
# project = "imported"                  # default: each run's own project
# ca_file = "/etc/tfwb-agent/site-ca.pem"   # the CA that signed the server's certificate
timeout = 20                            # seconds, one HTTP request

[sync]
max_parallel = 4                        # runs one `wandb sync` uploads at once

[[policy]]
projects = ["*"]                        # which runs (project globs) ...
targets = ["local-server"]              # ... may go where
# windows = ["22:00-06:00"]             # only in these local hours; default: any time
'''
