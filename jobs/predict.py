"""Ray job entrypoint for `asrn predict --features STORE | --manifest CSV` (scoring a collection), same flags:

    ray job submit --working-dir . -- python -m jobs.predict --features s3://bucket/features \\
        --checkpoint s3://bucket/runs/sub/best.pt --out s3://bucket/scores/sub

Inside a Ray job, Ray sets RAY_ADDRESS to the cluster's GCS address for the driver: the command joins that
cluster, and --model reads the cluster's MLflow server (MLFLOW_TRACKING_URI), unless the flags say otherwise.
Paths given by flags should be on storage every node sees.
"""

import sys

from asrn.cli import job_argv, main

if __name__ == "__main__":
    sys.exit(main(job_argv("predict", sys.argv[1:])))
