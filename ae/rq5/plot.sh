#!/usr/bin/env bash
# rq5 figure: [log_dir]: the figure from backup_logs/rq5 (or log_dir) into figures/rq5/
exec "$(dirname "${BASH_SOURCE[0]}")/../characterize/figure.sh" plot rq5 "$@"
