#!/usr/bin/env bash
# rq2 figure: prints the cell ids, one per line
exec "$(dirname "${BASH_SOURCE[0]}")/../characterize/figure.sh" cells rq2 "$@"
