#!/usr/bin/env bash
# rq2 figure: [log_dir]: the figure from backup_logs/rq2 (or log_dir) into figures/rq2/
exec "$(dirname "${BASH_SOURCE[0]}")/../characterize/figure.sh" plot rq2 "$@"
