#!/usr/bin/env bash
# rq4 figure: [log_dir]: the figure from backup_logs/rq4 (or log_dir) into figures/rq4/
exec "$(dirname "${BASH_SOURCE[0]}")/../characterize/figure.sh" plot rq4 "$@"
