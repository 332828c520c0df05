"""Ray job entrypoint for `asrn extract`, with the same flags:

    ray job submit --working-dir . -- python -m jobs.extract ...

Inside a Ray job, Ray sets RAY_ADDRESS to the cluster's GCS address for the driver: the command
joins that cluster unless the flags say otherwise. Paths given by flags should be on storage every node sees.
"""

import sys

from asrn.cli import job_argv, main

if __name__ == "__main__":
    sys.exit(main(job_argv("extract", sys.argv[1:])))
