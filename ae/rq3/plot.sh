#!/usr/bin/env bash
# rq3 figure: [log_dir]: the figure from backup_logs/rq3 (or log_dir) into figures/rq3/
exec "$(dirname "${BASH_SOURCE[0]}")/../characterize/figure.sh" plot rq3 "$@"
