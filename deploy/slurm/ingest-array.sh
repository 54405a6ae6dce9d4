#!/bin/bash
# Parallel ingest as a Slurm job array: task K of N runs
#   ftfsearch ingest --from LIST --shard K/N
# against a Qdrant server or cluster (deploy/), the read-write key from a file only you can read.
#
#   sbatch deploy/slurm/ingest-array.sh                 # every part
#   sbatch --array=3,5 deploy/slurm/ingest-array.sh     # only parts 3 and 5 again (same N)
#   ftfsearch batch status --from "$FTF_LIST"           # the batch's state, from any node
#
# N is the array size: keep "--array=0-(N-1)" and SHARDS equal (a test checks this file). SHARDS is
# spelled out rather than read from SLURM_ARRAY_TASK_COUNT so that a rerun of a few indexes
# (--array=3,5) keeps the same partition.
#SBATCH --job-name=ftfsearch-ingest
#SBATCH --array=0-7%4
#SBATCH --cpus-per-task=4
#SBATCH --mem=8G
#SBATCH --time=12:00:00
#SBATCH --requeue
#SBATCH --output=ftfsearch-ingest-%A_%a.log
# GPU workers: uncomment to request one GPU per task; --device auto then encodes on it.
##SBATCH --gres=gpu:1
set -euo pipefail

SHARDS=8
FTF_LIST=${FTF_LIST:-$HOME/ftfsearch/list.txt}
export QDRANT_URL=${QDRANT_URL:-http://qdrant.example.internal:6333}
export QDRANT_API_KEY=${QDRANT_API_KEY:-$(cat "$HOME/.config/ftfsearch/qdrant-api-key")}

if [ "${SLURM_ARRAY_TASK_ID:?run this with sbatch --array}" -ge "$SHARDS" ]; then
    echo "error: array index $SLURM_ARRAY_TASK_ID is outside 0..$((SHARDS - 1)); match --array to SHARDS" >&2
    exit 2
fi

exec ftfsearch ingest --from "$FTF_LIST" --shard "$SLURM_ARRAY_TASK_ID/$SHARDS" \
    --tile-size 256 --levels 1,2 --shards 3 --replication-factor 2 --device auto
