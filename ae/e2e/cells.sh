#!/usr/bin/env bash
# The e2e figure's cells, one id per line: <model>-<resolution>-b<batch>-<eager|compile>
# (each cell times the no-attention floor and every attention backend of that model).
# Models as in sparsevit.models.MODELS ('/' dropped: ViT-B16 is ViT-B/16).
set -euo pipefail
models="ViT-B16 ViL-S ViL-M ViL-S-chunk ViL-M-chunk RegionViT-S RegionViT-B DynamicViT-S DynamicViT-B"
for model in $models; do
  for res in 224 384 512 1024 2048 4096; do
    for batch in 1 8; do
      for mode in eager compile; do
        echo "$model-$res-b$batch-$mode"
      done
    done
  done
done
